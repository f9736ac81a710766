//! The breaker's state machine, run under its lock: the rules listed in `breaker.rs`,
//! the normalised settings they read, and the error-rate window.

use std::time::Duration;

use tokio::time::Instant;

use super::{BreakerState, BreakerStats, Outcome, Rejected, Transition};
use crate::config::BreakerConfig;

/// Open time used when `now + open time` would overflow the clock (30 years).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);
/// Spread of the open time either way (0.1 = ±10 %), so endpoints that opened together
/// do not re-probe in lockstep.
const OPEN_JITTER: f64 = 0.1;
/// Buckets in the error-rate window: it slides in steps of a tenth of its length.
const WINDOW_BUCKETS: u64 = 10;

/// The config values the state machine reads, normalised (thresholds of 0 act as 1, the
/// maximum open time is at least `recovery_timeout`).
#[derive(Debug, Clone, Copy)]
struct Settings {
    failure_threshold: u32,
    success_threshold: u32,
    half_open_max: u32,
    recovery: Duration,
    max_recovery: Duration,
    jitter: bool,
    rate: Option<RateSettings>,
}

#[derive(Debug, Clone, Copy)]
struct RateSettings {
    window: Duration,
    volume: u32,
    error_pct: f64,
    slow_call: Option<Duration>,
    slow_pct: f64,
}

impl From<&BreakerConfig> for Settings {
    fn from(cfg: &BreakerConfig) -> Self {
        Settings {
            failure_threshold: cfg.failure_threshold.max(1),
            success_threshold: cfg.success_threshold.max(1),
            half_open_max: cfg.half_open_max_requests.max(1),
            recovery: cfg.recovery_timeout,
            max_recovery: cfg.max_recovery_timeout.max(cfg.recovery_timeout),
            jitter: cfg.jitter,
            rate: cfg.error_rate.as_ref().map(|r| RateSettings {
                window: r.window,
                volume: r.request_volume_threshold,
                error_pct: r.error_threshold_percentage,
                slow_call: cfg.slow_call_duration,
                slow_pct: cfg.slow_call_rate_threshold,
            }),
        }
    }
}

impl Settings {
    fn window(&self) -> Option<Duration> {
        self.rate.map(|r| r.window)
    }

    fn is_slow(&self, duration: Duration) -> bool {
        matches!(self.rate, Some(RateSettings { slow_call: Some(s), .. }) if duration >= s)
    }

    /// `recovery * 2^reopens`, capped, then jittered (never above the cap).
    fn open_time(&self, reopens: u32) -> Duration {
        let doubled = self
            .recovery
            .saturating_mul(1u32 << reopens.min(31))
            .min(self.max_recovery);
        if !self.jitter {
            return doubled;
        }
        let factor = 1.0 - OPEN_JITTER + 2.0 * OPEN_JITTER * rand::random::<f64>();
        Duration::try_from_secs_f64(doubled.as_secs_f64() * factor)
            .unwrap_or(doubled)
            .min(self.max_recovery)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// Forced open by an operator: no half-open until reset.
    Forced,
    HalfOpen {
        probes_out: u32,
        successes: u32,
    },
}

impl Phase {
    fn state(self) -> BreakerState {
        match self {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } | Phase::Forced => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// A success of a streamed answer, recorded at its headers: what turns it into a
/// failure if its body then fails ([`Inner::late_failure`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settle {
    generation: u64,
    /// The consecutive failures that success reset.
    before: u32,
    at: Instant,
    /// A half-open probe's success (in the generation it left the breaker in): its
    /// failure re-opens, as a probe failure does, with the re-opens counted before.
    probe: bool,
    reopens: u32,
}

#[derive(Debug)]
pub(super) struct Inner {
    settings: Settings,
    phase: Phase,
    /// Bumped on every state change (and reset), so late outcomes can be told apart.
    generation: u64,
    /// Re-opens since the breaker last closed: the exponent of the open-time back-off.
    reopens: u32,
    consecutive: u32,
    failures: u64,
    successes: u64,
    times_opened: u64,
    /// Recent attempts while closed, for error-rate mode.
    window: Window,
}

impl Inner {
    pub(super) fn new(cfg: &BreakerConfig, now: Instant) -> Inner {
        let settings = Settings::from(cfg);
        Inner {
            phase: Phase::Closed,
            generation: 0,
            reopens: 0,
            consecutive: 0,
            failures: 0,
            successes: 0,
            times_opened: 0,
            window: Window::new(now, settings.window()),
            settings,
        }
    }

    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// The state without the time-based reading of `observed_state`.
    pub(super) fn state(&self) -> BreakerState {
        self.phase.state()
    }

    /// Probe slots taken, when half open.
    #[cfg(test)]
    pub(super) fn probes_out(&self) -> Option<u32> {
        match self.phase {
            Phase::HalfOpen { probes_out, .. } => Some(probes_out),
            _ => None,
        }
    }

