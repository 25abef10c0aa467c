//! Where key material lives and how bytes are sealed.
//!
//! - [`SecretKey`]: a 256-bit AES-GCM key that wipes itself and never prints.
//! - [`envelope`]: envelope encryption of token sets under per-write data keys, bound
//!   to their row through the AEAD's associated data.
//! - [`KeyProvider`]: who wraps the data keys: [`local`] (a master key file) or, in aws
//!   mode, [`kms`] behind the bounded data-key [`cache`].
//!
//! AES-256-GCM, randomness and SHA-256 come from `aws-lc-rs` (the AWS SDK's TLS builds
//! it anyway). Nonces are drawn at random by [`aws_lc_rs::aead::RandomizedNonceKey`],
//! never by hand: with a fresh data key per write, nonce reuse is out of reach.

pub mod cache;
pub(crate) mod envelope;
pub mod kms;
pub(crate) mod local;
mod webhook_secret;

use std::fmt;

use async_trait::async_trait;
use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

pub(crate) use envelope::Sealer;
pub use envelope::{Envelope, EnvelopeCipher};
pub use local::{MASTER_KEY_FILE, RETIRED_KEYS_DIR, rotate_master_key};
pub use webhook_secret::WebhookSecret;

/// Length of every symmetric key we hold.
pub(crate) const KEY_LEN: usize = 32;

/// What went wrong with keys or ciphertexts.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CryptoError {
    /// A ciphertext failed authentication: altered, moved to another row, or sealed
    /// under another key.
    #[error("ciphertext failed authentication (altered, moved, or sealed under another key)")]
    Integrity,
    /// Key material is malformed.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    /// The key service could not be used (network, permissions, throttling).
    #[error("key service unavailable: {0}")]
    Unavailable(String),
    /// The key service refused the data key itself.
    #[error("key service rejected the data key: {0}")]
    Rejected(String),
}

impl CryptoError {
    /// The problem code an answer failing with this carries.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "keys_unavailable",
            _ => "stored_tokens_unreadable",
        }
    }

    /// What a client is told: what failed, not how.
    pub(crate) fn public_detail(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "the key service is unavailable; retry later",
            _ => "the stored tokens cannot be decrypted",
        }
    }
}

/// A 256-bit symmetric key. Wiped on drop; `Debug` prints nothing of it.
#[derive(Clone)]
pub struct SecretKey(Zeroizing<[u8; KEY_LEN]>);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

impl SecretKey {
    /// A fresh random key.
    pub(crate) fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        fill_random(bytes.as_mut_slice());
        Self(bytes)
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        let array: [u8; KEY_LEN] = bytes.try_into().map_err(|_| {
            CryptoError::InvalidKey(format!("expected {KEY_LEN} bytes, got {}", bytes.len()))
        })?;
        Ok(Self(Zeroizing::new(array)))
    }

    /// Decodes standard or URL-safe base64 of exactly 32 bytes.
    pub(crate) fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let text = text.trim();
        let bytes = Zeroizing::new(
            STANDARD
                .decode(text)
                .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
                .map_err(|_| CryptoError::InvalidKey("not base64".into()))?,
        );
        Self::from_slice(&bytes)
    }

    pub(crate) fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_slice()))
    }

    pub(crate) fn expose(&self) -> &[u8] {
        self.0.as_slice()
    }

    /// A short, non-secret name for this key (a hash prefix), to tell keys apart.
    pub(crate) fn fingerprint(&self) -> String {
        hex(&sha256(self.0.as_slice())[..8])
    }

    /// AES-256-GCM with a random nonce. Returns the nonce and ciphertext‖tag.
    pub(crate) fn seal(
        &self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<([u8; NONCE_LEN], Vec<u8>), CryptoError> {
        let key = RandomizedNonceKey::new(&AES_256_GCM, self.expose())
            .map_err(|_| CryptoError::InvalidKey("AES-256-GCM rejected the key".into()))?;
        let mut in_out = plaintext.to_vec();
        let nonce = key
            .seal_in_place_append_tag(Aad::from(aad), &mut in_out)
            .map_err(|_| CryptoError::InvalidKey("sealing failed".into()))?;
        Ok((*nonce.as_ref(), in_out))
    }

    /// Opens what [`SecretKey::seal`] produced.
    pub(crate) fn open(
        &self,
        nonce: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let key = RandomizedNonceKey::new(&AES_256_GCM, self.expose())
            .map_err(|_| CryptoError::InvalidKey("AES-256-GCM rejected the key".into()))?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Integrity)?;
        let mut in_out = Zeroizing::new(ciphertext.to_vec());
        let len = key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| CryptoError::Integrity)?
            .len();
        in_out.truncate(len);
        Ok(in_out)
    }

    /// `nonce ‖ ciphertext ‖ tag` in one buffer (for small sealed values).
    pub(crate) fn seal_combined(
        &self,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let (nonce, ct) = self.seal(aad, plaintext)?;
        let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens what [`SecretKey::seal_combined`] produced.
    pub(crate) fn open_combined(
        &self,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN {
            return Err(CryptoError::Integrity);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        self.open(nonce, aad, ct)
    }
}

/// A data key as a [`KeyProvider`] hands it out: the plaintext to seal with, and the
/// wrapped form to store beside the ciphertext.
pub struct DataKey {
    pub(crate) plaintext: SecretKey,
    pub(crate) encrypted: Vec<u8>,
    /// The wrapping key's id as stored in the envelope's `keyId`.
    pub(crate) key_id: String,
}

/// A data key's wrapped form only, as a re-wrap returns it: the plaintext key never
/// reaches the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The wrapping key's id as stored in the envelope's `keyId`.
    pub key_id: String,
    pub encrypted: Vec<u8>,
}

