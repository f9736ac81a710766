//! The TOML file as written: a serde mirror of every table and key, each optional so
//! `validate.rs` can apply the defaults. `deny_unknown_fields` everywhere turns a typo
//! into an error that toml locates itself.
//!
//! Values stay raw here: strings are not yet interpolated (`${VAR}` must work in every
//! string value, enum names included), integers are `i64` so a negative limit gets a
//! clear message from validation instead of serde's, and durations and sizes keep
//! whichever of their two forms was written.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub service: ServiceFile,
    pub listener: ListenerFile,
    pub admin: AdminFile,
    pub logging: LoggingFile,
    pub correlation: CorrelationFile,
    pub limits: LimitsFile,
    pub tracing: Option<TracingFile>,
    pub upstreams: Ordered<UpstreamFile>,
    pub routes: Vec<RouteFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceFile {
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerFile {
    pub address: Option<String>,
    /// Octal file mode of a Unix-socket listener: `"0660"` or the TOML integer `0o660`.
    pub unix_mode: Option<ModeValue>,
    pub tls: Option<ListenerTlsFile>,
    pub max_connections: Option<i64>,
    pub header_read_timeout: Option<DurationValue>,
    pub idle_timeout: Option<DurationValue>,
    pub max_header_bytes: Option<SizeValue>,
    pub max_request_body: Option<SizeValue>,
    pub shutdown_timeout: Option<DurationValue>,
}

/// A file mode: an octal string (`"0660"`) or an integer (TOML `0o660`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ModeValue {
    Int(i64),
    Str(String),
}

