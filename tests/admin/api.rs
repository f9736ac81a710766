//! Every admin endpoint's status and JSON shape, the bearer token, and the errors.

use crate::*;

/// Proves: every read endpoint answers 200 with the documented shape, unknown paths
/// 404 and wrong methods 405 with `Allow`, all as JSON.
#[tokio::test]
async fn read_endpoints_answer_with_their_documented_shapes() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let down = closed_port();
    let toml = format!(
        "{}{}{}[[routes]]\nname = \"detect\"\npath_prefix = \"/detect\"\nupstream = \"yolo\"\n\n\
         [[routes]]\nname = \"ocr\"\npath_prefix = \"/ocr\"\nupstream = \"ocr\"\n",
        base(""),
        upstream("yolo", &[up.addr, down], ""),
        upstream("ocr", &[up.addr], ""),
    );
    let p = start(&toml).await;

    let cb = p.admin_json("/circuit_breakers").await;
    assert_eq!(keys(&cb), ["ocr", "yolo"]);
    let yolo = &cb["yolo"];
    assert_eq!(keys(yolo), ["endpoints", "state"]);
    assert_eq!(yolo["state"], "closed");
    let mut eps = vec![up.addr.to_string(), down.to_string()];
    eps.sort();
    assert_eq!(keys(&yolo["endpoints"]), eps);
    let ep = &yolo["endpoints"][up.addr.to_string()];
    assert_eq!(keys(ep), STATS_KEYS);
    assert_eq!(ep["state"], "closed");
    assert_eq!(ep["failure_count"], 0);
    assert_eq!(ep["times_opened"], 0);
    assert_eq!(ep["healthy"], true);

    let health = p.admin_json("/health").await;
    assert_eq!(
        keys(&health),
        ["config_version", "resilience_stats", "service", "status"]
    );
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["service"], "fusion-test");
    assert_eq!(
        health["config_version"],
        fusebox::config::content_hash(&toml)
    );
    assert_eq!(health["resilience_stats"]["circuit_breakers"], cb);

    let live = p.admin_get("/health/live").await;
    assert_eq!(live.status, 200);
    assert_eq!(live.json()["status"], "alive");
    let ready = p.admin_get("/health/ready").await;
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");

    let cfg = p.admin_json("/config").await;
    assert_eq!(
        keys(&cfg),
        ["config", "last_reload", "loaded_at", "version"]
    );
    assert_eq!(cfg["version"], fusebox::config::content_hash(&toml));
    assert!(cfg["last_reload"].is_null());
    let loaded = cfg["loaded_at"].as_str().expect("loaded_at");
    humantime::parse_rfc3339(loaded).unwrap_or_else(|e| panic!("{loaded}: {e}"));
    assert!(loaded.ends_with('Z'), "UTC: {loaded}");
    let c = &cfg["config"];
    assert_eq!(
        keys(c),
        [
            "admin",
            "correlation",
            "limits",
            "listener",
            "logging",
            "routes",
            "service",
            "source",
            "tracing",
            "upstreams"
        ]
    );
    assert_eq!(c["admin"]["token"], Value::Null, "no token configured");
    assert_eq!(c["listener"]["shutdown_timeout"], "5s");
    assert_eq!(c["listener"]["max_request_body"], 32 * 1024 * 1024);
    assert_eq!(c["upstreams"]["yolo"]["timeouts"]["request"], "15s");
    assert_eq!(
        c["upstreams"]["yolo"]["circuit_breaker"]["failure_threshold"],
        1000
    );
    assert_eq!(
        c["upstreams"]["yolo"]["retry"]["max_replay_body"],
        4 * 1024 * 1024
    );
    assert_eq!(c["routes"][1]["name"], "ocr");
    assert_eq!(c["routes"][0]["timeout"], "30s");

    let m = p.admin_get("/metrics").await;
    assert_eq!(m.status, 200);
    assert_eq!(m.header("content-type"), Some("text/plain; version=0.0.4"));
    let text = m.text();
    for (svc, addr) in [("yolo", up.addr), ("yolo", down), ("ocr", up.addr)] {
        assert_eq!(breaker_gauge(&text, svc, addr), Some(0.0), "{text}");
    }

    // HEAD answers like GET, without a body.
    let head = p.admin(Method::HEAD, "/health", None).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    let nf = p.admin_get("/nope").await;
    assert_admin_error(&nf, 404, "NOT_FOUND");
    assert_admin_error(
        &p.admin_get("/circuit_breakers/yolo").await,
        404,
        "NOT_FOUND",
    );
    let wrong = p.admin_post("/metrics").await;
    assert_admin_error(&wrong, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
    let wrong = p.admin_get("/circuit_breakers/yolo/reset").await;
    assert_admin_error(&wrong, 405, "METHOD_NOT_ALLOWED");
    assert_eq!(wrong.header("allow"), Some("POST"));
    assert_admin_error(
        &p.admin(Method::DELETE, "/config", None).await,
        405,
        "METHOD_NOT_ALLOWED",
    );

    // The admin API is not on the data port (these paths are just unrouted there).
    let r = p.data_get("/circuit_breakers").await;
    assert_fusebox_error(&r, 404, "NO_ROUTE", None);
    assert!(p.running.shutdown().await);
}

