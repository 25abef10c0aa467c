//! aws mode's shared plumbing: one SDK configuration for DynamoDB, KMS and Secrets
//! Manager, the error sorting every backend uses ([`error`]), the table set-up behind
//! `axnt-oauth setup` ([`setup`]), and the assembly of the aws [`Backends`].
//!
//! Only this module and the backend modules it assembles (`store::dynamodb`,
//! `crypto::kms`, `secrets::secrets_manager`) import an AWS crate.

pub mod error;
pub mod setup;

use std::sync::Arc;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use secrecy::ExposeSecret;

use crate::app::{Backends, StartupError};
use crate::config::Settings;
use crate::crypto::KeyProvider;
use crate::crypto::cache::{CacheLimits, CachingKeyProvider};
use crate::crypto::kms::KmsKeyProvider;
use crate::secrets::secrets_manager::SecretsManagerSource;
use crate::store::buffered::BufferedFlowLog;
use crate::store::dynamodb::DynamoStore;

/// The SDK configuration: the standard chain (`AWS_REGION`, `AWS_ENDPOINT_URL`,
/// credentials from the environment, profile, web identity, ECS or IMDS), with our
/// timeouts and the standard retry mode (exponential backoff with jitter, a retry
/// quota so an outage is not multiplied by retries).
///
/// Values in [`Settings::aws_sdk_env`] (settings loaded from an explicit environment,
/// as tests do) are given to the loader and win over the process environment.
pub async fn sdk_config(settings: &Settings) -> SdkConfig {
    let attempts = settings.aws_max_attempts.max(1);
    let operation = Duration::from_millis(settings.aws_operation_timeout_ms);
    let attempt = (operation / attempts)
        .max(Duration::from_secs(1))
        .min(operation);
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_millis(settings.aws_connect_timeout_ms))
                .operation_attempt_timeout(attempt)
                .operation_timeout(operation)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(attempts));
    let env = &settings.aws_sdk_env;
    if let Some(url) = &env.endpoint_url {
        loader = loader.endpoint_url(url.clone());
    }
    if let Some(region) = &env.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let (Some(id), Some(secret)) = (&env.access_key_id, &env.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(
            id.clone(),
            secret.expose_secret().to_string(),
            env.session_token
                .as_ref()
                .map(|t| t.expose_secret().to_string()),
            None,
            "axnt-oauth settings",
        ));
    }
    loader.load().await
}

/// The region the SDK resolved, for messages ("table not found in region …").
pub fn region_name(config: &SdkConfig) -> String {
    config.region().map_or_else(
        || "(no region set: AWS_REGION)".to_string(),
        |r| r.to_string(),
    )
}

/// KMS without the data-key cache, for `check`'s round trip (which must reach KMS).
pub async fn uncached_key_provider(settings: &Settings) -> Arc<dyn KeyProvider> {
    let config = sdk_config(settings).await;
    Arc::new(KmsKeyProvider::new(&config, &settings.kms_key_id))
}

/// aws mode's backends: DynamoDB tables (flow-log writes buffered off the request
/// path), KMS data keys behind a bounded cache, and the Secrets Manager secret.
///
/// Nothing is called here: a wrong table, key or secret shows in `/readyz`, `check`,
/// and (for the secret, read once at start-up) as a start-up error naming it.
pub async fn open_backends(settings: &Settings) -> Result<Backends, StartupError> {
    let config = sdk_config(settings).await;
    if config.region().is_none() {
        return Err(StartupError::Aws(
            "no AWS region: set AWS_REGION (or a profile's region)".into(),
        ));
    }
    let store = Arc::new(DynamoStore::new(
        &config,
        &settings.dynamodb_oauth_table,
        &settings.dynamodb_oauth_logs_table,
    ));
    let flow_log = BufferedFlowLog::spawn(
        store.clone(),
        settings.flow_log_buffer,
        settings.flow_log_write_concurrency,
    );
    let kms = Arc::new(KmsKeyProvider::new(&config, &settings.kms_key_id));
    let keys = CachingKeyProvider::new(
        kms,
        CacheLimits {
            max_uses: settings.data_key_max_uses,
            max_age: Duration::from_secs(settings.data_key_max_age_secs),
            decrypted_entries: settings.data_key_cache_entries,
            decrypted_ttl: Duration::from_secs(settings.data_key_cache_ttl_secs),
        },
    );
    let secrets = SecretsManagerSource::new(&config, &settings.google_secret_id);
    let state_key = settings
        .state_key
        .as_ref()
        .map(|k| crate::crypto::SecretKey::from_base64(k.expose_secret()))
        .transpose()?;
    Ok(Backends {
        tokens: store,
        flow_log: Arc::new(flow_log),
        keys: Arc::new(keys),
        secrets: Arc::new(secrets),
        state_key,
        api_keys: settings.api_keys.clone(),
        created: Vec::new(),
    })
}
