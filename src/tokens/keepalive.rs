//! Keeps idle grants alive. Google ends a refresh token nobody used for six months;
//! a connection the application reads rarely (or only after months) would die of it.
//! Every `AXNT_KEEPALIVE_INTERVAL_SECS` one instance (whoever takes the `keepalive`
//! job lease in the tokens table) pages through the tokens table and refreshes the
//! active connections whose refresh token went unused for `AXNT_KEEPALIVE_DAYS`,
//! through the same flight and row lease as every refresh, at a bounded pace.
//!
//! The same pass tells the application, once per forecast, about each grant predicted
//! to end within two days that a refresh cannot save (Google's Testing days, the end of
//! time-limited access; the idle limit too when the keep-alive is off):
//! `connection.expiring_soon`, stored with a mark on the row (`expiryNoticeFor`).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use tokio_util::sync::CancellationToken;

use super::TokenService;
use crate::events::{About, EventPayload};
use crate::jobs::{self, Jobs, Schedule};
use crate::oauth::grant::{AT_RISK_WITHIN, ExpiryReason, forecast, last_token_use};
use crate::store::flow_log::ClientInfo;
use crate::store::{
    Connection, GrantLedger, JobLease, LeaseRelease, RefreshLease, RefreshState, ScanCursor,
    StoreError,
};
use crate::tokens::TokenError;

/// Rows read per scan page.
const PAGE: usize = 100;
/// Rows read a second, at most (DynamoDB `Scan` costs read units per row read).
const ROWS_PER_SEC: usize = 100;
/// The job lease's name, and how long a pass holds it before renewing.
const JOB: &str = "keepalive";
const JOB_LEASE: Duration = Duration::from_secs(600);
/// The first pass is tried at most this long after start.
const FIRST_PASS_AFTER: Duration = Duration::from_secs(300);
/// A margin no stored access token of an idle connection meets: the read refreshes.
const FORCE: Duration = Duration::from_secs(10 * 365 * 86_400);
/// A grant is refreshed at least this long before its provider's idle limit, whatever
/// `AXNT_KEEPALIVE_DAYS` says (room for a failing pass or two).
const KEEPALIVE_SLACK: Duration = Duration::from_secs(10 * 86_400);

/// The keep-alive's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeepAlive {
    /// Refresh connections whose refresh token went unused this long (zero: never;
    /// the pass then only sends expiry notices).
    pub(crate) idle: Duration,
    /// How often a pass is tried.
    pub(crate) every: Duration,
    /// Refreshes a minute, at most.
    pub(crate) per_minute: u32,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeepAliveReport {
    /// False when another instance held the job lease.
    pub(crate) ran: bool,
    pub(crate) scanned: usize,
    pub(crate) refreshed: usize,
    pub(crate) failed: usize,
    /// `connection.expiring_soon` events stored.
    pub(crate) noticed: usize,
}

