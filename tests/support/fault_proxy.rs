//! A scripted HTTP/1.1 fault proxy on 127.0.0.1 in front of an emulator (moto), for the network
//! fault tests (`tests/faults_network.rs`): loopback only, repeatable (a seeded RNG decides).
//!
//! The AWS SDK sends HTTP/1.1 requests with `Content-Length` bodies to an `http://` endpoint
//! and keeps connections alive; the proxy reads each request of a connection in turn, decides
//! by its `X-Amz-Target` header (`Kinesis_20131202.GetRecords`, `DynamoDB_20120810.PutItem`, ...,
//! or `S3.GetObject`, `S3.ListObjectsV2` for S3's REST calls)
//! what to do with it ([`Plan`]), and either forwards it to the emulator (a fresh upstream
//! connection per request, `Connection: close`, the whole answer relayed with a
//! `Content-Length`) or injects a fault:
//!
//! - [`Fault::Throttle`]: HTTP 400 with the service's throttling error
//!   (`ProvisionedThroughputExceededException` on Kinesis GetRecords, `LimitExceededException`
//!   on other Kinesis calls, DynamoDB's `...#ProvisionedThroughputExceededException`);
//! - [`Fault::ServerError`]: HTTP 500 (`InternalFailure`, DynamoDB's `...#InternalServerError`);
//! - [`Fault::Reset`]: the request is read, then the connection is dropped with `SO_LINGER` 0,
//!   so the client sees ECONNRESET;
//! - [`Fault::Stall`]: the request is forwarded but its answer held for [`Plan::stall_for`]
//!   (longer than the client's read timeout) before it is relayed; how long each client waited
//!   before giving up is recorded ([`FaultProxy::stalls`]);
//!
//! and, connection-level, an outage ([`FaultProxy::outage_start`]): the listener is closed (new
//! connections are refused) and every open connection reset, until [`FaultProxy::outage_end`]
//! binds the same port again.
//!
//! Every fault injected is counted by kind and target ([`FaultProxy::injected`]), so a test can
//! assert that the faults it scripted really happened. The proxy runs on its own runtime, so a
//! test's blocking calls never hold it up.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

/// The longest request or response head the proxy accepts.
const MAX_HEAD: usize = 64 << 10;
/// How long a forwarded request may take upstream.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// What the proxy does to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    Throttle,
    ServerError,
    Reset,
    Stall,
}

impl Fault {
    pub const ALL: [Fault; 4] = [
        Fault::Throttle,
        Fault::ServerError,
        Fault::Reset,
        Fault::Stall,
    ];
}

/// One line of a [`Plan`]: requests whose target matches `target` get `fault` with
/// `probability`.
#[derive(Debug, Clone)]
struct Rule {
    target: String,
    fault: Fault,
    probability: f64,
}

impl Rule {
    /// `*` matches everything, `Prefix*` a prefix, anything else exactly.
    fn matches(&self, target: &str) -> bool {
        match self.target.strip_suffix('*') {
            Some(prefix) => target.starts_with(prefix),
            None => target == self.target,
        }
    }
}

/// What to do with requests, by target. Rules are tried in order; for each matching rule one
/// number is drawn from the proxy's seeded RNG, and the first rule whose draw is under its
/// probability decides. No rule: the request passes.
#[derive(Debug, Clone)]
pub struct Plan {
    rules: Vec<Rule>,
    /// How long a [`Fault::Stall`] holds the answer.
    pub stall_for: Duration,
}

impl Default for Plan {
    fn default() -> Plan {
        Plan::pass()
    }
}

impl Plan {
    /// Everything passes.
    pub fn pass() -> Plan {
        Plan {
            rules: Vec::new(),
            stall_for: Duration::from_secs(15),
        }
    }

    /// Adds a rule: `fault` with `probability` (0..=1) on requests whose `X-Amz-Target` is
    /// `target` (`Kinesis_20131202.GetRecords`), starts with it (`DynamoDB_20120810.*`) or
    /// anything (`*`).
    pub fn with(mut self, target: &str, fault: Fault, probability: f64) -> Plan {
        assert!(
            (0.0..=1.0).contains(&probability),
            "probability {probability} is not in 0..=1"
        );
        self.rules.push(Rule {
            target: target.to_string(),
            fault,
            probability,
        });
        self
    }

    pub fn stall_for(mut self, d: Duration) -> Plan {
        self.stall_for = d;
        self
    }
}

