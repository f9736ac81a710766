//! The admin listener (never reachable through the data port): Prometheus metrics,
//! circuit breaker state and control, health probes and the active config.
//!
//! | endpoint | module |
//! | --- | --- |
//! | `GET /metrics` | here (gauges refreshed by `breakers::refresh_gauges`) |
//! | `GET /circuit_breakers`, `POST /circuit_breakers/...` | `breakers.rs` |
//! | `GET /health`, `/health/live`, `/health/ready` | here, with `breakers.rs` |
//! | `GET /config` | `config_view.rs` |
//! | `GET /stats/timeline` | `timeline/` (the status page's charts; its sampler) |
//!
//! `auth.rs` checks the bearer token, `respond.rs` writes the JSON answers.
//!
//! Mutating endpoints (`POST`) need `Authorization: Bearer <token>` when the config sets
//! `admin.token_env`; reads never do (`/config` redacts the token). Every mutation is
//! logged at warn level with the caller's address. Answers are JSON except `/metrics`;
//! errors are `{"error": {"code", "message", ...}}` like the data port's.
//!
//! Touched only by operators and probes, never per proxied request: everything here may
//! allocate freely.

mod auth;
mod breakers;
mod config_view;
mod respond;
pub mod timeline;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::control::Control;
use auth::authorized;
use breakers::Action;
use respond::{
    bad_encoding, error, json_compact_response, json_response, method_not_allowed, percent_decode,
    unauthorized,
};
use timeline::Timeline;

/// A slow admin client gets this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the admin API until `shutdown` turns true (or its sender is dropped); open
/// admin connections then finish the request they carry and close. `timeline` is what
/// [`timeline::start`] fills.
pub async fn serve(
    listener: TcpListener,
    ctrl: Arc<Control>,
    timeline: Arc<Timeline>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        tokio::spawn(serve_conn(
            stream,
            peer,
            (ctrl.clone(), timeline.clone()),
            builder.clone(),
            shutdown.clone(),
        ));
    }
}

async fn serve_conn(
    stream: TcpStream,
    peer: SocketAddr,
    (ctrl, timeline): (Arc<Control>, Arc<Timeline>),
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let (ctrl, timeline) = (ctrl.clone(), timeline.clone());
        async move { Ok::<_, Infallible>(handle(&ctrl, &timeline, &req, peer)) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %peer, error = %e, "admin connection ended with error");
                }
                return;
            }
            _ = shutdown.changed(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What a request path names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    Read(Read),
    /// A breaker mutation; `upstream` and `endpoint` are still URL-encoded.
    Mutate {
        upstream: &'a str,
        endpoint: Option<&'a str>,
        action: Action,
    },
}

/// The read-only endpoints (`GET`, `HEAD`).
#[derive(Debug, PartialEq, Eq)]
enum Read {
    /// The HTML status page (`GET /`).
    StatusPage,
    Metrics,
    Breakers,
    Health,
    Live,
    Ready,
    Config,
    /// The charts' per-second figures (`GET /stats/timeline[?seconds=N]`).
    Timeline,
}

fn parse_target(path: &str) -> Option<Target<'_>> {
    // One trailing slash is forgiven (`/health/` = `/health`).
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    let read = match path {
        "/" => Read::StatusPage,
        "/metrics" => Read::Metrics,
        "/circuit_breakers" => Read::Breakers,
        "/health" => Read::Health,
        "/health/live" => Read::Live,
        "/health/ready" => Read::Ready,
        "/config" => Read::Config,
        "/stats/timeline" => Read::Timeline,
        _ => {
            let rest = path.strip_prefix("/circuit_breakers/")?;
            let segs: Vec<&str> = rest.split('/').collect();
            let (upstream, endpoint, action) = match segs.as_slice() {
                [up, "reset"] => (*up, None, Action::Reset),
                [up, ep, "reset"] => (*up, Some(*ep), Action::Reset),
                [up, ep, "open"] => (*up, Some(*ep), Action::ForceOpen),
                _ => return None,
            };
            if upstream.is_empty() || endpoint.is_some_and(str::is_empty) {
                return None;
            }
            return Some(Target::Mutate {
                upstream,
                endpoint,
                action,
            });
        }
    };
    Some(Target::Read(read))
}

fn handle(
    ctrl: &Control,
    timeline: &Timeline,
    req: &Request<Incoming>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let method = req.method();
    match parse_target(req.uri().path()) {
        None => error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no admin endpoint at {}", req.uri().path()),
            &[],
        ),
        Some(Target::Read(_)) if method != Method::GET && method != Method::HEAD => {
            method_not_allowed(method, "GET, HEAD")
        }
        Some(Target::Read(read)) => answer_read(ctrl, timeline, read, req.uri().query()),
        Some(Target::Mutate { .. }) if method != Method::POST => method_not_allowed(method, "POST"),
        Some(Target::Mutate {
            upstream,
            endpoint,
            action,
        }) => {
            // The token is checked before the names: without it, nothing is revealed.
            let token = ctrl.snapshot().config.admin.token.clone();
            if authorized(token.as_deref(), req.headers()) {
                mutate(ctrl, upstream, endpoint, action, peer)
            } else {
                unauthorized(req, peer)
            }
        }
    }
}

/// The operator's status page: one self-contained HTML file (no external assets) that
/// refreshes itself from the JSON endpoints.
const STATUS_PAGE: &str = include_str!("../admin_status.html");

