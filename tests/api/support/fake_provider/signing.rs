//! The provider's RSA keys, the JWKS it publishes, and the ID tokens it signs.

use chrono::{DateTime, Utc};
use openidconnect::core::{
    CoreGenderClaim, CoreJsonWebKeySet, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreRsaPrivateSigningKey,
};
use openidconnect::{
    AccessToken, AdditionalClaims, Audience, ClientId, EndUserEmail, EndUserName,
    EndUserPictureUrl, IdToken, IdTokenClaims, IssuerUrl, JsonWebKeyId, Nonce, PrivateSigningKey,
    StandardClaims, SubjectIdentifier,
};
use serde::{Deserialize, Serialize};

use super::{FakeProvider, Profile};

const PROVIDER_KEY_PEM: &str = include_str!("../keys/provider.pem");
const ROGUE_KEY_PEM: &str = include_str!("../keys/rogue.pem");

/// The claims Google adds to an ID token beyond OpenID's standard ones: `hd`, the
/// Workspace domain, present only for Workspace accounts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoogleClaims {
    /// Hosted (Workspace) domain of the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hd: Option<String>,
    /// Microsoft Entra's tenant of the account (Microsoft-like providers only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
}
impl AdditionalClaims for GoogleClaims {}

/// The ID-token type the provider signs (RS256). `CoreIdToken` parses it as well (it
/// ignores `hd`); use this one to read `hd` back.
pub type FakeIdToken = IdToken<
    GoogleClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
/// Claims of a [`FakeIdToken`].
pub type FakeIdTokenClaims = IdTokenClaims<GoogleClaims, CoreGenderClaim>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KeyMaterial {
    Provider,
    Rogue,
}

impl KeyMaterial {
    pub(super) fn other(self) -> Self {
        match self {
            Self::Provider => Self::Rogue,
            Self::Rogue => Self::Provider,
        }
    }

    fn signing_key(self, kid: &str) -> CoreRsaPrivateSigningKey {
        let pem = match self {
            Self::Provider => PROVIDER_KEY_PEM,
            Self::Rogue => ROGUE_KEY_PEM,
        };
        CoreRsaPrivateSigningKey::from_pem(pem, Some(JsonWebKeyId::new(kid.to_owned())))
            .expect("fake provider: test key fixture is a PKCS#1 RSA PEM")
    }
}

pub(super) struct Keys {
    pub(super) current: KeyMaterial,
    pub(super) current_kid: String,
    pub(super) previous: Option<(KeyMaterial, String)>,
}

impl Keys {
    pub(super) fn jwks(&self) -> CoreJsonWebKeySet {
        let current = self.current.signing_key(&self.current_kid);
        let mut keys = vec![current.as_verification_key()];
        if let Some((material, kid)) = &self.previous {
            keys.push(material.signing_key(kid).as_verification_key());
        }
        CoreJsonWebKeySet::new(keys)
    }
}

/// Everything needed to sign an ID token, gathered under the lock; signing happens after
/// it is released.
pub(super) struct IdTokenPlan {
    pub(super) issuer: String,
    pub(super) audience: String,
    pub(super) authorized_party: String,
    pub(super) iat: DateTime<Utc>,
    pub(super) exp: DateTime<Utc>,
    pub(super) nonce: Option<String>,
    pub(super) profile: Profile,
    pub(super) access_token: String,
    pub(super) key: KeyMaterial,
    pub(super) kid: String,
    pub(super) tid: Option<String>,
}

impl IdTokenPlan {
    pub(super) fn sign(self) -> String {
        let profile = self.profile;
        let standard = StandardClaims::new(SubjectIdentifier::new(profile.sub))
            .set_email(Some(EndUserEmail::new(profile.email)))
            .set_email_verified(Some(profile.email_verified))
            .set_name(Some(EndUserName::new(profile.name).into()))
            .set_picture(Some(EndUserPictureUrl::new(profile.picture).into()));
        let claims = FakeIdTokenClaims::new(
            IssuerUrl::new(self.issuer).expect("fake provider: issuer is a URL"),
            vec![Audience::new(self.audience)],
            self.exp,
            self.iat,
            standard,
            GoogleClaims {
                hd: profile.hd,
                tid: self.tid,
            },
        )
        .set_nonce(self.nonce.map(Nonce::new))
        .set_authorized_party(Some(ClientId::new(self.authorized_party)));
        let key = self.key.signing_key(&self.kid);
        FakeIdToken::new(
            claims,
            &key,
            CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
            Some(&AccessToken::new(self.access_token)),
            None,
        )
        .expect("fake provider: sign ID token")
        .to_string()
    }
}

impl FakeProvider {
    // ----- keys ----------------------------------------------------------------------

    /// Switches signing to the other RSA key under a new `kid` and returns that `kid`.
    /// The JWKS then lists the new key first and the previous one second (Google keeps
    /// both during a rotation); a verifier that cached the old JWKS meets an unknown
    /// `kid` and must fetch it again.
    pub fn rotate_signing_key(&self) -> String {
        let mut st = self.lock();
        let kid = st.next_id("kid");
        let keys = &mut st.keys;
        let previous = (
            keys.current,
            std::mem::replace(&mut keys.current_kid, kid.clone()),
        );
        keys.current = keys.current.other();
        keys.previous = Some(previous);
        kid
    }

    // ----- security event tokens (RISC) ----------------------------------------------

    /// A security event token with `claims`, signed (RS256) with the provider's current
    /// key, or, with `rogue`, with a key it does not publish (under the same `kid`).
    pub fn security_event_token(&self, claims: &serde_json::Value, rogue: bool) -> String {
        let kid = self.signing_kid();
        self.signed_jwt(
            &serde_json::json!({"alg": "RS256", "typ": "secevent+jwt", "kid": kid}),
            claims,
            rogue,
        )
    }

    /// The `kid` the provider signs with now.
    pub fn signing_kid(&self) -> String {
        self.lock().keys.current_kid.clone()
    }

    /// A JWT of `header` and `claims` signed RS256 with the provider's current key, or,
    /// with `rogue`, with a key it does not publish (whatever `header` says).
    pub fn signed_jwt(
        &self,
        header: &serde_json::Value,
        claims: &serde_json::Value,
        rogue: bool,
    ) -> String {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (material, kid) = {
            let st = self.lock();
            (st.keys.current, st.keys.current_kid.clone())
        };
        let material = if rogue { material.other() } else { material };
        let key = material.signing_key(&kid);
        let encode = |v: &serde_json::Value| {
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("fake provider: JSON"))
        };
        let signing_input = format!("{}.{}", encode(header), encode(claims));
        let signature = key
            .sign(
                &CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
                signing_input.as_bytes(),
            )
            .expect("fake provider: sign a JWT");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}