/// A gRPC status: a name (`"unavailable"`), a number as a string (`"14"`) or a TOML
/// integer (`14`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum GrpcCodeValue {
    Int(i64),
    Str(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerTlsFile {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminFile {
    pub address: Option<String>,
    pub token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingFile {
    pub format: Option<String>,
    pub level: Option<String>,
    pub access_log: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorrelationFile {
    pub propagate: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsFile {
    pub max_buffered_body_bytes: Option<SizeValue>,
    pub priority_header: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingFile {
    pub otlp_endpoint: Option<String>,
    pub sample_ratio: Option<f64>,
    pub headers: Option<Ordered<String>>,
    pub service_name: Option<String>,
    pub max_queue: Option<i64>,
    pub export_timeout: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamFile {
    pub endpoints: Option<Vec<EndpointFile>>,
    pub protocol: Option<String>,
    pub load_balancing: Option<String>,
    pub load_report_header: Option<String>,
    pub forward_load_report: Option<bool>,
    pub load_report_expiry: Option<DurationValue>,
    pub peak_ewma: PeakEwmaFile,
    pub adaptive_concurrency: Option<AdaptiveConcurrencyFile>,
    pub dns_refresh: Option<DurationValue>,
    pub slow_start: Option<DurationValue>,
    pub pool: PoolFile,
    pub timeouts: TimeoutsFile,
    pub circuit_breaker: BreakerFile,
    pub retry: RetryFile,
    pub health_check: Option<HealthCheckFile>,
    pub fallback: Option<FallbackFile>,
    pub tls: Option<UpstreamTlsFile>,
}

/// `"host:port"` or `{ address = "host:port", weight = 2 }`.
#[derive(Debug)]
pub enum EndpointFile {
    Address(String),
    Table(EndpointTable),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointTable {
    pub address: Option<String>,
    pub weight: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PeakEwmaFile {
    pub default_latency: Option<DurationValue>,
    pub decay: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveConcurrencyFile {
    pub min_limit: Option<i64>,
    pub max_limit: Option<i64>,
    pub initial_limit: Option<i64>,
    pub rtt_tolerance: Option<f64>,
    pub smoothing: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolFile {
    pub max_connections_per_host: Option<i64>,
    pub max_idle_per_host: Option<i64>,
    pub idle_timeout: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TimeoutsFile {
    pub connect: Option<DurationValue>,
    pub request: Option<DurationValue>,
    pub idle: Option<DurationValue>,
}

/// Used both under an upstream and under a route, where each key given overrides the
/// upstream's value for that route.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerFile {
    pub failure_threshold: Option<i64>,
    pub recovery_timeout: Option<DurationValue>,
    pub success_threshold: Option<i64>,
    pub half_open_max_requests: Option<i64>,
    pub max_recovery_timeout: Option<DurationValue>,
    pub failure_status_codes: Option<Vec<i64>>,
    pub failure_grpc_codes: Option<Vec<GrpcCodeValue>>,
    pub window: Option<DurationValue>,
    pub request_volume_threshold: Option<i64>,
    pub error_threshold_percentage: Option<f64>,
    pub slow_call_duration: Option<DurationValue>,
    pub slow_call_rate_threshold: Option<f64>,
    pub partition_by: Option<String>,
    pub max_partitions: Option<i64>,
    pub jitter: Option<bool>,
}

/// Used both under an upstream and under a route (field-by-field override).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryFile {
    pub max_retries: Option<i64>,
    pub base_delay: Option<DurationValue>,
    pub max_delay: Option<DurationValue>,
    pub jitter: Option<bool>,
    pub retry_status_codes: Option<Vec<i64>>,
    pub retry_grpc_codes: Option<Vec<GrpcCodeValue>>,
    pub retry_non_idempotent: Option<bool>,
    pub max_replay_body: Option<SizeValue>,
    pub budget_percent: Option<f64>,
    pub budget_min_per_second: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckFile {
    pub path: Option<String>,
    pub interval: Option<DurationValue>,
    pub timeout: Option<DurationValue>,
    pub unhealthy_threshold: Option<i64>,
    pub healthy_threshold: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackFile {
    pub status: Option<i64>,
    pub content_type: Option<String>,
    pub body: Option<String>,
    pub upstream: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTlsFile {
    pub ca: Option<String>,
    pub server_name: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Option<Vec<String>>,
    pub headers: Option<Ordered<String>>,
    pub upstream: Option<String>,
    pub timeout: Option<DurationValue>,
    pub strip_prefix: Option<String>,
    pub rate_limit: Option<RateLimitFile>,
    pub concurrency: Option<ConcurrencyFile>,
    pub fault: Option<FaultFile>,
    pub propagate_deadline: Option<bool>,
    pub shed_on_deadline: Option<bool>,
    pub retry: Option<RetryFile>,
    pub circuit_breaker: Option<BreakerFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitFile {
    pub requests_per_second: Option<f64>,
    pub burst: Option<i64>,
    pub key: Option<String>,
    pub max_keys: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConcurrencyFile {
    pub max_in_flight: Option<i64>,
    pub max_queue: Option<i64>,
    pub queue_timeout: Option<DurationValue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultFile {
    pub abort_percent: Option<f64>,
    pub abort_status: Option<i64>,
    pub delay_percent: Option<f64>,
    pub delay: Option<DurationValue>,
}

/// A duration as written: a string with a unit, or a number of seconds.
#[derive(Debug, Clone, PartialEq)]
pub enum DurationValue {
    Seconds(f64),
    Text(String),
}

/// A size as written: a number of bytes, or a string with a unit.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeValue {
    Bytes(i64),
    Text(String),
}

/// A TOML table read as a list, keeping the file's order (for messages and for the
/// order headers are listed in); TOML itself refuses duplicate keys.
#[derive(Debug)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a duration: a string with a unit (\"250ms\", \"1.5s\", \"5m\") \
                     or a number of seconds",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(DurationValue::Seconds(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(DurationValue::Seconds(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(DurationValue::Seconds(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(DurationValue::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size: a number of bytes or a string such as \"64KiB\" or \"4MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(SizeValue::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(SizeValue::Bytes)
                    .map_err(|_| E::custom("size is too large"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(SizeValue::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for EndpointFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EndpointFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an endpoint: \"host:port\" or { address = \"host:port\", weight = N }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(EndpointFile::Address(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                EndpointTable::deserialize(MapAccessDeserializer::new(map)).map(EndpointFile::Table)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, T>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}