fn answer_read(
    ctrl: &Control,
    timeline: &Timeline,
    read: Read,
    query: Option<&str>,
) -> Response<Full<Bytes>> {
    let now = Instant::now();
    match read {
        Read::StatusPage => {
            let mut r = Response::new(Full::new(Bytes::from_static(STATUS_PAGE.as_bytes())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            r.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Read::Metrics => {
            breakers::refresh_gauges(&ctrl.snapshot(), now);
            let mut r = Response::new(Full::new(Bytes::from(ctrl.metrics.render())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(prometheus::TEXT_FORMAT),
            );
            r
        }
        Read::Breakers => {
            let view = breakers::view(&ctrl.snapshot(), now);
            json_response(StatusCode::OK, &Value::Object(view.upstreams))
        }
        Read::Health => {
            let snap = ctrl.snapshot();
            let view = breakers::view(&snap, now);
            // 200 in every case: callers read `status`. Probes use /health/live and
            // /health/ready, so a broken upstream never restarts or unroutes this pod.
            json_response(
                StatusCode::OK,
                &json!({
                    "status": view.health.as_str(),
                    "service": &*snap.service,
                    "config_version": snap.version,
                    "resilience_stats": {"circuit_breakers": view.upstreams},
                }),
            )
        }
        Read::Live => json_response(StatusCode::OK, &json!({"status": "alive"})),
        Read::Ready if ctrl.is_ready() => {
            json_response(StatusCode::OK, &json!({"status": "ready"}))
        }
        Read::Ready => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "not_ready"}),
        ),
        Read::Config => json_response(StatusCode::OK, &config_view::document(ctrl)),
        Read::Timeline => match timeline::seconds_param(query) {
            Ok(n) => json_compact_response(StatusCode::OK, &timeline.render(n, SystemTime::now())),
            Err(msg) => error(StatusCode::BAD_REQUEST, "BAD_REQUEST", msg, &[]),
        },
    }
}

/// Runs one breaker mutation (the caller checked method and token).
fn mutate(
    ctrl: &Control,
    up_raw: &str,
    ep_raw: Option<&str>,
    action: Action,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let Some(up_name) = percent_decode(up_raw) else {
        return bad_encoding(up_raw);
    };
    let ep_name = match ep_raw {
        None => None,
        Some(raw) => match percent_decode(raw) {
            Some(e) => Some(e),
            None => return bad_encoding(raw),
        },
    };
    let snap = ctrl.snapshot();
    match breakers::apply(&snap, &up_name, ep_name.as_deref(), action, Instant::now()) {
        Ok(done) => {
            tracing::warn!(
                event = "admin_action",
                action = action.as_str(),
                upstream = %up_name,
                endpoint = done.endpoint.as_deref().unwrap_or("*"),
                caller = %peer,
                changed = done.changed,
                "admin: circuit breaker {} by {peer}",
                action.as_str()
            );
            json_response(
                StatusCode::OK,
                &json!({
                    "action": action.as_str(),
                    "upstream": up_name,
                    "endpoint": done.endpoint,
                    "changed": done.changed,
                    "circuit_breaker": done.upstream_view,
                }),
            )
        }
        Err(breakers::NotFound::Upstream) => error(
            StatusCode::NOT_FOUND,
            "UNKNOWN_UPSTREAM",
            format!("no upstream named '{up_name}'"),
            &[("upstream", &up_name)],
        ),
        Err(breakers::NotFound::Endpoint(known)) => {
            let ep = ep_name.unwrap_or_default();
            error(
                StatusCode::NOT_FOUND,
                "UNKNOWN_ENDPOINT",
                format!(
                    "upstream '{up_name}' has no endpoint '{ep}' (it has: {})",
                    known.join(", ")
                ),
                &[("upstream", &up_name), ("endpoint", &ep)],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let m = |upstream, endpoint, action| {
            Some(Target::Mutate {
                upstream,
                endpoint,
                action,
            })
        };
        assert_eq!(parse_target("/metrics"), Some(Target::Read(Read::Metrics)));
        assert_eq!(parse_target("/health/"), Some(Target::Read(Read::Health)));
        assert_eq!(
            parse_target("/circuit_breakers/"),
            Some(Target::Read(Read::Breakers))
        );
        assert_eq!(
            parse_target("/circuit_breakers/yolo/reset"),
            m("yolo", None, Action::Reset)
        );
        assert_eq!(
            parse_target("/circuit_breakers/yolo/127.0.0.1%3A9001/open"),
            m("yolo", Some("127.0.0.1%3A9001"), Action::ForceOpen)
        );
        assert_eq!(
            parse_target("/circuit_breakers/yolo/[::1]:9001/reset"),
            m("yolo", Some("[::1]:9001"), Action::Reset)
        );
        assert_eq!(parse_target("/circuit_breakers/yolo"), None);
        assert_eq!(parse_target("/circuit_breakers//reset"), None);
        assert_eq!(parse_target("/circuit_breakers/yolo//open"), None);
        assert_eq!(parse_target("/circuit_breakers/a/b/close"), None);
        assert_eq!(parse_target("/circuit_breakers/a/b/c/reset"), None);
        assert_eq!(parse_target("/"), Some(Target::Read(Read::StatusPage)));
        assert_eq!(parse_target("/metricsx"), None);
        assert_eq!(
            parse_target("/stats/timeline"),
            Some(Target::Read(Read::Timeline))
        );
        assert_eq!(parse_target("/stats"), None);
    }
}
