//! The Keeper router's wire layer: protobuf messages ([`proto`]), the authentication envelope
//! ([`envelope`]), URL/request builders and response parsing ([`endpoints`]) and a sans-IO emulated
//! router ([`server`]) for the simulation and the emulator.
//!
//! Everything here reproduces Keeper Commander 18.1.8's behaviour byte for byte where the router can
//! observe it (headers, envelope, protobuf) and string for string where Commander's own logic depends on
//! it (exception texts that its retry classification matches).

pub mod endpoints;
pub mod envelope;
pub mod proto;