    /// What `acquire` would refuse with now; `None` when it would admit.
    pub(super) fn rejection(&self, now: Instant) -> Option<Rejected> {
        let (retry_after, forced) = match self.phase {
            Phase::Forced => (self.settings.recovery, true),
            Phase::Open { until } if now < until => (until.saturating_duration_since(now), false),
            Phase::HalfOpen { probes_out, .. } if probes_out >= self.settings.half_open_max => {
                (Duration::ZERO, false)
            }
            Phase::Closed | Phase::Open { .. } | Phase::HalfOpen { .. } => return None,
        };
        Some(Rejected {
            retry_after,
            forced,
        })
    }

    pub(super) fn stats(&self, now: Instant) -> BreakerStats {
        BreakerStats {
            state: self.observed_state(now),
            failure_count: self.failures,
            success_count: self.successes,
            consecutive_failures: self.consecutive,
            times_opened: self.times_opened,
        }
    }

    pub(super) fn reset(&mut self) -> Option<Transition> {
        let t = self.enter(Phase::Closed).changed();
        self.reopens = 0;
        self.consecutive = 0;
        self.failures = 0;
        self.successes = 0;
        self.times_opened = 0;
        self.window.clear();
        t
    }

    pub(super) fn force_open(&mut self) -> Option<Transition> {
        let t = self.enter(Phase::Forced).changed();
        if t.is_some() {
            self.times_opened += 1;
        }
        t
    }

    pub(super) fn set_config(&mut self, cfg: &BreakerConfig) {
        let settings = Settings::from(cfg);
        if settings.window() != self.settings.window() {
            self.window = Window::new(self.window.origin, settings.window());
        }
        self.settings = settings;
    }

    pub(super) fn observed_state(&self, now: Instant) -> BreakerState {
        match self.phase {
            Phase::Open { until } if now >= until => BreakerState::HalfOpen,
            phase => phase.state(),
        }
    }

    /// Moves to `phase` in a new generation; returns the move of the visible state
    /// (possibly from a state to itself: see [`Transition::changed`]).
    fn enter(&mut self, phase: Phase) -> Transition {
        let from = self.phase.state();
        self.phase = phase;
        self.generation += 1;
        Transition {
            from,
            to: phase.state(),
        }
    }

    pub(super) fn acquire(
        &mut self,
        now: Instant,
    ) -> Result<(u64, bool, Option<Transition>), Rejected> {
        if let Some(rejected) = self.rejection(now) {
            return Err(rejected);
        }
        match &mut self.phase {
            Phase::Closed => Ok((self.generation, false, None)),
            Phase::HalfOpen { probes_out, .. } => {
                *probes_out += 1;
                Ok((self.generation, true, None))
            }
            // Open past its time (forced open never gets here): the first probe.
            Phase::Open { .. } | Phase::Forced => {
                let phase = Phase::HalfOpen {
                    probes_out: 1,
                    successes: 0,
                };
                let t = self.enter(phase);
                Ok((self.generation, true, Some(t)))
            }
        }
    }

    pub(super) fn release_probe(&mut self, generation: u64) {
        if let (true, Phase::HalfOpen { probes_out, .. }) =
            (generation == self.generation, &mut self.phase)
        {
            *probes_out = probes_out.saturating_sub(1);
        }
    }

    pub(super) fn record(
        &mut self,
        generation: u64,
        probe: bool,
        o: Outcome,
        now: Instant,
    ) -> Option<Transition> {
        self.record_streamed(generation, probe, o, now).0
    }

    /// A streamed answer counted a success at its headers failed mid-body (the
    /// upstream reset it, closed it short, or stalled past its idle timeout): it counts
    /// as the failure it was. The consecutive failures go on from where that success
    /// had reset them (so an upstream failing every answer mid-body still trips), and
    /// in the window the success becomes a failure. A breaker that changed state since
    /// only moves its totals.
    pub(super) fn late_failure(&mut self, s: Settle, now: Instant) -> Option<Transition> {
        self.successes = self.successes.saturating_sub(1);
        self.failures += 1;
        if s.generation != self.generation {
            return None;
        }
        if s.probe && matches!(self.phase, Phase::Closed | Phase::HalfOpen { .. }) {
            // The probe that closed the breaker (or counted toward closing it) failed
            // after all: open again, with the back-off of a failed probe.
            self.reopens = s.reopens.saturating_add(1);
            return Some(self.open(now, None));
        }
        if !matches!(self.phase, Phase::Closed) {
            return None;
        }
        self.consecutive = self.consecutive.max(s.before).saturating_add(1);
        self.window.amend(s.at, now);
        let tripped = self.consecutive >= self.settings.failure_threshold || self.rate_tripped(now);
        tripped.then(|| self.open(now, None))
    }

