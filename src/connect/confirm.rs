//! A held grant confirmed by the application for its logged-in user, with the
//! one-time code the return redirect carried.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::json;

use super::ConnectError;
use super::callback::stored_step_data;
use super::{ConnectService, count_completed};
use crate::callers::Caller;
use crate::ids::{FlowId, UserId};
use crate::store::FlowStep;
use crate::store::flow_log::ClientInfo;
use crate::tokens::Confirmed;

/// [`CONFIRMATIONS_TOTAL`](crate::series::CONFIRMATIONS_TOTAL)'s `outcome` for a confirmed grant; a refused confirm is
/// labelled with its problem code.
pub(crate) const CONFIRMED: &str = "confirmed";

/// A confirm as the application made it.
pub(crate) struct Confirmation {
    pub(crate) flow_id: FlowId,
    /// The user the application checked is logged in (a confirm without one is refused
    /// as one by another user is).
    pub(crate) user_id: Option<UserId>,
    /// The code the return redirect carried (without one, refused as a wrong one is).
    pub(crate) code: Option<SecretString>,
}

impl ConnectService {
    /// Confirms a held grant for `caller`, then records the flow's last steps and its
    /// metrics. An owned task: once the held grant is taken, only this call holds it,
    /// and a caller that hangs up (or the request timeout) must not drop it halfway
    /// between the take and the store (or the put-back).
    pub(crate) async fn confirm(
        self: &Arc<Self>,
        caller: Arc<Caller>,
        client: ClientInfo,
        confirmation: Confirmation,
    ) -> Result<Confirmed, ConnectError> {
        let this = Arc::clone(self);
        self.tokens
            .spawn_owned(async move { this.confirm_and_log(&caller, &client, confirmation).await })
            .await
            .map_err(|e| ConnectError::Internal(format!("confirm task: {e}")))?
    }

    async fn confirm_and_log(
        &self,
        caller: &Caller,
        client: &ClientInfo,
        confirmation: Confirmation,
    ) -> Result<Confirmed, ConnectError> {
        let confirmed = self
            .tokens
            .confirm_grant(
                &confirmation.flow_id,
                confirmation.user_id.as_ref(),
                confirmation.code.as_ref(),
                client,
                &|provider| caller.may_use(provider),
            )
            .await;
        let confirmed = match confirmed {
            Ok(confirmed) => confirmed,
            Err(error) => {
                metrics::counter!(crate::series::CONFIRMATIONS_TOTAL, "outcome" => error.code())
                    .increment(1);
                return Err(error.into());
            }
        };
        let grant = &confirmed.grant;
        let flow_log = self.flow_log.flow(
            &grant.user_id,
            &confirmation.flow_id,
            &grant.provider,
            client,
        );
        flow_log.step(FlowStep::Confirmed, json!({})).await;
        flow_log
            .step(FlowStep::TokensStored, stored_step_data(&confirmed.stored))
            .await;
        flow_log
            .step(
                FlowStep::Completed,
                json!({ "email": grant.user_info.email }),
            )
            .await;
        metrics::counter!(crate::series::CONFIRMATIONS_TOTAL, "outcome" => CONFIRMED).increment(1);
        count_completed(&grant.provider);
        Ok(confirmed)
    }
}
