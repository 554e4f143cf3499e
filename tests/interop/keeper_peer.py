#!/usr/bin/env python3
"""Keeper's own tube library (keeper-pam-webrtc-rs, pinned 2.2.9) as an interop peer for pam-lite's Rust tests.

The Rust test (tests/tests/keeper_interop.rs) spawns this script, does the signalling itself and talks to it
in JSON lines, one object per line:

  --role gateway   keeper ANSWERS (the Keeper Gateway's side): it connects --target-host:--target-port for
                   every OpenConnection. pam-lite is the client (offerer).
  --role client    keeper OFFERS (Commander's `pam tunnel start` side): it owns a TCP listener (--listen) and
                   sends OpenConnection for every TCP client. pam-lite is the gateway (answerer).

stdout (flushed after every line):
  {"type":"hello","role":..,"version":"2.2.9","pid":..}
  {"type":"offer","sdp":"<plain SDP>","listen":"127.0.0.1:PORT","ms":..}     client role, once
  {"type":"answer","sdp":"<plain SDP>","ms":..}                              gateway role, after our offer
  {"type":"candidate","candidate":"candidate:... typ host"}   ... then {"type":"candidate","candidate":""}
  {"type":"ready","ms_since_remote_sdp":..}    get_tube_status == "ready" (the data channel is open)
  {"type":"signal","kind":..,"data":..}        every other keeper signal (connection_state_changed,
                                               channel_closed with its JSON close reason, ...)
  {"type":"status","tube_status":..,"connection_state":..,"active_tubes":..}
  {"type":"error","error":..}
  {"type":"closed","ms":..}                    after close_tube (answer to "close", or stdin EOF)
stdin:
  {"type":"offer","sdp":".."} | {"type":"answer","sdp":".."} | {"type":"candidate","candidate":".."}
  {"type":"status"} | {"type":"close","reason":<code or null>}
  {"type":"restart_offer","sdp":".."}   the peer restarts ICE: set it, answer with {"type":"restart_answer","sdp":..}
  {"type":"restart_answer","sdp":".."}  the peer's answer to keeper's own restart (its signal "ice_restart_offer")
  EOF = close.

Signalling SDP travels as plain text here; keeper's API itself wants and returns base64 (that is decoded and
encoded in this script). Everything is bounded: a --deadline timer ends the process with os._exit(3).

Networking: keeper (webrtc-rs) never gathers a loopback candidate. Run inside tests/interop/netns_run.sh,
which gives the private namespace's lo a second address (198.18.0.1) that keeper can announce.
"""
import argparse
import base64
import json
import logging
import os
import sys
import threading
import time

# Keeper posts connection states to the router unless told this is a test; there is no router here.
os.environ.setdefault("TEST_MODE_SKIP_POST_CONNECTION_STATE", "1")

import keeper_pam_webrtc_rs as kp  # noqa: E402

_OUT = threading.Lock()
T0 = time.monotonic()


