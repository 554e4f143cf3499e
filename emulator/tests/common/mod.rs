//! Shared helpers for the emulator's socket tests: a real HTTP client (ureq, the driver kit's blocking
//! `HttpClient`), the client-side router envelope, and a WebSocket client (the driver tests' thread client).
#![allow(dead_code)]

use std::sync::mpsc;
use std::time::Duration;

use pam_lite_core::router::endpoints::{self, gateway_uid_bytes};
use pam_lite_core::router::envelope::{ServerPublicKey, Tokens};
use pam_lite_core::router::proto::{ControllerMessageType, RouterControllerMessage};
use pam_lite_core::{HttpRequest, HttpResponse, Input, WsConnect};
use pam_lite_driver_kit::config::{DriverConfig, TlsConfig};
use pam_lite_driver_kit::http::HttpClient;
use pam_lite_driver_tests::ws_client::WsWorker;
use pam_lite_emulator::{DemoTicket, Emulator, EmulatorConfig};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

pub const T: Duration = Duration::from_secs(20);

pub struct Client {
    pub ticket: DemoTicket,
    pub http: HttpClient,
    pub rng: ChaCha20Rng,
    pub tls: TlsConfig,
}

pub fn start(config: EmulatorConfig) -> (Emulator, Client) {
    let emu = Emulator::start(EmulatorConfig {
        seed: Some([7; 32]),
        ..config
    })
    .expect("emulator starts");
    let ticket = emu.ticket();
    let tls = TlsConfig {
        extra_ca_pem: ticket.ca_pem.clone().map(String::into_bytes),
        insecure: false,
    };
    let http = HttpClient::new(&DriverConfig {
        tls: tls.clone(),
        ..DriverConfig::default()
    })
    .expect("client");
    (
        emu,
        Client {
            ticket,
            http,
            rng: ChaCha20Rng::seed_from_u64(1),
            tls,
        },
    )
}

impl Client {
    pub fn server_key(&self) -> ServerPublicKey {
        ServerPublicKey::from_b64url(
            self.ticket.server_key_id,
            &self.ticket.server_public_key_b64url,
        )
        .expect("ticket key")
    }

    pub fn tokens(&mut self) -> Tokens {
        let key = self.server_key();
        Tokens::new(&self.ticket.session_token(), &key, &mut self.rng)
    }

    pub fn perform(&self, req: &HttpRequest) -> Result<HttpResponse, String> {
        match self.http.perform(req) {
            Input::HttpResponse { response, .. } => Ok(response),
            Input::HttpError { error, .. } => Err(error),
            other => Err(format!("unexpected {other:?}")),
        }
    }

    pub fn base(&self) -> &str {
        &self.ticket.router_url
    }

    /// A controller message for the emulated gateway carrying `payload` (a GatewayAction JSON).
    pub fn message(&self, payload: &str, stream: bool) -> RouterControllerMessage {
        RouterControllerMessage {
            message_type: ControllerMessageType::CmtConnect as i32,
            message_uid: vec![0x11; 16],
            controller_uid: gateway_uid_bytes(&self.ticket.gateway_uid).expect("gateway uid"),
            stream_response: stream,
            payload: payload.as_bytes().to_vec(),
            timeout: 5_000,
        }
    }

    pub fn send_message(
        &mut self,
        tokens: &Tokens,
        msg: &RouterControllerMessage,
    ) -> Result<HttpResponse, String> {
        let base = self.ticket.router_url.clone();
        let req =
            endpoints::send_controller_message(&base, tokens, msg, None, false, T, &mut self.rng);
        self.perform(&req)
    }

    /// Open the router WebSocket with `headers`; returns the channel of what the socket reports.
    pub fn websocket(&self, headers: Vec<(String, String)>) -> (WsWorker, mpsc::Receiver<Input>) {
        let (tx, rx) = mpsc::channel();
        let connect = WsConnect {
            url: endpoints::ws_url(self.base()),
            headers,
            timeout: T,
            phase: pam_lite_core::WsPhase::Fresh,
        };
        let tls = pam_lite_driver_kit::tls::rustls_client_config(&self.tls).expect("tls");
        let worker = pam_lite_driver_tests::ws_client::spawn(connect, tls, 1 << 20, move |input| {
            tx.send(input).is_ok()
        })
        .expect("ws thread");
        (worker, rx)
    }
}

/// A `GatewayAction`-shaped JSON with `kind` (only the router and gateway fields the tests need).
pub fn action(kind: &str) -> String {
    format!(
        r#"{{"action":"webrtc-session","conversationId":"EREREREREREREREREREREQ","gateway_destination":null,"inputs":{{"kind":"{kind}","recordUid":"r","base64Nonce":"AAAAAAAAAAAAAAAAAAAAAA==","data":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA","trickleICE":true}},"is_scheduled":false,"messageId":"EREREREREREREREREREREQ"}}"#
    )
}
