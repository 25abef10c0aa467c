//! aws mode's side of `scripts/bench`, against a local moto server (`AWS_ENDPOINT_URL`):
//!
//! - `bench_aws prepare USERS`: the two tables (as `axnt-oauth setup` makes them), a KMS
//!   key under the alias `AXNT_KMS_KEY_ID`, the secret `AXNT_GOOGLE_SECRET_ID` (client
//!   credentials from `BENCH_CLIENT_ID`/`BENCH_CLIENT_SECRET`, API key `BENCH_API_KEY`, a
//!   fresh state key), then `USERS` connected users `a0` … sealed as the service seals
//!   them (KMS data keys, the same cache).
//! - `bench_aws getitem CONNS SECS USERS`: the storage floor — `CONNS` concurrent tasks
//!   each sending `GetItem` for a random seeded user for `SECS` seconds (at most 2,000,000
//!   calls), through the SDK as the service builds it. Prints one line:
//!   `rps=… p50_ms=… p99_ms=… requests=… errors=…`.
//!
//! Everything else comes from the service's own settings (`DYNAMODB_OAUTH_TABLE`, …).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aws_sdk_dynamodb::types::AttributeValue;
use axnt_oauth::app::Backends;
use axnt_oauth::bench_api::{self, EnvelopeCipher};
use axnt_oauth::config::Settings;
use base64::Engine;

const TOKEN_LIFETIME_SECS: i64 = 86_400;
const MAX_CALLS: u64 = 2_000_000;

fn main() -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_aws: the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_aws: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let settings = Settings::from_env(None).context("the AXNT_* settings")?;
    let number = |i: usize, what: &str| -> anyhow::Result<u64> {
        args.get(i)
            .with_context(|| format!("missing {what}"))?
            .parse()
            .with_context(|| format!("{what} must be a whole number"))
    };
    match args.first().map(String::as_str) {
        Some("prepare") => prepare(&settings, number(1, "USERS")?).await,
        Some("getitem") => {
            let (conns, secs, users) =
                (number(1, "CONNS")?, number(2, "SECS")?, number(3, "USERS")?);
            getitem(&settings, conns, Duration::from_secs(secs), users).await
        }
        _ => bail!("usage: bench_aws prepare USERS | bench_aws getitem CONNS SECS USERS"),
    }
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

async fn prepare(settings: &Settings, users: u64) -> anyhow::Result<()> {
    axnt_oauth::aws::setup::ensure_tables(settings, false)
        .await
        .context("creating the tables")?;
    let config = axnt_oauth::aws::sdk_config(settings).await;
    let kms = aws_sdk_kms::Client::new(&config);
    let key = kms.create_key().send().await.context("CreateKey")?;
    let key_id = key
        .key_metadata()
        .map(|m| m.key_id().to_string())
        .context("CreateKey answered no key id")?;
    kms.create_alias()
        .alias_name(env("AXNT_KMS_KEY_ID")?)
        .target_key_id(key_id)
        .send()
        .await
        .context("CreateAlias")?;
    let mut state_key = [0u8; 32];
    axnt_oauth::crypto::fill_random(&mut state_key);
    let secret = serde_json::json!({
        "client_id": env("BENCH_CLIENT_ID")?,
        "client_secret": env("BENCH_CLIENT_SECRET")?,
        "api_keys": [env("BENCH_API_KEY")?],
        "state_key": base64::engine::general_purpose::STANDARD.encode(state_key),
    });
    aws_sdk_secretsmanager::Client::new(&config)
        .create_secret()
        .name(&settings.aws.secret_id)
        .secret_string(secret.to_string())
        .send()
        .await
        .context("CreateSecret")?;

    let backends = Backends::open(settings).await.context("the aws backends")?;
    let cipher = EnvelopeCipher::new(
        Arc::clone(&backends.keys),
        settings.aws.tokens_table.clone(),
    );
    let started = Instant::now();
    bench_api::seed_users(
        backends.tokens.as_ref(),
        &cipher,
        "a",
        users,
        TOKEN_LIFETIME_SECS,
    )
    .await?;
    println!(
        "prepared moto: tables, key, secret and {users} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn getitem(
    settings: &Settings,
    conns: u64,
    secs: Duration,
    users: u64,
) -> anyhow::Result<()> {
    let config = axnt_oauth::aws::sdk_config(settings).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    let table = settings.aws.tokens_table.clone();
    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + secs;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..conns {
        let (client, table, calls, errors) = (
            client.clone(),
            table.clone(),
            Arc::clone(&calls),
            Arc::clone(&errors),
        );
        tasks.spawn(async move {
            // xorshift: a different user each call, no shared state between tasks.
            let mut x = 0x9E37_79B9_7F4A_7C15_u64 ^ (task + 1);
            let mut latencies = Vec::new();
            while Instant::now() < until && calls.fetch_add(1, Ordering::Relaxed) < MAX_CALLS {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let user = format!("a{}", x % users.max(1));
                let sent = Instant::now();
                let answer = client
                    .get_item()
                    .table_name(&table)
                    .consistent_read(true) // as the service reads
                    .key("userId", AttributeValue::S(user))
                    .key("provider", AttributeValue::S("google".into()))
                    .send()
                    .await;
                latencies.push(sent.elapsed());
                if !matches!(answer, Ok(ref out) if out.item().is_some()) {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies
        });
    }
    let mut latencies: Vec<Duration> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.context("a GetItem task failed")?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "rps={:.0} p50_ms={:.2} p99_ms={:.2} requests={} errors={}",
        latencies.len() as f64 / elapsed,
        at(0.50),
        at(0.99),
        latencies.len(),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}
