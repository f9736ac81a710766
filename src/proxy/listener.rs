//! The data listener: accepts TCP connections (at most `max_connections` at once; past
//! that, new connections wait in the kernel's backlog), serves HTTP/1.1 and HTTP/2 prior
//! knowledge on the same port (hyper-util's auto builder; HTTP/1 directly when the
//! peeked first bytes of a TCP connection already show it), and applies the connection
//! limits of the contract: header read timeout (slowloris guard), header size (431 from
//! hyper), keep-alive idle timeout. On shutdown every connection is told to finish its
//! in-flight requests and close.
//!
//! The header read timeout is enforced here rather than by hyper: hyper's timer also
//! runs while a keep-alive connection waits for its next request, so it would close
//! idle keep-alives after `header_read_timeout` instead of `idle_timeout`, and a caller
//! sending just then would see its request fail. Here the clock starts with the first
//! byte of a request head ([`ConnIo`] notes it) and stops when hyper hands the parsed
//! request to the proxy.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{watch, Semaphore};

use super::Proxy;
use crate::config::ListenerConfig;
use crate::tls::ServerTls;

/// Per-connection state shared with the requests it carries.
#[derive(Debug)]
pub struct ConnState {
    /// The caller's IP as a header value, formatted once per connection.
    pub peer_ip: HeaderValue,
    pub peer: SocketAddr,
    active: AtomicUsize,
    /// Bumped by every request start: the idle watchdog closes a connection only when
    /// nothing is in flight and nothing started for `idle_timeout`.
    started: AtomicU64,
    /// Milliseconds since [`epoch`] when the first byte of a request head arrived on an
    /// idle connection; 0 while no head is being read.
    head_since_ms: AtomicU64,
    /// Set by the watchdog when a head took longer than `header_read_timeout`: the
    /// socket's next read answers 408 and fails, so hyper closes the connection.
    head_timed_out: AtomicBool,
    /// That 408, made (with the ids its access-log line names) by the watchdog.
    timeout_reply: std::sync::Mutex<Option<Vec<u8>>>,
    /// The connection's `max_connections` slot, given back when the connection and
    /// every request it carried are gone: hyper ends an HTTP/2 stream's answer in a
    /// task of its own, which may outlive the connection, and the shutdown's drain
    /// (which waits for every slot) must wait for those requests' log lines and spans.
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl ConnState {
    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.head_since_ms.store(0, Ordering::Relaxed);
    }

    pub fn request_done(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Connection limits, read from the config at bind time.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
}

impl From<&ListenerConfig> for ConnLimits {
    fn from(c: &ListenerConfig) -> Self {
        ConnLimits {
            max_connections: c.max_connections,
            header_read_timeout: c.header_read_timeout,
            idle_timeout: c.idle_timeout,
            max_header_bytes: c.max_header_bytes,
        }
    }
}

/// The bound data listener: TCP, or a Unix socket whose file is removed when the
/// listener closes.
#[derive(Debug)]
pub enum DataListener {
    Tcp(TcpListener),
    Unix(UnixListener, UnixSocketFile),
}

/// Removes a Unix listener's socket file when dropped (after the listener stops
/// accepting), so a caller sees "no such file" rather than a socket nobody serves.
#[derive(Debug)]
pub struct UnixSocketFile(pub std::path::PathBuf);

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The peer recorded for a Unix-socket caller (`X-Forwarded-For`, the access log's
/// `client`): a Unix socket is only reachable from the same host (the same pod), as
/// loopback is.
const UNIX_PEER: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    0,
));

