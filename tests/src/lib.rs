//! Cross-crate test support for pam-lite: a deterministic simulation of a whole launch ([`sim`]) and
//! the fixtures that set one up ([`scenario`]).

pub mod scenario;
pub mod sim;
