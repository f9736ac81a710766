//! `Ctx`, the validation state: where `${VAR}` values come from and the problems found
//! so far, with one helper per kind of value. Every helper records its own problem and
//! returns a fallback, so validation goes on and reports everything at once.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use super::env::{interpolate, Env};
use super::error::Path;
use super::file::{DurationValue, SizeValue};
use super::units;

/// Touched only while a config is validated (start-up and reload).
pub struct Ctx<'a> {
    pub env: Env<'a>,
    pub problems: Vec<(Path, String)>,
}

impl Ctx<'_> {
    pub fn problem(&mut self, path: &Path, message: impl Into<String>) {
        self.problems.push((path.clone(), message.into()));
    }

    /// A string value with `${VAR}` replaced; `None` (problem recorded) if that fails.
    pub fn string(&mut self, path: &Path, raw: &str) -> Option<String> {
        interpolate(raw, self.env)
            .map_err(|msg| self.problem(path, msg))
            .ok()
    }

    pub fn opt_string(&mut self, path: &Path, raw: Option<&String>) -> Option<String> {
        raw.and_then(|r| self.string(path, r))
    }

    /// A string that must be present and not empty: `table` is the enclosing table.
    pub fn required_string(
        &mut self,
        table: &Path,
        key: &str,
        raw: Option<&String>,
    ) -> Option<String> {
        let Some(raw) = raw else {
            self.problem(table, format!("missing `{key}`"));
            return None;
        };
        let value = self.string(&table.key(key), raw)?;
        if value.trim().is_empty() {
            self.problem(&table.key(key), "must not be empty");
            return None;
        }
        Some(value)
    }

    /// A string that may be absent (default) but not empty.
    pub fn nonempty(&mut self, path: &Path, raw: Option<&String>, default: &str) -> String {
        match self.opt_string(path, raw) {
            Some(s) if s.trim().is_empty() => {
                self.problem(path, "must not be empty");
                default.to_owned()
            }
            Some(s) => s,
            None => default.to_owned(),
        }
    }

    pub fn opt_duration(
        &mut self,
        path: &Path,
        v: Option<&DurationValue>,
        zero_ok: bool,
    ) -> Option<Duration> {
        let parsed = match v? {
            DurationValue::Seconds(s) => units::duration_from_secs(*s),
            DurationValue::Text(t) => units::parse_duration(&self.string(path, t)?),
        };
        match parsed {
            Ok(d) if d.is_zero() && !zero_ok => {
                self.problem(path, "must be greater than 0");
                None
            }
            Ok(d) => Some(d),
            Err(msg) => {
                self.problem(path, msg);
                None
            }
        }
    }

    pub fn duration(
        &mut self,
        path: &Path,
        v: Option<&DurationValue>,
        default: Duration,
        zero_ok: bool,
    ) -> Duration {
        self.opt_duration(path, v, zero_ok).unwrap_or(default)
    }

    pub fn size(&mut self, path: &Path, v: Option<&SizeValue>, default: u64, zero_ok: bool) -> u64 {
        let parsed = match v {
            None => return default,
            Some(SizeValue::Bytes(n)) => {
                u64::try_from(*n).map_err(|_| format!("negative size {n} is not allowed"))
            }
            Some(SizeValue::Text(t)) => match self.string(path, t) {
                Some(t) => units::parse_size(&t),
                None => return default,
            },
        };
        match parsed {
            Ok(0) if !zero_ok => self.problem(path, "must be greater than 0"),
            Ok(n) => return n,
            Err(msg) => self.problem(path, msg),
        }
        default
    }

    /// An integer of at least `min`, fitting `T`.
    pub fn int<T: TryFrom<i64> + Copy>(
        &mut self,
        path: &Path,
        v: Option<i64>,
        default: T,
        min: i64,
    ) -> T {
        let Some(v) = v else { return default };
        if v < min {
            let msg = match min {
                1 => format!("must be at least 1, got {v}"),
                _ => format!("must be at least {min}, got {v}"),
            };
            self.problem(path, msg);
            return default;
        }
        T::try_from(v).unwrap_or_else(|_| {
            self.problem(path, format!("{v} is too large"));
            default
        })
    }

    /// A percentage in `0..=100`.
    pub fn percent(&mut self, path: &Path, v: Option<f64>, default: f64) -> f64 {
        match v {
            None => default,
            Some(p) if p.is_finite() && (0.0..=100.0).contains(&p) => p,
            Some(p) => {
                self.problem(
                    path,
                    format!("must be a percentage between 0 and 100, got {p}"),
                );
                default
            }
        }
    }

    pub fn status(&mut self, path: &Path, v: i64) -> Option<StatusCode> {
        match u16::try_from(v).ok().filter(|c| (100..=599).contains(c)) {
            Some(code) => StatusCode::from_u16(code).ok(),
            None => {
                self.problem(path, format!("{v} is not an HTTP status code (100..=599)"));
                None
            }
        }
    }

    pub fn status_codes(&mut self, path: &Path, v: Option<&Vec<i64>>, default: &[u16]) -> Vec<u16> {
        let Some(list) = v else {
            return default.to_vec();
        };
        let codes = list.iter().enumerate();
        codes
            .filter_map(|(i, c)| self.status(&path.idx(i), *c).map(|s| s.as_u16()))
            .collect()
    }

    /// gRPC status names (`unavailable`, `DEADLINE_EXCEEDED`, ...) or numbers as strings.
    pub fn grpc_codes(&mut self, path: &Path, v: Option<&Vec<String>>, default: &[u8]) -> Vec<u8> {
        let Some(list) = v else {
            return default.to_vec();
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, name) in list.iter().enumerate() {
            match crate::config::grpc_code(name) {
                Some(c) => out.push(c),
                None => self.problem(
                    &path.idx(i),
                    format!(
                        "unknown gRPC status {name:?}; expected a name such as unavailable, deadline_exceeded, internal, unknown, resource_exhausted, or a number 0-16"
                    ),
                ),
            }
        }
        out
    }

    /// One of a fixed set of names (case-insensitive); the error lists them.
    pub fn choice<T: Copy>(
        &mut self,
        path: &Path,
        what: &str,
        v: Option<&String>,
        default: T,
        options: &[(&str, T)],
    ) -> T {
        let Some(s) = self.opt_string(path, v) else {
            return default;
        };
        if let Some((_, t)) = options
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s.trim()))
        {
            return *t;
        }
        let allowed: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        self.problem(
            path,
            format!(
                "unknown {what} {s:?}; expected one of: {}",
                allowed.join(", ")
            ),
        );
        default
    }

    pub fn socket_addr(
        &mut self,
        path: &Path,
        v: Option<&String>,
        default: SocketAddr,
    ) -> SocketAddr {
        let Some(s) = self.opt_string(path, v) else {
            return default;
        };
        s.trim().parse().unwrap_or_else(|_| {
            let msg = format!("invalid address {s:?}; expected IP:port such as \"0.0.0.0:8080\" or \"[::1]:8080\"");
            self.problem(path, msg);
            default
        })
    }

    pub fn header_name(&mut self, path: &Path, raw: &str) -> Option<HeaderName> {
        HeaderName::from_bytes(raw.trim().as_bytes())
            .map_err(|_| self.problem(path, format!("invalid header name {raw:?}")))
            .ok()
    }

    pub fn header_value(&mut self, path: &Path, raw: &str) -> Option<HeaderValue> {
        let value = self.string(path, raw)?;
        HeaderValue::from_str(&value)
            .map_err(|_| {
                self.problem(
                    path,
                    format!("invalid header value {value:?}: control characters are not allowed"),
                )
            })
            .ok()
    }

    /// `"header:NAME"` -> the header name; `None` (nothing recorded) for other forms.
    pub fn header_key(&mut self, path: &Path, s: &str) -> Option<Option<HeaderName>> {
        let name = s.strip_prefix("header:")?;
        Some(self.header_name(path, name))
    }
}
