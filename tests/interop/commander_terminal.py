#!/usr/bin/env python3
"""Real Commander (keepercommander, pinned 18.1.8) running a `pam launch` terminal session against pam-lite's
emulator in terminal mode (`pam-lite emulator --terminal`: a real shell under a PTY behind the emulated gateway).

Commander's own code runs unchanged: `launch_terminal_connection` (protocol detection, settings, credentials,
guacd parameters, the offer, Keeper's tube in PythonHandler mode) and then the steps of
`PAMLaunchCommand._start_cli_session` with Commander's `GuacamoleHandler`: start the handler, wait for
"connected", `open_handler_connection(conversation_id, 1)`, `wait_for_ready`, `check_stdout_pipe_support`,
typed input through `send_stdin` (Commander's `--stdin` pipe mode), a resize through `send_size`, and the end
of the session. The vault objects are fixtures of the same kind as the exporter's tests (exporter/tests/
fixtures.py: a `KeeperParams` record cache with a pamMachine and its pamUser); what a Keeper login would have
provided is put in place as in commander_tunnel.py (KROUTER_URL, the emulator's server key and session token).
Commander's server-side JIT lookup (the resource DAG) is answered "not JIT".

Checks (one JSON object per line on stdout; the last is {"type":"result",...}):
  * a command typed through Commander's client runs in the emulated gateway's shell and its output comes back;
  * `send_size` for 100x30 cells resizes the remote PTY (`stty size` answers `30 100`);
  * `exit` ends the session: Commander's handler is told by the server (`disconnect`, then the connection
    closes), stops, and calls its on_disconnect callback, as with Commander's real gateway.

    commander_terminal.py --ticket TICKET.json [--deadline S]
"""
import argparse
import base64
import json
import logging
import os
import re
import sys
import threading
import time

T0 = time.monotonic()
_OUT = threading.Lock()
REAL_STDOUT = os.fdopen(os.dup(1), "w")


def emit(obj):
    obj.setdefault("t_ms", round(1000 * (time.monotonic() - T0), 1))
    with _OUT:
        REAL_STDOUT.write(json.dumps(obj) + "\n")
        REAL_STDOUT.flush()


