//! Unit tests of every breaker rule (the property test is in `property_tests.rs`).

use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::config::ErrorRateConfig;

const SEC: Duration = Duration::from_secs(1);
const CLOSED: BreakerState = BreakerState::Closed;
const OPEN: BreakerState = BreakerState::Open;
const HALF_OPEN: BreakerState = BreakerState::HalfOpen;

/// 3 consecutive failures open it for 10 s (doubling up to 60 s); 2 probe successes
/// close it; one probe at a time; no jitter.
pub(super) fn cfg() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 3,
        recovery_timeout: 10 * SEC,
        success_threshold: 2,
        half_open_max_requests: 1,
        max_recovery_timeout: 60 * SEC,
        jitter: false,
        ..BreakerConfig::default()
    }
}

/// Error-rate mode: 10 s window, at least 10 attempts, 50 %; consecutive rule out of reach.
fn rate_cfg() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 1000,
        error_rate: Some(ErrorRateConfig {
            window: 10 * SEC,
            request_volume_threshold: 10,
            error_threshold_percentage: 50.0,
        }),
        ..cfg()
    }
}

fn ok() -> Outcome {
    Outcome::success(Duration::from_millis(10))
}

fn fail() -> Outcome {
    Outcome::failure(Duration::from_millis(10))
}

fn tr(from: BreakerState, to: BreakerState) -> Option<Transition> {
    Some(Transition { from, to })
}

/// Acquires and records `n` attempts; panics if one is not admitted.
fn calls(b: &Breaker, n: usize, outcome: Outcome, now: Instant) {
    for _ in 0..n {
        call(b, outcome, now);
    }
}

/// Acquires and records one attempt; panics if it is not admitted.
fn call(b: &Breaker, outcome: Outcome, now: Instant) -> Option<Transition> {
    let permit = b.try_acquire(now).expect("admitted");
    b.record(permit, outcome, now)
}

fn open_for(b: &Breaker, now: Instant) -> Duration {
    b.try_acquire(now).expect_err("open").retry_after
}

/// Trips `b` (default `cfg`) from closed at `now`.
fn trip(b: &Breaker, now: Instant) {
    while b.state(now) == CLOSED {
        call(b, fail(), now);
    }
}

#[test]
fn opens_after_exactly_failure_threshold_consecutive_failures() {
    let b = Breaker::new(&cfg());
    let now = Instant::now();
    assert_eq!(call(&b, fail(), now), None);
    assert_eq!(call(&b, fail(), now), None);
    assert_eq!(call(&b, ok(), now), None, "a success breaks the streak");
    assert_eq!(b.stats(now).consecutive_failures, 0);
    assert_eq!(call(&b, fail(), now), None);
    assert_eq!(call(&b, fail(), now), None);
    let t = call(&b, fail(), now);
    assert_eq!(t, tr(CLOSED, OPEN));
    assert_eq!(open_for(&b, now), 10 * SEC);
    assert!(!b.is_available(now));
    let stats = b.stats(now);
    assert_eq!((stats.failure_count, stats.success_count), (5, 1));
    assert_eq!((stats.consecutive_failures, stats.times_opened), (3, 1));
}

#[test]
fn error_rate_needs_the_volume_then_trips_at_the_percentage() {
    let b = Breaker::new(&rate_cfg());
    let now = Instant::now();
    calls(&b, 9, fail(), now);
    assert_eq!(
        b.state(now),
        CLOSED,
        "9 attempts are below the volume of 10"
    );

    let b = Breaker::new(&rate_cfg());
    calls(&b, 6, ok(), now);
    calls(&b, 4, fail(), now);
    assert_eq!(b.state(now), CLOSED, "4 of 10 = 40 %");
    call(&b, fail(), now);
    assert_eq!(b.state(now), CLOSED, "5 of 11 = 45 %");
    let t = call(&b, fail(), now);
    assert_eq!(t, tr(CLOSED, OPEN), "6 of 12 = 50 %");
}

#[test]
fn error_rate_is_checked_when_a_success_brings_the_volume() {
    let b = Breaker::new(&rate_cfg());
    let now = Instant::now();
    calls(&b, 5, fail(), now);
    calls(&b, 4, ok(), now);
    assert_eq!(call(&b, ok(), now), tr(CLOSED, OPEN), "5 of 10 = 50 %");
}

