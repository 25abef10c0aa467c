//! The account a grant belongs to: from the verified ID token at an OpenID provider;
//! from the user endpoint at an OAuth 2 one (GitHub's `GET /user`, and its verified
//! primary email from `GET /user/emails`).

use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

use super::http::{classify_reqwest, is_unavailable_status};
use super::{IdTokenProblem, OidcProvider, ProviderError, ProviderTokens};
use crate::store::{FlowStep, UserInfo};

impl OidcProvider {
    /// The flow-log step that names the account: its ID token verified, or (OAuth 2)
    /// its user endpoint read.
    pub(crate) fn account_step(&self) -> FlowStep {
        match self.config.profile.endpoints {
            None => FlowStep::IdTokenVerified,
            Some(_) => FlowStep::AccountFetched,
        }
    }

    /// The account `tokens` were granted for: the ID token's (verified against
    /// `nonce`, for `client`), or the user endpoint's for an OAuth 2 provider.
    #[tracing::instrument(skip_all, fields(provider = %self.config.name))]
    pub(crate) async fn account(
        &self,
        tokens: &ProviderTokens,
        nonce: &str,
        client: Option<&str>,
    ) -> Result<UserInfo, ProviderError> {
        let Some(endpoints) = &self.config.profile.endpoints else {
            let id_token = tokens
                .id_token
                .as_ref()
                .ok_or(ProviderError::IdToken(IdTokenProblem::Missing))?;
            return self.verify_id_token(id_token, nonce, client).await;
        };
        self.user_account(&endpoints.userinfo, &tokens.access_token)
            .await
    }

    /// The account a refresh's answer belongs to: its ID token's (which carries no
    /// nonce), or the user endpoint's for an OAuth 2 provider. `None` when an OpenID
    /// provider answered without an ID token.
    #[tracing::instrument(skip_all, fields(provider = %self.config.name))]
    pub(crate) async fn refreshed_account(
        &self,
        id_token: Option<&SecretString>,
        access_token: &SecretString,
        client: Option<&str>,
    ) -> Result<Option<UserInfo>, ProviderError> {
        match &self.config.profile.endpoints {
            None => match id_token {
                Some(id_token) => self
                    .verify_refreshed_id_token(id_token, client)
                    .await
                    .map(Some),
                None => Ok(None),
            },
            Some(endpoints) => self
                .user_account(&endpoints.userinfo, access_token)
                .await
                .map(Some),
        }
    }

    /// The account the user endpoint at `userinfo` names for `access_token` (GitHub's
    /// verified primary email from its emails endpoint).
    async fn user_account(
        &self,
        userinfo: &Url,
        access_token: &SecretString,
    ) -> Result<UserInfo, ProviderError> {
        let user = self.user_api(userinfo, access_token).await?;
        let text = |field: &str| user.get(field).and_then(Value::as_str).map(str::to_string);
        let sub = match user.get("sub").or_else(|| user.get("id")) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(ProviderError::Malformed(
                    "the user endpoint names no account (sub or id)".into(),
                ));
            }
        };
        let mut info = UserInfo {
            sub,
            email: text("email"),
            email_verified: user.get("email_verified").and_then(Value::as_bool),
            name: text("name").or_else(|| text("login")),
            picture: text("picture").or_else(|| text("avatar_url")),
            hd: None,
        };
        if self.config.profile.quirks.emails_endpoint {
            // The user's public email is theirs to set: only the verified primary one
            // of the emails endpoint counts as verified.
            info.email_verified = Some(false);
            let mut emails = userinfo.clone();
            emails
                .path_segments_mut()
                .map_err(|()| ProviderError::Malformed("the user endpoint's URL".into()))?
                .push("emails");
            match self.user_api(&emails, access_token).await {
                Ok(list) => {
                    let primary = list.as_array().into_iter().flatten().find(|e| {
                        e["primary"].as_bool() == Some(true)
                            && e["verified"].as_bool() == Some(true)
                    });
                    if let Some(email) = primary.and_then(|e| e["email"].as_str()) {
                        info.email = Some(email.to_string());
                        info.email_verified = Some(true);
                    }
                }
                // Without `user:email` the list is refused: the account stands, its
                // email unverified.
                Err(e) => tracing::info!(error = %e, "the emails endpoint did not answer a list"),
            }
        }
        Ok(info)
    }

    /// A `GET` of the provider's user API with the access token, as JSON. An error never
    /// quotes the answer (it may hold the token back).
    async fn user_api(
        &self,
        url: &Url,
        access_token: &SecretString,
    ) -> Result<Value, ProviderError> {
        let response = self
            .http
            .0
            .get(url.clone())
            .bearer_auth(access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| classify_reqwest(e).into_provider_error())?;
        let status = response.status();
        if is_unavailable_status(status) {
            return Err(ProviderError::Unavailable(format!(
                "the user endpoint answered HTTP {}",
                status.as_u16()
            )));
        }
        if !status.is_success() {
            return Err(ProviderError::Rejected {
                error: format!("user_endpoint_http_{}", status.as_u16()),
            });
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| classify_reqwest(e).into_provider_error())?;
        serde_json::from_slice(&body).map_err(|e| {
            ProviderError::Malformed(format!(
                "the user endpoint's answer is not JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }
}
