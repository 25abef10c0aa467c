//! Providers by configuration: several at once (Google, a Microsoft Entra-shaped one,
//! any OpenID issuer as `oidc`), each living apart from the others, and the Microsoft
//! preset's ways: a multi-tenant issuer, `offline_access`, rotation, no revocation, and
//! its `AADSTS` refusals, each a documented cause.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::fake_github::{self, FakeGitHub};
use crate::support::fake_provider::{IdTokenTamper, RefreshBehaviour};
use crate::support::{
    Backend, FakeProvider, TestApp, assert_died_of, assert_problem, redirect_query,
};

on_every_backend!(
    three_providers_for_one_user_live_apart,
    each_entra_refusal_becomes_its_cause,
    a_github_oauth_app_connects_with_tokens_that_never_expire,
    a_github_app_rotates_its_tokens_and_a_revoked_grant_is_named,
);

const USER: &str = "u-multi";
/// Events are served as soon as the backend allows.
const NO_FEED_DELAY: (&str, &str) = ("AXNT_EVENTS_FEED_DELAY_MS", "0");

/// The settings of a provider `name` (upper case) served by `fake`.
fn provider_env(name: &str, fake: &FakeProvider) -> Vec<(String, String)> {
    vec![
        (format!("AXNT_{name}_ISSUER"), fake.issuer()),
        (format!("AXNT_{name}_CLIENT_ID"), fake.client_id()),
        (format!("AXNT_{name}_CLIENT_SECRET"), fake.client_secret()),
    ]
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A whole flow for `user_id` at `provider`, completed as the application does.
async fn connect_to(app: &TestApp, user_id: &str, provider: &str) {
    let session = app
        .connect_session(json!({ "userId": user_id, "provider": provider }))
        .await;
    let callback = app.follow(&session).await;
    let done = app.complete(user_id, callback).await;
    assert_eq!(
        done.status(),
        StatusCode::OK,
        "{user_id} connects at {provider}"
    );
}

async fn token_at(app: &TestApp, user_id: &str, provider: &str) -> reqwest::Response {
    app.api_get(&format!("/v1/users/{user_id}/tokens/{provider}"))
        .await
}

async fn access_token_at(app: &TestApp, user_id: &str, provider: &str) -> String {
    let response = token_at(app, user_id, provider).await;
    assert_eq!(response.status(), StatusCode::OK, "token at {provider}");
    let body: Value = response.json().await.expect("json");
    body["accessToken"].as_str().expect("token").to_string()
}

/// `user_id`'s connections by provider.
async fn connections(app: &TestApp, user_id: &str) -> Vec<Value> {
    let response = app
        .api_get(&format!("/v1/users/{user_id}/connections"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    body["connections"].as_array().cloned().unwrap_or_default()
}

async fn connection_at(app: &TestApp, user_id: &str, provider: &str) -> Value {
    connections(app, user_id)
        .await
        .into_iter()
        .find(|c| c["provider"] == provider)
        .unwrap_or_else(|| panic!("a connection at {provider}"))
}

/// The feed's events once `done` holds for them (bounded wait: the feed holds the
/// newest back for the backend's write bound).
async fn events(app: &TestApp, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = app.api_get("/v1/events?limit=500").await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.expect("json");
        let items = body["items"].as_array().cloned().unwrap_or_default();
        if done(&items) || tokio::time::Instant::now() > deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn of_kind<'a>(items: &'a [Value], kind: &str, provider: &str) -> Vec<&'a Value> {
    items
        .iter()
        .filter(|e| e["type"] == kind && e["data"]["provider"] == provider)
        .collect()
}

/// One user connected to Google, a Microsoft-shaped provider and an `oidc` one: each
/// is asked as its preset says, holds its own tokens, refreshes, fails and is deleted
/// without touching the others.
async fn three_providers_for_one_user_live_apart(backend: Backend) {
    let google = FakeProvider::start().await;
    let microsoft = FakeProvider::start_microsoft().await;
    let acme = FakeProvider::start().await;
    let mut env = provider_env("MICROSOFT", &microsoft);
    env.extend(provider_env("ACME", &acme));
    env.push(("AXNT_PROVIDERS".into(), "google,microsoft,acme".into()));
    env.push(("AXNT_REFRESH_COOLDOWN_SECS".into(), "0".into()));
    env.push(("AXNT_REFRESH_DEADLINE_SECS".into(), "1".into()));
    env.push((NO_FEED_DELAY.0.into(), NO_FEED_DELAY.1.into()));
    let app = TestApp::on(backend, &google, &pairs(&env)).await;

    // Each preset's authorization request.
    let session = app
        .connect_session(json!({ "userId": "peek", "provider": "microsoft" }))
        .await;
    let (url, _) = app.start(session["url"].as_str().expect("url")).await;
    assert!(
        url.as_str()
            .starts_with(&format!("{}/authorize", microsoft.url("")))
    );
    let query: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    let scopes: Vec<&str> = query["scope"].split(' ').collect();
    assert!(scopes.contains(&"offline_access"), "{scopes:?}");
    assert!(scopes.contains(&"openid"), "{scopes:?}");
    assert!(
        !query.contains_key("access_type"),
        "Google's parameters stay Google's"
    );
    assert_eq!(query["client_id"], microsoft.client_id());
    assert!(
        query["redirect_uri"].ends_with("/oauth/microsoft/callback"),
        "{query:?}"
    );

    // Microsoft's and acme's tokens expire at once: their reads refresh.
    microsoft.set_access_token_ttl(0);
    acme.set_access_token_ttl(0);
    for provider in ["google", "microsoft", "acme"] {
        connect_to(&app, USER, provider).await;
    }
    let listed = connections(&app, USER).await;
    let mut names: Vec<&str> = listed
        .iter()
        .filter_map(|c| c["provider"].as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["acme", "google", "microsoft"]);
    for c in &listed {
        assert_eq!(c["isActive"], true, "{c}");
    }
    // The forecast knows each preset's clocks: Google's six months idle, Microsoft's
    // 90 days, nothing for an issuer it knows nothing of.
    let until = |c: &Value| {
        chrono::DateTime::parse_from_rfc3339(c["predictedExpiry"].as_str().expect("expiry"))
            .expect("rfc3339")
            .signed_duration_since(chrono::Utc::now())
            .num_days()
    };
    let at = |name: &str| {
        listed
            .iter()
            .find(|c| c["provider"] == name)
            .expect(name)
            .clone()
    };
    assert!(
        (179..=180).contains(&until(&at("google"))),
        "{}",
        at("google")
    );
    assert!(
        (89..=90).contains(&until(&at("microsoft"))),
        "{}",
        at("microsoft")
    );
    assert_eq!(at("microsoft")["predictedExpiryReason"], "idle_limit");
    assert!(at("acme")["predictedExpiry"].is_null(), "{}", at("acme"));
    assert!(
        at("acme")["accountGrants"].is_null(),
        "Google's grant counter is Google's"
    );

    // Each read is answered with its own provider's token; only Microsoft's refreshes
    // there, and it rotates.
    let google_refreshes = google.refresh_count();
    let at_google = access_token_at(&app, USER, "google").await;
    assert_eq!(Some(at_google), google.latest_access_token());
    let at_microsoft = access_token_at(&app, USER, "microsoft").await;
    assert_eq!(
        microsoft.refresh_count(),
        1,
        "Microsoft's expired token was refreshed"
    );
    assert_eq!(Some(at_microsoft), microsoft.latest_access_token());
    assert_eq!(
        google.refresh_count(),
        google_refreshes,
        "Google was not asked"
    );
    assert_eq!(acme.refresh_count(), 0, "acme was not asked");
    assert_eq!(microsoft.spent_refresh_tokens_presented(), 0);
    assert_eq!(
        microsoft.issued_refresh_tokens().len(),
        2,
        "Microsoft rotated"
    );

    // acme fails: its read answers 503, the others still answer, and its connection
    // stays active.
    acme.refresh_failure(RefreshBehaviour::Status(503).times(100));
    assert_problem(
        token_at(&app, USER, "acme").await,
        503,
        "provider_unavailable",
    )
    .await;
    access_token_at(&app, USER, "google").await;
    access_token_at(&app, USER, "microsoft").await;
    assert_eq!(connection_at(&app, USER, "acme").await["isActive"], true);
    acme.clear_refresh_failures();
    let at_acme = access_token_at(&app, USER, "acme").await;
    assert_eq!(Some(at_acme), acme.latest_access_token());

    // Deleting the Microsoft connection says that Microsoft cannot revoke, revokes
    // nothing anywhere, and leaves the others.
    let response = app
        .api_delete(&format!("/v1/users/{USER}/connections/microsoft"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let deleted: Value = response.json().await.expect("json");
    assert_eq!(deleted["revocation"], "not_possible", "{deleted}");
    assert!(
        deleted["note"]
            .as_str()
            .expect("note")
            .contains("Microsoft"),
        "{deleted}"
    );
    assert!(microsoft.revoked_tokens().is_empty());
    assert!(google.revoked_tokens().is_empty() && acme.revoked_tokens().is_empty());
    assert_problem(
        token_at(&app, USER, "microsoft").await,
        404,
        "not_connected",
    )
    .await;
    access_token_at(&app, USER, "google").await;

    // Deleting Google's revokes at Google alone.
    let response = app
        .api_delete(&format!("/v1/users/{USER}/connections/google"))
        .await;
    let deleted: Value = response.json().await.expect("json");
    assert_eq!(deleted["revocation"], "revoked", "{deleted}");
    assert!(
        deleted["note"].as_str().expect("note").contains("Google"),
        "{deleted}"
    );
    assert_eq!(google.revoked_tokens().len(), 1);
    assert!(acme.revoked_tokens().is_empty());
    let left = connections(&app, USER).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["provider"], "acme");

    // Events name their provider.
    let items = events(&app, |items| {
        !of_kind(items, "connection.deleted", "google").is_empty()
    })
    .await;
    for provider in ["google", "microsoft", "acme"] {
        assert_eq!(
            of_kind(&items, "connection.created", provider).len(),
            1,
            "created at {provider}"
        );
    }
    assert_eq!(of_kind(&items, "connection.deleted", "microsoft").len(), 1);
    assert_eq!(of_kind(&items, "connection.deleted", "google").len(), 1);
    assert!(of_kind(&items, "connection.deleted", "acme").is_empty());

    // Metrics carry the provider.
    let metrics = app.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("axnt_token_reads_total{")
                && l.contains("provider=\"microsoft\"")),
        "token reads are counted per provider"
    );
}

/// A refusal as Microsoft Entra answers one: the body shape of the error-codes page
/// (<https://learn.microsoft.com/entra/identity-platform/reference-error-codes>, "Here's
/// a sample error response"), with the code and description that page prints for it.
fn entra_refusal(error: &str, code: u64, description: &str) -> String {
    json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description}\r\nTrace ID: 0000aaaa-11bb-cccc-dd33-eeeeee333333\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: 2016-01-09 02:02:12Z"
        ),
        "error_codes": [code],
        "timestamp": "2016-01-09 02:02:12Z",
        "trace_id": "0000aaaa-11bb-cccc-dd33-eeeeee333333",
        "correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd",
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    })
    .to_string()
}

