//! Lifecycle events: each kind made by its cause, stored once with the change (and not
//! at all when the change is not stored), read back in order from the pull feed,
//! replayable from any cursor, after a restart, with nothing secret in them.

on_every_backend!(
    each_change_is_told_once_in_order_and_the_feed_replays_from_a_cursor,
    a_failing_provider_is_told_once_then_its_recovery,
    a_grant_near_its_end_is_told_once,
    a_change_that_is_not_stored_tells_nothing,
    the_feed_checks_its_cursor_and_its_caller,
);

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::fake_provider::{Profile, RefreshBehaviour};
use crate::support::{Backend, FakeProvider, TestApp, assert_problem};

const DRIVE: &str = "https://www.googleapis.com/auth/drive.readonly";
/// Events are served as soon as the backend allows (a delay below its shortest safe
/// one is raised to it; the default holds the newest 3 s back).
const NO_FEED_DELAY: (&str, &str) = ("AXNT_EVENTS_FEED_DELAY_MS", "0");

/// One page of the feed.
async fn page(app: &TestApp, after: Option<&str>, limit: usize) -> Value {
    let mut path = format!("/v1/events?limit={limit}");
    if let Some(after) = after {
        path.push_str(&format!("&after={after}"));
    }
    let response = app.api_get(&path).await;
    assert_eq!(response.status(), StatusCode::OK, "GET {path}");
    response.json().await.expect("json")
}

/// Every event after `after`, page by page (`limit` a page).
async fn all_after(app: &TestApp, after: Option<&str>, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor = after.map(str::to_string);
    for _ in 0..100 {
        let body = page(app, cursor.as_deref(), limit).await;
        let got = body["items"].as_array().cloned().unwrap_or_default();
        let next = body["next"].as_str().expect("next").to_string();
        if got.is_empty() {
            assert!(
                cursor.as_deref().is_none_or(|c| c == next),
                "an empty page keeps its cursor"
            );
            return items;
        }
        items.extend(got);
        cursor = Some(next);
    }
    panic!("the feed never ended");
}

fn kinds(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_string())
        .collect()
}

/// The feed's events, once `want` of them are there (writes in aws mode land at once;
/// the wait covers a slow machine).
async fn events(app: &TestApp, want: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let items = all_after(app, None, 100).await;
        if items.len() >= want || tokio::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A whole flow for `user_id` with the session `body`, completed as the application
/// does (a held grant confirmed); it succeeds.
pub(super) async fn flow(app: &TestApp, user_id: &str, body: Value) {
    let mut body = body;
    body["userId"] = json!(user_id);
    body["provider"] = json!("google");
    let session = app.connect_session(body).await;
    let (provider_url, cookie) = app.start(session["url"].as_str().expect("url")).await;
    let callback = app.authorize(&provider_url).await;
    let response = app.callback(&callback, Some(&cookie)).await;
    let response = app.complete(user_id, response).await;
    assert_eq!(response.status(), StatusCode::OK, "{user_id}'s flow");
}

async fn each_change_is_told_once_in_order_and_the_feed_replays_from_a_cursor(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[NO_FEED_DELAY]).await;
    let first_sub = provider.profile().sub;

    assert!(app.connect("eve").await.status().is_success());
    // A step-up adds a scope to the same account's grant.
    flow(&app, "eve", json!({ "scopes": [DRIVE] })).await;
    // Another Google account replaces the connection; its access token is due at once.
    provider.set_profile(Profile::for_prefix("b0b"));
    provider.set_access_token_ttl(0);
    assert!(app.connect("eve").await.status().is_success());
    provider.refresh_failure([RefreshBehaviour::InvalidGrant]);
    assert_problem(app.token("eve").await, 409, "reauthorization_required").await;
    let deleted = app.api_delete("/v1/users/eve/connections/google").await;
    assert_eq!(deleted.status(), StatusCode::OK);
    let deleted: Value = deleted.json().await.expect("json");

    let items = events(&app, 6).await;
    assert_eq!(
        kinds(&items),
        [
            "connection.created",
            "connection.reauthorized",
            "connection.scopes_changed",
            "connection.reauthorized",
            "connection.refresh_failed",
            "connection.deleted",
        ],
        "each change once, in order: {items:#?}"
    );
    for e in &items {
        assert_eq!(e["data"]["userId"], "eve");
        assert_eq!(e["data"]["provider"], "google");
        assert!(e["id"].as_str().is_some_and(|id| id.len() == 36), "{e}");
        assert!(
            e["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
            "{e}"
        );
    }
    let ids: Vec<&str> = items
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids sort as made: {ids:?}"
    );
    assert_eq!(items[0]["data"]["sub"], first_sub.as_str());
    assert_eq!(items[1]["data"]["accountChanged"], false);
    assert!(
        items[2]["data"]["addedScopes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == DRIVE)),
        "{}",
        items[2]
    );
    assert_eq!(items[3]["data"]["accountChanged"], true);
    assert_eq!(items[3]["data"]["previousSub"], first_sub.as_str());
    assert_eq!(items[4]["data"]["isActive"], false);
    assert_eq!(items[4]["data"]["cause"], "unknown_invalid_grant");
    assert!(items[4]["data"]["remedy"].is_string());
    assert_eq!(items[5]["data"]["revocation"], deleted["revocation"]);

    // Nothing secret: no token the provider issued appears in the feed.
    let text = serde_json::to_string(&items).expect("json");
    let mut secrets = provider.issued_refresh_tokens();
    secrets.extend(provider.latest_access_token());
    assert!(!secrets.is_empty());
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "a token in the feed");
    }

    // Replayable from any cursor, in pages of any size.
    let rest = all_after(&app, Some(ids[2]), 100).await;
    assert_eq!(rest, items[3..].to_vec());
    assert_eq!(all_after(&app, None, 2).await, items);
    let last = page(&app, Some(ids[5]), 10).await;
    assert_eq!(last["items"], json!([]));
    assert_eq!(last["next"], ids[5], "an empty page hands its cursor back");

    // Stored, not held in memory: another instance on the same storage, after this
    // one stopped, serves the same events.
    let again = app.sibling().await;
    app.stop().await;
    assert_eq!(all_after(&again, None, 100).await, items);
}

