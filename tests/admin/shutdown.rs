//! Readiness during shutdown.

use crate::*;

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
