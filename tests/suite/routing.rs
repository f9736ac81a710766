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
