#!/usr/bin/env python3
"""Real Commander (keepercommander, pinned 18.1.8) opening a `pam tunnel start` tunnel against pam-lite's emulator.

Runs Commander's own tunnel-open function, `start_rust_tunnel` (what `pam tunnel start` calls), unchanged.
Only what a Keeper login would have provided is put in place by hand (no Keeper servers are reachable):

  * KROUTER_URL = the emulator's router URL (Commander's own override of the router host);
  * the emulator's P-256 server public key goes into Commander's key table (rest_api.SERVER_PUBLIC_KEYS) under
    the ticket's key id, and params.rest_context.server_key_id points at it;
  * params.session_token = the emulator's session token; the record uid, gateway uid and the record's traffic
    encryption seed come from the ticket (Commander would read them from the vault and the PAM DAG).

Then it waits for Commander's "connected", connects TCP clients to Commander's local listener (the emulator's
gateway forwards them to the test's echo server), checks the echoes, optionally moves --mib MiB with SHA-256,
and closes the tube. One JSON object per line on stdout ({"type": ...}); the last is {"type":"result",...}.

    commander_tunnel.py --ticket TICKET.json [--conns N] [--mib M] [--deadline S]

Bounded by --deadline (os._exit(3)). Run inside tests/interop/netns_run.sh (Keeper's tube needs a
non-loopback address for its host candidate).
"""
import argparse
import hashlib
import json
import logging
import os
import socket
import sys
import threading
import time

T0 = time.monotonic()
_OUT = threading.Lock()
PROGRESS = {"bulk_sent": 0, "bulk_received": 0}  # reported if the deadline hits


def emit(obj):
    obj.setdefault("t_ms", round(1000 * (time.monotonic() - T0), 1))
    with _OUT:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def echo_roundtrip(addr, data, timeout=20.0):
    """Send data, half-close, read until EOF. Returns (received, how_it_ended, seconds)."""
    t = time.monotonic()
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    got = bytearray()
    end = "eof"
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
    except socket.timeout:
        end = "timeout"
    except OSError as e:
        end = f"error: {e}"
    s.close()
    return bytes(got), end, time.monotonic() - t


