//! Drives whole connect flows for `scripts/bench`: for each of `COUNT` users
//! (`PREFIX0` …), a connect link from the internal API, `/start`, the provider's
//! `/authorize` (the npm OpenID mock answers at once), the callback, which redeems the
//! code and verifies the ID token, and the confirm call the application makes with the
//! `confirmationCode` the return redirect carries (binding is on by default; a service
//! run with it off answers `status=connected` and the flow ends there). `CONCURRENCY`
//! flows run at a time.
//!
//! Usage: `bench_connect BASE_URL API_KEY COUNT CONCURRENCY PREFIX RETURN_TO`
//!
//! Prints one line, `flows=N seconds=S per_sec=R p50_ms=A p99_ms=B`, and exits 1 at the
//! first flow that does not end connected.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use reqwest::header::{AUTHORIZATION, COOKIE, LOCATION, SET_COOKIE};
use reqwest::{Client, StatusCode, Url, redirect};

struct Run {
    base: String,
    key: String,
    prefix: String,
    return_to: String,
    count: u64,
    next: AtomicU64,
    client: Client,
}

fn main() -> ExitCode {
    match tokio::runtime::Runtime::new()
        .context("the async runtime")
        .and_then(|rt| rt.block_on(run()))
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_connect: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [base, key, count, concurrency, prefix, return_to] = args.as_slice() else {
        bail!("usage: bench_connect BASE_URL API_KEY COUNT CONCURRENCY PREFIX RETURN_TO");
    };
    let run = Arc::new(Run {
        base: base.trim_end_matches('/').to_string(),
        key: key.clone(),
        prefix: prefix.clone(),
        return_to: return_to.clone(),
        count: count.parse().context("COUNT")?,
        next: AtomicU64::new(0),
        client: Client::builder()
            .redirect(redirect::Policy::none())
            .timeout(Duration::from_secs(30))
            .build()
            .context("the HTTP client")?,
    });
    let concurrency: u64 = concurrency.parse().context("CONCURRENCY")?;
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let run = Arc::clone(&run);
        workers.spawn(async move {
            let mut took = Vec::new();
            loop {
                let i = run.next.fetch_add(1, Ordering::Relaxed);
                if i >= run.count {
                    return anyhow::Ok(took);
                }
                let at = Instant::now();
                flow(&run, &format!("{}{i}", run.prefix))
                    .await
                    .with_context(|| format!("flow {i}"))?;
                took.push(at.elapsed());
            }
        });
    }
    let mut took = Vec::new();
    while let Some(done) = workers.join_next().await {
        took.extend(done.context("a flow task")??);
    }
    let seconds = started.elapsed().as_secs_f64();
    took.sort();
    let at = |q: f64| {
        let i = ((took.len() as f64 * q).ceil() as usize).clamp(1, took.len().max(1)) - 1;
        took.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "flows={} seconds={seconds:.2} per_sec={:.1} p50_ms={:.1} p99_ms={:.1}",
        took.len(),
        took.len() as f64 / seconds,
        at(0.50),
        at(0.99)
    );
    Ok(())
}

/// One whole flow for `user_id`, as a browser would follow it.
async fn flow(run: &Run, user_id: &str) -> anyhow::Result<()> {
    let link: serde_json::Value = run
        .client
        .post(format!("{}/v1/connect-sessions", run.base))
        .header(AUTHORIZATION, format!("Bearer {}", run.key))
        .json(&serde_json::json!({
            "userId": user_id,
            "provider": "google",
            "returnTo": run.return_to,
            "loginHint": format!("{user_id}@example.com"),
        }))
        .send()
        .await?
        .error_for_status()
        .context("making the connect link")?
        .json()
        .await?;
    let start_url = link["url"].as_str().context("the link's url")?;

    let start = run.client.get(start_url).send().await?;
    ensure!(
        start.status() == StatusCode::FOUND,
        "/start answered {}",
        start.status()
    );
    let cookie = start
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .context("/start set no binding cookie")?
        .to_string();
    let authorize = location(&start)?;

    let provider = run.client.get(authorize).send().await?;
    ensure!(
        provider.status().is_redirection(),
        "the provider's /authorize answered {}",
        provider.status()
    );
    let callback = location(&provider)?;

    let back = run
        .client
        .get(callback)
        .header(COOKIE, cookie)
        .send()
        .await?;
    let to = location(&back).with_context(|| format!("the callback answered {}", back.status()))?;
    let to = Url::parse(&to).context("the return redirect is not a URL")?;
    let query = |name: &str| {
        to.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    match query("status").as_deref() {
        Some("connected") => Ok(()),
        Some("pending_confirmation") => {
            let flow_id = query("flowId").context("a pending return without flowId")?;
            let code =
                query("confirmationCode").context("a pending return without confirmationCode")?;
            let confirmed = run
                .client
                .post(format!(
                    "{}/v1/connect-sessions/{flow_id}/confirm",
                    run.base
                ))
                .header(AUTHORIZATION, format!("Bearer {}", run.key))
                .json(&serde_json::json!({ "userId": user_id, "confirmationCode": code }))
                .send()
                .await?;
            ensure!(
                confirmed.status().is_success(),
                "the confirm call answered {}",
                confirmed.status()
            );
            Ok(())
        }
        // The status only: the redirect may carry a confirmation code.
        other => bail!("the callback's return redirect said status={other:?}"),
    }
}

fn location(response: &reqwest::Response) -> anyhow::Result<String> {
    Ok(response
        .headers()
        .get(LOCATION)
        .context("no Location")?
        .to_str()
        .context("a Location that is not text")?
        .to_string())
}
