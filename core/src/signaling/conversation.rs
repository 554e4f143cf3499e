//! The conversation id (the 16 random bytes naming one tunnel, in its two textual forms) and the
//! lenient base64 decoding every id and nonce goes through.

use super::*;

/// Standard alphabet, padding optional, non-zero trailing bits accepted: what Python's lenient
/// `b64decode` / `urlsafe_b64decode` accept for well-formed input.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decode standard or URL-safe base64, padded or not (Commander's `base64_to_bytes` /
/// `url_safe_str_to_bytes` accept both alphabets).
pub fn decode_b64_any(s: &str) -> Option<Vec<u8>> {
    if s.len() > 2 * MAX_SIGNAL_LEN {
        return None;
    }
    let normalized: String = s
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    LENIENT.decode(normalized).ok()
}

/// The 16 random bytes of one conversation (`GatewayAction.generate_conversation_id`).
///
/// Commander uses two spellings: [`ConversationId::url`] (`conv_url`, the offer's `conversationId` and
/// every `messageId`) and [`ConversationId::std`] (`conv_std`, the data-channel label, the ICE-candidate
/// actions and the WebSocket `conversationId`). Both decode to the same bytes, which is what the router
/// puts in `RouterControllerMessage.messageUid`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(pub [u8; 16]);

impl ConversationId {
    pub fn random(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut b = [0u8; 16];
        rng.fill_bytes(&mut b);
        ConversationId(b)
    }

    /// URL-safe base64 without padding (22 characters).
    pub fn url(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Standard base64 with padding (24 characters, ends with `==`).
    pub fn std(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Either spelling (standard or URL-safe alphabet, padded or not); `None` unless it is 16 bytes.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() > 32 {
            return None;
        }
        let bytes = decode_b64_any(s)?;
        bytes.as_slice().try_into().ok().map(ConversationId)
    }

    /// Does `s` name this conversation, in either spelling?
    pub fn matches(&self, s: &str) -> bool {
        Self::parse(s).is_some_and(|c| c == *self)
    }
}

impl std::fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConversationId({})", self.url())
    }
}

impl std::fmt::Display for ConversationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::signaling::test_support::*;

    #[test]
    fn conversation_id_forms() {
        let c = ConversationId(
            (0u8..16)
                .map(|i| i * 17)
                .collect::<Vec<_>>()
                .try_into()
                .unwrap(),
        );
        assert_eq!(c.url().len(), 22);
        assert_eq!(c.std().len(), 24);
        assert!(c.std().ends_with("=="));
        assert_eq!(ConversationId::parse(&c.url()), Some(c));
        assert_eq!(ConversationId::parse(&c.std()), Some(c));
        assert_eq!(
            ConversationId::parse(c.std().trim_end_matches('=')),
            Some(c)
        );
        assert!(c.matches(&c.std()) && c.matches(&c.url()));
        assert_eq!(ConversationId::parse("abc"), None);
        assert_eq!(ConversationId::parse(""), None);
        assert_eq!(ConversationId::parse(&"A".repeat(40)), None);
        // A form with '+' and '/' (std) and its URL-safe twin.
        let c = ConversationId([0xfb; 16]);
        assert!(c.std().contains('+') || c.std().contains('/'));
        assert!(c.url().contains('-') || c.url().contains('_'));
        assert_eq!(
            ConversationId::parse(&c.url()),
            ConversationId::parse(&c.std())
        );
        // messageId = conversationId with '=' stripped and the URL-safe alphabet.
        assert_eq!(
            c.std()
                .trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_"),
            c.url()
        );
    }
}