def bulk(addr, total, timeout=120.0):
    """total bytes through one connection, both directions at once; SHA-256 of each side."""
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sent = hashlib.sha256()
    # 1 MiB of deterministic pseudo-random bytes (a SHA-256 chain), rotated by one byte per chunk so no two
    # chunks are equal (a dropped or repeated chunk changes the hash).
    block = bytearray()
    h = b"pam-lite interop"
    while len(block) < 1 << 20:
        h = hashlib.sha256(h).digest()
        block += h
    block = bytes(block)

    def writer():
        left = total
        i = 0
        while left > 0:
            r = i % len(block)
            chunk = (block[r:] + block[:r])[:left]
            s.sendall(chunk)
            sent.update(chunk)
            left -= len(chunk)
            PROGRESS["bulk_sent"] += len(chunk)
            i += 1
        s.shutdown(socket.SHUT_WR)

    t = time.monotonic()
    w = threading.Thread(target=writer, daemon=True)
    w.start()
    recv = hashlib.sha256()
    n = 0
    while True:
        chunk = s.recv(262144)
        if not chunk:
            break
        recv.update(chunk)
        n += len(chunk)
        PROGRESS["bulk_received"] = n
    w.join(timeout)
    s.close()
    return n, sent.hexdigest(), recv.hexdigest(), time.monotonic() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticket", required=True, help="the emulator's launch ticket (JSON)")
    ap.add_argument("--conns", type=int, default=10, help="TCP clients through the tunnel, at once")
    ap.add_argument("--mib", type=int, default=0, help="bulk echo size (0 = none)")
    ap.add_argument("--deadline", type=float, default=90.0)
    ap.add_argument("--debug", action="store_true", help="Commander's and keeper's debug logs on stderr")
    a = ap.parse_args()

    def die():
        emit({"type": "error", "error": f"deadline of {a.deadline}s hit", **PROGRESS})
        os._exit(3)

    timer = threading.Timer(a.deadline, die)
    timer.daemon = True
    timer.start()
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if a.debug else logging.ERROR,
                        format="commander %(relativeCreated)8.0f %(name)s %(levelname)s %(message)s")

    with open(a.ticket) as f:
        ticket = json.load(f)
    os.environ["KROUTER_URL"] = ticket["router_url"]

    t_import = time.monotonic()
    from keepercommander import crypto, rest_api, utils  # noqa: E402
    from keepercommander.params import KeeperParams  # noqa: E402
    from keepercommander.commands.tunnel.port_forward import tunnel_helpers as th  # noqa: E402
    import keeper_pam_webrtc_rs as kp  # noqa: E402
    emit({"type": "imported", "ms": round(1000 * (time.monotonic() - t_import), 1),
          "keeper_pam_webrtc_rs": getattr(kp, "__version__", "?")})

    params = KeeperParams()
    params.server = "keepersecurity.com"  # only names the relay host; nothing resolves in the namespace
    params.session_token = ticket["auth"]["session_token_b64url"]
    key_id = int(ticket["auth"]["server_key_id"])
    rest_api.SERVER_PUBLIC_KEYS[key_id] = crypto.load_ec_public_key(
        utils.base64_url_decode(ticket["auth"]["server_public_key_b64url"]))
    params.rest_context.server_key_id = key_id

    t_start = time.monotonic()
    result = th.start_rust_tunnel(params, ticket["record_uid"], ticket["gateway_uid"], "127.0.0.1", 0,
                                  ticket["traffic_encryption_seed_b64"], "127.0.0.1", 22, False,
                                  trickle_ice=True, record_title="pam-lite emulator")
    t_returned = time.monotonic()
    if not result.get("success"):
        emit({"type": "result", "ok": False, "stage": "start_rust_tunnel", "error": result.get("error")})
        os._exit(1)
    session = th.get_tunnel_session(result["tube_id"])
    listen = (session.host, int(session.port))
    emit({"type": "started", "ms": round(1000 * (t_returned - t_start), 1), "listen": f"{listen[0]}:{listen[1]}",
          "conversation_id": result.get("conversation_id")})

    reg, tube_id = result["tube_registry"], result["tube_id"]
    connected = None
    end = time.monotonic() + 30
    while time.monotonic() < end:
        state = str(reg.get_connection_state(tube_id)).lower()
        if state == "connected":
            connected = time.monotonic()
            break
        if state in ("failed", "closed", "disconnected"):
            break
        time.sleep(0.005)
    if connected is None:
        emit({"type": "result", "ok": False, "stage": "connect",
              "state": str(reg.get_connection_state(tube_id))})
        os._exit(1)
    ready = None
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if str(reg.get_tube_status(tube_id)).lower() == "ready":
            ready = time.monotonic()
            break
        time.sleep(0.005)
    emit({"type": "connected", "ms_from_start": round(1000 * (connected - t_start), 1),
          "ms_after_start_returned": round(1000 * (connected - t_returned), 1),
          "ready_ms_from_start": ready and round(1000 * (ready - t_start), 1)})

    # TCP clients through Commander's listener → tube → emulator gateway → the test's echo server.
    failures = []
    t = time.monotonic()
    first = echo_roundtrip(listen, b"ID:commander-first\nhello through real Commander")
    if first[0] != b"ID:commander-first\nhello through real Commander" or first[1] != "eof":
        failures.append({"conn": "first", "got": first[0][:80].decode(errors="replace"), "end": first[1]})
    first_ms = round(1000 * first[2], 1)
    results = [None] * a.conns

    def one(i):
        data = f"ID:commander{i}\n".encode() + bytes([i % 256]) * 2000
        got, how, _ = echo_roundtrip(listen, data)
        results[i] = (got == data and how == "eof", how, len(got))

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(a.conns)]
    t_many = time.monotonic()
    for th_ in threads:
        th_.start()
    for th_ in threads:
        th_.join(30)
    many_ms = round(1000 * (time.monotonic() - t_many), 1)
    for i, r in enumerate(results):
        if not r or not r[0]:
            failures.append({"conn": i, "result": r})
    emit({"type": "echo", "first_roundtrip_ms": first_ms, "conns": a.conns, "conns_ms": many_ms,
          "failures": failures})

    bulk_out = None
    if a.mib:
        n, s_hash, r_hash, secs = bulk(listen, a.mib << 20)
        bulk_out = {"bytes": n, "expected": a.mib << 20, "sha_sent": s_hash, "sha_received": r_hash,
                    "seconds": round(secs, 3), "mib_per_s": round((n / 1048576) / secs, 2) if secs else None}
        if n != a.mib << 20 or s_hash != r_hash:
            failures.append({"bulk": bulk_out})
        emit({"type": "bulk", **bulk_out})

    t_close = time.monotonic()
    try:
        reg.close_tube(tube_id)
    except Exception as e:  # noqa: BLE001 - reported, never raised
        failures.append({"close_tube": str(e)})
    end = time.monotonic() + 3
    while reg.active_tube_count() and time.monotonic() < end:
        time.sleep(0.01)
    emit({"type": "result", "ok": not failures, "failures": failures,
          "close_ms": round(1000 * (time.monotonic() - t_close), 1),
          "total_ms": round(1000 * (time.monotonic() - t_start), 1)})
    sys.stdout.flush()
    os._exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
