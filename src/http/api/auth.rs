//! Who calls the internal API: `Authorization: Bearer <key>` checked in constant time,
//! then the operation the route's router asks for and the provider its path names
//! against the key's limits.

use std::sync::Arc;

use axum::Router;
use axum::extract::{RawPathParams, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;

use super::request_id;
use crate::error::Error;
use crate::http::AppState;
use crate::http::client::ClientKey;
use crate::secrets::{Caller, Operation, PresentedKey};
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
/// [`crate::http::limits`]).
async fn authenticate(
    State(Permit { state, operation }): State<Permit>,
    params: Result<RawPathParams, axum::extract::rejection::RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Result<Response, Error> {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .and_then(|v| PresentedKey::parse(v.trim()).ok());
    let caller = presented.and_then(|key| state.secrets.caller_of(&key));
    let Some(caller) = caller else {
        let (parts, _) = request.into_parts();
        let Some(client) = crate::http::client_ip(&parts, &state.trusted_proxies) else {
            return Err(Error::Unauthorized);
        };
        let client = ClientKey::from(client);
        let limits = &state.rate_limits;
        return match limits.braked(client).or_else(|| limits.auth_failed(client)) {
            Some(retry_after_secs) => Err(Error::RateLimited { retry_after_secs }),
            None => Err(Error::Unauthorized),
        };
    };
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
                "a key has it only when its operations name it"
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
