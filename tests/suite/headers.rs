//! Header rules of DESIGN.md "Headers": correlation and request ids (kept when valid,
//! else a new UUID v4, echoed, the same at the upstream), X-Service-Name, W3C
//! traceparent, propagated context headers, hop-by-hop removal before injection (the
//! `Connection: X-Correlation-ID` attack), X-Forwarded-For / X-Forwarded-Proto.

use crate::common::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

struct Setup {
    up: TestUpstream,
    fb: Fusebox,
    client: TestClient,
}

async fn setup() -> Setup {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let config = format!(
        "{}[correlation]\npropagate = [\"X-Tenant\"]\n\n{}{}",
        base_config(""),
        upstream_toml("app", &[up.addr], ""),
        route_toml("all", "/", "app", "")
    );
    let fb = spawn_fusebox(&config).await;
    Setup {
        up,
        fb,
        client: http1_client(),
    }
}

impl Setup {
    /// Sends a GET with `headers`; returns the reply and what the upstream received.
    async fn roundtrip(&self, headers: &[(&str, &str)]) -> (Reply, Recorded) {
        let raw: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        self.roundtrip_raw(&raw).await
    }

    /// As `roundtrip`, with header values as bytes (for non-UTF-8 values).
    async fn roundtrip_raw(&self, headers: &[(&str, &[u8])]) -> (Reply, Recorded) {
        let before = self.up.requests().len();
        let mut b = request(Method::GET, &self.fb.url("/h"));
        for (k, v) in headers {
            b = b.header(*k, http::HeaderValue::from_bytes(v).expect("header value"));
        }
        let r = send(&self.client, b.body(empty()).unwrap()).await;
        assert_eq!(r.status, 200, "body: {}", r.text());
        let reqs = self.up.requests();
        assert_eq!(reqs.len(), before + 1, "one request reached the upstream");
        (r, reqs[before].clone())
    }
}

