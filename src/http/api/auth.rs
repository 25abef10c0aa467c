//! Who calls the internal API: `Authorization: Bearer <key>` checked in constant time,
//! `Bearer <JWT>` of an OIDC caller, or `AWS-IAM <signed request>` of an IAM caller
//! (see [`crate::callers`]); then the operation the route's router asks for, and the
//! provider and user its path names, against the caller's limits.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawPathParams, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::Response;

use super::request_id;
use crate::callers::{Caller, CredentialError, Operation, PresentedKey};
use crate::error::Error;
use crate::http::AppState;
use crate::http::client::ClientKey;
use crate::series::Label;

/// `routes`, each answered only for a caller whose key is allowed `operation`.
pub(super) fn permitted(
    routes: Router<AppState>,
    state: &AppState,
    operation: Operation,
) -> Router<AppState> {
    routes.route_layer(middleware::from_fn_with_state(
        Permit::new(state, Some(operation)),
        authenticate,
    ))
}

/// `routes`, each answered for any caller with a valid key (`GET /v1/whoami`).
pub(super) fn authenticated(routes: Router<AppState>, state: &AppState) -> Router<AppState> {
    routes.route_layer(middleware::from_fn_with_state(
        Permit::new(state, None),
        authenticate,
    ))
}

/// What a router's routes need of a caller: a valid key, allowed `operation` when
/// there is one.
#[derive(Clone)]
struct Permit {
    state: AppState,
    operation: Option<Operation>,
}

impl Permit {
    fn new(state: &AppState, operation: Option<Operation>) -> Self {
        Self {
            state: state.clone(),
            operation,
        }
    }
}

