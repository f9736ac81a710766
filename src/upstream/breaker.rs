//! One circuit breaker: for one endpoint, or one (endpoint, partition key) pair.
//!
//! Owns the state machine of the contract (`closed -> open -> half_open -> closed`),
//! the failure counting that opens it, the backed-off open time and the half-open probe
//! limit. It classifies nothing (the caller says whether an attempt failed) and logs
//! nothing: every state change is returned as a [`Transition`] for the caller to log
//! and count.
//!
//! Hand-written on purpose: no well-kept crate offers consecutive-failure, error-rate and
//! slow-call modes together with half-open probe limits, a backed-off open time that a
//! `Retry-After` can lengthen, force-open / reset, and a hot path that takes no lock
//! while closed.
//!
//! Rules (the contract's "Semantics", with the choices it leaves open):
//! - `failure_threshold` consecutive failures open it, in both modes. Error-rate mode
//!   (`error_rate` set) adds a second trigger, like Envoy's consecutive-5xx plus
//!   success-rate ejection: the window (10 time buckets) holds at least
//!   `request_volume_threshold` attempts and the failure share reaches
//!   `error_threshold_percentage`, or the slow share reaches `slow_call_rate_threshold`
//!   (when below 100). In error-rate mode a call of at least `slow_call_duration` is a
//!   failure in every respect; without error-rate mode, duration is ignored.
//! - Open time = `recovery_timeout * 2^n` (n = re-opens since it last closed), jittered
//!   ±10 % unless `jitter = false`, never above `max_recovery_timeout`. A `Retry-After`
//!   reported with the opening failure lengthens it (capped at the maximum).
//! - Outcomes of permits issued before the last state change count in the totals but
//!   do not move the state (a request sent while closed cannot re-open a breaker that
//!   has opened since). A permit dropped without an outcome is "cancelled": it frees its
//!   probe slot and counts nowhere.
//!
//! Touched per request (`try_acquire`, `record`, `is_available`); `set_config` on reload.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::config::BreakerConfig;
use state::Inner;
pub use state::Settle;

#[cfg(test)]
mod property_tests;
mod state;
#[cfg(test)]
mod tests;

/// The state tag kept in the low bits of [`Breaker::fast`].
const TAG_BITS: u32 = 2;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const TAG_CLOSED: u64 = 0;
const TAG_OPEN: u64 = 1;
const TAG_HALF_OPEN: u64 = 2;

/// The contract's states; serialised as `closed`, `open`, `half_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The name used in JSON, logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of `gateway_circuit_breaker_state`: 0 closed, 1 open, 2 half open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// A state change, returned for the caller to log and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
}

impl Transition {
    /// `None` when the visible state did not change.
    fn changed(self) -> Option<Transition> {
        (self.from != self.to).then_some(self)
    }
}

/// Why `try_acquire` said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Time until the breaker half-opens: the `CIRCUIT_OPEN` answer's `Retry-After`.
    /// Zero when it is half open with every probe slot taken (round up when sending);
    /// `recovery_timeout` when forced open (it has no half-open time).
    pub retry_after: Duration,
    /// Forced open by an operator: stays open until reset.
    pub forced: bool,
}

/// What became of one attempt, as the caller classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Connect error, timeout, reset, or a status in `failure_status_codes`.
    pub failure: bool,
    /// Time the attempt took; a slow call counts as a failure in error-rate mode.
    pub duration: Duration,
    /// `Retry-After` of the response: lengthens the open time if this failure opens it.
    pub retry_after: Option<Duration>,
}

impl Outcome {
    pub fn success(duration: Duration) -> Self {
        Outcome {
            failure: false,
            duration,
            retry_after: None,
        }
    }

    pub fn failure(duration: Duration) -> Self {
        Outcome {
            failure: true,
            duration,
            retry_after: None,
        }
    }

    pub fn with_retry_after(self, retry_after: Option<Duration>) -> Self {
        Outcome {
            retry_after,
            ..self
        }
    }
}

/// What `/circuit_breakers` shows for one breaker; counts are since creation or reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BreakerStats {
    pub state: BreakerState,
    pub failure_count: u64,
    pub success_count: u64,
    pub consecutive_failures: u32,
    pub times_opened: u64,
}

/// Leave to send one attempt. Record its outcome with [`Breaker::record`]; dropping it
/// unrecorded (a cancelled request) frees its probe slot.
#[derive(Debug)]
#[must_use = "record the outcome with Breaker::record; a dropped permit counts as cancelled"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    /// The state generation it was issued in: outcomes of older ones move nothing.
    generation: u64,
    probe: bool,
    transition: Option<Transition>,
    settled: bool,
}

impl Permit<'_> {
    /// Whether this attempt is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The `open -> half_open` change that issuing this permit made, if any.
    pub fn transition(&self) -> Option<Transition> {
        self.transition
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.lock().release_probe(self.generation);
        }
    }
}

