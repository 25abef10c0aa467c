//! Google's Cross-Account Protection (RISC) receiver, `POST /risc/google`: security
//! event tokens signed by a test key the fake provider publishes as the RISC issuer.
//! One scenario per event type Google documents, each doing what the table in
//! docs/grants.md says; a replayed `jti` does nothing; a bad signature, issuer or
//! audience is refused and changes nothing.

on_every_backend!(
    tokens_revoked_ends_the_accounts_grants_made_before_it_and_tells_each_once,
    token_revoked_ends_the_grant_holding_that_refresh_token,
    account_disabled_for_hijacking_ends_the_grants_and_other_reasons_are_recorded,
    sessions_revoked_is_recorded_and_ends_no_grant,
    account_enabled_is_recorded_and_an_ended_grant_stays_ended,
    account_credential_change_required_is_recorded_and_ends_no_grant,
    verification_is_recorded_with_its_state,
    an_undocumented_type_is_recorded_by_its_uri_and_ends_no_grant,
    a_bad_signature_issuer_or_audience_is_refused,
);

use std::time::Duration;

use axnt_oauth::store::FlowLogEntry;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::fake_provider::Profile;
use crate::support::{Backend, FakeProvider, TestApp, assert_problem};

// Google's security event types, written out as Google's "Protect user accounts with
// Cross-Account Protection" page prints them in its "Supported event types" table
// (https://developers.google.com/identity/protocols/risc). The two about OAuth tokens
// are under `secevent/oauth/`, the others under `secevent/risc/`.
const SESSIONS_REVOKED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked";
const TOKENS_REVOKED: &str = "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked";
const TOKEN_REVOKED: &str = "https://schemas.openid.net/secevent/oauth/event-type/token-revoked";
const ACCOUNT_DISABLED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
const ACCOUNT_ENABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-enabled";
const ACCOUNT_CREDENTIAL_CHANGE_REQUIRED: &str =
    "https://schemas.openid.net/secevent/risc/event-type/account-credential-change-required";
const VERIFICATION: &str = "https://schemas.openid.net/secevent/risc/event-type/verification";

async fn app(backend: Backend, provider: &FakeProvider) -> TestApp {
    let issuer = provider.issuer();
    TestApp::on(
        backend,
        provider,
        &[
            ("AXNT_GOOGLE_RISC_ISSUER", issuer.as_str()),
            ("AXNT_EVENTS_FEED_DELAY_MS", "0"),
        ],
    )
    .await
}

/// A SET's claims for `events`, for this provider's client, issued at `iat`.
fn claims_at(provider: &FakeProvider, jti: &str, iat: i64, events: Value) -> Value {
    json!({
        "iss": provider.issuer(),
        "aud": provider.client_id(),
        "iat": iat,
        "jti": jti,
        "events": events,
    })
}

/// [`claims_at`], issued now.
fn claims(provider: &FakeProvider, jti: &str, events: Value) -> Value {
    claims_at(provider, jti, chrono::Utc::now().timestamp(), events)
}

/// A signed token of one event of type `uri` with `details`.
fn token(provider: &FakeProvider, jti: &str, uri: &str, details: Value) -> String {
    provider.security_event_token(&claims(provider, jti, json!({ uri: details })), false)
}

/// The `subject` Google gives an account: `iss-sub`.
fn account(provider: &FakeProvider, sub: &str) -> Value {
    json!({"subject_type": "iss-sub", "iss": provider.issuer(), "sub": sub})
}

pub(crate) async fn post(app: &TestApp, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(app.url("/risc/google"))
        .header("content-type", "application/secevent+jwt")
        .body(token.to_string())
        .send()
        .await
        .expect("POST /risc/google")
}

async fn connect_as(app: &TestApp, provider: &FakeProvider, user_id: &str, prefix: &str) -> String {
    let profile = Profile::for_prefix(prefix);
    provider.set_profile(profile.clone());
    assert!(
        app.connect(user_id).await.status().is_success(),
        "{user_id} connects"
    );
    profile.sub
}

