//! What can end a `pam-lite` run, and the process exit code for each (cli/EXIT_CODES.md). Scripts branch
//! on these codes, so they are stable: 0 ok, 1 local, 2 usage, 3–11 one per [`LaunchError`] variant
//! ([`launch_exit_code`]). The mapping lives here, not in the core: exit codes are a property of this
//! process, not of the protocol.

use pam_lite_core::LaunchError;

use crate::ticket::{TicketError, TicketLoadError};

use crate::exit_codes::{launch_exit_code, CONFIG, LOCAL, TUNNEL_CONNECTION, USAGE};

/// Everything that ends a run unsuccessfully. `Display` is what the user reads after `pam-lite: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Local(String),
    #[error("{0}")]
    Usage(String),
    /// The ticket file could not be read (1) or is invalid (3).
    #[error("{0}")]
    Ticket(#[from] TicketLoadError),
    /// A ticket that parsed but cannot be used for this command, or a bad environment override.
    #[error("invalid launch ticket: {0}")]
    TicketContent(#[from] TicketError),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Launch(#[from] LaunchError),
    /// The tunneled connection of `tunnel --stdio` could not be opened.
    #[error("{0}")]
    Connection(String),
}

impl CliError {
    pub fn local(context: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        CliError::Local(format!("{context}: {err}"))
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Local(_) => LOCAL,
            CliError::Usage(_) => USAGE,
            CliError::Ticket(TicketLoadError::Read { .. } | TicketLoadError::TooLarge { .. }) => {
                LOCAL
            }
            CliError::Ticket(TicketLoadError::Invalid { .. }) => CONFIG,
            CliError::TicketContent(_) | CliError::Config(_) => CONFIG,
            CliError::Launch(e) => launch_exit_code(e),
            CliError::Connection(_) => TUNNEL_CONNECTION,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pam_lite_core::ConfigError;
    use std::path::PathBuf;

    #[test]
    fn codes_are_the_documented_ones() {
        let path = PathBuf::from("t.json");
        let read = CliError::Ticket(TicketLoadError::Read {
            path: path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(read.exit_code(), 1);
        assert!(read.to_string().contains("t.json"));
        let invalid = CliError::Ticket(TicketLoadError::Invalid {
            path,
            error: TicketError::NotAnObject,
        });
        assert_eq!(invalid.exit_code(), 3);
        assert_eq!(CliError::Usage("x".into()).exit_code(), 2);
        assert_eq!(
            CliError::Launch(LaunchError::Config(ConfigError::EmptySessionToken)).exit_code(),
            3
        );
        assert_eq!(
            CliError::Launch(LaunchError::Disconnected("x".into())).exit_code(),
            11
        );
        let docs = include_str!("../EXIT_CODES.md");
        assert_eq!(CliError::Connection("x".into()).exit_code(), 12);
        for code in 0..=12 {
            assert!(
                docs.contains(&format!("| {code} ")),
                "EXIT_CODES.md lacks {code}"
            );
        }
    }
}
