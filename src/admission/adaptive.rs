//! The adaptive concurrency limit of one endpoint (`[upstreams.X.adaptive_concurrency]`):
//! how many requests it may have in flight, learned from its latency.
//!
//! The algorithm is Netflix concurrency-limits' *Gradient2*: a long-term average of
//! latency (the endpoint's unloaded-ish baseline) against a short-term one (now); when
//! `rtt_tolerance x long / short` falls below 1, latency is growing faster than the
//! tolerance allows and the limit shrinks in proportion (never by more than half per
//! step); otherwise it grows by `sqrt(limit)` (the queue it may keep), smoothed:
//!
//! ```text
//! gradient  = clamp(rtt_tolerance * long_rtt / short_rtt, 0.5, 1.0)
//! new_limit = limit * gradient + sqrt(limit)
//! limit     = limit * (1 - smoothing) + new_limit * smoothing, within min..=max
//! ```
//!
//! Chosen over Envoy's gradient filter (and Vegas) because it needs no minimum-RTT
//! probing window: Envoy re-measures minRTT by pinning concurrency low, which answers
//! 503s during the window (its documented pitfall), and a GPU model server's "minimum"
//! latency depends on batch fill, so a sampled minimum misleads. Gradient2 compares
//! against a slowly moving average instead, and when latency falls far below it (the
//! overload is over) the average is pulled down quickly, so the limit recovers. Chosen
//! over AIMD because AIMD only backs off on drops and timeouts, that is after the
//! deadline is already lost; Gradient2 backs off when queueing begins.
//!
//! Samples: completed attempts and timeouts (the time waited is a lower bound of the
//! latency). Fail-fast errors (connect failures, resets, failure statuses) and health
//! probes are not samples (the caller does not report them): a failing replica
//! answering in 1 ms must not raise the limit, and a probe's latency says nothing
//! about queueing. A cancelled attempt (the caller went away) counts only as a lower
//! bound above the recent average (`sample_censored`): under overload most late
//! attempts end that way, and dropping them would hide the queueing that the limit
//! exists to stop; a quick cancel says nothing and is ignored. A sample taken while
//! fewer than half the limit were in flight cannot grow the limit (the endpoint was not
//! pushed, so nothing says it could take more); rising latency shrinks it either way.
//!
//! **When the endpoint reports its queue** (ORCA `named_metrics.num_requests_waiting` or
//! the configured `load_report_header`, as vLLM, Triton-style servers and the bench's
//! simulator send it), the limit follows the queue instead of latency, because a
//! batching server's latency rises with batch fill long before it queues and a
//! latency gradient either stops short of full batches or, under sustained load, drifts
//! up with the long average to `max_limit`. What the endpoint is running of ours is
//! `limit - waiting`; the limit aims at running that much and having as much again
//! waiting (the next batch is ready, and no more), plus one to probe for a larger batch:
//!
//! ```text
//! running = max(0, limit - waiting)
//! target  = 2 x running + 1
//! limit  += smoothing x (target - limit)   (at most 1/sqrt(limit) per answer either
//!                                            way, growth only while pushed; at full
//!                                            speed when waiting >= limit)
//! ```
//!
//! This is the congestion signal of ECN and L4S (a queue the bottleneck reports) with
//! the backlog target of the Gateway API Inference Extension's endpoint picker, which
//! also reads `num_requests_waiting`. Work the proxy no longer waits for (requests a
//! model server still runs after their caller gave up) shows up as waiting beyond our
//! in-flight count and shrinks the limit to `min_limit` until it drains, which is what
//! breaks the spiral in which every late request leaves more work for nobody. A
//! cancelled attempt or a timeout that waited more than 1.25 x the recent peak latency
//! of answers halves the limit, once until the next answer (AIMD's response to a loss;
//! TCP halves once per window). Several proxies sharing one replica
//! each see the others' requests as waiting and hold back more than one alone would.
//!
//! Touched per attempt (`sample`): one short uncontended lock per endpoint.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::config::AdaptiveConcurrencyConfig;

