//! What a valid file turns into: the example, defaults, value syntaxes, interpolation,
//! overrides. Error reporting is tested in `tests_errors.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use super::*;

pub(super) const MINIMAL: &str = r#"
[upstreams.a]
endpoints = ["127.0.0.1:9001"]

[[routes]]
path_prefix = "/"
upstream = "a"
"#;

pub(super) fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    parse_with_env(text, "t.toml", None, &|name| map.get(name).cloned())
}

pub(super) fn ok(text: &str) -> Config {
    parse_env(text, &[]).unwrap_or_else(|e| panic!("expected a valid config, got:\n{e}"))
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[test]
fn the_embedded_example_parses_and_says_what_the_docs_say() {
    // It must not depend on the environment: embedded_default() parses it with none.
    let mut code = DEFAULT_CONFIG_TOML
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""));
    assert!(
        code.all(|l| !l.contains("${")),
        "no ${{VAR}} outside comments"
    );
    let c = embedded_default();
    assert!(c.source.is_none());
    assert_eq!(
        c.listener.address,
        ListenAddr::Tcp("0.0.0.0:8080".parse::<SocketAddr>().unwrap())
    );
    assert_eq!(
        c.admin.address,
        "127.0.0.1:9901".parse::<SocketAddr>().unwrap()
    );
    let yolo = &c.upstreams["yolo"];
    assert_eq!(yolo.endpoints.len(), 2);
    assert_eq!(yolo.endpoints[1].address.to_string(), "127.0.0.1:9002");
    assert_eq!(yolo.endpoints[1].weight, 2);
    assert_eq!(
        c.upstreams["ocr"].endpoints[0].address.to_string(),
        "127.0.0.1:9003"
    );
    let routes: Vec<(&str, &str, &str)> = c
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.path_prefix.as_str(), r.upstream.as_str()))
        .collect();
    assert_eq!(
        routes,
        [("detect", "/detect", "yolo"), ("ocr", "/ocr", "ocr")]
    );
}

#[test]
fn the_example_writes_out_exactly_the_defaults() {
    // Every value the example file shows is the default, so an upstream with only
    // endpoints (ocr) must equal the fully written one (yolo) in every policy.
    let c = embedded_default();
    let (yolo, ocr) = (&c.upstreams["yolo"], &c.upstreams["ocr"]);
    assert_eq!(format!("{:?}", yolo.pool), format!("{:?}", ocr.pool));
    assert_eq!(
        format!("{:?}", yolo.timeouts),
        format!("{:?}", ocr.timeouts)
    );
    assert_eq!(
        format!("{:?}", yolo.circuit_breaker),
        format!("{:?}", ocr.circuit_breaker)
    );
    assert_eq!(format!("{:?}", yolo.retry), format!("{:?}", ocr.retry));
    assert_eq!(yolo.peak_ewma, ocr.peak_ewma);
    assert_eq!(
        (yolo.forward_load_report, yolo.load_report_expiry),
        (ocr.forward_load_report, ocr.load_report_expiry)
    );
    assert_eq!(
        format!("{:?}", c.limits),
        format!("{:?}", ok(MINIMAL).limits)
    );
    assert!(c.tracing.is_none() && yolo.adaptive_concurrency.is_none());
    assert_eq!(c.routes[0].shed_on_deadline, c.routes[1].shed_on_deadline);
    assert_eq!(
        (yolo.protocol, yolo.load_balancing),
        (ocr.protocol, ocr.load_balancing)
    );
    let minimal = ok(MINIMAL);
    assert_eq!(
        format!("{:?}", minimal.listener),
        format!("{:?}", c.listener)
    );
    assert_eq!(format!("{:?}", minimal.logging), format!("{:?}", c.logging));
}

