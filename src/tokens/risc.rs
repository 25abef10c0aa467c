//! What Google's security events (RISC) do to connections: a verified token's events,
//! once per `jti`. This service holds grants, not sign-in sessions, so an event acts
//! only when it says a grant is dead or not to be trusted: `tokens-revoked`, and
//! `account-disabled` for `hijacking`, end every live grant of that Google account made
//! before the event; `token-revoked` ends the grant whose refresh token it names (by
//! Google's identifier, matched against the hashes stored at connect). Each ended grant
//! is marked inactive with its cause and makes `connection.revoked_by_user`, in the
//! same write. Every other event (`sessions-revoked`, `account-disabled` for another
//! reason or none, `account-enabled`, `account-credential-change-required`,
//! `verification`, a type Google does not document) is recorded in the flow log under
//! [`RISC_LOG`].
//!
//! Finding an event's grants pages through the whole tokens table (there is no index by
//! account or token hash; events are rare): one such scan at a time per process, at
//! most [`SCAN_PAGE`] rows every [`SCAN_PAGE_EVERY`], each row read counted.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{TokenService, WRITE_ATTEMPTS};
use crate::events::{About, EventPayload};
use crate::oauth::grant::Cause;
use crate::oauth::risc::{EventKind, SecurityEventToken, prefix_hash};
use crate::retry::{Written, until_written};
use crate::series::Label;
use crate::store::flow_log::ClientInfo;
use crate::store::{Connection, FlowStep, RefreshState, ScanCursor, StoreError};
use crate::tokens::TokenError;

/// A `jti` is remembered this long once acted on (Google retries a delivery for far
/// less).
const JTI_MEMORY_SECS: i64 = 30 * 86_400;
/// While its work runs, a `jti`'s mark lasts this long: a process that stops in the
/// middle (killed, past the shutdown's drain) leaves a mark that expires, so a later
/// delivery of the same event is acted on rather than taken for a duplicate. A
/// graceful shutdown forgets the marks of work it cut off at once.
const JTI_IN_PROGRESS_SECS: i64 = 3_600;
/// The flow-log partition security events with no connection are recorded under (no
/// user id can be it: user ids never hold `/`).
pub(crate) const RISC_LOG: &str = "/risc/google";
/// Rows read per page of an event's scan, and the least time between two pages:
/// 1,000 rows a second, so an event on a large table never takes the table's read
/// capacity from token reads (docs/grants.md gives the cost per million rows).
const SCAN_PAGE: usize = 200;
const SCAN_PAGE_EVERY: Duration = Duration::from_millis(200);

/// What one security event token did.
#[derive(Debug, Default)]
pub(crate) struct RiscOutcome {
    /// The `jti` was seen before: nothing was done.
    pub(crate) duplicate: bool,
    /// Connections whose grant this ended.
    pub(crate) ended: usize,
}

/// Which connections an event ends.
enum Target {
    /// Every live grant of this Google account.
    Account { sub: String },
    /// The grant holding this refresh token (by Google's identifier).
    Token {
        hash: Option<String>,
        prefix: Option<String>,
    },
}

/// The grants' cause an event of `kind` ends them with, if it ends any.
fn cause_of(kind: EventKind, details: &Value) -> Option<&'static str> {
    match kind {
        EventKind::TokensRevoked | EventKind::TokenRevoked => Some("revoked_by_user"),
        EventKind::AccountDisabled
            if details.get("reason").and_then(Value::as_str) == Some("hijacking") =>
        {
            Some("account_disabled")
        }
        // Sign-in sessions (this service keeps none), an account enabled again (grants
        // ended for hijacking stay ended: they were made while it may have been
        // someone else's), a disabled account for another reason (its grants may work
        // again once Google enables it), a credential change, a test: recorded.
        EventKind::AccountDisabled
        | EventKind::SessionsRevoked
        | EventKind::AccountEnabled
        | EventKind::AccountCredentialChangeRequired
        | EventKind::Verification => None,
    }
}

