//! A fake GitHub, as its OAuth documentation describes it, on loopback: no discovery
//! and no ID token; the web application flow at `/login/oauth/authorize` and
//! `/login/oauth/access_token` (errors answered with HTTP 200, as GitHub does; the
//! client only in the form body); `GET /user` and `GET /user/emails`; and
//! `DELETE /applications/{client_id}/grant` with the client's Basic authentication.
//!
//! Two kinds of app: an OAuth app ([`FakeGitHub::start`]: tokens that never expire, no
//! refresh token) and a GitHub App with expiring user tokens
//! ([`FakeGitHub::start_expiring`]: 8-hour access tokens, refresh tokens that rotate and
//! live 6 months).
//!
//! Sources: <https://docs.github.com/apps/oauth-apps/building-oauth-apps/authorizing-oauth-apps>,
//! <https://docs.github.com/apps/creating-github-apps/authenticating-with-a-github-app/refreshing-user-access-tokens>,
//! <https://docs.github.com/rest/apps/oauth-applications#delete-an-app-authorization>.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use base64::Engine;
use serde_json::{Value, json};
use url::Url;

/// `bad_refresh_token` as GitHub answers it (HTTP 200).
const BAD_REFRESH_TOKEN: &str = r#"{"error":"bad_refresh_token","error_description":"The refresh token passed is incorrect or expired.","error_uri":"https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"}"#;
/// `bad_verification_code` as GitHub answers it (HTTP 200).
const BAD_VERIFICATION_CODE: &str = r#"{"error":"bad_verification_code","error_description":"The code passed is incorrect or expired.","error_uri":"https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#bad-verification-code"}"#;
/// `incorrect_client_credentials` as GitHub answers it (HTTP 200).
const INCORRECT_CLIENT_CREDENTIALS: &str = r#"{"error":"incorrect_client_credentials","error_description":"The client_id and/or client_secret passed are incorrect.","error_uri":"https://docs.github.com/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors/#incorrect-client-credentials"}"#;

struct Code {
    scope: String,
    challenge: Option<String>,
    redirect_uri: String,
    used: bool,
}

#[derive(Default)]
struct Inner {
    counter: u64,
    codes: HashMap<String, Code>,
    /// Live access tokens → the grant's scope and when the token expires.
    access: HashMap<String, (String, Option<std::time::Instant>)>,
    /// Live refresh tokens → the grant's scope.
    refresh: HashMap<String, String>,
    /// Access tokens issued, in order.
    issued_access: Vec<String>,
    issued_refresh: Vec<String>,
    refreshes: usize,
    revoked_grants: usize,
    /// What `/authorize` was asked, in order.
    authorizations: Vec<HashMap<String, String>>,
    /// A GitHub App's access tokens live 2 seconds instead of 8 hours.
    short_lived: bool,
}

struct Shared {
    client_id: String,
    client_secret: String,
    expiring: bool,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake GitHub; the server stops when this is dropped.
pub struct FakeGitHub {
    shared: Arc<Shared>,
    base: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The account that signs in: GitHub's documented example user.
pub const USER_ID: u64 = 1;
pub const LOGIN: &str = "octocat";
/// The public email of `/user` (not verified as far as the API says).
pub const PUBLIC_EMAIL: &str = "octocat-public@example.com";
/// The verified primary email of `/user/emails`.
pub const PRIMARY_EMAIL: &str = "octocat@example.com";

impl FakeGitHub {
    /// An OAuth app: tokens that never expire, no refresh token.
    pub async fn start() -> Self {
        Self::start_as(false).await
    }

    /// A GitHub App with expiring user tokens and rotating refresh tokens.
    pub async fn start_expiring() -> Self {
        Self::start_as(true).await
    }

