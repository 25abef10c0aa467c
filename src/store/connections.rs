//! A user's connections: the tokens table's rows, read, written whole on `version`,
//! touched, listed and scanned.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Event, RefreshState, StoreError, stored_time};
use crate::crypto::Envelope;

/// A user's connection to one provider: the tokens table's row.
///
/// Its serde layout is the stored one, for both backends: a DynamoDB item attribute
/// for attribute (the stored-layout test pins it), and the SQLite row's document.
/// Times are RFC 3339 in UTC to the millisecond; an absent option is left out, never
/// written as null. A new field is a field here (or in [`GrantLedger`]) and nothing
/// else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub user_id: String,
    pub provider: String,
    /// The account's email, when the provider gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// The sealed token set.
    pub encrypted_tokens: Envelope,
    pub user_info: UserInfo,
    #[serde(serialize_with = "stored_time::one")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "stored_time::one")]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "stored_time::one")]
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
    #[serde(flatten)]
    pub refresh: RefreshState,
    /// The account this connection held before a grant of a *different* account (another
    /// `sub`) replaced it: the latest such change, kept so it is never silent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_account: Option<ReplacedAccount>,
    /// What the grant covers and the clocks that end it (`requestedScopes`,
    /// `grantedScopes`, `scopesChangedAt`, `consentedAt`, `lastRefreshedAt`,
    /// `refreshTokenExpiresAt`). Rows written before 0.3 have none of it.
    #[serde(flatten)]
    pub grant: GrantLedger,
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

/// A connection's scope ledger and grant clocks: what was asked for, what the provider
/// granted (from the token response, at connect and at every refresh), and when the
/// grant was consented to and last used. Never a secret.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantLedger {
    /// Scopes the connect sessions asked for (the provider's defaults included), in
    /// the order first asked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requested_scopes: Vec<String>,
    /// Scopes the provider's last token response said the grant holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_scopes: Vec<String>,
    /// When `requested_scopes` last changed.
    #[serde(
        rename = "requestedScopesChangedAt",
        default,
        serialize_with = "stored_time::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub requested_changed_at: Option<DateTime<Utc>>,
    /// When `granted_scopes` last changed.
    #[serde(
        default,
        serialize_with = "stored_time::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub scopes_changed_at: Option<DateTime<Utc>>,
    /// When the user last consented (the code exchange that made this grant).
    #[serde(
        default,
        serialize_with = "stored_time::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub consented_at: Option<DateTime<Utc>>,
    /// When a refresh last succeeded (the refresh token was last used).
    #[serde(
        default,
        serialize_with = "stored_time::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub last_refreshed_at: Option<DateTime<Utc>>,
    /// Epoch seconds when the refresh token stops working, for time-limited access
    /// (`refresh_token_expires_in` in the code exchange's answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_expires_at: Option<i64>,
    /// The OAuth client the grant was made with, which refreshes and revokes it.
    /// Rows made before providers had several clients have none: the current one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Epoch seconds: the predicted expiry `connection.expiring_soon` was sent for (so
    /// it is sent once per forecast; a new consent clears it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_notice_for: Option<i64>,
    /// The refresh token's identifiers as Google's security events give them, so a
    /// `token-revoked` event finds its connection without the token itself: base64 of
    /// the double SHA-512 of the token, and base64 of the SHA-256 of its first 16
    /// characters (Google's `prefix` identifier, itself never stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_prefix_hash: Option<String>,
    /// When the grant was imported (`axnt-oauth import`, the import API) rather than
    /// made by a consent through this service; a later consent clears it.
    #[serde(
        default,
        serialize_with = "stored_time::opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub imported_at: Option<DateTime<Utc>>,
    /// An imported grant whose refresh token this service has not redeemed yet: its
    /// account and scopes are as the import gave them. The first refresh clears it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
    /// An import stored this grant to prove it by a redeem, and has not announced it
    /// yet: it announces what the redeem finds (`connection.imported`), so a refresh
    /// that finds it dead makes no event of its own about a connection never announced.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub verifying: bool,
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

/// Where a scan of the tokens table goes on from: the key of the last item it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanCursor {
    pub user_id: String,
    pub provider: String,
}

/// One page of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    pub rows: Vec<Connection>,
    /// Where the next page starts; `None` after the last page.
    pub next: Option<ScanCursor>,
}

/// The tokens table's connection rows.
#[async_trait]
pub trait Connections: Send + Sync {
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

    /// Every connection row (never a flow's item), a page at a time: at most `limit`
    /// items read after `after`. A page may hold fewer rows, even none, while `next` is
    /// set; rows written during a scan may or may not be seen.
    async fn scan(&self, after: Option<&ScanCursor>, limit: usize) -> Result<ScanPage, StoreError>;
}
