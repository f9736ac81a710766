//! Route-level admission: the token-bucket rate limit (429 `RATE_LIMITED`), the
//! concurrency limit with its bounded wait queue (503 `OVERLOADED`), and fault
//! injection. Each returns a plain verdict (and a `Retry-After` wait); turning it into
//! a response, metrics and logs is the caller's job.
//!
//! Built once per route when a snapshot is built; touched per request (`check`,
//! `acquire`, `decide`): one short lock for the rate limit, atomics and tokio's
//! semaphore for concurrency, a thread-local rng for faults.

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

/// Longest rate-limit key kept, in bytes; longer header values are cut to this, so
/// values sharing their first 256 bytes share a bucket. Bounds the key table at
/// `max_keys * 256` bytes of keys even when clients send 64 KiB header values (the
/// same bound as the breaker partitions).
pub const MAX_KEY_BYTES: usize = 256;

/// `Retry-After` when shedding (full queue or queue wait past `queue_timeout`): one
/// second, the smallest non-zero value the header's whole seconds can carry. Shedding
/// reflects the load of this moment (queue timeouts are ~100 ms) and fusebox keeps no
/// latency estimate that would found a longer wait; a longer one would leave the
/// capacity that frees up idle.
pub const OVERLOADED_RETRY_AFTER: Duration = Duration::from_secs(1);

// Why not `governor` (which the conventions prefer for token buckets): its keyed
// limiters keep one state per key in a DashMap/HashMap with no capacity bound; keys
// leave only when the owner calls `retain_recent()` periodically, so a client spraying
// header values grows the table without limit between cleanups, and each cleanup walks
// every key. `check_key(&K)` also needs an owned key, i.e. an allocation per request
// for a header-value key, and it reads time from its own clock rather than tokio's
// (which paused-clock tests need). A custom `StateStore` over `lru` would leave it
// only the bucket arithmetic, which is the dozen lines of `Bucket::take` below.

/// A token-bucket rate limit for one route: one bucket, or one per key in a table
/// bounded by `max_keys` (least recently used dropped).
#[derive(Debug)]
pub struct RateLimiter {
    rate: Rate,
    buckets: Buckets,
}

#[derive(Debug, Clone, Copy)]
struct Rate {
    /// Tokens added per second (`requests_per_second`).
    per_second: f64,
    /// Bucket capacity (`burst`): the most requests admitted at once after a quiet spell.
    burst: f64,
}

#[derive(Debug)]
enum Buckets {
    Global(Mutex<Bucket>),
    Header {
        name: HeaderName,
        /// Shared by every request without the header; outside the table so spraying
        /// cannot evict it.
        absent: Mutex<Bucket>,
        /// Keyed by the header's (first) value, cut to `MAX_KEY_BYTES`. `Box<[u8]>`
        /// borrows as `[u8]`, so a hit looks up the request's bytes without allocating.
        table: Mutex<LruCache<Box<[u8]>, Bucket>>,
    },
    ClientIp(Mutex<LruCache<IpAddr, Bucket>>),
}

/// One key's bucket: tokens left as of `at`; refilled lazily when next touched.
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
        // A caller that read the clock earlier but locked later gets no refill rather
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
        let wait = (1.0 - self.tokens) / rate.per_second;
        let wait = Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX);
        Err(wait.max(Duration::from_nanos(1)))
    }
}

impl RateLimiter {
    /// A limiter whose buckets hold `burst` tokens and refill at `requests_per_second`.
    /// Validation guarantees a positive finite rate and `burst`, `max_keys` >= 1; zero
    /// values act as 1 rather than refusing everything.
    pub fn new(cfg: &RateLimitConfig) -> RateLimiter {
        let rate = Rate {
            per_second: cfg.requests_per_second,
            burst: f64::from(cfg.burst.max(1)),
        };
        let now = Instant::now();
        let buckets = match &cfg.key {
            RateLimitKey::Global => Buckets::Global(Mutex::new(Bucket::full(rate, now))),
            RateLimitKey::Header(name) => Buckets::Header {
                name: name.clone(),
                absent: Mutex::new(Bucket::full(rate, now)),
                table: Mutex::new(table(cfg.max_keys)),
            },
            RateLimitKey::ClientIp => Buckets::ClientIp(Mutex::new(table(cfg.max_keys))),
        };
        RateLimiter { rate, buckets }
    }

