//! Commander's environment variables, resolved once per run (spec §7): the timing profile knobs,
//! `PAM_CONNECT_TIMING`, `KROUTER_URL`, `VERIFY_SSL`. Lookups go through a function so tests can use a map.

use std::cell::RefCell;
use std::ffi::OsString;

use pam_lite_core::profile::Profile;

use crate::exit::CliError;

/// `KRELAY_URL`: replaces the ticket's `relay_host` (Commander: a bare host; `host:port` works too).
pub const KRELAY_URL: &str = "KRELAY_URL";
/// `KROUTER_URL`: replaces the ticket's router URL.
pub const KROUTER_URL: &str = "KROUTER_URL";
/// `PAM_CONNECT_TIMING`: truthy = `--timing`.
pub const PAM_CONNECT_TIMING: &str = "PAM_CONNECT_TIMING";
/// `VERIFY_SSL`: falsy = do not verify the router's certificate.
pub const VERIFY_SSL: &str = "VERIFY_SSL";

/// Commander's `_env_truthy`.
pub fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// Falsy spellings (`VERIFY_SSL=false`).
pub fn falsy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "0" | "false" | "no" | "off"
    )
}

/// What the environment contributes to a launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSettings {
    pub profile: Profile,
    pub timing: bool,
    pub router_url: Option<String>,
    /// `VERIFY_SSL` is set to a false value.
    pub skip_tls_verify: bool,
    /// `KRELAY_URL`: the STUN/TURN host instead of the ticket's `relay_host`.
    pub relay_host: Option<String>,
}

/// Build the profile `profile_name` with the environment applied, plus the other variables.
///
/// `lookup` returns the raw OS value (`std::env::var_os`): a value that is not UTF-8 is an error that
/// names the variable (exit 3), never silently treated as unset, which would quietly drop a setting
/// (a `KROUTER_URL` or `VERIFY_SSL` the user believes is in force).
pub fn from_env(
    profile_name: &str,
    timing_flag: bool,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<EnvSettings, CliError> {
    let not_utf8: RefCell<Option<String>> = RefCell::new(None);
    let get = |name: &str| -> Option<String> {
        match lookup(name)?.into_string() {
            Ok(v) => Some(v),
            Err(_) => {
                not_utf8
                    .borrow_mut()
                    .get_or_insert_with(|| name.to_string());
                None
            }
        }
    };
    let mut profile = Profile::by_name(profile_name).map_err(|e| CliError::Usage(e.to_string()))?;
    let applied = profile.apply_env(get);
    let timing = timing_flag || get(PAM_CONNECT_TIMING).is_some_and(|v| truthy(&v));
    let router_url = get(KROUTER_URL).filter(|v| !v.trim().is_empty());
    let skip_tls_verify = get(VERIFY_SSL).is_some_and(|v| falsy(&v));
    let relay_host = get(KRELAY_URL)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    if let Some(name) = not_utf8.into_inner() {
        return Err(CliError::Config(format!(
            "environment variable {name} is not valid UTF-8"
        )));
    }
    applied.map_err(|e| CliError::Config(e.to_string()))?;
    Ok(EnvSettings {
        profile,
        timing,
        router_url,
        skip_tls_verify,
        relay_host,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    /// Issue 13: a value that is not UTF-8 was silently ignored.
    #[cfg(unix)]
    #[test]
    fn a_value_that_is_not_utf8_is_an_error_naming_the_variable() {
        use std::os::unix::ffi::OsStringExt as _;
        for name in [KROUTER_URL, VERIFY_SSL, "PAM_WEBRTC_POLL_MS"] {
            let e = from_env("fast", false, |k| {
                (k == name).then(|| OsString::from_vec(vec![b'h', 0xff, b'x']))
            })
            .unwrap_err();
            assert_eq!(e.exit_code(), 3, "{name}");
            assert_eq!(
                e.to_string(),
                format!("environment variable {name} is not valid UTF-8")
            );
        }
    }

    #[test]
    fn commander_variables_are_honoured() {
        let s = from_env(
            "fast",
            false,
            env(&[
                ("PAM_CONNECT_TIMING", "1"),
                ("KROUTER_URL", "http://127.0.0.1:9"),
                ("VERIFY_SSL", "False"),
                ("PAM_OPEN_CONNECTION_DELAY", "0.5"),
            ]),
        )
        .unwrap();
        assert!(s.timing);
        assert_eq!(s.router_url.as_deref(), Some("http://127.0.0.1:9"));
        assert!(s.skip_tls_verify);
        assert_eq!(
            s.profile.open_connection_delay,
            std::time::Duration::from_millis(500)
        );
        assert_eq!(s.profile.name, "fast");
    }

    #[test]
    fn defaults_and_errors() {
        let s = from_env("commander-1984", false, env(&[])).unwrap();
        assert!(!s.timing && !s.skip_tls_verify && s.router_url.is_none());
        let e = from_env("fast", false, env(&[("PAM_WEBRTC_POLL_MS", "soon")])).unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e.to_string().contains("PAM_WEBRTC_POLL_MS"));
    }
}
