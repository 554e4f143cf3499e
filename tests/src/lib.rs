//! Simulation harness (to be filled).