/// Proves: with `token_env` set, mutations answer 401 (with `WWW-Authenticate`) without
/// the bearer token or with a wrong one and 200 with it; reads need no token; `/config`
/// shows the token only as `<redacted>`.
#[tokio::test]
async fn mutations_need_the_bearer_token_when_one_is_configured() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(&format!("token_env = \"{TOKEN_ENV}\"")),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    let ep = up.addr.to_string();
    for path in [
        "/circuit_breakers/yolo/reset".to_owned(),
        format!("/circuit_breakers/yolo/{ep}/reset"),
        format!("/circuit_breakers/yolo/{ep}/open"),
        "/circuit_breakers/no-such-upstream/reset".to_owned(),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cret-toke"),
            Some("Bearer s3cret-tokenx"),
            Some("Basic czNjcmV0LXRva2Vu"),
            Some(TOKEN),
        ] {
            let r = p.admin(Method::POST, &path, auth).await;
            assert_admin_error(&r, 401, "UNAUTHORIZED");
            assert_eq!(
                r.header("www-authenticate"),
                Some("Bearer realm=\"fusebox-admin\"")
            );
        }
    }
    let bearer = format!("Bearer {TOKEN}");
    let r = p
        .admin(
            Method::POST,
            &format!("/circuit_breakers/yolo/{ep}/open"),
            Some(&bearer),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["circuit_breaker"]["state"], "open");
    let r = p
        .admin(Method::POST, "/circuit_breakers/yolo/reset", Some(&bearer))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["circuit_breaker"]["state"], "closed");
    // With the token, an unknown upstream is a 404 (not before: names are not leaked).
    let r = p
        .admin(Method::POST, "/circuit_breakers/nope/reset", Some(&bearer))
        .await;
    assert_admin_error(&r, 404, "UNKNOWN_UPSTREAM");

    for path in [
        "/circuit_breakers",
        "/health",
        "/health/ready",
        "/config",
        "/metrics",
    ] {
        assert_eq!(p.admin_get(path).await.status, 200, "{path} needs no token");
    }
    let cfg = p.admin_get("/config").await;
    assert!(!cfg.text().contains(TOKEN), "token leaked: {}", cfg.text());
    let admin = &cfg.json()["config"]["admin"];
    assert_eq!(admin["token"], "<redacted>");
    assert_eq!(admin["token_env"], TOKEN_ENV);
    assert!(p.running.shutdown().await);
}

/// Proves: an unknown upstream or endpoint is a JSON 404 naming it; a bad escape is 400.
#[tokio::test]
async fn unknown_upstream_or_endpoint_is_404() {
    let up = TestUpstream::start(Behaviour::ok("ok")).await;
    let toml = format!(
        "{}{}[[routes]]\npath_prefix = \"/\"\nupstream = \"yolo\"\n",
        base(""),
        upstream("yolo", &[up.addr], ""),
    );
    let p = start(&toml).await;
    let v = assert_admin_error(
        &p.admin_post("/circuit_breakers/nope/reset").await,
        404,
        "UNKNOWN_UPSTREAM",
    );
    assert_eq!(v["error"]["upstream"], "nope");
    for action in ["reset", "open"] {
        let v = assert_admin_error(
            &p.admin_post(&format!("/circuit_breakers/nope/{}/{action}", up.addr))
                .await,
            404,
            "UNKNOWN_UPSTREAM",
        );
        assert_eq!(v["error"]["upstream"], "nope");
        let v = assert_admin_error(
            &p.admin_post(&format!("/circuit_breakers/yolo/127.0.0.1:1/{action}"))
                .await,
            404,
            "UNKNOWN_ENDPOINT",
        );
        assert_eq!(v["error"]["endpoint"], "127.0.0.1:1");
        assert!(v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&up.addr.to_string())));
    }
    assert_admin_error(
        &p.admin_post("/circuit_breakers/yolo/127.0.0.1%3/reset")
            .await,
        400,
        "BAD_REQUEST",
    );
    assert!(p.running.shutdown().await);
}
