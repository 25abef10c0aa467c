//! The token service: what a stored connection means, independent of where it is
//! stored. Storing a new grant, handing out a valid access token (refreshing first
//! when needed, through [`refresh`]), listing and removing connections.
//!
//! Token-changing writes are conditional on the row's `version` (or, for a refresh, on
//! holding the row's refresh lease), so a writer that lost a race never overwrites a
//! newer row. `lastUsed` moves by partial updates that leave `version` alone.

mod cache;
mod keepalive;
pub(crate) mod refresh;
mod risc;
pub(crate) mod token_set;
mod user_id;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::crypto::EnvelopeCipher;
use crate::error::Error;
use crate::events::{EventRules, EventType};
use crate::jobs::{self, Jobs, Schedule};
use crate::oauth::provider::{OidcProvider, ProviderError, ProviderTokens, Providers};
use crate::store::flow_log::ClientInfo;
use crate::store::{
    Connection, FlowRecorder, FlowStep, GrantLedger, PendingGrant, PendingRevocation, RefreshState,
    ReplacedAccount, ScanCursor, StoreError, TokenStore, UserInfo,
};

use crate::oauth::grant::{self, Cause, GrantRules};
pub(crate) use keepalive::KeepAlive;
pub(crate) use refresh::{RefreshReuse, Refresher, TokenEndpoint};
pub(crate) use risc::SECURITY_EVENT_OUTCOMES;
pub(crate) use token_set::{IssuedToken, TokenSet};
pub(crate) use user_id::UserId;

/// A lost conditional write is retried this many times against the re-read row.
const WRITE_ATTEMPTS: usize = 5;
/// `GET /v1/connections` reads at most this many rows per page (Scan on DynamoDB costs
/// read capacity for every row read, matching or not).
pub(crate) const MAX_SCANNED_PER_PAGE: usize = 2_000;

/// The events a new grant's row makes, stored with it: `connection.created` (no row
/// before) or `connection.reauthorized` (another account's grant included), then
/// `connection.scopes_changed` when the same account's granted scopes changed.
fn grant_events(
    rules: &EventRules,
    before: Option<&Connection>,
    row: &Connection,
) -> Vec<crate::store::Event> {
    let (user_id, provider) = (row.user_id.as_str(), row.provider.as_str());
    let mut details = json!({
        "sub": row.user_info.sub,
        "email": row.email,
        "grantedScopes": row.grant.granted_scopes,
        "requestedScopes": row.grant.requested_scopes,
    });
    let Some(before) = before else {
        return vec![rules.make(EventType::Created, user_id, provider, details)];
    };
    let account_changed = before.user_info.sub != row.user_info.sub;
    details["accountChanged"] = json!(account_changed);
    details["wasActive"] = json!(before.is_active);
    if account_changed {
        details["previousSub"] = json!(before.user_info.sub);
        details["previousEmail"] = json!(before.email);
    }
    let mut events = vec![rules.make(EventType::Reauthorized, user_id, provider, details)];
    if !account_changed
        && before.is_active
        && let Some(changed) = scopes_change(&before.grant, &row.grant)
    {
        events.push(rules.make(EventType::ScopesChanged, user_id, provider, changed));
    }
    events
}

/// What changed between two ledgers' granted scopes, if anything: the
/// `connection.scopes_changed` details.
fn scopes_change(before: &GrantLedger, after: &GrantLedger) -> Option<serde_json::Value> {
    // A row from before the ledger existed knows no scopes: nothing to compare.
    if before.granted_scopes.is_empty() {
        return None;
    }
    let added = grant::missing(&after.granted_scopes, &before.granted_scopes);
    let removed = grant::missing(&before.granted_scopes, &after.granted_scopes);
    if added.is_empty() && removed.is_empty() {
        return None;
    }
    Some(json!({
        "grantedScopes": after.granted_scopes,
        "previousGrantedScopes": before.granted_scopes,
        "addedScopes": added,
        "removedScopes": removed,
    }))
}

/// A connection as listed: never a token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ConnectionSummary {
    pub(crate) provider: String,
    pub(crate) email: Option<String>,
    pub(crate) user_info: UserInfo,
    pub(crate) is_active: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) last_used: DateTime<Utc>,
    pub(crate) access_token_expires_at: DateTime<Utc>,
    /// The account this connection held before another account's grant replaced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) previous_account: Option<ReplacedAccount>,
    /// Scopes the connect sessions asked for (the provider's defaults included).
    pub(crate) requested_scopes: Vec<String>,
    /// Scopes the provider says the grant holds (from its last token response).
    pub(crate) granted_scopes: Vec<String>,
    /// Requested scopes the grant does not hold (the user unticked them at consent).
    pub(crate) missing_scopes: Vec<String>,
    /// Whether the grant holds fewer scopes than were requested.
    pub(crate) partial_grant: bool,
    /// When `grantedScopes` last changed.
    pub(crate) scopes_changed_at: Option<DateTime<Utc>>,
    /// When the user last consented (connected).
    pub(crate) consented_at: Option<DateTime<Utc>>,
    /// When a refresh last succeeded.
    pub(crate) last_refreshed_at: Option<DateTime<Utc>>,
    /// `ok`, `at_risk` (predicted to end within two days, or refreshes failing) or
    /// `dead` (the user must connect again).
    pub(crate) health: grant::Health,
    /// When the grant is predicted to end, while it is alive.
    pub(crate) predicted_expiry: Option<DateTime<Utc>>,
    /// Which clock `predictedExpiry` is.
    pub(crate) predicted_expiry_reason: Option<grant::ExpiryReason>,
    /// Refresh tokens this service had Google mint for this Google account and OAuth
    /// client, across user ids (the newest, up to Google's limit of live ones).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) account_grants: Option<usize>,
    /// The account nears Google's limit of live refresh tokens per client (from 90 %):
    /// each new connection of it ends the oldest grant.
    pub(crate) grant_limit_warning: bool,
    /// Why the grant is dead (see docs/grants.md, "How Google grants end").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cause: Option<&'static str>,
    /// What the application and its user should do about `cause`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) remedy: Option<&'static str>,
}

