//! The admin API against a real in-process fusebox and real upstreams on 127.0.0.1:
//! every endpoint's status and JSON shape, the bearer token on mutations, the request
//! counters after a known sequence, the breaker and connection gauges, force-open and
//! reset, and readiness during shutdown.
//!
//! With `FUSEBOX_OPENAPI_SAMPLES=DIR` every JSON answer of a documented operation is also
//! written to DIR as `<operationId>.<status>.<n>.json`, for `tests/openapi_check.py` to
//! validate against `docs/admin-openapi.yaml`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use fusebox::app::Running;
use serde_json::Value;

/// `[service]`, `[listener]`, `[admin]` (plus `admin_extra`) and `[logging]` on loopback
/// port 0 with the access log off.
fn base(admin_extra: &str) -> String {
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
fn upstream(name: &str, addrs: &[SocketAddr], breaker: &str) -> String {
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
struct Proxy {
    running: Running,
    data: SocketAddr,
    admin: SocketAddr,
    client: TestClient,
}

const TOKEN_ENV: &str = "FUSEBOX_TEST_ADMIN_TOKEN";
const TOKEN: &str = "s3cret-token";

/// Starts fusebox on `toml`; `${FUSEBOX_TEST_ADMIN_TOKEN}` / `token_env` read [`TOKEN`]
/// (the process environment is not touched).
async fn start(toml: &str) -> Proxy {
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
    async fn data_get(&self, path: &str) -> Reply {
        get(&self.client, &format!("http://{}{path}", self.data)).await
    }

    async fn admin(&self, method: Method, path: &str, auth: Option<&str>) -> Reply {
        admin_call(&self.client, self.admin, method, path, auth).await
    }

    async fn admin_get(&self, path: &str) -> Reply {
        self.admin(Method::GET, path, None).await
    }

    /// GET `path`, expecting 200 and JSON.
    async fn admin_json(&self, path: &str) -> Value {
        let r = self.admin_get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    async fn admin_post(&self, path: &str) -> Reply {
        self.admin(Method::POST, path, None).await
    }

    async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200);
        r.text()
    }
}

/// One admin request; JSON answers of documented operations are kept as samples.
async fn admin_call(
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
fn operation_id(method: &Method, path: &str) -> Option<&'static str> {
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
        _ => return None,
    })
}

fn save_sample(method: &Method, path: &str, r: &Reply) {
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

/// Every sample of metric `name` in a text exposition: label set -> value.
fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = match rest.strip_prefix('{') {
                Some(r) => {
                    let (labels, value) = r.split_once("} ")?;
                    (labels.to_owned(), value)
                }
                None => (String::new(), rest.strip_prefix(' ')?),
            };
            Some((labels, value.trim().parse().ok()?))
        })
        .collect()
}

/// The value of `name{labels}` (labels in Prometheus' sorted order).
fn metric(text: &str, name: &str, labels: &str) -> Option<f64> {
    series(text, name).get(labels).copied()
}

