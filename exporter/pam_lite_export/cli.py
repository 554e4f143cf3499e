"""`pam-lite-export`: log in the way Commander does, sync, and write a pam-lite launch ticket.

    pam-lite-export RECORD [-o ticket.json | -o -] [--tunnel] [--turn] [--config ~/.keeper/config.json]

RECORD is a record uid, path or title (as `pam launch` takes it). Exit codes: see errors.py / README.md.
"""
from __future__ import annotations

import argparse
import logging
import sys

from . import errors
from .errors import ExportError, clean


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pam-lite-export",
        description="Write a pam-lite launch ticket for a Keeper PAM resource, using your Commander login. "
                    "The ticket holds your session token: keep it like a password.",
        epilog="Exit codes: " + "; ".join(f"{k} {v}" for k, v in errors.CODES.items()),
    )
    p.add_argument("record", help="PAM resource: record uid, path or title")
    p.add_argument("-o", "--output", default="ticket.json",
                   help="ticket file (created 0600; '-' writes to stdout). Default: ticket.json")
    p.add_argument("--tunnel", action="store_true",
                   help="a ticket for `pam-lite tunnel` (what `pam tunnel start` gathers) instead of `launch`")
    p.add_argument("--target-host", help="with --tunnel and allowSupplyHost: the target host")
    p.add_argument("--target-port", type=int, help="with --tunnel and allowSupplyHost: the target port")
    p.add_argument("--turn", action="store_true",
                   help="include TURN credentials from the router's relay_access_creds (with their expiry)")
    p.add_argument("--allow-offline", action="store_true",
                   help="write the ticket even if the router reports the gateway offline")
    p.add_argument("--config", help="Commander configuration file (default: Commander's own lookup, "
                                    "KEEPER_CONFIG_FILE, ~/.keeper/config.json)")
    p.add_argument("--reason", help="workflow justification (as `pam launch --reason`)")
    p.add_argument("--workflow-ticket", help="workflow ticket reference (as `pam launch --ticket`)")
    p.add_argument("-v", "--verbose", action="store_true", help="Commander's debug logs on stderr")
    return p


def login(config_file):
    """Commander's own login from its configuration: persistent login / device token first, with Commander's
    prompts for password and 2FA when needed; then a vault sync."""
    try:
        from keepercommander.__main__ import get_params_from_config
        from keepercommander import api
    except ImportError as e:
        raise ExportError(errors.LOCAL, f"keepercommander is not importable ({clean(e)}); run exporter/setup.sh")
    params = get_params_from_config(config_file)
    try:
        api.login(params)
    except KeyboardInterrupt:
        raise ExportError(errors.LOGIN_FAILED, "login cancelled")
    except Exception as e:
        raise ExportError(errors.LOGIN_FAILED, f"login failed: {clean(e)}")
    if not params.session_token:
        raise ExportError(errors.LOGIN_FAILED, "login failed: no session (wrong password, 2FA or device approval)")
    try:
        api.sync_down(params)
    except Exception as e:
        raise ExportError(errors.LOGIN_FAILED, f"vault sync failed: {clean(e)}")
    return params


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if a.verbose else logging.WARNING,
                        format="pam-lite-export: %(levelname)s %(message)s")
    if (a.target_host is None) != (a.target_port is None) or (a.target_host and not a.tunnel):
        print("pam-lite-export: --target-host and --target-port go together, with --tunnel", file=sys.stderr)
        return errors.USAGE
    from .gather import build_ticket
    from .output import summary, write_ticket
    try:
        params = login(a.config)
        ticket = build_ticket(params, a.record, tunnel=a.tunnel, include_turn=a.turn,
                              allow_offline=a.allow_offline, target_host=a.target_host, target_port=a.target_port,
                              workflow_reason=a.reason, workflow_ticket=a.workflow_ticket)
        write_ticket(a.output, ticket)
    except ExportError as e:
        print(f"pam-lite-export: {e}", file=sys.stderr)
        return e.code
    where = "stdout" if a.output == "-" else a.output
    print(f"pam-lite-export: wrote a {'tunnel' if a.tunnel else 'launch'} ticket to {where} (mode 0600; it holds "
          f"your session token):\n{summary(ticket)}", file=sys.stderr)
    return errors.OK


if __name__ == "__main__":
    sys.exit(main())
