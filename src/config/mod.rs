//! Configuration: reading the TOML file and turning it into a `Config` of valid values.
//!
//! - `file.rs`: serde mirror of the file (unknown keys refused, every key optional)
//! - `validate.rs`, `policy.rs`, `routes.rs`: mirror -> `Config`, every problem collected
//!   (`ctx.rs`: the per-value helpers they share)
//! - `units.rs` (durations, sizes, addresses), `env.rs` (`${VAR}` interpolation)
//! - `error.rs`: `ConfigError`, each problem located as `FILE:LINE:COL: message`
//! - `defaults.rs`: every default as a named constant
//! - `types.rs`: the validated types the rest of the crate reads
//!
//! Loaded at start-up and on every reload, never per request. See
//! `docs/configuration.md` for the file format.

mod ctx;
mod defaults;
mod env;
mod error;
mod file;
mod policy;
mod routes;
mod types;
mod units;
mod validate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_errors;

use std::path::{Path, PathBuf};

pub use defaults::*;
pub use error::{ConfigError, Problem};
pub use types::*;

/// The documented example config, served when fusebox runs without a config file.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../config/fusebox.toml");

/// Reads and validates a config file. Messages name the file as `path` is written.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, &path.display().to_string(), Some(path.to_path_buf()))
}

/// Validates config text, with `${VAR}` taken from the process environment. `origin`
/// names the text in messages; `source` is recorded in `Config::source`.
pub fn parse(text: &str, origin: &str, source: Option<PathBuf>) -> Result<Config, ConfigError> {
    parse_with_env(text, origin, source, &env::process_env)
}

/// As `parse`, with variables (`${VAR}` and `admin.token_env`) looked up in `env`, so
/// tests need not touch the process environment.
pub fn parse_with_env(
    text: &str,
    origin: &str,
    source: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let file: file::FileConfig = toml::from_str(text)
        .map_err(|e| ConfigError::Invalid(vec![error::from_toml(text, origin, &e)]))?;
    validate::validate(&file, env, source)
        .map_err(|problems| ConfigError::Invalid(error::locate_all(text, origin, problems)))
}

/// The embedded default config. It holds no `${VAR}` and is parsed with an empty
/// environment, so it parses the same everywhere; a unit test proves it does.
pub fn embedded_default() -> Config {
    match parse_with_env(DEFAULT_CONFIG_TOML, "<embedded>", None, &|_| None) {
        Ok(config) => config,
        Err(e) => panic!("the embedded default config is invalid (a unit test guards this):\n{e}"),
    }
}

/// A short, stable hex hash of config text (FNV-1a 64), reported as the config
/// version. The same text gives the same hash on every run and platform.
pub fn content_hash(text: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = text
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    format!("{hash:016x}")
}

/// The gRPC status code for a name (`unavailable`, `UNAVAILABLE`) or number (`"14"`).
pub fn grpc_code(name: &str) -> Option<u8> {
    const NAMES: [&str; 17] = [
        "ok",
        "cancelled",
        "unknown",
        "invalid_argument",
        "deadline_exceeded",
        "not_found",
        "already_exists",
        "permission_denied",
        "resource_exhausted",
        "failed_precondition",
        "aborted",
        "out_of_range",
        "unimplemented",
        "internal",
        "unavailable",
        "data_loss",
        "unauthenticated",
    ];
    let n = name.trim();
    if let Ok(v) = n.parse::<u8>() {
        return (v <= 16).then_some(v);
    }
    NAMES
        .iter()
        .position(|x| x.eq_ignore_ascii_case(n))
        .map(|i| i as u8)
}
