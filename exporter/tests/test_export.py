"""The exporter against Commander 18.1.8's own objects, without a Keeper server (fixtures.py).

What these tests prove:
  * for every PAM resource type, terminal protocol and credential kind in the fixtures, the ticket the exporter
    writes makes pam-lite send exactly the offer Commander's own `pam launch` code sends for the same objects:
    `launch_terminal_connection` runs unchanged up to the router POST, which is captured, and its encrypted offer
    is decrypted with a key derived from the *ticket's* seed; offer data and inputs are compared field by field
    with the offer pam-lite builds from the ticket (cli/TICKET.md's rules, mirrored in `pam_lite_offer`);
  * every failure has its own exit code and message, and no message or summary contains a secret;
  * the file is written 0600 and a wider-permission file is never overwritten;
  * `pam-lite ticket check` accepts every fixture's ticket, and the exporter's ticket and
    `pam-lite emulator --ticket-out`'s have the same shape (needs the pam-lite binary: PAM_LITE_BIN).

What they cannot prove: that a live Keeper tenant's records, DAG and router answers look like these fixtures
(see exporter/README.md).
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
import unittest
from types import SimpleNamespace
from unittest import mock

sys.path.insert(0, os.path.dirname(__file__))
import fixtures as F  # noqa: E402

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: E402

from pam_lite_export import errors  # noqa: E402
from pam_lite_export.cli import main as cli_main  # noqa: E402
from pam_lite_export.errors import ExportError  # noqa: E402
from pam_lite_export.gather import build_ticket  # noqa: E402
from pam_lite_export.output import summary, write_ticket  # noqa: E402

COLS, ROWS = 80, 24
SECRETS = [F.SESSION_TOKEN, "alice-Pw-1", "bob-passphrase", "admin-Pw", "machine-password", "turn-Pw",
           base64.b64encode(F.SEED).decode(), F.TWO_FACTOR, F.PRIVATE_KEY.splitlines()[1]]


class Captured(Exception):
    """Raised by the fake router POST: Commander's offer is built, nothing more is needed."""


def commander_offer(params, record_uid, two_factor_value=None):
    """Run Commander's `pam launch` connection path (`find_gateway`, DAG launch credential with the
    userRecords[0] fallback as in launch.py, then `launch_terminal_connection`) on the fixtures; return the
    destination gateway, the offer inputs and the raw encrypted data Commander would POST to the router."""
    from keepercommander.commands.pam_launch import launch, terminal_connection as tc
    from keepercommander.commands.pam_launch.terminal_size import _build_screen_info
    from pam_lite_export.gather import launch_credential_uid

    record = launch.vault.KeeperRecord.load(params, record_uid)
    tdag = F.dag_for(record_uid)
    dag_linked_uid = launch_credential_uid(params, record, record_uid, tdag)
    gateway_info = launch.PAMLaunchCommand().find_gateway(params, record_uid, tdag=tdag)
    got = {}

    def send(params, destination_gateway_uid_str, gateway_action, **kw):
        got["gateway_uid"] = destination_gateway_uid_str
        got["inputs"] = dict(gateway_action.inputs)
        raise Captured()

    class Registry:
        def set_server_mode(self, v):
            pass

        def create_tube(self, **kw):
            return {"tube_id": "tube-1", "offer": base64.b64encode(b"v=0\r\n").decode()}

        def close_tube(self, *a, **kw):
            pass

    class Handler:
        def __init__(self, settings):
            self.connection_settings = settings

    def handler(tube_registry, conversation_id, conn_no, connection_settings):
        return (lambda *a: None), Handler(connection_settings)

    with mock.patch.object(tc, "get_or_create_tube_registry", lambda p: Registry()), \
            mock.patch.object(tc, "router_get_relay_access_creds",
                              lambda params, expire_sec=None: SimpleNamespace(username="u", password="p")), \
            mock.patch.object(tc, "start_websocket_listener", lambda *a, **kw: None), \
            mock.patch.object(tc, "create_python_handler", handler), \
            mock.patch.object(tc, "get_terminal_size_pixels", lambda *a, **kw: _build_screen_info(COLS, ROWS)), \
            mock.patch.object(tc, "router_send_action_to_gateway", send):
        try:
            tc.launch_terminal_connection(params, record_uid, gateway_info, dag_linked_uid=dag_linked_uid,
                                          no_trickle_ice=True, two_factor_value=two_factor_value)
        except Exception:
            pass  # Captured, wrapped by Commander into a failed result / CommandError
    assert "inputs" in got, "Commander did not reach the offer POST"
    return got


