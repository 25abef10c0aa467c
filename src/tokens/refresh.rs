//! Reading a connection's tokens, refreshing them first when due: an owned operation,
//! not part of a request.
//!
//! A read that misses the token cache reads the row in the caller's own task: no task
//! is spawned and no thread is switched to for a token that is still fresh (the
//! embedded store answers a point read on the calling thread). Concurrent cold reads
//! of one connection share that one read: the first reader drives it and the others
//! await the same future, which whichever of them is still waiting goes on driving
//! when the first gives up.
//!
//! Only a row whose token is due starts a *flight*: in one process, one refresh per
//! connection runs at a time, as its own task; every concurrent reader of that
//! connection waits on the flight's result (at most one refresh), and a reader that
//! gives up only stops waiting: the flight runs to its end (redeem, seal, conditional
//! write, flow-log step). The registry of flights is exact: an entry lives exactly as
//! long as its flight. Shutdown waits for flights (see [`Refresher::drain`]).
//!
//! Across instances, the row's refresh *lease* decides who redeems: a flight takes the
//! lease with a random attempt id (only while the row is at the version it read and no
//! other attempt's lease is live), extends it while it works, and writes the new tokens
//! only while its attempt still holds the lease. Writes that do not touch tokens
//! (`lastUsed`) are partial updates that neither bump `version` nor break a lease.
//!
//! A lease that lapsed without being given back is an unknown outcome, not a free
//! lease: its holder may have redeemed (a rotating provider then rotated the stored
//! refresh token) and still be trying to store the new tokens, its store or network
//! away for longer than the lease. At a rotating provider the first instance that
//! finds it so *and can write* holds it in its attempt's name for the takeover grace
//! ([`takeover_grace`]): the attempt still holds it, so its retried write lands, and
//! its keeper's next extension ends the hold. Meanwhile no one redeems and readers get
//! 503 `refresh_in_progress` with `cause: refresh_outcome_unknown` and `Retry-After`,
//! never a 409. The grace is measured from that successful write, not from the lease's
//! end, so it is the same however long the outage lasted, and a store that answered
//! reads but refused writes (SQLite locked by another writer) cannot start it. Only
//! after the grace does another attempt take the lease over, knowing the previous
//! outcome is unknown: a following `invalid_grant` is reported as
//! `refresh_outcome_unknown`. Where refresh tokens do not rotate (Google), a second
//! redeem spends nothing and a lapsed lease is taken over at once.
//!
//! A refresh token is redeemed at most once: only a failure that provably never reached
//! the provider (connection refused) or an answer of 5xx/429 is retried with the same
//! token. A request that may have been processed (a timeout after sending, a connection
//! reset mid-answer) is retried only where the provider is known to accept the token
//! again ([`RefreshReuse`]); otherwise the attempt ends, the row remembers the unknown
//! outcome, and a later `invalid_grant` is reported as `refresh_outcome_unknown`.
//!
//! What the provider gave is never dropped: the data key that seals it is drawn before
//! the redeem; when the write after a successful redeem fails, waiting readers are
//! answered with the new token at once, and the write is retried with backoff for as
//! long as the process lives (readers in this process keep being served from the
//! flight meanwhile), so this process never presents the old refresh token again. A
//! redeem is never started past the lease's end as last written (see
//! [`holder`]).
//!
//! After a failed refresh the connection cools down (`AXNT_REFRESH_COOLDOWN_SECS`,
//! recorded on the row so every instance honours it), and after consecutive failures
//! a provider's circuit opens for a while: in both cases readers get 503 with
//! `Retry-After` and the provider is not called.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use secrecy::SecretString;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::cache::{Cached, TokenCache};
use super::token_set::{IssuedToken, TokenSet, TokenSource};
use super::{TokenError, TokenPolicy};
use crate::breaker::Breaker;
use crate::crypto::EnvelopeCipher;
use crate::oauth::provider::{ProviderError, ProviderTokens};
use crate::retry::{Backoff, jittered};
use crate::store::flow_log::ClientInfo;
use crate::store::{Connection, FlowRecorder, RefreshLease, StoreError, TokenStore};
pub(crate) use answers::reauthorization_required;
pub(crate) use answers::{LapseOutcome, RefreshOutcome, SuppressedReason};
use answers::{count_lapse, millis, millis_until, outcome_pending, suppressed};
use holder::Holder;