async fn a_failing_provider_is_told_once_then_its_recovery(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        backend,
        &provider,
        &[
            NO_FEED_DELAY,
            ("AXNT_REFRESH_COOLDOWN_SECS", "0"),
            ("AXNT_REFRESH_DEADLINE_SECS", "1"),
        ],
    )
    .await;
    provider.set_access_token_ttl(0);
    assert!(app.connect("fay").await.status().is_success());
    provider.refresh_failure(RefreshBehaviour::Status(503).times(1000));
    for _ in 0..3 {
        assert_problem(app.token("fay").await, 503, "provider_unavailable").await;
    }
    provider.clear_refresh_failures();
    assert_eq!(app.token("fay").await.status(), StatusCode::OK);
    assert_eq!(app.token("fay").await.status(), StatusCode::OK);

    let items = events(&app, 3).await;
    assert_eq!(
        kinds(&items),
        [
            "connection.created",
            "connection.refresh_failed",
            "connection.recovered"
        ],
        "one failure event for a run of failures, one recovery: {items:#?}"
    );
    assert_eq!(items[1]["data"]["isActive"], true);
    assert_eq!(items[1]["data"]["cause"], "provider_unavailable");
}

async fn a_grant_near_its_end_is_told_once(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(
        backend,
        &provider,
        &[
            NO_FEED_DELAY,
            ("AXNT_GOOGLE_PUBLISHING_STATUS", "testing"),
            ("AXNT_KEEPALIVE_INTERVAL_SECS", "1"),
        ],
    )
    .await;
    flow(&app, "gus", json!({ "scopes": [DRIVE] })).await;
    flow(&app, "hal", json!({ "scopes": [DRIVE] })).await;
    // Gus consented 6 days 23 hours ago: the Testing status ends his grant in an hour.
    let row = app.stored_row("gus").await.expect("row");
    let consented = chrono::Utc::now() - chrono::Duration::days(6) - chrono::Duration::hours(23);
    let aged = axnt_oauth::store::Connection {
        grant: axnt_oauth::store::GrantLedger {
            consented_at: Some(consented),
            ..row.grant.clone()
        },
        version: row.version + 1,
        ..row.clone()
    };
    app.store
        .put(&aged, Some(row.version), &[])
        .await
        .expect("age the grant");

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut items = Vec::new();
    while tokio::time::Instant::now() < deadline {
        items = all_after(&app, None, 100).await;
        if kinds(&items)
            .iter()
            .any(|k| k == "connection.expiring_soon")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // More passes run (one a second) and tell nothing new, once the feed shows them.
    tokio::time::sleep(std::time::Duration::from_millis(2_500) + crate::support::FEED_HOLD).await;
    let items_later = all_after(&app, None, 100).await;
    assert_eq!(
        items_later.len(),
        items.len(),
        "told once: {items_later:#?}"
    );
    let soon: Vec<&Value> = items
        .iter()
        .filter(|e| e["type"] == "connection.expiring_soon")
        .collect();
    assert_eq!(soon.len(), 1, "{items:#?}");
    assert_eq!(soon[0]["data"]["userId"], "gus", "hal's grant is fresh");
    assert_eq!(soon[0]["data"]["reason"], "testing_mode");
    let predicted = chrono::DateTime::parse_from_rfc3339(
        soon[0]["data"]["predictedExpiry"]
            .as_str()
            .expect("predictedExpiry"),
    )
    .expect("RFC 3339");
    let expected = consented + chrono::Duration::days(7);
    assert!(
        (predicted.timestamp() - expected.timestamp()).abs() <= 1,
        "{predicted} vs {expected}"
    );
}

/// Breaks the events storage (the SQLite table, the DynamoDB table) under a live
/// instance; `repair` puts it back.
async fn break_events(app: &TestApp) {
    match app.settings.backend {
        axnt_oauth::config::Backend::Embedded => {
            let db = rusqlite::Connection::open(app.data_dir.path().join("axnt-oauth.db"))
                .expect("open the database");
            db.execute_batch("DROP TABLE events").expect("drop events");
        }
        axnt_oauth::config::Backend::Aws => {
            let sdk = axnt_oauth::aws::sdk_config(&app.settings).await;
            aws_sdk_dynamodb::Client::new(&sdk)
                .delete_table()
                .table_name(&app.settings.aws.events_table)
                .send()
                .await
                .expect("DeleteTable");
        }
    }
}

async fn repair_events(app: &TestApp) {
    match app.settings.backend {
        axnt_oauth::config::Backend::Embedded => {
            axnt_oauth::store::embedded::EmbeddedStore::open(
                &app.data_dir.path().join("axnt-oauth.db"),
            )
            .expect("reopen: the schema is created again");
        }
        axnt_oauth::config::Backend::Aws => {
            axnt_oauth::aws::setup::ensure_tables(&app.settings, false)
                .await
                .expect("setup recreates the table");
        }
    }
}

async fn a_change_that_is_not_stored_tells_nothing(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[NO_FEED_DELAY]).await;
    assert!(app.connect("ivy").await.status().is_success());
    let before = app.stored_row("ivy").await.expect("row");

    // The event cannot be stored: neither is the change it belongs to.
    break_events(&app).await;
    let refused = app
        .api_delete("/v1/users/ivy/connections/google?revoke=false")
        .await;
    assert!(refused.status().is_server_error(), "{}", refused.status());
    assert_eq!(
        app.stored_row("ivy").await.as_ref(),
        Some(&before),
        "the connection is left as it was"
    );
    repair_events(&app).await;
    tokio::time::sleep(crate::support::FEED_HOLD).await;
    assert_eq!(
        kinds(&events(&app, 0).await),
        Vec::<String>::new(),
        "nothing told of a change that did not happen (the table is new, too)"
    );

    // Once the storage is back, the same change is stored, and told once.
    let deleted = app
        .api_delete("/v1/users/ivy/connections/google?revoke=false")
        .await;
    assert_eq!(deleted.status(), StatusCode::OK);
    assert!(app.stored_row("ivy").await.is_none());
    assert_eq!(kinds(&events(&app, 1).await), ["connection.deleted"]);
}

