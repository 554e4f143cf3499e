//! Cross-crate test support for pam-lite: a deterministic simulation of a whole launch ([`sim`]) and
//! the fixtures that set one up ([`scenario`]).

/// The CLI's exit-code table (the CLI is a binary crate, so its one file is included here rather than
/// copied): tests assert the codes a user would see.
#[path = "../../cli/src/exit_codes.rs"]
pub mod exit_codes;
pub mod scenario;
pub mod sim;
