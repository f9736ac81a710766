//! One attempt: build the upstream request from the caller's (the same headers and
//! body every attempt; the time left as `grpc-timeout` / `x-request-timeout-ms`), send
//! it over the endpoint's pool within the per-attempt timeout, and say how it ended as
//! an [`Outcome`] for the classifier, with the typed error fusebox would answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{HOST, RETRY_AFTER};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, Uri, Version};
use hyper::body::Incoming;

use super::classify::Outcome;
use super::error::{ErrorCode, ProxyError};
use crate::body::{BodyShared, ReplaySource, ReqBody};
use crate::config::Protocol;
use crate::upstream::pool::{Lease, LeaseMark};
use crate::upstream::retry::parse_retry_after;
use crate::upstream::{Endpoint, Upstream};
use tokio::time::Instant;

pub static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static X_REQUEST_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-request-timeout-ms");

/// What every attempt of one request sends.
#[derive(Debug)]
pub struct Outbound<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub pq: &'a PathAndQuery,
    pub body: Option<&'a Arc<ReplaySource>>,
    /// A gRPC call (gRPC-shaped answers, `grpc-status`).
    pub grpc: bool,
    /// The caller's own deadline, sent on as the time left in `grpc-timeout` (gRPC).
    /// The route's `timeout` bounds the wait for response headers, not the call, so
    /// it is not sent: a streaming call would be cut mid-stream by the upstream.
    pub caller_deadline: Option<tokio::time::Instant>,
    /// Send the time left as `x-request-timeout-ms` (route `propagate_deadline`, or
    /// the caller sent one: it is rewritten to what is left).
    pub propagate_deadline: bool,
}

/// How one attempt ended.
#[derive(Debug)]
pub enum Sent {
    /// Response headers arrived; an HTTP/1 connection rides along in its lease.
    Response(Response<Incoming>, Option<Lease>),
    /// No response: what happened, and the error fusebox answers with if it is last.
    Failed(Outcome, ProxyError),
}

impl Sent {
    /// The outcome for the classifier (`grpc`: read the `grpc-status` of a
    /// trailers-only answer).
    pub fn outcome(&self, grpc: bool) -> Outcome {
        match self {
            Sent::Response(r, _) => {
                let status = r.status().as_u16();
                let retry_after = matches!(status, 429 | 503)
                    .then(|| r.headers().get(RETRY_AFTER))
                    .flatten()
                    .and_then(|v| parse_retry_after(v, SystemTime::now()));
                Outcome::Response {
                    status,
                    grpc_status: if grpc {
                        grpc_status_of(r.headers())
                    } else {
                        None
                    },
                    retry_after,
                }
            }
            Sent::Failed(o, _) => *o,
        }
    }
}

/// A `grpc-timeout` value (`1-8 digits` + `H M S m u n`) as a duration.
pub fn parse_grpc_timeout(v: &HeaderValue) -> Option<Duration> {
    let b = v.as_bytes();
    if b.len() < 2 || b.len() > 9 {
        return None;
    }
    let (digits, unit) = b.split_at(b.len() - 1);
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit[0] {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// An `x-request-timeout-ms` value: 1-12 digits of milliseconds.
pub fn parse_timeout_ms(v: &HeaderValue) -> Option<Duration> {
    let b = v.as_bytes();
    if b.is_empty() || b.len() > 12 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(b).ok()?.parse().ok()?;
    Some(Duration::from_millis(n))
}

/// The time left, as milliseconds in a header value (at least 1).
pub fn millis_value(left: Duration, suffix: &str) -> HeaderValue {
    let ms = left.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{ms}{suffix}"))
        .unwrap_or_else(|_| HeaderValue::from_static("1"))
}

/// The `grpc-status` of a trailers-only response (status in the headers).
pub fn grpc_status_of(h: &HeaderMap) -> Option<u8> {
    h.get(&GRPC_STATUS)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok()?.parse().ok())
}

/// The clocks of the wait for response headers while the caller may still be sending
/// its body. The attempt's `timeouts.request` and the route's `timeout` count from the
/// end of the caller's body, as Envoy's route timeout does: an upload or a
/// client-streaming call longer than them is not cut (nor charged to the endpoint,
/// which cannot answer before it has the stream) while bytes keep arriving. A body
/// silent for `timeouts.idle` stops holding them; the caller's own deadline is never
/// moved.
pub struct BodyClock<'a> {
    pub body: &'a BodyShared,
    /// The upstream's `timeouts.request`, `timeouts.idle`, and the route's `timeout`.
    pub request: Duration,
    pub idle: Duration,
    pub route: Duration,
    /// The caller's own deadline, if it gave one.
    pub caller: Option<Instant>,
}

