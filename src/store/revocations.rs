//! Revocations at the provider kept to be tried again.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::crypto::Envelope;

/// A revocation at the provider that failed for a passing reason when its connection
/// was deleted, kept to be tried again (by any instance, after restarts) until it
/// succeeds or `expires_at`. Its token is sealed to this record, never in clear.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingRevocation {
    /// Random; the record's key.
    pub id: String,
    pub user_id: String,
    pub provider: String,
    /// The revoked grant's account: a later grant of the same account for the same
    /// connection supersedes the revocation (Google's would end that grant too).
    pub sub: String,
    /// The token to revoke, sealed to this record.
    pub encrypted_token: Envelope,
    /// `refresh_token` or `access_token`.
    pub token_kind: String,
    /// The OAuth client the grant was made with (`None`: the provider's current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Attempts made so far (the one at deletion included).
    pub attempts: u32,
    /// Epoch seconds: not tried again before this.
    pub next_attempt_at: i64,
    /// Epoch seconds: given up (and purged) after this.
    pub expires_at: i64,
}

/// The queue of revocations to try again.
#[async_trait]
pub trait RevocationQueue: Send + Sync {
    /// Stores (or replaces, by `id`) a revocation to try again.
    async fn put_revocation(&self, revocation: &PendingRevocation) -> Result<(), StoreError>;

    /// Records another failed attempt at a kept revocation (its `attempts` and
    /// `next_attempt_at`), only while the stored one is still at `attempts_before`
    /// attempts: one removed (done by another instance) or moved on since is a
    /// [`StoreError::Conflict`], and nothing comes back. The rest of the record stays as
    /// stored (a key rotation may have re-wrapped its token meanwhile).
    async fn reschedule_revocation(
        &self,
        revocation: &PendingRevocation,
        attempts_before: u32,
    ) -> Result<(), StoreError>;

    /// Revocations due at `now` (epoch seconds; `next_attempt_at` passed), at most
    /// `limit`, expired ones included (so they can be given up).
    async fn revocations_due(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<PendingRevocation>, StoreError>;

    /// Removes a revocation (done, superseded or given up); absent is fine.
    async fn remove_revocation(&self, id: &str) -> Result<(), StoreError>;
}
