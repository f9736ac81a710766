//! Every default of the config file as a named constant (the values of DESIGN.md's
//! example), each next to the bounds (`*_BOUNDS`) validation holds the key to, and
//! `Default` impls of the config types built from them. Validation starts from these
//! and overrides what the file says.
//!
//! Why the bounds are what they are: an operator never needs more, and nothing
//! `validate` accepts can make later arithmetic overflow. Every duration is at most
//! 24 h (most at most 1 h), so `Instant::now() + d` cannot overflow (tokio's `Instant`
//! reaches centuries ahead), and `d * 2^n` with `n <= 31` (backoff and breaker
//! doubling cap the exponent there) stays below 2^43 s, far inside `Duration`. Counts
//! stay at most what tokio's `Semaphore` (`usize::MAX >> 3` permits) and the kernel
//! (`fs.nr_open` = 1,048,576 descriptors by default) accept, and sums of weights fit
//! `u32` for every endpoint count that fits in memory.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

pub use super::bounds::Bounds;
use super::types::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// Shortest positive timeout or period: 1 ms, tokio's timer resolution (a shorter
/// timer fires after 1 ms anyway).
pub const MIN_TIMEOUT: Duration = Duration::from_millis(1);
/// Longest timeout or period: 1 h. No request, probe, queue wait or drain of a
/// sidecar needs longer; see the module doc for why it keeps the arithmetic safe.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Positive timeouts and periods: `1ms..=1h`.
pub const TIMEOUT_BOUNDS: Bounds<Duration> = Bounds::new(MIN_TIMEOUT, MAX_TIMEOUT);
/// Durations where 0 means none or off (ramps, retry delays, injected delays): `0s..=1h`.
pub const DELAY_BOUNDS: Bounds<Duration> = Bounds::new(Duration::ZERO, MAX_TIMEOUT);
/// Thresholds and counts of events (breaker and health-check thresholds): at most
/// 1,000,000, far past any useful value and inside `u32` with room for sums.
pub const THRESHOLD_BOUNDS: Bounds<u64> = Bounds::new(1, 1_000_000);

/// `service.name` when unset: the `X-Service-Name` stamped on outbound calls.
pub const DEFAULT_SERVICE_NAME: &str = "fusebox";

/// Data-plane listener: every interface, port 8080, as a sidecar's usual app port.
pub const DEFAULT_LISTENER_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
/// A Unix-socket listener's file mode: read and write for everyone who can reach the
/// socket's directory. A socket in a pod-local volume is reachable only from the pod's
/// containers, as a loopback port is; `unix_mode` narrows it (e.g. `"0660"`).
pub const DEFAULT_UNIX_MODE: u32 = 0o666;
/// The longest Unix socket path the kernel takes (`sun_path` is 108 bytes with its NUL).
pub const MAX_UNIX_PATH_BYTES: usize = 107;
/// Open downstream connections accepted at once (count); beyond it accept waits, so a
/// connection flood cannot exhaust file descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// `max_connections`: at most 1,000,000, about the kernel's default per-process
/// descriptor ceiling (`fs.nr_open` = 1,048,576).
pub const MAX_CONNECTIONS_BOUNDS: Bounds<u64> = Bounds::new(1, 1_000_000);
/// Time allowed to receive a request's headers; the slowloris guard (408 and close).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `header_read_timeout`: a timeout, `1ms..=1h` (see `TIMEOUT_BOUNDS`).
pub const HEADER_READ_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// Idle keep-alive downstream connection lifetime; above typical client pool timeouts.
pub const DEFAULT_LISTENER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `listener.idle_timeout`: a timeout, `1ms..=1h`.
pub const LISTENER_IDLE_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// Largest request head in bytes (64 KiB, as nginx/Envoy); larger answers 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// `max_header_bytes`: 8 KiB, hyper's smallest read buffer (a smaller limit could not
/// be enforced), up to 1 MiB (Envoy's own ceiling is 96 KiB; no client needs more).
pub const MAX_HEADER_BYTES_BOUNDS: Bounds<u64> = Bounds::new(8 * KIB, MIB);
/// Largest declared request body in bytes (32 MiB: a few full-resolution camera
/// frames); larger answers 413 before the body is read.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 32 * MIB;
/// `max_request_body`: at most 16 GiB (a whole video file); bytes counted in `u64`.
pub const MAX_REQUEST_BODY_BOUNDS: Bounds<u64> = Bounds::new(1, 16 * GIB);
/// Drain time on SIGTERM; Kubernetes' default grace period is 30 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// `shutdown_timeout`: `1ms..=1h`; past Kubernetes' grace period the pod is killed anyway.
pub const SHUTDOWN_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;