    async fn start_as(expiring: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("fake github: bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let shared = Arc::new(Shared {
            client_id: format!("Iv1.{suffix}"),
            client_secret: format!("ghsecret-{suffix}"),
            expiring,
            inner: Mutex::new(Inner::default()),
        });
        let app = Router::new()
            .route("/login/oauth/authorize", get(authorize))
            .route("/login/oauth/access_token", post(access_token))
            .route("/user", get(user))
            .route("/user/emails", get(emails))
            .route("/applications/{client_id}/grant", delete(revoke_grant))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("fake github: serve");
        });
        Self {
            shared,
            base,
            server,
        }
    }

    /// The settings of a provider named `github` served by this fake.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            (
                "AXNT_GITHUB_AUTHORIZE_URL",
                format!("{}/login/oauth/authorize", self.base),
            ),
            (
                "AXNT_GITHUB_TOKEN_URL",
                format!("{}/login/oauth/access_token", self.base),
            ),
            ("AXNT_GITHUB_USERINFO_URL", format!("{}/user", self.base)),
            (
                "AXNT_GITHUB_REVOKE_URL",
                format!("{}/applications/{{client_id}}/grant", self.base),
            ),
            ("AXNT_GITHUB_CLIENT_ID", self.shared.client_id.clone()),
            (
                "AXNT_GITHUB_CLIENT_SECRET",
                self.shared.client_secret.clone(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn latest_access_token(&self) -> Option<String> {
        self.shared.lock().issued_access.last().cloned()
    }

    pub fn latest_refresh_token(&self) -> Option<String> {
        self.shared.lock().issued_refresh.last().cloned()
    }

    pub fn issued_refresh_tokens(&self) -> usize {
        self.shared.lock().issued_refresh.len()
    }

    pub fn refresh_count(&self) -> usize {
        self.shared.lock().refreshes
    }

    pub fn revoked_grants(&self) -> usize {
        self.shared.lock().revoked_grants
    }

    /// What `/authorize` was last asked.
    pub fn last_authorization(&self) -> HashMap<String, String> {
        self.shared
            .lock()
            .authorizations
            .last()
            .cloned()
            .unwrap_or_default()
    }

    /// Access tokens issued from now on live 2 seconds (GitHub Apps only): GitHub's
    /// API refuses them once they have expired, its grant revocation included.
    pub fn short_lived(&self, on: bool) {
        self.shared.lock().short_lived = on;
    }

    /// The user revokes the app in their GitHub settings: every token dies.
    pub fn user_revokes(&self) {
        let mut st = self.shared.lock();
        st.access.clear();
        st.refresh.clear();
    }
}

type AppState = State<Arc<Shared>>;

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn json_200(body: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn authorize(State(shared): AppState, RawQuery(query): RawQuery) -> Response {
    let params = form(query.unwrap_or_default().as_bytes());
    let Some(redirect) = params.get("redirect_uri").and_then(|u| Url::parse(u).ok()) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri").into_response();
    };
    if params.get("client_id") != Some(&shared.client_id) {
        return (StatusCode::BAD_REQUEST, "client_id").into_response();
    }
    let mut st = shared.lock();
    st.counter += 1;
    let code = format!("ghcode-{}", st.counter);
    st.codes.insert(
        code.clone(),
        Code {
            // GitHub grants what was asked, comma-separated in its answer.
            scope: params
                .get("scope")
                .cloned()
                .unwrap_or_default()
                .replace(' ', ","),
            challenge: params.get("code_challenge").cloned(),
            redirect_uri: redirect.to_string(),
            used: false,
        },
    );
    st.authorizations.push(params.clone());
    let mut to = redirect;
    to.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", params.get("state").map_or("", String::as_str));
    (StatusCode::FOUND, [(header::LOCATION, to.to_string())]).into_response()
}

async fn access_token(State(shared): AppState, headers: HeaderMap, body: Bytes) -> Response {
    let params = form(&body);
    // GitHub takes the client in the form; Basic authentication alone is refused.
    if params.get("client_id") != Some(&shared.client_id)
        || params.get("client_secret") != Some(&shared.client_secret)
    {
        return json_200(INCORRECT_CLIENT_CREDENTIALS);
    }
    let _ = headers;
    let mut st = shared.lock();
    let scope = match params.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {
            st.refreshes += 1;
            let presented = params.get("refresh_token").cloned().unwrap_or_default();
            match st.refresh.remove(&presented) {
                Some(scope) => scope,
                None => return json_200(BAD_REFRESH_TOKEN),
            }
        }
        _ => {
            let code = params.get("code").cloned().unwrap_or_default();
            let verifier = params.get("code_verifier").cloned();
            let Some(c) = st.codes.get_mut(&code) else {
                return json_200(BAD_VERIFICATION_CODE);
            };
            let challenge_ok = match (&c.challenge, &verifier) {
                (Some(challenge), Some(v)) => {
                    let digest =
                        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, v.as_bytes());
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
                        == *challenge
                }
                (None, _) => true,
                (Some(_), None) => false,
            };
            if c.used || !challenge_ok || params.get("redirect_uri") != Some(&c.redirect_uri) {
                return json_200(BAD_VERIFICATION_CODE);
            }
            c.used = true;
            c.scope.clone()
        }
    };
    st.counter += 1;
    let n = st.counter;
    let prefix = if shared.expiring { "ghu" } else { "gho" };
    let access = format!("{prefix}_fake{n:08}");
    let lifetime: u64 = if st.short_lived { 2 } else { 28_800 };
    let expires = shared
        .expiring
        .then(|| std::time::Instant::now() + std::time::Duration::from_secs(lifetime));
    st.access.insert(access.clone(), (scope.clone(), expires));
    st.issued_access.push(access.clone());
    let mut answer = json!({ "access_token": access, "scope": scope, "token_type": "bearer" });
    if shared.expiring {
        let refresh = format!("ghr_fake{n:08}");
        st.refresh.insert(refresh.clone(), scope);
        st.issued_refresh.push(refresh.clone());
        answer["expires_in"] = json!(lifetime);
        answer["refresh_token"] = json!(refresh);
        answer["refresh_token_expires_in"] = json!(15_897_600);
    }
    axum::Json(answer).into_response()
}

