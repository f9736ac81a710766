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

fn config() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 5,
        recovery_timeout: Duration::from_secs(30),
        success_threshold: 2,
        half_open_max_requests: 1,
        max_recovery_timeout: Duration::from_secs(300),
        failure_status_codes: vec![500, 502, 503, 504],
        failure_grpc_codes: vec![2, 4, 13, 14],
        error_rate: None,
        slow_call_duration: None,
        slow_call_rate_threshold: 100.0,
        partition_by: None,
        max_partitions: 10_000,
        jitter: true,
    }
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
