//! The validated configuration: only valid values live here (durations, socket
//! addresses, header names, non-zero limits). Built from the file by `validate.rs`;
//! read once per config build (never per request) by `snapshot.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

/// Everything one config file says, after defaults and checks.
#[derive(Debug, Clone)]
pub struct Config {
    pub service: ServiceConfig,
    pub listener: ListenerConfig,
    pub admin: AdminConfig,
    pub logging: LoggingConfig,
    pub correlation: CorrelationConfig,
    /// Upstreams by name (sorted, so builds are deterministic).
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes in file order (ties in specificity go to the earlier one).
    pub routes: Vec<RouteConfig>,
    /// The file this came from (`None` for the embedded default).
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Set as `X-Service-Name` on outbound calls when absent.
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    pub tls: Option<ListenerTls>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_request_body: u64,
    pub shutdown_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub address: SocketAddr,
    /// Name of the environment variable holding the bearer token.
    pub token_env: Option<String>,
    /// The token itself, read from `token_env` at load time (redacted in `/config`).
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A tracing-subscriber filter directive such as `info` or `fusebox=debug`.
    pub level: String,
    pub access_log: bool,
}

#[derive(Debug, Clone)]
pub struct CorrelationConfig {
    /// Extra headers logged and passed on (X-Org-ID and X-Camera-ID always are).
    pub propagate: Vec<HeaderName>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
    Https,
    H2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    RoundRobin,
    LeastRequest,
    Random,
    Weighted,
}

/// Where an endpoint lives: a literal socket address or a DNS name re-resolved every
/// `dns_refresh`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EndpointAddr {
    Socket(SocketAddr),
    Dns { host: String, port: u16 },
}

impl std::fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointAddr::Socket(a) => write!(f, "{a}"),
            EndpointAddr::Dns { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub address: EndpointAddr,
    /// Relative share for `weighted` (and a tie-breaker elsewhere); at least 1.
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_connections_per_host: usize,
    pub max_idle_per_host: usize,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct TimeoutsConfig {
    pub connect: Duration,
    /// Per attempt, until response headers arrive.
    pub request: Duration,
    /// No body bytes either way for this long -> reset.
    pub idle: Duration,
}

#[derive(Debug, Clone)]
pub struct ErrorRateConfig {
    pub window: Duration,
    pub request_volume_threshold: u32,
    pub error_threshold_percentage: f64,
}

/// Which request value gives each key its own breaker per endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionKey {
    Header(HeaderName),
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub failure_threshold: u32,
    pub recovery_timeout: Duration,
    pub success_threshold: u32,
    pub half_open_max_requests: u32,
    pub max_recovery_timeout: Duration,
    pub failure_status_codes: Vec<u16>,
    /// gRPC statuses (trailers-only responses) that count as failures.
    pub failure_grpc_codes: Vec<u8>,
    /// Error-rate mode, active when `window` is set.
    pub error_rate: Option<ErrorRateConfig>,
    pub slow_call_duration: Option<Duration>,
    pub slow_call_rate_threshold: f64,
    pub partition_by: Option<PartitionKey>,
    pub max_partitions: usize,
    /// Small random spread on open time so endpoints do not re-probe in lockstep.
    pub jitter: bool,
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    pub max_retries: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    pub jitter: bool,
    pub retry_status_codes: Vec<u16>,
    /// gRPC statuses (trailers-only responses) retried for any method: the upstream
    /// did not process the call.
    pub retry_grpc_codes: Vec<u8>,
    pub retry_non_idempotent: bool,
    pub max_replay_body: u64,
    pub budget_percent: f64,
    pub budget_min_per_second: u32,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

#[derive(Debug, Clone)]
pub enum FallbackConfig {
    Static {
        status: http::StatusCode,
        content_type: HeaderValue,
        body: bytes::Bytes,
    },
    Upstream(String),
}

#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    pub protocol: Protocol,
    pub load_balancing: LoadBalancing,
    pub dns_refresh: Duration,
    pub slow_start: Duration,
    pub pool: PoolConfig,
    pub timeouts: TimeoutsConfig,
    pub circuit_breaker: BreakerConfig,
    pub retry: RetryConfig,
    pub health_check: Option<HealthCheckConfig>,
    pub fallback: Option<FallbackConfig>,
    pub tls: Option<UpstreamTls>,
}

/// Host match of a route: exact (`yolo.local`) or wildcard (`*.local`, stored as the
/// suffix `.local`). Lower-cased, without port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Exact(String),
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    Global,
    Header(HeaderName),
    ClientIp,
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    pub requests_per_second: f64,
    pub burst: u32,
    pub key: RateLimitKey,
    /// Most keys tracked at once (least recently used dropped).
    pub max_keys: usize,
}

#[derive(Debug, Clone)]
pub struct ConcurrencyConfig {
    pub max_in_flight: usize,
    pub max_queue: usize,
    pub queue_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct FaultConfig {
    pub abort_percent: f64,
    pub abort_status: http::StatusCode,
    pub delay_percent: f64,
    pub delay: Duration,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    pub host: Option<HostMatch>,
    /// Always starts with `/`; `/` when the route gave none.
    pub path_prefix: String,
    /// Empty = any method.
    pub methods: Vec<Method>,
    /// Header equality constraints (all must hold).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub upstream: String,
    /// Whole-request deadline, retries and backoff included.
    pub timeout: Duration,
    pub strip_prefix: Option<String>,
    pub rate_limit: Option<RateLimitConfig>,
    pub concurrency: Option<ConcurrencyConfig>,
    pub fault: Option<FaultConfig>,
    /// Route-level overrides, already merged over the upstream's values.
    pub retry: Option<RetryConfig>,
    pub circuit_breaker: Option<BreakerConfig>,
    /// Send the remaining budget upstream as `x-request-timeout-ms`.
    pub propagate_deadline: bool,
}
