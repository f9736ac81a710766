//! What the attempt loop does for GPU model servers beyond picking and retrying:
//! deadline-aware admission (a request whose time left is shorter than the predicted
//! wait plus service time is answered OVERLOADED at once instead of occupying a GPU for
//! an answer nobody will read), the wait for an endpoint below its adaptive
//! concurrency limit (in the upstream's priority queue, bounded by the route's queue
//! settings), and the samples each attempt feeds: peak-EWMA and mean latency, the
//! adaptive limit, and the load the upstream reported.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Response};
use tokio::time::Instant;

use super::classify::{Outcome, Record, Verdict};
use super::ctx::RequestCtx;
use super::error::{ErrorCode, ProxyError};
use crate::admission::{Priority, Shed, OVERLOADED_RETRY_AFTER};
use crate::config::{DEFAULT_MAX_QUEUE, DEFAULT_QUEUE_TIMEOUT};
use crate::snapshot::Route;
use crate::upstream::load::{has_report, parse_report, strip_report};
use crate::upstream::{Endpoint, Upstream};

/// A prediction from samples older than this is not shed on: the next request goes
/// through and brings a fresh one. Without it, shedding every request would stop the
/// samples that could show the endpoint recovered, and it would shed for ever.
const STALE_PREDICTION: Duration = Duration::from_secs(2);

/// An endpoint whose attempts have waited this many times its mean latency with no
/// answer is taken as stalled (see [`stalled`]).
const STALLED: u32 = 3;

/// The predicted wait plus service time for a request of `priority`: the requests
/// queued ahead of it drain at the rate the admitting endpoints finish work (each its
/// limit / its mean latency, by Little's law), then the best endpoint serves it:
///
/// ```text
/// predicted = ahead / sum(limit / mean) + min(mean)
/// ```
///
/// over the endpoints whose breakers admit it. `None` when any such endpoint has no
/// samples yet or none for [`STALE_PREDICTION`] (it may be fast: never shed on what is
/// not known).
pub(super) fn predicted(
    up: &Upstream,
    eps: &[Arc<Endpoint>],
    slot: usize,
    headers: &HeaderMap,
    priority: Priority,
    now: Instant,
) -> Option<Duration> {
    let ahead = if up.cfg.adaptive_concurrency.is_some() {
        up.waiting.ahead_of(priority) as f64
    } else {
        0.0
    };
    let known = eps
        .iter()
        .filter(|ep| ep.breakers(slot).available(headers, now))
        .map(|ep| Some((fresh_mean(ep, now)?, ep.core.limit().unwrap_or(1))));
    best_prediction(known, ahead)
}

/// The endpoint's mean latency of answers, when its last sample is fresh.
fn fresh_mean(ep: &Endpoint, now: Instant) -> Option<Duration> {
    let load = &ep.core.load;
    load.mean_latency()
        .filter(|_| load.fresh(now, STALE_PREDICTION))
}

/// `ahead / sum(limit / mean) + min(mean)` over the candidates, each its endpoint's
/// mean latency and limit, or `None` for an endpoint not known well enough (then the
/// answer is `None`: never shed on what is not known); `None` for no candidates too.
fn best_prediction(
    candidates: impl Iterator<Item = Option<(Duration, usize)>>,
    ahead: f64,
) -> Option<Duration> {
    let mut best: Option<Duration> = None;
    let mut rate = 0.0; // answers per second at the limits
    for c in candidates {
        let (mean, limit) = c?;
        rate += limit.max(1) as f64 / mean.as_secs_f64().max(1e-6);
        best = Some(best.map_or(mean, |b| b.min(mean)));
    }
    let wait = if ahead > 0.0 { ahead / rate } else { 0.0 };
    best.map(|b| b + Duration::from_secs_f64(wait.min(86_400.0)))
}

/// Whether an attempt at `ep` can end within `left`: its fresh mean latency is not
/// longer. An endpoint not known well enough fits: never shed on what is not known.
pub(super) fn fits(ep: &Endpoint, left: Duration, now: Instant) -> bool {
    fresh_mean(ep, now).is_none_or(|m| m <= left)
}