/// The grant-ending `AADSTS` codes, each with the description the error-codes page
/// prints and the cause it documents here (docs/providers.md).
const ENTRA_ENDINGS: [(u64, &str, &str); 8] = [
    (
        700082,
        "ExpiredOrRevokedGrantInactiveToken - The refresh token has expired due to inactivity. The token was issued on {issueDate} and was inactive for {time}.",
        "idle_expired",
    ),
    (
        70008,
        "ExpiredOrRevokedGrant - The refresh token has expired due to inactivity. The token was issued on XXX and was inactive for a certain amount of time.",
        "idle_expired",
    ),
    (
        50173,
        "FreshTokenNeeded - The provided grant has expired due to it being revoked, and a fresh auth token is needed. Either an admin or a user revoked the tokens for this user, causing subsequent token refreshes to fail and require reauthentication. Have the user sign in again.",
        "password_changed",
    ),
    (
        50076,
        "UserStrongAuthClientAuthNRequired - Due to a configuration change made by the admin such as a Conditional Access policy, per-user enforcement, or because you moved to a new location, the user must use multifactor authentication to access the resource. Retry with a new authorize request for the resource.",
        "session_reauth_required",
    ),
    (
        50079,
        "UserStrongAuthEnrollmentRequired - Due to a configuration change made by the admin such as a Conditional Access policy, per-user enforcement, or because the user moved to a new location, the user is required to use multifactor authentication.",
        "session_reauth_required",
    ),
    (
        70043,
        "BadTokenDueToSignInFrequency - The refresh token has expired or is invalid due to sign-in frequency checks by Conditional Access. The token was issued on {issueDate} and the maximum allowed lifetime for this request is {time}.",
        "session_reauth_required",
    ),
    (
        53003,
        "BlockedByConditionalAccess - Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.",
        "admin_policy_enforced",
    ),
    (
        65001,
        "DelegationDoesNotExist - The user or administrator hasn't consented to use the application with ID X. Send an interactive authorization request for this user and resource.",
        "consent_required",
    ),
];

