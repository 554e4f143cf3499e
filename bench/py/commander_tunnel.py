#!/usr/bin/env python3
"""Commander 18.1.8's real tunnel-open code as a benchmark worker for pam-lite-bench.

Each `launch` calls Commander's own `start_rust_tunnel` (keepercommander/commands/tunnel/port_forward/
tunnel_helpers.py, what `pam tunnel start` runs): relay credentials, bind_to_controller, Keeper's tube
(keeper-pam-webrtc-rs 2.2.9) with its local TCP listener, the dedicated router WebSocket, the
WEBSOCKET_BACKEND_DELAY sleep, the streaming offer with Commander's RRC_BAD_STATE retry, and the
trickled candidates. Nothing of Commander is patched; the only test-run substitutions are:

* KROUTER_URL points Commander at the emulator's router (Commander's own switch);
* the emulator's P-256 server key is put into Commander's key table (`rest_api.SERVER_PUBLIC_KEYS`) under
  the key id of the ticket, for this process only;
* KRELAY_URL=127.0.0.1: no relay exists here (Keeper's tube then gathers host candidates only);
* a bare KeeperParams carries the session token (what a login would have produced).

The worker is warm (modules imported before `hello`), like a `keeper shell` session running
`pam tunnel start` repeatedly. Keeper's tube announces no loopback candidate: run it inside
tests/interop/netns_run.sh (pam-lite-bench does).

  usage: commander_tunnel.py CONFIG_JSON   (router_url, session_token_b64url, server_key_id,
                                            server_public_key_b64url, gateway_uid, record_uid,
                                            traffic_seed_b64, target_host, target_port)
stdin (JSON lines):  {"type":"launch","trickle":true} | {"type":"close"} ; EOF ends the worker
stdout (JSON lines): {"type":"hello","imported_ms":..,"pid":..}
                     {"type":"started","ok":bool,"listen":"127.0.0.1:PORT","ms":..,"error":..}
                     {"type":"closed","ms":..}
"""
import json
import logging
import os
import sys
import time

T0 = time.monotonic()
CFG = json.loads(sys.argv[1])
os.environ["KROUTER_URL"] = CFG["router_url"]
os.environ.setdefault("KRELAY_URL", "127.0.0.1")

from keepercommander import crypto, rest_api, utils  # noqa: E402
from keepercommander.commands.tunnel.port_forward import tunnel_helpers as th  # noqa: E402
from keepercommander.params import KeeperParams  # noqa: E402

logging.basicConfig(stream=sys.stderr, level=int(os.environ.get("BENCH_COMMANDER_LOG", "40")))


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main():
    key_id = int(CFG["server_key_id"])
    rest_api.SERVER_PUBLIC_KEYS[key_id] = crypto.load_ec_public_key(
        utils.base64_url_decode(CFG["server_public_key_b64url"]))
    params = KeeperParams()
    params.session_token = CFG["session_token_b64url"]
    params.rest_context.server_key_id = key_id
    emit({"type": "hello", "imported_ms": round(1000 * (time.monotonic() - T0), 1), "pid": os.getpid()})
    current = None

    def close_current():
        nonlocal current
        if not current:
            return
        res = current
        current = None
        try:
            tube_id = res.get("tube_id")
            registry = res.get("tube_registry")
            if registry and tube_id:
                registry.close_tube(tube_id)
            session = th.get_tunnel_session(tube_id)
            if session and session.websocket_stop_event:
                session.websocket_stop_event.set()
            handler = res.get("signal_handler")
            if handler:
                handler.cleanup()
            th.unregister_tunnel_session(tube_id)
        except Exception as e:  # noqa: BLE001 - reported, never raised
            emit({"type": "error", "error": f"close: {type(e).__name__}: {e}"})

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        msg = json.loads(line)
        if msg.get("type") == "launch":
            close_current()
            t = time.monotonic()
            try:
                res = th.start_rust_tunnel(
                    params, CFG["record_uid"], CFG["gateway_uid"], "127.0.0.1", 0,
                    CFG["traffic_seed_b64"], CFG["target_host"], int(CFG["target_port"]), False,
                    trickle_ice=bool(msg.get("trickle", True)))
            except Exception as e:  # noqa: BLE001
                res = {"success": False, "error": f"{type(e).__name__}: {e}"}
            out = {"type": "started", "ok": bool(res.get("success")), "ms": round(1000 * (time.monotonic() - t), 1)}
            if res.get("success"):
                current = res
                out["listen"] = f"{res.get('local_host')}:{res.get('local_port')}"
            else:
                out["error"] = str(res.get("error"))
            emit(out)
        elif msg.get("type") == "close":
            t = time.monotonic()
            close_current()
            emit({"type": "closed", "ms": round(1000 * (time.monotonic() - t), 1)})
    close_current()
    os._exit(0)


if __name__ == "__main__":
    main()
