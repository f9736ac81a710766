//! Circuit breakers seen through the data port: consecutive-failure and error-rate
//! tripping, CIRCUIT_OPEN answered without touching the upstream, half-open probe
//! limits and closing, the backed-off open time, the open time set by a `Retry-After`,
//! and a route's own `circuit_breaker` table. Upstream hit counts prove what reached
//! the upstream; breaker state is read in-process where timing matters.

use crate::common::scripted::*;
use crate::common::*;
use fusebox::upstream::breaker::BreakerState;
use tokio::time::Instant;

/// One upstream `app` on `up` with these breaker lines, behind a catch-all route.
async fn proxy_with_breaker(up: &Scripted, breaker: &str) -> Proxy {
    let tables = format!(
        "{}{}",
        UpstreamToml::new("app", &[up.addr])
            .breaker(breaker)
            .build(),
        route_toml("all", "/", "app", "")
    );
    spawn_proxy(&tables).await
}

/// Like [`proxy_with_breaker`], plus a control: upstream `ctl` on a port that refuses
/// connections, behind `/ctl`, whose breaker opens on one failure and half-opens after
/// `control_recovery`. Opening it after an event and waiting until it half-opens shows
/// that `control_recovery` has passed since that event, as a state rather than a sleep.
async fn proxy_with_control(
    up: &Scripted,
    breaker: &str,
    control_recovery: &str,
) -> (Proxy, DeadPort) {
    let ctl = dead_port();
    let tables = format!(
        "{}{}{}{}",
        UpstreamToml::new("app", &[up.addr])
            .breaker(breaker)
            .build(),
        UpstreamToml::new("ctl", &[ctl.addr])
            .breaker(&format!(
                "failure_threshold = 1\nrecovery_timeout = \"{control_recovery}\"\njitter = false"
            ))
            .build(),
        route_toml("ctl", "/ctl", "ctl", ""),
        route_toml("all", "/", "app", "")
    );
    (spawn_proxy(&tables).await, ctl)
}

/// Opens the control breaker and waits until it half-opens.
async fn control_half_opens(fb: &Proxy, ctl: &DeadPort) {
    let r = get(&http1_client(), &fb.url("/ctl")).await;
    assert_fusebox_error(&r, 502, "UPSTREAM_CONNECT_FAILED", Some("ctl"));
    fb.wait_breaker("ctl", ctl.addr, BreakerState::HalfOpen)
        .await;
}

/// The instant the open time of `app`'s breaker at `addr` ends, computed by the breaker
/// from `before` (any instant before that end, also one before it opened): exact
/// however late this is called, as long as no request has moved the breaker since.
fn open_until(fb: &Proxy, addr: std::net::SocketAddr, before: Instant) -> Instant {
    let left = fb
        .endpoint("app", addr)
        .own_breakers()
        .main()
        .rejection(before)
        .unwrap_or_else(|| panic!("the breaker of {addr} is not open"))
        .retry_after;
    before + left
}

fn fail() -> Behaviour {
    Behaviour::respond(503, "model overloaded")
}

/// Proves: only `failure_threshold` *consecutive* failures open the breaker (a success
/// in between starts the count again), every failing request up to then reaches the
/// upstream and comes back unchanged, and the next request is answered CIRCUIT_OPEN
/// (503, `Retry-After` within the recovery time) without reaching the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_after_exactly_failure_threshold_consecutive_failures() {
    let up = Scripted::start(fail()).await;
    up.then([fail(), fail(), Behaviour::ok("fine")]);
    let fb = proxy_with_breaker(
        &up,
        "failure_threshold = 3\nrecovery_timeout = \"30s\"\njitter = false",
    )
    .await;
    let c = http1_client();

    let mut statuses = Vec::new();
    for i in 1..=5 {
        let r = get(&c, &fb.url("/detect")).await;
        assert_eq!(
            r.header("x-fusebox-error"),
            None,
            "request {i} is the upstream's"
        );
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses, [503, 503, 200, 503, 503]);
    assert_eq!(
        fb.breaker_state("app", up.addr),
        BreakerState::Closed,
        "two failures after a success are not three consecutive ones"
    );

    let third = get(&c, &fb.url("/detect")).await;
    assert_eq!(third.status, 503);
    assert_eq!(
        third.text(),
        "model overloaded",
        "the upstream's answer, unchanged"
    );
    assert_eq!(fb.breaker_state("app", up.addr), BreakerState::Open);
    assert_eq!(up.hits(), 6);

    for _ in 0..3 {
        let r = get(&c, &fb.url("/detect")).await;
        assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
        let ra = retry_after_secs(&r);
        assert!(
            (1..=30).contains(&ra),
            "Retry-After {ra} within recovery_timeout"
        );
    }
    assert_eq!(
        up.hits(),
        6,
        "CIRCUIT_OPEN answers never reach the upstream"
    );
    assert_eq!(prom::rejected(fb.admin(), "all", "circuit_open").await, 3.0);
    // As the access log: a CIRCUIT_OPEN answer made no attempt (bucket 0), each of
    // the six before it one.
    let le = |n: &str| format!(r#"service="app",le="{n}""#);
    let bucket = "gateway_proxy_attempts_per_request_bucket";
    assert_eq!(prom::read_metric(fb.admin(), bucket, &le("0")).await, 3.0);
    assert_eq!(prom::read_metric(fb.admin(), bucket, &le("1")).await, 9.0);
}

