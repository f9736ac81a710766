//! An HTTP/2-only upstream (prior knowledge, or h2 over rustls) that advertises a
//! chosen `SETTINGS_MAX_CONCURRENT_STREAMS`, holds every request until the test
//! releases them, and counts the TCP connections it accepted and the requests it holds
//! on each: what a gRPC model server with a stream limit looks like to the pool.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::body::full;
use super::upstream::Gate;

#[derive(Default)]
struct Counts {
    connections: AtomicUsize,
    closed: AtomicUsize,
    /// Requests inside the handler now, per connection (index = accept order).
    held: Mutex<Vec<usize>>,
    served: AtomicUsize,
}

/// A running HTTP/2 upstream. Dropping it stops accepting.
pub struct H2Upstream {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    gate: Gate,
    accept: JoinHandle<()>,
}

impl Drop for H2Upstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl H2Upstream {
    /// h2c on 127.0.0.1:0. `max_streams`: the limit its SETTINGS advertise (`None`:
    /// the frame carries no limit at all).
    pub async fn h2c(max_streams: Option<u32>) -> H2Upstream {
        Self::start(max_streams, None).await
    }

    /// h2 over TLS (`config` must offer `h2` by ALPN).
    pub async fn tls(max_streams: Option<u32>, config: Arc<ServerConfig>) -> H2Upstream {
        Self::start(max_streams, Some(TlsAcceptor::from(config))).await
    }

    async fn start(max_streams: Option<u32>, tls: Option<TlsAcceptor>) -> H2Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind h2 upstream");
        let addr = listener.local_addr().expect("upstream address");
        let counts = Arc::new(Counts::default());
        let gate = Gate::new();
        let (c, g) = (counts.clone(), gate.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let idx = {
                    let mut held = c.held.lock().unwrap();
                    held.push(0);
                    held.len() - 1
                };
                c.connections.fetch_add(1, Ordering::SeqCst);
                let (c, g, tls) = (c.clone(), g.clone(), tls.clone());
                tokio::spawn(async move {
                    match tls {
                        None => serve(tcp, idx, max_streams, c.clone(), g).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, idx, max_streams, c.clone(), g).await;
                            }
                        }
                    }
                    c.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        H2Upstream {
            addr,
            counts,
            gate,
            accept,
        }
    }

    /// Lets every held request (and every later one) be answered.
    pub fn release(&self) {
        self.gate.open();
    }

    /// TCP connections accepted.
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::SeqCst)
    }

    /// Connections that have ended.
    pub fn closed(&self) -> usize {
        self.counts.closed.load(Ordering::SeqCst)
    }

    /// Requests held in the handler now, per connection in accept order.
    pub fn held_per_connection(&self) -> Vec<usize> {
        self.counts.held.lock().unwrap().clone()
    }

    /// Requests held in the handler now.
    pub fn held(&self) -> usize {
        self.held_per_connection().iter().sum()
    }

    /// Requests answered.
    pub fn served(&self) -> usize {
        self.counts.served.load(Ordering::SeqCst)
    }
}

async fn serve<I>(io: I, idx: usize, max_streams: Option<u32>, c: Arc<Counts>, gate: Gate)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |_req: Request<Incoming>| {
        let (c, gate) = (c.clone(), gate.clone());
        async move {
            c.held.lock().unwrap()[idx] += 1;
            gate.wait().await;
            c.held.lock().unwrap()[idx] -= 1;
            c.served.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(Response::new(full(format!("conn {idx}"))))
        }
    });
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.max_concurrent_streams(max_streams);
    let _ = builder.serve_connection(TokioIo::new(io), svc).await;
}

impl std::fmt::Debug for H2Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Upstream")
            .field("addr", &self.addr)
            .finish()
    }
}
