//! How an attempt loop ends: an upstream response (its body streamed with the
//! upstream's idle timeout, the endpoint's in-flight count held until it is done), or
//! the typed error fusebox answers with and whether a fallback may answer instead.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Response};
use tokio::time::Instant;

use super::attempt::Sent;
use super::ctx::RequestCtx;
use super::error::{ErrorCode, ProxyError};
use super::resp_body::RespBody;
use crate::body::CallerFault;
use crate::snapshot::Route;
use crate::upstream::{Endpoint, Upstream};

/// How an attempt loop ended.
pub(crate) enum LoopEnd {
    /// An upstream response (success, or the last one when retries ran out).
    Response(Response<RespBody>),
    /// No response; `fallback` says whether a fallback may answer instead.
    Error { err: ProxyError, fallback: bool },
}

/// CIRCUIT_OPEN: no endpoint's breaker admits. `Retry-After` is the time until the
/// first one half-opens. An upstream without endpoints (DNS gave none yet) is a
/// connect failure, not an open circuit.
pub(super) fn all_open(
    route: &Route,
    up: &Upstream,
    slot: usize,
    eps: &[Arc<Endpoint>],
    headers: &HeaderMap,
    now: Instant,
    ctx: &mut RequestCtx,
) -> LoopEnd {
    if eps.is_empty() {
        return LoopEnd::Error {
            err: ProxyError::new(
                ErrorCode::UpstreamConnectFailed,
                "the upstream has no endpoints (DNS gave no address)",
            )
            .upstream(&up.name),
            fallback: true,
        };
    }
    if !std::mem::replace(&mut ctx.circuit_open_counted, true) {
        route.metrics.rejected_circuit_open.inc();
        if let Some(s) = &ctx.span {
            s.shed("circuit_open");
        }
    }
    // The first half-open among the breakers that will half-open: a forced-open one
    // never does, so it counts only when every one is forced (then its
    // `recovery_timeout`, a pace for retries while an operator holds them open).
    let (mut will_half_open, mut forced) = (None::<Duration>, None::<Duration>);
    for ep in eps {
        let (w, f) = ep
            .breakers(slot)
            .rejection(headers, now)
            .map_or((Duration::ZERO, false), |r| (r.retry_after, r.forced));
        let slot_min = if f { &mut forced } else { &mut will_half_open };
        *slot_min = Some(slot_min.map_or(w, |m| m.min(w)));
    }
    let wait = will_half_open.or(forced).unwrap_or(Duration::ZERO);
    // With `partition_by`, the endpoints may be open only for this request's key.
    let for_key = eps
        .iter()
        .any(|ep| ep.breakers(slot).main().rejection(now).is_none());
    let msg = if for_key {
        format!(
            "all endpoints of upstream '{}' are open for this request's partition key",
            up.name
        )
    } else {
        format!("all endpoints of upstream '{}' are open", up.name)
    };
    LoopEnd::Error {
        err: ProxyError::new(ErrorCode::CircuitOpen, msg)
            .upstream(&up.name)
            .retry_after(wait.max(Duration::from_secs(1))),
        fallback: true,
    }
}

pub(super) fn finish(
    sent: Sent,
    in_flight: crate::upstream::InFlight,
    up: &Upstream,
    ctx: &mut RequestCtx,
) -> LoopEnd {
    match sent {
        Sent::Response(r, lease) => {
            let (p, b) = r.into_parts();
            if ctx.grpc {
                // A trailers-only answer's status; a streamed one's comes with its trailers.
                ctx.grpc_status = super::attempt::grpc_status_of(&p.headers);
            }
            ctx.in_flight = Some(in_flight);
            LoopEnd::Response(Response::from_parts(
                p,
                RespBody::upstream(b, lease, up.cfg.timeouts.idle),
            ))
        }
        Sent::Failed(_, err) => LoopEnd::Error {
            err,
            fallback: true,
        },
    }
}

/// The caller's own body broke the attempt: its error, naming the upstream it was
/// routed to (as every error after routing does).
pub(super) fn caller_fault(fault: CallerFault, up: &Upstream) -> ProxyError {
    let err = match fault {
        CallerFault::TooLarge => {
            ProxyError::new(ErrorCode::RequestTooLarge, "request body is over the limit")
        }
        CallerFault::Stalled => ProxyError::new(
            ErrorCode::RequestTimeout,
            "the request body stopped arriving for the upstream's idle timeout",
        ),
        CallerFault::Broken => ProxyError::new(
            ErrorCode::BadRequest,
            "the request body could not be read: the caller closed or reset it before its end, or its chunked framing is malformed",
        ),
    };
    err.upstream(&up.name)
}

pub(super) fn deadline_exceeded(route: &Route, up: &Upstream, ctx: &RequestCtx) -> ProxyError {
    let message = if ctx.caller_deadline {
        format!(
            "the caller's deadline of {:?} passed",
            ctx.deadline.saturating_duration_since(ctx.started)
        )
    } else {
        format!(
            "route '{}' deadline of {:?} passed",
            route.name, route.cfg.timeout
        )
    };
    ProxyError::new(ErrorCode::DeadlineExceeded, message).upstream(&up.name)
}
