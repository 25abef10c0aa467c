//! The import API: `POST /v1/users/{userId}/connections/{provider}/import`
//! (src/http/api/import.rs, core in src/tokens/import.rs). Only a key that names
//! `import_connections` may import; an imported connection is listed `unverified` until
//! its first refresh, then read, audited, announced and deleted like any other; an
//! import over a connection needs `replace`; a bad body stores nothing and never echoes
//! a value; `verify` redeems the refresh token once (a rotated one is stored) and takes
//! the account from the provider; a dead token is stored only when asked to keep it.
//! No imported token ever shows in a log line, an answer or the storage in clear.

on_every_backend!(
    only_a_key_that_names_the_import_may_import,
    an_imported_connection_is_refreshed_audited_announced_and_deleted_like_any_other,
    an_import_over_a_connection_needs_replace_and_a_bad_body_stores_nothing,
    a_verified_import_redeems_once_and_stores_what_the_provider_says,
    a_verified_import_of_a_dead_token_stores_nothing_unless_kept,
    a_verified_import_found_dead_announces_nothing_and_restores_what_was_there,
);

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::fake_provider::Profile;
use crate::support::{API_KEY, Backend, FakeProvider, TestApp, app_with_keys, contains};

/// A key allowed the import (and nothing else): `import_connections` is never implied,
/// so it is named (src/secrets/api_key.rs, `Operation::ImportConnections`).
const IMPORTER: &str = "importer-key-0123456789abcdef";
/// A key allowed the import of GitHub connections only.
const GITHUB_IMPORTER: &str = "github-importer-key-0123456789abcdef";
/// A key allowed the import of connections of another OAuth client only.
const OTHER_CLIENT_IMPORTER: &str = "other-client-importer-key-0123456789abcdef";
const DRIVE: &str = "https://www.googleapis.com/auth/drive.readonly";
const CALENDAR: &str = "https://www.googleapis.com/auth/calendar.readonly";
/// Events are served as soon as the backend allows (see tests/api/events.rs).
const NO_FEED_DELAY: (&str, &str) = ("AXNT_EVENTS_FEED_DELAY_MS", "0");

/// The keys: the suite's own (no `operations` list: every operation but the import),
/// `importer` and `github-importer`.
fn keys() -> Value {
    json!([
        API_KEY,
        {"name": "importer", "key": IMPORTER, "operations": ["import_connections"]},
        {"name": "github-importer", "key": GITHUB_IMPORTER, "operations": ["import_connections"], "providers": ["github"]},
        {"name": "other-client-importer", "key": OTHER_CLIENT_IMPORTER, "operations": ["import_connections"], "clients": ["other-client.apps.example"]},
    ])
}

/// One answer, as received.
struct Answer {
    status: u16,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// A problem+json answer with `status` and `code`; its body.
    fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "status for {code}: {}", self.text);
        assert!(
            self.content_type.starts_with("application/problem+json"),
            "problem+json, got {}",
            self.content_type
        );
        let body = self.json();
        assert_eq!(body["code"], code, "code in {body}");
        assert_eq!(body["status"], status);
        body
    }

    /// A JSON answer with `status`; its body.
    fn ok(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        self.json()
    }
}

/// Calls the instance and keeps every answer's body, to search them for secrets.
struct Calls<'a> {
    app: &'a TestApp,
    bodies: Mutex<Vec<String>>,
}

