//! The refresh keeps its promise under faults: callers that give up, concurrent
//! writers, slow and failing providers, short-lived tokens, a store that stops for a
//! moment, shutdown in the middle of a refresh. Each against a provider that rotates
//! refresh tokens and rejects a spent one, so a second redeem of one token shows up as
//! a 409 and in [`FakeProvider::spent_refresh_tokens_presented`].

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::fake_provider::RefreshBehaviour;
use crate::support::{
    API_KEY, Backend, FakeProvider, TestApp, assert_problem,
    assert_stored_refresh_token_is_the_latest, provider_of_shape,
};

on_every_backend_and_provider!(
    a_caller_that_gives_up_does_not_spend_the_refresh,
    a_slow_refresh_elsewhere_does_not_break_reads_that_write_last_used,
    a_background_refresh_survives_reads_that_write_last_used,
    tokens_shorter_than_the_margin_are_refreshed_once,
    shutdown_waits_for_a_refresh_in_flight,
    a_failing_provider_cools_down,
    consecutive_failures_open_the_providers_circuit,
    a_lost_answer_is_named_when_the_grant_then_dies,
    a_store_write_failing_after_the_redeem_loses_nothing,
    a_new_grant_never_inherits_a_dead_refresh_token,
);

/// A rotating provider whose tokens expire at once, and an app with `user` connected.
async fn rotating(backend: Backend, user: &str, extra: &[(&str, &str)]) -> (FakeProvider, TestApp) {
    let provider = provider_of_shape().await;
    provider.set_access_token_ttl(0);
    provider.rotate_refresh_tokens(true);
    let app = TestApp::on(backend, &provider, extra).await;
    assert!(app.connect(user).await.status().is_success());
    provider.set_access_token_ttl(3600);
    (provider, app)
}

async fn access_token(response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::OK, "token read succeeds");
    let body: Value = response.json().await.expect("json");
    body["accessToken"].as_str().expect("token").to_string()
}

/// A caller that gives up after 300 ms (a client timeout, a load balancer's idle
/// timeout) while its token read is still in flight.
async fn give_up_reading(url: impl reqwest::IntoUrl) {
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let gave_up = impatient.get(url).bearer_auth(API_KEY).send().await;
    assert!(gave_up.is_err(), "the caller gave up before the answer");
}

/// Waits until the provider has decided `n` refreshes (bounded).
async fn until_refreshes(provider: &FakeProvider, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while provider.refresh_count() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        provider.refresh_count() >= n,
        "the provider saw the refresh"
    );
}

async fn a_caller_that_gives_up_does_not_spend_the_refresh(backend: Backend) {
    let (provider, app) = rotating(backend, "quitter", &[]).await;
    provider.refresh_failure([RefreshBehaviour::HoldAnswer(Duration::from_millis(1500))]);
    give_up_reading(app.url(&format!("/v1/users/quitter/tokens/{}", app.provider))).await;
    let token = access_token(app.token("quitter").await).await;
    assert_eq!(Some(token.clone()), provider.latest_access_token());
    assert_eq!(provider.refresh_count(), 1, "one redeem for both callers");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(access_token(app.token("quitter").await).await, token);
    assert_eq!(provider.refresh_count(), 1);
    assert_stored_refresh_token_is_the_latest(&app, &provider, "quitter").await;
}

