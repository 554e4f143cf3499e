//! STUN and ChannelData framing on a stream to a TURN server (RFC 8656 §12.5, RFC 4571 style).
//!
//! Over TCP and TLS the server sends STUN messages and ChannelData back to back, and **pads every
//! ChannelData to a multiple of four bytes** "to ensure the alignment of subsequent messages"; a sender
//! must pad too. turn-client-proto 0.7.3 (turn-types' `TurnTcpBuffer`) neither pads what it sends nor
//! skips the padding it receives, so the first relayed datagram whose length is not a multiple of four
//! (a DTLS record, say) shifts every later frame and the client goes deaf on that allocation. This module
//! frames the stream itself: whole frames, padding stripped, go into the crate one at a time, and
//! ChannelData going out is padded. Public for the simulation's TURN server, which must frame its
//! side of the stream the way coturn does.

/// The largest frame either kind can announce: a 4-byte ChannelData header or a 20-byte STUN header plus
/// a 16-bit length.
const MAX_FRAME: usize = 20 + u16::MAX as usize;

/// The stream carried something that is neither STUN nor ChannelData: the connection is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FramingError;

/// Reassembles frames from stream chunks. Holds at most one partial frame (≤ 64 KiB + header).
#[derive(Debug, Default)]
pub struct StreamFramer {
    buf: Vec<u8>,
}

/// The frame at the start of `data`: (bytes of the frame without padding, bytes it takes on the stream).
/// `None` until the header is complete; an error when the first two bits name neither kind.
fn frame_at(data: &[u8]) -> Option<Result<(usize, usize), FramingError>> {
    let first = *data.first()?;
    match first >> 6 {
        // STUN: a 20-byte header whose length (bytes 2..4) counts the attributes, always a multiple of 4.
        0b00 => {
            if data.len() < 20 {
                return None;
            }
            let len = 20 + usize::from(u16::from_be_bytes([data[2], data[3]]));
            Some(Ok((len, len)))
        }
        // ChannelData: channel number 0x4000..=0x7FFF, then the data length; padded on a stream.
        0b01 => {
            if data.len() < 4 {
                return None;
            }
            let len = 4 + usize::from(u16::from_be_bytes([data[2], data[3]]));
            Some(Ok((len, len.next_multiple_of(4))))
        }
        _ => Some(Err(FramingError)),
    }
}

impl StreamFramer {
    /// Append a chunk of the stream and take every frame it completes, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, FramingError> {
        self.buf.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut at = 0;
        while let Some(found) = frame_at(&self.buf[at..]) {
            let (len, on_stream) = found.inspect_err(|_| self.buf.clear())?;
            if self.buf.len() - at < on_stream {
                break;
            }
            frames.push(self.buf[at..at + len].to_vec());
            at += on_stream;
        }
        self.buf.drain(..at);
        debug_assert!(self.buf.len() <= MAX_FRAME + 3);
        Ok(frames)
    }
}

/// A frame the crate built for the server, as it must go on a stream: ChannelData padded to four bytes.
pub fn pad_for_stream(mut frame: Vec<u8>) -> Vec<u8> {
    if frame.first().is_some_and(|b| b >> 6 == 0b01) {
        frame.resize(frame.len().next_multiple_of(4), 0);
    }
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(id: u16, data: &[u8]) -> Vec<u8> {
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&(data.len() as u16).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    fn stun(attrs: usize) -> Vec<u8> {
        let mut v = vec![0x01, 0x01];
        v.extend_from_slice(&(attrs as u16).to_be_bytes());
        v.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
        v.extend_from_slice(&[7; 12]);
        v.extend(std::iter::repeat_n(9, attrs));
        v
    }

    #[test]
    fn padded_channel_data_does_not_shift_the_next_frame() {
        let odd = channel(0x4000, &[1, 2, 3, 4, 5]);
        let next = stun(8);
        let mut stream = pad_for_stream(odd.clone());
        assert_eq!(
            stream.len(),
            12,
            "5 bytes of data + 4 of header, padded to 12"
        );
        stream.extend_from_slice(&next);
        let mut f = StreamFramer::default();
        assert_eq!(f.push(&stream).unwrap(), vec![odd, next]);
    }

    #[test]
    fn frames_split_anywhere_come_out_whole_and_in_order() {
        let frames = vec![
            channel(0x4001, &[0xAB; 633]),
            stun(0),
            channel(0x7FFF, &[]),
            channel(0x4002, &[1]),
            stun(36),
        ];
        let stream: Vec<u8> = frames.iter().cloned().flat_map(pad_for_stream).collect();
        for step in [1, 3, 7, 64, stream.len()] {
            let mut f = StreamFramer::default();
            let mut got = Vec::new();
            for chunk in stream.chunks(step) {
                got.extend(f.push(chunk).unwrap());
            }
            assert_eq!(got, frames, "chunks of {step}");
        }
    }

    #[test]
    fn bytes_that_are_neither_kind_are_an_error_and_hold_nothing() {
        let mut f = StreamFramer::default();
        assert_eq!(f.push(&[0x80, 0, 0, 0]), Err(FramingError));
        assert!(f.buf.is_empty());
        // A partial header waits; it is not an error yet.
        assert_eq!(f.push(&[0x40, 0x00]).unwrap(), Vec::<Vec<u8>>::new());
    }

    #[test]
    fn only_channel_data_is_padded() {
        assert_eq!(pad_for_stream(stun(4)).len(), 24);
        assert_eq!(pad_for_stream(channel(0x4000, &[1, 2])).len(), 8);
        assert_eq!(pad_for_stream(channel(0x4000, &[1, 2, 3, 4])).len(), 8);
        assert_eq!(pad_for_stream(Vec::new()), Vec::<u8>::new());
    }
}