/// One stalled request: how long the answer was held, and whether the client gave up (closed
/// the connection) before the stall ended.
#[derive(Debug, Clone)]
pub struct Stall {
    pub target: String,
    pub held: Duration,
    pub client_gave_up: bool,
}

/// SplitMix64: small, seeded, the same sequence on every run.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Inner {
    plan: Plan,
    rng: Rng,
    /// (fault, target) -> how many times injected.
    injected: BTreeMap<(Fault, String), u64>,
    /// target -> requests forwarded untouched.
    passed: BTreeMap<String, u64>,
    stalls: Vec<Stall>,
    outages: u64,
    /// Connections reset because an outage began.
    cut_by_outage: u64,
    /// Connections accepted.
    connections: u64,
}

impl Inner {
    fn decide(&mut self, target: &str) -> (Option<Fault>, Duration) {
        let stall_for = self.plan.stall_for;
        for i in 0..self.plan.rules.len() {
            let rule = &self.plan.rules[i];
            if !rule.matches(target) {
                continue;
            }
            let (fault, p) = (rule.fault, rule.probability);
            if self.rng.next_f64() < p {
                *self
                    .injected
                    .entry((fault, target.to_string()))
                    .or_insert(0) += 1;
                return (Some(fault), stall_for);
            }
        }
        *self.passed.entry(target.to_string()).or_insert(0) += 1;
        (None, stall_for)
    }
}