def emit(obj):
    line = json.dumps(obj)
    with _OUT:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def ms_since(t):
    return round(1000.0 * (time.monotonic() - t), 2)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["client", "gateway"], required=True)
    ap.add_argument("--conv", default="pam-lite-interop", help="conversation id (the DC label when keeper offers)")
    ap.add_argument("--listen", default="127.0.0.1:0", help="client role: TCP listen address")
    ap.add_argument("--target-host", default="127.0.0.1", help="gateway role: target host")
    ap.add_argument("--target-port", type=int, default=0, help="gateway role: target port")
    ap.add_argument("--no-trickle", action="store_true", help="trickle_ice=False: candidates inside the SDP")
    ap.add_argument("--deadline", type=float, default=120.0, help="hard limit in seconds")
    ap.add_argument("--log-level", type=int, default=40, help="keeper's log level on stderr (10..50)")
    ap.add_argument("--krelay", default="", help="STUN/TURN host (port 3478), as Commander passes krelay_server")
    ap.add_argument("--turn-user", default="", help="TURN username (Commander: relay_access_creds)")
    ap.add_argument("--turn-password", default="", help="TURN password")
    ap.add_argument("--turn-only", action="store_true", help="relay candidates only (Commander's turn_only)")
    a = ap.parse_args()

    def die():
        emit({"type": "error", "error": f"deadline of {a.deadline}s hit"})
        os._exit(3)

    timer = threading.Timer(a.deadline, die)
    timer.daemon = True
    timer.start()
    logging.basicConfig(stream=sys.stderr, level=a.log_level,
                        format="keeper_peer %(relativeCreated)8.0f %(name)s %(levelname)s %(message)s")
    kp.initialize_logger("keeper_peer", verbose=a.log_level <= 10, level=a.log_level)
    if a.role == "gateway" and not a.target_port:
        emit({"type": "error", "error": "--target-port is required for --role gateway"})
        os._exit(2)
    emit({"type": "hello", "role": a.role, "version": getattr(kp, "__version__", "?"), "pid": os.getpid()})

    reg = kp.PyTubeRegistry()
    reg.set_server_mode(True)  # what Commander does
    st = {"tid": None, "t_remote": None, "ready": False}

    def on_signal(sig):
        kind, data = sig.get("kind"), sig.get("data")
        if kind == "icecandidate":
            emit({"type": "candidate", "candidate": data or ""})
        else:
            emit({"type": "signal", "kind": kind, "data": data})

    common = dict(trickle_ice=not a.no_trickle, callback_token="dGVzdA==", krelay_server=a.krelay,
                  # Keeper's test mode ("host candidates only, no STUN") unless --krelay; with it, no KSM
                  # config, as Commander passes (the explicit TURN credentials below need no router call).
                  ksm_config="" if a.krelay else "TEST_MODE_KSM_CONFIG", signal_callback=on_signal)
    # With --krelay: the settings Commander builds (create_rust_webrtc_settings) with explicit TURN
    # credentials, so the tube asks no router for them.
    relay = {"use_turn": False}
    if a.krelay:
        relay = {"use_turn": True, "turn_only": a.turn_only, "relay_url": a.krelay,
                 "stun_url": f"stun:{a.krelay}:3478", "turn_url": f"turn:{a.krelay}:3478",
                 "turn_username": a.turn_user, "turn_password": a.turn_password}

    def watch_ready():
        end = time.monotonic() + a.deadline
        while time.monotonic() < end:
            tid = st["tid"]
            if tid and st["t_remote"] is not None and str(reg.get_tube_status(tid)).lower() == "ready":
                emit({"type": "ready", "ms_since_remote_sdp": ms_since(st["t_remote"])})
                return
            time.sleep(0.002)

    if a.role == "client":
        t = time.monotonic()
        res = reg.create_tube(conversation_id=a.conv,
                              settings={"conversationType": "tunnel", "local_listen_addr": a.listen,
                                        "socks_mode": False, **relay},
                              client_version="Commander-Python", offer=None, **common)
        st["tid"] = res["tube_id"]
        emit({"type": "offer", "sdp": base64.b64decode(res["offer"]).decode(), "ms": ms_since(t),
              "listen": res.get("actual_local_listen_addr")})
        threading.Thread(target=watch_ready, daemon=True).start()

    def close_and_exit(reason=None):
        t = time.monotonic()
        if st["tid"]:
            try:
                if reason is None:
                    reg.close_tube(st["tid"])
                else:
                    reg.close_tube(st["tid"], reason=reason)
            except Exception as e:  # noqa: BLE001 - reported to the test, never raised
                emit({"type": "error", "error": f"close_tube: {type(e).__name__}: {e}"})
            end = time.monotonic() + 3.0
            while reg.active_tube_count() and time.monotonic() < end:
                time.sleep(0.01)
        emit({"type": "closed", "ms": ms_since(t)})
        os._exit(0)

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
            kind = msg.get("type")
            if kind == "offer" and a.role == "gateway" and st["tid"] is None:
                t = time.monotonic()
                res = reg.create_tube(conversation_id=a.conv,
                                      settings={"conversationType": "tunnel", "target_host": a.target_host,
                                                "target_port": a.target_port, **relay},
                                      client_version="gateway-sim",
                                      offer=base64.b64encode(msg["sdp"].encode()).decode(), **common)
                st["tid"] = res["tube_id"]
                st["t_remote"] = time.monotonic()
                emit({"type": "answer", "sdp": base64.b64decode(res["answer"]).decode(), "ms": ms_since(t)})
                threading.Thread(target=watch_ready, daemon=True).start()
            elif kind == "answer" and a.role == "client":
                reg.set_remote_description(st["tid"], base64.b64encode(msg["sdp"].encode()).decode(),
                                           is_answer=True)
                st["t_remote"] = time.monotonic()
            elif kind == "restart_offer" and st["tid"] is not None:
                # keeper answers a remote offer inside set_remote_description (it returns the base64 answer;
                # create_answer afterwards fails: "Cannot create answer when in state Stable").
                ans = reg.set_remote_description(st["tid"], base64.b64encode(msg["sdp"].encode()).decode())
                if not isinstance(ans, str) or not ans:
                    ans = reg.create_answer(st["tid"])
                emit({"type": "restart_answer", "sdp": base64.b64decode(ans).decode()})
            elif kind == "restart_answer" and st["tid"] is not None:
                reg.set_remote_description(st["tid"], base64.b64encode(msg["sdp"].encode()).decode(),
                                           is_answer=True)
            elif kind == "candidate":
                if st["tid"] is None:
                    emit({"type": "error", "error": "candidate before the offer"})
                else:
                    reg.add_ice_candidate(st["tid"], msg.get("candidate") or "")
            elif kind == "status":
                tid = st["tid"]
                emit({"type": "status", "tube_status": tid and str(reg.get_tube_status(tid)),
                      "connection_state": tid and str(reg.get_connection_state(tid)),
                      "active_tubes": reg.active_tube_count()})
            elif kind == "close":
                close_and_exit(msg.get("reason"))
            else:
                emit({"type": "error", "error": f"unexpected {kind!r} for role {a.role}"})
        except Exception as e:  # noqa: BLE001 - reported to the test, never raised
            emit({"type": "error", "error": f"{type(e).__name__}: {e}"})
    close_and_exit()


if __name__ == "__main__":
    main()
