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
    a_replaced_client_keeps_serving_the_connections_made_with_it,
    a_connection_that_records_no_client_finds_its_own,
);

const USER: &str = "u-multi";
/// An API key limited to one OAuth client.
const CUSTOMER_KEY: &str = "customer-key-0123456789abcdef";
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

/// `USER`'s events of `kind` at `provider`.
fn of_kind<'a>(items: &'a [Value], kind: &str, provider: &str) -> Vec<&'a Value> {
    items
        .iter()
        .filter(|e| {
            e["type"] == kind && e["data"]["provider"] == provider && e["data"]["userId"] == USER
        })
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
    // Entra names Graph permissions by URL and leaves out `offline_access`: the grant
    // holds all it was asked for all the same.
    let session = app
        .connect_session(
            json!({ "userId": "graph", "provider": "microsoft", "scopes": ["Mail.Read"] }),
        )
        .await;
    let callback = app.follow(&session).await;
    assert_eq!(
        app.complete("graph", callback).await.status(),
        StatusCode::OK
    );
    let graph = connection_at(&app, "graph", "microsoft").await;
    assert_eq!(graph["missingScopes"], json!([]), "{graph}");
    assert_eq!(graph["partialGrant"], false, "{graph}");
    assert!(
        graph["grantedScopes"]
            .as_array()
            .expect("granted")
            .contains(&json!("https://graph.microsoft.com/Mail.Read")),
        "{graph}"
    );
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
    let microsoft_issued = microsoft.issued_refresh_tokens().len();
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
        microsoft_issued + 1,
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
    // A name whose settings would be the service's own.
    for name in ["google,provider", "google,google-risc"] {
        let e = refused(&[("AXNT_PROVIDERS", name)], "AXNT_PROVIDERS");
        assert!(e.contains("service's own"), "{e}");
    }
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
    for clients in [
        r#"[{"client_id":"a","client_secret":"top-secret-x","current":true},{"client_id":"b","client_secret":"top-secret-y","current":true}]"#,
        "not a list top-secret-z",
        r#"[{"client_id":"a","client_secret":"top-secret-w","colour":"blue"}]"#,
    ] {
        let e = refused(
            &[
                ("AXNT_PROVIDERS", "acme"),
                ("AXNT_ACME_ISSUER", "https://idp.example.com"),
                ("AXNT_ACME_CLIENTS", clients),
            ],
            "AXNT_ACME_CLIENTS",
        );
        assert!(!e.contains("top-secret"), "a secret is never quoted: {e}");
    }
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

