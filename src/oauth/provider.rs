//! An OpenID provider as the service talks to it: discovery, the authorization URL,
//! the code exchange, refresh, revocation and ID-token verification.
//!
//! Everything provider-specific is data ([`ProviderConfig`]): issuer, default scopes and
//! extra authorization parameters. Google is one such configuration; another OpenID
//! issuer needs a new entry, not new code. Discovery and the JWKS are fetched lazily and
//! cached, and served stale while an outage of the provider's metadata endpoints lasts
//! ([`metadata`]); an ID token signed by an unknown `kid` triggers one JWKS refetch (key
//! rotation) before it is rejected.

mod metadata;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreErrorResponseType, CoreGenderClaim, CoreGrantType, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm,
    CoreResponseMode, CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreSubjectIdentifierType, CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AdditionalProviderMetadata, AuthenticationFlow, AuthorizationCode, Client,
    ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, HttpRequest, HttpResponse, IdToken, IdTokenFields, LoginHint, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl,
    RefreshToken, RequestTokenError, Scope, StandardErrorResponse, StandardTokenResponse,
    TokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use self::metadata::{Discovered, MetadataCache};
use crate::config::Settings;
use crate::secrets::{ClientCredentials, SecretsCache};
use crate::store::UserInfo;

/// One provider's settings. Adding a provider is adding one of these.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// The name in routes and rows (`google`).
    pub name: String,
    /// The OpenID issuer; endpoints come from its discovery document.
    pub issuer: String,
    /// Scopes always requested (`openid` is implied).
    pub default_scopes: Vec<String>,
    /// Extra authorization parameters (Google: `access_type=offline`, …).
    pub extra_auth_params: Vec<(String, String)>,
    /// `prompt=consent` so that a refresh token is issued on every grant.
    pub prompt_consent: bool,
    /// The provider issues a new refresh token on each refresh and rejects the old one.
    /// Google does not; many other providers do.
    pub rotates_refresh_tokens: bool,
    /// A rotating provider still accepts a redeemed refresh token for this long.
    pub refresh_reuse_grace: Duration,
}

impl ProviderConfig {
    /// Google: offline access (a refresh token), consent every time (so re-connecting
    /// yields a refresh token again), and incremental scopes.
    pub fn google(issuer: &str) -> Self {
        Self {
            name: "google".into(),
            issuer: issuer.trim_end_matches('/').to_string(),
            default_scopes: vec!["email".into(), "profile".into()],
            extra_auth_params: vec![
                ("access_type".into(), "offline".into()),
                ("include_granted_scopes".into(), "true".into()),
            ],
            prompt_consent: true,
            rotates_refresh_tokens: false,
            refresh_reuse_grace: Duration::ZERO,
        }
    }
}

/// Claims beyond the standard ones that we read from ID tokens.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraClaims {
    /// Google Workspace hosted domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hd: Option<String>,
}
impl AdditionalClaims for ExtraClaims {}

/// Discovery fields beyond the standard ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraMetadata {
    /// RFC 7009 revocation endpoint (Google publishes one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
}
impl AdditionalProviderMetadata for ExtraMetadata {}

type Metadata = ProviderMetadata<
    ExtraMetadata,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;
type TokenFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type ProviderTokenResponse = StandardTokenResponse<TokenFields, CoreTokenType>;
type ProviderIdToken = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type OidcClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    ProviderTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// Why a call to the provider failed. Never carries a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// No client id or secret is configured.
    #[error(
        "the OAuth client is not configured: set AXNT_GOOGLE_CLIENT_ID and AXNT_GOOGLE_CLIENT_SECRET (or the secret {0})"
    )]
    NotConfigured(String),
    /// The provider rejected the grant: the code or refresh token is dead.
    #[error("the provider rejected the grant (invalid_grant)")]
    InvalidGrant,
    /// The provider rejected our client credentials.
    #[error("the provider rejected the client credentials (invalid_client)")]
    InvalidClient,
    /// The provider answered an OAuth error other than the above.
    #[error("the provider answered {error}")]
    Rejected { error: String },
    /// The request provably did not reach the provider (no connection, DNS), or the
    /// provider answered 5xx or 429: nothing was done, a retry is safe.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// The request may have reached the provider but no whole answer came back (a
    /// timeout after connecting, a reset, a broken body): the provider may have acted
    /// on it, e.g. rotated the refresh token it carried.
    #[error("the provider's answer was lost: {0}")]
    OutcomeUnknown(String),
    /// The provider answered something we cannot read.
    #[error("the provider's answer was malformed: {0}")]
    Malformed(String),
    /// The ID token failed verification.
    #[error("the ID token is invalid: {0}")]
    IdToken(IdTokenProblem),
}

