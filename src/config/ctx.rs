//! `Ctx`, the validation state: where `${VAR}` values come from and the problems found
//! so far, with one helper per kind of value. Every helper records its own problem and
//! returns a fallback, so validation goes on and reports everything at once. Numeric
//! helpers take the key's `Bounds` and refuse a value outside them with a message that
//! states the allowed range.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};

use super::bounds::{above, below, show_duration, show_number, show_size, Bounds, SizeBounds};
use super::env::{interpolate, Env, EnvError, ALLOW_MISSING_HINT};
use super::error::Path;
use super::file::{DurationValue, SizeValue};
use super::units::{self, UnitError};

/// Touched only while a config is validated (start-up and reload).
pub struct Ctx<'a> {
    pub env: Env<'a>,
    pub problems: Vec<(Path, String)>,
    /// `validate --allow-missing-env`: an unset variable is noted in `missing` instead
    /// of being a problem, and its value takes the key's default.
    pub allow_missing_env: bool,
    /// Variables not set, with the key whose value needed them.
    pub missing: Vec<(String, Path)>,
    /// Keys whose value came (in part) from `${VAR}`: secrets, redacted in `/config`.
    pub interpolated: Vec<Path>,
    /// `validate --allow-missing-files`: a file the config names (TLS certificates,
    /// keys, CAs) that cannot be read here is noted in `missing_files` instead of being
    /// a problem.
    pub allow_missing_files: bool,
    /// Files that could not be read, with the key naming them.
    pub missing_files: Vec<(String, Path)>,
    /// Values that came from `${VAR}` (each variable's, and each interpolated
    /// string's): kept out of problem messages ([`Ctx::scrubbed`]), which reach the
    /// log and `/config`'s `last_reload.error`, as `/config` keeps them out of its view.
    pub secret_values: Vec<String>,
}

