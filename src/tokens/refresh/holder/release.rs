//! What a holder leaves when it has no new tokens to store: a grant marked dead, or the
//! lease given back with its cooldown, the reason written as the holder.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use tokio::sync::watch;

use super::super::{Outcome, millis};
use super::Holder;
use crate::events::{About, EventPayload};
use crate::oauth::grant::Cause;
use crate::oauth::provider::ProviderError;
use crate::store::{Connection, Event, FlowStep, LeaseRelease, RefreshState, StoreError};
use crate::tokens::TokenError;

impl Holder<'_> {
    /// Marks the row inactive: its refresh token is dead, of `cause`.
    pub(super) async fn deactivate(
        &self,
        cause: Cause,
        tx: &watch::Sender<Option<Outcome>>,
    ) -> Outcome {
        let r = self.refresher;
        let row = self.row;
        r.cache.invalidate(&row.user_id, &row.provider);
        let now = Utc::now();
        let updated = Connection {
            is_active: false,
            updated_at: now,
            expires_at: r.policy.purge_time(now, false),
            refresh: RefreshState {
                inactive_cause: Some(cause.code().to_string()),
                ..RefreshState::default()
            },
            ..row.successor()
        };
        // A grant an import is verifying was never announced: the import announces
        // what this finds.
        let announced = !row.grant.verifying;
        let failed: Vec<Event> = announced
            .then(|| {
                r.policy.events.make(EventPayload::RefreshFailed {
                    about: About::of(row),
                    cause: cause.code().to_string(),
                    remedy: Some(cause.remedy().to_string()),
                    is_active: false,
                    retry_after_secs: None,
                })
            })
            .into_iter()
            .collect();
        let answer = TokenError::ReauthorizationRequired {
            cause: cause.code().to_string(),
        };
        let written = self
            .write_retried(tx, &answer, || {
                r.store.put_as_holder(&updated, &self.attempt, &failed)
            })
            .await;
        match written {
            Ok(()) => {}
            // The lease was taken over: whoever holds it now decides; read again.
            Err(StoreError::Conflict) => return Err(TokenError::RefreshBusy),
            Err(e) => {
                tracing::warn!(error = %e, "marking a dead grant inactive failed; the next read finds out again")
            }
        }
        if announced {
            metrics::counter!(crate::series::GRANTS_ENDED_TOTAL, "provider" => row.provider.clone(), "cause" => cause.code())
                .increment(1);
        }
        let d = json!({
            "reason": cause.code(),
            "cause": cause.code(),
            "remedy": cause.remedy(),
            "isActive": false,
        });
        self.flow_log
            .step_failed(FlowStep::RefreshFailed, d, "reauthorization_required")
            .await;
        Err(answer)
    }

    /// Gives the lease back after a failed refresh, starting the cooldown when the
    /// provider is failing (and noting an unknown outcome), and logs the failure.
    pub(super) async fn give_back(
        &self,
        e: ProviderError,
        cool_down: bool,
        tx: &watch::Sender<Option<Outcome>>,
    ) -> Outcome {
        let r = self.refresher;
        let row = self.row;
        let now_ms = Utc::now().timestamp_millis();
        let unknown = matches!(e, ProviderError::OutcomeUnknown(_));
        let cooldown = if cool_down {
            r.policy.refresh_cooldown
        } else {
            Duration::ZERO
        };
        let after = LeaseRelease {
            // Set for any failure of the provider (now, without a cooldown): it marks
            // a run of failures that `connection.recovered` ends.
            retry_at_ms: cool_down.then(|| now_ms.saturating_add(millis(cooldown))),
            // Ours, or still that of the attempt this one took over.
            unknown_since_ms: unknown.then_some(now_ms).or(self.took_over),
        };
        // The first failure of a run tells the application (the grant stays; refreshes
        // pause for the cooldown); `connection.recovered` ends the run.
        let first_failure = cool_down
            && row.refresh.retry_at_ms.is_none()
            && row.refresh.unknown_since_ms.is_none();
        let err = TokenError::from(e);
        let reason = if unknown {
            Cause::RefreshOutcomeUnknown.code()
        } else {
            err.code()
        };
        // A grant an import is verifying: the import announces what this finds.
        let events: Vec<_> = (first_failure && !row.grant.verifying)
            .then(|| {
                r.policy.events.make(EventPayload::RefreshFailed {
                    about: About::of(row),
                    cause: err.cause().unwrap_or(reason).to_string(),
                    remedy: err.remedy().map(str::to_string),
                    is_active: true,
                    retry_after_secs: Some(cooldown.as_secs()),
                })
            })
            .into_iter()
            .collect();
        self.release(after, &events, &err, tx).await;
        let mut d = json!({
            "reason": reason,
            "retryAfterSecs": cooldown.as_secs(),
            "isActive": true,
        });
        if let Some(cause) = err.cause() {
            d["cause"] = json!(cause);
        }
        if let Some(remedy) = err.remedy() {
            d["remedy"] = json!(remedy);
        }
        self.flow_log
            .step_failed(FlowStep::RefreshFailed, d, err.code())
            .await;
        Err(err)
    }

    /// Gives the lease back before anything was sent to the provider (`err` stopped the
    /// attempt: the key service is away), leaving the row's refresh state as it was.
    pub(super) async fn step_back(
        &self,
        err: TokenError,
        tx: &watch::Sender<Option<Outcome>>,
    ) -> Outcome {
        let after = LeaseRelease {
            retry_at_ms: self.row.refresh.retry_at_ms,
            unknown_since_ms: self.took_over,
        };
        self.release(after, &[], &err, tx).await;
        let d = json!({ "reason": err.code(), "isActive": true });
        self.flow_log
            .step_failed(FlowStep::RefreshFailed, d, err.code())
            .await;
        Err(err)
    }

    /// Releases the lease with `after` and `events`; `answer` is what readers get.
    pub(super) async fn release(
        &self,
        after: LeaseRelease,
        events: &[Event],
        answer: &TokenError,
        tx: &watch::Sender<Option<Outcome>>,
    ) {
        let r = self.refresher;
        let row = self.row;
        let released = self
            .write_retried(tx, answer, || {
                r.store
                    .release_lease(&row.user_id, &row.provider, &self.attempt, after, events)
            })
            .await;
        match released {
            Ok(()) | Err(StoreError::Conflict) => {}
            Err(e) => {
                tracing::warn!(error = %e, "releasing a refresh lease failed; it lapses, and is held for this attempt before anyone takes it")
            }
        }
    }
}