/// How often a flight waiting for another attempt's lease re-reads the row.
const LEASE_POLL: Duration = Duration::from_millis(50);
/// Retries of an unavailable provider start this far apart, doubling up to the max.
const REDEEM_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
/// Retries of a lease holder's failed write (refreshed tokens above all), likewise: a
/// holder with tokens it could not store tries again at most twice the max apart
/// (the max plus as much again of jitter).
const PERSIST_BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// How long a lapsed lease that was never given back is held for its attempt before
/// another may take it over: long enough for a holder that is alive to store what it
/// has once the store is back — a write it started before (at most `store_write`, the
/// store's longest call) and then its next retry (at most twice `PERSIST_BACKOFF`'s max
/// later) — and for a redeem it started before its lease lapsed to end
/// (`provider_timeout`); plus a second.
pub(crate) fn takeover_grace(store_write: Duration, provider_timeout: Duration) -> Duration {
    store_write
        .saturating_add(provider_timeout.max(PERSIST_BACKOFF.1.saturating_mul(2)))
        .saturating_add(Duration::from_secs(1))
}

/// The token endpoint as the refresh machinery needs it: one redeem, no retries.
#[async_trait]
pub(crate) trait TokenEndpoint: Send + Sync {
    /// Redeems `refresh_token` with the OAuth client it was issued to (`None`: the
    /// provider's current one).
    async fn redeem(
        &self,
        refresh_token: &SecretString,
        client: Option<&str>,
    ) -> Result<ProviderTokens, ProviderError>;

    /// What the provider does with a refresh token it has redeemed.
    fn reuse(&self) -> RefreshReuse;

    /// What is known of the provider's clocks, to name the cause of a refused grant.
    fn lifetimes(&self) -> crate::oauth::grant::Lifetimes;
}

/// Whether a refresh token may be presented again after a request whose outcome is
/// unknown (the provider may have redeemed it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefreshReuse {
    /// The provider issues a new refresh token on each refresh and rejects the old one
    /// (Google does not; many others do).
    pub(crate) rotates: bool,
    /// A rotating provider still accepts a redeemed token for this long (Okta's and
    /// Auth0's "reuse interval").
    pub(crate) grace: Duration,
}

impl RefreshReuse {
    fn may_present_again(&self, since_first_sent: Duration) -> bool {
        !self.rotates || since_first_sent < self.grace
    }
}

type Key = (String, String);
type Outcome = Result<IssuedToken, TokenError>;

/// A row as [`Refresher::read`] found it.
#[derive(Clone)]
enum Read {
    /// Its token, fresh beyond the margin asked for.
    Fresh(IssuedToken),
    /// The row and its opened set, which needs a refresh (shared by the readers that
    /// found it so, and handed to the flight that refreshes it).
    Stale(Arc<(Connection, TokenSet)>),
}

/// One connection's store read, shared by its concurrent cold readers.
type SharedRead = Shared<BoxFuture<'static, Result<Read, TokenError>>>;

/// One refresh in flight in this process.
struct Flight {
    id: u64,
    result: watch::Receiver<Option<Outcome>>,
}

/// The refresh machinery of one process.
pub(crate) struct Refresher {
    store: Arc<dyn TokenStore>,
    cipher: Arc<EnvelopeCipher>,
    flow_log: Arc<FlowRecorder>,
    policy: TokenPolicy,
    flights: Mutex<HashMap<Key, Flight>>,
    /// Store reads in progress, by connection.
    reads: Mutex<HashMap<Key, SharedRead>>,
    next_flight: AtomicU64,
    tasks: TaskTracker,
    breakers: Mutex<HashMap<String, Breaker>>,
    /// Opened tokens, so a warm read costs no store call and no decryption.
    pub(crate) cache: TokenCache,
}

impl Refresher {
    pub(crate) fn new(
        store: Arc<dyn TokenStore>,
        cipher: Arc<EnvelopeCipher>,
        flow_log: Arc<FlowRecorder>,
        policy: TokenPolicy,
    ) -> Self {
        Self {
            store,
            cipher,
            flow_log,
            flights: Mutex::new(HashMap::new()),
            reads: Mutex::new(HashMap::new()),
            next_flight: AtomicU64::new(0),
            tasks: TaskTracker::new(),
            breakers: Mutex::new(HashMap::new()),
            cache: TokenCache::new(policy.token_cache),
            policy,
        }
    }

