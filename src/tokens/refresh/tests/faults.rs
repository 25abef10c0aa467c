//! Faults the takeover cases inject: one instance's way to the store that a test
//! cuts (as a network would), and a key service that stops issuing data keys.

use std::sync::atomic::{AtomicBool, AtomicU8};

use super::*;
use crate::crypto::{CryptoError, DataKey, Envelope, KeyProvider, WrappedKey};
use crate::store::{
    AccountGrantLog, AccountGrants, ConnectFlows, Connections, Event, EventFeed, Health, JobLeases,
    LeaseRelease, PendingGrant, PendingRevocation, RefreshLeases, RevocationQueue, ScanCursor,
    ScanPage, Sealed, SealedItems, SealedPage, WebhookCursors, WebhookState,
};
use chrono::DateTime;

pub(super) const UP: u8 = 0;
pub(super) const DOWN: u8 = 1;
/// Reads answer, writes fail (SQLite locked by another writer).
pub(super) const READ_ONLY: u8 = 2;
/// Writes land, but their answer is lost (a connection cut after the request).
pub(super) const LOSE_ANSWERS: u8 = 3;
/// A row read never answers (a store that stopped mid-call).
pub(super) const READS_HANG: u8 = 4;

/// One instance's way to the shared store.
pub(super) struct Link {
    store: Arc<dyn TokenStore>,
    state: AtomicU8,
}

impl Link {
    pub(super) fn new(world: &World) -> Arc<Self> {
        Arc::new(Self {
            store: Arc::clone(&world.store),
            state: AtomicU8::new(UP),
        })
    }

    pub(super) fn set(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
    }

    fn read(&self) -> Result<(), StoreError> {
        match self.state.load(Ordering::SeqCst) {
            DOWN => Err(StoreError::Unavailable("cut off".into())),
            _ => Ok(()),
        }
    }

    fn write(&self) -> Result<(), StoreError> {
        match self.state.load(Ordering::SeqCst) {
            UP => Ok(()),
            _ => Err(StoreError::Unavailable("cut off".into())),
        }
    }
}

#[async_trait]
impl Connections for Link {
    async fn get(&self, user_id: &str, provider: &str) -> Result<Option<Connection>, StoreError> {
        self.read()?;
        if self.state.load(Ordering::SeqCst) == READS_HANG {
            std::future::pending::<()>().await;
        }
        self.store.get(user_id, provider).await
    }

    async fn put(
        &self,
        row: &Connection,
        expected: Option<u64>,
        events: &[Event],
    ) -> Result<(), StoreError> {
        self.write()?;
        self.store.put(row, expected, events).await
    }

    async fn touch(
        &self,
        user_id: &str,
        provider: &str,
        last_used: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.store
            .touch(user_id, provider, last_used, expires_at)
            .await
    }

    async fn delete(
        &self,
        user_id: &str,
        provider: &str,
        expected: u64,
        events: &[Event],
    ) -> Result<bool, StoreError> {
        self.store.delete(user_id, provider, expected, events).await
    }

    async fn list(&self, user_id: &str) -> Result<Vec<Connection>, StoreError> {
        self.store.list(user_id).await
    }

    async fn scan(&self, after: Option<&ScanCursor>, limit: usize) -> Result<ScanPage, StoreError> {
        self.store.scan(after, limit).await
    }
}

#[async_trait]
impl RefreshLeases for Link {
    async fn put_as_holder(
        &self,
        row: &Connection,
        attempt: &str,
        events: &[Event],
    ) -> Result<(), StoreError> {
        if self.state.load(Ordering::SeqCst) == LOSE_ANSWERS {
            self.store.put_as_holder(row, attempt, events).await?;
            return Err(StoreError::Unavailable("answer lost".into()));
        }
        self.write()?;
        self.store.put_as_holder(row, attempt, events).await
    }

    async fn acquire_lease(
        &self,
        user_id: &str,
        provider: &str,
        version: u64,
        lease: &RefreshLease,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.store
            .acquire_lease(user_id, provider, version, lease, now_ms)
            .await
    }

    async fn extend_lease(
        &self,
        user_id: &str,
        provider: &str,
        lease: &RefreshLease,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.store.extend_lease(user_id, provider, lease).await
    }

    async fn hold_lapsed_lease(
        &self,
        user_id: &str,
        provider: &str,
        attempt: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.write()?;
        self.store
            .hold_lapsed_lease(user_id, provider, attempt, until_ms, now_ms)
            .await
    }

    async fn release_lease(
        &self,
        user_id: &str,
        provider: &str,
        attempt: &str,
        after: LeaseRelease,
        events: &[Event],
    ) -> Result<(), StoreError> {
        self.write()?;
        self.store
            .release_lease(user_id, provider, attempt, after, events)
            .await
    }
}

