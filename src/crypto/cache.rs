//! Bounded data-key caching over any [`KeyProvider`], so token reads and writes do not
//! each cost a KMS call.
//!
//! - Sealing: one data key is reused for at most `max_uses` seals or `max_age`,
//!   whichever comes first; then a new one is generated. Rows sealed meanwhile share
//!   the wrapped key (`edk`) but not a nonce: each seal draws a random 96-bit nonce,
//!   and with at most `max_uses` messages per key (far below the 2^32 NIST bound for
//!   random GCM nonces) a repeat is out of reach. Rows stay bound to themselves by the
//!   AEAD's associated data. Generation is serialized, so a burst of writes costs one
//!   GenerateDataKey, not one each.
//! - Opening: decrypted data keys are kept by (key id, wrapped key) in an LRU bounded
//!   in entries and age ([`moka`]). Concurrent reads of one wrapped key share one
//!   Decrypt. A newly generated key is put there too, so reading back our own writes
//!   costs nothing.
//!
//! Plaintext keys are [`SecretKey`]s: wiped when the cache drops them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::future::Cache;
use tokio::sync::Mutex;

use super::{CryptoError, DataKey, KeyProvider, SecretKey, WrappedKey};
use crate::series::{CacheOutcome, Label};

/// The cache's bounds (settings `AXNT_DATA_KEY_*`).
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Seals per data key (0 or 1: a fresh key per seal).
    pub max_uses: u64,
    /// How long a data key is used for sealing.
    pub max_age: Duration,
    /// Decrypted data keys kept.
    pub decrypted_entries: u64,
    /// How long a decrypted data key is kept.
    pub decrypted_ttl: Duration,
}

/// The data key currently used for sealing.
struct SealingKey {
    key: SecretKey,
    encrypted: Vec<u8>,
    key_id: String,
    born: Instant,
    uses: u64,
}

/// A caching [`KeyProvider`] decorator.
pub struct CachingKeyProvider {
    inner: Arc<dyn KeyProvider>,
    limits: CacheLimits,
    sealing: Mutex<Option<SealingKey>>,
    decrypted: Cache<(String, Vec<u8>), SecretKey>,
}

impl CachingKeyProvider {
    pub fn new(inner: Arc<dyn KeyProvider>, limits: CacheLimits) -> Self {
        let decrypted = Cache::builder()
            .max_capacity(limits.decrypted_entries)
            .time_to_live(limits.decrypted_ttl.max(Duration::from_millis(1)))
            .build();
        Self {
            inner,
            limits,
            sealing: Mutex::new(None),
            decrypted,
        }
    }
}

/// `CryptoError` is not `Clone`; moka hands a shared error to every waiter.
fn copy_error(e: &CryptoError) -> CryptoError {
    match e {
        CryptoError::Integrity => CryptoError::Integrity,
        CryptoError::InvalidKey(m) => CryptoError::InvalidKey(m.clone()),
        CryptoError::Unavailable(m) => CryptoError::Unavailable(m.clone()),
        CryptoError::Rejected(m) => CryptoError::Rejected(m.clone()),
    }
}

/// What a data key was wanted for: [`DATA_KEY_CACHE_TOTAL`](crate::series::DATA_KEY_CACHE_TOTAL)'s `operation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum DataKeyUse {
    /// A data key reused, or a new one generated.
    Seal,
    /// A wrapped key found unwrapped, or sent to the key service.
    Open,
}

/// [`DATA_KEY_CACHE_TOTAL`](crate::series::DATA_KEY_CACHE_TOTAL)`{operation, outcome}`.
fn count(operation: DataKeyUse, outcome: CacheOutcome) {
    metrics::counter!(crate::series::DATA_KEY_CACHE_TOTAL, "operation" => operation.label(), "outcome" => outcome.label())
        .increment(1);
}

#[async_trait]
impl KeyProvider for CachingKeyProvider {
    async fn generate_data_key(&self) -> Result<DataKey, CryptoError> {
        let mut sealing = self.sealing.lock().await;
        if let Some(current) = sealing.as_mut()
            && current.uses < self.limits.max_uses
            && current.born.elapsed() < self.limits.max_age
        {
            current.uses += 1;
            count(DataKeyUse::Seal, CacheOutcome::Hit);
            return Ok(DataKey {
                plaintext: current.key.clone(),
                encrypted: current.encrypted.clone(),
                key_id: current.key_id.clone(),
            });
        }
        count(DataKeyUse::Seal, CacheOutcome::Miss);
        let fresh = self.inner.generate_data_key().await?;
        self.decrypted
            .insert(
                (fresh.key_id.clone(), fresh.encrypted.clone()),
                fresh.plaintext.clone(),
            )
            .await;
        *sealing = Some(SealingKey {
            key: fresh.plaintext.clone(),
            encrypted: fresh.encrypted.clone(),
            key_id: fresh.key_id.clone(),
            born: Instant::now(),
            uses: 1,
        });
        Ok(fresh)
    }