/// Whether `ep` looks stalled: it has an adaptive limit, and attempts that have waited
/// for their answer's headers for [`STALLED`] x its mean latency with no answer
/// meanwhile (a GPU that stopped serving, or a queue of work nobody waits for).
/// Timeouts and failures are no answers: a stalled replica's requests timing out must
/// not make it look alive again, nor must a stall longer than the freshness of
/// predictions ([`STALE_PREDICTION`]). The clock starts at the later of the last answer
/// and the moment attempts began waiting, so an endpoint that was idle, or is busy
/// streaming bodies of answers it gave, is not stalled. Picks send nothing more to
/// it while another endpoint can take the request now or once it frees capacity; when
/// its requests have all ended it takes one again, a probe of whether it is back. It is
/// never a reason to refuse a request that only stalled endpoints could take.
pub(super) fn stalled(up: &Upstream, ep: &Endpoint, now: Instant) -> bool {
    let load = &ep.core.load;
    up.cfg.adaptive_concurrency.is_some()
        && load.mean_latency().is_some_and(|m| {
            load.unanswered_for(now)
                .is_some_and(|waited| waited > m * STALLED)
        })
}

/// Why no endpoint was picked, when it is about limits or the deadline.
pub(super) enum NoPick {
    /// Every admitting endpoint is at its limit or too slow for the time left, and one
    /// at its limit would fit: wait at most this long for it.
    Wait(Duration),
    /// Every admitting endpoint is too slow for the time left (the fastest's mean).
    Deadline(Duration),
    /// One that fits is free now (capacity freed since the pick): pick again.
    Again,
    /// Something else (breakers, endpoints already tried).
    Other,
}

/// Classifies a failed pick among the endpoints whose breakers admit the request,
/// with `left` the time left when deadline shedding is on. A stalled endpoint under
/// its limit counts as free only when no other endpoint that fits is merely at its
/// limit (the pick waits for that one instead, as [`stalled`] says).
pub(super) fn why_no_pick(
    up: &Upstream,
    eps: &[Arc<Endpoint>],
    slot: usize,
    headers: &HeaderMap,
    now: Instant,
    left: Option<Duration>,
) -> NoPick {
    let mut any = false;
    let mut fastest: Option<Duration> = None;
    let mut slack: Option<Duration> = None;
    let mut free_fitting = false;
    let mut free_stalled = false;
    for ep in eps
        .iter()
        .filter(|ep| ep.breakers(slot).available(headers, now))
    {
        any = true;
        let mean = left.and(fresh_mean(ep, now));
        let fit = match (left, mean) {
            (Some(l), Some(m)) => {
                fastest = Some(fastest.map_or(m, |f| f.min(m)));
                m <= l
            }
            _ => true,
        };
        if !fit {
            continue;
        }
        if ep.core.under_limit() {
            if stalled(up, ep, now) {
                free_stalled = true;
            } else {
                free_fitting = true;
            }
        } else {
            let s = match (left, mean) {
                (Some(l), Some(m)) => l - m,
                (Some(l), None) => l,
                (None, _) => Duration::MAX,
            };
            slack = Some(slack.map_or(s, |x| x.max(s)));
        }
    }
    match (any, free_fitting, slack, fastest) {
        (false, ..) => NoPick::Other,
        (true, true, ..) => NoPick::Again,
        (true, false, Some(s), _) => NoPick::Wait(s),
        (true, false, None, _) if free_stalled => NoPick::Again,
        (true, false, None, Some(f)) => NoPick::Deadline(f),
        _ => NoPick::Other,
    }
}

/// OVERLOADED for a deadline shorter than the prediction (counted `reason="deadline"`).
pub(super) fn deadline_shed(route: &Route, left: Duration, predicted: Duration) -> ProxyError {
    route.metrics.rejected_deadline.inc();
    ProxyError::new(
        ErrorCode::Overloaded,
        format!(
            "{} ms left, predicted wait and service time {} ms: shed before reaching the upstream",
            left.as_millis(),
            predicted.as_millis()
        ),
    )
    .upstream(&route.upstream.name)
    .retry_after(OVERLOADED_RETRY_AFTER)
}

