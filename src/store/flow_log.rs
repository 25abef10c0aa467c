//! Writing flow steps: names, sort keys and retention, over any [`FlowLog`].

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use async_trait::async_trait;

use super::StoreError;
use crate::crypto::{fill_random, hex};
use crate::series::Label;

/// One step of one flow: the logs table's item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FlowLogEntry {
    pub user_id: String,
    /// RFC 3339 UTC with nine fractional digits, `#`, and a unique suffix.
    pub timestamp: String,
    pub flow_id: String,
    pub step: FlowStep,
    /// Step details. Never a token, code, verifier or key.
    #[schema(value_type = Object)]
    pub data: serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// Epoch seconds when the item may be purged.
    #[serde(skip_serializing)]
    pub expires_at: i64,
}

/// The logs table.
#[async_trait]
pub trait FlowLog: Send + Sync {
    async fn append(&self, entry: &FlowLogEntry) -> Result<(), StoreError>;

    /// Writes `entries`, all or (on failure) perhaps only some of them: writing one again
    /// is harmless, its key being fixed. A store that can write many in one call does
    /// (SQLite: one transaction); the others write them one by one.
    async fn append_all(&self, entries: &[FlowLogEntry]) -> Result<(), StoreError> {
        for entry in entries {
            self.append(entry).await?;
        }
        Ok(())
    }

    /// A user's steps, newest first, at most `limit`, older than `before` when given
    /// (a `timestamp` from a previous page).
    async fn list(
        &self,
        user_id: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<Vec<FlowLogEntry>, StoreError>;

    /// Writes whatever is buffered. Called on shutdown.
    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// A cheap read proving the table answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The step names, as the flow log stores them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum FlowStep {
    SessionCreated,
    AuthorizeRedirect,
    CallbackReceived,
    StateVerified,
    CodeExchanged,
    IdTokenVerified,
    /// An OAuth 2 provider without ID tokens: the account read from its user endpoint.
    AccountFetched,
    TokensStored,
    /// Confirmation mode: the grant is held until the application confirms the flow.
    AwaitingConfirmation,
    /// The application confirmed the flow; the held grant is stored next.
    Confirmed,
    Completed,
    Failed,
    TokenRefreshed,
    RefreshFailed,
    Revoked,
    Deleted,
    /// An audit-trail item (kept under the audit partitions, never a user's flow log).
    TokenRead,
    /// A security event from the provider (Google's RISC): a grant it ended, or an
    /// event only recorded.
    SecurityEvent,
    /// A grant made elsewhere was stored as the connection (`axnt-oauth import`, the
    /// import API).
    Imported,
    /// The connection was written out by `axnt-oauth export` (with its refresh token
    /// or without).
    Exported,
}

impl FlowStep {
    pub(crate) fn parse(name: &str) -> Option<Self> {
        serde_json::from_value(Value::String(name.to_string())).ok()
    }
}

/// Who the step came from, as far as the request tells.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientInfo {
    pub(crate) ip_address: Option<String>,
    pub(crate) user_agent: Option<String>,
    /// The name of the internal-API caller (or command) that made the step, whatever
    /// its kind; recorded as `caller` in the step's data.
    pub(crate) caller: Option<String>,
}

/// Longest user agent kept; the rest is cut (a header is not a place to store a book).
const MAX_USER_AGENT: usize = 512;

/// Records flow steps. A failed write is logged and never fails the request that
/// caused it: losing a log line must not lose a user's connection.
pub struct FlowRecorder {
    log: Arc<dyn FlowLog>,
    retention: Duration,
    clock: SortKeyClock,
}

impl FlowRecorder {
    pub(crate) fn new(log: Arc<dyn FlowLog>, retention: Duration) -> Self {
        Self {
            log,
            retention,
            clock: SortKeyClock::default(),
        }
    }

    pub(crate) fn log(&self) -> &Arc<dyn FlowLog> {
        &self.log
    }

    /// The writer of one flow's steps: each item is filed under this user and flow
    /// id, names the provider in its data and records the caller.
    pub(crate) fn flow(
        &self,
        user_id: &str,
        flow_id: &str,
        provider: &str,
        client: &ClientInfo,
    ) -> FlowSteps<'_> {
        FlowSteps {
            recorder: self,
            user_id: user_id.to_string(),
            flow_id: flow_id.to_string(),
            provider: provider.to_string(),
            client: client.clone(),
        }
    }

    #[tracing::instrument(skip_all, fields(user_id = %flow.user_id, flow_id = %flow.flow_id, step = step.label()))]
    async fn append(
        &self,
        flow: &FlowSteps<'_>,
        step: FlowStep,
        mut data: Map<String, Value>,
        error: Option<String>,
    ) {
        // The authenticated caller, over anything a step's data says.
        if let Some(caller) = &flow.client.caller {
            data.insert("caller".into(), Value::String(caller.clone()));
        }
        let now = Utc::now();
        let entry = FlowLogEntry {
            user_id: flow.user_id.clone(),
            timestamp: self.clock.next_key(now),
            flow_id: flow.flow_id.clone(),
            step,
            data,
            error,
            ip_address: flow.client.ip_address.clone(),
            user_agent: flow
                .client
                .user_agent
                .as_ref()
                .map(|ua| ua.chars().take(MAX_USER_AGENT).collect()),
            expires_at: now.timestamp() + self.retention.as_secs() as i64,
        };
        if let Err(e) = self.log.append(&entry).await {
            tracing::warn!(error = %e, "flow-log write failed");
        }
    }
}