fn breaker_gauge(text: &str, service: &str, endpoint: SocketAddr) -> Option<f64> {
    metric(
        text,
        "gateway_circuit_breaker_state",
        &format!(r#"endpoint="{endpoint}",service="{service}""#),
    )
}

const STATS_KEYS: [&str; 6] = [
    "consecutive_failures",
    "failure_count",
    "healthy",
    "state",
    "success_count",
    "times_opened",
];

fn keys(v: &Value) -> Vec<&str> {
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
fn assert_admin_error(r: &Reply, status: u16, code: &str) -> Value {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    v
}

/// Proves: every read endpoint answers 200 with the documented shape, unknown paths
/// 404 and wrong methods 405 with `Allow`, all as JSON.
#[tokio::test]
async fn read_endpoints_answer_with_their_documented_shapes() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let down = closed_port();
    let toml = format!(
        "{}{}{}[[routes]]\nname = \"detect\"\npath_prefix = \"/detect\"\nupstream = \"yolo\"\n\n\
         [[routes]]\nname = \"ocr\"\npath_prefix = \"/ocr\"\nupstream = \"ocr\"\n",
        base(""),
        upstream("yolo", &[up.addr, down], ""),
        upstream("ocr", &[up.addr], ""),
    );
    let p = start(&toml).await;

    let cb = p.admin_json("/circuit_breakers").await;
    assert_eq!(keys(&cb), ["ocr", "yolo"]);
    let yolo = &cb["yolo"];
    assert_eq!(keys(yolo), ["endpoints", "state"]);
    assert_eq!(yolo["state"], "closed");
    let mut eps = vec![up.addr.to_string(), down.to_string()];
    eps.sort();
    assert_eq!(keys(&yolo["endpoints"]), eps);
    let ep = &yolo["endpoints"][up.addr.to_string()];
    assert_eq!(keys(ep), STATS_KEYS);
    assert_eq!(ep["state"], "closed");
    assert_eq!(ep["failure_count"], 0);
    assert_eq!(ep["times_opened"], 0);
    assert_eq!(ep["healthy"], true);

    let health = p.admin_json("/health").await;
    assert_eq!(
        keys(&health),
        ["config_version", "resilience_stats", "service", "status"]
    );
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["service"], "fusion-test");
    assert_eq!(
        health["config_version"],
        fusebox::config::content_hash(&toml)
    );
    assert_eq!(health["resilience_stats"]["circuit_breakers"], cb);

    let live = p.admin_get("/health/live").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.json()["status"], "alive");
    let ready = p.admin_get("/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");

    let cfg = p.admin_json("/config").await;
    assert_eq!(
        keys(&cfg),
        ["config", "last_reload", "loaded_at", "version"]
    );
    assert_eq!(cfg["version"], fusebox::config::content_hash(&toml));
    assert!(cfg["last_reload"].is_null());
    let loaded = cfg["loaded_at"].as_str().expect("loaded_at");
    humantime::parse_rfc3339(loaded).unwrap_or_else(|e| panic!("{loaded}: {e}"));
    assert!(loaded.ends_with('Z'), "UTC: {loaded}");
    let c = &cfg["config"];
    assert_eq!(
        keys(c),
        [
            "admin",
            "correlation",
            "listener",
            "logging",
            "routes",
            "service",
            "source",
            "upstreams"
        ]
    );
    assert_eq!(c["admin"]["token"], Value::Null, "no token configured");
    assert_eq!(c["listener"]["shutdown_timeout"], "5s");
    assert_eq!(c["listener"]["max_request_body"], 32 * 1024 * 1024);
    assert_eq!(c["upstreams"]["yolo"]["timeouts"]["request"], "15s");
    assert_eq!(
        c["upstreams"]["yolo"]["circuit_breaker"]["failure_threshold"],
        1000
    );
    assert_eq!(
        c["upstreams"]["yolo"]["retry"]["max_replay_body"],
        4 * 1024 * 1024
    );
    assert_eq!(c["routes"][1]["name"], "ocr");
    assert_eq!(c["routes"][0]["timeout"], "30s");

    let m = p.admin_get("/metrics").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), Some("text/plain; version=0.0.4"));
    let text = m.text();
    for (svc, addr) in [("yolo", up.addr), ("yolo", down), ("ocr", up.addr)] {
        assert_eq!(breaker_gauge(&text, svc, addr), Some(0.0), "{text}");
    }

    // HEAD answers like GET, without a body.
    let head = p.admin(Method::HEAD, "/health", None).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    let nf = p.admin_get("/nope").await;
    assert_admin_error(&nf, 404, "NOT_FOUND");
    assert_admin_error(
        &p.admin_get("/circuit_breakers/yolo").await,
        404,
        "NOT_FOUND",
    );
    let wrong = p.admin_post("/metrics").await;
    assert_admin_error(&wrong, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
    let wrong = p.admin_get("/circuit_breakers/yolo/reset").await;
    assert_admin_error(&wrong, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(wrong.header("allow"), Some("POST"));
    assert_admin_error(
        &p.admin(Method::DELETE, "/config", None).await,
        405,
        "METHOD_NOT_ALLOWED",
    );

    // The admin API is not on the data port (these paths are just unrouted there).
    let r = p.data_get("/circuit_breakers").await;
    assert_fusebox_error(&r, 404, "NO_ROUTE", None);
    assert!(p.running.shutdown().await);
}

/// Proves: with `token_env` set, mutations answer 401 (with `WWW-Authenticate`) without
/// the bearer token or with a wrong one and 200 with it; reads need no token; `/config`
/// shows the token only as `<redacted>`.
#[tokio::test]
async fn mutations_need_the_bearer_token_when_one_is_configured() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(&format!("token_env = \"{TOKEN_ENV}\"")),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    let ep = up.addr.to_string();
    for path in [
        "/circuit_breakers/yolo/reset".to_owned(),
        format!("/circuit_breakers/yolo/{ep}/reset"),
        format!("/circuit_breakers/yolo/{ep}/open"),
        "/circuit_breakers/no-such-upstream/reset".to_owned(),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-toke"),
            Some("Bearer s3cret-tokenx"),
            Some("Basic czNjcmV0LXRva2Vu"),
            Some(TOKEN),
        ] {
            let r = p.admin(Method::POST, &path, auth).await;
            assert_admin_error(&r, 401, "UNAUTHORIZED");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"fusebox-admin\"")
            );
        }
    }
    let bearer = format!("Bearer {TOKEN}");
    let r = p
        .admin(
            Method::POST,
            &format!("/circuit_breakers/yolo/{ep}/open"),
            Some(&bearer),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["circuit_breaker"]["state"], "open");
    let r = p
        .admin(Method::POST, "/circuit_breakers/yolo/reset", Some(&bearer))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["circuit_breaker"]["state"], "closed");
    // With the token, an unknown upstream is a 404 (not before: names are not leaked).
    let r = p
        .admin(Method::POST, "/circuit_breakers/nope/reset", Some(&bearer))
        .await;
    assert_admin_error(&r, 404, "UNKNOWN_UPSTREAM");

    for path in [
        "/circuit_breakers",
        "/health",
        "/health/ready",
        "/config",
        "/metrics",
    ] {
        assert_eq!(p.admin_get(path).await.status, 200, "{path} needs no token");
    }
    let cfg = p.admin_get("/config").await;
    assert!(!cfg.text().contains(TOKEN), "token leaked: {}", cfg.text());
    let admin = &cfg.json()["config"]["admin"];
    assert_eq!(admin["token"], "<redacted>");
    assert_eq!(admin["token_env"], TOKEN_ENV);
    assert!(p.running.shutdown().await);
}

