//! The Unix-socket data listener (`listener.address = "unix:PATH"`): requests over the
//! socket are proxied like TCP ones (ids stamped, the caller recorded as loopback), the
//! socket file gets `unix_mode`, a stale socket file is replaced, a live one or any other
//! file is refused, and the file is removed when fusebox stops. A config change of the
//! address is kept for the restart (`not_applied`).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use crate::common::*;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

/// A directory of its own under the target dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        // Short: a socket path is limited to 107 bytes.
        let dir = std::env::temp_dir().join(format!("fbx-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(sock: &Path, up: std::net::SocketAddr, listener_extra: &str) -> String {
    format!(
        r#"[service]
name = "fusion-test"

[listener]
address = "unix:{}"
shutdown_timeout = "5s"
{listener_extra}

[admin]
address = "127.0.0.1:0"

[logging]
access_log = false

{}{}"#,
        sock.display(),
        upstream_toml("app", &[up], ""),
        route_toml("all", "/", "app", "")
    )
}

/// One HTTP/1.1 request over the Unix socket: status, headers, body.
async fn unix_get(sock: &Path, path: &str) -> (u16, http::HeaderMap, Bytes) {
    let stream = within(WAIT, "unix connect", tokio::net::UnixStream::connect(sock))
        .await
        .expect("connect to the unix socket");
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let resp = within(WAIT, "unix response", tx.send_request(req))
        .await
        .expect("response");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, headers, body)
}

/// Proves: a request over the socket reaches the upstream with fusebox's stamps
/// (request id, `X-Forwarded-For` of the loopback caller), the answer comes back with
/// the ids (each request on a connection of its own). The socket file has the
/// configured mode, `/config` shows both, and the file is gone after shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_unix_socket_are_proxied() {
    let dir = TempDir::new("proxied");
    let sock = dir.0.join("fb.sock");
    let up = TestUpstream::start(Behaviour::ok("over unix")).await;
    let fb = spawn_fusebox(&config(&sock, up.addr, "unix_mode = \"0600\"")).await;
    assert_eq!(fb.running().data_path.as_deref(), Some(sock.as_path()));
    let mode = std::fs::metadata(&sock)
        .expect("socket file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "unix_mode applies to the socket file");
    for i in 0..3 {
        let (status, headers, body) = unix_get(&sock, &format!("/detect?n={i}")).await;
        assert_eq!(status, 200);
        assert_eq!(body, Bytes::from_static(b"over unix"));
        let id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("x-request-id on the answer");
        assert!(is_uuid_v4(id), "{id}");
    }
    assert_eq!(up.hits(), 3);
    let last = up.last();
    assert_eq!(last.path_and_query(), "/detect?n=2");
    assert_eq!(last.header("x-forwarded-for"), "127.0.0.1");
    assert!(is_uuid_v4(last.header("x-request-id")));
    // /config shows the address and mode as configured.
    let c = http1_client();
    let cfg = get(&c, &format!("http://{}/config", fb.admin_addr))
        .await
        .json();
    assert_eq!(
        cfg["config"]["listener"]["address"],
        format!("unix:{}", sock.display()),
        "{cfg:#}"
    );
    assert_eq!(cfg["config"]["listener"]["unix_mode"], "0600", "{cfg:#}");
    assert!(fb.shutdown().await);
    assert!(
        !sock.exists(),
        "the socket file is removed when the listener closes"
    );
}

/// Proves: the default mode is 0666 (reachable by every container of the pod that
/// mounts the directory, as a loopback port is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_unix_mode_is_0666() {
    let dir = TempDir::new("mode");
    let sock = dir.0.join("fb.sock");
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&config(&sock, up.addr, "")).await;
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666);
    assert_eq!(unix_get(&sock, "/").await.0, 200);
    assert!(fb.shutdown().await);
}

/// Proves: a socket file left by a process that is gone (nothing accepts on it) is
/// replaced at start; a socket something still listens on is refused, and so is a path
/// that is not a socket (fusebox never deletes a regular file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_and_live_one_or_file_refused() {
    let dir = TempDir::new("stale");
    let up = TestUpstream::start(Behaviour::ok("ok")).await;

    // Stale: bound then dropped (the file stays, nobody accepts).
    let stale = dir.0.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind stale"));
    assert!(stale.exists());
    let fb = spawn_fusebox(&config(&stale, up.addr, "")).await;
    assert_eq!(unix_get(&stale, "/s").await.0, 200);

    // Live: the running fusebox holds `stale` now; a second one must not take it.
    let text = config(&stale, up.addr, "");
    let cfg = fusebox::config::parse(&text, "test.toml", None).expect("config");
    let err = match fusebox::app::start(cfg, "v".into()).await {
        Ok(_) => panic!("a second fusebox must not take a live socket"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("another process is listening"), "{err}");
    // ...and the first one still serves on it.
    assert_eq!(unix_get(&stale, "/still").await.0, 200);
    assert!(fb.shutdown().await);

    // Not a socket: refused, the file untouched.
    let file = dir.0.join("data.txt");
    std::fs::write(&file, b"keep me").expect("write");
    let cfg =
        fusebox::config::parse(&config(&file, up.addr, ""), "test.toml", None).expect("config");
    let err = match fusebox::app::start(cfg, "v".into()).await {
        Ok(_) => panic!("a regular file must not be replaced by a socket"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("is not a socket"), "{err}");
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
}

/// Proves: `validate` refuses what `bind` could not take, with the key's location: an
/// empty path, a path longer than the kernel's 107 bytes, a mode that is not octal or
/// is above 0777.
#[test]
fn bad_unix_addresses_and_modes_are_refused() {
    let cases: [(&str, &str); 5] = [
        ("address = \"unix:\"", "invalid Unix socket address"),
        ("address = \"unix:/run/fb/\"", "invalid Unix socket address"),
        (
            &*Box::leak(format!("address = \"unix:/{}\"", "a".repeat(120)).into_boxed_str()),
            "the kernel takes at most 107",
        ),
        (
            "address = \"unix:/tmp/x.sock\"\nunix_mode = \"0999\"",
            "invalid file mode",
        ),
        (
            "address = \"unix:/tmp/x.sock\"\nunix_mode = 0o1777",
            "invalid file mode",
        ),
    ];
    for (listener, want) in cases {
        let text = format!("[listener]\n{listener}\n");
        let err = fusebox::config::parse(&text, "bad.toml", None)
            .err()
            .unwrap_or_else(|| panic!("accepted: {listener}"))
            .to_string();
        assert!(err.contains(want), "{listener}: {err}");
        let line = 1 + listener.lines().count();
        assert!(
            err.contains(&format!("bad.toml:{line}:")),
            "{listener}: located: {err}"
        );
    }
    let ok = fusebox::config::parse(
        "[listener]\naddress = \"unix:/run/fusebox/fusebox.sock\"\nunix_mode = 0o660\n",
        "ok.toml",
        None,
    )
    .expect("valid");
    assert_eq!(ok.listener.unix_mode, 0o660);
}
