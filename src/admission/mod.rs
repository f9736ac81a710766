//! Route-level admission: the token-bucket rate limit (429 `RATE_LIMITED`), the
//! concurrency limit with its bounded wait queue (503 `OVERLOADED`), and fault
//! injection. Each returns a verdict (with the `Retry-After` wait); turning it into a
//! response, metrics and log fields is the request path's job.
//!
//! Built per route with the snapshot; touched per request (`check`, `acquire`,
//! `decide`): one short lock for the rate limit, a semaphore and atomics for
//! concurrency, the thread-local rng for faults. Nothing here awaits while locked.

pub mod concurrency;
pub mod fault;
pub mod rate;

pub use concurrency::{Concurrency, ConcurrencyPermit, OVERLOADED_RETRY_AFTER};
pub use fault::{Fault, FaultAction};
pub use rate::RateLimiter;
