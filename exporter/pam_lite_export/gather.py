"""Gather what Commander's `pam launch` / `pam tunnel start` gather, by calling Commander's own functions.

Everything that reads the vault runs Commander 18.1.8's code unchanged: record lookup
(`PAMLaunchCommand.find_record`), the record type gate (`_is_valid_pam_record`), `detect_protocol`, the launch
credential from the DAG (`_get_launch_credential_uid`, fallback `userRecords[0]` as in `launch.py`), the gateway
(`PAMLaunchCommand.find_gateway` with its `pam/get_configuration_controller` fallback), connection settings and JIT
(`extract_terminal_settings`, `create_connection_context`), and the guacd parameters with the credential
(`_build_guacamole_connection_settings`, which calls `_extract_user_record_credentials`). Only the few decisions
Commander makes inline inside `_open_terminal_webrtc_tunnel` / `PAMTunnelStartCommand.execute` (credential type,
tunnel target) are repeated here, each next to the Commander lines it mirrors.

The calls that need Keeper's servers (DAG load, gateway lists, relay credentials, the workflow gate) go through
[`CommanderApi`], so the tests can run all of the above against fixtures without a Keeper server.
"""
from __future__ import annotations

import base64
import logging
import time
from typing import Any, Dict, Optional

from .errors import (
    ExportError,
    GATEWAY_OFFLINE,
    NO_GATEWAY,
    NO_TRAFFIC_SEED,
    NOT_PAM_RESOURCE,
    POLICY_DENIED,
    RECORD_NOT_FOUND,
    RECORD_UNUSABLE,
    WORKFLOW_DENIED,
    clean,
)

# Commander's relay_access_creds expiry request (terminal_connection.py, tunnel_helpers.py).
TURN_EXPIRE_SEC = 60_000_000
# Without an enforced logout timer the session token's lifetime is unknown (spec §5.1: NOT FOUND); a one hour
# hint makes `pam-lite ticket check` warn about a stale ticket instead of never.
DEFAULT_SESSION_HINT_SEC = 3600
# The terminal size the ticket's guacd parameters are computed for; pam-lite recomputes width/height/dpi at run
# time from the real terminal, so they are left out of the ticket.
RUNTIME_GUACD_KEYS = ("width", "height", "dpi")
# Carried by the ticket's `clipboard` object instead (pam-lite adds them to the offer from there, as Commander does).
CLIPBOARD_GUACD_KEYS = ("disable-copy", "disable-paste")


def _commander():
    """Commander's modules, imported lazily (the import takes about a second)."""
    from keepercommander import vault, rest_api, utils
    from keepercommander.commands.pam_launch import launch, terminal_connection, terminal_size
    from keepercommander.commands.pam.router_helper import get_router_url
    from keepercommander.constants import get_relay_host

    return {
        "vault": vault,
        "rest_api": rest_api,
        "utils": utils,
        "launch": launch,
        "tc": terminal_connection,
        "terminal_size": terminal_size,
        "get_router_url": get_router_url,
        "get_relay_host": get_relay_host,
    }


