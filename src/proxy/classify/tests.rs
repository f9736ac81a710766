//! One case per sentence of DESIGN's *Failure*, *Breaker* (partitions) and *Retry*
//! paragraphs (and the contract lines about deadlines and the caller's faults): each
//! row names the sentence it proves.

use std::time::Duration;

use super::*;
use crate::config::{BreakerConfig, RetryConfig};

use Record::{Failure, Ignore, Success};

const GET: Facts = Facts {
    retry_any_failure: true,
    grpc: false,
    keyed: false,
    caller_deadline: false,
};
const POST: Facts = Facts {
    retry_any_failure: false,
    ..GET
};
const KEYED: Facts = Facts { keyed: true, ..GET };
const GRPC_POST: Facts = Facts { grpc: true, ..POST };
const CALLER: Facts = Facts {
    caller_deadline: true,
    ..GET
};

fn status(s: u16) -> Outcome {
    Outcome::Response {
        status: s,
        grpc_status: None,
        retry_after: None,
    }
}

fn grpc(g: u8) -> Outcome {
    Outcome::Response {
        status: 200,
        grpc_status: Some(g),
        retry_after: None,
    }
}

fn with_retry_after(s: u16, secs: u64) -> Outcome {
    Outcome::Response {
        status: s,
        grpc_status: None,
        retry_after: Some(Duration::from_secs(secs)),
    }
}

struct Case {
    sentence: &'static str,
    outcome: Outcome,
    facts: Facts,
    endpoint: Record,
    key: Record,
    retry: Option<RetryReason>,
}

const fn case(
    sentence: &'static str,
    outcome: Outcome,
    facts: Facts,
    endpoint: Record,
    key: Record,
    retry: Option<RetryReason>,
) -> Case {
    Case {
        sentence,
        outcome,
        facts,
        endpoint,
        key,
        retry,
    }
}