#[test]
fn defaults_apply_to_a_minimal_file() {
    let c = ok(MINIMAL);
    assert_eq!(c.service.name, DEFAULT_SERVICE_NAME);
    let l = &c.listener;
    assert_eq!(l.address, ListenAddr::Tcp(DEFAULT_LISTENER_ADDRESS));
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.header_read_timeout, secs(10));
    assert_eq!(l.idle_timeout, secs(60));
    assert_eq!(l.max_header_bytes, 64 * 1024);
    assert_eq!(l.max_request_body, 32 * 1024 * 1024);
    assert_eq!(l.shutdown_timeout, secs(30));
    assert!(l.tls.is_none());
    assert_eq!(c.admin.address.to_string(), "127.0.0.1:9901");
    assert_eq!(
        (c.admin.token_env.as_deref(), c.admin.token.as_deref()),
        (None, None)
    );
    assert_eq!(c.logging.format, LogFormat::Json);
    assert_eq!(c.logging.level, "info");
    assert!(c.logging.access_log);

    let u = &c.upstreams["a"];
    assert_eq!(
        (u.protocol, u.load_balancing),
        (Protocol::Http1, LoadBalancing::RoundRobin)
    );
    assert_eq!((u.dns_refresh, u.slow_start), (secs(30), Duration::ZERO));
    assert_eq!(u.endpoints[0].weight, 1);
    let p = &u.pool;
    assert_eq!(
        (
            p.max_connections_per_host,
            p.max_idle_per_host,
            p.idle_timeout
        ),
        (100, 20, secs(90))
    );
    let t = &u.timeouts;
    assert_eq!(
        (t.connect, t.request, t.idle),
        (secs(1), secs(15), secs(60))
    );
    let b = &u.circuit_breaker;
    assert_eq!(
        (b.failure_threshold, b.recovery_timeout, b.success_threshold),
        (5, secs(30), 2)
    );
    assert_eq!(
        (b.half_open_max_requests, b.max_recovery_timeout),
        (1, secs(300))
    );
    assert_eq!(b.failure_status_codes, [500, 502, 503, 504]);
    assert!(b.error_rate.is_none() && b.slow_call_duration.is_none() && b.partition_by.is_none());
    assert_eq!(
        (b.slow_call_rate_threshold, b.max_partitions, b.jitter),
        (100.0, 10_000, true)
    );
    let r = &u.retry;
    assert_eq!(
        (r.max_retries, r.base_delay, r.max_delay, r.jitter),
        (3, Duration::from_millis(500), secs(5), true)
    );
    assert_eq!(r.retry_status_codes, [429, 502, 503, 504]);
    assert!(!r.retry_non_idempotent);
    assert_eq!(
        (r.max_replay_body, r.budget_percent, r.budget_min_per_second),
        (4 << 20, 20.0, 10)
    );
    assert!(u.health_check.is_none() && u.fallback.is_none() && u.tls.is_none());

    let route = &c.routes[0];
    assert_eq!(route.name, "route-0");
    assert_eq!((route.path_prefix.as_str(), route.timeout), ("/", secs(30)));
    assert!(route.host.is_none() && route.methods.is_empty() && route.headers.is_empty());
    assert!(route.retry.is_none() && route.circuit_breaker.is_none() && route.rate_limit.is_none());
    assert!(!route.propagate_deadline);
}

