//! How a test changes the provider's behaviour: scripted refresh answers, tampered ID
//! tokens, token-endpoint failures, a denied authorization, a metadata outage.

use std::time::Duration;

use super::FakeProvider;
use super::routes::RefreshChaos;

/// One scripted answer of the `refresh_token` grant (see [`FakeProvider::refresh_failure`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefreshBehaviour {
    /// `400 {"error":"invalid_grant"}` (the refresh token stays valid at the provider).
    InvalidGrant,
    /// That HTTP status with `{"error":"server_error"}` (or `temporarily_unavailable` for
    /// 429 and 503).
    Status(u16),
    /// Wait, then answer normally (for timeouts and concurrent-refresh races).
    Delay(Duration),
    /// Decide the answer at once (a rotating provider rotates the refresh token now),
    /// then hold it this long before sending it: a caller that gives up meanwhile has
    /// spent the refresh token without seeing the new one.
    HoldAnswer(Duration),
    /// `200` with exactly this body (a malformed token response).
    RawBody(String),
    /// That status with exactly this body (a provider's own error answer, as its
    /// documentation prints it). The refresh token stays valid at the provider.
    ErrorBody(u16, String),
    /// Google's `invalid_grant` with `error_subtype: invalid_rapt` (a session-control
    /// policy requires a new sign-in).
    InvalidRapt,
    /// Google's `admin_policy_enforced`.
    AdminPolicyEnforced,
}

impl RefreshBehaviour {
    /// This behaviour `n` times, e.g. `refresh_failure(RefreshBehaviour::Status(500).times(2))`.
    pub fn times(self, n: usize) -> Vec<Self> {
        vec![self; n]
    }
}

/// Ways to spoil the ID token of the `authorization_code` grant
/// (see [`FakeProvider::tamper_id_token`]). Stays in force until set back to `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IdTokenTamper {
    /// A correct ID token.
    #[default]
    None,
    /// `aud` is another client's id.
    WrongAudience,
    /// `iss` is another issuer.
    WrongIssuer,
    /// `nonce` differs from the authorization request's.
    WrongNonce,
    /// `exp` one hour in the past.
    Expired,
    /// Signed with the other RSA key, under the published `kid`.
    BadSignature,
    /// No `id_token` in the token response at all.
    Omit,
}

impl FakeProvider {
    // ----- behaviour knobs -----------------------------------------------------------

    /// The account that signs in from now on (ID tokens, `/userinfo`).
    pub fn set_profile(&self, profile: super::Profile) {
        self.lock().profile = profile;
    }

    /// Lifetime of the access tokens issued from now on (default 3600). `expires_in` is
    /// this clamped to `>= 0`; `0` or less gives tokens that are already expired.
    pub fn set_access_token_ttl(&self, secs: i64) {
        self.lock().access_token_ttl = secs;
    }

    /// `true`: the code grant answers without `refresh_token` (a re-consent at Google).
    pub fn omit_refresh_token_on_code(&self, omit: bool) {
        self.lock().omit_refresh_token_on_code = omit;
    }

    /// `true` (the default, as Google): the refresh grant answers without
    /// `refresh_token`. `false`: it echoes the same refresh token back (unless rotation
    /// is on, which always returns the new one).
    pub fn omit_refresh_token_on_refresh(&self, omit: bool) {
        self.lock().omit_refresh_token_on_refresh = omit;
    }

    /// `true`: every refresh issues a new refresh token and invalidates the one used, so
    /// a reuse answers `invalid_grant`.
    pub fn rotate_refresh_tokens(&self, rotate: bool) {
        self.lock().rotate_refresh_tokens = rotate;
    }

    /// `true`: the refresh grant of a grant with `openid` answers with a new ID token
    /// (no nonce), as Google does.
    pub fn id_token_on_refresh(&self, on: bool) {
        self.lock().id_token_on_refresh = on;
    }

    /// A grant made outside any flow (as if through another service), of `profile`'s
    /// account for `scope`, to the current client: its refresh token, for an import.
    pub fn mint_grant(&self, profile: &super::Profile, scope: &str) -> String {
        let mut st = self.lock();
        let granted_at = st.now();
        let client_id = st.client_id.clone();
        st.grants.push(super::state::Grant {
            client_id,
            scope: scope.to_string(),
            profile: profile.clone(),
            revoked: false,
            granted_at,
            refresh_expires_at: None,
        });
        let grant = st.grants.len() - 1;
        st.issue_refresh_token(grant)
    }

