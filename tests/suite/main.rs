//! The integration suite in one test binary: each module is one area of the contract
//! (its file's doc says what it proves), sharing the harness in `tests/common`. One
//! binary instead of one per file links fusebox and its dependencies once, not ~30
//! times: the separate binaries took 1.7 GB of disk and minutes of linking.
//!
//! Tests that need the process to themselves stay in binaries of their own:
//! `alloc_count` (a counting global allocator), `replay_budget` (the process's peak
//! RSS), `signals` (SIGHUP to the whole process), `config_bounds` (a panic hook), and
//! the multi-file `admin`, `grpc` and `otel_export`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../otel_export/receiver.rs"]
#[allow(dead_code)]
mod receiver;

mod access_log;
mod balancing;
mod cli;
mod demo;
mod errors;
mod forwarding;
mod h2_pool;
mod h2c;
mod headers;
mod inference;
mod lifecycle;
mod limits;
mod pool;
mod reload;
mod resilience_admission;
mod resilience_breaker;
mod resilience_fallback;
mod resilience_health;
mod resilience_partition;
mod resilience_retry;
mod resilience_retry_timing;
mod routing;
mod seams;
mod timeouts;
mod tls;
mod tracing_proxy;
mod unix_listener;
