//! # pam-lite-emulator
//!
//! A local Keeper router + gateway on real sockets on 127.0.0.1, so `pam-lite launch --demo` works with no
//! Keeper account.

pub mod gateway_host;
pub mod impair;
pub mod target;
pub mod tls;
