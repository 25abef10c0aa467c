//! An OpenID provider as the service talks to it: discovery, the authorization URL,
//! the code exchange, refresh, revocation and ID-token verification.
//!
//! Everything provider-specific is data ([`ProviderConfig`]): issuer, default scopes and
//! extra authorization parameters. Google is one such configuration; another OpenID
//! issuer needs a new entry, not new code. Discovery and the JWKS are fetched lazily and
//! cached, and served stale while an outage of the provider's metadata endpoints lasts
//! ([`metadata`]); an ID token signed by an unknown `kid` triggers one JWKS refetch (key
//! rotation) before it is rejected ([`id_token`]). The calls to the token and revocation
//! endpoints, and how their failures are sorted, are in [`http`].

mod answer;
mod http;
mod id_token;
mod metadata;
pub(crate) mod presets;
mod userinfo;

use std::sync::Arc;
use std::time::Duration;

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreClaimName, CoreClaimType, CoreClientAuthMethod,
    CoreGenderClaim, CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
    CoreRevocableToken, CoreRevocationErrorResponse, CoreSubjectIdentifierType,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalProviderMetadata, AuthType, AuthUrl, AuthenticationFlow, Client, ClientId,
    ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, ErrorResponse,
    ExtraTokenFields, IdTokenFields, IssuerUrl, JsonWebKeySetUrl, LoginHint, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, ResponseTypes, Scope,
    StandardTokenResponse, TokenUrl, UserInfoUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

pub(crate) use self::answer::PROVIDER_FAILING;
use self::http::ProviderHttp;
use self::id_token::ExtraClaims;
pub(crate) use self::id_token::IdTokenProblem;
use self::metadata::{Discovered, MetadataCache};
pub(crate) use self::presets::{Profile, Revocation};
use crate::config::Settings;
use crate::secrets::{ClientCredentials, SecretsCache};

/// One provider's settings, from its entry and its kind's preset
/// ([`ProviderConfig::from_entry`]).
#[derive(Debug, Clone)]
pub(crate) struct ProviderConfig {
    /// The name in routes and rows (`google`).
    pub(crate) name: String,
    /// The OpenID issuer; endpoints come from its discovery document.
    pub(crate) issuer: String,
    /// Scopes always requested (`openid` is implied).
    pub(crate) default_scopes: Vec<String>,
    /// Extra authorization parameters (Google: `access_type=offline`, …).
    pub(crate) extra_auth_params: Vec<(String, String)>,
    /// `prompt=consent` so that a refresh token is issued on every grant.
    pub(crate) prompt_consent: bool,
    /// How its grants live and die.
    pub(crate) profile: Profile,
}

/// Discovery fields beyond the standard ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ExtraMetadata {
    /// RFC 7009 revocation endpoint (Google publishes one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) revocation_endpoint: Option<String>,
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
/// Token-response fields beyond OAuth's: Google's `refresh_token_expires_in` (seconds
/// until a time-limited grant's refresh token stops working). Read leniently (a number
/// or a numeric string; anything else is ignored): an odd value must never cost the
/// tokens the answer carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct GrantFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token_expires_in: Option<serde_json::Value>,
}
impl ExtraTokenFields for GrantFields {}

impl GrantFields {
    fn refresh_token_lifetime(&self) -> Option<Duration> {
        let secs = match self.refresh_token_expires_in.as_ref()? {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }?;
        Some(Duration::from_secs(secs))
    }
}

/// A token endpoint's error answer (RFC 6749 §5.2), with Google's `error_subtype`
/// (`invalid_rapt`: a session-control policy requires the user to sign in again).
/// Microsoft Entra's `error_codes` (its `AADSTS` numbers) are read too.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TokenErrorAnswer {
    error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_subtype: Option<String>,
    /// Read leniently: an odd value must not make the answer unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error_codes: Option<serde_json::Value>,
}
impl ErrorResponse for TokenErrorAnswer {}

impl std::fmt::Display for TokenErrorAnswer {
    /// The code only: a description is the provider's free text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.error)
    }
}

impl TokenErrorAnswer {
    /// Whether the subtype is `needle` or the description says it (any case).
    fn says(&self, needle: &str) -> bool {
        self.error_subtype.as_deref() == Some(needle)
            || self
                .error_description
                .as_deref()
                .is_some_and(|d| d.to_ascii_lowercase().contains(needle))
    }

