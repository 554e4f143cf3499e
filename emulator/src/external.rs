//! An external gateway behind the emulated router: a process that speaks the JSON lines of
//! `tests/interop/keeper_peer.py --role gateway` — in practice **Keeper's own tube** (keeper-pam-webrtc-rs)
//! as the gateway, so a real `pam-lite` client launch meets Keeper's WebRTC stack, ICE agent and TURN client
//! end to end (the NAT lab puts it behind NAT B with coturn).
//!
//! The bridge does what the Keeper Gateway's controller code does around its tube: it opens the client's
//! offer with the tunnel key (record seed + the action's nonce), hands the SDP to the tube, seals the tube's
//! answer and each trickled candidate for the client as replies to the offer, and passes the client's
//! trickled candidates on. The process is one tube, so the bridge serves one conversation; a second offer
//! is refused like a gateway at its limit would. ICE restarts go both ways: the client's `ice_restart_offer`
//! reaches the tube (its answer is the reply), and the tube's own restart offer (Keeper's tube sends one
//! 2 s after it sees ICE disconnect) goes to the client, whose `ice_restart_answer` comes back to the tube.
//!
//! Everything from the process is bounded: a line is at most [`MAX_LINE`] bytes (longer ones end the
//! bridge), and its text reaches logs only sanitised.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pam_lite_core::signaling::{self, ConversationId, GatewayAction, TunnelKey};
use pam_lite_core::text::sanitize_max;
use rand_core::OsRng;
use serde_json::{json, Value};

use crate::gateway_host::ControllerInbox;

/// The longest line accepted from the process (an SDP answer with many candidates is a few KiB).
const MAX_LINE: usize = 256 * 1024;

/// Replies for the router: (reply_to, the gateway's reply JSON).
pub type Replies = Arc<dyn Fn(u64, String) + Send + Sync>;

/// The conversation the process serves.
struct Conversation {
    conv: ConversationId,
    key: TunnelKey,
    reply_to: u64,
    /// The client's `ice_restart_offer` waiting for the tube's answer (its reply_to).
    restart_reply_to: Option<u64>,
}

struct Shared {
    stdin: Mutex<ChildStdin>,
    conversation: Mutex<Option<Conversation>>,
    seeds: HashMap<String, Vec<u8>>,
    default_seed: Option<Vec<u8>>,
    replies: Replies,
}

/// A running external gateway process, its reader thread and the worker that takes the router's messages
/// (the router delivers while it holds its own lock, and a reply re-enters the router: so not inline).
/// Dropping it kills the process.
pub struct ExternalGateway {
    inbox: mpsc::Sender<(u64, String)>,
    child: Child,
    reader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ExternalGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExternalGateway")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl ExternalGateway {
    /// Start `argv` (program and arguments; its stderr is inherited, so its log lands in the emulator's).
    pub fn start(
        argv: &[String],
        seeds: HashMap<String, Vec<u8>>,
        default_seed: Option<Vec<u8>>,
        replies: Replies,
    ) -> std::io::Result<ExternalGateway> {
        let (program, args) = argv.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "an empty gateway command")
        })?;
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(std::io::Error::other("the gateway process has no pipes"));
        };
        let shared = Arc::new(Shared {
            stdin: Mutex::new(stdin),
            conversation: Mutex::new(None),
            seeds,
            default_seed,
            replies,
        });
        let reader_shared = shared.clone();
        let reader = std::thread::Builder::new()
            .name("external-gateway".into())
            .spawn(move || read_lines(stdout, &reader_shared))?;
        // Ends when every sender (the router's inbox clones) is gone.
        let (inbox, messages) = mpsc::channel::<(u64, String)>();
        std::thread::Builder::new()
            .name("external-gateway-inbox".into())
            .spawn(move || {
                for (reply_to, payload) in messages {
                    shared.on_controller_message(reply_to, &payload);
                }
            })?;
        Ok(ExternalGateway {
            inbox,
            child,
            reader: Some(reader),
        })
    }

    /// The router's handle: controller messages go to [`Shared::on_controller_message`] on the worker.
    pub fn inbox(&self) -> ControllerInbox {
        let inbox = self.inbox.clone();
        ControllerInbox::from_fn(move |reply_to, _stream, payload| {
            inbox.send((reply_to, payload)).is_ok()
        })
    }
}