class CommanderApi:
    """The Commander calls that talk to Keeper's servers. Tests replace these methods with fixtures."""

    def tunnel_dag(self, params, record_uid: str):
        """`TunnelDAG` for the record, built as `pam launch` builds it (None when it cannot be loaded)."""
        c = _commander()
        try:
            enc_s, enc_t, tk = c["launch"].get_keeper_tokens(params)
            return c["launch"].TunnelDAG(params, enc_s, enc_t, record_uid, transmission_key=tk)
        except Exception as e:  # Commander falls back to per-call lookups, and so do we
            logging.debug("TunnelDAG could not be built: %s", e)
            return None

    def online_gateway_uids(self, params) -> Optional[list]:
        """Controller uids (bytes) the router reports online, or None when the router cannot be asked."""
        c = _commander()
        try:
            rs = c["launch"].router_get_connected_gateways(params)
        except Exception as e:
            logging.debug("get_controllers failed: %s", e)
            return None
        if rs is None:
            return []
        return [x.controllerUid for x in rs.controllers]

    def relay_access_creds(self, params):
        from keepercommander.commands.pam.router_helper import router_get_relay_access_creds

        return router_get_relay_access_creds(params=params, expire_sec=TURN_EXPIRE_SEC)

    def config_allows(self, params, record_uid: str, action: str) -> bool:
        """Commander's PAM-configuration gate (`allowedSettings` on the configuration's DAG vertex):
        `connections` for launch, `tunneling` for tunnels. True when this Commander has no such gate."""
        try:
            from keepercommander.commands.workflow.helpers import is_pam_config_action_allowed_for_record
        except ImportError:
            return True
        return is_pam_config_action_allowed_for_record(params, record_uid, action)

    def workflow_gate(self, params, record_uid: str, reason=None, ticket=None):
        """Commander's workflow gate (approval / check-out / MFA); None when this Commander has none."""
        try:
            from keepercommander.commands.workflow import check_workflow_for_launch
        except ImportError:
            return None
        return check_workflow_for_launch(params, record_uid, reason=reason, ticket=ticket,
                                         auto_checkout=False, wait=False, wait_timeout=600)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def server_public_key_b64url(rest_api, key_id: int) -> Optional[str]:
    """The server key Commander encrypts router requests to, in the ticket's encoding (65-byte point or DER)."""
    key = rest_api.SERVER_PUBLIC_KEYS.get(key_id)
    if key is None:
        return None
    from cryptography.hazmat.primitives import serialization

    try:
        if key_id >= 7:
            raw = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        else:
            raw = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    except Exception:
        return None  # an unexpected key object: pam-lite uses its own copy of Keeper's table
    return _b64url(raw)


def resolve_record(params, token: str) -> str:
    """Record uid from a uid, path or title, with `pam launch`'s own lookup and type gate."""
    c = _commander()
    cmd = c["launch"].PAMLaunchCommand()
    try:
        uid = cmd.find_record(params, token)
    except Exception as e:  # Commander raises CommandError for ambiguous names
        raise ExportError(RECORD_NOT_FOUND, f"record {token!r}: {clean(e)}")
    if not uid:
        raise ExportError(RECORD_NOT_FOUND, f"record not found: {token!r} (give its uid, path or title)")
    record = c["vault"].KeeperRecord.load(params, uid)
    if not isinstance(record, c["vault"].TypedRecord) or not cmd._is_valid_pam_record(params, uid):
        rtype = getattr(record, "record_type", type(record).__name__)
        raise ExportError(NOT_PAM_RESOURCE,
                          f"record {uid} (type {rtype}) is not a PAM resource (pamMachine, pamDatabase, pamDirectory)")
    return uid


def traffic_seed(record) -> bytes:
    """`trafficEncryptionSeed`, as both `pam launch` and `pam tunnel start` read it. Commander's launch path
    generates a random seed when the field is absent, which the gateway can never match; we refuse instead."""
    from keepercommander.commands.tunnel.port_forward.tunnel_helpers import base64_to_bytes

    field = record.get_typed_field("trafficEncryptionSeed")
    value = field.get_default_value() if field else None
    if isinstance(value, str) and value:
        seed = base64_to_bytes(value)
    elif isinstance(value, (bytes, bytearray)):
        seed = bytes(value)
    else:
        seed = b""
    if not seed:
        raise ExportError(NO_TRAFFIC_SEED,
                          f"record {record.record_uid} has no trafficEncryptionSeed: enable connections/tunneling "
                          "for it in Keeper (pam tunnel edit / pam connection edit) first")
    return seed


