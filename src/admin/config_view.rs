//! `GET /config`: the active config as JSON, with every table and every effective value
//! (defaults filled in), keyed as in the TOML file. Durations are humantime strings
//! (`"30s"`, `"250ms"`, `"1s 500ms"`: each parses back as a config value), sizes are
//! integers of bytes, and the admin token and the values of `[tracing] headers` are
//! shown only as `"<redacted>"`.
//!
//! Written here rather than as `Serialize` on the config types so that what the admin
//! API shows (redaction, units) is decided in one place.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

use crate::config::{
    AdaptiveConcurrencyConfig, AdminConfig, BreakerConfig, Config, EndpointConfig, FallbackConfig,
    HealthCheckConfig, HostMatch, ListenAddr, ListenerConfig, LoadBalancing, LogFormat,
    PartitionKey, Protocol, RateLimitKey, RetryConfig, RouteConfig, TracingConfig, UpstreamConfig,
};
use crate::control::Control;

/// What the admin token and tracing header values are shown as.
pub(super) const REDACTED: &str = "<redacted>";

/// The whole `/config` body: version, load history and the config.
pub(super) fn document(ctrl: &Control) -> Value {
    let snap = ctrl.snapshot();
    let history = ctrl.history();
    let last_reload = history.last_reload.map(|r| {
        json!({
            "at": timestamp(r.at),
            "result": r.result,
            "error": r.error,
            "not_applied": r.not_applied,
        })
    });
    let mut cfg = config(&snap.config);
    let secrets: std::collections::HashSet<String> = snap
        .config
        .interpolated
        .iter()
        .map(|p| p.to_ascii_lowercase())
        .collect();
    if !secrets.is_empty() {
        redact(&mut cfg, "", &secrets);
    }
    json!({
        "version": snap.version,
        "loaded_at": timestamp(history.loaded_at),
        "last_reload": last_reload,
        "config": cfg,
    })
}

/// Replaces every value that came from `${VAR}` (its TOML path is in `secrets`,
/// lower-cased: header names are shown lower-cased) with [`REDACTED`]: all its
/// strings, when the path names a table (an endpoint written as a plain string).
fn redact(v: &mut Value, at: &str, secrets: &std::collections::HashSet<String>) {
    if !at.is_empty() && secrets.contains(at) {
        redact_all(v);
        return;
    }
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                let bare = !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                let key = if bare { k.clone() } else { format!("{k:?}") };
                let p = if at.is_empty() {
                    key
                } else {
                    format!("{at}.{key}")
                };
                redact(child, &p.to_ascii_lowercase(), secrets);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter_mut().enumerate() {
                redact(child, &format!("{at}[{i}]"), secrets);
            }
        }
        _ => {}
    }
}

/// A value from `${VAR}`: a scalar whole; in a table (an endpoint written as a plain
/// string, shown as `{address, weight}`) its strings only: the numbers beside them
/// (the default weight) did not come from the variable.
fn redact_all(v: &mut Value) {
    match v {
        Value::Number(_) => *v = json!(REDACTED),
        other => redact_strings(other),
    }
}

fn redact_strings(v: &mut Value) {
    match v {
        Value::String(s) => *s = REDACTED.to_string(),
        Value::Object(m) => m.values_mut().for_each(redact_strings),
        Value::Array(a) => a.iter_mut().for_each(redact_strings),
        _ => {}
    }
}