#[test]
fn error_rate_forgets_attempts_older_than_the_window() {
    let b = Breaker::new(&rate_cfg());
    let start = Instant::now();
    calls(&b, 9, fail(), start);
    let later = start + 11 * SEC;
    call(&b, fail(), later);
    assert_eq!(
        b.state(later),
        CLOSED,
        "the 9 early failures left the window"
    );
}

#[test]
fn consecutive_rule_still_applies_in_error_rate_mode() {
    let b = Breaker::new(&BreakerConfig {
        failure_threshold: 3,
        ..rate_cfg()
    });
    let now = Instant::now();
    calls(&b, 3, fail(), now);
    assert_eq!(
        b.state(now),
        OPEN,
        "3 consecutive failures, below the volume"
    );
}

#[test]
fn slow_calls_count_as_failures_in_error_rate_mode_only() {
    let slow = Outcome::success(3 * SEC);
    let rate = BreakerConfig {
        failure_threshold: 3,
        slow_call_duration: Some(2 * SEC),
        ..rate_cfg()
    };
    let b = Breaker::new(&rate);
    let now = Instant::now();
    calls(&b, 3, slow, now);
    assert_eq!(b.state(now), OPEN);
    assert_eq!(b.stats(now).failure_count, 3);

    let b = Breaker::new(&BreakerConfig {
        slow_call_duration: Some(2 * SEC),
        ..cfg()
    });
    calls(&b, 3, slow, now);
    assert_eq!(b.state(now), CLOSED, "no window, no slow-call rule");
}

#[test]
fn slow_call_share_opens_below_the_error_percentage() {
    let b = Breaker::new(&BreakerConfig {
        slow_call_duration: Some(2 * SEC),
        slow_call_rate_threshold: 30.0,
        error_rate: Some(ErrorRateConfig {
            error_threshold_percentage: 90.0,
            ..rate_cfg().error_rate.expect("set")
        }),
        ..rate_cfg()
    });
    let now = Instant::now();
    let slow = Outcome::success(2 * SEC);
    calls(&b, 7, ok(), now);
    call(&b, slow, now);
    call(&b, slow, now);
    assert_eq!(b.state(now), CLOSED, "2 of 9 slow, below the volume");
    assert_eq!(
        call(&b, slow, now).map(|t| t.to),
        Some(OPEN),
        "3 of 10 = 30 %"
    );
}

#[test]
fn half_open_admits_only_the_probes_and_closes_after_success_threshold() {
    let b = Breaker::new(&BreakerConfig {
        half_open_max_requests: 2,
        success_threshold: 3,
        ..cfg()
    });
    let start = Instant::now();
    trip(&b, start);
    let now = start + 10 * SEC;
    assert_eq!(b.state(now - Duration::from_millis(1)), OPEN);
    assert_eq!(
        b.state(now),
        HALF_OPEN,
        "an open breaker whose time passed reads half open"
    );
    assert!(b.is_available(now));
    assert_eq!(b.rejection(now), None);
    assert_eq!(b.lock().state(), OPEN, "reading it did not half-open it");

    let p1 = b.try_acquire(now).expect("first probe");
    assert!(p1.is_probe());
    assert_eq!(p1.transition(), tr(OPEN, HALF_OPEN));
    let p2 = b.try_acquire(now).expect("second probe");
    assert_eq!(p2.transition(), None);
    let full = b.try_acquire(now).expect_err("only two probes at once");
    assert_eq!(b.rejection(now), Some(full));
    assert_eq!(
        full,
        Rejected {
            retry_after: Duration::ZERO,
            forced: false
        }
    );
    assert!(!b.is_available(now));

    assert_eq!(b.record(p1, ok(), now), None);
    assert_eq!(b.record(p2, ok(), now), None);
    let t = call(&b, ok(), now);
    assert_eq!(t, tr(HALF_OPEN, CLOSED));
    let p = b.try_acquire(now).expect("closed");
    assert!(!p.is_probe());
}

#[test]
fn probe_failure_reopens_with_doubled_time_up_to_the_cap() {
    let b = Breaker::new(&cfg());
    let mut now = Instant::now();
    trip(&b, now);
    for expected in [20, 40, 60, 60] {
        now += open_for(&b, now);
        let t = call(&b, fail(), now);
        assert_eq!(t, tr(HALF_OPEN, OPEN));
        assert_eq!(open_for(&b, now), expected * SEC);
    }
    // Closing resets the back-off.
    now += open_for(&b, now);
    call(&b, ok(), now);
    assert_eq!(call(&b, ok(), now).map(|t| t.to), Some(CLOSED));
    trip(&b, now);
    assert_eq!(open_for(&b, now), 10 * SEC);
    assert_eq!(b.stats(now).times_opened, 6);
}