/// One breaker. Shared (`Arc`) by every request to its endpoint or key.
#[derive(Debug)]
pub struct Breaker {
    /// `generation << 2 | state tag`, written under the lock whenever the generation
    /// changes, so a closed breaker admits with one atomic load and no lock.
    fast: AtomicU64,
    inner: Mutex<Inner>,
}

impl Breaker {
    pub fn new(cfg: &BreakerConfig) -> Breaker {
        Breaker {
            fast: AtomicU64::new(fast_word(0, BreakerState::Closed)),
            inner: Mutex::new(Inner::new(cfg, Instant::now())),
        }
    }

    /// Admits one attempt, or says how long until it would. An open breaker whose time
    /// has passed half-opens here (see [`Permit::transition`]).
    pub fn try_acquire(&self, now: Instant) -> Result<Permit<'_>, Rejected> {
        let (generation, probe, transition) = match self.closed_generation() {
            Some(generation) => (generation, false, None),
            None => self.locked(|inner| inner.acquire(now))?,
        };
        Ok(Permit {
            breaker: self,
            generation,
            probe,
            transition,
            settled: false,
        })
    }

    /// Records the outcome of an attempt admitted by `permit` (on the breaker that
    /// issued it) and returns the state change it caused.
    pub fn record(
        &self,
        mut permit: Permit<'_>,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Transition> {
        debug_assert!(
            std::ptr::eq(self, permit.breaker),
            "permit of another breaker"
        );
        permit.settled = true;
        let (generation, probe) = (permit.generation, permit.probe);
        permit
            .breaker
            .locked(|inner| inner.record(generation, probe, outcome, now))
    }

    /// As [`Breaker::record`] for an answer whose body still streams: when it counted
    /// as a success, the [`Settle`] that [`Breaker::late_failure`] takes if the body
    /// then fails (a clean end needs nothing).
    pub fn record_streaming(
        &self,
        mut permit: Permit<'_>,
        outcome: Outcome,
        now: Instant,
    ) -> (Option<Transition>, Option<Settle>) {
        permit.settled = true;
        let (generation, probe) = (permit.generation, permit.probe);
        permit
            .breaker
            .locked(|inner| inner.record_streamed(generation, probe, outcome, now))
    }

    /// The streamed answer `s` failed mid-body.
    pub fn late_failure(&self, s: Settle, now: Instant) -> Option<Transition> {
        self.locked(|inner| inner.late_failure(s, now))
    }

    /// Whether `try_acquire` would admit now, without taking a probe slot: the balancer
    /// skips endpoints for which this is false.
    pub fn is_available(&self, now: Instant) -> bool {
        self.rejection(now).is_none()
    }

    /// What `try_acquire` would refuse with now (`None`: it would admit), without taking
    /// a slot or half-opening: for the `Retry-After` of a `CIRCUIT_OPEN` answer.
    pub fn rejection(&self, now: Instant) -> Option<Rejected> {
        match self.closed_generation() {
            Some(_) => None,
            None => self.lock().rejection(now),
        }
    }

    /// The state as an observer sees it: an open breaker whose time has passed reads as
    /// half open.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.closed_generation() {
            Some(_) => BreakerState::Closed,
            None => self.lock().observed_state(now),
        }
    }

    pub fn stats(&self, now: Instant) -> BreakerStats {
        self.lock().stats(now)
    }

    /// Closes it and zeroes its counts and back-off (admin reset).
    pub fn reset(&self) -> Option<Transition> {
        self.locked(Inner::reset)
    }

    /// Opens it until [`Breaker::reset`], with no half-open (maintenance).
    pub fn force_open(&self) -> Option<Transition> {
        self.locked(Inner::force_open)
    }

    /// Takes new thresholds on reload, keeping the state and counts. A changed window
    /// length starts the window afresh.
    pub fn set_config(&self, cfg: &BreakerConfig) {
        self.lock().set_config(cfg);
    }

    /// The generation, when the fast word says closed.
    fn closed_generation(&self) -> Option<u64> {
        let word = self.fast.load(Ordering::Acquire);
        (word & TAG_MASK == TAG_CLOSED).then_some(word >> TAG_BITS)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing in a critical section panics; a poisoned lock still holds a valid state.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` under the lock and republishes the fast word if the generation moved.
    fn locked<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut inner = self.lock();
        let before = inner.generation();
        let r = f(&mut inner);
        if inner.generation() != before {
            let word = fast_word(inner.generation(), inner.state());
            self.fast.store(word, Ordering::Release);
        }
        r
    }
}

fn fast_word(generation: u64, state: BreakerState) -> u64 {
    let tag = match state {
        BreakerState::Closed => TAG_CLOSED,
        BreakerState::Open => TAG_OPEN,
        BreakerState::HalfOpen => TAG_HALF_OPEN,
    };
    generation << TAG_BITS | tag
}
