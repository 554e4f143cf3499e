//! The process's DTLS identity: one certificate every tube of this process presents.
//!
//! The core takes the certificate as an input ([`DtlsIdentity`]) because making one draws OS entropy and
//! reads the wall clock. Making it once per process instead of once per tube is most of a launch's
//! client CPU that was not networking (issue 11: an ECDSA P-256 key, a signature and rcgen's encoding per
//! `Rtc`). Sharing it weakens nothing: every handshake is bound to its own signalled offer by the
//! fingerprint in that SDP, and every tube negotiates its own keys.

use std::io;
use std::sync::OnceLock;

use pam_lite_core::rtc::DtlsIdentity;

/// This process's DTLS identity, made on first use (with the crypto provider str0m uses) and shared
/// after that. Fails only if the crypto provider cannot make a certificate; the next call tries again.
pub fn identity() -> io::Result<DtlsIdentity> {
    static IDENTITY: OnceLock<DtlsIdentity> = OnceLock::new();
    if let Some(id) = IDENTITY.get() {
        return Ok(id.clone());
    }
    let fresh = generate()?;
    // Two first callers may both generate: one wins, and both return the winner.
    Ok(IDENTITY.get_or_init(|| fresh).clone())
}

/// A new identity, not shared (tests, or an application that wants one per tube after all).
pub fn generate() -> io::Result<DtlsIdentity> {
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .ok_or_else(|| io::Error::other("the crypto provider could not make a DTLS certificate"))?;
    Ok(DtlsIdentity::from_der(cert.certificate, cert.private_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_caller_gets_the_same_certificate() {
        let a = identity().unwrap();
        let b = identity().unwrap();
        assert!(a.same_as(&b));
        let fresh = generate().unwrap();
        assert!(!fresh.same_as(&a));
    }

    #[test]
    fn concurrent_first_callers_agree() {
        let ids: Vec<DtlsIdentity> = (0..4)
            .map(|_| std::thread::spawn(|| identity().unwrap()))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(ids.windows(2).all(|w| w[0].same_as(&w[1])));
    }
}
