//! aws mode's key provider: data keys from AWS KMS (`GenerateDataKey`, AES_256) and
//! unwrapped by `Decrypt`.
//!
//! Every call carries the same encryption context, `{"service": "axnt-oauth",
//! "purpose": "token-envelope"}`: KMS binds it into the wrapped key, so a data key
//! wrapped for something else (or by another service under the same KMS key) does not
//! unwrap here, and CloudTrail shows what each Decrypt was for. The row binding stays
//! in the envelope's AEAD associated data, not here: the context must not vary per row,
//! or the data-key cache could not share a key across rows.
//!
//! `Decrypt` names the key (`KeyId`) the envelope recorded, so KMS refuses to use any
//! other key, as AWS recommends for symmetric keys. A multi-Region key (`key/mrk-…`,
//! deploy/axnt-oauth.yaml with replica regions) is named in this client's region: the
//! recorded ARN is the sealing region's, which KMS elsewhere does not serve, while the
//! replica with the same key id holds the same key material. So a row sealed in one
//! region opens in another after a failover.
//!
//! Key rotation (`axnt-oauth rotate-keys`) moves a wrapped data key to the configured
//! key with `ReEncrypt`: KMS decrypts and re-encrypts inside itself, so the data key
//! never leaves KMS in plaintext, and the envelope then names the key ARN KMS reports.
//! The configured key is resolved to its ARN with `DescribeKey`, since an alias may
//! have been moved to a new key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_kms::Client;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use zeroize::Zeroizing;

use super::{CryptoError, DataKey, KeyProvider, SecretKey, WrappedKey};
use crate::aws::error::{AwsFailure, FailureKind, observe};

/// The encryption context of every data key.
pub const ENCRYPTION_CONTEXT: [(&str, &str); 2] =
    [("service", "axnt-oauth"), ("purpose", "token-envelope")];

/// Wraps data keys with one KMS key.
pub struct KmsKeyProvider {
    client: Client,
    /// As configured: a key id, ARN or alias (`alias/axnt-oauth`).
    key_id: String,
    context: HashMap<String, String>,
    region: String,
    calls: AtomicU64,
}

impl KmsKeyProvider {
    pub fn new(config: &SdkConfig, key_id: &str) -> Self {
        Self {
            client: Client::from_conf(
                aws_sdk_kms::config::Builder::from(config)
                    .interceptor(crate::aws::CountRetries::new("kms"))
                    .build(),
            ),
            key_id: key_id.to_string(),
            context: ENCRYPTION_CONTEXT
                .iter()
                .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                .collect(),
            region: crate::aws::region_name(config),
            calls: AtomicU64::new(0),
        }
    }

    /// KMS calls made so far (GenerateDataKey and Decrypt), for tests and diagnostics.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn error(&self, action: &str, key: &str, f: AwsFailure) -> CryptoError {
        match f.kind {
            FailureKind::AccessDenied => CryptoError::Unavailable(format!(
                "AccessDenied: the IAM or key policy lacks kms:{action} on {key} ({})",
                f.describe()
            )),
            FailureKind::NotFound => CryptoError::Unavailable(format!(
                "KMS key {key} not found in region {} (kms:{action})",
                self.region
            )),
            FailureKind::Throttled => CryptoError::Unavailable(format!(
                "kms:{action} on {key} throttled ({})",
                f.describe()
            )),
            FailureKind::Timeout | FailureKind::Unavailable | FailureKind::ConditionFailed => {
                CryptoError::Unavailable(format!("kms:{action} on {key}: {}", f.describe()))
            }
            // InvalidCiphertextException (wrong context, altered blob), IncorrectKey,
            // a disabled key: KMS refuses this data key.
            FailureKind::Rejected => {
                CryptoError::Rejected(format!("kms:{action} on {key}: {}", f.describe()))
            }
        }
    }
}

/// A data key wrapped by the embedded mode's master key is not KMS's to unwrap.
fn refuse_local(key_id: &str) -> Result<(), CryptoError> {
    if key_id.starts_with("local:") {
        return Err(CryptoError::Rejected(format!(
            "sealed under the embedded mode's {key_id}, not by KMS"
        )));
    }
    Ok(())
}

