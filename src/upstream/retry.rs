//! Retry arithmetic for the attempt loop: the backoff between attempts, the retry
//! budget that stops retries from multiplying an outage, `Retry-After` parsing and the
//! idempotent-method rule. Deciding *whether* an attempt may be retried (status,
//! connect failure, `Idempotency-Key`, deadline) is the attempt loop's job.
//!
//! `Backoff` is built on reload; `RetryBudget` is touched per request
//! (`record_request`) and per retry (`try_withdraw`), lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method};
use rand::Rng;
use tokio::time::Instant;

use crate::config::RetryConfig;

/// A retry policy with its backoff, valid by construction (built with the snapshot).
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub cfg: RetryConfig,
    pub backoff: Backoff,
    /// A route's own budget, when its retry table sets budget values other than its
    /// upstream's; `None`: the upstream's budget, shared by its routes.
    pub budget: Option<Arc<RetryBudget>>,
}

impl RetryPolicy {
    pub fn new(cfg: &RetryConfig) -> Result<RetryPolicy, BackoffError> {
        Ok(RetryPolicy {
            backoff: Backoff::from_config(cfg)?,
            cfg: cfg.clone(),
            budget: None,
        })
    }

    /// The budget retries under this policy draw from.
    pub fn budget<'a>(&'a self, upstream: &'a RetryBudget) -> &'a RetryBudget {
        self.budget.as_deref().unwrap_or(upstream)
    }
}

/// Length of the budget's sliding window, in one-second buckets (the contract's 10 s).
const BUDGET_BUCKETS: u32 = 10;

/// Exponential backoff: the delay before retry n (n >= 1) is
/// `min(max, base * 2^(n-1))`, with "equal jitter" when enabled: uniform in `[d/2, d]`.
///
/// Equal jitter rather than full jitter (`[0, d]`, Envoy's choice): a retry still waits
/// at least half its step, so a shedding inference server gets a real pause instead of
/// an immediate second hit, while retries of many callers are still spread over half
/// the interval. The delay never exceeds the unjittered value, so [`Backoff::ceiling`]
/// is a safe bound when checking that a wait fits before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackoffError {
    #[error("max_delay ({max:?}) is shorter than base_delay ({base:?})")]
    MaxBelowBase { base: Duration, max: Duration },
}

impl Backoff {
    /// A zero `base` is allowed (retry at once); `max` below `base` is not.
    pub fn try_new(base: Duration, max: Duration, jitter: bool) -> Result<Backoff, BackoffError> {
        if max < base {
            return Err(BackoffError::MaxBelowBase { base, max });
        }
        Ok(Backoff { base, max, jitter })
    }

    pub fn from_config(cfg: &RetryConfig) -> Result<Backoff, BackoffError> {
        Backoff::try_new(cfg.base_delay, cfg.max_delay, cfg.jitter)
    }

    /// The unjittered delay before retry `retry` (1 = the first retry; 0 acts as 1):
    /// the most [`Backoff::delay`] can return.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.max)
    }

    /// The delay before retry `retry`, jittered when enabled.
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, &mut rand::thread_rng())
    }

    /// As [`Backoff::delay`], drawing from `rng` (for seeded tests).
    pub fn delay_with<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(retry);
        if !self.jitter {
            return ceiling;
        }
        let factor = 0.5 + 0.5 * rng.gen::<f64>();
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * factor)
            .map_or(ceiling, |d| d.min(ceiling))
    }
}

/// Retry budget of one upstream (Finagle / linkerd style): a retry is allowed while the
/// retries of the last 10 s stay below `percent`% of that window's requests plus
/// `min_per_second * 10`. Bucketed by second, so the window slides in one-second steps.
///
/// Lock-free: each bucket is one atomic word holding `second << 32 | count`; a stale
/// bucket is restarted by whoever writes it first. Two racing retries may both pass the
/// check and overshoot by one each, which a budget can afford.
#[derive(Debug)]
pub struct RetryBudget {
    origin: Instant,
    /// Retries allowed per request in the window (`percent / 100`).
    ratio: f64,
    /// Retries allowed in the window whatever the traffic (`min_per_second * 10`).
    floor: f64,
    requests: [AtomicU64; BUDGET_BUCKETS as usize],
    retries: [AtomicU64; BUDGET_BUCKETS as usize],
}

impl RetryBudget {
    /// `percent` below zero or not a number acts as 0.
    pub fn new(percent: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            origin: Instant::now(),
            ratio: if percent > 0.0 { percent / 100.0 } else { 0.0 },
            floor: f64::from(min_per_second) * f64::from(BUDGET_BUCKETS),
            requests: Default::default(),
            retries: Default::default(),
        }
    }

    pub fn from_config(cfg: &RetryConfig) -> RetryBudget {
        RetryBudget::new(cfg.budget_percent, cfg.budget_min_per_second)
    }

    /// Counts one downstream request (once per request, not per attempt).
    pub fn record_request(&self, now: Instant) {
        bump(&self.requests, self.second(now));
    }

    /// Takes one retry from the budget if it has one left.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let second = self.second(now);
        let requests = sum(&self.requests, second) as f64;
        let retries = sum(&self.retries, second) as f64;
        if retries < requests * self.ratio + self.floor {
            bump(&self.retries, second);
            true
        } else {
            false
        }
    }

    fn second(&self, now: Instant) -> u32 {
        // Wraps after 136 years of uptime, harmlessly (buckets compare by difference).
        now.saturating_duration_since(self.origin).as_secs() as u32
    }
}