/// Proves: in error-rate mode a window holding fewer than `request_volume_threshold`
/// attempts does not trip even at 100 % failures (all 9 reach the upstream), and the
/// attempt that brings it to the volume does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_mode_does_not_trip_below_the_volume_threshold() {
    let up = Scripted::start(fail()).await;
    let fb = proxy_with_breaker(
        &up,
        "failure_threshold = 1000\nrecovery_timeout = \"30s\"\nwindow = \"60s\"\n\
         request_volume_threshold = 10\nerror_threshold_percentage = 50.0",
    )
    .await;
    let c = http1_client();
    for i in 1..=9 {
        let r = get(&c, &fb.url("/x")).await;
        assert_eq!(r.status, 503);
        assert_eq!(
            r.header("x-fusebox-error"),
            None,
            "request {i} reached the upstream"
        );
    }
    assert_eq!(up.hits(), 9);
    assert_eq!(fb.breaker_state("app", up.addr), BreakerState::Closed);

    let tenth = get(&c, &fb.url("/x")).await;
    assert_eq!(
        tenth.header("x-fusebox-error"),
        None,
        "the 10th is still sent"
    );
    assert_eq!(fb.breaker_state("app", up.addr), BreakerState::Open);
    let r = get(&c, &fb.url("/x")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
    assert_eq!(up.hits(), 10);
    assert_eq!(prom::rejected(fb.admin(), "all", "circuit_open").await, 1.0);
}

/// Proves: at the volume, a failure share below `error_threshold_percentage` (40 %,
/// then 45 %) keeps the breaker closed, and reaching it (6 of 12 = 50 %) opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_mode_trips_at_the_percentage() {
    let up = Scripted::start(fail()).await;
    up.then((0..6).map(|_| Behaviour::ok("fine")));
    let fb = proxy_with_breaker(
        &up,
        "failure_threshold = 1000\nrecovery_timeout = \"30s\"\nwindow = \"60s\"\n\
         request_volume_threshold = 10\nerror_threshold_percentage = 50.0",
    )
    .await;
    let c = http1_client();
    for i in 1..=11 {
        let r = get(&c, &fb.url("/x")).await;
        assert_eq!(
            r.header("x-fusebox-error"),
            None,
            "request {i} reached the upstream"
        );
        assert_eq!(
            fb.breaker_state("app", up.addr),
            BreakerState::Closed,
            "after request {i}: {} % failures",
            (i.max(6) - 6) * 100 / i
        );
    }
    let twelfth = get(&c, &fb.url("/x")).await;
    assert_eq!(twelfth.header("x-fusebox-error"), None);
    assert_eq!(
        fb.breaker_state("app", up.addr),
        BreakerState::Open,
        "6/12 = 50 %"
    );
    let r = get(&c, &fb.url("/x")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
    assert_eq!(up.hits(), 12);
    assert_eq!(prom::rejected(fb.admin(), "all", "circuit_open").await, 1.0);
}