def resolve_gateway(params, api: CommanderApi, record_uid: str, tdag, allow_offline: bool) -> Dict[str, Any]:
    """`find_gateway` (PAM configuration / DAG, with Commander's fallbacks), then the online check."""
    c = _commander()
    cmd = c["launch"].PAMLaunchCommand()
    try:
        info = cmd.find_gateway(params, record_uid, tdag=tdag)
    except Exception as e:
        raise ExportError(NO_GATEWAY, f"no gateway for record {record_uid}: {clean(e)}")
    if not info or not info.get("gateway_uid"):
        raise ExportError(NO_GATEWAY, f"no gateway for record {record_uid}")
    online = api.online_gateway_uids(params)
    if online is not None:
        uid_bytes = c["utils"].base64_url_decode(info["gateway_uid"])
        if uid_bytes not in online:
            msg = (f"gateway {info.get('gateway_name') or '?'} ({info['gateway_uid']}) is offline "
                   "(not in the router's get_controllers list)")
            if not allow_offline:
                raise ExportError(GATEWAY_OFFLINE, msg + "; --allow-offline writes the ticket anyway")
            logging.warning("%s; writing the ticket anyway", msg)
    else:
        logging.warning("could not ask the router whether the gateway is online; continuing")
    return info


def _launch_gates(record, record_uid: str):
    """The pamSettings gates `pam launch` applies before connecting (launch.py, PAMLaunchCommand.execute)."""
    c = _commander()
    field = record.get_typed_field("pamSettings")
    value = field.get_default_value(dict) if field else None
    connection = (value or {}).get("connection") or {}
    if not isinstance(connection, dict):
        return
    clip = c["launch"]._pam_connection_clipboard_bool
    if clip(connection.get("readOnly")):
        raise ExportError(RECORD_UNUSABLE, f"record {record_uid} has connection.readOnly:true "
                                           "(only meaningful when joining a session); pam launch refuses it")
    if connection.get("disableCopy"):
        raise ExportError(RECORD_UNUSABLE, f"record {record_uid} has disableCopy:true (KCM then blocks terminal "
                                           "output); pam launch refuses it")
    if clip(connection.get("disablePaste")):
        raise ExportError(RECORD_UNUSABLE, f"record {record_uid} has disablePaste:true; pam launch refuses it")


def launch_credential_uid(params, record, record_uid: str, tdag) -> Optional[str]:
    """The DAG launch-credential edge, fallback `pamSettings.connection.userRecords[0]` (launch.py)."""
    c = _commander()
    uid = c["tc"]._get_launch_credential_uid(params, record_uid, tdag=tdag) if tdag is not None else None
    if not uid:
        field = record.get_typed_field("pamSettings")
        value = field.get_default_value(dict) if field else None
        conn = (value or {}).get("connection", {})
        if isinstance(conn, dict):
            ur = conn.get("userRecords", [])
            if ur:
                uid = ur[0]
    return uid


def gateway_credential_type(context: Dict[str, Any]):
    """(credentialType, userRecordUid) for the offer inputs; `_open_terminal_webrtc_tunnel`'s inline decision:
    ephemeral (JIT) > userSupplied (CLI override / userRecords[0] fallback with allowSupply*) > linked > none."""
    user_record_uid = context.get("userRecordUid")
    if context.get("createEphemeral", False):
        return "ephemeral", None
    if context.get("cliUserOverride", False):
        return "userSupplied", None
    if user_record_uid:
        return "linked", user_record_uid
    return None, None


def handler_credential_type(context: Dict[str, Any]):
    """(credential_type, user_record_uid) for the guacd handshake credentials; the PythonHandler branch of
    `_open_terminal_webrtc_tunnel`: ephemeral > linked (any user record) > userSupplied (allowSupply*) > none."""
    user_record_uid = context.get("userRecordUid")
    if context.get("createEphemeral", False):
        return "ephemeral", None
    if user_record_uid:
        return "linked", user_record_uid
    if context.get("allowSupplyHost", False) or context.get("allowSupplyUser", False):
        return "userSupplied", None
    return None, None


