//! Where rows leave the process: the two narrow traits the service needs, and their
//! implementations ([`embedded`] SQLite; [`dynamodb`] in aws mode, its flow-log
//! writes queued by [`buffered`]).
//!
//! The traits say what the token service needs, not what a database offers: a
//! conditional put keyed on `version`, a read, a delete, a per-user listing, and an
//! append-only flow log read newest first.

pub mod buffered;
pub(crate) mod dynamodb;
pub mod embedded;
pub mod flow_log;
mod job_lease;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crypto::Envelope;

pub use flow_log::{FlowFailure, FlowRecorder, FlowStep, FlowSteps};
pub(crate) use job_lease::JobLease;

/// A user's connection to one provider: the tokens table's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub user_id: String,
    pub provider: String,
    /// The account's email, when the provider gave one.
    pub email: Option<String>,
    /// The sealed token set.
    pub encrypted_tokens: Envelope,
    pub user_info: UserInfo,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_used: DateTime<Utc>,
    /// Epoch seconds when the stored access token expires.
    pub access_token_expires_at: i64,
    /// Epoch seconds when the row may be purged (TTL). Not the access token's expiry.
    pub expires_at: i64,
    /// False once the refresh token is known dead.
    pub is_active: bool,
    /// Optimistic-concurrency counter; every write is conditional on it.
    pub version: u64,
    /// The refresh bookkeeping: who is refreshing, when the next attempt may be made,
    /// and why the grant died. Written by partial updates that leave `version` alone.
    pub refresh: RefreshState,
    /// The account this connection held before a grant of a *different* account (another
    /// `sub`) replaced it: the latest such change, kept so it is never silent.
    pub replaced_account: Option<ReplacedAccount>,
    /// What the grant covers and the clocks that end it (`requestedScopes`,
    /// `grantedScopes`, `scopesChangedAt`, `consentedAt`, `lastRefreshedAt`,
    /// `refreshTokenExpiresAt`). Rows written before 0.3 have none of it.
    pub grant: GrantLedger,
}

/// A connection's scope ledger and grant clocks: what was asked for, what the provider
/// granted (from the token response, at connect and at every refresh), and when the
/// grant was consented to and last used. Never a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrantLedger {
    /// Scopes the connect sessions asked for (the provider's defaults included), in
    /// the order first asked.
    pub requested_scopes: Vec<String>,
    /// Scopes the provider's last token response said the grant holds.
    pub granted_scopes: Vec<String>,
    /// When `requested_scopes` last changed.
    pub requested_changed_at: Option<DateTime<Utc>>,
    /// When `granted_scopes` last changed.
    pub scopes_changed_at: Option<DateTime<Utc>>,
    /// When the user last consented (the code exchange that made this grant).
    pub consented_at: Option<DateTime<Utc>>,
    /// When a refresh last succeeded (the refresh token was last used).
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// Epoch seconds when the refresh token stops working, for time-limited access
    /// (`refresh_token_expires_in` in the code exchange's answer).
    pub refresh_token_expires_at: Option<i64>,
    /// Epoch seconds: the predicted expiry `connection.expiring_soon` was sent for (so
    /// it is sent once per forecast; a new consent clears it).
    pub expiry_notice_for: Option<i64>,
    /// The refresh token's identifiers as Google's security events give them, so a
    /// `token-revoked` event finds its connection without the token itself: base64 of
    /// the double SHA-512 of the token, and base64 of the SHA-256 of its first 16
    /// characters (Google's `prefix` identifier, itself never stored).
    pub refresh_token_hash: Option<String>,
    pub refresh_token_prefix_hash: Option<String>,
}

/// The account a connection held before another account's grant replaced it
/// (`replacedAccount`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplacedAccount {
    /// The replaced account's `sub`.
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// RFC 3339 UTC, to the millisecond.
    pub replaced_at: String,
}

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

impl Connection {
    /// The row a token-changing write stores after this one: `version` bumped, the
    /// refresh bookkeeping reset (a new token set starts with a clean slate).
    pub(crate) fn successor(&self) -> Self {
        Self {
            version: self.version + 1,
            refresh: RefreshState::default(),
            ..self.clone()
        }
    }
}