/// Bytes of request bodies held for replay at once, process-wide (256 MiB: sixty-four
/// 4 MiB frames in flight); past it a body streams through and is not retried.
pub const DEFAULT_MAX_BUFFERED_BODY_BYTES: u64 = 256 * MIB;
/// `max_buffered_body_bytes`: 0 (keep no body) up to 64 GiB, more memory than a sidecar
/// is ever given.
pub const MAX_BUFFERED_BODY_BYTES_BOUNDS: Bounds<u64> = Bounds::new(0, 64 * GIB);
/// The request header whose value (`critical`, `high`, `normal`, `low`) orders a
/// route's concurrency queue, as DESIGN.md names it.
pub const DEFAULT_PRIORITY_HEADER: &str = "x-priority";

/// Share (0..=1) of requests without a `traceparent` whose trace is sampled: 5 %,
/// enough for latency breakdowns at a few hundred requests per second.
pub const DEFAULT_TRACING_SAMPLE_RATIO: f64 = 0.05;
/// `sample_ratio`: a share, `0..=1`.
pub const TRACING_SAMPLE_RATIO_BOUNDS: Bounds<f64> = Bounds::new(0.0, 1.0);
/// Finished spans waiting for export (count); the OpenTelemetry SDK's default. Past it
/// spans are dropped and counted.
pub const DEFAULT_TRACING_MAX_QUEUE: usize = 2048;
/// `max_queue`: at most 100,000 spans (a span holds ~1 KiB, so ~100 MB at worst).
pub const TRACING_MAX_QUEUE_BOUNDS: Bounds<u64> = Bounds::new(1, 100_000);
/// Timeout of one export request to the collector.
pub const DEFAULT_TRACING_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// `export_timeout`: a timeout, `1ms..=1h`.
pub const TRACING_EXPORT_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// Appended to `otlp_endpoint` to give the URL spans are posted to (OTLP/HTTP).
pub const OTLP_TRACES_PATH: &str = "/v1/traces";

/// Admin listener: loopback only, port 9901 (Envoy's habit), so no token is needed.
pub const DEFAULT_ADMIN_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));

/// `correlation.propagate` when unset: X-Org-ID and X-Camera-ID (lower-case, as header
/// names are kept), always passed on and logged as `org_id` / `camera_id`.
pub const DEFAULT_PROPAGATE: &[&str] = &["x-org-id", "x-camera-id"];

/// Log format: JSON lines, what log shippers parse.
pub const DEFAULT_LOG_FORMAT: LogFormat = LogFormat::Json;
/// Log filter directive (tracing-subscriber syntax).
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// One access-log line per request, on by default: it is the contract's audit trail.
pub const DEFAULT_ACCESS_LOG: bool = true;

/// Upstream protocol: plain HTTP/1.1, what most model servers speak.
pub const DEFAULT_PROTOCOL: Protocol = Protocol::Http1;
/// Load balancing: round robin, predictable and fair for equal endpoints.
pub const DEFAULT_LOAD_BALANCING: LoadBalancing = LoadBalancing::RoundRobin;
/// How often DNS endpoints are re-resolved; matches Kubernetes' DNS TTL (30 s).
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);
/// `dns_refresh`: at least 100 ms (each refresh queries the resolver for every DNS
/// endpoint), at most 1 h.
pub const DNS_REFRESH_BOUNDS: Bounds<Duration> =
    Bounds::new(Duration::from_millis(100), MAX_TIMEOUT);
