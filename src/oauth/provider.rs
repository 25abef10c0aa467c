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

mod http;
mod id_token;
mod metadata;

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
    AdditionalProviderMetadata, AuthenticationFlow, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, LoginHint,
    Nonce, PkceCodeChallenge, PkceCodeVerifier, ProviderMetadata, RedirectUrl, Scope,
    StandardErrorResponse, StandardTokenResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use self::http::{ProviderHttp, error_chain, http_client};
use self::id_token::ExtraClaims;
pub(crate) use self::id_token::IdTokenProblem;
use self::metadata::{Discovered, MetadataCache};
use crate::config::Settings;
use crate::secrets::{ClientCredentials, SecretsCache};

/// One provider's settings. Adding a provider is adding one of these.
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
    /// The provider issues a new refresh token on each refresh and rejects the old one.
    /// Google does not; many other providers do.
    pub(crate) rotates_refresh_tokens: bool,
    /// A rotating provider still accepts a redeemed refresh token for this long.
    pub(crate) refresh_reuse_grace: Duration,
}

impl ProviderConfig {
    /// Google: offline access (a refresh token), consent every time (so re-connecting
    /// yields a refresh token again), and incremental scopes.
    pub(crate) fn google(issuer: &str) -> Self {
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
type TokenFields = IdTokenFields<
    ExtraClaims,
    EmptyExtraTokenFields,
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

/// Tokens as the provider returned them.
pub(crate) struct ProviderTokens {
    pub(crate) access_token: SecretString,
    pub(crate) refresh_token: Option<SecretString>,
    pub(crate) id_token: Option<SecretString>,
    pub(crate) expires_in: Option<Duration>,
    pub(crate) scope: Option<String>,
    pub(crate) token_type: String,
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
    secret_reload_min_interval: Duration,
}

impl OidcProvider {
    pub(crate) fn new(
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

    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    pub(crate) fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// The client credentials, or why there are none.
    pub(crate) async fn credentials(&self) -> Result<ClientCredentials, ProviderError> {
        self.secrets
            .current()
            .client
            .clone()
            .ok_or_else(|| ProviderError::NotConfigured(self.secrets.source_name()))
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
    #[tracing::instrument(skip_all, fields(provider = %self.config.name))]
    pub(crate) async fn check_discovery(&self) -> Result<(), ProviderError> {
        self.discovered().await.map(|_| ())
    }

    /// Builds the authorization URL: code flow, PKCE S256 from `pkce_verifier`, our
    /// nonce and sealed state.
    #[tracing::instrument(skip_all, fields(provider = %self.config.name))]
    pub(crate) async fn authorization_request(
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
}