/// The flow-log writer of one flow (made by [`FlowRecorder::flow`]): steps are named
/// by [`FlowStep`] alone, and every item carries the flow's user, id, provider and caller.
pub struct FlowSteps<'a> {
    recorder: &'a FlowRecorder,
    user_id: String,
    flow_id: String,
    provider: String,
    client: ClientInfo,
}

/// What a `failed` item records of the error that ended a flow: its stable code, a
/// finer reason where there is one, and its message.
#[derive(Debug, Clone)]
pub struct FlowFailure {
    pub(crate) code: &'static str,
    pub(crate) reason: Option<&'static str>,
    pub(crate) message: String,
}

impl FlowSteps<'_> {
    /// Appends `step`. `data` is a JSON object that must hold no secret: ids, names,
    /// counts and provider error codes only (`provider` is added here).
    pub(crate) async fn step(&self, step: FlowStep, data: Value) {
        self.write(step, data, None).await;
    }

    /// Appends `step` (a `refresh_failed`) with its `error`: a stable code, never a
    /// message that could quote a secret.
    pub(crate) async fn step_failed(&self, step: FlowStep, data: Value, error: &str) {
        self.write(step, data, Some(error.to_string())).await;
    }

    /// Appends the `failed` item of a flow that ended at step `at`.
    pub(crate) async fn failed(&self, at: FlowStep, failure: impl Into<FlowFailure>) {
        let failure = failure.into();
        let mut data = json!({ "atStep": at, "code": failure.code });
        if let Some(reason) = failure.reason {
            data["reason"] = json!(reason);
        }
        self.write(FlowStep::Failed, data, Some(failure.message))
            .await;
    }

    async fn write(&self, step: FlowStep, data: Value, error: Option<String>) {
        let mut data = match data {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        data.insert("provider".into(), Value::String(self.provider.clone()));
        self.recorder.append(self, step, data, error).await;
    }
}

/// Makes sort keys that are unique and, within this process, strictly increasing:
/// `2026-11-25T10:48:35.123456789Z#<16 hex>`. Two steps in the same nanosecond get
/// consecutive nanoseconds, so a flow's steps read back in the order they happened;
/// the random suffix keeps keys from two instances apart.
#[derive(Default)]
pub struct SortKeyClock {
    last_nanos: AtomicI64,
}

impl SortKeyClock {
    pub fn next_key(&self, now: DateTime<Utc>) -> String {
        let wanted = now.timestamp_nanos_opt().unwrap_or(i64::MAX);
        let mut last = self.last_nanos.load(Ordering::Relaxed);
        let nanos = loop {
            let next = wanted.max(last.saturating_add(1));
            match self.last_nanos.compare_exchange_weak(
                last,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break next,
                Err(seen) => last = seen,
            }
        };
        let at = DateTime::from_timestamp_nanos(nanos);
        let mut suffix = [0u8; 8];
        fill_random(&mut suffix);
        format!("{}#{}", at.format("%Y-%m-%dT%H:%M:%S%.9fZ"), hex(&suffix))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_one_instant_are_unique_and_ordered() {
        let clock = SortKeyClock::default();
        let now = Utc::now();
        let keys: Vec<String> = (0..1000).map(|_| clock.next_key(now)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "string order is time order");
        sorted.dedup();
        assert_eq!(sorted.len(), 1000, "no two keys collide");
        assert_eq!(
            keys[0].split('#').next().map(str::len),
            Some(30),
            "nine fractional digits"
        );
    }

    #[test]
    fn step_names_are_the_spec_names() {
        assert_eq!(FlowStep::IdTokenVerified.label(), "id_token_verified");
        assert_eq!(
            FlowStep::parse("refresh_failed"),
            Some(FlowStep::RefreshFailed)
        );
        assert_eq!(
            serde_json::to_value(FlowStep::AuthorizeRedirect).ok(),
            Some(Value::String("authorize_redirect".into()))
        );
    }
}
