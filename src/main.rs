//! `axnt-oauth`: parse the command line, load settings, start telemetry, run.

use clap::Parser;

use axnt_oauth::cli::{self, Cli};
use axnt_oauth::config::{Settings, env_file};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Before anything else runs: it sets process environment variables.
    let env_file = match std::env::current_dir()
        .map_err(|e| e.to_string())
        .and_then(|dir| env_file::load_from(&dir).map_err(|e| e.to_string()))
    {
        Ok(report) => report,
        Err(e) => {
            eprintln!("axnt-oauth: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let settings = match Settings::from_env(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("axnt-oauth: configuration error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    axnt_oauth::telemetry::init(&settings);
    if let Some(path) = &env_file.path {
        tracing::info!(
            file = %path.display(),
            applied = ?env_file.applied,
            kept_from_environment = ?env_file.kept_from_environment,
            "read variables from the .env file (names only; set variables win)"
        );
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("axnt-oauth: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli, settings)) {
        Ok(code) => std::process::ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "axnt-oauth failed");
            eprintln!("axnt-oauth: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