fn timestamp(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn dur(d: Duration) -> Value {
    json!(humantime::format_duration(d).to_string())
}

fn opt_dur(d: Option<Duration>) -> Value {
    d.map_or(Value::Null, dur)
}

fn path(p: &Path) -> Value {
    json!(p.display().to_string())
}

fn config(c: &Config) -> Value {
    let upstreams: Map<String, Value> = c
        .upstreams
        .iter()
        .map(|(name, u)| (name.clone(), upstream(u)))
        .collect();
    json!({
        "service": {"name": c.service.name},
        "listener": listener(&c.listener),
        "admin": admin(&c.admin),
        "logging": {
            "format": match c.logging.format {
                LogFormat::Json => "json",
                LogFormat::Text => "text",
            },
            "level": c.logging.level,
            "access_log": c.logging.access_log,
        },
        "correlation": {
            "propagate": c.correlation.propagate.iter().map(|h| h.as_str()).collect::<Vec<_>>(),
        },
        "limits": {
            "max_buffered_body_bytes": c.limits.max_buffered_body_bytes,
            "priority_header": c.limits.priority_header.as_str(),
        },
        "tracing": c.tracing.as_ref().map(tracing),
        "upstreams": upstreams,
        "routes": c.routes.iter().map(route).collect::<Vec<_>>(),
        "source": c.source.as_deref().map_or(Value::Null, path),
    })
}

fn listener(l: &ListenerConfig) -> Value {
    json!({
        "address": l.address.to_string(),
        "unix_mode": match l.address {
            ListenAddr::Unix(_) => json!(format!("{:04o}", l.unix_mode)),
            ListenAddr::Tcp(_) => Value::Null,
        },
        "tls": l.tls.as_ref().map(|t| json!({
            "cert": path(&t.cert),
            "key": path(&t.key),
            "client_ca": t.client_ca.as_deref().map_or(Value::Null, path),
        })),
        "max_connections": l.max_connections,
        "header_read_timeout": dur(l.header_read_timeout),
        "idle_timeout": dur(l.idle_timeout),
        "max_header_bytes": l.max_header_bytes,
        "max_request_body": l.max_request_body,
        "shutdown_timeout": dur(l.shutdown_timeout),
    })
}

fn admin(a: &AdminConfig) -> Value {
    json!({
        "address": a.address.to_string(),
        "token_env": a.token_env,
        "token": a.token.as_ref().map(|_| REDACTED),
    })
}

fn tracing(t: &TracingConfig) -> Value {
    let headers: Map<String, Value> = t
        .headers
        .iter()
        .map(|(name, _)| (name.as_str().to_owned(), json!(REDACTED)))
        .collect();
    json!({
        "otlp_endpoint": t.otlp_endpoint.to_string(),
        "sample_ratio": t.sample_ratio,
        "headers": headers,
        "service_name": t.service_name,
        "max_queue": t.max_queue,
        "export_timeout": dur(t.export_timeout),
    })
}

fn adaptive_concurrency(a: &AdaptiveConcurrencyConfig) -> Value {
    json!({
        "min_limit": a.min_limit,
        "max_limit": a.max_limit,
        "initial_limit": a.initial_limit,
        "rtt_tolerance": a.rtt_tolerance,
        "smoothing": a.smoothing,
    })
}

fn upstream(u: &UpstreamConfig) -> Value {
    json!({
        "endpoints": u.endpoints.iter().map(endpoint).collect::<Vec<_>>(),
        "protocol": match u.protocol {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::Https => "https",
            Protocol::H2 => "h2",
        },
        "load_balancing": match u.load_balancing {
            LoadBalancing::RoundRobin => "round_robin",
            LoadBalancing::LeastRequest => "least_request",
            LoadBalancing::Random => "random",
            LoadBalancing::Weighted => "weighted",
            LoadBalancing::PeakEwma => "peak_ewma",
        },
        "load_report_header": u.load_report_header.as_ref().map(|h| h.as_str()),
        "forward_load_report": u.forward_load_report,
        "load_report_expiry": dur(u.load_report_expiry),
        "peak_ewma": {
            "default_latency": dur(u.peak_ewma.default_latency),
            "decay": dur(u.peak_ewma.decay),
        },
        "adaptive_concurrency": u.adaptive_concurrency.as_ref().map(adaptive_concurrency),
        "dns_refresh": dur(u.dns_refresh),
        "slow_start": dur(u.slow_start),
        "pool": {
            "max_connections_per_host": u.pool.max_connections_per_host,
            "max_idle_per_host": u.pool.max_idle_per_host,
            "idle_timeout": dur(u.pool.idle_timeout),
        },
        "timeouts": {
            "connect": dur(u.timeouts.connect),
            "request": dur(u.timeouts.request),
            "idle": dur(u.timeouts.idle),
        },
        "circuit_breaker": breaker(&u.circuit_breaker),
        "retry": retry(&u.retry),
        "health_check": u.health_check.as_ref().map(health_check),
        "fallback": u.fallback.as_ref().map(fallback),
        "tls": u.tls.as_ref().map(|t| json!({
            "ca": t.ca.as_deref().map_or(Value::Null, path),
            "server_name": t.server_name,
            "client_cert": t.client_cert.as_deref().map_or(Value::Null, path),
            "client_key": t.client_key.as_deref().map_or(Value::Null, path),
        })),
    })
}

fn endpoint(e: &EndpointConfig) -> Value {
    json!({"address": e.address.to_string(), "weight": e.weight})
}

fn breaker(b: &BreakerConfig) -> Value {
    let rate = b.error_rate.as_ref();
    json!({
        "failure_threshold": b.failure_threshold,
        "recovery_timeout": dur(b.recovery_timeout),
        "success_threshold": b.success_threshold,
        "half_open_max_requests": b.half_open_max_requests,
        "max_recovery_timeout": dur(b.max_recovery_timeout),
        "failure_status_codes": b.failure_status_codes,
        "failure_grpc_codes": grpc_names(&b.failure_grpc_codes),
        "window": opt_dur(rate.map(|r| r.window)),
        "request_volume_threshold": rate.map(|r| r.request_volume_threshold),
        "error_threshold_percentage": rate.map(|r| r.error_threshold_percentage),
        "slow_call_duration": opt_dur(b.slow_call_duration),
        "slow_call_rate_threshold": b.slow_call_rate_threshold,
        "partition_by": b.partition_by.as_ref().map(|PartitionKey::Header(h)| format!("header:{h}")),
        "max_partitions": b.max_partitions,
        "jitter": b.jitter,
    })
}

/// gRPC status codes as the names config files use (`unavailable`).
fn grpc_names(codes: &[u8]) -> Vec<&'static str> {
    codes
        .iter()
        .map(|c| crate::config::grpc_code_name(*c))
        .collect()
}

