//! A flow finished at the callback, once its `state` proved authentic, unexpired and
//! this browser's: the code exchanged, the ID token verified, the session's account
//! rules and partial-grant policy applied, and the grant held for confirmation or
//! stored, every step logged and counted.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::Utc;
use secrecy::SecretString;
use serde_json::json;

use super::ConnectError;
use super::{ConnectService, count_completed, count_failed};
use crate::oauth::flow::FlowState;
use crate::oauth::grant::{self, PartialGrant};
use crate::oauth::provider::{OidcProvider, ProviderError, ProviderTokens};
use crate::store::flow_log::ClientInfo;
use crate::store::{FlowStep, FlowSteps, UserInfo};
use crate::tokens::{Stored, TokenSet};

/// What the callback asks of a provider: an [`OidcProvider`] in service, a scripted
/// one in the unit tests (as the refresh has its `TokenEndpoint`).
#[async_trait]
pub(crate) trait Consent: Send + Sync {
    fn name(&self) -> &str;
    /// The scopes a flow asks for: the provider's defaults and `extra_scopes`.
    fn requested_scopes(&self, extra_scopes: &[String]) -> Vec<String>;
    /// Redeems an authorization code (never retried: a code is single-use).
    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &str,
        client: Option<&str>,
    ) -> Result<ProviderTokens, ProviderError>;
    /// The flow-log step that names the account (`id_token_verified`, or
    /// `account_fetched` at an OAuth 2 provider).
    fn account_step(&self) -> FlowStep;
    /// The account the tokens were granted for: the ID token verified (signature,
    /// `iss`, `aud`, `exp`, `nonce`), or an OAuth 2 provider's user endpoint.
    async fn account(
        &self,
        tokens: &ProviderTokens,
        nonce: &str,
        client: Option<&str>,
    ) -> Result<UserInfo, ProviderError>;
}

#[async_trait]
impl Consent for OidcProvider {
    fn name(&self) -> &str {
        OidcProvider::name(self)
    }

    fn requested_scopes(&self, extra_scopes: &[String]) -> Vec<String> {
        OidcProvider::requested_scopes(self, extra_scopes)
    }

    async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &str,
        client: Option<&str>,
    ) -> Result<ProviderTokens, ProviderError> {
        OidcProvider::exchange_code(self, code, pkce_verifier, redirect_uri, client).await
    }

    fn account_step(&self) -> FlowStep {
        OidcProvider::account_step(self)
    }

    async fn account(
        &self,
        tokens: &ProviderTokens,
        nonce: &str,
        client: Option<&str>,
    ) -> Result<UserInfo, ProviderError> {
        OidcProvider::account(self, tokens, nonce, client).await
    }
}

/// How a finished flow ended.
pub(crate) enum Completed {
    /// The grant is held until the application confirms it with this one-time code.
    Held { code: SecretString },
    /// The grant is the user's connection now.
    Stored { email: Option<String> },
}

/// What the callback brought back, as the browser's request carried it.
pub(crate) struct Callback {
    /// The provider's authorization code.
    pub(crate) code: Option<String>,
    /// The provider's `error` parameter, already reduced to a safe code.
    pub(crate) provider_error: Option<String>,
}

impl ConnectService {
    /// Finishes `flow`, whose `state` checked out. From the first step the flow is an
    /// owned task: once the provider redeems the code, the tokens exist only in this
    /// process, and a browser that leaves (or the request timeout) must not drop them;
    /// the task stores the grant and completes the flow log whether or not anyone
    /// still waits for its answer.
    pub(crate) async fn finish(
        self: &Arc<Self>,
        provider: Arc<dyn Consent>,
        flow: FlowState,
        callback: Callback,
        client: ClientInfo,
    ) -> Result<Completed, ConnectError> {
        let flow_log = self
            .flow_log
            .flow(&flow.user_id, &flow.flow_id, provider.name(), &client);
        flow_log
            .step(
                FlowStep::CallbackReceived,
                json!({ "hasCode": callback.code.is_some(), "providerError": callback.provider_error }),
            )
            .await;
        flow_log.step(FlowStep::StateVerified, json!({})).await;
        let this = Arc::clone(self);
        self.tokens
            .spawn_owned(async move { this.run(provider.as_ref(), &flow, callback, &client).await })
            .await
            .map_err(|e| ConnectError::Internal(format!("callback task: {e}")))?
    }

    /// The steps, then the outcome in the flow log and the metrics.
    async fn run(
        &self,
        provider: &dyn Consent,
        flow: &FlowState,
        callback: Callback,
        client: &ClientInfo,
    ) -> Result<Completed, ConnectError> {
        let name = provider.name();
        let flow_log = self
            .flow_log
            .flow(&flow.user_id, &flow.flow_id, name, client);
        match self.steps(provider, flow, callback, &flow_log).await {
            Ok(completed) => {
                // A held grant completes its flow at the confirm.
                if matches!(completed, Completed::Stored { .. }) {
                    count_completed(name);
                }
                Ok(completed)
            }
            Err((step, error)) => {
                count_failed(name, &error);
                flow_log.failed(step, &error).await;
                Err(error)
            }
        }
    }

