//! Admission: the token-bucket rate limit (429 `RATE_LIMITED`), the concurrency limit
//! with its bounded priority queue (503 `OVERLOADED`), fault injection, and the
//! adaptive per-endpoint concurrency limit the upstreams learn from latency. Each returns a verdict (with the `Retry-After` wait); turning it into a
//! response, metrics and log fields is the request path's job.
//!
//! Built per route with the snapshot; touched per request (`check`, `acquire`,
//! `decide`): one short lock for the rate limit, a semaphore and atomics for
//! concurrency, the thread-local rng for faults. Nothing here awaits while locked.

pub mod adaptive;
pub mod concurrency;
pub mod fault;
pub mod queue;
pub mod rate;

pub use adaptive::AdaptiveLimit;
pub use concurrency::{Concurrency, ConcurrencyPermit, OVERLOADED_RETRY_AFTER};
pub use fault::{Fault, FaultAction};
pub use queue::{Priority, Shed, WaitQueue};
pub use rate::RateLimiter;
