//! Command line (clap): `fusebox [run] --config PATH`, `fusebox validate --config PATH`,
//! `fusebox demo`, `fusebox demo-upstream`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fusebox",
    version,
    about = "Sidecar reverse proxy for AI and vision services: per-host circuit breakers, \
             retries with budgets, deadlines, pooled keep-alive and correlation IDs.",
    long_about = None,
    after_help = "With no subcommand, fusebox runs: with --config (or FUSEBOX_CONFIG) it serves \
                  that file, else config/fusebox.toml when it exists, else the embedded default config.\n\
                  Examples:\n  fusebox demo\n  fusebox --config config/fusebox.toml\n  \
                  fusebox validate --config config/fusebox.toml"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve traffic with a config file (the default command).
    Run(RunArgs),
    /// Check a config file; exits 1 with file:line:column of every problem.
    Validate(ValidateArgs),
    /// Start three demo upstreams (healthy, flaky, slow) behind a proxy and print curl
    /// commands that show retries, a breaker opening and closing, and peak_ewma.
    Demo(DemoArgs),
    /// Run one demo vision upstream (for compose files and experiments).
    DemoUpstream(DemoUpstreamArgs),
}

#[derive(Debug, Args, Clone)]
pub struct RunArgs {
    /// Config file (TOML). Without it, `config/fusebox.toml` when that exists, else the
    /// embedded default config.
    /// (Given before or after `run`: `fusebox -c FILE run` and `fusebox run -c FILE`
    /// are the same; `demo` and `demo-upstream` take none and refuse one typed before
    /// them.)
    #[arg(long, short = 'c', env = "FUSEBOX_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Config file to check (also accepted before `validate`, as `fusebox -c FILE
    /// validate`).
    #[arg(long, short = 'c', env = "FUSEBOX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Check a config without the environment it will run in (CI without the pod's
    /// secrets): a value needing an unset variable (`${VAR}`, `admin.token_env`) is
    /// skipped and listed; everything else is checked. `run` never does this.
    #[arg(long)]
    pub allow_missing_env: bool,
    /// Check a config where the files it names are not (CI without the pod's mounted
    /// certificates): a TLS file that cannot be read is listed, not refused. Without
    /// it, such a file is refused with its key's line and column. `run` never does this.
    #[arg(long)]
    pub allow_missing_files: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the demo proxy.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the demo proxy's admin listener.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Share of requests the flaky upstream also fails at random (0: it fails only every
    /// second /detect call and on command, so the printed commands show the same thing
    /// every time).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Export traces of the demo's requests to this OTLP/HTTP collector
    /// (`http://127.0.0.1:4318`); without it the demo sets no `[tracing]`.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoUpstreamArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    pub listen: SocketAddr,
    /// Share of requests answered with 503 (0.0 - 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Name reported in responses.
    #[arg(long, default_value = "yolo")]
    pub name: String,
    /// Time each inference takes, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Concurrent streams each HTTP/2 (h2c) connection may carry, as advertised in
    /// SETTINGS_MAX_CONCURRENT_STREAMS (default: 200).
    #[arg(long)]
    pub h2_max_streams: Option<u32>,
}