impl Drop for ExternalGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Shared {
    /// `{"is_ok":true,"data":…}` for the router, as the built-in gateway answers.
    fn reply(&self, reply_to: u64, data: &str) {
        (self.replies)(reply_to, signaling::gateway_reply_ok(data));
    }

    fn refuse(&self, reply_to: u64, error: &str) {
        tracing::warn!(%error, "external gateway refuses a controller message");
        (self.replies)(reply_to, signaling::gateway_reply_error(error));
    }

    fn send(&self, line: Value) {
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = writeln!(stdin, "{line}").and_then(|()| stdin.flush()) {
            tracing::warn!(error = %e, "the external gateway process is gone");
        }
    }

    fn on_controller_message(&self, reply_to: u64, payload: &str) {
        let action = match GatewayAction::parse(payload) {
            Ok(a) => a,
            Err(e) => return self.refuse(reply_to, &format!("bad gateway action: {e}")),
        };
        let input = |k: &str| action.inputs.get(k).and_then(Value::as_str).unwrap_or("");
        let Some(conv) = ConversationId::parse(&action.conversation_id) else {
            return self.refuse(reply_to, "bad conversationId");
        };
        match input("kind") {
            "start" => {
                let mut slot = self.conversation.lock().unwrap_or_else(|p| p.into_inner());
                if slot.is_some() {
                    return self.refuse(reply_to, "gateway is at its tube limit");
                }
                let Some(seed) = self
                    .seeds
                    .get(input("recordUid"))
                    .or(self.default_seed.as_ref())
                else {
                    return self.refuse(reply_to, "unknown record");
                };
                let Some(nonce) = action.nonce().filter(|n| !n.is_empty()) else {
                    return self.refuse(reply_to, "bad base64Nonce");
                };
                let key = TunnelKey::derive(seed, &nonce);
                let sdp = match key
                    .decrypt(input("data"))
                    .map_err(|e| e.to_string())
                    .and_then(|p| signaling::parse_offer_data(&p).map_err(|e| e.to_string()))
                {
                    Ok(sdp) => sdp,
                    Err(e) => return self.refuse(reply_to, &format!("bad offer: {e}")),
                };
                *slot = Some(Conversation {
                    conv,
                    key,
                    reply_to,
                    restart_reply_to: None,
                });
                drop(slot);
                tracing::info!(
                    sdp_bytes = sdp.len(),
                    "external gateway: the client's offer"
                );
                self.send(json!({ "type": "offer", "sdp": sdp }));
            }
            "icecandidate" => {
                let slot = self.conversation.lock().unwrap_or_else(|p| p.into_inner());
                let Some(c) = slot.as_ref().filter(|c| c.conv == conv) else {
                    return self.refuse(reply_to, "unknown conversation");
                };
                let list = match c.key.decrypt(input("data")) {
                    Ok(plain) => signaling::parse_candidates(&plain),
                    Err(e) => return self.refuse(reply_to, &format!("decryption failed: {e}")),
                };
                drop(slot);
                tracing::info!(
                    candidates = list.len(),
                    "external gateway: the client's candidates"
                );
                for candidate in list {
                    self.send(json!({ "type": "candidate", "candidate": candidate }));
                }
                self.reply(reply_to, "ice candidate received");
            }
            // The client restarts ICE: the tube takes the new offer on its connected session and returns
            // the answer itself (2.2.9's set_remote_description), which goes back as the reply.
            "ice_restart_offer" => {
                let mut slot = self.conversation.lock().unwrap_or_else(|p| p.into_inner());
                let Some(c) = slot.as_mut().filter(|c| c.conv == conv) else {
                    return self.refuse(reply_to, "unknown conversation");
                };
                let sdp = match open_restart(&c.key, input("data"), signaling::parse_restart_offer)
                {
                    Ok(sdp) => sdp,
                    Err(e) => return self.refuse(reply_to, &format!("bad ICE-restart offer: {e}")),
                };
                c.restart_reply_to = Some(reply_to);
                drop(slot);
                tracing::info!("external gateway: the client restarts ICE");
                self.send(json!({ "type": "restart_offer", "sdp": sdp }));
            }
            // The client's answer to the tube's own restart offer.
            "ice_restart_answer" => {
                let slot = self.conversation.lock().unwrap_or_else(|p| p.into_inner());
                let Some(c) = slot.as_ref().filter(|c| c.conv == conv) else {
                    return self.refuse(reply_to, "unknown conversation");
                };
                let sdp = match open_restart(&c.key, input("data"), signaling::parse_restart_answer)
                {
                    Ok(sdp) => sdp,
                    Err(e) => {
                        return self.refuse(reply_to, &format!("bad ICE-restart answer: {e}"))
                    }
                };
                drop(slot);
                tracing::info!("external gateway: the client answered the tube's ICE restart");
                self.send(json!({ "type": "restart_answer", "sdp": sdp }));
                self.reply(reply_to, "ice restart answer received");
            }
            other => self.refuse(reply_to, &format!("unsupported action kind {other:?}")),
        }
    }

