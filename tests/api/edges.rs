//! The service's edges as an attacker or a prober meets them: what a request can make
//! the service keep (metric series) and what a public probe reveals.

use std::sync::Arc;
use std::time::Duration;

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

    let done = app.connect_unconfirmed("hdr").await;
    assert_eq!(done.status(), StatusCode::OK);
    assert_browser_headers(&done, "the page that shows the confirmation code");

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

/// Opens a raw connection to `app` and sends `bytes` (then keeps it open).
async fn half_request(app: &TestApp, bytes: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let addr = app.base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    stream
}

/// Reads what the server sends until it closes the connection; `None` if it is still
/// open after `within`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut received)).await {
        Ok(_) => Some(String::from_utf8_lossy(&received).into_owned()),
        Err(_) => None,
    }
}

/// 60 connections that send half a request head are closed once the header-read
/// timeout passes, and the service answers others all the while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_request_heads_are_cut_off_while_others_are_served() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[("AXNT_HEADER_READ_TIMEOUT_SECS", "1")]).await;
    let mut slow = Vec::new();
    for _ in 0..60 {
        slow.push(half_request(&app, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await);
    }
    let health = app
        .http
        .get(app.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "served while 60 heads hang"
    );
    for stream in &mut slow {
        let closed = read_until_closed(stream, Duration::from_secs(10)).await;
        assert!(
            closed.is_some(),
            "a half-sent head still holds its connection"
        );
    }
}

/// A body sent too slowly: 408 problem+json, nothing stored.
#[tokio::test]
async fn a_slow_body_is_answered_408_and_changes_nothing() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[("AXNT_REQUEST_TIMEOUT_SECS", "1")]).await;
    let head = format!(
        "POST /v1/connect-sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 200\r\nConnection: close\r\n\r\n{{\"userId\":"
    );
    let mut stream = half_request(&app, head.as_bytes()).await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("answered, not held");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
}

/// 80 header lines: under hyper's own limit (100), over ours (64): 431.
#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[]).await;
    let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for i in 0..80 {
        head.push_str(&format!("X-Filler-{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = half_request(&app, head.as_bytes()).await;
    let answer = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("answered");
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

/// Stopping with a half-sent request open ends by the drain deadline and still writes
/// every buffered flow-log item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_with_a_half_sent_request_open_ends_by_the_deadline_and_flushes() {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        Backend::Aws,
        &provider,
        &[
            ("AXNT_HEADER_READ_TIMEOUT_SECS", "120"),
            ("AXNT_DRAIN_TIMEOUT_SECS", "2"),
        ],
    )
    .await;
    let mut settings = app.settings.clone();
    settings.aws.operation_timeout = Duration::from_secs(60);
    let _keep = Arc::clone(&app.data_dir);
    for _ in 0..20 {
        let created = app
            .api_post(
                "/v1/connect-sessions",
                serde_json::json!({ "userId": "draining", "provider": "google" }),
            )
            .await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    let _hanging = half_request(&app, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("stopped by the drain deadline, not held by the half-sent request");
    let backends = axnt_oauth::app::Backends::open(&settings)
        .await
        .expect("reopen");
    let items = backends
        .flow_log
        .list("draining", 100, None)
        .await
        .expect("list");
    assert_eq!(items.len(), 20, "every buffered item written");
}
