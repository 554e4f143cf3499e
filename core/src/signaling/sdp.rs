//! The one SDP edit Commander makes before sending an offer.

use super::*;

/// Commander's `_ensure_max_message_size_attribute`: add `a=max-message-size:1073741823` after the
/// `a=sctp-port:` line (else after `m=application`, else at the end) if the SDP lacks it.
pub fn ensure_max_message_size(sdp: &str) -> String {
    if sdp.is_empty() || sdp.contains(MAX_MESSAGE_SIZE_LINE) {
        return sdp.to_string();
    }
    let newline = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let lower = sdp.to_ascii_lowercase();
    let after_line = |idx: usize| match sdp.get(idx..).and_then(|rest| rest.find(newline)) {
        Some(off) => idx + off + newline.len(),
        None => sdp.len(),
    };
    let at = lower
        .find("a=sctp-port:")
        .map(after_line)
        .or_else(|| lower.find("m=application").map(after_line));
    match at {
        Some(i) if sdp.is_char_boundary(i) => {
            format!("{}{MAX_MESSAGE_SIZE_LINE}{newline}{}", &sdp[..i], &sdp[i..])
        }
        _ => {
            let suffix = if sdp.ends_with(newline) { "" } else { newline };
            format!("{sdp}{suffix}{MAX_MESSAGE_SIZE_LINE}{newline}")
        }
    }
}

/// Fault injection for the emulated gateway: every `a=fingerprint:` line's hex digits are changed (each
/// digit `d` becomes `15 - d`), so the SDP names a certificate nobody holds while staying well formed.
/// A client that checks the DTLS certificate against the answer must then refuse the handshake.
pub fn corrupt_fingerprint(sdp: &str) -> String {
    let newline = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let mut out = String::with_capacity(sdp.len());
    for (i, line) in sdp.split(newline).enumerate() {
        if i > 0 {
            out.push_str(newline);
        }
        match line.split_once(' ') {
            Some((head, hex)) if head.to_ascii_lowercase().starts_with("a=fingerprint:") => {
                out.push_str(head);
                out.push(' ');
                out.extend(hex.chars().map(|c| match c.to_digit(16) {
                    Some(d) => char::from_digit(15 - d, 16).map_or(c, |h| h.to_ascii_uppercase()),
                    None => c,
                }));
            }
            _ => out.push_str(line),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::signaling::test_support::*;

    #[test]
    fn max_message_size_injection() {
        let sdp = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:5000\r\na=x\r\n";
        assert_eq!(
            ensure_max_message_size(sdp),
            "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=sctp-port:5000\r\na=max-message-size:1073741823\r\na=x\r\n"
        );
        let again = ensure_max_message_size(&ensure_max_message_size(sdp));
        assert_eq!(again.matches("max-message-size").count(), 1);
        assert_eq!(
            ensure_max_message_size("v=0\nm=application 9\n"),
            "v=0\nm=application 9\na=max-message-size:1073741823\n"
        );
        assert_eq!(
            ensure_max_message_size("v=0"),
            "v=0\na=max-message-size:1073741823\n"
        );
        assert_eq!(ensure_max_message_size(""), "");
    }

    #[test]
    fn corrupt_fingerprint_changes_only_the_digits_of_fingerprint_lines() {
        let sdp = "v=0\r\na=fingerprint:sha-256 0A:F1:99\r\na=setup:active\r\n";
        assert_eq!(
            corrupt_fingerprint(sdp),
            "v=0\r\na=fingerprint:sha-256 F5:0E:66\r\na=setup:active\r\n"
        );
        assert_eq!(corrupt_fingerprint("v=0\na=x y\n"), "v=0\na=x y\n");
    }
}