/// Traffic ramp for a recovered endpoint; 0 = off (full share at once).
pub const DEFAULT_SLOW_START: Duration = Duration::ZERO;
/// `slow_start`: 0 (off) up to 1 h.
pub const SLOW_START_BOUNDS: Bounds<Duration> = DELAY_BOUNDS;
/// Endpoint weight (relative share) when an endpoint gives none.
pub const DEFAULT_ENDPOINT_WEIGHT: u32 = 1;
/// `weight`: at most 10,000 (shares finer than 0.01 % mean nothing), so the sum of an
/// upstream's weights fits `u32` up to 400,000 endpoints.
pub const ENDPOINT_WEIGHT_BOUNDS: Bounds<u64> = Bounds::new(1, 10_000);
/// An extra response header carrying the endpoint's load (ORCA `endpoint-load-metrics`
/// is always read); none by default.
pub const DEFAULT_LOAD_REPORT_HEADER: Option<&str> = None;
/// Load-report headers are stripped from responses unless this is true: they are for
/// fusebox, not for the caller.
pub const DEFAULT_FORWARD_LOAD_REPORT: bool = false;
/// An endpoint's last load report is trusted for this long (2 s: a few requests'
/// worth at typical rates), then ignored until the next one.
pub const DEFAULT_LOAD_REPORT_EXPIRY: Duration = Duration::from_secs(2);
/// `load_report_expiry`: a period, `1ms..=1h`.
pub const LOAD_REPORT_EXPIRY_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// peak_ewma: latency assumed for an endpoint with no samples yet (30 ms, Linkerd's
/// default), so a new endpoint is neither flooded nor starved.
pub const DEFAULT_PEAK_EWMA_DEFAULT_LATENCY: Duration = Duration::from_millis(30);
/// `default_latency`: `1ms..=1h`, as a request timeout (no latency is longer).
pub const PEAK_EWMA_DEFAULT_LATENCY_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// peak_ewma: the moving average's time constant: a sample's weight falls to 1/e
/// after this long. 1 s, not Linkerd's 10 s: a GPU replica's latency is 10-500 ms and
/// its stalls last about a second, and with 10 s a replica back from a one-second
/// stall stayed avoided for ten or more (BENCHMARKS.md, inference-compare).
pub const DEFAULT_PEAK_EWMA_DECAY: Duration = Duration::from_secs(1);
/// `decay`: a period, `1ms..=1h`.
pub const PEAK_EWMA_DECAY_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;

/// Adaptive concurrency: the limit never goes below this (count), so an endpoint
/// always gets a request through to measure.
pub const DEFAULT_ADAPTIVE_MIN_LIMIT: usize = 1;
/// Adaptive concurrency: the limit never goes above this (count).
pub const DEFAULT_ADAPTIVE_MAX_LIMIT: usize = 256;
/// Adaptive concurrency: the limit an endpoint starts with (count), as Netflix's
/// Gradient2 does; clamped into `min_limit..=max_limit`.
pub const DEFAULT_ADAPTIVE_INITIAL_LIMIT: usize = 20;
/// `min_limit`, `max_limit`, `initial_limit`: at most 1,000,000, as `max_in_flight`.
pub const ADAPTIVE_LIMIT_BOUNDS: Bounds<u64> = Bounds::new(1, 1_000_000);
/// Adaptive concurrency: how much the latency may grow over its long-term value
/// before the limit shrinks (1.5 = 50 %, Gradient2's default).
pub const DEFAULT_ADAPTIVE_RTT_TOLERANCE: f64 = 1.5;
/// `rtt_tolerance`: at least 1 (below it the limit would shrink on no slowdown at
/// all), at most 10 (past it the limit would never shrink).
pub const ADAPTIVE_RTT_TOLERANCE_BOUNDS: Bounds<f64> = Bounds::new(1.0, 10.0);
/// Adaptive concurrency: weight of a new limit estimate in the smoothed limit (0.2,
/// Gradient2's default).
pub const DEFAULT_ADAPTIVE_SMOOTHING: f64 = 0.2;
/// `smoothing`: a weight in `0..=1`, 0 excluded (it would never move).
pub const ADAPTIVE_SMOOTHING_BOUNDS: Bounds<f64> = Bounds::new(0.0, 1.0);

/// Upstream connections per endpoint (count): a hard cap protecting the model server.
pub const DEFAULT_POOL_MAX_CONNECTIONS_PER_HOST: usize = 100;
/// `max_connections_per_host`: at most 100,000 (a tenth of the descriptor ceiling,
/// so a few endpoints cannot exhaust it).
pub const POOL_MAX_CONNECTIONS_PER_HOST_BOUNDS: Bounds<u64> = Bounds::new(1, 100_000);
/// Idle keep-alive connections kept per endpoint (count); 0 disables pooling.
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 20;
/// `max_idle_per_host`: 0 up to the bound of `max_connections_per_host`.
pub const POOL_MAX_IDLE_PER_HOST_BOUNDS: Bounds<u64> = Bounds::new(0, 100_000);
/// An idle pooled connection is closed after this; under common upstream keep-alives.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// `pool.idle_timeout`: a timeout, `1ms..=1h`.
pub const POOL_IDLE_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;

