//! The token service: what a stored connection means, independent of where it is
//! stored. Storing a new grant, handing out a valid access token (refreshing first
//! when needed, through [`refresh`]), listing and removing connections.
//!
//! Token-changing writes are conditional on the row's `version` (or, for a refresh, on
//! holding the row's refresh lease), so a writer that lost a race never overwrites a
//! newer row. `lastUsed` moves by partial updates that leave `version` alone.

mod cache;
mod connections;
mod error;
mod grants;
mod import;
mod keepalive;
mod ledger;
pub(crate) mod refresh;
mod revocations;
mod risc;
pub(crate) mod token_set;

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
use crate::events::{About, EventPayload, EventRules, Granted, PreviousAccount};
use crate::ids::{FlowId, UserId};
use crate::jobs::{self, Jobs, Schedule};
use crate::oauth::provider::{OidcProvider, ProviderError, ProviderTokens, Providers};
use crate::series::Label;
use crate::store::flow_log::ClientInfo;
use crate::store::{
    Connection, FlowRecorder, FlowStep, GrantLedger, PendingGrant, PendingRevocation, RefreshState,
    ReplacedAccount, ScanCursor, StoreError, TokenStore, UserInfo,
};

use crate::oauth::grant::{self, Cause, GrantRules, Lifetimes};
pub(crate) use connections::{AcrossFilter, ConnectionSummary};
pub(crate) use error::TokenError;
pub(crate) use grants::{Confirmed, Discard, Stored};
pub(crate) use import::{ImportOptions, ImportOutcome, ImportedGrant};
pub(crate) use keepalive::KeepAlive;
pub(crate) use ledger::ledger_after_refresh;
use ledger::{ledger_after_consent, scopes_change};
pub(crate) use refresh::{RefreshReuse, Refresher, TokenEndpoint};
use revocations::count_revocation;
pub(crate) use revocations::{Disconnected, Revocation, RevocationOutcome};
pub(crate) use risc::SecurityEventOutcome;
pub(crate) use token_set::{IssuedToken, TokenSet, TokenSource};

/// A lost conditional write is retried this many times against the re-read row.
const WRITE_ATTEMPTS: usize = 5;
/// `GET /v1/connections` reads at most this many rows per page (Scan on DynamoDB costs
/// read capacity for every row read, matching or not).
pub(crate) const MAX_SCANNED_PER_PAGE: usize = 2_000;

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
                lifetimes: Lifetimes::GOOGLE,
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
    security_marks: parking_lot::Mutex<std::collections::HashMap<String, String>>,
    /// [`TOKEN_READS_TOTAL`](crate::series::TOKEN_READS_TOTAL) by provider (in
    /// configured order, then `unknown`) and outcome.
    read_counts: crate::series::CounterCells,
}

/// A page of [`TokenService::connections_across`]: `(userId, connection)` pairs and
/// where the next page starts.
pub(crate) type AcrossPage = (Vec<(String, ConnectionSummary)>, Option<ScanCursor>);

/// The account of a connection ([`TokenService::connected_account`]).
pub(crate) struct ConnectedAccount {
    pub(crate) user_info: UserInfo,
    pub(crate) is_active: bool,
    /// The OAuth client the grant was made with.
    pub(crate) client_id: Option<String>,
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
            read_counts: crate::series::CounterCells::new(
                (providers.len() + 1) * <ReadOutcome as strum::VariantArray>::VARIANTS.len(),
            ),
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
            security_marks: parking_lot::Mutex::default(),
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

    /// The grant rules of `provider`'s connections: the deployment's with the
    /// provider's clocks (none known for a provider no longer configured).
    pub(crate) fn grant_rules(&self, provider: &str) -> GrantRules {
        self.policy.grant_rules.with(
            self.providers
                .get(provider)
                .map_or(Lifetimes::UNKNOWN, |p| p.config().profile.lifetimes),
        )
    }

