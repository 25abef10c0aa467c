//! The connect flow, from the internal API's connect link to the stored grant: the
//! authorization request, the callback and what it checks first (state, browser
//! binding, expiry, then the ID token), return URLs, the provider's metadata and signing
//! keys, and what a failure on the way leaves behind.

on_every_backend!(
    full_flow_stores_encrypted_tokens_and_serves_them,
    a_flow_without_return_url_ends_on_a_success_page,
    tampered_state_is_rejected,
    state_from_another_browser_is_rejected,
    state_replays_without_the_cookie_cannot_grow_the_flow_log,
    expired_state_is_rejected,
    access_denied_at_the_provider_returns_to_the_app_with_the_error,
    bad_id_tokens_are_rejected_and_store_nothing,
    a_rotated_signing_key_is_fetched_once,
    flows_and_refreshes_outlive_a_discovery_outage,
    return_urls_outside_the_allow_list_are_refused,
    a_failed_code_exchange_is_not_retried,
    return_urls_are_checked_again_when_the_browser_is_sent_back,
    a_return_url_s_own_status_is_replaced_and_the_flow_id_added,
);

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use url::Url;

use crate::support;
use crate::support::fake_provider::IdTokenTamper;
use crate::support::{
    Backend, FakeProvider, RETURN_ORIGIN, TestApp, assert_problem, assert_unchanged, connected,
    contains,
};

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
    assert_eq!(response.headers()["cache-control"], "no-store");
    let back = response.headers()["location"].to_str().expect("ascii");
    let code = support::redirect_query(&response)["confirmationCode"].clone();
    assert_eq!(
        back,
        format!(
            "{RETURN_ORIGIN}/done?status=pending_confirmation&provider=google&flowId={}&confirmationCode={code}",
            session["flowId"].as_str().expect("flowId")
        )
    );
    let confirmed = app
        .confirm(session["flowId"].as_str().expect("flowId"), "alice", &code)
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);

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
            "awaiting_confirmation",
            "confirmed",
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

    // No answer of the service may be cached: redirects, pages, API answers, probes.
    let start = app
        .http
        .get(session["url"].as_str().expect("url"))
        .send()
        .await
        .expect("start");
    assert_eq!(start.headers()["cache-control"], "no-store");
    let page = app
        .http
        .get(app.url("/oauth/google/callback?state=x&code=y"))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status(), StatusCode::BAD_REQUEST);
    assert_eq!(page.headers()["cache-control"], "no-store");
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.headers()["cache-control"], "no-store");
    let created = app
        .api_post(
            "/v1/connect-sessions",
            json!({ "userId": "alice", "provider": "google" }),
        )
        .await;
    assert_eq!(created.headers()["cache-control"], "no-store");
}

async fn a_flow_without_return_url_ends_on_a_success_page(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    // Bound (the default): the page shows the code to enter in the application.
    let response = app.connect_unconfirmed("bob").await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.expect("text");
    assert!(page.contains("Almost done"), "{page}");
    let code = support::page_confirmation_code(&page).expect("the code");
    assert!(page.contains("Never give it to anyone"), "{page}");
    assert!(app.stored_row("bob").await.is_none());
    let steps = app.steps("bob").await;
    assert_eq!(
        steps.last().map(String::as_str),
        Some("awaiting_confirmation")
    );
    assert!(code.len() >= 22);

    // Pinned to the account: stored at once, and the page says whose account it is.
    let session = app
        .connect_session(json!({
            "userId": "bob2", "provider": "google", "expectedEmail": provider.profile().email,
        }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let response = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let page = response.text().await.expect("text");
    assert!(page.contains("Connected"), "{page}");
    assert!(page.contains(&provider.profile().email));
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
            // Change the last character (to one it is not already).
            let last = if v.ends_with('A') { "B" } else { "A" };
            format!("{}{last}", &v[..v.len() - 1])
        } else {
            v
        };
        tampered.query_pairs_mut().append_pair(&k, &v);
    }
    let response = app.callback(&tampered, Some(&cookie)).await;
    support::assert_page(response, StatusCode::BAD_REQUEST, "invalid_state").await;
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
    support::assert_page(response, StatusCode::BAD_REQUEST, "browser_mismatch").await;

    let name = cookie.split('=').next().expect("name");
    let response = app
        .callback(&callback, Some(&format!("{name}=someone-elses-cookie")))
        .await;
    support::assert_page(response, StatusCode::BAD_REQUEST, "browser_mismatch").await;
    assert_eq!(provider.code_exchange_count(), 1);
    assert_unchanged(&app, &row).await;
    let items = app.flow_log("victim").await;
    assert!(
        !items.iter().any(|i| i["flowId"] == session["flowId"]
            && (i["step"] == "failed" || i["step"] == "callback_received")),
        "a callback from another browser writes nothing: {items:?}"
    );
}

