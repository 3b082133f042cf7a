//! A real HTTP receiver on a free 127.0.0.1 port for the escalation tests: it records every
//! request (path, headers, body, the status it answered) and answers as told: scripted replies
//! for the next requests, a reply for a while, then the default (200).
//!
//! It runs on its own Tokio runtime, so that [`Receiver::down`] can close the listener and every
//! open connection at once (the next connection is refused, as from a crashed endpoint), and
//! [`Receiver::up`] can listen on the same port again.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: String,
    /// Wait this long before answering (to make the client time out).
    pub delay: Option<Duration>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            retry_after: None,
            body: String::new(),
            delay: None,
        }
    }

    pub fn retry_after(mut self, value: impl Into<String>) -> Reply {
        self.retry_after = Some(value.into());
        self
    }

    pub fn body(mut self, body: impl Into<String>) -> Reply {
        self.body = body.into();
        self
    }

    pub fn delay(mut self, d: Duration) -> Reply {
        self.delay = Some(d);
        self
    }
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
    pub at: Instant,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

struct Script {
    requests: Vec<Received>,
    next: VecDeque<Reply>,
    until: Option<(Instant, Reply)>,
    default: Reply,
}

type Shared = Arc<Mutex<Script>>;

fn lock(s: &Shared) -> MutexGuard<'_, Script> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The receiver; its server stops when it is dropped.
pub struct Receiver {
    port: u16,
    script: Shared,
    server: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Listening on a free port, answering 200.
    pub fn start() -> Receiver {
        let mut r = Receiver::reserve();
        r.up();
        r
    }

    /// A free port with nothing listening on it yet: connections are refused until [`up`].
    ///
    /// [`up`]: Receiver::up
    pub fn reserve() -> Receiver {
        let probe =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = probe.local_addr().expect("local address").port();
        drop(probe);
        Receiver {
            port,
            script: Arc::new(Mutex::new(Script {
                requests: Vec::new(),
                next: VecDeque::new(),
                until: None,
                default: Reply::status(200).body("ok"),
            })),
            server: None,
        }
    }

    /// Starts listening (again) on the receiver's port.
    pub fn up(&mut self) {
        if self.server.is_some() {
            return;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("receiver runtime");
        let app = Router::new()
            .fallback(handle)
            .with_state(self.script.clone());
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let (tx, rx) = std::sync::mpsc::channel();
        rt.spawn(async move {
            // SO_REUSEADDR: the port may hold TIME_WAIT connections from before `down`.
            let bound = tokio::net::TcpSocket::new_v4().and_then(|s| {
                s.set_reuseaddr(true)?;
                s.bind(addr)?;
                s.listen(1024)
            });
            match bound {
                Ok(listener) => {
                    let _ = tx.send(Ok(()));
                    let _ = axum::serve(listener, app).await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("receiver started")
            .unwrap_or_else(|e| panic!("listening on {addr}: {e}"));
        self.server = Some(rt);
    }

    /// Stops listening and closes every open connection: new connections are refused.
    pub fn down(&mut self) {
        if let Some(rt) = self.server.take() {
            rt.shutdown_background();
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The answer once nothing scripted applies (initially 200 `ok`).
    pub fn set_default(&self, reply: Reply) {
        lock(&self.script).default = reply;
    }

    /// Answers the next requests with these, in order.
    pub fn reply_next(&self, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.script).next.extend(replies);
    }

    /// Answers every request with `reply` for the next `d`.
    pub fn reply_for(&self, d: Duration, reply: Reply) {
        lock(&self.script).until = Some((Instant::now() + d, reply));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.script).requests.clone()
    }

    /// Waits until `done` holds for the requests received (polling), or panics after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let reqs = self.requests();
            if done(&reqs) {
                return reqs;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; received {} requests: {:?}",
                    reqs.len(),
                    reqs.iter()
                        .map(|r| (
                            r.path.clone(),
                            r.status,
                            r.header("webhook-id").map(str::to_string)
                        ))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}

async fn handle(
    State(script): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut s = lock(&script);
        let now = Instant::now();
        let reply = if let Some(r) = s.next.pop_front() {
            r
        } else {
            match &s.until {
                Some((until, r)) if now < *until => r.clone(),
                _ => s.default.clone(),
            }
        };
        s.requests.push(Received {
            path: uri.path().to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            body: body.to_vec(),
            status: reply.status,
            at: now,
        });
        reply
    };
    if let Some(d) = reply.delay {
        tokio::time::sleep(d).await;
    }
    let mut resp = (
        StatusCode::from_u16(reply.status).expect("valid status"),
        reply.body,
    )
        .into_response();
    if let Some(v) = reply.retry_after {
        resp.headers_mut().insert(
            "retry-after",
            HeaderValue::from_str(&v).expect("valid Retry-After"),
        );
    }
    resp
}