/// Checks the key, then the permit's operation and the path's `{provider}` against the
/// key's limits; a token read refused for them is audited. The key is checked first:
/// only a call without a valid key meets the brake on failed authentication (see
/// [`crate::http::limits`]), and a braked client's IAM or OIDC credential is not sent
/// on to STS or its issuer.
async fn authenticate(
    State(Permit { state, operation }): State<Permit>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    let (parts, body) = request.into_parts();
    let caller = match identify(&state, &parts).await {
        Ok(caller) => caller,
        Err(refusal) => return Err(refused(&state, &parts, refusal)),
    };
    let request = Request::from_parts(parts, body);
    // Undecodable parameters are the handler's to refuse (400).
    let params = params.ok();
    let param = |name: &str| -> Option<&str> {
        params
            .as_ref()?
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    // What a refused token read is audited as (built only when one is refused).
    let refused_read = |headers: &axum::http::HeaderMap| {
        Some(TokenRead {
            user_id: param("user_id")?.to_string(),
            provider: param("provider")?.to_string(),
            request_id: request_id(headers).map(str::to_string),
        })
        .filter(|_| operation == Some(Operation::ReadTokens))
    };
    if let Some(operation) = operation {
        caller.count_call(operation);
        if !caller.may(operation) {
            let read = refused_read(request.headers());
            audit_refusal(&state, read, &caller.id, "caller_not_allowed").await?;
            let why = if caller.operations.is_some() {
                "its operations are limited"
            } else {
                "a caller has it only when its operations name it"
            };
            return Err(Error::CallerNotAllowed(format!(
                "do {} ({why})",
                operation.label()
            )));
        }
    }
    // A provider in the path is checked here; one in a body by its handler.
    if let Some(provider) = param("provider")
        && !caller.may_use(provider)
    {
        let read = refused_read(request.headers());
        audit_refusal(&state, read, &caller.id, "caller_not_allowed").await?;
        return Err(Error::provider_not_allowed(provider));
    }
    // A user in the path likewise; one in a body or a query by its handler.
    if let Some(user_id) = param("user_id")
        && !caller.may_use_user(user_id)
    {
        let read = refused_read(request.headers());
        audit_refusal(&state, read, &caller.id, "caller_not_allowed").await?;
        return Err(Error::user_not_allowed());
    }
    let mut request = request;
    request.extensions_mut().insert(CallerOf(caller));
    Ok(next.run(request).await)
}

/// Why a request proved no caller.
enum Refusal {
    /// No credential, or a key that is no caller's.
    NoCaller,
    /// A credential of another kind that proved no caller, or could not be checked.
    Credential(CredentialError),
    /// The client failed too often: its credential is not checked.
    Braked(u64),
}

/// The caller a request's `Authorization` proves: `Bearer <key>` (compared in constant
/// time with every key), `Bearer <JWT>` of an OIDC caller, or `AWS-IAM <signed
/// request>` of an IAM caller.
async fn identify(state: &AppState, parts: &Parts) -> Result<Arc<Caller>, Refusal> {
    let authorization = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(Refusal::NoCaller)?;
    let (scheme, credential) = authorization.split_once(' ').ok_or(Refusal::NoCaller)?;
    let credential = credential.trim();
    let callers = state.secrets.current();
    let iam = scheme.eq_ignore_ascii_case("AWS-IAM");
    if !iam && !scheme.eq_ignore_ascii_case("Bearer") {
        return Err(Refusal::NoCaller);
    }
    if !iam
        && let Some(caller) = PresentedKey::parse(credential)
            .ok()
            .and_then(|key| key.caller_in(&callers.callers.keys))
    {
        return Ok(caller);
    }
    // Not a key: a client braked for failed authentication sends nothing on to STS
    // or an issuer.
    if let Some(client) = crate::http::client_ip(parts, &state.trusted_proxies)
        && let Some(retry_after_secs) = state.rate_limits.braked(ClientKey::from(client))
    {
        return Err(Refusal::Braked(retry_after_secs));
    }
    let checks = &state.identity;
    if iam {
        return checks
            .iam_caller(credential, &callers.callers)
            .await
            .map_err(Refusal::Credential);
    }
    match checks.oidc_caller(credential, &callers.callers).await {
        Some(checked) => checked.map_err(Refusal::Credential),
        None => Err(Refusal::NoCaller),
    }
}

/// The answer to a request that proved no caller: 401 (or 429 once its client failed
/// too often), or 503 when its identity could not be checked.
fn refused(state: &AppState, parts: &Parts, refusal: Refusal) -> Error {
    let error = match refusal {
        Refusal::Braked(retry_after_secs) => return Error::RateLimited { retry_after_secs },
        Refusal::NoCaller => Error::Unauthorized,
        Refusal::Credential(CredentialError::Refused(why)) => Error::CredentialRefused(why),
        Refusal::Credential(CredentialError::Unavailable(why)) => {
            tracing::warn!(reason = %why, "a caller's identity could not be checked");
            return Error::IdentityUnavailable(why);
        }
    };
    let Some(client) = crate::http::client_ip(parts, &state.trusted_proxies) else {
        return error;
    };
    let client = ClientKey::from(client);
    let limits = &state.rate_limits;
    match limits.braked(client).or_else(|| limits.auth_failed(client)) {
        Some(retry_after_secs) => Error::RateLimited { retry_after_secs },
        None => error,
    }
}

/// The user id, provider and request id of a token read refused before its handler.
struct TokenRead {
    user_id: String,
    provider: String,
    request_id: Option<String>,
}

/// Audits a token read refused before its handler ran (the key's limits); fails when
/// the audit trail cannot take the record.
async fn audit_refusal(
    state: &AppState,
    read: Option<TokenRead>,
    caller: &str,
    reason: &'static str,
) -> Result<(), Error> {
    let Some(read) = read else {
        return Ok(());
    };
    state
        .audit
        .record(crate::audit::Read {
            caller,
            user_id: &read.user_id,
            provider: &read.provider,
            outcome: crate::audit::ReadOutcome::Refused,
            reason: Some(reason),
            scopes: None,
            request_id: read.request_id.as_deref(),
        })
        .await
        .map_err(|_| Error::AuditUnavailable)
}

/// The caller whose key the request presented (set by [`authenticate`]).
#[derive(Clone)]
pub(in crate::http) struct CallerOf(pub(in crate::http) Arc<Caller>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CallerOf {
    type Rejection = Error;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Error> {
        parts
            .extensions
            .get::<CallerOf>()
            .cloned()
            .ok_or_else(|| Error::Internal("no caller on an authenticated route".into()))
    }
}