fn retry(r: &RetryConfig) -> Value {
    json!({
        "max_retries": r.max_retries,
        "base_delay": dur(r.base_delay),
        "max_delay": dur(r.max_delay),
        "jitter": r.jitter,
        "retry_status_codes": r.retry_status_codes,
        "retry_grpc_codes": grpc_names(&r.retry_grpc_codes),
        "retry_non_idempotent": r.retry_non_idempotent,
        "max_replay_body": r.max_replay_body,
        "budget_percent": r.budget_percent,
        "budget_min_per_second": r.budget_min_per_second,
    })
}

fn health_check(h: &HealthCheckConfig) -> Value {
    json!({
        "path": h.path,
        "interval": dur(h.interval),
        "timeout": dur(h.timeout),
        "unhealthy_threshold": h.unhealthy_threshold,
        "healthy_threshold": h.healthy_threshold,
    })
}

fn fallback(f: &FallbackConfig) -> Value {
    match f {
        FallbackConfig::Static {
            status,
            content_type,
            body,
        } => json!({
            "status": status.as_u16(),
            "content_type": String::from_utf8_lossy(content_type.as_bytes()),
            "body": String::from_utf8_lossy(body),
        }),
        FallbackConfig::Upstream(name) => json!({"upstream": name}),
    }
}

