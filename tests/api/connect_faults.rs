//! The connect flow under faults: a browser that leaves while the provider still holds
//! the token answer, a key service that is away when a held grant is confirmed, and a
//! shutdown in the middle of a callback. In each, a grant the provider issued reaches
//! the store (or stays held for a retried confirm) and the flow log is completed.

on_every_backend!(
    a_browser_that_leaves_during_the_code_exchange_still_gets_its_grant_stored,
    a_shutdown_during_a_callback_waits_for_its_grant,
);

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::aws_proxy::AwsProxy;
use crate::support::{Backend, FakeProvider, RETURN_ORIGIN, TestApp};

/// A session pinned to the provider's account (so its grant is stored at once, with no
/// confirmation a departed browser could never make) for `user_id`.
async fn pinned_session(app: &TestApp, provider: &FakeProvider, user_id: &str) -> Value {
    app.connect_session(json!({
        "userId": user_id,
        "provider": "google",
        "returnTo": format!("{RETURN_ORIGIN}/done"),
        "expectedEmail": provider.profile().email,
    }))
    .await
}

/// Waits (bounded) until `user_id`'s flow log holds `step`.
async fn wait_for_step(app: &TestApp, user_id: &str, step: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let steps = app.steps(user_id).await;
        if steps.iter().any(|s| s == step) || tokio::time::Instant::now() > deadline {
            return steps;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn a_browser_that_leaves_during_the_code_exchange_still_gets_its_grant_stored(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    // The provider redeems the code at once and answers 1.5 s later; the browser gives
    // up after 0.3 s. The code is spent: only this callback's task holds the tokens.
    provider.set_code_exchange_hold(Duration::from_millis(1_500));
    let session = pinned_session(&app, &provider, "tab").await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let impatient = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let gone = impatient
        .get(callback.as_str())
        .header("cookie", &cookie)
        .send()
        .await;
    assert!(gone.is_err(), "the browser left before the answer");

    let steps = wait_for_step(&app, "tab", "completed").await;
    for step in [
        "code_exchanged",
        "id_token_verified",
        "tokens_stored",
        "completed",
    ] {
        assert!(steps.iter().any(|s| s == step), "{step} in {steps:?}");
    }
    assert_eq!(provider.code_exchange_count(), 1);
    let token = app.token("tab").await;
    assert_eq!(token.status(), StatusCode::OK);
    let token: Value = token.json().await.expect("json");
    assert_eq!(
        token["accessToken"].as_str(),
        provider.latest_access_token().as_deref(),
        "the grant the provider issued is the one stored"
    );

    // Bound (not pinned): the grant is held, sealed, for a confirm the departed browser
    // can no longer bring (its code was in the lost answer); the flow log says so.
    let session = app
        .connect_session(json!({
            "userId": "tab2", "provider": "google", "returnTo": format!("{RETURN_ORIGIN}/done"),
        }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let gone = impatient
        .get(callback.as_str())
        .header("cookie", &cookie)
        .send()
        .await;
    assert!(gone.is_err());
    let steps = wait_for_step(&app, "tab2", "awaiting_confirmation").await;
    assert!(
        steps.iter().any(|s| s == "awaiting_confirmation"),
        "{steps:?}"
    );
    assert!(!steps.iter().any(|s| s == "failed"), "{steps:?}");
}

async fn a_shutdown_during_a_callback_waits_for_its_grant(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let sibling = app.sibling().await;
    provider.set_code_exchange_hold(Duration::from_millis(1_500));
    let session = pinned_session(&app, &provider, "late").await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    // The browser leaves; then the instance is stopped while the provider still holds
    // its answer: no request is in flight, but shutdown waits for the callback's task.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let gone = impatient
        .get(callback.as_str())
        .header("cookie", &cookie)
        .send()
        .await;
    assert!(gone.is_err());
    app.stop().await;
    let steps = sibling.steps("late").await;
    assert!(
        steps.iter().any(|s| s == "completed"),
        "stopped before the grant was stored: {steps:?}"
    );
    assert_eq!(sibling.token("late").await.status(), StatusCode::OK);
}

/// The held grant is opened before it is taken: with KMS away (DynamoDB up) the
/// confirm answers 503 and the grant stays held; once KMS is back the same confirm
/// succeeds. The confirm runs on a second instance, whose data-key cache is cold, so it
/// must ask KMS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_while_the_key_service_is_away_answers_503_and_a_later_one_succeeds() {
    let provider = FakeProvider::start().await;
    let proxy = AwsProxy::start(&crate::support::aws::moto_endpoint()).await;
    let app = TestApp::aws_via(&proxy.endpoint, &provider, &[]).await;
    let confirmer = app.sibling().await;
    let (flow_id, code) = app.held_grant("kim").await;
    let body = json!({ "userId": "kim", "confirmationCode": code });
    let path = format!("/v1/connect-sessions/{flow_id}/confirm");

    proxy.cut("TrentService.");
    let refused = confirmer.api_post(&path, body.clone()).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let problem: Value = refused.json().await.expect("json");
    assert_eq!(problem["code"], "keys_unavailable", "{problem}");
    assert!(confirmer.stored_row("kim").await.is_none());

    proxy.clear();
    let confirmed = confirmer.api_post(&path, body).await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    assert_eq!(confirmer.token("kim").await.status(), StatusCode::OK);
}

/// A confirm whose caller hangs up after the held grant was taken: the grant still
/// becomes the connection (the confirm is an owned task), rather than being neither
/// stored nor put back. The store's read of the connection row is held 1.5 s; the
/// caller gives up after 0.3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirm_whose_caller_hangs_up_still_stores_the_grant() {
    let provider = FakeProvider::start().await;
    let proxy = AwsProxy::start(&crate::support::aws::moto_endpoint()).await;
    let app = TestApp::aws_via(&proxy.endpoint, &provider, &[]).await;
    let (flow_id, code) = app.held_grant("hang-up").await;

    proxy.hold(
        "GetItem",
        "\"hang-up\"",
        Duration::from_millis(1_500),
        Duration::from_secs(5),
    );
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let gone = impatient
        .post(app.url(&format!("/v1/connect-sessions/{flow_id}/confirm")))
        .bearer_auth(crate::support::API_KEY)
        .json(&json!({ "userId": "hang-up", "confirmationCode": code }))
        .send()
        .await;
    assert!(gone.is_err(), "the caller left before the answer");
    assert!(
        proxy.held().iter().any(|op| op == "GetItem"),
        "the row read was held"
    );
    let steps = wait_for_step(&app, "hang-up", "completed").await;
    assert!(steps.iter().any(|s| s == "completed"), "{steps:?}");
    assert_eq!(app.token("hang-up").await.status(), StatusCode::OK);
}
