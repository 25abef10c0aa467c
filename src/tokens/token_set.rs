//! The token set sealed in a row, what the API hands out, and the rule that decides
//! whether a stored access token is still good enough to hand out.

use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::crypto::{Envelope, EnvelopeCipher, Sealer};
use crate::oauth::provider::ProviderTokens;
use crate::store::{Connection, PendingGrant};
use crate::tokens::TokenError;

/// Used when a provider omits `expires_in` (Google never does): one hour.
const DEFAULT_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The plaintext sealed in `encryptedTokens`. Wiped from memory on drop.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct TokenSet {
    #[serde(rename = "accessToken")]
    pub(crate) access_token: String,
    #[serde(
        rename = "refreshToken",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) refresh_token: Option<String>,
    #[serde(rename = "idToken", default, skip_serializing_if = "Option::is_none")]
    pub(crate) id_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) scope: Option<String>,
    #[serde(rename = "tokenType")]
    pub(crate) token_type: String,
    /// Epoch seconds when the access token expires.
    #[serde(rename = "expiresAt")]
    pub(crate) expires_at: i64,
    /// Epoch seconds when the provider issued the access token (absent in rows written
    /// by versions before 0.2): with `expires_at`, the lifetime it was issued with.
    #[serde(rename = "issuedAt", default, skip_serializing_if = "Option::is_none")]
    pub(crate) issued_at: Option<i64>,
    /// Epoch seconds when the refresh token stops working (time-limited access).
    #[serde(
        rename = "refreshTokenExpiresAt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) refresh_token_expires_at: Option<i64>,
    /// Only in a pending grant's set: the scopes its flow asked for, which become the
    /// connection's `requestedScopes` when the grant is confirmed.
    #[serde(
        rename = "requestedScopes",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub(crate) requested_scopes: Vec<String>,
    /// Only in a pending grant's set: the one-time code the flow's return redirect
    /// carried, which the confirm call must present. Sealed with the grant, so it is
    /// never stored or logged in clear.
    #[serde(
        rename = "confirmationCode",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) confirmation_code: Option<String>,
    /// The OAuth client the grant was made with (absent in sets sealed before
    /// providers had several clients: the current one).
    #[serde(rename = "clientId", default, skip_serializing_if = "Option::is_none")]
    pub(crate) client_id: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("scope", &self.scope)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl TokenSet {
    /// The set to store after a grant or refresh. A response without a refresh token
    /// keeps `previous`'s (Google omits it on refresh and on re-consent).
    pub(crate) fn from_provider(
        tokens: &ProviderTokens,
        previous: Option<&TokenSet>,
        now: DateTime<Utc>,
    ) -> Self {
        let lifetime = tokens.expires_in.unwrap_or(DEFAULT_ACCESS_TOKEN_LIFETIME);
        let mut set = Self {
            access_token: tokens.access_token.expose_secret().to_string(),
            refresh_token: tokens
                .refresh_token
                .as_ref()
                .map(|t| t.expose_secret().to_string()),
            id_token: tokens
                .id_token
                .as_ref()
                .map(|t| t.expose_secret().to_string()),
            scope: tokens.scope.clone(),
            token_type: tokens.token_type.clone(),
            expires_at: now
                .timestamp()
                .saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            issued_at: Some(now.timestamp()),
            refresh_token_expires_at: tokens.refresh_token_expires_in.map(|d| {
                now.timestamp()
                    .saturating_add(i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            }),
            requested_scopes: Vec::new(),
            confirmation_code: None,
            client_id: tokens.client_id.clone(),
        };
        set.inherit(previous);
        set
    }

    /// Fills what the provider's answer lacked (refresh token, ID token, scope) from
    /// `previous`, the same account's earlier set.
    pub(crate) fn inherit(&mut self, previous: Option<&TokenSet>) {
        let Some(previous) = previous else { return };
        // A refresh token is only ever good with the client it was issued to (a set
        // that names none is from before clients were recorded: the same one).
        let same_client = match (&self.client_id, &previous.client_id) {
            (Some(now), Some(before)) => now == before,
            _ => true,
        };
        if self.client_id.is_none() {
            self.client_id.clone_from(&previous.client_id);
        }
        if self.refresh_token.is_none() && same_client {
            // The same refresh token, so the same end of time-limited access.
            self.refresh_token.clone_from(&previous.refresh_token);
            if self.refresh_token_expires_at.is_none() {
                self.refresh_token_expires_at = previous.refresh_token_expires_at;
            }
        }
        if self.id_token.is_none() {
            self.id_token.clone_from(&previous.id_token);
        }
        if self.scope.is_none() {
            self.scope.clone_from(&previous.scope);
        }
    }

    /// The scopes the grant holds, as the provider last named them.
    pub(crate) fn granted_scopes(&self) -> Vec<String> {
        self.scope
            .as_deref()
            .map(crate::oauth::grant::parse_scopes)
            .unwrap_or_default()
    }

    /// Whether the access token stays valid beyond its margin at `now` (epoch seconds).
    pub(crate) fn is_fresh(&self, configured_margin: Duration, now: i64) -> bool {
        is_fresh(self.expires_at, self.issued_at, configured_margin, now)
    }

    /// Decrypts a row's token set.
    pub(crate) async fn open(
        cipher: &EnvelopeCipher,
        row: &Connection,
    ) -> Result<Self, TokenError> {
        let plaintext = cipher
            .open(&row.user_id, &row.provider, &row.encrypted_tokens)
            .await?;
        serde_json::from_slice(&plaintext)
            .map_err(|_| TokenError::Internal("stored token set is not valid JSON".into()))
    }

    /// Encrypts this set for the row of `user_id` at `provider`.
    pub(crate) async fn seal(
        &self,
        cipher: &EnvelopeCipher,
        user_id: &str,
        provider: &str,
    ) -> Result<Envelope, TokenError> {
        self.seal_with(&cipher.sealer().await?, user_id, provider)
    }

    /// [`seal`](Self::seal) with a data key already in hand (no key-service call).
    pub(crate) fn seal_with(
        &self,
        sealer: &Sealer<'_>,
        user_id: &str,
        provider: &str,
    ) -> Result<Envelope, TokenError> {
        let json = Zeroizing::new(
            serde_json::to_vec(self)
                .map_err(|e| TokenError::Internal(format!("serialising tokens: {e}")))?,
        );
        Ok(sealer.seal(user_id, provider, &json)?)
    }

    /// Encrypts this set as `flow_id`'s pending grant. Its associated data names the
    /// flow, not the connection's row: a pending ciphertext never opens as a row's.
    pub(crate) async fn seal_pending(
        &self,
        cipher: &EnvelopeCipher,
        user_id: &str,
        provider: &str,
        flow_id: &str,
    ) -> Result<Envelope, TokenError> {
        self.seal(cipher, user_id, &pending_context(provider, flow_id))
            .await
    }

    /// Decrypts a pending grant's token set.
    pub(crate) async fn open_pending(
        cipher: &EnvelopeCipher,
        grant: &PendingGrant,
    ) -> Result<Self, TokenError> {
        let plaintext = cipher
            .open(
                &grant.user_id,
                &pending_context(&grant.provider, &grant.flow_id),
                &grant.encrypted_tokens,
            )
            .await?;
        serde_json::from_slice(&plaintext)
            .map_err(|_| TokenError::Internal("pending token set is not valid JSON".into()))
    }

    /// The token as the API hands it out.
    pub(crate) fn issue(&self, row: &Connection, source: TokenSource) -> IssuedToken {
        IssuedToken::new(
            source,
            Issued {
                access_token: SecretString::from(self.access_token.clone()),
                token_type: self.token_type.clone(),
                expires_at: DateTime::from_timestamp(self.expires_at, 0).unwrap_or_default(),
                scope: self.scope.clone(),
                email: row.email.clone(),
                sub: row.user_info.sub.clone(),
                client_id: self
                    .client_id
                    .clone()
                    .or_else(|| row.grant.client_id.clone()),
            },
        )
    }
}

/// The margin a token expiring at `expires_at` (issued at `issued_at`, when known) is
/// held to: the configured one, but at most half the lifetime it was issued with. A
/// provider that issues tokens shorter than the margin would otherwise have every read
/// refresh a token it just issued. Epoch seconds.
fn margin(expires_at: i64, issued_at: Option<i64>, configured: Duration) -> i64 {
    let configured = i64::try_from(configured.as_secs()).unwrap_or(i64::MAX);
    match issued_at {
        Some(issued) => configured.min((expires_at.saturating_sub(issued) / 2).max(0)),
        None => configured,
    }
}

/// Whether such a token stays valid beyond its margin at `now`: the one rule for
/// stored and cached tokens alike.
pub(crate) fn is_fresh(
    expires_at: i64,
    issued_at: Option<i64>,
    configured_margin: Duration,
    now: i64,
) -> bool {
    expires_at.saturating_sub(now) > margin(expires_at, issued_at, configured_margin)
}

/// Where a pending grant's envelope is bound: the provider and the flow.
fn pending_context(provider: &str, flow_id: &str) -> String {
    format!("{provider}#pending#{flow_id}")
}

/// Where a handed-out token came from this time (counted as a
/// [`ReadOutcome`](super::ReadOutcome)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TokenSource {
    /// Answered by this instance's token cache: no store call, no decryption.
    Cache,
    /// Read from the store (and opened), fresh.
    Store,
    /// Redeemed from the provider by a refresh this read waited for.
    Refreshed,
}

