//! The TLS policy of every driver, turned into what each client library wants: a rustls [`ClientConfig`]
//! (tungstenite, futures-rustls, hyper) and, with the `blocking-http` feature, a `ureq::tls::TlsConfig`.
//!
//! rustls runs with the **aws-lc-rs** provider picked explicitly: the one str0m's DTLS already uses, so the
//! binary carries a single crypto library, and rustls' implicit process default never matters.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::TlsConfig;

/// Why a TLS client could not be set up from a [`TlsConfig`].
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("the extra CA file is not valid PEM: {0}")]
    Pem(String),
    #[error("the extra CA file holds no certificate")]
    NoCertificate,
    #[error("the extra CA certificate is not usable as a trust anchor: {0}")]
    BadCertificate(rustls::Error),
    #[error("TLS setup failed: {0}")]
    Rustls(rustls::Error),
}

impl From<TlsSetupError> for std::io::Error {
    fn from(e: TlsSetupError) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, e)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The certificates of the extra CA PEM (empty when none is configured).
pub fn extra_ca_certs(tls: &TlsConfig) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let Some(pem) = &tls.extra_ca_pem else {
        return Ok(Vec::new());
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate);
    }
    Ok(certs)
}

fn warn_insecure(tls: &TlsConfig, client: &str) {
    if tls.insecure {
        tracing::warn!(
            client,
            "TLS certificate verification is DISABLED (--insecure): anyone on the path can read and alter this traffic"
        );
    }
}

/// The configs [`rustls_client_config`] handed out that some client still holds, by the policy they
/// implement: a process running many nodes builds (and keeps) one per policy, not one per node.
static BUILT: Mutex<Vec<(TlsConfig, Weak<ClientConfig>)>> = Mutex::new(Vec::new());

/// A rustls client config: Mozilla roots plus the extra CA, or no verification at all when `insecure`.
///
/// One per policy and process: while a config for an equal [`TlsConfig`] is alive (some node's client
/// holds it), the same `Arc` is returned instead of a new one (issue 11: ~14 KB and a root store per
/// node). Sharing it also shares rustls' session cache, so a node may resume a TLS session another node
/// of the same process opened (each node already did so across its own connections). The `--insecure`
/// warning is logged on every call, as before.
pub fn rustls_client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, TlsSetupError> {
    warn_insecure(tls, "websocket");
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    built.retain(|(_, config)| config.strong_count() > 0);
    if let Some(config) = built
        .iter()
        .filter(|(policy, _)| policy == tls)
        .find_map(|(_, config)| config.upgrade())
    {
        return Ok(config);
    }
    let config = build_rustls_client_config(tls)?;
    built.push((tls.clone(), Arc::downgrade(&config)));
    Ok(config)
}

fn build_rustls_client_config(tls: &TlsConfig) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsSetupError::Rustls)?;
    let config = if tls.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in extra_ca_certs(tls)? {
            roots.add(cert).map_err(TlsSetupError::BadCertificate)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// The same policy for ureq, which builds (and caches) its own rustls config from this.
#[cfg(feature = "blocking-http")]
pub fn ureq_tls_config(tls: &TlsConfig) -> Result<ureq::tls::TlsConfig, TlsSetupError> {
    use ureq::tls::{Certificate, RootCerts};
    warn_insecure(tls, "http");
    let builder = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .unversioned_rustls_crypto_provider(provider());
    if tls.insecure {
        return Ok(builder.disable_verification(true).build());
    }
    let extra = extra_ca_certs(tls)?;
    if extra.is_empty() {
        return Ok(builder.root_certs(RootCerts::WebPki).build());
    }
    // ureq takes either the Mozilla roots or a specific list; "Mozilla plus one" is the full list.
    let all = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()))
        .chain(
            extra
                .iter()
                .map(|c| Certificate::from_der(c.as_ref()).to_owned()),
        );
    Ok(builder.root_certs(RootCerts::from(all)).build())
}

/// `--insecure`: any certificate is accepted, handshake signatures are still checked (so the session keys
/// belong to whoever presented the certificate, even if nobody vouches for them).
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_builds_both_configs() {
        let tls = TlsConfig::default();
        assert!(rustls_client_config(&tls).is_ok());
        #[cfg(feature = "blocking-http")]
        assert!(ureq_tls_config(&tls).is_ok());
    }

    #[test]
    fn nodes_with_the_same_policy_share_one_config() {
        // Policies of this test alone (other tests build the default one meanwhile). An insecure policy
        // never reads its PEM, so any bytes make it distinct.
        let policy = |tag: &[u8]| TlsConfig {
            extra_ca_pem: Some(tag.to_vec()),
            insecure: true,
        };
        let a = policy(b"share-a");
        let first = rustls_client_config(&a).unwrap();
        let second = rustls_client_config(&a.clone()).unwrap();
        assert!(Arc::ptr_eq(&first, &second), "same policy, two configs");
        // Another policy gets its own.
        let other = rustls_client_config(&policy(b"share-b")).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        // Nothing is kept once no client holds it.
        let weak = Arc::downgrade(&first);
        drop((first, second));
        assert!(weak.upgrade().is_none(), "the cache keeps a config alive");
        assert!(rustls_client_config(&a).is_ok());
    }

    #[test]
    fn insecure_policy_builds() {
        let tls = TlsConfig {
            insecure: true,
            ..TlsConfig::default()
        };
        assert!(rustls_client_config(&tls).is_ok());
        #[cfg(feature = "blocking-http")]
        assert!(ureq_tls_config(&tls).unwrap().disable_verification());
    }

    #[test]
    fn pem_without_certificate_is_rejected() {
        let tls = TlsConfig {
            extra_ca_pem: Some(b"not a pem file at all".to_vec()),
            ..TlsConfig::default()
        };
        assert!(matches!(
            extra_ca_certs(&tls),
            Err(TlsSetupError::NoCertificate)
        ));
        assert!(rustls_client_config(&tls).is_err());
        #[cfg(feature = "blocking-http")]
        assert!(ureq_tls_config(&tls).is_err());
    }

    #[test]
    fn garbage_inside_a_certificate_block_is_an_error_not_a_panic() {
        let tls = TlsConfig {
            extra_ca_pem: Some(
                b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_vec(),
            ),
            ..TlsConfig::default()
        };
        assert!(rustls_client_config(&tls).is_err());
    }
}
