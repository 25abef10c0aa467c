//! Thin wrappers over crate-private operations, for the micro-benchmarks (`benches/`)
//! and the load benchmark's helpers (`examples/bench_*.rs`, driven by `scripts/bench`).
//!
//! Compiled only with the `bench` cargo feature, which no product build enables: the
//! wrapped items stay `pub(crate)`, and nothing here is part of the service's interface.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::callers::ApiKey;
use crate::crypto::cache::{CacheLimits, CachingKeyProvider};
use crate::crypto::local::LocalKeyProvider;
use crate::crypto::{CryptoError, KeyProvider, SecretKey};
use crate::ids::{FlowId, UserId};
use crate::oauth::flow::{FlowState, Purpose, StateSealer};
use crate::secrets::{SecretsCache, ServiceSecrets, StaticSecrets};
use crate::store::{Connection, RefreshState, StoreError, UserInfo};
use crate::tokens::token_set::TokenSet;

pub use crate::crypto::{Envelope, EnvelopeCipher};

/// A DynamoDB item, as the SDK holds one.
pub type DynamoItem = std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>;

/// Embedded mode's key provider over the master key file at `path`, created (mode
/// 0600) when absent, exactly as the service loads it from `AXNT_DATA_DIR`.
pub fn local_keys(path: &Path) -> Result<Arc<dyn KeyProvider>, CryptoError> {
    let (keys, _created) = LocalKeyProvider::load_or_create(path)?;
    Ok(Arc::new(keys))
}

/// A local key provider under a fresh random master key (no file).
pub fn random_local_keys() -> Arc<dyn KeyProvider> {
    Arc::new(LocalKeyProvider::new(SecretKey::generate()))
}

/// `keys` behind aws mode's data-key cache, with the default bounds of the
/// `AXNT_DATA_KEY_*` settings.
pub fn cached_keys(keys: Arc<dyn KeyProvider>) -> Arc<dyn KeyProvider> {
    Arc::new(CachingKeyProvider::new(
        keys,
        CacheLimits {
            max_uses: 1000,
            max_age: Duration::from_secs(300),
            decrypted_entries: 10_000,
            decrypted_ttl: Duration::from_secs(300),
        },
    ))
}

/// The plaintext the service seals into a row's `encryptedTokens`: a token set issued
/// at `issued_at` and expiring at `expires_at` (epoch seconds).
pub fn token_set_json(
    access_token: &str,
    refresh_token: &str,
    issued_at: i64,
    expires_at: i64,
) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&TokenSet {
        access_token: access_token.into(),
        refresh_token: Some(refresh_token.into()),
        id_token: None,
        scope: Some("openid email profile".into()),
        token_type: "Bearer".into(),
        expires_at,
        issued_at: Some(issued_at),
        refresh_token_expires_at: None,
        requested_scopes: Vec::new(),
        confirmation_code: None,
        client_id: None,
    })
}