class Screen:
    """Stands in for sys.stdout: Commander's instruction router writes the session's STDOUT pipe here."""

    def __init__(self):
        self.data = bytearray()
        self.cond = threading.Condition()
        self.buffer = self

    def write(self, b):
        if isinstance(b, str):
            b = b.encode()
        with self.cond:
            self.data += b
            self.cond.notify_all()
        return len(b)

    def flush(self):
        pass

    def isatty(self):
        return False

    def wait_for(self, needle: bytes, since: int, timeout: float) -> bool:
        end = time.monotonic() + timeout
        with self.cond:
            while needle not in self.data[since:]:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def wait_match(self, pattern: bytes, since: int, timeout: float):
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                m = re.search(pattern, bytes(self.data[since:]))
                left = end - time.monotonic()
                if m or left <= 0:
                    return m
                self.cond.wait(left)

    def text(self, since=0):
        with self.cond:
            return bytes(self.data[since:]).decode(errors="replace")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ticket", required=True, help="the emulator's launch ticket (terminal mode)")
    ap.add_argument("--deadline", type=float, default=90.0)
    ap.add_argument("--debug", action="store_true")
    a = ap.parse_args()

    def die():
        emit({"type": "error", "error": f"deadline of {a.deadline}s hit"})
        os._exit(3)

    timer = threading.Timer(a.deadline, die)
    timer.daemon = True
    timer.start()
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if a.debug else logging.ERROR,
                        format="commander %(relativeCreated)8.0f %(name)s %(levelname)s %(message)s")

    with open(a.ticket) as f:
        ticket = json.load(f)
    os.environ["KROUTER_URL"] = ticket["router_url"]

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "..", "..", "exporter", "tests"))
    import fixtures as F  # noqa: E402  (the exporter's fixture builders: Commander's own record objects)
    from keepercommander import crypto, rest_api, utils  # noqa: E402
    from keepercommander.commands.pam_launch import terminal_connection as tc  # noqa: E402
    from keepercommander.commands.pam_launch.terminal_size import _build_screen_info  # noqa: E402

    record_uid = ticket["record_uid"]
    user_uid = F.uid(99)
    params = F.params()
    seed = base64.b64decode(ticket["traffic_encryption_seed_b64"])
    params.record_cache[record_uid] = F._machine(
        record_uid, "pamMachine", "pam-lite emulator shell", "127.0.0.1", 22,
        {"protocol": "ssh", "userRecords": [user_uid]}, seed=seed)
    params.record_cache[user_uid] = F._user(user_uid, "emulator user", "tester", password="unused-Pw")
    params.session_token = ticket["auth"]["session_token_b64url"]
    key_id = int(ticket["auth"]["server_key_id"])
    rest_api.SERVER_PUBLIC_KEYS[key_id] = crypto.load_ec_public_key(
        utils.base64_url_decode(ticket["auth"]["server_public_key_b64url"]))
    params.rest_context.server_key_id = key_id
    tc.get_resource_jit_settings = lambda *args, **kw: None  # the resource DAG: not JIT

    screen = Screen()
    sys.stdout = screen
    gateway_info = {"gateway_uid": ticket["gateway_uid"], "gateway_name": "pam-lite emulator",
                    "config_uid": None}
    t_start = time.monotonic()
    result = tc.launch_terminal_connection(params, record_uid, gateway_info, dag_linked_uid=user_uid)
    if not result.get("success"):
        emit({"type": "result", "ok": False, "stage": "launch_terminal_connection", "error": result.get("error")})
        os._exit(1)
    t = result["tunnel"]
    reg, tube_id, handler, conv = t["tube_registry"], t["tube_id"], t["python_handler"], t["conversation_id"]
    emit({"type": "launched", "ms": round(1000 * (time.monotonic() - t_start), 1),
          "protocol": result.get("protocol")})
    disconnects = []
    ended = threading.Event()

    def on_disconnect(reason):
        disconnects.append(reason)
        ended.set()

    handler.on_disconnect = on_disconnect

    # _start_cli_session, step by step.
    handler.start()
    end = time.monotonic() + 30
    while str(reg.get_connection_state(tube_id)).lower() != "connected":
        if time.monotonic() > end:
            emit({"type": "result", "ok": False, "stage": "connect",
                  "state": str(reg.get_connection_state(tube_id))})
            os._exit(1)
        time.sleep(0.01)
    emit({"type": "connected", "ms_from_start": round(1000 * (time.monotonic() - t_start), 1)})
    for attempt in range(5):
        try:
            reg.open_handler_connection(conv, 1, None)
            break
        except Exception as e:  # Commander retries "datachannel not opened" the same way
            if attempt == 4:
                emit({"type": "result", "ok": False, "stage": "open_handler_connection", "error": str(e)})
                os._exit(1)
            time.sleep(0.1 * (2 ** attempt))
    ready = handler.wait_for_ready(10.0)
    handler.check_stdout_pipe_support(timeout=10.0, pam_clipboard_record_policy=False)
    emit({"type": "ready", "ok": bool(ready), "stdout_pipe": handler.stdout_pipe_opened.is_set(),
          "ms_from_start": round(1000 * (time.monotonic() - t_start), 1)})
    failures = []
    if not ready:
        failures.append("wait_for_ready timed out")

    # 1. A command typed through Commander's client runs in the gateway's shell; its output comes back.
    mark = len(screen.data)
    handler.send_stdin(b"echo pam-lite-$((6*7))-marker\n")
    if not screen.wait_for(b"pam-lite-42-marker", mark, 15):
        failures.append({"echo": screen.text(mark)[-300:]})
    emit({"type": "command", "ok": b"pam-lite-42-marker" in screen.data[mark:]})

    # 2. Resize: Commander's send_size with the pixel size of 100x30 cells (its own metrics). The size
    # before is asked first, so the check cannot pass by accident.
    mark = len(screen.data)
    handler.send_stdin(b"echo size-before-$(stty size | tr ' ' x)-end\n")
    found = screen.wait_match(rb"size-before-(\d+x\d+)-end", mark, 15)  # the output, not the echoed command
    before = found.group(1).decode() if found else None
    if before in (None, "30x100"):
        failures.append({"resize": "the PTY was 30x100 before the resize"})
    s = _build_screen_info(100, 30)
    handler.send_size(s["pixel_width"], s["pixel_height"], s["dpi"])
    time.sleep(0.3)
    mark = len(screen.data)
    handler.send_stdin(b"stty size\n")
    resized = screen.wait_for(b"30 100", mark, 15)
    if not resized:
        failures.append({"resize": screen.text(mark)[-300:]})
    emit({"type": "resize", "ok": resized, "before": before, "cells": [100, 30],
          "pixels": [s["pixel_width"], s["pixel_height"]]})

    # 3. End of session from the remote side: the shell exits, the gateway says so.
    handler.send_stdin(b"exit\n")
    got_end = ended.wait(15)
    if not got_end:
        failures.append("no disconnect after exit")
    elif disconnects[0] not in ("normal", "server_disconnect"):
        failures.append({"end_reason": disconnects})
    if handler.running:
        failures.append("Commander's handler still running after the session ended")
    emit({"type": "ended", "ok": got_end, "reasons": disconnects, "handler_running": handler.running})

    try:
        reg.close_tube(tube_id)
    except Exception as e:  # noqa: BLE001 - reported, never raised
        emit({"type": "close_tube", "error": str(e)})
    emit({"type": "result", "ok": not failures, "failures": failures,
          "total_ms": round(1000 * (time.monotonic() - t_start), 1)})
    os._exit(0 if not failures else 1)


if __name__ == "__main__":
    main()