/// Proves: slow calls count as failures in error-rate mode: 200 answers slower than
/// `slow_call_duration` open the breaker once the volume is reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_calls_count_as_failures_in_error_rate_mode() {
    let up = Scripted::start(Behaviour::delayed(ms(150), Behaviour::ok("slow"))).await;
    let fb = proxy_with_breaker(
        &up,
        "failure_threshold = 1000\nrecovery_timeout = \"30s\"\nwindow = \"60s\"\n\
         request_volume_threshold = 4\nerror_threshold_percentage = 50.0\n\
         slow_call_duration = \"50ms\"",
    )
    .await;
    let c = http1_client();
    for _ in 0..4 {
        let r = get(&c, &fb.url("/x")).await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "slow"));
    }
    assert_eq!(fb.breaker_state("app", up.addr), BreakerState::Open);
    let r = get(&c, &fb.url("/x")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
    assert_eq!(up.hits(), 4);
    assert_eq!(prom::rejected(fb.admin(), "all", "circuit_open").await, 1.0);
}

/// Proves: while half open, of 6 concurrent requests exactly `half_open_max_requests`
/// (2) reach the upstream and the other 4 get CIRCUIT_OPEN at once; two successful
/// probes are not yet `success_threshold` (3), a third closes the breaker, and then
/// every request reaches the upstream again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_admits_only_the_probes_and_closes_after_success_threshold() {
    let up = Scripted::start(fail()).await;
    let fb = proxy_with_breaker(
        &up,
        "failure_threshold = 1\nrecovery_timeout = \"200ms\"\njitter = false\n\
         half_open_max_requests = 2\nsuccess_threshold = 3",
    )
    .await;
    let c = http1_client();
    assert_eq!(get(&c, &fb.url("/x")).await.status, 503);
    // Opened (a count, not the state now: that turns half open after 200 ms).
    let stats = fb
        .endpoint("app", up.addr)
        .own_breakers()
        .stats(Instant::now());
    assert_eq!(stats.times_opened, 1, "{stats:?}");

    let gate = Gate::new();
    up.set(Behaviour::gated(&gate, Behaviour::ok("probe ok")));
    fb.wait_breaker("app", up.addr, BreakerState::HalfOpen)
        .await;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..6 {
        let (c, url, tx) = (c.clone(), fb.url("/x"), tx.clone());
        tokio::spawn(async move {
            let r = get(&c, &url).await;
            let _ = tx.send(r);
        });
    }
    drop(tx);
    let mut rejected = 0;
    while rejected < 4 {
        let r = within(WAIT, "the non-probe answers", rx.recv())
            .await
            .expect("every task answers");
        assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
        assert!(retry_after_secs(&r) >= 1);
        rejected += 1;
    }
    up.wait_hits(3).await;
    assert_eq!(up.hits(), 3, "1 opening failure + exactly 2 probes");
    assert_eq!(prom::rejected(fb.admin(), "all", "circuit_open").await, 4.0);

    gate.open();
    for _ in 0..2 {
        let r = within(WAIT, "the probes", rx.recv()).await.expect("probe");
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "probe ok"));
    }
    assert_eq!(
        fb.breaker_state("app", up.addr),
        BreakerState::HalfOpen,
        "2 successes < success_threshold 3"
    );
    assert_eq!(get(&c, &fb.url("/x")).await.status, 200);
    assert_eq!(fb.breaker_state("app", up.addr), BreakerState::Closed);
    for _ in 0..5 {
        assert_eq!(get(&c, &fb.url("/x")).await.status, 200);
    }
    assert_eq!(up.hits(), 9);
}

