//! The admin listener (never reachable through the data port): metrics, breaker state
//! and control, health probes, the active config.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::control::Control;

/// Serves the admin API until `shutdown` turns true.
pub async fn serve(listener: TcpListener, ctrl: Arc<Control>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let ctrl = ctrl.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let ctrl = ctrl.clone();
                async move { Ok::<_, Infallible>(handle(&ctrl, req, peer).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    ctrl: &Control,
    req: Request<Incoming>,
    _peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => text(StatusCode::OK, ctrl.metrics.render()),
        (&Method::GET, "/health/live") => text(StatusCode::OK, "ok".into()),
        (&Method::GET, "/health/ready") => {
            if ctrl.is_ready() {
                text(StatusCode::OK, "ready".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready".into())
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