/// TCP (and TLS) connect timeout; a sidecar's upstreams are near, 1 s is generous.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// `timeouts.connect`: a timeout, `1ms..=1h`.
pub const CONNECT_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// Per-attempt timeout until response headers arrive; room for a slow GPU inference.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// `timeouts.request`: a timeout, `1ms..=1h`.
pub const REQUEST_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// No body bytes either way for this long resets the upstream stream.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `timeouts.idle`: a timeout, `1ms..=1h`.
pub const UPSTREAM_IDLE_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;

/// Consecutive failures (count) that open an endpoint's breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// `failure_threshold`: a threshold, `1..=1000000`.
pub const FAILURE_THRESHOLD_BOUNDS: Bounds<u64> = THRESHOLD_BOUNDS;
/// First open period before half-open.
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// `recovery_timeout`: the first open period, `1ms..=1h`.
pub const RECOVERY_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// Half-open successes (count) that close the breaker.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 2;
/// `success_threshold`: a threshold, `1..=1000000`.
pub const SUCCESS_THRESHOLD_BOUNDS: Bounds<u64> = THRESHOLD_BOUNDS;
/// Concurrent half-open probes (count): one, so a sick endpoint gets one request.
pub const DEFAULT_HALF_OPEN_MAX_REQUESTS: u32 = 1;
/// `half_open_max_requests`: a count, `1..=1000000`.
pub const HALF_OPEN_MAX_REQUESTS_BOUNDS: Bounds<u64> = THRESHOLD_BOUNDS;
/// Cap of the open period, which doubles on each re-open.
pub const DEFAULT_MAX_RECOVERY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// `max_recovery_timeout`: up to 24 h, not 1 h. It is a cap, not a wait anyone sits
/// through: an upstream down for a night's maintenance may be probed only every few
/// hours, while a day still re-probes a forgotten breaker daily. `Instant + 24h`
/// cannot overflow either.
pub const MAX_RECOVERY_TIMEOUT_BOUNDS: Bounds<Duration> =
    Bounds::new(MIN_TIMEOUT, Duration::from_secs(24 * 3600));
/// Statuses that count as failures: server-side errors, not 501 (a permanent answer).
pub const DEFAULT_FAILURE_STATUS_CODES: &[u16] = &[500, 502, 503, 504];
/// Error-rate mode: the sliding window (set in the file to turn the mode on).
pub const WINDOW_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// Error-rate mode: attempts (count) the window must hold before the rate is judged.
pub const DEFAULT_REQUEST_VOLUME_THRESHOLD: u32 = 20;
/// `request_volume_threshold`: a threshold, `1..=1000000`.
pub const REQUEST_VOLUME_THRESHOLD_BOUNDS: Bounds<u64> = THRESHOLD_BOUNDS;
/// Calls slower than this count as slow (set in the file to turn it on).
pub const SLOW_CALL_DURATION_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// Error-rate mode: failure share (percent) that opens the breaker.
pub const DEFAULT_ERROR_THRESHOLD_PERCENTAGE: f64 = 50.0;
/// Slow-call share (percent) that opens the breaker; 100 = only when every call is
/// slow, i.e. off unless set.
pub const DEFAULT_SLOW_CALL_RATE_THRESHOLD: f64 = 100.0;
/// Most partition keys tracked per endpoint (count), least recently used dropped.
pub const DEFAULT_MAX_PARTITIONS: usize = 10_000;
/// `max_partitions`: at most 1,000,000 keys (256 MB of keys at most per endpoint).
pub const MAX_PARTITIONS_BOUNDS: Bounds<u64> = Bounds::new(1, 1_000_000);
/// Spread open periods randomly so endpoints do not re-probe in lockstep.
pub const DEFAULT_BREAKER_JITTER: bool = true;

