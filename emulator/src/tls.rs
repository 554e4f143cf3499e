//! Optional TLS for the emulated router: a throw-away CA and a `localhost`/`127.0.0.1` leaf certificate,
//! generated at start.
//!
//! A real CA plus a leaf (rather than one self-signed leaf) because webpki refuses a certificate that is its
//! own trust anchor in some shapes; with a CA the client simply adds [`TlsMaterial::ca_pem`] to its roots,
//! exactly as it would for a corporate proxy. The private keys never leave this process.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Why the TLS material could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("could not generate the emulator certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("could not build the TLS server configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The generated CA and the server configuration that presents the leaf signed by it.
#[derive(Clone)]
pub struct TlsMaterial {
    /// PEM of the CA certificate a client must trust.
    pub ca_pem: String,
    /// DER of the same CA certificate.
    pub ca_der: CertificateDer<'static>,
    pub server_config: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem_len", &self.ca_pem.len())
            .finish_non_exhaustive()
    }
}

/// Names the leaf certificate is valid for (the emulator only listens on loopback).
pub const SERVER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

impl TlsMaterial {
    /// Generate a fresh CA and leaf (P-256 keys, from the system RNG via ring).
    pub fn generate() -> Result<Self, TlsError> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pam-lite emulator CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key)?;

        let leaf_key = KeyPair::generate()?;
        let names: Vec<String> = SERVER_NAMES.iter().map(|s| s.to_string()).collect();
        let mut leaf_params = CertificateParams::new(names)?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "pam-lite emulator");
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key)?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let chain = vec![leaf.der().clone(), ca.der().clone()];
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server_config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(TlsMaterial {
            ca_pem: ca.pem(),
            ca_der: ca.der().clone(),
            server_config: Arc::new(server_config),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_ca_pem_and_a_config() {
        let m = TlsMaterial::generate().expect("generate");
        assert!(m.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(!m.ca_der.is_empty());
        // Every start makes a new CA.
        let m2 = TlsMaterial::generate().expect("generate");
        assert_ne!(m.ca_pem, m2.ca_pem);
        assert!(!format!("{m:?}").contains("BEGIN"));
    }
}
