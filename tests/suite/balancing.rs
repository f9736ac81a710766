//! Load balancing across an upstream's endpoints: round_robin is exactly even,
//! weighted follows the weights, random reaches every endpoint, least_request prefers
//! the endpoint with fewer requests in flight.

use std::net::SocketAddr;

use crate::common::*;

fn config(endpoints: &str, policy: &str) -> String {
    format!(
        "{}[upstreams.pool]\nendpoints = [{endpoints}]\nload_balancing = \"{policy}\"\n\n\
         [upstreams.pool.retry]\nmax_retries = 0\n\n\
         [upstreams.pool.circuit_breaker]\nfailure_threshold = 1000\n\n{}",
        base_config(""),
        route_toml("all", "/", "pool", "")
    )
}

fn quoted(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn upstreams(n: usize) -> Vec<TestUpstream> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(TestUpstream::start(Behaviour::ok(format!("endpoint-{i}"))).await);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_is_exactly_even() {
    let ups = upstreams(3).await;
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let fb = spawn_fusebox(&config(&quoted(&addrs), "round_robin")).await;
    let c = http1_client();
    let mut last = String::new();
    for _ in 0..300 {
        let r = get(&c, &fb.url("/rr")).await;
        assert_eq!(r.status, 200);
        assert_ne!(
            r.text(),
            last,
            "round robin never picks the same endpoint twice in a row"
        );
        last = r.text();
    }
    let hits: Vec<usize> = ups.iter().map(|u| u.hits()).collect();
    assert_eq!(hits, vec![100, 100, 100]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_follows_weights() {
    let ups = upstreams(2).await;
    let endpoints = format!(
        "{{ address = \"{}\", weight = 1 }}, {{ address = \"{}\", weight = 3 }}",
        ups[0].addr, ups[1].addr
    );
    let fb = spawn_fusebox(&config(&endpoints, "weighted")).await;
    let c = http1_client();
    for _ in 0..400 {
        assert_eq!(get(&c, &fb.url("/w")).await.status, 200);
    }
    let (a, b) = (ups[0].hits(), ups[1].hits());
    assert_eq!(a + b, 400);
    // Expected 100 / 300; the bounds allow a random weighted pick (over 4 sigma).
    assert!(
        (60..=140).contains(&a),
        "weight 1 got {a} of 400, weight 3 got {b}"
    );
}

/// Proves weighted picks interleave: with weights 100 and 100, 20 requests split 8-12
/// each. Before, each endpoint got `weight` requests in a row (all 20 to the first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_interleaves_instead_of_running_through_a_weight() {
    let ups = upstreams(2).await;
    let endpoints = format!(
        "{{ address = \"{}\", weight = 100 }}, {{ address = \"{}\", weight = 100 }}",
        ups[0].addr, ups[1].addr
    );
    let fb = spawn_fusebox(&config(&endpoints, "weighted")).await;
    let c = http1_client();
    for _ in 0..20 {
        assert_eq!(get(&c, &fb.url("/w")).await.status, 200);
    }
    let (a, b) = (ups[0].hits(), ups[1].hits());
    assert_eq!(a + b, 20);
    assert!((8..=12).contains(&a), "weights 100 / 100 got {a} / {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_reaches_every_endpoint() {
    let ups = upstreams(3).await;
    let addrs: Vec<SocketAddr> = ups.iter().map(|u| u.addr).collect();
    let fb = spawn_fusebox(&config(&quoted(&addrs), "random")).await;
    let c = http1_client();
    for _ in 0..300 {
        assert_eq!(get(&c, &fb.url("/r")).await.status, 200);
    }
    let hits: Vec<usize> = ups.iter().map(|u| u.hits()).collect();
    assert_eq!(hits.iter().sum::<usize>(), 300);
    // Expected 100 each; 40..=160 is over 7 sigma either side.
    for h in &hits {
        assert!((40..=160).contains(h), "uneven random spread {hits:?}");
    }
}

/// least_request: with two requests held on each endpoint, then those on B released,
/// every new request goes to B (fewer in flight) and none to A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_prefers_the_idle_endpoint() {
    let gate_a = Gate::new();
    let gate_b = Gate::new();
    let a = TestUpstream::start(Behaviour::gated(&gate_a, Behaviour::ok("A"))).await;
    let b = TestUpstream::start(Behaviour::gated(&gate_b, Behaviour::ok("B"))).await;
    let fb = spawn_fusebox(&config(&quoted(&[a.addr, b.addr]), "least_request")).await;
    let c = http1_client();

    // Four held requests, sent one at a time: each goes where fewer are in flight.
    let mut held = Vec::new();
    for n in 1..=4 {
        let c = c.clone();
        let url = fb.url("/held");
        held.push(tokio::spawn(async move {
            send(&c, request(Method::GET, &url).body(empty()).unwrap()).await
        }));
        eventually("the held request at an upstream", WAIT, || {
            a.hits() + b.hits() == n
        })
        .await;
    }
    assert_eq!(
        (a.hits(), b.hits()),
        (2, 2),
        "least_request balances in-flight counts"
    );

    // Release B's two; A keeps two in flight.
    b.set(Behaviour::ok("B"));
    gate_b.open();
    eventually("B's held requests to finish", WAIT, || {
        held.iter().filter(|h| h.is_finished()).count() == 2
    })
    .await;
    // B's in-flight count drops when fusebox is done with each response, which can be
    // just after the caller read it: wait for the state the balancer reads.
    let ep_b = fb.running().snapshot().upstreams["pool"]
        .endpoints()
        .iter()
        .find(|e| e.addr == b.addr)
        .cloned()
        .expect("B's endpoint");
    eventually("B's in-flight count to be 0", WAIT, || {
        ep_b.in_flight() == 0
    })
    .await;

    for _ in 0..40 {
        let r = get(&c, &fb.url("/new")).await;
        assert_eq!(r.text(), "B", "a new request went to the busy endpoint");
    }
    assert_eq!(a.hits(), 2);
    assert_eq!(b.hits(), 42);

    gate_a.open();
    for h in held {
        let r = within(WAIT, "held requests", h).await.unwrap();
        assert_eq!(r.status, 200);
    }
}