/// Proves: an unknown upstream or endpoint is a JSON 404 naming it; a bad escape is 400.
#[tokio::test]
async fn unknown_upstream_or_endpoint_is_404() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    let v = assert_admin_error(
        &p.admin_post("/circuit_breakers/nope/reset").await,
        404,
        "UNKNOWN_UPSTREAM",
    );
    assert_eq!(v["error"]["upstream"], "nope");
    for action in ["reset", "open"] {
        let v = assert_admin_error(
            &p.admin_post(&format!("/circuit_breakers/nope/{}/{action}", up.addr))
                .await,
            404,
            "UNKNOWN_UPSTREAM",
        );
        assert_eq!(v["error"]["upstream"], "nope");
        let v = assert_admin_error(
            &p.admin_post(&format!("/circuit_breakers/yolo/127.0.0.1:1/{action}"))
                .await,
            404,
            "UNKNOWN_ENDPOINT",
        );
        assert_eq!(v["error"]["endpoint"], "127.0.0.1:1");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&up.addr.to_string())));
    }
    assert_admin_error(
        &p.admin_post("/circuit_breakers/yolo/127.0.0.1%3/reset")
            .await,
        400,
        "BAD_REQUEST",
    );
    assert!(p.running.shutdown().await);
}

/// Proves: after 3 answered requests and 2 upstream 503s, `gateway_proxy_requests_total`
/// holds exactly those two series with those counts, and the duration histogram 5.
#[tokio::test]
async fn request_counters_match_a_known_sequence() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let toml = format!(
        "{}{}[[routes]]\nname = \"detect\"\npath_prefix = \"/detect\"\nupstream = \"yolo\"\n",
        base(""),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    for _ in 0..3 {
        assert_eq!(p.data_get("/detect").await.status, 200);
    }
    up.set(Behaviour::respond(503, "busy"));
    for _ in 0..2 {
        assert_eq!(p.data_get("/detect").await.status, 503);
    }
    let name = "gateway_proxy_requests_total";
    let l =
        |status: u16| format!(r#"method="GET",route="detect",service="yolo",status="{status}""#);
    let expected: BTreeMap<String, f64> = [(l(200), 3.0), (l(503), 2.0)].into_iter().collect();
    // Counted when the response is done; poll (bounded) for the last one.
    let deadline = tokio::time::Instant::now() + WAIT;
    let text = loop {
        let text = p.metrics().await;
        if series(&text, name) == expected || tokio::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(series(&text, name), expected, "{text}");
    assert_eq!(
        metric(
            &text,
            "gateway_proxy_request_duration_seconds_count",
            r#"method="GET",route="detect",service="yolo""#
        ),
        Some(5.0)
    );
    assert_eq!(up.hits(), 5);
    let ep = &p.admin_json("/circuit_breakers").await["yolo"]["endpoints"][up.addr.to_string()];
    assert_eq!(ep["success_count"], 3);
    assert_eq!(ep["failure_count"], 2);
    assert_eq!(ep["consecutive_failures"], 2);
    assert!(p.running.shutdown().await);
}

/// Proves: `gateway_circuit_breaker_state` reads closed 0, open 1 after
/// `failure_threshold` failures, half_open 2 once `recovery_timeout` has passed (with no
/// request needed), and closed 0 after a successful probe; `/circuit_breakers` and
/// `/health` agree at each step and the state-change counter counts each change.
#[tokio::test]
async fn breaker_gauge_follows_closed_open_half_open_closed() {
    let up = TestUpstream::start(Behaviour::respond(503, "down")).await;
    let toml = format!(
        "{}{}[[routes]]\nname = \"detect\"\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream(
            "yolo",
            &[up.addr],
            "failure_threshold = 2\nrecovery_timeout = \"300ms\"\nsuccess_threshold = 1\njitter = false",
        ),
    );
    let p = start(&toml).await;
    assert_eq!(
        breaker_gauge(&p.metrics().await, "yolo", up.addr),
        Some(0.0)
    );
    assert_eq!(p.data_get("/").await.status, 503);
    let opened = tokio::time::Instant::now();
    assert_eq!(p.data_get("/").await.status, 503);
    let text = p.metrics().await;
    let cb = p.admin_json("/circuit_breakers").await;
    let health = p.admin_json("/health").await;
    if opened.elapsed() < Duration::from_millis(250) {
        assert_eq!(breaker_gauge(&text, "yolo", up.addr), Some(1.0), "{text}");
        assert_eq!(cb["yolo"]["state"], "open");
        assert_eq!(health["status"], "unhealthy");
    } else {
        eprintln!("slow machine: open state not checked before it could half-open");
    }
    let ep = &cb["yolo"]["endpoints"][up.addr.to_string()];
    assert_eq!(ep["times_opened"], 1);
    let changes = |text: &str, state: &str| {
        metric(
            text,
            "gateway_circuit_breaker_state_changes_total",
            &format!(r#"endpoint="{}",service="yolo",state="{state}""#, up.addr),
        )
    };
    assert_eq!(changes(&text, "open"), Some(1.0));

    // Half open by time alone: the scrape reads the breaker, no request needed.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let g = breaker_gauge(&p.metrics().await, "yolo", up.addr);
        if g == Some(2.0) {
            break;
        }
        assert_eq!(g, Some(1.0), "open until it half-opens");
        assert!(tokio::time::Instant::now() < deadline, "never half-opened");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cb = p.admin_json("/circuit_breakers").await;
    assert_eq!(cb["yolo"]["state"], "half_open");
    assert_eq!(
        cb["yolo"]["endpoints"][up.addr.to_string()]["state"],
        "half_open"
    );
    assert_eq!(p.admin_json("/health").await["status"], "degraded");

    up.set(Behaviour::ok("back"));
    let r = p.data_get("/").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = p.metrics().await;
    assert_eq!(breaker_gauge(&text, "yolo", up.addr), Some(0.0), "{text}");
    assert_eq!(changes(&text, "half_open"), Some(1.0));
    assert_eq!(changes(&text, "closed"), Some(1.0));
    assert_eq!(
        p.admin_json("/circuit_breakers").await["yolo"]["state"],
        "closed"
    );
    assert_eq!(p.admin_json("/health").await["status"], "healthy");
    assert!(p.running.shutdown().await);
}

/// Proves: a forced-open endpoint answers 503 CIRCUIT_OPEN without the upstream being
/// called, stays open past `recovery_timeout`, and an endpoint reset (plain, URL-encoded)
/// or an upstream reset closes it; IPv6 endpoint keys are accepted in both forms.
#[tokio::test]
async fn force_open_fails_fast_and_reset_closes() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    // `[::1]:9` is never called: it only proves the admin API finds IPv6 keys.
    let toml = format!(
        "{}{}[upstreams.v6]\nendpoints = [\"[::1]:9\"]\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream("yolo", &[up.addr], "recovery_timeout = \"50ms\""),
    );
    let p = start(&toml).await;
    assert_eq!(p.data_get("/").await.status, 200);
    assert_eq!(up.hits(), 1);
    let encoded = up.addr.to_string().replace(':', "%3A");

    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{encoded}/open"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["action"], "open");
    assert_eq!(v["upstream"], "yolo");
    assert_eq!(v["endpoint"], up.addr.to_string());
    assert_eq!(v["changed"], 1);
    assert_eq!(v["circuit_breaker"]["state"], "open");
    // Again: already open, nothing changes.
    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{}/open", up.addr))
        .await;
    assert_eq!(r.json()["changed"], 0);

    let r = p.data_get("/").await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("yolo"));
    assert_eq!(up.hits(), 1, "the upstream was not called");
    let text = p.metrics().await;
    assert_eq!(breaker_gauge(&text, "yolo", up.addr), Some(1.0));
    assert_eq!(p.admin_json("/health").await["status"], "unhealthy");
    // Forced open ignores recovery_timeout: still open well after it.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(200);
    while tokio::time::Instant::now() < deadline {
        let cb = p.admin_json("/circuit_breakers").await;
        assert_eq!(cb["yolo"]["state"], "open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_fusebox_error(&p.data_get("/").await, 503, "CIRCUIT_OPEN", Some("yolo"));
    assert_eq!(up.hits(), 1);

    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{}/reset", up.addr))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["action"], "reset");
    assert_eq!(v["changed"], 1);
    assert_eq!(v["circuit_breaker"]["state"], "closed");
    let ep = &v["circuit_breaker"]["endpoints"][up.addr.to_string()];
    assert_eq!(ep["times_opened"], 0, "reset zeroes the counts");
    assert_eq!(p.data_get("/").await.status, 200);
    assert_eq!(up.hits(), 2);
    assert_eq!(
        breaker_gauge(&p.metrics().await, "yolo", up.addr),
        Some(0.0)
    );

    // Upstream-wide reset.
    p.admin_post(&format!("/circuit_breakers/yolo/{encoded}/open"))
        .await;
    let r = p.admin_post("/circuit_breakers/yolo/reset").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["endpoint"], Value::Null);
    assert_eq!(v["changed"], 1);
    assert_eq!(p.data_get("/").await.status, 200);
    assert_eq!(up.hits(), 3);

    // IPv6 keys: raw brackets and fully encoded.
    for (path, action) in [
        ("/circuit_breakers/v6/[::1]:9/open", "open"),
        ("/circuit_breakers/v6/%5B%3A%3A1%5D%3A9/reset", "reset"),
    ] {
        let r = p.admin_post(path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["endpoint"], "[::1]:9");
        assert_eq!(r.json()["action"], action);
    }
    assert!(p.running.shutdown().await);
}