struct Shared {
    upstream: SocketAddr,
    inner: Mutex<Inner>,
    /// `true` while an outage lasts.
    outage: watch::Sender<bool>,
    /// Whether the listener is bound right now.
    listening: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The proxy: its own runtime, its port, its plan and counters. Stops on drop.
pub struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port in front of `127.0.0.1:upstream_port`, passing
    /// everything until a plan is set; `seed` seeds the RNG that decides faults.
    pub fn start(upstream_port: u16, seed: u64) -> FaultProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("fault proxy runtime");
        let (outage, _) = watch::channel(false);
        let (listening, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            upstream: SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port)),
            inner: Mutex::new(Inner {
                plan: Plan::pass(),
                rng: Rng(seed),
                injected: BTreeMap::new(),
                passed: BTreeMap::new(),
                stalls: Vec::new(),
                outages: 0,
                cut_by_outage: 0,
                connections: 0,
            }),
            outage,
            listening,
        });
        let listener = {
            let std = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .expect("bind the fault proxy on 127.0.0.1");
            std.set_nonblocking(true).expect("non-blocking listener");
            let _inside = runtime.enter();
            TcpListener::from_std(std).expect("the listener on the proxy's runtime")
        };
        let port = listener.local_addr().expect("proxy address").port();
        runtime.spawn(accept_loop(shared.clone(), listener, port));
        let proxy = FaultProxy {
            port,
            shared,
            runtime: Some(runtime),
        };
        proxy.wait_listening(true);
        proxy
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, to give a client as its endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the plan (takes effect for the next request).
    pub fn set_plan(&self, plan: Plan) {
        self.shared.lock().plan = plan;
    }

    /// Everything passes again.
    pub fn clear(&self) {
        self.set_plan(Plan::pass());
    }

    /// How many `fault`s were injected, over every target.
    pub fn injected(&self, fault: Fault) -> u64 {
        self.shared
            .lock()
            .injected
            .iter()
            .filter(|((f, _), _)| *f == fault)
            .map(|(_, n)| n)
            .sum()
    }

    /// How many `fault`s were injected on requests to `target` (exactly).
    pub fn injected_on(&self, fault: Fault, target: &str) -> u64 {
        self.shared
            .lock()
            .injected
            .get(&(fault, target.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Every (fault, target) count, for messages.
    pub fn summary(&self) -> String {
        let inner = self.shared.lock();
        format!(
            "injected {:?}; passed {:?}; outages {}, connections cut by them {}; connections {}",
            inner.injected, inner.passed, inner.outages, inner.cut_by_outage, inner.connections
        )
    }

    /// Requests to `target` forwarded untouched.
    pub fn passed(&self, target: &str) -> u64 {
        self.shared.lock().passed.get(target).copied().unwrap_or(0)
    }

    /// Every stalled request that has ended (the client gave up, or the answer was relayed).
    pub fn stalls(&self) -> Vec<Stall> {
        self.shared.lock().stalls.clone()
    }

    pub fn outages(&self) -> u64 {
        self.shared.lock().outages
    }

    /// Open connections reset because an outage began.
    pub fn cut_by_outage(&self) -> u64 {
        self.shared.lock().cut_by_outage
    }

    /// Starts an outage: once this returns the port refuses connections and every open
    /// connection has been reset.
    pub fn outage_start(&self) {
        self.shared.lock().outages += 1;
        self.shared.outage.send_replace(true);
        self.wait_listening(false);
        // Connection tasks see the outage on their next poll; give them a moment.
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Ends an outage: once this returns the same port accepts connections again.
    pub fn outage_end(&self) {
        self.shared.outage.send_replace(false);
        self.wait_listening(true);
    }

    fn wait_listening(&self, want: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while *self.shared.listening.borrow() != want {
            assert!(
                Instant::now() < deadline,
                "fault proxy on port {}: listening never became {want}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// A listener on 127.0.0.1:`port` (0: any free port), with SO_REUSEADDR so that the same port
/// can be bound again right after an outage.
async fn bind(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))?;
    socket.listen(1024)
}

async fn accept_loop(shared: Arc<Shared>, first: TcpListener, port: u16) {
    let mut outage = shared.outage.subscribe();
    let mut listener = Some(first);
    loop {
        let l = match listener.take() {
            Some(l) => l,
            None => {
                // Rebind after an outage; another process could hold the port for a moment.
                let mut attempt = 0;
                loop {
                    match bind(port).await {
                        Ok(l) => break l,
                        Err(e) => {
                            attempt += 1;
                            assert!(
                                attempt < 200,
                                "fault proxy cannot bind 127.0.0.1:{port} again: {e}"
                            );
                            tokio::time::sleep(Duration::from_millis(25)).await;
                        }
                    }
                }
            }
        };
        shared.listening.send_replace(true);
        loop {
            tokio::select! {
                changed = outage.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if *outage.borrow_and_update() {
                        break;
                    }
                }
                accepted = l.accept() => {
                    if let Ok((conn, _)) = accepted {
                        let _ = conn.set_nodelay(true);
                        shared.lock().connections += 1;
                        tokio::spawn(connection(shared.clone(), conn));
                    }
                }
            }
        }
        drop(l);
        shared.listening.send_replace(false);
        // Wait for the outage to end.
        while *outage.borrow_and_update() {
            if outage.changed().await.is_err() {
                return;
            }
        }
    }
}

/// How a connection ends.
enum End {
    /// Closed normally (the client closed, or asked for `Connection: close`).
    Close,
    /// Dropped with SO_LINGER 0: the client sees ECONNRESET.
    Reset,
}

async fn connection(shared: Arc<Shared>, mut conn: TcpStream) {
    let mut outage = shared.outage.subscribe();
    if *outage.borrow_and_update() {
        let _ = conn.set_zero_linger();
        return;
    }
    let end = tokio::select! {
        end = serve(&shared, &mut conn) => end,
        _ = outage.wait_for(|down| *down) => {
            shared.lock().cut_by_outage += 1;
            End::Reset
        }
    };
    if let End::Reset = end {
        let _ = conn.set_zero_linger();
    }
    drop(conn);
}

/// One parsed HTTP/1.1 message head and body.
struct Message {
    /// The start line (request line or status line), without CRLF.
    start: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Message {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Serves the requests of one client connection in turn.
async fn serve(shared: &Shared, conn: &mut TcpStream) -> End {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let req = match read_request(conn, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return End::Close,
        };
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let target = target_of(&req);
        let (fault, stall_for) = shared.lock().decide(&target);
        let response = match fault {
            None => forward(shared.upstream, &req).await,
            Some(Fault::Throttle) if is_s3(&target) => s3_error(503, "SlowDown"),
            Some(Fault::ServerError) if is_s3(&target) => s3_error(500, "InternalError"),
            Some(Fault::Throttle) => error_response(&target, 400, throttle_type(&target)),
            Some(Fault::ServerError) => error_response(&target, 500, server_error_type(&target)),
            Some(Fault::Reset) => return End::Reset,
            Some(Fault::Stall) => {
                let response = forward(shared.upstream, &req).await;
                let began = Instant::now();
                let gave_up = tokio::select! {
                    _ = tokio::time::sleep(stall_for) => false,
                    _ = client_closed(conn) => true,
                };
                shared.lock().stalls.push(Stall {
                    target: target.clone(),
                    held: began.elapsed(),
                    client_gave_up: gave_up,
                });
                if gave_up {
                    return End::Close;
                }
                response
            }
        };
        if write_response(conn, &response, close).await.is_err() || close {
            return End::Close;
        }
    }
}

/// Resolves when the client closes its side (or the connection fails).
async fn client_closed(conn: &mut TcpStream) {
    let mut byte = [0u8; 1];
    loop {
        match conn.read(&mut byte).await {
            Ok(0) | Err(_) => return,
            // A client sending while its request is unanswered: ignore (the SDK never does).
            Ok(_) => {}
        }
    }
}

/// Reads one request (head and `Content-Length` or chunked body); `None` at a clean EOF between
/// requests. `buf` keeps bytes read past the request for the next one.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Message>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let mut chunk = [0u8; 8192];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let (start, headers) = parse_head(&buf[..head_end])?;
    buf.drain(..head_end + 4);
    let mut msg = Message {
        start,
        headers,
        body: Vec::new(),
    };
    if msg
        .header("expect")
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    let chunked = msg
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let line_end = fill_until(conn, buf, b"\r\n").await?;
            let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let end = fill_until(conn, buf, b"\r\n").await?;
                    buf.drain(..end + 2);
                    if end == 0 {
                        break;
                    }
                }
                break;
            }
            fill_to(conn, buf, size + 2).await?;
            msg.body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
        }
        msg.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("transfer-encoding"));
        msg.headers
            .push(("Content-Length".into(), msg.body.len().to_string()));
    } else {
        let len: usize = msg
            .header("content-length")
            .map(|v| v.trim().parse())
            .transpose()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?
            .unwrap_or(0);
        fill_to(conn, buf, len).await?;
        msg.body = buf.drain(..len).collect();
    }
    Ok(Some(msg))
}