/// What is wrong with an ID token, as a stable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenProblem {
    Missing,
    BadSignature,
    WrongIssuer,
    WrongAudience,
    WrongNonce,
    Expired,
    Malformed,
}

impl IdTokenProblem {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::BadSignature => "bad_signature",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::WrongNonce => "wrong_nonce",
            Self::Expired => "expired",
            Self::Malformed => "malformed",
        }
    }
}

impl std::fmt::Display for IdTokenProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Tokens as the provider returned them.
pub struct ProviderTokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub id_token: Option<SecretString>,
    pub expires_in: Option<Duration>,
    pub scope: Option<String>,
    pub token_type: String,
}

/// An HTTP failure below the OAuth layer, sorted by whether the provider may have acted
/// on the request: a refresh token sent in a request that may have been processed may
/// have been rotated, so its caller must not treat "no answer" like "not sent".
/// 5xx and 429 answers are failures too, so that they are retried and reported as
/// "unavailable" rather than parsed as OAuth errors.
#[derive(Debug, thiserror::Error)]
pub enum HttpFailure {
    /// No connection was made (DNS, refused, connect timeout) or the request could not
    /// be built: the provider never saw it.
    #[error("not sent: {0}")]
    NotSent(String),
    /// The provider answered 5xx or 429: it did not serve the request.
    #[error("answered HTTP {0}")]
    Status(u16),
    /// Connected, but no whole answer within the timeout: the request may have been
    /// processed.
    #[error("timed out waiting for the answer")]
    Timeout,
    /// The connection broke while sending or reading the answer (reset, truncated
    /// body): the request may have been processed.
    #[error("no complete answer: {0}")]
    Interrupted(String),
}

impl HttpFailure {
    /// What this failure means to the caller of a provider endpoint.
    fn into_provider_error(self) -> ProviderError {
        match self {
            Self::NotSent(_) | Self::Status(_) => ProviderError::Unavailable(self.to_string()),
            Self::Timeout | Self::Interrupted(_) => ProviderError::OutcomeUnknown(self.to_string()),
        }
    }
}

/// Whether an HTTP status means "not served, retry later" rather than an answer.
fn is_unavailable_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
}

/// The HTTP client handed to `openidconnect`: reqwest without redirects, with 5xx and
/// 429 answers turned into failures.
#[derive(Clone)]
struct ProviderHttp(reqwest::Client);

impl<'c> openidconnect::AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpFailure;
    type Future =
        Pin<Box<dyn Future<Output = Result<HttpResponse, HttpFailure>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)
                .map_err(|e| HttpFailure::NotSent(error_chain(&e)))?;
            let response = self.0.execute(request).await.map_err(classify_reqwest)?;
            let status = response.status();
            if is_unavailable_status(status) {
                return Err(HttpFailure::Status(status.as_u16()));
            }
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(classify_reqwest)?;
            let mut out = http::Response::builder().status(status);
            if let Some(h) = out.headers_mut() {
                *h = headers;
            }
            // The provider answered, but we cannot hand the answer on: as good as lost.
            out.body(body.to_vec())
                .map_err(|e| HttpFailure::Interrupted(e.to_string()))
        })
    }
}