impl TokenService {
    /// Runs [`keepalive_pass`](Self::keepalive_pass) every `keep.every`.
    pub(crate) fn schedule_keepalive(self: &Arc<Self>, jobs: &Jobs, keep: KeepAlive) {
        let service = Arc::clone(self);
        let lease = Arc::new(JobLease::new(JOB, JOB_LEASE));
        // The first pass a few minutes after start (an instance replaced more often than
        // the interval would otherwise never run one), then every interval.
        let schedule = Schedule::every(keep.every)
            .first_after(keep.every.min(FIRST_PASS_AFTER))
            .jittered();
        jobs.run(
            JOB,
            schedule,
            jobs::from_fn(move |stop| {
                let service = Arc::clone(&service);
                let lease = Arc::clone(&lease);
                async move {
                    match service.keepalive_pass(keep, &lease, &stop).await {
                        Ok(report) if report.ran => tracing::info!(
                            scanned = report.scanned,
                            refreshed = report.refreshed,
                            failed = report.failed,
                            expiring_soon = report.noticed,
                            "keep-alive pass done"
                        ),
                        Ok(_) => {
                            tracing::debug!("keep-alive pass skipped: another instance runs it")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "keep-alive pass failed; trying again later")
                        }
                    }
                }
            }),
        );
    }

    /// One pass, if this process gets the job `lease`: every active connection idle
    /// for `keep.idle` is refreshed. A `stop` ends it between rows; the lease is then
    /// given back, for the next instance to run a whole pass.
    pub(crate) async fn keepalive_pass(
        &self,
        keep: KeepAlive,
        lease: &JobLease,
        stop: &CancellationToken,
    ) -> Result<KeepAliveReport, TokenError> {
        let mut report = KeepAliveReport::default();
        let started_ms = Utc::now().timestamp_millis();
        if !lease.hold(self.store.as_ref()).await? {
            return Ok(report);
        }
        report.ran = true;
        let client = ClientInfo {
            ip_address: None,
            user_agent: Some("axnt-oauth keep-alive".into()),
            caller: None,
        };
        let idle = chrono::TimeDelta::from_std(keep.idle).unwrap_or(chrono::TimeDelta::MAX);
        let pause = Duration::from_secs(60) / keep.per_minute.max(1);
        let mut cursor: Option<ScanCursor> = None;
        let result = async {
            loop {
                let page = self.store.scan(cursor.as_ref(), PAGE).await?;
                report.scanned += page.rows.len();
                for row in page.rows {
                    if stop.is_cancelled() {
                        return Ok::<bool, TokenError>(false);
                    }
                    // Only a provider with an idle limit has a clock a refresh resets
                    // (GitHub's OAuth-app tokens have no refresh token at all), and
                    // a shorter limit than the setting's (Microsoft's 90 days) is
                    // kept to, with room for a failing pass or two.
                    let due = !keep.idle.is_zero()
                        && self
                            .grant_rules(&row.provider)
                            .lifetimes
                            .idle
                            .map(|limit| {
                                chrono::TimeDelta::from_std(limit.saturating_sub(KEEPALIVE_SLACK))
                                    .unwrap_or(chrono::TimeDelta::MAX)
                                    .min(idle)
                            })
                            .and_then(|idle| Utc::now().checked_sub_signed(idle))
                            .is_some_and(|limit| last_token_use(&row) < limit);
                    if !row.is_active {
                        continue;
                    }
                    if !due {
                        if self.notice_expiry(&row, !keep.idle.is_zero()).await? {
                            report.noticed += 1;
                        }
                        continue;
                    }
                    let Ok(provider) = self.provider(&row.provider) else {
                        continue;
                    };
                    match self
                        .token_valid_for(provider, &row.user_id, &client, FORCE)
                        .await
                    {
                        Ok(_) => {
                            report.refreshed += 1;
                            // Refreshes can be slow: the lease is renewed as the pass goes.
                            lease.hold(self.store.as_ref()).await?;
                        }
                        Err(e) => {
                            report.failed += 1;
                            tracing::debug!(error = %e, user_id = row.user_id, "keep-alive refresh failed");
                        }
                    }
                    if !jobs::pause(pause, stop).await {
                        return Ok(false);
                    }
                }
                if !lease.hold(self.store.as_ref()).await? {
                    tracing::warn!("keep-alive lease taken over; leaving the pass to its new holder");
                    return Ok(true);
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => return Ok(true),
                }
                let page_pace = Duration::from_secs_f64(PAGE as f64 / ROWS_PER_SEC as f64);
                if !jobs::pause(page_pace, stop).await {
                    return Ok(false);
                }
            }
        }
        .await;
        // Done for this interval: the lease is kept until the next pass is due, so other
        // instances skip theirs (one pass per interval, not one per instance); a failed
        // pass, or one stopped at shutdown, gives it back for another instance to run.
        let keep_until =
            started_ms.saturating_add(i64::try_from(keep.every.as_millis()).unwrap_or(i64::MAX));
        let now_ms = Utc::now().timestamp_millis();
        let kept = match &result {
            Ok(true) if keep_until > now_ms => {
                lease.keep_until(self.store.as_ref(), keep_until).await
            }
            _ => lease.release(self.store.as_ref()).await,
        };
        if let Err(e) = kept {
            tracing::debug!(error = %e, "updating the keep-alive lease failed; it lapses");
        }
        match result {
            Ok(true) => Ok(report),
            Ok(false) => {
                tracing::info!(
                    scanned = report.scanned,
                    "keep-alive pass stopped at shutdown; the next instance runs it"
                );
                Ok(report)
            }
            Err(e) => Err(e),
        }
    }

    /// Stores `connection.expiring_soon` for `row` when its grant is forecast to end
    /// within two days of something a refresh cannot help (with the keep-alive on, a
    /// refresh resets the idle clock), once per forecast. Returns whether it did.
    async fn notice_expiry(
        &self,
        row: &Connection,
        keeping_alive: bool,
    ) -> Result<bool, TokenError> {
        let now = Utc::now();
        let f = forecast(row, self.grant_rules(&row.provider), now);
        let (Some(at), Some(reason)) = (f.predicted_expiry, f.reason) else {
            return Ok(false);
        };
        let soon = chrono::TimeDelta::from_std(AT_RISK_WITHIN)
            .ok()
            .and_then(|d| now.checked_add_signed(d))
            .is_some_and(|limit| at <= limit);
        let saved_by_refresh = keeping_alive && reason == ExpiryReason::IdleLimit;
        if !soon || saved_by_refresh || row.grant.expiry_notice_for == Some(at.timestamp()) {
            return Ok(false);
        }
        let event = [self.policy.events.make(EventPayload::ExpiringSoon {
            about: About::of(row),
            predicted_expiry: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            reason,
            sub: row.user_info.sub.clone(),
            email: row.email.clone(),
        })];
        // The row is written whole: under the row's refresh lease, so no refresh is
        // in flight whose write this would undo, and from the row as it is now. Only a
        // free lease is taken (any lease counts as live at the epoch): one that lapsed
        // without being given back may belong to a holder still storing new tokens,
        // which the refresh machinery holds for it rather than take.
        let now_ms = now.timestamp_millis();
        let lease = RefreshLease::new(uuid::Uuid::new_v4().to_string(), now_ms + 30_000);
        match self
            .store
            .acquire_lease(&row.user_id, &row.provider, row.version, &lease, 0)
            .await
        {
            Ok(()) => {}
            // The row moved on, or a refresh holds it: the next pass looks again.
            Err(StoreError::Conflict) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let current = match self.store.get(&row.user_id, &row.provider).await {
            Ok(Some(current)) => current,
            Ok(None) => return Ok(false),
            Err(e) => {
                self.give_lease_back(row, &lease.attempt).await;
                return Err(e.into());
            }
        };
        let marked = Connection {
            grant: GrantLedger {
                expiry_notice_for: Some(at.timestamp()),
                ..current.grant.clone()
            },
            version: current.version + 1,
            refresh: RefreshState {
                lease: None,
                ..current.refresh.clone()
            },
            ..current.clone()
        };
        match self
            .store
            .put_as_holder(&marked, &lease.attempt, &event)
            .await
        {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => {
                self.give_lease_back(&current, &lease.attempt).await;
                Err(e.into())
            }
        }
    }

    /// Releases a row lease this pass took, leaving the row's cooldown as it was.
    async fn give_lease_back(&self, row: &Connection, attempt: &str) {
        let after = LeaseRelease {
            retry_at_ms: row.refresh.retry_at_ms,
            unknown_since_ms: None,
        };
        if let Err(e) = self
            .store
            .release_lease(&row.user_id, &row.provider, attempt, after, &[])
            .await
        {
            tracing::debug!(error = %e, "releasing the expiry notice's lease failed; it lapses");
        }
    }
}