/// Proves: the open time doubles on each re-open (recovery R = 500 ms, no jitter): the
/// first open lasts R, the re-open after a failed probe 2R, the next 4R (each read from
/// the breaker as the instant it ends, and bounded by the instants around the request
/// that opened it); at the data port, a request sent once a control breaker with the
/// plain R (opened after the re-open) has half-opened is still refused without reaching
/// the upstream; and half open comes no earlier than 2R after the re-opening probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_time_backs_off_on_each_reopen() {
    const R: std::time::Duration = ms(500);
    let up = Scripted::start(fail()).await;
    let (fb, ctl) = proxy_with_control(
        &up,
        "failure_threshold = 1\nrecovery_timeout = \"500ms\"\nmax_recovery_timeout = \"10s\"\n\
         jitter = false",
        "500ms",
    )
    .await;
    let c = http1_client();

    let t0 = Instant::now();
    assert_eq!(get(&c, &fb.url("/x")).await.status, 503);
    let t1 = Instant::now();
    let end = open_until(&fb, up.addr, t0);
    assert!(
        end >= t0 + R && end <= t1 + R,
        "first open lasts R: ends {:?} after the request was sent ({:?} in flight)",
        end - t0,
        t1 - t0
    );

    fb.wait_breaker("app", up.addr, BreakerState::HalfOpen)
        .await;
    let t2 = Instant::now(); // the re-open comes after this
    let probe = get(&c, &fb.url("/x")).await;
    let t3 = Instant::now(); // ... and before this
    assert_eq!(
        (probe.status.as_u16(), up.hits()),
        (503, 2),
        "the probe went out"
    );
    let end = open_until(&fb, up.addr, t2);
    assert!(
        end >= t2 + 2 * R && end <= t3 + 2 * R,
        "second open lasts 2R: ends {:?} after the probe was sent ({:?} in flight)",
        end - t2,
        t3 - t2
    );

    // R has passed since the re-open (the control shows it), the doubled time has not.
    control_half_opens(&fb, &ctl).await;
    let r = get(&c, &fb.url("/x")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
    assert_eq!(up.hits(), 2, "still open R after the re-open");
    assert_eq!(prom::rejected(fb.admin(), "all", "circuit_open").await, 1.0);

    fb.wait_breaker("app", up.addr, BreakerState::HalfOpen)
        .await;
    assert!(
        t2.elapsed() >= 2 * R,
        "half open only after the doubled time"
    );
    let t4 = Instant::now();
    assert_eq!(get(&c, &fb.url("/x")).await.status, 503);
    let t5 = Instant::now();
    assert_eq!(up.hits(), 3);
    let end = open_until(&fb, up.addr, t4);
    assert!(
        end >= t4 + 4 * R && end <= t5 + 4 * R,
        "third open lasts 4R: ends {:?} after the probe was sent ({:?} in flight)",
        end - t4,
        t5 - t4
    );
}

/// Proves: a `Retry-After: 2` on the 503 that opens the breaker keeps it open for 2 s
/// instead of the 200 ms `recovery_timeout` (the breaker's end instant says so, and a
/// request sent once a control breaker with the plain 200 ms has half-opened is still
/// refused), the CIRCUIT_OPEN answer's `Retry-After` says so, and it half-opens no
/// earlier than 2 s after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_the_opening_503_sets_the_open_time() {
    let up = Scripted::start(fail().with_header("retry-after", "2")).await;
    let (fb, ctl) = proxy_with_control(
        &up,
        "failure_threshold = 1\nrecovery_timeout = \"200ms\"\nmax_recovery_timeout = \"10s\"\n\
         jitter = false",
        "200ms",
    )
    .await;
    let c = http1_client();
    let sent = Instant::now(); // the breaker opens after this
    let r = get(&c, &fb.url("/x")).await;
    let answered = Instant::now(); // ... and before this
    assert_eq!(
        (r.status.as_u16(), r.header("retry-after")),
        (503, Some("2"))
    );
    let end = open_until(&fb, up.addr, sent);
    assert!(
        end >= sent + ms(2000) && end <= answered + ms(2000),
        "open for the upstream's 2 s: ends {:?} after the request was sent",
        end - sent
    );

    control_half_opens(&fb, &ctl).await;
    let r = get(&c, &fb.url("/x")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
    let ra = retry_after_secs(&r);
    assert!((1..=2).contains(&ra), "Retry-After {ra}");
    assert_eq!(up.hits(), 1);
    assert_eq!(prom::rejected(fb.admin(), "all", "circuit_open").await, 1.0);
    fb.wait_breaker("app", up.addr, BreakerState::HalfOpen)
        .await;
    assert!(sent.elapsed() >= ms(2000), "open for the upstream's 2 s");
}

/// Proves: a route's own `circuit_breaker` table overrides the upstream's for that
/// route (DESIGN.md: "retry / circuit_breaker tables here override the upstream's for
/// this route"): with the upstream at 1000 failures and the route at 2, the third
/// request on the route is CIRCUIT_OPEN, while another route to the same endpoint,
/// without a table, keeps reaching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_circuit_breaker_table_overrides_the_upstreams() {
    let up = Scripted::start(fail()).await;
    let tables = format!(
        "{}{}[routes.circuit_breaker]\nfailure_threshold = 2\nrecovery_timeout = \"30s\"\n\n{}",
        UpstreamToml::new("app", &[up.addr]).build(),
        route_toml("strict", "/strict", "app", ""),
        route_toml("other", "/other", "app", ""),
    );
    let fb = spawn_proxy(&tables).await;
    let c = http1_client();
    for _ in 0..2 {
        let r = get(&c, &fb.url("/strict/x")).await;
        assert_eq!(
            (r.status.as_u16(), r.header("x-fusebox-error")),
            (503, None)
        );
    }
    let r = get(&c, &fb.url("/strict/x")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
    assert_eq!(up.hits(), 2);
    for _ in 0..3 {
        let r = get(&c, &fb.url("/other/x")).await;
        assert_eq!(
            r.header("x-fusebox-error"),
            None,
            "the upstream's own breaker"
        );
    }
    assert_eq!(up.hits(), 5);
    assert_eq!(
        prom::rejected(fb.admin(), "strict", "circuit_open").await,
        1.0
    );
    assert_eq!(
        prom::rejected(fb.admin(), "other", "circuit_open").await,
        0.0
    );
}

