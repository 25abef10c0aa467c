//! Connect links: a session sealed into a start URL, for `POST /v1/connect-sessions`
//! and for a token read's step-up link.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::ConnectError;
use super::ConnectService;
use crate::ids::{FlowId, UserId};
use crate::oauth::ReturnUrl;
use crate::oauth::flow::{
    ConnectSession, FlowRules, MAX_SEALED_LEN, Purpose, SealError, StateSealer,
};
use crate::oauth::provider::ProviderError;
use crate::store::FlowStep;
use crate::store::flow_log::ClientInfo;

/// What a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkKind {
    Connect,
    /// Scopes added to an existing connection.
    StepUp,
}

/// A link to mint, for one user.
pub(crate) struct LinkRequest<'a> {
    pub(crate) user_id: &'a UserId,
    pub(crate) provider: &'a str,
    pub(crate) return_to: Option<ReturnUrl>,
    pub(crate) login_hint: Option<String>,
    pub(crate) rules: FlowRules,
    pub(crate) kind: LinkKind,
}

/// A connect link as minted.
pub(crate) struct Link {
    pub(crate) url: String,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) flow_id: FlowId,
    pub(crate) require_confirmation: bool,
}

impl ConnectService {
    /// Mints a connect link (the session sealed into the start URL) and logs
    /// `session_created`.
    pub(crate) async fn mint_link(
        &self,
        client: &ClientInfo,
        request: LinkRequest<'_>,
    ) -> Result<Link, ConnectError> {
        let LinkRequest {
            user_id,
            provider,
            return_to,
            login_hint,
            mut rules,
            kind,
        } = request;
        // The link keeps the client it is made with: a new current client does not
        // change the links already handed out.
        let named = rules.client.take();
        rules.client = self.tokens.provider(provider)?.client_id(named.as_deref());
        if let (Some(client), None) = (named, &rules.client) {
            // A session's named client is the caller's mistake; a step-up's is the
            // connection's, whose client was removed: the operator's to fix.
            return Err(match kind {
                LinkKind::Connect => ConnectError::UnknownClient {
                    provider: provider.to_string(),
                    client,
                },
                LinkKind::StepUp => ConnectError::Provider(ProviderError::NotConfigured(format!(
                    "client {client} of provider {provider}, which made this connection, is not configured"
                ))),
            });
        }
        let now = Utc::now();
        // Saturating: a TTL past the calendar's end means a link that never expires.
        let expires_at = chrono::TimeDelta::from_std(self.settings.flow.connect_session_ttl)
            .ok()
            .and_then(|ttl| now.checked_add_signed(ttl))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        let session = ConnectSession {
            user_id: user_id.clone(),
            provider: provider.to_string(),
            return_to: return_to.clone(),
            login_hint,
            flow_id: FlowId::new(),
            expires_at: expires_at.timestamp(),
            rules,
        };
        let sealed = seal_link(&self.sealer, &session)?;
        let mut url = url::Url::parse(
            &self
                .settings
                .public_url(&format!("/oauth/{provider}/start")),
        )
        .map_err(|e| ConnectError::Internal(format!("public URL: {e}")))?;
        url.query_pairs_mut().append_pair("session", &sealed);
        self.flow_log
            .flow(user_id, &session.flow_id, provider, client)
            .step(
                FlowStep::SessionCreated,
                json!({
                    "returnTo": return_to,
                    "scopes": session.rules.scopes,
                    "expiresAt": expires_at.to_rfc3339(),
                    "requireConfirmation": session.rules.require_confirmation,
                    "expectedEmail": session.rules.expected_email,
                    "hostedDomain": session.rules.hosted_domain,
                    "partialGrant": session.rules.partial_grant,
                    "client": session.rules.client,
                    "mode": match kind {
                        LinkKind::Connect => "connect",
                        LinkKind::StepUp => "step_up",
                    },
                }),
            )
            .await;
        Ok(Link {
            url: url.to_string(),
            expires_at,
            flow_id: session.flow_id,
            require_confirmation: session.rules.require_confirmation,
        })
    }
}

/// Seals the link's `session`, and checks the `state` `/start` will make from it fits
/// too, so no link fails only after the user consented.
fn seal_link(sealer: &StateSealer, session: &ConnectSession) -> Result<String, ConnectError> {
    let seal = || {
        sealer.seal(Purpose::AuthorizationState, &session.largest_state())?;
        sealer.seal(Purpose::ConnectSession, session)
    };
    seal().map_err(|e| match e {
        SealError::TooLarge => ConnectError::InvalidRequest(format!(
            "the connect link would be longer than {MAX_SEALED_LEN} characters: \
             shorten returnTo or loginHint, or request fewer scopes"
        )),
        SealError::Invalid => ConnectError::Internal("sealing the connect session failed".into()),
    })
}
