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
    pub limits: LimitsConfig,
    /// Span export over OTLP; `None` (off) unless `[tracing] otlp_endpoint` is set.
    pub tracing: Option<TracingConfig>,
    /// Upstreams by name (sorted, so builds are deterministic).
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes in file order (ties in specificity go to the earlier one).
    pub routes: Vec<RouteConfig>,
    /// The file this came from (`None` for the embedded default).
    pub source: Option<PathBuf>,
    /// TOML paths (`upstreams.yolo.fallback.body`) of the values that came from
    /// `${VAR}`: treated as secrets, shown redacted by `/config`.
    pub interpolated: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Set as `X-Service-Name` on outbound calls when absent.
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub address: ListenAddr,
    /// File mode of a Unix-socket listener's socket (`unix_mode`); unused for TCP.
    pub unix_mode: u32,
    pub tls: Option<ListenerTls>,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_request_body: u64,
    pub shutdown_timeout: Duration,
}

/// Where the data listener accepts: a TCP address or, for an application in the same
/// pod, a Unix socket path (`address = "unix:/run/fusebox/fusebox.sock"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl ListenAddr {
    /// The TCP address, when the listener is TCP.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddr::Tcp(a) => Some(*a),
            ListenAddr::Unix(_) => None,
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = std::net::AddrParseError;

    /// `IP:port` or `unix:PATH` (without the config file's checks on the path).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some(path) => Ok(ListenAddr::Unix(PathBuf::from(path))),
            None => s.parse().map(ListenAddr::Tcp),
        }
    }
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> Self {
        ListenAddr::Tcp(a)
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
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

/// `[limits]`: limits of the whole process rather than of one route or upstream.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Bytes of request bodies held for replay at once, summed over every request in
    /// flight; a body that would pass it streams through and is not retried (counted
    /// in `gateway_proxy_unbuffered_bodies_total`). 0 keeps no body.
    pub max_buffered_body_bytes: u64,
    /// The request header naming a request's priority (`critical`, `high`, `normal`,
    /// `low`), which orders a route's concurrency queue.
    pub priority_header: HeaderName,
}

/// `[tracing]`: spans exported over OTLP/HTTP (protobuf). Present only when
/// `otlp_endpoint` is set.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The collector's base URL as written (`http://otel-collector:4318`); http or
    /// https, no query.
    pub otlp_endpoint: http::Uri,
    /// Where spans are posted: `otlp_endpoint` + `/v1/traces`.
    pub traces_url: http::Uri,
    /// Share (0..=1) of requests without an incoming `traceparent` that are sampled;
    /// an incoming one's sampled flag is followed instead.
    pub sample_ratio: f64,
    /// Sent with every export request (auth tokens); values are marked sensitive and
    /// shown as `<redacted>` in `/config`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The `service.name` resource attribute; `service.name` of the file by default.
    pub service_name: String,
    /// Finished spans waiting for export; past it spans are dropped and counted.
    pub max_queue: usize,
    /// Timeout of one export request.
    pub export_timeout: Duration,
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
    /// Least expected latency: a peak-sensitive moving average of each endpoint's
    /// latency times its requests in flight (Finagle's and Linkerd's peak EWMA), with
    /// upstream load reports folded in; settings in `UpstreamConfig::peak_ewma`.
    PeakEwma,
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

/// `[upstreams.NAME.peak_ewma]`: the latency estimate `peak_ewma` balancing reads.
/// Always present (the defaults when the table is not written).
#[derive(Debug, Clone, PartialEq)]
pub struct PeakEwmaConfig {
    /// Latency assumed for an endpoint with no samples yet.
    pub default_latency: Duration,
    /// Time constant of the moving average: a sample's weight falls to 1/e after it.
    pub decay: Duration,
}

/// `[upstreams.NAME.adaptive_concurrency]`: a per-endpoint concurrency limit learned
/// from latency (Gradient2 style). Valid by construction:
/// `1 <= min_limit <= initial_limit <= max_limit`, `rtt_tolerance >= 1`,
/// `0 < smoothing <= 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptiveConcurrencyConfig {
    pub min_limit: usize,
    pub max_limit: usize,
    /// The limit an endpoint starts with, already clamped into `min_limit..=max_limit`.
    pub initial_limit: usize,
    /// How far latency may grow over its long-term value before the limit shrinks.
    pub rtt_tolerance: f64,
    /// Weight of each new limit estimate in the smoothed limit.
    pub smoothing: f64,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub endpoints: Vec<EndpointConfig>,
    pub protocol: Protocol,
    pub load_balancing: LoadBalancing,
    /// An extra response header carrying the endpoint's load (`x-queue-depth`); ORCA
    /// `endpoint-load-metrics` is always read.
    pub load_report_header: Option<HeaderName>,
    /// Whether load-report headers reach the caller; stripped from responses if false.
    pub forward_load_report: bool,
    /// How long an endpoint's last load report counts.
    pub load_report_expiry: Duration,
    pub peak_ewma: PeakEwmaConfig,
    /// Off (`None`) unless the table is written.
    pub adaptive_concurrency: Option<AdaptiveConcurrencyConfig>,
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
    /// Answer `OVERLOADED` at once when the deadline left is shorter than the
    /// predicted queue wait plus service time.
    pub shed_on_deadline: bool,
}