    pub(crate) fn provider(&self, name: &str) -> Result<&Arc<OidcProvider>, TokenError> {
        self.providers
            .get(name)
            .ok_or_else(|| TokenError::UnknownProvider(name.to_string()))
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

    /// The account connected for `user_id` at `provider`, and whether its grant is
    /// alive, if there is a connection.
    pub(crate) async fn connected_account(
        &self,
        user_id: &UserId,
        provider: &str,
    ) -> Result<Option<ConnectedAccount>, TokenError> {
        Ok(self
            .store
            .get(user_id, provider)
            .await?
            .map(|row| ConnectedAccount {
                user_info: row.user_info,
                is_active: row.is_active,
                client_id: row.grant.client_id,
            }))
    }

    /// Marks a connect link's flow as started; false when it was before (single-use
    /// links). The mark is kept until the link's own expiry, and names this call, so a
    /// write the SDK retries after a lost answer finds its own mark: a first opening
    /// is never taken for a second.
    pub(crate) async fn mark_flow_started(
        &self,
        flow_id: &FlowId,
        link_expires_at: i64,
    ) -> Result<bool, TokenError> {
        let attempt = uuid::Uuid::new_v4().to_string();
        Ok(self
            .store
            .mark_once(flow_id, &attempt, link_expires_at)
            .await?)
    }

    /// A valid access token for `user_id` at `provider`, valid for at least the
    /// refresh margin: refreshed first when it is not.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider_name))]
    pub(crate) async fn valid_token(
        &self,
        user_id: &UserId,
        provider_name: &str,
        client: &ClientInfo,
    ) -> Result<IssuedToken, TokenError> {
        let Some((index, provider)) = self.providers.find(provider_name) else {
            let e = TokenError::UnknownProvider(provider_name.to_string());
            // Never the caller's name as a label: it would add a series per guess.
            self.count_read(self.providers.len(), "unknown", Err(&e));
            return Err(e);
        };
        if self.policy.background_refresh.is_some() {
            self.recently_used
                .insert((user_id.to_string(), provider_name.to_string()), ())
                .await;
        }
        let read = self
            .token_valid_for(provider, user_id, client, self.policy.refresh_margin)
            .await;
        self.count_read(index, provider.name(), read.as_ref());
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

    /// Drops token-cache entries past their time every cache period (their tokens
    /// wiped), so an entry nobody reads again does not stay in memory until evicted.
    pub(crate) fn schedule_cache_sweep(self: &Arc<Self>, jobs: &Jobs) {
        let ttl = self.refresher.cache.ttl();
        if ttl.is_zero() {
            return;
        }
        let service = Arc::clone(self);
        jobs.run(
            "token cache sweep",
            Schedule::every(ttl.max(Duration::from_secs(1))),
            jobs::from_fn(move |_stop| {
                service.refresher.cache.sweep();
                std::future::ready(())
            }),
        );
    }

    /// One pass of the background refresh, ended early by `stop`.
    async fn refresh_recently_used(&self, every: Duration, stop: &CancellationToken) {
        let client = ClientInfo {
            ip_address: None,
            user_agent: Some("axnt-oauth background refresh".into()),
            caller: None,
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
                    TokenError::ReauthorizationRequired { .. } | TokenError::NotConnected
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
    ) -> Result<IssuedToken, TokenError> {
        let endpoint: Arc<dyn TokenEndpoint> = Arc::clone(provider) as Arc<dyn TokenEndpoint>;
        self.refresher
            .obtain(endpoint, user_id, provider.name(), margin, client)
            .await
    }

    /// A page of the events feed (see [`crate::events::feed_page`]).
    pub(crate) async fn events_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::events::FeedPage, TokenError> {
        Ok(crate::events::feed_page(
            self.store.as_ref(),
            &self.policy.events,
            after,
            limit,
            Utc::now(),
        )
        .await?)
    }
}

#[async_trait]
impl TokenEndpoint for OidcProvider {
    async fn redeem(
        &self,
        refresh_token: &SecretString,
        client: Option<&str>,
    ) -> Result<ProviderTokens, ProviderError> {
        self.refresh(refresh_token, client).await
    }

    fn reuse(&self) -> RefreshReuse {
        let profile = &self.config().profile;
        RefreshReuse {
            rotates: profile.rotates_refresh_tokens,
            grace: profile.refresh_reuse_grace,
        }
    }

    fn lifetimes(&self) -> Lifetimes {
        self.config().profile.lifetimes
    }
}

/// What a token read by the API came to: [`TOKEN_READS_TOTAL`](crate::series::TOKEN_READS_TOTAL)'s `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum ReadOutcome {
    /// Answered by this instance's token cache.
    CacheHit,
    /// Read from the store, fresh.
    StoreRead,
    /// Redeemed by a refresh the read waited for.
    Refreshed,
    NotFound,
    ReauthorizationRequired,
    UnknownProvider,
    Error,
}

impl TokenService {
    /// Counts one token read by the API: [`TOKEN_READS_TOTAL`](crate::series::TOKEN_READS_TOTAL)`{provider, outcome}`,
    /// `provider` being the configured one at `index` (past the last: `unknown`).
    fn count_read(&self, index: usize, provider: &str, read: Result<&IssuedToken, &TokenError>) {
        let outcome = match read {
            Ok(issued) => match issued.source {
                TokenSource::Cache => ReadOutcome::CacheHit,
                TokenSource::Store => ReadOutcome::StoreRead,
                TokenSource::Refreshed => ReadOutcome::Refreshed,
            },
            Err(TokenError::NotConnected) => ReadOutcome::NotFound,
            Err(TokenError::ReauthorizationRequired { .. }) => ReadOutcome::ReauthorizationRequired,
            Err(TokenError::UnknownProvider(_)) => ReadOutcome::UnknownProvider,
            Err(_) => ReadOutcome::Error,
        };
        let cell = index * <ReadOutcome as strum::VariantArray>::VARIANTS.len() + outcome as usize;
        if let Some(counter) = self.read_counts.at(cell, || {
            metrics::counter!(crate::series::TOKEN_READS_TOTAL, "provider" => provider.to_string(), "outcome" => outcome.label())
        }) {
            counter.increment(1);
        }
    }
}
