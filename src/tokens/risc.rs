//! What Google's security events (RISC) do to connections: a verified token's events,
//! once per `jti`. `tokens-revoked`, and `account-disabled` for `hijacking`, end every
//! live grant of that Google account made before the event; `token-revoked` ends the
//! grant whose refresh token it names (by Google's identifier, matched against the
//! hashes stored at connect). Each ended grant is marked inactive with its cause and
//! makes `connection.revoked_by_user`, in the same write. Other events are recorded.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{TokenService, WRITE_ATTEMPTS};
use crate::error::Error;
use crate::events::EventType;
use crate::oauth::grant::Cause;
use crate::oauth::risc::{
    ACCOUNT_DISABLED, SESSIONS_REVOKED, SecurityEventToken, TOKEN_REVOKED, TOKENS_REVOKED,
    VERIFICATION, prefix_hash,
};
use crate::store::flow_log::ClientInfo;
use crate::store::{Connection, FlowStep, RefreshState, ScanCursor, StoreError};

/// A `jti` is remembered this long (Google retries a delivery for far less).
const JTI_MEMORY_SECS: i64 = 30 * 86_400;
/// The flow-log partition security events with no connection are recorded under (no
/// user id can be it: user ids never hold `/`).
pub(crate) const RISC_LOG: &str = "/risc/google";

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

impl TokenService {
    /// Applies a verified security event token (once per `jti`).
    pub(crate) async fn apply_security_event(
        &self,
        set: &SecurityEventToken,
        provider: &str,
    ) -> Result<RiscOutcome, Error> {
        let now = Utc::now();
        if !self
            .store
            .mark_flow_started(
                &format!("risc:{}", set.jti),
                now.timestamp() + JTI_MEMORY_SECS,
            )
            .await?
        {
            count(provider, "duplicate");
            return Ok(RiscOutcome {
                duplicate: true,
                ended: 0,
            });
        }
        let result = self.act_on(set, provider, now).await;
        if result.is_err() {
            // Not done: forget the jti, so the sender's retry is acted on.
            let mark = format!("risc:{}", set.jti);
            if let Err(e) = self.store.unmark_flow_started(&mark).await {
                tracing::warn!(error = %e, "a failed security event's jti could not be forgotten; its retry will be taken for a duplicate");
            }
        }
        result
    }

    async fn act_on(
        &self,
        set: &SecurityEventToken,
        provider: &str,
        now: DateTime<Utc>,
    ) -> Result<RiscOutcome, Error> {
        let issued = DateTime::from_timestamp(set.iat, 0).unwrap_or(now);
        let mut outcome = RiscOutcome::default();
        for (kind, details) in &set.events {
            let short = kind.rsplit('/').next().unwrap_or(kind.as_str());
            let acted = match (kind.as_str(), target(kind, details)) {
                (TOKENS_REVOKED, Some(t)) => Some((t, "revoked_by_user")),
                (ACCOUNT_DISABLED, Some(t))
                    if details.get("reason").and_then(Value::as_str) == Some("hijacking") =>
                {
                    Some((t, "account_disabled"))
                }
                (TOKEN_REVOKED, Some(t)) => Some((t, "revoked_by_user")),
                _ => None,
            };
            match acted {
                Some((t, cause)) => {
                    let n = self.end_grants(&t, cause, short, provider, issued).await?;
                    outcome.ended += n;
                    count(provider, if n > 0 { "applied" } else { "no_connection" });
                }
                None => {
                    // sessions-revoked, verification, account-disabled (other reasons),
                    // account-enabled, …: recorded, nothing to change.
                    let recorded = matches!(kind.as_str(), SESSIONS_REVOKED | VERIFICATION)
                        || kind.starts_with("https://schemas.openid.net/secevent/");
                    let client = ClientInfo {
                        ip_address: None,
                        user_agent: Some("Google RISC".into()),
                    };
                    self.flow_log
                        .flow(RISC_LOG, &set.jti, provider, &client)
                        .step(
                            FlowStep::SecurityEvent,
                            json!({
                                "eventType": short,
                                "reason": details.get("reason"),
                                "state": details.get("state"),
                                "known": recorded,
                            }),
                        )
                        .await;
                    count(provider, "recorded");
                }
            }
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
    ) -> Result<usize, Error> {
        // No index by account or token: a paged scan of the tokens table (security
        // events are rare; the keep-alive scans the same way).
        let mut ended = 0;
        let mut cursor: Option<ScanCursor> = None;
        loop {
            let page = self.store.scan(cursor.as_ref(), 200).await?;
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
        mut row: Connection,
        target: &Target,
        issued: DateTime<Utc>,
        cause: &str,
        event_type: &str,
    ) -> Result<bool, Error> {
        for _ in 0..WRITE_ATTEMPTS {
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
            let event = [self.policy.events.make(
                EventType::RevokedByUser,
                &row.user_id,
                &row.provider,
                json!({
                    "cause": cause,
                    "remedy": remedy,
                    "sub": row.user_info.sub,
                    "email": row.email,
                    "securityEvent": event_type,
                }),
            )];
            match self.store.put(&ended, Some(row.version), &event).await {
                Ok(()) => {
                    self.refresher.cache.invalidate(&row.user_id, &row.provider);
                    metrics::counter!("axnt_grants_ended_total", "provider" => row.provider.clone(), "cause" => cause.to_string())
                        .increment(1);
                    let client = ClientInfo {
                        ip_address: None,
                        user_agent: Some("Google RISC".into()),
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
                    return Ok(true);
                }
                Err(StoreError::Conflict) => {
                    // Moved on: still the grant the event names (not a new one)?
                    match self.store.get(&row.user_id, &row.provider).await? {
                        Some(again) if named(target, &again, issued) => row = again,
                        _ => return Ok(false),
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::Conflict)
    }
}

/// The connections an event's `subject` names, if it names any this service can find.
fn target(kind: &str, details: &Value) -> Option<Target> {
    let subject = details.get("subject")?;
    let text = |k: &str| subject.get(k).and_then(Value::as_str).map(str::to_string);
    if kind == TOKEN_REVOKED {
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

/// `axnt_security_events_total{provider, outcome}`: `applied`, `no_connection`,
/// `recorded`, `duplicate` (a replayed `jti`).
fn count(provider: &str, outcome: &'static str) {
    metrics::counter!("axnt_security_events_total", "provider" => provider.to_string(), "outcome" => outcome)
        .increment(1);
}
