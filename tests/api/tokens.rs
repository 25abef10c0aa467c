//! Token reads and the refresh behind them: an expired token is refreshed once, however
//! many callers and instances ask; what a refresh answer with or without a new refresh
//! token (or a re-consent without one) leaves stored; the provider's refusals and
//! failures; background refresh; and reads that stay reads.
//!
//! The same promises under faults (callers that give up, slow and failing providers,
//! a store that stops, shutdown) are in `refresh_faults`.

on_every_backend!(
    an_expired_access_token_is_refreshed_once_and_the_refresh_token_kept,
    a_refresh_without_refresh_token_in_the_answer_keeps_the_stored_one,
    a_rotated_refresh_token_replaces_the_stored_one,
    invalid_grant_marks_the_row_inactive_and_answers_409,
    provider_failure_on_refresh_is_503_and_leaves_the_row,
    a_provider_failing_twice_is_retried_to_success,
    concurrent_reads_share_one_refresh,
    two_instances_share_one_refresh,
    a_slow_provider_is_still_refreshed_once,
    reconsent_without_refresh_token_keeps_the_old_one,
    reads_do_not_become_writes,
    background_refresh_renews_recently_read_tokens,
);

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::fake_provider::RefreshBehaviour;
use crate::support::{
    API_KEY, Backend, FakeProvider, TestApp, assert_problem,
    assert_stored_refresh_token_is_the_latest,
};

async fn an_expired_access_token_is_refreshed_once_and_the_refresh_token_kept(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0); // expired as soon as issued
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("carol").await.status().is_success());
    let first_access = provider.latest_access_token().expect("issued");
    let original_refresh = provider.latest_refresh_token().expect("issued");

    provider.set_access_token_ttl(3600);
    let token: Value = app.token("carol").await.json().await.expect("json");
    assert_eq!(provider.refresh_count(), 1);
    let refreshed = provider.latest_access_token().expect("issued");
    assert_ne!(refreshed, first_access);
    assert_eq!(token["accessToken"], refreshed);

    // Fresh now: served from the row, no second refresh.
    let again: Value = app.token("carol").await.json().await.expect("json");
    assert_eq!(again["accessToken"], refreshed);
    assert_eq!(provider.refresh_count(), 1);

    // The refresh answer had no refresh token (like Google): the stored one still works.
    let refresh_requests = provider.token_requests();
    let used: Vec<_> = refresh_requests
        .iter()
        .filter(|r| r.grant_type == "refresh_token")
        .filter_map(|r| r.params.get("refresh_token").cloned())
        .collect();
    assert_eq!(used, vec![original_refresh.clone()]);
    assert!(provider.is_refresh_token_valid(&original_refresh));
    let steps = app.steps("carol").await;
    assert_eq!(steps.iter().filter(|s| *s == "token_refreshed").count(), 1);
}

async fn a_refresh_without_refresh_token_in_the_answer_keeps_the_stored_one(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    provider.omit_refresh_token_on_refresh(true);
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("dave").await.status().is_success());
    let original_refresh = provider.latest_refresh_token().expect("issued");
    for round in 1..=3 {
        let response = app.token("dave").await;
        assert_eq!(response.status(), StatusCode::OK, "round {round}");
        assert_eq!(provider.refresh_count(), round);
    }
    let used: Vec<_> = provider
        .token_requests()
        .iter()
        .filter(|r| r.grant_type == "refresh_token")
        .filter_map(|r| r.params.get("refresh_token").cloned())
        .collect();
    assert_eq!(
        used,
        vec![original_refresh; 3],
        "every refresh used the one stored refresh token"
    );
}

async fn a_rotated_refresh_token_replaces_the_stored_one(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    provider.rotate_refresh_tokens(true);
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("erin").await.status().is_success());
    for _ in 0..3 {
        assert_eq!(app.token("erin").await.status(), StatusCode::OK);
    }
    assert_eq!(
        provider.refresh_count(),
        3,
        "each rotation was accepted: the latest token was stored each time"
    );
}

