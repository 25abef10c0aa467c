//! What each kind of event tells: the typed `type` and `data` an event is made from,
//! which the OpenAPI document gives as the feed's and the webhooks' schema. `data`
//! holds `userId` and `provider` first, then the fields of its type in the order
//! written here. Never a token.

use serde::Serialize;
use utoipa::ToSchema;

use crate::oauth::grant::ExpiryReason;
use crate::store::Connection;

/// A lifecycle event's `type`, with the `data` that type carries.
#[derive(Debug, Serialize, ToSchema)]
#[serde(tag = "type", content = "data")]
pub(crate) enum EventPayload {
    /// A user connected an account for the first time (no row before).
    #[serde(rename = "connection.created")]
    Created(Granted),
    /// A new grant replaced the connection's: a reconnection, a step-up, or another
    /// account (`accountChanged`).
    #[serde(rename = "connection.reauthorized", rename_all = "camelCase")]
    Reauthorized {
        #[serde(flatten)]
        granted: Granted,
        /// A grant of another account (another `sub`) replaced the connection.
        account_changed: bool,
        /// Whether the replaced grant was alive.
        was_active: bool,
        /// The replaced account, when `accountChanged`.
        #[serde(flatten)]
        #[schema(value_type = PreviousAccount)]
        previous: Option<PreviousAccount>,
    },
    /// The scopes the provider says the grant holds changed.
    #[serde(rename = "connection.scopes_changed", rename_all = "camelCase")]
    ScopesChanged {
        #[serde(flatten)]
        about: About,
        granted_scopes: Vec<String>,
        /// What the grant held before, and the difference.
        previous_granted_scopes: Vec<String>,
        added_scopes: Vec<String>,
        removed_scopes: Vec<String>,
    },
    /// A refresh failed: the grant is dead (`isActive: false`, with its `cause`), or
    /// the provider is failing and refreshes pause for `retryAfterSecs`
    /// (`isActive: true`).
    #[serde(rename = "connection.refresh_failed", rename_all = "camelCase")]
    RefreshFailed {
        #[serde(flatten)]
        about: About,
        /// Why (the causes table in docs/grants.md).
        cause: String,
        remedy: Option<String>,
        is_active: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_secs: Option<u64>,
    },
    /// A refresh succeeded after failed ones.
    #[serde(rename = "connection.recovered", rename_all = "camelCase")]
    Recovered {
        #[serde(flatten)]
        about: About,
        granted_scopes: Vec<String>,
    },
    /// The grant is forecast to end soon.
    #[serde(rename = "connection.expiring_soon", rename_all = "camelCase")]
    ExpiringSoon {
        #[serde(flatten)]
        about: About,
        /// When: RFC 3339 UTC, to the second.
        predicted_expiry: String,
        reason: ExpiryReason,
        sub: String,
        email: Option<String>,
    },
    /// The user (or the provider, for the account) revoked the grant, as the
    /// provider's security events tell.
    #[serde(rename = "connection.revoked_by_user", rename_all = "camelCase")]
    RevokedByUser {
        #[serde(flatten)]
        about: About,
        /// Why (the causes table in docs/grants.md).
        cause: String,
        remedy: Option<String>,
        sub: String,
        email: Option<String>,
        /// The security event that ended the grant, by the last segment of its type
        /// URI (e.g. `tokens-revoked`).
        security_event: String,
    },
    /// A grant made elsewhere became the connection (`axnt-oauth import`, the import
    /// API): its refresh token proven by one redeem (`verified`), or stored as given
    /// and marked `unverified` in the lists until its first refresh.
    #[serde(rename = "connection.imported", rename_all = "camelCase")]
    Imported {
        #[serde(flatten)]
        granted: Granted,
        /// Whether the refresh token was redeemed at the import.
        verified: bool,
        /// Whether an existing connection was replaced.
        replaced: bool,
        /// False when a verified import found the refresh token dead and was asked to
        /// keep it (the connection's `cause` says why).
        is_active: bool,
    },
    /// The connection was removed through the API.
    #[serde(rename = "connection.deleted", rename_all = "camelCase")]
    Deleted {
        #[serde(flatten)]
        about: About,
        sub: String,
        email: Option<String>,
        /// What became of the grant at the provider: `revoked`, `pending`, `skipped`
        /// or `not_possible`.
        revocation: String,
        /// Which token was (or will be) revoked: `refresh_token` or `access_token`.
        revoked_token: Option<String>,
    },
}

/// The connection an event is about.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct About {
    pub(crate) user_id: String,
    pub(crate) provider: String,
    /// Any type: this event repeats the one with this id, written again because the
    /// store took longer than its bound to write that one (a cursor may have passed
    /// it). De-duplicate on it as on `id`. Only the DynamoDB store writes it, into a
    /// stored event's copy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) original_id: Option<String>,
}

impl Granted {
    /// What `row`'s grant is: its account and scopes.
    pub(crate) fn of(row: &Connection) -> Self {
        Self {
            about: About::of(row),
            sub: row.user_info.sub.clone(),
            email: row.email.clone(),
            granted_scopes: row.grant.granted_scopes.clone(),
            requested_scopes: row.grant.requested_scopes.clone(),
        }
    }
}

impl About {
    pub(crate) fn of(row: &Connection) -> Self {
        Self {
            user_id: row.user_id.clone(),
            provider: row.provider.clone(),
            original_id: None,
        }
    }
}

/// A grant: the connection, its account and the scopes asked for and held.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Granted {
    #[serde(flatten)]
    pub(crate) about: About,
    /// The account's `sub`.
    pub(crate) sub: String,
    pub(crate) email: Option<String>,
    pub(crate) granted_scopes: Vec<String>,
    pub(crate) requested_scopes: Vec<String>,
}

/// The account a reauthorization replaced: present when `accountChanged`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct PreviousAccount {
    #[schema(required = false)]
    pub(crate) previous_sub: String,
    #[schema(required = false)]
    pub(crate) previous_email: Option<String>,
}

impl EventPayload {
    /// The connection the event is about.
    pub(crate) fn about(&self) -> &About {
        match self {
            Self::Created(granted)
            | Self::Reauthorized { granted, .. }
            | Self::Imported { granted, .. } => &granted.about,
            Self::ScopesChanged { about, .. }
            | Self::RefreshFailed { about, .. }
            | Self::Recovered { about, .. }
            | Self::ExpiringSoon { about, .. }
            | Self::RevokedByUser { about, .. }
            | Self::Deleted { about, .. } => about,
        }
    }
}
