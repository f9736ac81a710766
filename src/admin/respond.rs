//! Small helpers of the admin API: JSON answers, the error bodies (401, 405, bad
//! encoding), and decoding of URL-encoded path segments (`127.0.0.1%3A9001`).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{json, Map, Value};

/// `value` as pretty JSON (operators read these with curl) with a trailing newline.
pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_else(|_| b"null".to_vec());
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `value` as compact JSON: for the large arrays of `/stats/timeline`, which the status
/// page reads every few seconds.
pub(super) fn json_compact_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `{"error": {"code", "message", ...extra}}`, the data port's error shape.
pub(super) fn error(
    status: StatusCode,
    code: &str,
    message: String,
    extra: &[(&str, &str)],
) -> Response<Full<Bytes>> {
    let mut e = Map::new();
    e.insert("code".into(), json!(code));
    e.insert("message".into(), json!(message));
    for (k, v) in extra {
        e.insert((*k).into(), json!(v));
    }
    json_response(status, &json!({ "error": e }))
}

/// 401 for a mutation without the right bearer token; logged with the caller.
pub(super) fn unauthorized(req: &Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    tracing::warn!(
        event = "admin_denied",
        caller = %peer,
        method = %req.method(),
        path = req.uri().path(),
        "admin request refused: missing or wrong bearer token"
    );
    let mut resp = error(
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "this endpoint needs `Authorization: Bearer <token>` (admin.token_env)".into(),
        &[],
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"fusebox-admin\""),
    );
    resp
}

/// 400 for a path segment that is not valid URL-encoded UTF-8.
pub(super) fn bad_encoding(seg: &str) -> Response<Full<Bytes>> {
    error(
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
        format!("path segment {seg:?} is not valid URL-encoded UTF-8"),
        &[],
    )
}

/// 405 with the methods that work in `Allow`.
pub(super) fn method_not_allowed(method: &Method, allow: &'static str) -> Response<Full<Bytes>> {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed here; use {allow}"),
        &[],
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

/// Decodes `%XX` escapes of one path segment; `None` for a bad escape or non-UTF-8.
pub(super) fn percent_decode(seg: &str) -> Option<String> {
    let b = seg.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_segments() {
        assert_eq!(percent_decode("yolo").as_deref(), Some("yolo"));
        assert_eq!(
            percent_decode("127.0.0.1%3A9001").as_deref(),
            Some("127.0.0.1:9001")
        );
        assert_eq!(
            percent_decode("%5B%3a%3A1%5D%3A9001").as_deref(),
            Some("[::1]:9001")
        );
        assert_eq!(percent_decode("a%2Fb").as_deref(), Some("a/b"));
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%3"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }
}