async fn invalid_grant_marks_the_row_inactive_and_answers_409(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("frank").await.status().is_success());
    provider.refresh_failure([RefreshBehaviour::InvalidGrant]);
    assert_problem(app.token("frank").await, 409, "reauthorization_required").await;
    let row = app.stored_row("frank").await.expect("row kept");
    assert!(!row.is_active);
    assert!(
        row.expires_at < chrono::Utc::now().timestamp() + 31 * 86_400,
        "short retention once inactive"
    );
    // Stays 409 without asking the provider again.
    assert_problem(app.token("frank").await, 409, "reauthorization_required").await;
    assert_eq!(provider.refresh_count(), 1);
    let items = app.flow_log("frank").await;
    let failed = items
        .iter()
        .find(|i| i["step"] == "refresh_failed")
        .expect("refresh_failed logged");
    assert_eq!(failed["data"]["reason"], "unknown_invalid_grant");
    let connections: Value = app
        .api_get("/v1/users/frank/connections")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(connections["connections"][0]["isActive"], false);
}

async fn provider_failure_on_refresh_is_503_and_leaves_the_row(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(backend, &provider, &[("AXNT_REFRESH_DEADLINE_SECS", "1")]).await;
    assert!(app.connect("gina").await.status().is_success());
    let before = app.stored_row("gina").await.expect("row");
    provider.refresh_failure(RefreshBehaviour::Status(500).times(1000));
    assert_problem(app.token("gina").await, 503, "provider_unavailable").await;
    assert!(provider.refresh_count() >= 2, "retried within the deadline");
    let after = app.stored_row("gina").await.expect("row");
    assert_eq!(
        after.encrypted_tokens, before.encrypted_tokens,
        "stored tokens untouched"
    );
    assert_eq!(
        after.access_token_expires_at,
        before.access_token_expires_at
    );
    assert!(after.is_active);
    assert_eq!(after.refresh.lease, None, "the lease was given back");
    let items = app.flow_log("gina").await;
    assert!(items.iter().any(|i| i["step"] == "refresh_failed" && i["data"]["reason"] == "provider_unavailable"));
}

async fn a_provider_failing_twice_is_retried_to_success(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("gus").await.status().is_success());
    provider.set_access_token_ttl(3600);
    provider.refresh_failure(RefreshBehaviour::Status(500).times(2));
    let response = app.token("gus").await;
    assert_eq!(response.status(), StatusCode::OK);
    let token: Value = response.json().await.expect("json");
    assert_eq!(
        token["accessToken"],
        provider.latest_access_token().expect("issued")
    );
    assert_eq!(
        provider.refresh_count(),
        3,
        "two failures, then the success"
    );
}

async fn concurrent_reads_share_one_refresh(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    provider.rotate_refresh_tokens(true); // a second redeem of one token would be invalid_grant
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("hot").await.status().is_success());
    provider.set_access_token_ttl(3600);
    provider.refresh_failure([RefreshBehaviour::Delay(Duration::from_millis(300))]);
    let tokens = read_concurrently(&[&app], "hot", 200).await;
    assert_eq!(
        provider.refresh_count(),
        1,
        "one upstream refresh for 200 readers"
    );
    let latest = provider.latest_access_token().expect("issued");
    assert!(
        tokens.iter().all(|t| *t == latest),
        "every reader got the one new token"
    );
    assert_eq!(provider.valid_refresh_tokens().len(), 1);
}

async fn two_instances_share_one_refresh(backend: Backend) {
    refresh_once_across_two_instances(backend, &[], Duration::from_millis(300), 500).await;
}

/// A provider slower than the readers' patience per poll: the lease (refresh deadline +
/// 10 s) outlasts the slow refresh, so the waiting instance never takes it over and the
/// one refresh token is redeemed once.
async fn a_slow_provider_is_still_refreshed_once(backend: Backend) {
    let settings = [("AXNT_REFRESH_DEADLINE_SECS", "4")];
    refresh_once_across_two_instances(backend, &settings, Duration::from_millis(2500), 40).await;
}

/// `reads` concurrent reads of one expired token, split across two instances sharing
/// one store, against a provider that rotates refresh tokens and rejects a reused one
/// (a double redeem would be a 409) and answers the refresh after `delay`.
async fn refresh_once_across_two_instances(
    backend: Backend,
    settings: &[(&str, &str)],
    delay: Duration,
    reads: usize,
) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    provider.rotate_refresh_tokens(true);
    let a = TestApp::on(backend, &provider, settings).await;
    let b = a.sibling().await;
    assert!(a.connect("shared").await.status().is_success());
    provider.set_access_token_ttl(3600);
    provider.refresh_failure([RefreshBehaviour::Delay(delay)]);
    let tokens = read_concurrently(&[&a, &b], "shared", reads).await;
    assert_eq!(
        provider.refresh_count(),
        1,
        "one refresh across two instances"
    );
    let latest = provider.latest_access_token().expect("issued");
    assert!(
        tokens.iter().all(|t| *t == latest),
        "every reader got the one new token"
    );
    let row = a.stored_row("shared").await.expect("row");
    assert_eq!(
        row.refresh.lease, None,
        "the lease was cleared by the winner's write"
    );
    assert_stored_refresh_token_is_the_latest(&a, &provider, "shared").await;
}