/// Proves: with `partition_by`, each key's breaker is listed under its endpoint's
/// `partitions`, and an endpoint reset closes them too.
#[tokio::test]
async fn partitions_are_listed_and_reset_with_their_endpoint() {
    let up = TestUpstream::start(Behaviour::respond(503, "bad camera")).await;
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream(
            "yolo",
            &[up.addr],
            "failure_threshold = 1\nrecovery_timeout = \"5m\"\npartition_by = \"header:X-Camera-ID\"",
        ),
    );
    let p = start(&toml).await;
    let url = format!("http://{}/", p.data);
    let cam = |id: &'static str| {
        request(Method::GET, &url)
            .header("x-camera-id", id)
            .body(empty())
            .expect("request")
    };
    assert_eq!(send(&p.client, cam("cam-1")).await.status, 503);
    up.set(Behaviour::ok("ok"));
    assert_eq!(send(&p.client, cam("cam-2")).await.status, 200);
    let r = send(&p.client, cam("cam-1")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("yolo"));

    let cb = p.admin_json("/circuit_breakers").await;
    let ep = &cb["yolo"]["endpoints"][up.addr.to_string()];
    assert_eq!(ep["state"], "closed", "the endpoint's own breaker");
    assert_eq!(cb["yolo"]["state"], "closed");
    let parts = &ep["partitions"];
    assert_eq!(keys(parts), ["cam-1", "cam-2"]);
    assert_eq!(parts["cam-1"]["state"], "open");
    assert_eq!(parts["cam-1"]["times_opened"], 1);
    assert_eq!(parts["cam-2"]["state"], "closed");
    assert_eq!(parts["cam-2"]["success_count"], 1);
    assert_eq!(
        keys(&parts["cam-1"]),
        [
            "consecutive_failures",
            "failure_count",
            "state",
            "success_count",
            "times_opened"
        ]
    );

    let r = p
        .admin_post(&format!("/circuit_breakers/yolo/{}/reset", up.addr))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["changed"], 1, "cam-1 closed");
    let parts = &r.json()["circuit_breaker"]["endpoints"][up.addr.to_string()]["partitions"];
    assert_eq!(parts["cam-1"]["state"], "closed");
    assert_eq!(send(&p.client, cam("cam-1")).await.status, 200);
    assert!(p.running.shutdown().await);
}