    async fn decrypt_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<SecretKey, CryptoError> {
        let inner = Arc::clone(&self.inner);
        let (id, edk) = (key_id.to_string(), encrypted.to_vec());
        let missed = AtomicBool::new(false);
        let opened = self
            .decrypted
            .try_get_with((id.clone(), edk.clone()), async {
                missed.store(true, Ordering::Relaxed);
                inner.decrypt_data_key(&id, &edk).await
            })
            .await
            .map_err(|e| copy_error(&e));
        let outcome = if missed.load(Ordering::Relaxed) {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Hit
        };
        count(DataKeyUse::Open, outcome);
        opened
    }

    // Re-wraps go to the wrapped provider: a re-wrapped data key has a new
    // (key id, wrapped key) pair, so the decrypted-key cache, keyed by both, can never
    // answer for it with a key cached under the old pair.
    async fn current_key_id(&self) -> Result<String, CryptoError> {
        self.inner.current_key_id().await
    }

    async fn rewrap_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<WrappedKey, CryptoError> {
        self.inner.rewrap_data_key(key_id, encrypted).await
    }

    fn describe(&self) -> String {
        format!(
            "{} (data key reused for ≤{} seals or {} s; ≤{} decrypted keys kept {} s)",
            self.inner.describe(),
            self.limits.max_uses.max(1),
            self.limits.max_age.as_secs(),
            self.limits.decrypted_entries,
            self.limits.decrypted_ttl.as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::local::LocalKeyProvider;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Counts the calls reaching the wrapped provider.
    struct Counting {
        inner: LocalKeyProvider,
        generated: AtomicU64,
        decrypted: AtomicU64,
    }

    #[async_trait]
    impl KeyProvider for Counting {
        async fn generate_data_key(&self) -> Result<DataKey, CryptoError> {
            self.generated.fetch_add(1, Ordering::Relaxed);
            self.inner.generate_data_key().await
        }
        async fn decrypt_data_key(&self, id: &str, edk: &[u8]) -> Result<SecretKey, CryptoError> {
            self.decrypted.fetch_add(1, Ordering::Relaxed);
            self.inner.decrypt_data_key(id, edk).await
        }
        async fn current_key_id(&self) -> Result<String, CryptoError> {
            self.inner.current_key_id().await
        }
        async fn rewrap_data_key(&self, id: &str, edk: &[u8]) -> Result<WrappedKey, CryptoError> {
            self.inner.rewrap_data_key(id, edk).await
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    fn counting() -> Arc<Counting> {
        Arc::new(Counting {
            inner: LocalKeyProvider::new(SecretKey::generate()),
            generated: AtomicU64::new(0),
            decrypted: AtomicU64::new(0),
        })
    }

    #[tokio::test]
    async fn a_data_key_is_reused_at_most_max_uses_times() {
        let inner = counting();
        let cache = CachingKeyProvider::new(
            inner.clone(),
            CacheLimits {
                max_uses: 3,
                max_age: Duration::from_secs(60),
                decrypted_entries: 10,
                decrypted_ttl: Duration::from_secs(60),
            },
        );
        let mut edks = Vec::new();
        for _ in 0..7 {
            edks.push(cache.generate_data_key().await.expect("key").encrypted);
        }
        assert_eq!(
            inner.generated.load(Ordering::Relaxed),
            3,
            "7 seals at 3 per key"
        );
        assert_eq!(edks[0], edks[2]);
        assert_ne!(edks[2], edks[3]);
        let dk = cache.generate_data_key().await.expect("key");
        cache
            .decrypt_data_key(&dk.key_id, &dk.encrypted)
            .await
            .expect("own key");
        assert_eq!(
            inner.decrypted.load(Ordering::Relaxed),
            0,
            "own keys are cached"
        );
    }

    #[tokio::test]
    async fn max_uses_one_means_a_fresh_key_per_seal() {
        let inner = counting();
        let cache = CachingKeyProvider::new(
            inner.clone(),
            CacheLimits {
                max_uses: 1,
                max_age: Duration::from_secs(60),
                decrypted_entries: 10,
                decrypted_ttl: Duration::from_secs(60),
            },
        );
        let a = cache.generate_data_key().await.expect("key");
        let b = cache.generate_data_key().await.expect("key");
        assert_ne!(a.encrypted, b.encrypted);
        assert_eq!(inner.generated.load(Ordering::Relaxed), 2);
    }
}