/// A row's refresh bookkeeping (`refreshLeaseAttempt`, `refreshLeaseUntil`,
/// `refreshRetryAt`, `refreshUnknownSince`, `inactiveCause`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshState {
    /// Set while one refresh attempt redeems the refresh token, so every other reader,
    /// on any instance, waits for its result instead of redeeming the same token.
    pub lease: Option<RefreshLease>,
    /// Epoch milliseconds before which no new refresh is attempted (the cooldown after
    /// a transient failure).
    pub retry_at_ms: Option<i64>,
    /// Epoch milliseconds of a refresh request whose outcome is unknown (the connection
    /// died after the request was sent): the provider may have redeemed, and rotated,
    /// the stored refresh token.
    pub unknown_since_ms: Option<i64>,
    /// Why the row went inactive (`invalid_grant`, `refresh_outcome_unknown`,
    /// `no_refresh_token`).
    pub inactive_cause: Option<String>,
}

/// One refresh attempt's claim on a row, and until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshLease {
    /// Random per attempt: a live lease belongs to whoever wrote this id, never to
    /// "this instance", so a second attempt in the same process cannot mistake an
    /// earlier attempt's lease for its own.
    pub attempt: String,
    /// Epoch milliseconds; a live holder extends it before it lapses. A lease that
    /// lapsed without being given back is not free at once: its holder may have
    /// redeemed the refresh token and still be trying to store the new tokens.
    pub until_ms: i64,
    /// Epoch milliseconds when another instance found this lease lapsed (and could
    /// write) and held it in its attempt's name for a grace (`until_ms` then ends the
    /// grace): the attempt's outcome is unknown. Set only by
    /// [`TokenStore::hold_lapsed_lease`]; taking or extending a lease clears it.
    pub lapsed_at_ms: Option<i64>,
}

impl RefreshLease {
    /// A new lease of `attempt` until `until_ms`.
    pub fn new(attempt: impl Into<String>, until_ms: i64) -> Self {
        Self {
            attempt: attempt.into(),
            until_ms,
            lapsed_at_ms: None,
        }
    }
}

/// What a lease holder leaves behind when it gives the lease back without new tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseRelease {
    /// The cooldown: no refresh before this (epoch milliseconds).
    pub retry_at_ms: Option<i64>,
    /// Set when the attempt's outcome is unknown (epoch milliseconds).
    pub unknown_since_ms: Option<i64>,
}

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
    pub created_at: DateTime<Utc>,
    /// Attempts made so far (the one at deletion included).
    pub attempts: u32,
    /// Epoch seconds: not tried again before this.
    pub next_attempt_at: i64,
    /// Epoch seconds: given up (and purged) after this.
    pub expires_at: i64,
}

/// The refresh tokens this service had the provider mint for one account (`sub`) and
/// the OAuth client, across user ids: Google keeps the newest 100 per account and
/// client alive and ends older ones without a word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountGrants {
    pub provider: String,
    pub sub: String,
    /// Epoch milliseconds of each mint, oldest first (the newest, up to the limit).
    pub mints: Vec<i64>,
    /// Optimistic-concurrency counter (0: not stored yet).
    pub version: u64,
}

/// A lifecycle event (`connection.created`, …), stored in the same write as the change
/// that caused it: if the change is stored, so is the event; if not, neither is.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// A UUIDv7, hyphenated: its text sorts as the events were stored, so it is also the
    /// feed's cursor. Made by the store as it writes the event ([`Event::restamped`]).
    /// Unique; a delivery's `webhook-id`.
    pub id: String,
    /// `connection.created`, `connection.refresh_failed`, …
    pub kind: String,
    pub user_id: String,
    pub provider: String,
    pub timestamp: DateTime<Utc>,
    /// The payload's `data` (`userId` and `provider` included). Never a secret.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// Epoch seconds when the event may be purged (its retention).
    pub expires_at: i64,
}

impl Event {
    /// This event under an id made now, its `timestamp` the id's and its purge time
    /// moved by as much. A store stamps each event as it writes it (SQLite: holding the
    /// write lock; DynamoDB: as each attempt at the transaction starts), never earlier,
    /// so an event is visible within the store's write bound of the moment its id names:
    /// the feed's invariant (see `events`). Ids made in one process sort as made.
    pub(crate) fn restamped(&self) -> Self {
        let id = uuid::Uuid::now_v7().to_string();
        let timestamp = event_millis(&id)
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_else(Utc::now);
        let moved = timestamp.timestamp() - self.timestamp.timestamp();
        Self {
            id,
            timestamp,
            expires_at: self.expires_at.saturating_add(moved),
            ..self.clone()
        }
    }
}

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