impl ConnectionSummary {
    /// The summary of `row` at `now`: never a token.
    pub(crate) fn of(row: Connection, rules: GrantRules, now: DateTime<Utc>) -> Self {
        let forecast = grant::forecast(&row, rules, now);
        let cause = (!row.is_active).then(|| {
            row.refresh
                .inactive_cause
                .as_deref()
                .and_then(Cause::from_code)
                .unwrap_or(Cause::UnknownInvalidGrant)
        });
        let missing_scopes = grant::missing(&row.grant.requested_scopes, &row.grant.granted_scopes);
        // Rows from before the ledger name no scopes: nothing is known to be missing.
        let partial_grant = !row.grant.granted_scopes.is_empty() && !missing_scopes.is_empty();
        Self {
            access_token_expires_at: DateTime::from_timestamp(row.access_token_expires_at, 0)
                .unwrap_or_default(),
            provider: row.provider,
            email: row.email,
            user_info: row.user_info,
            is_active: row.is_active,
            created_at: row.created_at,
            updated_at: row.updated_at,
            last_used: row.last_used,
            previous_account: row.replaced_account,
            missing_scopes: if partial_grant {
                missing_scopes
            } else {
                Vec::new()
            },
            partial_grant,
            requested_scopes: row.grant.requested_scopes,
            granted_scopes: row.grant.granted_scopes,
            scopes_changed_at: row.grant.scopes_changed_at,
            consented_at: row.grant.consented_at,
            last_refreshed_at: row.grant.last_refreshed_at,
            health: forecast.health,
            predicted_expiry: forecast.predicted_expiry,
            predicted_expiry_reason: forecast.reason,
            account_grants: None,
            grant_limit_warning: false,
            cause: cause.map(Cause::code),
            remedy: cause.map(Cause::remedy),
        }
    }
}

/// Timing rules for rows and tokens.
#[derive(Debug, Clone)]
pub(crate) struct TokenPolicy {
    /// A token handed out stays valid at least this long.
    pub(crate) refresh_margin: Duration,
    /// `lastUsed` (and the row's purge time) is written at most this often.
    pub(crate) last_used_interval: Duration,
    /// An active row's purge time after its last refresh or use.
    pub(crate) connection_ttl: Duration,
    /// An inactive row's purge time after it went inactive.
    pub(crate) inactive_retention: Duration,
    /// A refresh, retries included, gives up after this long.
    pub(crate) refresh_deadline: Duration,
    /// A reader waits this long for another reader's refresh of the same connection
    /// before answering 503 (longer than `refresh_deadline`, so it normally never does).
    pub(crate) refresh_wait: Duration,
    /// When set, connections read recently are refreshed ahead of time this often.
    pub(crate) background_refresh: Option<Duration>,
    /// How long a refresh lease holds before it must be extended.
    pub(crate) lease_ttl: Duration,
    /// How long a lapsed lease that was never given back is held for its attempt
    /// before another may take it over (see [`refresh::takeover_grace`]): a holder that
    /// died blocks its connection's refresh for at most `lease_ttl` + this.
    pub(crate) takeover_grace: Duration,
    /// After a failed refresh, no new attempt for this long (0: none).
    pub(crate) refresh_cooldown: Duration,
    /// Consecutive failed refreshes that open a provider's circuit (0: never).
    pub(crate) circuit_failures: u32,
    /// How long an open circuit stays open.
    pub(crate) circuit_open: Duration,
    /// How long an opened token is kept in memory (0: not at all).
    pub(crate) token_cache: Duration,
    /// What decides how grants end (the publishing status).
    pub(crate) grant_rules: GrantRules,
    /// How lifecycle events are made and kept.
    pub(crate) events: EventRules,
}

impl TokenPolicy {
    /// Whether `lastUsed` (epoch seconds) is due to be written again at `now`: the one
    /// rule for reads from the store and from the cache.
    pub(crate) fn last_used_due(&self, last_used: i64, now: i64) -> bool {
        let interval = i64::try_from(self.last_used_interval.as_secs()).unwrap_or(i64::MAX);
        now.saturating_sub(last_used) >= interval
    }

    /// A row's purge time (`expiresAt`) written at `from`.
    fn purge_time(&self, from: DateTime<Utc>, active: bool) -> i64 {
        let keep = if active {
            self.connection_ttl
        } else {
            self.inactive_retention
        };
        from.timestamp()
            .saturating_add(i64::try_from(keep.as_secs()).unwrap_or(i64::MAX))
    }

    /// The policy the settings give: refresh timing from `refresh`, row lifetimes from
    /// `retention`, a lease that always outlasts one provider call, and `events` (whose
    /// feed delay depends on the store: see [`EventRules::new`]).
    pub(crate) fn new(settings: &Settings, events: EventRules) -> Self {
        let refresh = &settings.refresh;
        let retention = &settings.retention;
        Self {
            refresh_margin: refresh.margin,
            refresh_deadline: refresh.deadline,
            refresh_wait: refresh.deadline.saturating_add(Duration::from_secs(5)),
            background_refresh: refresh.background,
            last_used_interval: retention.last_used_interval,
            connection_ttl: retention.connection_ttl,
            inactive_retention: retention.inactive_retention,
            // One provider call always fits in a lease; the holder extends it every
            // third of this while it works.
            lease_ttl: settings
                .provider
                .timeout
                .saturating_add(Duration::from_secs(5)),
            takeover_grace: refresh::takeover_grace(
                match settings.backend {
                    crate::config::Backend::Aws => settings.aws.operation_timeout,
                    crate::config::Backend::Embedded => crate::store::embedded::BUSY_TIMEOUT,
                },
                settings.provider.timeout,
            ),
            refresh_cooldown: refresh.cooldown,
            circuit_failures: refresh.circuit_failures,
            circuit_open: refresh.circuit_open,
            token_cache: refresh.token_cache,
            grant_rules: GrantRules {
                publishing: settings.provider.publishing_status,
                grant_limit: settings.provider.grant_limit,
            },
            events,
        }
    }
}

