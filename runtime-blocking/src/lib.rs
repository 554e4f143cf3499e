//! Blocking driver (to be filled).