/// Each `AADSTS` refusal Entra answers a refresh with ends the grant with its
/// documented cause; the client-secret ones keep the grant and name the client.
async fn each_entra_refusal_becomes_its_cause(backend: Backend) {
    let microsoft = FakeProvider::start_microsoft().await;
    microsoft.set_access_token_ttl(0);
    let app = TestApp::on(
        backend,
        &microsoft,
        &[
            ("AXNT_REFRESH_COOLDOWN_SECS", "0"),
            ("AXNT_PROVIDER_CIRCUIT_FAILURES", "0"),
        ],
    )
    .await;
    assert_eq!(app.provider, "microsoft");
    for (code, description, cause) in ENTRA_ENDINGS {
        let user = format!("entra-{code}");
        connect_to(&app, &user, "microsoft").await;
        microsoft.refresh_failure([RefreshBehaviour::ErrorBody(
            400,
            entra_refusal("invalid_grant", code, description),
        )]);
        assert_died_of(&app, &user, cause).await;
    }

    // A wrong or expired client secret is the client's fault, not the grant's.
    for (code, description) in [
        (
            7000215,
            "Invalid client secret is provided. Developer error - the app is attempting to sign in without the necessary or correct authentication parameters.",
        ),
        (
            7000222,
            "InvalidClientSecretExpiredKeysProvided - The provided client secret keys are expired. Create new keys for your app, or consider using certificate credentials for added security: https://aka.ms/certCreds",
        ),
    ] {
        let user = format!("entra-{code}");
        connect_to(&app, &user, "microsoft").await;
        microsoft.refresh_failure(vec![
            RefreshBehaviour::ErrorBody(
                401,
                entra_refusal("invalid_client", code, description),
            );
            2
        ]);
        let body = assert_problem(
            token_at(&app, &user, "microsoft").await,
            502,
            "provider_error",
        )
        .await;
        assert_eq!(body["cause"], "client_credentials_invalid", "{code}");
        let listed = connection_at(&app, &user, "microsoft").await;
        assert_eq!(
            listed["isActive"], true,
            "{code}: the user's grant is not at fault"
        );
        microsoft.clear_refresh_failures();
    }
}