    /// Microsoft Entra's error number: the first of `error_codes`, else the `AADSTS`
    /// number the description starts with.
    fn aadsts(&self) -> Option<u64> {
        let listed = self
            .error_codes
            .as_ref()
            .and_then(|codes| codes.as_array()?.first()?.as_u64());
        listed.or_else(|| {
            let digits: String = self
                .error_description
                .as_deref()?
                .trim_start()
                .strip_prefix("AADSTS")?
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
    }

    /// What the answer means for the grant or the client: the provider's own reading
    /// (`read`, from its preset) first, then OAuth's.
    fn classify(&self, read: fn(&Self) -> Option<ProviderError>) -> ProviderError {
        if let Some(read) = read(self) {
            return read;
        }
        match self.error.as_str() {
            "invalid_grant" => ProviderError::InvalidGrant(GrantRefusal::Unspecified),
            "invalid_client" | "unauthorized_client" => ProviderError::InvalidClient,
            other => ProviderError::Rejected {
                error: if other.len() <= 64
                    && other
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    other.to_string()
                } else {
                    "invalid_error_code".into()
                },
            },
        }
    }
}

/// What a provider said when it refused a grant (`invalid_grant`), beyond the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantRefusal {
    /// Nothing more.
    Unspecified,
    /// Google's "Token has been expired or revoked.": revoked by the user, or ended by
    /// one of Google's clocks (the timing tells which).
    ExpiredOrRevoked,
    /// The answer names the cause itself (Google's `invalid_rapt` subtype, an Entra
    /// `AADSTS` code).
    Named(crate::oauth::grant::Cause),
}

type TokenFields = IdTokenFields<
    ExtraClaims,
    GrantFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type ProviderTokenResponse = StandardTokenResponse<TokenFields, CoreTokenType>;
type OidcClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    TokenErrorAnswer,
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
    /// What to set, and where the client was looked for.
    #[error("the OAuth client is not configured: {0}")]
    NotConfigured(String),
    /// The provider rejected the grant: the code or refresh token is dead.
    #[error("the provider rejected the grant (invalid_grant)")]
    InvalidGrant(GrantRefusal),
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

impl ProviderError {
    /// The provider `name` has no client: which settings to set, and where the client
    /// was looked for.
    pub(crate) fn not_configured(name: &str, looked_in: &str) -> Self {
        use crate::config::provider_setting;
        Self::NotConfigured(format!(
            "set {} and {} (looked in {looked_in})",
            provider_setting(name, "client_id"),
            provider_setting(name, "client_secret")
        ))
    }
}

/// Tokens as the provider returned them.
pub(crate) struct ProviderTokens {
    pub(crate) access_token: SecretString,
    pub(crate) refresh_token: Option<SecretString>,
    pub(crate) id_token: Option<SecretString>,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) scope: Option<String>,
    pub(crate) token_type: String,
    /// Time-limited access: how long the refresh token works (Google's
    /// `refresh_token_expires_in`).
    pub(crate) refresh_token_expires_in: Option<Duration>,
    /// The OAuth client that obtained them (its id).
    pub(crate) client_id: Option<String>,
}

/// Bounds on the calls to a provider, on how long its metadata is trusted, and on how
/// often its client secret is re-read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProviderLimits {
    /// Timeout of one HTTP call (of which connecting may take at most 5 s).
    pub(crate) timeout: Duration,
    /// Metadata (discovery and JWKS) is fresh this long after a fetch.
    pub(crate) metadata_ttl: Duration,
    /// Then it is served stale, while refetched in the background, at most this much
    /// longer.
    pub(crate) metadata_max_stale: Duration,
    /// After `invalid_client`, the client secret is re-read at most this often.
    pub(crate) secret_reload_min_interval: Duration,
}

impl ProviderLimits {
    pub(crate) fn from_settings(settings: &Settings) -> Self {
        Self {
            timeout: settings.provider.timeout,
            metadata_ttl: settings.provider.metadata_ttl,
            metadata_max_stale: settings.provider.metadata_max_stale,
            secret_reload_min_interval: settings.secrets.reload_min_interval,
        }
    }
}

/// One provider, its cached metadata, and the credentials to talk to it.
pub(crate) struct OidcProvider {
    config: ProviderConfig,
    http: ProviderHttp,
    secrets: Arc<SecretsCache>,
    /// In an `Arc` so that a background refetch can outlive the request that started it.
    metadata: Arc<MetadataCache>,
    /// An OAuth 2 provider's endpoints, as metadata that is never fetched.
    fixed: Option<Discovered>,
    secret_reload_min_interval: Duration,
}