/// Waits in the upstream's priority queue until an endpoint frees capacity, bounded by
/// the route's queue (`max_queue`, `queue_timeout`, or their defaults), the time left
/// and `max_wait`; `recheck` says whether capacity freed while joining.
/// A request's place in its upstream's queue across its waits: a request woken for
/// capacity it cannot use waits on at its place, and all its waits together last
/// `queue_timeout` at most (a fresh one per wait would let it wait without end).
#[derive(Debug, Default)]
pub(super) struct QueuePlace {
    seq: Option<u64>,
    since: Option<Instant>,
    /// Woken, and the wake not used yet (see [`QueuePlace::pass_on`]).
    woken: bool,
}

impl QueuePlace {
    /// The wake led to a pick: it was used.
    pub(super) fn used(&mut self) {
        self.woken = false;
    }

    /// The pick after a wake found nothing this request may use: the waiter behind
    /// it gets the wake (the freed capacity may be one it can use).
    pub(super) fn pass_on(&mut self, up: &Upstream, priority: Priority) {
        if std::mem::take(&mut self.woken) {
            if let Some(seq) = self.seq {
                up.waiting.pass_on(priority, seq);
            }
        }
    }
}

pub(super) async fn wait_for_capacity(
    route: &Route,
    up: &Upstream,
    ctx: &RequestCtx,
    place: &mut QueuePlace,
    max_wait: Duration,
    recheck: impl Fn() -> bool,
) -> Result<(), (ProxyError, &'static str)> {
    let (max_queue, timeout) = route
        .cfg
        .concurrency
        .as_ref()
        .map_or((DEFAULT_MAX_QUEUE, DEFAULT_QUEUE_TIMEOUT), |c| {
            (c.max_queue, c.queue_timeout)
        });
    let now = Instant::now();
    let left = ctx.deadline.saturating_duration_since(now);
    let shed = |s: Shed| {
        let err = super::shed_error(route, s, "every endpoint is at its concurrency limit");
        (err, super::shed_reason(s))
    };
    let since = *place
        .since
        .get_or_insert_with(|| now.checked_sub(ctx.queue_waited).unwrap_or(now));
    let budget = timeout.saturating_sub(now.saturating_duration_since(since));
    if budget.is_zero() && place.seq.is_some() {
        return Err(shed(Shed::Overloaded)); // its waits took `queue_timeout` already
    }
    let ticket = up
        .waiting
        .join_at(ctx.priority, max_queue, place.seq)
        .map_err(shed)?;
    place.seq = Some(ticket.seq());
    if recheck() {
        return Ok(()); // freed while joining: leaving passes any wake on
    }
    ticket
        .wait(budget.min(left).min(max_wait))
        .await
        .map_err(shed)?;
    place.woken = true;
    Ok(())
}

/// What the attempt teaches about the endpoint: latency samples (fusebox's own pool
/// limit and the caller's faults are none; cancelled attempts only through
/// [`CancelWatch`]), the adaptive limit (completed attempts and timeouts: fail-fast
/// errors are not samples), and the load report of its response, which is stripped
/// unless `forward_load_report`.
#[allow(clippy::too_many_arguments)]
pub(super) fn learn<B>(
    up: &Upstream,
    ep: &Endpoint,
    outcome: Outcome,
    verdict: &Verdict,
    elapsed: Duration,
    in_flight_at_send: usize,
    now: Instant,
    response: Option<&mut Response<B>>,
) {
    // A timeout the breaker ignores (cut short by the caller's own deadline) still
    // teaches latency: the endpoint took at least this long.
    let timed_out = matches!(outcome, Outcome::Timeout { .. });
    let load = &ep.core.load;
    // The report first: the adaptive limit follows the queue it carries. Read (and
    // removed) whatever the verdict: a report is the upstream's load, and an answer
    // the breakers ignore (a caller's own DEADLINE_EXCEEDED) must not carry it on.
    if let Some(r) = response {
        let configured = up.cfg.load_report_header.as_ref();
        if has_report(r.headers(), configured) {
            let (queue, util) = parse_report(r.headers(), configured);
            load.report(queue, util, now, up.cfg.load_report_expiry);
            if !up.cfg.forward_load_report {
                strip_report(r.headers_mut(), configured);
            }
        }
    }
    if !timed_out && verdict.endpoint == Record::Ignore && verdict.key == Record::Ignore {
        return;
    }
    let failure = verdict.endpoint == Record::Failure || verdict.key == Record::Failure;
    // A timeout is no answer: it raises the estimate but stays out of the mean of
    // answers that deadline predictions read.
    let no_answer = failure || timed_out;
    if up.cfg.load_balancing == crate::config::LoadBalancing::PeakEwma {
        let ewma = &up.cfg.peak_ewma;
        load.observe(elapsed, no_answer, now, ewma.decay, ewma.default_latency);
    } else {
        load.observe_mean(elapsed, no_answer, now);
    }
    if up.cfg.adaptive_concurrency.is_none() {
        return;
    }
    let Some(limit) = ep.core.adaptive.load_full() else {
        return;
    };
    let l = match outcome {
        Outcome::Response { .. } if !failure => {
            // This answer's own report, or the last one not read yet (a server that
            // reports in its trailers reported after its previous answer).
            let waiting = load.take_queue(now);
            Some(limit.sample(elapsed, in_flight_at_send, waiting))
        }
        // A timeout is a lower bound of the latency, as a cancel is.
        Outcome::Timeout { .. } => limit.sample_censored(elapsed, in_flight_at_send),
        _ => None,
    };
    if let Some(l) = l {
        ep.core.metrics.set_limit(l);
    }
}

