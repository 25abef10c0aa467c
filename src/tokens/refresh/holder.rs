//! The lease holder's side of a flight: it redeems the refresh token, stores what the
//! provider gave, or records why it could not, while it keeps its lease extended.
//!
//! What the provider gave is never dropped while this attempt holds the lease: the
//! data key that seals it is drawn before the redeem (so the key service going away
//! afterwards cannot stop the write), and the write is retried for as long as the
//! process lives. If the lease lapses meanwhile (the store was away longer than the
//! lease), other instances hold it in this attempt's name for the takeover grace
//! instead of taking it (see the module docs of `refresh`), so the retried write
//! still lands when the store comes back; the keeper's next extension ends that hold.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{Outcome, PERSIST_BACKOFF, RefreshOutcome, Refresher, TokenEndpoint, millis};
mod release;

use crate::crypto::Sealer;
use crate::events::{About, EventPayload};
use crate::oauth::grant::{Cause, cause_of, minted_after};
use crate::oauth::provider::{GrantRefusal, ProviderError};
use crate::retry::Backoff;
use crate::series::Label;
use crate::store::{Connection, FlowStep, FlowSteps, RefreshLease, StoreError};
use crate::tokens::TokenError;
use crate::tokens::cache::Cached;
use crate::tokens::token_set::{IssuedToken, TokenSet, TokenSource};

/// After a failed extension the keeper tries again this soon (not a third of the
/// lease later): extended before it lapses, the lease is never held by another
/// instance for an outage this attempt outlives.
const EXTEND_RETRY: Duration = Duration::from_secs(1);

/// The lease holder's side of a flight.
pub(super) struct Holder<'a> {
    pub(super) refresher: &'a Refresher,
    pub(super) endpoint: &'a dyn TokenEndpoint,
    /// The row as read when the lease was taken (`version` unchanged by the lease).
    pub(super) row: &'a Connection,
    pub(super) attempt: String,
    /// Epoch milliseconds until which this attempt's lease is known to hold: the end it
    /// last wrote. No redeem is started past it.
    pub(super) held_until: AtomicI64,
    /// When the lease this attempt took over was found lapsed: that attempt's refresh
    /// has an unknown outcome (it may have redeemed, and a rotating provider rotated,
    /// the stored refresh token).
    pub(super) took_over: Option<i64>,
    /// This refresh's flow-log items (one flow id per attempt).
    pub(super) flow_log: FlowSteps<'a>,
}

