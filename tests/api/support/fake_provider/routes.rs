//! The provider's HTTP endpoints: discovery, JWKS, authorize, token, revoke, userinfo.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::controls::{IdTokenTamper, RefreshBehaviour};
use super::records::{Authorization, TokenRequest};
use super::signing::IdTokenPlan;
use super::state::{Grant, Inner, Shared};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::Utc;
use serde_json::{Map, Value, json};
use url::Url;

/// How long an authorization code may wait before it is exchanged (Google: about 10 minutes).
pub(super) const CODE_TTL_SECS: i64 = 600;

/// The provider's routes on its shared state.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/revoke", post(revoke))
        .route("/userinfo", get(userinfo))
        .with_state(shared)
}

pub(super) type AppState = State<Arc<Shared>>;

pub(super) async fn discovery(State(shared): AppState) -> Response {
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

pub(super) async fn jwks(State(shared): AppState) -> Response {
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

pub(super) async fn authorize(State(shared): AppState, RawQuery(query): RawQuery) -> Response {
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
pub(super) enum Step {
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

pub(super) async fn token(State(shared): AppState, headers: HeaderMap, body: Bytes) -> Response {
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
        if let Some(status) = st.token_failures.pop_front() {
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
        }
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
    pub(super) fn step(self) -> Step {
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

pub(super) type GrantOutcome = Result<(Map<String, Value>, Option<IdTokenPlan>), OAuthError>;

pub(super) fn code_grant(
    st: &mut Inner,
    issuer: &str,
    params: &HashMap<String, String>,
) -> GrantOutcome {
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

pub(super) fn refresh_grant(st: &mut Inner, params: &HashMap<String, String>) -> GrantOutcome {
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

pub(super) async fn revoke(
    State(shared): AppState,
    RawQuery(query): RawQuery,
    body: Bytes,
) -> Response {
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

pub(super) async fn userinfo(State(shared): AppState, headers: HeaderMap) -> Response {
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
pub(super) fn authenticate_client(
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

pub(super) fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = STANDARD.decode(encoded).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// Decodes one `application/x-www-form-urlencoded` component: `+` is a space, `%XX` a
/// byte. `None` for a malformed escape or a result that is not UTF-8.
pub(super) fn form_decode(s: &str) -> Option<String> {
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

pub(super) fn strip_prefix_ignore_case<'a>(value: &'a str, prefix: &str) -> Option<&'a str> {
    let head = value.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &value[prefix.len()..])
}

/// Form or query parameters; a repeated name keeps its last value.
pub(super) fn parse_form(bytes: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(bytes).into_owned().collect()
}

pub(super) fn pkce_s256(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

pub(super) fn has_openid(scope: &str) -> bool {
    scope.split(' ').any(|s| s == "openid")
}

/// An OAuth error answer: `{"error", "error_description"}` with a status.
pub(super) struct OAuthError {
    pub(super) status: StatusCode,
    pub(super) error: String,
    pub(super) description: String,
}

impl OAuthError {
    pub(super) fn new(status: StatusCode, error: &str, description: &str) -> Self {
        Self {
            status,
            error: error.to_owned(),
            description: description.to_owned(),
        }
    }

    pub(super) fn invalid_request(description: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    pub(super) fn invalid_grant(description: &str) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_grant", description)
    }

    /// `401 invalid_client`, with the `WWW-Authenticate` challenge RFC 6749 §5.2 asks for.
    pub(super) fn invalid_client(description: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_client", description)
    }

    /// A scripted failure: `temporarily_unavailable` for 429 and 503, `server_error`
    /// otherwise.
    pub(super) fn scripted(status: u16) -> Self {
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
pub(super) fn error_page(error: &str, description: &str) -> Response {
    OAuthError::new(StatusCode::BAD_REQUEST, error, description).into_response()
}

/// `302 Found` to `base` with `pairs` appended to its query.
pub(super) fn redirect_to(base: &Url, pairs: &[(&str, &str)]) -> Response {
    let mut url = base.clone();
    url.query_pairs_mut().extend_pairs(pairs);
    let location = HeaderValue::from_str(url.as_str())
        .expect("fake provider: a serialized URL is a valid header value");
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}