/// Bounds on the calls to a provider, on how long its metadata is trusted, and on how
/// often its client secret is re-read.
#[derive(Debug, Clone, Copy)]
pub struct ProviderLimits {
    /// Timeout of one HTTP call (of which connecting may take at most 5 s).
    pub timeout: Duration,
    /// Metadata (discovery and JWKS) is fresh this long after a fetch.
    pub metadata_ttl: Duration,
    /// Then it is served stale, while refetched in the background, at most this much
    /// longer.
    pub metadata_max_stale: Duration,
    /// After `invalid_client`, the client secret is re-read at most this often.
    pub secret_reload_min_interval: Duration,
}

impl ProviderLimits {
    pub fn from_settings(settings: &Settings) -> Self {
        Self {
            timeout: settings.provider.timeout,
            metadata_ttl: settings.provider.metadata_ttl,
            metadata_max_stale: settings.provider.metadata_max_stale,
            secret_reload_min_interval: settings.secrets.reload_min_interval,
        }
    }
}

/// One provider, its cached metadata, and the credentials to talk to it.
pub struct OidcProvider {
    config: ProviderConfig,
    http: ProviderHttp,
    secrets: Arc<SecretsCache>,
    /// In an `Arc` so that a background refetch can outlive the request that started it.
    metadata: Arc<MetadataCache>,
    secret_reload_min_interval: Duration,
}

impl OidcProvider {
    pub fn new(
        config: ProviderConfig,
        secrets: Arc<SecretsCache>,
        limits: ProviderLimits,
    ) -> Result<Self, ProviderError> {
        let http = ProviderHttp(http_client(limits.timeout).map_err(|e| {
            ProviderError::Unavailable(format!("cannot build HTTP client: {}", error_chain(&e)))
        })?);
        let metadata = MetadataCache::new(
            &config.issuer,
            http.clone(),
            limits.metadata_ttl,
            limits.metadata_max_stale,
        )?;
        Ok(Self {
            config,
            http,
            secrets,
            metadata: Arc::new(metadata),
            secret_reload_min_interval: limits.secret_reload_min_interval,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The client credentials, or why there are none.
    pub async fn credentials(&self) -> Result<ClientCredentials, ProviderError> {
        self.secrets
            .current()
            .client
            .clone()
            .ok_or_else(|| ProviderError::NotConfigured(self.secrets.source_name()))
    }

    /// Whether credentials are present (for `/readyz`).
    pub fn is_configured(&self) -> bool {
        self.secrets.current().client.is_some()
    }

    async fn discovered(&self) -> Result<Discovered, ProviderError> {
        self.metadata.get().await
    }

    fn client(
        &self,
        d: &Discovered,
        creds: &ClientCredentials,
        redirect_uri: Option<&str>,
    ) -> Result<OidcClient, ProviderError> {
        let client = OidcClient::from_provider_metadata(
            (*d.metadata).clone(),
            ClientId::new(creds.client_id.clone()),
            Some(ClientSecret::new(
                creds.client_secret.expose_secret().to_string(),
            )),
        );
        match redirect_uri {
            Some(uri) => Ok(client.set_redirect_uri(
                RedirectUrl::new(uri.to_string())
                    .map_err(|e| ProviderError::Malformed(format!("redirect URI: {e}")))?,
            )),
            None => Ok(client),
        }
    }

    /// Fetches discovery now (for `check`).
    pub async fn check_discovery(&self) -> Result<(), ProviderError> {
        self.discovered().await.map(|_| ())
    }

    /// Builds the authorization URL: code flow, PKCE S256 from `pkce_verifier`, our
    /// nonce and sealed state.
    pub async fn authorization_request(
        &self,
        redirect_uri: &str,
        extra_scopes: &[String],
        state: String,
        nonce: String,
        pkce_verifier: &str,
        login_hint: Option<&str>,
    ) -> Result<Url, ProviderError> {
        let creds = self.credentials().await?;
        let d = self.discovered().await?;
        let client = self.client(&d, &creds, Some(redirect_uri))?;
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            pkce_verifier.to_string(),
        ));
        let mut scopes: Vec<&String> = Vec::new();
        for s in self.config.default_scopes.iter().chain(extra_scopes) {
            if s != "openid" && !scopes.contains(&s) {
                scopes.push(s);
            }
        }
        let mut request = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .add_scopes(scopes.into_iter().map(|s| Scope::new(s.clone())))
            .set_pkce_challenge(challenge);
        for (name, value) in &self.config.extra_auth_params {
            request = request.add_extra_param(name.clone(), value.clone());
        }
        if self.config.prompt_consent {
            request = request.add_prompt(CoreAuthPrompt::Consent);
        }
        if let Some(hint) = login_hint {
            request = request.set_login_hint(LoginHint::new(hint.to_string()));
        }
        let (url, _, _) = request.url();
        Ok(url)
    }

    /// Exchanges an authorization code. Never retried: a code is single-use, and a
    /// second attempt after a lost answer would only earn `invalid_grant`.
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &str,
    ) -> Result<ProviderTokens, ProviderError> {
        let creds = self.credentials().await?;
        let d = self.discovered().await?;
        let client = self.client(&d, &creds, Some(redirect_uri))?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| ProviderError::Malformed(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&self.http)
            .await;
        let result = self.token_result(response);
        if matches!(result, Err(ProviderError::InvalidClient)) {
            // The secret may have been rotated: have it re-read for the next flow. A
            // code is not retried here (see above).
            self.secrets.reload_soon();
        }
        result
    }

