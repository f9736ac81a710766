//! Validation of the process-wide tables: `[limits]` and `[tracing]`.

use http::{HeaderName, HeaderValue};

use super::ctx::Ctx;
use super::defaults::*;
use super::error::Path;
use super::file::{LimitsFile, TracingFile};
use super::policy::needs;
use super::types::{LimitsConfig, TracingConfig};
use super::units;

pub fn limits(cx: &mut Ctx, f: &LimitsFile, p: &Path) -> LimitsConfig {
    let hp = p.key("priority_header");
    let priority_header = cx
        .opt_string(&hp, f.priority_header.as_ref())
        .and_then(|name| cx.header_name(&hp, &name))
        .unwrap_or_else(|| HeaderName::from_static(DEFAULT_PRIORITY_HEADER));
    LimitsConfig {
        max_buffered_body_bytes: cx.size(
            &p.key("max_buffered_body_bytes"),
            f.max_buffered_body_bytes.as_ref(),
            DEFAULT_MAX_BUFFERED_BODY_BYTES,
            MAX_BUFFERED_BODY_BYTES_BOUNDS,
        ),
        priority_header,
    }
}

/// `None` (off) without the table, without `otlp_endpoint`, or when the endpoint is
/// empty after interpolation (so `"${OTLP_ENDPOINT:-}"` switches tracing per
/// environment). The other keys are checked whenever the endpoint is written; without
/// it they are refused, as keys that have no effect.
pub fn tracing(
    cx: &mut Ctx,
    f: Option<&TracingFile>,
    service_name: &str,
    p: &Path,
) -> Option<TracingConfig> {
    let f = f?;
    let Some(raw) = &f.otlp_endpoint else {
        let given = [
            ("sample_ratio", f.sample_ratio.is_some()),
            ("headers", f.headers.is_some()),
            ("service_name", f.service_name.is_some()),
            ("max_queue", f.max_queue.is_some()),
            ("export_timeout", f.export_timeout.is_some()),
        ];
        for (key, given) in given {
            needs(cx, p, key, given, "otlp_endpoint");
        }
        return None;
    };
    let ep = p.key("otlp_endpoint");
    let endpoint = cx
        .string(&ep, raw)
        .filter(|s| !s.trim().is_empty())
        .and_then(|s| {
            units::parse_otlp_endpoint(&s)
                .map_err(|msg| cx.problem(&ep, msg))
                .ok()
        });
    let sample_ratio = cx.float(
        &p.key("sample_ratio"),
        f.sample_ratio,
        DEFAULT_TRACING_SAMPLE_RATIO,
        TRACING_SAMPLE_RATIO_BOUNDS,
    );
    let hp = p.key("headers");
    let mut headers = Vec::new();
    for (key, raw) in f.headers.iter().flat_map(|h| &h.0) {
        let path = hp.key(key);
        let name = cx.header_name(&path, key);
        let value = cx
            .string(&path, raw)
            .and_then(|v| secret_value(cx, &path, &v));
        if let (Some(n), Some(v)) = (name, value) {
            headers.push((n, v));
        }
    }
    let service_name = cx.nonempty(
        &p.key("service_name"),
        f.service_name.as_ref(),
        service_name,
    );
    if f.service_name.is_none() {
        // Defaulted from `service.name`: a value from `${VAR}` stays redacted here too.
        let from_env = cx
            .interpolated
            .iter()
            .any(|i| i.to_string() == "service.name");
        if from_env {
            cx.interpolated.push(p.key("service_name"));
        }
    }
    let max_queue = cx.int(
        &p.key("max_queue"),
        f.max_queue,
        DEFAULT_TRACING_MAX_QUEUE,
        TRACING_MAX_QUEUE_BOUNDS,
    );
    let export_timeout = cx.duration(
        &p.key("export_timeout"),
        f.export_timeout.as_ref(),
        DEFAULT_TRACING_EXPORT_TIMEOUT,
        TRACING_EXPORT_TIMEOUT_BOUNDS,
    );
    let (otlp_endpoint, traces_url) = endpoint?;
    Some(TracingConfig {
        otlp_endpoint,
        traces_url,
        sample_ratio,
        headers,
        service_name,
        max_queue,
        export_timeout,
    })
}

/// A header value that may be a secret: marked sensitive, and never quoted in errors.
fn secret_value(cx: &mut Ctx, path: &Path, value: &str) -> Option<HeaderValue> {
    match HeaderValue::from_str(value) {
        Ok(mut v) => {
            v.set_sensitive(true);
            Some(v)
        }
        Err(_) => {
            cx.problem(
                path,
                "invalid header value: control characters are not allowed (the value is not shown, as it may be a secret)",
            );
            None
        }
    }
}
