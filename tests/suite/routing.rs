//! Route matching (DESIGN.md): exact host > wildcard host > no host, then the longest
//! path prefix (whole segments), then method and header constraints; ties go to the
//! earlier route; `strip_prefix` rewrites the path sent upstream. Each route here has
//! its own upstream answering with the route's name, so the body says which matched.

use crate::common::*;

/// Starts one upstream per route name and a proxy with `routes` (each a name and the
/// extra lines of its `[[routes]]` entry, whose upstream is named after it).
async fn setup(routes: &[(&str, &str)]) -> (Fusebox, Vec<TestUpstream>) {
    let mut config = base_config("");
    let mut ups = Vec::new();
    for (name, _) in routes {
        let up = TestUpstream::start(Behaviour::ok(name.to_string())).await;
        config.push_str(&upstream_toml(&format!("u_{name}"), &[up.addr], ""));
        ups.push(up);
    }
    for (name, extra) in routes {
        config.push_str(&format!(
            "[[routes]]\nname = \"{name}\"\nupstream = \"u_{name}\"\n{extra}\n\n"
        ));
    }
    (spawn_fusebox(&config).await, ups)
}

/// Which route served `method path` with these headers ("NO_ROUTE" when none).
async fn which(fb: &Fusebox, method: Method, path: &str, headers: &[(&str, &str)]) -> String {
    let mut b = request(method.clone(), &fb.url(path));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let r = send(&http1_client(), b.body(empty()).unwrap()).await;
    if r.status == 404 && r.header("x-fusebox-error") == Some("NO_ROUTE") {
        return "NO_ROUTE".into();
    }
    assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
    r.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_host_beats_wildcard_beats_no_host() {
    let (fb, _ups) = setup(&[
        ("any", "path_prefix = \"/\""),
        ("any_long", "path_prefix = \"/v1/detect\""),
        ("wild", "host = \"*.example.com\"\npath_prefix = \"/\""),
        ("exact", "host = \"api.example.com\"\npath_prefix = \"/\""),
    ])
    .await;
    let h = |host: &'static str| [("host", host)];
    assert_eq!(
        which(&fb, Method::GET, "/x", &h("api.example.com")).await,
        "exact"
    );
    assert_eq!(
        which(&fb, Method::GET, "/x", &h("API.Example.COM")).await,
        "exact"
    );
    assert_eq!(
        which(&fb, Method::GET, "/x", &h("api.example.com:8443")).await,
        "exact"
    );
    assert_eq!(
        which(&fb, Method::GET, "/x", &h("cam.example.com")).await,
        "wild"
    );
    assert_eq!(
        which(&fb, Method::GET, "/x", &h("a.b.example.com")).await,
        "wild"
    );
    // The bare domain is not under its wildcard.
    assert_eq!(
        which(&fb, Method::GET, "/x", &h("example.com")).await,
        "any"
    );
    assert_eq!(which(&fb, Method::GET, "/x", &h("other.org")).await, "any");
    // Host rank comes before prefix length.
    assert_eq!(
        which(&fb, Method::GET, "/v1/detect", &h("api.example.com")).await,
        "exact"
    );
    assert_eq!(
        which(&fb, Method::GET, "/v1/detect", &h("cam.example.com")).await,
        "wild"
    );
    assert_eq!(
        which(&fb, Method::GET, "/v1/detect", &h("other.org")).await,
        "any_long"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_routes_do_not_match_other_hosts() {
    let (fb, _ups) = setup(&[("exact", "host = \"yolo.local\"\npath_prefix = \"/\"")]).await;
    assert_eq!(
        which(&fb, Method::GET, "/", &[("host", "yolo.local")]).await,
        "exact"
    );
    assert_eq!(
        which(&fb, Method::GET, "/", &[("host", "ocr.local")]).await,
        "NO_ROUTE"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn longest_prefix_by_whole_segments() {
    let (fb, _ups) = setup(&[
        ("root", "path_prefix = \"/\""),
        ("detect", "path_prefix = \"/detect\""),
        ("batch", "path_prefix = \"/detect/batch\""),
    ])
    .await;
    for (path, route) in [
        ("/", "root"),
        ("/other", "root"),
        ("/detect", "detect"),
        ("/detect/", "detect"),
        ("/detect/one?x=1", "detect"),
        ("/detect/batch", "batch"),
        ("/detect/batch/7", "batch"),
        ("/detect/batchy", "detect"),
        ("/detection", "root"),
        ("/detectx/batch", "root"),
    ] {
        assert_eq!(which(&fb, Method::GET, path, &[]).await, route, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_constrain_and_outrank_unconstrained_routes() {
    let (fb, _ups) = setup(&[
        ("plain", "path_prefix = \"/infer\""),
        (
            "post_only",
            "path_prefix = \"/infer\"\nmethods = [\"POST\", \"PUT\"]",
        ),
        (
            "only_delete",
            "path_prefix = \"/admin\"\nmethods = [\"DELETE\"]",
        ),
    ])
    .await;
    assert_eq!(which(&fb, Method::POST, "/infer", &[]).await, "post_only");
    assert_eq!(which(&fb, Method::PUT, "/infer/x", &[]).await, "post_only");
    assert_eq!(which(&fb, Method::GET, "/infer", &[]).await, "plain");
    assert_eq!(
        which(&fb, Method::DELETE, "/admin", &[]).await,
        "only_delete"
    );
    assert_eq!(which(&fb, Method::GET, "/admin", &[]).await, "NO_ROUTE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_constraints_select_a_route() {
    let (fb, _ups) = setup(&[
        ("plain", "path_prefix = \"/detect\""),
        (
            "org",
            "path_prefix = \"/detect\"\nheaders = { \"X-Org-ID\" = \"org123\" }",
        ),
    ])
    .await;
    assert_eq!(
        which(&fb, Method::GET, "/detect", &[("x-org-id", "org123")]).await,
        "org"
    );
    assert_eq!(
        which(&fb, Method::GET, "/detect", &[("X-Org-ID", "org123")]).await,
        "org"
    );
    assert_eq!(
        which(&fb, Method::GET, "/detect", &[("x-org-id", "org999")]).await,
        "plain"
    );
    assert_eq!(which(&fb, Method::GET, "/detect", &[]).await, "plain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_go_to_the_earlier_route() {
    let (fb, ups) = setup(&[
        ("first", "path_prefix = \"/tie\""),
        ("second", "path_prefix = \"/tie\""),
        ("m_first", "path_prefix = \"/m\"\nmethods = [\"GET\"]"),
        ("m_second", "path_prefix = \"/m\"\nmethods = [\"GET\"]"),
    ])
    .await;
    for _ in 0..3 {
        assert_eq!(which(&fb, Method::GET, "/tie/x", &[]).await, "first");
        assert_eq!(which(&fb, Method::GET, "/m", &[]).await, "m_first");
    }
    assert_eq!(ups[1].hits(), 0);
    assert_eq!(ups[3].hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_rewrites_the_upstream_path() {
    let (fb, ups) = setup(&[
        ("api", "path_prefix = \"/api\"\nstrip_prefix = \"/api\""),
        ("keep", "path_prefix = \"/keep\""),
    ])
    .await;
    for (path, seen) in [
        ("/api/v1/detect?model=yolo", "/v1/detect?model=yolo"),
        ("/api", "/"),
        ("/api/", "/"),
    ] {
        assert_eq!(which(&fb, Method::GET, path, &[]).await, "api");
        assert_eq!(ups[0].last().path_and_query(), seen, "{path}");
    }
    assert_eq!(which(&fb, Method::GET, "/keep/x?y=1", &[]).await, "keep");
    assert_eq!(ups[1].last().path_and_query(), "/keep/x?y=1");
}

/// One raw HTTP/1.x request on a fresh connection; its response.
async fn raw(fb: &Fusebox, req: &str) -> RawResponse {
    let mut conn = RawConn::connect(fb.addr).await;
    conn.write(req.as_bytes()).await.expect("sent");
    conn.read_response().await
}

fn assert_bad_request(r: &RawResponse, what: &str) {
    assert_eq!(
        r.status,
        400,
        "{what}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("x-fusebox-error"), Some("BAD_REQUEST"), "{what}");
}

/// RFC 9112 3.2 and 3.2.2: the host that picks the route is the host the upstream
/// sees. An absolute-form target's authority replaces `Host`; two `Host` headers, an
/// invalid one, or none on HTTP/1.1 are refused with 400 (an HTTP/1.0 request may
/// omit it and gets the endpoint's address as `Host` upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_routed_host_is_the_forwarded_host() {
    let (fb, ups) = setup(&[
        ("hostb", "host = \"b.local\"\npath_prefix = \"/\""),
        ("any", "path_prefix = \"/\""),
    ])
    .await;
    let r = raw(
        &fb,
        "GET http://b.local/x HTTP/1.1\r\nHost: a.local\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, &r.body[..]), (200, &b"hostb"[..]));
    assert_eq!(ups[0].last().header("host"), "b.local");
    assert_eq!(ups[0].last().uri.path(), "/x");
    let r = raw(
        &fb,
        "GET http://a.local/y HTTP/1.1\r\nHost: b.local\r\n\r\n",
    )
    .await;
    assert_eq!((r.status, &r.body[..]), (200, &b"any"[..]));
    assert_eq!(ups[1].last().header("host"), "a.local");

    for (what, req) in [
        (
            "two Host headers",
            "GET /x HTTP/1.1\r\nHost: a.local\r\nHost: b.local\r\n\r\n",
        ),
        (
            "user info in Host",
            "GET /x HTTP/1.1\r\nHost: user@b.local\r\n\r\n",
        ),
        (
            "a space in Host",
            "GET /x HTTP/1.1\r\nHost: b.local extra\r\n\r\n",
        ),
        (
            "a port out of range",
            "GET /x HTTP/1.1\r\nHost: b.local:99999\r\n\r\n",
        ),
        ("no Host on HTTP/1.1", "GET /x HTTP/1.1\r\n\r\n"),
        (
            "CONNECT",
            "CONNECT b.local:443 HTTP/1.1\r\nHost: b.local:443\r\n\r\n",
        ),
    ] {
        assert_bad_request(&raw(&fb, req).await, what);
    }
    assert_eq!(
        ups[0].requests().len() + ups[1].requests().len(),
        2,
        "none forwarded"
    );

    let r = raw(&fb, "GET /old HTTP/1.0\r\n\r\n").await;
    assert_eq!((r.status, &r.body[..]), (200, &b"any"[..]));
    assert_eq!(ups[1].last().header("host"), ups[1].addr.to_string());
}

/// Dot segments are resolved before routing (RFC 3986 5.2.4, `%2e` too): a caller
/// cannot reach the `admin` route's upstream through the `detect` route with
/// `/detect/../admin`, and the upstream gets the resolved path with its query. A path
/// that climbs above the root is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_resolved_before_routing() {
    let (fb, ups) = setup(&[
        ("detect", "path_prefix = \"/detect\""),
        ("admin", "path_prefix = \"/admin\""),
    ])
    .await;
    for path in [
        "/detect/../admin/secret?a=1",
        "/detect/%2e%2E/admin/secret?a=1",
        "/admin/./secret?a=1",
    ] {
        let r = raw(&fb, &format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")).await;
        assert_eq!((r.status, &r.body[..]), (200, &b"admin"[..]), "{path}");
        let seen = ups[1].last();
        assert_eq!(
            seen.uri.path_and_query().map(|p| p.as_str()),
            Some("/admin/secret?a=1"),
            "{path}"
        );
    }
    assert!(ups[0].requests().is_empty());
    assert_bad_request(
        &raw(&fb, "GET /detect/../../etc HTTP/1.1\r\nHost: t\r\n\r\n").await,
        "above the root",
    );
}
