//! The internal API: bearer-key authenticated JSON for the application's services, one
//! module per resource, each with its router and the operation its keys need.

use axum::Router;
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use crate::error::Error;
use crate::ids::UserId;

pub(super) mod auth;
pub(super) mod connect_sessions;
pub(super) mod connections;
pub(super) mod events;
pub(super) mod import;
pub(super) mod logs;
pub(super) mod tokens;
pub(super) mod whoami;

/// A path naming one of the application's users (`/v1/users/{userId}/…`).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub(in crate::http) struct UserPath {
    /// The application's id for its user
    pub(in crate::http) user_id: UserId,
}

/// A path naming one user's connection to a provider
/// (`/v1/users/{userId}/…/{provider}`).
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Path, rename_all = "camelCase")]
pub(in crate::http) struct ConnectionPath {
    /// The application's id for its user
    pub(in crate::http) user_id: UserId,
    /// The provider's name
    #[param(example = "google")]
    pub(in crate::http) provider: String,
}

pub(crate) fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(connect_sessions::router(&state))
        .merge(tokens::router(&state))
        .merge(connections::router(&state))
        .merge(import::router(&state))
        .merge(logs::router(&state))
        .merge(events::router(&state))
        .merge(whoami::router(&state))
}

/// A caller's optional `returnTo`: the normalised URL, none when none was given, or
/// `return_url_not_allowed`.
pub(super) fn requested_return(
    state: &AppState,
    candidate: Option<&str>,
) -> Result<Option<crate::oauth::ReturnUrl>, Error> {
    candidate
        .map(|url| {
            state
                .return_urls
                .check(url)
                .ok_or(Error::ReturnUrlNotAllowed)
        })
        .transpose()
}

/// Scopes a caller may add: OAuth scope tokens (RFC 6749 §3.3), a bounded number.
pub(super) fn validate_scopes(scopes: &[String]) -> Result<(), Error> {
    if scopes.len() > 20 {
        return Err(Error::InvalidRequest("at most 20 scopes".into()));
    }
    let valid = |s: &String| {
        !s.is_empty()
            && s.len() <= 256
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
    };
    if scopes.iter().all(valid) {
        Ok(())
    } else {
        Err(Error::InvalidRequest(
            "each scope must be a non-empty scope token without spaces or quotes".into(),
        ))
    }
}

/// A page's `limit`: `default` when absent, else 1 to `max`.
pub(super) fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, Error> {
    let n = limit.unwrap_or(default);
    if (1..=max).contains(&n) {
        Ok(n)
    } else {
        Err(Error::InvalidRequest(format!("limit must be 1 to {max}")))
    }
}

/// The request's id (`x-request-id`, set or passed on by the request-id layer).
/// The request's `X-Request-Id` (the caller's, or the one the server set), for an
/// audit record: the header's value only, not a copy of every header.
pub(in crate::http) struct RequestId(Option<axum::http::HeaderValue>);

impl RequestId {
    pub(in crate::http) fn as_str(&self) -> Option<&str> {
        self.0.as_ref().and_then(request_id_text)
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for RequestId {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.headers.get(X_REQUEST_ID).cloned()))
    }
}

const X_REQUEST_ID: &str = "x-request-id";

pub(super) fn request_id(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers.get(X_REQUEST_ID).and_then(request_id_text)
}

/// A request id as audit records keep it: text of at most 128 bytes.
fn request_id_text(value: &axum::http::HeaderValue) -> Option<&str> {
    value.to_str().ok().filter(|v| v.len() <= 128)
}
