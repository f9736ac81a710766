//! The request path, as one straight line (see the crate docs for the diagram):
//! correlate -> admit -> route -> forward (attempt loop) -> respond. Each stage lives in
//! its own module; this one only strings them together and writes the outcome into the
//! request's [`Completion`] (access log).

pub mod admit;
pub mod body;
pub mod correlate;
pub mod error;
pub mod forward;
pub mod listener;
pub mod route;

use std::sync::Arc;

use http::header::CONTENT_LENGTH;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::access_log::{AccessLogger, AccessRecord, Completion};
use crate::snapshot::SnapshotCell;
use admit::FaultAction;
use body::{BodyShared, RespBody};
use correlate::{X_CAMERA_ID, X_ORG_ID};
use error::{ErrorCode, ProxyError};
use listener::ConnState;

/// What every request of the data listener shares. Per request: one snapshot load.
#[derive(Debug)]
pub struct Proxy {
    pub state: Arc<SnapshotCell>,
    pub logger: Arc<AccessLogger>,
}

/// gRPC callers get gRPC-shaped errors and keep `TE: trailers`.
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

impl Proxy {
    pub async fn handle(&self, req: Request<Incoming>, conn: Arc<ConnState>) -> Response<RespBody> {
        let started = Instant::now();
        conn.request_started();
        let snap = self.state.load_full(); // pin this config for the whole request
        let (mut parts, body) = req.into_parts();
        let grpc = is_grpc(&parts.headers);
        // correlate
        let ids =
            correlate::prepare_request(&mut parts.headers, &snap.headers, &conn.peer_ip, grpc);
        let shared = Arc::new(BodyShared::default());
        let logging = &snap.config.logging;
        let mut done = Box::new(Completion {
            started,
            record: AccessRecord {
                service: snap.service.clone(),
                route: None,
                upstream: None,
                endpoint: None,
                method: parts.method.clone(),
                uri: parts.uri.clone(),
                status: 0,
                attempts: 0,
                correlation_id: ids.correlation_id.clone(),
                request_id: ids.request_id.clone(),
                traceparent: Some(ids.traceparent.clone()),
                org_id: parts.headers.get(&X_ORG_ID).cloned(),
                camera_id: parts.headers.get(&X_CAMERA_ID).cloned(),
                error_code: None,
            },
            bytes_out: 0,
            body_error: false,
            body: shared.clone(),
            logger: logging
                .access_log
                .then(|| (self.logger.clone(), logging.format)),
            conn: Some(conn.clone()),
            in_flight: None,
            admission: None,
        });

        let mut route_hit = None;
        let result = async {
            // admit: a declared body over the cap is refused before reading it
            let max_body = snap.config.listener.max_request_body;
            if let Some(len) = parts.headers.get(CONTENT_LENGTH) {
                match len.to_str().ok().and_then(|s| s.parse::<u64>().ok()) {
                    Some(n) if n > max_body => {
                        return Err(ProxyError::new(
                            ErrorCode::RequestTooLarge,
                            format!("request body of {n} bytes is over the limit of {max_body}"),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        return Err(ProxyError::new(
                            ErrorCode::BadRequest,
                            "invalid content-length",
                        ))
                    }
                }
            }
            // route
            let idx = snap
                .router
                .find(&parts.method, &parts.uri, &parts.headers)
                .ok_or_else(|| {
                    ProxyError::new(ErrorCode::NoRoute, "no route matches this request")
                })?;
            let route = &snap.routes[idx];
            route_hit = Some(route);
            done.record.route = Some(route.name.clone());
            done.record.upstream = Some(route.upstream.name.clone());
            // admit: rate limit, concurrency, fault injection
            if let Some(rl) = &route.rate_limit {
                if let Err(wait) = rl.check(&parts.headers, conn.peer.ip(), started) {
                    route.metrics.rejected_rate_limited.inc();
                    return Err(
                        ProxyError::new(ErrorCode::RateLimited, "rate limit exceeded")
                            .upstream(&route.upstream.name)
                            .retry_after(wait),
                    );
                }
            }
            if let Some(c) = &route.concurrency {
                match c.acquire().await {
                    Ok(permit) => done.admission = Some(permit),
                    Err(wait) => {
                        route.metrics.rejected_overloaded.inc();
                        return Err(ProxyError::new(
                            ErrorCode::Overloaded,
                            "too many requests in flight",
                        )
                        .upstream(&route.upstream.name)
                        .retry_after(wait));
                    }
                }
            }
            route.metrics.in_flight.inc();
            let _gauge = GaugeGuard(&route.metrics.in_flight);
            if let Some(f) = &route.fault {
                match f.decide() {
                    FaultAction::None => {}
                    FaultAction::Delay(d) => {
                        route.metrics.fault_delay.inc();
                        tokio::time::sleep(d).await;
                    }
                    FaultAction::Abort(status) => {
                        route.metrics.fault_abort.inc();
                        return Ok(fault_response(status));
                    }
                }
            }
            // forward: attempts, breaker, timeouts, retries, fallback
            let body = body::LimitedIncoming::new(body, max_body, shared.clone());
            forward::send(route, parts, body, started, &mut done).await
        }
        .await;

        let mut resp = result.unwrap_or_else(|e| {
            done.record.error_code = Some(e.code.as_str());
            e.to_response(grpc, &ids.request_id, &ids.correlation_id)
        });
        correlate::stamp_response(resp.headers_mut(), &ids, done.record.error_code.is_none());
        done.record.status = resp.status().as_u16();
        if let Some(route) = route_hit {
            route.metrics.observe(
                &done.record.method,
                done.record.status,
                started.elapsed().as_secs_f64(),
            );
        }
        resp.body_mut().set_completion(done);
        resp
    }
}

/// Decrements a gauge on drop (in-flight requests of a route).
struct GaugeGuard<'a>(&'a prometheus::IntGauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The answer of an injected abort: the configured status, marked so nobody mistakes it
/// for a real upstream failure.
fn fault_response(status: http::StatusCode) -> Response<RespBody> {
    let mut r = Response::new(RespBody::full(bytes::Bytes::from_static(
        b"{\"error\": {\"code\": \"FAULT_INJECTED\", \"message\": \"fault injection aborted this request\"}}",
    )));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("x-fusebox-fault", http::HeaderValue::from_static("abort"));
    r
}