/// Wraps and unwraps data keys. Implementations: [`local::LocalKeyProvider`] and, in
/// aws mode, KMS.
#[async_trait]
pub trait KeyProvider: Send + Sync {
    /// A fresh data key, in plaintext and wrapped.
    async fn generate_data_key(&self) -> Result<DataKey, CryptoError>;
    /// Unwraps a data key stored with an envelope.
    async fn decrypt_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<SecretKey, CryptoError>;
    /// The id new data keys are wrapped under now, as an envelope's `keyId` names it
    /// (a KMS alias resolved to its key's ARN: the alias may have moved).
    async fn current_key_id(&self) -> Result<String, CryptoError>;
    /// Wraps a stored data key under the current key instead of `key_id` (key
    /// rotation). The token set it seals is not touched: only `keyId` and `edk` change.
    async fn rewrap_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<WrappedKey, CryptoError>;
    /// A short description for logs and `check` (`local master key …`, `KMS key …`).
    fn describe(&self) -> String;
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    // aws-lc's RNG fails only if the OS entropy source is gone, after which nothing
    // this process could do is safe; it is the one panic we accept.
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::fill(buf).expect("operating system random source failed");
}

/// `n` random bytes as unpadded URL-safe base64 (for codes, cookies, nonces).
pub(crate) fn random_token(n: usize) -> String {
    let mut bytes = Zeroizing::new(vec![0u8; n]);
    fill_random(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes.as_slice())
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn b64_decode(text: &str) -> Result<Vec<u8>, CryptoError> {
    STANDARD.decode(text).map_err(|_| CryptoError::Integrity)
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let key = SecretKey::generate();
        let sealed = key.seal_combined(b"aad-1", b"hello").expect("seal");
        assert_eq!(
            key.open_combined(b"aad-1", &sealed)
                .expect("open")
                .as_slice(),
            b"hello"
        );
        assert!(matches!(
            key.open_combined(b"aad-2", &sealed),
            Err(CryptoError::Integrity)
        ));
        let other = SecretKey::generate();
        assert!(matches!(
            other.open_combined(b"aad-1", &sealed),
            Err(CryptoError::Integrity)
        ));
        let mut flipped = sealed.clone();
        if let Some(last) = flipped.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(
            key.open_combined(b"aad-1", &flipped),
            Err(CryptoError::Integrity)
        ));
    }

    #[test]
    fn keys_do_not_print() {
        let key = SecretKey::generate();
        assert_eq!(format!("{key:?}"), "SecretKey(..)");
    }

    #[test]
    fn base64_keys_must_be_32_bytes() {
        let key = SecretKey::generate();
        let again = SecretKey::from_base64(&key.to_base64()).expect("round trip");
        assert_eq!(key.expose(), again.expose());
        assert!(SecretKey::from_base64("c2hvcnQ=").is_err());
        assert!(SecretKey::from_base64("%%%").is_err());
    }
}
