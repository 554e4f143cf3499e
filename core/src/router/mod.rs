//! The Keeper router's wire layer: protobuf messages ([`proto`]), the authentication envelope
//! ([`envelope`]), URL/request builders and response parsing ([`endpoints`]) and a sans-IO emulated
//! router ([`server`]) for the simulation and the emulator.
//!
//! Everything here reproduces Keeper Commander 18.1.8's behaviour byte for byte where the router can
//! observe it (headers, envelope, protobuf) and string for string where Commander's own logic depends on
//! it (exception texts that its retry classification matches).

pub mod endpoints;
pub mod envelope;
pub mod proto;
#[cfg(any(test, feature = "emulated-router"))]
pub mod server;

/// Entry points for the fuzz targets (and the proptests): each must return without panicking for any
/// input.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing {
    use std::time::{Duration, Instant};

    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::endpoints::{
        cookie_header, parse_controller_response, parse_online_controllers, parse_relay_creds,
        parse_router_response,
    };
    use super::envelope::{OpenedTokens, ServerPublicKey, ServerSecretKey, Tokens};
    use super::server::{Faults, RouterConfig, RouterServer};
    use crate::{HttpResponse, Method};

    /// The fuzz bodies' router keys. Made once per process: key generation and ECDH per input made the
    /// router targets run at ~100 executions per second (campaign of issue 13).
    pub(crate) fn keys() -> Option<(ServerSecretKey, Tokens)> {
        static KEYS: std::sync::OnceLock<Option<(ServerSecretKey, Tokens)>> =
            std::sync::OnceLock::new();
        KEYS.get_or_init(|| {
            let mut rng = ChaCha20Rng::from_seed([11; 32]);
            let secret = ServerSecretKey::random(&mut rng);
            let tokens = Tokens::new(b"fuzz session", &secret.public_key(7).ok()?, &mut rng);
            Some((secret, tokens))
        })
        .clone()
    }

    /// A router answer body (first byte: status selector) through every client-side parser.
    pub fn fuzz_router_response(data: &[u8]) {
        let Some((secret, tokens)) = keys() else {
            return;
        };
        let (status, body) = match data.split_first() {
            Some((s, rest)) => (
                if *s < 200 {
                    200
                } else {
                    100 + u16::from(*s) * 2
                },
                rest,
            ),
            None => (200, data),
        };
        let response = HttpResponse {
            status,
            content_type: None,
            set_cookies: vec![],
            body: body.to_vec(),
        };
        for ok_below in [300, 400] {
            let _ = parse_router_response(&response, &tokens, ok_below).map(|e| e.is_some());
        }
        let _ = parse_online_controllers(Some(body));
        let _ = parse_relay_creds(Some(body));
        let _ = parse_controller_response(Some(body));
        let cookies: Vec<String> = String::from_utf8_lossy(body)
            .split('\n')
            .map(str::to_string)
            .collect();
        let _ = cookie_header(&cookies);
        // Ciphertext-shaped input straight into the envelope decrypters.
        let _ = tokens.open(body);
        if let Ok(text) = std::str::from_utf8(body) {
            let headers = vec![
                ("TransmissionKey".to_string(), text.to_string()),
                ("Authorization".to_string(), format!("KeeperUser {text}")),
            ];
            let _ = OpenedTokens::from_headers(&headers, &secret);
            let _ = ServerPublicKey::from_b64url(7, text);
        }
    }

    /// Arbitrary requests, WebSocket events and gateway replies into the emulated router. `t0` is any
    /// instant (the core never reads the clock; the fuzz target passes the current one).
    pub fn fuzz_router_server(data: &[u8], t0: Instant) {
        let Some((secret, tokens)) = keys() else {
            return;
        };
        let faults = Faults {
            registration_lag: Duration::from_millis(u64::from(data.first().copied().unwrap_or(0))),
            http_status_failures: data.iter().take(2).map(|b| 400 + u16::from(*b)).collect(),
            rrc_failures: vec![],
            gateway_offline: data.get(1).is_some_and(|b| b & 1 == 1),
        };
        let config = RouterConfig {
            secret,
            gateways: vec!["AAECAwQFBgcICQoLDA0ODw".into()],
            faults,
            relay_credentials: None,
        };
        let mut server = RouterServer::new(config, ChaCha20Rng::from_seed([13; 32]));
        let text = String::from_utf8_lossy(data);
        let paths = [
            "/api/user/send_controller_message",
            "/api/user/get_controllers",
            "/api/user/relay_access_creds?expire-sec=x",
            "/api/user/bind_to_controller/",
            "/api/user/client",
        ];
        for (i, chunk) in data.chunks(16).enumerate() {
            let now = t0 + Duration::from_millis(i as u64 * 100);
            let selector = chunk.first().copied().unwrap_or(0);
            let path = paths
                .get(usize::from(selector) % paths.len())
                .copied()
                .unwrap_or("/");
            let method = if selector & 8 == 0 {
                Method::Post
            } else {
                Method::Get
            };
            let headers = if selector & 16 == 0 {
                tokens.headers()
            } else {
                vec![]
            };
            let mut rng = ChaCha20Rng::from_seed([i as u8; 32]);
            let body = if selector & 32 == 0 {
                tokens.seal(chunk, &mut rng)
            } else {
                chunk.to_vec()
            };
            let _ = server.http_request(i as u64, method, path, &headers, &body, now);
            let _ = server.http_request(i as u64, method, &text, &headers, chunk, now);
            let _ = server.ws_open(u64::from(selector % 4), &headers, now);
            server.gateway_reply(u64::from(selector % 8), &text, now);
            if selector & 64 != 0 {
                server.ws_closed(u64::from(selector % 4));
            }
            server.handle_timeout(now + Duration::from_secs(u64::from(selector)));
            while server.poll_event().is_some() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn router_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            super::fuzzing::fuzz_router_response(&data);
        }

        #[test]
        fn router_server_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            super::fuzzing::fuzz_router_server(&data, pam_lite_dev_clock::origin());
        }
    }
}