/// Reads until the provider's latest access token is served (the refresh's write may
/// land a moment after its answer); every read must be 200.
async fn latest_served(app: &TestApp, provider: &FakeProvider, user: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let token = access_token(app.token(user).await).await;
        if Some(&token) == provider.latest_access_token().as_ref() || Instant::now() > deadline {
            return token;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads `user` on `app` every 50 ms until `stop`; every read must be 200. Returns the
/// number of reads.
async fn read_loop(app: &TestApp, user: &str, until: Instant) -> usize {
    let mut reads = 0;
    while Instant::now() < until {
        let response = app.token(user).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "read {reads} answered 200"
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    reads
}

/// Instance A (margin 2 s) serves reads and writes `lastUsed` on every one while
/// instance B (margin 7200 s, so it wants a refresh as soon as the token is past half
/// its life) refreshes slowly. A's writes must not break B's lease.
async fn a_slow_refresh_elsewhere_does_not_break_reads_that_write_last_used(backend: Backend) {
    let provider = provider_of_shape().await;
    provider.rotate_refresh_tokens(true);
    provider.set_access_token_ttl(12);
    let settings = [
        ("AXNT_REFRESH_MARGIN_SECS", "2"),
        ("AXNT_LAST_USED_INTERVAL_SECS", "0"),
    ];
    let a = TestApp::on(backend, &provider, &settings).await;
    let b = a
        .sibling_with(&[("AXNT_REFRESH_MARGIN_SECS", "7200")])
        .await;
    assert!(a.connect("shared").await.status().is_success());
    let connected = Instant::now();
    provider.set_access_token_ttl(3600);
    provider.refresh_failure([RefreshBehaviour::HoldAnswer(Duration::from_millis(1500))]);
    // B holds a 12-second token to 6 s: due once 6 s have passed. A's margin is 2 s.
    tokio::time::sleep_until((connected + Duration::from_millis(6300)).into()).await;
    let eager = tokio::spawn({
        let (http, url) = (
            b.http.clone(),
            b.url(&format!("/v1/users/shared/tokens/{}", b.provider)),
        );
        async move { http.get(url).bearer_auth(API_KEY).send().await }
    });
    until_refreshes(&provider, 1).await;
    let reads = read_loop(&a, "shared", Instant::now() + Duration::from_millis(1800)).await;
    assert!(reads >= 5, "A served reads while B refreshed ({reads})");
    let b_token = access_token(eager.await.expect("task").expect("send")).await;
    assert_eq!(Some(b_token.clone()), provider.latest_access_token());
    assert_eq!(provider.refresh_count(), 1);
    assert_eq!(latest_served(&a, &provider, "shared").await, b_token);
    assert_eq!(access_token(b.token("shared").await).await, b_token);
    assert_eq!(provider.refresh_count(), 1);
    assert_stored_refresh_token_is_the_latest(&a, &provider, "shared").await;
}

/// The same within one instance: a background refresh (slow) while foreground reads
/// write `lastUsed` on every read.
async fn a_background_refresh_survives_reads_that_write_last_used(backend: Backend) {
    let provider = provider_of_shape().await;
    provider.rotate_refresh_tokens(true);
    provider.set_access_token_ttl(12);
    let app = TestApp::on(
        backend,
        &provider,
        &[
            ("AXNT_REFRESH_MARGIN_SECS", "2"),
            ("AXNT_LAST_USED_INTERVAL_SECS", "0"),
            ("AXNT_BACKGROUND_REFRESH_SECS", "1"),
        ],
    )
    .await;
    assert!(app.connect("busy").await.status().is_success());
    let connected = Instant::now();
    provider.set_access_token_ttl(3600);
    provider.refresh_failure([RefreshBehaviour::HoldAnswer(Duration::from_millis(1500))]);
    // Background refresh looks 2 s + two passes ahead, capped at half the 12-second
    // life: due after ~8 s. Foreground reads (margin 2 s) are served until ~10 s.
    let reads = read_loop(&app, "busy", connected + Duration::from_millis(9700)).await;
    assert!(reads >= 20, "{reads} reads");
    assert_eq!(
        provider.refresh_count(),
        1,
        "refreshed once, in the background"
    );
    let token = latest_served(&app, &provider, "busy").await;
    assert_eq!(Some(token), provider.latest_access_token());
    assert_eq!(provider.refresh_count(), 1);
    assert_stored_refresh_token_is_the_latest(&app, &provider, "busy").await;
}

async fn tokens_shorter_than_the_margin_are_refreshed_once(backend: Backend) {
    let (provider, app) = rotating(backend, "brief", &[]).await;
    provider.set_access_token_ttl(120); // shorter than the default 300 s margin
    let first = access_token(app.token("brief").await).await;
    assert_eq!(provider.refresh_count(), 1);
    for _ in 0..10 {
        assert_eq!(access_token(app.token("brief").await).await, first);
    }
    assert_eq!(
        provider.refresh_count(),
        1,
        "10 reads after a refresh: no new refresh"
    );
}

/// Shutdown (what SIGTERM starts) while a refresh waits on a slow provider and its
/// caller has gone: the instance finishes the refresh before it exits.
async fn shutdown_waits_for_a_refresh_in_flight(backend: Backend) {
    let (provider, app) = rotating(backend, "leaving", &[]).await;
    let survivor = app.sibling().await;
    provider.refresh_failure([RefreshBehaviour::HoldAnswer(Duration::from_millis(2000))]);
    give_up_reading(app.url(&format!("/v1/users/leaving/tokens/{}", app.provider))).await;
    until_refreshes(&provider, 1).await;
    app.stop().await;
    let row = survivor.stored_row("leaving").await.expect("row");
    assert!(
        row.access_token_expires_at > chrono::Utc::now().timestamp() + 3000,
        "the provider's new tokens were stored before exit"
    );
    assert_eq!(row.refresh.lease, None);
    assert_eq!(
        Some(access_token(survivor.token("leaving").await).await),
        provider.latest_access_token()
    );
    assert_eq!(provider.refresh_count(), 1);
    assert_stored_refresh_token_is_the_latest(&survivor, &provider, "leaving").await;
}

/// The same through the binary and a real SIGTERM: the process exits 0 only after the
/// refresh its gone caller started has stored the provider's new tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_waits_for_a_refresh_in_flight() {
    let (provider, app) = rotating(Backend::Embedded, "signal", &[]).await;
    provider.refresh_failure([RefreshBehaviour::HoldAnswer(Duration::from_millis(2000))]);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_axnt-oauth"));
    command
        .env_clear()
        .envs(app.base_env.iter().cloned())
        .env("AXNT_DATA_DIR", app.data_dir.path())
        .env("AXNT_LISTEN_ADDR", format!("127.0.0.1:{port}"))
        .env("AXNT_ADMIN_LISTEN_ADDR", "127.0.0.1:0")
        .env("AXNT_PUBLIC_BASE_URL", &base)
        .current_dir(app.data_dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut server = command.spawn().expect("spawn the binary");
    let deadline = Instant::now() + Duration::from_secs(20);
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        assert!(Instant::now() < deadline, "the binary came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    give_up_reading(format!("{base}/v1/users/signal/tokens/google")).await;
    until_refreshes(&provider, 1).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "graceful exit on SIGTERM");
    let row = app.stored_row("signal").await.expect("row");
    assert!(
        row.access_token_expires_at > chrono::Utc::now().timestamp() + 3000,
        "the provider's new tokens were stored before the process exited"
    );
    assert_eq!(
        Some(access_token(app.token("signal").await).await),
        provider.latest_access_token()
    );
    assert_eq!(provider.refresh_count(), 1);
    assert_stored_refresh_token_is_the_latest(&app, &provider, "signal").await;
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds")
}

async fn a_failing_provider_cools_down(backend: Backend) {
    let settings = [
        ("AXNT_REFRESH_DEADLINE_SECS", "1"),
        ("AXNT_REFRESH_COOLDOWN_SECS", "3"),
    ];
    let (provider, app) = rotating(backend, "cool", &settings).await;
    let other = app.sibling().await;
    provider.refresh_failure(RefreshBehaviour::Status(500).times(1000));
    assert_problem(app.token("cool").await, 503, "provider_unavailable").await;
    let attempts = provider.refresh_count();
    assert!(
        attempts >= 2,
        "the failing refresh was retried within its deadline"
    );
    for instance in [&app, &other, &app] {
        let response = instance.token("cool").await;
        let wait = retry_after(&response);
        assert!((1..=3).contains(&wait), "Retry-After {wait}");
        let body = assert_problem(response, 503, "provider_unavailable").await;
        assert_eq!(body["cause"], "cooldown");
    }
    assert_eq!(
        provider.refresh_count(),
        attempts,
        "no provider call during the cooldown"
    );
    let metrics = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(
        text.contains("axnt_token_refresh_suppressed_total"),
        "suppressed reads are counted"
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    provider.clear_refresh_failures();
    assert_eq!(
        Some(access_token(app.token("cool").await).await),
        provider.latest_access_token(),
        "after the cooldown the next read refreshes"
    );
    assert_stored_refresh_token_is_the_latest(&app, &provider, "cool").await;
}

async fn consecutive_failures_open_the_providers_circuit(backend: Backend) {
    let settings = [
        ("AXNT_REFRESH_DEADLINE_SECS", "1"),
        ("AXNT_PROVIDER_CIRCUIT_FAILURES", "2"),
        ("AXNT_PROVIDER_CIRCUIT_OPEN_SECS", "2"),
    ];
    let (provider, app) = rotating(backend, "c1", &settings).await;
    provider.set_access_token_ttl(0);
    for user in ["c2", "c3"] {
        assert!(app.connect(user).await.status().is_success());
    }
    provider.set_access_token_ttl(3600);
    provider.refresh_failure(RefreshBehaviour::Status(503).times(1000));
    for user in ["c1", "c2"] {
        assert_problem(app.token(user).await, 503, "provider_unavailable").await;
    }
    let attempts = provider.refresh_count();
    let response = app.token("c3").await;
    assert!(retry_after(&response) >= 1);
    let body = assert_problem(response, 503, "provider_unavailable").await;
    assert_eq!(body["cause"], "circuit_open");
    assert_eq!(
        provider.refresh_count(),
        attempts,
        "an open circuit calls nobody"
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    provider.clear_refresh_failures();
    assert_eq!(
        app.token("c3").await.status(),
        StatusCode::OK,
        "a probe closes it"
    );
    assert_eq!(provider.refresh_count(), attempts + 1);
}

/// The refresh request reaches the provider, which redeems (rotates) the token, but
/// the answer never comes back (the call times out): the token is not presented again
/// at once, and when it is later refused, the 409 names the lost answer as the cause.
async fn a_lost_answer_is_named_when_the_grant_then_dies(backend: Backend) {
    let settings = [
        ("AXNT_PROVIDER_TIMEOUT_SECS", "1"),
        ("AXNT_REFRESH_COOLDOWN_SECS", "1"),
    ];
    let (provider, app) = rotating(backend, "lost", &settings).await;
    provider.refresh_failure([RefreshBehaviour::HoldAnswer(Duration::from_millis(2500))]);
    let response = app.token("lost").await;
    let body = assert_problem(response, 503, "provider_unavailable").await;
    assert_eq!(body["cause"], "refresh_outcome_unknown");
    assert_eq!(
        provider.refresh_count(),
        1,
        "a possibly redeemed token is not sent again"
    );
    let items = app.flow_log("lost").await;
    assert!(
        items
            .iter()
            .any(|i| i["step"] == "refresh_failed"
                && i["data"]["reason"] == "refresh_outcome_unknown"),
        "the unknown outcome is in the flow log"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let body = assert_problem(app.token("lost").await, 409, "reauthorization_required").await;
    assert_eq!(body["cause"], "refresh_outcome_unknown");
    let row = app.stored_row("lost").await.expect("row");
    assert!(!row.is_active);
    assert_eq!(
        row.refresh.inactive_cause.as_deref(),
        Some("refresh_outcome_unknown")
    );
}

/// The store stops for a moment right after the provider redeemed (and rotated) the
/// refresh token: aws, the DynamoDB endpoint cut behind a proxy; embedded, the SQLite
/// file write-locked by another process for longer than its busy timeout. The caller
/// gets the new token (or a 503), the write lands once the store is back, and the old
/// refresh token is never presented again.
async fn a_store_write_failing_after_the_redeem_loses_nothing(backend: Backend) {
    let provider = provider_of_shape().await;
    provider.set_access_token_ttl(0);
    provider.rotate_refresh_tokens(true);
    let proxy = crate::support::CuttableProxy::start(&match backend {
        Backend::Aws => crate::support::aws::moto_endpoint(),
        Backend::Embedded => "http://127.0.0.1:9".into(), // unused
    })
    .await;
    let app = match backend {
        Backend::Embedded => TestApp::on(backend, &provider, &[]).await,
        Backend::Aws => TestApp::aws_behind(&proxy, &provider, &[]).await,
    };
    assert!(app.connect("stormy").await.status().is_success());
    provider.set_access_token_ttl(3600);
    provider.refresh_failure([RefreshBehaviour::HoldAnswer(Duration::from_millis(1500))]);
    let reader = tokio::spawn({
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/v1/users/stormy/tokens/{}", app.provider)),
        );
        async move { http.get(url).bearer_auth(API_KEY).send().await }
    });
    until_refreshes(&provider, 1).await;
    // The provider has redeemed; its answer is on the way. Stop the store.
    let outage = match backend {
        Backend::Aws => {
            proxy.cut();
            tokio::spawn(async { tokio::time::sleep(Duration::from_secs(4)).await })
        }
        Backend::Embedded => {
            let db = app.data_dir.path().join("axnt-oauth.db");
            let (locked_tx, locked_rx) = tokio::sync::oneshot::channel();
            let task = tokio::task::spawn_blocking(move || {
                let other = rusqlite::Connection::open(db).expect("open the database");
                other.execute_batch("BEGIN IMMEDIATE").expect("write lock");
                let _ = locked_tx.send(());
                // The answer arrives 1.5 s in; the service's write then waits its busy
                // timeout (5 s) and fails. Held past that, so the first write must fail.
                std::thread::sleep(Duration::from_millis(9000));
                other.execute_batch("COMMIT").expect("unlock");
            });
            locked_rx.await.expect("locked");
            tokio::spawn(async move { task.await.expect("lock task") })
        }
    };
    let answered = reader.await.expect("task").expect("send");
    let status = answered.status();
    assert!(
        status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
        "the caller gets the new token or a 503, not {status}"
    );
    if status == StatusCode::OK {
        assert_eq!(
            Some(access_token(answered).await),
            provider.latest_access_token()
        );
    }
    outage.await.expect("outage");
    proxy.restore();
    // Once the store is back the retried write lands.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let row = app.stored_row("stormy").await.expect("row");
        if row.access_token_expires_at > chrono::Utc::now().timestamp() + 3000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the refreshed tokens were stored after the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        Some(access_token(app.token("stormy").await).await),
        provider.latest_access_token()
    );
    assert_eq!(
        provider.refresh_count(),
        1,
        "the old refresh token was never presented again"
    );
    assert_stored_refresh_token_is_the_latest(&app, &provider, "stormy").await;
}

/// A row marked inactive holds a refresh token known dead: a re-connect whose answer
/// carries no refresh token must not carry that one over (Google omits it on a
/// re-consent), so the token API asks for reauthorization instead of presenting it.
async fn a_new_grant_never_inherits_a_dead_refresh_token(backend: Backend) {
    let (provider, app) = rotating(backend, "revived", &[]).await;
    provider.set_access_token_ttl(0);
    provider.refresh_failure([RefreshBehaviour::InvalidGrant]);
    let dead = assert_problem(app.token("revived").await, 409, "reauthorization_required").await;
    assert_eq!(dead["cause"], "unknown_invalid_grant");
    let presented = provider.refresh_count();
    provider.omit_refresh_token_on_code(true);
    assert!(app.connect("revived").await.status().is_success());
    let items = app.flow_log("revived").await;
    let stored = items
        .iter()
        .find(|i| i["step"] == "tokens_stored")
        .expect("tokens_stored");
    assert_eq!(stored["data"]["keptRefreshToken"], false);
    let body = assert_problem(app.token("revived").await, 409, "reauthorization_required").await;
    assert_eq!(body["cause"], "no_refresh_token");
    assert_eq!(
        provider.refresh_count(),
        presented,
        "the dead refresh token was not presented"
    );
}
