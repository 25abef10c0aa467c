//! Flow state that travels with the browser, sealed, so any instance can finish any
//! flow without a server-side session store.
//!
//! Two sealed values exist: the connect link's `session` (minted by the internal API,
//! opened by `/start`) and the authorization request's `state` (minted by `/start`,
//! opened by the callback). Both are AES-256-GCM under the shared state key, with the
//! purpose in the associated data so one can never be used as the other.
//!
//! The state key rotates with a two-key window: the new key seals, and the previous
//! one (`AXNT_PREVIOUS_STATE_KEY`, or the secret's `previous_state_key`) still opens
//! what it sealed until that expires.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ReturnUrl;
use crate::crypto::{SecretKey, b64url, b64url_decode, random_token, sha256};
use crate::ids::{FlowId, UserId};

/// A connect link's contents.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ConnectSession {
    #[serde(rename = "u")]
    pub(crate) user_id: UserId,
    #[serde(rename = "p")]
    pub(crate) provider: String,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub(crate) return_to: Option<ReturnUrl>,
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub(crate) login_hint: Option<String>,
    #[serde(rename = "f")]
    pub(crate) flow_id: FlowId,
    /// Epoch seconds.
    #[serde(rename = "e")]
    pub(crate) expires_at: i64,
    /// What the connect session asked of the account and the grant.
    #[serde(flatten)]
    pub(crate) rules: FlowRules,
}

impl ConnectSession {
    /// The largest `state` `/start` can seal for this session: its random parts at
    /// their full length. Sealing it when the link is made refuses then, not after the
    /// user's consent, a link whose `state` would be too long to come back.
    pub(crate) fn largest_state(&self) -> FlowState {
        FlowState {
            user_id: self.user_id.clone(),
            provider: self.provider.clone(),
            pkce_verifier: random_token(32),
            nonce: random_token(32),
            return_to: self.return_to.clone(),
            expires_at: i64::MAX,
            flow_id: self.flow_id.clone(),
            binding_hash: new_binding().1,
            rules: self.rules.clone(),
        }
    }
}

/// What a connect session asks of the account that completes it and of its grant,
/// carried from the link into `state`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct FlowRules {
    /// Scopes beyond the provider's defaults. (Under the same key links have always
    /// carried them, so a link made before the state carried them still opens.)
    #[serde(rename = "s", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) scopes: Vec<String>,
    /// What to do with a grant lacking some of the scopes (default: the setting).
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub(crate) partial_grant: Option<crate::config::PartialGrant>,
    /// A step-up: only the account of this `sub` (the connection's) may complete it.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub(crate) expected_sub: Option<String>,
    /// Do not force the consent screen (`prompt=consent`): a step-up of a live
    /// connection needs no new refresh token, and each one Google mints counts toward
    /// its limit per account.
    #[serde(rename = "k", default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) skip_consent: bool,
    /// Hold the grant until the application confirms the flow.
    #[serde(rename = "c", default, skip_serializing_if = "std::ops::Not::not")]
    pub(crate) require_confirmation: bool,
    /// The only account (its verified email) this flow may connect.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub(crate) expected_email: Option<String>,
    /// The only Google Workspace domain (`hd`) this flow may connect.
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub(crate) hosted_domain: Option<String>,
    /// The OAuth client (its id) the flow is made with, fixed when the link is minted
    /// (the provider's current one unless the session named another), so the code is
    /// exchanged by the client that asked for it. Absent in links minted before
    /// providers had several clients: the current one.
    #[serde(rename = "o", default, skip_serializing_if = "Option::is_none")]
    pub(crate) client: Option<String>,
}

/// The authorization request's `state`.
#[derive(Serialize, Deserialize)]
pub(crate) struct FlowState {
    #[serde(rename = "u")]
    pub(crate) user_id: UserId,
    #[serde(rename = "p")]
    pub(crate) provider: String,
    /// PKCE verifier: secret, which is why `state` is encrypted and not just signed.
    #[serde(rename = "v")]
    pub(crate) pkce_verifier: String,
    #[serde(rename = "n")]
    pub(crate) nonce: String,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub(crate) return_to: Option<ReturnUrl>,
    #[serde(rename = "e")]
    pub(crate) expires_at: i64,
    #[serde(rename = "f")]
    pub(crate) flow_id: FlowId,
    /// SHA-256 of the browser-binding cookie, base64url.
    #[serde(rename = "b")]
    pub(crate) binding_hash: String,
    /// What the connect session asked of the account and the grant.
    #[serde(flatten)]
    pub(crate) rules: FlowRules,
}

/// Why a sealed value was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SealError {
    #[error("not a value this service sealed (tampered or from another deployment)")]
    Invalid,
    #[error("the sealed value would be longer than {MAX_SEALED_LEN} characters")]
    TooLarge,
}

/// The longest sealed value [`StateSealer::open`] accepts, and so the longest
/// [`StateSealer::seal`] makes: URLs past about 8 KiB are cut by browsers and proxies.
pub(crate) const MAX_SEALED_LEN: usize = 8192;

/// Seals and opens flow values under the state key.
pub(crate) struct StateSealer {
    key: SecretKey,
    /// Opens only: the key before a rotation.
    previous: Option<SecretKey>,
}