/// A GitHub flow for `user_id` pinned to `email`: the return redirect's query.
async fn pinned_to(
    app: &TestApp,
    user_id: &str,
    email: &str,
) -> std::collections::HashMap<String, String> {
    let session = app
        .connect_session(json!({
            "userId": user_id, "provider": "github", "expectedEmail": email,
            "returnTo": format!("{}/done", crate::support::RETURN_ORIGIN),
        }))
        .await;
    redirect_query(&app.follow(&session).await)
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
    let done = pinned_to(&app, "gh-2", fake_github::PRIMARY_EMAIL).await;
    assert_eq!(
        done.get("status").map(String::as_str),
        Some("connected"),
        "{done:?}"
    );
    let refused = pinned_to(&app, "gh-3", fake_github::PUBLIC_EMAIL).await;
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

/// A GitHub App with expiring user tokens: a due token is refreshed, the refresh
/// token rotates, the 6-month refresh-token life is forecast, GitHub's
/// `bad_refresh_token` (answered with HTTP 200) ends the grant, and a deletion after
/// the access token expired refreshes it first, since GitHub revokes a grant only by a
/// valid access token.
async fn a_github_app_rotates_its_tokens_and_a_revoked_grant_is_named(backend: Backend) {
    let github = FakeGitHub::start_expiring().await;
    github.short_lived(true);
    let app = github_app(backend, &github).await;
    assert_eq!(app.connect("gh-app").await.status(), StatusCode::OK);

    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let token = access_token_at(&app, "gh-app", "github").await;
    assert_eq!(github.refresh_count(), 1, "the expired token was refreshed");
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

    // Deleted after its access token expired: refreshed, then revoked.
    assert_eq!(app.connect("gh-gone").await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let deleted: Value = app
        .api_delete("/v1/users/gh-gone/connections/github")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(deleted["revocation"], "revoked", "{deleted}");
    assert_eq!(github.revoked_grants(), 1);

    // The user revokes the app at GitHub: the next refresh is refused.
    assert_eq!(app.connect("gh-app").await.status(), StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    github.user_revokes();
    assert_died_of(&app, "gh-app", "unknown_invalid_grant").await;
}

/// `GET /v1/connections?client=…`: the user ids listed.
async fn users_of_client(app: &TestApp, client: &str) -> Vec<String> {
    let response = app
        .api_get(&format!("/v1/connections?client={client}&limit=500"))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.expect("json");
    let mut users: Vec<String> = body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            assert_eq!(item["client"], client, "{item}");
            item["userId"].as_str().expect("userId").to_string()
        })
        .collect();
    users.sort();
    users
}

/// A new OAuth client replaces the old one as current: links made from then on use
/// the new one, while connections made with the old one go on refreshing and being
/// revoked with it (the provider binds a refresh token to its client), a session may
/// still name the old one, the list tells who holds grants of which, and once the old
/// client is removed its connections say so.
async fn a_replaced_client_keeps_serving_the_connections_made_with_it(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.rotate_refresh_tokens(true);
    provider.set_access_token_ttl(0);
    let (old_id, old_secret) = (provider.client_id(), provider.client_secret());
    let (new_id, new_secret) = ("client-new.apps.example", "secret-new-0123456789");
    provider.add_client(new_id, new_secret);

    // Before: the old client alone, as every deployment has had it.
    let before = TestApp::on(backend, &provider, &[]).await;
    for user in ["old-1", "old-2"] {
        assert_eq!(before.connect(user).await.status(), StatusCode::OK);
        let row = before.stored_row(user).await.expect("row");
        assert_eq!(
            row.grant.client_id.as_deref(),
            Some(old_id.as_str()),
            "{user}"
        );
    }

    // The new client becomes current; the old one stays listed.
    let clients = json!([{ "client_id": old_id, "client_secret": old_secret }]).to_string();
    let app = before
        .sibling_with(&[
            ("AXNT_GOOGLE_CLIENT_ID", new_id),
            ("AXNT_GOOGLE_CLIENT_SECRET", new_secret),
            ("AXNT_GOOGLE_CLIENTS", &clients),
        ])
        .await;
    let session = app
        .connect_session(json!({ "userId": "new-1", "provider": "google" }))
        .await;
    let (url, _) = app.start(session["url"].as_str().expect("url")).await;
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "client_id" && v == new_id),
        "{url}"
    );
    assert_eq!(app.connect("new-1").await.status(), StatusCode::OK);

    // Each refreshes with its own client (the provider refuses a refresh token
    // presented by another client).
    for user in ["old-1", "new-1"] {
        let response = app.token(user).await;
        assert_eq!(response.status(), StatusCode::OK, "{user} refreshes");
    }
    assert_eq!(provider.spent_refresh_tokens_presented(), 0);
    assert_eq!(users_of_client(&app, &old_id).await, ["old-1", "old-2"]);
    assert_eq!(users_of_client(&app, new_id).await, ["new-1"]);

    // A session may name a client (a customer's own app), only one of the provider's.
    let named = app
        .connect_session(json!({ "userId": "named", "provider": "google", "client": old_id }))
        .await;
    let (url, _) = app.start(named["url"].as_str().expect("url")).await;
    assert!(
        url.query_pairs()
            .any(|(k, v)| k == "client_id" && v == old_id),
        "{url}"
    );
    let unknown = app
        .api_post(
            "/v1/connect-sessions",
            json!({ "userId": "named", "provider": "google", "client": "someone-elses" }),
        )
        .await;
    assert_problem(unknown, 400, "unknown_client").await;

    // Deleting an old connection revokes with the old client.
    let deleted: Value = app
        .api_delete("/v1/users/old-1/connections/google")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(deleted["revocation"], "revoked", "{deleted}");
    assert_eq!(
        provider
            .revocation_clients()
            .last()
            .cloned()
            .flatten()
            .as_deref(),
        Some(old_id.as_str())
    );

    // A key limited to the new client (a customer's app) sees only its connections.
    let keys = json!([
        crate::support::API_KEY,
        { "name": "customer", "key": CUSTOMER_KEY, "clients": [new_id] },
    ])
    .to_string();
    let limited = app.sibling_with(&[("AXNT_API_KEYS", &keys)]).await;
    let as_customer = |path: &str| {
        limited
            .http
            .get(limited.url(path))
            .bearer_auth(CUSTOMER_KEY)
            .send()
    };
    let own = as_customer("/v1/users/new-1/tokens/google")
        .await
        .expect("read");
    assert_eq!(own.status(), StatusCode::OK);
    let other = as_customer("/v1/users/old-2/tokens/google")
        .await
        .expect("read");
    assert_problem(other, 403, "caller_not_allowed").await;
    let listed: Value = as_customer("/v1/connections")
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let users: Vec<&str> = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["userId"].as_str())
        .collect();
    assert_eq!(users, ["new-1"], "{listed}");
    let with_old = limited
        .http
        .post(limited.url("/v1/connect-sessions"))
        .bearer_auth(CUSTOMER_KEY)
        .json(&json!({ "userId": "c-1", "provider": "google", "client": old_id }))
        .send()
        .await
        .expect("session");
    assert_problem(with_old, 403, "caller_not_allowed").await;
    // Nothing is learnt of connections that are not its own, nor of missing ones, and
    // another client's connection is not replaced through it.
    let missing = as_customer("/v1/users/nobody/tokens/google")
        .await
        .expect("read");
    assert_problem(missing, 403, "caller_not_allowed").await;
    let replacing = limited
        .http
        .post(limited.url("/v1/connect-sessions"))
        .bearer_auth(CUSTOMER_KEY)
        .json(&json!({ "userId": "old-2", "provider": "google" }))
        .send()
        .await
        .expect("session");
    assert_problem(replacing, 403, "caller_not_allowed").await;

    // The old client removed from the settings. In aws mode the service secret still
    // holds it as its client: replaced as current by the settings', it keeps serving
    // its connections. In embedded mode it is gone: its connections cannot refresh, and
    // say why; the new client's are untouched.
    let after = app.sibling_with(&[("AXNT_GOOGLE_CLIENTS", "[]")]).await;
    if backend == Backend::Aws {
        assert_eq!(after.token("old-2").await.status(), StatusCode::OK);
    } else {
        let body = assert_problem(after.token("old-2").await, 503, "provider_not_configured").await;
        assert!(
            body["detail"].as_str().expect("detail").contains(&old_id),
            "{body}"
        );
        assert!(
            after.stored_row("old-2").await.expect("row").is_active,
            "the grant is not dead"
        );
    }
    assert_eq!(after.token("new-1").await.status(), StatusCode::OK);
}

