//! The tube: Keeper's framing and connection multiplexing on top of one ordered, reliable WebRTC data
//! channel (keeper-pam-webrtc-rs 2.2.9, measured byte-exact).
//!
//! * [`frame`]: the frame layout and a streaming decoder that accepts any message boundaries;
//! * [`control`]: the control messages of connection 0 and the close reasons;
//! * [`conns`]: the sans-IO state machine one side of a tube runs (open/accept, data, half-close, close,
//!   ping/pong, outbound flow control);
//! * [`delivery`]: receive-side flow control (each connection's undelivered backlog, the stall bound).

pub mod conns;
pub mod control;
pub mod delivery;
pub mod frame;
pub mod outbox;

pub use conns::{Config, Connections, Role, TubeError, TubeEvent};
pub use control::{CloseReason, ControlError, ControlMessage};
pub use delivery::Delivery;
pub use frame::{Frame, FrameDecoder, FrameError, MAX_DATA_PAYLOAD};
pub use outbox::Outbox;

/// Entry points for fuzz targets (`fuzz/`) and the matching never-panics tests.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use std::time::Instant;

    use super::{ChunkSplit, Connections, ControlMessage, FrameDecoder, Role};

    /// Feeds `data` to a frame decoder, the control decoder and both roles of [`Connections`], in chunks
    /// whose sizes come from the data itself. Must never panic.
    pub fn fuzz_frame(data: &[u8], t0: Instant) {
        let split = ChunkSplit::new(data);
        let mut dec = FrameDecoder::with_max_payload(4096);
        for part in split.chunks() {
            dec.push(part);
            while let Some(r) = dec.next() {
                if let Ok(frame) = r {
                    if frame.conn_no == 0 {
                        if let Ok(msg) = ControlMessage::decode(&frame.payload) {
                            let again = ControlMessage::decode(&msg.encode());
                            debug_assert!(again.is_ok());
                        }
                    }
                }
            }
        }
        for role in [Role::Client, Role::Gateway] {
            let mut c = Connections::new(role, t0);
            let _ = c.open(1);
            for part in split.chunks() {
                c.handle_message(part, t0);
                while let Some(ev) = c.poll_app_event() {
                    if let super::TubeEvent::ConnectTarget { conn, .. } = ev {
                        let _ = c.target_connected(conn, conn % 2 == 1);
                        let _ = c.send(conn, b"reply");
                    }
                }
                while c.poll_write().is_some() {}
            }
        }
    }
}

/// Splits fuzz input into chunks: the first byte picks the chunk size.
#[cfg(any(test, feature = "fuzzing"))]
struct ChunkSplit<'a> {
    size: usize,
    data: &'a [u8],
}

#[cfg(any(test, feature = "fuzzing"))]
impl<'a> ChunkSplit<'a> {
    fn new(data: &'a [u8]) -> Self {
        match data.split_first() {
            Some((first, rest)) => ChunkSplit {
                size: usize::from(*first).max(1),
                data: rest,
            },
            None => ChunkSplit { size: 1, data },
        }
    }

    fn chunks(&self) -> std::slice::Chunks<'a, u8> {
        self.data.chunks(self.size)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fuzz_frame_never_panics(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            super::fuzzing::fuzz_frame(&data, pam_lite_dev_clock::origin());
        }
    }

    #[test]
    fn fuzz_frame_on_valid_stream() {
        use super::{ControlMessage, Frame};
        let mut data = vec![7u8];
        data.extend(
            ControlMessage::OpenConnection {
                conn_no: 1,
                connect_as: None,
            }
            .to_frame(1)
            .encode(),
        );
        data.extend(Frame::new(1, 2, b"hello".to_vec()).encode());
        data.extend(
            ControlMessage::Ping { body: vec![1, 2] }
                .to_frame(3)
                .encode(),
        );
        super::fuzzing::fuzz_frame(&data, pam_lite_dev_clock::origin());
    }
}
