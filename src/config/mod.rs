//! Configuration: reading the TOML file and turning it into a `Config` of valid values.
//!
//! - `file.rs`: serde mirror of the file (unknown keys refused, every key optional)
//! - `validate.rs`, `policy.rs`, `balance.rs`, `routes.rs`, `admission.rs`, `global.rs`:
//!   mirror -> `Config`, every problem collected (`ctx.rs`: the per-value helpers they
//!   share, `bounds.rs`: the ranges values must lie in and how a refusal reads)
//! - `units.rs` (durations, sizes, addresses), `env.rs` (`${VAR}` interpolation)
//! - `error.rs`: `ConfigError`, each problem located as `FILE:LINE:COL: message`
//! - `defaults.rs`: every default and every bound as a named constant
//! - `types.rs`: the validated types the rest of the crate reads
//!
//! Loaded at start-up and on every reload, never per request. See
//! `docs/configuration.md` for the file format.

mod admission;
mod balance;
mod bounds;
mod ctx;
mod defaults;
mod env;
mod error;
mod file;
mod global;
mod policy;
mod routes;
mod types;
mod units;
mod validate;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bounds;
#[cfg(test)]
mod tests_bounds_policy;
#[cfg(test)]
mod tests_errors;
#[cfg(test)]
mod tests_keys;

use std::path::{Path, PathBuf};

pub use defaults::*;
pub use error::{ConfigError, Problem};
pub use types::*;
pub(crate) use validate::check_log_filter;

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
    let options = ParseOptions {
        env,
        allow_missing_env: false,
        allow_missing_files: false,
    };
    parse_with_options(text, origin, source, &options).map(|parsed| parsed.config)
}

/// How `parse_with_options` reads a text.
pub struct ParseOptions<'a> {
    /// Where `${VAR}` and `admin.token_env` are looked up.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `fusebox validate --allow-missing-env`: a variable that is not set is noted in
    /// `Parsed::missing_env` instead of refusing the file; a value that needed it is
    /// not checked and takes its key's default. Every other value is checked as usual.
    /// Never for a config that is served: the defaults would stand in for secrets.
    pub allow_missing_env: bool,
    /// `fusebox validate --allow-missing-files`: a TLS file that cannot be read here is
    /// noted in `Parsed::missing_files` instead of refusing the file. Never for a
    /// config that is served.
    pub allow_missing_files: bool,
}

impl ParseOptions<'static> {
    /// The process environment, missing variables refused (what `parse` does).
    pub fn process_env() -> Self {
        ParseOptions {
            env: &env::process_env,
            allow_missing_env: false,
            allow_missing_files: false,
        }
    }
}

/// A valid config and what could not be checked in it.
#[derive(Debug)]
pub struct Parsed {
    pub config: Config,
    /// With `allow_missing_env`: each variable that was not set and the key that needed
    /// it, in file order. Empty otherwise.
    pub missing_env: Vec<MissingEnv>,
    /// With `allow_missing_files`: each file that could not be read (`name`) and the
    /// key naming it, in file order. Empty otherwise.
    pub missing_files: Vec<MissingEnv>,
}

/// A variable that was not set, found while `allow_missing_env` was on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingEnv {
    /// The variable, e.g. `FUSEBOX_ADMIN_TOKEN`.
    pub name: String,
    /// The TOML path of the key whose value needed it, e.g. `admin.token_env`.
    pub key: String,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for MissingEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.key)
    }
}

/// Validates config text as `parse` does, with the variables and the handling of
/// missing ones that `options` give.
pub fn parse_with_options(
    text: &str,
    origin: &str,
    source: Option<PathBuf>,
    options: &ParseOptions<'_>,
) -> Result<Parsed, ConfigError> {
    if text.trim().is_empty() {
        // A file truncated by a copy in progress, or a template that rendered nothing:
        // as a reload it would drop every route (the embedded default is for no file
        // at all).
        return Err(ConfigError::Invalid(vec![error::Problem {
            file: origin.to_owned(),
            line: 1,
            column: 1,
            message: "the config file is empty".to_owned(),
        }]));
    }
    let file: file::FileConfig = toml::from_str(text)
        .map_err(|e| ConfigError::Invalid(vec![error::from_toml(text, origin, &e)]))?;
    let (config, missing, files) = validate::validate(
        &file,
        options.env,
        options.allow_missing_env,
        options.allow_missing_files,
        source,
    )
    .map_err(|problems| ConfigError::Invalid(error::locate_all(text, origin, problems)))?;
    // Locating parses the text once more: only when there is something to locate.
    let locator = (!missing.is_empty() || !files.is_empty()).then(|| error::Locator::new(text));
    let located = |list: Vec<(String, error::Path)>| {
        let mut out: Vec<MissingEnv> = Vec::with_capacity(list.len());
        let Some(locator) = locator.as_ref() else {
            return out;
        };
        for (name, path) in list {
            let key = path.to_string();
            if out.iter().any(|m| m.name == name && m.key == key) {
                continue;
            }
            let (line, column) = locator.line_col(&path);
            out.push(MissingEnv {
                name,
                key,
                line,
                column,
            });
        }
        out.sort_by_key(|m| (m.line, m.column));
        out
    };
    Ok(Parsed {
        config,
        missing_env: located(missing),
        missing_files: located(files),
    })
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

/// The gRPC status names, by code.
const GRPC_NAMES: [&str; 17] = [
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

/// The name of gRPC status `code` (`unavailable` for 14), as config files write it.
pub fn grpc_code_name(code: u8) -> &'static str {
    GRPC_NAMES
        .get(usize::from(code))
        .copied()
        .unwrap_or("unknown")
}

/// The gRPC status code for a name (`unavailable`, `UNAVAILABLE`) or number (`"14"`).
pub fn grpc_code(name: &str) -> Option<u8> {
    let n = name.trim();
    if let Ok(v) = n.parse::<u8>() {
        return (v <= 16).then_some(v);
    }
    GRPC_NAMES
        .iter()
        .position(|x| x.eq_ignore_ascii_case(n))
        .map(|i| i as u8)
}