/// A connection stored before clients were recorded (no `clientId`) refreshes with
/// the client that made it after a new one became current, and learns it.
async fn a_connection_that_records_no_client_finds_its_own(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.rotate_refresh_tokens(true);
    provider.set_access_token_ttl(0);
    let old_id = provider.client_id();
    let clients =
        json!([{ "client_id": old_id, "client_secret": provider.client_secret() }]).to_string();
    let (new_id, new_secret) = ("client-new.apps.example", "secret-new-0123456789");
    provider.add_client(new_id, new_secret);
    let before = TestApp::on(backend, &provider, &[]).await;
    assert_eq!(before.connect("legacy").await.status(), StatusCode::OK);
    let row = before.stored_row("legacy").await.expect("row");
    let unrecorded = axnt_oauth::store::Connection {
        grant: axnt_oauth::store::GrantLedger {
            client_id: None,
            ..row.grant.clone()
        },
        version: row.version + 1,
        ..row.clone()
    };
    before
        .store
        .put(&unrecorded, Some(row.version), &[])
        .await
        .expect("a row as written before clients were recorded");

    let app = before
        .sibling_with(&[
            ("AXNT_GOOGLE_CLIENT_ID", new_id),
            ("AXNT_GOOGLE_CLIENT_SECRET", new_secret),
            ("AXNT_GOOGLE_CLIENTS", &clients),
        ])
        .await;
    assert_eq!(app.token("legacy").await.status(), StatusCode::OK);
    assert_eq!(provider.spent_refresh_tokens_presented(), 0);
    let learned = app.stored_row("legacy").await.expect("row");
    assert_eq!(learned.grant.client_id.as_deref(), Some(old_id.as_str()));
}