/// What a sealed value is for; part of the associated data.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purpose {
    ConnectSession,
    AuthorizationState,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Self::ConnectSession => b"axnt-oauth/connect-session/v1",
            Self::AuthorizationState => b"axnt-oauth/authorization-state/v1",
        }
    }
}

impl StateSealer {
    pub(crate) fn new(key: SecretKey) -> Self {
        Self {
            key,
            previous: None,
        }
    }

    /// Also opens what `previous` sealed (never seals with it).
    pub(crate) fn with_previous(self, previous: Option<SecretKey>) -> Self {
        Self { previous, ..self }
    }

    pub(crate) fn seal<T: Serialize>(
        &self,
        purpose: Purpose,
        value: &T,
    ) -> Result<String, SealError> {
        let json =
            zeroize::Zeroizing::new(serde_json::to_vec(value).map_err(|_| SealError::Invalid)?);
        let sealed = self
            .key
            .seal_combined(purpose.aad(), &json)
            .map_err(|_| SealError::Invalid)?;
        let text = b64url(&sealed);
        if text.len() > MAX_SEALED_LEN {
            return Err(SealError::TooLarge);
        }
        Ok(text)
    }

    pub(crate) fn open<T: DeserializeOwned>(
        &self,
        purpose: Purpose,
        text: &str,
    ) -> Result<T, SealError> {
        // Reject absurd inputs before decoding them.
        if text.is_empty() || text.len() > MAX_SEALED_LEN {
            return Err(SealError::Invalid);
        }
        let sealed = b64url_decode(text).ok_or(SealError::Invalid)?;
        let json = self
            .key
            .open_combined(purpose.aad(), &sealed)
            .or_else(|e| match &self.previous {
                Some(previous) => previous.open_combined(purpose.aad(), &sealed),
                None => Err(e),
            })
            .map_err(|_| SealError::Invalid)?;
        serde_json::from_slice(&json).map_err(|_| SealError::Invalid)
    }
}

/// A fresh browser-binding value and its hash (the hash goes into `state`).
pub(crate) fn new_binding() -> (String, String) {
    let value = random_token(32);
    let hash = binding_hash(&value);
    (value, hash)
}

pub(crate) fn binding_hash(value: &str) -> String {
    b64url(&sha256(value.as_bytes()))
}

/// Whether a cookie value matches the hash in `state`, in constant time.
pub(crate) fn binding_matches(cookie: &str, expected_hash: &str) -> bool {
    use subtle::ConstantTimeEq;
    binding_hash(cookie)
        .as_bytes()
        .ct_eq(expected_hash.as_bytes())
        .into()
}

/// The binding cookie's name for one flow: one cookie per flow, so two flows started
/// in two tabs of one browser do not overwrite each other.
pub(crate) fn binding_cookie_name(flow_id: &FlowId) -> String {
    let short: String = flow_id
        .as_str()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("axnt_flow_{short}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> ConnectSession {
        ConnectSession {
            user_id: UserId::parse("u1").expect("valid"),
            provider: "google".into(),
            return_to: None,
            login_hint: None,
            flow_id: FlowId::parse("f").expect("valid"),
            expires_at: 1,
            rules: FlowRules::default(),
        }
    }

    #[test]
    fn sealed_values_open_only_for_their_purpose_and_key() {
        let sealer = StateSealer::new(SecretKey::generate());
        let text = sealer
            .seal(Purpose::ConnectSession, &session())
            .expect("seal");
        let back: ConnectSession = sealer.open(Purpose::ConnectSession, &text).expect("open");
        assert_eq!(back.user_id.as_str(), "u1");
        assert!(
            sealer
                .open::<FlowState>(Purpose::AuthorizationState, &text)
                .is_err()
        );
        let other = StateSealer::new(SecretKey::generate());
        assert!(
            other
                .open::<ConnectSession>(Purpose::ConnectSession, &text)
                .is_err()
        );
        let mut tampered = text.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        assert!(
            sealer
                .open::<ConnectSession>(Purpose::ConnectSession, &tampered)
                .is_err()
        );
    }

    #[test]
    fn a_rotated_state_key_still_opens_what_the_previous_one_sealed() {
        let (old, new) = (SecretKey::generate(), SecretKey::generate());
        let before = StateSealer::new(old.clone());
        let text = before
            .seal(Purpose::ConnectSession, &session())
            .expect("seal");
        let window = StateSealer::new(new.clone()).with_previous(Some(old));
        let back: ConnectSession = window.open(Purpose::ConnectSession, &text).expect("open");
        assert_eq!(back.user_id.as_str(), "u1");
        let fresh = window
            .seal(Purpose::ConnectSession, &session())
            .expect("seal");
        assert!(
            before
                .open::<ConnectSession>(Purpose::ConnectSession, &fresh)
                .is_err(),
            "the new key seals"
        );
        let after = StateSealer::new(new);
        assert_eq!(
            after
                .open::<ConnectSession>(Purpose::ConnectSession, &text)
                .err(),
            Some(SealError::Invalid),
            "without the previous key the old value is refused"
        );
    }

    #[test]
    fn binding_compares_by_hash() {
        let (value, hash) = new_binding();
        assert!(binding_matches(&value, &hash));
        assert!(!binding_matches("other", &hash));
    }
}