/// An accepted caller socket.
trait Accepted:
    AsyncRead + AsyncWrite + Unpin + Send + Sync + Sized + 'static + std::os::fd::AsFd
{
    /// Resolves when the socket is readable by tokio's account (which starts out
    /// "ready" for a new socket, so this alone is not enough).
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send + '_;

    /// Runs `f` if the socket is readable; a `WouldBlock` from it clears the readiness.
    fn try_read_io<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R>;

    /// Resolves when the caller has sent its first bytes (or closed), without
    /// consuming any: it peeks one byte. `true` when those bytes show the connection
    /// is HTTP/1 (they are not the start of HTTP/2's preface); `false` when they
    /// cannot tell, and hyper-util's auto builder reads the version itself.
    fn first_bytes(&self) -> impl std::future::Future<Output = std::io::Result<bool>> + Send + '_ {
        async move {
            loop {
                self.readable().await?;
                let peeked = self.try_read_io(|| {
                    let mut one = [std::mem::MaybeUninit::<u8>::uninit()];
                    socket2::SockRef::from(self).peek(&mut one)
                });
                match peeked {
                    Ok(_) => return Ok(false),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// What an HTTP/2 caller with prior knowledge sends first (RFC 9113, 3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a connection's first bytes (at most the preface's length) already rule out
/// HTTP/2's preface. A prefix of it (a lone `P`, a preface cut short) cannot tell.
fn shows_http1(head: &[u8]) -> bool {
    let n = head.len().min(H2_PREFACE.len());
    n > 0 && head[..n] != H2_PREFACE[..n]
}

impl Accepted for tokio::net::TcpStream {
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send + '_ {
        tokio::net::TcpStream::readable(self)
    }

    /// Peeks up to the preface's length: a first segment that is not a prefix of it
    /// (any HTTP/1 request line) is served by hyper's HTTP/1 connection directly,
    /// without the version sniffing read of the auto builder.
    async fn first_bytes(&self) -> std::io::Result<bool> {
        let mut head = [0u8; H2_PREFACE.len()];
        let n = tokio::net::TcpStream::peek(self, &mut head).await?;
        Ok(shows_http1(&head[..n]))
    }

    fn try_read_io<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        self.try_io(tokio::io::Interest::READABLE, f)
    }
}

impl Accepted for tokio::net::UnixStream {
    fn readable(&self) -> impl std::future::Future<Output = std::io::Result<()>> + Send + '_ {
        tokio::net::UnixStream::readable(self)
    }

    fn try_read_io<R>(&self, f: impl FnOnce() -> std::io::Result<R>) -> std::io::Result<R> {
        self.try_io(tokio::io::Interest::READABLE, f)
    }
}

/// What one connection's task needs, cloned per connection.
#[derive(Clone)]
struct ConnCtx {
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    /// The same, HTTP/1 only: for a connection whose first bytes showed HTTP/1.
    h1_builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
    /// Turns true when `shutdown_timeout` passed: connections still open are dropped
    /// here, each request's access-log line written as it goes.
    cut: watch::Receiver<bool>,
}

/// Accepts until `shutdown` turns true, then waits for open connections to drain (the
/// caller bounds that wait with `shutdown_timeout`).
pub async fn serve(
    listener: DataListener,
    proxy: Arc<Proxy>,
    limits: ConnLimits,
    tls: Option<Arc<ServerTls>>,
    mut shutdown: watch::Receiver<bool>,
    cut: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // enforced by the connection watchdog instead (see the module doc)
        .header_read_timeout(None)
        // hyper's minimum read buffer is 8 KiB; headers past the limit answer 431.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(None);
    let cx = ConnCtx {
        proxy,
        h1_builder: Arc::new(builder.clone().http1_only()),
        builder: Arc::new(builder),
        limits: limits.clone(),
        shutdown: shutdown.clone(),
        cut,
    };
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        // One atomic load: a rotated certificate applies from the next handshake on.
        let acceptor = || tls.as_ref().map(|t| t.acceptor());
        let accepted = tokio::select! {
            r = async {
                match &listener {
                    DataListener::Tcp(l) => l.accept().await.map(|(s, peer)| {
                        let _ = s.set_nodelay(true);
                        tokio::spawn(conn_task(s, peer, acceptor(), cx.clone(), permit));
                    }),
                    DataListener::Unix(l, _) => l.accept().await.map(|(s, _)| {
                        tokio::spawn(conn_task(s, UNIX_PEER, acceptor(), cx.clone(), permit));
                    }),
                }
            } => r,
            _ = shutdown.changed() => break,
        };
        if let Err(e) = accepted {
            // EMFILE and friends: back off briefly instead of spinning.
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(listener);
    // Wait until every connection task returned its slot.
    let _ = slots
        .acquire_many(u32::try_from(limits.max_connections).unwrap_or(u32::MAX))
        .await;
}

/// One caller connection, from accept to close; holds its `max_connections` slot.
async fn conn_task<S: Accepted>(
    stream: S,
    peer: SocketAddr,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    cx: ConnCtx,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let ConnCtx {
        proxy,
        builder,
        h1_builder,
        limits,
        shutdown,
        mut cut,
    } = cx;
    // Nothing is allocated for a connection until its first bytes arrive (the TLS
    // state, hyper's 8 KiB read buffer and the connection's future are made after
    // this): a caller holding connections open costs a socket and this small task. A
    // connection that sends nothing closes after `idle_timeout`, as an idle keep-alive
    // does.
    let mut early_shutdown = shutdown.clone();
    let first = tokio::select! {
        r = tokio::time::timeout(limits.idle_timeout, stream.first_bytes()) => r.ok().and_then(Result::ok),
        _ = early_shutdown.wait_for(|s| *s) => None,
    };
    if let Some(http1) = first {
        // Boxed, each in a statement of its own: the connection's state (hyper's, and
        // rustls's during and after the handshake) is allocated only now, and none of
        // it is laid out in this task's future.
        let conn: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> = match acceptor {
            // Plain text whose first bytes showed HTTP/1: no version sniffing.
            None => Box::pin(serve_conn(
                stream,
                peer,
                proxy,
                if http1 { h1_builder } else { builder },
                limits,
                shutdown,
                permit,
            )),
            Some(acceptor) => Box::pin(serve_tls(
                stream, acceptor, peer, proxy, builder, limits, shutdown, permit,
            )),
        };
        tokio::select! {
            () = conn => {}
            _ = cut.wait_for(|c| *c) => {}
        }
    }
}

/// The TLS handshake, bounded like a request head (a client that opens the connection
/// and says nothing must not hold a slot), then the connection.
#[allow(clippy::too_many_arguments)]
async fn serve_tls<S: Accepted>(
    stream: S,
    acceptor: tokio_rustls::TlsAcceptor,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    shutdown: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_conn(tls, peer, proxy, builder, limits, shutdown, permit).await,
        Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => {
            tracing::debug!(peer = %peer, "TLS handshake not complete within header_read_timeout; closing")
        }
    }
}

async fn serve_conn<S>(
    stream: S,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A sidecar's callers are on loopback: that address needs no formatting.
    let peer_ip = match peer.ip() {
        std::net::IpAddr::V4(ip) if ip == std::net::Ipv4Addr::LOCALHOST => {
            HeaderValue::from_static("127.0.0.1")
        }
        ip => HeaderValue::from_str(&ip.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
    };
    let state = Arc::new(ConnState {
        peer_ip,
        peer,
        active: AtomicUsize::new(0),
        started: AtomicU64::new(0),
        head_since_ms: AtomicU64::new(0),
        head_timed_out: AtomicBool::new(false),
        timeout_reply: std::sync::Mutex::new(None),
        _slot: Some(permit),
    });
    let svc_state = state.clone();
    let svc_proxy = proxy.clone();
    let svc = service_fn(move |req| {
        // The request is correlated here, before its future is first polled.
        let prepared = svc_proxy.handle(req, svc_state.clone());
        async move { Ok::<_, std::convert::Infallible>(prepared.respond().await) }
    });
    let io = ConnIo {
        inner: stream,
        state: state.clone(),
        first_read: true,
        exempt: false,
        timeout_reply: None,
        linger: None,
    };
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // The watchdog looks often enough to hold both limits within a quarter of each.
    let period =
        (limits.header_read_timeout.min(limits.idle_timeout) / 4).max(Duration::from_millis(10));
    // The first tick one period from now, not an immediate one awaited here: tokio
    // rounds a timer's deadline up to its next millisecond, so awaiting even a deadline
    // of "now" parked the connection for up to a millisecond before hyper read its
    // first request (every new connection's first answer was ~1.3 ms late).
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_started = 0u64;
    // When a tick first found the connection idle: it closes `idle_timeout` after that,
    // never sooner (it went idle at most one period before).
    let mut idle_since: Option<tokio::time::Instant> = None;
    // After a 408, how long the caller gets to read it before the socket is dropped.
    let mut give_up: Option<tokio::time::Instant> = None;
    // After an idle close began: when the connection is dropped if it is still open
    // with nothing in flight (an HTTP/2 caller that never answers the GOAWAY's PING,
    // hung or gone, held its slot forever).
    let mut idle_close_by: Option<tokio::time::Instant> = None;
    let mut closing = *shutdown.borrow();
    if closing {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with error");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tick.tick() => {
                if give_up.is_some_and(|t| tokio::time::Instant::now() >= t) {
                    return; // dropping the connection closes the socket
                }
                if idle_close_by.is_some_and(|t| tokio::time::Instant::now() >= t)
                    && state.active.load(Ordering::Relaxed) == 0
                {
                    tracing::debug!(peer = %peer, "idle connection did not close after its GOAWAY; dropped");
                    return;
                }
                let head = state.head_since_ms.load(Ordering::Relaxed);
                let limit = u64::try_from(limits.header_read_timeout.as_millis()).unwrap_or(u64::MAX);
                if give_up.is_none() && head != 0 && now_ms().saturating_sub(head) >= limit {
                    tracing::debug!(peer = %peer, "request head not complete within header_read_timeout; answering 408");
                    let waited = Duration::from_millis(now_ms().saturating_sub(head));
                    // Each id a UUID of its own, as for any request that brought none.
                    let rid = super::correlate::new_uuid();
                    let cid = super::correlate::new_uuid();
                    let (reply, body_len) = timeout_reply(rid.as_bytes(), cid.as_bytes());
                    log_head_timeout(&proxy, rid.as_bytes(), cid.as_bytes(), body_len, waited);
                    if let Ok(mut r) = state.timeout_reply.lock() {
                        *r = Some(reply);
                    }
                    // The next poll of the connection reads: ConnIo answers 408 there
                    // (hyper is between reads, writing nothing) and fails the read.
                    state.head_timed_out.store(true, Ordering::Relaxed);
                    give_up = Some(tokio::time::Instant::now() + TIMEOUT_REPLY_GRACE);
                    continue;
                }
                if closing {
                    continue;
                }
                let started = state.started.load(Ordering::Relaxed);
                if started == last_started && state.active.load(Ordering::Relaxed) == 0 && head == 0 {
                    let now = tokio::time::Instant::now();
                    let since = *idle_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= limits.idle_timeout {
                        closing = true;
                        idle_close_by = Some(now + IDLE_CLOSE_GRACE);
                        conn.as_mut().graceful_shutdown();
                    }
                } else {
                    idle_since = None;
                }
                last_started = started;
            }
        }
    }
}

