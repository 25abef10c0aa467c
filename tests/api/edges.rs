//! The service's edges as an attacker or a prober meets them: what a request can make
//! the service keep (metric series) and what a public probe reveals.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::{self, API_KEY, Backend, FakeProvider, TestApp};

/// The HTTP series a request to no route can have made (other tests in this binary share
/// the process's recorder, but none of them asks for unknown paths).
fn unmatched_series(metrics: &str) -> std::collections::BTreeSet<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("axnt_http_request") && l.contains(r#"route="unmatched""#))
        .map(|l| l.rsplit_once(' ').map_or(l, |(labels, _)| labels))
        .collect()
}

/// Every value the `method` label has taken.
fn methods(metrics: &str) -> std::collections::BTreeSet<&str> {
    metrics
        .lines()
        .filter_map(|l| l.split_once(r#"method=""#))
        .filter_map(|(_, rest)| rest.split_once('"').map(|(m, _)| m))
        .collect()
}

async fn metrics_text(app: &TestApp) -> String {
    app.http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn random_methods_and_paths_add_no_metric_series() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[]).await;
    // Warm the fixed label values a stranger can reach: unmatched routes, each status.
    for method in ["GET", "POST", "BREW"] {
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        app.http
            .request(method, app.url("/no/such/path"))
            .send()
            .await
            .expect("send");
    }
    let before = metrics_text(&app).await;
    for i in 0..60 {
        let method = Method::from_bytes(format!("X{i:02}RANDOM").as_bytes()).expect("method");
        let response = app
            .http
            .request(method, app.url(&format!("/random-{i}/path")))
            .send()
            .await
            .expect("send");
        assert!(response.status().is_client_error());
        let response = app
            .http
            .get(app.url(&format!("/v1/users/u{i}/other-{i}")))
            .send()
            .await
            .expect("send");
        assert!(response.status().is_client_error());
    }
    let after = metrics_text(&app).await;
    assert_eq!(
        unmatched_series(&after),
        unmatched_series(&before),
        "random methods and paths added series"
    );
    assert!(!after.contains("RANDOM") && !after.contains("random-") && !after.contains("other-"));
    let methods = methods(&after);
    assert!(methods.contains("other"), "{methods:?}");
    assert!(
        methods.iter().all(|m| [
            "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"
        ]
        .contains(m)),
        "{methods:?}"
    );
}

/// A broken backend: `/readyz` names the part and a stable code; the reason, which on
/// AWS names tables, ARNs and accounts (and a file path in embedded mode), is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_on_a_broken_backend_names_parts_and_codes_only() {
    support::capture_logs();
    let provider = FakeProvider::start().await;
    let missing = support::aws::unique("missing-table");
    let mut env = support::env_for_secret(&provider, &[]);
    env.extend(
        support::aws::aws_env(&provider.client_id(), &provider.client_secret(), API_KEY)
            .await
            .into_iter()
            .filter(|(k, _)| k != "DYNAMODB_OAUTH_TABLE"),
    );
    env.push(("DYNAMODB_OAUTH_TABLE".into(), missing.clone()));
    let app = TestApp::spawn_in(Arc::new(tempfile::tempdir().expect("tempdir")), env).await;

    let ready = app.http.get(app.url("/readyz")).send().await.expect("send");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let text = ready.text().await.expect("text");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["checks"]["store"], "missing_table");
    assert_eq!(body["checks"]["flowLog"], "ok");
    assert_eq!(body["checks"]["keys"], "ok");
    assert_eq!(body["checks"]["provider"], "ok");
    for leak in [
        missing.as_str(),
        "arn:",
        "123456789012",
        "Requested resource",
    ] {
        assert!(!text.contains(leak), "{leak:?} in the public body: {text}");
    }
    let logs = support::captured_logs();
    assert!(
        logs.contains("readiness check failed") && logs.contains(&missing),
        "the reason is logged for the operator"
    );
}

/// Embedded mode without client credentials: the part and a code, no hint text.
#[tokio::test]
async fn readiness_without_credentials_says_not_configured() {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        Backend::Embedded,
        &provider,
        &[
            ("AXNT_GOOGLE_CLIENT_ID", ""),
            ("AXNT_GOOGLE_CLIENT_SECRET", ""),
        ],
    )
    .await;
    let ready = app.http.get(app.url("/readyz")).send().await.expect("send");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["checks"]["provider"], "not_configured");
    assert_eq!(body["checks"]["store"], "ok");
}

fn assert_browser_headers(response: &reqwest::Response, what: &str) {
    let headers = response.headers();
    for (name, value) in [
        ("cache-control", "no-store"),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
    ] {
        assert_eq!(
            headers.get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name} on {what}"
        );
    }
    let csp = headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "content-security-policy on {what}: {csp:?}"
    );
}

/// Every page and redirect of the browser routes: the start redirect, an error page, a
/// success page and the redirect back to the application.
#[tokio::test]
async fn every_browser_answer_carries_the_security_headers() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[]).await;

    let session = app
        .connect_session(serde_json::json!({ "userId": "hdr", "provider": "google" }))
        .await;
    let start = app
        .http
        .get(session["url"].as_str().expect("url"))
        .send()
        .await
        .expect("start");
    assert_eq!(start.status(), StatusCode::FOUND);
    assert_browser_headers(&start, "the start redirect");

    let bad = app
        .http
        .get(app.url("/oauth/google/callback?state=x&code=y"))
        .send()
        .await
        .expect("callback");
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_browser_headers(&bad, "an error page");

    let done = app.connect("hdr").await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_browser_headers(&done, "the success page");

    let session = app
        .connect_session(serde_json::json!({
            "userId": "hdr2",
            "provider": "google",
            "returnTo": format!("{}/done", support::RETURN_ORIGIN),
        }))
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let back = app.callback(&callback, Some(&cookie)).await;
    assert_eq!(back.status(), StatusCode::FOUND);
    assert_browser_headers(&back, "the redirect back to the application");
}

/// aws mode runs several instances: a flow started on one must finish on another, so a
/// state key they share is required, not silently replaced by a per-process one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_mode_without_a_shared_state_key_refuses_to_start() {
    let provider = FakeProvider::start().await;
    let endpoint = support::aws::moto_endpoint();
    let credentials = support::aws::AwsCredentials::from_env();
    let fixture = support::aws::provision(
        &endpoint,
        &credentials,
        &provider.client_id(),
        &provider.client_secret(),
        API_KEY,
        Some(
            &serde_json::json!({
                "client_id": provider.client_id(),
                "client_secret": provider.client_secret(),
                "api_keys": [API_KEY],
            })
            .to_string(),
        ),
    )
    .await;
    let mut env = fixture.env.clone();
    env.push(("AXNT_GOOGLE_ISSUER".into(), provider.issuer()));
    env.push(("AXNT_LISTEN_ADDR".into(), "127.0.0.1:0".into()));
    let settings = support::aws::settings_from(&env);
    let refused = axnt_oauth::app::App::build(settings)
        .await
        .err()
        .expect("start-up refused")
        .to_string();
    assert!(refused.contains("AXNT_STATE_KEY"), "{refused}");

    env.push(("AXNT_ALLOW_INSTANCE_STATE_KEY".into(), "true".into()));
    let settings = support::aws::settings_from(&env);
    assert!(
        axnt_oauth::app::App::build(settings).await.is_ok(),
        "an explicit per-process key is accepted"
    );
}
