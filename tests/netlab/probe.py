#!/usr/bin/env python3
"""UDP/TCP probes for the NAT lab's self-test (tests/netlab/run.sh). Every wait is bounded.

  probe.py reflect IP PORT [IP PORT ...]   answer each UDP datagram with "ip:port" of its sender (runs until killed)
  probe.py map IP:PORT IP:PORT             from ONE socket, ask two reflectors how they see us; print both
  probe.py udp-reach IP:PORT               exit 0 if a reflector at IP:PORT answers within 2 s
  probe.py tcp-listen IP PORT              accept TCP connections and answer "ok" (runs until killed)
  probe.py tcp-echo IP PORT                echo each TCP connection until it half-closes (a tunnel target; until killed)
  probe.py tcp-reach IP:PORT               exit 0 if a TCP connect + "ok" succeeds within 2 s
"""
import selectors
import socket
import sys


def hostport(s):
    host, port = s.rsplit(":", 1)
    return host, int(port)


def reflect(pairs):
    sel = selectors.DefaultSelector()
    for i in range(0, len(pairs), 2):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((pairs[i], int(pairs[i + 1])))
        sel.register(s, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            data, src = key.fileobj.recvfrom(2048)
            key.fileobj.sendto(f"{src[0]}:{src[1]}".encode(), src)


def ask(sock, dest):
    for _ in range(10):  # 10 x 0.2 s: a datagram lost while conntrack settles is retried
        sock.sendto(b"?", dest)
        sock.settimeout(0.2)
        try:
            data, _ = sock.recvfrom(2048)
            return data.decode()
        except socket.timeout:
            continue
    return None


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "reflect":
        reflect(args)
    elif mode == "map":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        print(" ".join(str(ask(s, hostport(a))) for a in args))
    elif mode == "udp-reach":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sys.exit(0 if ask(s, hostport(args[0])) else 1)
    elif mode == "tcp-listen":
        srv = socket.create_server((args[0], int(args[1])))
        while True:
            c, _ = srv.accept()
            c.sendall(b"ok")
            c.close()
    elif mode == "tcp-echo":
        # Echo every connection back until its sender half-closes, then close (a tunnel target).
        import threading

        def echo(c):
            c.settimeout(30)
            with c:
                try:
                    while True:
                        b = c.recv(65536)
                        if not b:
                            break
                        c.sendall(b)
                except OSError:
                    pass

        srv = socket.create_server((args[0], int(args[1])))
        while True:
            c, _ = srv.accept()
            threading.Thread(target=echo, args=(c,), daemon=True).start()
    elif mode == "tcp-reach":
        try:
            with socket.create_connection(hostport(args[0]), timeout=2) as c:
                c.settimeout(2)
                sys.exit(0 if c.recv(2) == b"ok" else 1)
        except OSError:
            sys.exit(1)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
