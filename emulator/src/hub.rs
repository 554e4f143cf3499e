//! The router's switchboard: owns the sans-IO router and routes what it says to the waiting HTTP request,
//! the right WebSocket, or the gateway machine.
//!
//! The router core is synchronous and time-driven, while the emulator's sockets live on async tasks and the
//! gateway on its own thread. The hub is the one place where they meet: every call locks it, feeds the
//! router with the current time, and dispatches the router's events through channels before unlocking, so
//! nothing waits on I/O while holding the lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use pam_lite_core::{HttpResponse, Method};
use smol::channel::{self, Receiver, Sender};

use crate::gateway_host::ControllerInbox;

/// What the emulator needs from a router core (implemented for the core's `RouterServer`).
pub trait RouterCore: Send {
    /// An HTTP request arrived. The response comes later as [`RouterOut::Http`] with the same `id`.
    fn http_request(
        &mut self,
        id: u64,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
        now: Instant,
    );
    /// A WebSocket upgrade with these headers: accept it as socket `ws`, or refuse with an HTTP status.
    fn ws_open(&mut self, ws: u64, headers: &[(String, String)], now: Instant) -> Result<(), u16>;
    /// Socket `ws` is gone.
    fn ws_closed(&mut self, ws: u64, now: Instant);
    /// The gateway replied to controller message `reply_to`.
    fn gateway_reply(&mut self, reply_to: u64, payload: &str, now: Instant);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_timeout(&self) -> Option<Instant>;
    fn poll_event(&mut self) -> Option<RouterOut>;
}

/// What a router core asks the emulator to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouterOut {
    Http {
        id: u64,
        response: HttpResponse,
    },
    WsSend {
        ws: u64,
        text: String,
    },
    WsClose {
        ws: u64,
    },
    ToGateway {
        reply_to: u64,
        stream: bool,
        payload: String,
    },
}

/// What a WebSocket task is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsPush {
    Text(String),
    Close,
}

struct Inner {
    router: Box<dyn RouterCore>,
    waiters: HashMap<u64, Sender<HttpResponse>>,
    sockets: HashMap<u64, Sender<WsPush>>,
    next_id: u64,
}

/// Shared by the HTTP tasks, the WebSocket tasks, the router timer task and the gateway thread.
pub struct Hub {
    inner: Mutex<Inner>,
    gateway: OnceLock<ControllerInbox>,
    /// Wakes the timer task when the router's next deadline may have moved.
    kick: Sender<()>,
    kicked: Receiver<()>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hub")
    }
}

impl Hub {
    pub fn new(router: Box<dyn RouterCore>) -> Arc<Self> {
        let (kick, kicked) = channel::bounded(1);
        Arc::new(Hub {
            inner: Mutex::new(Inner {
                router,
                waiters: HashMap::new(),
                sockets: HashMap::new(),
                next_id: 1,
            }),
            gateway: OnceLock::new(),
            kick,
            kicked,
        })
    }

    /// Connect the gateway machine (once, right after it started).
    pub fn set_gateway(&self, inbox: ControllerInbox) {
        let _ = self.gateway.set(inbox);
    }

