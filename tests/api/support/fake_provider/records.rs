//! What the service sent the provider and what the provider issued, for assertions.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::FakeProvider;

/// One request received at `/token`, recorded when it was answered.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// The form's `grant_type` (empty when missing).
    pub grant_type: String,
    /// Every form parameter (secrets included: this is test support).
    pub params: HashMap<String, String>,
    /// The HTTP status answered.
    pub status: u16,
}

/// What `/authorize` stored for an issued code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub nonce: Option<String>,
    pub scope: String,
    pub login_hint: Option<String>,
    /// Whether the request said `prompt=consent` (Google then always issues a refresh
    /// token; without it, a returning account gets none).
    pub prompt_consent: bool,
    pub issued_at: DateTime<Utc>,
    /// Set by the first exchange attempt (codes are single use).
    pub used: bool,
}

impl FakeProvider {
    // ----- records -------------------------------------------------------------------

    /// Every `/token` request answered so far, oldest first.
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.lock().token_requests.clone()
    }

    /// `/token` requests received with `grant_type=refresh_token`, whatever their outcome
    /// (counted on arrival, so a delayed one counts already).
    pub fn refresh_count(&self) -> usize {
        self.lock().refresh_count
    }

    /// `/token` requests received with `grant_type=authorization_code`, whatever their
    /// outcome.
    pub fn code_exchange_count(&self) -> usize {
        self.lock().code_exchange_count
    }

    /// Tokens posted to `/revoke`, oldest first (unknown ones included).
    pub fn revoked_tokens(&self) -> Vec<String> {
        self.lock().revoked.clone()
    }

    /// What `/authorize` issued codes for, oldest first.
    pub fn authorizations(&self) -> Vec<Authorization> {
        let mut all: Vec<Authorization> = self.lock().codes.values().cloned().collect();
        all.sort_by_key(|a| a.issued_at);
        all
    }

    /// ID tokens signed so far.
    pub fn issued_id_tokens(&self) -> Vec<String> {
        self.lock().issued_id_tokens.clone()
    }

    pub fn jwks_fetches(&self) -> usize {
        self.lock().jwks_fetches
    }

    pub fn discovery_fetches(&self) -> usize {
        self.lock().discovery_fetches
    }

    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.lock().issued_refresh_tokens.clone()
    }

    pub fn latest_refresh_token(&self) -> Option<String> {
        self.lock().issued_refresh_tokens.last().cloned()
    }

    pub fn latest_access_token(&self) -> Option<String> {
        self.lock().issued_access_tokens.last().cloned()
    }

    /// Whether `token` is a refresh token the provider would accept now.
    pub fn is_refresh_token_valid(&self, token: &str) -> bool {
        let st = self.lock();
        st.refresh_tokens
            .get(token)
            .is_some_and(|rt| rt.valid && !st.grants[rt.grant].revoked)
    }

    /// Refresh tokens the provider would accept now, in issue order.
    pub fn valid_refresh_tokens(&self) -> Vec<String> {
        let issued = self.issued_refresh_tokens();
        issued
            .into_iter()
            .filter(|t| self.is_refresh_token_valid(t))
            .collect()
    }

    /// Everything that must never appear in a log line, error body or metric: every code,
    /// access, refresh and ID token issued, and every client secret (current and past).
    pub fn secrets(&self) -> Vec<String> {
        let st = self.lock();
        st.issued_codes
            .iter()
            .chain(&st.issued_access_tokens)
            .chain(&st.issued_refresh_tokens)
            .chain(&st.issued_id_tokens)
            .chain(&st.past_client_secrets)
            .chain(std::iter::once(&st.client_secret))
            .cloned()
            .collect()
    }
}
