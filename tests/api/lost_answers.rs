//! A single-use mark whose write reaches DynamoDB but whose answer is lost on the way
//! back: the AWS SDK sends the same conditional create again, which finds the mark the
//! first try made. That mark names the attempt that made it, so the retry is told the
//! mark is its own, and a first link opening or a first security event goes on as the
//! first it is. (aws mode only: the embedded store has no network between the service
//! and its file; the store conformance suite runs the same rule on both.)

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::aws::moto_endpoint;
use crate::support::aws_proxy::AwsProxy;
use crate::support::fake_provider::Profile;
use crate::support::{FakeProvider, TestApp, assert_page, assert_problem};

const PUT_ITEM: &str = "DynamoDB_20120810.PutItem";

/// The proxy lost exactly one answer, and the SDK sent the request again.
fn assert_retried(proxy: &AwsProxy) {
    assert_eq!(proxy.lost(), 1, "the mark's answer was lost");
    assert!(
        proxy.matched() >= 2,
        "the SDK sent the mark again: {} matching requests",
        proxy.matched()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_link_opening_survives_a_retried_mark() {
    let provider = FakeProvider::start().await;
    let proxy = AwsProxy::start(&moto_endpoint()).await;
    // The browser flow is driven by hand here; it is not about confirmation.
    let app = TestApp::aws_via(
        &proxy.endpoint,
        &provider,
        &[("AXNT_REQUIRE_CONFIRMATION", "false")],
    )
    .await;
    let session = app
        .connect_session(json!({ "userId": "mia", "provider": "google" }))
        .await;
    let flow_id = session["flowId"].as_str().expect("flowId");
    let link = session["url"].as_str().expect("url");
    proxy.lose_answer_to(PUT_ITEM, &[&format!("#flow#{flow_id}"), "#started"]);

    // The first opening redirects to the provider (a 409 would say the link was used).
    let (provider_url, cookie) = app.start(link).await;
    assert_retried(&proxy);
    let callback = app.authorize(&provider_url).await;
    let done = app.callback(&callback, Some(&cookie)).await;
    assert!(done.status().is_success(), "{}", done.status());
    assert_eq!(app.token("mia").await.status(), StatusCode::OK);

    // Still single-use: another opening is refused.
    let again = app.http.get(link).send().await.expect("open again");
    assert_page(again, StatusCode::CONFLICT, "session_already_used").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_security_event_survives_a_retried_mark() {
    // The event type as Google's Cross-Account Protection page prints it
    // (https://developers.google.com/identity/protocols/risc, "Supported event types").
    const TOKENS_REVOKED: &str =
        "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked";
    let provider = FakeProvider::start().await;
    let proxy = AwsProxy::start(&moto_endpoint()).await;
    let issuer = provider.issuer();
    let app = TestApp::aws_via(
        &proxy.endpoint,
        &provider,
        &[
            ("AXNT_GOOGLE_RISC_ISSUER", issuer.as_str()),
            ("AXNT_EVENTS_FEED_DELAY_MS", "0"),
        ],
    )
    .await;
    let profile = Profile::for_prefix("e1");
    provider.set_profile(profile.clone());
    assert!(app.connect("noa").await.status().is_success());
    tokio::time::sleep(Duration::from_millis(1_100)).await;

    proxy.lose_answer_to(PUT_ITEM, &["#flow#risc:jti-lost", "#started"]);
    let set = provider.security_event_token(
        &json!({
            "iss": provider.issuer(),
            "aud": provider.client_id(),
            "iat": chrono::Utc::now().timestamp(),
            "jti": "jti-lost",
            "events": { TOKENS_REVOKED: {
                "subject": {"subject_type": "iss-sub", "iss": provider.issuer(), "sub": profile.sub}
            } },
        }),
        false,
    );
    let posted = crate::risc::post(&app, &set).await;
    assert_eq!(posted.status(), StatusCode::ACCEPTED);
    assert_retried(&proxy);

    // Acted on, not taken for a duplicate of itself.
    let body = assert_problem(app.token("noa").await, 409, "reauthorization_required").await;
    assert_eq!(body["cause"], "revoked_by_user");
    // Once the feed shows what was just stored.
    tokio::time::sleep(crate::support::FEED_HOLD).await;
    let feed: Value = app
        .api_get("/v1/events?limit=100")
        .await
        .json()
        .await
        .expect("feed");
    let told = feed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["type"] == "connection.revoked_by_user")
        .count();
    assert_eq!(told, 1, "{feed}");
}
