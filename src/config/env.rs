//! `${NAME}` and `${NAME:-default}` in string values, replaced from the environment.
//!
//! - `${NAME}`: the variable's value (empty if set but empty); unset is an error naming it.
//! - `${NAME:-default}`: the value when set and non-empty, otherwise `default` (taken
//!   literally up to the first `}`: no nesting).
//! - `$$` is an escaped `$` (so `$${HOME}` is the literal text `${HOME}`); any other `$`
//!   is left as it is. Substituted values are not scanned again.
//! - `NAME` is `[A-Za-z_][A-Za-z0-9_]*`; anything else, or a `${` without its `}`, is an
//!   error.

/// Where variables are looked up: the process environment in production, a map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment (`None` for unset or non-UTF-8 variables).
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Why a value could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvError {
    /// `${NAME}` without a default, and `NAME` is not set: the one failure that
    /// `validate --allow-missing-env` sets aside.
    Unset(String),
    /// A malformed reference; the message says what is wrong.
    Invalid(String),
}

impl EnvError {
    pub fn message(&self) -> String {
        match self {
            EnvError::Unset(name) => format!(
                "environment variable {name} is not set (write ${{{name}:-default}} to give a \
                 default, or {ALLOW_MISSING_HINT})"
            ),
            EnvError::Invalid(msg) => msg.clone(),
        }
    }
}

/// How to check a file without its environment; the end of every "not set" message.
pub const ALLOW_MISSING_HINT: &str =
    "run validate --allow-missing-env to check the rest without it";

/// Replaces every `${...}` in `text`. The error says which variable and why.
pub fn interpolate(text: &str, env: Env<'_>) -> Result<String, EnvError> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(EnvError::Invalid(format!(
                    "unterminated \"${{\" in {text:?} (write \"$${{\" for a literal \"${{\")"
                )));
            };
            out.push_str(&expand(&body[..end], env)?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn expand(inner: &str, env: Env<'_>) -> Result<String, EnvError> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    let valid = name
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
    if name.is_empty() || !valid {
        return Err(EnvError::Invalid(format!(
            "invalid environment variable reference \"${{{inner}}}\" \
             (expected ${{NAME}} or ${{NAME:-default}})"
        )));
    }
    match (env(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_owned()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_owned()),
        (None, None) => Err(EnvError::Unset(name.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_with_and_without_default_and_escapes() {
        let env = |n: &str| match n {
            "PORT" => Some("9100".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            interpolate("0.0.0.0:${PORT}", &env).unwrap(),
            "0.0.0.0:9100"
        );
        assert_eq!(interpolate("${MISSING:-8080}", &env).unwrap(), "8080");
        assert_eq!(interpolate("${PORT:-8080}", &env).unwrap(), "9100");
        assert_eq!(interpolate("${EMPTY:-x}", &env).unwrap(), "x");
        assert_eq!(interpolate("a${EMPTY}b", &env).unwrap(), "ab");
        assert_eq!(
            interpolate("cost: $5, $$${PORT}, $${PORT}", &env).unwrap(),
            "cost: $5, $9100, ${PORT}"
        );
        let missing = interpolate("a ${MISSING} b", &env).unwrap_err();
        assert_eq!(missing, EnvError::Unset("MISSING".into()));
        assert_eq!(
            missing.message(),
            "environment variable MISSING is not set (write ${MISSING:-default} to give a \
             default, or run validate --allow-missing-env to check the rest without it)"
        );
        let invalid = |t: &str| interpolate(t, &env).unwrap_err().message();
        assert!(invalid("${PORT").contains("unterminated"));
        assert!(invalid("${1X}").contains("invalid"));
    }
}
