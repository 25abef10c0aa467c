//! Callers with names and limits: API keys named `name:key` or given as objects with
//! the operations and providers they may use; a limited key is refused (403
//! `caller_not_allowed`) outside them, and a key without limits keeps every right.
//! The audit trail names the caller of every token read by id.

on_every_backend!(
    a_limited_key_is_refused_outside_its_operations_and_providers,
    token_reads_are_audited_by_caller_and_user_without_a_token,
    a_caller_limited_to_a_tenant_reads_only_its_users_and_whoami_says_so,
);

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    API_KEY, Backend, FakeProvider, TestApp, app_with_keys, assert_problem, audit_until,
};

const READER: &str = "reader-key-0123456789abcdef";
const GITHUB_OPS: &str = "github-ops-key-0123456789abcdef";

/// The keys: the suite's own (unlimited), `reader` (token reads of Google connections
/// only) and `github-ops` (connections and logs, GitHub only).
fn keys() -> Value {
    json!([
        API_KEY,
        {"name": "reader", "key": READER, "operations": ["read_tokens"], "providers": ["google"]},
        {"name": "github-ops", "key": GITHUB_OPS, "operations": ["manage_connections", "read_logs"], "providers": ["github"]},
    ])
}

async fn as_key(
    app: &TestApp,
    key: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::Response {
    app.http
        .request(method, app.url(path))
        .bearer_auth(key)
        .json(&json!({ "userId": "kim", "provider": "google" }))
        .send()
        .await
        .expect("request")
}

async fn a_limited_key_is_refused_outside_its_operations_and_providers(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app_with_keys(
        backend,
        &provider,
        &keys(),
        &[("AXNT_AUDIT_WINDOW_SECS", "1")],
    )
    .await;
    assert!(
        app.connect("kim").await.status().is_success(),
        "the unlimited key works"
    );
    let get = reqwest::Method::GET;

    // reader: token reads of Google connections, nothing else.
    let token = as_key(&app, READER, get.clone(), "/v1/users/kim/tokens/google").await;
    assert_eq!(token.status(), StatusCode::OK);
    for (method, path) in [
        (get.clone(), "/v1/users/kim/connections"),
        (get.clone(), "/v1/users/kim/flow-logs"),
        (reqwest::Method::POST, "/v1/connect-sessions"),
        (reqwest::Method::DELETE, "/v1/users/kim/connections/google"),
        (get.clone(), "/v1/connections"),
        (
            reqwest::Method::POST,
            "/v1/connect-sessions/some-flow/confirm",
        ),
        (get.clone(), "/v1/audit?caller=reader"),
        (get.clone(), "/v1/events"),
    ] {
        let refused = as_key(&app, READER, method.clone(), path).await;
        let body = assert_problem(refused, 403, "caller_not_allowed").await;
        assert!(
            body["detail"]
                .as_str()
                .is_some_and(|d| d.contains("limited")),
            "{method} {path}: {body}"
        );
    }

    // github-ops: manages connections and reads logs, of GitHub only.
    let logs = as_key(&app, GITHUB_OPS, get.clone(), "/v1/users/kim/flow-logs").await;
    assert_eq!(logs.status(), StatusCode::OK);
    let audit = as_key(&app, GITHUB_OPS, get.clone(), "/v1/audit?caller=reader").await;
    assert_eq!(audit.status(), StatusCode::OK);
    for path in ["/v1/events", "/v1/users/kim/tokens/google"] {
        let refused = as_key(&app, GITHUB_OPS, get.clone(), path).await;
        assert_problem(refused, 403, "caller_not_allowed").await;
    }
    let listed: Value = as_key(&app, GITHUB_OPS, get.clone(), "/v1/users/kim/connections")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        listed["connections"],
        json!([]),
        "Google connections are not its to see"
    );
    let refused = as_key(
        &app,
        GITHUB_OPS,
        reqwest::Method::POST,
        "/v1/connect-sessions",
    )
    .await;
    assert_problem(refused, 403, "caller_not_allowed").await;
    let refused = as_key(
        &app,
        GITHUB_OPS,
        reqwest::Method::DELETE,
        "/v1/users/kim/connections/google",
    )
    .await;
    assert_problem(refused, 403, "caller_not_allowed").await;
    let refused = as_key(&app, GITHUB_OPS, get.clone(), "/v1/users/kim/tokens/google").await;
    assert_problem(refused, 403, "caller_not_allowed").await;
    assert!(app.stored_row("kim").await.is_some(), "nothing was deleted");

    // A held Google grant is not a GitHub-limited key's to confirm; it stays held.
    let session = app
        .connect_session(
            json!({ "userId": "lou", "provider": "google", "requireConfirmation": true }),
        )
        .await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let page = app.callback(&callback, Some(&cookie)).await;
    assert!(page.status().is_success());
    let page = page.text().await.expect("page");
    let code = crate::support::page_confirmation_code(&page).expect("code");
    let confirm = format!(
        "/v1/connect-sessions/{}/confirm",
        session["flowId"].as_str().expect("flowId")
    );
    let body = json!({ "userId": "lou", "confirmationCode": code });
    let refused = app
        .http
        .post(app.url(&confirm))
        .bearer_auth(GITHUB_OPS)
        .json(&body)
        .send()
        .await
        .expect("confirm");
    assert_problem(refused, 403, "caller_not_allowed").await;
    let confirmed = app.api_post(&confirm, body).await;
    assert_eq!(
        confirmed.status(),
        StatusCode::OK,
        "still held for an allowed caller"
    );
    let logs: Value = as_key(&app, GITHUB_OPS, get.clone(), "/v1/users/lou/flow-logs")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(
        logs["items"],
        json!([]),
        "Google flows' steps are not its to read"
    );

    // Metrics name callers by id, never by key.
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("axnt_api_calls_total")
                && l.contains("caller=\"reader\"")
                && l.contains("operation=\"read_tokens\""))
    );
    for key in [READER, GITHUB_OPS, API_KEY] {
        assert!(!metrics.contains(key));
    }
    assert!(!crate::support::captured_logs().contains(READER));
}

