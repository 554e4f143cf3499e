//! (in progress)
/// placeholder until tube/control.rs lands
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason { Normal }
