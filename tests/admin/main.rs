//! The admin API against a real in-process fusebox and real upstreams on 127.0.0.1:
//! every endpoint's status and JSON shape, the bearer token on mutations, the request
//! counters after a known sequence, the breaker and connection gauges, force-open and
//! reset, and readiness during shutdown.
//!
//! With `FUSEBOX_OPENAPI_SAMPLES=DIR` every JSON answer of a documented operation is also
//! written to DIR as `<operationId>.<status>.<n>.json`, for `tests/openapi_check.py` to
//! validate against `docs/admin-openapi.yaml`.
//!
//! `api.rs`: status codes, shapes, token and errors of every endpoint; `breakers.rs`:
//! breaker state, gauges, force-open and reset; `metrics.rs`: counters and connection
//! gauges; `config.rs`: `/config`; `shutdown.rs`: readiness while draining;
//! `timeline.rs`: `/stats/timeline`, the status page's per-second figures. The helpers
//! they share are here.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod breakers;
mod config;
mod metrics;
mod shutdown;
mod timeline;

pub use std::collections::BTreeMap;
pub use std::net::SocketAddr;
pub use std::time::Duration;

pub use common::prom::{metric, series};
pub use common::*;
pub use fusebox::app::Running;
pub use serde_json::Value;

/// `[service]`, `[listener]`, `[admin]` (plus `admin_extra`) and `[logging]` on loopback
/// port 0 with the access log off.
pub fn base(admin_extra: &str) -> String {
    format!(
        r#"[service]
name = "fusion-test"

[listener]
address = "127.0.0.1:0"
shutdown_timeout = "5s"

[admin]
address = "127.0.0.1:0"
{admin_extra}

[logging]
access_log = false

"#
    )
}

/// An upstream table without retries; `breaker` lines go in its `circuit_breaker` table
/// (default here: 1000 failures, so nothing opens unless the test says so).
pub fn upstream(name: &str, addrs: &[SocketAddr], breaker: &str) -> String {
    let eps: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    let breaker = if breaker.is_empty() {
        "failure_threshold = 1000"
    } else {
        breaker
    };
    format!(
        "[upstreams.{name}]\nendpoints = [{}]\n\n[upstreams.{name}.retry]\nmax_retries = 0\n\n\
         [upstreams.{name}.circuit_breaker]\n{breaker}\n\n",
        eps.join(", ")
    )
}

/// A started proxy with both addresses and a client for each port.
pub struct Proxy {
    pub running: Running,
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub client: TestClient,
}

pub const TOKEN_ENV: &str = "FUSEBOX_TEST_ADMIN_TOKEN";
pub const TOKEN: &str = "s3cret-token";

/// Starts fusebox on `toml`; `${FUSEBOX_TEST_ADMIN_TOKEN}` / `token_env` read [`TOKEN`]
/// (the process environment is not touched).
pub async fn start(toml: &str) -> Proxy {
    let config = fusebox::config::parse_with_env(toml, "test.toml", None, &|name| {
        (name == TOKEN_ENV).then(|| TOKEN.to_owned())
    })
    .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n--- config ---\n{toml}"));
    let running = fusebox::app::start(config, fusebox::config::content_hash(toml))
        .await
        .unwrap_or_else(|e| panic!("fusebox did not start: {e:#}"));
    Proxy {
        data: running.data_addr,
        admin: running.admin_addr,
        running,
        client: http1_client(),
    }
}

impl Proxy {
    pub async fn data_get(&self, path: &str) -> Reply {
        get(&self.client, &format!("http://{}{path}", self.data)).await
    }

    pub async fn admin(&self, method: Method, path: &str, auth: Option<&str>) -> Reply {
        admin_call(&self.client, self.admin, method, path, auth).await
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        self.admin(Method::GET, path, None).await
    }

    /// GET `path`, expecting 200 and JSON.
    pub async fn admin_json(&self, path: &str) -> Value {
        let r = self.admin_get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    pub async fn admin_post(&self, path: &str) -> Reply {
        self.admin(Method::POST, path, None).await
    }

    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200);
        r.text()
    }
}

/// One admin request; JSON answers of documented operations are kept as samples.
pub async fn admin_call(
    client: &TestClient,
    admin: SocketAddr,
    method: Method,
    path: &str,
    auth: Option<&str>,
) -> Reply {
    let mut req = request(method.clone(), &format!("http://{admin}{path}"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let r = send(client, req.body(empty()).expect("request")).await;
    save_sample(&method, path, &r);
    r
}

/// The OpenAPI operationId of a request, when it names a documented operation.
pub fn operation_id(method: &Method, path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let get = method == Method::GET;
    let post = method == Method::POST;
    Some(match segs.as_slice() {
        ["metrics"] if get => "getMetrics",
        ["circuit_breakers"] if get => "getCircuitBreakers",
        ["circuit_breakers", _, "reset"] if post => "resetUpstream",
        ["circuit_breakers", _, _, "reset"] if post => "resetEndpoint",
        ["circuit_breakers", _, _, "open"] if post => "openEndpoint",
        ["health"] if get => "getHealth",
        ["health", "live"] if get => "getLive",
        ["health", "ready"] if get => "getReady",
        ["config"] if get => "getConfig",
        ["stats", "timeline"] if get => "getStatsTimeline",
        _ => return None,
    })
}

pub fn save_sample(method: &Method, path: &str, r: &Reply) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("FUSEBOX_OPENAPI_SAMPLES") else {
        return;
    };
    let json = r
        .header("content-type")
        .is_some_and(|c| c.starts_with("application/json"));
    let (Some(op), true) = (operation_id(method, path), json) else {
        return;
    };
    let n = N.fetch_add(1, Ordering::Relaxed);
    let file =
        std::path::Path::new(&dir).join(format!("{op}.{}.admin-{n}.json", r.status.as_u16()));
    std::fs::create_dir_all(&dir).expect("samples dir");
    std::fs::write(&file, &r.body).expect("write sample");
}

pub fn breaker_gauge(text: &str, service: &str, endpoint: SocketAddr) -> Option<f64> {
    metric(
        text,
        "gateway_circuit_breaker_state",
        &format!(r#"endpoint="{endpoint}",route="",service="{service}""#),
    )
}

pub const STATS_KEYS: [&str; 6] = [
    "consecutive_failures",
    "failure_count",
    "healthy",
    "state",
    "success_count",
    "times_opened",
];

pub fn keys(v: &Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

/// Asserts the error body's code and returns it.
pub fn assert_admin_error(r: &Reply, status: u16, code: &str) -> Value {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    v
}