#[test]
fn retry_after_on_the_opening_failure_sets_a_longer_open_time() {
    let now = Instant::now();
    for (retry_after, expected) in [(30, 30), (600, 60), (1, 10)] {
        let b = Breaker::new(&cfg());
        call(&b, fail(), now);
        call(&b, fail(), now);
        let f = fail().with_retry_after(Some(retry_after * SEC));
        call(&b, f, now);
        assert_eq!(
            open_for(&b, now),
            expected * SEC,
            "Retry-After {retry_after}s"
        );
    }
}

#[test]
fn jitter_spreads_open_time_by_ten_percent_never_past_the_cap() {
    let b = Breaker::new(&BreakerConfig {
        jitter: true,
        max_recovery_timeout: 10500 * Duration::from_millis(1),
        ..cfg()
    });
    let now = Instant::now();
    let times: Vec<_> = (0..200)
        .map(|_| {
            b.reset();
            trip(&b, now);
            open_for(&b, now)
        })
        .collect();
    assert!(times
        .iter()
        .all(|t| *t >= 9 * SEC && *t <= 10500 * Duration::from_millis(1)));
    assert!(times.iter().any(|t| *t < 9900 * Duration::from_millis(1)));
    assert!(times.iter().any(|t| *t > 10100 * Duration::from_millis(1)));
}

#[test]
fn force_open_holds_until_reset() {
    let b = Breaker::new(&cfg());
    let now = Instant::now();
    call(&b, ok(), now);
    assert_eq!(b.force_open(), tr(CLOSED, OPEN));
    assert_eq!(b.force_open(), None);
    let later = now + 3600 * SEC;
    let rejected = b.try_acquire(later).expect_err("forced open");
    assert!(rejected.forced);
    assert_eq!((b.state(later), b.is_available(later)), (OPEN, false));
    assert_eq!(b.stats(later).times_opened, 1);

    assert_eq!(b.reset(), tr(OPEN, CLOSED));
    assert_eq!(b.reset(), None);
    let stats = b.stats(later);
    assert_eq!(
        (stats.state, stats.success_count, stats.times_opened),
        (CLOSED, 0, 0)
    );
    assert!(b.try_acquire(later).is_ok());
}

#[test]
fn reset_clears_back_off_and_ignores_outcomes_from_before() {
    let b = Breaker::new(&cfg());
    let mut now = Instant::now();
    trip(&b, now);
    now += open_for(&b, now);
    call(&b, fail(), now); // re-opened: next open time would be 40 s
    now += open_for(&b, now);
    let probe = b.try_acquire(now).expect("probe");
    assert_eq!(b.reset(), tr(HALF_OPEN, CLOSED));
    assert_eq!(
        b.record(probe, fail(), now),
        None,
        "a probe from before the reset"
    );
    assert_eq!(b.stats(now).consecutive_failures, 0);
    trip(&b, now);
    assert_eq!(open_for(&b, now), 10 * SEC);
}

#[test]
fn late_outcomes_of_closed_permits_do_not_reopen() {
    let b = Breaker::new(&cfg());
    let mut now = Instant::now();
    let late = b.try_acquire(now).expect("closed");
    trip(&b, now);
    now += 10 * SEC;
    let probe = b.try_acquire(now).expect("probe");
    assert_eq!(b.record(late, fail(), now), None);
    assert_eq!(b.state(now), HALF_OPEN);
    assert_eq!(
        b.stats(now).failure_count,
        4,
        "counted in the totals all the same"
    );
    b.record(probe, ok(), now);
}

#[test]
fn dropped_probe_releases_its_slot() {
    let b = Breaker::new(&cfg());
    let mut now = Instant::now();
    trip(&b, now);
    now += 10 * SEC;
    let probe = b.try_acquire(now).expect("probe");
    assert!(b.try_acquire(now).is_err());
    drop(probe);
    assert!(b.is_available(now));
    let probe = b.try_acquire(now).expect("slot freed");
    assert_eq!(probe.transition(), None, "still the same half-open period");
    let stats = b.stats(now);
    assert_eq!(
        stats.success_count + stats.failure_count,
        3,
        "cancelled counts nowhere"
    );
}

