//! Google's Cross-Account Protection (RISC): security event tokens (SETs, RFC 8417)
//! pushed to `POST /risc/google`, verified against the RISC issuer's keys (found
//! through `{issuer}/.well-known/risc-configuration`), with the OAuth client id as the
//! audience.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::jwks::IssuerKeys;

/// The security event types Google sends, each URI exactly as Google's
/// Cross-Account Protection page prints it (its "Supported event types" table): the
/// two about OAuth tokens are under `secevent/oauth/`, the rest under `secevent/risc/`.
/// What the service does with each is decided in `tokens::risc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
pub(crate) enum EventKind {
    #[strum(serialize = "https://schemas.openid.net/secevent/risc/event-type/sessions-revoked")]
    SessionsRevoked,
    #[strum(serialize = "https://schemas.openid.net/secevent/oauth/event-type/tokens-revoked")]
    TokensRevoked,
    #[strum(serialize = "https://schemas.openid.net/secevent/oauth/event-type/token-revoked")]
    TokenRevoked,
    #[strum(serialize = "https://schemas.openid.net/secevent/risc/event-type/account-disabled")]
    AccountDisabled,
    #[strum(serialize = "https://schemas.openid.net/secevent/risc/event-type/account-enabled")]
    AccountEnabled,
    #[strum(
        serialize = "https://schemas.openid.net/secevent/risc/event-type/account-credential-change-required"
    )]
    AccountCredentialChangeRequired,
    #[strum(serialize = "https://schemas.openid.net/secevent/risc/event-type/verification")]
    Verification,
}

impl EventKind {
    pub(crate) fn uri(self) -> &'static str {
        self.into()
    }

    /// The kind `uri` names, compared whole: a URI under another base (such as a
    /// `risc/` path for a type Google sends under `oauth/`) is no kind.
    pub(crate) fn from_uri(uri: &str) -> Option<Self> {
        uri.parse().ok()
    }

    /// The URI's last segment (`tokens-revoked`), as flow-log items and lifecycle
    /// events name the kind.
    pub(crate) fn name(self) -> &'static str {
        let uri = self.uri();
        uri.rsplit('/').next().unwrap_or(uri)
    }
}

/// A verified security event token.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct SecurityEventToken {
    pub(crate) jti: String,
    /// Epoch seconds it was issued at.
    pub(crate) iat: i64,
    /// Event type URI → its details (`subject`, `reason`, `state`).
    pub(crate) events: Map<String, Value>,
}

/// Why a token was refused, or could not be checked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RiscError {
    /// Not a valid SET for this client: bad signature, issuer, audience or shape.
    #[error("{0}")]
    Invalid(String),
    /// The issuer's configuration or keys could not be fetched.
    #[error("the RISC issuer's keys are unavailable: {0}")]
    Unavailable(String),
}

/// Verifies SETs against the RISC issuer's published keys (cached).
pub(crate) struct RiscVerifier {
    keys: IssuerKeys,
}

impl RiscVerifier {
    pub(crate) fn new(issuer: &url::Url, timeout: Duration) -> Result<Self, String> {
        let http = crate::guard::outbound_client(timeout)?;
        Ok(Self {
            keys: IssuerKeys::new(
                format!(
                    "{}/.well-known/risc-configuration",
                    issuer.as_str().trim_end_matches('/')
                ),
                None,
                http,
                // Google publishes its next key ahead of using it: a kid not held is rare.
                Duration::from_secs(60),
            ),
        })
    }

    /// Verifies `token`: signed (RS256) by a key the issuer publishes, issued by it, for
    /// `audiences` (the OAuth client ids: Google sends each client's events with its
    /// own id).
    pub(crate) async fn verify(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<SecurityEventToken, RiscError> {
        let header = decode_header(token)
            .map_err(|e| RiscError::Invalid(format!("not a signed JWT: {e}")))?;
        if header.alg != Algorithm::RS256 {
            return Err(RiscError::Invalid(format!(
                "signed with {:?}; RS256 expected",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| RiscError::Invalid("no kid in the header".into()))?;
        let keys = self
            .keys
            .keys(Some(&kid))
            .await
            .map_err(RiscError::Unavailable)?;
        let issuer = keys.issuer;
        // A key not (yet) in the set we hold may be one the issuer rotated in since we
        // fetched: 503, so the sender retries, rather than a 400 it would not.
        let jwk = keys.set.find(&kid).ok_or_else(|| {
            RiscError::Unavailable(
                "signed with a key not among the issuer's keys as last fetched".into(),
            )
        })?;
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| RiscError::Invalid(format!("the issuer's key is unusable: {e}")))?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(audiences);
        validation.set_issuer(&[issuer.as_str()]);
        // SETs carry no `exp` (RFC 8417); `iat` says when the event happened.
        validation.validate_exp = false;
        validation.required_spec_claims = ["iss", "aud"].into_iter().map(String::from).collect();
        decode::<SecurityEventToken>(token, &key, &validation)
            .map(|data| data.claims)
            .map_err(|e| RiscError::Invalid(e.to_string()))
    }
}

/// Google's `hash_base64_sha512_sha512` identifier of a token: base64 of the SHA-512 of
/// its SHA-512.
pub(crate) fn token_hash(token: &str) -> String {
    use aws_lc_rs::digest::{SHA512, digest};
    use base64::Engine;
    let once = digest(&SHA512, token.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest(&SHA512, once.as_ref()))
}

/// What is stored for Google's `prefix` identifier (the token's first 16 characters):
/// base64 of their SHA-256, so the prefix itself is never stored.
pub(crate) fn prefix_hash(token: &str) -> String {
    use aws_lc_rs::digest::{SHA256, digest};
    use base64::Engine;
    let prefix: String = token.chars().take(16).collect();
    base64::engine::general_purpose::STANDARD.encode(digest(&SHA256, prefix.as_bytes()))
}
