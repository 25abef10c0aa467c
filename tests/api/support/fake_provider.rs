//! A fake OpenID Connect provider (Google-shaped) for integration tests.
//!
//! [`FakeProvider::start`] binds `127.0.0.1:0` and serves, on a task of the current
//! tokio runtime, everything `axnt-oauth` talks to at an OpenID issuer:
//!
//! | route | what it does |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | discovery; `issuer` is `http://127.0.0.1:PORT` (no trailing slash); fetches are counted |
//! | `GET /jwks` | the published signing keys (fetches are counted) |
//! | `GET /authorize` | records the query, validates `client_id` and `redirect_uri`, auto-approves: `302` to `redirect_uri?code=…&state=…&scope=…` |
//! | `POST /token` | `authorization_code` (single use, PKCE S256 required) and `refresh_token` grants; `client_secret_basic` or `client_secret_post` |
//! | `POST /revoke` | records the token and revokes the grant it belongs to (as Google does); always `200` |
//! | `GET /userinfo` | the profile, for a valid `Bearer` access token |
//!
//! Every code and token it issues is unique and recognisable: `code-<prefix>-<n>`,
//! `at-<prefix>-<n>`, `rt-<prefix>-<n>`, where `<prefix>` is 8 random hex digits per
//! provider and `<n>` a counter, so a test can search the
//! service's logs for any of them ([`FakeProvider::secrets`] lists every one, ID tokens and
//! client secrets included).
//!
//! Behaviour is changed per test through `&self` methods (state lives behind a
//! `std::sync::Mutex`, never held across an `.await`), and everything the service sent is
//! recorded for assertions.
//!
//! ```ignore
//! use crate::support::fake_provider::{FakeProvider, IdTokenTamper, ProviderConfig, RefreshBehaviour};
//!
//! #[tokio::test]
//! async fn refresh_survives_two_provider_errors() {
//!     let provider = FakeProvider::start_with(ProviderConfig {
//!         redirect_uri: Some("http://127.0.0.1:8080/oauth/google/callback".into()),
//!         ..ProviderConfig::default()
//!     })
//!     .await;
//!     // Point the service at it: AXNT_GOOGLE_ISSUER = provider.issuer(),
//!     // AXNT_GOOGLE_CLIENT_ID = provider.client_id(), AXNT_GOOGLE_CLIENT_SECRET = provider.client_secret().
//!     provider.set_access_token_ttl(0); // tokens come back already due for refresh
//!     provider.refresh_failure(RefreshBehaviour::Status(500).times(2));
//!     // … drive the service …
//!     assert_eq!(provider.refresh_count(), 3);
//!     assert!(provider.revoked_tokens().is_empty());
//!     provider.tamper_id_token(IdTokenTamper::BadSignature); // the next code exchange's ID token
//! }
//! ```
//!
//! Notes for test writers:
//! - `expires_in` is the access-token lifetime set by [`FakeProvider::set_access_token_ttl`],
//!   clamped to `>= 0`. The service computes the expiry as *now + expires_in*, so a TTL of
//!   `0` (or less) yields a token the service must consider expired at once; the provider
//!   itself treats the token as expired at *now + ttl* (so `/userinfo` rejects it).
//! - An ID token is issued only when the authorized `scope` contains `openid`, as Google does.
//! - The server task is aborted when the [`FakeProvider`] is dropped; keep it alive for the
//!   whole test.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
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
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;
use url::Url;

const PROVIDER_KEY_PEM: &str = include_str!("keys/provider.pem");
const ROGUE_KEY_PEM: &str = include_str!("keys/rogue.pem");

/// How long an authorization code may wait before it is exchanged (Google: about 10 minutes).
const CODE_TTL_SECS: i64 = 600;
/// Lifetime of the ID tokens it signs, unless tampered with.
const ID_TOKEN_TTL_SECS: i64 = 3600;

/// The claims Google adds to an ID token beyond OpenID's standard ones: `hd`, the
/// Workspace domain, present only for Workspace accounts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoogleClaims {
    /// Hosted (Workspace) domain of the account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hd: Option<String>,
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

/// Start-up settings; every field left `None` gets a random or default value.
#[derive(Clone, Debug, Default)]
pub struct ProviderConfig {
    /// The only redirect URI `/authorize` accepts. `None`: any `http://127.0.0.1…` URI.
    pub redirect_uri: Option<String>,
    /// Client id; default `client-<prefix>.apps.googleusercontent.test`.
    pub client_id: Option<String>,
    /// Client secret; default `secret-<prefix>-<32 hex>`.
    pub client_secret: Option<String>,
    /// The account that "signs in"; default [`Profile::for_prefix`].
    pub profile: Option<Profile>,
}

/// The account the provider signs in as; goes into ID tokens and `/userinfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Profile {
    pub sub: String,
    pub email: String,
    pub email_verified: bool,
    pub name: String,
    pub picture: String,
    /// Workspace domain; `None` for a consumer account (the claim is then absent).
    pub hd: Option<String>,
}