async fn the_feed_checks_its_cursor_and_its_caller(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[NO_FEED_DELAY]).await;
    assert!(app.connect("jo").await.status().is_success());
    for query in [
        "after=nope",
        "after=019ac1a2-7b3c-7d4e-8f50-6a7b8c9d0e1",
        "after=019AC1A2-7B3C-7D4E-8F50-6A7B8C9D0E1F",
        "limit=0",
        "limit=501",
        "cursor=x",
    ] {
        let path = format!("/v1/events?{query}");
        assert_problem(app.api_get(&path).await, 400, "invalid_request").await;
    }
    assert_eq!(kinds(&events(&app, 1).await), ["connection.created"]);
    // A cursor from long before retention (2001) reads from the oldest event kept.
    let old = page(&app, Some("00e8d4a5-1000-7000-8000-000000000000"), 10).await;
    assert_eq!(
        kinds(old["items"].as_array().expect("items")),
        ["connection.created"]
    );
    // One from the future reads nothing yet, and keeps its place.
    let future = "ffff0000-0000-7000-8000-000000000000";
    let ahead = page(&app, Some(future), 10).await;
    assert_eq!(ahead["items"], json!([]));
    assert_eq!(ahead["next"], future);
    let response = reqwest::Client::new()
        .get(app.url("/v1/events"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}
