//! TLS end to end, with certificates generated at test time: callers reach fusebox
//! over TLS (HTTP/1.1 or h2 as ALPN chooses), optionally proving who they are with a
//! client certificate; fusebox reaches upstreams over TLS (`https`, `h2`) trusting a
//! private CA and presenting its own certificate when configured; and a rotated
//! listener certificate is served to new connections while open ones carry on.

use std::time::Duration;

use crate::common::tls::*;
use crate::common::*;

fn route_all(upstream: &str) -> String {
    route_toml("all", "/", upstream, "")
}

/// A listener with TLS from `leaf` (and `client_ca`) in front of a plain upstream.
async fn tls_fusebox(leaf: &Leaf, client_ca: Option<&std::path::Path>) -> (Fusebox, TestUpstream) {
    let up = TestUpstream::start(Behaviour::ok("plain upstream")).await;
    let cfg = format!(
        "{}{}{}",
        base_config(&listener_tls(leaf, client_ca)),
        upstream_toml("app", &[up.addr], ""),
        route_all("app")
    );
    (spawn_fusebox(&cfg).await, up)
}

/// The `[upstreams.app]` lines for a TLS upstream trusting `ca`.
fn upstream_tls(protocol: &str, ca: &std::path::Path, client: Option<&Leaf>) -> String {
    let client = client
        .map(|l| {
            format!(
                ", client_cert = \"{}\", client_key = \"{}\"",
                l.cert.display(),
                l.key.display()
            )
        })
        .unwrap_or_default();
    format!(
        "protocol = \"{protocol}\"\ntls = {{ ca = \"{}\", server_name = \"localhost\"{client} }}",
        ca.display()
    )
}

/// A plain listener in front of the TLS upstream at `up`.
async fn fusebox_to(up: &TlsUpstream, upstream_lines: &str) -> Fusebox {
    let cfg = format!(
        "{}{}{}",
        base_config(""),
        upstream_toml("app", &[up.addr], upstream_lines),
        route_all("app")
    );
    spawn_fusebox(&cfg).await
}

