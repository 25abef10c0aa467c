//! Seeds embedded mode's store for `scripts/bench`: `USERS` connected users (`u0` …),
//! each with a valid Google token set sealed as the service seals it, under the master
//! key the service will read.
//!
//! Usage: `AXNT_DATA_DIR=DIR cargo run --release --features bench --example bench_seed -- USERS`
//!
//! The data directory and table name come from the same `AXNT_*` settings the service
//! reads, so the service started afterwards on that environment opens every row. The
//! master key file is created when absent (as the service would create it).

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, bail};
use axnt_oauth::bench_api::{self, EnvelopeCipher};
use axnt_oauth::config::Settings;
use axnt_oauth::store::embedded::EmbeddedStore;

/// The seeded tokens stay valid this long: far beyond any benchmark run and its margin.
const TOKEN_LIFETIME_SECS: i64 = 86_400;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_seed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let users: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse().context("USERS must be a whole number")?,
        None => bail!("usage: bench_seed USERS (with AXNT_DATA_DIR set)"),
    };
    let settings = Settings::from_env(None).context("the AXNT_* settings")?;
    let dir = settings.data_dir.clone();
    create_private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let keys = bench_api::local_keys(&dir.join("master.key")).context("the master key")?;
    let cipher = EnvelopeCipher::new(keys, settings.aws.tokens_table.clone());
    let store = EmbeddedStore::open(&dir.join("axnt-oauth.db")).context("the database")?;

    let runtime = tokio::runtime::Runtime::new().context("the async runtime")?;
    let started = Instant::now();
    runtime.block_on(bench_api::seed_users(
        &store,
        &cipher,
        "u",
        users,
        TOKEN_LIFETIME_SECS,
    ))?;
    println!(
        "seeded {users} users into {} in {:.1} s",
        dir.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn create_private_dir(dir: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}
