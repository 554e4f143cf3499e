//! The process's DTLS identity: one certificate every tube of this process presents.
//!
//! The core takes the certificate as an input ([`DtlsIdentity`]) because making one draws OS entropy and
//! reads the wall clock. Making it once per process instead of once per tube is most of a launch's
//! client CPU that was not networking (issue 11: an ECDSA P-256 key, a signature and rcgen's encoding per
//! `Rtc`). Sharing it weakens nothing: every handshake is bound to its own signalled offer by the
//! fingerprint in that SDP, and every tube negotiates its own keys.
//!
//! The first certificate of a process also pays aws-lc's one-time CPU-jitter entropy seeding (~35 ms).
//! [`identity`] returns at once and makes the certificate on a thread of its own, so that cost runs beside
//! the launch's first router request (whose TLS handshake then finds the generator seeded) instead of
//! before it; the tube is created hundreds of milliseconds later.

use std::io;
use std::sync::OnceLock;

use pam_lite_core::rtc::DtlsIdentity;

/// This process's DTLS identity, shared by every caller. The first call starts making the certificate on
/// a background thread and returns at once; a peer created before it is done makes its own (see
/// [`DtlsIdentity`]). If the thread cannot be started the certificate is made right here.
pub fn identity() -> DtlsIdentity {
    static IDENTITY: OnceLock<DtlsIdentity> = OnceLock::new();
    IDENTITY
        .get_or_init(|| {
            let identity = DtlsIdentity::pending();
            let filler = identity.clone();
            let spawned = std::thread::Builder::new()
                .name("dtls-identity".into())
                .spawn(move || fill(&filler));
            if spawned.is_err() {
                fill(&identity);
            }
            identity
        })
        .clone()
}

fn fill(identity: &DtlsIdentity) {
    match certificate() {
        Ok((certificate, private_key)) => {
            identity.fill(certificate, private_key);
        }
        // Peers then make their own certificates, as str0m does by default; nothing else changes.
        Err(e) => tracing::warn!("no shared DTLS certificate, each tube makes its own: {e}"),
    }
}

/// A new identity, made now and not shared (tests, or an application that wants one per tube).
pub fn generate() -> io::Result<DtlsIdentity> {
    let (certificate, private_key) = certificate()?;
    Ok(DtlsIdentity::from_der(certificate, private_key))
}

fn certificate() -> io::Result<(Vec<u8>, Vec<u8>)> {
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .ok_or_else(|| io::Error::other("the crypto provider could not make a DTLS certificate"))?;
    Ok((cert.certificate, cert.private_key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn every_caller_gets_the_same_identity_and_it_fills_in() {
        let a = identity();
        let b = identity();
        assert!(a.same_as(&b));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !a.is_ready() {
            assert!(Instant::now() < deadline, "the identity was never made");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(b.is_ready());
        let fresh = generate().unwrap();
        assert!(fresh.is_ready() && !fresh.same_as(&a));
    }

    #[test]
    fn concurrent_first_callers_agree() {
        let ids: Vec<DtlsIdentity> = (0..4)
            .map(|_| std::thread::spawn(identity))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0].same_as(&w[1])));
    }
}
