//! What a connect flow leaves in the store: single-use marks and grants held for the
//! application's confirmation.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{StoreError, UserInfo};
use crate::crypto::Envelope;

/// A grant held back until the application confirms its flow (confirmation mode). It
/// is never handed out: it becomes the connection's row only through the confirm call,
/// and is refused (then purged) after `expires_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingGrant {
    pub flow_id: String,
    pub user_id: String,
    pub provider: String,
    /// The sealed token set, bound to this flow's pending grant (its associated data is
    /// not the connection row's, so it cannot be copied into a row).
    pub encrypted_tokens: Envelope,
    pub user_info: UserInfo,
    pub created_at: DateTime<Utc>,
    /// Epoch seconds: the confirmation deadline, and when the item may be purged.
    pub expires_at: i64,
}

/// Single-use marks and held grants.
#[async_trait]
pub trait ConnectFlows: Send + Sync {
    /// Marks `key` used, once, keeping the mark until `expires_at` (epoch seconds): a
    /// connect link's flow id (single-use links), `risc:<jti>` (a security event acted
    /// on once). The mark names `attempt`, a random id of the calling operation. True
    /// when this attempt holds the mark: it made it, or it finds the mark it made itself
    /// (a write retried after its answer was lost, as the AWS SDK does); false when
    /// another attempt made it and it has not expired (a mark past `expires_at` counts as
    /// gone, purged or not). A conditional create: of concurrent attempts, exactly one
    /// gets true. Marking again with a later `expires_at` keeps this attempt's mark
    /// longer.
    async fn mark_once(
        &self,
        key: &str,
        attempt: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError>;

    /// Removes the mark `attempt` made on `key` (its work failed, so it can be tried
    /// again). A mark another attempt made is left as it is; none is fine.
    async fn unmark(&self, key: &str, attempt: &str) -> Result<(), StoreError>;

    /// Stores a grant awaiting its flow's confirmation (one per flow).
    async fn put_pending(&self, grant: &PendingGrant) -> Result<(), StoreError>;

    /// A flow's pending grant, expired or not, left in place (one being taken is
    /// absent).
    async fn get_pending(&self, flow_id: &str) -> Result<Option<PendingGrant>, StoreError>;

    /// Removes and returns a flow's pending grant, expired or not: of two concurrent
    /// takers, one gets it and the other `None`.
    async fn take_pending(&self, flow_id: &str) -> Result<Option<PendingGrant>, StoreError>;
}
