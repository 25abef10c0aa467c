//! What must stay secret, and the credentials it rests on: no planted secret reaches the
//! logs or a flow-log item, a malformed token answer is not quoted, a ciphertext opens
//! only in its own row, a client secret rotated in Secrets Manager is used without a
//! restart, and the run-time IAM policy is all the service needs.

on_every_backend!(
    a_ciphertext_copied_to_another_row_does_not_decrypt,
    no_planted_secret_reaches_logs_or_flow_log_items,
    a_malformed_token_response_is_not_quoted,
);

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support;
use crate::support::fake_provider::RefreshBehaviour;
use crate::support::{API_KEY, Backend, FakeProvider, TestApp, assert_problem};

async fn a_ciphertext_copied_to_another_row_does_not_decrypt(backend: Backend) {
    let provider = FakeProvider::start().await;
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("owner").await.status().is_success());
    assert!(app.connect("thief").await.status().is_success());
    let owner = app.stored_row("owner").await.expect("row");
    let thief = app.stored_row("thief").await.expect("row");
    let forged = axnt_oauth::store::Connection {
        encrypted_tokens: owner.encrypted_tokens.clone(),
        version: thief.version + 1,
        ..thief.clone()
    };
    app.store
        .put(&forged, Some(thief.version), &[])
        .await
        .expect("write forged row");
    assert_problem(app.token("thief").await, 500, "stored_tokens_unreadable").await;
    assert_eq!(
        app.token("owner").await.status(),
        StatusCode::OK,
        "the original row still opens"
    );
}

async fn no_planted_secret_reaches_logs_or_flow_log_items(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("leo").await.status().is_success());
    assert_eq!(app.token("leo").await.status(), StatusCode::OK);
    provider.refresh_failure([RefreshBehaviour::InvalidGrant]);
    let _ = app.token("leo").await;
    assert!(app.connect("leo").await.status().is_success());
    let _ = app.api_delete("/v1/users/leo/connections/google").await;
    let _ = app
        .http
        .get(app.url("/v1/users/leo/tokens/google"))
        .bearer_auth("planted-wrong-api-key-777")
        .send()
        .await;

    let mut planted = provider.secrets();
    planted.push(API_KEY.to_string());
    planted.push("planted-wrong-api-key-777".to_string());
    let verifiers: Vec<String> = provider
        .token_requests()
        .iter()
        .filter_map(|r| r.params.get("code_verifier").cloned())
        .collect();
    assert!(!verifiers.is_empty());
    planted.extend(verifiers);
    assert!(planted.len() > 8);

    let logs = app_logs_after_flush().await;
    assert!(logs.contains("request"), "logs were captured");
    let items = serde_json::to_string(&app.flow_log("leo").await).expect("json");
    for secret in &planted {
        assert!(!logs.contains(secret.as_str()), "a secret reached the logs");
        assert!(
            !items.contains(secret.as_str()),
            "a secret reached a flow-log item"
        );
    }
}

/// A malformed token response is reported by where it is malformed, never by quoting
/// the value (which, in a token response, may be a token).
async fn a_malformed_token_response_is_not_quoted(backend: Backend) {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(backend, &provider, &[]).await;
    assert!(app.connect("quoted").await.status().is_success());
    let planted = "planted-token-in-a-bad-field-4711";
    provider.refresh_failure([RefreshBehaviour::RawBody(format!(
        r#"{{"access_token":"at-x","token_type":"Bearer","expires_in":"{planted}"}}"#
    ))]);
    assert_problem(app.token("quoted").await, 502, "provider_error").await;
    let items = serde_json::to_string(&app.flow_log("quoted").await).expect("json");
    assert!(items.contains("refresh_failed"));
    assert!(!items.contains(planted), "flow log quotes no value");
    assert!(
        !app_logs_after_flush().await.contains(planted),
        "logs quote no value"
    );
}

async fn app_logs_after_flush() -> String {
    tokio::time::sleep(Duration::from_millis(50)).await;
    support::captured_logs()
}