impl TokenService {
    /// Applies a verified security event token (once per `jti`).
    pub(crate) async fn apply_security_event(
        &self,
        set: &SecurityEventToken,
        provider: &str,
    ) -> Result<RiscOutcome, TokenError> {
        let now = Utc::now();
        let mark = format!("risc:{}", set.jti);
        // Names this call's mark, so a write the SDK retries finds its own mark and goes
        // on, rather than taking it for an earlier delivery's.
        let attempt = uuid::Uuid::new_v4().to_string();
        if !self
            .store
            .mark_once(&mark, &attempt, now.timestamp() + JTI_IN_PROGRESS_SECS)
            .await?
        {
            count(provider, SecurityEventOutcome::Duplicate);
            return Ok(RiscOutcome {
                duplicate: true,
                ended: 0,
            });
        }
        self.security_marks
            .lock()
            .insert(mark.clone(), attempt.clone());
        let result = self.act_on(set, provider, now).await;
        self.security_marks.lock().remove(&mark);
        match &result {
            // Done: remembered for long, so a redelivery does nothing.
            Ok(_) => {
                let until = Utc::now().timestamp() + JTI_MEMORY_SECS;
                if let Err(e) = self.store.mark_once(&mark, &attempt, until).await {
                    tracing::warn!(error = %e, "a security event's jti could not be kept for long; a redelivery after an hour is acted on again (harmlessly: its grants are ended already)");
                }
            }
            // Not done: forget the jti, so the sender's retry is acted on.
            Err(_) => {
                if let Err(e) = self.store.unmark(&mark, &attempt).await {
                    tracing::warn!(error = %e, "a failed security event's jti could not be forgotten; a retry within the hour is taken for a duplicate");
                }
            }
        }
        result
    }

    /// Forgets the marks of security events whose work is still running (called at
    /// shutdown, once the drain ran out: that work is cut off), so their redeliveries
    /// are acted on.
    pub(super) async fn forget_unfinished_security_events(&self) {
        let unfinished: Vec<(String, String)> = self.security_marks.lock().drain().collect();
        for (mark, attempt) in unfinished {
            let forgotten =
                tokio::time::timeout(Duration::from_secs(2), self.store.unmark(&mark, &attempt))
                    .await;
            if !matches!(forgotten, Ok(Ok(()))) {
                tracing::warn!(
                    mark,
                    "a security event cut off at shutdown could not be forgotten; its mark expires within the hour"
                );
            }
        }
    }