    /// Appends scripted answers for the next refresh-grant requests, one per request (after
    /// client authentication succeeded); when the script is empty the grant answers
    /// normally.
    pub fn refresh_failure(&self, behaviours: impl IntoIterator<Item = RefreshBehaviour>) {
        self.lock().refresh_script.extend(behaviours);
    }

    /// Drops whatever is left of the refresh script.
    /// When no scripted behaviour is queued, refreshes fail and are held at random
    /// (`None`: answered at once).
    pub fn set_refresh_chaos(&self, chaos: Option<RefreshChaos>) {
        self.lock().chaos = chaos;
    }

    /// How many refresh requests presented a refresh token this provider had already
    /// rotated out (a rotating provider's `invalid_grant` for a spent token).
    pub fn spent_refresh_tokens_presented(&self) -> usize {
        self.lock().spent_refresh_tokens_presented
    }

    pub fn clear_refresh_failures(&self) {
        self.lock().refresh_script.clear();
    }

    /// The next `times` requests to `/token` (any grant, before client authentication)
    /// answer `status` with an OAuth error body.
    pub fn fail_token_endpoint_with_status(&self, status: u16, times: usize) {
        self.lock()
            .token_failures
            .extend(std::iter::repeat_n(status, times));
    }

    /// Spoils the ID token of every code exchange from now on, until set to
    /// [`IdTokenTamper::None`].
    pub fn tamper_id_token(&self, tamper: IdTokenTamper) {
        self.lock().tamper = tamper;
    }

    /// The user unticks these scopes on the consent screen from now on: grants leave
    /// them out (never `openid`). Empty: every requested scope is granted.
    pub fn untick_scopes(&self, scopes: &[&str]) {
        self.lock().unticked = scopes.iter().map(|s| (*s).to_string()).collect();
    }

    /// Time-limited access from now on: code exchanges answer
    /// `refresh_token_expires_in: secs`, and a grant's refresh token is refused
    /// ("Token has been expired or revoked.") once that long has passed on the
    /// provider's clock. `None`: unlimited.
    pub fn set_refresh_token_lifetime(&self, secs: Option<i64>) {
        self.lock().refresh_token_lifetime = secs;
    }

    /// `true`: the client is in Google's "Testing" publishing status: grants holding more
    /// than `openid email profile` are refused ("Token has been expired or revoked.")
    /// 7 days after consent, on the provider's clock.
    pub fn set_testing_mode(&self, testing: bool) {
        self.lock().testing_mode = testing;
    }

    /// Moves the provider's clock (grant ages and expiries) forward by `secs`.
    pub fn advance_clock(&self, secs: i64) {
        self.lock().clock_offset += chrono::Duration::seconds(secs);
    }

    /// Google's limit of live refresh tokens per account and client (default 100): a
    /// code exchange past it ends the account's oldest grant ("Token has been expired or
    /// revoked." from then on).
    pub fn set_grant_limit(&self, limit: usize) {
        self.lock().grant_limit = limit;
    }

    /// The code grant redeems the code at once, then holds its answer this long: a
    /// callback that gives up meanwhile has spent the code without seeing the tokens.
    pub fn set_code_exchange_hold(&self, hold: Duration) {
        self.lock().code_exchange_hold = hold;
    }

    /// `/revoke` waits this long before it answers (a hanging endpoint).
    pub fn set_revocation_delay(&self, delay: Duration) {
        self.lock().revocation_delay = delay;
    }

    /// `false`: `/revoke` answers 503 (nothing is revoked or recorded) until set back.
    pub fn set_revocation_available(&self, available: bool) {
        self.lock().revocation_unavailable = !available;
    }

    /// `true`: `/authorize` redirects with `error=access_denied&state=…`.
    pub fn deny_authorization(&self, deny: bool) {
        self.lock().deny = deny;
    }

    /// `false`: discovery and `/jwks` answer `503` (still counted as fetches), as during
    /// an outage of the provider's metadata endpoints. `true` (the default): they answer.
    pub fn set_discovery_available(&self, available: bool) {
        self.lock().discovery_unavailable = !available;
    }
}
