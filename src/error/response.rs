//! An error as the client sees it: RFC 9457 problem details, its headers, and the one
//! log line per error response.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::Error;
use crate::connect::ConnectError;

/// RFC 9457 problem details: the body of every error answer of the internal API. Its
/// schema in the OpenAPI document is derived from this type, so the two cannot differ.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Problem<'a> {
    /// `urn:axnt-oauth:problem:<code>`.
    #[serde(rename = "type")]
    kind: String,
    /// The status's reason phrase.
    title: &'a str,
    /// The HTTP status, repeated.
    status: u16,
    /// What went wrong, for a person; never a secret or an internal detail.
    detail: String,
    /// The stable code clients branch on.
    code: &'a str,
    /// Why a grant is dead or a refresh failed, as a stable code. 409
    /// `reauthorization_required`: `revoked_by_user`, `testing_mode_expired`,
    /// `idle_expired`, `token_limit_evicted`, `time_limited_access_expired`,
    /// `admin_policy_enforced`, `session_reauth_required`, `password_changed`,
    /// `refresh_outcome_unknown`, `no_refresh_token`, `unknown_invalid_grant`. 502
    /// `provider_error`: `client_credentials_invalid`. 503 `provider_unavailable`:
    /// `provider_unavailable`, `cooldown`, `circuit_open`, `refresh_outcome_unknown`. 503
    /// `refresh_in_progress`: `refresh_outcome_unknown` (another instance's refresh may
    /// have succeeded and is not stored yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    cause: Option<&'a str>,
    /// What the application and its user should do about `cause`.
    #[serde(skip_serializing_if = "Option::is_none")]
    remedy: Option<&'static str>,
    /// 403 `insufficient_scope`: the required scopes the grant lacks.
    #[serde(rename = "missingScopes", skip_serializing_if = "Option::is_none")]
    missing_scopes: Option<&'a [String]>,
    /// 403 `insufficient_scope`: a connect link (valid like any connect link) that asks
    /// the user for exactly the missing scopes, keeping those already granted.
    #[serde(rename = "stepUpUrl", skip_serializing_if = "Option::is_none")]
    step_up_url: Option<&'a str>,
}

/// Put on every error response, so that [`log_errors`] logs it once.
#[derive(Clone, Debug)]
pub(crate) struct ErrorReport {
    pub(crate) status: StatusCode,
    pub(crate) code: &'static str,
    pub(crate) message: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let problem = Problem {
            kind: format!("urn:axnt-oauth:problem:{}", self.code()),
            title: self.title(),
            status: status.as_u16(),
            detail: self.public_detail(),
            code: self.code(),
            cause: self.cause(),
            remedy: self.remedy(),
            missing_scopes: match &self {
                Self::InsufficientScope { missing, .. }
                | Self::Connect(ConnectError::ScopesNotGranted { missing }) => {
                    Some(missing.as_slice())
                }
                _ => None,
            },
            step_up_url: match &self {
                Self::InsufficientScope { step_up_url, .. } => Some(step_up_url.as_str()),
                _ => None,
            },
        };
        let body = serde_json::to_string(&problem).unwrap_or_default();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after_secs() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(Arc::new(self.report()));
        response
    }
}

/// Logs each error response once, inside the request's span: server errors at
/// `error`, client errors at `info` (they are the caller's to fix, not ours).
pub(crate) async fn log_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    if let Some(report) = response.extensions().get::<Arc<ErrorReport>>() {
        if report.status.is_server_error() {
            tracing::error!(status = report.status.as_u16(), code = report.code, error = %report.message, "request failed");
        } else {
            tracing::info!(status = report.status.as_u16(), code = report.code, error = %report.message, "request rejected");
        }
    }
    response
}
