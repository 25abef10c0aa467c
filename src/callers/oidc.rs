//! OIDC workload callers: `Authorization: Bearer <JWT>` from an issuer an `oidc`
//! caller names (Kubernetes service-account tokens, GitHub Actions, any issuer with
//! discovery and JWKS). The token's issuer picks the callers that may match before any
//! key is fetched, so a token from an issuer nobody configured costs no network call.
//! The signature (RS256 or ES256, by a key the issuer publishes), issuer, audience,
//! expiry and not-before are checked; then the first caller whose audience the token
//! names and whose bound claims it carries is the caller.
//!
//! Keys are cached per issuer as [`crate::jwks`] does for every issuer: an hour, and
//! fetched again (at most every 5 s) when a token names a key the cache lacks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Caller, CredentialError, OidcBinding};
use crate::jwks::IssuerKeys;

/// A token naming a key not held fetches the issuer's keys again at most this often:
/// soon enough that a rotated-in key is used within seconds, rarely enough that tokens
/// with made-up kids cannot keep the issuer busy.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(5);
/// Clock difference tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 60;
/// The algorithms a workload token may be signed with: asymmetric only, so no key the
/// issuer publishes can be turned into a shared secret.
const ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// Verifies workload tokens against their issuers' published keys.
pub(crate) struct OidcVerifier {
    http: reqwest::Client,
    /// Issuer → its keys.
    issuers: parking_lot::Mutex<HashMap<String, Arc<IssuerKeys>>>,
}

impl OidcVerifier {
    pub(crate) fn new(timeout: Duration) -> Result<Self, String> {
        let http = crate::guard::outbound_client(timeout)?;
        Ok(Self {
            http,
            issuers: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Whether `token` has a JWT's shape (three base64url parts), so a bearer that is
    /// not one is only ever compared as a key.
    pub(crate) fn looks_like_jwt(token: &str) -> bool {
        token.starts_with("eyJ") && token.split('.').count() == 3
    }

    /// The caller of `bindings` whose token `token` is.
    pub(crate) async fn verify<'a>(
        &self,
        token: &str,
        bindings: impl Iterator<Item = (&'a OidcBinding, &'a Arc<Caller>)>,
    ) -> Result<Arc<Caller>, CredentialError> {
        let header =
            decode_header(token).map_err(|_| refused("the bearer token is not a signed JWT"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(refused("the token must be signed with RS256 or ES256"));
        }
        let issuer = unverified_issuer(token)?;
        let bindings: Vec<(&OidcBinding, &Arc<Caller>)> =
            bindings.filter(|(b, _)| b.issuer == issuer).collect();
        if bindings.is_empty() {
            return Err(refused("no caller trusts the token's issuer"));
        }
        let keys = self
            .keys_of(&issuer)
            .keys(header.kid.as_deref())
            .await
            .map_err(|e| {
                CredentialError::Unavailable(format!("the issuer's keys are unavailable: {e}"))
            })?;
        let jwk = match header.kid.as_deref() {
            Some(kid) => keys.set.find(kid),
            None if keys.set.keys.len() == 1 => keys.set.keys.first(),
            None => None,
        };
        let Some(jwk) = jwk else {
            // A key the issuer may have rotated in while it could not be asked: retry
            // later, rather than be told it is unknown.
            if keys.refetch_failed {
                return Err(CredentialError::Unavailable(
                    "the token names a key not among the issuer's keys held, which could not be fetched again".into(),
                ));
            }
            return Err(refused(
                "the token is signed with a key its issuer does not publish",
            ));
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|_| refused("the issuer's key for this token is unusable"))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[issuer.as_str()]);
        let audiences: Vec<&str> = bindings.iter().map(|(b, _)| b.audience.as_str()).collect();
        validation.set_audience(&audiences);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.required_spec_claims = ["exp", "iss", "aud"]
            .into_iter()
            .map(String::from)
            .collect();
        let claims = decode::<Map<String, Value>>(token, &key, &validation)
            .map_err(|e| refused(&format!("the token is not valid: {}", problem(&e))))?
            .claims;
        let names = |audience: &str| match claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(all)) => all.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        bindings
            .into_iter()
            .find(|(b, _)| names(&b.audience) && b.claims_match(&claims))
            .map(|(_, caller)| Arc::clone(caller))
            .ok_or_else(|| refused("the token's claims match no caller"))
    }

    /// `issuer`'s keys, by its discovery document (which must name it).
    fn keys_of(&self, issuer: &str) -> Arc<IssuerKeys> {
        let mut issuers = self.issuers.lock();
        let keys = issuers.entry(issuer.to_string()).or_insert_with(|| {
            Arc::new(IssuerKeys::new(
                format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                ),
                Some(issuer.to_string()),
                self.http.clone(),
                REFETCH_AT_MOST_EVERY,
            ))
        });
        Arc::clone(keys)
    }
}

fn refused(why: &str) -> CredentialError {
    CredentialError::Refused(why.to_string())
}

/// The `iss` a token claims, read before its signature is checked: only to choose
/// which issuer's keys check it.
fn unverified_issuer(token: &str) -> Result<String, CredentialError> {
    #[derive(Deserialize)]
    struct Issuer {
        iss: Option<String>,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Issuer>(token)
        .map_err(|_| refused("the bearer token is not a signed JWT"))?
        .iss
        .ok_or_else(|| refused("the token names no issuer"))
}

/// What was wrong with a token, as a rule (never a claim's value).
fn problem(e: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => "expired",
        ErrorKind::ImmatureSignature => "not valid yet",
        ErrorKind::InvalidAudience => "for another audience",
        ErrorKind::InvalidIssuer => "from another issuer",
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm => "signed with another algorithm than its key's",
        ErrorKind::MissingRequiredClaim(_) => "a required claim (exp, iss, aud) is missing",
        _ => "malformed",
    }
}