#[async_trait]
impl ConnectFlows for Link {
    async fn mark_once(
        &self,
        key: &str,
        attempt: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        self.store.mark_once(key, attempt, expires_at).await
    }

    async fn unmark(&self, key: &str, attempt: &str) -> Result<(), StoreError> {
        self.store.unmark(key, attempt).await
    }

    async fn get_pending(&self, flow_id: &str) -> Result<Option<PendingGrant>, StoreError> {
        self.store.get_pending(flow_id).await
    }

    async fn put_pending(&self, grant: &PendingGrant) -> Result<(), StoreError> {
        self.store.put_pending(grant).await
    }

    async fn take_pending(&self, flow_id: &str) -> Result<Option<PendingGrant>, StoreError> {
        self.store.take_pending(flow_id).await
    }
}

#[async_trait]
impl SealedItems for Link {
    async fn scan_sealed(
        &self,
        after: Option<&Sealed>,
        limit: usize,
    ) -> Result<SealedPage, StoreError> {
        self.store.scan_sealed(after, limit).await
    }

    async fn rewrap(
        &self,
        item: &Sealed,
        old: &Envelope,
        new: &Envelope,
    ) -> Result<(), StoreError> {
        self.store.rewrap(item, old, new).await
    }
}

#[async_trait]
impl EventFeed for Link {
    fn event_write_bound(&self) -> Duration {
        self.store.event_write_bound()
    }

    async fn events_between(
        &self,
        after: &str,
        before: &str,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.store.events_between(after, before, limit).await
    }
}

#[async_trait]
impl RevocationQueue for Link {
    async fn put_revocation(&self, revocation: &PendingRevocation) -> Result<(), StoreError> {
        self.store.put_revocation(revocation).await
    }

    async fn reschedule_revocation(
        &self,
        revocation: &PendingRevocation,
        attempts_before: u32,
    ) -> Result<(), StoreError> {
        self.store
            .reschedule_revocation(revocation, attempts_before)
            .await
    }

    async fn revocations_due(
        &self,
        now: i64,
        limit: usize,
    ) -> Result<Vec<PendingRevocation>, StoreError> {
        self.store.revocations_due(now, limit).await
    }

    async fn remove_revocation(&self, id: &str) -> Result<(), StoreError> {
        self.store.remove_revocation(id).await
    }
}

#[async_trait]
impl AccountGrantLog for Link {
    async fn account_grants(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Option<AccountGrants>, StoreError> {
        self.read()?;
        self.store.account_grants(provider, sub).await
    }

    async fn put_account_grants(
        &self,
        record: &AccountGrants,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        self.store.put_account_grants(record, expected).await
    }
}

#[async_trait]
impl JobLeases for Link {
    async fn take_job_lease(
        &self,
        name: &str,
        holder: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        self.store
            .take_job_lease(name, holder, until_ms, now_ms)
            .await
    }

    async fn drop_job_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.store.drop_job_lease(name, holder).await
    }
}

#[async_trait]
impl WebhookCursors for Link {
    async fn webhook_state(&self, endpoint: &str) -> Result<Option<WebhookState>, StoreError> {
        self.store.webhook_state(endpoint).await
    }

    async fn put_webhook_state(
        &self,
        endpoint: &str,
        state: &WebhookState,
        expected: Option<u64>,
    ) -> Result<(), StoreError> {
        self.store
            .put_webhook_state(endpoint, state, expected)
            .await
    }
}

#[async_trait]
impl Health for Link {
    async fn ping(&self) -> Result<(), StoreError> {
        self.read()?;
        self.store.ping().await
    }
}

/// A key service whose data-key generation can be taken away (opening keeps working,
/// as with decrypted data keys cached).
pub(super) struct Keys {
    pub(super) inner: LocalKeyProvider,
    pub(super) down: AtomicBool,
}

#[async_trait]
impl KeyProvider for Keys {
    async fn generate_data_key(&self) -> Result<DataKey, CryptoError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(CryptoError::Unavailable("key service unreachable".into()));
        }
        self.inner.generate_data_key().await
    }
    async fn decrypt_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<SecretKey, CryptoError> {
        self.inner.decrypt_data_key(key_id, encrypted).await
    }
    async fn current_key_id(&self) -> Result<String, CryptoError> {
        self.inner.current_key_id().await
    }
    async fn rewrap_data_key(
        &self,
        key_id: &str,
        encrypted: &[u8],
    ) -> Result<WrappedKey, CryptoError> {
        self.inner.rewrap_data_key(key_id, encrypted).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}