/// The scope of a live, unexpired access token.
fn live(inner: &Inner, token: &str) -> Option<String> {
    inner
        .access
        .get(token)
        .filter(|(_, expires)| expires.is_none_or(|at| at > std::time::Instant::now()))
        .map(|(scope, _)| scope.clone())
}

/// The scope of the live access token the request carries.
fn bearer(shared: &Shared, headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("token "))?;
    live(&shared.lock(), token)
}

fn bad_credentials() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        axum::Json(json!({ "message": "Bad credentials", "documentation_url": "https://docs.github.com/rest" })),
    )
        .into_response()
}

async fn user(State(shared): AppState, headers: HeaderMap) -> Response {
    if bearer(&shared, &headers).is_none() {
        return bad_credentials();
    }
    axum::Json(json!({
        "login": LOGIN,
        "id": USER_ID,
        "node_id": "MDQ6VXNlcjE=",
        "avatar_url": "https://github.com/images/error/octocat_happy.gif",
        "name": "monalisa octocat",
        "email": PUBLIC_EMAIL,
        "type": "User",
    }))
    .into_response()
}

async fn emails(State(shared): AppState, headers: HeaderMap) -> Response {
    let Some(scope) = bearer(&shared, &headers) else {
        return bad_credentials();
    };
    if !scope.split(',').any(|s| s == "user:email" || s == "user") {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "message": "Not Found" })),
        )
            .into_response();
    }
    axum::Json(json!([
        { "email": PUBLIC_EMAIL, "verified": false, "primary": false, "visibility": "public" },
        { "email": PRIMARY_EMAIL, "verified": true, "primary": true, "visibility": "private" },
    ]))
    .into_response()
}

async fn revoke_grant(
    State(shared): AppState,
    Path(client_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", shared.client_id, shared.client_secret))
    );
    if client_id != shared.client_id
        || headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some(&expected)
    {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "message": "Not Found" })),
        )
            .into_response();
    }
    let token = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["access_token"].as_str().map(str::to_string));
    let mut st = shared.lock();
    match token {
        Some(token) if live(&st, &token).is_some() => {
            // The whole grant goes: every token of this (one-user) fake.
            st.access.clear();
            st.refresh.clear();
            st.revoked_grants += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        _ => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({ "message": "Validation Failed" })),
        )
            .into_response(),
    }
}
