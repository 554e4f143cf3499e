//! smol driver (to be filled).
