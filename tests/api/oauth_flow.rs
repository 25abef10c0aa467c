//! The core flow on the embedded backend, through the real router on a real socket,
//! against the fake OpenID provider: connect, store encrypted, hand out valid tokens,
//! refresh, reject bad input without touching stored data, keep secrets out of logs.

on_every_backend!(
    full_flow_stores_encrypted_tokens_and_serves_them,
    a_flow_without_return_url_ends_on_a_success_page,
    an_expired_access_token_is_refreshed_once_and_the_refresh_token_kept,
    a_refresh_without_refresh_token_in_the_answer_keeps_the_stored_one,
    a_rotated_refresh_token_replaces_the_stored_one,
    invalid_grant_marks_the_row_inactive_and_answers_409,
    provider_failure_on_refresh_is_503_and_leaves_the_row,
    a_provider_failing_twice_is_retried_to_success,
    concurrent_reads_share_one_refresh,
    two_instances_share_one_refresh,
    a_slow_provider_is_still_refreshed_once,
    a_failed_code_exchange_is_not_retried,
    a_malformed_token_response_is_not_quoted,
    background_refresh_renews_recently_read_tokens,
    reads_do_not_become_writes,
    shutdown_flushes_every_buffered_flow_log_item,
    reconsent_without_refresh_token_keeps_the_old_one,
    tampered_state_is_rejected,
    state_from_another_browser_is_rejected,
    expired_state_is_rejected,
    access_denied_at_the_provider_returns_to_the_app_with_the_error,
    bad_id_tokens_are_rejected_and_store_nothing,
    a_rotated_signing_key_is_fetched_once,
    flows_and_refreshes_outlive_a_discovery_outage,
    return_urls_outside_the_allow_list_are_refused,
    the_internal_api_needs_a_valid_key,
    malformed_requests_get_clear_4xx,
    unknown_providers_are_404,
    a_ciphertext_copied_to_another_row_does_not_decrypt,
    delete_revokes_at_the_provider_and_removes_the_row,
    flow_logs_page_newest_first,
    no_planted_secret_reaches_logs_or_flow_log_items,
    probes_answer
);

mod refresh_faults;

use std::time::Duration;

