//! The connect flow as a service: links (and step-up links) minted for a user, a flow
//! started from an opened link, finished at the callback (code exchange → ID-token
//! check → the session's account rules → the partial-grant policy → the grant held for
//! confirmation or stored), and a held grant confirmed. Each step is written to the
//! user's flow log and counted here; the HTTP handlers keep cookies, pages and
//! redirects, and answer from the typed outcomes below.

use std::sync::Arc;

use crate::config::Settings;
use crate::oauth::flow::StateSealer;
use crate::store::FlowRecorder;
use crate::tokens::TokenService;

mod callback;
mod confirm;
mod error;
mod links;
mod start;
#[cfg(test)]
mod tests;

pub(crate) use callback::{Callback, Completed};
pub(crate) use confirm::{CONFIRMED, Confirmation};
pub(crate) use error::ConnectError;
pub(crate) use links::{LinkKind, LinkRequest};

/// What the connect flow works with.
pub(crate) struct ConnectService {
    tokens: Arc<TokenService>,
    flow_log: Arc<FlowRecorder>,
    sealer: Arc<StateSealer>,
    settings: Arc<Settings>,
}

impl ConnectService {
    pub(crate) fn new(
        tokens: Arc<TokenService>,
        flow_log: Arc<FlowRecorder>,
        sealer: Arc<StateSealer>,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            tokens,
            flow_log,
            sealer,
            settings,
        }
    }
}

/// The `reason` labels of [`FLOWS_FAILED_TOTAL`](crate::series::FLOWS_FAILED_TOTAL) (the problem codes a flow can end
/// with), registered at zero at start-up.
pub(crate) const FLOW_FAILURE_REASONS: [&str; 19] = [
    "invalid_session",
    "session_expired",
    "session_already_used",
    "invalid_state",
    "state_expired",
    "browser_mismatch",
    "access_denied",
    "authorization_failed",
    "id_token_invalid",
    "code_rejected",
    "account_not_allowed",
    "scopes_not_granted",
    "provider_unavailable",
    "provider_error",
    "provider_not_configured",
    "store_unavailable",
    "store_throttled",
    "keys_unavailable",
    "internal",
];

/// Counts a flow refused before anything was logged for it, and hands its error back.
pub(crate) fn count_rejected(provider_name: &str, error: ConnectError) -> ConnectError {
    count_failed(provider_name, &error);
    error
}

/// [`FLOWS_FAILED_TOTAL`](crate::series::FLOWS_FAILED_TOTAL)`{provider, reason}`.
fn count_failed(provider_name: &str, error: &ConnectError) {
    metrics::counter!(crate::series::FLOWS_FAILED_TOTAL, "provider" => provider_name.to_string(), "reason" => error.code()).increment(1);
}

/// [`FLOWS_COMPLETED_TOTAL`](crate::series::FLOWS_COMPLETED_TOTAL)`{provider}`.
fn count_completed(provider_name: &str) {
    metrics::counter!(crate::series::FLOWS_COMPLETED_TOTAL, "provider" => provider_name.to_string())
        .increment(1);
}
