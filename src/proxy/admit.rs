//! Route-level admission: the token-bucket rate limit (429 `RATE_LIMITED`), the
//! concurrency limit with its bounded wait queue (503 `OVERLOADED`), and fault
//! injection. Each returns a verdict (with the `Retry-After` wait); turning it into a
//! response, metrics and log fields is the caller's job.
//!
//! Built per route with the snapshot; touched per request (`check`, `acquire`,
//! `decide`): one short lock for the rate limit, a semaphore and atomics for
//! concurrency, the thread-local rng for faults. Nothing here awaits while locked.

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{HeaderMap, HeaderName, StatusCode};
use lru::LruCache;
use rand::Rng;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{ConcurrencyConfig, FaultConfig, RateLimitConfig, RateLimitKey};

/// Longest rate-limit key kept, in bytes; longer header values are cut to this (values
/// sharing their first 256 bytes share a bucket), bounding the key table at
/// `max_keys * 256` bytes of keys, as the breaker partitions do.
pub const MAX_KEY_BYTES: usize = 256;

/// `Retry-After` when shedding (full queue, or a wait past `queue_timeout`): 1 s, the
/// smallest non-zero value the header's whole seconds carry. Shedding reflects this
/// moment's load (queue waits are ~100 ms) and no latency estimate is kept that would
/// found a longer wait; a longer one would leave capacity idle once it frees up.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

// Hand-written rather than `governor`: its keyed limiters keep a DashMap/HashMap with
// no capacity bound; keys leave only when the owner calls `retain_recent()`, so key
// spraying grows the table without limit between cleanups (and each cleanup walks
// every key). `check_key(&K)` also wants an owned key (an allocation per request for a
// header value), and it reads its own clock, not tokio's paused one. A custom
// `StateStore` over `lru` would leave it only the arithmetic of `Bucket::take`.

/// A token-bucket rate limit for one route: one bucket, or one per key in a table of
/// at most `max_keys` keys (least recently used dropped; a dropped key returns full).
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: Buckets,
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    per_second: f64,
    /// Capacity: the most requests admitted at once after a quiet spell.
    burst: f64,
}

#[derive(Debug)]
enum Buckets {
    Global(Mutex<Bucket>),
    Header {
        name: HeaderName,
        /// Shared by requests without the header; outside the table, never evicted.
        absent: Mutex<Bucket>,
        /// By the header's first value, cut to `MAX_KEY_BYTES`. `Box<[u8]>` borrows as
        /// `[u8]`, so a known key is found from the request's bytes without allocating.
        keys: Mutex<LruCache<Box<[u8]>, Bucket>>,
    },
    ClientIp(Mutex<LruCache<IpAddr, Bucket>>),
}

/// Tokens left as of `at`; refilled lazily when next touched.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            at: now,
        }
    }

    /// Takes one token, or says how long until one is available (always > 0).
    fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        // A caller that read the clock before another's check gets no refill rather
        // than moving `at` backwards.
        if now > self.at {
            let refill = (now - self.at).as_secs_f64() * rate.per_second;
            self.tokens = (self.tokens + refill).min(rate.burst);
            self.at = now;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let wait = Duration::try_from_secs_f64((1.0 - self.tokens) / rate.per_second);
        Err(wait.unwrap_or(Duration::MAX).max(Duration::from_nanos(1)))
    }
}

impl RateLimiter {
    /// Buckets of `burst` tokens refilled at `requests_per_second` (validation makes
    /// it positive and finite); a zero `burst` or `max_keys` acts as 1.
    pub fn new(cfg: &RateLimitConfig) -> RateLimiter {
        let rate = Rate {
            per_second: cfg.requests_per_second,
            burst: f64::from(cfg.burst.max(1)),
        };
        let full = || Mutex::new(Bucket::full(rate, Instant::now()));
        let buckets = match &cfg.key {
            RateLimitKey::Global => Buckets::Global(full()),
            RateLimitKey::Header(name) => Buckets::Header {
                name: name.clone(),
                absent: full(),
                keys: Mutex::new(table(cfg.max_keys)),
            },
            RateLimitKey::ClientIp => Buckets::ClientIp(Mutex::new(table(cfg.max_keys))),
        };
        RateLimiter { rate, buckets }
    }