/// The audit items of `query`, once `done` holds for them (aws mode writes from a
/// queue, and counted reads are written when their window has passed).
/// A named caller of `AXNT_CALLERS`, its key given by digest.
const TENANT_KEY: &str = "tenant-a-key-0123456789abcdef";

/// A caller (`AXNT_CALLERS`, its key configured as `sha256:` and its digest) limited
/// to users `tenant-a:*`, the google provider and token reads and connections: it reads
/// `tenant-a:…`, is refused `tenant-b:…` and other providers without learning whether
/// they exist, lists only its tenant, is audited by name, and `GET /v1/whoami` says
/// exactly that.
async fn a_caller_limited_to_a_tenant_reads_only_its_users_and_whoami_says_so(backend: Backend) {
    let provider = FakeProvider::start().await;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, TENANT_KEY.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let callers = json!([{
        "name": "tenant-a-reader",
        "apiKey": format!("sha256:{hex}"),
        "operations": ["read_tokens", "manage_connections"],
        "providers": ["google"],
        "userIds": ["tenant-a:*"],
    }])
    .to_string();
    let app = app_with_keys(
        backend,
        &provider,
        &json!([API_KEY]),
        &[("AXNT_CALLERS", &callers), ("AXNT_AUDIT_WINDOW_SECS", "1")],
    )
    .await;
    for user in ["tenant-a:1", "tenant-b:1"] {
        assert!(app.connect(user).await.status().is_success(), "{user}");
    }
    let get = |path: &'static str| as_key(&app, TENANT_KEY, reqwest::Method::GET, path);

    let read = get("/v1/users/tenant-a:1/tokens/google").await;
    assert_eq!(read.status(), StatusCode::OK);
    let refused = get("/v1/users/tenant-b:1/tokens/google").await;
    let body = assert_problem(refused, 403, "caller_not_allowed").await;
    assert!(!body.to_string().contains("tenant-b"), "{body}");
    // Another user that does not exist is refused the same way: nothing is learnt.
    assert_problem(
        get("/v1/users/tenant-b:nobody/tokens/google").await,
        403,
        "caller_not_allowed",
    )
    .await;
    assert_problem(
        get("/v1/users/tenant-a:1/tokens/github").await,
        403,
        "caller_not_allowed",
    )
    .await;
    assert_problem(
        get("/v1/users/tenant-b:1/connections").await,
        403,
        "caller_not_allowed",
    )
    .await;
    let listed: Value = get("/v1/connections").await.json().await.expect("json");
    let users: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["userId"].as_str())
        .collect();
    assert_eq!(users, ["tenant-a:1"], "{listed}");
    // A connect link for another tenant's user is refused too.
    let link = app
        .http
        .post(app.url("/v1/connect-sessions"))
        .bearer_auth(TENANT_KEY)
        .json(&json!({ "userId": "tenant-b:2", "provider": "google", "returnTo": crate::support::RETURN_ORIGIN }))
        .send()
        .await
        .expect("request");
    assert_problem(link, 403, "caller_not_allowed").await;

    let me: Value = get("/v1/whoami").await.json().await.expect("json");
    assert_eq!(
        me,
        json!({
            "name": "tenant-a-reader",
            "kind": "api_key",
            "operations": ["read_tokens", "manage_connections"],
            "providers": ["google"],
            "clients": null,
            "userIds": ["tenant-a:*"],
        })
    );
    // A key without limits may do everything but the import, which is never implied.
    let unlimited: Value = app.api_get("/v1/whoami").await.json().await.expect("json");
    assert_eq!(
        unlimited["operations"],
        json!([
            "read_tokens",
            "manage_connections",
            "read_logs",
            "consume_events"
        ])
    );
    assert_eq!(unlimited["userIds"], Value::Null);

    // The audit names the caller for the read and for the refusal; never the key.
    let served = audit_until(&app, "userId=tenant-a:1", |items| {
        items.iter().any(|i| i["caller"] == "tenant-a-reader")
    })
    .await;
    assert!(!Value::Array(served).to_string().contains(TENANT_KEY));
    audit_until(&app, "userId=tenant-b:1", |items| {
        items
            .iter()
            .any(|i| i["caller"] == "tenant-a-reader" && i["outcome"] == "refused")
    })
    .await;
    app.stop().await;
}