impl Holder<'_> {
    /// Refreshes while keeping the lease extended; the keeper never ends by itself.
    pub(super) async fn run(
        &self,
        tokens: &TokenSet,
        tx: &watch::Sender<Option<Outcome>>,
    ) -> Outcome {
        let keeper = self.keep_lease();
        tokio::pin!(keeper);
        tokio::select! {
            outcome = self.refresh(tokens, tx) => outcome,
            never = &mut keeper => match never {},
        }
    }

    async fn refresh(&self, tokens: &TokenSet, tx: &watch::Sender<Option<Outcome>>) -> Outcome {
        let r = self.refresher;
        let provider = self.row.provider.as_str();
        // Until the provider is asked, a probe of its half-open circuit is given back
        // (`None`: not asked) on every way out.
        let Some(refresh_token) = tokens.refresh_token.clone().map(SecretString::from) else {
            r.circuit_record(provider, None);
            return self.deactivate(Cause::NoRefreshToken, tx).await;
        };
        // The data key first: with the key service away, a redeem would give tokens
        // that could not be stored.
        let sealer = match r.cipher.sealer().await {
            Ok(sealer) => sealer,
            Err(e) => {
                r.circuit_record(provider, None);
                return self.step_back(TokenError::from(e), tx).await;
            }
        };
        if Utc::now().timestamp_millis() >= self.held_until.load(Ordering::SeqCst) {
            // That took longer than the lease, which could not be extended meanwhile.
            r.circuit_record(provider, None);
            return self.step_back(TokenError::RefreshBusy, tx).await;
        }
        let outcome = r
            .redeem(
                self.endpoint,
                &refresh_token,
                self.row.grant.client_id.as_deref(),
                &self.held_until,
            )
            .await;
        let counted = match &outcome {
            Ok(_) => RefreshOutcome::Ok,
            Err(ProviderError::InvalidGrant(_)) => RefreshOutcome::InvalidGrant,
            Err(ProviderError::Unavailable(_)) => RefreshOutcome::ProviderUnavailable,
            Err(ProviderError::OutcomeUnknown(_)) => RefreshOutcome::OutcomeUnknown,
            Err(_) => RefreshOutcome::ProviderError,
        };
        metrics::counter!(crate::series::TOKEN_REFRESHES_TOTAL, "provider" => provider.to_string(), "outcome" => counted.label()).increment(1);
        match outcome {
            Ok(fresh) => {
                r.circuit_record(provider, Some(true));
                let now = Utc::now();
                let set = TokenSet::from_provider(&fresh, Some(tokens), now);
                let issued = set.issue(self.row, TokenSource::Refreshed);
                let rotated = fresh.refresh_token.is_some();
                if self.persist(&set, &sealer, now, rotated, &issued, tx).await {
                    let row = self.row;
                    r.cache.put(
                        &row.user_id,
                        &row.provider,
                        Cached::new(issued.clone(), set.issued_at, now),
                    );
                }
                Ok(issued)
            }
            Err(ProviderError::InvalidGrant(refusal)) => {
                r.circuit_record(provider, Some(true));
                // What the refusal says, else (after a request whose outcome is unknown,
                // ours or that of the attempt this one took over: the provider most
                // likely redeemed and rotated the token then) the unknown outcome, else
                // the grant's clocks.
                let newer_mints = match (self.row.grant.consented_at, &refusal) {
                    (
                        Some(consented),
                        GrantRefusal::ExpiredOrRevoked | GrantRefusal::Unspecified,
                    ) => r
                        .store
                        .account_grants(&self.row.provider, &self.row.user_info.sub)
                        .await
                        .ok()
                        .flatten()
                        .map(|a| minted_after(&a.mints, consented)),
                    _ => None,
                };
                let mut known = self.row.clone();
                known.refresh.unknown_since_ms = known.refresh.unknown_since_ms.or(self.took_over);
                let cause = cause_of(
                    refusal,
                    &known,
                    r.policy.grant_rules.with(self.endpoint.lifetimes()),
                    newer_mints,
                    Utc::now(),
                );
                self.deactivate(cause, tx).await
            }
            Err(e) => {
                // The provider failing (down, answer lost or unreadable) counts toward
                // its circuit and cools the connection down; an answer about our client
                // (invalid_client, another OAuth error) does neither: the secret re-read
                // after invalid_client is throttled on its own.
                let failing = matches!(
                    e,
                    ProviderError::Unavailable(_)
                        | ProviderError::OutcomeUnknown(_)
                        | ProviderError::Malformed(_)
                );
                let healthy = match e {
                    ProviderError::NotConfigured(_) => None,
                    _ => Some(!failing),
                };
                r.circuit_record(provider, healthy);
                self.give_back(e, failing, tx).await
            }
        }
    }

    /// Extends the lease before it would lapse, for as long as the holder works. A
    /// lease found taken over is left alone: the holder's own write then fails its
    /// condition, so it never overwrites the new holder's work. Extending also ends a
    /// hold another instance put on this attempt's lapsed lease (this attempt is alive).
    async fn keep_lease(&self) -> Infallible {
        let r = self.refresher;
        let row = self.row;
        let every = r.policy.lease_ttl / 3;
        let mut wait = every;
        loop {
            tokio::time::sleep(wait).await;
            let until_ms = Utc::now()
                .timestamp_millis()
                .saturating_add(millis(r.policy.lease_ttl));
            let lease = RefreshLease::new(self.attempt.clone(), until_ms);
            match r
                .store
                .extend_lease(&row.user_id, &row.provider, &lease)
                .await
            {
                Ok(()) => {
                    self.held_until.store(until_ms, Ordering::SeqCst);
                    wait = every;
                }
                Err(StoreError::Conflict) => {
                    tracing::warn!(
                        user_id = row.user_id,
                        provider = row.provider,
                        "the refresh lease was taken over; this attempt will not write"
                    );
                    return std::future::pending().await;
                }
                Err(e) => {
                    wait = every.min(EXTEND_RETRY);
                    tracing::warn!(error = %e, "extending the refresh lease failed; trying again")
                }
            }
        }
    }

    /// Stores the refreshed tokens. In the common case the first write lands and the
    /// step is logged before anyone is answered. When it fails, everyone waiting is
    /// answered with the new token at once and the write is retried with backoff for
    /// as long as the process lives (shutdown waits for it too, within its drain), so
    /// this process never presents the old refresh token again. Stops only on success
    /// or when the lease was taken over (someone else's work then stands). Returns
    /// whether the tokens were stored.
    async fn persist(
        &self,
        set: &TokenSet,
        sealer: &Sealer<'_>,
        now: DateTime<Utc>,
        rotated: bool,
        issued: &IssuedToken,
        tx: &watch::Sender<Option<Outcome>>,
    ) -> bool {
        let row = self.row;
        let sealed = set.seal_with(sealer, &row.user_id, &row.provider);
        let mut backoff = Backoff::new(PERSIST_BACKOFF.0, PERSIST_BACKOFF.1);
        let mut failed_before = false;
        loop {
            let written = match &sealed {
                Ok(envelope) => match self.write_refreshed(set, envelope, now).await {
                    // A write whose answer was lost may have landed: the row then holds
                    // this very envelope (sealed once, with its own nonce).
                    Err(TokenError::Conflict) if failed_before && self.stored(envelope).await => {
                        Ok(())
                    }
                    other => other,
                },
                Err(e) => Err(e.clone()),
            };
            match written {
                Ok(()) => {
                    let d = json!({
                        "rotatedRefreshToken": rotated,
                        "accessTokenExpiresAt": set.expires_at,
                    });
                    self.flow_log.step(FlowStep::TokenRefreshed, d).await;
                    return true;
                }
                Err(
                    e @ (TokenError::Conflict | TokenError::Internal(_) | TokenError::Crypto(_)),
                ) => {
                    // Taken over (the new holder's work stands), or tokens that cannot
                    // be sealed (which no retry mends).
                    tracing::error!(
                        error = %e,
                        user_id = row.user_id,
                        provider = row.provider,
                        "refreshed tokens were not stored"
                    );
                    let reason = if matches!(e, TokenError::Conflict) {
                        "lease_lost"
                    } else {
                        e.code()
                    };
                    let d = json!({ "reason": reason });
                    self.flow_log
                        .step_failed(FlowStep::RefreshFailed, d, reason)
                        .await;
                    return false;
                }
                Err(e) => {
                    failed_before = true;
                    // Everyone waiting gets the new token now; the write goes on.
                    publish(tx, Ok(issued.clone()));
                    let wait = backoff.next_wait();
                    tracing::warn!(
                        error = %e,
                        user_id = row.user_id,
                        provider = row.provider,
                        wait_ms = wait.as_millis() as u64,
                        "storing refreshed tokens failed; retrying (this process serves them meanwhile)"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Whether the stored row holds `envelope` (read back after a conflict).
    async fn stored(&self, envelope: &crate::crypto::Envelope) -> bool {
        let row = self.row;
        matches!(
            self.refresher.store.get(&row.user_id, &row.provider).await,
            Ok(Some(stored)) if stored.encrypted_tokens == *envelope
        )
    }

    async fn write_refreshed(
        &self,
        set: &TokenSet,
        envelope: &crate::crypto::Envelope,
        now: DateTime<Utc>,
    ) -> Result<(), TokenError> {
        let row = self.row;
        let updated = Connection {
            encrypted_tokens: envelope.clone(),
            updated_at: now,
            last_used: now,
            access_token_expires_at: set.expires_at,
            expires_at: self.refresher.policy.purge_time(now, true),
            grant: crate::tokens::ledger_after_refresh(&row.grant, set, now),
            ..row.successor()
        };
        let rules = &self.refresher.policy.events;
        let mut events = Vec::new();
        if row.refresh.retry_at_ms.is_some() || row.refresh.unknown_since_ms.is_some() {
            events.push(rules.make(EventPayload::Recovered {
                about: About::of(row),
                granted_scopes: updated.grant.granted_scopes.clone(),
            }));
        }
        if let Some(changed) = crate::tokens::scopes_change(row, &updated.grant) {
            events.push(rules.make(changed));
        }
        self.refresher
            .store
            .put_as_holder(&updated, &self.attempt, &events)
            .await?;
        Ok(())
    }

    /// Runs a write this attempt makes as the holder. When the store cannot be reached,
    /// readers get `answer` at once and the write is retried with backoff while this
    /// attempt may still hold the lease: until the lease's end as last written plus
    /// the takeover grace (after which another attempt may have taken it over). A
    /// conflict (taken over) ends it.
    pub(super) async fn write_retried<F, W>(
        &self,
        tx: &watch::Sender<Option<Outcome>>,
        answer: &TokenError,
        mut write: F,
    ) -> Result<(), StoreError>
    where
        F: FnMut() -> W,
        W: Future<Output = Result<(), StoreError>>,
    {
        let mut backoff = Backoff::new(PERSIST_BACKOFF.0, PERSIST_BACKOFF.1);
        loop {
            let e = match write().await {
                Err(e @ (StoreError::Unavailable(_) | StoreError::Throttled(_))) => e,
                other => return other,
            };
            publish(tx, Err(answer.clone()));
            let wait = backoff.next_wait();
            let held_until = self.held_until.load(Ordering::SeqCst);
            let give_up_ms =
                held_until.saturating_add(millis(self.refresher.policy.takeover_grace));
            let now_ms = Utc::now().timestamp_millis().saturating_add(millis(wait));
            if now_ms >= give_up_ms {
                return Err(e);
            }
            tracing::debug!(error = %e, wait_ms = wait.as_millis() as u64, "a lease holder's write failed; retrying");
            tokio::time::sleep_until(Instant::now() + wait).await;
        }
    }
}

/// Answers everyone waiting on the flight now (once; the flight's end changes nothing
/// after).
pub(super) fn publish(tx: &watch::Sender<Option<Outcome>>, outcome: Outcome) {
    tx.send_if_modified(|published| {
        if published.is_none() {
            *published = Some(outcome);
            true
        } else {
            false
        }
    });
}