async fn get_plain(fb: &Fusebox, path: &str) -> Reply {
    send(
        &http1_client(),
        request(Method::GET, &fb.url(path)).body(empty()).unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_serves_http1_and_h2_chosen_by_alpn() {
    let pki = Pki::generate();
    let leaf = pki.server("listener");
    let (fb, up) = tls_fusebox(&leaf, None).await;

    let mut c = tls_connect(fb.addr, pki.client_config(&[b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(c.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(c.server_cert, leaf.der, "the configured certificate");
    let r = c.get("/over/http1").await.unwrap();
    assert_eq!((r.status.as_u16(), r.version), (200, Version::HTTP_11));
    assert_eq!(r.text(), "plain upstream");
    let rec = up.last();
    assert_eq!(rec.path_and_query(), "/over/http1");
    assert_eq!(rec.header("x-forwarded-proto"), "https");

    // Offering both, the caller gets h2 (the listener prefers it).
    let mut c = tls_connect(fb.addr, pki.client_config(&[b"h2", b"http/1.1"], None))
        .await
        .unwrap();
    assert_eq!(c.alpn.as_deref(), Some(&b"h2"[..]));
    for i in 0..3 {
        let r = c.get(&format!("/over/h2/{i}")).await.unwrap();
        assert_eq!((r.status.as_u16(), r.version), (200, Version::HTTP_2));
    }
    assert_eq!(up.last().path_and_query(), "/over/h2/2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_is_verified_against_the_private_ca() {
    let pki = Pki::generate();
    let up = TlsUpstream::start(pki.server_config(&pki.server("upstream"), false)).await;
    let fb = fusebox_to(&up, &upstream_tls("https", &pki.ca_path, None)).await;
    let r = get_plain(&fb, "/detect").await;
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert_eq!(r.text(), "tls upstream");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(seen[0].version, Version::HTTP_11);
    assert_eq!(seen[0].path, "/detect");
    assert!(!seen[0].client_cert);

    // An upstream whose certificate another CA signed is refused.
    let stranger = Pki::generate();
    let rogue = TlsUpstream::start(stranger.server_config(&stranger.server("rogue"), false)).await;
    let fb = fusebox_to(&rogue, &upstream_tls("https", &pki.ca_path, None)).await;
    let r = get_plain(&fb, "/detect").await;
    assert_eq!(r.status, 502, "body: {}", r.text());
    assert!(
        rogue.seen().is_empty(),
        "no request reached the rogue upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream_is_negotiated_by_alpn() {
    let pki = Pki::generate();
    let up = TlsUpstream::start(pki.server_config(&pki.server("upstream"), false)).await;
    let fb = fusebox_to(&up, &upstream_tls("h2", &pki.ca_path, None)).await;
    for i in 0..3 {
        let r = get_plain(&fb, &format!("/reid/{i}")).await;
        assert_eq!(r.status, 200, "body: {}", r.text());
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 3);
    for s in &seen {
        assert_eq!(s.alpn.as_deref(), Some(&b"h2"[..]));
        assert_eq!(s.version, Version::HTTP_2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_presents_the_configured_client_certificate() {
    let pki = Pki::generate();
    let up = TlsUpstream::start(pki.server_config(&pki.server("upstream"), true)).await;
    let client = pki.client("fusebox");
    let fb = fusebox_to(&up, &upstream_tls("https", &pki.ca_path, Some(&client))).await;
    let r = get_plain(&fb, "/ocr").await;
    assert_eq!(r.status, 200, "body: {}", r.text());
    assert!(up.seen()[0].client_cert, "client certificate presented");

    // Without one, the upstream refuses the connection: nothing is served.
    let fb = fusebox_to(&up, &upstream_tls("https", &pki.ca_path, None)).await;
    let r = get_plain(&fb, "/ocr").await;
    assert_eq!(r.status, 502, "body: {}", r.text());
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_mtls_accepts_the_right_client_certificate_and_refuses_others() {
    let pki = Pki::generate();
    let (fb, up) = tls_fusebox(&pki.server("listener"), Some(&pki.ca_path)).await;

    let good = pki.client("camera-ingest");
    let mut c = tls_connect(fb.addr, pki.client_config(&[b"http/1.1"], Some(&good)))
        .await
        .unwrap();
    let r = c.get("/with-cert").await.unwrap();
    assert_eq!(r.status, 200);

    let stranger = Pki::generate();
    let foreign = stranger.client("intruder");
    let alpn: &[&[u8]] = &[b"http/1.1"];
    for (what, client) in [("no", None), ("a foreign", Some(&foreign))] {
        // TLS 1.2: the listener judges the client certificate before it sends its own
        // Finished, so the handshake itself fails.
        let tls12 = pki.client_config_versions(alpn, client, &[&rustls::version::TLS12]);
        let r = tls_connect(fb.addr, tls12).await;
        assert!(
            r.is_err(),
            "TLS 1.2 with {what} client certificate: the handshake completed"
        );
        // TLS 1.3: the caller's side of the handshake ends before the listener judges
        // its certificate; the listener's alert then fails the first request.
        let tls13 = pki.client_config_versions(alpn, client, &[&rustls::version::TLS13]);
        let mut c = tls_connect(fb.addr, tls13)
            .await
            .unwrap_or_else(|e| panic!("TLS 1.3 with {what} client certificate: {e}"));
        let r = c.get("/without-cert").await;
        assert!(
            r.is_err(),
            "a caller with {what} client certificate was served: {r:?}"
        );
    }
    assert_eq!(
        up.hits(),
        1,
        "only the authenticated request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificate_is_served_and_open_connections_survive() {
    let pki = Pki::generate();
    let first = pki.server("listener");
    let (fb, up) = tls_fusebox(&first, None).await;
    let alpn: &[&[u8]] = &[b"http/1.1"];

    let mut before = tls_connect(fb.addr, pki.client_config(alpn, None))
        .await
        .unwrap();
    assert_eq!(before.server_cert, first.der);
    assert_eq!(before.get("/before").await.unwrap().status, 200);

    // cert-manager rewrites the same files.
    let second = pki.server("listener");
    assert_ne!(second.der, first.der);
    let bound = Duration::from_secs(15);
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        let mut c = tls_connect(fb.addr, pki.client_config(alpn, None))
            .await
            .unwrap();
        if c.server_cert == second.der {
            assert_eq!(c.get("/after").await.unwrap().status, 200);
            break;
        }
        assert_eq!(
            c.server_cert, first.der,
            "only the old or the new certificate"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificate was not served within {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The connection opened before the rotation keeps its session and still works.
    let r = before.get("/kept").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.last().path_and_query(), "/kept");
}
