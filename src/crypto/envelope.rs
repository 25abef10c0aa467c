//! Envelope encryption of a row's token set.
//!
//! Each write draws a data key from the [`KeyProvider`], seals the plaintext with
//! AES-256-GCM under it, and stores the wrapped data key beside the ciphertext. The
//! associated data names the table, `userId` and `provider`, so a ciphertext copied to
//! another row (or another table) fails to open.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{CryptoError, DataKey, KeyProvider, b64, b64_decode};

/// The stored form: the row's `encryptedTokens` map (`v`, `alg`, `keyId`, `edk`, `iv`, `ct`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Format version; bumped if the associated data or layout ever changes.
    pub v: u32,
    /// Always `AES-256-GCM` today.
    pub alg: String,
    /// The wrapping key (`local:<fingerprint>` or a KMS key ARN).
    #[serde(rename = "keyId")]
    pub key_id: String,
    /// The wrapped data key, base64.
    pub edk: String,
    /// The AES-GCM nonce, base64.
    pub iv: String,
    /// Ciphertext and tag, base64.
    pub ct: String,
}

const VERSION: u32 = 1;
const ALG: &str = "AES-256-GCM";

/// Seals and opens token sets for one table.
pub struct EnvelopeCipher {
    keys: Arc<dyn KeyProvider>,
    table: String,
}

impl EnvelopeCipher {
    pub fn new(keys: Arc<dyn KeyProvider>, table: impl Into<String>) -> Self {
        Self {
            keys,
            table: table.into(),
        }
    }

    /// The associated data binding a ciphertext to its row. JSON keeps the three parts
    /// unambiguous whatever characters the ids hold.
    fn associated_data(&self, user_id: &str, provider: &str) -> Vec<u8> {
        serde_json::json!(["axnt-oauth/tokens/v1", self.table, user_id, provider])
            .to_string()
            .into_bytes()
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    pub async fn seal(
        &self,
        user_id: &str,
        provider: &str,
        plaintext: &[u8],
    ) -> Result<Envelope, CryptoError> {
        self.sealer().await?.seal(user_id, provider, plaintext)
    }

    /// A data key drawn now, to seal with later without calling the key provider: a
    /// refresh draws it before redeeming, so what the provider gives can be sealed
    /// even if the key service goes away meanwhile.
    pub(crate) async fn sealer(&self) -> Result<Sealer<'_>, CryptoError> {
        Ok(Sealer {
            cipher: self,
            data_key: self.keys.generate_data_key().await?,
        })
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider, key_id = %envelope.key_id))]
    pub async fn open(
        &self,
        user_id: &str,
        provider: &str,
        envelope: &Envelope,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if envelope.v != VERSION || envelope.alg != ALG {
            return Err(CryptoError::Rejected(format!(
                "unsupported envelope v{} {}",
                envelope.v, envelope.alg
            )));
        }
        let edk = b64_decode(&envelope.edk)?;
        let data_key = self.keys.decrypt_data_key(&envelope.key_id, &edk).await?;
        let aad = self.associated_data(user_id, provider);
        data_key.open(&b64_decode(&envelope.iv)?, &aad, &b64_decode(&envelope.ct)?)
    }
}

impl EnvelopeCipher {
    /// The id new envelopes name as their wrapping key now.
    pub async fn current_key_id(&self) -> Result<String, CryptoError> {
        self.keys.current_key_id().await
    }

    /// The same envelope with its data key wrapped under the current key: `keyId` and
    /// `edk` change, the nonce and ciphertext do not (the associated data binds the
    /// row, not the wrapping key), and the token set is never decrypted.
    #[tracing::instrument(skip_all, fields(key_id = %envelope.key_id))]
    pub async fn rewrap(&self, envelope: &Envelope) -> Result<Envelope, CryptoError> {
        let edk = b64_decode(&envelope.edk)?;
        let wrapped = self.keys.rewrap_data_key(&envelope.key_id, &edk).await?;
        Ok(Envelope {
            key_id: wrapped.key_id,
            edk: b64(&wrapped.encrypted),
            ..envelope.clone()
        })
    }
}

/// A data key in hand for [`EnvelopeCipher`]'s table (see [`EnvelopeCipher::sealer`]).
pub(crate) struct Sealer<'a> {
    cipher: &'a EnvelopeCipher,
    data_key: DataKey,
}

impl Sealer<'_> {
    /// Seals `plaintext` for the row of `user_id` at `provider` (a fresh random nonce).
    pub(crate) fn seal(
        &self,
        user_id: &str,
        provider: &str,
        plaintext: &[u8],
    ) -> Result<Envelope, CryptoError> {
        let aad = self.cipher.associated_data(user_id, provider);
        let (nonce, ct) = self.data_key.plaintext.seal(&aad, plaintext)?;
        Ok(Envelope {
            v: VERSION,
            alg: ALG.into(),
            key_id: self.data_key.key_id.clone(),
            edk: b64(&self.data_key.encrypted),
            iv: b64(&nonce),
            ct: b64(&ct),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;
    use crate::crypto::local::LocalKeyProvider;

    fn cipher(table: &str) -> EnvelopeCipher {
        EnvelopeCipher::new(
            Arc::new(LocalKeyProvider::new(SecretKey::generate())),
            table,
        )
    }

    #[tokio::test]
    async fn a_ciphertext_opens_only_on_its_own_row() {
        let c = cipher("tokens");
        let env = c
            .seal("alice", "google", b"secret tokens")
            .await
            .expect("seal");
        assert_eq!(
            c.open("alice", "google", &env)
                .await
                .expect("open")
                .as_slice(),
            b"secret tokens"
        );
        assert!(matches!(
            c.open("bob", "google", &env).await,
            Err(CryptoError::Integrity)
        ));
        assert!(matches!(
            c.open("alice", "github", &env).await,
            Err(CryptoError::Integrity)
        ));
    }

    #[tokio::test]
    async fn each_write_uses_a_fresh_data_key_and_nonce() {
        let c = cipher("tokens");
        let a = c.seal("u", "google", b"x").await.expect("seal");
        let b = c.seal("u", "google", b"x").await.expect("seal");
        assert_ne!(a.edk, b.edk);
        assert_ne!(a.iv, b.iv);
        assert_ne!(a.ct, b.ct);
    }
}