impl Profile {
    /// A consumer (non-Workspace) account unique to the given token prefix.
    pub fn for_prefix(prefix: &str) -> Self {
        let number = u64::from_str_radix(prefix, 16).unwrap_or(0);
        Self {
            sub: format!("1{number:020}"),
            email: format!("user-{prefix}@example.com"),
            email_verified: true,
            name: "Fake User".to_owned(),
            picture: format!("https://example.com/avatar/{prefix}.png"),
            hd: None,
        }
    }
}

/// One scripted answer of the `refresh_token` grant (see [`FakeProvider::refresh_failure`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshBehaviour {
    /// `400 {"error":"invalid_grant"}` (the refresh token stays valid at the provider).
    InvalidGrant,
    /// That HTTP status with `{"error":"server_error"}` (or `temporarily_unavailable` for
    /// 429 and 503).
    Status(u16),
    /// Wait, then answer normally (for timeouts and concurrent-refresh races).
    Delay(Duration),
    /// Decide the answer at once (a rotating provider rotates the refresh token now),
    /// then hold it this long before sending it: a caller that gives up meanwhile has
    /// spent the refresh token without seeing the new one.
    HoldAnswer(Duration),
    /// `200` with exactly this body (a malformed token response).
    RawBody(String),
}

impl RefreshBehaviour {
    /// This behaviour `n` times, e.g. `refresh_failure(RefreshBehaviour::Status(500).times(2))`.
    pub fn times(self, n: usize) -> Vec<Self> {
        vec![self; n]
    }
}

/// Ways to spoil the ID token of the `authorization_code` grant
/// (see [`FakeProvider::tamper_id_token`]). Stays in force until set back to `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdTokenTamper {
    /// A correct ID token.
    #[default]
    None,
    /// `aud` is another client's id.
    WrongAudience,
    /// `iss` is another issuer.
    WrongIssuer,
    /// `nonce` differs from the authorization request's.
    WrongNonce,
    /// `exp` one hour in the past.
    Expired,
    /// Signed with the other RSA key, under the published `kid`.
    BadSignature,
    /// No `id_token` in the token response at all.
    Omit,
}

/// One request received at `/token`, recorded when it was answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The form's `grant_type` (empty when missing).
    pub grant_type: String,
    /// Every form parameter (secrets included: this is test support).
    pub params: HashMap<String, String>,
    /// The HTTP status answered.
    pub status: u16,
}

/// What `/authorize` stored for an issued code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub nonce: Option<String>,
    pub scope: String,
    pub login_hint: Option<String>,
    pub issued_at: DateTime<Utc>,
    /// Set by the first exchange attempt (codes are single use).
    pub used: bool,
}

/// A running fake provider; the server stops when this is dropped.
pub struct FakeProvider {
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeProvider {
    /// Starts a provider with random client credentials that accepts any loopback
    /// redirect URI.
    pub async fn start() -> Self {
        Self::start_with(ProviderConfig::default()).await
    }

    /// Starts a provider with the given settings.
    pub async fn start_with(config: ProviderConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake provider: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("fake provider: local address of the listener");
        let prefix = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        let issuer = format!("http://{addr}");
        let inner = Inner::new(&prefix, config);
        let shared = Arc::new(Shared {
            issuer,
            inner: Mutex::new(inner),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/userinfo", get(userinfo))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake provider: server failed");
        });
        Self { shared, server }
    }

