//! Every default of the config file as a named constant (the values of DESIGN.md's
//! example), and `Default` impls of the config types built from them. Validation
//! starts from these and overrides what the file says.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use super::types::*;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// `service.name` when unset: the `X-Service-Name` stamped on outbound calls.
pub const DEFAULT_SERVICE_NAME: &str = "fusebox";

/// Data-plane listener: every interface, port 8080, as a sidecar's usual app port.
pub const DEFAULT_LISTENER_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 8080));
/// Open downstream connections accepted at once (count); beyond it accept waits, so a
/// connection flood cannot exhaust file descriptors.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Time allowed to receive a request's headers; the slowloris guard (408 and close).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle keep-alive downstream connection lifetime; above typical client pool timeouts.
pub const DEFAULT_LISTENER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest request head in bytes (64 KiB, as nginx/Envoy); larger answers 431.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest declared request body in bytes (32 MiB: a few full-resolution camera
/// frames); larger answers 413 before the body is read.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 32 * MIB;
/// Drain time on SIGTERM; Kubernetes' default grace period is 30 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Admin listener: loopback only, port 9901 (Envoy's habit), so no token is needed.
pub const DEFAULT_ADMIN_ADDRESS: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));

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
/// Traffic ramp for a recovered endpoint; 0 = off (full share at once).
pub const DEFAULT_SLOW_START: Duration = Duration::ZERO;
/// Endpoint weight (relative share) when an endpoint gives none.
pub const DEFAULT_ENDPOINT_WEIGHT: u32 = 1;

/// Upstream connections per endpoint (count): a hard cap protecting the model server.
pub const DEFAULT_POOL_MAX_CONNECTIONS_PER_HOST: usize = 100;
/// Idle keep-alive connections kept per endpoint (count); 0 disables pooling.
pub const DEFAULT_POOL_MAX_IDLE_PER_HOST: usize = 20;
/// An idle pooled connection is closed after this; under common upstream keep-alives.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// TCP (and TLS) connect timeout; a sidecar's upstreams are near, 1 s is generous.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Per-attempt timeout until response headers arrive; room for a slow GPU inference.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// No body bytes either way for this long resets the upstream stream.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Consecutive failures (count) that open an endpoint's breaker.
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 5;
/// First open period before half-open.
pub const DEFAULT_RECOVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Half-open successes (count) that close the breaker.
pub const DEFAULT_SUCCESS_THRESHOLD: u32 = 2;
/// Concurrent half-open probes (count): one, so a sick endpoint gets one request.
pub const DEFAULT_HALF_OPEN_MAX_REQUESTS: u32 = 1;
/// Cap of the open period, which doubles on each re-open.
pub const DEFAULT_MAX_RECOVERY_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Statuses that count as failures: server-side errors, not 501 (a permanent answer).
pub const DEFAULT_FAILURE_STATUS_CODES: &[u16] = &[500, 502, 503, 504];
/// Error-rate mode: attempts (count) the window must hold before the rate is judged.
pub const DEFAULT_REQUEST_VOLUME_THRESHOLD: u32 = 20;
/// Error-rate mode: failure share (percent) that opens the breaker.
pub const DEFAULT_ERROR_THRESHOLD_PERCENTAGE: f64 = 50.0;
/// Slow-call share (percent) that opens the breaker; 100 = only when every call is
/// slow, i.e. off unless set.
pub const DEFAULT_SLOW_CALL_RATE_THRESHOLD: f64 = 100.0;
/// Most partition keys tracked per endpoint (count), least recently used dropped.
pub const DEFAULT_MAX_PARTITIONS: usize = 10_000;
/// Spread open periods randomly so endpoints do not re-probe in lockstep.
pub const DEFAULT_BREAKER_JITTER: bool = true;

/// Retries after the first attempt (count).
pub const DEFAULT_MAX_RETRIES: u32 = 3;
/// Backoff before the first retry; doubled each retry.
pub const DEFAULT_RETRY_BASE_DELAY: Duration = Duration::from_millis(500);
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
/// Retries may add at most this percentage of requests (over a 10 s window).
pub const DEFAULT_RETRY_BUDGET_PERCENT: f64 = 20.0;
/// Retries per second always allowed, so low traffic can still retry.
pub const DEFAULT_RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;

/// Active health check path (when a `health_check` table is written).
pub const DEFAULT_HEALTH_CHECK_PATH: &str = "/health";
/// Time between active checks of one endpoint.
pub const DEFAULT_HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Timeout of one active check.
pub const DEFAULT_HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// Consecutive failed checks (count) that mark an endpoint unhealthy.
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Consecutive passed checks (count) that mark it healthy again.
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;

/// Static fallback status (when a `fallback` table gives none): 200 with a degraded
/// body, so callers keep working.
pub const DEFAULT_FALLBACK_STATUS: u16 = 200;
/// Static fallback content type.
pub const DEFAULT_FALLBACK_CONTENT_TYPE: &str = "application/json";

/// Whole-request deadline of a route, retries and backoff included.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(30);
/// Send the remaining deadline upstream as `x-request-timeout-ms`; off by default.
pub const DEFAULT_PROPAGATE_DEADLINE: bool = false;
/// Rate limit (when a `rate_limit` table is written): requests per second per key.
pub const DEFAULT_RATE_LIMIT_RPS: f64 = 30.0;
/// Burst, in requests, when unset: two seconds' worth of `requests_per_second`.
pub const DEFAULT_RATE_LIMIT_BURST_SECONDS: f64 = 2.0;
/// Most rate-limit keys tracked (count), least recently used dropped, so key spraying
/// cannot grow memory.
pub const DEFAULT_RATE_LIMIT_MAX_KEYS: usize = 10_000;
/// Concurrency limit (when a `concurrency` table is written): requests in flight.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Requests waiting for a slot (count); 0 = reject at once when full.
pub const DEFAULT_MAX_QUEUE: usize = 128;
/// Longest wait for a slot before 503 `OVERLOADED`.
pub const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_millis(100);
/// Fault injection: share of requests aborted (percent); 0 = none.
pub const DEFAULT_FAULT_ABORT_PERCENT: f64 = 0.0;
/// Status of an injected abort.
pub const DEFAULT_FAULT_ABORT_STATUS: u16 = 503;
/// Fault injection: share of requests delayed (percent); 0 = none.
pub const DEFAULT_FAULT_DELAY_PERCENT: f64 = 0.0;
/// Length of an injected delay.
pub const DEFAULT_FAULT_DELAY: Duration = Duration::from_millis(200);

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