/// The account's profile, from the verified ID token. Never a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub picture: Option<String>,
    /// Google Workspace domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hd: Option<String>,
}

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

/// Where a scan of the tokens table goes on from: the key of the last item it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
    pub user_id: String,
    pub provider: String,
}

/// An item that holds a sealed envelope: a connection's token set, a kept revocation's
/// token, or a grant held for confirmation. Key rotation re-wraps every one of them;
/// as a scan position it also names where a page of [`TokenStore::scan_sealed`] ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sealed {
    Connection {
        user_id: String,
        provider: String,
    },
    /// A [`PendingRevocation`], by id.
    Revocation {
        id: String,
    },
    /// A [`PendingGrant`], by flow id.
    PendingGrant {
        flow_id: String,
    },
}

/// One sealed item and its envelope as read.
#[derive(Debug, Clone, PartialEq)]
pub struct SealedItem {
    pub item: Sealed,
    pub envelope: Envelope,
}

/// One page of [`TokenStore::scan_sealed`].
#[derive(Debug, Clone, Default)]
pub struct SealedPage {
    pub items: Vec<SealedItem>,
    /// Where the next page starts (a position, not necessarily an item of this page);
    /// `None` after the last page.
    pub next: Option<Sealed>,
}

/// One page of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    pub rows: Vec<Connection>,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<ScanCursor>,
}

/// The tokens table.
#[async_trait]
pub trait TokenStore: Send + Sync {
    async fn get(&self, user_id: &str, provider: &str) -> Result<Option<Connection>, StoreError>;

    /// Writes `row` only if the stored row's version is `expected` (`None`: only if no
    /// row exists). `row.version` must be `expected + 1` (or 1). A lost condition is
    /// [`StoreError::Conflict`] and leaves the stored row as it was. `events` are
    /// stored with the row, atomically: both or neither, each under an id the write
    /// makes as it stores it ([`Event::restamped`]), in the order given (as every
    /// write below that stores events does).
    async fn put(
        &self,
        row: &Connection,
        expected: Option<u64>,
        events: &[Event],
    ) -> Result<(), StoreError>;

    /// The lease holder's write: `row` replaces the stored row only while `attempt`
    /// still holds its lease (whether or not the lease has lapsed: nobody took it
    /// over). Otherwise [`StoreError::Conflict`], and nothing is written, no event
    /// either.
    async fn put_as_holder(
        &self,
        row: &Connection,
        attempt: &str,
        events: &[Event],
    ) -> Result<(), StoreError>;

