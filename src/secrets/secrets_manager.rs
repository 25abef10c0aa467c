//! aws mode's secret source: one Secrets Manager secret (`AXNT_GOOGLE_SECRET_ID`,
//! default `axnt/google-oauth`) read with `GetSecretValue` and parsed by
//! [`parse_secret_document`]. [`super::SecretsCache`] re-reads it, so a rotation
//! (`PutSecretValue`) is picked up without a restart.

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_secretsmanager::Client;

use super::{SecretError, SecretSource, ServiceSecrets, parse_secret_document};
use crate::aws::error::{FailureKind, observe};

pub struct SecretsManagerSource {
    client: Client,
    secret_id: String,
    region: String,
}

impl SecretsManagerSource {
    pub fn new(config: &SdkConfig, secret_id: &str) -> Self {
        Self {
            client: Client::from_conf(
                aws_sdk_secretsmanager::config::Builder::from(config)
                    .interceptor(crate::aws::CountRetries::new("secretsmanager"))
                    .build(),
            ),
            secret_id: secret_id.to_string(),
            region: crate::aws::region_name(config),
        }
    }
}

#[async_trait]
impl SecretSource for SecretsManagerSource {
    #[tracing::instrument(skip_all, fields(secret_id = %self.secret_id))]
    async fn load(&self) -> Result<ServiceSecrets, SecretError> {
        let id = &self.secret_id;
        let out = observe(
            "secretsmanager",
            "GetSecretValue",
            self.client.get_secret_value().secret_id(id).send().await,
        )
        .map_err(|f| match f.kind {
            FailureKind::NotFound => {
                SecretError::NotFound(format!("{id} (region {})", self.region))
            }
            FailureKind::AccessDenied => SecretError::AccessDenied {
                secret: id.clone(),
                reason: format!(
                    "AccessDenied: the IAM policy lacks secretsmanager:GetSecretValue on secret:{id} ({})",
                    f.describe()
                ),
            },
            FailureKind::Throttled | FailureKind::Timeout | FailureKind::Unavailable => {
                SecretError::Unavailable(format!(
                    "secretsmanager:GetSecretValue on {id}: {}",
                    f.describe()
                ))
            }
            FailureKind::Rejected | FailureKind::ConditionFailed => SecretError::Rejected(
                format!("secretsmanager:GetSecretValue on {id}: {}", f.describe()),
            ),
        })?;
        // The value is only ever handed to the parser, whose errors name fields,
        // never values.
        let text = match (out.secret_string(), out.secret_binary()) {
            (Some(text), _) => text.to_string(),
            (None, Some(binary)) => {
                String::from_utf8(binary.as_ref().to_vec()).map_err(|_| SecretError::Malformed {
                    secret: id.clone(),
                    reason: "SecretBinary is not UTF-8 JSON; store the JSON as SecretString".into(),
                })?
            }
            (None, None) => {
                return Err(SecretError::Malformed {
                    secret: id.clone(),
                    reason: "the secret has no SecretString".into(),
                });
            }
        };
        let text = zeroize::Zeroizing::new(text);
        parse_secret_document(id, &text)
    }

    fn name(&self) -> String {
        format!("Secrets Manager secret {}", self.secret_id)
    }
}