    /// Admits the request, taking a token from its key's bucket, or returns the time
    /// until that bucket has one (for `Retry-After`, rounded up to whole seconds).
    /// Allocates only for a key not in the table.
    pub fn check(
        &self,
        headers: &HeaderMap,
        client_ip: IpAddr,
        now: Instant,
    ) -> Result<(), Duration> {
        let rate = self.rate;
        match &self.buckets {
            Buckets::Global(bucket) => lock(bucket).take(rate, now),
            Buckets::Header { name, absent, keys } => match headers.get(name) {
                None => lock(absent).take(rate, now),
                Some(value) => {
                    let key = &value.as_bytes()[..value.len().min(MAX_KEY_BYTES)];
                    take_keyed(keys, key, |k: &[u8]| k.into(), rate, now)
                }
            },
            // An IPv4 peer of a dual-stack listener shows as `::ffff:a.b.c.d`.
            Buckets::ClientIp(table) => {
                take_keyed(table, &client_ip.to_canonical(), |ip| *ip, rate, now)
            }
        }
    }

    /// Keys in the bounded table now (at most `max_keys`); the global and no-header
    /// buckets are fixed and not counted.
    pub fn len(&self) -> usize {
        match &self.buckets {
            Buckets::Global(_) => 0,
            Buckets::Header { keys, .. } => lock(keys).len(),
            Buckets::ClientIp(table) => lock(table).len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Takes a token from `key`'s bucket; a new key gets a full bucket, pushing out the
/// least recently used key when the table is full.
fn take_keyed<K, Q>(
    table: &Mutex<LruCache<K, Bucket>>,
    key: &Q,
    to_owned: impl FnOnce(&Q) -> K,
    rate: Rate,
    now: Instant,
) -> Result<(), Duration>
where
    K: Hash + Eq + Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    let mut table = lock(table);
    if let Some(bucket) = table.get_mut(key) {
        return bucket.take(rate, now);
    }
    let mut bucket = Bucket::full(rate, now);
    let verdict = bucket.take(rate, now);
    let evicted = table.push(to_owned(key), bucket);
    drop((table, evicted)); // the evicted key is freed after the unlock
    verdict
}

/// An empty table capped at `max_keys`. Not `LruCache::new`, which reserves room for
/// every key up front (memory before any key is seen); this one grows up to the cap.
fn table<K: Hash + Eq>(max_keys: usize) -> LruCache<K, Bucket> {
    let mut table = LruCache::unbounded();
    table.resize(NonZeroUsize::new(max_keys).unwrap_or(NonZeroUsize::MIN));
    table
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No critical section here panics; a poisoned bucket is still a valid bucket.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The concurrency limit of one route: at most `max_in_flight` requests at once; up to
/// `max_queue` more wait, first come first served, for at most `queue_timeout`.
#[derive(Debug)]
pub struct Concurrency {
    /// One permit per slot. tokio's semaphore is fair: a released permit goes to the
    /// oldest waiter, so the queue is FIFO.
    slots: Arc<Semaphore>,
    /// The semaphore's initial permits: `in_flight` = this - available.
    max_in_flight: usize,
    /// Requests waiting now, at most `max_queue`, so parked requests cannot pile up.
    queued: AtomicUsize,
    max_queue: usize,
    queue_timeout: Duration,
}

/// An admitted request's slot, freed on drop. Owned (no borrow of the limiter), so it
/// can travel with a streaming response body.
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct ConcurrencyPermit {
    _slot: OwnedSemaphorePermit,
}

impl Concurrency {
    /// `max_in_flight` is kept within 1..=`Semaphore::MAX_PERMITS`.
    pub fn new(cfg: &ConcurrencyConfig) -> Concurrency {
        let max_in_flight = cfg.max_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Concurrency {
            slots: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            queued: AtomicUsize::new(0),
            max_queue: cfg.max_queue,
            queue_timeout: cfg.queue_timeout,
        }
    }

    /// Admits the request now or after a wait in the queue. A full queue, or a wait
    /// past `queue_timeout`, returns `Err(OVERLOADED_RETRY_AFTER)`. Dropping the future
    /// while it waits leaves the queue.
    pub async fn acquire(&self) -> Result<ConcurrencyPermit, Duration> {
        // Released permits go to waiters first, so this never overtakes the queue.
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(ConcurrencyPermit { _slot: slot });
        }
        let reserve = |q: usize| (q < self.max_queue).then_some(q + 1);
        if self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, reserve)
            .is_err()
        {
            return Err(OVERLOADED_RETRY_AFTER);
        }
        let _in_queue = QueueSlot(&self.queued);
        let wait = Arc::clone(&self.slots).acquire_owned();
        match tokio::time::timeout(self.queue_timeout, wait).await {
            Ok(Ok(slot)) => Ok(ConcurrencyPermit { _slot: slot }),
            // Timed out, or the semaphore was closed (never done here).
            Ok(Err(_)) | Err(_) => Err(OVERLOADED_RETRY_AFTER),
        }
    }

    /// Requests admitted and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.max_in_flight
            .saturating_sub(self.slots.available_permits())
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// A place in the queue, given back on drop: admitted, timed out or cancelled.
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Fault injection for one route: what to do to a request before it is forwarded.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Probability (0..=1) that a request is aborted.
    abort: f64,
    abort_status: StatusCode,
    /// Probability (0..=1) that a request not aborted is delayed.
    delay: f64,
    delay_for: Duration,
}

/// The fault chosen for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultAction {
    None,
    /// Answer with this status without contacting the upstream.
    Abort(StatusCode),
    /// Wait this long, then forward as usual.
    Delay(Duration),
}

