// Per-request costs of the pure stages of the request path: route matching with 10 and
// 1,000 routes, and the header rules (hop-by-hop strip, ids, traceparent, forwarding).

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use fusebox::config::{HostMatch, RouteConfig};
use fusebox::proxy::correlate::prepare_request;
use fusebox::router::Router;
use fusebox::snapshot::HeaderPolicy;
use http::{HeaderMap, HeaderValue, Method, Uri};

fn route(i: usize, host: Option<HostMatch>, prefix: String) -> RouteConfig {
    RouteConfig {
        name: format!("r{i}"),
        host,
        path_prefix: prefix,
        methods: vec![],
        headers: vec![],
        upstream: "u".into(),
        timeout: Duration::from_secs(30),
        strip_prefix: None,
        rate_limit: None,
        concurrency: None,
        fault: None,
        retry: None,
        circuit_breaker: None,
        propagate_deadline: false,
        shed_on_deadline: true,
    }
}

/// `n` routes: a third with exact hosts, a sixth wildcard, the rest host-less, spread
/// over two path levels.
fn table(n: usize) -> Vec<RouteConfig> {
    (0..n)
        .map(|i| {
            let host = match i % 6 {
                0 | 1 => Some(HostMatch::Exact(format!("svc{i}.local"))),
                2 => Some(HostMatch::Suffix(format!(".zone{i}.local"))),
                _ => None,
            };
            route(i, host, format!("/api/v{}/model{i}", i % 3))
        })
        .collect()
}

fn bench_routes(c: &mut Criterion) {
    for n in [10usize, 1000] {
        let routes = table(n);
        let router = Router::build(&routes);
        // A host-less route near the end of the table, requested with a deeper path.
        let target = (0..n).rev().find(|i| i % 6 > 2).unwrap_or(0);
        let uri: Uri = format!("/api/v{}/model{target}/infer?batch=4", target % 3)
            .parse()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("fusebox.local:8080"));
        assert_eq!(router.find(&Method::POST, &uri, &headers), Some(target));
        c.bench_function(&format!("route_match/{n}_routes"), |b| {
            b.iter(|| {
                router.find(
                    black_box(&Method::POST),
                    black_box(&uri),
                    black_box(&headers),
                )
            })
        });
        let miss: Uri = "/nothing/here".parse().unwrap();
        c.bench_function(&format!("route_match/{n}_routes_miss"), |b| {
            b.iter(|| {
                router.find(
                    black_box(&Method::GET),
                    black_box(&miss),
                    black_box(&headers),
                )
            })
        });
    }
}

fn bench_headers(c: &mut Criterion) {
    let policy = HeaderPolicy {
        service_name: HeaderValue::from_static("fusion"),
        proto: HeaderValue::from_static("http"),
    };
    let peer = HeaderValue::from_static("127.0.0.1");
    let mut base = HeaderMap::new();
    base.insert("host", HeaderValue::from_static("127.0.0.1:8080"));
    base.insert("user-agent", HeaderValue::from_static("curl/8.0"));
    base.insert("accept", HeaderValue::from_static("*/*"));
    base.insert("content-type", HeaderValue::from_static("application/json"));
    base.insert("x-camera-id", HeaderValue::from_static("cam-42"));
    c.bench_function("headers/inject_new_ids", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| prepare_request(&mut h, &policy, &peer, false),
            criterion::BatchSize::SmallInput,
        )
    });
    let mut with_ids = base.clone();
    with_ids.insert("x-correlation-id", HeaderValue::from_static("corr-123"));
    with_ids.insert("x-request-id", HeaderValue::from_static("req-456"));
    with_ids.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    with_ids.insert("connection", HeaderValue::from_static("keep-alive"));
    c.bench_function("headers/keep_ids_strip_connection", |b| {
        b.iter_batched(
            || with_ids.clone(),
            |mut h| prepare_request(&mut h, &policy, &peer, false),
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench_routes, bench_headers);
criterion_main!(benches);
