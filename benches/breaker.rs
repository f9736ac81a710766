// Per-request cost of the resilience core: one breaker admit + record (alone and with
// two threads on the same breaker) and one retry-budget check. Plain `//` comments:
// this file is also `include!`d by a scratch harness.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant as StdInstant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use fusebox::config::BreakerConfig;
use fusebox::upstream::breaker::{Breaker, Outcome};
use fusebox::upstream::retry::RetryBudget;
use tokio::time::Instant;

/// The contract's defaults (5 / 30 s / 2 / 1 / 5 m, jitter on).
fn config() -> BreakerConfig {
    BreakerConfig::default()
}

fn admit_and_record(breaker: &Breaker, now: Instant) {
    if let Ok(permit) = breaker.try_acquire(now) {
        black_box(breaker.record(permit, Outcome::success(Duration::from_millis(3)), now));
    }
}

fn breaker_uncontended(c: &mut Criterion) {
    let breaker = Breaker::new(&config());
    let now = Instant::now();
    c.bench_function("breaker/acquire+record", |b| {
        b.iter(|| admit_and_record(black_box(&breaker), now))
    });
}

fn breaker_two_threads(c: &mut Criterion) {
    c.bench_function("breaker/acquire+record, 2 threads", |b| {
        b.iter_custom(|iters| {
            let breaker = Arc::new(Breaker::new(&config()));
            let now = Instant::now();
            let started = StdInstant::now();
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let breaker = Arc::clone(&breaker);
                    thread::spawn(move || {
                        for _ in 0..iters {
                            admit_and_record(&breaker, now);
                        }
                    })
                })
                .collect();
            for worker in workers {
                worker.join().expect("bench thread");
            }
            // Wall time per call on each thread: compare with the uncontended figure.
            started.elapsed()
        })
    });
}

fn budget_check(c: &mut Criterion) {
    let budget = RetryBudget::new(20.0, 10);
    let now = Instant::now();
    c.bench_function("retry_budget/record_request+try_withdraw", |b| {
        b.iter(|| {
            budget.record_request(now);
            black_box(budget.try_withdraw(now))
        })
    });
}

criterion_group!(
    benches,
    breaker_uncontended,
    breaker_two_threads,
    budget_check
);
criterion_main!(benches);
