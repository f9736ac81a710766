//! `/config` renders every table and effective value.

use crate::*;

/// Proves: `/config` renders every optional table a config can hold (error-rate and
/// slow-call breaker settings, partitions, health checks, both fallback kinds, and a
/// route with host, methods, headers, rate limit, concurrency, fault, and retry and
/// breaker overrides) with effective values, durations as strings and sizes as bytes.
#[tokio::test]
async fn config_renders_every_optional_table() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let toml = format!(
        r#"{base}[correlation]
propagate = ["X-Tenant"]

[upstreams.yolo]
endpoints = ["{a}", {{ address = "127.0.0.1:1", weight = 3 }}]
load_balancing = "weighted"
slow_start = "90s"

[upstreams.yolo.pool]
max_idle_per_host = 4

[upstreams.yolo.circuit_breaker]
failure_threshold = 1000
window = "10s"
request_volume_threshold = 20
error_threshold_percentage = 50.0
slow_call_duration = "2s"
slow_call_rate_threshold = 80.0
partition_by = "header:X-Camera-ID"
max_partitions = 100

[upstreams.yolo.retry]
max_replay_body = "1MiB"

[upstreams.yolo.health_check]
path = "/healthz"
interval = "1m"

[upstreams.yolo.fallback]
upstream = "cpu"

[upstreams.cpu]
endpoints = ["{a}"]

[upstreams.cpu.fallback]
status = 200
content_type = "application/json"
body = '{{"detections": []}}'

[[routes]]
name = "detect"
host = "*.local"
path_prefix = "/detect"
methods = ["POST", "GET"]
headers = {{ "X-Org-ID" = "org123" }}
upstream = "yolo"
timeout = "1.5s"
strip_prefix = "/detect"
propagate_deadline = true
rate_limit = {{ requests_per_second = 30, burst = 60, key = "client_ip" }}
concurrency = {{ max_in_flight = 64, max_queue = 128, queue_timeout = "100ms" }}
fault = {{ abort_percent = 5.0, abort_status = 503, delay_percent = 10.0, delay = "200ms" }}

[routes.retry]
max_retries = 1

[routes.circuit_breaker]
failure_threshold = 7
"#,
        base = base(&format!("token_env = \"{TOKEN_ENV}\"")),
        a = up.addr,
    );
    let p = start(&toml).await;
    let cfg = p.admin_json("/config").await;
    let c = &cfg["config"];
    assert_eq!(c["correlation"]["propagate"][0], "x-tenant");
    let yolo = &c["upstreams"]["yolo"];
    assert_eq!(yolo["endpoints"][1]["address"], "127.0.0.1:1");
    assert_eq!(yolo["endpoints"][1]["weight"], 3);
    assert_eq!(yolo["load_balancing"], "weighted");
    assert_eq!(yolo["slow_start"], "1m 30s");
    assert_eq!(yolo["pool"]["max_idle_per_host"], 4);
    let cb = &yolo["circuit_breaker"];
    assert_eq!(cb["window"], "10s");
    assert_eq!(cb["request_volume_threshold"], 20);
    assert_eq!(cb["error_threshold_percentage"], 50.0);
    assert_eq!(cb["slow_call_duration"], "2s");
    assert_eq!(cb["partition_by"], "header:x-camera-id");
    assert_eq!(cb["max_partitions"], 100);
    assert_eq!(yolo["retry"]["max_replay_body"], 1024 * 1024);
    assert_eq!(yolo["health_check"]["path"], "/healthz");
    assert_eq!(yolo["health_check"]["interval"], "1m");
    assert_eq!(yolo["fallback"]["upstream"], "cpu");
    let fb = &c["upstreams"]["cpu"]["fallback"];
    assert_eq!(fb["status"], 200);
    assert_eq!(fb["content_type"], "application/json");
    assert_eq!(fb["body"], r#"{"detections": []}"#);
    assert_eq!(c["upstreams"]["cpu"]["health_check"], Value::Null);
    let r = &c["routes"][0];
    assert_eq!(r["host"], "*.local");
    assert_eq!(r["methods"], serde_json::json!(["POST", "GET"]));
    assert_eq!(r["headers"]["x-org-id"], "org123");
    assert_eq!(r["timeout"], "1s 500ms");
    assert_eq!(r["strip_prefix"], "/detect");
    assert_eq!(r["propagate_deadline"], true);
    assert_eq!(r["rate_limit"]["key"], "client_ip");
    assert_eq!(r["rate_limit"]["burst"], 60);
    assert_eq!(r["concurrency"]["queue_timeout"], "100ms");
    assert_eq!(r["fault"]["abort_status"], 503);
    assert_eq!(r["fault"]["delay"], "200ms");
    assert_eq!(r["retry"]["max_retries"], 1);
    assert_eq!(r["circuit_breaker"]["failure_threshold"], 7);
    assert_eq!(
        r["circuit_breaker"]["window"], "10s",
        "merged over the upstream's"
    );
    assert_eq!(c["admin"]["token"], "<redacted>");
    assert!(p.running.shutdown().await);
}

