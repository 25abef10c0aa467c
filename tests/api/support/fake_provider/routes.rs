//! The provider's HTTP endpoints: discovery, JWKS, authorize, token, revoke, userinfo.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde_json::{Map, Value, json};
use url::Url;

use super::controls::{IdTokenTamper, RefreshBehaviour};
use super::records::{Authorization, TokenRequest};
use super::signing::IdTokenPlan;
use super::state::{Grant, Inner, Shared};
use super::wire::{
    OAuthError, authenticate_client, error_page, has_openid, parse_form, pkce_s256, redirect_to,
    strip_prefix_ignore_case,
};

/// How long an authorization code may wait before it is exchanged (Google: about 10 minutes).
const CODE_TTL_SECS: i64 = 600;

/// The provider's routes on its shared state.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route(
            "/{segment}/v2.0/.well-known/openid-configuration",
            get(tenant_discovery),
        )
        .route("/jwks", get(jwks))
        .route("/.well-known/risc-configuration", get(risc_configuration))
        .route("/authorize", get(authorize))
        .route("/token", post(token))
        .route("/revoke", post(revoke))
        .route("/userinfo", get(userinfo))
        .with_state(shared)
}

type AppState = State<Arc<Shared>>;

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

/// Microsoft Entra's v2.0 discovery for `segment`: `common` and `organizations` give
/// the issuer as a template with `{tenantid}`, as Entra does; the tenant gives its own.
/// No `revocation_endpoint` (Entra has none).
pub(super) async fn tenant_discovery(
    State(shared): AppState,
    axum::extract::Path(segment): axum::extract::Path<String>,
) -> Response {
    let Some(tenant) = shared.tenant.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    {
        let mut st = shared.lock();
        st.discovery_fetches += 1;
        if st.discovery_unavailable {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    }
    let base = &shared.issuer;
    let issuer = match segment.as_str() {
        "common" | "organizations" => format!("{base}/{{tenantid}}/v2.0"),
        s if s == tenant => format!("{base}/{tenant}/v2.0"),
        _ => return StatusCode::BAD_REQUEST.into_response(),
    };
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "userinfo_endpoint": format!("{base}/userinfo"),
        "jwks_uri": format!("{base}/jwks"),
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "name", "email", "tid", "oid"],
        "tenant_region_scope": null,
    }))
    .into_response()
}

