"""Every way an export can fail, each with its own process exit code (documented in exporter/README.md).

Scripts branch on these codes, so they are stable. Messages never contain a secret value.
"""

OK = 0
LOCAL = 1  # the ticket file cannot be written, Commander not importable, ...
USAGE = 2  # bad command line (argparse uses 2 too)
LOGIN_FAILED = 3
RECORD_NOT_FOUND = 4
NOT_PAM_RESOURCE = 5  # not a pamMachine/pamDatabase/pamDirectory, or a protocol `pam launch` refuses
NO_GATEWAY = 6
GATEWAY_OFFLINE = 7
NO_TRAFFIC_SEED = 8
RECORD_UNUSABLE = 9  # no hostname/port, settings Commander refuses to launch (readOnly, disableCopy, ...)
UNSAFE_OUTPUT = 10  # the output file exists with permissions wider than 0600
WORKFLOW_DENIED = 11  # Commander's workflow gate (approval, check-out, MFA) did not allow the launch
POLICY_DENIED = 12  # enterprise enforcement or the PAM configuration disables connections / tunneling

CODES = {
    OK: "ticket written",
    LOCAL: "local error (output not writable, Commander not importable)",
    USAGE: "usage error",
    LOGIN_FAILED: "login failed",
    RECORD_NOT_FOUND: "record not found",
    NOT_PAM_RESOURCE: "not a PAM resource (or a protocol pam launch does not support)",
    NO_GATEWAY: "no gateway for the resource",
    GATEWAY_OFFLINE: "gateway offline",
    NO_TRAFFIC_SEED: "the record has no traffic encryption seed",
    RECORD_UNUSABLE: "the record cannot be launched as configured",
    UNSAFE_OUTPUT: "output file has permissions wider than 0600",
    WORKFLOW_DENIED: "workflow gate refused",
    POLICY_DENIED: "enterprise enforcement or PAM configuration disallows it",
}


MAX_DETAIL = 300


def clean(detail) -> str:
    """Outside text (an exception from Commander or the network) made safe to print: control characters
    replaced, length bounded."""
    text = "".join(c if c.isprintable() else "?" for c in str(detail))
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + "..."


class ExportError(Exception):
    """A failure the user can act on. `code` is the process exit code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message
