//! State-machine property test: random sequences of acquire / record / drop / advance
//! time / reset / force open, checking after every step that the breaker is in no
//! forbidden state.

use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::config::ErrorRateConfig;

const SEC: Duration = Duration::from_secs(1);
const CLOSED: BreakerState = BreakerState::Closed;
const OPEN: BreakerState = BreakerState::Open;

#[derive(Debug, Clone)]
enum Op {
    Acquire,
    Record {
        pick: usize,
        failure: bool,
        slow: bool,
        retry_after: Option<u8>,
    },
    Drop(usize),
    Advance(u16),
    /// Advance exactly to the end of the open time, to hit the boundary.
    WaitOut,
    Reset,
    ForceOpen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => Just(Op::Acquire),
        6 => (any::<usize>(), any::<bool>(), any::<bool>(), proptest::option::of(0u8..90))
            .prop_map(|(pick, failure, slow, retry_after)| Op::Record { pick, failure, slow, retry_after }),
        1 => any::<usize>().prop_map(Op::Drop),
        3 => (0u16..25_000).prop_map(Op::Advance),
        1 => Just(Op::WaitOut),
        1 => Just(Op::Reset),
        1 => Just(Op::ForceOpen),
    ]
}

fn random_cfg() -> impl Strategy<Value = BreakerConfig> {
    (1u32..5, 1u32..4, 1u32..4, any::<bool>(), any::<bool>()).prop_map(
        |(failures, successes, probes, rate, jitter)| BreakerConfig {
            failure_threshold: failures,
            success_threshold: successes,
            half_open_max_requests: probes,
            jitter,
            slow_call_duration: Some(2 * SEC),
            slow_call_rate_threshold: 60.0,
            error_rate: rate.then_some(ErrorRateConfig {
                window: 10 * SEC,
                request_volume_threshold: 4,
                error_threshold_percentage: 50.0,
            }),
            ..super::tests::cfg()
        },
    )
}

/// What the test has seen: the chain of reported transitions and the outcomes recorded.
struct Model {
    state: BreakerState,
    recorded: u64,
    opened: u64,
}

impl Model {
    fn saw(&mut self, t: Option<Transition>) {
        if let Some(t) = t {
            assert_eq!(t.from, self.state, "transitions chain");
            assert_ne!(t.from, t.to);
            self.state = t.to;
            self.opened += u64::from(t.to == OPEN);
        }
    }
}

proptest! {
    #[test]
    fn state_machine_never_reaches_a_forbidden_state(
        cfg in random_cfg(),
        ops in proptest::collection::vec(op(), 1..150),
    ) {
        let b = Breaker::new(&cfg);
        let mut now = Instant::now();
        let mut permits: Vec<Permit<'_>> = Vec::new();
        let mut model = Model { state: CLOSED, recorded: 0, opened: 0 };
        for op in ops {
            match op {
                Op::Acquire => {
                    let available = b.is_available(now);
                    let rejection = b.rejection(now);
                    let result = b.try_acquire(now);
                    prop_assert_eq!(available, result.is_ok(), "is_available agrees");
                    prop_assert_eq!(rejection, result.as_ref().err().copied());
                    if let Ok(p) = result {
                        model.saw(p.transition());
                        permits.push(p);
                    }
                }
                Op::Record { pick, failure, slow, retry_after } if !permits.is_empty() => {
                    let p = permits.swap_remove(pick % permits.len());
                    let duration = if slow { 3 * SEC } else { SEC };
                    let retry_after = retry_after.map(|s| u32::from(s) * SEC);
                    let outcome = Outcome { failure, duration, retry_after };
                    let stale = p.generation != b.lock().generation();
                    let t = b.record(p, outcome, now);
                    prop_assert!(!stale || t.is_none(), "late outcomes move nothing");
                    model.saw(t);
                    model.recorded += 1;
                }
                Op::Drop(pick) if !permits.is_empty() => {
                    drop(permits.swap_remove(pick % permits.len()));
                }
                Op::Advance(ms) => now += Duration::from_millis(ms.into()),
                Op::WaitOut => match b.try_acquire(now) {
                    Err(rejected) => now += rejected.retry_after,
                    Ok(p) => {
                        model.saw(p.transition());
                        permits.push(p);
                    }
                },
                Op::Reset => {
                    model.saw(b.reset());
                    model.recorded = 0;
                    model.opened = 0;
                }
                Op::ForceOpen => model.saw(b.force_open()),
                _ => {}
            }

            let inner = b.lock();
            let stats = inner.stats(now);
            prop_assert_eq!(inner.state(), model.state);
            prop_assert_eq!(stats.success_count + stats.failure_count, model.recorded);
            prop_assert_eq!(stats.times_opened, model.opened);
            let live_probes = permits
                .iter()
                .filter(|p| p.probe && p.generation == inner.generation())
                .count() as u32;
            if let Some(probes_out) = inner.probes_out() {
                prop_assert_eq!(probes_out, live_probes, "every live probe holds a slot");
                prop_assert!(probes_out <= cfg.half_open_max_requests);
            } else {
                prop_assert_eq!(live_probes, 0);
            }
            if model.state == CLOSED {
                prop_assert!(stats.consecutive_failures < cfg.failure_threshold);
            }
            drop(inner);
            if b.state(now) == OPEN {
                prop_assert!(b.try_acquire(now).is_err(), "open never admits");
                prop_assert!(!b.is_available(now));
            }
        }
    }
}