#[test]
fn set_config_keeps_state_and_takes_new_thresholds() {
    let b = Breaker::new(&cfg());
    let now = Instant::now();
    call(&b, fail(), now);
    call(&b, fail(), now);
    b.set_config(&BreakerConfig {
        failure_threshold: 5,
        ..cfg()
    });
    call(&b, fail(), now);
    assert_eq!(b.state(now), CLOSED, "3 of the new 5");
    assert_eq!(b.stats(now).consecutive_failures, 3);
    call(&b, fail(), now);
    call(&b, fail(), now);
    assert_eq!(b.state(now), OPEN);
    b.set_config(&rate_cfg());
    assert_eq!(b.state(now), OPEN);
}

#[test]
fn shared_types_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Breaker>();
    send_sync::<Permit<'static>>(); // may be held across an .await
    send_sync::<crate::upstream::partition::PartitionedBreakers>();
    send_sync::<crate::upstream::retry::RetryBudget>();
}

#[test]
fn stats_serialise_as_the_admin_json() {
    let b = Breaker::new(&cfg());
    let now = Instant::now();
    trip(&b, now);
    let json = serde_json::to_value(b.stats(now + 10 * SEC)).expect("serialise");
    assert_eq!(
        json,
        serde_json::json!({"state": "half_open", "failure_count": 3, "success_count": 0,
                           "consecutive_failures": 3, "times_opened": 1})
    );
    assert_eq!((OPEN.as_str(), HALF_OPEN.gauge()), ("open", 2));
}

/// Proves: a streamed answer's success at its headers resets the consecutive
/// failures as any success does, and a failure mid-body (`late_failure`) turns it into
/// the failure it was: the count goes on from where the success had reset it, so an
/// upstream failing every answer mid-body trips at the threshold (a state change
/// reported); a late failure of an older generation moves only the totals; a slow
/// call is a failure already and gives nothing to settle.
#[test]
fn a_streamed_success_that_fails_mid_body_counts_as_a_failure() {
    let now = Instant::now();
    let b = Breaker::new(&cfg());
    calls(&b, 2, fail(), now);
    let permit = b.try_acquire(now).expect("admitted");
    let (t, settle) = b.record_streaming(permit, ok(), now);
    assert_eq!(t, None);
    let settle = settle.expect("a success to settle");
    assert_eq!(b.stats(now).consecutive_failures, 0, "a success resets");
    assert_eq!(
        b.late_failure(settle, now),
        tr(CLOSED, OPEN),
        "2 + this one: 3"
    );
    let s = b.stats(now);
    assert_eq!((s.failure_count, s.success_count), (3, 0), "{s:?}");
    assert_eq!(
        b.late_failure(settle, now),
        None,
        "opened since: totals only"
    );
    assert_eq!(b.state(now), OPEN);

    // One after another, every answer failing mid-body: the third opens.
    let b = Breaker::new(&cfg());
    for i in 0..3 {
        let permit = b.try_acquire(now).expect("admitted");
        let (_, settle) = b.record_streaming(permit, ok(), now);
        let t = b.late_failure(settle.expect("settle"), now);
        assert_eq!(
            t,
            if i == 2 { tr(CLOSED, OPEN) } else { None },
            "answer {i}"
        );
    }

    let slow_cfg = BreakerConfig {
        slow_call_duration: Some(Duration::from_millis(5)),
        ..rate_cfg()
    };
    let b = Breaker::new(&slow_cfg);
    let permit = b.try_acquire(now).expect("admitted");
    let (_, settle) = b.record_streaming(permit, ok(), now);
    assert_eq!(
        settle, None,
        "a slow call counted as a failure: nothing to settle"
    );
}

/// Proves: a half-open probe whose streamed answer fails mid-body re-opens the breaker,
/// as a failed probe does, with the back-off doubled; it does not leave it closed
/// because the probe's headers looked fine.
#[test]
fn a_probe_whose_stream_fails_mid_body_reopens() {
    let cfg = BreakerConfig {
        success_threshold: 1,
        ..cfg()
    };
    let b = Breaker::new(&cfg);
    let t0 = Instant::now();
    trip(&b, t0);
    assert_eq!(open_for(&b, t0), 10 * SEC);
    let later = t0 + 10 * SEC;
    let permit = b.try_acquire(later).expect("a probe");
    assert!(permit.is_probe());
    let (t, settle) = b.record_streaming(permit, ok(), later);
    assert_eq!(t, tr(HALF_OPEN, CLOSED), "closed at the probe's headers");
    assert_eq!(
        b.late_failure(settle.expect("settle"), later),
        tr(CLOSED, OPEN),
        "its body failed: open again"
    );
    assert_eq!(open_for(&b, later), 20 * SEC, "with the doubled back-off");
}