/// Reads until `buf` holds `needle`; returns its index.
async fn fill_until(conn: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> io::Result<usize> {
    loop {
        if let Some(i) = find(buf, needle) {
            return Ok(i);
        }
        read_more(conn, buf).await?;
    }
}

/// Reads until `buf` holds at least `n` bytes.
async fn fill_to(conn: &mut TcpStream, buf: &mut Vec<u8>, n: usize) -> io::Result<()> {
    while buf.len() < n {
        read_more(conn, buf).await?;
    }
    Ok(())
}

async fn read_more(conn: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; 65536];
    let n = conn.read(&mut chunk).await?;
    if n == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_head(head: &[u8]) -> io::Result<(String, Vec<(String, String)>)> {
    let text = std::str::from_utf8(head)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let start = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    Ok((start, headers))
}

/// Headers that belong to one hop, not to the message.
fn hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Sends `req` to the emulator on a fresh connection and reads its whole answer; a 502 when the
/// emulator cannot be reached or answers garbage.
async fn forward(upstream: SocketAddr, req: &Message) -> Message {
    match tokio::time::timeout(UPSTREAM_TIMEOUT, forward_once(upstream, req)).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => plain(502, &format!("fault proxy: upstream {upstream}: {e}")),
        Err(_) => plain(504, &format!("fault proxy: upstream {upstream} timed out")),
    }
}

async fn forward_once(upstream: SocketAddr, req: &Message) -> io::Result<Message> {
    let mut up = TcpStream::connect(upstream).await?;
    let _ = up.set_nodelay(true);
    let mut out = Vec::with_capacity(req.body.len() + 1024);
    out.extend_from_slice(req.start.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in &req.headers {
        if hop_by_hop(k) || k.eq_ignore_ascii_case("expect") {
            continue;
        }
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            req.body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&req.body);
    up.write_all(&out).await?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw).await?;
    parse_response(&raw)
}

/// A whole response read to EOF: head, then a `Content-Length`, chunked or EOF-delimited body.
fn parse_response(raw: &[u8]) -> io::Result<Message> {
    let head_end = find(raw, b"\r\n\r\n")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no response head"))?;
    let (start, headers) = parse_head(&raw[..head_end])?;
    let mut rest = &raw[head_end + 4..];
    let mut msg = Message {
        start,
        headers,
        body: Vec::new(),
    };
    if msg
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        loop {
            let line_end = find(rest, b"\r\n")
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "chunk size"))?;
            let size_text = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            if rest.len() < size {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            msg.body.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
    } else if let Some(len) = msg.header("content-length") {
        let len: usize = len
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
        if rest.len() < len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        msg.body = rest[..len].to_vec();
    } else {
        msg.body = rest.to_vec();
    }
    Ok(msg)
}