#[test]
fn every_design_sentence() {
    use RetryReason as R;
    let cases = [
        // Failure: "connect error or timeout, per-attempt timeout, connection reset or
        // protocol error, or a status in failure_status_codes".
        case(
            "Failure: connect error",
            Outcome::ConnectFailed,
            GET,
            Failure,
            Ignore,
            Some(R::ConnectFailure),
        ),
        case(
            "Failure: per-attempt timeout",
            Outcome::Timeout { capped: false },
            GET,
            Failure,
            Ignore,
            Some(R::Timeout),
        ),
        case(
            "Failure: connection reset or protocol error",
            Outcome::Reset,
            GET,
            Failure,
            Ignore,
            Some(R::Reset),
        ),
        case(
            "Failure: a status in failure_status_codes (500)",
            status(500),
            POST,
            Failure,
            Ignore,
            None,
        ),
        case(
            "Failure: a status in failure_status_codes (503, retried)",
            status(503),
            GET,
            Failure,
            Ignore,
            Some(R::Status(503)),
        ),
        case(
            "Failure: a status not in failure_status_codes is a success (404)",
            status(404),
            GET,
            Success,
            Ignore,
            None,
        ),
        case(
            "Failure: 429 is not in the default failure_status_codes, but retried",
            status(429),
            GET,
            Success,
            Ignore,
            Some(R::Status(429)),
        ),
        case(
            "Failure: 501 is a permanent answer, not a failure",
            status(501),
            GET,
            Success,
            Ignore,
            None,
        ),
        case(
            "Failure (gRPC): a grpc-status in failure_grpc_codes (UNAVAILABLE)",
            grpc(14),
            GRPC_POST,
            Failure,
            Ignore,
            Some(R::Grpc(14)),
        ),
        case(
            "Failure (gRPC): INTERNAL counts, is not retried",
            grpc(13),
            GRPC_POST,
            Failure,
            Ignore,
            None,
        ),
        case(
            "Failure (gRPC): NOT_FOUND is the caller's, a success",
            grpc(5),
            GRPC_POST,
            Success,
            Ignore,
            None,
        ),
        case(
            "Failure (gRPC): grpc-status only counts for gRPC callers",
            grpc(14),
            POST,
            Success,
            Ignore,
            None,
        ),
        case(
            "Pool: a full pool is fusebox's own cap, not the endpoint's fault; nothing was sent",
            Outcome::PoolExhausted,
            POST,
            Ignore,
            Ignore,
            Some(R::ConnectFailure),
        ),
        case(
            "Draining: a graceful GOAWAY left the stream unprocessed; retried for any method, no fault of the endpoint",
            Outcome::Draining,
            POST,
            Ignore,
            Ignore,
            Some(R::ConnectFailure),
        ),
        // Breaker, partitions: "Faults of the endpoint itself (connect refused or timed
        // out, TLS failure, reset before a response) count on the endpoint's shared
        // breaker and eject it for every key; failure statuses and slow calls count per
        // key (per-attempt timeouts too)."
        case(
            "Partitions: connect refused counts on the endpoint's shared breaker",
            Outcome::ConnectFailed,
            KEYED,
            Failure,
            Ignore,
            Some(R::ConnectFailure),
        ),
        case(
            "Partitions: reset before a response counts on the endpoint's shared breaker",
            Outcome::Reset,
            KEYED,
            Failure,
            Ignore,
            Some(R::Reset),
        ),
        case(
            "Partitions: failure statuses count per key (the endpoint answered)",
            status(500),
            KEYED,
            Success,
            Failure,
            None,
        ),
        case(
            "Partitions: per-attempt timeouts count per key",
            Outcome::Timeout { capped: false },
            KEYED,
            Ignore,
            Failure,
            Some(R::Timeout),
        ),
        case(
            "Partitions: a success counts on both",
            status(200),
            KEYED,
            Success,
            Success,
            None,
        ),
        // Retry: "connect failures are retried for every method (nothing reached the
        // upstream)."
        case(
            "Retry: connect failures are retried for every method",
            Outcome::ConnectFailed,
            POST,
            Failure,
            Ignore,
            Some(R::ConnectFailure),
        ),
        // "Timeouts, resets and retry_status_codes are retried for idempotent methods,
        // for POST with Idempotency-Key, or when retry_non_idempotent = true."
        case(
            "Retry: timeouts are not retried for a plain POST",
            Outcome::Timeout { capped: false },
            POST,
            Failure,
            Ignore,
            None,
        ),
        case(
            "Retry: resets are not retried for a plain POST",
            Outcome::Reset,
            POST,
            Failure,
            Ignore,
            None,
        ),
        case(
            "Retry: retry_status_codes are not retried for a plain POST",
            status(503),
            POST,
            Failure,
            Ignore,
            None,
        ),
        case(
            "Retry: retry_status_codes are retried for idempotent methods (or keyed POST)",
            status(502),
            GET,
            Failure,
            Ignore,
            Some(R::Status(502)),
        ),
        case(
            "Retry: a status outside retry_status_codes is not retried (500)",
            status(500),
            GET,
            Failure,
            Ignore,
            None,
        ),
        case(
            "Retry (gRPC): retry_grpc_codes are retried for any method",
            grpc(14),
            GRPC_POST,
            Failure,
            Ignore,
            Some(R::Grpc(14)),
        ),
        // Deadline: "every attempt's timeout is the smaller of timeouts.request and the
        // time left before the deadline" — an attempt cut by the deadline is not retried.
        case(
            "Deadline: a timeout cut short by the route deadline counts, is not retried",
            Outcome::Timeout { capped: true },
            GET,
            Failure,
            Ignore,
            None,
        ),
        case(
            "Deadline: the caller's own short deadline teaches the breaker nothing",
            Outcome::Timeout { capped: true },
            CALLER,
            Ignore,
            Ignore,
            None,
        ),
        case(
            "Deadline: the upstream's DEADLINE_EXCEEDED under the caller's deadline is ignored",
            grpc(4),
            Facts {
                grpc: true,
                ..CALLER
            },
            Ignore,
            Ignore,
            None,
        ),
        case(
            "Deadline: a full per-attempt timeout under a caller deadline still counts",
            Outcome::Timeout { capped: false },
            CALLER,
            Failure,
            Ignore,
            Some(R::Timeout),
        ),
        // The caller's faults: a body over max_request_body, or one that stalls.
        case(
            "Caller: a body over max_request_body is the caller's fault",
            Outcome::CallerBody(crate::body::CallerFault::TooLarge),
            GET,
            Ignore,
            Ignore,
            None,
        ),
        case(
            "Caller: a stalled body is the caller's fault (408)",
            Outcome::CallerBody(crate::body::CallerFault::Stalled),
            GET,
            Ignore,
            Ignore,
            None,
        ),
        case(
            "Internal: an upstream request fusebox could not build",
            Outcome::Unsendable,
            GET,
            Ignore,
            Ignore,
            None,
        ),
    ];
    let (b, r) = (BreakerConfig::default(), RetryConfig::default());
    for c in cases {
        let v = classify(c.outcome, c.facts, &b, &r);
        assert_eq!(
            (v.endpoint, v.key, v.retry),
            (c.endpoint, c.key, c.retry),
            "{}",
            c.sentence
        );
        assert!(
            v.prefer_other,
            "{}: a retry prefers a different endpoint",
            c.sentence
        );
        assert_eq!(v.endpoint_counts_slow, !c.facts.keyed, "{}", c.sentence);
    }
}

/// "Retry-After (seconds or HTTP date) on 429/503 is honoured" (the loop checks it
/// against max_delay and the deadline); "A Retry-After on a 503 that opens a breaker
/// sets its open time".
#[test]
fn retry_after_on_429_and_503_only() {
    let (b, r) = (BreakerConfig::default(), RetryConfig::default());
    let ra = Some(Duration::from_secs(2));
    let v = classify(with_retry_after(503, 2), GET, &b, &r);
    assert_eq!((v.retry_after, v.breaker_retry_after), (ra, ra));
    let v = classify(with_retry_after(429, 2), GET, &b, &r);
    assert_eq!((v.retry_after, v.breaker_retry_after), (ra, None));
    let v = classify(with_retry_after(502, 2), GET, &b, &r);
    assert_eq!((v.retry_after, v.breaker_retry_after), (None, None));
}

/// The policies decide: a custom failure_status_codes and retry_status_codes are read,
/// not the defaults.
#[test]
fn configured_codes_are_the_rule() {
    let b = BreakerConfig {
        failure_status_codes: vec![429],
        ..BreakerConfig::default()
    };
    let r = RetryConfig {
        retry_status_codes: vec![500],
        ..RetryConfig::default()
    };
    let v = classify(status(429), GET, &b, &r);
    assert_eq!((v.endpoint, v.retry), (Failure, None));
    let v = classify(status(500), GET, &b, &r);
    assert_eq!(
        (v.endpoint, v.retry),
        (Success, Some(RetryReason::Status(500)))
    );
    assert_eq!(RetryReason::Status(500).label(), "status_500");
    assert_eq!(RetryReason::Grpc(14).label(), "grpc_14");
}
