//! Breakers partitioned by a request header (`partition_by = "header:X-Camera-ID"`):
//! one broken camera stream is failed fast while the other cameras keep reaching the
//! same endpoint, and key spraying never grows the partition table past
//! `max_partitions`.

use crate::common::scripted::*;
use crate::common::*;
use fusebox::upstream::breaker::BreakerState;
use tokio::time::Instant;

const PARTITIONED: &str = "failure_threshold = 3\nrecovery_timeout = \"30s\"\n\
                           partition_by = \"header:X-Camera-ID\"";

async fn proxy(up: &Scripted, breaker: &str) -> Proxy {
    let tables = format!(
        "{}{}",
        UpstreamToml::new("app", &[up.addr])
            .breaker(breaker)
            .build(),
        route_toml("frames", "/", "app", "")
    );
    spawn_proxy(&tables).await
}

/// Proves: camera A's three failures open A's breaker (A then gets CIRCUIT_OPEN
/// without reaching the upstream) while camera B, and requests without the header,
/// keep reaching the same endpoint and succeeding; the endpoint's own breaker stays
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cameras_failures_do_not_cut_off_the_others() {
    let up = Scripted::ok("detections").await;
    up.rule(
        Match::header("x-camera-id", "A"),
        Behaviour::respond(503, "bad stream"),
    );
    let fb = proxy(&up, PARTITIONED).await;
    let c = http1_client();
    let url = fb.url("/frame");
    let cam = |id: &'static str| [("x-camera-id", id)];

    for _ in 0..3 {
        let r = call(&c, Method::POST, &url, &cam("A"), "frame").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "bad stream"));
    }
    for _ in 0..3 {
        let r = call(&c, Method::POST, &url, &cam("A"), "frame").await;
        let body = assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("partition key")),
            "the message says it is the key's breaker: {body}"
        );
        assert!(retry_after_secs(&r) >= 1);
    }
    assert_eq!(up.seen_with("x-camera-id", "A"), 3, "A is failed fast");
    assert_eq!(
        prom::rejected(fb.admin(), "frames", "circuit_open").await,
        3.0
    );

    for _ in 0..10 {
        let r = call(&c, Method::POST, &url, &cam("B"), "frame").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "detections"));
    }
    let r = call(&c, Method::POST, &url, &[], "frame").await;
    assert_eq!(r.status, 200, "no header: the endpoint's own breaker");
    assert_eq!(up.seen_with("x-camera-id", "B"), 10);

    let ep = fb.endpoint("app", up.addr);
    let now = Instant::now();
    assert_eq!(ep.own_breakers().state(now), BreakerState::Closed);
    let table = ep.own_breakers().partitions().expect("partitioned");
    assert_eq!(table.len(), 2);
    let state = |k: &[u8]| table.peek(k).expect("a breaker for the key").state(now);
    assert_eq!(
        (state(b"A"), state(b"B")),
        (BreakerState::Open, BreakerState::Closed)
    );
}

/// Proves: 3,000 distinct camera ids sent through the proxy (4 concurrent tasks) never
/// grow an endpoint's partition table past `max_partitions = 100`, checked after every
/// request; it ends full at 100. (The unit test `key_spraying_never_grows_past_
/// max_partitions` in src/upstream/partition.rs drives 100,000 keys through the table
/// directly; 100,000 real requests would be too slow for this suite.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_spraying_stays_within_max_partitions() {
    let up = Scripted::ok("ok").await;
    let fb = proxy(&up, &format!("{PARTITIONED}\nmax_partitions = 100")).await;
    let ep = fb.endpoint("app", up.addr);
    let c = http1_client();
    let mut tasks = Vec::new();
    for t in 0..4 {
        let (c, url, ep) = (c.clone(), fb.url("/frame"), ep.clone());
        tasks.push(tokio::spawn(async move {
            let mut most = 0;
            for i in 0..750 {
                let id = format!("cam-{t}-{i}");
                let r = call(&c, Method::GET, &url, &[("x-camera-id", &id)], "").await;
                assert_eq!(r.status, 200);
                let table = ep.own_breakers().partitions().expect("partitioned");
                most = most.max(table.len());
            }
            most
        }));
    }
    for t in tasks {
        let most = within(WAIT * 6, "the spraying tasks", t)
            .await
            .expect("task");
        assert!(most <= 100, "the table held {most} keys");
    }
    assert_eq!(up.hits(), 3000);
    let table = ep.own_breakers().partitions().expect("partitioned");
    assert_eq!(table.len(), 100);
}
