//! (in progress)
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint;