    /// Errors carry the step that failed.
    async fn steps(
        &self,
        provider: &dyn Consent,
        flow: &FlowState,
        callback: Callback,
        flow_log: &FlowSteps<'_>,
    ) -> Result<Completed, (FlowStep, ConnectError)> {
        let name = provider.name();
        if let Some(code) = callback.provider_error {
            return Err((
                FlowStep::CallbackReceived,
                ConnectError::AuthorizationDenied(code),
            ));
        }
        let code = callback
            .code
            .filter(|c| !c.is_empty() && c.len() <= 4096)
            .ok_or((
                FlowStep::CallbackReceived,
                ConnectError::InvalidRequest("the callback carries no code".into()),
            ))?;
        let tokens = provider
            .exchange_code(
                &code,
                &flow.pkce_verifier,
                &self.settings.redirect_uri(name),
                flow.rules.client.as_deref(),
            )
            .await
            .map_err(|e| match e {
                ProviderError::InvalidGrant(_) => {
                    (FlowStep::CodeExchanged, ConnectError::CodeRejected)
                }
                other => (FlowStep::CodeExchanged, ConnectError::from(other)),
            })?;
        flow_log
            .step(
                FlowStep::CodeExchanged,
                json!({
                    "hasRefreshToken": tokens.refresh_token.is_some(),
                    "hasIdToken": tokens.id_token.is_some(),
                    "scope": tokens.scope,
                    "expiresIn": tokens.expires_in.map(|d| d.as_secs()),
                }),
            )
            .await;
        let account_step = provider.account_step();
        let user_info = provider
            .account(&tokens, &flow.nonce, flow.rules.client.as_deref())
            .await
            .map_err(|e| (account_step, ConnectError::from(e)))?;
        flow_log
            .step(
                account_step,
                json!({ "sub": user_info.sub, "email": user_info.email, "emailVerified": user_info.email_verified }),
            )
            .await;
        check_account(flow, &user_info).map_err(|e| (account_step, e))?;
        let requested = provider.requested_scopes(&flow.rules.scopes);
        let mut fresh = TokenSet::from_provider(&tokens, None, Utc::now());
        if fresh.scope.is_none() {
            // RFC 6749 §5.1: no `scope` in the answer means the grant is what was asked.
            fresh.scope = Some(requested.join(" "));
        }
        let missing = grant::missing(&requested, &fresh.granted_scopes());
        let policy = flow
            .rules
            .partial_grant
            .unwrap_or(self.settings.flow.partial_grant);
        if !missing.is_empty() && policy == PartialGrant::Reject {
            // Nothing is stored: a connection the user had stays as it was. The grant is
            // not revoked either: Google's revocation would end every scope this project
            // holds for the account, that connection's included.
            return Err((
                FlowStep::TokensStored,
                ConnectError::ScopesNotGranted { missing },
            ));
        }
        if flow.rules.require_confirmation {
            fresh.requested_scopes = requested;
            let held = self
                .tokens
                .hold_grant(
                    &flow.flow_id,
                    &flow.user_id,
                    name,
                    &fresh,
                    user_info.clone(),
                    self.settings.flow.confirmation_ttl,
                )
                .await
                .map_err(|e| (FlowStep::AwaitingConfirmation, e.into()))?;
            flow_log
                .step(
                    FlowStep::AwaitingConfirmation,
                    json!({ "confirmBy": held.deadline.to_rfc3339(), "sub": user_info.sub }),
                )
                .await;
            return Ok(Completed::Held { code: held.code });
        }
        let stored = self
            .tokens
            .store_grant(&flow.user_id, name, &fresh, user_info.clone(), &requested)
            .await
            .map_err(|e| (FlowStep::TokensStored, e.into()))?;
        flow_log
            .step(FlowStep::TokensStored, stored_step_data(&stored))
            .await;
        flow_log
            .step(FlowStep::Completed, json!({ "email": user_info.email }))
            .await;
        Ok(Completed::Stored {
            email: user_info.email,
        })
    }
}

/// The session's account constraints, against the verified ID token: `expectedEmail`
/// must be the token's email, verified; `hostedDomain` its `hd`. Both compared without
/// regard to ASCII case.
fn check_account(flow: &FlowState, user: &UserInfo) -> Result<(), ConnectError> {
    let email_ok = flow.rules.expected_email.as_ref().is_none_or(|expected| {
        user.email_verified == Some(true)
            && user
                .email
                .as_ref()
                .is_some_and(|e| e.eq_ignore_ascii_case(expected))
    });
    let domain_ok = flow.rules.hosted_domain.as_ref().is_none_or(|expected| {
        user.hd
            .as_ref()
            .is_some_and(|hd| hd.eq_ignore_ascii_case(expected))
    });
    let sub_ok = flow
        .rules
        .expected_sub
        .as_ref()
        .is_none_or(|expected| *expected == user.sub);
    if email_ok && domain_ok && sub_ok {
        Ok(())
    } else {
        Err(ConnectError::AccountNotAllowed)
    }
}

/// The `tokens_stored` step's details: whether a connection was replaced, and by
/// another account (never silent: `accountChanged` and `previousSub`).
pub(super) fn stored_step_data(stored: &Stored) -> serde_json::Value {
    let mut data = json!({
        "replaced": stored.replaced,
        "keptRefreshToken": stored.kept_refresh_token,
        "hasRefreshToken": stored.has_refresh_token,
        "accountChanged": stored.account_changed.is_some(),
        "grantedScopes": stored.grant.granted_scopes,
        "scopesChanged": stored.scopes_changed,
    });
    let missing = grant::missing(&stored.grant.requested_scopes, &stored.grant.granted_scopes);
    if !missing.is_empty() {
        data["partialGrant"] = json!(true);
        data["missingScopes"] = json!(missing);
    }
    if let Some(at) = stored.grant.refresh_token_expires_at {
        data["refreshTokenExpiresAt"] = json!(at);
    }
    if let Some(minted) = stored.account_grants {
        data["accountGrants"] = json!(minted);
        data["grantLimitWarning"] = json!(stored.grant_limit_warning);
    }
    if let Some(previous) = &stored.account_changed {
        data["previousSub"] = json!(previous.sub);
        data["previousEmail"] = json!(previous.email);
    }
    data
}
