//! The connection pool of one endpoint. Hand-written rather than hyper-util's pooling
//! client because a proxy needs what that client does not do: a hard cap of open
//! connections per endpoint (`max_connections_per_host`, waiters time out after the
//! connect timeout), no speculative connect racing a returning idle connection (which
//! under load opens and closes a connection every few requests), LIFO reuse so the
//! warmest connection goes first, HTTP/2 connections added as their peers' stream limits
//! fill up, open/idle counts for the metrics, and no spawned task or hash lookup per
//! request.
//!
//! HTTP/1.1: idle connections are a stack; a request takes one (or opens one while under
//! the cap, or waits for one to come back) and holds it in a [`Lease`] until its
//! response body has been read to the end, when the connection goes back on the stack.
//! A body dropped half-read discards the connection.
//!
//! HTTP/2 (`h2c`, `h2`, in [`h2`]): a list of multiplexed connections. A request takes a
//! stream on the least loaded one below its peer's `SETTINGS_MAX_CONCURRENT_STREAMS`
//! (100 when the peer sets none), opens another connection when all are full and the
//! cap allows, and at the cap shares the least loaded one (h2 queues the stream). Its
//! [`Lease`] holds the stream until the response body ends or is dropped. A connection
//! that carried nothing for `idle_timeout` is closed.
//!
//! Touched per request: `send` (one short lock on checkout, and for HTTP/1 one on
//! return).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::body::ReqBody;
use crate::config::{PoolConfig, Protocol, TimeoutsConfig};

mod h2;
mod peer_limit;

pub use peer_limit::DEFAULT_MAX_STREAMS;

/// Settings of a pool, taken from the upstream's `pool`, `timeouts`, `protocol` and
/// `tls`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolSettings {
    pub http2: bool,
    pub max_connections: usize,
    pub max_idle: usize,
    pub idle_timeout: Duration,
    pub connect_timeout: Duration,
    /// Set for `https` and `h2`: every connection is TLS.
    pub tls: Option<PoolTls>,
}

impl PoolSettings {
    pub fn new(
        protocol: Protocol,
        pool: &PoolConfig,
        timeouts: &TimeoutsConfig,
        tls: Option<PoolTls>,
    ) -> Self {
        PoolSettings {
            http2: matches!(protocol, Protocol::H2c | Protocol::H2),
            max_connections: pool.max_connections_per_host.max(1),
            max_idle: pool.max_idle_per_host,
            idle_timeout: pool.idle_timeout,
            connect_timeout: timeouts.connect,
            tls,
        }
    }
}

/// How a pool's connections do TLS: the upstream's client config (built once per
/// config build by [`crate::tls::client_config`]) and the name this endpoint's
/// certificate must carry.
#[derive(Debug, Clone)]
pub struct PoolTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// Same config object and name. Each config build makes a new client config (re-reading
/// the CA and client certificate files), so a reload replaces TLS pools; their
/// in-flight requests finish on the old connections.
impl PartialEq for PoolTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config) && self.server_name == other.server_name
    }
}