fn reads(items: &[Value], outcome: &str) -> u64 {
    items
        .iter()
        .filter(|i| i["outcome"] == outcome)
        .map(|i| i["count"].as_u64().unwrap_or(0))
        .sum()
}

async fn token_reads_are_audited_by_caller_and_user_without_a_token(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = app_with_keys(
        backend,
        &provider,
        &keys(),
        &[("AXNT_AUDIT_WINDOW_SECS", "1")],
    )
    .await;
    assert!(app.connect("ada").await.status().is_success());
    provider.set_access_token_ttl(3600);
    let get = reqwest::Method::GET;
    // One refreshed read, then three served ones: the first written at once, the
    // other two counted into one item when the window has passed.
    for _ in 0..4 {
        let read = as_key(&app, READER, get.clone(), "/v1/users/ada/tokens/google").await;
        assert_eq!(read.status(), StatusCode::OK);
    }
    let missing = as_key(&app, READER, get.clone(), "/v1/users/nobody/tokens/google").await;
    assert_problem(missing, 404, "not_connected").await;
    let limited = as_key(&app, READER, get.clone(), "/v1/users/ada/tokens/github").await;
    assert_problem(limited, 403, "caller_not_allowed").await;
    let other = as_key(&app, API_KEY, get.clone(), "/v1/users/ada/tokens/google").await;
    assert_eq!(other.status(), StatusCode::OK);

    let items = audit_until(&app, "caller=reader", |items| {
        reads(items, "served") == 3
            && reads(items, "refreshed") == 1
            && reads(items, "refused") == 2
    })
    .await;
    assert!(items.iter().all(|i| i["caller"] == "reader"), "{items:?}");
    assert!(
        items.iter().any(|i| i["count"] == 2),
        "two reads in one item: {items:?}"
    );
    let reasons: Vec<&str> = items
        .iter()
        .filter(|i| i["outcome"] == "refused")
        .filter_map(|i| i["reason"].as_str())
        .collect();
    assert!(reasons.contains(&"not_connected") && reasons.contains(&"caller_not_allowed"));
    assert!(
        items
            .iter()
            .all(|i| i["requestId"].as_str().is_some_and(|r| r.len() > 8))
    );
    let served = items
        .iter()
        .find(|i| i["outcome"] == "served")
        .expect("served");
    assert!(
        served["scopes"]
            .as_str()
            .is_some_and(|s| s.contains("openid"))
    );

    // Per user: both callers' reads of ada's token, never another user's.
    let by_user = audit_until(&app, "userId=ada", |items| {
        items.iter().any(|i| i["caller"] != "reader")
    })
    .await;
    assert!(by_user.iter().all(|i| i["userId"] == "ada"));
    let text = serde_json::to_string(&by_user).expect("json")
        + &serde_json::to_string(&items).expect("json");
    for secret in provider.secrets() {
        assert!(!text.contains(&secret), "an audit item carries no token");
    }
    for key in [READER, GITHUB_OPS, API_KEY] {
        assert!(!text.contains(key), "nor a key");
    }
    assert_problem(app.api_get("/v1/audit").await, 400, "invalid_request").await;
    // The reader may not read the audit (read_logs).
    let refused = as_key(&app, READER, get, "/v1/audit?caller=reader").await;
    assert_problem(refused, 403, "caller_not_allowed").await;
}
