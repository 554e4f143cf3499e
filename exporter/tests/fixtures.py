"""Commander's own objects as fixtures: a `KeeperParams` with a record cache of typed records (the PAM
configuration, every PAM resource type, pamUser credentials of every kind), a PAM graph built with Commander's
`keeper_dag` (its in-memory DAG with the local test connection), and the gateway list `pam/get_controllers`
would return. No Keeper server is involved: everything that would talk to one is replaced in `patched()`.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from types import SimpleNamespace
from unittest import mock

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keepercommander.params import KeeperParams
from keepercommander.proto import pam_pb2
from keepercommander import utils


def uid(n: int) -> str:
    """A deterministic 22-character record uid."""
    return utils.base64_url_encode(bytes([n]) * 16)


CONFIG = uid(1)
GATEWAY = uid(2)
OTHER_GATEWAY = uid(3)
SEED = bytes(range(32))
SESSION_TOKEN = utils.base64_url_encode(b"fixture-session-token-" + bytes(range(40)))
TWO_FACTOR = "424242"


def _pem_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                             serialization.NoEncryption()).decode()


PRIVATE_KEY = _pem_key()


def _record(record_uid, rtype, title, fields, custom=None, seed=SEED):
    if seed is not None:
        fields = fields + [{"type": "trafficEncryptionSeed", "value": [base64.b64encode(seed).decode()]}]
    data = {"type": rtype, "title": title, "fields": fields, "custom": custom or [], "notes": ""}
    return {
        "record_uid": record_uid,
        "version": 3,
        "revision": 1,
        "record_key_unencrypted": bytes(32),
        "data_unencrypted": json.dumps(data).encode(),
        "shared": False,
    }


def _machine(record_uid, rtype, title, host, port, connection, allow_supply_host=False, seed=SEED,
             port_forward=None):
    settings = {"connection": connection, "allowSupplyHost": allow_supply_host}
    if port_forward is not None:
        settings["portForward"] = port_forward
    fields = [
        {"type": "pamHostname", "label": "", "value": [{"hostName": host, "port": str(port)}] if host else []},
        {"type": "pamSettings", "value": [settings]},
        {"type": "login", "value": ["machine-login"]},
        {"type": "password", "value": ["machine-password"]},
    ]
    return _record(record_uid, rtype, title, fields, seed=seed)


def _user(record_uid, title, login, password=None, private_key=None):
    fields = [{"type": "login", "value": [login]}]
    if password is not None:
        fields.append({"type": "password", "value": [password]})
    if private_key is not None:
        fields.append({"type": "keyPair", "value": [{"privateKey": private_key, "publicKey": ""}]})
    return _record(record_uid, "pamUser", title, fields, seed=None)


# Credential records (every kind `_extract_user_record_credentials` reads).
USER_PW = uid(10)       # login + password
USER_KEY = uid(11)      # login + SSH private key (passphrase = password)
USER_KEY_ONLY = uid(12)  # login + SSH private key, no password
ADMIN = uid(13)         # an administrative credential on the same machine (not the launch credential)

# Resources: (uid, record type, title, host, port, pamSettings.connection, extra) — every PAM resource type and
# every terminal protocol, and every credential path of `pam launch`.
SSH_DAG = uid(20)            # pamMachine ssh, launch credential from the DAG (ACL is_launch_credential)
SSH_FALLBACK = uid(21)       # pamMachine ssh, no DAG credential: userRecords[0]
SSH_JIT = uid(22)            # pamMachine ssh, jit_settings.createEphemeral on the resource DAG
SSH_MACHINE_CREDS = uid(23)  # pamMachine ssh, no user record: login/password of the machine record itself
SSH_SUPPLY_USER = uid(24)    # pamMachine ssh, allowSupplyUser with userRecords[0] fallback (userSupplied)
TELNET = uid(25)             # pamMachine telnet with regexes
K8S = uid(26)                # pamMachine kubernetes
MYSQL = uid(27)              # pamDatabase mysql (databaseType only, protocol inferred)
POSTGRES = uid(28)           # pamDatabase postgresql
MSSQL = uid(29)              # pamDatabase sql-server
DIRECTORY = uid(30)          # pamDirectory ssh
NO_SEED = uid(31)            # pamMachine without trafficEncryptionSeed
RDP = uid(32)                # pamMachine rdp (not a terminal protocol)
NOT_PAM = uid(33)            # a login record
NO_GW = uid(34)              # pamMachine whose configuration has no gateway
OFFLINE = uid(35)            # pamMachine behind a gateway the router does not list as online
READ_ONLY = uid(36)          # connection.readOnly: pam launch refuses it
NO_CONFIG = uid(37)          # configuration without a controller
SSH_DAG_TITLE = "web-1 (ssh, DAG credential)"

LAUNCHABLE = [SSH_DAG, SSH_FALLBACK, SSH_JIT, SSH_MACHINE_CREDS, SSH_SUPPLY_USER, TELNET, K8S, MYSQL, POSTGRES,
              MSSQL, DIRECTORY]


def records():
    ssh = lambda **kw: dict({"protocol": "ssh", "hostKey": "ssh-ed25519 AAAAC3Nza", "command": "bash -l",
                             "colorScheme": "green-black", "fontSize": "14", "sftp": {"enableSftp": True,
                             "sftpRootDirectory": "/srv"}}, **kw)
    r = {
        CONFIG: _record(CONFIG, "pamNetworkConfiguration", "PAM config",
                        [{"type": "pamResources", "value": [{"controllerUid": GATEWAY}]}], seed=None),
        NO_CONFIG: _record(NO_CONFIG, "pamNetworkConfiguration", "PAM config without gateway",
                           [{"type": "pamResources", "value": [{}]}], seed=None),
        USER_PW: _user(USER_PW, "alice", "alice", password="alice-Pw-1"),
        USER_KEY: _user(USER_KEY, "bob", "bob", password="bob-passphrase", private_key=PRIVATE_KEY),
        USER_KEY_ONLY: _user(USER_KEY_ONLY, "carol", "carol", private_key=PRIVATE_KEY),
        ADMIN: _user(ADMIN, "root", "root", password="admin-Pw"),
        SSH_DAG: _machine(SSH_DAG, "pamMachine", SSH_DAG_TITLE, "10.0.0.5", 22,
                          ssh(userRecords=[ADMIN])),
        SSH_FALLBACK: _machine(SSH_FALLBACK, "pamMachine", "web-2", "web-2.internal", 2222,
                               ssh(userRecords=[USER_KEY_ONLY])),
        SSH_JIT: _machine(SSH_JIT, "pamMachine", "jit-host", "10.0.0.7", 22, ssh(userRecords=[USER_PW])),
        SSH_MACHINE_CREDS: _machine(SSH_MACHINE_CREDS, "pamMachine", "legacy", "10.0.0.8", 22,
                                    {"protocol": "ssh"}),
        SSH_SUPPLY_USER: _machine(SSH_SUPPLY_USER, "pamMachine", "supply", "10.0.0.9", 22,
                                  {"protocol": "ssh", "allowSupplyUser": True, "userRecords": [USER_PW]}),
        TELNET: _machine(TELNET, "pamMachine", "switch", "10.0.1.1", 23,
                         {"protocol": "telnet", "usernameRegex": "login:", "passwordRegex": "Password:",
                          "loginSuccessRegex": "\\$", "loginFailureRegex": "denied", "userRecords": [USER_PW]}),
        K8S: _machine(K8S, "pamMachine", "cluster", "k8s.internal", 6443,
                      {"protocol": "kubernetes", "namespace": "prod", "pod": "api-0", "container": "api",
                       "useSSL": True, "ignoreCert": True, "caCert": "CA", "clientCert": "CERT",
                       "clientKey": "KEY", "userRecords": [USER_PW]}),
        MYSQL: _machine(MYSQL, "pamDatabase", "orders-db", "db.internal", 3306,
                        {"databaseType": "mysql", "database": "orders", "disableCsvExport": True,
                         "userRecords": [USER_PW]}),
        POSTGRES: _machine(POSTGRES, "pamDatabase", "pg", "pg.internal", 5432,
                           {"protocol": "postgresql", "database": "app", "disableCsvImport": True,
                            "userRecords": [USER_PW]}),
        MSSQL: _machine(MSSQL, "pamDatabase", "mssql", "sql.internal", 1433,
                        {"protocol": "sql-server", "userRecords": [USER_PW]}),
        DIRECTORY: _machine(DIRECTORY, "pamDirectory", "dc-1", "dc.internal", 22,
                            {"protocol": "ssh", "userRecords": [USER_KEY]}),
        NO_SEED: _machine(NO_SEED, "pamMachine", "no-seed", "10.0.0.10", 22, {"protocol": "ssh"}, seed=None),
        RDP: _machine(RDP, "pamMachine", "desktop", "10.0.0.11", 3389, {"protocol": "rdp"},
                      port_forward={"port": 3390}),
        NOT_PAM: _record(NOT_PAM, "login", "a website", [{"type": "login", "value": ["x"]}], seed=None),
        NO_GW: _machine(NO_GW, "pamMachine", "orphan", "10.0.0.12", 22, {"protocol": "ssh"}),
        OFFLINE: _machine(OFFLINE, "pamMachine", "offline", "10.0.0.13", 22, {"protocol": "ssh"}),
        READ_ONLY: _machine(READ_ONLY, "pamMachine", "read-only", "10.0.0.14", 22,
                            {"protocol": "ssh", "readOnly": True}),
    }
    return r


# Which PAM configuration each resource belongs to (the DAG's LINK edges; get_config_uid would ask the router).
CONFIG_OF = {u: CONFIG for u in LAUNCHABLE + [NO_SEED, RDP, READ_ONLY]}
CONFIG_OF[NO_GW] = NO_CONFIG
CONFIG_OF[OFFLINE] = uid(38)
# The config behind OFFLINE names OTHER_GATEWAY (known, but not online).
EXTRA_CONFIGS = {uid(38): OTHER_GATEWAY}
JIT = {SSH_JIT}


def params() -> KeeperParams:
    p = KeeperParams()
    p.server = "keepersecurity.com"
    p.session_token = SESSION_TOKEN
    p.rest_context.server_key_id = 7
    p.logout_timer = 30
    p.record_cache.update(records())
    # What a sync builds: the root folder holding every record (path and title lookups walk it).
    from keepercommander.subfolder import RootFolderNode
    p.root_folder = RootFolderNode()
    p.subfolder_record_cache[""] = set(p.record_cache)
    for cfg, gw in EXTRA_CONFIGS.items():
        p.record_cache[cfg] = _record(cfg, "pamNetworkConfiguration", "other config",
                                      [{"type": "pamResources", "value": [{"controllerUid": gw}]}], seed=None)
    return p


def dag_for(record_uid: str):
    """A `TunnelDAG` as `pam launch` builds it, its graph made with Commander's keeper_dag: configuration →
    resource (LINK), credentials → resource (ACL; the launch credential's edge has is_launch_credential), and
    the resource's jit_settings."""
    from keepercommander.commands.tunnel.port_forward.TunnelGraph import TunnelDAG
    from keepercommander.keeper_dag import DAG, EdgeType
    from keepercommander.keeper_dag.connection.local import Connection as LocalConnection
    from keepercommander.record import Record as PasswordRecord

    cfg = CONFIG_OF[record_uid]
    tdag = TunnelDAG.__new__(TunnelDAG)
    tdag.params = None
    tdag.record = PasswordRecord()
    tdag.record.record_uid = cfg
    tdag.record.record_key = bytes(32)
    d = tempfile.mkdtemp(prefix="pam-lite-dag-")
    conn = LocalConnection(db_dir=d, db_file="dag.db")
    dag = DAG(conn=conn, record=tdag.record, graph_id=0)
    root = dag.add_vertex(uid=cfg, name="config")
    res = dag.add_vertex(uid=record_uid, name="resource")
    res.belongs_to(root, EdgeType.LINK)
    if record_uid == SSH_DAG:
        admin = dag.add_vertex(uid=ADMIN, name="admin")
        admin.belongs_to(res, EdgeType.ACL, content={"belongs_to": True, "is_admin": True})
        launch = dag.add_vertex(uid=USER_KEY, name="launch")
        launch.belongs_to(res, EdgeType.ACL, content={"belongs_to": False, "is_launch_credential": True})
    tdag.linking_dag = dag
    return tdag


def controllers():
    return [pam_pb2.PAMController(controllerUid=utils.base64_url_decode(GATEWAY), controllerName="gw-1"),
            pam_pb2.PAMController(controllerUid=utils.base64_url_decode(OTHER_GATEWAY), controllerName="gw-2")]


class FixtureApi:
    """The exporter's server-facing calls, answered from the fixtures."""

    def __init__(self, gate=None, turn=True, config_allows=True):
        self.gate = gate
        self.turn = turn
        self.allows = config_allows
        self.config_actions = []

    def tunnel_dag(self, params, record_uid):
        return dag_for(record_uid)

    def online_gateway_uids(self, params):
        return [utils.base64_url_decode(GATEWAY)]

    def relay_access_creds(self, params):
        if not self.turn:
            return None
        return SimpleNamespace(username="turn-user", password="turn-Pw", serverTime=1_800_000_000_000)

    def config_allows(self, params, record_uid, action):
        self.config_actions.append(action)
        return self.allows

    def workflow_gate(self, params, record_uid, reason=None, ticket=None):
        return self.gate


def jit_settings(params, record_uid, config_uid=None):
    return {"createEphemeral": True} if record_uid in JIT else None


@contextlib.contextmanager
def patched():
    """Replace Commander's server calls that the pure functions make internally (gateway list, per-config
    controller lookup, JIT settings from the resource graph) with fixture answers."""
    from keepercommander.commands.pam_launch import launch, terminal_connection

    def configuration_controller_get(params, config_uid_bytes):
        return None

    with mock.patch.object(launch, "get_all_gateways", lambda params: controllers()), \
            mock.patch.object(terminal_connection, "get_resource_jit_settings", jit_settings), \
            mock.patch("keepercommander.commands.pam.config_helper.configuration_controller_get",
                       configuration_controller_get), \
            mock.patch.dict(os.environ, {"KROUTER_URL": ""}):
        os.environ.pop("KROUTER_URL", None)
        yield
