//! The pooled HTTP client of one upstream: hyper-util's pooling client over a connector
//! that adds what hyper-util leaves out for a proxy: a connect timeout, `TCP_NODELAY`,
//! and a hard cap of open connections per endpoint (a semaphore permit travels inside
//! each connection and is released when the connection closes; a connect that cannot
//! get a permit within the connect timeout fails like a connect timeout).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{PoolConfig, Protocol, TimeoutsConfig};
use crate::proxy::body::ReqBody;

pub type HttpClient = Client<Connector, ReqBody>;

/// Connection caps per endpoint address, shared by the connector and the endpoints.
#[derive(Debug, Default)]
pub struct ConnLimits {
    by_addr: Mutex<HashMap<SocketAddr, Arc<Semaphore>>>,
}

impl ConnLimits {
    /// The semaphore of `addr`, created with `max` permits on first use.
    pub fn get(&self, addr: SocketAddr, max: usize) -> Arc<Semaphore> {
        let mut m = match self.by_addr.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        m.entry(addr)
            .or_insert_with(|| Arc::new(Semaphore::new(max)))
            .clone()
    }

    /// Forgets endpoints no longer in use (their open connections keep their permits).
    pub fn retain(&self, keep: impl Fn(&SocketAddr) -> bool) {
        if let Ok(mut m) = self.by_addr.lock() {
            m.retain(|a, _| keep(a));
        }
    }
}

/// Opens TCP connections for the pool.
#[derive(Clone, Debug)]
pub struct Connector {
    connect_timeout: Duration,
    max_per_host: usize,
    limits: Arc<ConnLimits>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out after {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, #[source] io::Error),
    #[error("no socket address in {0}")]
    BadAuthority(Uri),
}

impl tower_service::Service<Uri> for Connector {
    type Response = PooledIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<PooledIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            // Endpoint URIs always carry a literal ip:port (names are resolved by the
            // upstream's DNS refresher, not at connect time).
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| ConnectError::BadAuthority(uri.clone()))?;
            let sem = this.limits.get(addr, this.max_per_host);
            let t = this.connect_timeout;
            let fut = async move {
                let permit = sem
                    .acquire_owned()
                    .await
                    .map_err(|_| ConnectError::Timeout(addr, t))?;
                let stream = TcpStream::connect(addr)
                    .await
                    .map_err(|e| ConnectError::Io(addr, e))?;
                let _ = stream.set_nodelay(true);
                Ok(PooledIo {
                    io: TokioIo::new(stream),
                    _permit: permit,
                })
            };
            match tokio::time::timeout(t, fut).await {
                Ok(r) => r,
                Err(_) => Err(ConnectError::Timeout(addr, t)),
            }
        })
    }
}

/// A pooled connection holding its slot of the endpoint's connection cap.
pub struct PooledIo {
    io: TokioIo<TcpStream>,
    _permit: OwnedSemaphorePermit,
}

impl Connection for PooledIo {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for PooledIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for PooledIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// Builds the pooled client of an upstream.
pub fn build_client(
    protocol: Protocol,
    pool: &PoolConfig,
    timeouts: &TimeoutsConfig,
    limits: Arc<ConnLimits>,
) -> HttpClient {
    let connector = Connector {
        connect_timeout: timeouts.connect,
        max_per_host: pool.max_connections_per_host,
        limits,
    };
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(pool.idle_timeout)
        .pool_max_idle_per_host(pool.max_idle_per_host)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        // The caller's Host is forwarded as it came; the request path sets one for
        // HTTP/2 callers, which send :authority instead.
        .set_host(false);
    if matches!(protocol, Protocol::H2c | Protocol::H2) {
        b.http2_only(true);
    }
    b.build(connector)
}
