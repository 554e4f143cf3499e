//! Guacamole over the tube (pam launch's PythonHandler mode).
pub mod client;
pub mod instruction;
pub mod keysym;
