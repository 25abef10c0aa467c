//! A flow started from an opened connect link: the sealed `state` for the provider,
//! the link marked used, and `authorize_redirect` logged.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use super::ConnectError;
use super::{ConnectService, count_failed, count_rejected};
use crate::crypto::random_token;
use crate::oauth::flow::{ConnectSession, FlowState, Purpose, new_binding};
use crate::oauth::provider::{AuthorizationRequest, OidcProvider};
use crate::store::FlowStep;
use crate::store::flow_log::ClientInfo;

/// A started flow: where to send the browser, and the value of the cookie that binds
/// the flow to it.
pub(crate) struct Started {
    pub(crate) authorize_url: url::Url,
    pub(crate) binding: String,
}

/// A flow that could not start.
pub(crate) struct StartFailed {
    pub(crate) error: ConnectError,
    /// Whether the browser goes back to the application's return URL with the error
    /// (else a page shows it: a link used twice, or a provider that cannot be reached,
    /// is a problem the operator should see, not the application).
    pub(crate) to_return_url: bool,
}

impl StartFailed {
    fn page(error: ConnectError) -> Self {
        Self {
            error,
            to_return_url: false,
        }
    }
}

impl ConnectService {
    /// Starts the flow of `session`, opened from its link and checked unexpired: the
    /// flow state sealed for the provider, the link marked used (only once the redirect
    /// is ready, so a provider outage does not use it up), and the step logged.
    pub(crate) async fn start(
        &self,
        provider: &OidcProvider,
        session: &ConnectSession,
        client: &ClientInfo,
    ) -> Result<Started, StartFailed> {
        let provider_name = provider.name();
        let (binding, binding_hash) = new_binding();
        let pkce_verifier = random_token(32);
        let flow = FlowState {
            user_id: session.user_id.clone(),
            provider: provider_name.to_string(),
            pkce_verifier: pkce_verifier.clone(),
            nonce: random_token(32),
            return_to: session.return_to.clone(),
            expires_at: unix_time_after(self.settings.flow.state_ttl),
            flow_id: session.flow_id.clone(),
            binding_hash,
            rules: session.rules.clone(),
        };
        let sealed = self
            .sealer
            .seal(Purpose::AuthorizationState, &flow)
            .map_err(|_| StartFailed {
                error: ConnectError::Internal("sealing flow state failed".into()),
                to_return_url: true,
            })?;
        let flow_log = self
            .flow_log
            .flow(&flow.user_id, &flow.flow_id, provider_name, client);
        let redirect_uri = self.settings.redirect_uri(provider_name);
        let authorize_url = match provider
            .authorization_request(AuthorizationRequest {
                redirect_uri: &redirect_uri,
                extra_scopes: &session.rules.scopes,
                state: sealed,
                nonce: flow.nonce.clone(),
                pkce_verifier: &pkce_verifier,
                // The expected account is the natural hint for the account chooser.
                login_hint: session
                    .login_hint
                    .as_deref()
                    .or(session.rules.expected_email.as_deref()),
                force_consent: !session.rules.skip_consent,
                client: session.rules.client.as_deref(),
            })
            .await
        {
            Ok(url) => url,
            Err(e) => {
                let error = ConnectError::from(e);
                flow_log.failed(FlowStep::AuthorizeRedirect, &error).await;
                count_failed(provider_name, &error);
                return Err(StartFailed::page(error));
            }
        };
        // Single-use: the first opening marks the flow, every later one gets a page. A
        // refused opening writes nothing to the user's flow log (a leaked link replayed
        // must not grow it); it is counted.
        match self
            .tokens
            .mark_flow_started(&flow.flow_id, session.expires_at)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(StartFailed::page(count_rejected(
                    provider_name,
                    ConnectError::SessionUsed,
                )));
            }
            Err(error) => {
                let error = ConnectError::from(error);
                flow_log.failed(FlowStep::AuthorizeRedirect, &error).await;
                return Err(StartFailed::page(error));
            }
        }
        flow_log
            .step(
                FlowStep::AuthorizeRedirect,
                json!({ "scopes": session.rules.scopes, "loginHint": session.login_hint.is_some() }),
            )
            .await;
        metrics::counter!(crate::series::FLOWS_STARTED_TOTAL, "provider" => provider_name.to_string())
            .increment(1);
        Ok(Started {
            authorize_url,
            binding,
        })
    }
}

/// The Unix time `ttl` from now (saturating: a TTL beyond `i64` seconds is "for ever").
fn unix_time_after(ttl: Duration) -> i64 {
    let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
    Utc::now().timestamp().saturating_add(secs)
}