    // ----- identity ------------------------------------------------------------------

    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// The issuer plus `path` (which should start with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.shared.issuer)
    }

    pub fn client_id(&self) -> String {
        self.lock().client_id.clone()
    }

    pub fn client_secret(&self) -> String {
        self.lock().client_secret.clone()
    }

    /// Rotates the client secret: from now on only `secret` authenticates.
    pub fn set_client_secret(&self, secret: impl Into<String>) {
        let mut st = self.lock();
        let old = std::mem::replace(&mut st.client_secret, secret.into());
        st.past_client_secrets.push(old);
    }

    pub fn profile(&self) -> Profile {
        self.lock().profile.clone()
    }

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

    // ----- behaviour knobs -----------------------------------------------------------

    /// Lifetime of the access tokens issued from now on (default 3600). `expires_in` is
    /// this clamped to `>= 0`; `0` or less gives tokens that are already expired.
    pub fn set_access_token_ttl(&self, secs: i64) {
        self.lock().access_token_ttl = secs;
    }

    /// `true`: the code grant answers without `refresh_token` (a re-consent at Google).
    pub fn omit_refresh_token_on_code(&self, omit: bool) {
        self.lock().omit_refresh_token_on_code = omit;
    }

    /// `true` (the default, as Google): the refresh grant answers without
    /// `refresh_token`. `false`: it echoes the same refresh token back (unless rotation
    /// is on, which always returns the new one).
    pub fn omit_refresh_token_on_refresh(&self, omit: bool) {
        self.lock().omit_refresh_token_on_refresh = omit;
    }

    /// `true`: every refresh issues a new refresh token and invalidates the one used, so
    /// a reuse answers `invalid_grant`.
    pub fn rotate_refresh_tokens(&self, rotate: bool) {
        self.lock().rotate_refresh_tokens = rotate;
    }

    /// Appends scripted answers for the next refresh-grant requests, one per request (after
    /// client authentication succeeded); when the script is empty the grant answers
    /// normally.
    pub fn refresh_failure(&self, behaviours: impl IntoIterator<Item = RefreshBehaviour>) {
        self.lock().refresh_script.extend(behaviours);
    }

    /// Drops whatever is left of the refresh script.
    /// When no scripted behaviour is queued, refreshes fail and are held at random
    /// (`None`: answered at once).
    pub fn set_refresh_chaos(&self, chaos: Option<RefreshChaos>) {
        self.lock().chaos = chaos;
    }

    /// How many refresh requests presented a refresh token this provider had already
    /// rotated out (a rotating provider's `invalid_grant` for a spent token).
    pub fn spent_refresh_tokens_presented(&self) -> usize {
        self.lock().spent_refresh_tokens_presented
    }

    pub fn clear_refresh_failures(&self) {
        self.lock().refresh_script.clear();
    }

    /// The next `times` requests to `/token` (any grant, before client authentication)
    /// answer `status` with an OAuth error body.
    pub fn fail_token_endpoint_with_status(&self, status: u16, times: usize) {
        self.lock()
            .token_failures
            .extend(std::iter::repeat_n(status, times));
    }

    /// Spoils the ID token of every code exchange from now on, until set to
    /// [`IdTokenTamper::None`].
    pub fn tamper_id_token(&self, tamper: IdTokenTamper) {
        self.lock().tamper = tamper;
    }

    /// `true`: `/authorize` redirects with `error=access_denied&state=…`.
    pub fn deny_authorization(&self, deny: bool) {
        self.lock().deny = deny;
    }

    /// `false`: discovery and `/jwks` answer `503` (still counted as fetches), as during
    /// an outage of the provider's metadata endpoints. `true` (the default): they answer.
    pub fn set_discovery_available(&self, available: bool) {
        self.lock().discovery_unavailable = !available;
    }

    // ----- records -------------------------------------------------------------------

    /// Every `/token` request answered so far, oldest first.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.lock().token_requests.clone()
    }

    /// `/token` requests received with `grant_type=refresh_token`, whatever their outcome
    /// (counted on arrival, so a delayed one counts already).
    pub fn refresh_count(&self) -> usize {
        self.lock().refresh_count
    }

    /// `/token` requests received with `grant_type=authorization_code`, whatever their
    /// outcome.
    pub fn code_exchange_count(&self) -> usize {
        self.lock().code_exchange_count
    }

    /// Tokens posted to `/revoke`, oldest first (unknown ones included).
    pub fn revoked_tokens(&self) -> Vec<String> {
        self.lock().revoked.clone()
    }

    pub fn jwks_fetches(&self) -> usize {
        self.lock().jwks_fetches
    }

    pub fn discovery_fetches(&self) -> usize {
        self.lock().discovery_fetches
    }

    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.lock().issued_refresh_tokens.clone()
    }

    pub fn latest_refresh_token(&self) -> Option<String> {
        self.lock().issued_refresh_tokens.last().cloned()
    }

    pub fn latest_access_token(&self) -> Option<String> {
        self.lock().issued_access_tokens.last().cloned()
    }

    /// Whether `token` is a refresh token the provider would accept now.
    pub fn is_refresh_token_valid(&self, token: &str) -> bool {
        let st = self.lock();
        st.refresh_tokens
            .get(token)
            .is_some_and(|rt| rt.valid && !st.grants[rt.grant].revoked)
    }

    /// Refresh tokens the provider would accept now, in issue order.
    pub fn valid_refresh_tokens(&self) -> Vec<String> {
        let issued = self.issued_refresh_tokens();
        issued
            .into_iter()
            .filter(|t| self.is_refresh_token_valid(t))
            .collect()
    }

    /// Everything that must never appear in a log line, error body or metric: every code,
    /// access, refresh and ID token issued, and every client secret (current and past).
    pub fn secrets(&self) -> Vec<String> {
        let st = self.lock();
        st.issued_codes
            .iter()
            .chain(&st.issued_access_tokens)
            .chain(&st.issued_refresh_tokens)
            .chain(&st.issued_id_tokens)
            .chain(&st.past_client_secrets)
            .chain(std::iter::once(&st.client_secret))
            .cloned()
            .collect()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }
}

// ----- state -----------------------------------------------------------------------------

struct Shared {
    issuer: String,
    inner: Mutex<Inner>,
}

impl Shared {
    /// A panicking test thread must not turn every later request into a second panic.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyMaterial {
    Provider,
    Rogue,
}