/// Armed while an attempt is in flight; when the request is dropped before the attempt
/// ends (the caller went away, its timeout passed), the time it had waited is a lower
/// bound of the endpoint's latency and is fed as such to the latency estimate and the
/// adaptive limit (counted only when above their current values, so a quick cancel
/// never makes an endpoint look fast). Holds references only: it lives in the attempt
/// loop's frame, which outlives it.
pub(super) struct CancelWatch<'a> {
    up: &'a Upstream,
    ep: &'a Endpoint,
    sent: Instant,
    in_flight: usize,
    armed: bool,
    /// The attempt counts as waiting for its answer (the stall check's; only with an
    /// adaptive limit) until this drops.
    awaited: bool,
}

impl<'a> CancelWatch<'a> {
    pub(super) fn new(up: &'a Upstream, ep: &'a Endpoint, sent: Instant, in_flight: usize) -> Self {
        let awaited = up.cfg.adaptive_concurrency.is_some();
        if awaited {
            ep.core.load.attempt_started(sent);
        }
        CancelWatch {
            up,
            ep,
            sent,
            in_flight,
            armed: true,
            awaited,
        }
    }

    /// The attempt ended: [`learn`] takes it from here.
    pub(super) fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelWatch<'_> {
    fn drop(&mut self) {
        if self.awaited {
            self.ep.core.load.attempt_ended();
        }
        if !self.armed {
            return;
        }
        let now = Instant::now();
        let waited = now.saturating_duration_since(self.sent);
        if self.up.cfg.load_balancing == crate::config::LoadBalancing::PeakEwma {
            let decay = self.up.cfg.peak_ewma.decay;
            self.ep.core.load.observe_censored(waited, now, decay);
        }
        if let Some(limit) = self.ep.core.adaptive.load().as_ref() {
            if let Some(l) = limit.sample_censored(waited, self.in_flight) {
                self.ep.core.metrics.set_limit(l);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Proves the predictor: the queue ahead drains at the sum of limit / mean over the
    /// endpoints (Little's law), then the best endpoint serves; an endpoint without
    /// (fresh) samples makes it `None`, as does an empty list.
    #[test]
    fn the_prediction_is_the_queue_drain_plus_the_best_service() {
        let close = |got: Option<Duration>, want: Duration| {
            let got = got.expect("a prediction");
            assert!(
                got.abs_diff(want) < Duration::from_micros(10),
                "{got:?} vs {want:?}"
            );
        };
        // 100 ms at a limit of 10 and 50 ms at 5: 100 + 100 answers per second.
        let two = [Some((100 * MS, 10)), Some((50 * MS, 5))];
        close(best_prediction(two.into_iter(), 0.0), 50 * MS);
        // 20 queued ahead drain in 100 ms, then the 50 ms endpoint.
        close(best_prediction(two.into_iter(), 20.0), 150 * MS);
        let unknown = [Some((100 * MS, 4)), None];
        assert_eq!(best_prediction(unknown.into_iter(), 0.0), None);
        assert_eq!(best_prediction(std::iter::empty(), 0.0), None);
        close(
            best_prediction([Some((10 * MS, 0))].into_iter(), 2.0),
            30 * MS,
        );
    }
}
