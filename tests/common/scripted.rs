//! What the resilience tests need beyond the shared harness: an upstream that follows a
//! script ([`Scripted`]: a queue of one-shot behaviours, rules by path or header, and a
//! default), records when each request arrived, and a proxy handle that keeps the
//! in-process [`Running`] ([`spawn_proxy`]) so tests can read breaker, partition and
//! health state directly. Config tables are written with [`UpstreamToml`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fusebox::app::Running;
use fusebox::upstream::breaker::BreakerState;
use fusebox::upstream::Endpoint;
use http::{HeaderMap, HeaderName, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::body::{full, TestBody};
use super::upstream::Behaviour;
use super::{eventually, WAIT};

/// Which requests a rule applies to.
#[derive(Clone, Debug)]
pub enum Match {
    /// The path (without query) equals this.
    Path(String),
    /// The request carries this header with exactly this value.
    Header(HeaderName, String),
}

impl Match {
    pub fn path(p: &str) -> Match {
        Match::Path(p.to_owned())
    }

    pub fn header(name: &str, value: &str) -> Match {
        Match::Header(
            HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
            value.to_owned(),
        )
    }

    fn matches(&self, path: &str, headers: &HeaderMap) -> bool {
        match self {
            Match::Path(p) => p == path,
            Match::Header(n, v) => headers.get(n).is_some_and(|h| h.as_bytes() == v.as_bytes()),
        }
    }
}

/// One request as the scripted upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// False when the body stream ended with an error.
    pub body_complete: bool,
    /// When its head arrived.
    pub at: Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

struct ScriptState {
    default: Mutex<Behaviour>,
    queue: Mutex<VecDeque<Behaviour>>,
    rules: Mutex<Vec<(Match, Behaviour)>>,
    seen: Mutex<Vec<Seen>>,
    hits: AtomicUsize,
    /// Requests being handled now, and the most at once.
    in_flight: AtomicUsize,
    peak: AtomicUsize,
}

/// Counts a request in `ScriptState::in_flight` while it is handled.
struct Handling(Arc<ScriptState>);

impl Handling {
    fn new(st: &Arc<ScriptState>) -> Handling {
        let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        st.peak.fetch_max(now, Ordering::SeqCst);
        Handling(st.clone())
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An upstream on 127.0.0.1:0 that answers by script. For each request, in order: the
/// first rule that matches; else the next queued one-shot behaviour; else the default.
/// Supports every [`Behaviour`] but `Stream`; `Echo` answers 200 with the request body.
/// Dropping it stops accepting.
pub struct Scripted {
    pub addr: SocketAddr,
    state: Arc<ScriptState>,
    accept: JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Scripted {
    pub async fn start(default: Behaviour) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind scripted upstream");
        let addr = listener.local_addr().expect("scripted upstream address");
        let state = Arc::new(ScriptState {
            default: Mutex::new(default),
            queue: Mutex::new(VecDeque::new()),
            rules: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            hits: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        });
        let st = state.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(serve(stream, st.clone()));
            }
        });
        Scripted {
            addr,
            state,
            accept,
        }
    }

    /// An upstream answering 200 with `body` to everything.
    pub async fn ok(body: &str) -> Scripted {
        Scripted::start(Behaviour::ok(body.to_owned())).await
    }

    /// Changes the default behaviour.
    pub fn set(&self, b: Behaviour) {
        *self.state.default.lock().unwrap() = b;
    }

    /// Queues one-shot behaviours for the next requests no rule matches.
    pub fn then(&self, bs: impl IntoIterator<Item = Behaviour>) {
        self.state.queue.lock().unwrap().extend(bs);
    }

    /// Answers requests that `m` matches with `b` (replacing an earlier rule for the
    /// same match).
    pub fn rule(&self, m: Match, b: Behaviour) {
        let mut rules = self.state.rules.lock().unwrap();
        rules.retain(|(old, _)| format!("{old:?}") != format!("{m:?}"));
        rules.push((m, b));
    }

    /// Requests whose head arrived, all paths.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// The most requests this upstream handled at once (until its answer was sent).
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak.load(Ordering::SeqCst)
    }

    /// Requests recorded (bodies read), in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Recorded requests to `path`.
    pub fn seen_on(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }

    /// Recorded requests carrying header `name: value`.
    pub fn seen_with(&self, name: &str, value: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.header(name) == Some(value))
            .count()
    }

    /// Waits (bounded) until at least `n` requests arrived.
    pub async fn wait_hits(&self, n: usize) {
        eventually(&format!("{n} hits at {}", self.addr), WAIT, || {
            self.hits() >= n
        })
        .await;
    }
}

