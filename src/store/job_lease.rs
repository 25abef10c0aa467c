//! The lease of a job one instance of the cluster runs at a time (the keep-alive
//! scan, a webhook endpoint's deliveries): a row in the tokens table, taken with a
//! conditional write through [`JobLeases::take_job_lease`].

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use async_trait::async_trait;

use super::StoreError;

/// Leases of jobs one instance runs at a time.
#[async_trait]
pub trait JobLeases: Send + Sync {
    /// Takes, or renews, the lease named `name` (a job only one instance runs at a time,
    /// e.g. the keep-alive scan) for `holder` until `until_ms`: only when nobody holds
    /// it, its holder's lease lapsed at `now_ms`, or `holder` holds it already. A
    /// conditional write; true when `holder` holds it now.
    async fn take_job_lease(
        &self,
        name: &str,
        holder: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError>;

    /// Gives the lease back, if `holder` holds it.
    async fn drop_job_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;
}

/// A job's lease, held by this process under a random id.
#[derive(Debug)]
pub(crate) struct JobLease {
    name: String,
    holder: String,
    lease: Duration,
    /// When this process last took or renewed it.
    renewed: Mutex<Option<Instant>>,
}

impl JobLease {
    pub(crate) fn new(name: impl Into<String>, lease: Duration) -> Self {
        Self {
            name: name.into(),
            holder: uuid::Uuid::new_v4().to_string(),
            lease,
            renewed: Mutex::new(None),
        }
    }

    /// Whether this process holds the lease, taking or renewing it (a store write) only
    /// once a third of it has passed since it last did.
    pub(crate) async fn hold(&self, store: &dyn JobLeases) -> Result<bool, StoreError> {
        if self
            .renewed()
            .is_some_and(|at| at.elapsed() < self.lease / 3)
        {
            return Ok(true);
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        let held = self
            .take(store, now_ms.saturating_add(millis(self.lease)), now_ms)
            .await?;
        self.set_renewed(held.then(Instant::now));
        Ok(held)
    }

    /// Keeps the lease until `until_ms` (a job done for its interval keeps other
    /// instances from running it again before then).
    pub(crate) async fn keep_until(
        &self,
        store: &dyn JobLeases,
        until_ms: i64,
    ) -> Result<(), StoreError> {
        self.set_renewed(None);
        self.take(store, until_ms, chrono::Utc::now().timestamp_millis())
            .await
            .map(drop)
    }

    /// Gives the lease back, for another instance to take.
    pub(crate) async fn release(&self, store: &dyn JobLeases) -> Result<(), StoreError> {
        self.set_renewed(None);
        store.drop_job_lease(&self.name, &self.holder).await
    }

    async fn take(
        &self,
        store: &dyn JobLeases,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        store
            .take_job_lease(&self.name, &self.holder, until_ms, now_ms)
            .await
    }

    fn renewed(&self) -> Option<Instant> {
        *self.renewed.lock()
    }

    fn set_renewed(&self, at: Option<Instant>) {
        *self.renewed.lock() = at;
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
