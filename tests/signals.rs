//! SIGHUP to a fusebox that serves a config without a file (the embedded default):
//! there is nothing to reload, so it is logged and ignored, never fatal; and to one
//! serving a file, a text refused before is judged again. In a test binary of its own:
//! the signal goes to the whole process.

mod common;

use common::*;

/// SIGHUP reaches every fusebox of the process: the tests take turns.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Proves: SIGHUP to a process serving the embedded default config (on loopback
/// ports) does not kill it (without a handler, SIGHUP's default action ends the
/// process, and this test with it): it keeps answering, and no reload is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_a_config_file_keeps_serving() {
    let _turn = SERIAL.lock().await;
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

/// Proves: a reload refused because a file the config names cannot be read (a CA
/// certificate not mounted yet) is judged again on SIGHUP once the file is there;
/// a file event alone would not come (the file is outside the config's directory),
/// and the same text is otherwise judged only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_judges_a_refused_text_again() {
    let _turn = SERIAL.lock().await;
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let certs = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("fusebox.toml");
    std::fs::write(&path, simple_config(up.addr)).expect("write config");
    let text = std::fs::read_to_string(&path).expect("read config");
    let config = fusebox::config::load(&path).expect("valid config");
    let running = fusebox::app::start_with(
        config,
        fusebox::config::content_hash(&text),
        fusebox::app::StartOptions {
            config_path: Some(path.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("start");
    let reloads = |result: &'static str| {
        let admin = running.admin_addr;
        async move {
            common::prom::wait_metric(
                admin,
                "gateway_config_reloads_total",
                &format!("result=\"{result}\""),
                1.0,
            )
            .await
        }
    };
    let ca = certs.path().join("ca.pem");
    let new_text = format!(
        "{}[upstreams.tls]\nendpoints = [\"{}\"]\nprotocol = \"https\"\ntls = {{ ca = \"{}\" }}\n",
        simple_config(up.addr),
        up.addr,
        ca.display()
    );
    std::fs::write(&path, &new_text).expect("write config");
    // Refused: the CA file is not there.
    reloads("failure").await;
    let pki = common::tls::Pki::generate();
    std::fs::copy(&pki.ca_path, &ca).expect("write CA");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    // The same text judged again and applied.
    reloads("success").await;
    assert!(running.shutdown().await);
}

/// Proves: SIGHUP rebuilds an unchanged config, re-reading the TLS files it names: an
/// upstream CA file replaced in place (a rotation that keeps its path, as cert-manager
/// does) is used after SIGHUP. Before, an unchanged text was never rebuilt, so the old
/// CA stayed until a restart or an unrelated edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_upstream_tls_files_changed_in_place() {
    use common::tls::{Pki, TlsUpstream};
    let _turn = SERIAL.lock().await;
    let pki = Pki::generate();
    let up = TlsUpstream::start(pki.server_config(&pki.server("upstream"), false)).await;
    let stranger = Pki::generate();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = dir.path().join("upstream-ca.pem");
    std::fs::copy(&stranger.ca_path, &ca).expect("write the wrong CA");
    let path = dir.path().join("fusebox.toml");
    let text = format!(
        "{}{}{}",
        base_config(""),
        upstream_toml(
            "app",
            &[up.addr],
            &format!(
                "protocol = \"https\"\ntls = {{ ca = \"{}\", server_name = \"localhost\" }}",
                ca.display()
            )
        ),
        route_toml("all", "/", "app", "")
    );
    std::fs::write(&path, &text).expect("write config");
    let config = fusebox::config::load(&path).expect("valid config");
    let running = fusebox::app::start_with(
        config,
        fusebox::config::content_hash(&text),
        fusebox::app::StartOptions {
            config_path: Some(path.clone()),
            ..Default::default()
        },
    )
    .await
    .expect("start");
    let c = http1_client();
    let url = format!("http://{}/detect", running.data_addr);
    let r = get(&c, &url).await;
    assert_eq!(r.status, 502, "the wrong CA: {}", r.text());
    std::fs::copy(&pki.ca_path, &ca).expect("rotate the CA in place");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    common::prom::wait_metric(
        running.admin_addr,
        "gateway_config_reloads_total",
        "result=\"success\"",
        1.0,
    )
    .await;
    let r = get(&c, &url).await;
    assert_eq!(r.status, 200, "the rotated CA: {}", r.text());
    assert!(running.shutdown().await);
}
