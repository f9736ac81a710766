//! SIGHUP to a fusebox that serves a config without a file (the embedded default):
//! there is nothing to reload, so it is logged and ignored, never fatal. In a test
//! binary of its own: the signal goes to the whole process.

mod common;

use common::*;

/// Proves: SIGHUP to a process serving the embedded default config (on loopback
/// ports) does not kill it (without a handler, SIGHUP's default action ends the
/// process, and this test with it): it keeps answering, and no reload is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_config_file_keeps_serving() {
    let mut cfg = fusebox::config::embedded_default();
    cfg.listener.address = "127.0.0.1:0".parse().expect("address");
    cfg.admin.address = "127.0.0.1:0".parse().expect("address");
    cfg.logging.access_log = false;
    let version = fusebox::config::content_hash(fusebox::config::DEFAULT_CONFIG_TOML);
    let running = fusebox::app::start(cfg, version).await.expect("start");
    let c = http1_client();
    let admin = |path: &str| format!("http://{}{path}", running.admin_addr);
    for _ in 0..3 {
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let r = get(&c, &admin("/health/live")).await;
        assert_eq!(r.status, 200);
    }
    let text = get(&c, &admin("/metrics")).await.text();
    assert!(
        text.contains("gateway_config_reloads_total{result=\"success\"} 0"),
        "nothing was reloaded"
    );
    let cfg = get(&c, &admin("/config")).await.json();
    assert!(cfg["last_reload"].is_null(), "{cfg:#}");
    assert!(running.shutdown().await);
}