    /// A line from the process: its answer and candidates go to the client, sealed as the gateway's
    /// replies to the offer; anything else is logged.
    fn on_line(&self, line: &str) {
        let Ok(msg) = serde_json::from_str::<Value>(line) else {
            tracing::warn!(line = %sanitize_max(line, 200), "external gateway: not JSON");
            return;
        };
        let mut to = None;
        let body = match msg.get("type").and_then(Value::as_str) {
            Some("answer") => {
                let sdp = msg.get("sdp").and_then(Value::as_str).unwrap_or("");
                json!({ "answer": B64.encode(sdp.as_bytes()) })
            }
            // The tube answered the client's restart: the reply to that action.
            Some("restart_answer") => {
                let sdp = msg.get("sdp").and_then(Value::as_str).unwrap_or("");
                let slot = self.conversation.lock().unwrap_or_else(|p| p.into_inner());
                to = slot.as_ref().and_then(|c| c.restart_reply_to);
                json!({ "type": "answer", "sdp": sdp, "ice_restart": true })
            }
            // The tube restarts ICE itself (2 s after it sees the path disconnected): its offer goes to the
            // client, which answers with an `ice_restart_answer` action.
            Some("signal")
                if msg.get("kind").and_then(Value::as_str) == Some("ice_restart_offer") =>
            {
                let b64 = msg.get("data").and_then(Value::as_str).unwrap_or("");
                let Some(sdp) =
                    signaling::decode_b64_any(b64).and_then(|b| String::from_utf8(b).ok())
                else {
                    tracing::warn!("external gateway: a restart offer that is not base64 SDP");
                    return;
                };
                tracing::info!("external gateway: the tube restarts ICE");
                json!({ "type": "offer", "sdp": sdp, "ice_restart": true })
            }
            Some("candidate") => match msg.get("candidate").and_then(Value::as_str) {
                Some(c) if !c.is_empty() => json!({ "candidates": [c] }),
                _ => return, // the end of its candidates: the client needs no word of it
            },
            _ => {
                tracing::info!(message = %sanitize_max(line, 300), "external gateway");
                return;
            }
        };
        let slot = self.conversation.lock().unwrap_or_else(|p| p.into_inner());
        let Some(c) = slot.as_ref() else {
            return;
        };
        tracing::info!(
            message = %sanitize_max(&body.to_string(), 120),
            "external gateway: to the client"
        );
        let data = c.key.encrypt(body.to_string().as_bytes(), &mut OsRng);
        let reply_to = to.unwrap_or(c.reply_to);
        drop(slot);
        self.reply(reply_to, &data);
    }
}

/// The SDP of a sealed ICE-restart action's `data`, read by `parse` (offer or answer).
fn open_restart(
    key: &TunnelKey,
    data: &str,
    parse: fn(&[u8]) -> Result<String, signaling::SignalingError>,
) -> Result<String, String> {
    let plain = key.decrypt(data).map_err(|e| e.to_string())?;
    parse(&plain).map_err(|e| e.to_string())
}

fn read_lines(stdout: std::process::ChildStdout, shared: &Shared) {
    let mut reader = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(0) => break,
            Ok(n) if n > MAX_LINE => {
                tracing::warn!("external gateway: a line over {MAX_LINE} bytes; bridge stopped");
                break;
            }
            Ok(_) => shared.on_line(String::from_utf8_lossy(&line).trim()),
            Err(e) => {
                tracing::warn!(error = %e, "external gateway: reading its output failed");
                break;
            }
        }
    }
    tracing::info!("external gateway process ended its output");
}