/// A valid access token as the API hands it out: the token (shared, so a cached one is
/// handed out on every hit without a copy) and where this read found it.
#[derive(Clone)]
pub(crate) struct IssuedToken {
    pub(crate) source: TokenSource,
    token: std::sync::Arc<Issued>,
}

/// What an [`IssuedToken`] hands out.
pub(crate) struct Issued {
    pub(crate) access_token: SecretString,
    pub(crate) token_type: String,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) scope: Option<String>,
    pub(crate) email: Option<String>,
    /// The connected account's `sub` (for a step-up link, which only it may complete).
    pub(crate) sub: String,
    /// The OAuth client the grant was made with.
    pub(crate) client_id: Option<String>,
}

impl IssuedToken {
    pub(crate) fn new(source: TokenSource, token: Issued) -> Self {
        Self {
            source,
            token: std::sync::Arc::new(token),
        }
    }

    /// The same token, found by another way.
    pub(crate) fn with_source(&self, source: TokenSource) -> Self {
        Self {
            source,
            token: std::sync::Arc::clone(&self.token),
        }
    }
}

impl std::ops::Deref for IssuedToken {
    type Target = Issued;

    fn deref(&self) -> &Issued {
        &self.token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(issued_at: Option<i64>, expires_at: i64) -> TokenSet {
        TokenSet {
            access_token: "a".into(),
            refresh_token: None,
            id_token: None,
            scope: None,
            token_type: "Bearer".into(),
            expires_at,
            issued_at,
            refresh_token_expires_at: None,
            requested_scopes: Vec::new(),
            confirmation_code: None,
            client_id: None,
        }
    }

    #[test]
    fn a_token_shorter_than_the_margin_is_held_to_half_its_lifetime() {
        let margin = Duration::from_secs(300);
        let short = set(Some(1_000), 1_120); // a 120-second token
        assert_eq!(super::margin(short.expires_at, short.issued_at, margin), 60);
        assert!(short.is_fresh(margin, 1_000), "just issued: served");
        assert!(short.is_fresh(margin, 1_059));
        assert!(
            !short.is_fresh(margin, 1_060),
            "half its life left: refreshed"
        );
        let long = set(Some(1_000), 4_600); // an hour
        assert_eq!(super::margin(long.expires_at, long.issued_at, margin), 300);
        assert!(!long.is_fresh(margin, 4_300));
        assert!(long.is_fresh(margin, 4_299));
    }

    #[test]
    fn rows_without_an_issue_time_keep_the_configured_margin() {
        let legacy = set(None, 1_120);
        assert_eq!(
            super::margin(
                legacy.expires_at,
                legacy.issued_at,
                Duration::from_secs(300)
            ),
            300
        );
        assert!(!legacy.is_fresh(Duration::from_secs(300), 1_000));
    }

    #[test]
    fn an_expired_or_zero_lifetime_token_is_never_fresh() {
        let zero = set(Some(1_000), 1_000);
        assert!(!zero.is_fresh(Duration::from_secs(300), 1_000));
        assert!(!zero.is_fresh(Duration::ZERO, 1_000));
    }
}