    /// Redeems a refresh token.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
    ) -> Result<ProviderTokens, ProviderError> {
        let creds = self.credentials().await?;
        let first = self.refresh_with(&creds, refresh_token).await;
        if !matches!(first, Err(ProviderError::InvalidClient)) {
            return first;
        }
        // The client secret may have been rotated since we last read it: re-read it
        // (at most once per interval, however many refreshes fail: a wrong secret must
        // not turn every refresh into a read of the secret store) and, when the
        // credentials changed — by this re-read or another since `creds` were taken —
        // try once more (a refresh token is not spent by a request whose client
        // authentication failed).
        match self
            .secrets
            .reload_throttled(self.secret_reload_min_interval)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(
                    "client secret re-read recently; not re-reading it after invalid_client"
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "re-reading the client secret after invalid_client failed")
            }
        }
        let fresh = self.credentials().await?;
        if fresh.client_id == creds.client_id
            && fresh.client_secret.expose_secret() == creds.client_secret.expose_secret()
        {
            return first;
        }
        tracing::info!("client credentials changed in the secret; retrying the refresh with them");
        self.refresh_with(&fresh, refresh_token).await
    }

    async fn refresh_with(
        &self,
        creds: &ClientCredentials,
        refresh_token: &SecretString,
    ) -> Result<ProviderTokens, ProviderError> {
        let d = self.discovered().await?;
        let client = self.client(&d, creds, None)?;
        let token = RefreshToken::new(refresh_token.expose_secret().to_string());
        let response = client
            .exchange_refresh_token(&token)
            .map_err(|e| ProviderError::Malformed(e.to_string()))?
            .request_async(&self.http)
            .await;
        self.token_result(response)
    }

    fn token_result(
        &self,
        response: Result<
            ProviderTokenResponse,
            RequestTokenError<HttpFailure, StandardErrorResponse<CoreErrorResponseType>>,
        >,
    ) -> Result<ProviderTokens, ProviderError> {
        match response {
            Ok(r) => Ok(ProviderTokens {
                access_token: SecretString::from(r.access_token().secret().clone()),
                refresh_token: r
                    .refresh_token()
                    .map(|t| SecretString::from(t.secret().clone())),
                id_token: r.id_token().map(|t| SecretString::from(t.to_string())),
                expires_in: r.expires_in(),
                scope: r
                    .scopes()
                    .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
                token_type: "Bearer".into(),
            }),
            Err(e) => Err(self.classify_token_error(e)),
        }
    }

    fn classify_token_error(
        &self,
        e: RequestTokenError<HttpFailure, StandardErrorResponse<CoreErrorResponseType>>,
    ) -> ProviderError {
        match e {
            RequestTokenError::ServerResponse(r) => match r.error() {
                CoreErrorResponseType::InvalidGrant => ProviderError::InvalidGrant,
                CoreErrorResponseType::InvalidClient
                | CoreErrorResponseType::UnauthorizedClient => ProviderError::InvalidClient,
                other => ProviderError::Rejected {
                    error: other.as_ref().to_string(),
                },
            },
            RequestTokenError::Request(f) => f.into_provider_error(),
            // Only where and what kind: serde's message can quote the offending value,
            // and in a token response that value may be a token.
            RequestTokenError::Parse(e, _body) => ProviderError::Malformed(format!(
                "unreadable token response at `{}` ({:?} error)",
                e.path(),
                e.inner().classify()
            )),
            RequestTokenError::Other(e) => ProviderError::Malformed(e),
        }
    }

    /// Verifies an ID token (signature against the JWKS, `iss`, `aud`, `exp`, `nonce`)
    /// and returns the profile it carries.
    pub async fn verify_id_token(
        &self,
        id_token: &SecretString,
        nonce: &str,
    ) -> Result<UserInfo, ProviderError> {
        let token: ProviderIdToken = id_token
            .expose_secret()
            .parse()
            .map_err(|_| ProviderError::IdToken(IdTokenProblem::Malformed))?;
        let creds = self.credentials().await?;
        let mut d = self.discovered().await?;
        let nonce = Nonce::new(nonce.to_string());
        let mut refetched = false;
        loop {
            let client = self.client(&d, &creds, None)?;
            match token.claims(&client.id_token_verifier(), &nonce) {
                Ok(claims) => {
                    return Ok(UserInfo {
                        sub: claims.subject().to_string(),
                        email: claims.email().map(|e| e.to_string()),
                        email_verified: claims.email_verified(),
                        name: claims
                            .name()
                            .and_then(|n| n.get(None))
                            .map(|n| n.to_string()),
                        picture: claims
                            .picture()
                            .and_then(|p| p.get(None))
                            .map(|p| p.to_string()),
                        hd: claims.additional_claims().hd.clone(),
                    });
                }
                Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                    openidconnect::SignatureVerificationError::NoMatchingKey,
                )) if !refetched => {
                    refetched = true;
                    match self.metadata.refetch_jwks(&d).await? {
                        Some(fresh) => d = fresh,
                        None => return Err(ProviderError::IdToken(IdTokenProblem::BadSignature)),
                    }
                }
                Err(e) => return Err(ProviderError::IdToken(classify_claims_error(&e))),
            }
        }
    }

    /// Revokes a token at the provider (RFC 7009), when it has a revocation endpoint.
    /// Returns whether a revocation was sent and accepted.
    pub async fn revoke(&self, token: &SecretString) -> Result<bool, ProviderError> {
        let creds = self.credentials().await?;
        let d = self.discovered().await?;
        let Some(endpoint) = d.metadata.additional_metadata().revocation_endpoint.clone() else {
            return Ok(false);
        };
        // RFC 7009 by hand: `oauth2`'s revoke refuses any non-https endpoint, which
        // would rule out a loopback issuer (tests, a local provider). The request is
        // one form POST with the client's credentials, encoded as RFC 6749 §2.3.1 says.
        let encode =
            |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let response = self
            .http
            .0
            .post(endpoint)
            .basic_auth(
                encode(&creds.client_id),
                Some(encode(creds.client_secret.expose_secret())),
            )
            .form(&[
                ("token", token.expose_secret()),
                ("token_type_hint", "refresh_token"),
            ])
            .send()
            .await
            .map_err(|e| classify_reqwest(e).into_provider_error())?;
        let status = response.status();
        if status.is_success() {
            Ok(true)
        } else if is_unavailable_status(status) {
            Err(ProviderError::Unavailable(format!(
                "revocation answered HTTP {}",
                status.as_u16()
            )))
        } else {
            // Google answers 400 invalid_token for a token that is already dead: the
            // grant is gone either way.
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let error = body["error"].as_str().unwrap_or("unknown").to_string();
            if error == "invalid_token" {
                Ok(true)
            } else {
                Err(ProviderError::Rejected { error })
            }
        }
    }
}

