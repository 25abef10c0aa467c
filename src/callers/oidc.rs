//! OIDC workload callers: `Authorization: Bearer <JWT>` from an issuer an `oidc`
//! caller names (Kubernetes service-account tokens, GitHub Actions, any issuer with
//! discovery and JWKS). The token's issuer picks the callers that may match before any
//! key is fetched, so a token from an issuer nobody configured costs no network call.
//! The signature (RS256 or ES256, by a key the issuer publishes), issuer, audience,
//! expiry and not-before are checked; then the first caller whose audience the token
//! names and whose bound claims it carries is the caller.
//!
//! Keys are cached per issuer for an hour, fetched again (at most once a minute) when
//! a token names a key the cache lacks, as the provider module does for ID tokens.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Caller, OidcBinding};

/// How long an issuer's keys are used before they are fetched again.
const KEYS_TTL: Duration = Duration::from_secs(3600);
/// An unknown `kid` fetches the keys again at most this often.
const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(60);
/// Clock difference tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 60;
/// The algorithms a workload token may be signed with: asymmetric only, so no key the
/// issuer publishes can be turned into a shared secret.
const ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// Why a workload token was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum OidcError {
    /// Not a valid token for any configured caller (401).
    #[error("{0}")]
    Refused(String),
    /// The issuer's keys could not be fetched (503).
    #[error("the issuer's keys are unavailable: {0}")]
    Unavailable(String),
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

struct Keys {
    set: JwkSet,
    fetched: Instant,
}

/// Verifies workload tokens against their issuers' published keys.
pub(crate) struct OidcVerifier {
    http: reqwest::Client,
    /// Issuer → its keys as last fetched (one lock each, so one fetch at a time).
    issuers: parking_lot::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Keys>>>>>,
}

impl OidcVerifier {
    pub(crate) fn new(timeout: Duration) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("OIDC client: {e}"))?;
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
    ) -> Result<Arc<Caller>, OidcError> {
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
        let keys = self.keys(&issuer, header.kid.as_deref()).await?;
        let jwk = match header.kid.as_deref() {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| refused("the token is signed with a key its issuer does not publish"))?;
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

    /// `issuer`'s keys: cached, fetched again when stale, or (at most every minute)
    /// when `want_kid` is not among them.
    async fn keys(&self, issuer: &str, want_kid: Option<&str>) -> Result<JwkSet, OidcError> {
        let slot = Arc::clone(self.issuers.lock().entry(issuer.to_string()).or_default());
        let mut cached = slot.lock().await;
        let fresh = cached.as_ref().is_some_and(|k| {
            let has = want_kid.is_none_or(|kid| k.set.find(kid).is_some());
            k.fetched.elapsed() < KEYS_TTL && (has || k.fetched.elapsed() < REFETCH_AT_MOST_EVERY)
        });
        if !fresh {
            match self.fetch_keys(issuer).await {
                Ok(set) => {
                    *cached = Some(Keys {
                        set,
                        fetched: Instant::now(),
                    });
                }
                // Keys still within their hour serve while the issuer is away.
                Err(e)
                    if cached
                        .as_ref()
                        .is_some_and(|k| k.fetched.elapsed() < KEYS_TTL) =>
                {
                    tracing::warn!(issuer, error = %e, "could not fetch an OIDC issuer's keys again; using those held");
                }
                Err(e) => return Err(e),
            }
        }
        cached
            .as_ref()
            .map(|k| k.set.clone())
            .ok_or_else(|| OidcError::Unavailable("no keys".into()))
    }

    async fn fetch_keys(&self, issuer: &str) -> Result<JwkSet, OidcError> {
        let discovery: Discovery = self
            .fetch(&format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            ))
            .await?;
        if discovery.issuer != issuer {
            return Err(OidcError::Unavailable(format!(
                "{issuer}'s discovery document names another issuer"
            )));
        }
        self.fetch(&discovery.jwks_uri).await
    }

    async fn fetch<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, OidcError> {
        let answer = self
            .http
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| OidcError::Unavailable(format!("{url}: {e}")))?;
        answer
            .json()
            .await
            .map_err(|e| OidcError::Unavailable(format!("{url}: {e}")))
    }
}

fn refused(why: &str) -> OidcError {
    OidcError::Refused(why.to_string())
}

/// The `iss` a token claims, read before its signature is checked: only to choose
/// which issuer's keys check it.
fn unverified_issuer(token: &str) -> Result<String, OidcError> {
    let payload = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|json| serde_json::from_slice::<Map<String, Value>>(&json).ok())
        .ok_or_else(|| refused("the bearer token is not a signed JWT"))?;
    payload
        .get("iss")
        .and_then(Value::as_str)
        .map(str::to_string)
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