/// Opens a row's token set as the token read does (envelope, then JSON).
pub async fn open_token_set(cipher: &EnvelopeCipher, row: &Connection) -> Result<(), String> {
    TokenSet::open(cipher, row)
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Writes `users` connected users (`{prefix}0` …) to `store`, each holding a token set
/// valid for `lifetime_secs`, sealed by `cipher` as the service seals one.
pub async fn seed_users(
    store: &dyn crate::store::TokenStore,
    cipher: &EnvelopeCipher,
    prefix: &str,
    users: u64,
    lifetime_secs: i64,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let now = Utc::now();
    let expires_at = now.timestamp() + lifetime_secs;
    for i in 0..users {
        let user_id = format!("{prefix}{i}");
        let plaintext = token_set_json(
            &format!("ya29.bench-{i}-{}", "a".repeat(120)),
            &format!("1//bench-{i}"),
            now.timestamp(),
            expires_at,
        )?;
        let sealed = cipher.seal(&user_id, "google", &plaintext).await?;
        store
            .put(&connection(&user_id, sealed, expires_at, now), None, &[])
            .await
            .with_context(|| format!("writing {user_id} (seed an empty store)"))?;
    }
    Ok(())
}

/// A fresh active row for `user_id` at `google`, holding `sealed`.
pub fn connection(
    user_id: &str,
    sealed: Envelope,
    access_token_expires_at: i64,
    now: DateTime<Utc>,
) -> Connection {
    let email = format!("{user_id}@example.com");
    Connection {
        user_id: user_id.into(),
        provider: "google".into(),
        email: Some(email.clone()),
        encrypted_tokens: sealed,
        user_info: UserInfo {
            sub: format!("sub-{user_id}"),
            email: Some(email),
            email_verified: Some(true),
            name: Some(user_id.into()),
            picture: None,
            hd: None,
        },
        created_at: now,
        updated_at: now,
        // Read just now: a run shorter than AXNT_LAST_USED_INTERVAL_SECS writes no
        // `lastUsed`, so every store size is measured on reads alone.
        last_used: now,
        access_token_expires_at,
        expires_at: now.timestamp() + 180 * 86_400,
        is_active: true,
        version: 1,
        refresh: RefreshState::default(),
        replaced_account: None,
        grant: Default::default(),
    }
}

/// A row as aws mode writes it to DynamoDB.
pub fn dynamo_encode(row: &Connection) -> Result<DynamoItem, StoreError> {
    crate::store::dynamodb::connection_item(row)
}

/// A DynamoDB item read back as a row.
pub fn dynamo_decode(item: &DynamoItem) -> Result<Connection, StoreError> {
    crate::store::dynamodb::connection_from(item)
}

/// A row as the SQLite file stores it (its document).
pub fn sqlite_encode(row: &Connection) -> Result<String, StoreError> {
    crate::store::embedded::row_doc(row)
}

/// A SQLite row's document read back as a row.
pub fn sqlite_decode(doc: &str) -> Result<Connection, StoreError> {
    crate::store::embedded::parse_row(doc)
}

/// Seals and opens the authorization request's `state`, as `/start` and the callback do.
pub struct FlowStates(StateSealer);

impl FlowStates {
    /// Under a fresh random state key.
    pub fn random() -> Self {
        Self(StateSealer::new(SecretKey::generate()))
    }

    /// Seals a typical `state` for `user_id` (random PKCE verifier, nonce and binding).
    pub fn seal(&self, user_id: &str) -> Result<String, String> {
        let state = FlowState {
            user_id: UserId::parse(user_id).map_err(|e| e.to_string())?,
            provider: "google".into(),
            pkce_verifier: crate::crypto::random_token(32),
            nonce: crate::crypto::random_token(32),
            return_to: None,
            expires_at: Utc::now().timestamp() + 600,
            flow_id: FlowId::new(),
            binding_hash: crate::oauth::flow::new_binding().1,
            rules: crate::oauth::flow::FlowRules::default(),
        };
        self.0
            .seal(Purpose::AuthorizationState, &state)
            .map_err(|e| e.to_string())
    }

    /// Opens what [`FlowStates::seal`] made.
    pub fn open(&self, sealed: &str) -> Result<(), String> {
        self.0
            .open::<FlowState>(Purpose::AuthorizationState, sealed)
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// The secrets cache accepting `keys` as API keys, as the internal API checks them.
pub async fn api_key_cache(keys: &[&str]) -> Result<Arc<SecretsCache>, String> {
    let accepted = crate::callers::CallerList {
        keys: keys
            .iter()
            .map(|k| ApiKey::parse(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?,
        identities: Vec::new(),
    };
    let source = StaticSecrets::new(ServiceSecrets::default(), "bench");
    SecretsCache::load(Arc::new(source), Default::default(), accepted)
        .await
        .map_err(|e| e.to_string())
}

/// The audit trail over an embedded store's flow log, with the default rules (60 s
/// windows, 10,000 records waiting at most): what every token read records into.
pub struct AuditBench(Arc<crate::audit::AuditTrail>);

impl AuditBench {
    /// Starts the trail's writer on the current runtime.
    pub fn new(store: &crate::store::embedded::EmbeddedStore) -> Self {
        let log: Arc<dyn crate::store::FlowLog> = Arc::new(store.clone());
        Self(Arc::new(crate::audit::AuditTrail::new(
            log,
            &crate::audit::AuditRules {
                retention: Duration::from_secs(86_400),
                window: Duration::from_secs(60),
                capacity: 10_000,
                wait: Duration::from_secs(1),
                concurrency: 4,
            },
        )))
    }

    /// Records one served read of `user_id`'s Google token by `caller`; false when the
    /// trail could not take it.
    pub async fn served(&self, caller: &str, user_id: &str) -> bool {
        self.0
            .record(crate::audit::Read {
                caller,
                user_id,
                provider: "google",
                outcome: crate::audit::ReadOutcome::Served,
                reason: None,
                scopes: Some("openid email"),
                request_id: Some("6f1c2b7e-0d1a-4c39-9b8e-3d2f5a7c9e10"),
            })
            .await
            .is_ok()
    }
}