/// Samples the long-term average spans (its weight per sample is 1/this).
const LONG_WINDOW: f64 = 100.0;
/// Weight of a sample in the short-term average.
const SHORT_WEIGHT: f64 = 0.25;
/// Below this ratio of short to long latency the long average is pulled down fast.
const RECOVERY_RATIO: f64 = 0.5;
/// In queue mode, a cancel or timeout after this many times the recent peak latency of
/// answers is a loss.
const LOSS_RATIO: f64 = 1.25;
/// Per answer, the peak latency of answers decays by this factor (it spans about the
/// last hundred answers).
const PEAK_DECAY: f64 = 0.99;

/// One endpoint's limit.
#[derive(Debug)]
pub struct AdaptiveLimit {
    cfg: AdaptiveConcurrencyConfig,
    state: Mutex<State>,
    /// The current limit, readable without the lock (per pick).
    limit: AtomicUsize,
}

#[derive(Debug, Clone, Copy)]
struct State {
    limit: f64,
    /// Averages of latency in seconds; 0 until the first sample.
    long_rtt: f64,
    short_rtt: f64,
    /// The last sample carried a queue report: the limit follows the queue.
    queue_mode: bool,
    /// Queue mode: a slowly decaying maximum of answered latencies (seconds), the
    /// reference a cancel or timeout is a loss against.
    peak_rtt: f64,
    /// Queue mode: a loss halved the limit and no answer came since (one halving per
    /// answer, as TCP halves once per window).
    halved: bool,
}

impl AdaptiveLimit {
    pub fn new(cfg: &AdaptiveConcurrencyConfig) -> AdaptiveLimit {
        AdaptiveLimit {
            limit: AtomicUsize::new(cfg.initial_limit),
            state: Mutex::new(State {
                limit: cfg.initial_limit as f64,
                long_rtt: 0.0,
                short_rtt: 0.0,
                queue_mode: false,
                peak_rtt: 0.0,
                halved: false,
            }),
            cfg: cfg.clone(),
        }
    }

    /// Requests this endpoint may have in flight now.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Whether the settings are `cfg` (a reload then keeps this limit as it is).
    pub fn same_settings(&self, cfg: &AdaptiveConcurrencyConfig) -> bool {
        &self.cfg == cfg
    }

    /// A limit with the settings `cfg` that goes on from what this one learned (its
    /// latency averages and queue mode), its limit clamped into the new
    /// `min_limit..=max_limit`: a reload that retunes the table must not throw away
    /// what the endpoint taught (nor send a cut-back GPU its `initial_limit` again).
    pub fn carried(&self, cfg: &AdaptiveConcurrencyConfig) -> AdaptiveLimit {
        let mut state = *self.lock();
        let carried = AdaptiveLimit {
            limit: AtomicUsize::new(0),
            state: Mutex::new(state),
            cfg: cfg.clone(),
        };
        carried.store(&mut state);
        *carried.lock() = state;
        carried
    }

    /// Feeds one completed attempt's latency, with the requests that were in flight at
    /// the endpoint when it was sent and the queue its answer reported (if any);
    /// returns the new limit.
    pub fn sample(&self, rtt: Duration, in_flight: usize, waiting: Option<f32>) -> usize {
        match waiting.filter(|w| w.is_finite() && *w >= 0.0) {
            Some(w) => self.update_queue(rtt, in_flight, f64::from(w)),
            None => self.update(rtt, in_flight, false).unwrap_or(0),
        }
    }

