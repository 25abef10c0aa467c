//! Google's Cross-Account Protection (RISC) receiver, `POST /risc/google`: security
//! event tokens signed by a test key the fake provider publishes as the RISC issuer.
//! Each event flips exactly the connections it names, with its cause and lifecycle
//! event; a replayed `jti` does nothing; a bad signature, issuer or audience is refused
//! and changes nothing.

on_every_backend!(
    tokens_revoked_ends_every_grant_of_that_account_and_a_replayed_jti_does_nothing,
    account_disabled_for_hijacking_ends_the_grants,
    token_revoked_finds_the_connection_by_its_refresh_token,
    a_bad_signature_issuer_or_audience_is_refused,
    other_events_are_recorded,
);

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::fake_provider::Profile;
use crate::support::{Backend, FakeProvider, TestApp, assert_problem};

const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";
const TOKEN_REVOKED: &str = "https://schemas.openid.net/secevent/oauth/event-type/token-revoked";

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

/// A SET's claims for `events`, for this provider's client, issued now.
fn claims(provider: &FakeProvider, jti: &str, events: Value) -> Value {
    json!({
        "iss": provider.issuer(),
        "aud": provider.client_id(),
        "iat": chrono::Utc::now().timestamp(),
        "jti": jti,
        "events": events,
    })
}

fn account(provider: &FakeProvider, sub: &str) -> Value {
    json!({"subject_type": "iss-sub", "iss": provider.issuer(), "sub": sub})
}

async fn post(app: &TestApp, token: &str) -> reqwest::Response {
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

async fn feed_kinds(app: &TestApp) -> Vec<(String, String, String)> {
    // Once the feed shows what was just stored.
    tokio::time::sleep(crate::support::FEED_HOLD).await;
    let feed: Value = app
        .api_get("/v1/events?limit=500")
        .await
        .json()
        .await
        .expect("feed");
    feed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["data"]["userId"].as_str().unwrap_or_default().to_string(),
                e["data"]["cause"].as_str().unwrap_or_default().to_string(),
            )
        })
        .filter(|(t, _, _)| t == "connection.revoked_by_user")
        .collect()
}

async fn tokens_revoked_ends_every_grant_of_that_account_and_a_replayed_jti_does_nothing(
    backend: Backend,
) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let shared = connect_as(&app, &provider, "ann", "a1").await;
    connect_as(&app, &provider, "ann-work", "a1").await;
    connect_as(&app, &provider, "bob", "b2").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;

    let set = provider.security_event_token(
        &claims(
            &provider,
            "jti-1",
            json!({ format!("{RISC}tokens-revoked"): { "subject": account(&provider, &shared) } }),
        ),
        false,
    );
    assert_eq!(post(&app, &set).await.status(), StatusCode::ACCEPTED);
    for user in ["ann", "ann-work"] {
        let body = assert_problem(app.token(user).await, 409, "reauthorization_required").await;
        assert_eq!(body["cause"], "revoked_by_user", "{user}");
    }
    assert_eq!(
        app.token("bob").await.status(),
        StatusCode::OK,
        "another account stays"
    );
    let mut told = feed_kinds(&app).await;
    told.sort();
    assert_eq!(
        told,
        [
            (
                "connection.revoked_by_user".to_string(),
                "ann".to_string(),
                "revoked_by_user".to_string()
            ),
            (
                "connection.revoked_by_user".to_string(),
                "ann-work".to_string(),
                "revoked_by_user".to_string()
            ),
        ]
    );
    let logged = app.flow_log("ann").await;
    assert!(
        logged
            .iter()
            .any(|i| i["step"] == "security_event" && i["data"]["cause"] == "revoked_by_user")
    );

    // Ann connects again; the same jti again (even issued later) does nothing.
    connect_as(&app, &provider, "ann", "a1").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let replay = provider.security_event_token(
        &claims(
            &provider,
            "jti-1",
            json!({ format!("{RISC}tokens-revoked"): { "subject": account(&provider, &shared) } }),
        ),
        false,
    );
    assert_eq!(post(&app, &replay).await.status(), StatusCode::ACCEPTED);
    assert_eq!(
        app.token("ann").await.status(),
        StatusCode::OK,
        "a replayed jti does nothing"
    );
    assert_eq!(feed_kinds(&app).await.len(), 2);
}