/// With moto enforcing IAM, a service user holding only the actions of
/// `deploy/iam-policy.json` runs the full flow, the token API (with a refresh),
/// flow-log reads, readiness and a delete: no access denied anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_full_flow_runs_under_the_least_privilege_policy() {
    use support::aws;
    let moto = aws::OwnMoto::start(&[(
        "INITIAL_NO_AUTH_ACTION_COUNT",
        &(2 * aws::IAM_CALLS_PER_USER).to_string(),
    )])
    .await;
    let admin = aws::iam_user(
        &moto.endpoint,
        "axnt-admin",
        &json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
    )
    .await;
    let service = aws::iam_user(
        &moto.endpoint,
        "axnt-service",
        &aws::runtime_policy_for_moto(&[]),
    )
    .await;
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let fixture = aws::provision(
        &moto.endpoint,
        &admin,
        &provider.client_id(),
        &provider.client_secret(),
        API_KEY,
        None,
    )
    .await;
    let mut env = support::env_for_secret(&provider, &[]);
    env.extend(
        fixture
            .env
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("AWS_ACCESS_KEY_ID") && !k.starts_with("AWS_SECRET_ACCESS_KEY")
            })
            .cloned(),
    );
    env.push(("AWS_ACCESS_KEY_ID".into(), service.access_key_id.clone()));
    env.push((
        "AWS_SECRET_ACCESS_KEY".into(),
        service.secret_access_key.clone(),
    ));
    let app = TestApp::spawn_in(
        std::sync::Arc::new(tempfile::tempdir().expect("tempdir")),
        env,
    )
    .await;

    let response = app.connect("lp-user").await;
    assert_eq!(response.status(), StatusCode::OK, "callback stored the row");
    assert_eq!(
        app.token("lp-user").await.status(),
        StatusCode::OK,
        "token read with a refresh"
    );
    assert_eq!(provider.refresh_count(), 1);
    assert_eq!(app.steps("lp-user").await.len(), 11, "flow log read back");
    let ready = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "readiness with the run-time actions only"
    );
    let listed = app.api_get("/v1/users/lp-user/connections").await;
    assert_eq!(listed.status(), StatusCode::OK);
    assert_eq!(
        app.api_delete("/v1/users/lp-user/connections/google")
            .await
            .status(),
        StatusCode::OK
    );
    assert!(
        !support::captured_logs().contains("AccessDenied"),
        "no access denied was logged"
    );
}

/// The client secret is rotated in Secrets Manager and at the provider: the first
/// refresh with the old one earns `invalid_client`, the service re-reads the secret and
/// retries with the new one — no restart, no error for the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_client_secret_is_used_without_restart() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(Backend::Aws, &provider, &[]).await;
    assert!(app.connect("rotating").await.status().is_success());

    let new_secret = format!("rotated-{}", uuid::Uuid::new_v4().simple());
    publish_client_secret(&app, &provider, &new_secret).await;
    provider.set_client_secret(new_secret.clone());

    let response = app.token("rotating").await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "refreshed with the rotated secret"
    );
    let auths: Vec<_> = provider
        .token_requests()
        .iter()
        .filter(|r| r.grant_type == "refresh_token")
        .map(|r| r.status)
        .collect();
    assert_eq!(auths, vec![401, 200], "one invalid_client, then success");
    assert!(
        !support::captured_logs().contains(&new_secret),
        "the new secret is never logged"
    );
}

/// Puts a new version of the app's Secrets Manager secret with `client_secret`.
async fn publish_client_secret(app: &TestApp, provider: &FakeProvider, client_secret: &str) {
    let sdk = axnt_oauth::aws::sdk_config(&app.settings).await;
    let mut state_key = [0u8; 32];
    axnt_oauth::crypto::fill_random(&mut state_key);
    aws_sdk_secretsmanager::Client::new(&sdk)
        .put_secret_value()
        .secret_id(&app.settings.aws.secret_id)
        .secret_string(support::aws::secret_json(
            &provider.client_id(),
            client_secret,
            &axnt_oauth::crypto::b64(&state_key),
            API_KEY,
        ))
        .send()
        .await
        .expect("rotate the secret");
}

/// The provider rejects the client on every refresh (its secret was changed there, not
/// in Secrets Manager). The first `invalid_client` re-reads the secret; later ones within
/// AXNT_SECRET_RELOAD_MIN_INTERVAL_SECS do not — a fix published in Secrets Manager
/// meanwhile is picked up only once the interval has passed, and then used at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_rereads_the_secret_at_most_once_per_interval() {
    let provider = FakeProvider::start().await;
    provider.set_access_token_ttl(0);
    let app = TestApp::on(
        Backend::Aws,
        &provider,
        &[("AXNT_SECRET_RELOAD_MIN_INTERVAL_SECS", "3")],
    )
    .await;
    assert!(app.connect("rejected").await.status().is_success());
    let new_secret = format!("rotated-{}", uuid::Uuid::new_v4().simple());
    provider.set_client_secret(new_secret.clone());

    let started = std::time::Instant::now();
    // Re-reads the secret: still the old one, so no retry.
    assert_problem(app.token("rejected").await, 502, "provider_error").await;
    let reread_by = std::time::Instant::now();
    publish_client_secret(&app, &provider, &new_secret).await;
    for _ in 0..3 {
        assert_problem(app.token("rejected").await, 502, "provider_error").await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the reads above fell within the interval"
    );

    tokio::time::sleep_until((reread_by + Duration::from_millis(3200)).into()).await;
    assert_eq!(
        app.token("rejected").await.status(),
        StatusCode::OK,
        "after the interval the secret is re-read and the refresh retried with it"
    );
    let statuses: Vec<_> = provider
        .token_requests()
        .iter()
        .filter(|r| r.grant_type == "refresh_token")
        .map(|r| r.status)
        .collect();
    assert_eq!(
        statuses,
        vec![401, 401, 401, 401, 401, 200],
        "one try each within the interval; after it, a re-read and one retry"
    );
}
