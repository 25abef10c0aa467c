//! `lastUsed` and the purge time moved forward by reads, at most once per interval.

use chrono::{DateTime, Utc};

use super::Refresher;
use crate::store::Connection;
use crate::tokens::cache::Cached;

impl Refresher {
    /// Moves `lastUsed` and the purge time forward, at most once per interval. A
    /// partial update (tokens, `version` and any refresh lease stay as they are); best
    /// effort.
    /// Moves the row's `lastUsed` when the interval has passed; returns the `lastUsed`
    /// the row has now.
    pub(super) async fn touch(&self, row: &Connection, now: DateTime<Utc>) -> DateTime<Utc> {
        if !self
            .policy
            .last_used_due(row.last_used.timestamp(), now.timestamp())
        {
            return row.last_used;
        }
        self.write_last_used(&row.user_id, &row.provider, now).await;
        now
    }

    /// A cache hit's share of [`touch`](Self::touch): one hit per interval writes.
    pub(super) async fn touch_cached(&self, hit: &Cached, user_id: &str, provider: &str) {
        let now = Utc::now();
        if hit.claim_last_used(now.timestamp(), &self.policy) {
            self.write_last_used(user_id, provider, now).await;
        }
    }

    pub(super) async fn write_last_used(&self, user_id: &str, provider: &str, now: DateTime<Utc>) {
        if let Err(e) = self
            .store
            .touch(user_id, provider, now, self.policy.purge_time(now, true))
            .await
        {
            tracing::warn!(error = %e, "updating lastUsed failed");
        }
    }
}