/// How long an idle connection that was told to close (an HTTP/2 GOAWAY and its PING)
/// may stay open before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a caller that timed out gets to read its 408 before the socket is dropped.
const TIMEOUT_REPLY_GRACE: Duration = Duration::from_secs(1);

/// After fusebox closes a connection (its write side shut), the longest it keeps
/// reading and discarding what the caller still sends before dropping the socket: long
/// enough for a caller to read an answer given while its body was still arriving (a
/// 413), short enough that a caller which never closes holds its slot only briefly.
const LINGER: Duration = Duration::from_secs(2);

/// Reads per poll while lingering, so a caller that keeps sending cannot hold the
/// worker thread.
const LINGER_READS_PER_POLL: usize = 64;

/// The 408 of a request head that did not arrive within `header_read_timeout`, in the
/// contract's error shape (the request had no ids yet: new ones are made), and the
/// length of its body (the access log's `bytes_out`, body bytes as on every line).
fn timeout_reply(request_id: &[u8], correlation_id: &[u8]) -> (Vec<u8>, u64) {
    let rid = std::str::from_utf8(request_id).unwrap_or("");
    let cid = std::str::from_utf8(correlation_id).unwrap_or("");
    // The same JSON as every other error answer of fusebox's.
    let body = super::error::ProxyError::new(
        super::error::ErrorCode::RequestTimeout,
        "request headers not received within header_read_timeout",
    )
    .json_body(rid, cid);
    let reply = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nx-fusebox-error: REQUEST_TIMEOUT\r\nx-request-id: {rid}\r\nx-correlation-id: {cid}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    (reply, body.len() as u64)
}