/// Retries after the first attempt (count).
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// `max_retries`: at most 100; the deadline and the budget end retries long before.
pub const MAX_RETRIES_BOUNDS: Bounds<u64> = Bounds::new(0, 100);
/// Backoff before the first retry; doubled each retry.
pub const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_millis(500);
/// `base_delay` and `max_delay`: 0 (retry at once) up to 1 h.
pub const RETRY_DELAY_BOUNDS: Bounds<Duration> = DELAY_BOUNDS;
/// Backoff ceiling.
pub const DEFAULT_RETRY_MAX_DELAY: Duration = Duration::from_secs(5);
/// Jittered backoff, so retrying callers do not synchronise.
pub const DEFAULT_RETRY_JITTER: bool = true;
/// Statuses retried: throttling and transient gateway errors, not 500 (likely a bug).
pub const DEFAULT_RETRY_STATUS_CODES: &[u16] = &[429, 502, 503, 504];
/// Non-idempotent requests without `Idempotency-Key` are not retried.
pub const DEFAULT_RETRY_NON_IDEMPOTENT: bool = false;
/// Largest body (bytes) buffered for replay (4 MiB: a compressed camera frame).
pub const DEFAULT_MAX_REPLAY_BODY: u64 = 4 * MIB;
/// `max_replay_body`: 0 (replay body-less requests only) up to 1 GiB per request.
pub const MAX_REPLAY_BODY_BOUNDS: Bounds<u64> = Bounds::new(0, GIB);
/// Retries may add at most this percentage of requests (over a 10 s window).
pub const DEFAULT_RETRY_BUDGET_PERCENT: f64 = 20.0;
/// Retries per second always allowed, so low traffic can still retry.
pub const DEFAULT_RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;
/// `budget_min_per_second`: at most 1,000,000 (times the 10 s window, inside `u32`).
pub const BUDGET_MIN_PER_SECOND_BOUNDS: Bounds<u64> = Bounds::new(0, 1_000_000);

/// Active health check path (when a `health_check` table is written).
pub const DEFAULT_HEALTH_CHECK_PATH: &str = "/health";
/// Time between active checks of one endpoint.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// `interval`: at least 10 ms (faster probing is a load test, not a health check),
/// at most 1 h.
pub const HEALTH_CHECK_INTERVAL_BOUNDS: Bounds<Duration> =
    Bounds::new(Duration::from_millis(10), MAX_TIMEOUT);
/// Timeout of one active check.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// `health_check.timeout`: a timeout, `1ms..=1h`.
pub const HEALTH_CHECK_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// Consecutive failed checks (count) that mark an endpoint unhealthy.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Consecutive passed checks (count) that mark it healthy again.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
/// `unhealthy_threshold` and `healthy_threshold`.
pub const HEALTH_THRESHOLD_BOUNDS: Bounds<u64> = THRESHOLD_BOUNDS;

/// Static fallback status (when a `fallback` table gives none): 200 with a degraded
/// body, so callers keep working.
pub const DEFAULT_FALLBACK_STATUS: u16 = 200;
/// Static fallback content type.
pub const DEFAULT_FALLBACK_CONTENT_TYPE: &str = "application/json";