    /// As `record`, for an answer whose body still streams: when it counted as a
    /// success, what [`Inner::late_failure`] needs if the body then fails.
    pub(super) fn record_streamed(
        &mut self,
        generation: u64,
        probe: bool,
        o: Outcome,
        now: Instant,
    ) -> (Option<Transition>, Option<Settle>) {
        let slow = self.settings.is_slow(o.duration);
        let failure = o.failure || slow;
        if failure {
            self.failures += 1;
        } else {
            self.successes += 1;
        }
        if generation != self.generation {
            return (None, None);
        }
        let before = self.consecutive;
        self.consecutive = if failure {
            self.consecutive.saturating_add(1)
        } else {
            0
        };
        match &mut self.phase {
            Phase::Closed => {
                self.window.record(now, failure, slow);
                // The rate is checked after successes too: the attempt that brings the
                // window up to the volume may be a success.
                let tripped = (failure && self.consecutive >= self.settings.failure_threshold)
                    || self.rate_tripped(now);
                let settle = (!failure).then_some(Settle {
                    generation,
                    before,
                    at: now,
                    probe: false,
                    reopens: 0,
                });
                (tripped.then(|| self.open(now, o.retry_after)), settle)
            }
            Phase::HalfOpen {
                probes_out,
                successes,
            } if probe => {
                *probes_out = probes_out.saturating_sub(1);
                if failure {
                    self.reopens = self.reopens.saturating_add(1);
                    return (Some(self.open(now, o.retry_after)), None);
                }
                *successes += 1;
                let reopens = self.reopens;
                let probe_settle = |generation| Settle {
                    generation,
                    before: 0,
                    at: now,
                    probe: true,
                    reopens,
                };
                if *successes < self.settings.success_threshold {
                    return (None, Some(probe_settle(generation)));
                }
                // A late failure of the closing probe re-opens with the next doubling
                // (its `Settle` keeps the re-opens counted so far).
                self.reopens = 0;
                self.consecutive = 0;
                self.window.clear();
                let t = self.enter(Phase::Closed);
                (Some(t), Some(probe_settle(self.generation)))
            }
            // No permit of the current generation is issued while open or forced, and
            // every half-open permit is a probe.
            _ => (None, None),
        }
    }

    fn rate_tripped(&self, now: Instant) -> bool {
        let Some(rate) = self.settings.rate else {
            return false;
        };
        let (total, failures, slow) = self.window.totals(now);
        if total == 0 || total < u64::from(rate.volume) {
            return false;
        }
        let share = |n: u64| n as f64 * 100.0 / total as f64;
        share(failures) >= rate.error_pct || (rate.slow_pct < 100.0 && share(slow) >= rate.slow_pct)
    }

    fn open(&mut self, now: Instant, retry_after: Option<Duration>) -> Transition {
        let mut time = self.settings.open_time(self.reopens);
        if let Some(ra) = retry_after {
            time = time.max(ra.min(self.settings.max_recovery));
        }
        let until = now
            .checked_add(time)
            .or_else(|| now.checked_add(FAR_FUTURE))
            .unwrap_or(now);
        self.window.clear();
        self.times_opened += 1;
        self.enter(Phase::Open { until })
    }
}

/// Attempt counts in `WINDOW_BUCKETS` time buckets covering the error-rate window.
#[derive(Debug)]
struct Window {
    origin: Instant,
    bucket_nanos: u64,
    buckets: [Bucket; WINDOW_BUCKETS as usize],
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    total: u32,
    failures: u32,
    slow: u32,
}

impl Window {
    fn new(origin: Instant, window: Option<Duration>) -> Window {
        let nanos = window.unwrap_or_default().as_nanos() / u128::from(WINDOW_BUCKETS);
        Window {
            origin,
            bucket_nanos: u64::try_from(nanos).unwrap_or(u64::MAX).max(1),
            buckets: [Bucket::default(); WINDOW_BUCKETS as usize],
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(since).unwrap_or(u64::MAX) / self.bucket_nanos
    }

    fn record(&mut self, now: Instant, failure: bool, slow: bool) {
        let epoch = self.epoch(now);
        let b = &mut self.buckets[(epoch % WINDOW_BUCKETS) as usize];
        if b.epoch != epoch {
            *b = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        b.total = b.total.saturating_add(1);
        b.failures = b.failures.saturating_add(u32::from(failure));
        b.slow = b.slow.saturating_add(u32::from(slow));
    }

    /// (attempts, failures, slow calls) in the buckets of the last window.
    fn totals(&self, now: Instant) -> (u64, u64, u64) {
        let epoch = self.epoch(now);
        self.buckets
            .iter()
            .filter(|b| epoch.saturating_sub(b.epoch) < WINDOW_BUCKETS)
            .fold((0, 0, 0), |(t, f, s), b| {
                (
                    t + u64::from(b.total),
                    f + u64::from(b.failures),
                    s + u64::from(b.slow),
                )
            })
    }

    fn clear(&mut self) {
        self.buckets = [Bucket::default(); WINDOW_BUCKETS as usize];
    }

    /// The success recorded at `at` was a failure: counted so in its bucket while that
    /// bucket is still in the window, else as a failure now.
    fn amend(&mut self, at: Instant, now: Instant) {
        let epoch = self.epoch(at);
        let b = &mut self.buckets[(epoch % WINDOW_BUCKETS) as usize];
        if b.epoch == epoch && b.failures < b.total {
            b.failures += 1;
        } else {
            self.record(now, true, false);
        }
    }
}