/// A single header value at the upstream (exactly one).
fn one<'a>(rec: &'a Recorded, name: &str) -> &'a str {
    let n = rec.headers.get_all(name).iter().count();
    assert_eq!(
        n, 1,
        "{name} must reach the upstream exactly once: {:?}",
        rec.headers
    );
    rec.header(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_ids_are_kept_echoed_and_forwarded() {
    let s = setup().await;
    let long = "a".repeat(128);
    for (cid, rid) in [
        ("corr-1.a_b:C", "req-42"),
        ("X", "0"),
        (long.as_str(), "0af7651916cd43dd8448eb211c80319c"),
    ] {
        let (r, rec) = s
            .roundtrip(&[("x-correlation-id", cid), ("x-request-id", rid)])
            .await;
        assert_eq!(one(&rec, "x-correlation-id"), cid);
        assert_eq!(one(&rec, "x-request-id"), rid);
        assert_eq!(r.header("x-correlation-id"), Some(cid));
        assert_eq!(r.header("x-request-id"), Some(rid));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absent_ids_get_new_uuid_v4_echoed_and_forwarded() {
    let s = setup().await;
    let (r1, rec1) = s.roundtrip(&[]).await;
    let cid = one(&rec1, "x-correlation-id");
    let rid = one(&rec1, "x-request-id");
    assert!(is_uuid_v4(cid), "correlation id {cid:?} is not a UUID v4");
    assert!(is_uuid_v4(rid), "request id {rid:?} is not a UUID v4");
    assert_eq!(r1.header("x-correlation-id"), Some(cid));
    assert_eq!(r1.header("x-request-id"), Some(rid));
    let (r2, _) = s.roundtrip(&[]).await;
    assert_ne!(
        r2.header("x-correlation-id"),
        Some(cid),
        "ids are new per request"
    );
    assert_ne!(
        r2.header("x-request-id"),
        Some(rid),
        "ids are new per request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_or_invalid_ids_are_replaced() {
    let s = setup().await;
    let too_long = "b".repeat(129);
    let invalid: [&[u8]; 6] = [
        b"",
        b"has space",
        b"bad!id",
        b"semi;colon",
        too_long.as_bytes(),
        b"caf\xc3\xa9",
    ];
    for bad in invalid {
        let (r, rec) = s
            .roundtrip_raw(&[("x-correlation-id", bad), ("x-request-id", bad)])
            .await;
        let shown = String::from_utf8_lossy(bad);
        let cid = one(&rec, "x-correlation-id");
        let rid = one(&rec, "x-request-id");
        assert!(
            is_uuid_v4(cid),
            "invalid id {shown:?} replaced by a UUID v4, got {cid:?}"
        );
        assert!(
            is_uuid_v4(rid),
            "invalid id {shown:?} replaced by a UUID v4, got {rid:?}"
        );
        assert_eq!(r.header("x-correlation-id"), Some(cid));
        assert_eq!(r.header("x-request-id"), Some(rid));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn correlation_and_request_ids_are_independent() {
    let s = setup().await;
    let (r, rec) = s.roundtrip(&[("x-correlation-id", "flow-7")]).await;
    assert_eq!(one(&rec, "x-correlation-id"), "flow-7");
    assert!(is_uuid_v4(one(&rec, "x-request-id")));
    assert_eq!(r.header("x-request-id"), Some(one(&rec, "x-request-id")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_name_set_when_absent_and_kept_when_present() {
    let s = setup().await;
    let (_, rec) = s.roundtrip(&[]).await;
    assert_eq!(one(&rec, "x-service-name"), "fusion-test");
    let (_, rec) = s.roundtrip(&[("x-service-name", "gateway")]).await;
    assert_eq!(one(&rec, "x-service-name"), "gateway");
}

/// `00-<32 hex trace>-<16 hex parent>-<2 hex flags>`, all lower-case, ids not all zero.
fn parse_traceparent(v: &str) -> (&str, &str, &str) {
    let parts: Vec<&str> = v.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {v:?}");
    assert_eq!(parts[0], "00", "version of {v:?}");
    let lower_hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        parts[1].len() == 32 && lower_hex(parts[1]),
        "trace id of {v:?}"
    );
    assert!(
        parts[2].len() == 16 && lower_hex(parts[2]),
        "parent id of {v:?}"
    );
    assert!(parts[3].len() == 2 && lower_hex(parts[3]), "flags of {v:?}");
    assert!(
        parts[1].bytes().any(|b| b != b'0'),
        "all-zero trace id in {v:?}"
    );
    assert!(
        parts[2].bytes().any(|b| b != b'0'),
        "all-zero parent id in {v:?}"
    );
    (parts[1], parts[2], parts[3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_keeps_trace_id_with_a_new_parent_id() {
    let s = setup().await;
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    let (_, rec) = s.roundtrip(&[("traceparent", incoming.as_str())]).await;
    let (trace, parent, flags) = parse_traceparent(one(&rec, "traceparent"));
    assert_eq!(trace, TRACE, "trace id kept");
    assert_ne!(parent, PARENT, "a new parent id");
    assert_eq!(flags, "01", "flags kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_new_when_absent_or_invalid() {
    let s = setup().await;
    let (_, rec) = s.roundtrip(&[]).await;
    let (t1, _, _) = parse_traceparent(one(&rec, "traceparent"));
    let t1 = t1.to_owned();
    let (_, rec) = s.roundtrip(&[]).await;
    let (t2, _, _) = parse_traceparent(one(&rec, "traceparent"));
    assert_ne!(t1, t2, "each request without a trace starts a new one");

    let zero_trace = format!("00-{}-{PARENT}-01", "0".repeat(32));
    let short = format!("00-{}-{PARENT}-01", &TRACE[..31]);
    let upper = format!("00-{}-{PARENT}-01", TRACE.to_uppercase());
    for bad in [
        "garbage",
        zero_trace.as_str(),
        short.as_str(),
        upper.as_str(),
    ] {
        let (_, rec) = s.roundtrip(&[("traceparent", bad)]).await;
        let v = one(&rec, "traceparent");
        let (trace, _, _) = parse_traceparent(v);
        assert_ne!(trace, TRACE, "invalid {bad:?} must not be kept");
        assert_ne!(v, bad);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_headers_pass_through() {
    let s = setup().await;
    let (_, rec) = s
        .roundtrip(&[
            ("x-org-id", "org123"),
            ("x-camera-id", "cam-42"),
            ("x-tenant", "tenant-a"),
            ("x-anything-else", "kept"),
        ])
        .await;
    assert_eq!(one(&rec, "x-org-id"), "org123");
    assert_eq!(one(&rec, "x-camera-id"), "cam-42");
    assert_eq!(one(&rec, "x-tenant"), "tenant-a");
    assert_eq!(one(&rec, "x-anything-else"), "kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_appended_and_proto_set() {
    let s = setup().await;
    let (_, rec) = s.roundtrip(&[]).await;
    assert_eq!(rec.joined("x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&rec, "x-forwarded-proto"), "http");

    let (_, rec) = s
        .roundtrip(&[
            ("x-forwarded-for", "10.1.2.3"),
            ("x-forwarded-proto", "https"),
        ])
        .await;
    assert_eq!(rec.joined("x-forwarded-for"), "10.1.2.3, 127.0.0.1");
    assert_eq!(
        one(&rec, "x-forwarded-proto"),
        "http",
        "set by fusebox, not the caller"
    );

    let (_, rec) = s
        .roundtrip(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")])
        .await;
    assert_eq!(
        rec.joined("x-forwarded-for"),
        "10.0.0.1, 10.0.0.2, 127.0.0.1"
    );
}

/// Hop-by-hop headers, and every header the caller names in `Connection`, stop at
/// fusebox in both directions; other headers pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_both_ways() {
    let up = TestUpstream::start(
        Behaviour::ok("ok")
            .with_header("connection", "x-up-secret")
            .with_header("x-up-secret", "hidden")
            .with_header("keep-alive", "timeout=5")
            .with_header("proxy-connection", "keep-alive")
            .with_header("x-up-visible", "shown"),
    )
    .await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let mut conn = RawConn::connect(fb.addr).await;
    conn.write(
        b"GET /hop HTTP/1.1\r\n\
          Host: test.local\r\n\
          Connection: keep-alive, X-Secret, x-other-secret\r\n\
          Keep-Alive: timeout=5\r\n\
          Proxy-Connection: keep-alive\r\n\
          TE: trailers, deflate\r\n\
          Trailer: X-Checksum\r\n\
          X-Secret: s3cret\r\n\
          X-Other-Secret: s3cret2\r\n\
          X-Visible: yes\r\n\
          \r\n",
    )
    .await
    .unwrap();
    let resp = conn.read_response().await;
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    let rec = up.last();
    for h in [
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "x-secret",
        "x-other-secret",
    ] {
        assert!(
            rec.opt_header(h).is_none(),
            "{h} must not reach the upstream: {:?}",
            rec.headers
        );
    }
    let connection = rec.joined("connection").to_ascii_lowercase();
    assert!(
        !connection.contains("secret"),
        "the caller's Connection header reached the upstream: {connection:?}"
    );
    assert_eq!(rec.header("x-visible"), "yes");

    // Response side.
    assert_eq!(resp.header("x-up-visible"), Some("shown"));
    for h in ["x-up-secret", "proxy-connection"] {
        assert!(
            resp.header(h).is_none(),
            "{h} must not reach the caller: {:?}",
            resp.headers
        );
    }
    if let Some(c) = resp.header("connection") {
        assert!(
            !c.to_ascii_lowercase().contains("x-up-secret"),
            "connection: {c}"
        );
    }
    if let Some(k) = resp.header("keep-alive") {
        assert_ne!(
            k, "timeout=5",
            "the upstream's Keep-Alive reached the caller"
        );
    }
}

/// `Upgrade` (without a `Connection: upgrade`) is a hop-by-hop header too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_header_is_not_forwarded() {
    let s = setup().await;
    let (_, rec) = s.roundtrip(&[("upgrade", "websocket")]).await;
    assert!(rec.opt_header("upgrade").is_none(), "{:?}", rec.headers);
}

/// A caller that lists fusebox's own headers in `Connection` cannot strip them: the
/// upstream still gets the ids, traceparent, service name and forwarding headers, and
/// the ids it gets are the ones echoed to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_header_cannot_strip_fusebox_headers() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let fb = spawn_fusebox(&simple_config(up.addr)).await;
    let mut conn = RawConn::connect(fb.addr).await;
    conn.write(
        b"GET /attack HTTP/1.1\r\n\
          Host: test.local\r\n\
          Connection: X-Correlation-ID, X-Request-ID, traceparent, X-Service-Name, X-Forwarded-For, X-Forwarded-Proto\r\n\
          X-Correlation-ID: client-corr-1\r\n\
          X-Request-ID: client-req-1\r\n\
          \r\n",
    )
    .await
    .unwrap();
    let resp = conn.read_response().await;
    assert_eq!(resp.status, 200);
    let rec = up.last();
    let cid = rec.header("x-correlation-id");
    let rid = rec.header("x-request-id");
    assert!(!cid.is_empty() && !rid.is_empty());
    assert_eq!(
        resp.header("x-correlation-id"),
        Some(cid),
        "upstream and caller see one id"
    );
    assert_eq!(
        resp.header("x-request-id"),
        Some(rid),
        "upstream and caller see one id"
    );
    parse_traceparent(rec.header("traceparent"));
    assert_eq!(rec.header("x-service-name"), "fusion-test");
    assert_eq!(rec.joined("x-forwarded-for"), "127.0.0.1");
    assert_eq!(rec.header("x-forwarded-proto"), "http");
}
