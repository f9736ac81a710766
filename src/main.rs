//! The `fusebox` binary: parse the command line, load the config, init logging, run.

use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};
use fusebox::cli::{Cli, Command, RunArgs, ValidateArgs};
use fusebox::{app, config, demo, telemetry};

// The allocator is chosen by measurement: BENCHMARKS.md, "Allocator".
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The config file used when none is named (relative to the working directory).
const DEFAULT_CONFIG_PATH: &str = "config/fusebox.toml";

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `-c FILE` given before the subcommand counts as the subcommand's own.
    let before = cli.run.config;
    // Typed on the command line (not FUSEBOX_CONFIG from the environment, which a
    // container may set for every command).
    let config_typed = matches.value_source("config") == Some(ValueSource::CommandLine);
    let command = cli
        .command
        .unwrap_or(Command::Run(RunArgs { config: None }));
    match command {
        Command::Validate(mut a) => match validate({
            a.config = a.config.or(before);
            &a
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Run(mut a) => {
            a.config = a.config.or(before);
            // No --config / FUSEBOX_CONFIG: the default file when anything is there (a
            // dangling link or a directory is refused as unreadable, not skipped: a
            // broken ConfigMap mount must not serve the embedded default), else the
            // embedded default.
            if a.config.is_none() && std::fs::symlink_metadata(DEFAULT_CONFIG_PATH).is_ok() {
                a.config = Some(DEFAULT_CONFIG_PATH.into());
            }
            let (cfg, text) = match &a.config {
                Some(path) => match load_with_text(path) {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(1);
                    }
                },
                None => (
                    config::embedded_default(),
                    config::DEFAULT_CONFIG_TOML.to_string(),
                ),
            };
            telemetry::init(&cfg.logging);
            if a.config.is_none() {
                tracing::info!("no config file given and no {DEFAULT_CONFIG_PATH}: serving the embedded default config");
            }
            let version = config::content_hash(&text);
            exit(runtime().and_then(|rt| {
                rt.block_on(app::run(
                    cfg,
                    version,
                    app::StartOptions {
                        config_path: a.config.clone(),
                        ..Default::default()
                    },
                ))
            }))
        }
        Command::Demo(_) | Command::DemoUpstream(_) if config_typed => {
            eprintln!(
                "fusebox: demo and demo-upstream take no config file (they build their own); \
                 to serve a file: fusebox run -c FILE"
            );
            ExitCode::from(2)
        }
        Command::Demo(a) => exit(runtime().and_then(|rt| rt.block_on(demo::run(a)))),
        Command::DemoUpstream(a) => {
            exit(runtime().and_then(|rt| rt.block_on(demo::run_upstream(a))))
        }
    }
}

/// `fusebox validate`: checks the file and prints the ok line, and with
/// `--allow-missing-env` the variables that were not set (so not checked).
fn validate(a: &ValidateArgs) -> Result<(), String> {
    let Some(path) = &a.config else {
        return Err(
            "validate needs a config file: fusebox validate --config FILE \
                    (or FUSEBOX_CONFIG)"
                .into(),
        );
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let options = config::ParseOptions {
        allow_missing_env: a.allow_missing_env,
        allow_missing_files: a.allow_missing_files,
        ..config::ParseOptions::process_env()
    };
    let parsed = config::parse_with_options(
        &text,
        &path.display().to_string(),
        Some(path.clone()),
        &options,
    )
    .map_err(|e| e.to_string())?;
    let cfg = &parsed.config;
    println!(
        "{}: ok ({} upstreams, {} routes)",
        path.display(),
        cfg.upstreams.len(),
        cfg.routes.len()
    );
    if !parsed.missing_env.is_empty() {
        let missing: Vec<String> = parsed.missing_env.iter().map(|m| m.to_string()).collect();
        println!("note: not set here, so not checked: {}", missing.join(", "));
    }
    if !parsed.missing_files.is_empty() {
        let missing: Vec<String> = parsed.missing_files.iter().map(|m| m.to_string()).collect();
        println!(
            "note: not readable here, so not checked: {}",
            missing.join(", ")
        );
    }
    Ok(())
}

/// Reads and validates a config file, returning the text too (its hash is the version).
fn load_with_text(path: &std::path::Path) -> Result<(config::Config, String), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cfg = config::parse(&text, &path.display().to_string(), Some(path.to_path_buf()))
        .map_err(|e| e.to_string())?;
    Ok((cfg, text))
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    telemetry::shutdown();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fusebox: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// One worker thread per core this process may run on (`taskset` counts), or
/// `FUSEBOX_WORKER_THREADS`. On one core a current-thread runtime avoids cross-thread
/// wake-ups entirely.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = std::env::var("FUSEBOX_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok(rt)
}