pub(crate) struct TokenService {
    /// Single-flight refreshes under the cross-instance lease.
    refresher: Arc<Refresher>,
    /// Connections read in the last hour (only kept when background refresh is on).
    recently_used: moka::future::Cache<(String, String), ()>,
    store: Arc<dyn TokenStore>,
    cipher: Arc<EnvelopeCipher>,
    providers: Arc<Providers>,
    flow_log: Arc<FlowRecorder>,
    policy: TokenPolicy,
    /// Work that must not stop halfway when the request that started it goes away (a
    /// callback's code exchange and store, a security event's grant endings): owned
    /// tasks that shutdown waits for, as it waits for refreshes.
    owned: tokio_util::task::TaskTracker,
    /// Held while a security event scans the tokens table: one scan at a time.
    security_scans: tokio::sync::Mutex<()>,
    /// The `jti` marks (and their attempts) of security events being worked on.
    security_marks: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

/// A page of [`TokenService::connections_across`]: `(userId, connection)` pairs and
/// where the next page starts.
pub(crate) type AcrossPage = (Vec<(String, ConnectionSummary)>, Option<ScanCursor>);

/// The account of a connection ([`TokenService::connected_account`]).
pub(crate) struct ConnectedAccount {
    pub(crate) user_info: UserInfo,
    pub(crate) is_active: bool,
}

/// The result of storing a grant.
pub(crate) struct Stored {
    /// Whether the row existed before (a re-connect).
    pub(crate) replaced: bool,
    /// Whether the provider's answer lacked a refresh token and an earlier one was kept.
    pub(crate) kept_refresh_token: bool,
    pub(crate) has_refresh_token: bool,
    /// Set when the grant is another account's than the row's before (another `sub`).
    pub(crate) account_changed: Option<ReplacedAccount>,
    /// The connection's scope ledger as stored.
    pub(crate) grant: GrantLedger,
    /// Whether the granted scopes differ from the connection's before.
    pub(crate) scopes_changed: bool,
    /// Refresh tokens minted for this account and client as far as this service knows
    /// (the newest up to Google's limit), when this grant minted one and the count was
    /// stored.
    pub(crate) account_grants: Option<usize>,
    /// Whether the account is near Google's limit of live refresh tokens.
    pub(crate) grant_limit_warning: bool,
}

/// A grant held for confirmation: until when, and the code that confirms it (for the
/// flow's return redirect only: never logged, never stored in clear).
pub(crate) struct Held {
    pub(crate) deadline: DateTime<Utc>,
    pub(crate) code: SecretString,
}

/// Random bytes in a confirmation code (192 bits).
const CONFIRMATION_CODE_BYTES: usize = 24;

/// Why a held grant was discarded at a confirm: the `reason` label of
/// `axnt_held_grants_discarded_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Discard {
    /// The confirm named another user than the one the flow was started for.
    OtherUser,
    /// The confirm's code was not the flow's.
    WrongCode,
    /// The grant waited longer than the confirmation window.
    Expired,
}

impl Discard {
    pub(crate) const ALL: [Self; 3] = [Self::OtherUser, Self::WrongCode, Self::Expired];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::OtherUser => "other_user",
            Self::WrongCode => "wrong_code",
            Self::Expired => "expired",
        }
    }
}

/// A confirmed pending grant, and what storing it did.
pub(crate) struct Confirmed {
    pub(crate) grant: PendingGrant,
    pub(crate) stored: Stored,
}

