//! A scriptable upstream: a real hyper server on 127.0.0.1:0 that records every request
//! (method, URI, headers, body bytes), counts hits and connections, and behaves as the
//! test says, switchable at runtime: answer, echo, delay, hang, reset the connection,
//! or stream a body slowly or behind a gate.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::body::{channel_body, full, pattern, TestBody};
use super::{eventually, WAIT};

/// A gate that requests wait on until the test opens it (once open, it stays open).
#[derive(Clone, Debug)]
pub struct Gate(Arc<watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(false);
        Gate(Arc::new(tx))
    }

    pub fn open(&self) {
        self.0.send_replace(true);
    }

    pub async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
}

/// A response streamed in `chunks` chunks of `chunk_size` bytes of the [`pattern`],
/// `interval` apart; with `gate_after_first`, the rest waits for the gate after the
/// first chunk was handed to the connection.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    pub chunk_size: usize,
    pub chunks: usize,
    pub interval: Duration,
    pub gate_after_first: Option<Gate>,
}

impl StreamSpec {
    pub fn total(&self) -> usize {
        self.chunk_size * self.chunks
    }
}

/// What the upstream does with the next request (after reading its whole body).
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Answer with this status, headers and body.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// Answer 200 with the request as JSON: method, uri (the request target as sent),
    /// path (path and query), version, headers, body, body_len.
    Echo,
    /// Wait, then behave as the inner behaviour.
    Delay(Duration, Box<Behaviour>),
    /// Wait until the gate opens, then behave as the inner behaviour.
    Gated(Gate, Box<Behaviour>),
    /// Never answer (the request stays in flight until the connection closes).
    Hang,
    /// Close the connection without answering.
    Reset,
    /// Answer 200 with a streamed body.
    Stream(StreamSpec),
}

impl Behaviour {
    pub fn respond(status: u16, body: impl Into<Bytes>) -> Self {
        Behaviour::Respond {
            status,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    pub fn ok(body: impl Into<Bytes>) -> Self {
        Self::respond(200, body)
    }

    pub fn with_header(self, name: &str, value: &str) -> Self {
        match self {
            Behaviour::Respond {
                status,
                mut headers,
                body,
            } => {
                headers.push((name.to_owned(), value.to_owned()));
                Behaviour::Respond {
                    status,
                    headers,
                    body,
                }
            }
            other => panic!("with_header applies to Respond only, not {other:?}"),
        }
    }

    pub fn gated(gate: &Gate, then: Behaviour) -> Self {
        Behaviour::Gated(gate.clone(), Box::new(then))
    }

    pub fn delayed(d: Duration, then: Behaviour) -> Self {
        Behaviour::Delay(d, Box::new(then))
    }
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// False when the body stream ended with an error (cut by the sender).
    pub body_complete: bool,
    /// The upstream address the request came in on (see [`TestUpstream::start_on`]).
    pub local: SocketAddr,
}

impl Recorded {
    /// The single value of header `name` as text; panics when absent.
    pub fn header(&self, name: &str) -> &str {
        self.opt_header(name)
            .unwrap_or_else(|| panic!("upstream got no {name} header: {:?}", self.headers))
    }

    pub fn opt_header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("header is text"))
    }

    /// Every value of header `name` joined with ", " (how a list header reads).
    pub fn joined(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("header is text"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Path and query as the upstream saw them.
    pub fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("", |p| p.as_str())
    }
}

struct State {
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Recorded>>,
    hits: AtomicUsize,
    connections: AtomicUsize,
    closed: AtomicUsize,
    body_bytes: AtomicU64,
}

/// A running test upstream. Dropping it stops accepting.
pub struct TestUpstream {
    /// The first (usually the only) address it listens on.
    pub addr: SocketAddr,
    /// Every address it listens on, all with the same port.
    pub addrs: Vec<SocketAddr>,
    state: Arc<State>,
    accept: Vec<JoinHandle<()>>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        for a in &self.accept {
            a.abort();
        }
    }
}