    /// Run `f` on the router, dispatch what it said, and wake the timer task (the deadline may have moved).
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let out = self.with_quiet(f);
        let _ = self.kick.try_send(());
        out
    }

    /// Like [`Hub::with`] without waking the timer task (the timer task itself uses it, or it would spin).
    fn with_quiet<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        // A panic elsewhere must not take the router down with it: keep using the data.
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let out = f(&mut inner);
        self.dispatch(&mut inner);
        out
    }

    fn dispatch(&self, inner: &mut Inner) {
        while let Some(ev) = inner.router.poll_event() {
            match ev {
                RouterOut::Http { id, response } => {
                    if let Some(w) = inner.waiters.remove(&id) {
                        let _ = w.try_send(response);
                    }
                }
                RouterOut::WsSend { ws, text } => {
                    if let Some(s) = inner.sockets.get(&ws) {
                        let _ = s.try_send(WsPush::Text(text));
                    }
                }
                RouterOut::WsClose { ws } => {
                    if let Some(s) = inner.sockets.remove(&ws) {
                        let _ = s.try_send(WsPush::Close);
                    }
                }
                RouterOut::ToGateway {
                    reply_to,
                    stream,
                    payload,
                } => match self.gateway.get() {
                    Some(g) => {
                        if !g.deliver(reply_to, stream, payload) {
                            tracing::warn!(
                                reply_to,
                                "the gateway machine has stopped; message dropped"
                            );
                        }
                    }
                    None => tracing::warn!(reply_to, "no gateway machine; message dropped"),
                },
            }
        }
    }

    /// Hand an HTTP request to the router; the response arrives on the returned channel.
    pub fn http(
        &self,
        method: Method,
        url: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Receiver<HttpResponse> {
        let (tx, rx) = channel::bounded(1);
        self.with(|inner| {
            let id = inner.next_id;
            inner.next_id += 1;
            inner.waiters.insert(id, tx);
            inner
                .router
                .http_request(id, method, url, headers, body, Instant::now());
        });
        rx
    }

    /// The HTTP request behind a waiter was abandoned (client gone, or the emulator's own cap hit).
    pub fn forget_abandoned(&self) {
        self.with(|inner| inner.waiters.retain(|_, w| !w.is_closed()));
    }

    /// Ask the router to accept a WebSocket. `Ok`: its id and the channel of what to send on it.
    pub fn ws_open(&self, headers: &[(String, String)]) -> Result<(u64, Receiver<WsPush>), u16> {
        self.with(|inner| {
            let id = inner.next_id;
            inner.next_id += 1;
            inner.router.ws_open(id, headers, Instant::now())?;
            let (tx, rx) = channel::unbounded();
            inner.sockets.insert(id, tx);
            Ok((id, rx))
        })
    }

    pub fn ws_closed(&self, ws: u64) {
        self.with(|inner| {
            inner.sockets.remove(&ws);
            inner.router.ws_closed(ws, Instant::now());
        });
    }

    pub fn gateway_reply(&self, reply_to: u64, payload: &str) {
        self.with(|inner| {
            inner
                .router
                .gateway_reply(reply_to, payload, Instant::now())
        });
    }

    /// Run the router's timers until `self` is the last owner (spawn this as a task).
    pub async fn run_timers(self: Arc<Self>) {
        loop {
            let next = self.with_quiet(|inner| {
                let now = Instant::now();
                if inner.router.poll_timeout().is_some_and(|t| t <= now) {
                    inner.router.handle_timeout(now);
                }
                inner.router.poll_timeout()
            });
            // At least once a second, so a task that lost its waker still sees the world move on.
            let cap = Instant::now() + std::time::Duration::from_secs(1);
            let at = next.map_or(cap, |n| n.min(cap));
            let timer = async {
                smol::Timer::at(at).await;
            };
            let kicked = async {
                let _ = self.kicked.recv().await;
            };
            smol::future::or(timer, kicked).await;
            if Arc::strong_count(&self) <= 1 {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Answers every request with its own path in the body; accepts sockets whose headers carry `ok`;
    /// `/push` pushes to every open socket.
    #[derive(Default)]
    struct Toy {
        out: VecDeque<RouterOut>,
        sockets: Vec<u64>,
    }

    impl RouterCore for Toy {
        fn http_request(
            &mut self,
            id: u64,
            _m: Method,
            url: &str,
            _h: &[(String, String)],
            _b: &[u8],
            _n: Instant,
        ) {
            if url.ends_with("/push") {
                for ws in &self.sockets {
                    self.out.push_back(RouterOut::WsSend {
                        ws: *ws,
                        text: "pushed".into(),
                    });
                }
            }
            let response = HttpResponse {
                status: 200,
                body: url.as_bytes().to_vec(),
                ..Default::default()
            };
            self.out.push_back(RouterOut::Http { id, response });
        }
        fn ws_open(
            &mut self,
            ws: u64,
            headers: &[(String, String)],
            _n: Instant,
        ) -> Result<(), u16> {
            if headers.iter().any(|(k, _)| k == "ok") {
                self.sockets.push(ws);
                Ok(())
            } else {
                Err(401)
            }
        }
        fn ws_closed(&mut self, ws: u64, _n: Instant) {
            self.sockets.retain(|s| *s != ws);
        }
        fn gateway_reply(&mut self, _r: u64, _p: &str, _n: Instant) {}
        fn handle_timeout(&mut self, _n: Instant) {}
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn poll_event(&mut self) -> Option<RouterOut> {
            self.out.pop_front()
        }
    }

    #[test]
    fn responses_reach_their_waiter_and_pushes_their_socket() {
        let hub = Hub::new(Box::new(Toy::default()));
        assert_eq!(hub.ws_open(&[]).unwrap_err(), 401);
        let (_ws, pushes) = hub.ws_open(&[("ok".into(), String::new())]).expect("open");
        let a = hub.http(Method::Get, "http://x/a", &[], b"");
        let b = hub.http(Method::Post, "http://x/push", &[], b"");
        assert_eq!(b.try_recv().expect("b").body, b"http://x/push");
        assert_eq!(a.try_recv().expect("a").body, b"http://x/a");
        assert_eq!(
            pushes.try_recv().expect("push"),
            WsPush::Text("pushed".into())
        );
    }

    #[test]
    fn closed_sockets_get_nothing() {
        let hub = Hub::new(Box::new(Toy::default()));
        let (ws, pushes) = hub.ws_open(&[("ok".into(), String::new())]).expect("open");
        hub.ws_closed(ws);
        let _ = hub.http(Method::Post, "http://x/push", &[], b"");
        assert!(pushes.try_recv().is_err());
    }
}