/// `connection.revoked_by_user` events in the feed: `(userId, cause)`, sorted.
async fn revoked_in_feed(app: &TestApp) -> Vec<(String, String)> {
    // Once the feed shows what was just stored.
    tokio::time::sleep(crate::support::FEED_HOLD).await;
    let feed: Value = app
        .api_get("/v1/events?limit=500")
        .await
        .json()
        .await
        .expect("feed");
    let mut told: Vec<(String, String)> = feed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["type"] == "connection.revoked_by_user")
        .map(|e| {
            (
                e["data"]["userId"].as_str().unwrap_or_default().to_string(),
                e["data"]["cause"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    told.sort();
    told
}

fn told(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(u, c)| ((*u).to_string(), (*c).to_string()))
        .collect()
}

/// The flow-log item recorded under `/risc/google` for `jti` (written through the
/// flow-log queue: waited for, at most 10 s).
async fn recorded(app: &TestApp, jti: &str) -> FlowLogEntry {
    let backends = axnt_oauth::app::Backends::open(&app.settings)
        .await
        .expect("open the instance's storage");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let items = backends
            .flow_log
            .list("/risc/google", 100, None)
            .await
            .expect("list /risc/google");
        if let Some(item) = items.into_iter().find(|i| i.flow_id == jti) {
            return item;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{jti} is recorded under /risc/google"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `jti` was recorded as a known event of type `name`; `user_id`'s grant still serves
/// tokens and the feed told nothing.
async fn assert_only_recorded(app: &TestApp, jti: &str, name: &str, user_id: &str) -> FlowLogEntry {
    let item = recorded(app, jti).await;
    assert_eq!(item.data["eventType"], name, "{item:?}");
    assert_eq!(item.data["known"], true, "{item:?}");
    assert_eq!(
        app.token(user_id).await.status(),
        StatusCode::OK,
        "{name} ends no grant"
    );
    assert!(
        revoked_in_feed(app).await.is_empty(),
        "{name} tells nothing"
    );
    item
}

async fn tokens_revoked_ends_the_accounts_grants_made_before_it_and_tells_each_once(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let shared = connect_as(&app, &provider, "ann", "a1").await;
    connect_as(&app, &provider, "ann-work", "a1").await;
    connect_as(&app, &provider, "bob", "b2").await;
    // The event happened after those grants (iat has whole seconds) and before the next.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let iat = chrono::Utc::now().timestamp();
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    connect_as(&app, &provider, "ann-later", "a1").await;

    let events = json!({ TOKENS_REVOKED: { "subject": account(&provider, &shared) } });
    let set =
        provider.security_event_token(&claims_at(&provider, "jti-1", iat, events.clone()), false);
    assert_eq!(post(&app, &set).await.status(), StatusCode::ACCEPTED);
    for user in ["ann", "ann-work"] {
        let body = assert_problem(app.token(user).await, 409, "reauthorization_required").await;
        assert_eq!(body["cause"], "revoked_by_user", "{user}");
    }
    assert_eq!(
        app.token("ann-later").await.status(),
        StatusCode::OK,
        "a grant made after the event stays"
    );
    assert_eq!(
        app.token("bob").await.status(),
        StatusCode::OK,
        "another account stays"
    );
    let expected = told(&[("ann", "revoked_by_user"), ("ann-work", "revoked_by_user")]);
    assert_eq!(revoked_in_feed(&app).await, expected);
    // Each event names the security event by the last segment of the type URI
    // Google sent.
    let feed: Value = app
        .api_get("/v1/events?limit=500")
        .await
        .json()
        .await
        .expect("feed");
    let named: Vec<&Value> = feed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["type"] == "connection.revoked_by_user")
        .map(|e| &e["data"]["securityEvent"])
        .collect();
    assert_eq!(named, [&json!("tokens-revoked"), &json!("tokens-revoked")]);
    let logged = app.flow_log("ann").await;
    assert!(logged.iter().any(|i| i["step"] == "security_event"
        && i["data"]["cause"] == "revoked_by_user"
        && i["data"]["eventType"] == "tokens-revoked"));

    // Google delivers the same token again: nothing more is done or told.
    assert_eq!(post(&app, &set).await.status(), StatusCode::ACCEPTED);
    // Ann connects again; the same jti again (even issued later) does nothing.
    connect_as(&app, &provider, "ann", "a1").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let replay = provider.security_event_token(&claims(&provider, "jti-1", events), false);
    assert_eq!(post(&app, &replay).await.status(), StatusCode::ACCEPTED);
    assert_eq!(
        app.token("ann").await.status(),
        StatusCode::OK,
        "a replayed jti does nothing"
    );
    assert_eq!(revoked_in_feed(&app).await, expected, "told once");
}

/// Google's `hash_base64_sha512_sha512` identifier, computed here from the definition.
fn double_sha512(token: &str) -> String {
    use aws_lc_rs::digest::{SHA512, digest};
    STANDARD.encode(digest(&SHA512, digest(&SHA512, token.as_bytes()).as_ref()))
}

async fn token_revoked_ends_the_grant_holding_that_refresh_token(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    connect_as(&app, &provider, "dan", "d4").await;
    let dans = provider.latest_refresh_token().expect("issued");
    connect_as(&app, &provider, "eva", "e5").await;
    let evas = provider.latest_refresh_token().expect("issued");
    connect_as(&app, &provider, "fin", "f6").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let raw = app.raw_storage().await;
    for token in [&dans, &evas] {
        assert!(
            !crate::support::contains(&raw, token),
            "no refresh token in clear"
        );
        assert!(
            !crate::support::contains(&raw, &token[..16]),
            "nor its prefix"
        );
    }

    let by_hash = token(
        &provider,
        "jti-hash",
        TOKEN_REVOKED,
        json!({ "subject": {
            "subject_type": "oauth_token", "token_type": "refresh_token",
            "token_identifier_alg": "hash_base64_sha512_sha512", "token": double_sha512(&dans),
        } }),
    );
    assert_eq!(post(&app, &by_hash).await.status(), StatusCode::ACCEPTED);
    let by_prefix = token(
        &provider,
        "jti-prefix",
        TOKEN_REVOKED,
        json!({ "subject": {
            "subject_type": "oauth_token", "token_type": "refresh_token",
            "token_identifier_alg": "prefix", "token": &evas[..16],
        } }),
    );
    assert_eq!(post(&app, &by_prefix).await.status(), StatusCode::ACCEPTED);
    for user in ["dan", "eva"] {
        let body = assert_problem(app.token(user).await, 409, "reauthorization_required").await;
        assert_eq!(body["cause"], "revoked_by_user", "{user}");
    }
    assert_eq!(app.token("fin").await.status(), StatusCode::OK);
    assert_eq!(
        revoked_in_feed(&app).await,
        told(&[("dan", "revoked_by_user"), ("eva", "revoked_by_user")])
    );
}

async fn account_disabled_for_hijacking_ends_the_grants_and_other_reasons_are_recorded(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let sub = connect_as(&app, &provider, "cat", "c3").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    // bulk-account, and no reason at all: recorded, the grant stays.
    let bulk = token(
        &provider,
        "jti-bulk",
        ACCOUNT_DISABLED,
        json!({ "subject": account(&provider, &sub), "reason": "bulk-account" }),
    );
    assert_eq!(post(&app, &bulk).await.status(), StatusCode::ACCEPTED);
    let item = assert_only_recorded(&app, "jti-bulk", "account-disabled", "cat").await;
    assert_eq!(item.data["reason"], "bulk-account");
    let no_reason = token(
        &provider,
        "jti-no-reason",
        ACCOUNT_DISABLED,
        json!({ "subject": account(&provider, &sub) }),
    );
    assert_eq!(post(&app, &no_reason).await.status(), StatusCode::ACCEPTED);
    assert_only_recorded(&app, "jti-no-reason", "account-disabled", "cat").await;

    let hijacked = token(
        &provider,
        "jti-hijack",
        ACCOUNT_DISABLED,
        json!({ "subject": account(&provider, &sub), "reason": "hijacking" }),
    );
    assert_eq!(post(&app, &hijacked).await.status(), StatusCode::ACCEPTED);
    let body = assert_problem(app.token("cat").await, 409, "reauthorization_required").await;
    assert_eq!(body["cause"], "account_disabled");
    assert!(
        body["remedy"]
            .as_str()
            .is_some_and(|r| r.contains("hijacked"))
    );
    assert_eq!(
        revoked_in_feed(&app).await,
        told(&[("cat", "account_disabled")])
    );
}

async fn sessions_revoked_is_recorded_and_ends_no_grant(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let sub = connect_as(&app, &provider, "hal", "b8").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let set = token(
        &provider,
        "jti-sessions",
        SESSIONS_REVOKED,
        json!({ "subject": account(&provider, &sub) }),
    );
    assert_eq!(post(&app, &set).await.status(), StatusCode::ACCEPTED);
    assert_only_recorded(&app, "jti-sessions", "sessions-revoked", "hal").await;
}

async fn account_enabled_is_recorded_and_an_ended_grant_stays_ended(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let sub = connect_as(&app, &provider, "ida", "c9").await;
    connect_as(&app, &provider, "ivy", "ca").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let hijacked = token(
        &provider,
        "jti-ida-hijack",
        ACCOUNT_DISABLED,
        json!({ "subject": account(&provider, &sub), "reason": "hijacking" }),
    );
    assert_eq!(post(&app, &hijacked).await.status(), StatusCode::ACCEPTED);
    let enabled = token(
        &provider,
        "jti-ida-enabled",
        ACCOUNT_ENABLED,
        json!({ "subject": account(&provider, &sub) }),
    );
    assert_eq!(post(&app, &enabled).await.status(), StatusCode::ACCEPTED);
    let item = recorded(&app, "jti-ida-enabled").await;
    assert_eq!(item.data["eventType"], "account-enabled");
    assert_eq!(item.data["known"], true);
    // Made while the account may have been someone else's: the user connects again.
    let body = assert_problem(app.token("ida").await, 409, "reauthorization_required").await;
    assert_eq!(body["cause"], "account_disabled");
    assert_eq!(app.token("ivy").await.status(), StatusCode::OK);
    assert_eq!(
        revoked_in_feed(&app).await,
        told(&[("ida", "account_disabled")]),
        "account-enabled tells nothing"
    );
}

async fn account_credential_change_required_is_recorded_and_ends_no_grant(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let sub = connect_as(&app, &provider, "joe", "cb").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let set = token(
        &provider,
        "jti-credential",
        ACCOUNT_CREDENTIAL_CHANGE_REQUIRED,
        json!({ "subject": account(&provider, &sub) }),
    );
    assert_eq!(post(&app, &set).await.status(), StatusCode::ACCEPTED);
    assert_only_recorded(
        &app,
        "jti-credential",
        "account-credential-change-required",
        "joe",
    )
    .await;
}

async fn verification_is_recorded_with_its_state(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    connect_as(&app, &provider, "kim", "cc").await;
    let set = token(
        &provider,
        "jti-verify",
        VERIFICATION,
        json!({ "state": "setup-check-42" }),
    );
    assert_eq!(post(&app, &set).await.status(), StatusCode::ACCEPTED);
    let item = assert_only_recorded(&app, "jti-verify", "verification", "kim").await;
    assert_eq!(item.data["state"], "setup-check-42");
}

/// A type Google's table does not list, such as `tokens-revoked` under the `risc/`
/// base (Google sends it under `oauth/`), is recorded by its whole URI and acts on
/// nothing.
async fn an_undocumented_type_is_recorded_by_its_uri_and_ends_no_grant(backend: Backend) {
    const NOT_GOOGLES: &str = "https://schemas.openid.net/secevent/risc/event-type/tokens-revoked";
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let sub = connect_as(&app, &provider, "lea", "cd").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let set = token(
        &provider,
        "jti-undocumented",
        NOT_GOOGLES,
        json!({ "subject": account(&provider, &sub) }),
    );
    assert_eq!(post(&app, &set).await.status(), StatusCode::ACCEPTED);
    let item = recorded(&app, "jti-undocumented").await;
    assert_eq!(item.data["eventType"], NOT_GOOGLES);
    assert_eq!(item.data["known"], false);
    assert_eq!(app.token("lea").await.status(), StatusCode::OK);
    assert!(revoked_in_feed(&app).await.is_empty());
}

async fn a_bad_signature_issuer_or_audience_is_refused(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let sub = connect_as(&app, &provider, "gil", "a7").await;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let events = json!({ TOKENS_REVOKED: { "subject": account(&provider, &sub) } });
    let mut wrong_aud = claims(&provider, "jti-aud", events.clone());
    wrong_aud["aud"] = json!("another-client");
    let mut wrong_iss = claims(&provider, "jti-iss", events.clone());
    wrong_iss["iss"] = json!("https://attacker.example");
    for (what, token) in [
        (
            "a key the issuer does not publish",
            provider.security_event_token(&claims(&provider, "jti-rogue", events.clone()), true),
        ),
        (
            "another audience",
            provider.security_event_token(&wrong_aud, false),
        ),
        (
            "another issuer",
            provider.security_event_token(&wrong_iss, false),
        ),
        ("not a JWT", "not.a.jwt".to_string()),
    ] {
        let refused = post(&app, &token).await;
        assert_problem(refused, 400, "invalid_security_event").await;
        assert_eq!(
            app.token("gil").await.status(),
            StatusCode::OK,
            "{what}: nothing changed"
        );
    }
    // The refused jtis were not remembered: a good token may still use one.
    let good = provider.security_event_token(&claims(&provider, "jti-aud", events), false);
    assert_eq!(post(&app, &good).await.status(), StatusCode::ACCEPTED);
    assert_problem(app.token("gil").await, 409, "reauthorization_required").await;
}