    /// An attempt cancelled or timed out after `waited` (its caller went away, or its
    /// deadline passed): a lower bound of its latency, counted only when above the
    /// recent average. Returns the new limit, or `None` when the bound said nothing.
    pub fn sample_censored(&self, waited: Duration, in_flight: usize) -> Option<usize> {
        let queue_mode = self.lock().queue_mode;
        if queue_mode {
            return self.loss(waited);
        }
        self.update(waited, in_flight, true)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // No critical section here panics; a poisoned limit is still a valid limit.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn store(&self, s: &mut State) -> usize {
        s.limit = s
            .limit
            .clamp(self.cfg.min_limit as f64, self.cfg.max_limit as f64);
        let limit = (s.limit.floor() as usize).clamp(self.cfg.min_limit, self.cfg.max_limit);
        self.limit.store(limit, Ordering::Relaxed);
        limit
    }

    /// Queue mode: the limit aims at `2 x (limit - waiting) + 1`.
    fn update_queue(&self, rtt: Duration, in_flight: usize, waiting: f64) -> usize {
        let rtt = rtt.as_secs_f64().max(1e-6);
        let mut s = self.lock();
        s.queue_mode = true;
        s.short_rtt = if s.short_rtt == 0.0 {
            rtt
        } else {
            s.short_rtt + (rtt - s.short_rtt) * SHORT_WEIGHT
        };
        if s.long_rtt == 0.0 {
            s.long_rtt = rtt;
        }
        s.peak_rtt = rtt.max(s.peak_rtt * PEAK_DECAY);
        s.halved = false;
        let running = (s.limit - waiting).max(0.0);
        let target = 2.0 * running + 1.0;
        let step = self.cfg.smoothing * (target - s.limit);
        let pushed = (in_flight as f64) >= s.limit / 2.0;
        // One answer's batch says little (a batcher's batches alternate in size), so a
        // step is at most 1/sqrt(limit) either way; but work waiting beyond all of ours
        // (abandoned requests it still runs, other clients') shrinks at full speed.
        let cap = 1.0 / s.limit.max(1.0).sqrt();
        if waiting >= s.limit {
            s.limit += step;
        } else if step < 0.0 {
            s.limit += step.max(-cap); // more waiting than running: shrink, whatever the load
        } else if pushed {
            s.limit += step.min(cap);
        }
        self.store(&mut s)
    }

    /// Queue mode: a cancel or timeout after more than [`LOSS_RATIO`] x the recent peak
    /// latency of answers halves the limit, once until the next answer; a quicker one
    /// (a caller with little time left) says nothing.
    fn loss(&self, waited: Duration) -> Option<usize> {
        let mut s = self.lock();
        if s.halved || s.peak_rtt == 0.0 || waited.as_secs_f64() <= s.peak_rtt * LOSS_RATIO {
            return None;
        }
        s.limit *= 0.5;
        s.halved = true;
        Some(self.store(&mut s))
    }