#[async_trait]
impl KeyProvider for KmsKeyProvider {
    #[tracing::instrument(skip_all, fields(key_id = %self.key_id))]
    async fn generate_data_key(&self) -> Result<DataKey, CryptoError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let out = observe(
            "kms",
            "GenerateDataKey",
            self.client
                .generate_data_key()
                .key_id(&self.key_id)
                .key_spec(DataKeySpec::Aes256)
                .set_encryption_context(Some(self.context.clone()))
                .send()
                .await,
        )
        .map_err(|f| self.error("GenerateDataKey", &self.key_id, f))?;
        let key_id = out
            .key_id()
            .ok_or_else(|| CryptoError::Unavailable("GenerateDataKey returned no KeyId".into()))?
            .to_string();
        let encrypted = out
            .ciphertext_blob()
            .ok_or_else(|| {
                CryptoError::Unavailable("GenerateDataKey returned no CiphertextBlob".into())
            })?
            .as_ref()
            .to_vec();
        let plaintext = out.plaintext.ok_or_else(|| {
            CryptoError::Unavailable("GenerateDataKey returned no Plaintext".into())
        })?;
        // The SDK's buffer is moved out and wiped once copied into the key.
        let bytes = Zeroizing::new(plaintext.into_inner());
        Ok(DataKey {
            plaintext: SecretKey::from_slice(&bytes)?,
            encrypted,
            key_id,
        })
    }

    #[tracing::instrument(skip_all, fields(key_id = %key_id))]
    async fn decrypt_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<SecretKey, CryptoError> {
        refuse_local(key_id)?;
        let key_id = &*in_region(key_id, &self.region);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let out = observe(
            "kms",
            "Decrypt",
            self.client
                .decrypt()
                .key_id(key_id)
                .ciphertext_blob(Blob::new(encrypted))
                .set_encryption_context(Some(self.context.clone()))
                .send()
                .await,
        )
        .map_err(|f| self.error("Decrypt", key_id, f))?;
        let plaintext = out
            .plaintext
            .ok_or_else(|| CryptoError::Unavailable("Decrypt returned no Plaintext".into()))?;
        let bytes = Zeroizing::new(plaintext.into_inner());
        SecretKey::from_slice(&bytes)
    }

    #[tracing::instrument(skip_all, fields(key_id = %self.key_id))]
    async fn current_key_id(&self) -> Result<String, CryptoError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let out = observe(
            "kms",
            "DescribeKey",
            self.client.describe_key().key_id(&self.key_id).send().await,
        )
        .map_err(|f| self.error("DescribeKey", &self.key_id, f))?;
        out.key_metadata()
            .and_then(|m| m.arn())
            .map(str::to_string)
            .ok_or_else(|| CryptoError::Unavailable("DescribeKey returned no key ARN".into()))
    }

    #[tracing::instrument(skip_all, fields(key_id = %key_id))]
    async fn rewrap_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<WrappedKey, CryptoError> {
        refuse_local(key_id)?;
        let key_id = &*in_region(key_id, &self.region);
        self.calls.fetch_add(1, Ordering::Relaxed);
        let out = observe(
            "kms",
            "ReEncrypt",
            self.client
                .re_encrypt()
                .ciphertext_blob(Blob::new(encrypted))
                .source_key_id(key_id)
                .set_source_encryption_context(Some(self.context.clone()))
                .destination_key_id(&self.key_id)
                .set_destination_encryption_context(Some(self.context.clone()))
                .send()
                .await,
        )
        .map_err(|f| self.error("ReEncrypt", key_id, f))?;
        let key_id = out
            .key_id()
            .ok_or_else(|| CryptoError::Unavailable("ReEncrypt returned no KeyId".into()))?
            .to_string();
        let encrypted = out
            .ciphertext_blob()
            .ok_or_else(|| CryptoError::Unavailable("ReEncrypt returned no CiphertextBlob".into()))?
            .as_ref()
            .to_vec();
        Ok(WrappedKey { key_id, encrypted })
    }

    fn describe(&self) -> String {
        format!("KMS key {} (region {})", self.key_id, self.region)
    }
}

/// `key_id` as this region's KMS knows it: a multi-Region key's ARN from another
/// region becomes the same ARN in `region` (same partition, account and `mrk-` id);
/// anything else is left as recorded.
fn in_region<'a>(key_id: &'a str, region: &str) -> std::borrow::Cow<'a, str> {
    let parts: Vec<&str> = key_id.splitn(6, ':').collect();
    match parts.as_slice() {
        [arn, partition, "kms", recorded, account, resource]
            if *arn == "arn" && resource.starts_with("key/mrk-") && recorded != &region =>
        {
            format!("arn:{partition}:kms:{region}:{account}:{resource}").into()
        }
        _ => key_id.into(),
    }
}

/// Whether two recorded key ids name the same key: equal, or one multi-Region key
/// (`key/mrk-…`) named in two regions (rows sealed before and after a failover).
pub(crate) fn same_key(a: &str, b: &str) -> bool {
    a == b
        || b.split(':')
            .nth(3)
            .is_some_and(|region| in_region(a, region) == b)
}

#[cfg(test)]
mod tests {
    use super::{in_region, same_key};

    #[test]
    fn a_multi_region_key_is_one_key_in_every_region() {
        let east = "arn:aws:kms:us-east-1:123456789012:key/mrk-0123456789abcdef0123456789abcdef";
        let west = "arn:aws:kms:us-west-2:123456789012:key/mrk-0123456789abcdef0123456789abcdef";
        assert!(same_key(east, west) && same_key(west, east) && same_key(east, east));
        let single = "arn:aws:kms:us-east-1:123456789012:key/0b1d5c4e-1111-2222-3333-444455556666";
        let single_west =
            "arn:aws:kms:us-west-2:123456789012:key/0b1d5c4e-1111-2222-3333-444455556666";
        assert!(
            !same_key(single, single_west),
            "single-Region keys differ by region"
        );
        assert!(!same_key("local:abc", east));
    }

    #[test]
    fn a_multi_region_key_is_named_in_the_region_of_the_client() {
        let primary = "arn:aws:kms:us-east-1:123456789012:key/mrk-0123456789abcdef0123456789abcdef";
        assert_eq!(
            in_region(primary, "us-west-2"),
            "arn:aws:kms:us-west-2:123456789012:key/mrk-0123456789abcdef0123456789abcdef"
        );
        assert_eq!(in_region(primary, "us-east-1"), primary);
    }

    #[test]
    fn single_region_keys_and_other_ids_stay_as_recorded() {
        for id in [
            "arn:aws:kms:us-east-1:123456789012:key/0b1d5c4e-1111-2222-3333-444455556666",
            "mrk-0123456789abcdef0123456789abcdef",
            "alias/axnt-oauth",
            "arn:aws:kms:us-east-1:123456789012:alias/axnt-oauth",
        ] {
            assert_eq!(in_region(id, "us-west-2"), id);
        }
    }
}