impl KeyMaterial {
    fn other(self) -> Self {
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

struct Keys {
    current: KeyMaterial,
    current_kid: String,
    previous: Option<(KeyMaterial, String)>,
}

impl Keys {
    fn jwks(&self) -> CoreJsonWebKeySet {
        let current = self.current.signing_key(&self.current_kid);
        let mut keys = vec![current.as_verification_key()];
        if let Some((material, kid)) = &self.previous {
            keys.push(material.signing_key(kid).as_verification_key());
        }
        CoreJsonWebKeySet::new(keys)
    }
}

struct Grant {
    client_id: String,
    scope: String,
    profile: Profile,
    revoked: bool,
}

struct AccessRecord {
    grant: usize,
    expires_at: DateTime<Utc>,
}

struct RefreshRecord {
    grant: usize,
    valid: bool,
}

struct Inner {
    prefix: String,
    counter: u64,
    client_id: String,
    client_secret: String,
    past_client_secrets: Vec<String>,
    redirect_uri: Option<String>,
    profile: Profile,
    keys: Keys,

    access_token_ttl: i64,
    omit_refresh_token_on_code: bool,
    omit_refresh_token_on_refresh: bool,
    rotate_refresh_tokens: bool,
    refresh_script: VecDeque<RefreshBehaviour>,
    chaos: Option<RefreshChaos>,
    spent_refresh_tokens_presented: usize,
    token_failures: VecDeque<u16>,
    tamper: IdTokenTamper,
    deny: bool,
    discovery_unavailable: bool,

    codes: HashMap<String, Authorization>,
    /// Grant made from each code exchanged, so a replayed code revokes it.
    code_grants: HashMap<String, usize>,
    grants: Vec<Grant>,
    access_tokens: HashMap<String, AccessRecord>,
    refresh_tokens: HashMap<String, RefreshRecord>,

    token_requests: Vec<TokenRequest>,
    refresh_count: usize,
    code_exchange_count: usize,
    jwks_fetches: usize,
    discovery_fetches: usize,
    revoked: Vec<String>,
    issued_codes: Vec<String>,
    issued_access_tokens: Vec<String>,
    issued_refresh_tokens: Vec<String>,
    issued_id_tokens: Vec<String>,
}

impl Inner {
    fn new(prefix: &str, config: ProviderConfig) -> Self {
        let random = uuid::Uuid::new_v4().simple().to_string();
        Self {
            prefix: prefix.to_owned(),
            counter: 0,
            client_id: config
                .client_id
                .unwrap_or_else(|| format!("client-{prefix}.apps.googleusercontent.test")),
            client_secret: config
                .client_secret
                .unwrap_or_else(|| format!("secret-{prefix}-{random}")),
            past_client_secrets: Vec::new(),
            redirect_uri: config.redirect_uri,
            profile: config
                .profile
                .unwrap_or_else(|| Profile::for_prefix(prefix)),
            keys: Keys {
                current: KeyMaterial::Provider,
                current_kid: format!("kid-{prefix}-0000"),
                previous: None,
            },
            access_token_ttl: 3600,
            omit_refresh_token_on_code: false,
            omit_refresh_token_on_refresh: true,
            rotate_refresh_tokens: false,
            refresh_script: VecDeque::new(),
            chaos: None,
            spent_refresh_tokens_presented: 0,
            token_failures: VecDeque::new(),
            tamper: IdTokenTamper::None,
            deny: false,
            discovery_unavailable: false,
            codes: HashMap::new(),
            code_grants: HashMap::new(),
            grants: Vec::new(),
            access_tokens: HashMap::new(),
            refresh_tokens: HashMap::new(),
            token_requests: Vec::new(),
            refresh_count: 0,
            code_exchange_count: 0,
            jwks_fetches: 0,
            discovery_fetches: 0,
            revoked: Vec::new(),
            issued_codes: Vec::new(),
            issued_access_tokens: Vec::new(),
            issued_refresh_tokens: Vec::new(),
            issued_id_tokens: Vec::new(),
        }
    }

    fn next_id(&mut self, kind: &str) -> String {
        self.counter += 1;
        format!("{kind}-{}-{:04}", self.prefix, self.counter)
    }

    fn redirect_uri_allowed(&self, uri: &Url) -> bool {
        match &self.redirect_uri {
            Some(allowed) => {
                uri.as_str() == allowed || Url::parse(allowed).ok().as_ref() == Some(uri)
            }
            None => uri.scheme() == "http" && uri.host_str() == Some("127.0.0.1"),
        }
    }

    fn issue_access_token(&mut self, grant: usize) -> String {
        let token = self.next_id("at");
        let expires_at = Utc::now() + chrono::Duration::seconds(self.access_token_ttl);
        self.access_tokens
            .insert(token.clone(), AccessRecord { grant, expires_at });
        self.issued_access_tokens.push(token.clone());
        token
    }

    fn issue_refresh_token(&mut self, grant: usize) -> String {
        let token = self.next_id("rt");
        self.refresh_tokens
            .insert(token.clone(), RefreshRecord { grant, valid: true });
        self.issued_refresh_tokens.push(token.clone());
        token
    }

    fn access_response(&mut self, grant: usize) -> (Map<String, Value>, String) {
        let access_token = self.issue_access_token(grant);
        let mut body = Map::new();
        body.insert("access_token".into(), json!(access_token));
        body.insert("token_type".into(), json!("Bearer"));
        body.insert("expires_in".into(), json!(self.access_token_ttl.max(0)));
        body.insert("scope".into(), json!(self.grants[grant].scope));
        (body, access_token)
    }

    fn id_token_plan(
        &self,
        issuer: &str,
        grant: usize,
        nonce: Option<String>,
        access_token: &str,
        tamper: IdTokenTamper,
    ) -> IdTokenPlan {
        let grant = &self.grants[grant];
        let now = Utc::now();
        let (iat, exp) = match tamper {
            IdTokenTamper::Expired => (
                now - chrono::Duration::seconds(2 * ID_TOKEN_TTL_SECS),
                now - chrono::Duration::seconds(ID_TOKEN_TTL_SECS),
            ),
            _ => (now, now + chrono::Duration::seconds(ID_TOKEN_TTL_SECS)),
        };
        let issuer = match tamper {
            IdTokenTamper::WrongIssuer => "https://wrong-issuer.example.com".to_owned(),
            _ => issuer.to_owned(),
        };
        let audience = match tamper {
            IdTokenTamper::WrongAudience => format!("other-client-{}.apps.test", self.prefix),
            _ => grant.client_id.clone(),
        };
        let nonce = match tamper {
            IdTokenTamper::WrongNonce => Some(format!("wrong-nonce-{}", self.prefix)),
            _ => nonce,
        };
        let key = match tamper {
            IdTokenTamper::BadSignature => self.keys.current.other(),
            _ => self.keys.current,
        };
        IdTokenPlan {
            issuer,
            audience,
            authorized_party: grant.client_id.clone(),
            iat,
            exp,
            nonce,
            profile: grant.profile.clone(),
            access_token: access_token.to_owned(),
            key,
            kid: self.keys.current_kid.clone(),
        }
    }

    fn record_token_request(&mut self, request: TokenRequest) {
        self.token_requests.push(request);
    }
}

/// Everything needed to sign an ID token, gathered under the lock; signing happens after
/// it is released.
struct IdTokenPlan {
    issuer: String,
    audience: String,
    authorized_party: String,
    iat: DateTime<Utc>,
    exp: DateTime<Utc>,
    nonce: Option<String>,
    profile: Profile,
    access_token: String,
    key: KeyMaterial,
    kid: String,
}

impl IdTokenPlan {
    fn sign(self) -> String {
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
            GoogleClaims { hd: profile.hd },
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

// ----- handlers --------------------------------------------------------------------------

type AppState = State<Arc<Shared>>;

async fn discovery(State(shared): AppState) -> Response {
    {
        let mut st = shared.lock();
        st.discovery_fetches += 1;
        if st.discovery_unavailable {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let iss = &shared.issuer;
    axum::Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "userinfo_endpoint": format!("{iss}/userinfo"),
        "jwks_uri": format!("{iss}/jwks"),
        "revocation_endpoint": format!("{iss}/revoke"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "email", "profile"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "claims_supported": [
            "aud", "email", "email_verified", "exp", "hd", "iat", "iss", "name", "nonce",
            "picture", "sub"
        ],
    }))
    .into_response()
}

async fn jwks(State(shared): AppState) -> Response {
    let set = {
        let mut st = shared.lock();
        st.jwks_fetches += 1;
        if st.discovery_unavailable {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        st.keys.jwks()
    };
    axum::Json(set).into_response()
}

async fn authorize(State(shared): AppState, RawQuery(query): RawQuery) -> Response {
    let params = parse_form(query.as_deref().unwrap_or("").as_bytes());
    let mut st = shared.lock();

    // Errors about the client or the redirect URI are shown to the user, never redirected.
    if params.get("client_id") != Some(&st.client_id) {
        return error_page("invalid_client", "unknown or missing client_id");
    }
    let Some(redirect_uri) = params.get("redirect_uri") else {
        return error_page("invalid_request", "missing redirect_uri");
    };
    let redirect = match Url::parse(redirect_uri) {
        Ok(url) if st.redirect_uri_allowed(&url) => url,
        _ => return error_page("redirect_uri_mismatch", "redirect_uri is not registered"),
    };
    let state = params.get("state").map(String::as_str);
    let fail = |error: &str, description: &str| {
        let mut pairs = vec![("error", error), ("error_description", description)];
        pairs.extend(state.map(|s| ("state", s)));
        redirect_to(&redirect, &pairs)
    };

    if params.get("response_type").map(String::as_str) != Some("code") {
        return fail("unsupported_response_type", "response_type must be code");
    }
    let Some(scope) = params.get("scope").filter(|s| !s.is_empty()) else {
        return fail("invalid_scope", "missing scope");
    };
    let challenge = params.get("code_challenge").cloned();
    let method = params.get("code_challenge_method").cloned();
    match (&challenge, method.as_deref()) {
        (None, None) | (Some(_), Some("S256")) => {}
        (Some(_), _) => return fail("invalid_request", "code_challenge_method must be S256"),
        (None, Some(_)) => {
            return fail(
                "invalid_request",
                "code_challenge_method without code_challenge",
            );
        }
    }
    if st.deny {
        let mut pairs = vec![("error", "access_denied")];
        pairs.extend(state.map(|s| ("state", s)));
        return redirect_to(&redirect, &pairs);
    }

    let scope = scope.clone();
    let code = st.next_id("code");
    let client_id = st.client_id.clone();
    st.codes.insert(
        code.clone(),
        Authorization {
            client_id,
            redirect_uri: redirect_uri.clone(),
            code_challenge: challenge,
            code_challenge_method: method,
            nonce: params.get("nonce").cloned(),
            scope: scope.clone(),
            login_hint: params.get("login_hint").cloned(),
            issued_at: Utc::now(),
            used: false,
        },
    );
    st.issued_codes.push(code.clone());
    let mut pairs = vec![("code", code.as_str())];
    pairs.extend(state.map(|s| ("state", s)));
    pairs.push(("scope", scope.as_str()));
    redirect_to(&redirect, &pairs)
}

/// Outcome of the part of a token request handled under the lock.
enum Step {
    /// Answer this error now.
    Answer(OAuthError),
    /// Sleep, then run the grant.
    Delay(Duration),
    /// Run the grant, then sleep before answering.
    Hold(Duration),
    /// Run the grant.
    Proceed,
    /// Answer 200 with this JSON body as is.
    Raw(String),
}

async fn token(State(shared): AppState, headers: HeaderMap, body: Bytes) -> Response {
    let params = parse_form(&body);
    let grant_type = params.get("grant_type").cloned().unwrap_or_default();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let record = |shared: &Shared, response: &Response| {
        shared.lock().record_token_request(TokenRequest {
            grant_type: grant_type.clone(),
            params: params.clone(),
            status: response.status().as_u16(),
        });
    };

    let step = {
        let mut st = shared.lock();
        match grant_type.as_str() {
            "authorization_code" => st.code_exchange_count += 1,
            "refresh_token" => st.refresh_count += 1,
            _ => {}
        }
        let step = if let Some(status) = st.token_failures.pop_front() {
            Step::Answer(OAuthError::scripted(status))
        } else if let Err(error) = authenticate_client(&st, authorization.as_deref(), &params) {
            Step::Answer(error)
        } else if grant_type == "refresh_token" {
            match st.refresh_script.pop_front() {
                None => match st.chaos {
                    Some(chaos) => chaos.step(),
                    None => Step::Proceed,
                },
                Some(RefreshBehaviour::HoldAnswer(hold)) => Step::Hold(hold),
                Some(RefreshBehaviour::InvalidGrant) => {
                    Step::Answer(OAuthError::invalid_grant("scripted invalid_grant"))
                }
                Some(RefreshBehaviour::Status(status)) => {
                    Step::Answer(OAuthError::scripted(status))
                }
                Some(RefreshBehaviour::Delay(delay)) => Step::Delay(delay),
                Some(RefreshBehaviour::RawBody(body)) => Step::Raw(body),
            }
        } else {
            Step::Proceed
        };
        step
    };

    let mut hold = None;
    match step {
        Step::Answer(error) => {
            let response = error.into_response();
            record(&shared, &response);
            return response;
        }
        Step::Delay(delay) => tokio::time::sleep(delay).await,
        Step::Hold(delay) => hold = Some(delay),
        Step::Proceed => {}
        Step::Raw(body) => {
            let response = (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
            record(&shared, &response);
            return response;
        }
    }

    let outcome = {
        let mut st = shared.lock();
        match grant_type.as_str() {
            "authorization_code" => code_grant(&mut st, &shared.issuer, &params),
            "refresh_token" => refresh_grant(&mut st, &params),
            "" => Err(OAuthError::invalid_request("missing grant_type")),
            _ => Err(OAuthError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only authorization_code and refresh_token",
            )),
        }
    };
    let response = match outcome {
        Err(error) => error.into_response(),
        Ok((mut body, plan)) => {
            if let Some(plan) = plan {
                let id_token = plan.sign();
                shared.lock().issued_id_tokens.push(id_token.clone());
                body.insert("id_token".into(), json!(id_token));
            }
            let mut response = axum::Json(Value::Object(body)).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
        }
    };
    record(&shared, &response);
    if let Some(hold) = hold {
        tokio::time::sleep(hold).await;
    }
    response
}

/// Random refresh failures and answer delays (see [`FakeProvider::set_refresh_chaos`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshChaos {
    /// Percentage of refreshes answered 500 (before anything is decided).
    pub fail_percent: u8,
    /// Every other refresh is decided at once, then held a random time up to this.
    pub max_hold: Duration,
}

impl RefreshChaos {
    fn step(self) -> Step {
        let random = uuid::Uuid::new_v4().as_u128();
        if (random % 100) < u128::from(self.fail_percent) {
            return Step::Answer(OAuthError::scripted(500));
        }
        let max_ms = self.max_hold.as_millis();
        let hold_ms = if max_ms == 0 {
            0
        } else {
            (random >> 7) % (max_ms + 1)
        };
        Step::Hold(Duration::from_millis(u64::try_from(hold_ms).unwrap_or(0)))
    }
}

type GrantOutcome = Result<(Map<String, Value>, Option<IdTokenPlan>), OAuthError>;

fn code_grant(st: &mut Inner, issuer: &str, params: &HashMap<String, String>) -> GrantOutcome {
    let Some(code) = params.get("code") else {
        return Err(OAuthError::invalid_request("missing code"));
    };
    let client_id = st.client_id.clone();
    let Some(auth) = st.codes.get_mut(code) else {
        return Err(OAuthError::invalid_grant("unknown authorization code"));
    };
    if auth.used {
        // RFC 6749 §4.1.2: a replayed code revokes what was issued from it.
        if let Some(&grant) = st.code_grants.get(code) {
            st.grants[grant].revoked = true;
        }
        return Err(OAuthError::invalid_grant("authorization code already used"));
    }
    auth.used = true;
    let auth = auth.clone();
    if auth.client_id != client_id {
        return Err(OAuthError::invalid_grant(
            "code was issued to another client",
        ));
    }
    if Utc::now() - auth.issued_at > chrono::Duration::seconds(CODE_TTL_SECS) {
        return Err(OAuthError::invalid_grant("authorization code expired"));
    }
    if params.get("redirect_uri") != Some(&auth.redirect_uri) {
        return Err(OAuthError::invalid_grant(
            "redirect_uri does not match the authorization request",
        ));
    }
    let Some(verifier) = params.get("code_verifier") else {
        return Err(OAuthError::invalid_grant("missing code_verifier"));
    };
    let verifier_ok = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !verifier_ok {
        return Err(OAuthError::invalid_grant(
            "code_verifier is not 43-128 unreserved characters",
        ));
    }
    let Some(challenge) = &auth.code_challenge else {
        return Err(OAuthError::invalid_grant(
            "the authorization request carried no code_challenge",
        ));
    };
    if pkce_s256(verifier) != *challenge {
        return Err(OAuthError::invalid_grant(
            "code_verifier does not match code_challenge",
        ));
    }

    st.grants.push(Grant {
        client_id: auth.client_id.clone(),
        scope: auth.scope.clone(),
        profile: st.profile.clone(),
        revoked: false,
    });
    let grant = st.grants.len() - 1;
    st.code_grants.insert(code.clone(), grant);
    let (mut body, access_token) = st.access_response(grant);
    if !st.omit_refresh_token_on_code {
        let refresh_token = st.issue_refresh_token(grant);
        body.insert("refresh_token".into(), json!(refresh_token));
    }
    let plan = (has_openid(&auth.scope) && st.tamper != IdTokenTamper::Omit)
        .then(|| st.id_token_plan(issuer, grant, auth.nonce.clone(), &access_token, st.tamper));
    Ok((body, plan))
}

fn refresh_grant(st: &mut Inner, params: &HashMap<String, String>) -> GrantOutcome {
    let Some(refresh_token) = params.get("refresh_token") else {
        return Err(OAuthError::invalid_request("missing refresh_token"));
    };
    let Some(record) = st.refresh_tokens.get(refresh_token) else {
        return Err(OAuthError::invalid_grant("unknown refresh token"));
    };
    let grant = record.grant;
    if !record.valid {
        st.spent_refresh_tokens_presented += 1;
        return Err(OAuthError::invalid_grant(
            "refresh token was rotated or revoked",
        ));
    }
    if st.grants[grant].revoked {
        return Err(OAuthError::invalid_grant(
            "Token has been expired or revoked.",
        ));
    }
    if st.grants[grant].client_id != st.client_id {
        return Err(OAuthError::invalid_grant(
            "refresh token was issued to another client",
        ));
    }

    let (mut body, _) = st.access_response(grant);
    if st.rotate_refresh_tokens {
        if let Some(old) = st.refresh_tokens.get_mut(refresh_token) {
            old.valid = false;
        }
        let new = st.issue_refresh_token(grant);
        body.insert("refresh_token".into(), json!(new));
    } else if !st.omit_refresh_token_on_refresh {
        body.insert("refresh_token".into(), json!(refresh_token));
    }
    Ok((body, None))
}

async fn revoke(State(shared): AppState, RawQuery(query): RawQuery, body: Bytes) -> Response {
    let mut params = parse_form(query.as_deref().unwrap_or("").as_bytes());
    params.extend(parse_form(&body));
    let mut st = shared.lock();
    let Some(token) = params.get("token") else {
        return OAuthError::invalid_request("missing token").into_response();
    };
    st.revoked.push(token.clone());
    let grant = st
        .refresh_tokens
        .get(token)
        .map(|rt| rt.grant)
        .or_else(|| st.access_tokens.get(token).map(|at| at.grant));
    if let Some(grant) = grant {
        st.grants[grant].revoked = true;
    }
    StatusCode::OK.into_response()
}

async fn userinfo(State(shared): AppState, headers: HeaderMap) -> Response {
    let st = shared.lock();
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| strip_prefix_ignore_case(v, "Bearer "));
    let profile = token
        .and_then(|t| st.access_tokens.get(t))
        .filter(|at| at.expires_at > Utc::now() && !st.grants[at.grant].revoked)
        .map(|at| st.grants[at.grant].profile.clone());
    let Some(profile) = profile else {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            )],
            axum::Json(json!({"error": "invalid_token"})),
        )
            .into_response();
    };
    let mut body = json!({
        "sub": profile.sub,
        "email": profile.email,
        "email_verified": profile.email_verified,
        "name": profile.name,
        "picture": profile.picture,
    });
    if let Some(hd) = profile.hd {
        body["hd"] = json!(hd);
    }
    axum::Json(body).into_response()
}