impl Fault {
    /// Percentages outside 0..=100 (refused by validation) are clamped; NaN never fires.
    pub fn new(cfg: &FaultConfig) -> Fault {
        Fault {
            abort: (cfg.abort_percent / 100.0).clamp(0.0, 1.0),
            abort_status: cfg.abort_status,
            delay: (cfg.delay_percent / 100.0).clamp(0.0, 1.0),
            delay_for: cfg.delay,
        }
    }

    /// Draws for abort (`abort_percent` of requests), then independently for delay
    /// among the requests not aborted: with 5% abort and 10% delay, 5% are aborted
    /// and 9.5% (10% of the other 95%) delayed; no request is both.
    pub fn decide(&self) -> FaultAction {
        if self.abort <= 0.0 && self.delay <= 0.0 {
            return FaultAction::None; // no fault configured: no draw
        }
        let mut rng = rand::thread_rng();
        // `gen::<f64>()` is in [0, 1): probability 0 never fires, 1 always does.
        if rng.gen::<f64>() < self.abort {
            FaultAction::Abort(self.abort_status)
        } else if rng.gen::<f64>() < self.delay {
            FaultAction::Delay(self.delay_for)
        } else {
            FaultAction::None
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn limiter(
        requests_per_second: f64,
        burst: u32,
        key: RateLimitKey,
        max_keys: usize,
    ) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            requests_per_second,
            burst,
            key,
            max_keys,
        })
    }

    fn by_camera() -> RateLimitKey {
        RateLimitKey::Header(HeaderName::from_static("x-camera-id"))
    }

    fn cam(id: &str) -> HeaderMap {
        let value = HeaderValue::from_str(id).expect("valid value");
        HeaderMap::from_iter([(HeaderName::from_static("x-camera-id"), value)])
    }

    fn assert_wait(got: Result<(), Duration>, want: Duration) {
        let got = got.expect_err("refused");
        let diff = got.abs_diff(want);
        assert!(
            diff < Duration::from_micros(1),
            "retry after {got:?}, want {want:?}"
        );
    }

    /// Proves the bucket math: `burst` at once, then `requests_per_second`, never more
    /// than `burst` saved up, and Retry-After = time until the next token.
    #[test]
    fn burst_then_refill_at_the_rate_with_exact_retry_after() {
        let rl = limiter(10.0, 5, RateLimitKey::Global, 1);
        let (h, t0) = (HeaderMap::new(), Instant::now());
        for now in [t0, t0 + 60_000 * MS] {
            assert!((0..5).all(|_| rl.check(&h, IP, now).is_ok()));
            assert_wait(rl.check(&h, IP, now), 100 * MS);
            assert_wait(rl.check(&h, IP, now + 50 * MS), 50 * MS);
            assert_eq!(rl.check(&h, IP, now + 100 * MS), Ok(()));
            assert_wait(rl.check(&h, IP, now + 100 * MS), 100 * MS);
        }
        // A clock read before the last check neither refills nor moves time back.
        assert_wait(rl.check(&h, IP, t0), 100 * MS);
        assert_eq!(rl.len(), 0);
    }

    /// Proves keys are isolated: camera A exhausted does not limit camera B, by header
    /// or by client address (an IPv4-mapped IPv6 address is the same client).
    #[test]
    fn one_exhausted_key_does_not_limit_another() {
        let (rl, now) = (limiter(1.0, 2, by_camera(), 100), Instant::now());
        assert!((0..2).all(|_| rl.check(&cam("a"), IP, now).is_ok()));
        assert_wait(rl.check(&cam("a"), IP, now), 1000 * MS);
        assert_eq!(rl.check(&cam("b"), IP, now), Ok(()));
        assert_eq!(rl.len(), 2);

        let rl = limiter(1.0, 1, RateLimitKey::ClientIp, 100);
        let (h, ip) = (HeaderMap::new(), |s: &str| s.parse::<IpAddr>().expect("ip"));
        assert_eq!(rl.check(&h, IP, now), Ok(()));
        assert!(rl.check(&h, ip("::ffff:127.0.0.1"), now).is_err());
        assert_eq!(rl.check(&h, ip("10.0.0.2"), now), Ok(()));
        assert_eq!(rl.len(), 2);
    }

    /// Proves key spraying cannot grow memory: 100,000 distinct values keep the table at
    /// `max_keys`; the oldest keys are dropped (and come back with a full bucket).
    #[test]
    fn key_spraying_stays_within_max_keys() {
        let (rl, now) = (limiter(1.0, 1, by_camera(), 1000), Instant::now());
        for i in 0..100_000u32 {
            assert_eq!(rl.check(&cam(&i.to_string()), IP, now), Ok(()));
            assert!(rl.len() <= 1000);
        }
        assert_eq!(rl.len(), 1000);
        assert!(rl.check(&cam("99999"), IP, now).is_err());
        assert_eq!(rl.check(&cam("0"), IP, now), Ok(()));
    }

    /// Proves requests without the header share one bucket apart from the keyed ones,
    /// and that values are cut to `MAX_KEY_BYTES`.
    #[test]
    fn absent_header_shares_one_bucket_and_long_keys_are_cut() {
        let (rl, none, now) = (
            limiter(1.0, 2, by_camera(), 10),
            HeaderMap::new(),
            Instant::now(),
        );
        let other_ip = IpAddr::V4(std::net::Ipv4Addr::new(10, 9, 9, 9));
        assert!((0..2).all(|_| rl.check(&none, IP, now).is_ok()));
        assert!(rl.check(&none, other_ip, now).is_err());
        assert_eq!(rl.check(&cam("a"), IP, now), Ok(()));
        assert_eq!(rl.len(), 1);
        let (long_a, long_b) = ("x".repeat(300), format!("{}y", "x".repeat(299)));
        assert!(rl.check(&cam(&long_a), IP, now).is_ok());
        assert!(rl.check(&cam(&long_b), IP, now).is_ok());
        assert!(rl.check(&cam(&long_a), IP, now).is_err());
    }

    fn concurrency(max_in_flight: usize, max_queue: usize) -> Arc<Concurrency> {
        let queue_timeout = 100 * MS;
        Arc::new(Concurrency::new(&ConcurrencyConfig {
            max_in_flight,
            max_queue,
            queue_timeout,
        }))
    }

    /// Proves the limit and the queue: two in flight, the third waits and gets in when
    /// one finishes, the fourth (queue full) is refused at once.
    #[tokio::test(start_paused = true)]
    async fn third_waits_for_a_slot_and_fourth_is_refused() {
        let c = concurrency(2, 1);
        let first = c.acquire().await.expect("1st admitted");
        let _second = c.acquire().await.expect("2nd admitted");
        let waiter = Arc::clone(&c);
        let third = tokio::spawn(async move { waiter.acquire().await.map(drop) });
        while c.queued() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!((c.in_flight(), c.queued()), (2, 1));
        let started = Instant::now();
        assert_eq!(c.acquire().await.map(drop), Err(OVERLOADED_RETRY_AFTER));
        assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");
        drop(first);
        assert_eq!(third.await.expect("task"), Ok(()));
        assert_eq!((c.in_flight(), c.queued()), (1, 0));
    }

    /// Proves a queued request is refused after `queue_timeout`, and a cancelled wait
    /// gives its queue place back.
    #[tokio::test(start_paused = true)]
    async fn queued_request_times_out_and_cancelled_waits_leave_the_queue() {
        let c = concurrency(1, 1);
        let _held = c.acquire().await.expect("admitted");
        let started = Instant::now();
        assert_eq!(c.acquire().await.map(drop), Err(OVERLOADED_RETRY_AFTER));
        let waited = started.elapsed();
        assert!(waited >= 100 * MS && waited < 102 * MS, "waited {waited:?}");
        assert!(tokio::time::timeout(10 * MS, c.acquire()).await.is_err());
        assert_eq!((c.in_flight(), c.queued()), (1, 0));
    }

    /// Shares of (aborted, delayed) requests over `n` draws.
    fn shares(abort_percent: f64, delay_percent: f64, n: u32) -> (f64, f64) {
        let (abort_status, delay) = (StatusCode::IM_A_TEAPOT, 200 * MS);
        let f = Fault::new(&FaultConfig {
            abort_percent,
            abort_status,
            delay_percent,
            delay,
        });
        let draws: Vec<_> = (0..n).map(|_| f.decide()).collect();
        let share = |a| draws.iter().filter(|&&d| d == a).count() as f64 / f64::from(n);
        (
            share(FaultAction::Abort(abort_status)),
            share(FaultAction::Delay(delay)),
        )
    }

    /// Proves the shares: 5% aborted and 10% of the rest (9.5%) delayed, within bands
    /// of about seven standard deviations; 0% and 100% are exact.
    #[test]
    fn fault_shares_match_the_percentages() {
        let (abort, delay) = shares(5.0, 10.0, 10_000);
        assert!((abort - 0.05).abs() < 0.015, "abort share {abort}");
        assert!((delay - 0.095).abs() < 0.015, "delay share {delay}");
        assert_eq!(shares(0.0, 0.0, 10_000), (0.0, 0.0));
        assert_eq!(shares(100.0, 100.0, 10_000), (1.0, 0.0));
        assert_eq!(shares(0.0, 100.0, 10_000), (0.0, 1.0));
        assert_eq!(shares(f64::NAN, 250.0, 1_000), (0.0, 1.0));
    }
}
