//! Rate limits and the admin listener: floods from one client meet 429 with
//! `Retry-After` and change nothing stored; the client is the socket's peer unless a
//! trusted proxy forwarded it; `/metrics` is served only on the admin listener.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{self, API_KEY, FakeProvider, TestApp};

fn retry_after(response: &reqwest::Response) -> u64 {
    response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in whole seconds")
}

/// Opens `/oauth/google/start` for a session from `forwarded_for` (when given).
async fn start(app: &TestApp, url: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = app.http.get(url);
    if let Some(ip) = forwarded_for {
        request = request.header("x-forwarded-for", ip);
    }
    request.send().await.expect("start")
}

#[tokio::test]
async fn a_browser_start_flood_meets_a_429_page_and_logs_nothing_more() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(
        &provider,
        &[
            ("AXNT_RATE_LIMIT_BROWSER_PER_MINUTE", "1"),
            ("AXNT_RATE_LIMIT_BROWSER_BURST", "3"),
        ],
    )
    .await;
    // Links are single-use: the burst opens three of them.
    let mut url = String::new();
    for _ in 0..3 {
        let session = app
            .connect_session(json!({ "userId": "flood", "provider": "google" }))
            .await;
        url = session["url"].as_str().expect("url").to_string();
        assert_eq!(start(&app, &url, None).await.status(), StatusCode::FOUND);
    }
    let url = url.as_str();
    let logged = app.flow_log("flood").await.len();
    for _ in 0..20 {
        let response = start(&app, url, None).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!((1..=60).contains(&retry_after(&response)));
        let headers = response.headers();
        assert!(
            headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/html")),
            "a page, not JSON"
        );
        for name in [
            "content-security-policy",
            "referrer-policy",
            "x-content-type-options",
        ] {
            assert!(headers.contains_key(name), "{name} on the 429 page");
        }
        assert!(headers.get("set-cookie").is_none(), "no binding cookie");
        let page = response.text().await.expect("page");
        assert!(page.contains("rate_limited"), "{page}");
    }
    let callback = app
        .http
        .get(app.url("/oauth/google/callback?state=x&code=y"))
        .send()
        .await
        .expect("callback");
    assert_eq!(
        callback.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "callbacks share the limit"
    );
    assert_eq!(
        app.flow_log("flood").await.len(),
        logged,
        "refused starts log nothing"
    );
    // The internal API is not a browser route: not limited by it.
    assert_eq!(
        app.api_get("/v1/users/flood/connections").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_wrong_api_key_flood_brakes_the_client_and_the_key_is_never_shown() {
    support::capture_logs();
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(
        &provider,
        &[
            ("AXNT_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", "1"),
            ("AXNT_RATE_LIMIT_AUTH_FAILURES_BURST", "3"),
        ],
    )
    .await;
    let planted = "planted-wrong-key-5f0c9e1d2b";
    let call = |key: &'static str| {
        app.http
            .post(app.url("/v1/connect-sessions"))
            .bearer_auth(key)
            .json(&json!({ "userId": "braked", "provider": "google" }))
            .send()
    };
    for _ in 0..3 {
        support::assert_problem(call(planted).await.expect("send"), 401, "unauthorized").await;
    }
    for _ in 0..10 {
        let response = call(planted).await.expect("send");
        let wait = retry_after(&response);
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
        support::assert_problem(response, 429, "rate_limited").await;
    }
    // A braked client is braked with a right key too: else the answer would tell a
    // guesser past the limit which guess was right.
    let right = call(API_KEY).await.expect("send");
    assert!(right.headers().contains_key("retry-after"));
    support::assert_problem(right, 429, "rate_limited").await;
    assert!(app.stored_row("braked").await.is_none());

    let metrics = app.metrics().await;
    assert!(metrics.contains(r#"status="429""#));
    assert!(!metrics.contains(planted));
    assert!(
        !support::captured_logs().contains(planted),
        "the key is in the logs"
    );
}

/// The same flood through a trusted proxy is counted per forwarded client; from an
/// untrusted peer, `X-Forwarded-For` is ignored and the peer is the client.
#[tokio::test]
async fn forwarded_clients_are_told_apart_only_behind_a_trusted_proxy() {
    let provider = FakeProvider::start().await;
    let limits = [
        ("AXNT_RATE_LIMIT_BROWSER_PER_MINUTE", "1"),
        ("AXNT_RATE_LIMIT_BROWSER_BURST", "2"),
    ];
    let behind_proxy = [limits.as_slice(), &[("AXNT_TRUSTED_PROXIES", "127.0.0.1")]].concat();
    let app = TestApp::spawn_with(&provider, &behind_proxy).await;
    let url = app.url("/oauth/google/start?session=x");
    for _ in 0..2 {
        assert_ne!(
            start(&app, &url, Some("203.0.113.1")).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(
        start(&app, &url, Some("203.0.113.1")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // Another client behind the same proxy has its own allowance.
    assert_ne!(
        start(&app, &url, Some("203.0.113.2")).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    let app = TestApp::spawn_with(&provider, &limits).await;
    let url = app.url("/oauth/google/start?session=x");
    for i in 0..2 {
        let forged = format!("198.51.100.{i}");
        assert_ne!(
            start(&app, &url, Some(&forged)).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(
        start(&app, &url, Some("198.51.100.9")).await.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a forged X-Forwarded-For from an untrusted peer buys no new allowance"
    );
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_listener_only() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[]).await;
    let public = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("send");
    support::assert_problem(public, 404, "not_found").await;
    assert!(!app.admin_base.is_empty() && app.admin_base != app.base);
    let admin = app
        .http
        .get(app.admin_url("/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(admin.status(), StatusCode::OK);
    assert!(
        admin
            .text()
            .await
            .expect("text")
            .contains("axnt_http_requests_total")
    );
    let health = app
        .http
        .get(app.admin_url("/healthz"))
        .send()
        .await
        .expect("send");
    assert_eq!(health.status(), StatusCode::OK);
    // The admin listener serves nothing else.
    let api = app
        .http
        .get(app.admin_url("/v1/users/x/connections"))
        .send()
        .await
        .expect("send");
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_admin_listener_can_be_turned_off() {
    let provider = FakeProvider::start().await;
    let app = TestApp::spawn_with(&provider, &[("AXNT_ADMIN_LISTEN_ADDR", "off")]).await;
    assert!(app.admin_base.is_empty());
    let public = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("send");
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
    app.stop().await;
}