/// Proves: `gateway_upstream_connections` counts a connection carrying a request as
/// active and, once the response is done and the connection pooled, as idle.
#[tokio::test]
async fn connection_gauges_count_active_and_idle() {
    let gate = Gate::new();
    let up = TestUpstream::start(Behaviour::gated(&gate, Behaviour::ok("done"))).await;
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    let conns = |text: &str, state: &str| {
        metric(
            text,
            "gateway_upstream_connections",
            &format!(r#"endpoint="{}",service="yolo",state="{state}""#, up.addr),
        )
    };
    let text = p.metrics().await;
    assert_eq!(
        (conns(&text, "active"), conns(&text, "idle")),
        (Some(0.0), Some(0.0))
    );

    let client = p.client.clone();
    let url = format!("http://{}/", p.data);
    let pending = tokio::spawn(async move { get(&client, &url).await });
    up.wait_hits(1).await;
    let text = p.metrics().await;
    assert_eq!(
        (conns(&text, "active"), conns(&text, "idle")),
        (Some(1.0), Some(0.0)),
        "{text}"
    );
    gate.open();
    let r = within(WAIT, "the held request", pending)
        .await
        .expect("task");
    assert_eq!(r.status, 200);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = p.metrics().await;
        let now = (conns(&text, "active"), conns(&text, "idle"));
        if now == (Some(0.0), Some(1.0)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never idle: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(p.running.shutdown().await);
}

/// Proves: `/health/ready` turns 503 as soon as shutdown starts, while a request is
/// still in flight on the data port; that request then finishes with 200 and the
/// shutdown reports a full drain.
#[tokio::test]
async fn ready_turns_503_when_shutdown_starts_with_a_request_in_flight() {
    let gate = Gate::new();
    let up = TestUpstream::start(Behaviour::gated(&gate, Behaviour::ok("finished"))).await;
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream("yolo", &[up.addr], ""),
    );
    let Proxy {
        running,
        data,
        admin,
        client,
    } = start(&toml).await;
    assert_eq!(
        admin_call(&client, admin, Method::GET, "/health/ready", None)
            .await
            .status,
        200
    );
    let c = client.clone();
    let pending = tokio::spawn(async move { get(&c, &format!("http://{data}/slow")).await });
    up.wait_hits(1).await;
    let shutdown = tokio::spawn(running.shutdown());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = admin_call(&client, admin, Method::GET, "/health/ready", None).await;
        assert!(!pending.is_finished(), "the request is still held upstream");
        if r.status == 503 {
            assert_eq!(r.json()["status"], "not_ready");
            break;
        }
        assert_eq!(r.status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Liveness holds while draining.
    let live = admin_call(&client, admin, Method::GET, "/health/live", None).await;
    assert_eq!(live.status, 200);
    assert!(!shutdown.is_finished(), "draining waits for the request");
    gate.open();
    let r = within(WAIT, "the held request", pending)
        .await
        .expect("task");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished");
    let drained = within(WAIT, "shutdown", shutdown).await.expect("task");
    assert!(drained, "every connection drained");
}

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