/// Entra's multi-tenant issuers: the discovery document's `{tenantid}` template is
/// filled with each ID token's own `tid`; a token from another issuer is refused; a
/// tenant-specific issuer works as any issuer does.
#[tokio::test]
async fn entra_id_tokens_are_held_to_their_tenant() {
    let microsoft = FakeProvider::start_microsoft().await;
    let tenant = microsoft.tenant().expect("tenant");
    for issuer in [
        microsoft.tenant_issuer("organizations"),
        microsoft.tenant_issuer(&tenant),
    ] {
        let app = TestApp::spawn_with(&microsoft, &[("AXNT_MICROSOFT_ISSUER", &issuer)]).await;
        connect_to(&app, "tenant-user", "microsoft").await;
        let row = app.stored_row("tenant-user").await.expect("row");
        assert_eq!(row.user_info.sub, microsoft.profile().sub, "{issuer}");
    }

    let app = TestApp::spawn_with(&microsoft, &[]).await;
    microsoft.tamper_id_token(IdTokenTamper::WrongIssuer);
    let session = app
        .connect_session(json!({
            "userId": "forged", "provider": "microsoft",
            "returnTo": format!("{}/done", crate::support::RETURN_ORIGIN),
        }))
        .await;
    let callback = app.follow(&session).await;
    let query = redirect_query(&callback);
    assert_eq!(
        query.get("error").map(String::as_str),
        Some("id_token_invalid"),
        "{query:?}"
    );
    assert!(app.stored_row("forged").await.is_none());
    microsoft.tamper_id_token(IdTokenTamper::None);
}