    /// Admits the request (taking a token from its key's bucket) or returns how long
    /// until its bucket has a token, for `Retry-After` (round it up to whole seconds).
    /// Allocates only when a key is seen for the first time.
    pub fn check(
        &self,
        headers: &HeaderMap,
        client_ip: IpAddr,
        now: Instant,
    ) -> Result<(), Duration> {
        let rate = self.rate;
        match &self.buckets {
            Buckets::Global(bucket) => lock(bucket).take(rate, now),
            Buckets::Header {
                name,
                absent,
                table,
            } => match headers.get(name) {
                None => lock(absent).take(rate, now),
                Some(value) => {
                    let key = value.as_bytes();
                    let key = &key[..key.len().min(MAX_KEY_BYTES)];
                    take_keyed(table, key, |k: &[u8]| k.into(), rate, now)
                }
            },
            // An IPv4 peer on a dual-stack listener shows as `::ffff:a.b.c.d`; it is
            // the same client as `a.b.c.d`.
            Buckets::ClientIp(table) => {
                take_keyed(table, &client_ip.to_canonical(), |ip| *ip, rate, now)
            }
        }
    }

    /// Keys held in the bounded table now (never more than `max_keys`); the global and
    /// the no-header buckets are fixed and not counted.
    pub fn len(&self) -> usize {
        match &self.buckets {
            Buckets::Global(_) => 0,
            Buckets::Header { table, .. } => lock(table).len(),
            Buckets::ClientIp(table) => lock(table).len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Takes a token from `key`'s bucket, adding a full bucket for a new key (which drops
/// the least recently used key when the table is full).
fn take_keyed<K, Q>(
    table: &Mutex<LruCache<K, Bucket>>,
    key: &Q,
    owned: impl FnOnce(&Q) -> K,
    rate: Rate,
    now: Instant,
) -> Result<(), Duration>
where
    K: Hash + Eq + std::borrow::Borrow<Q>,
    Q: Hash + Eq + ?Sized,
{
    let mut table = lock(table);
    if let Some(bucket) = table.get_mut(key) {
        return bucket.take(rate, now);
    }
    let mut bucket = Bucket::full(rate, now);
    let verdict = bucket.take(rate, now);
    let evicted = table.push(owned(key), bucket);
    drop(table);
    drop(evicted); // freed after the lock is released
    verdict
}

/// An empty key table holding at most `max_keys` (0 acts as 1). `LruCache::new` would
/// reserve room for every key up front, costing memory for a large `max_keys` before
/// any key is seen, so the table grows on demand up to the cap instead.
fn table<K: Hash + Eq>(max_keys: usize) -> LruCache<K, Bucket> {
    let mut table = LruCache::unbounded();
    table.resize(NonZeroUsize::new(max_keys).unwrap_or(NonZeroUsize::MIN));
    table
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No critical section here panics; a poisoned bucket is still a valid bucket.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The concurrency limit of one route: at most `max_in_flight` requests admitted at
/// once; up to `max_queue` more wait, first come first served, at most `queue_timeout`.
#[derive(Debug)]
pub struct Concurrency {
    /// One permit per in-flight slot. tokio's semaphore is fair: waiters are served
    /// in arrival order and a released permit goes to the oldest waiter first.
    slots: Arc<Semaphore>,
    /// Permits the semaphore started with, so `in_flight` = this - available.
    max_in_flight: usize,
    /// Requests waiting for a slot now; bounded by `max_queue` so waiters (each a
    /// parked request with its body) cannot pile up without limit.
    queued: AtomicUsize,
    max_queue: usize,
    queue_timeout: Duration,
}

/// An admitted request's slot; dropping it frees the slot for the next waiter. Owned
/// (no borrow of the limiter), so it can ride along with a streaming response body.
#[derive(Debug)]
#[must_use = "the slot is freed as soon as the permit is dropped"]
pub struct ConcurrencyPermit {
    _slot: OwnedSemaphorePermit,
}

impl Concurrency {
    /// A limit of `max_in_flight` (at least 1, at most tokio's semaphore maximum).
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

    /// Admits the request now, or after waiting in the queue; refuses it at once when
    /// the queue is full, or when the wait passes `queue_timeout`, with the
    /// `Retry-After` to send ([`OVERLOADED_RETRY_AFTER`]). Dropping the future while it
    /// waits leaves the queue.
    pub async fn acquire(&self) -> Result<ConcurrencyPermit, Duration> {
        // Fast path. A fair semaphore hands released permits to waiters first, so
        // this never overtakes a queued request.
        if let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(ConcurrencyPermit { _slot: slot });
        }
        let reserved = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < self.max_queue).then_some(q + 1)
            });
        if reserved.is_err() {
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

/// A reserved place in the queue, given back on drop (admitted, timed out or cancelled).
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Fault injection for one route: what to do to this request before it is forwarded.
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
    /// Percentages outside 0..=100 (validation refuses them) are clamped; NaN acts as 0.
    pub fn new(cfg: &FaultConfig) -> Fault {
        Fault {
            abort: probability(cfg.abort_percent),
            abort_status: cfg.abort_status,
            delay: probability(cfg.delay_percent),
            delay_for: cfg.delay,
        }
    }

    /// Draws for abort first (`abort_percent` of requests), then, independently, for
    /// delay among the requests not aborted. So with 5% abort and 10% delay, 5% are
    /// aborted and 9.5% (10% of the other 95%) delayed; no request is both.
    pub fn decide(&self) -> FaultAction {
        if self.abort <= 0.0 && self.delay <= 0.0 {
            return FaultAction::None;
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

fn probability(percent: f64) -> f64 {
    if percent.is_nan() {
        return 0.0;
    }
    (percent / 100.0).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use http::HeaderValue;

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn limiter(rps: f64, burst: u32, key: RateLimitKey, max_keys: usize) -> RateLimiter {
        RateLimiter::new(&RateLimitConfig {
            requests_per_second: rps,
            burst,
            key,
            max_keys,
        })
    }

    fn camera() -> RateLimitKey {
        RateLimitKey::Header(HeaderName::from_static("x-camera-id"))
    }

    fn with_camera(id: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-camera-id",
            HeaderValue::from_str(id).expect("valid value"),
        );
        h
    }

    fn assert_wait(got: Result<(), Duration>, want: Duration) {
        let got = got.expect_err("refused");
        let diff = if got > want { got - want } else { want - got };
        assert!(
            diff < Duration::from_micros(1),
            "retry after {got:?}, want {want:?}"
        );
    }

    /// Proves the bucket math: `burst` at once, then `requests_per_second`, never
    /// more than `burst` saved up, and Retry-After = time until the next token.
    #[test]
    fn burst_then_refill_at_the_rate_with_exact_retry_after() {
        let rl = limiter(10.0, 5, RateLimitKey::Global, 1);
        let (h, t0) = (HeaderMap::new(), Instant::now());
        for _ in 0..5 {
            assert_eq!(rl.check(&h, IP, t0), Ok(()));
        }
        assert_wait(rl.check(&h, IP, t0), 100 * MS);
        assert_wait(rl.check(&h, IP, t0 + 50 * MS), 50 * MS);
        assert_eq!(rl.check(&h, IP, t0 + 100 * MS), Ok(()));
        assert_wait(rl.check(&h, IP, t0 + 100 * MS), 100 * MS);
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(rl.check(&h, IP, later), Ok(()));
        }
        assert_wait(rl.check(&h, IP, later), 100 * MS);
        // A clock read before the last check does not refill or move time back.
        assert_wait(rl.check(&h, IP, t0), 100 * MS);
        assert_eq!(rl.len(), 0);
    }

    /// Proves keys are isolated: camera A exhausted does not limit camera B, by
    /// header or by client address (an IPv4-mapped IPv6 address is the same client).
    #[test]
    fn one_exhausted_key_does_not_limit_another() {
        let rl = limiter(1.0, 2, camera(), 100);
        let (a, b, now) = (with_camera("cam-a"), with_camera("cam-b"), Instant::now());
        assert!(rl.check(&a, IP, now).is_ok() && rl.check(&a, IP, now).is_ok());
        assert_wait(rl.check(&a, IP, now), 1000 * MS);
        assert_eq!(rl.check(&b, IP, now), Ok(()));
        assert_eq!(rl.len(), 2);

        let rl = limiter(1.0, 1, RateLimitKey::ClientIp, 100);
        let h = HeaderMap::new();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("address");
        assert_eq!(rl.check(&h, IP, now), Ok(()));
        assert!(rl.check(&h, mapped, now).is_err());
        assert_eq!(
            rl.check(&h, "10.0.0.2".parse().expect("address"), now),
            Ok(())
        );
        assert_eq!(rl.len(), 2);
    }

    /// Proves key spraying cannot grow memory: 100,000 distinct values keep the table
    /// at `max_keys`, the oldest keys dropped (and back with a full bucket).
    #[test]
    fn key_spraying_stays_within_max_keys() {
        let rl = limiter(1.0, 1, camera(), 1000);
        let now = Instant::now();
        for i in 0..100_000u32 {
            assert_eq!(rl.check(&with_camera(&i.to_string()), IP, now), Ok(()));
            assert!(rl.len() <= 1000);
        }
        assert_eq!(rl.len(), 1000);
        assert!(rl.check(&with_camera("99999"), IP, now).is_err());
        assert_eq!(rl.check(&with_camera("0"), IP, now), Ok(()));
    }

    /// Proves requests without the header share one bucket, apart from keyed ones,
    /// and that over-long values are cut to `MAX_KEY_BYTES`.
    #[test]
    fn absent_header_shares_one_bucket_and_long_keys_are_cut() {
        let rl = limiter(1.0, 2, camera(), 10);
        let (none, now) = (HeaderMap::new(), Instant::now());
        assert!(rl.check(&none, IP, now).is_ok() && rl.check(&none, IP, now).is_ok());
        assert!(rl
            .check(&none, "10.9.9.9".parse().expect("address"), now)
            .is_err());
        assert_eq!(rl.check(&with_camera("cam-a"), IP, now), Ok(()));
        assert_eq!(rl.len(), 1);

        let (long_a, long_b) = ("x".repeat(300), format!("{}y", "x".repeat(299)));
        assert!(rl.check(&with_camera(&long_a), IP, now).is_ok());
        assert!(rl.check(&with_camera(&long_b), IP, now).is_ok());
        assert!(rl.check(&with_camera(&long_a), IP, now).is_err());
    }

    fn concurrency(max_in_flight: usize, max_queue: usize) -> Arc<Concurrency> {
        Arc::new(Concurrency::new(&ConcurrencyConfig {
            max_in_flight,
            max_queue,
            queue_timeout: 100 * MS,
        }))
    }

    /// Proves the limit and the queue: two in flight, the third waits and gets in
    /// when one finishes, the fourth (queue full) is refused at once.
    #[tokio::test(start_paused = true)]
    async fn third_waits_for_a_slot_and_fourth_is_refused() {
        let c = concurrency(2, 1);
        let first = c.acquire().await.expect("1st admitted");
        let _second = c.acquire().await.expect("2nd admitted");
        assert_eq!((c.in_flight(), c.queued()), (2, 0));

        let waiter = Arc::clone(&c);
        let third = tokio::spawn(async move { waiter.acquire().await.map(|_| ()) });
        while c.queued() == 0 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        assert_eq!(c.acquire().await.map(|_| ()), Err(OVERLOADED_RETRY_AFTER));
        assert_eq!(started.elapsed(), Duration::ZERO, "refused without waiting");

        drop(first);
        assert_eq!(third.await.expect("task"), Ok(()));
        assert_eq!(c.queued(), 0);
    }

    /// Proves a queued request is refused after `queue_timeout`, and a cancelled wait
    /// gives its queue place back.
    #[tokio::test(start_paused = true)]
    async fn queued_request_times_out_and_cancelled_waits_leave_the_queue() {
        let c = concurrency(1, 1);
        let _held = c.acquire().await.expect("admitted");
        let started = Instant::now();
        assert_eq!(c.acquire().await.map(|_| ()), Err(OVERLOADED_RETRY_AFTER));
        let waited = started.elapsed();
        assert!(waited >= 100 * MS && waited < 102 * MS, "waited {waited:?}");
        assert_eq!(c.queued(), 0);

        assert!(tokio::time::timeout(10 * MS, c.acquire()).await.is_err());
        assert_eq!((c.in_flight(), c.queued()), (1, 0));
    }

    fn fault(abort_percent: f64, delay_percent: f64) -> Fault {
        Fault::new(&FaultConfig {
            abort_percent,
            abort_status: StatusCode::SERVICE_UNAVAILABLE,
            delay_percent,
            delay: 200 * MS,
        })
    }

    fn shares(f: &Fault, n: u32) -> (f64, f64) {
        let (mut aborts, mut delays) = (0u32, 0u32);
        for _ in 0..n {
            match f.decide() {
                FaultAction::Abort(s) => {
                    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
                    aborts += 1;
                }
                FaultAction::Delay(d) => {
                    assert_eq!(d, 200 * MS);
                    delays += 1;
                }
                FaultAction::None => {}
            }
        }
        (
            f64::from(aborts) / f64::from(n),
            f64::from(delays) / f64::from(n),
        )
    }

    /// Proves the shares: 5% aborted, 10% of the rest (9.5%) delayed, within bands
    /// of about seven standard deviations; 0% and 100% are exact.
    #[test]
    fn fault_shares_match_the_percentages() {
        let (abort, delay) = shares(&fault(5.0, 10.0), 10_000);
        assert!((abort - 0.05).abs() < 0.015, "abort share {abort}");
        assert!((delay - 0.095).abs() < 0.015, "delay share {delay}");
        assert_eq!(shares(&fault(0.0, 0.0), 10_000), (0.0, 0.0));
        assert_eq!(shares(&fault(100.0, 100.0), 10_000), (1.0, 0.0));
        assert_eq!(shares(&fault(0.0, 100.0), 10_000), (0.0, 1.0));
        assert_eq!(shares(&fault(f64::NAN, 250.0), 1_000), (0.0, 1.0));
    }
}
