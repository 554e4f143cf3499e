//! DTLS implementation using dimpl with AWS-LC-RS backend.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use str0m_proto::crypto::CryptoError;
use str0m_proto::crypto::DtlsVersion;
use str0m_proto::crypto::dtls::ProtocolVersion;
use str0m_proto::crypto::dtls::{DtlsCert, DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider};

// ============================================================================
// DTLS Provider Implementation
// ============================================================================

#[derive(Debug)]
pub(super) struct AwsLcRsDtlsProvider;

impl DtlsProvider for AwsLcRsDtlsProvider {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        // Use dimpl's rcgen-based certificate generation (with aws-lc-rs backend)
        dimpl::certificate::generate_self_signed_certificate()
            .ok()
            .map(|cert| DtlsCert {
                certificate: cert.certificate,
                private_key: cert.private_key,
            })
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        let dimpl_cert = dimpl::DtlsCertificate {
            certificate: cert.certificate.clone(),
            private_key: cert.private_key.clone(),
        };

        let config = shared_config(mtu, self.is_test())?;
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, dimpl_cert, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, dimpl_cert, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, dimpl_cert, now),
            _ => {
                return Err(CryptoError::Other(format!(
                    "Unsupported DTLS version: {dtls_version}"
                )));
            }
        };

        Ok(Box::new(AwsLcRsDtlsInstance { dtls }))
    }
}

/// The dimpl config for `mtu`, built once per process and shared by every DTLS instance.
///
/// `dimpl::ConfigBuilder::build` validates the whole crypto provider on every call (test key exchanges on
/// P-256, P-384 and X25519, signature checks, the PRFs): about 1.3 ms of CPU, most of what creating an
/// `Rtc` costs. The config is immutable and `dimpl::Dtls` takes it as an `Arc`, so one per distinct
/// setting is enough. Bounded: a process sees one or two MTUs, and an unusual one beyond the bound is
/// built fresh (as before this patch) instead of growing the cache.
const MAX_CACHED: usize = 8;
type ConfigKey = (Option<usize>, bool);
static CONFIGS: Mutex<Vec<(ConfigKey, Arc<dimpl::Config>)>> = Mutex::new(Vec::new());

fn shared_config(mtu: Option<usize>, is_test: bool) -> Result<Arc<dimpl::Config>, CryptoError> {
    let key = (mtu, is_test);
    let mut configs = CONFIGS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, config)) = configs.iter().find(|(k, _)| *k == key) {
        return Ok(config.clone());
    }

    // Create a default dimpl Config with AWS-LC-RS crypto provider
    // ICE verifies return routability before DTLS, making server cookies redundant.
    let mut builder = dimpl::Config::builder().use_server_cookie(false);
    if let Some(mtu) = mtu {
        builder = builder.mtu(mtu);
    }
    if is_test {
        // We need the DTLS impl to be deterministic for the BWE tests.
        builder = builder.dangerously_set_rng_seed(42);
    }

    let config = builder
        .build()
        .map_err(|e| CryptoError::Other(format!("dimpl config creation failed: {}", e)))?;

    let config = Arc::new(config);
    if configs.len() < MAX_CACHED {
        configs.push((key, config.clone()));
    }
    Ok(config)
}

// ============================================================================
// DTLS Instance Wrapper
// ============================================================================

struct AwsLcRsDtlsInstance {
    dtls: dimpl::Dtls,
}

impl std::fmt::Debug for AwsLcRsDtlsInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsLcRsDtlsInstance").finish()
    }
}

impl DtlsInstance for AwsLcRsDtlsInstance {
    fn set_active(&mut self, active: bool) {
        self.dtls.set_active(active);
    }

    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.dtls.handle_packet(packet)
    }

    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.dtls.poll_output(buf)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.dtls.handle_timeout(now)
    }

    fn send_application_data(&mut self, data: &[u8]) -> Result<(), DtlsImplError> {
        self.dtls.send_application_data(data)
    }

    fn is_active(&self) -> bool {
        self.dtls.is_active()
    }

    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.dtls.protocol_version()
    }

    fn is_closing(&self) -> bool {
        self.dtls.is_closing()
    }

    fn is_closed(&self) -> bool {
        self.dtls.is_closed()
    }

    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.dtls.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_config_per_setting_is_shared() {
        let a = shared_config(Some(1150), false).unwrap();
        let b = shared_config(Some(1150), false).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.mtu(), 1150);
        let other = shared_config(Some(1200), false).unwrap();
        assert!(!Arc::ptr_eq(&a, &other));
        assert_eq!(other.mtu(), 1200);
        let seeded = shared_config(Some(1150), true).unwrap();
        assert!(!Arc::ptr_eq(&a, &seeded));
    }

    #[test]
    fn past_the_bound_configs_are_built_fresh_not_cached() {
        for mtu in 2000..2020 {
            let a = shared_config(Some(mtu), false).unwrap();
            assert_eq!(a.mtu(), mtu);
        }
        let len = CONFIGS.lock().unwrap().len();
        assert!(len <= MAX_CACHED, "the cache grew to {len}");
    }
}
