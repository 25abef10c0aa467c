//! A fake OpenID Connect provider (Google-shaped) for integration tests.
//!
//! [`FakeProvider::start`] binds `127.0.0.1:0` and serves, on a task of the current
//! tokio runtime, everything `axnt-oauth` talks to at an OpenID issuer:
//!
//! | route | what it does |
//! |---|---|
//! | `GET /.well-known/openid-configuration` | discovery; `issuer` is `http://127.0.0.1:PORT` (no trailing slash); fetches are counted |
//! | `GET /jwks` | the published signing keys (fetches are counted) |
//! | `GET /.well-known/risc-configuration` | the RISC issuer and its keys (`/jwks`), for security event tokens ([`FakeProvider::security_event_token`]) |
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

mod controls;
mod records;
mod routes;
mod signing;
mod state;
mod wire;

use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

use self::state::{Inner, Shared};

pub use self::controls::{IdTokenTamper, RefreshBehaviour};
pub use self::routes::RefreshChaos;

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
    /// Microsoft Entra's shape, for the account's tenant (a GUID): discovery at
    /// `/{tenant}/v2.0/.well-known/openid-configuration` for `common`, `organizations`
    /// (issuer template `…/{tenantid}/v2.0`, as Entra publishes it) and the tenant itself;
    /// ID tokens issued by `…/<tenant>/v2.0` with a `tid` claim; no revocation endpoint;
    /// refresh tokens rotate. See [`FakeProvider::start_microsoft`].
    pub tenant: Option<String>,
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
        let tenant = config.tenant.clone();
        let mut inner = Inner::new(&prefix, config);
        inner.rotate_refresh_tokens = tenant.is_some();
        let shared = Arc::new(Shared {
            issuer,
            tenant,
            inner: Mutex::new(inner),
        });
        let app = routes::router(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake provider: server failed");
        });
        Self { shared, server }
    }

    /// A Microsoft-like provider (see [`ProviderConfig::tenant`]) for a random tenant.
    pub async fn start_microsoft() -> Self {
        Self::start_with(ProviderConfig {
            tenant: Some(uuid::Uuid::new_v4().to_string()),
            ..ProviderConfig::default()
        })
        .await
    }

    /// `http://127.0.0.1:PORT`, no trailing slash. A Microsoft-like provider's is its
    /// multi-tenant `…/common/v2.0`.
    pub fn issuer(&self) -> String {
        match &self.shared.tenant {
            Some(_) => format!("{}/common/v2.0", self.shared.issuer),
            None => self.shared.issuer.clone(),
        }
    }

    /// A Microsoft-like provider's issuer for `segment` (`common`, `organizations`, or
    /// the tenant).
    pub fn tenant_issuer(&self, segment: &str) -> String {
        format!("{}/{segment}/v2.0", self.shared.issuer)
    }

    /// A Microsoft-like provider's tenant.
    pub fn tenant(&self) -> Option<String> {
        self.shared.tenant.clone()
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

    /// Registers another client: it may authorize, exchange codes and refresh the
    /// grants made with it (only those: a refresh token is bound to its client).
    pub fn add_client(&self, client_id: &str, client_secret: &str) {
        self.lock()
            .extra_clients
            .push((client_id.to_string(), client_secret.to_string()));
    }

    /// The client each revocation authenticated as (Basic), in order.
    pub fn revocation_clients(&self) -> Vec<Option<String>> {
        self.lock().revocation_clients.clone()
    }

    pub fn profile(&self) -> Profile {
        self.lock().profile.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }
}
