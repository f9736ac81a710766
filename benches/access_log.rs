// Per-request cost of the access log's line: one JSON line formatted into a reused
// buffer, as each request does when its response is done (the write to stdout happens
// on the writer thread, in batches, and is not measured here).

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use fusebox::access_log::Entry;
use fusebox::config::LogFormat;

fn entry() -> Entry<'static> {
    Entry {
        service: "fusion",
        route: Some("detect"),
        upstream: Some("yolo"),
        endpoint: Some("127.0.0.1:9001"),
        method: "POST",
        path: "/v1/detect/camera-17?model=yolov8",
        status: 200,
        duration: Duration::from_micros(12_345),
        attempts: 1,
        correlation_id: b"f4865fdf-6e9a-4692-a219-742b8b8b44f6",
        request_id: b"bf69183d-6f9d-4b4b-9661-8d53061e2243",
        trace_id: Some("814b17afd017f1c45f55fdc77c7bf629"),
        org_id: Some(b"org-42"),
        camera_id: Some(b"cam-17"),
        priority: "normal",
        error_code: None,
        bytes_in: 262_144,
        bytes_out: 4_000,
        body_error: false,
        cancelled: false,
        propagated: &[],
    }
}

fn bench(c: &mut Criterion) {
    let e = entry();
    let mut line = String::with_capacity(1024);
    c.bench_function("access_log/json_line", |b| {
        b.iter(|| {
            line.clear();
            black_box(&e).format_into(&mut line, LogFormat::Json);
            black_box(line.len())
        })
    });
    c.bench_function("access_log/text_line", |b| {
        b.iter(|| {
            line.clear();
            black_box(&e).format_into(&mut line, LogFormat::Text);
            black_box(line.len())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
