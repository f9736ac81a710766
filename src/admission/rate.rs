//! The token-bucket rate limit of a route (429 `RATE_LIMITED`): one bucket, or one per
//! key (a request header or the client address) in a bounded LRU table.
//!
//! Built per route with the snapshot (carried over on reload while its settings stay);
//! touched per request (`check`): one short lock, an allocation only for a new key.

use std::borrow::Borrow;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{HeaderMap, HeaderName};
use lru::LruCache;
use tokio::time::Instant;

use crate::config::{RateLimitConfig, RateLimitKey};

/// Longest rate-limit key kept, in bytes; longer header values are cut to this (values
/// sharing their first 256 bytes share a bucket), bounding the key table at
/// `max_keys * 256` bytes of keys, as the breaker partitions do.
pub const MAX_KEY_BYTES: usize = 256;

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
}