/// The 408 of a head that never completed is a request answered like any other: it
/// gets its access-log line (no method or path was read) and counts in
/// `gateway_proxy_requests_total{status="408"}` (route and service empty).
fn log_head_timeout(proxy: &Proxy, rid: &[u8], cid: &[u8], bytes_out: u64, waited: Duration) {
    static NO_METHOD: std::sync::OnceLock<http::Method> = std::sync::OnceLock::new();
    let snap = proxy.state.load();
    let method =
        NO_METHOD.get_or_init(|| http::Method::from_bytes(b"OTHER").unwrap_or(http::Method::GET));
    snap.unrouted.observe(method, 408, waited.as_secs_f64());
    let logging = &snap.config.logging;
    if !logging.access_log {
        return;
    }
    let entry = crate::access_log::Entry {
        service: &snap.service,
        route: None,
        upstream: None,
        endpoint: None,
        method: "",
        path: "",
        status: 408,
        duration: waited,
        attempts: 0,
        correlation_id: cid,
        request_id: rid,
        trace_id: None,
        org_id: None,
        camera_id: None,
        priority: "normal",
        error_code: Some("REQUEST_TIMEOUT"),
        bytes_in: 0,
        bytes_out,
        body_error: false,
        cancelled: false,
        propagated: &[],
    };
    proxy.logger.write(&entry, logging.format);
}