async fn state_replays_without_the_cookie_cannot_grow_the_flow_log(backend: Backend) {
    let provider = FakeProvider::start().await;
    let (app, row) = connected(backend, &provider, &[]).await;
    let session = app
        .connect_session(
            json!({ "userId": "victim", "provider": "google", "returnTo": RETURN_ORIGIN }),
        )
        .await;
    let (provider_url, _cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let before = app.flow_log("victim").await.len();

    for _ in 0..20 {
        let response = app.callback(&callback, None).await;
        assert_eq!(
            response.status(),
            StatusCode::BAD_REQUEST,
            "a page, not a redirect"
        );
        assert!(
            response
                .text()
                .await
                .expect("page")
                .contains("browser_mismatch")
        );
    }

    let after = app.flow_log("victim").await.len();
    assert!(
        after <= before + 1,
        "20 replays added {} flow-log items",
        after - before
    );
    assert_eq!(provider.code_exchange_count(), 1, "no code was exchanged");
    assert_unchanged(&app, &row).await;
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
    support::assert_page(response, StatusCode::BAD_REQUEST, "state_expired").await;
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
        format!(
            "{RETURN_ORIGIN}?status=error&error=access_denied&flowId={}",
            session["flowId"].as_str().expect("flowId")
        )
    );

    // Without a return URL: a 4xx page naming the code.
    let session = app
        .connect_session(json!({ "userId": "victim", "provider": "google" }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let response = app.callback(&callback, Some(&cookie)).await;
    support::assert_page(response, StatusCode::BAD_REQUEST, "access_denied").await;
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

/// The store goes away during the callback's write (aws: DynamoDB and KMS unreachable
/// behind a cut proxy): the browser gets a clear error page, the previous row stays as
/// it was, and the flow's `failed` step is written once the store is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_during_the_callback_changes_nothing() {
    let provider = FakeProvider::start().await;
    let proxy = support::CuttableProxy::start(&support::aws::moto_endpoint()).await;
    let app = TestApp::aws_behind(&proxy, &provider, &[]).await;
    assert!(app.connect("victim").await.status().is_success());
    let before = app.stored_row("victim").await.expect("row");

    // Pinned to the account, so the callback itself writes the row.
    let session = app
        .connect_session(json!({
            "userId": "victim", "provider": "google", "expectedEmail": provider.profile().email,
        }))
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

/// Codes are single use: a code exchange that failed upstream is not retried (a retry
/// could only earn invalid_grant, and might redeem a code twice).
async fn a_failed_code_exchange_is_not_retried(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    provider.fail_token_endpoint_with_status(503, 1);
    let response = app.connect("once").await;
    support::assert_page(
        response,
        StatusCode::SERVICE_UNAVAILABLE,
        "provider_unavailable",
    )
    .await;
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

async fn return_urls_are_checked_again_when_the_browser_is_sent_back(backend: Backend) {
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
    // The allow-list no longer holds the link's return URL when the browser comes back.
    let narrowed = app
        .sibling_with(&[("AXNT_ALLOWED_RETURN_URLS", "https://elsewhere.example.test")])
        .await;
    let callback = Url::parse(&narrowed.url(&format!(
        "{}?{}",
        callback.path(),
        callback.query().unwrap_or_default()
    )))
    .expect("url");
    let response = narrowed.callback(&callback, Some(&cookie)).await;
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "a page, not a redirect"
    );
    assert!(response.headers().get("location").is_none());
    assert!(
        response
            .text()
            .await
            .expect("page")
            .contains("access_denied")
    );
    assert_unchanged(&app, &row).await;
}

async fn a_return_url_s_own_status_is_replaced_and_the_flow_id_added(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let return_to = format!("{RETURN_ORIGIN}/done?status=stale&keep=1&error=old");
    let session = app
        .connect_session(json!({ "userId": "victim", "provider": "google", "returnTo": return_to }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let response = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::FOUND);
    let code = support::redirect_query(&response)["confirmationCode"].clone();
    assert_eq!(
        response.headers()["location"],
        format!(
            "{RETURN_ORIGIN}/done?keep=1&error=old&status=pending_confirmation&provider=google&flowId={}&confirmationCode={code}",
            session["flowId"].as_str().expect("flowId")
        )
    );
}

/// The `Set-Cookie` header of the binding cookie a start link answers with.
async fn binding_set_cookie(app: &TestApp) -> String {
    let session = app
        .connect_session(json!({ "userId": "u1", "provider": "google" }))
        .await;
    let link = Url::parse(session["url"].as_str().expect("url")).expect("link");
    let start = app.url(&format!(
        "/oauth/google/start?{}",
        link.query().unwrap_or_default()
    ));
    let response = app.http.get(start).send().await.expect("start");
    assert_eq!(response.status(), StatusCode::FOUND);
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.contains("axnt_flow_"))
        .expect("binding cookie")
        .to_string()
}

#[tokio::test]
async fn on_https_the_binding_cookie_is_host_prefixed() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(
        &provider,
        &[("AXNT_PUBLIC_BASE_URL", "https://axnt.example.test")],
    )
    .await;
    let cookie = binding_set_cookie(&app).await;
    assert!(cookie.starts_with("__Host-axnt_flow_"), "{cookie}");
    assert!(
        cookie.contains("Path=/;") || cookie.ends_with("Path=/"),
        "{cookie}"
    );
    assert!(cookie.contains("Secure"), "{cookie}");
    assert!(!cookie.contains("Domain"), "{cookie}");
}

#[tokio::test]
async fn the_binding_cookie_path_follows_the_public_base_url_path() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(
        &provider,
        &[("AXNT_PUBLIC_BASE_URL", "http://127.0.0.1:9/auth")],
    )
    .await;
    let cookie = binding_set_cookie(&app).await;
    assert!(cookie.starts_with("axnt_flow_"), "{cookie}");
    assert!(
        cookie.contains("Path=/auth/oauth/google/callback"),
        "{cookie}"
    );
}