#[test]
fn optional_tables_take_their_defaults_when_written_empty() {
    let c = ok(r#"
[upstreams.a]
endpoints = ["127.0.0.1:9001"]
health_check = {}
fallback = {}
[[routes]]
path_prefix = "/"
upstream = "a"
rate_limit = { requests_per_second = 7.5 }
concurrency = {}
fault = {}
"#);
    let u = &c.upstreams["a"];
    let h = u.health_check.as_ref().unwrap();
    assert_eq!(
        (h.path.as_str(), h.interval, h.timeout),
        ("/health", secs(30), secs(1))
    );
    assert_eq!((h.unhealthy_threshold, h.healthy_threshold), (3, 2));
    match u.fallback.as_ref().unwrap() {
        FallbackConfig::Static {
            status,
            content_type,
            body,
        } => {
            assert_eq!(
                (status.as_u16(), content_type.to_str().unwrap()),
                (200, "application/json")
            );
            assert!(body.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let r = &c.routes[0];
    let rl = r.rate_limit.as_ref().unwrap();
    assert_eq!(
        (
            rl.requests_per_second,
            rl.burst,
            rl.key.clone(),
            rl.max_keys
        ),
        (7.5, 15, RateLimitKey::Global, 10_000)
    );
    let cc = r.concurrency.as_ref().unwrap();
    assert_eq!(
        (cc.max_in_flight, cc.max_queue, cc.queue_timeout),
        (64, 128, Duration::from_millis(100))
    );
    let f = r.fault.as_ref().unwrap();
    assert_eq!(
        (
            f.abort_percent,
            f.abort_status.as_u16(),
            f.delay_percent,
            f.delay
        ),
        (0.0, 503, 0.0, Duration::from_millis(200))
    );
}

#[test]
fn durations_take_strings_with_units_and_numbers_of_seconds() {
    let c = ok(&format!(
        "{MINIMAL}timeout = 2.5\n[listener]\nidle_timeout = 30\nheader_read_timeout = \"1.5s\"\nshutdown_timeout = 30.0\n"
    ));
    assert_eq!(c.routes[0].timeout, Duration::from_millis(2500));
    assert_eq!(c.listener.idle_timeout, secs(30));
    assert_eq!(c.listener.header_read_timeout, Duration::from_millis(1500));
    assert_eq!(c.listener.shutdown_timeout, secs(30));
}

#[test]
fn sizes_take_bytes_and_strings_with_units() {
    let c = ok(&format!(
        "{MINIMAL}[listener]\nmax_header_bytes = 8192\nmax_request_body = \"1GiB\"\n"
    ));
    assert_eq!(
        (c.listener.max_header_bytes, c.listener.max_request_body),
        (8192, 1 << 30)
    );
}

#[test]
fn env_interpolation_with_and_without_default() {
    let text = r#"
[service]
name = "${SVC:-fusion}"
[listener]
address = "0.0.0.0:${PORT}"
idle_timeout = "${IDLE:-45s}"
[upstreams.a]
endpoints = ["${HOST}:9001"]
protocol = "${PROTO:-h2c}"
[[routes]]
path_prefix = "/"
upstream = "a"
headers = { "X-Org-ID" = "${ORG}" }
"#;
    let c = parse_env(
        text,
        &[("PORT", "9100"), ("HOST", "yolo.svc"), ("ORG", "org1")],
    )
    .unwrap();
    assert_eq!(c.service.name, "fusion");
    assert_eq!(c.listener.address.tcp().map(|a| a.port()), Some(9100));
    assert_eq!(c.listener.idle_timeout, secs(45));
    assert_eq!(
        c.upstreams["a"].endpoints[0].address.to_string(),
        "yolo.svc:9001"
    );
    assert_eq!(c.upstreams["a"].protocol, Protocol::H2c);
    assert_eq!(c.routes[0].headers[0].1, "org1");
}

#[test]
fn match_fields_and_route_policies_are_read() {
    let c = ok(r#"
[upstreams.a]
endpoints = ["127.0.0.1:9001"]
[[routes]]
name = "r"
host = "*.Example.com"
path_prefix = "/v1"
strip_prefix = "/v1"
methods = ["post", "GET"]
headers = { "X-Org-ID" = "org123" }
upstream = "a"
propagate_deadline = true
rate_limit = { requests_per_second = 30, burst = 60, key = "header:X-Camera-ID" }
[[routes]]
host = "API.local"
upstream = "a"
rate_limit = { key = "client_ip" }
"#);
    let r = &c.routes[0];
    assert_eq!(r.host, Some(HostMatch::Suffix(".example.com".into())));
    assert_eq!(
        (r.path_prefix.as_str(), r.strip_prefix.as_deref()),
        ("/v1", Some("/v1"))
    );
    assert_eq!(r.methods, [http::Method::POST, http::Method::GET]);
    assert_eq!(r.headers[0].0.as_str(), "x-org-id");
    assert!(r.propagate_deadline);
    let rl = r.rate_limit.as_ref().unwrap();
    assert_eq!(
        rl.key,
        RateLimitKey::Header(http::HeaderName::from_static("x-camera-id"))
    );
    assert_eq!(rl.burst, 60);
    assert_eq!(c.routes[1].host, Some(HostMatch::Exact("api.local".into())));
    assert_eq!(c.routes[1].name, "route-1");
    assert_eq!(
        c.routes[1].rate_limit.as_ref().unwrap().key,
        RateLimitKey::ClientIp
    );
}

#[test]
fn route_retry_and_breaker_override_the_upstream_key_by_key() {
    let c = ok(r#"
[upstreams.a]
endpoints = ["127.0.0.1:9001"]
[upstreams.a.retry]
max_retries = 5
base_delay = "100ms"
[upstreams.a.circuit_breaker]
failure_threshold = 7
window = "10s"
partition_by = "header:X-Camera-ID"
[[routes]]
path_prefix = "/"
upstream = "a"
retry = { max_retries = 1 }
circuit_breaker = { recovery_timeout = "10s", error_threshold_percentage = 25 }
"#);
    let (up, route) = (&c.upstreams["a"], &c.routes[0]);
    let retry = route.retry.as_ref().unwrap();
    assert_eq!(
        (retry.max_retries, retry.base_delay),
        (1, Duration::from_millis(100))
    );
    assert_eq!(up.retry.max_retries, 5);
    let b = route.circuit_breaker.as_ref().unwrap();
    assert_eq!((b.failure_threshold, b.recovery_timeout), (7, secs(10)));
    let rate = b.error_rate.as_ref().unwrap();
    assert_eq!(
        (
            rate.window,
            rate.request_volume_threshold,
            rate.error_threshold_percentage
        ),
        (secs(10), 20, 25.0)
    );
    assert_eq!(b.partition_by, up.circuit_breaker.partition_by);
    assert_eq!(
        up.circuit_breaker
            .error_rate
            .as_ref()
            .unwrap()
            .error_threshold_percentage,
        50.0
    );
}

#[test]
fn tls_fallback_upstream_and_admin_token() {
    // The files are read, and their contents loaded, at validation.
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let pem = made.cert.pem();
    let (cert, key, ca) = (
        file("c.crt", &pem),
        file("c.key", &made.key_pair.serialize_pem()),
        file("ca.crt", &pem),
    );
    let text = format!(
        r#"
[listener]
tls = {{ cert = "{cert}", key = "{key}" }}
[admin]
address = "0.0.0.0:9901"
token_env = "TOKEN"
[upstreams.a]
endpoints = ["10.0.0.1:443"]
protocol = "https"
tls = {{ server_name = "a.internal", ca = "{ca}" }}
fallback = {{ upstream = "b" }}
[upstreams.b]
endpoints = ["10.0.0.2:80"]
[[routes]]
methods = ["GET"]
upstream = "a"
"#
    );
    let c = parse_env(&text, &[("TOKEN", "s3cret")]).unwrap();
    assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
    let tls = c.listener.tls.as_ref().unwrap();
    assert_eq!(
        (tls.cert.to_str(), tls.key.to_str(), tls.client_ca.as_ref()),
        (Some(cert.as_str()), Some(key.as_str()), None)
    );
    let a = &c.upstreams["a"];
    assert_eq!(
        a.tls.as_ref().unwrap().server_name.as_deref(),
        Some("a.internal")
    );
    assert!(matches!(a.fallback, Some(FallbackConfig::Upstream(ref n)) if n == "b"));
}

#[test]
fn load_reads_a_file_and_records_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let c = load(&path).unwrap();
    assert_eq!(c.source.as_deref(), Some(path.as_path()));
    let missing = dir.path().join("missing.toml");
    let err = load(&missing).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().contains("missing.toml"));
}

#[test]
fn content_hash_is_stable_and_short() {
    // FNV-1a 64 reference values: the empty string is the offset basis.
    assert_eq!(content_hash(""), "cbf29ce484222325");
    assert_eq!(content_hash("a"), "af63dc4c8601ec8c");
    assert_eq!(content_hash(MINIMAL), content_hash(MINIMAL));
    assert_ne!(content_hash(MINIMAL), content_hash(DEFAULT_CONFIG_TOML));
}

/// Proves what `validate` shares with `run`: a TLS file that cannot be read and a
/// service name that is no header value are refused with their key's line and column
/// (before, `validate` passed them and `run` refused them without a location); with
/// `allow_missing_files` an unreadable file is listed instead, with its key.
#[test]
fn unreadable_tls_files_and_a_bad_service_name_are_refused_with_a_location() {
    let text = "[service]\nname = \"bad\\nname\"\n[listener]\ntls = { cert = \"/nonexistent/c.pem\", key = \"Cargo.toml\" }\n[upstreams.a]\nendpoints = [\"10.0.0.1:443\"]\nprotocol = \"https\"\ntls = { ca = \"/nonexistent/ca.pem\" }\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n";
    let err = parse(text, "t.toml", None).unwrap_err().to_string();
    for want in [
        "t.toml:2:8: service.name: is not a valid header value",
        "t.toml:4:16: listener.tls.cert: cannot read /nonexistent/c.pem",
        "t.toml:8:14: upstreams.a.tls.ca: cannot read /nonexistent/ca.pem",
    ] {
        assert!(err.contains(want), "{want:?} in:\n{err}");
    }
    let fixed = text.replace("bad\\nname", "vision");
    let options = ParseOptions {
        env: &|_| None,
        allow_missing_env: false,
        allow_missing_files: true,
    };
    let parsed = parse_with_options(&fixed, "t.toml", None, &options).unwrap();
    let listed: Vec<String> = parsed.missing_files.iter().map(|m| m.to_string()).collect();
    assert_eq!(
        listed,
        [
            "/nonexistent/c.pem (listener.tls.cert)",
            "/nonexistent/ca.pem (upstreams.a.tls.ca)"
        ]
    );
}

/// A TLS file that is there but unusable (no certificate in a CA file, a certificate
/// that is not PEM) is refused by `validate` as `run` would refuse it, at the table
/// that names it; before, `validate` said ok and `run` refused it with no location.
#[test]
fn unusable_tls_files_are_refused_with_a_location() {
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "garbage\n").expect("write");
    let g = garbage.display();
    let text = format!("[listener]\ntls = {{ cert = \"{g}\", key = \"{g}\" }}\n[upstreams.a]\nendpoints = [\"10.0.0.1:443\"]\nprotocol = \"https\"\ntls = {{ ca = \"{g}\" }}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n");
    let err = parse(&text, "t.toml", None).unwrap_err().to_string();
    for want in [
        "t.toml:2:7: listener.tls: ",
        "t.toml:6:7: upstreams.a.tls: no certificate in CA file",
    ] {
        assert!(err.contains(want), "{want:?} in:\n{err}");
    }
}