/// aws mode: a provider's client in a Secrets Manager secret of its own
/// (`AXNT_<NAME>_SECRET_ID`, the service secret's shape), re-read when the provider
/// answers `invalid_client` after the client secret was rotated there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_reads_its_client_from_a_secret_of_its_own() {
    let google = FakeProvider::start().await;
    let microsoft = FakeProvider::start_microsoft().await;
    microsoft.set_access_token_ttl(0);
    let fixture = crate::support::aws::fixture(
        &google.client_id(),
        &google.client_secret(),
        crate::support::API_KEY,
    )
    .await;
    let secrets = aws_sdk_secretsmanager::Client::new(&fixture.sdk_config().await);
    let secret_id = crate::support::aws::unique("axnt/microsoft");
    let document = |secret: &str| {
        json!({ "client_id": microsoft.client_id(), "client_secret": secret }).to_string()
    };
    secrets
        .create_secret()
        .name(&secret_id)
        .secret_string(document(&microsoft.client_secret()))
        .send()
        .await
        .expect("moto CreateSecret");
    let mut env = crate::support::env_for_secret(
        &google,
        &[
            ("AXNT_PROVIDERS", "google,microsoft"),
            ("AXNT_MICROSOFT_ISSUER", &microsoft.issuer()),
            ("AXNT_MICROSOFT_SECRET_ID", &secret_id),
            ("AXNT_SECRET_RELOAD_MIN_INTERVAL_SECS", "1"),
        ],
    );
    env.extend(fixture.env.clone());
    let app = TestApp::spawn_in(
        std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
        env,
    )
    .await;
    let ready: Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["checks"]["provider"], "ok", "{ready}");
    connect_to(&app, "sm-user", "microsoft").await;

    // The client secret is rotated at Microsoft and in the secret: the refresh that
    // meets invalid_client re-reads the secret and goes through.
    let rotated = "rotated-microsoft-secret-0123456789";
    microsoft.set_client_secret(rotated);
    secrets
        .put_secret_value()
        .secret_id(&secret_id)
        .secret_string(document(rotated))
        .send()
        .await
        .expect("moto PutSecretValue");
    access_token_at(&app, "sm-user", "microsoft").await;
    assert!(
        !crate::support::captured_logs().contains(rotated),
        "the client secret is never logged"
    );
}

/// An `oauth2` provider by settings alone, at the Google-shaped fake's endpoints
/// without `openid`: no ID token, the account from the user endpoint, a refresh, and
/// RFC 7009 revocation at `_REVOKE_URL`.
#[tokio::test]
async fn an_oauth2_provider_by_settings_alone() {
    let fake = FakeProvider::start().await;
    // Long enough for the user endpoint to take it at connect, short enough to refresh.
    fake.set_access_token_ttl(1);
    let env = [
        ("AXNT_PROVIDERS", "plain".to_string()),
        ("AXNT_PLAIN_KIND", "oauth2".to_string()),
        ("AXNT_PLAIN_AUTHORIZE_URL", fake.url("/authorize")),
        ("AXNT_PLAIN_TOKEN_URL", fake.url("/token")),
        ("AXNT_PLAIN_USERINFO_URL", fake.url("/userinfo")),
        ("AXNT_PLAIN_REVOKE_URL", fake.url("/revoke")),
        ("AXNT_PLAIN_CLIENT_ID", fake.client_id()),
        ("AXNT_PLAIN_CLIENT_SECRET", fake.client_secret()),
        ("AXNT_PLAIN_SCOPES", "email profile".to_string()),
    ];
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let app = TestApp::spawn_with(&fake, &extra).await;
    assert_eq!(app.provider, "plain");
    assert_eq!(app.connect("o2").await.status(), StatusCode::OK);
    let authorized = fake.authorizations();
    let asked = authorized.last().expect("an authorization");
    assert_eq!(asked.scope, "email profile", "no openid: {asked:?}");
    assert!(
        fake.issued_id_tokens().is_empty(),
        "no ID token was asked for"
    );
    let row = app.stored_row("o2").await.expect("row");
    assert_eq!(row.user_info.sub, fake.profile().sub);
    assert!(
        app.steps("o2")
            .await
            .contains(&"account_fetched".to_string())
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refreshed = access_token_at(&app, "o2", "plain").await;
    assert_eq!(Some(refreshed), fake.latest_access_token());
    assert_eq!(fake.refresh_count(), 1);
    let deleted: Value = app
        .api_delete("/v1/users/o2/connections/plain")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(deleted["revocation"], "revoked", "{deleted}");
    assert_eq!(fake.revoked_tokens().len(), 1);
}