// ----- helpers ---------------------------------------------------------------------------

/// `client_secret_basic` (RFC 6749 §2.3.1: both parts form-urlencoded, then Base64) or
/// `client_secret_post`; using both at once is an `invalid_request`.
fn authenticate_client(
    st: &Inner,
    authorization: Option<&str>,
    params: &HashMap<String, String>,
) -> Result<(), OAuthError> {
    let basic = authorization.and_then(|v| strip_prefix_ignore_case(v, "Basic "));
    let (id, secret) = match basic {
        Some(encoded) => {
            if params.contains_key("client_secret") {
                return Err(OAuthError::invalid_request(
                    "more than one client authentication method",
                ));
            }
            let Some((id, secret)) = decode_basic(encoded.trim()) else {
                return Err(OAuthError::invalid_client("malformed Basic credentials"));
            };
            if params
                .get("client_id")
                .is_some_and(|form_id| *form_id != id)
            {
                return Err(OAuthError::invalid_client(
                    "client_id in the form differs from Basic",
                ));
            }
            (id, secret)
        }
        None => match (params.get("client_id"), params.get("client_secret")) {
            (Some(id), Some(secret)) => (id.clone(), secret.clone()),
            _ => return Err(OAuthError::invalid_client("client authentication required")),
        },
    };
    if id == st.client_id && secret == st.client_secret {
        Ok(())
    } else {
        Err(OAuthError::invalid_client("wrong client credentials"))
    }
}

fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = STANDARD.decode(encoded).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a
/// byte. `None` for a malformed escape or a result that is not UTF-8.
fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// Form or query parameters; a repeated name keeps its last value.
fn parse_form(bytes: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

fn pkce_s256(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn has_openid(scope: &str) -> bool {
    scope.split(' ').any(|s| s == "openid")
}

/// An OAuth error answer: `{"error", "error_description"}` with a status.
struct OAuthError {
    status: StatusCode,
    error: String,
    description: String,
}

impl OAuthError {
    fn new(status: StatusCode, error: &str, description: &str) -> Self {
        Self {
            status,
            error: error.to_owned(),
            description: description.to_owned(),
        }
    }

    fn invalid_request(description: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_grant(description: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// `401 invalid_client`, with the `WWW-Authenticate` challenge RFC 6749 §5.2 asks for.
    fn invalid_client(description: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    /// A scripted failure: `temporarily_unavailable` for 429 and 503, `server_error`
    /// otherwise.
    fn scripted(status: u16) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error = match status {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                "temporarily_unavailable"
            }
            _ => "server_error",
        };
        Self::new(status, error, "scripted failure")
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.error, "error_description": self.description});
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fake-provider\""),
            );
        }
        response
    }
}

/// An error `/authorize` shows the user instead of redirecting (bad client or redirect URI).
fn error_page(error: &str, description: &str) -> Response {
    OAuthError::new(StatusCode::BAD_REQUEST, error, description).into_response()
}

/// `302 Found` to `base` with `pairs` appended to its query.
fn redirect_to(base: &Url, pairs: &[(&str, &str)]) -> Response {
    let mut url = base.clone();
    url.query_pairs_mut().extend_pairs(pairs);
    let location = HeaderValue::from_str(url.as_str())
        .expect("fake provider: a serialized URL is a valid header value");
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}
