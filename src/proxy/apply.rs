//! Carries a verdict out: permits from an endpoint's breaker and its key's (both must
//! admit a keyed request), the records the verdict asks for, and the retry counter of
//! its reason. State changes are logged and counted through the endpoint.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::classify::{Record, RetryReason, Verdict};
use crate::otel::RequestSpan;
use crate::upstream::breaker::Transition;
use crate::upstream::breaker::{Breaker, Outcome as BreakerOutcome, Permit, Settle};
use crate::upstream::{Endpoint, Upstream};

/// Permits from the endpoint's breaker and, for a keyed request, its key's: both must
/// admit. Half-open transitions are logged here.
pub(super) fn admit<'a>(
    ep: &Endpoint,
    slot: usize,
    main: &'a Breaker,
    key: Option<&'a (Arc<Breaker>, &[u8])>,
    now: Instant,
    span: Option<&RequestSpan>,
) -> Option<(Permit<'a>, Option<Permit<'a>>)> {
    let main_permit = main.try_acquire(now).ok()?;
    let key_permit = match key {
        Some((b, _)) => Some(b.try_acquire(now).ok()?),
        None => None,
    };
    if let Some(t) = main_permit.transition() {
        changed(ep, slot, t, None, span);
    }
    if let (Some(p), Some((_, k))) = (&key_permit, key) {
        if let Some(t) = p.transition() {
            changed(ep, slot, t, Some(k), span);
        }
    }
    Some((main_permit, key_permit))
}

/// A state change: logged and counted through the endpoint, and an event of the
/// request's span.
fn changed(
    ep: &Endpoint,
    slot: usize,
    t: Transition,
    key: Option<&[u8]>,
    span: Option<&RequestSpan>,
) {
    ep.on_transition(slot, t, key);
    if let Some(s) = span {
        s.breaker_transition(&ep.key, t.from.as_str(), t.to.as_str());
    }
}

/// Carries the verdict out on the breakers (an ignored permit is dropped: cancelled).
/// A success of an answer whose body still `streaming` comes back as a [`Settle`] of
/// the endpoint's breaker: `Breaker::late_failure` turns it into a failure if the body
/// then fails.
#[allow(clippy::too_many_arguments)]
pub(super) fn record(
    ep: &Endpoint,
    slot: usize,
    main: Permit<'_>,
    keyed: Option<Permit<'_>>,
    key: Option<&(Arc<Breaker>, &[u8])>,
    v: &Verdict,
    elapsed: Duration,
    now: Instant,
    span: Option<&RequestSpan>,
    streaming: bool,
) -> Option<Settle> {
    let outcome = |r: Record, slow: bool| BreakerOutcome {
        failure: r == Record::Failure,
        duration: if slow { elapsed } else { Duration::ZERO },
        retry_after: v.breaker_retry_after,
    };
    let mut pending = None;
    if v.endpoint != Record::Ignore {
        let o = outcome(v.endpoint, v.endpoint_counts_slow);
        let breaker = ep.breakers(slot).main();
        let t = if streaming && !o.failure {
            let (t, settle) = breaker.record_streaming(main, o, now);
            pending = settle;
            t
        } else {
            breaker.record(main, o, now)
        };
        if let Some(t) = t {
            changed(ep, slot, t, None, span);
        }
    }
    if let (Some(permit), Some((b, k))) = (keyed, key) {
        if v.key != Record::Ignore {
            if let Some(t) = b.record(permit, outcome(v.key, true), now) {
                changed(ep, slot, t, Some(k), span);
            }
        }
    }
    pending
}

pub(super) fn count_retry(up: &Upstream, reason: RetryReason) {
    let m = &up.metrics;
    let counter = match reason {
        RetryReason::ConnectFailure => Some(&m.retry_connect),
        RetryReason::Timeout => Some(&m.retry_timeout),
        RetryReason::Reset => Some(&m.retry_reset),
        RetryReason::Status(s) => m.retry_for_status(s),
        RetryReason::Grpc(g) => m.retry_for_grpc(g),
    };
    if let Some(c) = counter {
        c.inc();
    }
}