def decrypt_with_ticket_seed(ticket, inputs):
    """Decrypt Commander's offer data with the key pam-lite derives from the ticket (HKDF, spec §2.5)."""
    from keepercommander.commands.tunnel.port_forward.tunnel_helpers import tunnel_decrypt

    seed = base64.b64decode(ticket["traffic_encryption_seed_b64"])
    nonce = base64.b64decode(inputs["base64Nonce"])
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce,
               info=b"KEEPER_TUNNEL_ENCRYPT_AES_GCM_128").derive(seed)
    return json.loads(tunnel_decrypt(AESGCM(key), inputs["data"]))


def pam_lite_offer(ticket, cols=COLS, rows=ROWS):
    """The offer data and extra inputs pam-lite builds from a ticket (cli/TICKET.md; cli/src/ticket.rs
    `terminal_offer_data` / `offer_inputs`)."""
    w, h, dpi = cols * 10 + 2 * 7 + 16, rows * 20 + 2 * 7, 96
    clip = ticket.get("clipboard") or {}
    copy, paste = bool(clip.get("disableCopy")), bool(clip.get("disablePaste"))
    params = {"enable-pipe": "true"}
    for k, v in (ticket.get("guacd_params") or {}).items():
        if k not in ("disable-copy", "disable-paste"):
            params[k] = v
    params.setdefault("protocol", ticket["protocol"])
    t = ticket.get("target")
    if t:
        params.setdefault("hostname", t["hostName"])
        params.setdefault("port", str(t["port"]))
    params.update({"width": str(w), "height": str(h), "dpi": str(dpi)})
    if paste:
        params["disable-paste"] = "true"
    if copy:
        params["disable-copy"] = "true"
    data = {"audio": ["audio/L8", "audio/L16"], "video": [], "size": [w, h, dpi],
            "image": ["image/jpeg", "image/png", "image/webp"], "guacd_params": params,
            "terminalSettings": {"disableCopy": copy, "disablePaste": paste},
            "clipboard": {"disableCopy": copy, "disablePaste": paste}}
    if t:
        data["host"] = {"hostName": t["hostName"], "port": t["port"]}
    inputs = {"recordUid": ticket["record_uid"], "conversationType": ticket["protocol"]}
    cred = ticket.get("credential") or {}
    if cred.get("type"):
        inputs["credentialType"] = cred["type"]
        if cred["type"] == "linked":
            inputs["userRecordUid"] = cred["user_record_uid"]
        elif cred["type"] == "userSupplied":
            inputs["allowSupplyUser"] = True
    if ticket.get("two_factor_value"):
        inputs["twoFactorValue"] = ticket["two_factor_value"]
    return data, inputs


def gate(allowed=True, two_factor_value=None):
    return SimpleNamespace(allowed=allowed, two_factor_value=two_factor_value, expires_on_ms=0)