impl OidcProvider {
    pub(crate) fn new(
        config: ProviderConfig,
        secrets: Arc<SecretsCache>,
        limits: ProviderLimits,
    ) -> Result<Self, ProviderError> {
        let http = ProviderHttp(
            crate::guard::outbound_client(limits.timeout).map_err(ProviderError::Unavailable)?,
        );
        let metadata = MetadataCache::new(
            &config.issuer,
            config.profile.tenant_issuer,
            http.clone(),
            limits.metadata_ttl,
            limits.metadata_max_stale,
        )?;
        let fixed = match &config.profile.endpoints {
            Some(endpoints) => Some(Discovered::fixed(oauth2_metadata(
                &config.issuer,
                endpoints,
            )?)),
            None => None,
        };
        Ok(Self {
            config,
            http,
            secrets,
            metadata: Arc::new(metadata),
            fixed,
            secret_reload_min_interval: limits.secret_reload_min_interval,
        })
    }

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Whether a grant can be revoked at this provider at all.
    pub(crate) fn can_revoke(&self) -> bool {
        self.config.profile.revocation != Revocation::Unsupported
    }

    /// Whether its revocation takes the access token (GitHub's grant endpoint) rather
    /// than the refresh token, which ends the grant where there is one.
    pub(crate) fn revokes_with_access_token(&self) -> bool {
        self.config.profile.revocation == Revocation::GitHubGrant
    }

    /// The client `client_id` names, the current one when `None`, or why there is none.
    /// A grant refreshes and is revoked with the client it was made with.
    pub(crate) async fn credentials_for(
        &self,
        client_id: Option<&str>,
    ) -> Result<ClientCredentials, ProviderError> {
        let Some(id) = client_id else {
            return self.credentials().await;
        };
        self.secrets
            .current()
            .client_of(id)
            .cloned()
            .ok_or_else(|| {
                ProviderError::NotConfigured(format!(
                    "client {id} of provider {} is not configured: keep it in {} (or the secret's clients) while connections made with it last",
                    self.config.name,
                    crate::config::provider_setting(&self.config.name, "clients")
                ))
            })
    }

    /// The id of the client `client_id` names (the current one when `None`), if it is
    /// one of this provider's.
    pub(crate) fn client_id(&self, client_id: Option<&str>) -> Option<String> {
        let secrets = self.secrets.current();
        match client_id {
            None => secrets.client.as_ref().map(|c| c.client_id.clone()),
            Some(id) => secrets.client_of(id).map(|_| id.to_string()),
        }
    }

    /// Whether the provider has clients beside its current one: then a grant that
    /// records no client may be another's.
    pub(crate) fn has_other_clients(&self) -> bool {
        !self.secrets.current().other_clients.is_empty()
    }

    /// The current client credentials, or why there are none.
    pub(crate) async fn credentials(&self) -> Result<ClientCredentials, ProviderError> {
        self.secrets.current().client.clone().ok_or_else(|| {
            ProviderError::not_configured(&self.config.name, &self.secrets.source_name())
        })
    }

    async fn discovered(&self) -> Result<Discovered, ProviderError> {
        match &self.fixed {
            Some(fixed) => Ok(fixed.clone()),
            None => self.metadata.get().await,
        }
    }

    fn client(
        &self,
        d: &Discovered,
        creds: &ClientCredentials,
        redirect_uri: Option<&str>,
    ) -> Result<OidcClient, ProviderError> {
        let mut client = OidcClient::from_provider_metadata(
            (*d.metadata).clone(),
            ClientId::new(creds.client_id.clone()),
            Some(ClientSecret::new(
                creds.client_secret.expose_secret().to_string(),
            )),
        );
        if self.config.profile.quirks.client_auth_in_body {
            client = client.set_auth_type(AuthType::RequestBody);
        }
        match redirect_uri {
            Some(uri) => Ok(client.set_redirect_uri(
                RedirectUrl::new(uri.to_string())
                    .map_err(|e| ProviderError::Malformed(format!("redirect URI: {e}")))?,
            )),
            None => Ok(client),
        }
    }

    /// Fetches discovery now (for `check`).
    #[tracing::instrument(skip_all, fields(provider = %self.config.name))]
    pub(crate) async fn check_discovery(&self) -> Result<(), ProviderError> {
        self.discovered().await.map(|_| ())
    }