/// Proves: `/config` renders the process-wide tables (`[limits]`, `[tracing]` with its
/// header values redacted) and an upstream's load-balancing inputs (peak EWMA, load
/// reports, adaptive concurrency) and a route's `shed_on_deadline`.
#[tokio::test]
async fn config_renders_limits_tracing_and_balancing_inputs() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let toml = format!(
        r#"{base}[limits]
max_buffered_body_bytes = "64MiB"
priority_header = "X-Prio"

[tracing]
otlp_endpoint = "http://127.0.0.1:4318"
sample_ratio = 0.5
headers = {{ authorization = "Bearer ${{{TOKEN_ENV}}}" }}

[upstreams.yolo]
endpoints = ["{a}"]
load_balancing = "peak_ewma"
load_report_header = "X-Queue-Depth"
load_report_expiry = "500ms"
peak_ewma = {{ default_latency = "5ms" }}
adaptive_concurrency = {{ min_limit = 2, max_limit = 32 }}

[[routes]]
path_prefix = "/"
upstream = "yolo"
shed_on_deadline = false
"#,
        base = base(""),
        a = up.addr,
    );
    let p = start(&toml).await;
    let cfg = p.admin_json("/config").await;
    let c = &cfg["config"];
    assert!(
        !cfg.to_string().contains(TOKEN),
        "the tracing token is redacted"
    );
    assert_eq!(c["limits"]["max_buffered_body_bytes"], 64 * 1024 * 1024);
    assert_eq!(c["limits"]["priority_header"], "x-prio");
    let t = &c["tracing"];
    assert_eq!(t["otlp_endpoint"], "http://127.0.0.1:4318/");
    assert_eq!(t["sample_ratio"], 0.5);
    assert_eq!(t["headers"]["authorization"], "<redacted>");
    assert_eq!(t["service_name"], "fusion-test");
    let yolo = &c["upstreams"]["yolo"];
    assert_eq!(yolo["load_balancing"], "peak_ewma");
    assert_eq!(yolo["load_report_header"], "x-queue-depth");
    assert_eq!(yolo["forward_load_report"], false);
    assert_eq!(yolo["load_report_expiry"], "500ms");
    assert_eq!(yolo["peak_ewma"]["default_latency"], "5ms");
    assert_eq!(yolo["peak_ewma"]["decay"], "1s");
    let ac = &yolo["adaptive_concurrency"];
    assert_eq!(
        (ac["min_limit"].clone(), ac["max_limit"].clone()),
        (2.into(), 32.into())
    );
    assert_eq!(ac["initial_limit"], 20);
    assert_eq!(c["routes"][0]["shed_on_deadline"], false);
    // Served with peak_ewma picked: the request reaches the upstream.
    assert_eq!(p.data_get("/x").await.status, 200);
    assert!(p.running.shutdown().await);
}
