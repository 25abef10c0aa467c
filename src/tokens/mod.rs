//! The token service: what a stored connection means, independent of where it is
//! stored. Storing a new grant, handing out a valid access token (refreshing first
//! when needed), listing and removing connections.
//!
//! Every write is conditional on the row's `version`, so a writer that lost a race
//! never overwrites a newer row: it re-reads and uses the winner's result.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::crypto::EnvelopeCipher;
use crate::error::Error;
use crate::oauth::provider::{OidcProvider, ProviderError, ProviderTokens, Providers};
use crate::store::flow_log::ClientInfo;
use crate::store::{
    Connection, FlowRecorder, FlowStep, RefreshLease, StoreError, TokenStore, UserInfo,
};

/// Used when a provider omits `expires_in` (Google never does): one hour.
const DEFAULT_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
/// Added to the refresh deadline to make the lease's length.
const LEASE_SLACK: Duration = Duration::from_secs(10);
/// How often a reader waiting for another instance's refresh re-reads the row.
const LEASE_POLL: Duration = Duration::from_millis(50);
/// A lost conditional write is retried this many times against the re-read row.
const WRITE_ATTEMPTS: usize = 5;

/// The plaintext sealed in `encryptedTokens`. Wiped from memory on drop.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct TokenSet {
    #[serde(rename = "accessToken")]
    pub access_token: String,
    #[serde(
        rename = "refreshToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub refresh_token: Option<String>,
    #[serde(rename = "idToken", default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(rename = "tokenType")]
    pub token_type: String,
    /// Epoch seconds when the access token expires.
    #[serde(rename = "expiresAt")]
    pub expires_at: i64,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl TokenSet {
    /// The set to store after a grant or refresh. A response without a refresh token
    /// keeps `previous`'s (Google omits it on refresh and on re-consent).
    fn from_provider(
        tokens: &ProviderTokens,
        previous: Option<&TokenSet>,
        now: DateTime<Utc>,
    ) -> Self {
        let lifetime = tokens.expires_in.unwrap_or(DEFAULT_ACCESS_TOKEN_LIFETIME);
        Self {
            access_token: tokens.access_token.expose_secret().to_string(),
            refresh_token: tokens
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_string())
                .or_else(|| previous.and_then(|p| p.refresh_token.clone())),
            id_token: tokens
                .id_token
                .as_ref()
                .map(|t| t.expose_secret().to_string())
                .or_else(|| previous.and_then(|p| p.id_token.clone())),
            scope: tokens
                .scope
                .clone()
                .or_else(|| previous.and_then(|p| p.scope.clone())),
            token_type: tokens.token_type.clone(),
            expires_at: now.timestamp() + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2),
        }
    }
}

/// A valid access token as the API hands it out.
pub struct IssuedToken {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_at: DateTime<Utc>,
    pub scope: Option<String>,
    pub email: Option<String>,
}

/// A connection as listed: never a token.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionSummary {
    pub provider: String,
    pub email: Option<String>,
    pub user_info: UserInfo,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_used: DateTime<Utc>,
    pub access_token_expires_at: DateTime<Utc>,
}

/// Timing rules for rows and tokens.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// A token handed out stays valid at least this long.
    pub refresh_margin: Duration,
    /// `lastUsed` (and the row's purge time) is written at most this often.
    pub last_used_interval: Duration,
    /// An active row's purge time after its last refresh or use.
    pub connection_ttl: Duration,
    /// An inactive row's purge time after it went inactive.
    pub inactive_retention: Duration,
    /// A refresh, retries included, gives up after this long.
    pub refresh_deadline: Duration,
    /// A reader waits this long for another reader's refresh of the same connection
    /// before answering 503 (longer than `refresh_deadline`, so it normally never does).
    pub refresh_wait: Duration,
    /// When set, connections read recently are refreshed ahead of time this often.
    pub background_refresh: Option<Duration>,
}