/// Writes `resp` to the client as HTTP/1.1 with a `Content-Length`.
async fn write_response(conn: &mut TcpStream, resp: &Message, close: bool) -> io::Result<()> {
    // The emulator may answer HTTP/1.0 (the serial moto does); the client gets HTTP/1.1.
    let status = match resp.start.split_once(' ') {
        Some((_, rest)) => format!("HTTP/1.1 {rest}"),
        None => "HTTP/1.1 502 Bad Gateway".to_string(),
    };
    let mut out = Vec::with_capacity(resp.body.len() + 512);
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (k, v) in &resp.headers {
        if !hop_by_hop(k) {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
    }
    let connection = if close { "close" } else { "keep-alive" };
    out.extend_from_slice(
        format!(
            "Content-Length: {}\r\nConnection: {connection}\r\n\r\n",
            resp.body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&resp.body);
    conn.write_all(&out).await?;
    conn.flush().await
}

fn is_dynamodb(target: &str) -> bool {
    target.starts_with("DynamoDB_")
}

/// The throttling error of the service `target` belongs to.
fn throttle_type(target: &str) -> &'static str {
    if is_dynamodb(target) {
        "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException"
    } else if target.ends_with(".GetRecords") {
        "ProvisionedThroughputExceededException"
    } else {
        "LimitExceededException"
    }
}

fn server_error_type(target: &str) -> &'static str {
    if is_dynamodb(target) {
        "com.amazonaws.dynamodb.v20120810#InternalServerError"
    } else {
        "InternalFailure"
    }
}

/// What a request calls: its `X-Amz-Target` (the JSON protocols) or, for S3's REST protocol,
/// `S3.<operation>` from the SDK's `x-id` query parameter (`S3.GetObject`), `S3.ListObjectsV2`
/// for a `list-type=2` listing, else `S3.<method>`.
fn target_of(req: &Message) -> String {
    if let Some(t) = req.header("x-amz-target") {
        return t.to_string();
    }
    let mut parts = req.start.split(' ');
    let method = parts.next().unwrap_or("");
    let uri = parts.next().unwrap_or("");
    let query = uri.split_once('?').map_or("", |(_, q)| q);
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    if let Some(op) = param("x-id") {
        format!("S3.{op}")
    } else if param("list-type") == Some("2") {
        "S3.ListObjectsV2".to_string()
    } else {
        format!("S3.{method}")
    }
}

fn is_s3(target: &str) -> bool {
    target.starts_with("S3.")
}

/// An S3 REST error answer (XML), as S3 sends it: `SlowDown` with 503, `InternalError` with 500.
fn s3_error(status: u16, code: &str) -> Message {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected by the fault proxy</Message><RequestId>FAULTPROXY</RequestId></Error>"
    )
    .into_bytes();
    let reason = if status == 503 {
        "Slow Down"
    } else {
        "Internal Server Error"
    };
    Message {
        start: format!("HTTP/1.1 {status} {reason}"),
        headers: vec![
            ("Content-Type".into(), "application/xml".into()),
            ("Content-Length".into(), body.len().to_string()),
        ],
        body,
    }
}

/// An AWS JSON-protocol error answer, as the service sends it.
fn error_response(target: &str, status: u16, error_type: &str) -> Message {
    let short = error_type.rsplit('#').next().unwrap_or(error_type);
    let message = match short {
        "ProvisionedThroughputExceededException" if is_dynamodb(target) => {
            "The level of configured provisioned throughput for the table was exceeded. \
             (injected by the fault proxy)"
        }
        "ProvisionedThroughputExceededException" => {
            "Rate exceeded for shard (injected by the fault proxy)"
        }
        "LimitExceededException" => "Rate exceeded (injected by the fault proxy)",
        _ => "Internal service error (injected by the fault proxy)",
    };
    let content_type = if is_dynamodb(target) {
        "application/x-amz-json-1.0"
    } else {
        "application/x-amz-json-1.1"
    };
    let body = serde_json::json!({"__type": error_type, "message": message}).to_string();
    let reason = if status == 400 {
        "Bad Request"
    } else {
        "Internal Server Error"
    };
    Message {
        start: format!("HTTP/1.1 {status} {reason}"),
        headers: vec![
            ("Content-Type".into(), content_type.into()),
            ("x-amzn-ErrorType".into(), short.into()),
            ("x-amzn-RequestId".into(), "fault-proxy-00000000".into()),
        ],
        body: body.into_bytes(),
    }
}

fn plain(status: u16, text: &str) -> Message {
    Message {
        start: format!("HTTP/1.1 {status} Fault Proxy"),
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: text.as_bytes().to_vec(),
    }
}