impl TestUpstream {
    pub async fn start(behaviour: Behaviour) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test upstream");
        Self::serve(vec![listener], behaviour)
    }

    /// One upstream listening on every address in `ips` (loopback only) on one port,
    /// as a DNS name that answers several addresses needs. Bounded retries when the
    /// port the first address got is taken on another.
    pub async fn start_on(ips: &[std::net::IpAddr], behaviour: Behaviour) -> TestUpstream {
        assert!(
            !ips.is_empty() && ips.iter().all(|ip| ip.is_loopback()),
            "test upstreams listen on loopback only: {ips:?}"
        );
        for _ in 0..50 {
            let first = TcpListener::bind(SocketAddr::new(ips[0], 0))
                .await
                .expect("bind test upstream");
            let port = first.local_addr().expect("upstream address").port();
            let mut listeners = vec![first];
            for ip in &ips[1..] {
                match TcpListener::bind(SocketAddr::new(*ip, port)).await {
                    Ok(l) => listeners.push(l),
                    Err(_) => break,
                }
            }
            if listeners.len() == ips.len() {
                return Self::serve(listeners, behaviour);
            }
        }
        panic!("no port free on all of {ips:?} in 50 tries");
    }

    fn serve(listeners: Vec<TcpListener>, behaviour: Behaviour) -> TestUpstream {
        let addrs: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.local_addr().expect("upstream address"))
            .collect();
        let state = Arc::new(State {
            behaviour: Mutex::new(behaviour),
            requests: Mutex::new(Vec::new()),
            hits: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            body_bytes: AtomicU64::new(0),
        });
        let accept = listeners
            .into_iter()
            .map(|listener| {
                let st = state.clone();
                tokio::spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        st.connections.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(serve_connection(stream, st.clone()));
                    }
                })
            })
            .collect();
        TestUpstream {
            addr: addrs[0],
            addrs,
            state,
            accept,
        }
    }

    /// Changes what later requests get (requests already waiting keep theirs).
    pub fn set(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    /// Requests that reached the upstream (counted when their headers arrive).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// TCP connections that have ended (closed by either side).
    pub fn closed_connections(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// Request body bytes received so far, over all requests (counted per frame).
    pub fn body_bytes_seen(&self) -> u64 {
        self.state.body_bytes.load(Ordering::SeqCst)
    }

    /// Requests whose body has been read to its end (or to its error).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// The last recorded request; panics when there is none.
    pub fn last(&self) -> Recorded {
        self.requests()
            .pop()
            .expect("the upstream recorded no request")
    }

    /// Waits (bounded) until at least `n` requests arrived.
    pub async fn wait_hits(&self, n: usize) {
        eventually(&format!("{n} hits at the upstream"), WAIT, || {
            self.hits() >= n
        })
        .await;
    }

    /// Waits (bounded) until at least `n` requests were recorded (bodies read).
    pub async fn wait_requests(&self, n: usize) {
        eventually(&format!("{n} recorded requests"), WAIT, || {
            self.requests().len() >= n
        })
        .await;
    }
}

async fn serve_connection(stream: tokio::net::TcpStream, st: Arc<State>) {
    // A `Reset` request wakes this to drop the connection without answering.
    let kill = Arc::new(Notify::new());
    let k = kill.clone();
    let counters = st.clone();
    let local = stream.local_addr().expect("local address");
    let svc = service_fn(move |req| handle(req, st.clone(), k.clone(), local));
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
    }
    counters.closed.fetch_add(1, Ordering::SeqCst);
}

async fn handle(
    req: Request<Incoming>,
    st: Arc<State>,
    kill: Arc<Notify>,
    local: SocketAddr,
) -> Result<Response<TestBody>, Infallible> {
    st.hits.fetch_add(1, Ordering::SeqCst);
    let behaviour = st.behaviour.lock().unwrap().clone();
    let (parts, mut body) = req.into_parts();
    let mut buf = Vec::new();
    let mut complete = true;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(d) = f.into_data() {
                    st.body_bytes.fetch_add(d.len() as u64, Ordering::SeqCst);
                    buf.extend_from_slice(&d);
                }
            }
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let rec = Recorded {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body: Bytes::from(buf),
        body_complete: complete,
        local,
    };
    st.requests.lock().unwrap().push(rec.clone());

    let mut b = behaviour;
    let terminal = loop {
        match b {
            Behaviour::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                b = *inner;
            }
            Behaviour::Gated(g, inner) => {
                g.wait().await;
                b = *inner;
            }
            other => break other,
        }
    };
    let resp = match terminal {
        Behaviour::Respond {
            status,
            headers,
            body,
        } => {
            let mut r = Response::builder().status(status);
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.body(full(body)).expect("valid test response")
        }
        Behaviour::Echo => {
            let headers: serde_json::Map<String, serde_json::Value> = rec
                .headers
                .keys()
                .map(|k| {
                    let vals: Vec<&str> = rec
                        .headers
                        .get_all(k)
                        .iter()
                        .map(|v| v.to_str().unwrap_or("<binary>"))
                        .collect();
                    (k.as_str().to_owned(), vals.join(", ").into())
                })
                .collect();
            let json = serde_json::json!({
                "method": rec.method.as_str(),
                "uri": rec.uri.to_string(),
                "path": rec.path_and_query(),
                "version": format!("{:?}", rec.version),
                "headers": headers,
                "body": String::from_utf8_lossy(&rec.body),
                "body_len": rec.body.len(),
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/json")
                .body(full(json.to_string()))
                .expect("valid echo response")
        }
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Reset => {
            kill.notify_one();
            std::future::pending().await
        }
        Behaviour::Stream(spec) => {
            let (tx, body) = channel_body(1);
            tokio::spawn(async move {
                for i in 0..spec.chunks {
                    if i > 0 {
                        if !spec.interval.is_zero() {
                            tokio::time::sleep(spec.interval).await;
                        }
                        if i == 1 {
                            if let Some(g) = &spec.gate_after_first {
                                g.wait().await;
                            }
                        }
                    }
                    let chunk = pattern(i * spec.chunk_size, spec.chunk_size);
                    if tx.send(Bytes::from(chunk)).await.is_err() {
                        return; // the proxy went away
                    }
                }
            });
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/octet-stream")
                .body(body)
                .expect("valid stream response")
        }
        Behaviour::Delay(..) | Behaviour::Gated(..) => unreachable!("unwrapped above"),
    };
    Ok(resp)
}

/// An address nothing listens on: bound, then released (connecting is refused).
pub fn closed_port() -> SocketAddr {
    // Bound but never listening, and kept for the life of the test process: connects
    // are refused, and no parallel test can take the port over.
    let port = super::scripted::dead_port();
    let addr = port.addr;
    std::mem::forget(port);
    addr
}