pub struct TokenService {
    /// Names this process in refresh leases.
    instance_id: String,
    /// One lock per connection being refreshed in this process: single flight, so
    /// concurrent readers of one expired token share one upstream refresh. Bounded
    /// and idle-expiring, so the map does not grow with the user count.
    refresh_locks: moka::future::Cache<(String, String), Arc<tokio::sync::Mutex<()>>>,
    /// Connections read in the last hour (only kept when background refresh is on).
    recently_used: moka::future::Cache<(String, String), ()>,
    store: Arc<dyn TokenStore>,
    cipher: Arc<EnvelopeCipher>,
    providers: Arc<Providers>,
    flow_log: Arc<FlowRecorder>,
    policy: TokenPolicy,
}

/// The result of storing a grant.
pub struct Stored {
    /// Whether the row existed before (a re-connect).
    pub replaced: bool,
    /// Whether the provider's answer lacked a refresh token and an earlier one was kept.
    pub kept_refresh_token: bool,
    pub has_refresh_token: bool,
}

impl TokenService {
    pub fn new(
        store: Arc<dyn TokenStore>,
        cipher: Arc<EnvelopeCipher>,
        providers: Arc<Providers>,
        flow_log: Arc<FlowRecorder>,
        policy: TokenPolicy,
    ) -> Self {
        Self {
            instance_id: uuid::Uuid::new_v4().to_string(),
            refresh_locks: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(600))
                .build(),
            recently_used: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            store,
            cipher,
            providers,
            flow_log,
            policy,
        }
    }

    pub fn providers(&self) -> &Arc<Providers> {
        &self.providers
    }

    pub fn flow_log(&self) -> &Arc<FlowRecorder> {
        &self.flow_log
    }

    pub fn provider(&self, name: &str) -> Result<&Arc<OidcProvider>, Error> {
        self.providers
            .get(name)
            .ok_or_else(|| Error::UnknownProvider(name.to_string()))
    }

    fn purge_time(&self, from: DateTime<Utc>, active: bool) -> i64 {
        let keep = if active {
            self.policy.connection_ttl
        } else {
            self.policy.inactive_retention
        };
        from.timestamp() + i64::try_from(keep.as_secs()).unwrap_or(i64::MAX / 4)
    }

    async fn open(&self, row: &Connection) -> Result<TokenSet, Error> {
        let plaintext = self
            .cipher
            .open(&row.user_id, &row.provider, &row.encrypted_tokens)
            .await?;
        serde_json::from_slice(&plaintext)
            .map_err(|_| Error::Internal("stored token set is not valid JSON".into()))
    }

    async fn seal(
        &self,
        user_id: &str,
        provider: &str,
        tokens: &TokenSet,
    ) -> Result<crate::crypto::Envelope, Error> {
        let json = zeroize::Zeroizing::new(
            serde_json::to_vec(tokens)
                .map_err(|e| Error::Internal(format!("serialising tokens: {e}")))?,
        );
        Ok(self.cipher.seal(user_id, provider, &json).await?)
    }

    /// Stores the tokens of a completed grant. The previous row, if any, is replaced
    /// in one conditional write; its refresh token is kept when the provider sent none.
    pub async fn store_grant(
        &self,
        user_id: &str,
        provider: &str,
        tokens: &ProviderTokens,
        user_info: UserInfo,
    ) -> Result<Stored, Error> {
        for _ in 0..WRITE_ATTEMPTS {
            let now = Utc::now();
            let existing = self.store.get(user_id, provider).await?;
            let previous = match &existing {
                // A row we cannot open (another master key, corruption) is replaced by
                // the fresh grant rather than blocking the user from reconnecting.
                Some(row) => self.open(row).await.ok(),
                None => None,
            };
            // An old refresh token belongs to the same account only: never carry one
            // over to a different Google account connected under the same user id.
            let same_account = existing
                .as_ref()
                .is_some_and(|row| row.user_info.sub == user_info.sub);
            let previous = previous.filter(|_| same_account);
            let set = TokenSet::from_provider(tokens, previous.as_ref(), now);
            let kept_refresh_token = tokens.refresh_token.is_none() && set.refresh_token.is_some();
            let has_refresh_token = set.refresh_token.is_some();
            let envelope = self.seal(user_id, provider, &set).await?;
            let row = Connection {
                user_id: user_id.to_string(),
                provider: provider.to_string(),
                email: user_info.email.clone(),
                encrypted_tokens: envelope,
                user_info: user_info.clone(),
                created_at: existing.as_ref().map_or(now, |r| r.created_at),
                updated_at: now,
                last_used: now,
                access_token_expires_at: set.expires_at,
                expires_at: self.purge_time(now, true),
                // Without a refresh token the row still serves its access token until
                // it expires; the token API then asks for reauthorization.
                is_active: true,
                version: existing.as_ref().map_or(1, |r| r.version + 1),
                refresh_lease: None,
            };
            match self
                .store
                .put(&row, existing.as_ref().map(|r| r.version))
                .await
            {
                Ok(()) => {
                    return Ok(Stored {
                        replaced: existing.is_some(),
                        kept_refresh_token,
                        has_refresh_token,
                    });
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict)
    }

    /// A valid access token for `user_id` at `provider`, valid for at least the
    /// refresh margin: refreshed first when it is not.
    pub async fn valid_token(
        &self,
        user_id: &str,
        provider_name: &str,
        client: &ClientInfo,
    ) -> Result<IssuedToken, Error> {
        let provider = self.provider(provider_name)?;
        if self.policy.background_refresh.is_some() {
            self.recently_used
                .insert((user_id.to_string(), provider_name.to_string()), ())
                .await;
        }
        self.token_valid_for(provider, user_id, client, self.policy.refresh_margin)
            .await
    }

    /// Refreshes, ahead of time, the connections read in the last hour whose token
    /// would fall inside the margin before the next pass; run every `every` when
    /// `AXNT_BACKGROUND_REFRESH_SECS` is set. Readers then rarely wait for a refresh.
    pub fn spawn_background_refresh(
        self: &Arc<Self>,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let service = Arc::clone(self);
        tokio::spawn(async move {
            let client = ClientInfo {
                ip_address: None,
                user_agent: Some("axnt-oauth background refresh".into()),
            };
            let ahead = service.policy.refresh_margin + every * 2;
            loop {
                tokio::time::sleep(every).await;
                let keys: Vec<(String, String)> = service
                    .recently_used
                    .iter()
                    .map(|(k, ())| (*k).clone())
                    .collect();
                for (user_id, provider_name) in keys {
                    let Ok(provider) = service.provider(&provider_name) else {
                        continue;
                    };
                    if let Err(e) = service
                        .token_valid_for(provider, &user_id, &client, ahead)
                        .await
                    {
                        tracing::debug!(error = %e, user_id, provider = provider_name, "background refresh skipped");
                        if matches!(e, Error::ReauthorizationRequired | Error::NotConnected) {
                            service
                                .recently_used
                                .invalidate(&(user_id, provider_name))
                                .await;
                        }
                    }
                }
            }
        })
    }

    /// A token valid for at least `margin`, refreshing first when needed.
    async fn token_valid_for(
        &self,
        provider: &OidcProvider,
        user_id: &str,
        client: &ClientInfo,
        margin: Duration,
    ) -> Result<IssuedToken, Error> {
        let provider_name = provider.name();
        if let Fresh::Yes(token) = self.read_fresh(user_id, provider_name, margin).await? {
            return Ok(token);
        }
        // Needs a refresh: one reader per connection in this process does it; the
        // others wait for it and then find a fresh row.
        let key = (user_id.to_string(), provider_name.to_string());
        let lock = self
            .refresh_locks
            .get_with(key, async { Arc::new(tokio::sync::Mutex::new(())) })
            .await;
        let _single_flight = tokio::time::timeout(self.policy.refresh_wait, lock.lock())
            .await
            .map_err(|_| Error::RefreshBusy)?;
        // Across instances: the refresh lease on the row. Whoever takes it refreshes;
        // the others wait for its result and read it back.
        let give_up = tokio::time::Instant::now() + self.policy.refresh_wait;
        loop {
            let (row, tokens) = match self.read_fresh(user_id, provider_name, margin).await? {
                Fresh::Yes(token) => return Ok(token),
                Fresh::No(stale) => *stale,
            };
            let now_ms = Utc::now().timestamp_millis();
            let held_elsewhere = row
                .refresh_lease
                .as_ref()
                .is_some_and(|l| l.owner != self.instance_id && l.until_ms > now_ms);
            let outcome = if held_elsewhere {
                Err(Error::Conflict)
            } else {
                let lease_ms =
                    i64::try_from(self.lease_duration().as_millis()).unwrap_or(i64::MAX / 4);
                let leased = Connection {
                    refresh_lease: Some(RefreshLease {
                        owner: self.instance_id.clone(),
                        until_ms: now_ms + lease_ms,
                    }),
                    version: row.version + 1,
                    ..row.clone()
                };
                match self.store.put(&leased, Some(row.version)).await {
                    Ok(()) => {
                        self.refresh(provider, &leased, &tokens, Utc::now(), client)
                            .await
                    }
                    Err(e) => Err(e.into()),
                }
            };
            match outcome {
                // Another writer (a lease holder, a callback) got there first: wait a
                // little and read what it wrote.
                Err(Error::Conflict) if tokio::time::Instant::now() < give_up => {
                    tokio::time::sleep(jittered(LEASE_POLL)).await;
                }
                Err(Error::Conflict) => return Err(Error::RefreshBusy),
                other => return other,
            }
        }
    }

    /// How long a refresh lease holds: longer than a refresh can take (its deadline),
    /// so a live holder never loses it mid-refresh; a dead holder's lease expires and
    /// is taken over. The holder's final write is conditional on the version its lease
    /// created, so even a stalled holder never overwrites a newer row.
    fn lease_duration(&self) -> Duration {
        self.policy.refresh_deadline + LEASE_SLACK
    }

    /// Reads the row; the token when it is valid beyond the margin (touching
    /// `lastUsed`), else the row and its tokens for a refresh.
    async fn read_fresh(
        &self,
        user_id: &str,
        provider_name: &str,
        margin: Duration,
    ) -> Result<Fresh, Error> {
        let row = self
            .store
            .get(user_id, provider_name)
            .await?
            .ok_or(Error::NotConnected)?;
        if !row.is_active {
            return Err(Error::ReauthorizationRequired);
        }
        let tokens = self.open(&row).await?;
        let now = Utc::now();
        let margin = i64::try_from(margin.as_secs()).unwrap_or(i64::MAX / 4);
        if tokens.expires_at - now.timestamp() > margin {
            self.touch(&row, now).await;
            return Ok(Fresh::Yes(issued(&tokens, &row)));
        }
        Ok(Fresh::No(Box::new((row, tokens))))
    }

    /// Redeems the refresh token, retrying an unavailable provider (5xx, timeout,
    /// connection) with exponential backoff and jitter until the deadline. OAuth
    /// errors are answers, not failures: they are never retried.
    async fn redeem(
        &self,
        provider: &OidcProvider,
        refresh_token: &SecretString,
    ) -> Result<ProviderTokens, ProviderError> {
        let deadline = tokio::time::Instant::now() + self.policy.refresh_deadline;
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = tokio::time::timeout_at(deadline, provider.refresh(refresh_token))
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::Unavailable("refresh deadline passed".into()))
                });
            match attempt {
                Err(ProviderError::Unavailable(reason)) => {
                    let wait = jittered(backoff);
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(ProviderError::Unavailable(reason));
                    }
                    tracing::debug!(%reason, wait_ms = wait.as_millis() as u64, "provider unavailable; retrying the refresh");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                other => return other,
            }
        }
    }

    /// Refreshes `row` (read at `row.version`). A lost write means another reader
    /// refreshed first: the caller re-reads and returns that token.
    async fn refresh(
        &self,
        provider: &OidcProvider,
        row: &Connection,
        tokens: &TokenSet,
        now: DateTime<Utc>,
        client: &ClientInfo,
    ) -> Result<IssuedToken, Error> {
        let flow_id = uuid::Uuid::new_v4().to_string();
        let Some(refresh_token) = tokens
            .refresh_token
            .as_ref()
            .map(|t| SecretString::from(t.clone()))
        else {
            self.deactivate(row, now, "no_refresh_token", &flow_id, client)
                .await?;
            return Err(Error::ReauthorizationRequired);
        };
        let outcome = self.redeem(provider, &refresh_token).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(ProviderError::InvalidGrant) => "invalid_grant",
            Err(ProviderError::Unavailable(_)) => "provider_unavailable",
            Err(_) => "provider_error",
        };
        metrics::counter!("axnt_token_refreshes_total", "provider" => row.provider.clone(), "outcome" => label).increment(1);
        let fresh = match outcome {
            Ok(fresh) => fresh,
            Err(ProviderError::InvalidGrant) => {
                self.deactivate(row, now, "invalid_grant", &flow_id, client)
                    .await?;
                return Err(Error::ReauthorizationRequired);
            }
            Err(e) => {
                let err = Error::from(e);
                self.release_lease(row).await;
                self.flow_log
                    .record(
                        &row.user_id,
                        &flow_id,
                        FlowStep::RefreshFailed,
                        data(json!({ "provider": row.provider, "reason": err.code() })),
                        Some(err.code().to_string()),
                        client,
                    )
                    .await;
                return Err(err);
            }
        };
        let set = TokenSet::from_provider(&fresh, Some(tokens), now);
        let envelope = self.seal(&row.user_id, &row.provider, &set).await?;
        let updated = Connection {
            encrypted_tokens: envelope,
            updated_at: now,
            last_used: now,
            access_token_expires_at: set.expires_at,
            expires_at: self.purge_time(now, true),
            version: row.version + 1,
            refresh_lease: None,
            ..row.clone()
        };
        self.store.put(&updated, Some(row.version)).await?;
        self.flow_log
            .record(
                &row.user_id,
                &flow_id,
                FlowStep::TokenRefreshed,
                data(json!({
                    "provider": row.provider,
                    "rotatedRefreshToken": fresh.refresh_token.is_some(),
                    "accessTokenExpiresAt": set.expires_at,
                })),
                None,
                client,
            )
            .await;
        Ok(issued(&set, &updated))
    }

    /// Gives a lease back after a failed refresh, so the next reader need not wait for
    /// it to expire. Best effort: a lost race means the row moved on anyway.
    async fn release_lease(&self, row: &Connection) {
        let released = Connection {
            refresh_lease: None,
            version: row.version + 1,
            ..row.clone()
        };
        match self.store.put(&released, Some(row.version)).await {
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => {
                tracing::warn!(error = %e, "releasing a refresh lease failed; it expires by itself")
            }
        }
    }

    /// Marks a row whose refresh token is dead inactive (kept for a short retention).
    async fn deactivate(
        &self,
        row: &Connection,
        now: DateTime<Utc>,
        reason: &str,
        flow_id: &str,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        let updated = Connection {
            is_active: false,
            updated_at: now,
            expires_at: self.purge_time(now, false),
            version: row.version + 1,
            refresh_lease: None,
            ..row.clone()
        };
        self.store.put(&updated, Some(row.version)).await?;
        self.flow_log
            .record(
                &row.user_id,
                flow_id,
                FlowStep::RefreshFailed,
                data(json!({ "provider": row.provider, "reason": reason, "isActive": false })),
                Some("reauthorization_required".into()),
                client,
            )
            .await;
        Ok(())
    }

    /// Moves `lastUsed` and the purge time forward, at most once per interval. Best
    /// effort: a lost race means someone else just wrote the row.
    async fn touch(&self, row: &Connection, now: DateTime<Utc>) {
        let interval = chrono::Duration::from_std(self.policy.last_used_interval)
            .unwrap_or(chrono::Duration::MAX);
        if now - row.last_used < interval {
            return;
        }
        let updated = Connection {
            last_used: now,
            expires_at: self.purge_time(now, true),
            version: row.version + 1,
            ..row.clone()
        };
        match self.store.put(&updated, Some(row.version)).await {
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => tracing::warn!(error = %e, "updating lastUsed failed"),
        }
    }

    pub async fn connections(&self, user_id: &str) -> Result<Vec<ConnectionSummary>, Error> {
        Ok(self
            .store
            .list(user_id)
            .await?
            .into_iter()
            .map(|row| ConnectionSummary {
                access_token_expires_at: DateTime::from_timestamp(row.access_token_expires_at, 0)
                    .unwrap_or_default(),
                provider: row.provider,
                email: row.email,
                user_info: row.user_info,
                is_active: row.is_active,
                created_at: row.created_at,
                updated_at: row.updated_at,
                last_used: row.last_used,
            })
            .collect())
    }

    /// Revokes the grant at the provider (best effort) and removes the row.
    /// Returns false when there was no row.
    pub async fn disconnect(
        &self,
        user_id: &str,
        provider_name: &str,
        client: &ClientInfo,
    ) -> Result<bool, Error> {
        let provider = self.provider(provider_name)?;
        let flow_id = uuid::Uuid::new_v4().to_string();
        for _ in 0..WRITE_ATTEMPTS {
            let Some(row) = self.store.get(user_id, provider_name).await? else {
                return Ok(false);
            };
            let revoked = match self.open(&row).await {
                Ok(tokens) => {
                    // Revoking the refresh token revokes the grant (and its access tokens).
                    let token = tokens
                        .refresh_token
                        .clone()
                        .unwrap_or_else(|| tokens.access_token.clone());
                    match provider.revoke(&SecretString::from(token)).await {
                        Ok(sent) => sent,
                        Err(e) => {
                            tracing::warn!(error = %e, user_id, provider = provider_name, "revocation at the provider failed; removing the row anyway");
                            false
                        }
                    }
                }
                Err(_) => false,
            };
            if revoked {
                let d = data(json!({ "provider": provider_name }));
                self.flow_log
                    .record(user_id, &flow_id, FlowStep::Revoked, d, None, client)
                    .await;
            }
            match self.store.delete(user_id, provider_name, row.version).await {
                Ok(_) => {
                    let d =
                        data(json!({ "provider": provider_name, "revokedAtProvider": revoked }));
                    self.flow_log
                        .record(user_id, &flow_id, FlowStep::Deleted, d, None, client)
                        .await;
                    return Ok(true);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict)
    }
}

/// A row read for a token request.
enum Fresh {
    /// Valid beyond the margin.
    Yes(IssuedToken),
    /// Needs a refresh.
    No(Box<(Connection, TokenSet)>),
}

/// `base` plus up to 50% random jitter, so retries from many readers spread out.
fn jittered(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    crate::crypto::fill_random(&mut byte);
    base + base.mul_f64(f64::from(byte[0]) / 510.0)
}

fn issued(tokens: &TokenSet, row: &Connection) -> IssuedToken {
    IssuedToken {
        access_token: SecretString::from(tokens.access_token.clone()),
        token_type: tokens.token_type.clone(),
        expires_at: DateTime::from_timestamp(tokens.expires_at, 0).unwrap_or_default(),
        scope: tokens.scope.clone(),
        email: row.email.clone(),
    }
}

/// A JSON object literal as flow-log data.
pub fn data(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}