async fn account_disabled_for_hijacking_ends_the_grants(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let sub = connect_as(&app, &provider, "cat", "c3").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    // Another reason (bulk-account) is recorded; the grant stays.
    let bulk = provider.security_event_token(
        &claims(&provider, "jti-bulk", json!({ format!("{RISC}account-disabled"): { "subject": account(&provider, &sub), "reason": "bulk-account" } })),
        false,
    );
    assert_eq!(post(&app, &bulk).await.status(), StatusCode::ACCEPTED);
    assert_eq!(app.token("cat").await.status(), StatusCode::OK);
    let hijacked = provider.security_event_token(
        &claims(&provider, "jti-hijack", json!({ format!("{RISC}account-disabled"): { "subject": account(&provider, &sub), "reason": "hijacking" } })),
        false,
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
        feed_kinds(&app).await,
        [(
            "connection.revoked_by_user".to_string(),
            "cat".to_string(),
            "account_disabled".to_string()
        )]
    );
}

/// Google's `hash_base64_sha512_sha512` identifier, computed here from the definition.
fn double_sha512(token: &str) -> String {
    use aws_lc_rs::digest::{SHA512, digest};
    STANDARD.encode(digest(&SHA512, digest(&SHA512, token.as_bytes()).as_ref()))
}

async fn token_revoked_finds_the_connection_by_its_refresh_token(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    connect_as(&app, &provider, "dan", "d4").await;
    let dans = provider.latest_refresh_token().expect("issued");
    connect_as(&app, &provider, "eva", "e5").await;
    let evas = provider.latest_refresh_token().expect("issued");
    connect_as(&app, &provider, "fin", "f6").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
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

    let by_hash = provider.security_event_token(
        &claims(
            &provider,
            "jti-hash",
            json!({ TOKEN_REVOKED: { "subject": {
            "subject_type": "oauth_token", "token_type": "refresh_token",
            "token_identifier_alg": "hash_base64_sha512_sha512", "token": double_sha512(&dans),
        } } }),
        ),
        false,
    );
    assert_eq!(post(&app, &by_hash).await.status(), StatusCode::ACCEPTED);
    let by_prefix = provider.security_event_token(
        &claims(
            &provider,
            "jti-prefix",
            json!({ TOKEN_REVOKED: { "subject": {
            "subject_type": "oauth_token", "token_type": "refresh_token",
            "token_identifier_alg": "prefix", "token": &evas[..16],
        } } }),
        ),
        false,
    );
    assert_eq!(post(&app, &by_prefix).await.status(), StatusCode::ACCEPTED);
    for user in ["dan", "eva"] {
        let body = assert_problem(app.token(user).await, 409, "reauthorization_required").await;
        assert_eq!(body["cause"], "revoked_by_user", "{user}");
    }
    assert_eq!(app.token("fin").await.status(), StatusCode::OK);
}

async fn a_bad_signature_issuer_or_audience_is_refused(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let sub = connect_as(&app, &provider, "gil", "a7").await;
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let events =
        json!({ format!("{RISC}tokens-revoked"): { "subject": account(&provider, &sub) } });
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

async fn other_events_are_recorded(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = app(backend, &provider).await;
    let sub = connect_as(&app, &provider, "hal", "b8").await;
    let set = provider.security_event_token(
        &claims(
            &provider,
            "jti-other",
            json!({
                format!("{RISC}verification"): { "state": "setup-check" },
                format!("{RISC}sessions-revoked"): { "subject": account(&provider, &sub) },
            }),
        ),
        false,
    );
    assert_eq!(post(&app, &set).await.status(), StatusCode::ACCEPTED);
    assert_eq!(
        app.token("hal").await.status(),
        StatusCode::OK,
        "sessions-revoked ends no grant"
    );
    assert!(feed_kinds(&app).await.is_empty());
}