/// Milliseconds since the process's time origin, never 0.
fn now_ms() -> u64 {
    crate::upstream::epoch().elapsed().as_millis() as u64 + 1
}

/// The caller's socket, noting when a request head starts arriving on an idle
/// HTTP/1 connection (for the header read timeout).
struct ConnIo<S> {
    /// The TCP stream, or the TLS stream over it (so the bytes seen here are
    /// plaintext HTTP either way).
    inner: S,
    state: Arc<ConnState>,
    first_read: bool,
    /// HTTP/2 connections are exempt: their frames (pings, settings) arrive between
    /// streams, and a stalled h2 client holds only its own stream.
    exempt: bool,
    /// The 408 being written after a header read timeout, and how much of it went out.
    timeout_reply: Option<(Vec<u8>, usize)>,
    /// Set once the write side is shut: the end of the lingering close.
    linger: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ConnIo<S> {
    /// After a header read timeout: writes the 408 (as far as the socket takes it now),
    /// half-closes, then reads and discards what the caller still sends until it
    /// closes (a lingering close: closing with unread input would reset the connection
    /// and could destroy the 408 before the caller read it), then fails the read so
    /// hyper drops the connection. The watchdog bounds all of it.
    fn poll_timeout_reply(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let timed_out = || {
            Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request head not received within header_read_timeout",
            )))
        };
        let (reply, pos) = self.timeout_reply.get_or_insert_with(|| {
            let made = self
                .state
                .timeout_reply
                .lock()
                .ok()
                .and_then(|mut r| r.take());
            let reply = made.unwrap_or_else(|| {
                let rid = super::correlate::new_uuid();
                let cid = super::correlate::new_uuid();
                timeout_reply(rid.as_bytes(), cid.as_bytes()).0
            });
            (reply, 0)
        });
        while *pos < reply.len() {
            match std::pin::Pin::new(&mut self.inner).poll_write(cx, &reply[*pos..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return timed_out(),
                Poll::Ready(Ok(n)) => *pos += n,
                Poll::Pending => return Poll::Pending,
            }
        }
        if *pos == reply.len() {
            match std::pin::Pin::new(&mut self.inner).poll_shutdown(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => *pos += 1, // half-closed (or could not be): drain
            }
        }
        let mut scratch = [0u8; 512];
        loop {
            let mut buf = tokio::io::ReadBuf::new(&mut scratch);
            match std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                Poll::Ready(_) => return timed_out(),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ConnIo<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.state.head_timed_out.load(Ordering::Relaxed) {
            return self.poll_timeout_reply(cx);
        }
        let before = buf.filled().len();
        let res = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            if self.first_read {
                self.first_read = false;
                self.exempt = read.starts_with(b"PRI * HTTP/2.0");
            }
            let st = &self.state;
            if !self.exempt
                && st.active.load(Ordering::Relaxed) == 0
                && st.head_since_ms.load(Ordering::Relaxed) == 0
            {
                st.head_since_ms.store(now_ms(), Ordering::Relaxed);
            }
        }
        res
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ConnIo<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// A lingering close: shuts the write side (the caller sees the end of the answer),
    /// then reads and discards what the caller still sends until it closes or
    /// [`LINGER`] passes. Dropping a socket with unread input makes the kernel reset the
    /// connection, and the reset can destroy an answer the caller has not read yet: a
    /// 413 given while a large body was still arriving was lost that way.
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if this.linger.is_none() {
            std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_shutdown(cx))?;
            this.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        // Uninitialised: what is read is thrown away, and zeroing 8 KiB on each poll
        // was the largest single cost of a connection that closes (a caller without
        // keep-alive paid it on every request).
        let mut scratch = [std::mem::MaybeUninit::<u8>::uninit(); 8 * 1024];
        let mut waiting = false;
        for _ in 0..LINGER_READS_PER_POLL {
            let mut buf = tokio::io::ReadBuf::uninit(&mut scratch);
            match std::pin::Pin::new(&mut this.inner).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if !buf.filled().is_empty() => continue,
                // The caller closed (or the socket failed): nothing left to lose.
                Poll::Ready(_) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    waiting = true;
                    break;
                }
            }
        }
        if let Some(linger) = this.linger.as_mut() {
            if linger.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Ok(()));
            }
        }
        if !waiting {
            // Still more to read: come back after other tasks had their turn.
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection goes to hyper's HTTP/1 connection directly only when its first
    /// bytes cannot be the start of HTTP/2's preface; anything that could be (nothing
    /// yet, a lone `P`, a preface cut short, the whole preface) goes to the auto
    /// builder, which reads the version itself.
    #[test]
    fn only_bytes_that_rule_out_the_h2_preface_skip_version_sniffing() {
        for h1 in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /v1/detect HTTP/1.1\r\nhost: x\r\n",
            b"PO",
            b"PRX",
            b"PRI * HTTP/1.1\r\n",
            b"\x16\x03\x01",
        ] {
            assert!(shows_http1(h1), "{:?}", String::from_utf8_lossy(h1));
        }
        for maybe_h2 in [
            &b""[..],
            b"P",
            b"PRI",
            b"PRI * HTTP/2.0\r\n",
            &H2_PREFACE[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
        ] {
            assert!(
                !shows_http1(maybe_h2),
                "{:?}",
                String::from_utf8_lossy(maybe_h2)
            );
        }
    }
}