class ExporterTest(unittest.TestCase):
    def setUp(self):
        self._patch = F.patched()
        self._patch.__enter__()
        self.params = F.params()

    def tearDown(self):
        self._patch.__exit__(None, None, None)

    def ticket(self, token, **kw):
        kw.setdefault("api", F.FixtureApi())
        return build_ticket(self.params, token, now=1_700_000_000, **kw)

    # ------------------------------------------------------------------ against Commander's own offer

    def test_every_resource_matches_commanders_offer_field_by_field(self):
        for record_uid in F.LAUNCHABLE:
            for two_factor in (None, F.TWO_FACTOR):
                with self.subTest(record=record_uid, two_factor=bool(two_factor)):
                    t = self.ticket(record_uid, api=F.FixtureApi(gate=gate(True, two_factor)))
                    got = commander_offer(self.params, record_uid, two_factor_value=two_factor)
                    self.assertEqual(t["gateway_uid"], got["gateway_uid"])
                    offer = decrypt_with_ticket_seed(t, got["inputs"])  # proves the seed
                    offer.pop("offer")  # the SDP: each side's own WebRTC stack
                    want_data, want_inputs = pam_lite_offer(t)
                    for key in sorted(set(offer) | set(want_data)):
                        self.assertEqual(offer.get(key), want_data.get(key), f"offer field {key}")
                    inputs = {k: v for k, v in got["inputs"].items()
                              if k not in ("kind", "base64Nonce", "data", "trickleICE")}
                    self.assertEqual(inputs, want_inputs)

    def test_credential_kinds(self):
        t = self.ticket(F.SSH_DAG)
        # The DAG's is_launch_credential edge wins over userRecords[0] (the admin credential).
        self.assertEqual(t["credential"], {"type": "linked", "user_record_uid": F.USER_KEY})
        g = t["guacd_params"]
        self.assertEqual((g["username"], g["password"], g["passphrase"]), ("bob", "bob-passphrase", "bob-passphrase"))
        self.assertIn("PRIVATE KEY", g["private-key"])
        self.assertEqual(self.ticket(F.SSH_FALLBACK)["credential"]["user_record_uid"], F.USER_KEY_ONLY)
        jit = self.ticket(F.SSH_JIT)
        self.assertEqual(jit["credential"], {"type": "ephemeral", "user_record_uid": None})
        self.assertEqual((jit["guacd_params"]["username"], jit["guacd_params"]["password"]), ("", ""))
        legacy = self.ticket(F.SSH_MACHINE_CREDS)
        self.assertEqual(legacy["credential"]["type"], None)
        self.assertEqual(legacy["guacd_params"]["username"], "machine-login")

    def test_protocols_and_targets(self):
        want = {F.TELNET: ("telnet", "10.0.1.1", 23), F.K8S: ("kubernetes", "k8s.internal", 6443),
                F.MYSQL: ("mysql", "db.internal", 3306), F.POSTGRES: ("postgresql", "pg.internal", 5432),
                F.MSSQL: ("sql-server", "sql.internal", 1433), F.DIRECTORY: ("ssh", "dc.internal", 22)}
        for uid, (proto, host, port) in want.items():
            t = self.ticket(uid)
            self.assertEqual((t["protocol"], t["target"]), (proto, {"hostName": host, "port": port}))
            self.assertEqual(t["guacd_params"]["protocol"], proto)
            for k in ("width", "height", "dpi"):
                self.assertNotIn(k, t["guacd_params"])  # pam-lite computes them from the real terminal

    def test_record_found_by_title_and_auth_fields(self):
        t = self.ticket(F.SSH_DAG_TITLE)
        self.assertEqual(t["record_uid"], F.SSH_DAG)
        self.assertEqual(t["router_url"], "https://connect.keepersecurity.com")
        self.assertEqual(t["relay_host"], "krelay.keepersecurity.com")
        a = t["auth"]
        self.assertEqual((a["session_token_b64url"], a["server_key_id"]), (F.SESSION_TOKEN, 7))
        self.assertEqual(len(base64.urlsafe_b64decode(a["server_public_key_b64url"] + "==")), 65)
        self.assertEqual(a["expires_hint_unix"], 1_700_000_000 + 30 * 60)  # Commander's logout_timer (min)

    def test_turn_credentials_with_expiry(self):
        t = self.ticket(F.SSH_DAG, include_turn=True)
        self.assertEqual(t["turn"], {"username": "turn-user", "password": "turn-Pw",
                                     "expires_unix": 1_800_000_000 + 60_000_000})
        self.assertNotIn("turn", self.ticket(F.SSH_DAG))

    def test_tunnel_ticket_is_what_pam_tunnel_start_gathers(self):
        t = self.ticket(F.RDP, tunnel=True)  # a graphical resource is fine for a port forward
        self.assertEqual(t["target"], {"hostName": "10.0.0.11", "port": 3390})  # portForward.port wins
        self.assertEqual((t["protocol"], t["credential"], t["guacd_params"]), ("rdp", None, None))
        t = self.ticket(F.SSH_DAG, tunnel=True, target_host="other", target_port=2200)
        self.assertEqual(t["target"], {"hostName": "other", "port": 2200})

    # ------------------------------------------------------------------ failures

    def assert_fails(self, code, token, **kw):
        with self.assertRaises(ExportError) as cm:
            self.ticket(token, **kw)
        self.assertEqual(cm.exception.code, code, str(cm.exception))
        for s in SECRETS:
            self.assertNotIn(s, str(cm.exception))
        return str(cm.exception)

    def test_every_failure_has_its_code(self):
        self.assertIn("not found", self.assert_fails(errors.RECORD_NOT_FOUND, "no such record"))
        self.assertIn("not a PAM resource", self.assert_fails(errors.NOT_PAM_RESOURCE, F.NOT_PAM))
        self.assertIn("terminal protocol", self.assert_fails(errors.NOT_PAM_RESOURCE, F.RDP))
        self.assertIn("trafficEncryptionSeed", self.assert_fails(errors.NO_TRAFFIC_SEED, F.NO_SEED))
        self.assertIn("gateway", self.assert_fails(errors.NO_GATEWAY, F.NO_GW))
        self.assertIn("offline", self.assert_fails(errors.GATEWAY_OFFLINE, F.OFFLINE))
        self.assertEqual(self.ticket(F.OFFLINE, allow_offline=True)["gateway_uid"], F.OTHER_GATEWAY)
        self.assertIn("readOnly", self.assert_fails(errors.RECORD_UNUSABLE, F.READ_ONLY))
        self.assert_fails(errors.WORKFLOW_DENIED, F.SSH_DAG, api=F.FixtureApi(gate=gate(False)))
        api = F.FixtureApi(config_allows=False)
        self.assertIn("connections", self.assert_fails(errors.POLICY_DENIED, F.SSH_DAG, api=api))
        api = F.FixtureApi(config_allows=False)
        self.assertIn("tunneling", self.assert_fails(errors.POLICY_DENIED, F.SSH_DAG, api=api, tunnel=True))
        self.params.enforcements = {"booleans": [{"key": "allow_launch_pam_on_cloud_connection", "value": False},
                                                 {"key": "allow_launch_pam_tunnels", "value": True}]}
        self.assertIn("enforcement", self.assert_fails(errors.POLICY_DENIED, F.SSH_DAG))
        self.assertEqual(self.ticket(F.SSH_DAG, tunnel=True)["record_uid"], F.SSH_DAG)
        codes = [v for k, v in vars(errors).items() if k.isupper() and isinstance(v, int)]
        self.assertEqual(len(codes), len(set(codes)), "exit codes must be distinct")

    def test_login_failure_exit_code(self):
        def boom(params):
            raise RuntimeError("Invalid password")
        with mock.patch("keepercommander.api.login", boom), tempfile.TemporaryDirectory() as d, \
                contextlib.redirect_stderr(io.StringIO()) as err:
            cfg = os.path.join(d, "config.json")
            with open(cfg, "w") as f:
                json.dump({"user": "someone@example.com", "server": "keepersecurity.com"}, f)
            code = cli_main([F.SSH_DAG, "--config", cfg, "-o", os.path.join(d, "t.json")])
        self.assertEqual(code, errors.LOGIN_FAILED)
        self.assertIn("login failed", err.getvalue())
        self.assertFalse(os.path.exists(os.path.join(d, "t.json")))

    # ------------------------------------------------------------------ output

    def test_written_0600_and_wider_files_are_refused(self):
        t = self.ticket(F.SSH_DAG)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.json")
            write_ticket(path, t)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
            self.assertEqual(json.load(open(path)), t)
            write_ticket(path, t)  # an existing 0600 file is replaced
            os.chmod(path, 0o644)
            with self.assertRaises(ExportError) as cm:
                write_ticket(path, t)
            self.assertEqual(cm.exception.code, errors.UNSAFE_OUTPUT)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o644)  # left alone
            self.assertEqual(sorted(os.listdir(d)), ["t.json"])  # no temporary file left behind

    def test_stdout_output_and_nothing_secret_in_the_summary(self):
        t = self.ticket(F.SSH_DAG, include_turn=True, api=F.FixtureApi(gate=gate(True, F.TWO_FACTOR)))
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            write_ticket("-", t)
        self.assertEqual(json.loads(out.getvalue()), t)
        s = summary(t)
        for secret in SECRETS:
            self.assertNotIn(secret, s)
        self.assertIn(F.SSH_DAG, s)

    # ------------------------------------------------------------------ against pam-lite itself

    def pam_lite(self):
        path = os.environ.get("PAM_LITE_BIN")
        if not path or not os.access(path, os.X_OK):
            if os.environ.get("PAM_LITE_REQUIRE_BIN") == "1":
                self.fail(f"PAM_LITE_BIN={path!r} is not an executable pam-lite")
            self.skipTest("SKIPPED: PAM_LITE_BIN does not name a built pam-lite binary")
        return path

    def test_pam_lite_ticket_check_accepts_every_fixture_ticket(self):
        bin_ = self.pam_lite()
        tickets = [self.ticket(u, include_turn=True, api=F.FixtureApi(gate=gate(True, F.TWO_FACTOR)))
                   for u in F.LAUNCHABLE]
        tickets += [self.ticket(F.RDP, tunnel=True), self.ticket(F.SSH_DAG, tunnel=True)]
        with tempfile.TemporaryDirectory() as d:
            for i, t in enumerate(tickets):
                path = os.path.join(d, f"t{i}.json")
                write_ticket(path, t)
                r = subprocess.run([bin_, "ticket", "check", path], capture_output=True, text=True, timeout=30)
                self.assertEqual(r.returncode, 0, f"{t['record_uid']}: {r.stderr}")
                self.assertIn(t["record_uid"], r.stdout)
                self.assertNotIn("unknown fields", r.stdout)
                for s in SECRETS:
                    self.assertNotIn(s, r.stdout + r.stderr)

    def test_same_shape_as_the_emulators_ticket(self):
        bin_ = self.pam_lite()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "emu.json")
            p = subprocess.Popen([bin_, "emulator", "--ticket-out", path], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            try:
                deadline = time.monotonic() + 30
                while not (os.path.exists(path) and os.path.getsize(path) > 0) and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.1)
                emu = json.load(open(path))
            finally:
                p.terminate()
                p.wait(10)
        mine = self.ticket(F.SSH_DAG, include_turn=True)

        def shape(v):
            if isinstance(v, dict):
                return {k: shape(x) for k, x in v.items() if x is not None}
            return type(v).__name__

        a, b = shape(mine), shape(emu)
        for key in set(a) & set(b):
            if isinstance(a[key], dict):
                common = set(a[key]) & set(b[key])
                self.assertEqual({k: a[key][k] for k in common}, {k: b[key][k] for k in common}, key)
                self.assertEqual(set(a[key]), set(b[key]), f"{key} has different fields")
            else:
                self.assertEqual(a[key], b[key], key)
        required = {"version", "router_url", "auth", "gateway_uid", "record_uid", "traffic_encryption_seed_b64",
                    "protocol"}
        self.assertLessEqual(required, set(a))
        self.assertLessEqual(required, set(b))


class ScreenMetricsTest(unittest.TestCase):
    def test_pam_lites_pixel_formula_is_commanders(self):
        from keepercommander.commands.pam_launch.terminal_size import _build_screen_info
        for cols, rows in ((80, 24), (132, 50), (20, 5)):
            s = _build_screen_info(cols, rows)
            self.assertEqual((s["pixel_width"], s["pixel_height"], s["dpi"]),
                             (cols * 10 + 2 * 7 + 16, rows * 20 + 2 * 7, 96))


if __name__ == "__main__":
    unittest.main()