use crate::support;
use crate::support::fake_provider::{IdTokenTamper, RefreshBehaviour};
use crate::support::{
    API_KEY, Backend, FakeProvider, RETURN_ORIGIN, TestApp, assert_problem, contains,
};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn full_flow_stores_encrypted_tokens_and_serves_them(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;

    let session = app
        .connect_session(json!({
            "userId": "alice",
            "provider": "google",
            "scopes": ["https://www.googleapis.com/auth/calendar.readonly"],
            "loginHint": "alice@example.com",
            "returnTo": format!("{RETURN_ORIGIN}/done"),
        }))
        .await;
    let start_url = session["url"].as_str().expect("url");
    assert!(start_url.starts_with(&app.url("/oauth/google/start?session=")));
    assert!(session["flowId"].as_str().is_some_and(|f| !f.is_empty()));

    let (provider_url, cookie) = app.start(start_url).await;
    assert!(
        provider_url
            .as_str()
            .starts_with(&provider.url("/authorize"))
    );
    let params: std::collections::HashMap<String, String> =
        provider_url.query_pairs().into_owned().collect();
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], provider.client_id());
    assert_eq!(params["redirect_uri"], app.url("/oauth/google/callback"));
    let scopes: Vec<&str> = params["scope"].split(' ').collect();
    for wanted in [
        "openid",
        "email",
        "profile",
        "https://www.googleapis.com/auth/calendar.readonly",
    ] {
        assert!(scopes.contains(&wanted), "scope {wanted} in {scopes:?}");
    }
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["code_challenge"].len(), 43);
    assert!(params["nonce"].len() >= 32);
    assert!(params["state"].len() > 100, "state carries the sealed flow");
    assert_eq!(params["access_type"], "offline");
    assert_eq!(params["prompt"], "consent");
    assert_eq!(params["include_granted_scopes"], "true");
    assert_eq!(params["login_hint"], "alice@example.com");
    assert!(cookie.starts_with("axnt_flow_"));

    let callback = app.authorize(&provider_url).await;
    let response = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let back = response.headers()["location"].to_str().expect("ascii");
    assert_eq!(
        back,
        format!("{RETURN_ORIGIN}/done?status=connected&provider=google")
    );

    // Encrypted at rest: no token the provider issued is in the database file.
    let raw = app.raw_storage().await;
    assert!(!raw.is_empty());
    for secret in provider.secrets() {
        assert!(
            !contains(&raw, &secret),
            "database holds no plaintext secret"
        );
    }
    let row = app.stored_row("alice").await.expect("row stored");
    assert_eq!(
        row.email.as_deref(),
        Some(provider.profile().email.as_str())
    );
    assert_eq!(row.encrypted_tokens.alg, "AES-256-GCM");
    assert!(row.is_active);
    assert_eq!(row.version, 1);
    assert!(
        row.expires_at > chrono::Utc::now().timestamp() + 170 * 86_400,
        "row kept ~180 days"
    );

    let response = app.token("alice").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let token: Value = response.json().await.expect("json");
    assert_eq!(
        token["accessToken"],
        provider.latest_access_token().expect("issued")
    );
    assert_eq!(token["tokenType"], "Bearer");
    assert_eq!(token["email"], provider.profile().email);
    assert!(token["expiresAt"].as_str().is_some());

    assert_eq!(
        app.steps("alice").await,
        [
            "session_created",
            "authorize_redirect",
            "callback_received",
            "state_verified",
            "code_exchanged",
            "id_token_verified",
            "tokens_stored",
            "completed"
        ]
    );
    let items = app.flow_log("alice").await;
    assert!(
        items.iter().all(|i| i["flowId"] == session["flowId"]),
        "one flow id across the flow"
    );
    assert!(items.iter().all(|i| i["ipAddress"] == "127.0.0.1"));
}

async fn a_flow_without_return_url_ends_on_a_success_page(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let response = app.connect("bob").await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.expect("text");
    assert!(page.contains("Connected"));
    assert!(page.contains(&provider.profile().email));
}

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
    assert_eq!(failed["data"]["reason"], "invalid_grant");
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

/// The stored refresh token is the provider's latest: removing the connection revokes
/// the stored refresh token at the provider, and that is the last one it issued.
pub(crate) async fn assert_stored_refresh_token_is_the_latest(
    app: &TestApp,
    provider: &FakeProvider,
    user_id: &str,
) {
    assert_eq!(
        provider.spent_refresh_tokens_presented(),
        0,
        "no spent refresh token was presented"
    );
    let response = app
        .api_delete(&format!("/v1/users/{user_id}/connections/google"))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        provider.revoked_tokens().last(),
        provider.latest_refresh_token().as_ref(),
        "the stored refresh token is the latest the provider issued"
    );
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

/// A connected user whose row must not change while bad requests are made.
async fn connected(
    backend: Backend,
    provider: &FakeProvider,
    extra: &[(&str, &str)],
) -> (TestApp, axnt_oauth::store::Connection) {
    let app = TestApp::on(backend, provider, extra).await;
    assert!(app.connect("victim").await.status().is_success());
    let row = app.stored_row("victim").await.expect("row");
    (app, row)
}

async fn assert_unchanged(app: &TestApp, row: &axnt_oauth::store::Connection) {
    assert_eq!(
        app.stored_row("victim").await.as_ref(),
        Some(row),
        "stored row unchanged"
    );
}