/// Google's RISC configuration: the security event tokens' issuer and keys (the same
/// keys as the ID tokens', as Google's are).
pub(super) async fn risc_configuration(State(shared): AppState) -> Response {
    let iss = &shared.issuer;
    axum::Json(json!({
        "issuer": iss,
        "jwks_uri": format!("{iss}/jwks"),
        "delivery_methods_supported": ["https://schemas.openid.net/secevent/risc/delivery-method/push"],
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
    let Some(client_id) = params
        .get("client_id")
        .filter(|id| st.client_secret_of(id).is_some())
        .cloned()
    else {
        return error_page("invalid_client", "unknown or missing client_id");
    };
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

    // The consent screen: the user may untick scopes (never `openid`), and with
    // `include_granted_scopes=true` the new grant covers what this account granted the
    // client before (Google's incremental authorization).
    let mut granted: Vec<String> = scope
        .split(' ')
        .filter(|s| !s.is_empty() && (*s == "openid" || !st.unticked.iter().any(|u| u == s)))
        .map(str::to_string)
        .collect();
    if params.get("include_granted_scopes").map(String::as_str) == Some("true") {
        let sub = st.profile.sub.clone();
        let earlier: Vec<String> = st
            .grants
            .iter()
            .filter(|g| !g.revoked && g.client_id == client_id && g.profile.sub == sub)
            .flat_map(|g| g.scope.split(' ').map(str::to_string).collect::<Vec<_>>())
            .collect();
        for s in earlier {
            if !granted.contains(&s) {
                granted.push(s);
            }
        }
    }
    let scope = granted.join(" ");
    let code = st.next_id("code");
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
            prompt_consent: params
                .get("prompt")
                .is_some_and(|p| p.split(' ').any(|v| v == "consent")),
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
    /// Answer this status with this JSON body as is.
    Error(u16, String),
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

    let mut authenticated: Option<String> = None;
    let step = {
        let mut st = shared.lock();
        match grant_type.as_str() {
            "authorization_code" => st.code_exchange_count += 1,
            "refresh_token" => st.refresh_count += 1,
            _ => {}
        }
        if let Some(status) = st.token_failures.pop_front() {
            Step::Answer(OAuthError::scripted(status))
        } else if let Err(error) = authenticate_client(&st, authorization.as_deref(), &params)
            .map(|id| authenticated = Some(id))
        {
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
                Some(RefreshBehaviour::ErrorBody(status, body)) => Step::Error(status, body),
                Some(RefreshBehaviour::InvalidRapt) => Step::Answer(OAuthError::invalid_rapt()),
                Some(RefreshBehaviour::AdminPolicyEnforced) => {
                    Step::Answer(OAuthError::admin_policy_enforced())
                }
            }
        } else if grant_type == "authorization_code" && !st.code_exchange_hold.is_zero() {
            Step::Hold(st.code_exchange_hold)
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
        Step::Error(status, body) => {
            let response = (
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response();
            record(&shared, &response);
            return response;
        }
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
            "authorization_code" => code_grant(
                &mut st,
                &shared.id_token_issuer(),
                shared.tenant.clone(),
                authenticated.as_deref().unwrap_or_default(),
                &params,
            ),
            "refresh_token" => refresh_grant(
                &mut st,
                &shared.id_token_issuer(),
                shared.tenant.clone(),
                authenticated.as_deref().unwrap_or_default(),
                &params,
            ),
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
            if shared.tenant.is_some() {
                entra_scope(&mut body);
            }
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

/// The granted scopes as Entra names them: Microsoft Graph permissions by their
/// resource URL (`Mail.Read` → `https://graph.microsoft.com/Mail.Read`), and no
/// `offline_access`.
fn entra_scope(body: &mut Map<String, Value>) {
    let Some(scope) = body.get("scope").and_then(Value::as_str) else {
        return;
    };
    let named: Vec<String> = scope
        .split(' ')
        .filter(|s| !s.is_empty() && *s != "offline_access")
        .map(|s| match s {
            "openid" | "profile" | "email" => s.to_string(),
            graph if !graph.contains("://") => format!("https://graph.microsoft.com/{graph}"),
            other => other.to_string(),
        })
        .collect();
    body.insert("scope".into(), json!(named.join(" ")));
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

fn code_grant(
    st: &mut Inner,
    issuer: &str,
    tid: Option<String>,
    client_id: &str,
    params: &HashMap<String, String>,
) -> GrantOutcome {
    let Some(code) = params.get("code") else {
        return Err(OAuthError::invalid_request("missing code"));
    };
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

    // Google issues a refresh token on forced consent, or to an account that holds no
    // live grant of this client yet; a returning account's silent re-grant gets none.
    let returning = st.grants.iter().enumerate().any(|(i, g)| {
        !g.revoked
            && g.client_id == auth.client_id
            && g.profile.sub == st.profile.sub
            && st.refresh_tokens.values().any(|r| r.grant == i && r.valid)
    });
    // Entra issues one on every code exchange that was granted `offline_access`.
    let offline = tid.is_some() && auth.scope.split(' ').any(|s| s == "offline_access");
    let mints_refresh_token = auth.prompt_consent || !returning || offline;
    let granted_at = st.now();
    let refresh_expires_at = st
        .refresh_token_lifetime
        .map(|secs| granted_at + chrono::Duration::seconds(secs));
    st.grants.push(Grant {
        client_id: auth.client_id.clone(),
        scope: auth.scope.clone(),
        profile: st.profile.clone(),
        revoked: false,
        granted_at,
        refresh_expires_at,
    });
    let grant = st.grants.len() - 1;
    st.code_grants.insert(code.clone(), grant);
    let (mut body, access_token) = st.access_response(grant);
    if let Some(secs) = st.refresh_token_lifetime {
        body.insert("refresh_token_expires_in".into(), json!(secs.max(0)));
    }
    if !st.omit_refresh_token_on_code && mints_refresh_token {
        let refresh_token = st.issue_refresh_token(grant);
        body.insert("refresh_token".into(), json!(refresh_token));
    }
    let plan = (has_openid(&auth.scope) && st.tamper != IdTokenTamper::Omit).then(|| {
        st.id_token_plan(
            issuer,
            tid,
            grant,
            auth.nonce.clone(),
            &access_token,
            st.tamper,
        )
    });
    Ok((body, plan))
}

fn refresh_grant(
    st: &mut Inner,
    issuer: &str,
    tid: Option<String>,
    client_id: &str,
    params: &HashMap<String, String>,
) -> GrantOutcome {
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
    if st.grants[grant].revoked || st.grant_expired(grant) {
        return Err(OAuthError::expired_or_revoked());
    }
    if st.grants[grant].client_id != client_id {
        return Err(OAuthError::invalid_grant(
            "refresh token was issued to another client",
        ));
    }

    let (mut body, access_token) = st.access_response(grant);
    // Google's authorization is per account and client: an older refresh token's new
    // access token covers what later (incremental) grants added.
    let combined = st.combined_scope(grant);
    body.insert("scope".into(), json!(combined));
    if st.rotate_refresh_tokens {
        if let Some(old) = st.refresh_tokens.get_mut(refresh_token) {
            old.valid = false;
        }
        let new = st.issue_refresh_token(grant);
        body.insert("refresh_token".into(), json!(new));
    } else if !st.omit_refresh_token_on_refresh {
        body.insert("refresh_token".into(), json!(refresh_token));
    }
    // Google answers a refresh of a grant with `openid` with a new ID token, without a
    // nonce (OpenID Connect Core 12.2).
    let plan = (st.id_token_on_refresh && has_openid(&st.grants[grant].scope))
        .then(|| st.id_token_plan(issuer, tid, grant, None, &access_token, IdTokenTamper::None));
    Ok((body, plan))
}

pub(super) async fn revoke(
    State(shared): AppState,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut params = parse_form(query.as_deref().unwrap_or("").as_bytes());
    params.extend(parse_form(&body));
    let delay = shared.lock().revocation_delay;
    tokio::time::sleep(delay).await;
    let mut st = shared.lock();
    if st.revocation_unavailable {
        return OAuthError::scripted(503).into_response();
    }
    let Some(token) = params.get("token") else {
        return OAuthError::invalid_request("missing token").into_response();
    };
    st.revoked.push(token.clone());
    let by = super::wire::basic_client_id(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    st.revocation_clients.push(by);
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
