#!/usr/bin/env python3
"""Commander's start-up up to its first router request, for pam-lite-bench's footprint rows.

Loads what `pam launch` / `pam tunnel start` load (Commander's CLI, the pam_launch and tunnel modules, Keeper's
tube library), then makes Commander's own first router call of a launch, `router_get_relay_access_creds`,
through Commander's real `_post_request_to_router` (envelope: ECIES transmission key, AES-GCM session
token). The router is whatever KROUTER_URL names (the benchmark's probe listener, or the emulator); the
emulator's server key is put into Commander's key table for this process only.

  usage: commander_first_request.py SESSION_TOKEN_B64URL SERVER_KEY_ID SERVER_PUBLIC_KEY_B64URL
stdout: one JSON line {"imported_ms": .., "request_ms": .., "ok": bool, "error": ..}
"""
import json
import os
import sys
import time

T0 = time.monotonic()

from keepercommander import cli  # noqa: E402,F401  (the `keeper` entry point)
from keepercommander.commands.pam_launch import launch, terminal_connection  # noqa: E402,F401
from keepercommander.commands.tunnel.port_forward import tunnel_helpers  # noqa: E402,F401
import keeper_pam_webrtc_rs  # noqa: E402,F401
from keepercommander import crypto, rest_api, utils  # noqa: E402
from keepercommander.commands.pam import router_helper  # noqa: E402
from keepercommander.params import KeeperParams  # noqa: E402


def main():
    token, key_id, key_b64 = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    imported = time.monotonic()
    rest_api.SERVER_PUBLIC_KEYS[key_id] = crypto.load_ec_public_key(utils.base64_url_decode(key_b64))
    params = KeeperParams()
    params.session_token = token
    params.rest_context.server_key_id = key_id
    out = {"imported_ms": round(1000 * (imported - T0), 1)}
    try:
        router_helper.router_get_relay_access_creds(params)
        out["ok"] = True
    except Exception as e:  # noqa: BLE001 - reported, never raised
        out["ok"] = False
        out["error"] = f"{type(e).__name__}: {e}"
    out["request_ms"] = round(1000 * (time.monotonic() - T0), 1)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
