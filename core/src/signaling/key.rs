//! The per-launch tunnel key: HKDF-SHA256(traffic seed, salt = nonce) → AES-256-GCM (key derivation),
//! and the payload crypto every action's `data` and every gateway reply uses (`tunnel_encrypt` /
//! `tunnel_decrypt`).

use super::*;

/// The per-launch signaling key. `Debug` is redacted.
#[derive(Clone)]
pub struct TunnelKey {
    cipher: Aes256Gcm,
}

impl TunnelKey {
    /// HKDF-SHA256(ikm = `seed` (the record's `trafficEncryptionSeed`), salt = `nonce` (16 random bytes,
    /// sent as `base64Nonce`), info = [`TUNNEL_KEY_INFO`], 32 bytes) → AES-256-GCM.
    pub fn derive(seed: &[u8], nonce: &[u8]) -> Self {
        let mut okm = [0u8; 32];
        // HKDF-SHA256 can expand up to 255 × 32 bytes; 32 can never fail.
        Hkdf::<Sha256>::new(Some(nonce), seed)
            .expand(TUNNEL_KEY_INFO, &mut okm)
            .expect("32 bytes is within HKDF-SHA256's output limit");
        let key = TunnelKey {
            cipher: Aes256Gcm::new(&okm.into()),
        };
        // The derived key bytes: wiped once the cipher holds them.
        zeroize::Zeroize::zeroize(&mut okm);
        key
    }

    /// `tunnel_encrypt`: std base64 of `iv(12) ‖ ciphertext ‖ tag(16)`.
    pub fn encrypt(&self, plaintext: &[u8], rng: &mut (impl RngCore + CryptoRng)) -> String {
        let mut iv = [0u8; TUNNEL_IV_LEN];
        rng.fill_bytes(&mut iv);
        let mut out = iv.to_vec();
        // Only fails beyond 64 GiB of plaintext.
        out.extend(
            self.cipher
                .encrypt(&Nonce::from(iv), plaintext)
                .unwrap_or_default(),
        );
        STANDARD.encode(out)
    }

    /// `tunnel_decrypt`: std or URL-safe base64, longer than the IV, authenticated.
    pub fn decrypt(&self, data: &str) -> Result<Vec<u8>, SignalingError> {
        if data.len() > 2 * MAX_SIGNAL_LEN {
            return Err(SignalingError::TooLong {
                what: "encrypted data",
                len: data.len(),
            });
        }
        let raw = decode_b64_any(data).ok_or(SignalingError::BadBase64("encrypted data"))?;
        if raw.len() <= TUNNEL_IV_LEN {
            return Err(SignalingError::TooShort(raw.len()));
        }
        let (iv, ct) = raw.split_at(TUNNEL_IV_LEN);
        let iv: [u8; TUNNEL_IV_LEN] = iv
            .try_into()
            .map_err(|_| SignalingError::TooShort(raw.len()))?;
        self.cipher
            .decrypt(&Nonce::from(iv), ct)
            .map_err(|_| SignalingError::Decrypt)
    }
}

impl std::fmt::Debug for TunnelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[allow(unused_imports)]
    use crate::signaling::test_support::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn tunnel_key_round_trip_and_failures() {
        let mut r = rng();
        let key = kat_key();
        let ct = key.encrypt(b"hello", &mut r);
        assert_eq!(key.decrypt(&ct).unwrap(), b"hello");
        // URL-safe spelling decrypts too.
        let url = ct
            .replace('+', "-")
            .replace('/', "_")
            .trim_end_matches('=')
            .to_string();
        assert_eq!(key.decrypt(&url).unwrap(), b"hello");
        let other = TunnelKey::derive(&[1; 32], &[2; 16]);
        assert_eq!(other.decrypt(&ct), Err(SignalingError::Decrypt));
        assert_eq!(key.decrypt("AAAA"), Err(SignalingError::TooShort(3)));
        assert_eq!(
            key.decrypt(&STANDARD.encode([0u8; 12])),
            Err(SignalingError::TooShort(12))
        );
        assert_eq!(
            key.decrypt("!!"),
            Err(SignalingError::BadBase64("encrypted data"))
        );
        assert_eq!(format!("{key:?}"), "TunnelKey(<redacted>)");
    }

    #[test]
    fn tunnel_decrypt_known_answer_from_commander() {
        let ct = "CQkJCQkJCQkJCQkJr7Ub+gGig1/plzG9ibagXzE89K4HntB5H+bPuHUfO2ey9katQVneVUMsZ4R2mjBuhjXNSLVpvF6iZRB1sQUbuYe81eysfyrQ5G9/VfapuH5Bj1q2LTzgklKyD9hflHelo1LLIH6KIp7GsQ==";
        let plain = kat_key().decrypt(ct).unwrap();
        assert_eq!(
            plain,
            br#"{"answer": "dj0wDQptPWFwcGxpY2F0aW9uIDkgVURQL0RUTFMvU0NUUCB3ZWJydGMtZGF0YWNoYW5uZWwNCg=="}"#
        );
        assert_eq!(
            classify_plaintext(&plain),
            GatewayData::Answer(
                "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n".into()
            )
        );
    }

    proptest! {
        #[test]
        fn tunnel_round_trip(plain in proptest::collection::vec(any::<u8>(), 0..300), seed in any::<[u8; 32]>()) {
            let key = TunnelKey::derive(&seed, &[1; 16]);
            let mut r = ChaCha20Rng::from_seed(seed);
            prop_assert_eq!(key.decrypt(&key.encrypt(&plain, &mut r)).unwrap(), plain);
        }
    }
}