impl TokenService {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        cipher: Arc<EnvelopeCipher>,
        providers: Arc<Providers>,
        flow_log: Arc<FlowRecorder>,
        policy: TokenPolicy,
    ) -> Self {
        Self {
            refresher: Arc::new(Refresher::new(
                Arc::clone(&store),
                Arc::clone(&cipher),
                Arc::clone(&flow_log),
                policy.clone(),
            )),
            recently_used: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            store,
            cipher,
            providers,
            flow_log,
            policy,
            owned: tokio_util::task::TaskTracker::new(),
            security_scans: tokio::sync::Mutex::new(()),
            security_marks: std::sync::Mutex::default(),
        }
    }

    /// Runs `work` as an owned task: it goes on to its end when the caller stops
    /// waiting for it (a browser that left, a request timeout), and shutdown waits for
    /// it. The caller may await the handle for its result.
    pub(crate) fn spawn_owned<F>(&self, work: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.owned.spawn(work)
    }

    pub(crate) fn provider(&self, name: &str) -> Result<&Arc<OidcProvider>, Error> {
        self.providers
            .get(name)
            .ok_or_else(|| Error::UnknownProvider(name.to_string()))
    }

    /// Waits (at most `within`) for owned tasks and refreshes in flight to finish: they
    /// hold tokens the provider issued that must reach the store. Returns whether all
    /// finished.
    pub(crate) async fn drain(&self, within: Duration) -> bool {
        let started = tokio::time::Instant::now();
        self.owned.close();
        let owned = tokio::time::timeout(within, self.owned.wait())
            .await
            .is_ok();
        if !owned {
            self.forget_unfinished_security_events().await;
        }
        let refreshes = self
            .refresher
            .drain(within.saturating_sub(started.elapsed()))
            .await;
        owned && refreshes
    }

    /// Stores the tokens of a completed grant. The previous row, if any, is replaced
    /// in one conditional write; its refresh token is kept when the provider sent none
    /// and the grant is the same account's. A grant of a different account (another
    /// `sub`) is recorded on the row as `replacedAccount`.
    ///
    /// `requested` are the scopes the flow asked for: added to what the connection asked
    /// for before (same account), as Google's incremental authorization adds them to the
    /// grant.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    pub(crate) async fn store_grant(
        &self,
        user_id: &str,
        provider: &str,
        fresh: &TokenSet,
        user_info: UserInfo,
        requested: &[String],
    ) -> Result<Stored, Error> {
        for _ in 0..WRITE_ATTEMPTS {
            let now = Utc::now();
            let existing = self.store.get(user_id, provider).await?;
            // An old refresh token is carried over only from a live grant of the same
            // account: never to a different Google account connected under the same
            // user id, and never from an inactive row (its refresh token is known dead).
            let previous = match &existing {
                // A row we cannot open (another master key, corruption) is replaced by
                // the fresh grant rather than blocking the user from reconnecting.
                Some(row) if row.is_active && row.user_info.sub == user_info.sub => {
                    TokenSet::open(&self.cipher, row).await.ok()
                }
                _ => None,
            };
            let mut set = fresh.clone();
            set.inherit(previous.as_ref());
            let kept_refresh_token = fresh.refresh_token.is_none() && set.refresh_token.is_some();
            let has_refresh_token = set.refresh_token.is_some();
            let account_changed = existing
                .as_ref()
                .filter(|row| row.user_info.sub != user_info.sub)
                .map(|row| ReplacedAccount {
                    sub: row.user_info.sub.clone(),
                    email: row.email.clone(),
                    replaced_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                });
            set.requested_scopes.clear();
            let same_account = existing
                .as_ref()
                .filter(|row| row.is_active && row.user_info.sub == user_info.sub);
            let grant = ledger_after_consent(
                same_account.map(|row| &row.grant),
                requested,
                &set,
                fresh.refresh_token.is_some(),
                now,
            );
            let scopes_changed = same_account
                .is_some_and(|row| row.grant.scopes_changed_at != grant.scopes_changed_at);
            let envelope = set.seal(&self.cipher, user_id, provider).await?;
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
                expires_at: self.policy.purge_time(now, true),
                // Without a refresh token the row still serves its access token until
                // it expires; the token API then asks for reauthorization.
                is_active: true,
                version: existing.as_ref().map_or(1, |r| r.version + 1),
                // A new grant ends any refresh in flight for the old one: that
                // attempt's write then fails its lease condition.
                refresh: RefreshState::default(),
                replaced_account: account_changed
                    .clone()
                    .or_else(|| existing.as_ref().and_then(|r| r.replaced_account.clone())),
                grant: grant.clone(),
            };
            let events = grant_events(&self.policy.events, existing.as_ref(), &row);
            match self
                .store
                .put(&row, existing.as_ref().map(|r| r.version), &events)
                .await
            {
                Ok(()) => {
                    self.refresher.cache.invalidate(user_id, provider);
                    let account_grants = match fresh.refresh_token {
                        Some(_) => self.record_mint(provider, &user_info.sub, now).await,
                        None => None,
                    };
                    let grant_limit_warning =
                        account_grants.is_some_and(|n| n >= self.policy.grant_rules.warn_at());
                    if grant_limit_warning {
                        metrics::counter!("axnt_account_grant_limit_warnings_total", "provider" => provider.to_string())
                            .increment(1);
                        tracing::warn!(
                            user_id,
                            provider,
                            sub = %user_info.sub,
                            minted = account_grants,
                            limit = self.policy.grant_rules.grant_limit,
                            "this Google account nears the limit of live refresh tokens for this client; the oldest will be ended"
                        );
                    }
                    if let Some(replaced) = &account_changed {
                        tracing::warn!(
                            user_id,
                            provider,
                            previous_sub = %replaced.sub,
                            sub = %user_info.sub,
                            "a grant of another account replaced the connection"
                        );
                    }
                    return Ok(Stored {
                        replaced: existing.is_some(),
                        kept_refresh_token,
                        has_refresh_token,
                        account_changed,
                        grant,
                        scopes_changed,
                        account_grants,
                        grant_limit_warning,
                    });
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict)
    }

    /// The account connected for `user_id` at `provider`, and whether its grant is
    /// alive, if there is a connection.
    pub(crate) async fn connected_account(
        &self,
        user_id: &str,
        provider: &str,
    ) -> Result<Option<ConnectedAccount>, Error> {
        Ok(self
            .store
            .get(user_id, provider)
            .await?
            .map(|row| ConnectedAccount {
                user_info: row.user_info,
                is_active: row.is_active,
            }))
    }

    /// Records that the provider minted a refresh token for `sub` at `now`; returns how
    /// many this service knows of for the account (the newest, up to the limit), or
    /// `None` when the record could not be written (logged; a grant is never refused
    /// for it).
    async fn record_mint(&self, provider: &str, sub: &str, now: DateTime<Utc>) -> Option<usize> {
        let keep = self.policy.grant_rules.grant_limit as usize;
        for _ in 0..WRITE_ATTEMPTS {
            let current = match self.store.account_grants(provider, sub).await {
                Ok(current) => current,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the account's grant count failed");
                    return None;
                }
            };
            let expected = current.as_ref().map(|c| c.version);
            let mut record = current.unwrap_or_else(|| crate::store::AccountGrants {
                provider: provider.to_string(),
                sub: sub.to_string(),
                ..Default::default()
            });
            record.mints.push(now.timestamp_millis());
            let excess = record.mints.len().saturating_sub(keep);
            record.mints.drain(..excess);
            record.version += 1;
            match self.store.put_account_grants(&record, expected).await {
                Ok(()) => return Some(record.mints.len()),
                Err(StoreError::Conflict) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "counting the account's grants failed");
                    return None;
                }
            }
        }
        None
    }

    /// Marks a connect link's flow as started; false when it was before (single-use
    /// links). The mark is kept until the link's own expiry, and names this call, so a
    /// write the SDK retries after a lost answer finds its own mark: a first opening
    /// is never taken for a second.
    pub(crate) async fn mark_flow_started(
        &self,
        flow_id: &str,
        link_expires_at: i64,
    ) -> Result<bool, Error> {
        let attempt = uuid::Uuid::new_v4().to_string();
        Ok(self
            .store
            .mark_once(flow_id, &attempt, link_expires_at)
            .await?)
    }

    /// Holds a completed grant until the application confirms its flow (confirmation
    /// mode): sealed as the flow's pending grant together with a new one-time
    /// confirmation code, never handed out, refused after `within`. The connection's
    /// row, if any, stays as it is. Returns the deadline and the code, which only the
    /// flow's return redirect may carry.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider, flow_id = %flow_id))]
    pub(crate) async fn hold_grant(
        &self,
        flow_id: &str,
        user_id: &str,
        provider: &str,
        fresh: &TokenSet,
        user_info: UserInfo,
        within: Duration,
    ) -> Result<Held, Error> {
        let now = Utc::now();
        let deadline = chrono::TimeDelta::from_std(within)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let code = crate::crypto::random_token(CONFIRMATION_CODE_BYTES);
        let mut sealed = fresh.clone();
        sealed.confirmation_code = Some(code.clone());
        let grant = PendingGrant {
            flow_id: flow_id.to_string(),
            user_id: user_id.to_string(),
            provider: provider.to_string(),
            encrypted_tokens: sealed
                .seal_pending(&self.cipher, user_id, provider, flow_id)
                .await?,
            user_info,
            created_at: now,
            expires_at: deadline.timestamp(),
        };
        self.store.put_pending(&grant).await?;
        Ok(Held {
            deadline,
            code: SecretString::from(code),
        })
    }

    /// Turns a flow's pending grant into the connection, for the application's user
    /// `user_id` presenting the flow's confirmation code. The grant is opened before
    /// it is taken, so a key service that fails now leaves it held for a retried
    /// confirm; it is then taken (so it is confirmed at most once) and stored as
    /// [`store_grant`](Self::store_grant) stores any grant, and put back when that fails
    /// for a passing reason. A confirm naming another user or a wrong code discards the
    /// grant (404, counted): the flow was completed by someone the application's user
    /// is not. A caller limited to other providers (`may_use`) is refused, the grant
    /// left as it is.
    #[tracing::instrument(skip_all, fields(flow_id = %flow_id))]
    pub(crate) async fn confirm_grant(
        &self,
        flow_id: &str,
        user_id: Option<&str>,
        code: Option<&SecretString>,
        client: &ClientInfo,
        may_use: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Confirmed, Error> {
        let grant = self
            .store
            .get_pending(flow_id)
            .await?
            .ok_or(Error::ConfirmationNotFound)?;
        if !may_use(&grant.provider) {
            return Err(Error::provider_not_allowed(&grant.provider));
        }
        if user_id != Some(grant.user_id.as_str()) {
            // The application says another of its users started this flow: the grant
            // is not theirs to keep.
            return Err(self
                .discard(
                    &grant,
                    Discard::OtherUser,
                    client,
                    Error::ConfirmationNotFound,
                )
                .await);
        }
        if grant.expires_at < Utc::now().timestamp() {
            return Err(self
                .discard(&grant, Discard::Expired, client, Error::ConfirmationExpired)
                .await);
        }
        let Some(code) = code else {
            return Err(self
                .discard(
                    &grant,
                    Discard::WrongCode,
                    client,
                    Error::ConfirmationNotFound,
                )
                .await);
        };
        let mut fresh = TokenSet::open_pending(&self.cipher, &grant).await?;
        let expected = fresh.confirmation_code.take();
        let presented = code.expose_secret().as_bytes();
        // Constant time: the comparison must not tell how much of a guess was right.
        let right = expected.as_deref().is_some_and(|expected| {
            expected.len() == presented.len()
                && bool::from(subtle::ConstantTimeEq::ct_eq(
                    expected.as_bytes(),
                    presented,
                ))
        });
        if !right {
            return Err(self
                .discard(
                    &grant,
                    Discard::WrongCode,
                    client,
                    Error::ConfirmationNotFound,
                )
                .await);
        }
        // Of two confirms with the right code, one takes it and stores it.
        let grant = self
            .store
            .take_pending(flow_id)
            .await?
            .ok_or(Error::ConfirmationNotFound)?;
        match self
            .store_grant(
                &grant.user_id,
                &grant.provider,
                &fresh,
                grant.user_info.clone(),
                &fresh.requested_scopes,
            )
            .await
        {
            Ok(stored) => Ok(Confirmed { grant, stored }),
            Err(e) => {
                if let Err(put_back) = self.store.put_pending(&grant).await {
                    tracing::warn!(flow_id, error = %put_back, "a pending grant could not be put back after a failed confirm");
                }
                Err(e)
            }
        }
    }

    /// Removes a held grant a confirm was refused for, counts and logs why (never the
    /// code), and hands `error` back. A grant another call took meanwhile is gone
    /// already.
    async fn discard(
        &self,
        grant: &PendingGrant,
        why: Discard,
        client: &ClientInfo,
        error: Error,
    ) -> Error {
        if let Err(e) = self.store.take_pending(&grant.flow_id).await {
            tracing::warn!(flow_id = grant.flow_id, error = %e, "a refused pending grant could not be removed; it expires unconfirmed");
        }
        metrics::counter!("axnt_held_grants_discarded_total", "reason" => why.label()).increment(1);
        tracing::warn!(
            flow_id = grant.flow_id,
            reason = why.label(),
            "a confirm was refused; the held grant is discarded"
        );
        self.flow_log
            .flow(&grant.user_id, &grant.flow_id, &grant.provider, client)
            .step_failed(
                FlowStep::Confirmed,
                json!({ "discarded": true, "reason": why.label() }),
                error.code(),
            )
            .await;
        error
    }

    /// A valid access token for `user_id` at `provider`, valid for at least the
    /// refresh margin: refreshed first when it is not.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider_name))]
    pub(crate) async fn valid_token(
        &self,
        user_id: &str,
        provider_name: &str,
        client: &ClientInfo,
    ) -> Result<IssuedToken, Error> {
        let provider = match self.provider(provider_name) {
            Ok(provider) => provider,
            Err(e) => {
                // Never the caller's name as a label: it would add a series per guess.
                count_read("unknown", Err(&e));
                return Err(e);
            }
        };
        if self.policy.background_refresh.is_some() {
            self.recently_used
                .insert((user_id.to_string(), provider_name.to_string()), ())
                .await;
        }
        let read = self
            .token_valid_for(provider, user_id, client, self.policy.refresh_margin)
            .await;
        count_read(provider.name(), read.as_ref());
        read
    }

    /// Refreshes, ahead of time, the connections read in the last hour whose token
    /// would fall inside the margin before the next pass; run every `every` when
    /// `AXNT_BACKGROUND_REFRESH_SECS` is set. Readers then rarely wait for a refresh.
    pub(crate) fn schedule_background_refresh(self: &Arc<Self>, jobs: &Jobs, every: Duration) {
        let service = Arc::clone(self);
        jobs.run(
            "background refresh",
            Schedule::every(every),
            jobs::from_fn(move |stop| {
                let service = Arc::clone(&service);
                async move { service.refresh_recently_used(every, &stop).await }
            }),
        );
    }

    /// One pass of the background refresh, ended early by `stop`.
    async fn refresh_recently_used(&self, every: Duration, stop: &CancellationToken) {
        let client = ClientInfo {
            ip_address: None,
            user_agent: Some("axnt-oauth background refresh".into()),
        };
        let ahead = self.policy.refresh_margin + every * 2;
        let keys: Vec<(String, String)> = self
            .recently_used
            .iter()
            .map(|(k, ())| (*k).clone())
            .collect();
        for (user_id, provider_name) in keys {
            if stop.is_cancelled() {
                return;
            }
            let Ok(provider) = self.provider(&provider_name) else {
                continue;
            };
            if let Err(e) = self
                .token_valid_for(provider, &user_id, &client, ahead)
                .await
            {
                tracing::debug!(error = %e, user_id, provider = provider_name, "background refresh skipped");
                if matches!(
                    e,
                    Error::ReauthorizationRequired { .. } | Error::NotConnected
                ) {
                    self.recently_used
                        .invalidate(&(user_id, provider_name))
                        .await;
                }
            }
        }
    }

    /// A token valid for at least `margin` (as `token_set::is_fresh` bounds it),
    /// refreshing first when needed. Concurrent reads of one connection in this
    /// process share one store read (and one refresh): see [`refresh`].
    async fn token_valid_for(
        &self,
        provider: &Arc<OidcProvider>,
        user_id: &str,
        client: &ClientInfo,
        margin: Duration,
    ) -> Result<IssuedToken, Error> {
        let endpoint: Arc<dyn TokenEndpoint> = Arc::clone(provider) as Arc<dyn TokenEndpoint>;
        self.refresher
            .obtain(endpoint, user_id, provider.name(), margin, client)
            .await
    }

    #[tracing::instrument(skip_all, fields(user_id = %user_id))]
    pub(crate) async fn connections(&self, user_id: &str) -> Result<Vec<ConnectionSummary>, Error> {
        let now = Utc::now();
        let mut out = Vec::new();
        for row in self.store.list(user_id).await? {
            let minted = match self
                .store
                .account_grants(&row.provider, &row.user_info.sub)
                .await
            {
                Ok(found) => found.map(|a| a.mints.len()),
                Err(e) => {
                    tracing::warn!(error = %e, "reading an account's grant count failed");
                    None
                }
            };
            let mut summary = ConnectionSummary::of(row, self.policy.grant_rules, now);
            summary.account_grants = minted;
            summary.grant_limit_warning =
                minted.is_some_and(|n| n >= self.policy.grant_rules.warn_at());
            out.push(summary);
        }
        Ok(out)
    }

    /// Connections across users, in key order after `after`, whose health is `health`
    /// (any when `None`): at most `limit`, reading at most [`MAX_SCANNED_PER_PAGE`] rows
    /// per call. Returns where the next page starts (`None` once the table is done); a
    /// page may hold fewer than `limit` while there is more.
    /// A page of the events feed (see [`crate::events::feed_page`]).
    pub(crate) async fn events_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::events::FeedPage, Error> {
        Ok(crate::events::feed_page(
            self.store.as_ref(),
            &self.policy.events,
            after,
            limit,
            Utc::now(),
        )
        .await?)
    }

    #[tracing::instrument(skip_all)]
    pub(crate) async fn connections_across(
        &self,
        health: Option<grant::Health>,
        after: Option<ScanCursor>,
        limit: usize,
    ) -> Result<AcrossPage, Error> {
        let now = Utc::now();
        let mut found = Vec::new();
        let mut cursor = after;
        let mut scanned = 0;
        loop {
            let page = self.store.scan(cursor.as_ref(), limit.max(200)).await?;
            scanned += limit.max(200);
            for row in page.rows {
                let key = ScanCursor {
                    user_id: row.user_id.clone(),
                    provider: row.provider.clone(),
                };
                let summary = ConnectionSummary::of(row, self.policy.grant_rules, now);
                if health.is_none_or(|h| summary.health == h) {
                    found.push((key.user_id.clone(), summary));
                }
                cursor = Some(key);
                if found.len() == limit {
                    // More may follow this row, or not: the next page finds out.
                    return Ok((found, cursor));
                }
            }
            cursor = match page.next {
                Some(next) => Some(next),
                None => return Ok((found, None)),
            };
            if scanned >= MAX_SCANNED_PER_PAGE {
                return Ok((found, cursor));
            }
        }
    }

    /// Removes the connection, first revoking its grant at the provider unless
    /// `revoke` is false. A revocation that fails for a passing reason is kept and
    /// retried (see [`schedule_revocation_retries`](Self::schedule_revocation_retries)); if it
    /// cannot even be kept, nothing is removed and the error is answered. `None` when
    /// there was no row.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider_name))]
    pub(crate) async fn disconnect(
        &self,
        user_id: &str,
        provider_name: &str,
        client: &ClientInfo,
        revoke: bool,
    ) -> Result<Option<Disconnected>, Error> {
        let provider = self.provider(provider_name)?;
        let flow_id = uuid::Uuid::new_v4().to_string();
        let flow_log = self.flow_log.flow(user_id, &flow_id, provider_name, client);
        for _ in 0..WRITE_ATTEMPTS {
            let Some(row) = self.store.get(user_id, provider_name).await? else {
                return Ok(None);
            };
            let outcome = if revoke {
                // A pass before this one may have kept a revocation, then lost the
                // delete: this pass decides again, so that record goes.
                self.store.remove_revocation(&flow_id).await?;
                self.revoke_or_keep(provider, &row, &flow_id).await?
            } else {
                Disconnected {
                    revocation: Revocation::Skipped,
                    token_kind: None,
                }
            };
            let deleted = [self.policy.events.make(
                EventType::Deleted,
                user_id,
                provider_name,
                json!({
                    "sub": row.user_info.sub,
                    "email": row.email,
                    "revocation": outcome.revocation.label(),
                    "revokedToken": outcome.token_kind,
                }),
            )];
            match self
                .store
                .delete(user_id, provider_name, row.version, &deleted)
                .await
            {
                Ok(_) => {
                    self.refresher.cache.invalidate(user_id, provider_name);
                    count_revocation(provider_name, outcome.revocation.label());
                    if outcome.revocation == Revocation::Revoked {
                        flow_log
                            .step(
                                FlowStep::Revoked,
                                json!({ "tokenKind": outcome.token_kind }),
                            )
                            .await;
                    }
                    flow_log
                        .step(
                            FlowStep::Deleted,
                            json!({
                                "revokedAtProvider": outcome.revocation == Revocation::Revoked,
                                "revocation": outcome.revocation.label(),
                                "tokenKind": outcome.token_kind,
                            }),
                        )
                        .await;
                    return Ok(Some(outcome));
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict)
    }

    /// Revokes `row`'s grant (its refresh token, which ends its access tokens too; else
    /// its access token), trying a failing provider a few times; when it keeps failing,
    /// keeps the revocation (sealed) to retry, under `id`.
    async fn revoke_or_keep(
        &self,
        provider: &OidcProvider,
        row: &Connection,
        id: &str,
    ) -> Result<Disconnected, Error> {
        let Ok(tokens) = TokenSet::open(&self.cipher, row).await else {
            return Ok(Disconnected {
                revocation: Revocation::NotPossible,
                token_kind: None,
            });
        };
        let (token, kind) = match tokens.refresh_token.clone() {
            Some(refresh) => (refresh, "refresh_token"),
            None => (tokens.access_token.clone(), "access_token"),
        };
        let token = SecretString::from(token);
        let mut backoff =
            crate::retry::Backoff::new(Duration::from_millis(200), Duration::from_secs(1));
        let mut attempts = 0;
        // A budget well inside the request timeout: a hanging provider must leave time
        // to keep the revocation, or the DELETE would time out having done nothing.
        let deadline = tokio::time::Instant::now() + REVOKE_NOW_BUDGET;
        let passing = loop {
            attempts += 1;
            let answer = tokio::time::timeout_at(deadline, provider.revoke(&token))
                .await
                .unwrap_or_else(|_| {
                    Err(ProviderError::OutcomeUnknown(
                        "no answer within the revocation's budget".into(),
                    ))
                });
            match answer {
                Ok(sent) => {
                    let revocation = if sent {
                        Revocation::Revoked
                    } else {
                        Revocation::NotPossible
                    };
                    return Ok(Disconnected {
                        revocation,
                        token_kind: Some(kind),
                    });
                }
                Err(ProviderError::Rejected { error }) => {
                    tracing::warn!(
                        error,
                        "the provider refused the revocation; removing the row anyway"
                    );
                    return Ok(Disconnected {
                        revocation: Revocation::NotPossible,
                        token_kind: Some(kind),
                    });
                }
                Err(e) => {
                    let wait = backoff.next_wait();
                    if attempts >= REVOKE_ATTEMPTS_NOW
                        || tokio::time::Instant::now() + wait >= deadline
                    {
                        break e;
                    }
                    tracing::debug!(error = %e, "revocation failed; trying again");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        tracing::warn!(error = %passing, "revocation at the provider failed; it is kept and retried");
        let now = Utc::now();
        let envelope = self
            .cipher
            .seal(
                &row.user_id,
                &revocation_context(&row.provider, id),
                token.expose_secret().as_bytes(),
            )
            .await?;
        self.store
            .put_revocation(&PendingRevocation {
                id: id.to_string(),
                user_id: row.user_id.clone(),
                provider: row.provider.clone(),
                sub: row.user_info.sub.clone(),
                encrypted_token: envelope,
                token_kind: kind.to_string(),
                created_at: now,
                attempts,
                next_attempt_at: now.timestamp() + REVOKE_RETRY_FIRST.as_secs() as i64,
                expires_at: now.timestamp() + REVOKE_GIVE_UP.as_secs() as i64,
            })
            .await?;
        Ok(Disconnected {
            revocation: Revocation::Pending,
            token_kind: Some(kind),
        })
    }

    /// Tries kept revocations again every `every`, on every instance (a revocation
    /// sent twice is harmless), until each succeeds, is superseded (the same account
    /// connected again for that user: Google's revocation would end the new grant too)
    /// or is given up after three days. Each outcome is logged in the user's flow log
    /// under the deletion's flow id.
    pub(crate) fn schedule_revocation_retries(self: &Arc<Self>, jobs: &Jobs, every: Duration) {
        let service = Arc::clone(self);
        jobs.run(
            "revocation retries",
            Schedule::every(every).first_after(Duration::ZERO),
            jobs::from_fn(move |stop| {
                let service = Arc::clone(&service);
                async move {
                    if let Err(e) = service.retry_revocations(&stop).await {
                        tracing::warn!(error = %e, "retrying kept revocations failed; trying again later");
                    }
                }
            }),
        );
    }

    /// One pass of [`schedule_revocation_retries`](Self::schedule_revocation_retries).
    pub(crate) async fn retry_revocations(&self, stop: &CancellationToken) -> Result<(), Error> {
        let now = Utc::now();
        let client = ClientInfo {
            ip_address: None,
            user_agent: Some("axnt-oauth revocation retry".into()),
        };
        for mut pending in self.store.revocations_due(now.timestamp(), 25).await? {
            if stop.is_cancelled() {
                return Ok(());
            }
            let flow_log =
                self.flow_log
                    .flow(&pending.user_id, &pending.id, &pending.provider, &client);
            let data = json!({ "tokenKind": pending.token_kind, "attempts": pending.attempts + 1, "retried": true });
            let end = |code: &'static str| {
                let mut data = data.clone();
                data["outcome"] = json!(code);
                (code, data)
            };
            let ended = if pending.expires_at < now.timestamp() {
                Some(end("revocation_given_up"))
            } else if self
                .store
                .get(&pending.user_id, &pending.provider)
                .await?
                .is_some_and(|row| row.is_active && row.user_info.sub == pending.sub)
            {
                Some(end("revocation_superseded"))
            } else {
                None
            };
            if let Some((code, data)) = ended {
                self.store.remove_revocation(&pending.id).await?;
                count_revocation(&pending.provider, code);
                flow_log.step_failed(FlowStep::Revoked, data, code).await;
                continue;
            }
            let outcome = match (
                self.provider(&pending.provider),
                self.cipher
                    .open(
                        &pending.user_id,
                        &revocation_context(&pending.provider, &pending.id),
                        &pending.encrypted_token,
                    )
                    .await,
            ) {
                (Ok(provider), Ok(token)) => {
                    let token = SecretString::from(String::from_utf8_lossy(&token).into_owned());
                    provider.revoke(&token).await
                }
                (Err(e), _) => Err(ProviderError::NotConfigured(e.to_string())),
                // The key service failing is passing: try again later.
                (_, Err(crate::crypto::CryptoError::Unavailable(e))) => {
                    Err(ProviderError::Unavailable(format!("key service: {e}")))
                }
                (_, Err(e)) => {
                    tracing::warn!(error = %e, "a kept revocation cannot be opened; giving it up");
                    Ok(false)
                }
            };
            match outcome {
                Ok(true) => {
                    self.store.remove_revocation(&pending.id).await?;
                    count_revocation(&pending.provider, "revoked_on_retry");
                    let (_, data) = end("revoked_on_retry");
                    flow_log.step(FlowStep::Revoked, data).await;
                }
                Ok(false) | Err(ProviderError::Rejected { .. }) => {
                    self.store.remove_revocation(&pending.id).await?;
                    count_revocation(&pending.provider, "not_possible");
                    let (code, data) = end("revocation_not_possible");
                    flow_log.step_failed(FlowStep::Revoked, data, code).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a kept revocation failed again");
                    let before = pending.attempts;
                    pending.attempts += 1;
                    let wait = REVOKE_RETRY_FIRST
                        .saturating_mul(1 << pending.attempts.min(10))
                        .min(REVOKE_RETRY_MAX);
                    pending.next_attempt_at = now.timestamp() + wait.as_secs() as i64;
                    match self.store.reschedule_revocation(&pending, before).await {
                        // Another instance finished (or moved on with) it meanwhile.
                        Ok(()) | Err(StoreError::Conflict) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a deletion did at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Revocation {
    /// The provider accepted the revocation.
    Revoked,
    /// The provider kept failing; the revocation is kept and retried.
    Pending,
    /// `revoke=false`: only forgotten here.
    Skipped,
    /// No revocation can be made (no revocation endpoint, the provider refused it, or
    /// the stored tokens do not open).
    NotPossible,
}

impl Revocation {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Pending => "pending",
            Self::Skipped => "skipped",
            Self::NotPossible => "not_possible",
        }
    }
}

/// What [`TokenService::disconnect`] did.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Disconnected {
    pub(crate) revocation: Revocation,
    /// Which token was (or will be) revoked: `refresh_token` or `access_token`.
    pub(crate) token_kind: Option<&'static str>,
}

/// Revocation attempts made while the DELETE waits.
const REVOKE_ATTEMPTS_NOW: u32 = 3;
/// ...within this long (the request timeout is 30 s by default; sealing and storing the
/// kept revocation must still fit).
const REVOKE_NOW_BUDGET: Duration = Duration::from_secs(5);
/// A kept revocation is first retried this long after the deletion, then at doubling
/// intervals up to [`REVOKE_RETRY_MAX`], for [`REVOKE_GIVE_UP`].
pub(crate) const REVOKE_RETRY_FIRST: Duration = Duration::from_secs(5);
const REVOKE_RETRY_MAX: Duration = Duration::from_secs(3_600);
const REVOKE_GIVE_UP: Duration = Duration::from_secs(3 * 86_400);

/// Where a kept revocation's token is bound: the provider and the revocation.
fn revocation_context(provider: &str, id: &str) -> String {
    format!("{provider}#revoke#{id}")
}

/// The `outcome` labels of `axnt_revocations_total`, registered at start-up.
pub(crate) const REVOCATION_OUTCOMES: [&str; 7] = [
    "revoked",
    "pending",
    "skipped",
    "not_possible",
    "revoked_on_retry",
    "revocation_superseded",
    "revocation_given_up",
];

fn count_revocation(provider: &str, outcome: &'static str) {
    metrics::counter!("axnt_revocations_total", "provider" => provider.to_string(), "outcome" => outcome)
        .increment(1);
}

#[async_trait]
impl TokenEndpoint for OidcProvider {
    async fn redeem(&self, refresh_token: &SecretString) -> Result<ProviderTokens, ProviderError> {
        self.refresh(refresh_token).await
    }

    fn reuse(&self) -> RefreshReuse {
        let config = self.config();
        RefreshReuse {
            rotates: config.rotates_refresh_tokens,
            grace: config.refresh_reuse_grace,
        }
    }
}

/// The ledger after a consent at `now`: the flow's `requested` scopes added to those
/// asked for before (`previous`, the same account's ledger), the granted scopes from the
/// answer, each change dated, and the grant's clocks restarted.
fn ledger_after_consent(
    previous: Option<&GrantLedger>,
    requested: &[String],
    set: &TokenSet,
    minted: bool,
    now: DateTime<Utc>,
) -> GrantLedger {
    let requested_scopes = grant::merge(
        previous.map_or(&[][..], |p| p.requested_scopes.as_slice()),
        requested,
    );
    let granted_scopes = set.granted_scopes();
    let requested_changed_at = match previous {
        Some(p) if p.requested_scopes == requested_scopes => p.requested_changed_at,
        _ => Some(now),
    };
    let scopes_changed_at = match previous {
        Some(p) if same_scopes(&p.granted_scopes, &granted_scopes) => p.scopes_changed_at,
        _ => Some(now),
    };
    // A grant that minted no refresh token (a step-up without forced consent) goes on
    // with the stored one: its clocks (Google's Testing days, the idle limit, the
    // count of newer mints) still start at that token's consent.
    let (consented_at, last_refreshed_at) = match previous {
        Some(p) if !minted => (p.consented_at.or(Some(now)), p.last_refreshed_at),
        _ => (Some(now), None),
    };
    GrantLedger {
        requested_scopes,
        granted_scopes,
        requested_changed_at,
        scopes_changed_at,
        consented_at,
        last_refreshed_at,
        refresh_token_expires_at: set.refresh_token_expires_at,
        // A minted grant's clocks start again; a step-up keeps the stored token's.
        expiry_notice_for: previous
            .filter(|_| !minted)
            .and_then(|p| p.expiry_notice_for),
        refresh_token_hash: set
            .refresh_token
            .as_deref()
            .map(crate::oauth::risc::token_hash),
        refresh_token_prefix_hash: set
            .refresh_token
            .as_deref()
            .map(crate::oauth::risc::prefix_hash),
    }
}

/// The ledger after a refresh at `now` that answered `set`.
pub(crate) fn ledger_after_refresh(
    previous: &GrantLedger,
    set: &TokenSet,
    now: DateTime<Utc>,
) -> GrantLedger {
    let granted_scopes = set.granted_scopes();
    let changed =
        !granted_scopes.is_empty() && !same_scopes(&previous.granted_scopes, &granted_scopes);
    GrantLedger {
        scopes_changed_at: if changed {
            Some(now)
        } else {
            previous.scopes_changed_at
        },
        granted_scopes: if granted_scopes.is_empty() {
            previous.granted_scopes.clone()
        } else {
            granted_scopes
        },
        last_refreshed_at: Some(now),
        refresh_token_expires_at: set.refresh_token_expires_at,
        // A rotated refresh token has identifiers of its own.
        refresh_token_hash: set
            .refresh_token
            .as_deref()
            .map(crate::oauth::risc::token_hash)
            .or_else(|| previous.refresh_token_hash.clone()),
        refresh_token_prefix_hash: set
            .refresh_token
            .as_deref()
            .map(crate::oauth::risc::prefix_hash)
            .or_else(|| previous.refresh_token_prefix_hash.clone()),
        ..previous.clone()
    }
}

/// Whether two scope lists hold the same scopes, in any order.
fn same_scopes(a: &[String], b: &[String]) -> bool {
    grant::missing(a, b).is_empty() && grant::missing(b, a).is_empty()
}

/// The `outcome` labels of `axnt_token_reads_total`, registered at start-up.
pub(crate) const READ_OUTCOMES: [&str; 7] = [
    "cache_hit",
    "store_read",
    "refreshed",
    "not_found",
    "reauthorization_required",
    "unknown_provider",
    "error",
];

/// Counts one token read by the API: `axnt_token_reads_total{provider, outcome}`.
fn count_read(provider: &str, read: Result<&IssuedToken, &Error>) {
    let outcome = match read {
        Ok(issued) => issued.source.label(),
        Err(Error::NotConnected) => "not_found",
        Err(Error::ReauthorizationRequired { .. }) => "reauthorization_required",
        Err(Error::UnknownProvider(_)) => "unknown_provider",
        Err(_) => "error",
    };
    metrics::counter!("axnt_token_reads_total", "provider" => provider.to_string(), "outcome" => outcome)
        .increment(1);
}