impl BodyClock<'_> {
    /// When the wait that first ends at `t` really ends, asked at `now` when `t` came:
    /// `None` when it is over; with `true` when the deadline, not the attempt's own
    /// timeout, ends it. `seen` is the body's byte count at the last look.
    fn extend(&self, now: Instant, seen: &mut u64) -> Option<(Instant, bool)> {
        let (next, capped) = match self.body.ended_at.get() {
            Some(&end) => {
                let capped = self.route < self.request;
                (end + self.request.min(self.route), capped)
            }
            None => {
                let bytes = self.body.bytes_in.load(Ordering::Relaxed);
                if bytes == *seen {
                    return None; // silent (or not read by the upstream): time is up
                }
                *seen = bytes;
                (now + self.idle, false)
            }
        };
        let (next, capped) = match self.caller {
            Some(c) if c <= next => (c, true),
            _ => (next, capped),
        };
        (next > now).then_some((next, capped))
    }
}

/// Why the wait for an attempt's response headers woke.
enum Woke {
    Leased,
    Timer,
    BodyEnd,
}

/// Sends one attempt to `ep` with `timeout` for its response headers; `capped` says
/// the timeout was cut short by the deadline (`left` is the time before it). With
/// `clock`, a caller's body still arriving holds the timeout (see [`BodyClock`]).
#[allow(clippy::too_many_arguments)]
pub async fn send_once(
    up: &Upstream,
    ep: &Endpoint,
    out: &Outbound<'_>,
    timeout: Duration,
    mut capped: bool,
    left: Duration,
    traceparent: Option<HeaderValue>,
    clock: Option<&BodyClock<'_>>,
) -> Sent {
    let req = match build(up, ep, out, left, traceparent) {
        Ok(r) => r,
        Err(e) => return Sent::Failed(Outcome::Unsendable, e),
    };
    let pool = ep.core.pool.load_full();
    // `timeouts.request` is the upstream's time to answer: it starts once the request
    // has its connection. A wait for one of fusebox's own `max_connections_per_host`
    // connections is bounded by the connect timeout (in the pool) and the deadline,
    // and charged to nobody: ended by the deadline it is `DEADLINE_EXCEEDED`, not a
    // timeout of the endpoint (which never saw the request).
    let mark = LeaseMark::default();
    let send = pool.send(req, &mark);
    tokio::pin!(send);
    let started = Instant::now();
    let deadline = started + left;
    let request = up.cfg.timeouts.request;
    let clock = clock.filter(|c| c.body.ended_at.get().is_none());
    let mut seen = clock.map_or(0, |c| c.body.bytes_in.load(Ordering::Relaxed));
    let mut until = started + timeout;
    let sleep = tokio::time::sleep_until(until);
    tokio::pin!(sleep);
    // Listening for a lease after a wait (the timer came before it).
    let mut lease_watch = false;
    let mut rearmed = false;
    let mut pool_wait_over = false;
    let answer = loop {
        // Registered before the look at `ended_at` (in `extend`), so an end between
        // the two is not missed.
        let ended = clock.map(|c| c.body.end_signal.notified());
        tokio::pin!(ended);
        if let Some(n) = ended.as_mut().as_pin_mut() {
            n.enable();
        }
        let woke = tokio::select! {
            biased;
            r = &mut send => break Some(r),
            _ = mark.leased(), if lease_watch => Woke::Leased,
            _ = &mut sleep => Woke::Timer,
            _ = async { ended.as_mut().as_pin_mut().unwrap().await }, if clock.is_some() => Woke::BodyEnd,
        };
        let now = Instant::now();
        // Had its connection after a wait: `timeouts.request` counts from then.
        if !rearmed {
            if let Some(at) = mark.after_wait() {
                rearmed = true;
                lease_watch = false;
                let next = (at + request).min(deadline);
                if next > now {
                    until = next;
                    capped = at + request > deadline;
                    sleep.as_mut().reset(until);
                    continue;
                }
            }
        }
        if matches!(woke, Woke::Leased) {
            continue;
        }
        if !mark.is_leased() {
            if matches!(woke, Woke::BodyEnd) {
                continue;
            }
            if capped || now >= deadline {
                pool_wait_over = true;
                break None;
            }
            // `timeouts.request` would end here but has not started: wait on for the
            // connection (the pool bounds that by the connect timeout), until the
            // deadline at most, and count from the lease.
            until = deadline;
            capped = true;
            lease_watch = true;
            sleep.as_mut().reset(until);
            continue;
        }
        if matches!(woke, Woke::BodyEnd) && clock.is_some_and(|c| c.body.ended_at.get().is_none()) {
            continue;
        }
        let Some(clock) = clock else { break None };
        match clock.extend(now, &mut seen) {
            Some((next, c)) => {
                until = next;
                capped = c;
                sleep.as_mut().reset(until);
            }
            None => break None,
        }
    };
    if pool_wait_over {
        return Sent::Failed(
            Outcome::PoolExhausted,
            ProxyError::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "the request's deadline passed while waiting for a connection to {} (max_connections_per_host, all busy)",
                    ep.key
                ),
            )
            .upstream(&up.name),
        );
    }
    match answer.ok_or(()) {
        Ok(Ok((resp, _))) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
            // The caller's `Upgrade` was removed as hop-by-hop, so nothing asked for a
            // new protocol: relaying the 101 would leave the caller on a connection
            // that carries nothing (fusebox does not proxy upgrades).
            Sent::Failed(
                Outcome::Reset,
                ProxyError::new(
                    ErrorCode::UpstreamReset,
                    format!(
                        "{} answered 101 Switching Protocols; fusebox does not proxy protocol upgrades",
                        ep.key
                    ),
                )
                .upstream(&up.name),
            )
        }
        Ok(Ok((resp, lease))) => Sent::Response(resp, lease),
        Err(_) if capped => Sent::Failed(
            Outcome::Timeout { capped: true },
            ProxyError::new(
                ErrorCode::DeadlineExceeded,
                "the request's deadline passed while waiting for the upstream",
            )
            .upstream(&up.name),
        ),
        Err(_) => Sent::Failed(
            Outcome::Timeout { capped: false },
            ProxyError::new(
                ErrorCode::UpstreamTimeout,
                format!("no response headers from {} within {:?}", ep.key, timeout),
            )
            .upstream(&up.name),
        ),
        Ok(Err(e)) => {
            let msg = format!("{}: {}", ep.key, error_chain(&e));
            let (outcome, code) = if e.is_pool_exhausted() {
                (Outcome::PoolExhausted, ErrorCode::UpstreamConnectFailed)
            } else if e.is_draining() {
                (Outcome::Draining, ErrorCode::UpstreamConnectFailed)
            } else if e.is_connect() {
                (Outcome::ConnectFailed, ErrorCode::UpstreamConnectFailed)
            } else {
                (Outcome::Reset, ErrorCode::UpstreamReset)
            };
            Sent::Failed(
                outcome,
                ProxyError::new(code, msg).upstream(&up.name).source(e),
            )
        }
    }
}