    /// A token for `user_id` at `provider` valid beyond `margin`: from the cache, from
    /// the store (read in this task, shared with concurrent readers), or from the
    /// connection's flight when it must be refreshed (started when none is in flight).
    /// Waits at most the policy's `refresh_wait` for a flight; giving up (or being
    /// dropped) never stops it.
    pub(crate) async fn obtain(
        self: &Arc<Self>,
        endpoint: Arc<dyn TokenEndpoint>,
        user_id: &str,
        provider: &str,
        margin: Duration,
        client: &ClientInfo,
    ) -> Outcome {
        if let Some(hit) = self.cache.get(user_id, provider, margin) {
            self.touch_cached(&hit, user_id, provider).await;
            return Ok(hit.issued.with_source(TokenSource::Cache));
        }
        let key: Key = (user_id.to_string(), provider.to_string());
        // A refresh in flight: its result is the answer (the row is leased or stale).
        let mut stale = None;
        if !self.in_flight(&key) {
            match self.shared_read(&key, margin).await? {
                Read::Fresh(issued) => return Ok(issued),
                Read::Stale(row) => stale = Some(row),
            }
        }
        let give_up = Instant::now() + self.policy.refresh_wait;
        loop {
            let (mut result, joined_late) =
                self.join(Arc::clone(&endpoint), &key, margin, client, stale.take());
            let published = tokio::time::timeout_at(give_up, result.wait_for(Option::is_some))
                .await
                .map_err(|_| TokenError::RefreshBusy)?
                .map(|value| value.clone())
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    Err(TokenError::Internal(
                        "a refresh ended without a result".into(),
                    ))
                });
            match published {
                // The flight answered before this reader came, and its token has
                // expired since (it is still storing what it redeemed, or the provider
                // issues tokens that expire at once): wait for it to end, then start
                // another.
                Ok(issued) if joined_late && issued.expires_at <= Utc::now() => {
                    tokio::time::timeout_at(give_up, async {
                        while result.changed().await.is_ok() {}
                    })
                    .await
                    .map_err(|_| TokenError::RefreshBusy)?;
                }
                other => return other,
            }
        }
    }

    /// Whether a flight of this connection is in progress.
    fn in_flight(&self, key: &Key) -> bool {
        self.flights.lock().contains_key(key)
    }

    /// The connection's row as [`Self::read`] finds it, read once for every reader that
    /// asks while the read is in progress. The read runs in the task of whichever
    /// reader is waiting for it (no task of its own), and is forgotten once answered or
    /// once its last reader has gone (then it stops where it was: a read changes nothing
    /// that matters when cut short).
    async fn shared_read(
        self: &Arc<Self>,
        key: &Key,
        margin: Duration,
    ) -> Result<Read, TokenError> {
        let read = {
            let mut reads = self.reads.lock();
            match reads.get(key) {
                Some(read) => read.clone(),
                None => {
                    let this = Arc::clone(self);
                    let (user_id, provider) = key.clone();
                    let read = async move { this.read(&user_id, &provider, margin).await }
                        .boxed()
                        .shared();
                    reads.insert(key.clone(), read.clone());
                    read
                }
            }
        };
        let mut waiting = Waiting {
            reads: &self.reads,
            key,
            read,
            answered: false,
        };
        // Awaited through a copy: the registry's entry is recognised by the waiter's
        // own copy, which polling would empty.
        let found = {
            let polled = waiting.read.clone();
            polled.await
        };
        waiting.answered = true;
        found
    }

    /// Reads the row: its token when fresh beyond `margin` (then cached, and
    /// `lastUsed` moved per interval), else the row and its opened set; the answer for
    /// a missing or inactive row.
    async fn read(
        &self,
        user_id: &str,
        provider: &str,
        margin: Duration,
    ) -> Result<Read, TokenError> {
        let generation = self.cache.generation();
        let row = self
            .store
            .get(user_id, provider)
            .await?
            .ok_or(TokenError::NotConnected)?;
        if !row.is_active {
            return Err(reauthorization_required(&row));
        }
        let tokens = TokenSet::open(&self.cipher, &row).await?;
        let now = Utc::now();
        if !tokens.is_fresh(margin, now.timestamp()) {
            return Ok(Read::Stale(Arc::new((row, tokens))));
        }
        let last_used = self.touch(&row, now).await;
        let issued = tokens.issue(&row, TokenSource::Store);
        self.cache.fill(
            generation,
            user_id,
            provider,
            Cached::new(issued.clone(), tokens.issued_at, last_used),
        );
        Ok(Read::Fresh(issued))
    }

    /// Waits (at most `within`) for every flight to end. Called on shutdown, after the
    /// server stopped taking requests. Returns whether all ended.
    pub(crate) async fn drain(&self, within: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok()
    }

    /// The result channel of this connection's flight, starting one when none is in
    /// flight (from `stale`, the row as just read, when given), and whether that
    /// flight had already answered.
    fn join(
        self: &Arc<Self>,
        endpoint: Arc<dyn TokenEndpoint>,
        key: &Key,
        margin: Duration,
        client: &ClientInfo,
        stale: Option<Arc<(Connection, TokenSet)>>,
    ) -> (watch::Receiver<Option<Outcome>>, bool) {
        let mut flights = self.flights.lock();
        if let Some(flight) = flights.get(key) {
            let answered = flight.result.borrow().is_some();
            return (flight.result.clone(), answered);
        }
        let (tx, rx) = watch::channel(None);
        let id = self.next_flight.fetch_add(1, Ordering::Relaxed);
        flights.insert(
            key.clone(),
            Flight {
                id,
                result: rx.clone(),
            },
        );
        drop(flights);
        let this = Arc::clone(self);
        let client = client.clone();
        let key = key.clone();
        self.tasks.spawn(async move {
            // Removes the entry however the flight ends (a panic included), so the
            // registry never holds a flight that no longer runs.
            let _landed = Landed {
                flights: &this.flights,
                key: &key,
                id,
            };
            let outcome = this
                .fly(
                    endpoint.as_ref(),
                    &key.0,
                    &key.1,
                    margin,
                    &client,
                    stale,
                    &tx,
                )
                .await;
            tx.send_if_modified(|published| {
                if published.is_none() {
                    *published = Some(outcome);
                    true
                } else {
                    false
                }
            });
        });
        (rx, false)
    }

    /// One flight: re-reads the row (the first time, takes `stale` as read) until its
    /// token is fresh (someone else refreshed), the lease is ours (then refreshes), or
    /// the flight must give up.
    #[tracing::instrument(skip_all, fields(user_id = %user_id, provider = %provider))]
    #[allow(clippy::too_many_arguments)]
    async fn fly(
        &self,
        endpoint: &dyn TokenEndpoint,
        user_id: &str,
        provider: &str,
        margin: Duration,
        client: &ClientInfo,
        mut stale: Option<Arc<(Connection, TokenSet)>>,
        tx: &watch::Sender<Option<Outcome>>,
    ) -> Outcome {
        let give_up = Instant::now() + self.policy.refresh_wait;
        loop {
            let found = match stale.take() {
                Some(row) => Read::Stale(row),
                None => self.read(user_id, provider, margin).await?,
            };
            let (row, tokens) = match found {
                Read::Fresh(issued) => return Ok(issued),
                Read::Stale(stale) => Arc::unwrap_or_clone(stale),
            };
            let now_ms = Utc::now().timestamp_millis();
            if let Some(retry_at) = row.refresh.retry_at_ms.filter(|at| *at > now_ms) {
                return Err(suppressed(
                    provider,
                    SuppressedReason::Cooldown,
                    millis_until(retry_at, now_ms),
                ));
            }
            let took_over = match &row.refresh.lease {
                None => None,
                // Another attempt (on this or another instance) is refreshing: wait
                // for its result and read it back.
                Some(lease) if lease.until_ms > now_ms && lease.lapsed_at_ms.is_none() => {
                    if Instant::now() >= give_up {
                        return Err(TokenError::RefreshBusy);
                    }
                    tokio::time::sleep(jittered(LEASE_POLL)).await;
                    continue;
                }
                // Held for an attempt whose outcome is unknown (below): nothing is
                // redeemed until the hold ends or its holder writes.
                Some(lease) if lease.until_ms > now_ms => {
                    return Err(outcome_pending(
                        provider,
                        millis_until(lease.until_ms, now_ms),
                    ));
                }
                // Lapsed and never given back: its holder may have redeemed and still
                // be trying to store the new tokens. Where that spent the stored
                // refresh token (a rotating provider), the lease is held in its
                // attempt's name, so a holder that is alive gets its write in first.
                // Elsewhere (Google) a second redeem is harmless: taken over at once.
                Some(lease) if lease.lapsed_at_ms.is_none() && endpoint.reuse().rotates => {
                    let grace = self.policy.takeover_grace;
                    let until_ms = now_ms.saturating_add(millis(grace));
                    match self
                        .store
                        .hold_lapsed_lease(user_id, provider, &lease.attempt, until_ms, now_ms)
                        .await
                    {
                        Ok(()) => {
                            count_lapse(LapseOutcome::Held);
                            tracing::warn!(
                                user_id,
                                provider,
                                grace_secs = grace.as_secs(),
                                "a refresh lease lapsed with no result stored nor the lease given back: \
                                 held for its holder, whose refresh has an unknown outcome"
                            );
                            return Err(outcome_pending(provider, grace));
                        }
                        // Held (or taken, or written) by someone else first: read again.
                        Err(StoreError::Conflict) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                // The hold ended and its holder never wrote: taken over below, knowing
                // its refresh's outcome is unknown (never held: nothing to know).
                Some(lease) => lease.lapsed_at_ms,
            };
            self.circuit_allows(provider)?;
            let lease = RefreshLease::new(
                crate::crypto::random_token(16),
                now_ms.saturating_add(millis(self.policy.lease_ttl)),
            );
            match self
                .store
                .acquire_lease(user_id, provider, row.version, &lease, now_ms)
                .await
            {
                Ok(()) => {
                    if took_over.is_some() {
                        count_lapse(LapseOutcome::TakenOver);
                        tracing::warn!(
                            user_id,
                            provider,
                            "took over a refresh lease whose holder never stored a result: \
                             its refresh's outcome is unknown"
                        );
                    }
                    let holder = Holder {
                        refresher: self,
                        endpoint,
                        row: &row,
                        attempt: lease.attempt,
                        held_until: AtomicI64::new(lease.until_ms),
                        took_over,
                        flow_log: self.flow_log.flow(
                            user_id,
                            &uuid::Uuid::new_v4().to_string(),
                            provider,
                            client,
                        ),
                    };
                    return holder.run(&tokens, tx).await;
                }
                // The row moved (a refresh landed, a grant replaced it) or another
                // attempt took the lease first: read again.
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Redeems `refresh_token`, retrying only what is safe to retry (see the module
    /// docs) with backoff, starting no new attempt after the refresh deadline nor once
    /// the lease may have lapsed (`held_until`, its end as last written: past it,
    /// another instance may hold it and, after the grace, redeem).
    async fn redeem(
        &self,
        endpoint: &dyn TokenEndpoint,
        refresh_token: &SecretString,
        client: Option<&str>,
        held_until: &AtomicI64,
    ) -> Result<ProviderTokens, ProviderError> {
        let started = Instant::now();
        let deadline = started + self.policy.refresh_deadline;
        let reuse = endpoint.reuse();
        let mut backoff = Backoff::new(REDEEM_BACKOFF.0, REDEEM_BACKOFF.1);
        loop {
            let result = endpoint.redeem(refresh_token, client).await;
            let retry = match &result {
                Err(ProviderError::Unavailable(_)) => true,
                Err(ProviderError::OutcomeUnknown(_)) => reuse.may_present_again(started.elapsed()),
                _ => false,
            };
            let wait = backoff.next_wait();
            let lease_ends = held_until.load(Ordering::SeqCst);
            let retry_ms = Utc::now().timestamp_millis().saturating_add(millis(wait));
            if !retry || Instant::now() + wait >= deadline || retry_ms >= lease_ends {
                return result;
            }
            if let Err(e) = &result {
                tracing::debug!(error = %e, wait_ms = wait.as_millis() as u64, "retrying the refresh");
            }
            tokio::time::sleep(wait).await;
        }
    }
}

/// A reader of a shared read; forgets the read when it was answered or when this was
/// its last reader (the registry's copy and this one are all that is left).
struct Waiting<'a> {
    reads: &'a Mutex<HashMap<Key, SharedRead>>,
    key: &'a Key,
    /// A copy never polled, to recognise the registry's entry by.
    read: SharedRead,
    answered: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut reads = self.reads.lock();
        // Abandoned: no other reader holds a copy (the registry's and this one are left).
        let last = self.read.strong_count().is_some_and(|n| n <= 2);
        if (self.answered || last) && reads.get(self.key).is_some_and(|r| r.ptr_eq(&self.read)) {
            reads.remove(self.key);
        }
    }
}

/// Removes a flight's registry entry when the flight ends.
struct Landed<'a> {
    flights: &'a Mutex<HashMap<Key, Flight>>,
    key: &'a Key,
    id: u64,
}

impl Drop for Landed<'_> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock();
        if flights.get(self.key).is_some_and(|f| f.id == self.id) {
            flights.remove(self.key);
        }
    }
}

mod answers;
mod circuit;
mod holder;
mod last_used;
#[cfg(test)]
pub(crate) mod tests;
