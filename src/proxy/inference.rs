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
use crate::upstream::load::{parse_report, ENDPOINT_LOAD_METRICS};
use crate::upstream::{Endpoint, Upstream};

/// A prediction from samples older than this is not shed on: the next request goes
/// through and brings a fresh one. Without it, shedding every request would stop the
/// samples that could show the endpoint recovered, and it would shed for ever.
const STALE_PREDICTION: Duration = Duration::from_secs(2);

/// The predicted wait plus service time of the best endpoint for a request of
/// `priority`: over the endpoints whose breakers admit it, the smallest mean latency x
/// (1 + requests queued ahead / the endpoint's limit). `None` when any such endpoint
/// has no samples yet or none for [`STALE_PREDICTION`] (it may be fast: never shed on
/// what is not known).
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
        .map(|ep| {
            let load = &ep.core.load;
            let mean = load
                .mean_latency()
                .filter(|_| load.fresh(now, STALE_PREDICTION))?;
            Some((mean, ep.core.limit().unwrap_or(1)))
        });
    best_prediction(known, ahead)
}

/// The smallest `mean x (1 + ahead / limit)` over the candidates, each its endpoint's
/// mean latency and limit, or `None` for an endpoint not known well enough (then the
/// answer is `None`: never shed on what is not known); `None` for no candidates too.
fn best_prediction(
    candidates: impl Iterator<Item = Option<(Duration, usize)>>,
    ahead: f64,
) -> Option<Duration> {
    let mut best: Option<Duration> = None;
    for c in candidates {
        let (mean, limit) = c?;
        let p = mean.mul_f64(1.0 + ahead / limit.max(1) as f64);
        best = Some(best.map_or(p, |b| b.min(p)));
    }
    best
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

/// Whether some endpoint's breakers admit the request but every such endpoint is at
/// its adaptive limit (so waiting can help).
pub(super) fn only_limits_refuse(
    eps: &[Arc<Endpoint>],
    slot: usize,
    headers: &HeaderMap,
    now: Instant,
) -> bool {
    let mut admitted = eps
        .iter()
        .filter(|ep| ep.breakers(slot).available(headers, now))
        .peekable();
    admitted.peek().is_some() && admitted.all(|ep| !ep.core.under_limit())
}

/// Waits in the upstream's priority queue until an endpoint frees capacity, bounded by
/// the route's queue (`max_queue`, `queue_timeout`, or their defaults) and the time
/// left; `recheck` says whether capacity freed while joining.
pub(super) async fn wait_for_capacity(
    route: &Route,
    up: &Upstream,
    ctx: &RequestCtx,
    recheck: impl Fn() -> bool,
) -> Result<(), (ProxyError, &'static str)> {
    let (max_queue, timeout) = route
        .cfg
        .concurrency
        .as_ref()
        .map_or((DEFAULT_MAX_QUEUE, DEFAULT_QUEUE_TIMEOUT), |c| {
            (c.max_queue, c.queue_timeout)
        });
    let left = ctx.deadline.saturating_duration_since(Instant::now());
    let shed = |s: Shed| {
        let err = super::shed_error(route, s, "every endpoint is at its concurrency limit");
        (err, super::shed_reason(s))
    };
    let ticket = up.waiting.join(ctx.priority, max_queue).map_err(shed)?;
    if recheck() {
        return Ok(()); // freed while joining: leaving passes any wake on
    }
    ticket.wait(timeout.min(left)).await.map_err(shed)
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
    if !timed_out && verdict.endpoint == Record::Ignore && verdict.key == Record::Ignore {
        return;
    }
    let failure = verdict.endpoint == Record::Failure || verdict.key == Record::Failure;
    let load = &ep.core.load;
    // A timeout is no answer: it raises the estimate but stays out of the mean of
    // answers that deadline predictions read.
    let no_answer = failure || timed_out;
    if up.cfg.load_balancing == crate::config::LoadBalancing::PeakEwma {
        load.observe(elapsed, no_answer, now, up.cfg.peak_ewma.decay);
    } else {
        load.observe_mean(elapsed, no_answer, now);
    }
    let completed = match outcome {
        Outcome::Response { .. } => !failure,
        Outcome::Timeout { .. } => true,
        _ => false,
    };
    if completed {
        if let Some(limit) = ep.core.adaptive.load().as_ref() {
            let l = limit.sample(elapsed, in_flight_at_send);
            ep.core
                .metrics
                .concurrency_limit
                .set(i64::try_from(l).unwrap_or(i64::MAX));
        }
    }
    if let Some(r) = response {
        // One pass over the names (comparisons): most responses carry no report.
        let configured = up.cfg.load_report_header.as_ref();
        let reported = r
            .headers()
            .keys()
            .any(|k| k == ENDPOINT_LOAD_METRICS || Some(k) == configured);
        if !reported {
            return;
        }
        let (queue, util) = parse_report(r.headers(), configured);
        load.report(queue, util, now, up.cfg.load_report_expiry);
        if !up.cfg.forward_load_report {
            r.headers_mut().remove(&ENDPOINT_LOAD_METRICS);
            if let Some(h) = configured {
                r.headers_mut().remove(h);
            }
        }
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
}

impl<'a> CancelWatch<'a> {
    pub(super) fn new(up: &'a Upstream, ep: &'a Endpoint, sent: Instant, in_flight: usize) -> Self {
        CancelWatch {
            up,
            ep,
            sent,
            in_flight,
            armed: true,
        }
    }

    /// The attempt ended: [`learn`] takes it from here.
    pub(super) fn done(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelWatch<'_> {
    fn drop(&mut self) {
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
                self.ep
                    .core
                    .metrics
                    .concurrency_limit
                    .set(i64::try_from(l).unwrap_or(i64::MAX));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Proves the predictor: the best endpoint's mean x (1 + queued ahead / its limit);
    /// an endpoint without (fresh) samples makes it `None`, as does an empty list.
    #[test]
    fn the_prediction_is_the_best_endpoints_wait_plus_service() {
        let two = [Some((100 * MS, 4)), Some((60 * MS, 1))];
        assert_eq!(best_prediction(two.into_iter(), 0.0), Some(60 * MS));
        // 8 queued ahead: 100 x (1 + 8/4) = 300 beats 60 x (1 + 8/1) = 540.
        assert_eq!(best_prediction(two.into_iter(), 8.0), Some(300 * MS));
        let unknown = [Some((100 * MS, 4)), None];
        assert_eq!(best_prediction(unknown.into_iter(), 0.0), None);
        assert_eq!(best_prediction(std::iter::empty(), 0.0), None);
        assert_eq!(
            best_prediction([Some((10 * MS, 0))].into_iter(), 2.0),
            Some(30 * MS),
            "a limit of 0 counts as 1"
        );
    }
}