/// The HTTP client for one provider.
fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // Following redirects from a token endpoint opens the door to SSRF.
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("axnt-oauth/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Sorts a reqwest error by whether the request may have reached the provider.
/// `is_connect` holds for connect failures and connect timeouts alike (a connect
/// timeout is also `is_timeout`), so it is asked first.
fn classify_reqwest(e: reqwest::Error) -> HttpFailure {
    if e.is_connect() || e.is_builder() {
        HttpFailure::NotSent(error_chain(&e))
    } else if e.is_timeout() {
        HttpFailure::Timeout
    } else {
        HttpFailure::Interrupted(error_chain(&e))
    }
}

fn classify_claims_error(e: &openidconnect::ClaimsVerificationError) -> IdTokenProblem {
    use openidconnect::ClaimsVerificationError as E;
    match e {
        E::Expired(_) => IdTokenProblem::Expired,
        E::InvalidAudience(_) => IdTokenProblem::WrongAudience,
        E::InvalidIssuer(_) => IdTokenProblem::WrongIssuer,
        E::InvalidNonce(_) => IdTokenProblem::WrongNonce,
        E::SignatureVerification(_) => IdTokenProblem::BadSignature,
        _ => IdTokenProblem::Malformed,
    }
}

/// An error and its causes on one line (reqwest hides the useful part in `source`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The configured providers by name.
pub struct Providers {
    providers: Vec<Arc<OidcProvider>>,
}

impl Providers {
    pub fn new(providers: Vec<Arc<OidcProvider>>) -> Self {
        Self { providers }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<OidcProvider>> {
        self.providers.iter().find(|p| p.name() == name)
    }

    pub fn all(&self) -> &[Arc<OidcProvider>] {
        &self.providers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openidconnect::AsyncHttpClient;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback server that reads one request, then does `answer` with the socket.
    async fn server<F, Fut>(answer: F) -> String
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            if let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let _ = socket.read(&mut buf).await;
                answer(socket).await;
            }
        });
        format!("http://{addr}/token")
    }

    async fn call(url: &str) -> Result<HttpResponse, ProviderError> {
        let http = ProviderHttp(http_client(Duration::from_millis(500)).expect("client"));
        let request = http::Request::builder()
            .method("POST")
            .uri(url)
            .body(b"grant_type=refresh_token".to_vec())
            .expect("request");
        http.call(request)
            .await
            .map_err(HttpFailure::into_provider_error)
    }

    #[tokio::test]
    async fn a_refused_connection_never_reached_the_provider() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/token", listener.local_addr().expect("addr"));
        drop(listener);
        assert!(matches!(
            call(&url).await,
            Err(ProviderError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn no_answer_after_connecting_is_an_unknown_outcome() {
        let url = server(|socket| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(socket);
        })
        .await;
        assert!(matches!(
            call(&url).await,
            Err(ProviderError::OutcomeUnknown(_))
        ));
    }

    #[tokio::test]
    async fn a_connection_closed_before_the_answer_is_an_unknown_outcome() {
        let url = server(|socket| async move { drop(socket) }).await;
        assert!(matches!(
            call(&url).await,
            Err(ProviderError::OutcomeUnknown(_))
        ));
    }

    #[tokio::test]
    async fn a_truncated_answer_is_an_unknown_outcome() {
        let url = server(|mut socket| async move {
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"access_token\"")
                .await;
        })
        .await;
        assert!(matches!(
            call(&url).await,
            Err(ProviderError::OutcomeUnknown(_))
        ));
    }

    #[tokio::test]
    async fn answers_429_and_5xx_are_unavailable_and_4xx_are_answers() {
        for (status, unavailable) in [(429, true), (500, true), (503, true), (400, false)] {
            let url = server(move |mut socket| async move {
                let head = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\n{{}}");
                let _ = socket.write_all(head.as_bytes()).await;
            })
            .await;
            let result = call(&url).await;
            assert_eq!(
                matches!(result, Err(ProviderError::Unavailable(_))),
                unavailable,
                "HTTP {status}"
            );
            assert_eq!(result.is_ok(), !unavailable, "HTTP {status}");
        }
    }
}