async fn tampered_state_is_rejected(backend: Backend) {
    let provider = FakeProvider::start().await;
    let (app, row) = connected(backend, &provider, &[]).await;
    let session = app
        .connect_session(json!({ "userId": "victim", "provider": "google" }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let mut tampered = callback.clone();
    let pairs: Vec<(String, String)> = callback.query_pairs().into_owned().collect();
    tampered.query_pairs_mut().clear();
    for (k, v) in pairs {
        let v = if k == "state" {
            format!("{}A", &v[..v.len() - 1])
        } else {
            v
        };
        tampered.query_pairs_mut().append_pair(&k, &v);
    }
    let response = app.callback(&tampered, Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .expect("page")
            .contains("invalid_state")
    );
    let mut missing = callback.clone();
    missing.set_query(Some("code=abc"));
    assert_eq!(
        app.callback(&missing, Some(&cookie)).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        provider.code_exchange_count(),
        1,
        "no code exchanged for a bad state"
    );
    assert_unchanged(&app, &row).await;
}

async fn state_from_another_browser_is_rejected(backend: Backend) {
    let provider = FakeProvider::start().await;
    let (app, row) = connected(backend, &provider, &[]).await;
    let session = app
        .connect_session(json!({ "userId": "victim", "provider": "google" }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;

    let response = app.callback(&callback, None).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .expect("page")
            .contains("browser_mismatch")
    );

    let name = cookie.split('=').next().expect("name");
    let response = app
        .callback(&callback, Some(&format!("{name}=someone-elses-cookie")))
        .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .expect("page")
            .contains("browser_mismatch")
    );
    assert_eq!(provider.code_exchange_count(), 1);
    assert_unchanged(&app, &row).await;
    let items = app.flow_log("victim").await;
    assert!(
        items
            .iter()
            .any(|i| i["step"] == "failed" && i["data"]["code"] == "browser_mismatch")
    );
}

async fn expired_state_is_rejected(backend: Backend) {
    let provider = FakeProvider::start().await;
    let (app, row) = connected(backend, &provider, &[("AXNT_FLOW_STATE_TTL_SECS", "1")]).await;
    let session = app
        .connect_session(json!({ "userId": "victim", "provider": "google" }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let response = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .expect("page")
            .contains("state_expired")
    );
    assert_eq!(provider.code_exchange_count(), 1);
    assert_unchanged(&app, &row).await;
}

async fn access_denied_at_the_provider_returns_to_the_app_with_the_error(backend: Backend) {
    let provider = FakeProvider::start().await;
    let (app, row) = connected(backend, &provider, &[]).await;
    provider.deny_authorization(true);
    let session = app
        .connect_session(
            json!({ "userId": "victim", "provider": "google", "returnTo": RETURN_ORIGIN }),
        )
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let response = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    assert_eq!(
        response.headers()["location"],
        format!("{RETURN_ORIGIN}?status=error&error=access_denied")
    );

    // Without a return URL: a 4xx page naming the code.
    let session = app
        .connect_session(json!({ "userId": "victim", "provider": "google" }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let response = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response
            .text()
            .await
            .expect("page")
            .contains("access_denied")
    );
    assert_unchanged(&app, &row).await;
    let items = app.flow_log("victim").await;
    assert!(
        items
            .iter()
            .any(|i| i["step"] == "failed" && i["data"]["code"] == "access_denied")
    );
}

async fn bad_id_tokens_are_rejected_and_store_nothing(backend: Backend) {
    let provider = FakeProvider::start().await;
    let (app, row) = connected(backend, &provider, &[]).await;
    for (tamper, reason) in [
        (IdTokenTamper::WrongAudience, "wrong_audience"),
        (IdTokenTamper::WrongIssuer, "wrong_issuer"),
        (IdTokenTamper::WrongNonce, "wrong_nonce"),
        (IdTokenTamper::Expired, "expired"),
        (IdTokenTamper::BadSignature, "bad_signature"),
        (IdTokenTamper::Omit, "missing"),
    ] {
        provider.tamper_id_token(tamper);
        let response = app.connect("victim").await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{tamper:?}");
        assert!(
            response
                .text()
                .await
                .expect("page")
                .contains("id_token_invalid"),
            "{tamper:?}"
        );
        assert_unchanged(&app, &row).await;
        let items = app.flow_log("victim").await;
        let failed = items
            .iter()
            .find(|i| i["step"] == "failed")
            .expect("failed logged");
        assert_eq!(failed["data"]["reason"], reason, "{tamper:?}");
    }
}

async fn a_rotated_signing_key_is_fetched_once(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("ivy").await.status().is_success());
    let fetches = provider.jwks_fetches();
    provider.rotate_signing_key();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(
        app.connect("ivy").await.status().is_success(),
        "new kid accepted after one refetch"
    );
    assert_eq!(provider.jwks_fetches(), fetches + 1);
}

/// The discovery endpoint (and the JWKS) goes down, and the cached metadata passes its
/// age limit: a whole flow for another user and a token refresh still work, on the cached
/// metadata, while the refetch tried in the background fails.
async fn flows_and_refreshes_outlive_a_discovery_outage(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(
        backend,
        &provider,
        &[("AXNT_PROVIDER_METADATA_TTL_SECS", "1")],
    )
    .await;
    assert!(app.connect("before").await.status().is_success());
    let fetched = provider.discovery_fetches();
    assert!(fetched >= 1, "the flow fetched discovery");
    provider.set_discovery_available(false);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stale_since = std::time::Instant::now();

    assert!(
        app.connect("during").await.status().is_success(),
        "a whole flow on the cached metadata"
    );
    provider.set_access_token_ttl(3600);
    let response = app.token("before").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a refresh on the cached metadata"
    );
    assert_eq!(provider.refresh_count(), 1);

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while provider.discovery_fetches() == fetched && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attempts = provider.discovery_fetches() - fetched;
    assert!(attempts >= 1, "a refetch was attempted");
    // A failed refetch is tried again at most every 5 s, however many requests find the
    // metadata stale.
    let allowed = 1 + stale_since.elapsed().as_secs() as usize / 5;
    assert!(
        attempts <= allowed,
        "{attempts} refetches, at most {allowed}"
    );
    let issuer = provider.issuer();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let warned = || {
        support::captured_logs().lines().any(|line| {
            line.contains("refetching the provider's metadata failed") && line.contains(&issuer)
        })
    };
    while !warned() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(warned(), "the failed refetch is logged, naming the issuer");
}

async fn return_urls_outside_the_allow_list_are_refused(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    for bad in [
        "https://evil.example.com/",
        "http://127.0.0.1:9/application",
        "http://127.0.0.1:10/app",
        "javascript:alert(1)",
        "not a url",
    ] {
        let response = app
            .api_post(
                "/v1/connect-sessions",
                json!({ "userId": "x", "provider": "google", "returnTo": bad }),
            )
            .await;
        assert_problem(response, 400, "return_url_not_allowed").await;
    }
    assert!(
        app.flow_log("x").await.is_empty(),
        "nothing logged for a refused session"
    );
}

async fn the_internal_api_needs_a_valid_key(backend: Backend) {
    let provider = FakeProvider::start().await;
    let (app, row) = connected(backend, &provider, &[]).await;
    let path = app.url("/v1/users/victim/tokens/google");
    let response = app.http.get(&path).send().await.expect("send");
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_problem(response, 401, "unauthorized").await;
    let response = app
        .http
        .get(&path)
        .bearer_auth("wrong-key-0123456789")
        .send()
        .await
        .expect("send");
    assert_problem(response, 401, "unauthorized").await;
    let response = app
        .http
        .delete(app.url("/v1/users/victim/connections/google"))
        .send()
        .await
        .expect("send");
    assert_problem(response, 401, "unauthorized").await;
    let response = app
        .http
        .get(&path)
        .header("authorization", format!("Basic {API_KEY}"))
        .send()
        .await
        .expect("send");
    assert_problem(response, 401, "unauthorized").await;
    assert_unchanged(&app, &row).await;
    assert!(provider.revoked_tokens().is_empty());
}

async fn malformed_requests_get_clear_4xx(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let post = |body: &'static str, content_type: &'static str| {
        app.http
            .post(app.url("/v1/connect-sessions"))
            .bearer_auth(API_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
    };
    assert_problem(
        post("{not json", "application/json").await.expect("send"),
        400,
        "invalid_request",
    )
    .await;
    assert_problem(
        post(r#"{"provider":"google"}"#, "application/json")
            .await
            .expect("send"),
        400,
        "invalid_request",
    )
    .await;
    assert_problem(
        post(r#"{"userId":"a","provider":"google"}"#, "text/plain")
            .await
            .expect("send"),
        415,
        "unsupported_media_type",
    )
    .await;
    assert_problem(
        post(r#"{"userId":"","provider":"google"}"#, "application/json")
            .await
            .expect("send"),
        400,
        "invalid_request",
    )
    .await;
    assert_problem(
        post(
            r#"{"userId":"a","provider":"google","scopes":["two words"]}"#,
            "application/json",
        )
        .await
        .expect("send"),
        400,
        "invalid_request",
    )
    .await;
    assert_problem(
        app.api_get("/v1/users/a/flow-logs?limit=0").await,
        400,
        "invalid_request",
    )
    .await;
    assert_problem(
        app.api_get("/v1/users/a/flow-logs?limit=many").await,
        400,
        "invalid_request",
    )
    .await;
    assert_problem(app.api_get("/v1/nothing-here").await, 404, "not_found").await;
    let response = app
        .http
        .get(app.url("/oauth/google/start?session=garbage"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let response = app
        .http
        .get(app.url("/oauth/google/start"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

async fn unknown_providers_are_404(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let response = app
        .api_post(
            "/v1/connect-sessions",
            json!({ "userId": "a", "provider": "myspace" }),
        )
        .await;
    assert_problem(response, 404, "unknown_provider").await;
    assert_problem(
        app.api_get("/v1/users/a/tokens/myspace").await,
        404,
        "unknown_provider",
    )
    .await;
    let response = app
        .http
        .get(app.url("/oauth/myspace/start?session=x"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert!(
        response
            .text()
            .await
            .expect("page")
            .contains("unknown_provider")
    );
    assert_problem(
        app.api_get("/v1/users/nobody/tokens/google").await,
        404,
        "not_connected",
    )
    .await;
}

async fn a_ciphertext_copied_to_another_row_does_not_decrypt(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("owner").await.status().is_success());
    assert!(app.connect("thief").await.status().is_success());
    let owner = app.stored_row("owner").await.expect("row");
    let thief = app.stored_row("thief").await.expect("row");
    let forged = axnt_oauth::store::Connection {
        encrypted_tokens: owner.encrypted_tokens.clone(),
        version: thief.version + 1,
        ..thief.clone()
    };
    app.store
        .put(&forged, Some(thief.version))
        .await
        .expect("write forged row");
    assert_problem(app.token("thief").await, 500, "stored_tokens_unreadable").await;
    assert_eq!(
        app.token("owner").await.status(),
        StatusCode::OK,
        "the original row still opens"
    );
}

async fn delete_revokes_at_the_provider_and_removes_the_row(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("jill").await.status().is_success());
    let refresh = provider.latest_refresh_token().expect("issued");
    let listed: Value = app
        .api_get("/v1/users/jill/connections")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(listed["connections"].as_array().map(Vec::len), Some(1));
    assert_eq!(listed["connections"][0]["provider"], "google");
    let text = listed.to_string();
    for secret in provider.secrets() {
        assert!(!text.contains(&secret), "listing carries no token");
    }
    let response = app.api_delete("/v1/users/jill/connections/google").await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(provider.revoked_tokens(), vec![refresh]);
    assert!(app.stored_row("jill").await.is_none());
    assert_problem(app.token("jill").await, 404, "not_connected").await;
    assert_problem(
        app.api_delete("/v1/users/jill/connections/google").await,
        404,
        "not_connected",
    )
    .await;
    let steps = app.steps("jill").await;
    assert!(steps.ends_with(&["revoked".to_string(), "deleted".to_string()]));
}

async fn flow_logs_page_newest_first(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    for _ in 0..3 {
        assert!(app.connect("kim").await.status().is_success());
    }
    let all = app.flow_log("kim").await;
    assert_eq!(all.len(), 24);
    let mut seen = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("/v1/users/kim/flow-logs?limit=5&before={}", urlencode(b)),
            None => "/v1/users/kim/flow-logs?limit=5".to_string(),
        };
        let page: Value = app.api_get(&path).await.json().await.expect("json");
        seen.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["nextBefore"].as_str() {
            Some(next) => before = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, all, "pages add up to the whole log, newest first");
    let stamps: Vec<&str> = all.iter().filter_map(|i| i["timestamp"].as_str()).collect();
    let mut sorted = stamps.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(stamps, sorted);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn no_planted_secret_reaches_logs_or_flow_log_items(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("leo").await.status().is_success());
    assert_eq!(app.token("leo").await.status(), StatusCode::OK);
    provider.refresh_failure([RefreshBehaviour::InvalidGrant]);
    let _ = app.token("leo").await;
    assert!(app.connect("leo").await.status().is_success());
    let _ = app.api_delete("/v1/users/leo/connections/google").await;
    let _ = app
        .http
        .get(app.url("/v1/users/leo/tokens/google"))
        .bearer_auth("planted-wrong-api-key-777")
        .send()
        .await;

    let mut planted = provider.secrets();
    planted.push(API_KEY.to_string());
    planted.push("planted-wrong-api-key-777".to_string());
    let verifiers: Vec<String> = provider
        .token_requests()
        .iter()
        .filter_map(|r| r.params.get("code_verifier").cloned())
        .collect();
    assert!(!verifiers.is_empty());
    planted.extend(verifiers);
    assert!(planted.len() > 8);

    let logs = app_logs_after_flush().await;
    assert!(logs.contains("request"), "logs were captured");
    let items = serde_json::to_string(&app.flow_log("leo").await).expect("json");
    for secret in &planted {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
        assert!(
            !items.contains(secret.as_str()),
            "a secret reached a flow-log item"
        );
    }
}

/// A malformed token response is reported by where it is malformed, never by quoting
/// the value (which, in a token response, may be a token).
async fn a_malformed_token_response_is_not_quoted(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("quoted").await.status().is_success());
    let planted = "planted-token-in-a-bad-field-4711";
    provider.refresh_failure([RefreshBehaviour::RawBody(format!(
        r#"{{"access_token":"at-x","token_type":"Bearer","expires_in":"{planted}"}}"#
    ))]);
    assert_problem(app.token("quoted").await, 502, "provider_error").await;
    let items = serde_json::to_string(&app.flow_log("quoted").await).expect("json");
    assert!(items.contains("refresh_failed"));
    assert!(!items.contains(planted), "flow log quotes no value");
    assert!(
        !app_logs_after_flush().await.contains(planted),
        "logs quote no value"
    );
}

async fn app_logs_after_flush() -> String {
    tokio::time::sleep(Duration::from_millis(50)).await;
    support::captured_logs()
}

async fn probes_answer(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    assert_eq!(
        app.http
            .get(app.url("/healthz"))
            .send()
            .await
            .expect("send")
            .status(),
        StatusCode::OK
    );
    let ready = app.http.get(app.url("/readyz")).send().await.expect("send");
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["store"], "ok");
    assert_eq!(body["checks"]["keys"], "ok");
    assert_eq!(body["checks"]["provider"], "ok");
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("send")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("axnt_http_requests_total"));
}

/// With moto enforcing IAM, a service user holding only the actions of
/// `deploy/iam-policy.json` runs the full flow, the token API (with a refresh),
/// flow-log reads, readiness and a delete: no access denied anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_flow_runs_under_the_least_privilege_policy() {
    use support::aws;
    let moto = aws::OwnMoto::start(&[(
        "INITIAL_NO_AUTH_ACTION_COUNT",
        &(2 * aws::IAM_CALLS_PER_USER).to_string(),
    )])
    .await;
    let admin = aws::iam_user(
        &moto.endpoint,
        "axnt-admin",
        &json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
    )
    .await;
    let service = aws::iam_user(
        &moto.endpoint,
        "axnt-service",
        &aws::runtime_policy_for_moto(&[]),
    )
    .await;
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let fixture = aws::provision(
        &moto.endpoint,
        &admin,
        &provider.client_id(),
        &provider.client_secret(),
        API_KEY,
        None,
    )
    .await;
    let mut env = support::env_for_secret(&provider, &[]);
    env.extend(
        fixture
            .env
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET_ACCESS_KEY")
            })
            .cloned(),
    );
    env.push(("AWS_ACCESS_KEY_ID".into(), service.access_key_id.clone()));
    env.push((
        "AWS_SECRET_ACCESS_KEY".into(),
        service.secret_access_key.clone(),
    ));
    let app = TestApp::spawn_in(
        std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
        env,
    )
    .await;

    let response = app.connect("lp-user").await;
    assert_eq!(response.status(), StatusCode::OK, "callback stored the row");
    assert_eq!(
        app.token("lp-user").await.status(),
        StatusCode::OK,
        "token read with a refresh"
    );
    assert_eq!(provider.refresh_count(), 1);
    assert_eq!(app.steps("lp-user").await.len(), 9, "flow log read back");
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "readiness with the run-time actions only"
    );
    let listed = app.api_get("/v1/users/lp-user/connections").await;
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(
        app.api_delete("/v1/users/lp-user/connections/google")
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert!(
        !support::captured_logs().contains("AccessDenied"),
        "no access denied was logged"
    );
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

async fn shutdown_flushes_every_buffered_flow_log_item(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let settings = app.settings.clone();
    let _keep_data_dir = std::sync::Arc::clone(&app.data_dir);
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let http = app.http.clone();
            let url = app.url("/v1/connect-sessions");
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .bearer_auth(API_KEY)
                    .json(&json!({ "userId": "busy", "provider": "google" }))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(response.status(), StatusCode::CREATED);
            })
        })
        .collect();
    for r in requests {
        r.await.expect("request");
    }
    // Stop at once: whatever is still queued must be written before exit.
    app.stop().await;
    let backends = axnt_oauth::app::Backends::open(&settings)
        .await
        .expect("reopen");
    let items = backends
        .flow_log
        .list("busy", 2000, None)
        .await
        .expect("list");
    assert_eq!(
        items.len(),
        1000,
        "every step written before the process ended"
    );
}

/// The store goes away during the callback's write (aws: DynamoDB and KMS unreachable
/// behind a cut proxy): the browser gets a clear error page, the previous row stays as
/// it was, and the flow's `failed` step is written once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_during_the_callback_changes_nothing() {
    let provider = FakeProvider::start().await;
    let proxy = support::CuttableProxy::start(&support::aws::moto_endpoint()).await;
    let mut env = support::env_for_secret(&provider, &[]);
    for (k, v) in
        support::aws::aws_env(&provider.client_id(), &provider.client_secret(), API_KEY).await
    {
        let v = if k == "AWS_ENDPOINT_URL" {
            proxy.endpoint.clone()
        } else {
            v
        };
        env.push((k, v));
    }
    let app = TestApp::spawn_in(
        std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
        env,
    )
    .await;
    assert!(app.connect("victim").await.status().is_success());
    let before = app.stored_row("victim").await.expect("row");

    let session = app
        .connect_session(json!({ "userId": "victim", "provider": "google" }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    proxy.cut();
    let response = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let page = response.text().await.expect("page");
    assert!(
        page.contains("store_unavailable") || page.contains("keys_unavailable"),
        "{page}"
    );
    proxy.restore();

    assert_eq!(
        app.stored_row("victim").await.as_ref(),
        Some(&before),
        "previous row unchanged"
    );
    let items = app.flow_log("victim").await;
    let failed = items
        .iter()
        .find(|i| i["step"] == "failed" && i["flowId"] == session["flowId"])
        .expect("the failure is in the flow log once the store is back");
    assert_eq!(failed["data"]["atStep"], "tokens_stored");
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

/// Codes are single use: a code exchange that failed upstream is not retried (a retry
/// could only earn invalid_grant, and might redeem a code twice).
async fn a_failed_code_exchange_is_not_retried(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    provider.fail_token_endpoint_with_status(503, 1);
    let response = app.connect("once").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        response
            .text()
            .await
            .expect("page")
            .contains("provider_unavailable")
    );
    assert_eq!(
        provider.code_exchange_count(),
        1,
        "exactly one exchange attempt"
    );
    assert!(app.stored_row("once").await.is_none());
    let items = app.flow_log("once").await;
    let failed = items
        .iter()
        .find(|i| i["step"] == "failed")
        .expect("failed logged");
    assert_eq!(failed["data"]["atStep"], "code_exchanged");
}

/// The client secret is rotated in Secrets Manager and at the provider: the first
/// refresh with the old one earns `invalid_client`, the service re-reads the secret and
/// retries with the new one — no restart, no error for the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_is_used_without_restart() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(Backend::Aws, &provider, &[]).await;
    assert!(app.connect("rotating").await.status().is_success());

    let new_secret = format!("rotated-{}", uuid::Uuid::new_v4().simple());
    publish_client_secret(&app, &provider, &new_secret).await;
    provider.set_client_secret(new_secret.clone());

    let response = app.token("rotating").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "refreshed with the rotated secret"
    );
    let auths: Vec<_> = provider
        .token_requests()
        .iter()
        .filter(|r| r.grant_type == "refresh_token")
        .map(|r| r.status)
        .collect();
    assert_eq!(auths, vec![401, 200], "one invalid_client, then success");
    assert!(
        !support::captured_logs().contains(&new_secret),
        "the new secret is never logged"
    );
}