/// The upstream request of one attempt.
fn build(
    up: &Upstream,
    ep: &Endpoint,
    out: &Outbound<'_>,
    left: Duration,
    traceparent: Option<HeaderValue>,
) -> Result<http::Request<ReqBody>, ProxyError> {
    let http2 = matches!(up.cfg.protocol, Protocol::H2c | Protocol::H2);
    // HTTP/1.1 sends the origin form (`/path?q`); HTTP/2 needs scheme and authority for
    // its pseudo-headers.
    let uri = if http2 {
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(if up.cfg.protocol == Protocol::H2 {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        // The caller's authority, as an HTTP/1.1 upstream gets it in `Host` (RFC 9113
        // 8.3.1: an intermediary builds `:authority` from the request's, and sends no
        // `Host` that differs from it; strict servers refuse a mismatch). The
        // endpoint's address when the caller gave none usable.
        let caller = out
            .headers
            .get(HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok());
        uri.authority = Some(caller.unwrap_or_else(|| ep.authority.clone()));
        uri.path_and_query = Some(out.pq.clone());
        Uri::from_parts(uri)
            .map_err(|_| ProxyError::new(ErrorCode::BadRequest, "cannot build upstream URI"))?
    } else {
        Uri::from(out.pq.clone())
    };
    let mut req = http::Request::new(match out.body {
        Some(src) => ReqBody::Replay(src.attempt()),
        None => ReqBody::Empty,
    });
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *req.headers_mut() = out.headers.clone();
    if http2 {
        req.headers_mut().remove(HOST); // carried as `:authority`
    } else if !out.headers.contains_key(HOST) {
        // An HTTP/1.0 caller may send no Host; an HTTP/1.1 upstream needs one.
        if let Ok(v) = HeaderValue::from_str(ep.authority.as_str()) {
            req.headers_mut().insert(HOST, v);
        }
    }
    if out.grpc {
        match out.caller_deadline {
            Some(at) => {
                let left = at.saturating_duration_since(tokio::time::Instant::now());
                req.headers_mut()
                    .insert(GRPC_TIMEOUT.clone(), millis_value(left, "m"));
            }
            // A caller's `grpc-timeout` that could not be read is not passed on.
            None => {
                req.headers_mut().remove(&GRPC_TIMEOUT);
            }
        }
    }
    if out.propagate_deadline {
        req.headers_mut()
            .insert(X_REQUEST_TIMEOUT_MS.clone(), millis_value(left, ""));
    }
    if let Some(tp) = traceparent {
        // The attempt span's id: the model server's spans nest under this attempt.
        req.headers_mut()
            .insert(crate::proxy::correlate::TRACEPARENT.clone(), tp);
    }
    Ok(req)
}

/// The path and query sent upstream: `strip_prefix` removed when the path starts with
/// it (an emptied path becomes `/`).
pub fn upstream_path(uri: &Uri, strip: Option<&str>) -> Result<PathAndQuery, ProxyError> {
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let Some(strip) = strip else { return Ok(pq) };
    let strip = strip.trim_end_matches('/');
    let path = pq.path();
    let Some(rest) = path.strip_prefix(strip) else {
        return Ok(pq);
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Ok(pq); // `/detect` does not strip from `/detection`
    }
    let mut s = String::with_capacity(pq.as_str().len());
    s.push_str(if rest.is_empty() { "/" } else { rest });
    if let Some(q) = pq.query() {
        s.push('?');
        s.push_str(q);
    }
    PathAndQuery::try_from(s)
        .map_err(|_| ProxyError::new(ErrorCode::BadRequest, "path invalid after strip_prefix"))
}

/// "outer: inner: innermost", for error messages.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Many errors print their cause in their own message already: said once.
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_already_in_the_message_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("inner failure")]
        struct Inner;
        #[derive(Debug, thiserror::Error)]
        #[error("handshake failed: {0}")]
        struct Embeds(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("connect failed")]
        struct Plain(#[source] Inner);
        assert_eq!(
            error_chain(&Embeds(Inner)),
            "handshake failed: inner failure"
        );
        assert_eq!(error_chain(&Plain(Inner)), "connect failed: inner failure");
    }

    #[test]
    fn strip_prefix_rewrites_path_and_keeps_query() {
        let u: Uri = "/detect/v1/x?a=1".parse().unwrap();
        assert_eq!(upstream_path(&u, Some("/detect")).unwrap(), "/v1/x?a=1");
        let u: Uri = "/detect".parse().unwrap();
        assert_eq!(upstream_path(&u, Some("/detect/")).unwrap(), "/");
        let u: Uri = "/detection".parse().unwrap();
        assert_eq!(upstream_path(&u, Some("/detect")).unwrap(), "/detection");
        assert_eq!(upstream_path(&u, None).unwrap(), "/detection");
    }

    #[test]
    fn grpc_timeout_units() {
        let p = |s: &'static str| parse_grpc_timeout(&HeaderValue::from_static(s));
        assert_eq!(p("100m"), Some(Duration::from_millis(100)));
        assert_eq!(p("2S"), Some(Duration::from_secs(2)));
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("5u"), Some(Duration::from_micros(5)));
        assert_eq!(p("123456789m"), None);
        assert_eq!(p("m"), None);
        assert_eq!(p("1x"), None);
        assert_eq!(millis_value(Duration::from_micros(10), "m"), "1m");
    }

    #[test]
    fn request_timeout_ms_values() {
        let p = |s: &'static str| parse_timeout_ms(&HeaderValue::from_static(s));
        assert_eq!(p("250"), Some(Duration::from_millis(250)));
        assert_eq!(p("0"), Some(Duration::ZERO));
        assert_eq!(p(""), None);
        assert_eq!(p("-5"), None);
        assert_eq!(p("1.5"), None);
        assert_eq!(p("9999999999999"), None);
    }
}