    async fn act_on(
        &self,
        set: &SecurityEventToken,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<RiscOutcome, TokenError> {
        let issued = DateTime::from_timestamp(set.iat, 0).unwrap_or(now);
        let mut outcome = RiscOutcome::default();
        for (uri, details) in &set.events {
            let kind = EventKind::from_uri(uri);
            let acted = kind.and_then(|kind| Some((kind, cause_of(kind, details)?)));
            if let Some((kind, cause)) = acted {
                if let Some(target) = target(kind, details) {
                    let n = self
                        .end_grants(&target, cause, kind.name(), provider, issued)
                        .await?;
                    outcome.ended += n;
                    count(
                        provider,
                        if n > 0 {
                            SecurityEventOutcome::Applied
                        } else {
                            SecurityEventOutcome::NoConnection
                        },
                    );
                    continue;
                }
                tracing::warn!(
                    event_type = kind.name(),
                    "a security event names no account or token this service can find; recorded"
                );
            }
            let client = ClientInfo {
                ip_address: None,
                user_agent: Some("Google RISC".into()),
                caller: None,
            };
            self.flow_log
                .flow(RISC_LOG, &set.jti, provider, &client)
                .step(
                    FlowStep::SecurityEvent,
                    json!({
                        // A type Google does not document is named by its whole URI.
                        "eventType": kind.map_or(uri.as_str(), |k| k.name()),
                        "reason": details.get("reason"),
                        "state": details.get("state"),
                        "known": kind.is_some(),
                    }),
                )
                .await;
            count(
                provider,
                if kind.is_some() {
                    SecurityEventOutcome::Recorded
                } else {
                    SecurityEventOutcome::UnknownType
                },
            );
        }
        Ok(outcome)
    }

    /// Marks every live grant `target` names, made before `issued`, inactive with
    /// `cause`, each with its `connection.revoked_by_user`. Returns how many.
    async fn end_grants(
        &self,
        target: &Target,
        cause: &str,
        event_type: &str,
        provider: &str,
        issued: DateTime<Utc>,
    ) -> Result<usize, TokenError> {
        // No index by account or token: a scan of the tokens table, one at a time in
        // this process and paced, so a burst of events cannot take the table's reads.
        let _one_at_a_time = self.security_scans.lock().await;
        let mut pace = tokio::time::interval(SCAN_PAGE_EVERY);
        pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ended = 0;
        let mut cursor: Option<ScanCursor> = None;
        loop {
            pace.tick().await;
            let page = self.store.scan(cursor.as_ref(), SCAN_PAGE).await?;
            metrics::counter!(crate::series::SECURITY_EVENT_ROWS_SCANNED_TOTAL, "provider" => provider.to_string())
                .increment(u64::try_from(page.rows.len()).unwrap_or(u64::MAX));
            for row in page.rows {
                if row.provider == provider
                    && named(target, &row, issued)
                    && self
                        .end_grant(row, target, issued, cause, event_type)
                        .await?
                {
                    ended += 1;
                }
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(ended),
            }
        }
    }

    /// Marks one row inactive (re-reading it when it moved on meanwhile).
    async fn end_grant(
        &self,
        row: Connection,
        target: &Target,
        issued: DateTime<Utc>,
        cause: &str,
        event_type: &str,
    ) -> Result<bool, TokenError> {
        // The row as last read: a lost write reads it again, for the next attempt.
        let current = parking_lot::Mutex::new(row);
        until_written::<_, TokenError, _>(WRITE_ATTEMPTS, || async {
            let row = current.lock().clone();
            let now = Utc::now();
            let ended = Connection {
                is_active: false,
                updated_at: now,
                expires_at: self.policy.purge_time(now, false),
                refresh: RefreshState {
                    inactive_cause: Some(cause.to_string()),
                    ..RefreshState::default()
                },
                ..row.successor()
            };
            let remedy = Cause::from_code(cause).map(Cause::remedy);
            let event = [self.policy.events.make(EventPayload::RevokedByUser {
                about: About::of(&row),
                cause: cause.to_string(),
                    remedy: remedy.map(str::to_string),
                    sub: row.user_info.sub.clone(),
                    email: row.email.clone(),
                    security_event: event_type.to_string(),
                },
            )];
            match self.store.put(&ended, Some(row.version), &event).await {
                Ok(()) => {
                    self.refresher.cache.invalidate(&row.user_id, &row.provider);
                    metrics::counter!(crate::series::GRANTS_ENDED_TOTAL, "provider" => row.provider.clone(), "cause" => cause.to_string())
                        .increment(1);
                    let client = ClientInfo {
                        ip_address: None,
                        user_agent: Some("Google RISC".into()),
                        caller: None,
                    };
                    let flow_id = uuid::Uuid::new_v4().to_string();
                    self.flow_log
                        .flow(&row.user_id, &flow_id, &row.provider, &client)
                        .step_failed(
                            FlowStep::SecurityEvent,
                            json!({ "eventType": event_type, "cause": cause, "remedy": remedy, "isActive": false }),
                            cause,
                        )
                        .await;
                    Ok(Written::Done(true))
                }
                Err(StoreError::Conflict) => {
                    // Moved on: still the grant the event names (not a new one)?
                    match self.store.get(&row.user_id, &row.provider).await? {
                        Some(again) if named(target, &again, issued) => {
                            *current.lock() = again;
                            Ok(Written::Lost)
                        }
                        _ => Ok(Written::Done(false)),
                    }
                }
                Err(e) => Err(e.into()),
            }
        })
        .await?
        .ok_or(TokenError::Conflict)
    }
}

/// The connections an event's `subject` names, if it names any this service can find.
fn target(kind: EventKind, details: &Value) -> Option<Target> {
    let subject = details.get("subject")?;
    let text = |k: &str| subject.get(k).and_then(Value::as_str).map(str::to_string);
    if kind == EventKind::TokenRevoked {
        let token = text("token")?;
        return match text("token_identifier_alg").as_deref() {
            Some("hash_base64_sha512_sha512") => Some(Target::Token {
                hash: Some(token),
                prefix: None,
            }),
            Some("prefix") => Some(Target::Token {
                hash: None,
                prefix: Some(prefix_hash(&token)),
            }),
            _ => None,
        };
    }
    text("sub").map(|sub| Target::Account { sub })
}

/// Whether `row` is a live grant `target` names, made before the event (`issued`): a
/// grant made after it is not the one the event is about.
fn named(target: &Target, row: &Connection, issued: DateTime<Utc>) -> bool {
    row.is_active && matches(target, row) && row.grant.consented_at.is_none_or(|at| at <= issued)
}

fn matches(target: &Target, row: &Connection) -> bool {
    match target {
        Target::Account { sub } => row.user_info.sub == *sub,
        Target::Token { hash, prefix } => {
            (hash.is_some() && row.grant.refresh_token_hash == *hash)
                || (prefix.is_some() && row.grant.refresh_token_prefix_hash == *prefix)
        }
    }
}

/// What a security event came to: [`SECURITY_EVENTS_TOTAL`](crate::series::SECURITY_EVENTS_TOTAL)'s `outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum SecurityEventOutcome {
    /// Grants ended.
    Applied,
    /// No connection to end.
    NoConnection,
    /// Nothing to change: recorded.
    Recorded,
    /// A type Google does not document: recorded.
    UnknownType,
    /// A replayed `jti`.
    Duplicate,
}

/// Counts one event in [`SECURITY_EVENTS_TOTAL`](crate::series::SECURITY_EVENTS_TOTAL).
fn count(provider: &str, outcome: SecurityEventOutcome) {
    metrics::counter!(crate::series::SECURITY_EVENTS_TOTAL, "provider" => provider.to_string(), "outcome" => outcome.label())
        .increment(1);
}