    /// Every scope a flow asking for `extra_scopes` requests: `openid` (OpenID
    /// providers), the provider's defaults, then the extras, each once.
    pub(crate) fn requested_scopes(&self, extra_scopes: &[String]) -> Vec<String> {
        // An OAuth 2 provider is not asked for `openid`.
        let mut scopes: Vec<String> = match self.config.profile.endpoints {
            None => vec!["openid".into()],
            Some(_) => Vec::new(),
        };
        for s in self.config.default_scopes.iter().chain(extra_scopes) {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        scopes
    }

    /// Builds the authorization URL: code flow, PKCE S256 from `pkce_verifier`, our
    /// nonce and sealed state.
    #[tracing::instrument(skip_all, fields(provider = %self.config.name))]
    pub(crate) async fn authorization_request(
        &self,
        request: AuthorizationRequest<'_>,
    ) -> Result<Url, ProviderError> {
        let AuthorizationRequest {
            redirect_uri,
            extra_scopes,
            state,
            nonce,
            pkce_verifier,
            login_hint,
            force_consent,
            client,
        } = request;
        let creds = self.credentials_for(client).await?;
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            pkce_verifier.to_string(),
        ));
        if let Some(endpoints) = &self.config.profile.endpoints {
            return Ok(self.oauth2_authorization_url(
                endpoints,
                &creds,
                redirect_uri,
                extra_scopes,
                &state,
                &challenge,
                login_hint,
            ));
        }
        let d = self.discovered().await?;
        let client = self.client(&d, &creds, Some(redirect_uri))?;
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
        if self.config.prompt_consent && force_consent {
            request = request.add_prompt(CoreAuthPrompt::Consent);
        }
        if let Some(hint) = login_hint {
            request = request.set_login_hint(LoginHint::new(hint.to_string()));
        }
        let (url, _, _) = request.url();
        Ok(url)
    }
}

impl OidcProvider {
    /// An OAuth 2 (not OpenID) authorization request: the code flow with PKCE and our
    /// sealed state, without `openid` or a nonce. `login_hint` is sent as GitHub's
    /// `login` as well.
    #[allow(clippy::too_many_arguments)]
    fn oauth2_authorization_url(
        &self,
        endpoints: &presets::Endpoints,
        creds: &ClientCredentials,
        redirect_uri: &str,
        extra_scopes: &[String],
        state: &str,
        challenge: &PkceCodeChallenge,
        login_hint: Option<&str>,
    ) -> Url {
        let mut scopes: Vec<&str> = Vec::new();
        for s in self.config.default_scopes.iter().chain(extra_scopes) {
            if s != "openid" && !scopes.contains(&s.as_str()) {
                scopes.push(s);
            }
        }
        let mut url = endpoints.authorize.clone();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &creds.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &scopes.join(" "))
                .append_pair("state", state)
                .append_pair("code_challenge", challenge.as_str())
                .append_pair("code_challenge_method", challenge.method().as_str());
            if let Some(hint) = login_hint {
                query
                    .append_pair("login_hint", hint)
                    .append_pair("login", hint);
            }
            for (name, value) in &self.config.extra_auth_params {
                query.append_pair(name, value);
            }
        }
        url
    }
}

/// An OAuth 2 provider's endpoints as the metadata the OpenID client is built from
/// (it is never fetched; with no ID tokens, its keys are never used).
fn oauth2_metadata(
    issuer: &str,
    endpoints: &presets::Endpoints,
) -> Result<Metadata, ProviderError> {
    let malformed = |e: &dyn std::fmt::Display| ProviderError::Malformed(format!("endpoint: {e}"));
    Ok(Metadata::new(
        IssuerUrl::new(issuer.to_string()).map_err(|e| malformed(&e))?,
        AuthUrl::from_url(endpoints.authorize.clone()),
        JsonWebKeySetUrl::from_url(endpoints.authorize.clone()),
        vec![ResponseTypes::new(vec![CoreResponseType::Code])],
        vec![CoreSubjectIdentifierType::Public],
        vec![CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256],
        ExtraMetadata::default(),
    )
    .set_token_endpoint(Some(TokenUrl::from_url(endpoints.token.clone())))
    .set_userinfo_endpoint(Some(UserInfoUrl::from_url(endpoints.userinfo.clone()))))
}

/// What one authorization request carries.
pub(crate) struct AuthorizationRequest<'a> {
    pub(crate) redirect_uri: &'a str,
    /// Scopes beyond the provider's defaults.
    pub(crate) extra_scopes: &'a [String],
    /// The sealed flow state.
    pub(crate) state: String,
    pub(crate) nonce: String,
    pub(crate) pkce_verifier: &'a str,
    pub(crate) login_hint: Option<&'a str>,
    /// Ask for `prompt=consent` (when the provider's configuration does).
    pub(crate) force_consent: bool,
    /// The OAuth client (its id); the current one when `None`.
    pub(crate) client: Option<&'a str>,
}

/// The configured providers by name.
pub(crate) struct Providers {
    providers: Vec<Arc<OidcProvider>>,
}

impl Providers {
    pub(crate) fn new(providers: Vec<Arc<OidcProvider>>) -> Self {
        Self { providers }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Arc<OidcProvider>> {
        self.providers.iter().find(|p| p.name() == name)
    }

    /// The provider named `name` and its place in the configured order.
    pub(crate) fn find(&self, name: &str) -> Option<(usize, &Arc<OidcProvider>)> {
        self.providers
            .iter()
            .enumerate()
            .find(|(_, p)| p.name() == name)
    }

    /// How many are configured.
    pub(crate) fn len(&self) -> usize {
        self.providers.len()
    }
}
