//! How a driver is set up: where its UDP socket lives, which TLS roots it trusts, and the size bounds it
//! enforces on everything that comes from the network.
//!
//! Both drivers (this crate and `pam-lite-smol`) take the same [`DriverConfig`], so the CLI and the tests can
//! switch runtimes without touching their configuration.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Largest HTTP response body the driver accepts (router answers are a few KiB).
pub const DEFAULT_HTTP_BODY_LIMIT: u64 = 4 * 1024 * 1024;
/// Largest WebSocket frame/message the driver accepts (router pushes are small JSON documents).
pub const DEFAULT_WS_FRAME_LIMIT: usize = 1024 * 1024;
/// SO_RCVBUF / SO_SNDBUF asked for the UDP socket, so a burst of SCTP data is not dropped by the kernel.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// How long a driver keeps sending after [`pam_lite_core::Output::Finished`] (graceful close datagrams).
pub const DEFAULT_FINISH_FLUSH: Duration = Duration::from_millis(200);
/// How long a driver waits for a TURN server's TCP connect plus TLS handshake (`Output::StreamOpen`).
/// A reachable server answers within a few round trips; 10 s still covers lost SYNs (Linux resends the
/// first after 1 s and 3 s) on a bad path, while a black-holed server is given up long before the kernel's
/// own ~2 minute connect timeout. The core may give up sooner on its own schedule (it closes the stream).
pub const DEFAULT_STREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest PEM file accepted as an extra CA (a CA bundle is a few hundred KiB at most).
pub const MAX_CA_PEM_BYTES: u64 = 1024 * 1024;

/// TLS policy shared by the HTTP client and the WebSocket client.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM text with one or more CA certificates trusted in addition to the Mozilla roots
    /// (the emulator serves a self-signed certificate).
    pub extra_ca_pem: Option<Vec<u8>>,
    /// Accept any server certificate (`--insecure`). Logged loudly at every client construction.
    pub insecure: bool,
}

impl TlsConfig {
    /// Trust the CA certificates of the PEM file at `path` in addition to the Mozilla roots.
    pub fn with_ca_pem_file(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path)?;
        let mut pem = Vec::new();
        file.take(MAX_CA_PEM_BYTES + 1).read_to_end(&mut pem)?;
        if pem.len() as u64 > MAX_CA_PEM_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "CA file {} is larger than {MAX_CA_PEM_BYTES} bytes",
                    path.display()
                ),
            ));
        }
        self.extra_ca_pem = Some(pem);
        Ok(self)
    }
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field(
                "extra_ca_pem_bytes",
                &self.extra_ca_pem.as_ref().map(Vec::len),
            )
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// Everything a driver needs besides the node itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriverConfig {
    /// Address the node's single UDP socket binds to. Default `127.0.0.1:0` (tests, the demo); the CLI binds
    /// `0.0.0.0:0` for a real ticket so a gateway on another host can reach it.
    pub udp_bind: SocketAddr,
    /// Addresses announced as host candidates when `udp_bind` is unspecified (`0.0.0.0:0` / `[::]:0`);
    /// the bound port is added to each. Empty there: the up, non-loopback interface addresses of the
    /// socket's family ([`crate::host_candidates`]). Must be empty or equal to the bound IP otherwise.
    pub candidate_ips: Vec<IpAddr>,
    pub tls: TlsConfig,
    pub http_body_limit: u64,
    pub ws_frame_limit: usize,
    /// Requested SO_RCVBUF and SO_SNDBUF (the kernel may cap it; a smaller grant is logged, not fatal).
    pub socket_buffer: usize,
    /// How long the driver keeps transmitting after `Output::Finished`.
    pub finish_flush: Duration,
    /// Bound on a stream's TCP connect plus TLS handshake (see [`DEFAULT_STREAM_CONNECT_TIMEOUT`]).
    pub stream_connect_timeout: Duration,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            udp_bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            candidate_ips: Vec::new(),
            tls: TlsConfig::default(),
            http_body_limit: DEFAULT_HTTP_BODY_LIMIT,
            ws_frame_limit: DEFAULT_WS_FRAME_LIMIT,
            socket_buffer: DEFAULT_SOCKET_BUFFER,
            finish_flush: DEFAULT_FINISH_FLUSH,
            stream_connect_timeout: DEFAULT_STREAM_CONNECT_TIMEOUT,
        }
    }
}
