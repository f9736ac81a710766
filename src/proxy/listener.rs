//! The data listener: accepts TCP connections (at most `max_connections` at once; past
//! that, new connections wait in the kernel's backlog), serves HTTP/1.1 and HTTP/2 prior
//! knowledge on the same port (hyper-util's auto builder), and applies the connection
//! limits of the contract: header read timeout (slowloris guard), header size (431 from
//! hyper), keep-alive idle timeout. On shutdown every connection is told to finish its
//! in-flight requests and close.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::Proxy;
use crate::config::ListenerConfig;

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
}

impl ConnState {
    pub fn request_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
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

/// Accepts until `shutdown` turns true, then waits for open connections to drain (the
/// caller bounds that wait with `shutdown_timeout`).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: ConnLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        // hyper's minimum read buffer is 8 KiB; headers past the limit answer 431.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(None);
    let builder = Arc::new(builder);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let proxy = proxy.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        let idle = limits.idle_timeout;
        tokio::spawn(async move {
            serve_conn(stream, peer, proxy, &builder, idle, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    // Wait until every connection task returned its slot.
    let _ = slots
        .acquire_many(u32::try_from(limits.max_connections).unwrap_or(u32::MAX))
        .await;
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let peer_ip = HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
    let state = Arc::new(ConnState {
        peer_ip,
        peer,
        active: AtomicUsize::new(0),
        started: AtomicU64::new(0),
    });
    let svc_state = state.clone();
    let svc = service_fn(move |req| {
        let proxy = proxy.clone();
        let conn = svc_state.clone();
        async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, conn).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut last_started = 0u64;
    let mut idle_tick = tokio::time::interval(idle);
    idle_tick.tick().await;
    let mut closing = false;
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
            _ = idle_tick.tick(), if !closing => {
                let started = state.started.load(Ordering::Relaxed);
                if started == last_started && state.active.load(Ordering::Relaxed) == 0 {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                last_started = started;
            }
        }
    }
}
