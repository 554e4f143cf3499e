//! The launch ticket (spec §5.2, format in `cli/TICKET.md`): everything a launch needs that Commander would
//! get from a login, a vault sync and the PAM DAG, in one JSON file. With it pam-lite needs no Keeper
//! login at all, which is also what makes the embedded emulator possible (it writes one for itself).
//!
//! A ticket holds a session token, a traffic seed and usually target credentials, so it is treated like a
//! password: every secret sits in a [`Secret`], `Debug` is redacted, and [`Ticket::describe`] (what
//! `pam-lite ticket check` prints) shows sizes instead of values.
//!
//! Parsing goes through a `serde_json::Value` and a small path-tracking reader instead of
//! `#[derive(Deserialize)]` so that every error names the exact field (`auth.server_key_id`) and never echoes
//! a value that might be secret.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use pam_lite_core::offer::{
    CredentialType as OfferCredential, LaunchOffer, OfferData, TargetHost, TerminalOffer,
};
use pam_lite_core::router::envelope::{ServerPublicKey, EC_POINT_LEN};
use serde_json::{Map, Value};

use crate::secret::Secret;

/// The only ticket version this pam-lite reads.
pub const TICKET_VERSION: u64 = 1;
/// A real ticket is a few KiB; a private key in `guacd_params` is the largest part.
pub const MAX_TICKET_BYTES: u64 = 1024 * 1024;
/// Bound on any single string field (URLs, uids, hostnames). Larger values are typos or attacks.
const MAX_SHORT: usize = 2048;
/// Bound on one `guacd_params` value (a PEM private key fits easily).
const MAX_PARAM: usize = 64 * 1024;
/// Bound on decoded secrets (session tokens are ~100 bytes, seeds 32).
const MAX_SECRET_BYTES: usize = 4096;
/// Server key ids Keeper uses: 1–6 RSA, 7–18 EC P-256.
const DEFAULT_SERVER_KEY_ID: u32 = 7;

/// Protocols `pam-lite launch` can open as a terminal session (Commander's `pam launch` list).
pub const TERMINAL_PROTOCOLS: &[&str] = &[
    "ssh",
    "telnet",
    "kubernetes",
    "mysql",
    "postgresql",
    "sql-server",
];

/// `guacd_params` keys whose values are secrets (redacted everywhere). Anything whose name contains one
/// of [`SECRET_PARAM_WORDS`] is redacted too.
const SECRET_PARAM_WORDS: &[&str] = &["password", "passphrase", "private", "secret", "token"];

/// Why a ticket is unusable. Never contains a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("the ticket must be a JSON object")]
    NotAnObject,
    /// A field is missing or holds something unusable. `field` is the dotted path (`auth.server_key_id`).
    #[error("field `{field}`: {reason}")]
    Field { field: String, reason: String },
}

impl TicketError {
    fn field(field: impl Into<String>, reason: impl Into<String>) -> Self {
        TicketError::Field {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why a ticket file could not be used: unreadable (a local error, exit code 1) or invalid (exit code 3).
#[derive(Debug, thiserror::Error)]
pub enum TicketLoadError {
    #[error("cannot read launch ticket {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("launch ticket {} is larger than {MAX_TICKET_BYTES} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("launch ticket {}: {error}", path.display())]
    Invalid { path: PathBuf, error: TicketError },
}

/// `target`: where the gateway connects (shown to the user; sent as the offer's `host`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

/// `credential.type`: how the gateway gets the login for the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialType {
    /// The record's linked pamUser (`userRecordUid`).
    Linked,
    /// The user supplies it (`allowSupplyUser`).
    UserSupplied,
    /// Just-in-time account: the gateway creates it first, so the router waits longer for the answer.
    Ephemeral,
}

impl CredentialType {
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialType::Linked => "linked",
            CredentialType::UserSupplied => "userSupplied",
            CredentialType::Ephemeral => "ephemeral",
        }
    }
}

/// `Some(mode)` when the open file is readable or writable by group or others (Unix only).
#[cfg(unix)]
fn loose_mode(file: &std::fs::File) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = file.metadata().ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn loose_mode(_file: &std::fs::File) -> Option<u32> {
    None
}

/// Every certificate in `pem` parses and is usable as a trust anchor (what the driver will do with it).
fn check_ca_pem(pem: &str) -> Result<(), String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::CertificateDer;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| format!("certificate {} is not a usable CA: {e}", i + 1))?;
    }
    Ok(())
}

