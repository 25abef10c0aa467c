//! The internal API and the probes: the API key, malformed input, unknown providers,
//! removing a connection, flow-log pages and the flow log's buffered writes at
//! shutdown, and `/healthz`, `/readyz`, `/metrics`.

on_every_backend!(
    the_internal_api_needs_a_valid_key,
    malformed_requests_get_clear_4xx,
    unknown_providers_are_404,
    bad_user_ids_are_refused_and_store_nothing,
    oversized_and_mistyped_bodies_are_problems,
    links_too_long_to_come_back_are_refused_when_made,
    delete_revokes_at_the_provider_and_removes_the_row,
    flow_logs_page_newest_first,
    probes_answer,
    shutdown_flushes_every_buffered_flow_log_item,
);

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    self, API_KEY, Backend, FakeProvider, TestApp, assert_problem, assert_unchanged, connected,
};

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
    assert_problem(
        app.api_get("/v1/users/a%0Ab/connections").await,
        400,
        "invalid_request",
    )
    .await;
    assert_problem(
        app.api_get(&format!("/v1/users/{}/tokens/google", "u".repeat(257)))
            .await,
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
    support::assert_page(response, StatusCode::NOT_FOUND, "unknown_provider").await;
    assert_problem(
        app.api_get("/v1/users/nobody/tokens/google").await,
        404,
        "not_connected",
    )
    .await;
}

async fn bad_user_ids_are_refused_and_store_nothing(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let long = format!("planted-long-{}", "x".repeat(250));
    let bad_bodies = [
        "",
        ".",
        "..",
        "../planted-dotdot",
        "planted-a/b",
        "planted-a\\b",
        "planted-a\nb",
        "planted-a\u{7f}",
        "\u{202E}planted-rtl",
        long.as_str(),
    ];
    for user_id in bad_bodies {
        let response = app
            .api_post(
                "/v1/connect-sessions",
                json!({ "userId": user_id, "provider": "google" }),
            )
            .await;
        let body = assert_problem(response, 400, "invalid_request").await;
        assert!(
            body["detail"].as_str().unwrap_or("").contains("userId"),
            "{body}"
        );
    }
    for segment in [
        "planted-a%2Fb",
        "planted-a%5Cb",
        "planted-a%0Ab",
        "planted-a%7F",
        "%2E%2E%2Fx",
    ] {
        for path in [
            format!("/v1/users/{segment}/tokens/google"),
            format!("/v1/users/{segment}/connections"),
            format!("/v1/users/{segment}/flow-logs"),
        ] {
            assert_problem(app.api_get(&path).await, 400, "invalid_request").await;
        }
        let path = format!("/v1/users/{segment}/connections/google");
        assert_problem(app.api_delete(&path).await, 400, "invalid_request").await;
    }
    let good = [
        ("auth0|123", "auth0%7C123"),
        ("jane.doe+tag@example.com", "jane.doe+tag@example.com"),
        (
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        ),
    ];
    for (user_id, segment) in good {
        app.connect_session(json!({ "userId": user_id, "provider": "google" }))
            .await;
        let response = app
            .api_get(&format!("/v1/users/{segment}/connections"))
            .await;
        assert_eq!(response.status(), StatusCode::OK, "{user_id}");
        assert_problem(
            app.api_get(&format!("/v1/users/{segment}/tokens/google"))
                .await,
            404,
            "not_connected",
        )
        .await;
    }
    // The good ids' items are stored (the flow log may write behind): by then any item
    // of a refused id would be too.
    let mut steps = Vec::new();
    for _ in 0..100 {
        steps = app.steps("auth0%7C123").await;
        if !steps.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(steps, ["session_created"]);
    assert!(!crate::support::contains(
        &app.raw_storage().await,
        "planted"
    ));
}

async fn oversized_and_mistyped_bodies_are_problems(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let huge = format!(
        r#"{{"userId":"planted-huge","provider":"google","loginHint":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let response = app
        .http
        .post(app.url("/v1/connect-sessions"))
        .bearer_auth(API_KEY)
        .header("content-type", "application/json")
        // The server answers before reading the body and then closes the connection;
        // kept in the client's pool, the next request would meet that close.
        .header("connection", "close")
        .body(huge)
        .send()
        .await
        .expect("send");
    assert_problem(response, 413, "payload_too_large").await;
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let response = app
            .http
            .post(app.url("/v1/connect-sessions"))
            .bearer_auth(API_KEY)
            .header("content-type", content_type)
            .body(r#"{"userId":"planted-type","provider":"google"}"#)
            .send()
            .await
            .expect("send");
        assert_problem(response, 415, "unsupported_media_type").await;
    }
    let response = app
        .http
        .put(app.url("/v1/connect-sessions"))
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("send");
    assert_problem(response, 405, "method_not_allowed").await;
    assert!(app.flow_log("planted-huge").await.is_empty());
    assert!(app.flow_log("planted-type").await.is_empty());
}

async fn links_too_long_to_come_back_are_refused_when_made(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let scopes: Vec<String> = (0..20)
        .map(|i| format!("https://www.googleapis.com/auth/{i}{}", "s".repeat(215)))
        .collect();
    let return_to = format!("{}?q={}", crate::support::RETURN_ORIGIN, "r".repeat(1500));
    let response = app
        .api_post(
            "/v1/connect-sessions",
            json!({ "userId": "long-link", "provider": "google", "scopes": scopes,
                    "returnTo": return_to, "loginHint": "h".repeat(300) }),
        )
        .await;
    let body = assert_problem(response, 400, "invalid_request").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("fewer scopes"),
        "{body}"
    );
    let return_to = format!("{}?q={}", crate::support::RETURN_ORIGIN, "r".repeat(7000));
    let response = app
        .api_post(
            "/v1/connect-sessions",
            json!({ "userId": "long-link", "provider": "google", "returnTo": return_to }),
        )
        .await;
    assert_problem(response, 400, "invalid_request").await;
    assert!(app.flow_log("long-link").await.is_empty());
    // A link just inside the bound still goes all the way through.
    let scopes: Vec<String> = (0..10)
        .map(|i| format!("https://www.googleapis.com/auth/{i}{}", "s".repeat(200)))
        .collect();
    let session = app
        .connect_session(json!({ "userId": "long-link", "provider": "google", "scopes": scopes }))
        .await;
    let (provider_url, _cookie) = app.start(session["url"].as_str().expect("url")).await;
    assert!(provider_url.query().is_some_and(|q| q.contains("state=")));
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
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.expect("json");
    assert_eq!(deleted["revocation"], "revoked");
    assert_eq!(deleted["revokedToken"], "refresh_token");
    assert!(!deleted.to_string().contains(&refresh));
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
    assert_eq!(
        all.len(),
        30,
        "ten steps a flow: eight, and the held grant's two"
    );
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
    let metrics = app.metrics().await;
    assert!(metrics.contains("axnt_http_requests_total"));
}

async fn shutdown_flushes_every_buffered_flow_log_item(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    let mut settings = app.settings.clone();
    // Reading 1,000 items back from moto on two busy cores can outlast the service's
    // 10-second operation timeout; the check is that they were written, not how fast.
    settings.aws.operation_timeout = std::time::Duration::from_secs(60);
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