    fn update(&self, rtt: Duration, in_flight: usize, censored: bool) -> Option<usize> {
        let rtt = rtt.as_secs_f64().max(1e-6);
        let mut s = self.lock();
        if !censored {
            s.queue_mode = false;
        }
        if censored && (s.long_rtt == 0.0 || rtt <= s.short_rtt) {
            return None;
        }
        if s.long_rtt == 0.0 {
            s.long_rtt = rtt;
            s.short_rtt = rtt;
        } else {
            s.long_rtt += (rtt - s.long_rtt) / LONG_WINDOW;
            s.short_rtt += (rtt - s.short_rtt) * SHORT_WEIGHT;
        }
        if s.short_rtt < s.long_rtt * RECOVERY_RATIO {
            // Latency fell well below the long average: the overload that raised it is
            // over, so the average follows quickly and the limit can grow again.
            s.long_rtt = s.long_rtt * 0.9 + s.short_rtt * 0.1;
        }
        let gradient = (self.cfg.rtt_tolerance * s.long_rtt / s.short_rtt).clamp(0.5, 1.0);
        let pushed = (in_flight as f64) >= s.limit / 2.0;
        // Queueing shrinks the limit whatever the load; only a pushed endpoint grows it.
        if gradient < 1.0 || pushed {
            let queue = if pushed { s.limit.sqrt() } else { 0.0 };
            let proposed = s.limit * gradient + queue;
            s.limit = s.limit * (1.0 - self.cfg.smoothing) + proposed * self.cfg.smoothing;
        }
        Some(self.store(&mut s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> AdaptiveConcurrencyConfig {
        AdaptiveConcurrencyConfig {
            min_limit: 1,
            max_limit: 64,
            initial_limit: 8,
            rtt_tolerance: 1.5,
            smoothing: 0.2,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    /// Proves the limit grows while latency is steady and the endpoint is pushed, falls
    /// when latency rises past the tolerance under load, and recovers once latency is
    /// back; and stays within min..=max throughout.
    #[test]
    fn grows_while_steady_falls_under_queueing_and_recovers() {
        let l = AdaptiveLimit::new(&cfg());
        for _ in 0..200 {
            let lim = l.limit();
            l.sample(10 * MS, lim, None);
        }
        let steady = l.limit();
        assert!(steady > 8, "grew from 8 to {steady}");
        for _ in 0..40 {
            let lim = l.limit();
            l.sample(100 * MS, lim, None);
        }
        let loaded = l.limit();
        assert!(loaded < steady / 2, "fell from {steady} to {loaded}");
        for _ in 0..400 {
            let lim = l.limit();
            l.sample(10 * MS, lim, None);
        }
        let recovered = l.limit();
        assert!(
            recovered > loaded * 2,
            "recovered from {loaded} to {recovered}"
        );
        assert!((1..=64).contains(&recovered));
    }

    /// Proves a cancelled attempt counts only as a lower bound above the recent
    /// average: a quick cancel changes nothing, a long wait shrinks the limit as a
    /// slow completion would.
    #[test]
    fn cancelled_attempts_count_only_when_they_waited_long() {
        let l = AdaptiveLimit::new(&cfg());
        assert_eq!(
            l.sample_censored(500 * MS, 8),
            None,
            "no samples yet: nothing known"
        );
        for _ in 0..50 {
            l.sample(10 * MS, 1, None);
        }
        let before = l.limit();
        for _ in 0..20 {
            assert_eq!(l.sample_censored(2 * MS, before), None, "a quick cancel");
        }
        assert_eq!(l.limit(), before);
        for _ in 0..20 {
            let lim = l.limit();
            assert!(l.sample_censored(200 * MS, lim).is_some());
        }
        assert!(
            l.limit() < before,
            "long waits shrank {before} to {}",
            l.limit()
        );
    }

    /// Proves a sample taken while the endpoint was not pushed (fewer than half the
    /// limit in flight) does not grow the limit, and the bounds hold.
    #[test]
    fn unpushed_samples_leave_the_limit_and_bounds_hold() {
        let l = AdaptiveLimit::new(&cfg());
        for _ in 0..100 {
            l.sample(10 * MS, 1, None);
        }
        assert_eq!(l.limit(), 8);
        for _ in 0..10_000 {
            let lim = l.limit();
            l.sample(10 * MS, lim, None);
        }
        assert_eq!(l.limit(), 64, "never above max_limit");
        let floor = AdaptiveLimit::new(&AdaptiveConcurrencyConfig {
            min_limit: 4,
            initial_limit: 6,
            ..cfg()
        });
        for _ in 0..20 {
            floor.sample(10 * MS, 6, None);
        }
        let mut lowest = usize::MAX;
        for _ in 0..50 {
            let lim = floor.limit();
            lowest = lowest.min(floor.sample(Duration::from_secs(5), lim, None));
        }
        assert_eq!(lowest, 4, "it fell, and never below min_limit");
    }

    /// Proves the queue mode: against a batcher of 8 (what is not waiting is running,
    /// at most 8) the limit settles where 8 run and as many again wait (2 x 8 + 1),
    /// from below and from above, within min..=max.
    #[test]
    fn with_a_queue_report_the_limit_settles_at_two_batches() {
        for start in [4, 40] {
            let l = AdaptiveLimit::new(&AdaptiveConcurrencyConfig {
                initial_limit: start,
                ..cfg()
            });
            for _ in 0..2_000 {
                let lim = l.limit();
                let waiting = lim.saturating_sub(8) as f32;
                l.sample(50 * MS, lim, Some(waiting));
            }
            let settled = l.limit();
            assert!(
                (16..=18).contains(&settled),
                "from {start}: settled at {settled}"
            );
        }
    }

    /// Proves work waiting beyond all of ours (abandoned requests a model server still
    /// runs) cuts the limit to min_limit quickly, and an empty queue under load grows
    /// it back; a sample while not pushed does not grow it.
    #[test]
    fn a_queue_beyond_ours_cuts_the_limit_and_an_empty_one_grows_it() {
        let l = AdaptiveLimit::new(&cfg());
        for _ in 0..30 {
            let lim = l.limit();
            l.sample(50 * MS, lim, Some(200.0));
        }
        assert_eq!(l.limit(), 1, "cut to min_limit");
        for _ in 0..100 {
            l.sample(20 * MS, 0, Some(0.0));
        }
        assert_eq!(l.limit(), 1, "not pushed: no growth");
        for _ in 0..300 {
            let lim = l.limit();
            l.sample(20 * MS, lim, Some(0.0));
        }
        assert!(l.limit() >= 16, "grew back to {}", l.limit());
    }

    /// Proves a loss in queue mode: a cancel or timeout after more than 1.25 x the peak
    /// latency of recent answers halves the limit, once until the next answer; a quick
    /// one (a caller with little time left) changes nothing.
    #[test]
    fn in_queue_mode_a_long_cancel_halves_the_limit_once_per_answer() {
        let l = AdaptiveLimit::new(&AdaptiveConcurrencyConfig {
            initial_limit: 32,
            ..cfg()
        });
        l.sample(100 * MS, 32, Some(0.0));
        let before = l.limit();
        assert_eq!(l.sample_censored(110 * MS, before), None, "within the peak");
        assert_eq!(l.sample_censored(200 * MS, before), Some(before / 2));
        assert_eq!(
            l.sample_censored(200 * MS, before),
            None,
            "once until the next answer"
        );
        l.sample(100 * MS, 16, Some(0.0));
        let now = l.limit();
        assert_eq!(l.sample_censored(300 * MS, now), Some(now / 2));
    }

    /// Proves a limit carried into new settings keeps what it learned, clamped into the
    /// new bounds, and goes on learning from there (its latency averages came along:
    /// the next steady sample grows it rather than starting from nothing).
    #[test]
    fn a_carried_limit_keeps_what_it_learned_within_the_new_bounds() {
        let l = AdaptiveLimit::new(&cfg());
        for _ in 0..200 {
            let lim = l.limit();
            l.sample(10 * MS, lim, None);
        }
        let learned = l.limit();
        assert!(learned > 20, "grew: {learned}");
        let wider = AdaptiveConcurrencyConfig {
            smoothing: 0.3,
            ..cfg()
        };
        assert_eq!(
            l.carried(&wider).limit(),
            learned,
            "within bounds: as learned"
        );
        let capped = AdaptiveConcurrencyConfig {
            max_limit: 12,
            ..cfg()
        };
        let c = l.carried(&capped);
        assert_eq!(c.limit(), 12, "clamped to the new max_limit");
        assert!(c.same_settings(&capped));
        let raised = AdaptiveConcurrencyConfig {
            min_limit: 40,
            max_limit: 100,
            ..cfg()
        };
        let r = l.carried(&raised);
        assert_eq!(
            r.limit(),
            learned.max(40),
            "clamped up to the new min_limit"
        );
        let before = r.limit();
        r.sample(10 * MS, before, None);
        assert!(
            r.limit() >= before,
            "steady latency: no fall from a known RTT"
        );
    }
}
