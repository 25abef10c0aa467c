//! Where rows leave the process: small traits, one per aggregate, each beside its row
//! types, and their implementations ([`embedded`] SQLite; [`dynamodb`] in aws mode, its
//! flow-log writes queued by [`buffered`]).
//!
//! The traits say what the services need, not what a database offers: conditional
//! writes keyed on `version` (or on a lease), reads, deletes, listings, and an
//! append-only flow log read newest first. A service is handed only the aggregates it
//! uses; [`TokenStore`] names the tokens table whole, for wiring.

mod account_grants;
pub mod buffered;
mod connect_flows;
mod connections;
pub(crate) mod dynamodb;
pub mod embedded;
mod event_feed;
pub mod flow_log;
mod job_lease;
pub(crate) mod refresh_lease;
mod revocations;
mod sealed;
pub(crate) mod stored_time;
mod webhook_cursors;

use async_trait::async_trait;

pub use account_grants::{AccountGrantLog, AccountGrants};
pub use connect_flows::{ConnectFlows, PendingGrant};
pub use connections::{
    Connection, Connections, GrantLedger, ReplacedAccount, ScanCursor, ScanPage, UserInfo,
};
pub use event_feed::{Event, EventFeed};
pub(crate) use event_feed::{event_bound, event_millis};
pub use flow_log::{FlowFailure, FlowLog, FlowLogEntry, FlowRecorder, FlowStep, FlowSteps};
pub(crate) use job_lease::JobLease;
pub use job_lease::JobLeases;
pub use refresh_lease::{LeaseRelease, RefreshLease, RefreshLeases, RefreshState};
pub use revocations::{PendingRevocation, RevocationQueue};
pub use sealed::{Sealed, SealedItem, SealedItems, SealedPage};
pub use webhook_cursors::{PendingDelivery, WebhookCursors, WebhookState};

/// Every aggregate trait, unnamed, for code that calls a concrete store's methods
/// (tools, tests, benchmarks).
pub mod prelude {
    pub use super::{
        AccountGrantLog as _, ConnectFlows as _, Connections as _, EventFeed as _, FlowLog as _,
        Health as _, JobLeases as _, RefreshLeases as _, RevocationQueue as _, SealedItems as _,
        WebhookCursors as _,
    };
}

/// The tokens table whole: every aggregate it holds. Backends implement the aggregates;
/// this is implemented for anything that has them all.
pub trait TokenStore:
    Connections
    + RefreshLeases
    + ConnectFlows
    + RevocationQueue
    + AccountGrantLog
    + JobLeases
    + WebhookCursors
    + EventFeed
    + SealedItems
    + Health
{
}

impl<T> TokenStore for T where
    T: Connections
        + RefreshLeases
        + ConnectFlows
        + RevocationQueue
        + AccountGrantLog
        + JobLeases
        + WebhookCursors
        + EventFeed
        + SealedItems
        + Health
{
}

/// What a backend can report. Each variant maps to one HTTP answer in `error.rs`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A conditional write lost: the row changed (or appeared) since it was read.
    #[error("the row was changed by another writer")]
    Conflict,
    /// The table or database does not exist.
    #[error("{0}")]
    MissingTable(String),
    /// The backend refused us (permissions). The message starts with `AccessDenied:`
    /// and names the action and resource, as `check` prints it.
    #[error("{0}")]
    AccessDenied(String),
    /// The backend asked us to slow down.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The backend could not be reached or failed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored item could not be read back.
    #[error("stored item is malformed: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The problem code an answer failing with this carries.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::Conflict => "concurrent_update",
            Self::Throttled(_) => "store_throttled",
            _ => "store_unavailable",
        }
    }

    /// What a client is told: what failed, not how.
    pub(crate) fn public_detail(&self) -> &'static str {
        match self {
            Self::Conflict => "the row was changed concurrently; retry",
            _ => "the token store is unavailable; retry later",
        }
    }
}

/// What an operator should look at for a store error (printed by `check`).
pub(crate) fn hint(e: &StoreError) -> String {
    match e {
        StoreError::AccessDenied(_) => {
            "the IAM policy must allow dynamodb:PutItem, GetItem, UpdateItem, DeleteItem, Query and Scan on both tables (deploy/iam-policy.json)".into()
        }
        StoreError::MissingTable(_) => {
            "check the table name (DYNAMODB_OAUTH_TABLE, DYNAMODB_OAUTH_LOGS_TABLE) and AWS_REGION; run `axnt-oauth setup`".into()
        }
        StoreError::Throttled(_) => "the table is throttled: check its capacity; requests back off and retry".into(),
        StoreError::Unavailable(_) => "the store cannot be reached: check AWS_ENDPOINT_URL, network, or AXNT_DATA_DIR".into(),
        StoreError::Corrupt(_) => "an item does not have the expected layout".into(),
        StoreError::Conflict => "another writer changed the item; retry".into(),
    }
}

/// Whether the store answers.
#[async_trait]
pub trait Health: Send + Sync {
    /// A cheap read proving the table answers (used by `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// [`STORE_READS_TOTAL`](crate::series::STORE_READS_TOTAL)`{backend}`: one read statement or call against the store.
pub(crate) fn count_read(backend: &'static str) {
    metrics::counter!(crate::series::STORE_READS_TOTAL, "backend" => backend).increment(1);
}

/// [`STORE_WRITES_TOTAL`](crate::series::STORE_WRITES_TOTAL)`{backend}`: one write statement or call against the store.
pub(crate) fn count_write(backend: &'static str) {
    metrics::counter!(crate::series::STORE_WRITES_TOTAL, "backend" => backend).increment(1);
}
