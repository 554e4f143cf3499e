//! The tube: Keeper's framing and connection multiplexing on top of one ordered, reliable WebRTC data
//! channel (keeper-pam-webrtc-rs 2.2.9, measured byte-exact).
//!
//! * [`frame`]: the frame layout and a streaming decoder that accepts any message boundaries;
//! * [`control`]: the control messages of connection 0 and the close reasons;
//! * [`conns`]: the sans-IO state machine one side of a tube runs (open/accept, data, half-close, close,
//!   ping/pong, outbound flow control).

pub mod control;
pub mod frame;

pub use control::{CloseReason, ControlError, ControlMessage};
pub use frame::{Frame, FrameDecoder, FrameError, MAX_DATA_PAYLOAD};