def tunnel_target(record, record_uid: str):
    """Target of `pam tunnel start` (PAMTunnelStartCommand.execute): pamHostname.hostName and
    pamSettings.portForward.port, else pamHostname.port."""
    field = record.get_typed_field("pamSettings")
    pam_settings = field.get_default_value() if field else {}
    pam_settings = pam_settings if isinstance(pam_settings, dict) else {}
    target = record.get_typed_field("pamHostname")
    host_value = (target.get_default_value() if target else None) or {}
    host = host_value.get("hostName")
    port = pam_settings.get("portForward", {}).get("port", host_value.get("port"))
    if pam_settings.get("allowSupplyHost", False) and not host:
        raise ExportError(RECORD_UNUSABLE, f"record {record_uid} has allowSupplyHost and no host: give "
                                           "--target-host and --target-port")
    if not host:
        raise ExportError(RECORD_UNUSABLE, f"record {record_uid} has no pamHostname host")
    try:
        port = int(port)
    except (TypeError, ValueError):
        raise ExportError(RECORD_UNUSABLE, f"record {record_uid} has no valid target port")
    if not 1 <= port <= 65535:
        raise ExportError(RECORD_UNUSABLE, f"record {record_uid}: port {port} is outside 1-65535")
    return host, port


def build_ticket(params, record_token: str, *, tunnel: bool = False, api: Optional[CommanderApi] = None,
                 include_turn: bool = False, allow_offline: bool = False, target_host: Optional[str] = None,
                 target_port: Optional[int] = None, workflow_reason=None, workflow_ticket=None,
                 now: Optional[float] = None) -> Dict[str, Any]:
    """The version-1 launch ticket (cli/TICKET.md) for `record_token`, from a logged-in, synced `params`."""
    api = api or CommanderApi()
    c = _commander()
    vault, tc = c["vault"], c["tc"]
    now = time.time() if now is None else now

    record_uid = resolve_record(params, record_token)
    record = vault.KeeperRecord.load(params, record_uid)
    seed = traffic_seed(record)

    # The gates `pam launch` / `pam tunnel start` apply before anything else (launch.py, tunnel_and_connections.py).
    enforcement, action = ("allow_launch_pam_tunnels", "tunneling") if tunnel else \
        ("allow_launch_pam_on_cloud_connection", "connections")
    try:
        from keepercommander.commands.workflow.helpers import is_pam_action_allowed_by_enforcement
    except ImportError:
        is_pam_action_allowed_by_enforcement = None
    if is_pam_action_allowed_by_enforcement is not None and \
            not is_pam_action_allowed_by_enforcement(params, enforcement):
        raise ExportError(POLICY_DENIED, f"your enterprise enforcement does not allow this ({enforcement})")
    if not api.config_allows(params, record_uid, action):
        raise ExportError(POLICY_DENIED, f"{action} are disabled by the PAM configuration of record {record_uid}")

    two_factor_value = None
    gate = api.workflow_gate(params, record_uid, reason=workflow_reason, ticket=workflow_ticket)
    if gate is not None:
        if not gate.allowed:
            raise ExportError(WORKFLOW_DENIED, f"Commander's workflow gate did not allow record {record_uid} "
                                               "(approval, check-out or MFA needed: run `pam launch` once)")
        two_factor_value = gate.two_factor_value or None

    tdag = api.tunnel_dag(params, record_uid)
    ticket: Dict[str, Any] = {"version": 1}
    key_id = int(params.rest_context.server_key_id)
    ticket["router_url"] = c["get_router_url"](params)
    ticket["relay_host"] = c["get_relay_host"](params.server)
    ticket["verify_tls"] = getattr(params, "ssl_verify", True) is not False
    logout_min = int(getattr(params, "logout_timer", 0) or 0)
    ticket["auth"] = {
        "session_token_b64url": params.session_token,
        "server_key_id": key_id,
        "server_public_key_b64url": server_public_key_b64url(c["rest_api"], key_id),
        "expires_hint_unix": int(now) + (logout_min * 60 if logout_min > 0 else DEFAULT_SESSION_HINT_SEC),
    }

    if tunnel:
        host, port = (target_host, target_port) if target_host else tunnel_target(record, record_uid)
        gw = resolve_gateway(params, api, record_uid, tdag, allow_offline)
        field = record.get_typed_field("pamSettings")
        ps = field.get_default_value() if field else {}
        protocol = (((ps or {}).get("connection") or {}).get("protocol") or "").strip().lower() or None
        ticket.update({
            "gateway_uid": gw["gateway_uid"],
            "record_uid": record_uid,
            "traffic_encryption_seed_b64": base64.b64encode(seed).decode(),
            "protocol": protocol,
            "target": {"hostName": host, "port": int(port)},
            "credential": None,
            "guacd_params": None,
            "clipboard": None,
        })
    else:
        protocol = tc.detect_protocol(params, record_uid)
        if protocol not in tc.ALL_TERMINAL:
            raise ExportError(NOT_PAM_RESOURCE, f"record {record_uid}: protocol {protocol!r} is not a terminal "
                                                "protocol (pam launch supports ssh, telnet, kubernetes, mysql, "
                                                "postgresql, sql-server); use --tunnel for a port forward")
        _launch_gates(record, record_uid)
        dag_linked_uid = launch_credential_uid(params, record, record_uid, tdag)
        gw = resolve_gateway(params, api, record_uid, tdag, allow_offline)
        try:
            settings = tc.extract_terminal_settings(params, record_uid, protocol, dag_linked_uid=dag_linked_uid)
        except Exception as e:  # CommandError: no hostname, several host fields, ...
            raise ExportError(RECORD_UNUSABLE, f"record {record_uid}: {clean(e)}")
        context = tc.create_connection_context(params, record_uid, gw["gateway_uid"], protocol, settings)
        h_type, h_user = handler_credential_type(context)
        screen = c["terminal_size"]._build_screen_info(80, 24)
        try:
            cs = tc._build_guacamole_connection_settings(params=params, record_uid=record_uid, protocol=protocol,
                                                         settings=settings, context=context, screen_info=screen,
                                                         user_record_uid=h_user, credential_type=h_type)
        except Exception as e:
            raise ExportError(RECORD_UNUSABLE, f"record {record_uid}: {clean(e)}")
        guacd = {k: v for k, v in cs["guacd_params"].items() if k not in RUNTIME_GUACD_KEYS + CLIPBOARD_GUACD_KEYS}
        g_type, g_user = gateway_credential_type(context)
        if g_type == "userSupplied":
            logging.warning("record %s uses a user-supplied credential (ConnectAs), which pam-lite does not send; "
                            "the credential travels only in the guacd parameters", record_uid)
        clip = settings.get("clipboard") or {}
        ticket.update({
            "gateway_uid": gw["gateway_uid"],
            "record_uid": record_uid,
            "traffic_encryption_seed_b64": base64.b64encode(seed).decode(),
            "protocol": context["conversationType"],
            "target": {"hostName": settings["hostname"], "port": int(settings["port"])},
            "credential": {"type": g_type, "user_record_uid": g_user},
            "guacd_params": guacd,
            "clipboard": {"disableCopy": bool(clip.get("disableCopy")),
                          "disablePaste": bool(clip.get("disablePaste"))},
        })

    if include_turn:
        rs = api.relay_access_creds(params)
        if rs is not None:
            server_ms = int(getattr(rs, "serverTime", 0) or 0)
            base = server_ms // 1000 if server_ms else int(now)
            ticket["turn"] = {"username": rs.username, "password": rs.password,
                              "expires_unix": base + TURN_EXPIRE_SEC}
        else:
            logging.warning("relay_access_creds gave nothing: the ticket has no TURN credentials")
    ticket["two_factor_value"] = two_factor_value
    return ticket