/// A validated launch ticket. `Debug` shows no secret (see [`Secret`]).
#[derive(Debug, Clone)]
pub struct Ticket {
    /// Router base URL without a trailing `/` (`https://connect.keepersecurity.com`).
    pub router_url: String,
    /// `relay_host`: the STUN/TURN server (`krelay.<keeper host>`; `host:port` also accepted).
    pub relay_host: Option<String>,
    /// `verify_tls` (default true). False accepts any router certificate.
    pub verify_tls: bool,
    /// pam-lite extension `tls_ca_pem`: an extra CA to trust (the emulator's self-signed certificate).
    pub tls_ca_pem: Option<String>,
    pub session_token: Secret<Vec<u8>>,
    pub server_key: ServerPublicKey,
    /// Whether the server key came from the ticket (`server_public_key_b64url`) or Keeper's built-in list.
    pub server_key_from_ticket: bool,
    /// `auth.expires_hint_unix` (0 / absent: unknown).
    pub expires_hint_unix: Option<u64>,
    pub gateway_uid: String,
    pub record_uid: String,
    pub traffic_seed: Secret<Vec<u8>>,
    /// `protocol` (the offer's `conversationType` for `launch`), lower case.
    pub protocol: String,
    pub target: Option<Target>,
    pub credential_type: Option<CredentialType>,
    pub user_record_uid: Option<String>,
    /// `guacd_params`, every value a string (numbers and booleans are converted). Values may be secrets:
    /// `Debug` redacts them.
    pub guacd_params: GuacdParams,
    pub disable_copy: bool,
    pub disable_paste: bool,
    /// `turn` was present.
    pub has_turn: bool,
    /// `turn.username` / `turn.password`: TURN credentials, so no `relay_access_creds` call is needed.
    pub turn: Option<pam_lite_core::relay::TurnCredentials>,
    /// `gateway_public_key_b64` (65-byte point) was present (ConnectAs; not implemented, ignored).
    pub has_gateway_public_key: bool,
    pub two_factor_value: Option<Secret<String>>,
    /// Top-level keys this version does not know (kept for a warning, not an error: newer exporters may
    /// add fields).
    pub unknown_fields: Vec<String>,
    /// The ticket file's Unix mode when group or others may read it (`None`: private, or not from a
    /// file). A loud warning, like ssh's, not a refusal: see TICKET.md "File permissions".
    pub loose_file_mode: Option<u32>,
}

/// guacd connection parameters (`hostname`, `username`, `password`, …). `Debug` redacts secret values
/// (see [`is_secret_param`]).
#[derive(Clone, Default, PartialEq)]
pub struct GuacdParams(pub Map<String, Value>);

impl GuacdParams {
    /// The parameters as strings (the ticket parser already turned numbers and booleans into strings).
    pub fn to_strings(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                (k.clone(), v)
            })
            .collect()
    }

    /// `name=value` pairs with secret values replaced by their size.
    pub fn redacted_pairs(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|(k, v)| {
                let shown = match v.as_str() {
                    Some(text) if is_secret_param(k) => format!("<redacted, {} bytes>", text.len()),
                    Some(text) if text.len() > 60 => format!("<{} bytes>", text.len()),
                    Some(text) => text.to_string(),
                    None => "<not a string>".to_string(),
                };
                format!("{k}={shown}")
            })
            .collect()
    }
}

impl std::fmt::Debug for GuacdParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.redacted_pairs()).finish()
    }
}

// ---------------------------------------------------------------------------------------- base64

fn engine(alpha: &alphabet::Alphabet) -> GeneralPurpose {
    GeneralPurpose::new(
        alpha,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    )
}

/// Decode base64 in either alphabet (`preferred` first), padding optional. Exporters disagree on
/// URL-safe vs standard; accepting both costs nothing because the alphabets only differ in two symbols.
fn decode_b64(field: &str, text: &str, url_safe_first: bool) -> Result<Vec<u8>, TicketError> {
    let text = text.trim();
    let (a, b) = if url_safe_first {
        (engine(&alphabet::URL_SAFE), engine(&alphabet::STANDARD))
    } else {
        (engine(&alphabet::STANDARD), engine(&alphabet::URL_SAFE))
    };
    a.decode(text)
        .or_else(|_| b.decode(text))
        .map_err(|_| TicketError::field(field, "not valid base64"))
}

// ---------------------------------------------------------------------------------------- reader

/// A JSON object plus its dotted path, so every error can name the field it is about.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Obj<'a> {
    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// The value of `key`; JSON `null` counts as absent (the format writes optional fields as null).
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn opt_str(&self, key: &str, max: usize) -> Result<Option<&'a str>, TicketError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.len() > max => Err(TicketError::field(
                self.name(key),
                format!("longer than {max} bytes"),
            )),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(TicketError::field(
                self.name(key),
                format!("expected a string, found {}", type_name(other)),
            )),
        }
    }

    fn req_str(&self, key: &str, max: usize) -> Result<&'a str, TicketError> {
        match self.opt_str(key, max)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(TicketError::field(self.name(key), "must not be empty")),
            None => Err(TicketError::field(self.name(key), "missing")),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, TicketError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(TicketError::field(
                self.name(key),
                format!("expected true or false, found {}", type_name(other)),
            )),
        }
    }

    fn opt_u64(&self, key: &str) -> Result<Option<u64>, TicketError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
                TicketError::field(self.name(key), "expected a non-negative whole number")
            }),
            Some(other) => Err(TicketError::field(
                self.name(key),
                format!("expected a number, found {}", type_name(other)),
            )),
        }
    }

    fn opt_obj(&self, key: &str) -> Result<Option<Obj<'a>>, TicketError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Obj {
                path: self.name(key),
                map,
            })),
            Some(other) => Err(TicketError::field(
                self.name(key),
                format!("expected an object, found {}", type_name(other)),
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------- validators

/// Check a router base URL: `http(s)://host[:port][/path]`, no credentials, query or fragment. Returns it
/// without a trailing `/`. The reason never repeats the URL (it is the caller's to show).
pub fn validate_router_url(url: &str) -> Result<String, &'static str> {
    let url = url.trim();
    if url.len() > MAX_SHORT {
        return Err("too long");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace or control characters");
    }
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        r
    } else {
        return Err("must start with https:// or http://");
    };
    if url.contains('?') || url.contains('#') {
        return Err("must not have a query or fragment");
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err("has no host");
    }
    if authority.contains('@') {
        return Err("must not contain user credentials");
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some((host, after)) = v6.split_once(']') else {
            return Err("has an unterminated IPv6 address");
        };
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or("has garbage after the IPv6 address")?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host");
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err("has an invalid port (expected 1-65535)"),
            Ok(_) => {}
        }
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// Keeper record/gateway uids are 22 URL-safe base64 characters; accept any sane URL-safe token.
fn validate_uid(field: &str, uid: &str) -> Result<String, TicketError> {
    let uid = uid.trim();
    if uid.len() > 64 {
        return Err(TicketError::field(field, "longer than 64 characters"));
    }
    if !uid
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(TicketError::field(
            field,
            "must contain only URL-safe base64 characters (A-Z a-z 0-9 - _)",
        ));
    }
    Ok(uid.to_string())
}