impl Eq for PoolTls {}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect to {0} timed out after {1:?}")]
    ConnectTimeout(SocketAddr, Duration),
    /// Every connection of the pool stayed busy (`max_connections_per_host`) for the
    /// connect timeout: fusebox's own cap, not the endpoint's fault.
    #[error("no connection to {0} came free within {1:?} (max_connections_per_host reached)")]
    PoolExhausted(SocketAddr, Duration),
    #[error("connect to {0} failed: {1}")]
    Connect(SocketAddr, #[source] io::Error),
    #[error("TLS handshake with {0} failed: {1}")]
    Tls(SocketAddr, #[source] io::Error),
    #[error("HTTP handshake with {0} failed: {1}")]
    Handshake(SocketAddr, #[source] hyper::Error),
    /// The request reached the connection; nothing is known of what the upstream did.
    #[error("{0}")]
    Sent(#[source] hyper::Error),
    /// An HTTP/2 upstream refused the stream before processing it (`REFUSED_STREAM`,
    /// RFC 9113 8.7): as safe to retry as a connect failure.
    #[error("the stream was refused before it was processed: {0}")]
    Refused(#[source] hyper::Error),
    /// An HTTP/2 upstream that is shutting down gracefully (`GOAWAY` with `NO_ERROR`,
    /// RFC 9113 6.8) did not process the stream: safe to retry, and no fault of the
    /// endpoint (a rolling restart sends it).
    #[error("the upstream is shutting down (GOAWAY) and did not process the stream: {0}")]
    Draining(#[source] hyper::Error),
}

/// `Sent`, or `Refused` / `Draining` when the upstream's HTTP/2 layer says the request
/// was not processed: a `REFUSED_STREAM` reset, or the upstream's `GOAWAY` with
/// `NO_ERROR` (a graceful shutdown, as a rolling restart sends). The h2 crate fails a stream with
/// the remote's `NO_ERROR` GOAWAY only when the stream is above the frame's last
/// stream id, which the upstream promises it never processed; streams at or below it
/// run to their end (or fail as resets or I/O errors, which stay `Sent`). A GOAWAY with
/// an error code may also end streams the upstream did process, so it stays `Sent`.
pub fn sent_error(e: hyper::Error) -> SendError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(c) = cause {
        if let Some(h2e) = c.downcast_ref::<::h2::Error>() {
            let reason = h2e.reason();
            let graceful_go_away =
                h2e.is_go_away() && h2e.is_remote() && reason == Some(::h2::Reason::NO_ERROR);
            if graceful_go_away {
                return SendError::Draining(e);
            }
            if reason == Some(::h2::Reason::REFUSED_STREAM) {
                return SendError::Refused(e);
            }
        }
        cause = c.source();
    }
    SendError::Sent(e)
}

impl SendError {
    /// Nothing reached the upstream: safe to retry for any method.
    pub fn is_connect(&self) -> bool {
        !matches!(self, SendError::Sent(_))
    }

    /// The pool's own cap, not the endpoint, refused the request.
    pub fn is_pool_exhausted(&self) -> bool {
        matches!(self, SendError::PoolExhausted(..))
    }

    /// The upstream is going away gracefully and did not process the request.
    pub fn is_draining(&self) -> bool {
        matches!(self, SendError::Draining(..))
    }
}

/// How long idle connections beyond `max_idle_per_host` are kept before the sweeper
/// closes them: long enough to bridge the gaps of a busy stream of requests.
pub const SURPLUS_GRACE: Duration = Duration::from_secs(1);

/// The sweeper's period ceiling (it runs every half `idle_timeout` when that is shorter).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    tx: http1::SendRequest<ReqBody>,
    since: Instant,
}

/// The pool of one endpoint.
pub struct Pool {
    addr: SocketAddr,
    pub settings: PoolSettings,
    idle: Mutex<Vec<Idle>>,
    /// The HTTP/2 connections (`h2c`, `h2`; unused for HTTP/1).
    h2: h2::H2Conns,
    slots: Arc<Semaphore>,
    /// Signalled when an HTTP/1 connection returns to the stack or closes.
    returned: Notify,
    open: Arc<AtomicUsize>,
    /// `gateway_upstream_pool_wait_seconds` of the upstream (none for probe pools).
    wait: Option<prometheus::Histogram>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("addr", &self.addr)
            .field("open", &self.open())
            .field("idle", &self.idle_count())
            .finish()
    }
}

/// Set by [`Pool::send`] when the request gets its connection (HTTP/1) or stream
/// (HTTP/2): until then it waits on fusebox's own `max_connections_per_host`, and the
/// attempt's `timeouts.request` (the upstream's time to answer) has not started. A
/// connection had at once (the warm path) costs one relaxed store; one had after a
/// wait records when, and wakes [`LeaseMark::leased`].
#[derive(Debug, Default)]
pub struct LeaseMark {
    leased: std::sync::atomic::AtomicBool,
    after_wait: std::sync::OnceLock<Instant>,
    set: Notify,
}

impl LeaseMark {
    fn mark(&self, waited: bool) {
        if waited {
            let _ = self.after_wait.set(Instant::now());
            self.leased.store(true, Ordering::Release);
            // A permit is stored when nobody waits yet: `leased` then completes.
            self.set.notify_one();
        } else {
            self.leased.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the request has its connection.
    pub fn is_leased(&self) -> bool {
        self.leased.load(Ordering::Acquire)
    }

    /// When the request got its connection, if it had to wait for it.
    pub fn after_wait(&self) -> Option<Instant> {
        self.after_wait.get().copied()
    }

    /// Resolves once the request has its connection after a wait (see
    /// [`LeaseMark::after_wait`]).
    pub async fn leased(&self) {
        if self.after_wait.get().is_none() {
            self.set.notified().await;
        }
    }
}

/// Holds what a request uses while its response body streams: an HTTP/1 connection
/// (returned on [`Lease::release`], discarded on drop) or a stream of an HTTP/2
/// connection (given back either way).
pub struct Lease(Leased);

enum Leased {
    Http1 {
        tx: Option<http1::SendRequest<ReqBody>>,
        pool: Weak<Pool>,
    },
    /// Held for its drop, which gives the stream back.
    Http2(#[allow(dead_code)] h2::Stream),
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

impl Lease {
    fn http1(tx: http1::SendRequest<ReqBody>, pool: &Arc<Pool>) -> Lease {
        Lease(Leased::Http1 {
            tx: Some(tx),
            pool: Arc::downgrade(pool),
        })
    }

    /// The response was read to the end: the connection can serve the next request.
    pub fn release(mut self) {
        if let Leased::Http1 { tx, pool } = &mut self.0 {
            if let (Some(tx), Some(pool)) = (tx.take(), pool.upgrade()) {
                pool.put_back(tx);
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Dropped unreleased: the response was not read to the end, so the connection
        // is in an unknown state. Dropping the sender closes it. (An HTTP/2 stream is
        // given back by its own drop.)
        if let Leased::Http1 { tx, pool } = &mut self.0 {
            if tx.take().is_some() {
                if let Some(pool) = pool.upgrade() {
                    pool.returned.notify_one();
                }
            }
        }
    }
}

impl Pool {
    pub fn new(
        addr: SocketAddr,
        settings: PoolSettings,
        wait: Option<prometheus::Histogram>,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            wait,
            addr,
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            settings,
            idle: Mutex::new(Vec::new()),
            h2: h2::H2Conns::default(),
            returned: Notify::new(),
            open: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Connections open now (idle ones included).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// For HTTP/2, the open connections carrying at least one stream (the others are
    /// idle); `None` for HTTP/1, whose busy connections are its requests in flight.
    pub fn h2_busy(&self) -> Option<usize> {
        self.settings.http2.then(|| self.h2.busy())
    }

    /// Sends one request; the returned [`Lease`] must be released once the response
    /// body is read to the end (or dropped if it is not).
    /// `mark` is set once the request has its connection or stream.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ReqBody>,
        mark: &LeaseMark,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        if self.settings.http2 {
            return self.send_h2(req, mark).await;
        }
        // A pooled connection the upstream closed while idle hands the request back
        // unsent; try the next one (bounded: each round consumes a connection).
        for _ in 0..=self.settings.max_idle.min(16) {
            let (mut tx, waited) = self.checkout().await?;
            mark.mark(waited);
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Some(Lease::http1(tx, self)))),
                Err(mut e) => match e.take_message() {
                    Some(back) => req = back,
                    None => return Err(SendError::Sent(e.into_error())),
                },
            }
        }
        let mut tx = Box::pin(self.connect_h1()).await?;
        mark.mark(true);
        match tx.try_send_request(req).await {
            Ok(resp) => Ok((resp, Some(Lease::http1(tx, self)))),
            Err(e) => Err(SendError::Sent(e.into_error())),
        }
    }

    /// An idle connection, a new one while under the cap, or the next one to come
    /// back; waiting is bounded by the connect timeout.
    /// With `true` when it was not had at once.
    async fn checkout(self: &Arc<Self>) -> Result<(http1::SendRequest<ReqBody>, bool), SendError> {
        // The common case first: a warm connection, no clock read, a zero wait.
        let first = self.pop_idle();
        let started = match first {
            Some(tx) if tx.is_ready() => {
                self.observe_wait(Duration::ZERO);
                return Ok((tx, false));
            }
            Some(mut tx) => {
                // Just returned: the connection task has not caught up yet.
                let started = Instant::now();
                if tx.ready().await.is_ok() {
                    self.observe_wait(started.elapsed());
                    return Ok((tx, true));
                }
                started
            }
            None => Instant::now(),
        };
        let got = Box::pin(self.checkout_slow(started)).await;
        self.observe_wait(started.elapsed());
        got.map(|tx| (tx, true))
    }

    fn observe_wait(&self, waited: Duration) {
        if let Some(h) = &self.wait {
            h.observe(waited.as_secs_f64());
        }
    }

    async fn checkout_slow(
        self: &Arc<Self>,
        started: Instant,
    ) -> Result<http1::SendRequest<ReqBody>, SendError> {
        let deadline = started + self.settings.connect_timeout;
        loop {
            let notified = self.returned.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            while let Some(mut tx) = self.pop_idle() {
                if tx.is_ready() {
                    return Ok(tx);
                }
                // Just returned: the connection task has not caught up yet.
                if tx.ready().await.is_ok() {
                    return Ok(tx);
                }
            }
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return Box::pin(self.connect_h1_with(permit, deadline)).await;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(SendError::PoolExhausted(
                    self.addr,
                    self.settings.connect_timeout,
                ));
            }
        }
    }

    fn pop_idle(&self) -> Option<http1::SendRequest<ReqBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while let Some(c) = idle.pop() {
            if !c.tx.is_closed()
                && now.saturating_duration_since(c.since) < self.settings.idle_timeout
            {
                return Some(c.tx);
            }
        }
        None
    }

    fn put_back(&self, tx: http1::SendRequest<ReqBody>) {
        if tx.is_closed() {
            self.returned.notify_one();
            return;
        }
        if self.settings.max_idle == 0 {
            // Pooling off: every connection serves one request.
            self.returned.notify_one();
            return;
        }
        // Kept even past `max_idle`: under load every connection is idle for a moment
        // between requests, and closing the surplus then would reopen it microseconds
        // later. `sweep` trims what stays idle past [`SURPLUS_GRACE`].
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Idle {
                tx,
                since: Instant::now(),
            });
        self.returned.notify_one();
    }

    /// Closes connections idle longer than `idle_timeout`, and the oldest idle HTTP/1
    /// ones past `max_idle` that stayed idle for [`SURPLUS_GRACE`] (called every
    /// [`SWEEP_EVERY`] at most).
    pub fn sweep(&self) {
        let now = Instant::now();
        if self.settings.http2 {
            self.h2.sweep(now, self.settings.idle_timeout);
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|c| {
            !c.tx.is_closed() && now.saturating_duration_since(c.since) < self.settings.idle_timeout
        });
        // The stack's bottom holds the longest idle.
        let surplus = idle.len().saturating_sub(self.settings.max_idle);
        let stale = idle
            .iter()
            .take(surplus)
            .take_while(|c| now.saturating_duration_since(c.since) >= SURPLUS_GRACE)
            .count();
        idle.drain(..stale);
    }

    /// Cold, and its future large (TLS and the handshake): callers box it, so that
    /// the future of every request, which holds the pool's `send`, stays small. A
    /// large request future is copied whole where it is moved (into hyper's state,
    /// into the future awaiting it): the connect path inline cost ~20 KiB of copies
    /// per request on the warm path.
    async fn connect_h1(self: &Arc<Self>) -> Result<http1::SendRequest<ReqBody>, SendError> {
        let deadline = Instant::now() + self.settings.connect_timeout;
        let permit = self.slot(deadline).await?;
        self.connect_h1_with(permit, deadline).await
    }

    /// A connection slot under the per-endpoint cap, waiting at most until `deadline`.
    async fn slot(&self, deadline: Instant) -> Result<OwnedSemaphorePermit, SendError> {
        let timeout = SendError::PoolExhausted(self.addr, self.settings.connect_timeout);
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(timeout),
        }
    }

    async fn tcp(&self, deadline: Instant) -> Result<TcpStream, SendError> {
        let stream = tokio::time::timeout_at(deadline, TcpStream::connect(self.addr))
            .await
            .map_err(|_| SendError::ConnectTimeout(self.addr, self.settings.connect_timeout))?
            .map_err(|e| SendError::Connect(self.addr, e))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// The TLS handshake over `tcp`, bounded by the same connect deadline. For `h2`
    /// the upstream must select `h2` by ALPN (the only protocol offered).
    async fn tls(
        &self,
        tls: &PoolTls,
        tcp: TcpStream,
        deadline: Instant,
    ) -> Result<TlsStream<TcpStream>, SendError> {
        let connect = TlsConnector::from(tls.config.clone()).connect(tls.server_name.clone(), tcp);
        let stream = tokio::time::timeout_at(deadline, connect)
            .await
            .map_err(|_| SendError::ConnectTimeout(self.addr, self.settings.connect_timeout))?
            .map_err(|e| SendError::Tls(self.addr, e))?;
        if self.settings.http2 && stream.get_ref().1.alpn_protocol() != Some(b"h2") {
            return Err(SendError::Tls(
                self.addr,
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "upstream did not select h2 by ALPN",
                ),
            ));
        }
        Ok(stream)
    }

    async fn connect_h1_with(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        deadline: Instant,
    ) -> Result<http1::SendRequest<ReqBody>, SendError> {
        let tcp = self.tcp(deadline).await?;
        match &self.settings.tls {
            None => self.h1_over(permit, tcp).await,
            Some(tls) => {
                let stream = self.tls(tls, tcp, deadline).await?;
                self.h1_over(permit, stream).await
            }
        }
    }

    async fn h1_over<I>(
        self: &Arc<Self>,
        permit: OwnedSemaphorePermit,
        io: I,
    ) -> Result<http1::SendRequest<ReqBody>, SendError>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (tx, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Handshake(self.addr, e))?;
        self.spawn_conn(permit, conn);
        Ok(tx)
    }

    fn spawn_conn<F>(self: &Arc<Self>, permit: OwnedSemaphorePermit, conn: F)
    where
        F: std::future::Future + Send + 'static,
    {
        let open = self.open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            let _ = conn.await;
            open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            if let Some(p) = pool.upgrade() {
                p.returned.notify_one();
            }
        });
    }
}
