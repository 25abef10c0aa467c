//! aws mode's shared plumbing, a leaf: one SDK configuration for DynamoDB, KMS and
//! Secrets Manager, the error sorting every backend uses ([`error`]), the table
//! set-up behind `axnt-oauth setup` ([`setup`]), and STS as IAM callers use it
//! (`sts`). It imports nothing of the service but
//! its settings; the backends that use it (`store::dynamodb`, `crypto::kms`,
//! `secrets::secrets_manager`) are assembled in `app::backends`.
//!
//! Only this module and those backend modules import an AWS crate (`callers::iam`
//! reads STS's answers through `sts`).

pub(crate) mod error;
pub mod setup;
pub(crate) mod sts;

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;
use secrecy::{ExposeSecret, SecretString};

/// What aws mode needs from the settings. `config` fills it (`From<&Settings>`), so
/// this module stays a leaf that imports nothing of the service.
#[derive(Clone)]
pub struct AwsSettings {
    pub(crate) connect_timeout: Duration,
    /// One AWS call, the SDK's retries included.
    pub(crate) operation_timeout: Duration,
    pub(crate) max_attempts: u32,
    /// SDK variables from an explicit environment (see [`SdkEnv`]).
    pub(crate) sdk_env: SdkEnv,
    pub(crate) tokens_table: String,
    pub(crate) logs_table: String,
    pub(crate) events_table: String,
    pub(crate) kms_key_id: String,
    pub(crate) secret_id: String,
}

/// `AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN` as found in an environment given to the settings loader
/// explicitly (an embedding program, tests). Empty when the settings come from the
/// process environment: the SDK then reads it itself, through its standard chain.
/// `Debug` names which are set, never their values.
#[derive(Clone, Default)]
pub(crate) struct SdkEnv {
    pub(crate) endpoint_url: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) access_key_id: Option<String>,
    pub(crate) secret_access_key: Option<SecretString>,
    pub(crate) session_token: Option<SecretString>,
}

impl std::fmt::Debug for SdkEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdkEnv")
            .field("endpoint_url", &self.endpoint_url)
            .field("region", &self.region)
            .field("credentials", &self.access_key_id.is_some())
            .finish()
    }
}

impl SdkEnv {
    pub(crate) const NAMES: [&str; 5] = [
        "AWS_ENDPOINT_URL",
        "AWS_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
    ];

    pub(crate) fn set(&mut self, name: &str, value: String) {
        match name {
            "AWS_ENDPOINT_URL" => self.endpoint_url = Some(value),
            "AWS_REGION" => self.region = Some(value),
            "AWS_ACCESS_KEY_ID" => self.access_key_id = Some(value),
            "AWS_SECRET_ACCESS_KEY" => self.secret_access_key = Some(SecretString::from(value)),
            "AWS_SESSION_TOKEN" => self.session_token = Some(SecretString::from(value)),
            _ => {}
        }
    }
}

/// The SDK configuration: the standard chain (`AWS_REGION`, `AWS_ENDPOINT_URL`,
/// credentials from the environment, profile, web identity, ECS or IMDS), with our
/// timeouts and the standard retry mode (exponential backoff with jitter, a retry
/// quota so an outage is not multiplied by retries).
///
/// Values in [`AwsSettings::sdk_env`] (settings loaded from an explicit environment)
/// are given to the loader and win over the process environment.
pub async fn sdk_config(settings: impl Into<AwsSettings>) -> SdkConfig {
    let settings: AwsSettings = settings.into();
    let attempts = settings.max_attempts.max(1);
    let operation = settings.operation_timeout;
    let attempt = (operation / attempts)
        .max(Duration::from_secs(1))
        .min(operation);
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .operation_attempt_timeout(attempt)
                .operation_timeout(operation)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(attempts));
    let env = &settings.sdk_env;
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
pub(crate) fn region_name(config: &SdkConfig) -> String {
    config.region().map_or_else(
        || "(no region set: AWS_REGION)".to_string(),
        |r| r.to_string(),
    )
}

/// Counts the SDK's own retries: [`AWS_RETRIES_TOTAL`](crate::series::AWS_RETRIES_TOTAL)`{service, operation}`, one per
/// attempt after the first (a throttled or failed attempt the SDK tried again). Add it
/// to each client's config with `.interceptor(CountRetries::new("dynamodb"))`.
#[derive(Debug)]
pub(crate) struct CountRetries {
    service: &'static str,
}

impl CountRetries {
    pub(crate) fn new(service: &'static str) -> Self {
        Self { service }
    }
}

impl aws_sdk_dynamodb::config::Intercept for CountRetries {
    fn name(&self) -> &'static str {
        "CountRetries"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_dynamodb::config::RuntimeComponents,
        cfg: &mut aws_sdk_dynamodb::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        use aws_smithy_runtime_api::client::orchestrator::Metadata;
        use aws_smithy_runtime_api::client::retries::RequestAttempts;
        if cfg
            .load::<RequestAttempts>()
            .is_some_and(|a| a.attempts() > 1)
        {
            // The SDK's operation name (`GetItem`): a fixed set, never a value.
            let operation = cfg
                .load::<Metadata>()
                .map_or_else(|| "unknown".to_string(), |m| m.name().to_string());
            metrics::counter!(crate::series::AWS_RETRIES_TOTAL, "service" => self.service, "operation" => operation)
                .increment(1);
        }
        Ok(())
    }
}