fn validate_port(field: &str, v: &Value) -> Result<u16, TicketError> {
    let n = match v {
        Value::Number(n) => n.as_u64(),
        // Commander's records often store the port as a string.
        Value::String(s) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    match n {
        Some(p @ 1..=65535) => u16::try_from(p).map_err(|_| TicketError::field(field, "bad port")),
        _ => Err(TicketError::field(
            field,
            "bad port: expected a number from 1 to 65535",
        )),
    }
}

/// Whether a guacd parameter's value is a secret (by its name).
pub fn is_secret_param(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_PARAM_WORDS.iter().any(|w| lower.contains(w))
}

// ---------------------------------------------------------------------------------------- parsing

impl Ticket {
    /// Read and validate the ticket file at `path` (size-bounded).
    pub fn load(path: &Path) -> Result<Ticket, TicketLoadError> {
        let file = std::fs::File::open(path).map_err(|source| TicketLoadError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let loose_file_mode = loose_mode(&file);
        let mut bytes = Vec::new();
        file.take(MAX_TICKET_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| TicketLoadError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        if bytes.len() as u64 > MAX_TICKET_BYTES {
            return Err(TicketLoadError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        // The file's bytes hold every secret of the ticket: wiped as soon as they are parsed.
        let parsed = Ticket::parse(&bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        let mut ticket = parsed.map_err(|error| TicketLoadError::Invalid {
            path: path.to_path_buf(),
            error,
        })?;
        ticket.loose_file_mode = loose_file_mode;
        Ok(ticket)
    }

    /// Parse and validate ticket JSON.
    pub fn parse(bytes: &[u8]) -> Result<Ticket, TicketError> {
        // serde_json's syntax errors name a line and column, never the text around it.
        let root: Value =
            serde_json::from_slice(bytes).map_err(|e| TicketError::Json(e.to_string()))?;
        let Value::Object(map) = &root else {
            return Err(TicketError::NotAnObject);
        };
        let top = Obj {
            path: String::new(),
            map,
        };

        match top.get("version") {
            None => return Err(TicketError::field("version", "missing (expected 1)")),
            Some(Value::Number(n)) if n.as_u64() == Some(TICKET_VERSION) => {}
            Some(Value::Number(n)) => {
                return Err(TicketError::field(
                    "version",
                    format!(
                        "unsupported version {n} (this pam-lite reads version {TICKET_VERSION})"
                    ),
                ))
            }
            Some(other) => {
                return Err(TicketError::field(
                    "version",
                    format!("expected the number 1, found {}", type_name(other)),
                ))
            }
        }

        let router_url = validate_router_url(top.req_str("router_url", MAX_SHORT)?)
            .map_err(|r| TicketError::field("router_url", format!("bad URL: {r}")))?;
        let relay_host = top
            .opt_str("relay_host", MAX_SHORT)?
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let verify_tls = top.opt_bool("verify_tls")?.unwrap_or(true);
        let tls_ca_pem = match top.opt_str("tls_ca_pem", MAX_PARAM)? {
            Some(pem) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
                return Err(TicketError::field(
                    "tls_ca_pem",
                    "expected PEM text with a -----BEGIN CERTIFICATE----- block",
                ))
            }
            Some(pem) => {
                // Checked here, not when the driver builds its TLS config: a bad CA is a bad ticket
                // (exit 3, naming the field), not a local error found halfway through the launch.
                check_ca_pem(pem).map_err(|r| TicketError::field("tls_ca_pem", r))?;
                Some(pem.to_string())
            }
            None => None,
        };

        // --- auth
        let auth = top
            .opt_obj("auth")?
            .ok_or_else(|| TicketError::field("auth", "missing"))?;
        let token_field = auth.name("session_token_b64url");
        let token = decode_b64(
            &token_field,
            auth.req_str("session_token_b64url", MAX_SHORT * 2)?,
            true,
        )?;
        if token.is_empty() || token.len() > MAX_SECRET_BYTES {
            return Err(TicketError::field(
                token_field,
                "decodes to an empty or oversized token",
            ));
        }
        let key_id_field = auth.name("server_key_id");
        let key_id = match auth.opt_u64("server_key_id")? {
            None => DEFAULT_SERVER_KEY_ID,
            Some(id) => {
                u32::try_from(id).map_err(|_| TicketError::field(&key_id_field, "out of range"))?
            }
        };
        if !(1..=18).contains(&key_id) {
            return Err(TicketError::field(
                key_id_field,
                format!("unknown key id {key_id} (Keeper server keys are 1-6 RSA, 7-18 EC P-256)"),
            ));
        }
        let pk_field = auth.name("server_public_key_b64url");
        let (server_key, server_key_from_ticket) =
            match auth.opt_str("server_public_key_b64url", MAX_SHORT)? {
                Some(text) if key_id <= 6 => {
                    let der = decode_b64(&pk_field, text, true)?;
                    let key = ServerPublicKey::from_rsa_der(key_id, &der)
                        .map_err(|e| TicketError::field(&pk_field, e.to_string()))?;
                    (key, true)
                }
                Some(text) => {
                    let point = decode_b64(&pk_field, text, true)?;
                    if point.len() != EC_POINT_LEN {
                        return Err(TicketError::field(
                            pk_field,
                            format!(
                            "wrong key length: {} bytes, expected {EC_POINT_LEN} (an uncompressed \
                                 P-256 point)",
                            point.len()
                        ),
                        ));
                    }
                    let key = ServerPublicKey::from_sec1(key_id, &point)
                        .map_err(|e| TicketError::field(&pk_field, e.to_string()))?;
                    (key, true)
                }
                None => {
                    let key = ServerPublicKey::keeper(key_id)
                        .map_err(|e| TicketError::field(&key_id_field, e.to_string()))?;
                    (key, false)
                }
            };
        let expires_hint_unix = auth.opt_u64("expires_hint_unix")?.filter(|t| *t > 0);

        // --- who and what
        let gateway_uid = validate_uid("gateway_uid", top.req_str("gateway_uid", MAX_SHORT)?)?;
        let record_uid = validate_uid("record_uid", top.req_str("record_uid", MAX_SHORT)?)?;
        let seed =
            match top.opt_str("traffic_encryption_seed_b64", MAX_SHORT)? {
                None => return Err(TicketError::field(
                    "traffic_encryption_seed_b64",
                    "missing seed: the record's trafficEncryptionSeed is required (without it the \
                     gateway could never decrypt the offer)",
                )),
                Some(s) => decode_b64("traffic_encryption_seed_b64", s, false)?,
            };
        if seed.is_empty() {
            return Err(TicketError::field(
                "traffic_encryption_seed_b64",
                "missing seed: the value is empty (Commander would derive a key from nothing, spec \
                 §10.8)",
            ));
        }
        if seed.len() > MAX_SECRET_BYTES {
            return Err(TicketError::field(
                "traffic_encryption_seed_b64",
                "oversized seed",
            ));
        }
        let protocol = top
            .opt_str("protocol", 64)?
            .map(|p| p.trim().to_ascii_lowercase())
            .unwrap_or_else(|| "ssh".to_string());
        if protocol.is_empty()
            || !protocol
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(TicketError::field(
                "protocol",
                "expected a protocol name such as ssh",
            ));
        }

        let target = match top.opt_obj("target")? {
            None => None,
            Some(t) => {
                let host = t.req_str("hostName", MAX_SHORT)?.trim().to_string();
                let port_field = t.name("port");
                let port = match t.get("port") {
                    Some(v) => validate_port(&port_field, v)?,
                    None => return Err(TicketError::field(port_field, "missing")),
                };
                Some(Target { host, port })
            }
        };

        let (credential_type, user_record_uid) = match top.opt_obj("credential")? {
            None => (None, None),
            Some(c) => {
                let type_field = c.name("type");
                let kind = match c.opt_str("type", 64)? {
                    None | Some("null") => None,
                    Some("linked") => Some(CredentialType::Linked),
                    Some("userSupplied") => Some(CredentialType::UserSupplied),
                    Some("ephemeral") => Some(CredentialType::Ephemeral),
                    Some(_) => {
                        return Err(TicketError::field(
                            type_field,
                            "expected linked, userSupplied, ephemeral or null",
                        ))
                    }
                };
                let uid_field = c.name("user_record_uid");
                let uid = match c.opt_str("user_record_uid", MAX_SHORT)? {
                    Some(u) if !u.trim().is_empty() => Some(validate_uid(&uid_field, u)?),
                    _ => None,
                };
                if kind == Some(CredentialType::Linked) && uid.is_none() {
                    return Err(TicketError::field(
                        uid_field,
                        "required when credential.type is \"linked\"",
                    ));
                }
                (kind, uid)
            }
        };

        let guacd_params = match top.opt_obj("guacd_params")? {
            None => Map::new(),
            Some(p) => {
                let mut out = Map::new();
                for (k, v) in p.map {
                    let field = p.name(k);
                    if k.len() > 128 {
                        return Err(TicketError::field(p.path.clone(), "a key is too long"));
                    }
                    let text = match v {
                        Value::Null => continue,
                        Value::String(s) if s.len() > MAX_PARAM => {
                            return Err(TicketError::field(
                                field,
                                format!("longer than {MAX_PARAM} bytes"),
                            ))
                        }
                        Value::String(s) => s.clone(),
                        Value::Bool(b) => b.to_string(),
                        Value::Number(n) => n.to_string(),
                        other => {
                            return Err(TicketError::field(
                                field,
                                format!("expected a string, found {}", type_name(other)),
                            ))
                        }
                    };
                    out.insert(k.clone(), Value::String(text));
                }
                out
            }
        };

        let (disable_copy, disable_paste) = match top.opt_obj("clipboard")? {
            None => (false, false),
            Some(c) => (
                c.opt_bool("disableCopy")?.unwrap_or(false),
                c.opt_bool("disablePaste")?.unwrap_or(false),
            ),
        };

        let (has_turn, turn) = match top.opt_obj("turn")? {
            None => (false, None),
            Some(t) => {
                let username = t.opt_str("username", MAX_SHORT)?;
                let password = t.opt_str("password", MAX_SHORT)?;
                t.opt_u64("expires_unix")?;
                let creds = match (username, password) {
                    (Some(u), Some(p)) if !u.is_empty() => {
                        Some(pam_lite_core::relay::TurnCredentials {
                            username: u.to_string(),
                            password: p.to_string(),
                        })
                    }
                    _ => None,
                };
                (true, creds)
            }
        };
        let has_gateway_public_key = match top.opt_str("gateway_public_key_b64", MAX_SHORT)? {
            None => false,
            Some(text) => {
                let point = decode_b64("gateway_public_key_b64", text, false)?;
                if point.len() != EC_POINT_LEN {
                    return Err(TicketError::field(
                        "gateway_public_key_b64",
                        format!(
                            "wrong key length: {} bytes, expected {EC_POINT_LEN}",
                            point.len()
                        ),
                    ));
                }
                true
            }
        };
        let two_factor_value = top
            .opt_str("two_factor_value", MAX_SHORT)?
            .filter(|s| !s.is_empty())
            .map(|s| Secret::new(s.to_string()));

        const KNOWN: &[&str] = &[
            "version",
            "router_url",
            "relay_host",
            "verify_tls",
            "tls_ca_pem",
            "auth",
            "gateway_uid",
            "record_uid",
            "traffic_encryption_seed_b64",
            "protocol",
            "target",
            "credential",
            "guacd_params",
            "clipboard",
            "turn",
            "gateway_public_key_b64",
            "two_factor_value",
        ];
        let unknown_fields = map
            .keys()
            .filter(|k| !KNOWN.contains(&k.as_str()))
            .map(|k| k.chars().take(64).collect())
            .collect();

        Ok(Ticket {
            router_url,
            relay_host,
            verify_tls,
            tls_ca_pem,
            session_token: Secret::new(token),
            server_key,
            server_key_from_ticket,
            expires_hint_unix,
            gateway_uid,
            record_uid,
            traffic_seed: Secret::new(seed),
            protocol,
            target,
            credential_type,
            user_record_uid,
            guacd_params: GuacdParams(guacd_params),
            disable_copy,
            disable_paste,
            has_turn,
            turn,
            has_gateway_public_key,
            two_factor_value,
            unknown_fields,
            loose_file_mode: None,
        })
    }

    /// Replace the router URL (the `KROUTER_URL` environment variable, as in Commander). `source` names
    /// where the value came from, for the error.
    pub fn override_router_url(&mut self, url: &str, source: &str) -> Result<(), TicketError> {
        self.router_url = validate_router_url(url)
            .map_err(|r| TicketError::field(source, format!("bad URL: {r}")))?;
        Ok(())
    }

    /// `launch` refuses graphical protocols before any I/O: a terminal client cannot show RDP.
    pub fn check_terminal_protocol(&self) -> Result<(), TicketError> {
        if TERMINAL_PROTOCOLS.contains(&self.protocol.as_str()) {
            Ok(())
        } else {
            Err(TicketError::field(
                "protocol",
                format!(
                    "`{}` is not a terminal protocol; pam-lite launch supports {}",
                    self.protocol,
                    TERMINAL_PROTOCOLS.join(", ")
                ),
            ))
        }
    }

    fn target_host(&self) -> Option<TargetHost> {
        self.target.as_ref().map(|t| TargetHost {
            host_name: t.host.clone(),
            port: t.port,
        })
    }

    /// The offer this ticket launches: a terminal of `cols`×`rows` characters (`pam launch`) when
    /// `terminal` is given, else a tunnel (`pam tunnel start`: conversation type `tunnel`, the target
    /// host only). The core owns the offer's format ([`pam_lite_core::offer`]); this only fills it.
    pub fn launch_offer(&self, terminal: Option<(u16, u16)>) -> LaunchOffer {
        let host = self.target_host();
        let (conversation_type, terminal) = match terminal {
            Some((cols, rows)) => (
                self.protocol.clone(),
                Some(TerminalOffer::new(
                    &self.protocol,
                    host.as_ref(),
                    &self.guacd_params.to_strings(),
                    cols,
                    rows,
                    self.disable_copy,
                    self.disable_paste,
                )),
            ),
            None => ("tunnel".to_string(), None),
        };
        // The credential choice and the 2FA value go with either kind of offer.
        LaunchOffer {
            conversation_type,
            data: OfferData { host, terminal },
            credential: self.credential_type.map(|kind| match kind {
                CredentialType::Linked => OfferCredential::Linked {
                    user_record_uid: self.user_record_uid.clone(),
                },
                CredentialType::UserSupplied => OfferCredential::UserSupplied,
                CredentialType::Ephemeral => OfferCredential::Ephemeral,
            }),
            two_factor_value: self.two_factor_value.as_ref().map(|v| v.expose().clone()),
        }
    }

    /// Notes worth a warning (not an error): ignored fields, an expired hint, plain HTTP to a remote host.
    pub fn warnings(&self, now_unix: u64) -> Vec<String> {
        let mut w = Vec::new();
        if !self.unknown_fields.is_empty() {
            // Field names are the file's text: sanitised (a name can hold escape sequences).
            let names: Vec<String> = self
                .unknown_fields
                .iter()
                .take(20)
                .map(|n| pam_lite_core::text::sanitize_max(n, 60))
                .collect();
            w.push(format!("unknown fields ignored: {}", names.join(", ")));
        }
        if let Some(mode) = self.loose_file_mode {
            w.push(format!(
                "UNPROTECTED TICKET FILE: permissions {mode:04o} let other users read its session token \
                 and secrets; run `chmod 600` on it"
            ));
        }
        if self.has_turn && self.turn.is_none() {
            w.push(
                "`turn` has no username/password: TURN credentials will be asked from the router"
                    .into(),
            );
        }
        if self.has_gateway_public_key {
            w.push("`gateway_public_key_b64` is ignored: ConnectAs is not implemented".into());
        }
        if let Some(exp) = self.expires_hint_unix {
            if exp <= now_unix {
                w.push(format!(
                    "auth.expires_hint_unix ({exp}) is in the past: the session token may have expired"
                ));
            }
        }
        if !self.verify_tls {
            w.push("verify_tls is false: the router's certificate will not be checked".into());
        }
        if self.router_url.starts_with("http://") && !is_loopback_url(&self.router_url) {
            w.push("router_url uses plain http to a non-loopback host: the session token travels encrypted, but the connection is not authenticated".into());
        }
        w
    }

    /// A human-readable summary with every secret redacted (`pam-lite ticket check`).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let mut line = |k: &str, v: &str| {
            let _ = writeln!(s, "  {k:<22} {}", pam_lite_core::text::sanitize(v));
        };
        line("version", &TICKET_VERSION.to_string());
        line("router_url", &self.router_url);
        line("relay_host", self.relay_host.as_deref().unwrap_or("-"));
        line("verify_tls", &self.verify_tls.to_string());
        line(
            "tls_ca_pem",
            if self.tls_ca_pem.is_some() {
                "present"
            } else {
                "-"
            },
        );
        line("auth.session_token", &self.session_token.redacted());
        line(
            "auth.server_key",
            &format!(
                "id {} ({})",
                self.server_key.key_id(),
                if self.server_key_from_ticket {
                    "public key from the ticket"
                } else {
                    "Keeper's built-in key"
                }
            ),
        );
        line(
            "auth.expires_hint",
            &self
                .expires_hint_unix
                .map(|t| format!("{t} (unix)"))
                .unwrap_or_else(|| "-".into()),
        );
        line("gateway_uid", &self.gateway_uid);
        line("record_uid", &self.record_uid);
        line("traffic_seed", &self.traffic_seed.redacted());
        line("protocol", &self.protocol);
        line(
            "target",
            &self
                .target
                .as_ref()
                .map(|t| format!("{}:{}", t.host, t.port))
                .unwrap_or_else(|| "-".into()),
        );
        line(
            "credential",
            &match (self.credential_type, &self.user_record_uid) {
                (None, _) => "-".to_string(),
                (Some(k), Some(uid)) => format!("{} (user record {uid})", k.as_str()),
                (Some(k), None) => k.as_str().to_string(),
            },
        );
        let params = self.guacd_params.redacted_pairs();
        line(
            "guacd_params",
            &if params.is_empty() {
                "-".to_string()
            } else {
                params.join(", ")
            },
        );
        line(
            "clipboard",
            &format!(
                "copy {}, paste {}",
                if self.disable_copy {
                    "disabled"
                } else {
                    "allowed"
                },
                if self.disable_paste {
                    "disabled"
                } else {
                    "allowed"
                }
            ),
        );
        line(
            "turn",
            if self.turn.is_some() {
                "present (TURN credentials, no relay_access_creds call)"
            } else if self.has_turn {
                "present without credentials"
            } else {
                "-"
            },
        );
        line(
            "gateway_public_key",
            if self.has_gateway_public_key {
                "present (ignored)"
            } else {
                "-"
            },
        );
        line(
            "two_factor_value",
            &self
                .two_factor_value
                .as_ref()
                .map(|v| v.redacted())
                .unwrap_or_else(|| "-".into()),
        );
        s
    }
}

/// Whether a (validated) URL points at a loopback host.
fn is_loopback_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or_default();
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use serde_json::json;

    /// A valid P-256 point: the key Keeper publishes as id 7.
    fn keeper7_b64url() -> String {
        URL_SAFE_NO_PAD.encode(ServerPublicKey::keeper(7).unwrap().to_sec1())
    }

    fn sample() -> Value {
        json!({
            "version": 1,
            "router_url": "https://connect.keepersecurity.com/",
            "relay_host": "krelay.keepersecurity.com",
            "verify_tls": true,
            "auth": {
                "session_token_b64url": URL_SAFE_NO_PAD.encode(b"SESSION-TOKEN-SECRET"),
                "server_key_id": 7,
                "server_public_key_b64url": keeper7_b64url(),
                "expires_hint_unix": 0
            },
            "gateway_uid": "GwGwGwGwGwGwGwGwGwGw-_",
            "record_uid": "RecRecRecRecRecRecRec_",
            "traffic_encryption_seed_b64": STANDARD.encode([7u8; 32]),
            "protocol": "ssh",
            "target": {"hostName": "10.0.0.5", "port": 22},
            "credential": {"type": "linked", "user_record_uid": "UserUserUserUserUser12"},
            "guacd_params": {"protocol": "ssh", "hostname": "10.0.0.5", "port": "22",
                             "username": "alice", "password": "TopSecretPw", "private-key": "PEMKEY",
                             "disable-copy": "true", "font-size": 12},
            "clipboard": {"disableCopy": false, "disablePaste": true},
            "turn": {"username": "u", "password": "TurnPw"},
            "two_factor_value": "123456"
        })
    }

    fn parse(v: &Value) -> Result<Ticket, TicketError> {
        Ticket::parse(v.to_string().as_bytes())
    }

    fn field_err(v: &Value) -> (String, String) {
        match parse(v) {
            Err(TicketError::Field { field, reason }) => (field, reason),
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn parses_the_spec_example() {
        let t = parse(&sample()).unwrap();
        assert_eq!(t.router_url, "https://connect.keepersecurity.com");
        assert_eq!(t.session_token.expose(), b"SESSION-TOKEN-SECRET");
        assert_eq!(t.traffic_seed.expose(), &vec![7u8; 32]);
        assert_eq!(t.server_key.key_id(), 7);
        assert!(t.server_key_from_ticket);
        assert_eq!(
            t.target,
            Some(Target {
                host: "10.0.0.5".into(),
                port: 22
            })
        );
        assert_eq!(t.credential_type, Some(CredentialType::Linked));
        assert_eq!(t.guacd_params.0["font-size"], "12");
        assert!(t.disable_paste && !t.disable_copy);
        assert!(t.has_turn);
        assert!(t.expires_hint_unix.is_none());
        assert!(t.unknown_fields.is_empty());
    }

    #[test]
    fn missing_public_key_uses_keepers_builtin() {
        let mut v = sample();
        v["auth"]
            .as_object_mut()
            .unwrap()
            .remove("server_public_key_b64url");
        v["auth"]["server_key_id"] = json!(9);
        let t = parse(&v).unwrap();
        assert_eq!(t.server_key.key_id(), 9);
        assert!(!t.server_key_from_ticket);
        assert_eq!(
            t.server_key.to_sec1(),
            ServerPublicKey::keeper(9).unwrap().to_sec1()
        );
    }

    #[test]
    fn errors_name_the_field() {
        type Mutate = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Mutate, &str, &str)> = vec![
            (
                Box::new(|v| v["auth"]["session_token_b64url"] = json!("!!not base64!!")),
                "auth.session_token_b64url",
                "base64",
            ),
            (
                Box::new(|v| {
                    v["auth"]["server_public_key_b64url"] = json!(URL_SAFE_NO_PAD.encode([4u8; 33]))
                }),
                "auth.server_public_key_b64url",
                "wrong key length: 33 bytes",
            ),
            (
                Box::new(|v| v["auth"]["server_key_id"] = json!(3)),
                "auth.server_public_key_b64url",
                "PKCS#1 RSA",
            ),
            (
                Box::new(|v| v["auth"]["server_key_id"] = json!(42)),
                "auth.server_key_id",
                "unknown key id 42",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut()
                        .unwrap()
                        .remove("traffic_encryption_seed_b64");
                }),
                "traffic_encryption_seed_b64",
                "missing seed",
            ),
            (
                Box::new(|v| v["traffic_encryption_seed_b64"] = json!("")),
                "traffic_encryption_seed_b64",
                "missing seed",
            ),
            (
                Box::new(|v| v["router_url"] = json!("ftp://x")),
                "router_url",
                "bad URL",
            ),
            (
                Box::new(|v| v["router_url"] = json!("https://host:99999")),
                "router_url",
                "invalid port",
            ),
            (
                Box::new(|v| v["target"]["port"] = json!(0)),
                "target.port",
                "bad port",
            ),
            (
                Box::new(|v| v["target"]["port"] = json!("http")),
                "target.port",
                "bad port",
            ),
            (
                Box::new(|v| v["gateway_uid"] = json!("has spaces in it")),
                "gateway_uid",
                "URL-safe",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("record_uid");
                }),
                "record_uid",
                "missing",
            ),
            (
                Box::new(|v| v["verify_tls"] = json!("yes")),
                "verify_tls",
                "true or false",
            ),
            (
                Box::new(|v| v["version"] = json!(2)),
                "version",
                "unsupported version 2",
            ),
            (
                Box::new(|v| v["credential"]["user_record_uid"] = Value::Null),
                "credential.user_record_uid",
                "linked",
            ),
            (
                Box::new(|v| v["credential"]["type"] = json!("magic")),
                "credential.type",
                "expected linked",
            ),
            (
                Box::new(|v| v["guacd_params"]["port"] = json!([22])),
                "guacd_params.port",
                "expected a string",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("auth");
                }),
                "auth",
                "missing",
            ),
        ];
        for (mutate, field, reason) in cases {
            let mut v = sample();
            mutate(&mut v);
            let (f, r) = field_err(&v);
            assert_eq!(f, field, "reason was {r}");
            assert!(r.contains(reason), "{f}: {r:?} should contain {reason:?}");
        }
    }

    #[test]
    fn json_syntax_errors_do_not_echo_content() {
        let err =
            Ticket::parse(br#"{"auth": {"session_token_b64url": "SECRETSECRET" "#).unwrap_err();
        assert!(matches!(err, TicketError::Json(_)));
        assert!(!err.to_string().contains("SECRET"));
        assert_eq!(Ticket::parse(b"[1]").unwrap_err(), TicketError::NotAnObject);
    }

    /// Issue 13: an unknown field's name is the file's text and reached the terminal raw.
    #[test]
    fn unknown_field_names_are_sanitised_in_the_warning() {
        let mut v = sample();
        v["evil\u{1b}[2J\rpam-lite: ok\nfake"] = json!(1);
        let t = parse(&v).unwrap();
        let w = t.warnings(0).join("\n");
        assert!(!w.contains(['\u{1b}', '\r']), "{w:?}");
        assert!(w.contains("evil\\u{1b}[2J\\rpam-lite: ok\\nfake"), "{w:?}");
    }

    #[test]
    fn a_ca_that_is_not_a_certificate_names_tls_ca_pem() {
        let mut v = sample();
        v["tls_ca_pem"] =
            json!("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
        let e = parse(&v).unwrap_err().to_string();
        assert!(e.contains("tls_ca_pem"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_ticket_readable_by_others_warns_loudly_a_private_one_does_not() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("pam-lite-perm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.json");
        std::fs::write(&path, sample().to_string()).unwrap();
        for (mode, loud) in [(0o644, true), (0o640, true), (0o600, false), (0o400, false)] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let t = Ticket::load(&path).unwrap();
            let w = t.warnings(0).join("\n");
            assert_eq!(w.contains("UNPROTECTED TICKET FILE"), loud, "{mode:o}: {w}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn describe_and_debug_redact_every_secret() {
        let t = parse(&sample()).unwrap();
        for text in [t.describe(), format!("{t:?}")] {
            for secret in [
                "SESSION-TOKEN-SECRET",
                "TopSecretPw",
                "PEMKEY",
                "TurnPw",
                "123456",
                &STANDARD.encode([7u8; 32]),
                &URL_SAFE_NO_PAD.encode(b"SESSION-TOKEN-SECRET"),
            ] {
                assert!(!text.contains(secret), "{secret} leaked in:\n{text}");
            }
        }
        let d = t.describe();
        assert!(d.contains("username=alice"));
        assert!(d.contains("password=<redacted, 11 bytes>"));
        assert!(d.contains("<redacted, 32 bytes>"));
    }

    #[test]
    fn terminal_offer_has_commanders_keys() {
        let t = parse(&sample()).unwrap();
        let o = t.launch_offer(Some((80, 24)));
        assert_eq!(o.conversation_type, t.protocol);
        assert_eq!(
            o.data.host,
            Some(TargetHost {
                host_name: "10.0.0.5".into(),
                port: 22
            })
        );
        let term = o.data.terminal.as_ref().expect("terminal offer");
        assert_eq!(
            (term.size.width, term.size.height, term.size.dpi),
            (830, 494, 96)
        );
        let p = &term.guacd_params;
        assert_eq!(p["enable-pipe"], "true");
        assert_eq!(p["password"], "TopSecretPw");
        assert!(!p.contains_key("disable-copy")); // in guacd_params, but the clipboard policy says no
        assert_eq!(p["disable-paste"], "true"); // from `clipboard`, as Commander adds it
        assert_eq!(p["width"], "830");
        assert!(!term.disable_copy);
        assert!(term.disable_paste);
        assert_eq!(
            o.credential,
            Some(OfferCredential::Linked {
                user_record_uid: Some("UserUserUserUserUser12".into())
            })
        );
        assert_eq!(o.two_factor_value.as_deref(), Some("123456"));

        let tunnel = t.launch_offer(None);
        assert_eq!(tunnel.conversation_type, "tunnel");
        assert!(tunnel.data.terminal.is_none());
        assert_eq!(tunnel.data.host, o.data.host);
        assert_eq!(tunnel.credential, o.credential);
        assert_eq!(tunnel.two_factor_value, o.two_factor_value);
    }

    #[test]
    fn url_validation() {
        assert_eq!(
            validate_router_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(validate_router_url("https://[::1]:443").is_ok());
        assert!(validate_router_url("https://user:pw@host").is_err());
        assert!(validate_router_url("https://host/?q=1").is_err());
        assert!(validate_router_url("https://").is_err());
        assert!(validate_router_url("https://host:0").is_err());
        assert!(is_loopback_url("http://127.0.0.1:1"));
        assert!(is_loopback_url("http://[::1]:1"));
        assert!(!is_loopback_url("http://10.1.1.1"));
    }

    #[test]
    fn graphical_protocols_are_refused_for_launch() {
        let mut v = sample();
        v["protocol"] = json!("RDP");
        let t = parse(&v).unwrap();
        let e = t.check_terminal_protocol().unwrap_err();
        assert!(e.to_string().contains("protocol"));
        assert!(parse(&sample()).unwrap().check_terminal_protocol().is_ok());
    }
}