impl Ctx<'_> {
    /// The problems, with every value that came from `${VAR}` replaced by
    /// `<redacted>` in their messages (longest first). A value under 3 characters
    /// (`2h`) is replaced only as a whole word, and only in the messages of keys that
    /// were interpolated: anywhere else it would blank out unrelated text.
    pub fn scrubbed(mut self) -> Vec<(Path, String)> {
        let mut secrets: Vec<&String> = self.secret_values.iter().collect();
        secrets.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for (path, msg) in &mut self.problems {
            let interpolated = self.interpolated.contains(path);
            for s in secrets.iter().filter(|s| !s.trim().is_empty()) {
                if s.len() >= 3 {
                    if msg.contains(s.as_str()) {
                        *msg = msg.replace(s.as_str(), "<redacted>");
                    }
                } else if interpolated {
                    *msg = replace_word(msg, s);
                }
            }
        }
        self.problems
    }

    pub fn problem(&mut self, path: &Path, message: impl Into<String>) {
        self.problems.push((path.clone(), message.into()));
    }

    /// Checks that `file` (the value of the key at `path`) can be read now: `run` and
    /// a reload read it right after validation, and a file they could not read would
    /// refuse the config without saying where in it the file was named.
    /// Whether it could.
    pub fn readable_file(&mut self, path: &Path, file: &str) -> bool {
        if file.is_empty() {
            return false; // a required key that is absent: its own problem is recorded
        }
        if let Err(e) = std::fs::read(file) {
            if self.allow_missing_files {
                self.missing_files.push((file.to_owned(), path.clone()));
            } else {
                self.problem(path, format!("cannot read {file}: {e}"));
            }
            return false;
        }
        true
    }

    /// A string value with `${VAR}` replaced; `None` (problem or missing variable
    /// recorded) if that fails.
    pub fn string(&mut self, path: &Path, raw: &str) -> Option<String> {
        let seen = std::cell::RefCell::new(Vec::new());
        let env = self.env;
        let recording = |name: &str| {
            let v = env(name);
            if let Some(v) = &v {
                seen.borrow_mut().push(v.clone());
            }
            v
        };
        let result = interpolate(raw, &recording);
        let seen = seen.into_inner();
        // A value only the file's own `${VAR:-default}` filled (the variable unset or
        // empty) holds nothing the file does not show: no secret.
        let from_env = seen.iter().any(|v| !v.is_empty());
        self.secret_values.extend(seen);
        match result {
            Ok(s) => {
                if from_env {
                    self.interpolated.push(path.clone());
                    self.secret_values.push(s.clone());
                }
                Some(s)
            }
            Err(EnvError::Unset(name)) if self.allow_missing_env => {
                self.missing.push((name, path.clone()));
                None
            }
            Err(e) => {
                self.problem(path, e.message());
                None
            }
        }
    }

    /// The value of the variable `name` (not a `${...}` reference: a key such as
    /// `admin.token_env` that names one); `None` when unset, recorded as a problem
    /// saying what the variable is for (`what`), or as missing.
    pub fn variable(&mut self, path: &Path, name: &str, what: &str) -> Option<String> {
        let value = (self.env)(name);
        if value.is_none() {
            if self.allow_missing_env {
                self.missing.push((name.to_owned(), path.clone()));
            } else {
                let msg =
                    format!("environment variable {name} is not set{what} ({ALLOW_MISSING_HINT})");
                self.problem(path, msg);
            }
        }
        value
    }

    /// How many problems and missing variables were recorded so far. A check across
    /// keys compares it before and after reading them and is skipped when one of them
    /// was refused or needed a missing variable: it took its default, and the check
    /// would judge the default, not the file.
    pub fn mark(&self) -> usize {
        self.problems.len() + self.missing.len()
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

    /// A duration within `bounds` (0 allowed when `bounds.min` is 0), or `None` when
    /// absent or refused.
    pub fn opt_duration(
        &mut self,
        path: &Path,
        v: Option<&DurationValue>,
        bounds: Bounds<Duration>,
    ) -> Option<Duration> {
        let (shown, parsed) = match v? {
            DurationValue::Seconds(s) => (
                format!("{}s", show_number(*s)),
                units::duration_from_secs(*s),
            ),
            DurationValue::Text(t) => {
                let t = self.string(path, t)?;
                let parsed = units::parse_duration(&t);
                (t.trim().to_owned(), parsed)
            }
        };
        let msg = match parsed {
            Ok(d) if bounds.contains(d) => return Some(d),
            Ok(d) if d.is_zero() => format!("must be greater than 0 (allowed: {bounds})"),
            Ok(d) if d < bounds.min => below(shown, show_duration(bounds.min), bounds),
            Ok(_) | Err(UnitError::TooLarge) => above(shown, show_duration(bounds.max), bounds),
            Err(UnitError::Negative) => {
                format!("negative duration {shown} is not allowed (allowed: {bounds})")
            }
            Err(UnitError::Invalid(msg)) => msg,
        };
        self.problem(path, msg);
        None
    }

    pub fn duration(
        &mut self,
        path: &Path,
        v: Option<&DurationValue>,
        default: Duration,
        bounds: Bounds<Duration>,
    ) -> Duration {
        self.opt_duration(path, v, bounds).unwrap_or(default)
    }

    /// A size in bytes within `bounds`; `default` when absent or refused.
    pub fn size(
        &mut self,
        path: &Path,
        v: Option<&SizeValue>,
        default: u64,
        bounds: Bounds<u64>,
    ) -> u64 {
        let (shown, parsed) = match v {
            None => return default,
            Some(SizeValue::Bytes(n)) => (
                n.to_string(),
                u64::try_from(*n).map_err(|_| UnitError::Negative),
            ),
            Some(SizeValue::Text(t)) => match self.string(path, t) {
                Some(t) => (t.trim().to_owned(), units::parse_size(&t)),
                None => return default,
            },
        };
        let range = SizeBounds(bounds);
        let msg = match parsed {
            Ok(n) if bounds.contains(n) => return n,
            Ok(0) => format!("must be greater than 0 (allowed: {range})"),
            Ok(n) if n < bounds.min => below(shown, show_size(bounds.min), range),
            Ok(_) | Err(UnitError::TooLarge) => above(shown, show_size(bounds.max), range),
            Err(UnitError::Negative) => {
                format!("negative size {shown} is not allowed (allowed: {range})")
            }
            Err(UnitError::Invalid(msg)) => msg,
        };
        self.problem(path, msg);
        default
    }

    /// An integer within `bounds` (whose maximum `T` must hold); `default` when absent
    /// or refused.
    pub fn int<T: TryFrom<u64> + Copy>(
        &mut self,
        path: &Path,
        v: Option<i64>,
        default: T,
        bounds: Bounds<u64>,
    ) -> T {
        let Some(v) = v else { return default };
        let (min, max) = (bounds.min, bounds.max);
        match u64::try_from(v) {
            Ok(n) if bounds.contains(n) => match T::try_from(n) {
                Ok(t) => return t,
                // Only if a bound were wider than its field: a bug, said plainly.
                Err(_) => self.problem(path, format!("{v} does not fit (allowed: {bounds})")),
            },
            Ok(n) if n > max => self.problem(path, above(v, max, bounds)),
            _ => self.problem(
                path,
                format!("must be at least {min}, got {v} (allowed: {bounds})"),
            ),
        }
        default
    }

    /// A finite number within `bounds`; `default` when absent or refused.
    pub fn float(&mut self, path: &Path, v: Option<f64>, default: f64, bounds: Bounds<f64>) -> f64 {
        let Some(v) = v else { return default };
        let msg = match v {
            v if v.is_nan() => format!("must be a number, got nan (allowed: {bounds})"),
            v if bounds.contains(v) => return v,
            0.0 => format!("must be greater than 0 (allowed: {bounds})"),
            v if v > bounds.max => above(show_number(v), show_number(bounds.max), bounds),
            v => below(show_number(v), show_number(bounds.min), bounds),
        };
        self.problem(path, msg);
        default
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

    /// A status fusebox answers with itself (a fallback, an injected abort): a final
    /// one, 200..=599. A 1xx is no answer (hyper would send a bare 500, a 101 would
    /// leave the caller on a dead connection).
    pub fn answer_status(&mut self, path: &Path, v: i64) -> Option<StatusCode> {
        match u16::try_from(v).ok().filter(|c| (200..=599).contains(c)) {
            Some(code) => StatusCode::from_u16(code).ok(),
            None => {
                self.problem(
                    path,
                    format!("{v} is not a final HTTP status code an answer can carry (200..=599)"),
                );
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

    /// gRPC status names (`unavailable`, `DEADLINE_EXCEEDED`, ...) or numbers, as
    /// integers or strings.
    pub fn grpc_codes(
        &mut self,
        path: &Path,
        v: Option<&Vec<super::file::GrpcCodeValue>>,
        default: &[u8],
    ) -> Vec<u8> {
        use super::file::GrpcCodeValue;
        let Some(list) = v else {
            return default.to_vec();
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, value) in list.iter().enumerate() {
            let (code, name) = match value {
                GrpcCodeValue::Int(n) => {
                    (u8::try_from(*n).ok().filter(|c| *c <= 16), n.to_string())
                }
                GrpcCodeValue::Str(s) => (crate::config::grpc_code(s), s.clone()),
            };
            match code {
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

/// `msg` with each occurrence of `word` that stands alone (no letter, digit or `_`
/// on either side) replaced by `<redacted>`.
fn replace_word(msg: &str, word: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(i) = rest.find(word) {
        let before = rest[..i].chars().last().or_else(|| out.chars().last());
        let after = rest[i + word.len()..].chars().next();
        out.push_str(&rest[..i]);
        if before.is_some_and(is_word) || after.is_some_and(is_word) {
            out.push_str(word);
        } else {
            out.push_str("<redacted>");
        }
        rest = &rest[i + word.len()..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_short_value_is_replaced_only_as_a_word() {
        let r = super::replace_word("2h is above the maximum of 1h (12h)", "2h");
        assert_eq!(r, "<redacted> is above the maximum of 1h (12h)");
    }
}