async fn serve(stream: tokio::net::TcpStream, st: Arc<ScriptState>) {
    let kill = Arc::new(Notify::new());
    let k = kill.clone();
    let svc = service_fn(move |req| handle(req, st.clone(), k.clone()));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
    }
}

fn choose(st: &ScriptState, path: &str, headers: &HeaderMap) -> Behaviour {
    let rules = st.rules.lock().unwrap();
    if let Some((_, b)) = rules.iter().find(|(m, _)| m.matches(path, headers)) {
        return b.clone();
    }
    drop(rules);
    if let Some(b) = st.queue.lock().unwrap().pop_front() {
        return b;
    }
    st.default.lock().unwrap().clone()
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<ScriptState>,
    kill: Arc<Notify>,
) -> Result<Response<TestBody>, Infallible> {
    let at = Instant::now();
    st.hits.fetch_add(1, Ordering::SeqCst);
    let _handling = Handling::new(&st);
    let (parts, mut body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let behaviour = choose(&st, &path, &parts.headers);
    let mut buf = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    buf.extend_from_slice(&d);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let body = Bytes::from(buf);
    st.seen.lock().unwrap().push(Seen {
        method: parts.method,
        path,
        headers: parts.headers,
        body: body.clone(),
        body_complete: complete,
        at,
    });
    let mut b = behaviour;
    loop {
        match b {
            Behaviour::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                b = *inner;
            }
            Behaviour::Gated(g, inner) => {
                g.wait().await;
                b = *inner;
            }
            Behaviour::Respond {
                status,
                headers,
                body: answer,
            } => {
                let mut r = Response::builder().status(status);
                for (k, v) in headers {
                    r = r.header(k, v);
                }
                return Ok(r.body(full(answer)).expect("valid scripted response"));
            }
            // Here: the request body back, as is.
            Behaviour::Echo => return Ok(Response::new(full(body))),
            Behaviour::Hang => return std::future::pending().await,
            Behaviour::Reset => {
                kill.notify_one();
                return std::future::pending().await;
            }
            Behaviour::Stream(_) => {
                let r = Response::builder().status(500);
                return Ok(r.body(full("Stream is not scripted")).expect("valid"));
            }
        }
    }
}

/// `[upstreams.NAME]` with its tables. Unless the test writes them, retries are off and
/// the breaker needs 1000 failures, as in the shared `upstream_toml`.
#[derive(Clone, Debug)]
pub struct UpstreamToml {
    name: String,
    endpoints: Vec<SocketAddr>,
    extra: String,
    tables: Vec<(String, String)>,
}

impl UpstreamToml {
    pub fn new(name: &str, endpoints: &[SocketAddr]) -> UpstreamToml {
        UpstreamToml {
            name: name.to_owned(),
            endpoints: endpoints.to_vec(),
            extra: String::new(),
            tables: vec![
                ("retry".into(), "max_retries = 0".into()),
                ("circuit_breaker".into(), "failure_threshold = 1000".into()),
            ],
        }
    }

    /// Lines in the `[upstreams.NAME]` table itself.
    pub fn extra(mut self, lines: &str) -> Self {
        self.extra.push_str(lines);
        self.extra.push('\n');
        self
    }

    /// Sets sub-table `[upstreams.NAME.TABLE]` to `lines` (replacing the default one).
    pub fn table(mut self, table: &str, lines: &str) -> Self {
        self.tables.retain(|(t, _)| t != table);
        self.tables.push((table.to_owned(), lines.to_owned()));
        self
    }

