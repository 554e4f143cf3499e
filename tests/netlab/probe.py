#!/usr/bin/env python3
"""UDP/TCP probes for the NAT lab's self-test (tests/netlab/run.sh). Every wait is bounded.

  probe.py reflect IP PORT [IP PORT ...]   answer each UDP datagram with "ip:port" of its sender (runs until killed)
  probe.py map IP:PORT IP:PORT             from ONE socket, ask two reflectors how they see us; print both
  probe.py udp-reach IP:PORT               exit 0 if a reflector at IP:PORT answers within 2 s
  probe.py tcp-listen IP PORT              accept TCP connections and answer "ok" (runs until killed)
  probe.py tcp-echo IP PORT                echo each TCP connection until it half-closes (a tunnel target; until killed)
  probe.py tcp-reach IP:PORT               exit 0 if a TCP connect + "ok" succeeds within 2 s
  probe.py pace RATE FILE                  copy FILE to stdout at RATE bytes/s (64 KiB chunks; a transfer that lasts)
  probe.py sizes FILE SECONDS [PID]        every 50 ms print "<unix time> <size of FILE>" (for SECONDS at most,
                                           and only while process PID lives)
  probe.py outage SIZES T_OFF T_ON         from a `sizes` record: when the output last grew before T_OFF (the
                                           event), and first had 1 MiB more after T_ON (the path back), one line

tcp-echo's idle bound is $PAM_LITE_NETLAB_ECHO_IDLE seconds (default 30): a scenario with a longer outage raises it.
"""
import os
import selectors
import socket
import sys
import time


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
            c.settimeout(float(os.environ.get("PAM_LITE_NETLAB_ECHO_IDLE") or 30))
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
    elif mode == "pace":
        rate, chunk = float(args[0]), 65536
        out = sys.stdout.buffer
        with open(args[1], "rb") as f:
            try:
                while True:
                    b = f.read(chunk)
                    if not b:
                        break
                    out.write(b)
                    out.flush()
                    time.sleep(len(b) / rate)
            except BrokenPipeError:
                os._exit(1)
    elif mode == "sizes":
        end = time.time() + float(args[1])
        while time.time() < end:
            if len(args) > 2:
                try:
                    os.kill(int(args[2]), 0)
                except OSError:
                    break
            try:
                size = os.stat(args[0]).st_size
            except OSError:
                size = 0
            print(f"{time.time():.3f} {size}", flush=True)
            time.sleep(0.05)
    elif mode == "outage":
        t_off, t_on = float(args[1]), float(args[2])
        rows = [tuple(map(float, ln.split())) for ln in open(args[0]) if len(ln.split()) == 2]
        at_off = max((s for t, s in rows if t <= t_off), default=0)
        at_on = max((s for t, s in rows if t <= t_on), default=0)
        # the output's last growth up to the event, and its first growth past what it had when the path came back
        last = max((t for (t, s), (_, prev) in zip(rows[1:], rows) if t <= t_off and s > prev), default=None)
        # flowing again: 1 MiB more than when the path came back (bytes in flight at the event do not count)
        first = next((t for t, s in rows if t > t_on and s >= at_on + 1048576), None)
        fmt = lambda x: "never" if x is None else f"{x:.1f} s"
        print(f"{at_off / 1048576:.1f} MiB back at the event, {at_on / 1048576:.1f} MiB when the path came back; "
              f"1 MiB more came back {fmt(None if first is None else first - t_on)} after the path came back "
              f"(stalled {fmt(None if first is None or last is None else first - last)} in all)")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