impl<'a> Calls<'a> {
    fn new(app: &'a TestApp) -> Self {
        Self {
            app,
            bodies: Mutex::new(Vec::new()),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = response.text().await.expect("body");
        self.bodies.lock().expect("bodies").push(text.clone());
        Answer {
            status,
            content_type,
            text,
        }
    }

    fn import_path(&self, user_id: &str, query: &str) -> String {
        format!(
            "/v1/users/{user_id}/connections/{}/import{query}",
            self.app.provider
        )
    }

    /// `POST …/import{query}` with `body` as JSON, as `key`.
    async fn import_as(&self, key: &str, user_id: &str, query: &str, body: &Value) -> Answer {
        let url = self.app.url(&self.import_path(user_id, query));
        self.send(self.app.http.post(url).bearer_auth(key).json(body))
            .await
    }

    /// `POST …/import{query}` as the importer.
    async fn import(&self, user_id: &str, query: &str, body: &Value) -> Answer {
        self.import_as(IMPORTER, user_id, query, body).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(self.app.http.get(self.app.url(path)).bearer_auth(API_KEY))
            .await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(
            self.app
                .http
                .delete(self.app.url(path))
                .bearer_auth(API_KEY),
        )
        .await
    }

    async fn token(&self, user_id: &str) -> Answer {
        self.get(&format!("/v1/users/{user_id}/tokens/{}", self.app.provider))
            .await
    }

    /// The user's connections as `GET /v1/users/{u}/connections` lists them.
    async fn listed(&self, user_id: &str) -> Vec<Value> {
        let body = self
            .get(&format!("/v1/users/{user_id}/connections"))
            .await
            .ok(200);
        body["connections"].as_array().cloned().expect("a list")
    }

    /// The user's one connection as listed.
    async fn listed_one(&self, user_id: &str) -> Value {
        let all = self.listed(user_id).await;
        assert_eq!(all.len(), 1, "one connection: {all:?}");
        all[0].clone()
    }

    /// The `connection.imported` events of `user_id` in the feed, once there are `want`.
    async fn imported_events(&self, user_id: &str, want: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let feed = self.get("/v1/events?limit=500").await.ok(200);
            // The event type as the product names it (src/events/data.rs,
            // `EventPayload::Imported`: `#[serde(rename = "connection.imported")]`).
            let found: Vec<Value> = feed["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter(|e| e["type"] == "connection.imported" && e["data"]["userId"] == user_id)
                .cloned()
                .collect();
            if found.len() >= want {
                return found;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no connection.imported event for {user_id} in {feed}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every event of `user_id` in the feed now.
    async fn events_of(&self, user_id: &str) -> Vec<Value> {
        let feed = self.get("/v1/events?limit=500").await.ok(200);
        feed["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|e| e["data"]["userId"] == user_id)
            .cloned()
            .collect()
    }

    /// The user's audit items, once one has `outcome` (aws mode writes from a queue).
    async fn audited(&self, user_id: &str, outcome: &str) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let body = self
                .get(&format!("/v1/audit?userId={user_id}"))
                .await
                .ok(200);
            let items = body["items"].as_array().cloned().unwrap_or_default();
            if items.iter().any(|i| i["outcome"] == outcome) {
                return items;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the audit of {user_id} never showed {outcome}: {items:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// None of `secrets` is in the process's logs, in any answer received, or in clear
    /// in the instance's storage.
    async fn assert_kept_secret(&self, secrets: &[&str]) {
        let logs = crate::support::captured_logs();
        let raw = self.app.raw_storage().await;
        let bodies = self.bodies.lock().expect("bodies").clone();
        assert!(!bodies.is_empty());
        for secret in secrets {
            assert!(!secret.is_empty());
            assert!(!logs.contains(secret), "a token in the logs");
            assert!(
                !bodies.iter().any(|b| b.contains(secret)),
                "a token in an answer"
            );
            assert!(!contains(&raw, secret), "a token in clear in the storage");
        }
    }
}

/// Scopes as a sorted list, to compare sets.
fn sorted(scopes: &Value) -> Vec<String> {
    let mut all: Vec<String> = scopes
        .as_array()
        .unwrap_or_else(|| panic!("a list of scopes: {scopes}"))
        .iter()
        .map(|s| s.as_str().expect("a scope").to_string())
        .collect();
    all.sort();
    all
}

fn strings(scopes: &[&str]) -> Vec<String> {
    let mut all: Vec<String> = scopes.iter().map(|s| (*s).to_string()).collect();
    all.sort();
    all
}

/// `value` with every RFC 3339 time truncated to the millisecond.
fn to_millis(value: &Value) -> Value {
    match value {
        Value::String(text) => match chrono::DateTime::parse_from_rfc3339(text) {
            Ok(time) => json!(time.timestamp_millis()),
            Err(_) => value.clone(),
        },
        Value::Array(all) => Value::Array(all.iter().map(to_millis).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_millis(v)))
                .collect(),
        ),
        _ => value.clone(),
    }
}

/// An account of its own (the fake combines scopes per account and client).
fn account(tag: &str) -> Profile {
    let prefix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let mut profile = Profile::for_prefix(prefix);
    profile.email = format!("{tag}-{prefix}@example.com");
    profile
}

/// A string no provider issued, shaped like a secret, to plant in a body.
fn planted(kind: &str) -> String {
    format!("{kind}-PLANTED-{}", uuid::Uuid::new_v4().simple())
}

async fn only_a_key_that_names_the_import_may_import(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app_with_keys(backend, &provider, &keys(), &[NO_FEED_DELAY]).await;
    let calls = Calls::new(&app);
    let profile = account("kim");
    let refresh_token = provider.mint_grant(&profile, "openid email");
    let body = json!({ "refreshToken": refresh_token, "sub": profile.sub, "email": profile.email });

    // A key without an `operations` list has every operation but the import.
    let refused = calls.import_as(API_KEY, "kim", "", &body).await;
    refused.problem(403, "caller_not_allowed");
    // A key that names the import, but of GitHub connections only.
    let refused = calls.import_as(GITHUB_IMPORTER, "kim", "", &body).await;
    refused.problem(403, "caller_not_allowed");
    assert!(app.stored_row("kim").await.is_none(), "nothing stored");
    assert!(calls.listed("kim").await.is_empty());

    // The key that names it.
    let imported = calls.import("kim", "", &body).await.ok(201);
    assert_eq!(imported["outcome"], "stored", "{imported}");
    assert_eq!(imported["verified"], false, "{imported}");
    assert_eq!(imported["connection"]["provider"], app.provider.as_str());
    assert_eq!(imported["connection"]["unverified"], true, "{imported}");
    assert_eq!(
        app.stored_refresh_token("kim").await.as_deref(),
        Some(refresh_token.as_str())
    );
    // It may import, and nothing else: the import is its only operation.
    let read = calls
        .send(
            app.http
                .get(app.url("/v1/users/kim/tokens/google"))
                .bearer_auth(IMPORTER),
        )
        .await;
    read.problem(403, "caller_not_allowed");

    calls.assert_kept_secret(&[&refresh_token]).await;
}

async fn an_imported_connection_is_refreshed_audited_announced_and_deleted_like_any_other(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = app_with_keys(backend, &provider, &keys(), &[NO_FEED_DELAY]).await;
    let calls = Calls::new(&app);
    let profile = account("ann");
    let refresh_token = provider.mint_grant(&profile, &format!("openid email {DRIVE}"));

    // No access token: the first read refreshes.
    let body = json!({
        "refreshToken": refresh_token,
        "scopes": ["openid", "email", DRIVE],
        "sub": profile.sub,
        "email": profile.email,
    });
    let imported = calls.import("ann", "", &body).await.ok(201);
    assert_eq!(imported["outcome"], "stored", "{imported}");
    assert_eq!(imported["verified"], false);
    let listed = calls.listed_one("ann").await;
    assert_eq!(listed["provider"], app.provider.as_str());
    assert_eq!(listed["unverified"], true, "{listed}");
    assert!(listed["importedAt"].is_string(), "{listed}");
    assert_eq!(listed["isActive"], true);
    assert_eq!(listed["userInfo"]["sub"], profile.sub.as_str());
    assert_eq!(listed["email"], profile.email.as_str());
    assert_eq!(
        sorted(&listed["grantedScopes"]),
        strings(&["openid", "email", DRIVE])
    );
    // The answer shows the connection as the list does. Times are compared to the
    // millisecond: the answer's are the unstored row's, to the nanosecond, the list's
    // as stored (see the report on this file's tests).
    assert_eq!(
        to_millis(&imported["connection"]),
        to_millis(&listed),
        "the answer shows the connection as the list does"
    );

    // Read: one refresh at the provider, then served as stored.
    let refreshes = provider.refresh_count();
    let token = calls.token("ann").await.ok(200);
    assert_eq!(provider.refresh_count(), refreshes + 1, "one refresh");
    assert_eq!(
        token["accessToken"].as_str(),
        provider.latest_access_token().as_deref()
    );
    let again = calls.token("ann").await.ok(200);
    assert_eq!(again["accessToken"], token["accessToken"]);
    assert_eq!(provider.refresh_count(), refreshes + 1, "no second refresh");
    let listed = calls.listed_one("ann").await;
    assert_eq!(
        listed["unverified"], false,
        "proven by the refresh: {listed}"
    );
    assert!(listed["lastRefreshedAt"].is_string(), "{listed}");

    // The audit names the caller that imported (outcome `imported`, src/audit/mod.rs
    // `ReadOutcome::Imported`, serialized snake_case).
    let items = calls.audited("ann", "imported").await;
    let item = items
        .iter()
        .find(|i| i["outcome"] == "imported")
        .expect("imported");
    assert_eq!(item["caller"], "importer", "{item}");
    assert_eq!(item["userId"], "ann");
    assert_eq!(item["provider"], app.provider.as_str());

    // The feed announces it: `connection.imported` (src/events/data.rs).
    let events = calls.imported_events("ann", 1).await;
    assert_eq!(events.len(), 1, "announced once: {events:?}");
    let data = &events[0]["data"];
    assert_eq!(data["provider"], app.provider.as_str());
    assert_eq!(data["sub"], profile.sub.as_str());
    assert_eq!(data["email"], profile.email.as_str());
    assert_eq!(
        sorted(&data["grantedScopes"]),
        strings(&["openid", "email", DRIVE])
    );
    assert_eq!(
        sorted(&data["requestedScopes"]),
        strings(&["openid", "email", DRIVE])
    );
    assert_eq!(data["verified"], false);
    assert_eq!(data["replaced"], false);
    assert_eq!(data["isActive"], true);

    // Deleted: the stored refresh token (Google does not rotate: the imported one) is
    // revoked at the provider, and the connection is gone.
    let stored = app.stored_refresh_token("ann").await.expect("stored");
    assert_eq!(stored, refresh_token);
    let deleted = calls
        .delete(&format!("/v1/users/ann/connections/{}", app.provider))
        .await
        .ok(200);
    assert_eq!(deleted["revocation"], "revoked", "{deleted}");
    assert!(
        provider.revoked_tokens().contains(&stored),
        "the imported refresh token was revoked"
    );
    assert!(!provider.is_refresh_token_valid(&refresh_token));
    calls.token("ann").await.problem(404, "not_connected");
    assert!(calls.listed("ann").await.is_empty());

    calls.assert_kept_secret(&[&refresh_token]).await;
}

async fn an_import_over_a_connection_needs_replace_and_a_bad_body_stores_nothing(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app_with_keys(backend, &provider, &keys(), &[NO_FEED_DELAY]).await;
    let calls = Calls::new(&app);
    let profile = account("bo");
    let first = provider.mint_grant(&profile, "openid email");
    let second = provider.mint_grant(&profile, "openid email");
    let access_token = planted("ya29");
    let expires_at = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let imported = calls
        .import(
            "bo",
            "",
            &json!({
                "refreshToken": first,
                "accessToken": access_token,
                "expiresAt": expires_at,
                "scopes": "openid email",
                "sub": profile.sub,
            }),
        )
        .await
        .ok(201);
    assert_eq!(imported["outcome"], "stored");
    let row = app.stored_row("bo").await.expect("stored");

    // A second import without `replace` leaves the connection as it is.
    let again = json!({ "refreshToken": second, "scopes": ["openid", "email"] });
    let exists = calls.import("bo", "", &again).await;
    exists.problem(409, "already_connected");
    assert_eq!(app.stored_row("bo").await.as_ref(), Some(&row), "unchanged");
    assert_eq!(
        app.stored_refresh_token("bo").await.as_deref(),
        Some(first.as_str())
    );
    // With `replace`, the new grant is the connection.
    let replaced = calls.import("bo", "?replace=true", &again).await.ok(200);
    assert_eq!(replaced["outcome"], "replaced", "{replaced}");
    assert_eq!(replaced["connection"]["unverified"], true);
    let now = app.stored_row("bo").await.expect("stored");
    assert_eq!(now.version, row.version + 1);
    assert_eq!(
        app.stored_refresh_token("bo").await.as_deref(),
        Some(second.as_str())
    );
    // The same refresh token again, even with `replace`: nothing to do, 200.
    let same = calls.import("bo", "?replace=true", &again).await.ok(200);
    assert_eq!(same["outcome"], "unchanged", "{same}");
    assert_eq!(
        app.stored_row("bo").await.map(|r| r.version),
        Some(now.version)
    );
    // A key limited to another OAuth client may not import this one's grants, nor
    // over this one's connection.
    calls
        .import_as(
            OTHER_CLIENT_IMPORTER,
            "bo",
            "?replace=true",
            &json!({ "refreshToken": planted("1//0h") }),
        )
        .await
        .problem(403, "caller_not_allowed");
    calls
        .import_as(
            OTHER_CLIENT_IMPORTER,
            "cy",
            "",
            &json!({ "refreshToken": planted("1//0i") }),
        )
        .await
        .problem(403, "caller_not_allowed");
    assert_eq!(
        app.stored_row("bo").await.map(|r| r.version),
        Some(now.version)
    );
    assert!(app.stored_row("cy").await.is_none());
    // `keepDead` means nothing without `verify`: refused.
    calls
        .import(
            "cy",
            "?keepDead=true",
            &json!({ "refreshToken": planted("1//0j") }),
        )
        .await
        .problem(400, "invalid_request");
    assert!(app.stored_row("cy").await.is_none());

    // Bad bodies: 400 naming the field, never the value; nothing stored.
    let secret = planted("1//0g");
    let third = provider.mint_grant(&profile, "openid email");
    for (body, field) in [
        (
            json!({ "refreshToken": third, "expiresAt": secret }),
            "expiresAt",
        ),
        (json!({ "accessToken": secret }), "refreshToken"),
        (
            json!({ "refreshToken": third, "refresh_token": secret }),
            "refresh_token",
        ),
        (json!({ "refreshToken": secret, "scopes": 7 }), "scopes"),
        (
            json!({ "refreshToken": third, "userId": "someone-else" }),
            "userId",
        ),
        (
            json!({ "refreshToken": third, "provider": "github" }),
            "provider",
        ),
        (json!([secret]), "body"),
    ] {
        let refused = calls.import("cy", "", &body).await;
        let problem = refused.problem(400, "invalid_request");
        let detail = problem["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(field), "{field} named in {problem}");
        assert!(!refused.text.contains(&secret), "the value is not echoed");
    }
    // Not JSON, or not said to be.
    let path = app.url(&calls.import_path("cy", ""));
    let text = json!({ "refreshToken": third }).to_string();
    for content_type in [None, Some("text/plain")] {
        let mut request = app
            .http
            .post(&path)
            .bearer_auth(IMPORTER)
            .body(text.clone());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        calls
            .send(request)
            .await
            .problem(415, "unsupported_media_type");
    }
    let broken = calls
        .send(
            app.http
                .post(&path)
                .bearer_auth(IMPORTER)
                .header("content-type", "application/json")
                .body(format!(r#"{{"refreshToken": "{secret}""#)),
        )
        .await;
    broken.problem(400, "invalid_request");
    // A provider that is not configured.
    let unknown = calls
        .send(
            app.http
                .post(app.url("/v1/users/cy/connections/nosuch/import"))
                .bearer_auth(IMPORTER)
                .json(&json!({ "refreshToken": third })),
        )
        .await;
    unknown.problem(404, "unknown_provider");
    assert!(app.stored_row("cy").await.is_none(), "nothing stored");
    assert!(calls.listed("cy").await.is_empty());
    assert_eq!(
        calls.imported_events("bo", 2).await.len(),
        2,
        "the store and the replace were announced"
    );
    assert!(
        calls.events_of("cy").await.is_empty(),
        "nothing announced for refused bodies"
    );

    calls
        .assert_kept_secret(&[&first, &second, &third, &access_token, &secret])
        .await;
}

async fn a_verified_import_redeems_once_and_stores_what_the_provider_says(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.rotate_refresh_tokens(true);
    provider.id_token_on_refresh(true);
    let app = app_with_keys(backend, &provider, &keys(), &[NO_FEED_DELAY]).await;
    let calls = Calls::new(&app);
    let profile = account("di");
    let refresh_token = provider.mint_grant(&profile, &format!("openid email {DRIVE}"));

    // The body claims other scopes than the grant holds, and names no account.
    let refreshes = provider.refresh_count();
    let body = json!({ "refreshToken": refresh_token, "scopes": ["openid", "email", CALENDAR] });
    let imported = calls.import("di", "?verify=true", &body).await.ok(201);
    assert_eq!(imported["outcome"], "stored", "{imported}");
    assert_eq!(imported["verified"], true, "{imported}");
    assert_eq!(provider.refresh_count(), refreshes + 1, "one redeem");
    assert_eq!(provider.spent_refresh_tokens_presented(), 0);

    // The rotated refresh token is stored; the imported one is spent.
    let stored = app.stored_refresh_token("di").await.expect("stored");
    assert_ne!(stored, refresh_token);
    assert_eq!(Some(&stored), provider.latest_refresh_token().as_ref());
    assert!(provider.is_refresh_token_valid(&stored));
    assert!(!provider.is_refresh_token_valid(&refresh_token));

    // The scopes the provider reported, the account its ID token names.
    let listed = calls.listed_one("di").await;
    assert_eq!(listed["unverified"], false, "{listed}");
    assert_eq!(listed["isActive"], true);
    assert_eq!(
        sorted(&listed["grantedScopes"]),
        strings(&["openid", "email", DRIVE]),
        "the provider's scopes, not the body's: {listed}"
    );
    assert_eq!(listed["userInfo"]["sub"], profile.sub.as_str(), "{listed}");
    assert_eq!(listed["email"], profile.email.as_str(), "{listed}");
    assert_eq!(
        imported["connection"]["userInfo"]["sub"],
        profile.sub.as_str()
    );
    assert_eq!(
        sorted(&imported["connection"]["grantedScopes"]),
        strings(&["openid", "email", DRIVE])
    );
    let events = calls.imported_events("di", 1).await;
    assert_eq!(events.len(), 1, "announced once: {events:?}");
    assert_eq!(events[0]["data"]["verified"], true);
    assert_eq!(events[0]["data"]["sub"], profile.sub.as_str());
    assert_eq!(events[0]["data"]["email"], profile.email.as_str());

    // The redeem's access token is served: no further refresh.
    let token = calls.token("di").await.ok(200);
    assert_eq!(
        token["accessToken"].as_str(),
        provider.latest_access_token().as_deref()
    );
    assert_eq!(
        provider.refresh_count(),
        refreshes + 1,
        "no further refresh"
    );

    calls.assert_kept_secret(&[&refresh_token, &stored]).await;
}

async fn a_verified_import_of_a_dead_token_stores_nothing_unless_kept(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app_with_keys(backend, &provider, &keys(), &[NO_FEED_DELAY]).await;
    let calls = Calls::new(&app);
    // A refresh token the provider never issued.
    let dead = planted("1//0g-made-up");
    let body = json!({ "refreshToken": dead, "scopes": ["openid", "email"], "sub": "12345" });

    let refreshes = provider.refresh_count();
    let refused = calls.import("ed", "?verify=true", &body).await;
    refused.problem(409, "reauthorization_required");
    assert_eq!(provider.refresh_count(), refreshes + 1, "one redeem");
    assert!(app.stored_row("ed").await.is_none(), "nothing stored");
    assert!(calls.listed("ed").await.is_empty());
    calls.token("ed").await.problem(404, "not_connected");

    // Kept, inactive, when asked.
    let kept = calls
        .import("ed", "?verify=true&keepDead=true", &body)
        .await
        .ok(201);
    assert_eq!(kept["outcome"], "dead_kept", "{kept}");
    assert_eq!(kept["connection"]["isActive"], false, "{kept}");
    let listed = calls.listed_one("ed").await;
    assert_eq!(listed["isActive"], false, "{listed}");
    assert_eq!(listed["health"], "dead", "{listed}");
    assert!(listed["cause"].is_string(), "{listed}");
    calls
        .token("ed")
        .await
        .problem(409, "reauthorization_required");

    calls.assert_kept_secret(&[&dead]).await;
}

/// A verify that finds the token dead leaves things as they were before the import
/// ("the connection is as it was before the import", src/tokens/import.rs,
/// `ImportOutcome::Dead`), the feed included: nothing is announced of a grant that was
/// never the connection.
async fn a_verified_import_found_dead_announces_nothing_and_restores_what_was_there(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = app_with_keys(backend, &provider, &keys(), &[NO_FEED_DELAY]).await;
    let calls = Calls::new(&app);
    let dead = planted("1//0g-made-up");

    // No connection before.
    let body = json!({ "refreshToken": dead, "scopes": ["openid", "email"] });
    let refused = calls.import("gus", "?verify=true", &body).await;
    refused.problem(409, "reauthorization_required");
    assert!(app.stored_row("gus").await.is_none());

    // A live connection before, and a dead grant imported over it.
    let profile = account("fay");
    let good = provider.mint_grant(&profile, "openid email");
    let live = json!({
        "refreshToken": good,
        "scopes": ["openid", "email"],
        "sub": profile.sub,
        "email": profile.email,
    });
    calls.import("fay", "", &live).await.ok(201);
    let refused = calls
        .import("fay", "?replace=true&verify=true", &body)
        .await;
    refused.problem(409, "reauthorization_required");
    assert_eq!(
        app.stored_refresh_token("fay").await.as_deref(),
        Some(good.as_str()),
        "the connection before the import is back"
    );
    let listed = calls.listed_one("fay").await;
    assert_eq!(listed["isActive"], true, "{listed}");
    assert_eq!(listed["userInfo"]["sub"], profile.sub.as_str());

    tokio::time::sleep(crate::support::FEED_HOLD).await;
    let told: Vec<Value> = calls
        .events_of("fay")
        .await
        .into_iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(
        told,
        [json!("connection.imported")],
        "only the live connection's import announced"
    );
    let told = calls.events_of("gus").await;
    assert!(
        told.is_empty(),
        "nothing announced of a grant never stored: {told:?}"
    );
    // And it still works.
    calls.token("fay").await.ok(200);

    calls.assert_kept_secret(&[&dead, &good]).await;
}