    pub fn breaker(self, lines: &str) -> Self {
        self.table("circuit_breaker", lines)
    }

    pub fn retry(self, lines: &str) -> Self {
        self.table("retry", lines)
    }

    pub fn build(&self) -> String {
        let eps: Vec<String> = self.endpoints.iter().map(|a| format!("\"{a}\"")).collect();
        let mut s = format!(
            "[upstreams.{}]\nendpoints = [{}]\n{}\n",
            self.name,
            eps.join(", "),
            self.extra
        );
        for (t, lines) in &self.tables {
            let _ = write!(s, "[upstreams.{}.{t}]\n{lines}\n\n", self.name);
        }
        s
    }
}

/// A proxy started in-process, keeping its [`Running`] for state checks.
pub struct Proxy {
    pub addr: SocketAddr,
    pub running: Running,
}

/// Starts fusebox on `base_config("")` + `tables` (panics with the located error).
pub async fn spawn_proxy(tables: &str) -> Proxy {
    let toml = format!("{}{tables}", super::base_config(""));
    let config = fusebox::config::parse(&toml, "test.toml", None)
        .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n--- config ---\n{toml}"));
    let version = fusebox::config::content_hash(&toml);
    let running = fusebox::app::start(config, version)
        .await
        .unwrap_or_else(|e| panic!("fusebox did not start: {e:#}"));
    Proxy {
        addr: running.data_addr,
        running,
    }
}

impl Proxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The admin listener (`/metrics`, `/circuit_breakers` ...).
    pub fn admin(&self) -> SocketAddr {
        self.running.admin_addr
    }

    /// The endpoint of upstream `up` at `addr`, as the current snapshot holds it.
    pub fn endpoint(&self, up: &str, addr: SocketAddr) -> Arc<Endpoint> {
        let snap = self.running.snapshot();
        let upstream = snap
            .upstreams
            .get(up)
            .unwrap_or_else(|| panic!("no upstream {up}"));
        let eps = upstream.endpoints();
        eps.iter()
            .find(|e| e.addr == addr)
            .cloned()
            .unwrap_or_else(|| panic!("upstream {up} has no endpoint {addr}"))
    }

    /// The state of the endpoint's own (unpartitioned) breaker now.
    pub fn breaker_state(&self, up: &str, addr: SocketAddr) -> BreakerState {
        self.endpoint(up, addr).own_breakers().state(Instant::now())
    }

    /// Waits (bounded) until the endpoint's own breaker reads `want`.
    pub async fn wait_breaker(&self, up: &str, addr: SocketAddr, want: BreakerState) {
        let what = format!("breaker of {up}/{addr} to be {want:?}");
        eventually(&what, WAIT, || self.breaker_state(up, addr) == want).await;
    }

    pub async fn shutdown(self) -> bool {
        self.running.shutdown().await
    }
}

/// The `Retry-After` of an answer in whole seconds; panics unless present and numeric.
pub fn retry_after_secs(r: &super::Reply) -> u64 {
    let v = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After on {} {:?}", r.status, r.headers));
    v.parse()
        .unwrap_or_else(|_| panic!("Retry-After {v:?} is not whole seconds"))
}

/// Sends `method url` with extra headers and a body; panics on a client error.
pub async fn call(
    c: &super::TestClient,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> super::Reply {
    let mut b = super::request(method, url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    super::send(c, b.body(full(body.into())).expect("request")).await
}

/// An address that refuses connections for as long as this value lives: a socket bound
/// to 127.0.0.1:0 that never listens, so the kernel answers each SYN with a reset. Unlike
/// a released port (`closed_port`), no other test running in parallel can bind it and
/// start answering in the meantime.
pub struct DeadPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

pub fn dead_port() -> DeadPort {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket =
        Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("a TCP socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    socket.bind(&any.into()).expect("bind a dead port");
    let addr = socket
        .local_addr()
        .expect("bound address")
        .as_socket()
        .expect("an IP address");
    DeadPort {
        addr,
        _socket: socket,
    }
}

/// `n` milliseconds.
pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