/// Puts a new version of the app's Secrets Manager secret with `client_secret`.
async fn publish_client_secret(app: &TestApp, provider: &FakeProvider, client_secret: &str) {
    let sdk = axnt_oauth::aws::sdk_config(&app.settings).await;
    let mut state_key = [0u8; 32];
    axnt_oauth::crypto::fill_random(&mut state_key);
    aws_sdk_secretsmanager::Client::new(&sdk)
        .put_secret_value()
        .secret_id(&app.settings.google_secret_id)
        .secret_string(support::aws::secret_json(
            &provider.client_id(),
            client_secret,
            &axnt_oauth::crypto::b64(&state_key),
            API_KEY,
        ))
        .send()
        .await
        .expect("rotate the secret");
}

/// The provider rejects the client on every refresh (its secret was changed there, not
/// in Secrets Manager). The first `invalid_client` re-reads the secret; later ones within
/// AXNT_SECRET_RELOAD_MIN_INTERVAL_SECS do not — a fix published in Secrets Manager
/// meanwhile is picked up only once the interval has passed, and then used at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_rereads_the_secret_at_most_once_per_interval() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(
        Backend::Aws,
        &provider,
        &[("AXNT_SECRET_RELOAD_MIN_INTERVAL_SECS", "3")],
    )
    .await;
    assert!(app.connect("rejected").await.status().is_success());
    let new_secret = format!("rotated-{}", uuid::Uuid::new_v4().simple());
    provider.set_client_secret(new_secret.clone());

    let started = std::time::Instant::now();
    // Re-reads the secret: still the old one, so no retry.
    assert_problem(app.token("rejected").await, 502, "provider_error").await;
    let reread_by = std::time::Instant::now();
    publish_client_secret(&app, &provider, &new_secret).await;
    for _ in 0..3 {
        assert_problem(app.token("rejected").await, 502, "provider_error").await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the reads above fell within the interval"
    );

    tokio::time::sleep_until((reread_by + Duration::from_millis(3200)).into()).await;
    assert_eq!(
        app.token("rejected").await.status(),
        StatusCode::OK,
        "after the interval the secret is re-read and the refresh retried with it"
    );
    let statuses: Vec<_> = provider
        .token_requests()
        .iter()
        .filter(|r| r.grant_type == "refresh_token")
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        vec![401, 401, 401, 401, 401, 200],
        "one try each within the interval; after it, a re-read and one retry"
    );
}