    /// Takes the refresh lease (`lease.attempt` until `lease.until_ms`, no lapse mark):
    /// only while the row is at `version` and no other attempt's lease is live at
    /// `now_ms`. Changes nothing else (not `version`).
    async fn acquire_lease(
        &self,
        user_id: &str,
        provider: &str,
        version: u64,
        lease: &RefreshLease,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Moves the lease's end to `lease.until_ms` and clears its lapse mark (its holder
    /// is alive), only while `lease.attempt` holds it.
    async fn extend_lease(
        &self,
        user_id: &str,
        provider: &str,
        lease: &RefreshLease,
    ) -> Result<(), StoreError>;

    /// Holds a lapsed lease in its attempt's name: only while `attempt` holds the
    /// lease, it has lapsed at `now_ms` and was not held so before, moves its end to
    /// `until_ms` and marks it lapsed at `now_ms` ([`RefreshLease::lapsed_at_ms`]).
    /// The attempt still holds it (its [`put_as_holder`](Self::put_as_holder) still
    /// lands); nobody else takes it before `until_ms`. A lost condition is a conflict.
    async fn hold_lapsed_lease(
        &self,
        user_id: &str,
        provider: &str,
        attempt: &str,
        until_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError>;

    /// Gives the lease back (only while `attempt` holds it), recording `after`, and
    /// stores `events` with it (both or neither).
    async fn release_lease(
        &self,
        user_id: &str,
        provider: &str,
        attempt: &str,
        after: LeaseRelease,
        events: &[Event],
    ) -> Result<(), StoreError>;

    /// Moves `lastUsed` and the purge time of an active row. A partial update: the
    /// tokens, `version` and any lease stay as they are. No row, or an inactive one:
    /// nothing happens.
    async fn touch(
        &self,
        user_id: &str,
        provider: &str,
        last_used: DateTime<Utc>,
        expires_at: i64,
    ) -> Result<(), StoreError>;

    /// Removes the row if it is still at `expected`, storing `events` with the removal
    /// (both or neither). Returns whether a row was removed (no row: nothing is written,
    /// no event either); a row at another version is a [`StoreError::Conflict`].
    async fn delete(
        &self,
        user_id: &str,
        provider: &str,
        expected: u64,
        events: &[Event],
    ) -> Result<bool, StoreError>;

    /// Every row of one user.
    async fn list(&self, user_id: &str) -> Result<Vec<Connection>, StoreError>;

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

    /// Every connection row (never a flow's item), a page at a time: at most `limit`
    /// items read after `after`. A page may hold fewer rows, even none, while `next` is
    /// set; rows written during a scan may or may not be seen.
    async fn scan(&self, after: Option<&ScanCursor>, limit: usize) -> Result<ScanPage, StoreError>;

    /// Every sealed item (connection rows, kept revocations, held grants) with its
    /// envelope, a page at a time: at most `limit` items read after the position
    /// `after`. A page may hold fewer, even none, while `next` is set; items written
    /// during a scan may or may not be seen. For key rotation.
    async fn scan_sealed(
        &self,
        after: Option<&Sealed>,
        limit: usize,
    ) -> Result<SealedPage, StoreError>;

    /// Replaces the item's envelope by `new` only while the stored one is still `old`
    /// (same `keyId`, wrapped key and ciphertext); nothing else changes, not `version`,
    /// so a concurrent write always wins. A connection under a live refresh lease is
    /// left alone too (its holder writes the whole row from what it read). A changed
    /// or removed item is a [`StoreError::Conflict`], and nothing is written. For key
    /// rotation.
    async fn rewrap(&self, item: &Sealed, old: &Envelope, new: &Envelope)
    -> Result<(), StoreError>;

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

    /// The mint record of one account and provider, if any.
    async fn account_grants(
        &self,
        provider: &str,
        sub: &str,
    ) -> Result<Option<AccountGrants>, StoreError>;

    /// Writes the record only if the stored one is at `expected` (`None`: only if there
    /// is none); `record.version` must be one more. A lost condition is a conflict.
    async fn put_account_grants(
        &self,
        record: &AccountGrants,
        expected: Option<u64>,
    ) -> Result<(), StoreError>;

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

    /// Stored events with `after < id < before` (ids compare as text, which is their
    /// order), oldest first, at most `limit`. Purged events (past `expires_at`) may or
    /// may not be among them.
    async fn events_between(
        &self,
        after: &str,
        before: &str,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError>;

    /// The store's event write bound: how long after the moment its id names an event
    /// stored by this store's writes (across instances) is readable, or known never to
    /// be. The feed's delay is never shorter than it plus the hosts' clock allowance
    /// (see `events`). A write that cannot keep it says so itself (the backend's doc).
    fn event_write_bound(&self) -> Duration;

    /// A cheap read proving the table answers (used by `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;
}

/// The logs table.
#[async_trait]
pub trait FlowLog: Send + Sync {
    async fn append(&self, entry: &FlowLogEntry) -> Result<(), StoreError>;

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

/// The epoch milliseconds an event id (a UUIDv7) was made at.
pub(crate) fn event_millis(id: &str) -> Option<i64> {
    let hex: String = id.chars().filter(|c| *c != '-').take(12).collect();
    if hex.len() != 12 {
        return None;
    }
    i64::from_str_radix(&hex, 16).ok()
}

/// A bound between event ids: sorts after every event made before `ms` and before
/// every event made at or after it (a real id's version digit is 7, the bound's 0).
pub(crate) fn event_bound(ms: i64) -> String {
    let ms = ms.clamp(0, 0xffff_ffff_ffff);
    format!(
        "{:08x}-{:04x}-0000-0000-000000000000",
        ms >> 16,
        ms & 0xffff
    )
}

/// `axnt_store_reads_total{backend}`: one read statement or call against the store.
pub(crate) fn count_read(backend: &'static str) {
    metrics::counter!(crate::series::STORE_READS_TOTAL, "backend" => backend).increment(1);
}

/// `axnt_store_writes_total{backend}`: one write statement or call against the store.
pub(crate) fn count_write(backend: &'static str) {
    metrics::counter!(crate::series::STORE_WRITES_TOTAL, "backend" => backend).increment(1);
}
