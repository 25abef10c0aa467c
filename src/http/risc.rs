//! `POST /risc/google`: Google's Cross-Account Protection pushes security event tokens
//! here (RFC 8935 push delivery). No API key: the token's signature, issuer and
//! audience are its authentication.

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;

use super::{AppState, Route};
use crate::error::Error;
use crate::oauth::provider::ProviderError;
use crate::oauth::risc::RiscError;

/// `POST /risc/google`.
pub(in crate::http) const RECEIVE: Route = Route::post("/risc/google", &[202]);

pub(crate) fn router() -> Router<AppState> {
    Router::new().route(RECEIVE.template, post(receive))
}

/// `POST /risc/google` with a security event token (the JWT as the body,
/// `application/secevent+jwt`) → 202 once verified and applied (a replayed `jti` too:
/// it does nothing); 400 `invalid_security_event` for a token that is not Google's for
/// this client.
#[utoipa::path(
    post,
    path = RECEIVE.documented(),
    tag = "provider",
    request_body(
        description = "A security event token signed by the RISC issuer, for this OAuth client (Google sends application/secevent+jwt; the type is not checked)",
        content((String = "application/secevent+jwt"), (String = "text/plain"))
    ),
    responses((status = 202, description = "Verified and applied (or a replayed jti: nothing done)")),
)]
pub(super) async fn receive(State(state): State<AppState>, body: Bytes) -> Result<Response, Error> {
    let token = std::str::from_utf8(&body)
        .map_err(|_| Error::InvalidSecurityEvent("the body is not text".into()))?
        .trim();
    let secrets = state.secrets.current();
    let audiences: Vec<String> = secrets.clients().map(|c| c.client_id.clone()).collect();
    if audiences.is_empty() {
        return Err(Error::Provider(ProviderError::not_configured(
            "google",
            &state.secrets.source_name(),
        )));
    }
    let set = state
        .risc
        .verify(token, &audiences)
        .await
        .map_err(|e| match e {
            RiscError::Invalid(reason) => Error::InvalidSecurityEvent(reason),
            RiscError::Unavailable(reason) => Error::Provider(ProviderError::Unavailable(reason)),
        })?;
    // An owned task: a request that times out or a sender that hangs up must not stop
    // the work halfway (its jti would be marked, its grants not all ended), and
    // shutdown waits for it.
    let tokens = std::sync::Arc::clone(&state.tokens);
    let applied = {
        let set = set.clone();
        state
            .tokens
            .spawn_owned(async move { tokens.apply_security_event(&set, "google").await })
    };
    let outcome = applied
        .await
        .map_err(|e| Error::Internal(format!("security event task: {e}")))??;
    tracing::info!(
        jti = set.jti,
        duplicate = outcome.duplicate,
        ended = outcome.ended,
        "security event token applied"
    );
    Ok(StatusCode::ACCEPTED.into_response())
}
