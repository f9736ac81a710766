//! The one place where an attempt's outcome is judged: [`classify`] turns how an
//! attempt ended ([`Outcome`]), what the request is ([`Facts`]) and the policies into a
//! [`Verdict`] that the breakers, the retry decision and the retry metrics all read
//! (linkerd's `linkerd-http-classify` and Envoy's response flags, in one pure
//! function). The attempt loop only carries the verdict out: it never re-derives a
//! rule. The table test below names the DESIGN sentence each case proves.

use std::time::Duration;

use crate::body::CallerFault;
use crate::config::{BreakerConfig, RetryConfig};

/// gRPC DEADLINE_EXCEEDED: when the deadline was the caller's own, the upstream's
/// saying so says nothing about its health.
const GRPC_DEADLINE_EXCEEDED: u8 = 4;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Response headers arrived (`grpc_status` of a trailers-only gRPC answer;
    /// `retry_after` of a 429 or 503).
    Response {
        status: u16,
        grpc_status: Option<u8>,
        retry_after: Option<Duration>,
    },
    /// Nothing reached the upstream: connect refused or timed out, TLS or HTTP
    /// handshake failed.
    ConnectFailed,
    /// No pooled connection came free within the connect timeout: fusebox's own
    /// `max_connections_per_host` cap, not the endpoint's fault. Nothing was sent.
    PoolExhausted,
    /// An HTTP/2 upstream shutting down gracefully (`GOAWAY` with `NO_ERROR`) did not
    /// process the request: retried, and no fault of the endpoint.
    Draining,
    /// The request was sent (at least in part) and the connection reset or broke the
    /// protocol before a response.
    Reset,
    /// No response headers within the per-attempt timeout; `capped` when that timeout
    /// was cut short by the time left before the request's deadline.
    Timeout { capped: bool },
    /// The caller's own body broke the attempt (over `max_request_body`, or stalled).
    CallerBody(CallerFault),
    /// fusebox could not build the upstream request (nothing was sent).
    Unsendable,
}

/// What the request is, as far as the rules care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// An idempotent method, an `Idempotency-Key`, or `retry_non_idempotent = true`.
    pub retry_any_failure: bool,
    pub grpc: bool,
    /// The request goes through a partition key's breaker as well as the endpoint's.
    pub keyed: bool,
    /// The deadline is the caller's own (`grpc-timeout` / `x-request-timeout-ms`
    /// shorter than the route's timeout).
    pub caller_deadline: bool,
}

/// What a breaker records of the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    Success,
    Failure,
    /// Nothing: the permit is released as if cancelled.
    Ignore,
}

/// Why an attempt is retried (the `reason` label of `gateway_proxy_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    ConnectFailure,
    Timeout,
    Reset,
    Status(u16),
    Grpc(u8),
}

impl RetryReason {
    /// The label, for logs and spans (metrics use handles resolved at build time).
    pub fn label(self) -> std::borrow::Cow<'static, str> {
        match self {
            RetryReason::ConnectFailure => "connect_failure".into(),
            RetryReason::Timeout => "timeout".into(),
            RetryReason::Reset => "reset".into(),
            RetryReason::Status(s) => format!("status_{s}").into(),
            RetryReason::Grpc(g) => format!("grpc_{g}").into(),
        }
    }
}

/// The judgement of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// For the endpoint's own breaker.
    pub endpoint: Record,
    /// For the partition key's breaker (`Ignore` when the request has no key).
    pub key: Record,
    /// Whether the endpoint's breaker should judge the attempt's duration (slow calls
    /// count per key for keyed requests).
    pub endpoint_counts_slow: bool,
    /// `Some`: the rules allow a retry (budget, backoff, attempts left and a
    /// replayable body are the loop's to check).
    pub retry: Option<RetryReason>,
    /// A retry should go to another endpoint when there is one.
    pub prefer_other: bool,
    /// `Retry-After` of a 429/503: the wait before the retry, when it fits.
    pub retry_after: Option<Duration>,
    /// `Retry-After` of a 503: lengthens the open time if this failure opens a breaker.
    pub breaker_retry_after: Option<Duration>,
}

/// Judges one attempt.
pub fn classify(
    outcome: Outcome,
    facts: Facts,
    breaker: &BreakerConfig,
    retry: &RetryConfig,
) -> Verdict {
    let mut v = Verdict {
        endpoint: Record::Ignore,
        key: Record::Ignore,
        endpoint_counts_slow: !facts.keyed,
        retry: None,
        prefer_other: true,
        retry_after: None,
        breaker_retry_after: None,
    };
    // A per-key judgement: on the key's breaker when keyed, else on the endpoint's.
    let per_key = |v: &mut Verdict, r: Record| {
        if facts.keyed {
            v.key = r;
            // The endpoint answered (or was merely slow): it is reachable.
            v.endpoint = if r == Record::Ignore {
                Record::Ignore
            } else {
                Record::Success
            };
        } else {
            v.endpoint = r;
        }
    };
    match outcome {
        Outcome::Response {
            status,
            grpc_status,
            retry_after,
        } => {
            let caller_deadline_grpc =
                facts.caller_deadline && grpc_status == Some(GRPC_DEADLINE_EXCEEDED);
            let grpc_failure =
                facts.grpc && grpc_status.is_some_and(|g| breaker.failure_grpc_codes.contains(&g));
            let failure = breaker.failure_status_codes.contains(&status) || grpc_failure;
            let record = match (caller_deadline_grpc, failure) {
                (true, _) => Record::Ignore,
                (false, true) => Record::Failure,
                (false, false) => Record::Success,
            };
            per_key(&mut v, record);
            if matches!(status, 429 | 503) {
                v.retry_after = retry_after;
            }
            if status == 503 {
                v.breaker_retry_after = retry_after;
            }
            let grpc_retry = grpc_status
                .filter(|g| facts.grpc && retry.retry_grpc_codes.contains(g))
                .map(RetryReason::Grpc);
            let status_retry = (facts.retry_any_failure
                && retry.retry_status_codes.contains(&status))
            .then_some(RetryReason::Status(status));
            v.retry = grpc_retry.or(status_retry);
        }
        Outcome::ConnectFailed => {
            v.endpoint = Record::Failure;
            v.retry = Some(RetryReason::ConnectFailure);
        }
        Outcome::PoolExhausted | Outcome::Draining => {
            v.retry = Some(RetryReason::ConnectFailure);
        }
        Outcome::Reset => {
            v.endpoint = Record::Failure;
            v.retry = facts.retry_any_failure.then_some(RetryReason::Reset);
        }
        Outcome::Timeout { capped } => {
            if capped && facts.caller_deadline {
                return v;
            }
            // Per key: a slow answer for one camera's frames says little about the
            // endpoint, which may be serving every other key in time.
            if facts.keyed {
                v.key = Record::Failure;
            } else {
                v.endpoint = Record::Failure;
            }
            v.retry = (facts.retry_any_failure && !capped).then_some(RetryReason::Timeout);
        }
        Outcome::CallerBody(_) | Outcome::Unsendable => {}
    }
    v
}

#[cfg(test)]
mod tests;
