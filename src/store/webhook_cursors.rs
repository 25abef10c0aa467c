//! Where webhook delivery to each endpoint stands.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::StoreError;

/// Where webhook delivery to one endpoint stands: the last event taken from the
/// feed, and the events still owed to the endpoint after failed attempts. Written
/// conditionally on `version` by whoever holds the endpoint's delivery lease.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookState {
    /// The id of the last event read from the feed (every event up to it was delivered
    /// or is in `pending`); empty before the first.
    pub cursor: String,
    /// Events owed after failed attempts, oldest first. A connection with one here has
    /// its later events here too, behind it (one in flight per connection, in order).
    pub pending: Vec<PendingDelivery>,
    /// Optimistic-concurrency counter (0: not stored yet).
    #[serde(skip)]
    pub version: u64,
}

/// An event owed to an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingDelivery {
    pub event_id: String,
    pub user_id: String,
    pub provider: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// Epoch milliseconds: not tried before this.
    pub next_attempt_ms: i64,
}

/// Webhook endpoints' delivery state.
#[async_trait]
pub trait WebhookCursors: Send + Sync {
    /// The delivery state of webhook endpoint `endpoint` (an id, not the URL), if any.
    async fn webhook_state(&self, endpoint: &str) -> Result<Option<WebhookState>, StoreError>;

    /// Writes it only if the stored one is at `expected` (`None`: only if there is
    /// none); `state.version` must be one more. A lost condition is a conflict.
    async fn put_webhook_state(
        &self,
        endpoint: &str,
        state: &WebhookState,
        expected: Option<u64>,
    ) -> Result<(), StoreError>;
}
