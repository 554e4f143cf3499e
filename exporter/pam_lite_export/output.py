"""Writing the ticket: it holds a session token, a traffic seed and usually target credentials, so the file is
created with mode 0600, an existing file readable by anyone else is never overwritten (its permissions are the
user's statement of where the secret may go), and the write is atomic (a temporary file renamed over it)."""
from __future__ import annotations

import json
import os
import stat
import sys
import tempfile

from .errors import ExportError, LOCAL, UNSAFE_OUTPUT


def ticket_json(ticket: dict) -> str:
    return json.dumps(ticket, indent=2) + "\n"


def write_ticket(path: str, ticket: dict) -> None:
    """Write `ticket` to `path` (mode 0600), or to stdout when `path` is "-"."""
    text = ticket_json(ticket)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ExportError(LOCAL, f"cannot inspect {path}: {e.strerror}")
    if st is not None:
        if not stat.S_ISREG(st.st_mode):
            raise ExportError(UNSAFE_OUTPUT, f"{path} exists and is not a regular file; not overwriting it")
        if st.st_mode & 0o077:
            raise ExportError(UNSAFE_OUTPUT,
                              f"{path} exists with mode {stat.S_IMODE(st.st_mode):04o}, readable or writable by "
                              "others; a ticket is a secret (mode 0600). Remove the file or chmod 600 it first")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pam-lite-ticket-", dir=directory)  # mkstemp creates it 0600
    except OSError as e:
        raise ExportError(LOCAL, f"cannot create a file in {directory}: {e.strerror}")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise ExportError(LOCAL, f"cannot write {path}: {e.strerror}")


def summary(ticket: dict) -> str:
    """What was written, without any secret (printed on stderr)."""
    t = ticket.get("target") or {}
    cred = ticket.get("credential") or {}
    lines = [
        f"  record      {ticket.get('record_uid')}",
        f"  gateway     {ticket.get('gateway_uid')}",
        f"  router      {ticket.get('router_url')}",
        f"  protocol    {ticket.get('protocol')}",
        f"  target      {t.get('hostName')}:{t.get('port')}",
        f"  credential  {cred.get('type') or 'none'}",
        f"  turn        {'yes' if ticket.get('turn') else 'no'}",
        f"  expires     {ticket['auth'].get('expires_hint_unix')} (hint, unix time)",
    ]
    return "\n".join(lines)
