//! What answers when no attempt could succeed (DESIGN, *Fallback*: every endpoint's
//! breaker is open, or the last attempt failed without an HTTP response): the
//! upstream's static answer, or a second upstream tried with its own retry policy and
//! breakers. Either is tagged `x-fusebox-fallback`. gRPC callers get no static body
//! (it is not a gRPC message): they get the gRPC-shaped error.

use http::{HeaderName, HeaderValue, Response};

use super::attempt::Outbound;
use super::classify::Facts;
use super::ctx::RequestCtx;
use super::ending::LoopEnd;
use super::error::{ErrorCode, ProxyError};
use super::forward::attempts;
use super::resp_body::RespBody;
use crate::config::FallbackConfig;
use crate::snapshot::Route;

static X_FUSEBOX_FALLBACK: HeaderName = HeaderName::from_static("x-fusebox-fallback");

/// The fallback's answer for `err`, or `err` itself when no fallback applies.
pub(super) async fn answer(
    route: &Route,
    err: ProxyError,
    allowed: bool,
    out: &Outbound<'_>,
    facts: Facts,
    ctx: &mut RequestCtx,
) -> Result<Response<RespBody>, ProxyError> {
    let up = &route.upstream;
    if !allowed || ctx.body.caller_fault().is_some() {
        return Err(err);
    }
    match &up.cfg.fallback {
        None => Err(err),
        Some(FallbackConfig::Static { .. }) if ctx.grpc => Err(err),
        Some(FallbackConfig::Static {
            status,
            content_type,
            body,
        }) => {
            up.metrics.fallback_static.inc();
            ctx.error_code = Some(err.code);
            if let Some(s) = &ctx.span {
                s.fallback("static", None);
            }
            let mut r = Response::new(RespBody::full(body.clone()));
            *r.status_mut() = *status;
            r.headers_mut()
                .insert(http::header::CONTENT_TYPE, content_type.clone());
            r.headers_mut().insert(
                X_FUSEBOX_FALLBACK.clone(),
                HeaderValue::from_static("static"),
            );
            Ok(r)
        }
        Some(FallbackConfig::Upstream(_)) => {
            let Some(fb) = route.fallback.as_ref() else {
                return Err(err);
            };
            if out.body.is_some_and(|b| !b.can_replay()) {
                return Err(err);
            }
            // A request the primary may have carried out (it timed out or reset after
            // the request was sent) goes to the fallback upstream only when a retry
            // would be allowed: idempotent, `Idempotency-Key`, `retry_non_idempotent`.
            // What was never sent (connect failure, every breaker open) always may.
            let maybe_processed = matches!(
                err.code,
                ErrorCode::UpstreamTimeout | ErrorCode::UpstreamReset | ErrorCode::DeadlineExceeded
            );
            if maybe_processed && !facts.retry_any_failure {
                return Err(err);
            }
            // No time left for another upstream: the deadline's answer.
            if tokio::time::Instant::now() >= ctx.deadline {
                return Err(err);
            }
            up.metrics.fallback_upstream.inc();
            ctx.error_code = Some(err.code);
            if let Some(s) = &ctx.span {
                s.fallback("upstream", Some(&fb.upstream.name));
            }
            ctx.upstream = Some(fb.upstream.name.clone());
            match attempts(route, &fb.upstream, 0, &fb.retry, out, facts, ctx).await {
                LoopEnd::Response(mut r) => {
                    r.headers_mut().insert(
                        X_FUSEBOX_FALLBACK.clone(),
                        HeaderValue::from_static("upstream"),
                    );
                    Ok(r)
                }
                // The fallback upstream failed too: its error, marked as the answer
                // of a fallback, so a caller can tell it from the primary's.
                LoopEnd::Error { err, .. } => {
                    ctx.error_code = Some(err.code);
                    let mut r =
                        err.to_response(ctx.grpc, &ctx.ids.request_id, &ctx.ids.correlation_id);
                    r.headers_mut().insert(
                        X_FUSEBOX_FALLBACK.clone(),
                        HeaderValue::from_static("upstream"),
                    );
                    Ok(r)
                }
            }
        }
    }
}