/// Whole-request deadline of a route, retries and backoff included.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Route `timeout`: `1ms..=1h`; `started + timeout` is computed per request.
pub const ROUTE_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// Send the remaining deadline upstream as `x-request-timeout-ms`; off by default.
pub const DEFAULT_PROPAGATE_DEADLINE: bool = false;
/// Answer `OVERLOADED` at once when the deadline left is shorter than the predicted
/// wait plus service time: on, as DESIGN.md's deadline rule says.
pub const DEFAULT_SHED_ON_DEADLINE: bool = true;
/// Rate limit (when a `rate_limit` table is written): requests per second per key.
pub const DEFAULT_RATE_LIMIT_RPS: f64 = 30.0;
/// `requests_per_second`: at least 0.001 (one request per 1000 s, so a `Retry-After`
/// is at most 1000 s), at most 1,000,000.
pub const RATE_LIMIT_RPS_BOUNDS: Bounds<f64> = Bounds::new(0.001, 1e6);
/// Burst, in requests, when unset: two seconds' worth of `requests_per_second`.
pub const DEFAULT_RATE_LIMIT_BURST_SECONDS: f64 = 2.0;
/// `burst`: at most 2,000,000, two seconds at the highest rate (the default burst).
pub const RATE_LIMIT_BURST_BOUNDS: Bounds<u64> = Bounds::new(1, 2_000_000);
/// Most rate-limit keys tracked (count), least recently used dropped, so key spraying
/// cannot grow memory.
pub const DEFAULT_RATE_LIMIT_MAX_KEYS: usize = 10_000;
/// `max_keys`: at most 1,000,000 (256 MB of keys at most).
pub const RATE_LIMIT_MAX_KEYS_BOUNDS: Bounds<u64> = Bounds::new(1, 1_000_000);
/// Concurrency limit (when a `concurrency` table is written): requests in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// `max_in_flight`: at most 1,000,000, as `max_connections`.
pub const MAX_IN_FLIGHT_BOUNDS: Bounds<u64> = Bounds::new(1, 1_000_000);
/// Requests waiting for a slot (count); 0 = reject at once when full.
pub const DEFAULT_MAX_QUEUE: usize = 128;
/// `max_queue`: at most 1,000,000.
pub const MAX_QUEUE_BOUNDS: Bounds<u64> = Bounds::new(0, 1_000_000);
/// Longest wait for a slot before 503 `OVERLOADED`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
/// `queue_timeout`: a timeout, `1ms..=1h`.
pub const QUEUE_TIMEOUT_BOUNDS: Bounds<Duration> = TIMEOUT_BOUNDS;
/// Fault injection: share of requests aborted (percent); 0 = none.
pub const DEFAULT_FAULT_ABORT_PERCENT: f64 = 0.0;
/// Status of an injected abort.
pub const DEFAULT_FAULT_ABORT_STATUS: u16 = 503;
/// Fault injection: share of requests delayed (percent); 0 = none.
pub const DEFAULT_FAULT_DELAY_PERCENT: f64 = 0.0;
/// Length of an injected delay.
pub const DEFAULT_FAULT_DELAY: Duration = Duration::from_millis(200);
/// Fault `delay`: 0 up to 1 h.
pub const FAULT_DELAY_BOUNDS: Bounds<Duration> = DELAY_BOUNDS;

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections_per_host: DEFAULT_POOL_MAX_CONNECTIONS_PER_HOST,
            max_idle_per_host: DEFAULT_POOL_MAX_IDLE_PER_HOST,
            idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
        }
    }
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: DEFAULT_CONNECT_TIMEOUT,
            request: DEFAULT_REQUEST_TIMEOUT,
            idle: DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        }
    }
}

/// gRPC statuses that count as breaker failures: UNKNOWN (2), DEADLINE_EXCEEDED (4),
/// INTERNAL (13), UNAVAILABLE (14) — the upstream's fault, not the caller's.
pub const DEFAULT_FAILURE_GRPC_CODES: &[u8] = &[2, 4, 13, 14];

/// gRPC statuses retried: UNAVAILABLE (14) only, which gRPC defines as "not processed,
/// safe to retry".
pub const DEFAULT_RETRY_GRPC_CODES: &[u8] = &[14];

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            recovery_timeout: DEFAULT_RECOVERY_TIMEOUT,
            success_threshold: DEFAULT_SUCCESS_THRESHOLD,
            half_open_max_requests: DEFAULT_HALF_OPEN_MAX_REQUESTS,
            max_recovery_timeout: DEFAULT_MAX_RECOVERY_TIMEOUT,
            failure_status_codes: DEFAULT_FAILURE_STATUS_CODES.to_vec(),
            failure_grpc_codes: DEFAULT_FAILURE_GRPC_CODES.to_vec(),
            error_rate: None,
            slow_call_duration: None,
            slow_call_rate_threshold: DEFAULT_SLOW_CALL_RATE_THRESHOLD,
            partition_by: None,
            max_partitions: DEFAULT_MAX_PARTITIONS,
            jitter: DEFAULT_BREAKER_JITTER,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: DEFAULT_MAX_RETRIES,
            base_delay: DEFAULT_RETRY_BASE_DELAY,
            max_delay: DEFAULT_RETRY_MAX_DELAY,
            jitter: DEFAULT_RETRY_JITTER,
            retry_status_codes: DEFAULT_RETRY_STATUS_CODES.to_vec(),
            retry_grpc_codes: DEFAULT_RETRY_GRPC_CODES.to_vec(),
            retry_non_idempotent: DEFAULT_RETRY_NON_IDEMPOTENT,
            max_replay_body: DEFAULT_MAX_REPLAY_BODY,
            budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            budget_min_per_second: DEFAULT_RETRY_BUDGET_MIN_PER_SECOND,
        }
    }
}