fn route(r: &RouteConfig) -> Value {
    let headers: Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                json!(String::from_utf8_lossy(v.as_bytes())),
            )
        })
        .collect();
    json!({
        "name": r.name,
        "host": r.host.as_ref().map(|h| match h {
            HostMatch::Exact(s) => s.clone(),
            HostMatch::Suffix(s) => format!("*{s}"),
        }),
        "path_prefix": r.path_prefix,
        "methods": r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        "headers": headers,
        "upstream": r.upstream,
        "timeout": dur(r.timeout),
        "strip_prefix": r.strip_prefix,
        "rate_limit": r.rate_limit.as_ref().map(|l| json!({
            "requests_per_second": l.requests_per_second,
            "burst": l.burst,
            "key": match &l.key {
                RateLimitKey::Global => "global".to_owned(),
                RateLimitKey::ClientIp => "client_ip".to_owned(),
                RateLimitKey::Header(h) => format!("header:{h}"),
            },
            "max_keys": l.max_keys,
        })),
        "concurrency": r.concurrency.as_ref().map(|c| json!({
            "max_in_flight": c.max_in_flight,
            "max_queue": c.max_queue,
            "queue_timeout": dur(c.queue_timeout),
        })),
        "fault": r.fault.as_ref().map(|f| json!({
            "abort_percent": f.abort_percent,
            "abort_status": f.abort_status.as_u16(),
            "delay_percent": f.delay_percent,
            "delay": dur(f.delay),
        })),
        "retry": r.retry.as_ref().map(retry),
        "circuit_breaker": r.circuit_breaker.as_ref().map(breaker),
        "propagate_deadline": r.propagate_deadline,
        "shed_on_deadline": r.shed_on_deadline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_is_rendered_and_the_token_redacted() {
        let text = r#"
[admin]
address = "127.0.0.1:0"
token_env = "TOK"

[upstreams.yolo]
endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 2 }]
[upstreams.yolo.circuit_breaker]
recovery_timeout = "1.5s"
window = "10s"
partition_by = "header:X-Camera-ID"
[upstreams.yolo.fallback]
status = 200
body = "{}"

[[routes]]
name = "detect"
path_prefix = "/detect"
host = "*.local"
upstream = "yolo"
rate_limit = { requests_per_second = 30, burst = 60, key = "header:X-Camera-ID" }
"#;
        let cfg = crate::config::parse_with_env(text, "t.toml", None, &|n| {
            (n == "TOK").then(|| "s3cret".to_owned())
        })
        .unwrap();
        let v = config(&cfg);
        let s = v.to_string();
        assert!(!s.contains("s3cret"), "{s}");
        assert_eq!(v["admin"]["token"], REDACTED);
        assert_eq!(v["admin"]["token_env"], "TOK");
        let cb = &v["upstreams"]["yolo"]["circuit_breaker"];
        assert_eq!(cb["recovery_timeout"], "1s 500ms");
        assert_eq!(cb["window"], "10s");
        assert_eq!(cb["partition_by"], "header:x-camera-id");
        assert_eq!(v["listener"]["max_header_bytes"], 65536);
        assert_eq!(v["upstreams"]["yolo"]["endpoints"][1]["weight"], 2);
        assert_eq!(v["upstreams"]["yolo"]["fallback"]["status"], 200);
        assert_eq!(v["routes"][0]["host"], "*.local");
        assert_eq!(v["routes"][0]["rate_limit"]["key"], "header:x-camera-id");
        assert!(v["routes"][0]["retry"].is_null());
    }

    #[test]
    fn new_keys_are_rendered_and_tracing_headers_redacted() {
        let text = r#"
[limits]
max_buffered_body_bytes = "1MiB"

[tracing]
otlp_endpoint = "http://otel:4318"
headers = { authorization = "Bearer ${OTLP_TOKEN}" }

[upstreams.yolo]
endpoints = ["127.0.0.1:9001"]
load_balancing = "peak_ewma"
load_report_header = "X-Queue-Depth"
adaptive_concurrency = { max_limit = 64 }
[upstreams.cpu]
endpoints = ["127.0.0.1:9002"]
retry = { retry_grpc_codes = ["UNAVAILABLE", "8"] }
circuit_breaker = { failure_grpc_codes = ["internal"] }

[[routes]]
path_prefix = "/"
upstream = "yolo"
shed_on_deadline = false
"#;
        let cfg = crate::config::parse_with_env(text, "t.toml", None, &|n| {
            (n == "OTLP_TOKEN").then(|| "tok3n".to_owned())
        })
        .unwrap();
        let v = config(&cfg);
        assert!(!v.to_string().contains("tok3n"), "{v}");
        assert_eq!(v["limits"]["max_buffered_body_bytes"], 1 << 20);
        assert_eq!(v["limits"]["priority_header"], "x-priority");
        let t = &v["tracing"];
        assert_eq!(t["otlp_endpoint"], "http://otel:4318/");
        assert_eq!(t["headers"]["authorization"], REDACTED);
        assert_eq!(t["sample_ratio"], 0.05);
        assert_eq!(t["service_name"], "fusebox");
        assert_eq!(
            (t["max_queue"].clone(), t["export_timeout"].clone()),
            (json!(2048), json!("10s"))
        );
        let y = &v["upstreams"]["yolo"];
        assert_eq!(y["load_balancing"], "peak_ewma");
        assert_eq!(y["load_report_header"], "x-queue-depth");
        assert_eq!(y["forward_load_report"], false);
        assert_eq!(y["load_report_expiry"], "2s");
        assert_eq!(
            y["peak_ewma"],
            json!({"default_latency": "30ms", "decay": "1s"})
        );
        assert_eq!(
            y["adaptive_concurrency"],
            json!({"min_limit": 1, "max_limit": 64, "initial_limit": 20, "rtt_tolerance": 1.5, "smoothing": 0.2})
        );
        let cpu = &v["upstreams"]["cpu"];
        // gRPC codes by the names config files use.
        assert_eq!(
            cpu["retry"]["retry_grpc_codes"],
            json!(["unavailable", "resource_exhausted"])
        );
        assert_eq!(
            cpu["circuit_breaker"]["failure_grpc_codes"],
            json!(["internal"])
        );
        assert_eq!(y["retry"]["retry_grpc_codes"], json!(["unavailable"]));
        assert!(cpu["adaptive_concurrency"].is_null() && cpu["load_report_header"].is_null());
        assert_eq!(v["routes"][0]["shed_on_deadline"], false);
        let off = crate::config::parse_with_env(
            "[upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n",
            "t.toml",
            None,
            &|_| None,
        )
        .unwrap();
        assert!(config(&off)["tracing"].is_null());
    }

    /// A value that a `${VAR:-default}` filled from the file's own default (the
    /// variable unset or empty) is no secret and is shown; one the variable filled is
    /// redacted.
    #[test]
    fn a_value_the_default_filled_is_shown() {
        let text = r#"
[listener]
address = "${LISTEN:-127.0.0.1:18080}"

[upstreams.yolo]
endpoints = ["${HOST:-127.0.0.1}:9001", "${EMPTY:-127.0.0.2}:9001", "${SET:-127.0.0.3}:9001"]

[[routes]]
path_prefix = "/"
upstream = "yolo"
"#;
        let env = |n: &str| match n {
            "EMPTY" => Some(String::new()),
            "SET" => Some("10.0.0.9".to_owned()),
            _ => None,
        };
        let cfg = crate::config::parse_with_env(text, "t.toml", None, &env).unwrap();
        let mut v = config(&cfg);
        let secrets = cfg
            .interpolated
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect();
        redact(&mut v, "", &secrets);
        assert_eq!(v["listener"]["address"], "127.0.0.1:18080", "{v:#}");
        let eps = &v["upstreams"]["yolo"]["endpoints"];
        assert_eq!(eps[0]["address"], "127.0.0.1:9001", "{v:#}");
        assert_eq!(eps[1]["address"], "127.0.0.2:9001", "{v:#}");
        assert_eq!(eps[2]["address"], REDACTED, "{v:#}");
    }

    /// DESIGN, `/config`: "secrets (tokens, values from `${VAR}`) redacted": every value
    /// that came from an environment variable is shown as `<redacted>`, wherever it is.
    #[test]
    fn values_from_environment_variables_are_redacted() {
        let text = r#"
[service]
name = "${SVC}"

[tracing]
otlp_endpoint = "http://127.0.0.1:4318"

[upstreams.yolo]
endpoints = ["${HOST}:9001", "127.0.0.1:9002"]
[upstreams.yolo.fallback]
body = '{"key": "${FB_SECRET}"}'

[[routes]]
path_prefix = "/"
upstream = "yolo"
headers = { "X-Org-ID" = "${ORG}" }
"#;
        let env = |n: &str| match n {
            "HOST" => Some("10.0.0.9".to_owned()),
            "FB_SECRET" => Some("fb-s3cret".to_owned()),
            "ORG" => Some("org-s3cret".to_owned()),
            "SVC" => Some("svc-s3cret".to_owned()),
            _ => None,
        };
        let cfg = crate::config::parse_with_env(text, "t.toml", None, &env).unwrap();
        let mut v = config(&cfg);
        let secrets = cfg
            .interpolated
            .iter()
            .map(|p| p.to_ascii_lowercase())
            .collect();
        redact(&mut v, "", &secrets);
        let s = v.to_string();
        // tracing.service_name defaults to service.name: redacted as its source is.
        for secret in ["10.0.0.9", "fb-s3cret", "org-s3cret", "svc-s3cret"] {
            assert!(!s.contains(secret), "{secret} shown: {s}");
        }
        let up = &v["upstreams"]["yolo"];
        assert_eq!(up["endpoints"][0]["address"], REDACTED);
        assert_eq!(
            up["endpoints"][0]["weight"], 1,
            "the default weight beside a redacted address is no secret (and an integer)"
        );
        assert_eq!(up["endpoints"][1]["address"], "127.0.0.1:9002");
        assert_eq!(up["fallback"]["body"], REDACTED);
        assert_eq!(v["routes"][0]["path_prefix"], "/");
    }
}