/// `n` concurrent token reads of `user_id`, spread over `apps` in turn; each must
/// succeed. Returns the access tokens they got.
async fn read_concurrently(apps: &[&TestApp], user_id: &str, n: usize) -> Vec<String> {
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let app = apps[i % apps.len()];
            let http = app.http.clone();
            let url = app.url(&format!("/v1/users/{user_id}/tokens/google"));
            tokio::spawn(async move {
                let response = http
                    .get(url)
                    .bearer_auth(API_KEY)
                    .send()
                    .await
                    .expect("send");
                let status = response.status();
                let body = response.json::<Value>().await.expect("json");
                assert_eq!(status, StatusCode::OK, "no caller gets an error: {body}");
                body["accessToken"].as_str().expect("token").to_string()
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for h in handles {
        tokens.push(h.await.expect("task"));
    }
    tokens
}

async fn reconsent_without_refresh_token_keeps_the_old_one(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("hank").await.status().is_success());
    let original_refresh = provider.latest_refresh_token().expect("issued");

    provider.omit_refresh_token_on_code(true);
    provider.set_access_token_ttl(0);
    assert!(app.connect("hank").await.status().is_success());
    let row = app.stored_row("hank").await.expect("row");
    assert_eq!(row.version, 2);

    // The re-consent's access token is already due: the refresh must use the refresh
    // token of the first grant.
    assert_eq!(app.token("hank").await.status(), StatusCode::OK);
    let used: Vec<_> = provider
        .token_requests()
        .iter()
        .filter(|r| r.grant_type == "refresh_token")
        .filter_map(|r| r.params.get("refresh_token").cloned())
        .collect();
    assert_eq!(used, vec![original_refresh]);
    let items = app.flow_log("hank").await;
    let stored = items
        .iter()
        .find(|i| i["step"] == "tokens_stored")
        .expect("tokens_stored");
    assert_eq!(stored["data"]["keptRefreshToken"], true);
}

async fn reads_do_not_become_writes(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("reader").await.status().is_success());
    let before = app.stored_row("reader").await.expect("row");
    for _ in 0..50 {
        assert_eq!(app.token("reader").await.status(), StatusCode::OK);
    }
    let after = app.stored_row("reader").await.expect("row");
    assert_eq!(
        after.version, before.version,
        "no write within AXNT_LAST_USED_INTERVAL_SECS (60)"
    );
    assert_eq!(after.last_used, before.last_used);

    // With the interval at zero every read moves lastUsed and the purge time.
    let eager = TestApp::on(backend, &provider, &[("AXNT_LAST_USED_INTERVAL_SECS", "0")]).await;
    assert!(eager.connect("reader").await.status().is_success());
    let first = eager.stored_row("reader").await.expect("row");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(eager.token("reader").await.status(), StatusCode::OK);
    let touched = eager.stored_row("reader").await.expect("row");
    assert!(touched.last_used > first.last_used);
    assert!(touched.expires_at >= first.expires_at);
    assert_eq!(
        touched.version, first.version,
        "lastUsed is a partial update: the token version stays"
    );
    assert_eq!(touched.encrypted_tokens, first.encrypted_tokens);
}

async fn background_refresh_renews_recently_read_tokens(backend: Backend) {
    let provider = FakeProvider::start().await;
    // A 4-second token is held to half its lifetime: fresh now, due in two seconds.
    provider.set_access_token_ttl(4);
    let app = TestApp::on(backend, &provider, &[("AXNT_BACKGROUND_REFRESH_SECS", "1")]).await;
    assert!(app.connect("early").await.status().is_success());
    assert!(app.connect("idle").await.status().is_success()); // never read: left alone
    assert_eq!(app.token("early").await.status(), StatusCode::OK);
    assert_eq!(provider.refresh_count(), 0);
    provider.set_access_token_ttl(3600);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while provider.refresh_count() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        provider.refresh_count(),
        1,
        "refreshed ahead of time, without a reader"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        provider.refresh_count(),
        1,
        "the idle connection and the fresh one are left alone"
    );
    let token: Value = app.token("early").await.json().await.expect("json");
    assert_eq!(
        token["accessToken"],
        provider.latest_access_token().expect("issued")
    );
}