/// Providers are settings: a bad list, a bad name, a key of an unlisted provider or an
/// unknown kind stops start-up naming the setting.
#[tokio::test]
async fn provider_settings_are_checked_at_start() {
    let base = [
        ("AXNT_API_KEYS", crate::support::API_KEY),
        ("AXNT_DATA_DIR", "/nonexistent-axnt-test"),
    ];
    let load = |extra: &[(&str, &str)]| {
        let env = base
            .iter()
            .chain(extra)
            .map(|(k, v)| (k.to_string(), v.to_string()));
        axnt_oauth::config::Settings::load(None, env)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert!(load(&[]).is_ok());
    assert!(
        load(&[
            ("AXNT_PROVIDERS", "google,my-idp"),
            ("AXNT_MY_IDP_ISSUER", "https://idp.example.com")
        ])
        .is_ok()
    );
    let refused = |extra: &[(&str, &str)], setting: &str| {
        let e = load(extra).expect_err("refused");
        assert!(e.starts_with(setting), "{e}");
        e
    };
    refused(&[("AXNT_PROVIDERS", "Google")], "AXNT_PROVIDERS");
    refused(&[("AXNT_PROVIDERS", "google,google")], "AXNT_PROVIDERS");
    refused(&[("AXNT_PROVIDERS", " , ")], "AXNT_PROVIDERS");
    let e = refused(
        &[("AXNT_ACME_ISSUER", "https://idp.example.com")],
        "AXNT_ACME_ISSUER",
    );
    assert!(e.contains("AXNT_PROVIDERS does not list"), "{e}");
    refused(
        &[
            ("AXNT_PROVIDERS", "acme"),
            ("AXNT_ACME_ISSUER", "ftp://idp.example.com"),
        ],
        "AXNT_ACME_ISSUER",
    );
    refused(
        &[
            ("AXNT_PROVIDERS", "acme"),
            ("AXNT_ACME_CLIENT_ID", "only-the-id"),
        ],
        "AXNT_ACME_CLIENT_SECRET",
    );
    refused(
        &[
            ("AXNT_PROVIDERS", "acme"),
            ("AXNT_ACME_AUTH_PARAMS", "state=mine"),
        ],
        "AXNT_ACME_AUTH_PARAMS",
    );
    // An unknown kind and a missing issuer are found when the providers are built.
    let microsoft = FakeProvider::start_microsoft().await;
    for (extra, setting) in [
        (
            vec![("AXNT_PROVIDERS", "acme"), ("AXNT_ACME_KIND", "myspace")],
            "AXNT_ACME_KIND",
        ),
        (vec![("AXNT_PROVIDERS", "acme")], "AXNT_ACME_ISSUER"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut env = crate::support::env_for(&microsoft, &extra);
        env.retain(|(k, _)| !k.starts_with("AXNT_MICROSOFT_"));
        env.push(("AXNT_DATA_DIR".into(), dir.path().display().to_string()));
        env.push(("AXNT_LISTEN_ADDR".into(), "127.0.0.1:0".into()));
        env.push(("AXNT_ADMIN_LISTEN_ADDR".into(), "127.0.0.1:0".into()));
        let settings = axnt_oauth::config::Settings::load(None, env).expect("settings load");
        let e = match axnt_oauth::app::App::build(settings).await {
            Ok(_) => panic!("{setting}: started"),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with(setting), "{e}");
    }
}

/// An instance serving the provider `github` at `fake` (its client in the settings).
async fn github_app(backend: Backend, fake: &FakeGitHub) -> TestApp {
    let base = FakeProvider::start().await;
    let mut env = fake.env();
    env.push(("AXNT_PROVIDERS".into(), "github".into()));
    let app = TestApp::on(backend, &base, &pairs(&env)).await;
    assert_eq!(app.provider, "github");
    app
}

/// A GitHub OAuth app: OAuth 2 without OpenID. The account is GitHub's `/user` with its
/// verified primary email, the comma-separated scopes are read as granted, a token
/// that never expires is never refreshed, `expectedEmail` holds to the verified
/// email, and a deletion revokes the grant at GitHub's grant endpoint.
async fn a_github_oauth_app_connects_with_tokens_that_never_expire(backend: Backend) {
    let github = FakeGitHub::start().await;
    let app = github_app(backend, &github).await;
    assert_eq!(app.connect("gh-1").await.status(), StatusCode::OK);

    let asked = github.last_authorization();
    assert_eq!(asked["scope"], "read:user user:email");
    assert_eq!(asked["code_challenge_method"], "S256");
    assert!(!asked.contains_key("nonce"), "no OpenID nonce: {asked:?}");
    let row = app.stored_row("gh-1").await.expect("row");
    assert_eq!(row.user_info.sub, fake_github::USER_ID.to_string());
    assert_eq!(
        row.user_info.email.as_deref(),
        Some(fake_github::PRIMARY_EMAIL)
    );
    assert_eq!(row.user_info.email_verified, Some(true));
    let listed = connection_at(&app, "gh-1", "github").await;
    assert_eq!(
        listed["grantedScopes"],
        json!(["read:user", "user:email"]),
        "{listed}"
    );
    assert_eq!(listed["missingScopes"], json!([]), "{listed}");
    let steps = app.steps("gh-1").await;
    assert!(steps.contains(&"account_fetched".to_string()), "{steps:?}");
    assert!(
        !steps.contains(&"id_token_verified".to_string()),
        "{steps:?}"
    );

    let response = token_at(&app, "gh-1", "github").await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    assert_eq!(
        body["accessToken"].as_str(),
        github.latest_access_token().as_deref()
    );
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expiresAt"].as_str().expect("expiresAt"))
            .expect("rfc3339");
    assert!(
        expires.signed_duration_since(chrono::Utc::now()).num_days() > 9 * 365,
        "a token that does not expire: {body}"
    );
    assert_eq!(github.refresh_count(), 0);

    // `expectedEmail` is met by the verified primary email only.
    let pinned = app
        .connect_session(json!({
            "userId": "gh-2", "provider": "github", "expectedEmail": fake_github::PRIMARY_EMAIL,
            "returnTo": format!("{}/done", crate::support::RETURN_ORIGIN),
        }))
        .await;
    let done = redirect_query(&app.follow(&pinned).await);
    assert_eq!(
        done.get("status").map(String::as_str),
        Some("connected"),
        "{done:?}"
    );
    let public = app
        .connect_session(json!({
            "userId": "gh-3", "provider": "github", "expectedEmail": fake_github::PUBLIC_EMAIL,
            "returnTo": format!("{}/done", crate::support::RETURN_ORIGIN),
        }))
        .await;
    let refused = redirect_query(&app.follow(&public).await);
    assert_eq!(
        refused.get("error").map(String::as_str),
        Some("account_not_allowed"),
        "{refused:?}"
    );

    let response = app.api_delete("/v1/users/gh-1/connections/github").await;
    let deleted: Value = response.json().await.expect("json");
    assert_eq!(deleted["revocation"], "revoked", "{deleted}");
    assert_eq!(deleted["revokedToken"], "access_token", "{deleted}");
    assert!(deleted["note"].as_str().expect("note").contains("GitHub"));
    assert_eq!(github.revoked_grants(), 1);
}

/// A GitHub App with expiring user tokens: the 8-hour token is refreshed, the refresh
/// token rotates, the 6-month refresh-token life is forecast, and GitHub's
/// `bad_refresh_token` (answered with HTTP 200) ends the grant.
async fn a_github_app_rotates_its_tokens_and_a_revoked_grant_is_named(backend: Backend) {
    let github = FakeGitHub::start_expiring().await;
    github.expire_at_once(true);
    let app = github_app(backend, &github).await;
    assert_eq!(app.connect("gh-app").await.status(), StatusCode::OK);

    // Every token comes already due: each read refreshes.
    let token = access_token_at(&app, "gh-app", "github").await;
    assert_eq!(github.refresh_count(), 1, "the due token was refreshed");
    assert_eq!(Some(token), github.latest_access_token());
    assert_eq!(
        github.issued_refresh_tokens(),
        2,
        "the refresh token rotated"
    );
    assert_eq!(
        app.stored_refresh_token("gh-app").await,
        github.latest_refresh_token(),
        "the rotated refresh token is stored"
    );
    let listed = connection_at(&app, "gh-app", "github").await;
    assert_eq!(
        listed["predictedExpiryReason"], "time_limited_access",
        "{listed}"
    );

    github.user_revokes();
    assert_died_of(&app, "gh-app", "unknown_invalid_grant").await;
}