fn bump(buckets: &[AtomicU64; BUDGET_BUCKETS as usize], second: u32) {
    let slot = &buckets[(second % BUDGET_BUCKETS) as usize];
    let mut current = slot.load(Ordering::Relaxed);
    loop {
        let next = if (current >> 32) as u32 == second {
            if current as u32 == u32::MAX {
                return;
            }
            current + 1
        } else {
            u64::from(second) << 32 | 1
        };
        match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

fn sum(buckets: &[AtomicU64; BUDGET_BUCKETS as usize], second: u32) -> u64 {
    buckets
        .iter()
        .map(|slot| slot.load(Ordering::Relaxed))
        .filter(|word| {
            // Age in seconds; -1 is a bucket just started by a caller whose clock read
            // a little later than ours.
            let age = second.wrapping_sub((word >> 32) as u32) as i32;
            (-1..BUDGET_BUCKETS as i32).contains(&age)
        })
        .map(|word| u64::from(word as u32))
        .sum()
}

/// The wait a `Retry-After` value asks for: delta-seconds (`120`) or an HTTP date,
/// measured from `now` (a date in the past means no wait). `None` when malformed.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: only overflow can fail, and that means "very long".
        return Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// RFC 9110 idempotent methods: GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
pub fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn backoff_doubles_up_to_max() {
        let b = Backoff::try_new(500 * MS, 5000 * MS, false).expect("valid");
        let delays: Vec<_> = (1..=6).map(|n| b.delay(n)).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000, 5000].map(|m| m * MS));
        assert_eq!(b.delay(0), 500 * MS);
        assert_eq!(b.delay(u32::MAX), 5000 * MS);
        let huge = Backoff::try_new(Duration::MAX, Duration::MAX, true).expect("valid");
        assert!(huge.delay(40) <= Duration::MAX);
    }

    #[test]
    fn backoff_rejects_max_below_base_and_allows_zero_base() {
        assert_eq!(
            Backoff::try_new(2 * MS, MS, true),
            Err(BackoffError::MaxBelowBase {
                base: 2 * MS,
                max: MS
            })
        );
        let zero = Backoff::try_new(Duration::ZERO, MS, true).expect("valid");
        assert_eq!(zero.delay(3), Duration::ZERO);
    }

    #[test]
    fn equal_jitter_stays_within_half_and_whole_step() {
        let b = Backoff::try_new(500 * MS, 5000 * MS, true).expect("valid");
        let mut rng = StdRng::seed_from_u64(7);
        for retry in 1..=6 {
            let ceiling = b.ceiling(retry);
            let samples: Vec<_> = (0..1000).map(|_| b.delay_with(retry, &mut rng)).collect();
            assert!(samples.iter().all(|d| *d >= ceiling / 2 && *d <= ceiling));
            // Spread over the range, not stuck at one end.
            assert!(samples.iter().any(|d| *d < ceiling * 6 / 10));
            assert!(samples.iter().any(|d| *d > ceiling * 9 / 10));
        }
    }

    #[test]
    fn budget_allows_percent_of_requests() {
        let budget = RetryBudget::new(20.0, 0);
        let now = Instant::now();
        for _ in 0..100 {
            budget.record_request(now);
        }
        assert_eq!((0..30).filter(|_| budget.try_withdraw(now)).count(), 20);
    }

    #[test]
    fn budget_floor_allows_min_per_second_times_ten_without_traffic() {
        let budget = RetryBudget::new(20.0, 1);
        let now = Instant::now();
        assert_eq!((0..30).filter(|_| budget.try_withdraw(now)).count(), 10);
        for _ in 0..50 {
            budget.record_request(now);
        }
        // 10 floor + 20 % of 50 = 20 in all, 10 of them already spent.
        assert_eq!((0..30).filter(|_| budget.try_withdraw(now)).count(), 10);
    }

    #[test]
    fn budget_window_slides() {
        let budget = RetryBudget::new(50.0, 0);
        let start = Instant::now();
        for _ in 0..10 {
            budget.record_request(start);
        }
        assert_eq!((0..10).filter(|_| budget.try_withdraw(start)).count(), 5);
        let later = start + Duration::from_secs(5);
        assert!(!budget.try_withdraw(later), "still inside the window");
        for _ in 0..10 {
            budget.record_request(later);
        }
        // 20 requests, 5 retries in the window -> 5 more.
        assert_eq!((0..10).filter(|_| budget.try_withdraw(later)).count(), 5);
        // 11 s after start the first second's requests and retries have left.
        let after = start + Duration::from_secs(11);
        assert_eq!((0..10).filter(|_| budget.try_withdraw(after)).count(), 0);
        let gone = start + Duration::from_secs(30);
        for _ in 0..4 {
            budget.record_request(gone);
        }
        assert_eq!((0..10).filter(|_| budget.try_withdraw(gone)).count(), 2);
    }

    #[test]
    fn budget_nonsense_percent_acts_as_zero() {
        let budget = RetryBudget::new(f64::NAN, 0);
        let now = Instant::now();
        budget.record_request(now);
        assert!(!budget.try_withdraw(now));
        assert!(!RetryBudget::new(-5.0, 0).try_withdraw(now));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let parse = |s: &str| parse_retry_after(&HeaderValue::from_str(s).expect("ascii"), now);
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(
            parse("99999999999999999999999"),
            Some(Duration::from_secs(u64::MAX))
        );
        let in_30s = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(parse(&in_30s), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(parse(&past), Some(Duration::ZERO));
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "+5",
            "Tue, 99 Nov 2023 00:00:00 GMT",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let opaque = HeaderValue::from_bytes(b"\xff12").expect("opaque bytes");
        assert_eq!(parse_retry_after(&opaque, now), None);
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(is_idempotent(&m.parse().expect("method")), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE"] {
            assert!(!is_idempotent(&m.parse().expect("method")), "{m}");
        }
    }
}