/// An HTTP/1.1 upstream that answers every request `200` with `Content-Length: 1000`,
/// sends 10 bytes of it and closes: a replica that crashes mid-answer. Counts requests.
async fn breaks_mid_body() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
                // Dropped: the connection closes 990 bytes short.
            });
        }
    });
    (addr, hits)
}

/// Proves: an answer that fails mid-body (the upstream closes 990 bytes short) is a
/// failure of the endpoint, though its headers looked fine: with `failure_threshold =
/// 3`, three such answers open the breaker (the success its headers counted was
/// provisional, and it does not reset the consecutive failures), and the fourth
/// request gets `CIRCUIT_OPEN` without reaching the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_break_mid_body_open_the_breaker() {
    let (addr, hits) = breaks_mid_body().await;
    let fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[addr])
            .breaker("failure_threshold = 3\nrecovery_timeout = \"60s\"")
            .retry("max_retries = 0")
            .build(),
        route_toml("all", "/", "app", "")
    ))
    .await;
    let c = http1_client();
    for i in 0..3 {
        let resp = c
            .request(
                request(Method::GET, &fb.url(&format!("/stream/{i}")))
                    .body(empty())
                    .unwrap(),
            )
            .await
            .expect("response head");
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await;
        assert!(body.is_err(), "answer {i} breaks off");
        crate::common::prom::wait_in_flight(fb.admin(), "all", 0.0).await;
    }
    let stats = fb
        .endpoint("app", addr)
        .own_breakers()
        .stats(Instant::now());
    assert_eq!(
        (stats.failure_count, stats.success_count, stats.times_opened),
        (3, 0, 1),
        "{stats:?}"
    );
    assert_eq!(fb.breaker_state("app", addr), BreakerState::Open);
    let r = get(&c, &fb.url("/after")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// Proves: `Retry-After` of a `CIRCUIT_OPEN` answer is the time until the first
/// breaker that will half-open does; a force-opened one never does, so it does not
/// shorten it. Endpoint A forced open (recovery 2 s), B opened by a 503 asking for
/// 30 s: the answer says about 30 s, not 2. With every endpoint forced, it is their
/// `recovery_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_skips_force_opened_endpoints() {
    let a = Scripted::ok("a").await;
    let b = Scripted::start(fail().with_header("retry-after", "30")).await;
    let fb = spawn_proxy(&format!(
        "{}{}",
        UpstreamToml::new("app", &[a.addr, b.addr])
            .breaker(
                "failure_threshold = 1\nrecovery_timeout = \"2s\"\nmax_recovery_timeout = \"60s\"\njitter = false"
            )
            .retry("max_retries = 0")
            .build(),
        route_toml("all", "/", "app", "")
    ))
    .await;
    fb.endpoint("app", a.addr).force_open();
    let c = http1_client();
    let r = get(&c, &fb.url("/x")).await;
    assert_eq!(r.status, 503, "B's own 503 opens it");
    assert_eq!(fb.breaker_state("app", b.addr), BreakerState::Open);
    let r = get(&c, &fb.url("/x")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
    let ra = retry_after_secs(&r);
    assert!((25..=30).contains(&ra), "B's 30 s, not A's 2 s: {ra}");
    fb.endpoint("app", b.addr).force_open();
    let r = get(&c, &fb.url("/x")).await;
    assert_fusebox_error(&r, 503, "CIRCUIT_OPEN", Some("app"));
    assert_eq!(retry_after_secs(&r), 2, "all forced: recovery_timeout");
    assert_eq!((a.hits(), b.hits()), (0, 1));
}
