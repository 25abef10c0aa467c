//! aws mode's Secrets Manager against moto: rotation picked up by a reload, both JSON
//! shapes, and malformed or missing secrets named at start-up.

use std::sync::Arc;

use axnt_oauth::app::{App, Backends, StartupError};
use axnt_oauth::callers::ApiKey;
use axnt_oauth::secrets::secrets_manager::SecretsManagerSource;
use axnt_oauth::secrets::{SecretError, SecretsCache};
use secrecy::ExposeSecret;

use crate::support::aws;
use crate::support::aws::{API_KEY, AwsFixture, default_fixture};

async fn put_secret(f: &AwsFixture, value: &str) {
    aws_sdk_secretsmanager::Client::new(&f.sdk_config().await)
        .put_secret_value()
        .secret_id(&f.secret_id)
        .secret_string(value)
        .send()
        .await
        .expect("moto PutSecretValue");
}

fn api_key(text: &str) -> ApiKey {
    ApiKey::parse(text).expect("a well-formed key")
}

#[tokio::test]
async fn a_rotated_secret_is_picked_up_by_reload() {
    let f = default_fixture().await;
    let source = Arc::new(SecretsManagerSource::new(
        &f.sdk_config().await,
        &f.secret_id,
    ));
    let cache = SecretsCache::load(source, Default::default(), Default::default())
        .await
        .expect("secret loads");
    let current = cache.current();
    assert_eq!(
        current.client.as_ref().map(|c| c.client_id.as_str()),
        Some("client-1")
    );
    assert!(
        current.state_key.is_some(),
        "state_key read from the secret"
    );
    assert!(
        cache.accepts_api_key(&api_key(API_KEY)),
        "api_keys read from the secret"
    );

    put_secret(
        &f,
        &aws::secret_json(
            "client-2",
            "secret-2",
            &f.state_key,
            "rotated-api-key-0123456789",
        ),
    )
    .await;
    cache.reload().await.expect("reload");
    let rotated = cache.current();
    let client = rotated.client.as_ref().expect("client");
    assert_eq!(client.client_id, "client-2");
    assert_eq!(client.client_secret.expose_secret(), "secret-2");
    assert!(cache.accepts_api_key(&api_key("rotated-api-key-0123456789")));
    assert!(
        !cache.accepts_api_key(&api_key(API_KEY)),
        "the old key is gone"
    );
}

#[tokio::test]
async fn the_google_console_json_shape_is_accepted() {
    let f = default_fixture().await;
    put_secret(
        &f,
        r#"{"web":{"client_id":"console-id.apps.googleusercontent.com","project_id":"p","auth_uri":"https://accounts.google.com/o/oauth2/auth","token_uri":"https://oauth2.googleapis.com/token","client_secret":"console-secret","redirect_uris":["http://127.0.0.1:8080/oauth/google/callback"]}}"#,
    )
    .await;
    let source = SecretsManagerSource::new(&f.sdk_config().await, &f.secret_id);
    let secrets = axnt_oauth::secrets::SecretSource::load(&source)
        .await
        .expect("console shape parses");
    let client = secrets.client.expect("client");
    assert_eq!(client.client_id, "console-id.apps.googleusercontent.com");
    assert_eq!(client.client_secret.expose_secret(), "console-secret");
}

#[tokio::test]
async fn a_malformed_secret_stops_start_up_naming_the_field() {
    let f = default_fixture().await;
    put_secret(
        &f,
        r#"{"client_id":"id","client_secret":"planted-secret-value","state_key":"too-short"}"#,
    )
    .await;
    let settings = f.settings();
    let backends = Backends::open(&settings).await.expect("backends open");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let failed = App::with_listener(settings, backends, listener).await;
    let Err(e) = failed else {
        panic!("a malformed secret must stop start-up")
    };
    let text = e.to_string();
    assert!(
        matches!(e, StartupError::Secret(SecretError::Malformed { .. })),
        "{text}"
    );
    assert!(
        text.contains("state_key") && text.contains(&f.secret_id),
        "{text}"
    );
    assert!(!text.contains("planted-secret-value"), "{text}");

    put_secret(&f, r#"{"client_id":"id"}"#).await;
    let source = SecretsManagerSource::new(&f.sdk_config().await, &f.secret_id);
    let e = axnt_oauth::secrets::SecretSource::load(&source)
        .await
        .expect_err("no client_secret");
    assert!(e.to_string().contains("client_secret"), "{e}");
}

#[tokio::test]
async fn a_missing_secret_is_named() {
    let f = default_fixture().await;
    let source = SecretsManagerSource::new(&f.sdk_config().await, "axnt-test/no-such-secret");
    let e = axnt_oauth::secrets::SecretSource::load(&source)
        .await
        .expect_err("missing");
    assert!(matches!(e, SecretError::NotFound(_)), "{e}");
    assert!(e.to_string().contains("axnt-test/no-such-secret"), "{e}");
}
