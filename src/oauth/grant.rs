//! What a grant covers and how it ends (Google's clocks first, others' by their
//! [`Lifetimes`]): the scope ledger's rules, the cause a
//! dead grant died of, and the forecast of when a live one will.
//!
//! Google ends a refresh token when the user revokes it, after six months unused, when
//! an app in "Testing" publishing status holds more than the basic scopes for 7 days,
//! at the end of time-limited access, when a Workspace policy restricts a scope
//! (`admin_policy_enforced`) or demands a new sign-in (`invalid_rapt`), on a password
//! change (Gmail scopes), and when the account holds more than 100 refresh tokens for
//! the client. Its refusal says little (`invalid_grant`, "Token has been expired or
//! revoked."), so the cause is read from what it does say and, failing that, from the
//! ledger's clocks (see [`cause_of`]).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

pub(crate) use crate::config::{PartialGrant, PublishingStatus};

use super::provider::GrantRefusal;
use crate::store::{Connection, GrantLedger};

/// How long Google keeps a grant of an app in "Testing" status that holds more than
/// the basic scopes.
pub(crate) const TESTING_GRANT_LIFE: Duration = Duration::from_secs(7 * 86_400);
/// How long Google keeps a refresh token nobody uses ("six months"; the shorter
/// reading, so the forecast errs early).
pub(crate) const IDLE_LIMIT: Duration = Duration::from_secs(180 * 86_400);
/// A connection whose grant is predicted to end within this long is `at_risk`.
pub(crate) const AT_RISK_WITHIN: Duration = Duration::from_secs(2 * 86_400);
/// Clock differences between Google and us that still count as "on time".
const SLACK: Duration = Duration::from_secs(3_600);

/// The scopes every connection asks for; a grant holding only these is "basic" (the
/// Testing-status expiry spares it).
const BASIC_SCOPES: [&str; 3] = [
    "openid",
    "https://www.googleapis.com/auth/userinfo.email",
    "https://www.googleapis.com/auth/userinfo.profile",
];

/// A scope as providers answer it: Google accepts `email` and `profile` in a request
/// and names them by URL in the token response; Microsoft names a Microsoft Graph
/// permission asked for as `Mail.Read` by its resource URL,
/// `https://graph.microsoft.com/Mail.Read`.
pub(crate) fn canonical(scope: &str) -> &str {
    match scope {
        "email" => "https://www.googleapis.com/auth/userinfo.email",
        "profile" => "https://www.googleapis.com/auth/userinfo.profile",
        other => other
            .strip_prefix("https://graph.microsoft.com/")
            .filter(|short| !short.is_empty())
            .unwrap_or(other),
    }
}

/// Scopes that ask for a kind of token, not a permission: providers do not name them
/// in the grant (Microsoft's answer leaves out `offline_access`), so they are never
/// missing.
const PROTOCOL_SCOPES: [&str; 1] = ["offline_access"];

/// A space-separated scope string (a token response's `scope`) as a list, each scope
/// once, in order.
pub(crate) fn parse_scopes(text: &str) -> Vec<String> {
    merge(
        &[],
        &text
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>(),
    )
}

/// `first` then what `then` adds, each scope once (compared as Google means them).
pub(crate) fn merge(first: &[String], then: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(first.len() + then.len());
    for scope in first.iter().chain(then) {
        if !out.iter().any(|s| canonical(s) == canonical(scope)) {
            out.push(scope.clone());
        }
    }
    out
}

/// The scopes of `wanted` that `granted` does not hold.
pub(crate) fn missing(wanted: &[String], granted: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for scope in wanted {
        if PROTOCOL_SCOPES.contains(&scope.as_str()) {
            continue;
        }
        let held = granted.iter().any(|g| canonical(g) == canonical(scope));
        if !held && !out.iter().any(|s| canonical(s) == canonical(scope)) {
            out.push(scope.clone());
        }
    }
    out
}

fn only_basic(granted: &[String]) -> bool {
    granted.iter().all(|s| BASIC_SCOPES.contains(&canonical(s)))
}

/// Why a grant is dead or its refresh failed: the `cause` code of a 409 body, the flow
/// log, the connections list and the metrics.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray, strum::EnumString,
)]
#[strum(serialize_all = "snake_case")]
pub enum Cause {
    RevokedByUser,
    TestingModeExpired,
    IdleExpired,
    TokenLimitEvicted,
    TimeLimitedAccessExpired,
    AdminPolicyEnforced,
    SessionReauthRequired,
    PasswordChanged,
    RefreshOutcomeUnknown,
    NoRefreshToken,
    UnknownInvalidGrant,
    ClientCredentialsInvalid,
    /// Google disabled the account, suspecting it was hijacked (a RISC event).
    AccountDisabled,
    /// Consent for a scope is missing (Microsoft Entra's AADSTS65001).
    ConsentRequired,
}

impl Cause {
    /// The stable code (strum's, from the variant's name).
    pub(crate) fn code(self) -> &'static str {
        self.into()
    }

    /// A stored code as a cause. Rows written before causes were told apart say
    /// `invalid_grant`, which is [`Cause::UnknownInvalidGrant`].
    pub(crate) fn from_code(code: &str) -> Option<Self> {
        if code == "invalid_grant" {
            return Some(Self::UnknownInvalidGrant);
        }
        code.parse().ok()
    }

    /// What the application and its user should do.
    pub(crate) fn remedy(self) -> &'static str {
        match self {
            Self::RevokedByUser => {
                "The user removed this app's access in their account at the provider (or it ended for a reason the provider does not name). Ask them to connect again if they want to."
            }
            Self::TestingModeExpired => {
                "The OAuth client is in Google's Testing publishing status, whose grants end after 7 days. Ask the user to connect again; publish the app (Google Cloud console, OAuth consent screen) to stop this."
            }
            Self::IdleExpired => {
                "The grant went unused longer than the provider keeps idle grants (Google: about six months; Microsoft: 90 days) and it ended it. Ask the user to connect again; AXNT_KEEPALIVE_DAYS keeps idle grants alive."
            }
            Self::TokenLimitEvicted => {
                "The Google account holds too many grants for this OAuth client (Google keeps 100) and this, the oldest, was ended. Ask the user to connect again, and stop creating new grants for the same account."
            }
            Self::TimeLimitedAccessExpired => {
                "The user granted access for a limited time, which has ended. Ask them to connect again, for longer if they agree."
            }
            Self::AdminPolicyEnforced => {
                "An administrator of the user's organisation restricted this app or one of its scopes (Google Workspace API controls, a Microsoft Entra Conditional Access policy). The administrator must allow the app before the user connects again."
            }
            Self::SessionReauthRequired => {
                "The user's organisation requires them to sign in again (Google Workspace session control; Microsoft Entra multi-factor authentication, Conditional Access or sign-in frequency). Ask them to connect again."
            }
            Self::PasswordChanged => {
                "The user's password was changed or reset, or their sessions were revoked, which ended the grant (at Google when it held Gmail scopes; at Microsoft always). Ask them to connect again."
            }
            Self::RefreshOutcomeUnknown => {
                "A refresh request's answer was lost and the provider then refused the refresh token, most likely spent by that request. Ask the user to connect again."
            }
            Self::NoRefreshToken => {
                "The grant gave no refresh token and its access token expired. Ask the user to connect again."
            }
            Self::UnknownInvalidGrant => {
                "The provider refused the grant (invalid_grant) without saying why. Ask the user to connect again."
            }
            Self::ClientCredentialsInvalid => {
                "The provider rejected this service's OAuth client id or secret (wrong, or expired); the user's grant is untouched. An operator must fix the client credentials (AXNT_<NAME>_CLIENT_SECRET, or client_secret in the provider's secret)."
            }
            Self::AccountDisabled => {
                "Google disabled this Google account, suspecting it was hijacked, and ended its grants. Once the user has recovered the account, they can connect again."
            }
            Self::ConsentRequired => {
                "The user, or their organisation's administrator, has not consented to a scope this service asks for. Ask the user to connect again; where users may not consent themselves, an administrator must first grant consent for the organisation (Microsoft Entra admin center, Enterprise applications, Permissions)."
            }
        }
    }
}

/// What is known of a provider's clocks (its profile's part in the forecast and in
/// the causes of dead grants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lifetimes {
    /// Google's own: the Testing status's 7 days and the 100 grants per account and
    /// client (with [`GrantRules::publishing`] and [`GrantRules::grant_limit`]).
    pub(crate) google: bool,
    /// A refresh token unused this long ends.
    pub(crate) idle: Option<Duration>,
}

impl Lifetimes {
    /// Google's clocks.
    pub(crate) const GOOGLE: Self = Self {
        google: true,
        idle: Some(IDLE_LIMIT),
    };
    /// No clock known: only what the provider's answers say (and their own expiry
    /// times) predicts an end.
    pub(crate) const UNKNOWN: Self = Self {
        google: false,
        idle: None,
    };
}

/// The grant rules of one provider of a deployment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrantRules {
    /// Google's publishing status (counts only where [`Lifetimes::google`]).
    pub(crate) publishing: PublishingStatus,
    /// Live refresh tokens Google keeps per account and client.
    pub(crate) grant_limit: u32,
    pub(crate) lifetimes: Lifetimes,
}

impl Default for GrantRules {
    fn default() -> Self {
        Self {
            publishing: PublishingStatus::Unknown,
            grant_limit: 100,
            lifetimes: Lifetimes::GOOGLE,
        }
    }
}

impl GrantRules {
    /// These rules for a provider with `lifetimes`.
    pub(crate) fn with(self, lifetimes: Lifetimes) -> Self {
        Self { lifetimes, ..self }
    }

    /// Whether refresh tokens minted per account are counted against the limit.
    pub(crate) fn counts_grants(self) -> bool {
        self.lifetimes.google
    }

    /// From this many minted grants an account is warned about (90 % of the limit,
    /// at least one below it).
    pub(crate) fn warn_at(self) -> usize {
        let limit = self.grant_limit as usize;
        limit.saturating_sub((limit / 10).max(1))
    }
}

/// Refresh tokens minted for the account after `consented` (`mints` in epoch ms):
/// past the limit, Google has ended the grant consented then.
pub(crate) fn minted_after(mints: &[i64], consented: DateTime<Utc>) -> usize {
    mints
        .iter()
        .filter(|m| **m > consented.timestamp_millis())
        .count()
}

/// The last time the refresh token was used: its last refresh, else its consent, else
/// (rows older than the ledger) the row's last token write.
pub(crate) fn last_token_use(row: &Connection) -> DateTime<Utc> {
    let grant = &row.grant;
    grant
        .last_refreshed_at
        .into_iter()
        .chain(grant.consented_at)
        .max()
        .unwrap_or(row.updated_at)
}

fn after(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| at.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Why the provider refused `row`'s refresh token at `now`: what the refusal says
/// first, then the unknown outcome of an earlier request, then the clocks.
/// `newer_mints` is how many refresh tokens were minted for the account after this
/// grant's consent (`None`: not known).
pub(crate) fn cause_of(
    refusal: GrantRefusal,
    row: &Connection,
    rules: GrantRules,
    newer_mints: Option<usize>,
    now: DateTime<Utc>,
) -> Cause {
    match refusal {
        GrantRefusal::Named(cause) => return cause,
        GrantRefusal::ExpiredOrRevoked | GrantRefusal::Unspecified => {}
    }
    if row.refresh.unknown_since_ms.is_some() {
        return Cause::RefreshOutcomeUnknown;
    }
    let google = rules.lifetimes.google;
    if google && newer_mints.is_some_and(|n| n >= rules.grant_limit as usize) {
        return Cause::TokenLimitEvicted;
    }
    let grant = &row.grant;
    if grant
        .refresh_token_expires_at
        .is_some_and(|at| at <= after(now, SLACK).timestamp())
    {
        return Cause::TimeLimitedAccessExpired;
    }
    // A declared Testing status explains a death on its clock first; an undeclared
    // one only when six months of disuse do not explain it already.
    let testing = google && testing_expiry_fits(grant, rules, now);
    if testing && rules.publishing == PublishingStatus::Testing {
        return Cause::TestingModeExpired;
    }
    if let Some(idle) = rules.lifetimes.idle
        && now >= after(last_token_use(row), idle)
    {
        return Cause::IdleExpired;
    }
    if testing {
        return Cause::TestingModeExpired;
    }
    match refusal {
        GrantRefusal::ExpiredOrRevoked => Cause::RevokedByUser,
        _ => Cause::UnknownInvalidGrant,
    }
}

/// Whether a refusal at `now` fits the Testing-status expiry: the grant holds more than
/// the basic scopes, is at least 7 days old, and (status unknown) was never refreshed
/// after its 7th day, which a Testing grant cannot be.
fn testing_expiry_fits(grant: &GrantLedger, rules: GrantRules, now: DateTime<Utc>) -> bool {
    let Some(consented) = grant.consented_at else {
        return false;
    };
    if only_basic(&grant.granted_scopes) || rules.publishing == PublishingStatus::Production {
        return false;
    }
    let ends = after(consented, TESTING_GRANT_LIFE);
    if now < after(ends, Duration::ZERO) - TimeDelta::from_std(SLACK).unwrap_or_default() {
        return false;
    }
    match rules.publishing {
        PublishingStatus::Testing => true,
        _ => grant.last_refreshed_at.is_none_or(|at| at < ends),
    }
}

/// `health` of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = ConnectionHealth)]
pub enum Health {
    /// Working, and no clock ends it soon.
    Ok,
    /// Working, but predicted to end within two days, or its refreshes are failing.
    AtRisk,
    /// The grant is dead: the user must connect again.
    Dead,
}

/// Why a grant is predicted to end when it is (`predictedExpiryReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryReason {
    /// The Testing publishing status's 7 days after consent.
    TestingMode,
    /// The end of the time-limited access the user chose.
    TimeLimitedAccess,
    /// The provider's idle limit (Google: six months; Microsoft: 90 days) after the
    /// refresh token was last used.
    IdleLimit,
}

/// A connection's health and when its grant is predicted to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forecast {
    pub(crate) health: Health,
    pub(crate) predicted_expiry: Option<DateTime<Utc>>,
    pub(crate) reason: Option<ExpiryReason>,
}

/// The forecast for `row` at `now`. The Testing clock counts only when the status is
/// declared `testing` (an unknown status would make every grant look at risk).
pub(crate) fn forecast(row: &Connection, rules: GrantRules, now: DateTime<Utc>) -> Forecast {
    let grant = &row.grant;
    let mut clocks: Vec<(DateTime<Utc>, ExpiryReason)> = Vec::new();
    if let Some(at) = grant
        .refresh_token_expires_at
        .and_then(|at| DateTime::from_timestamp(at, 0))
    {
        clocks.push((at, ExpiryReason::TimeLimitedAccess));
    }
    if rules.lifetimes.google
        && rules.publishing == PublishingStatus::Testing
        && !only_basic(&grant.granted_scopes)
        && let Some(consented) = grant.consented_at
    {
        clocks.push((
            after(consented, TESTING_GRANT_LIFE),
            ExpiryReason::TestingMode,
        ));
    }
    if let Some(idle) = rules.lifetimes.idle {
        clocks.push((after(last_token_use(row), idle), ExpiryReason::IdleLimit));
    }
    let first = clocks.into_iter().min_by_key(|(at, _)| *at);
    let health = if !row.is_active {
        Health::Dead
    } else if first.is_some_and(|(at, _)| at <= after(now, AT_RISK_WITHIN))
        || row.refresh.unknown_since_ms.is_some()
        || row
            .refresh
            .retry_at_ms
            .is_some_and(|at| at > now.timestamp_millis())
    {
        Health::AtRisk
    } else {
        Health::Ok
    };
    Forecast {
        health,
        predicted_expiry: first.map(|(at, _)| at).filter(|_| row.is_active),
        reason: first.map(|(_, r)| r).filter(|_| row.is_active),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(granted: &str, consented_days_ago: i64, now: DateTime<Utc>) -> Connection {
        let consented = now - TimeDelta::days(consented_days_ago);
        Connection {
            user_id: "u".into(),
            provider: "google".into(),
            email: None,
            encrypted_tokens: crate::crypto::Envelope {
                v: 1,
                alg: "AES-256-GCM".into(),
                key_id: "k".into(),
                edk: String::new(),
                iv: String::new(),
                ct: String::new(),
            },
            user_info: crate::store::UserInfo::default(),
            created_at: consented,
            updated_at: consented,
            last_used: consented,
            access_token_expires_at: 0,
            expires_at: 0,
            is_active: true,
            version: 1,
            refresh: crate::store::RefreshState::default(),
            replaced_account: None,
            grant: GrantLedger {
                granted_scopes: parse_scopes(granted),
                consented_at: Some(consented),
                ..GrantLedger::default()
            },
        }
    }

    /// Microsoft names Graph permissions by URL and leaves out `offline_access`
    /// (<https://learn.microsoft.com/entra/identity-platform/scopes-oidc>).
    #[test]
    fn graph_permissions_and_protocol_scopes_are_not_missing() {
        let wanted: Vec<String> = ["openid", "offline_access", "Mail.Read", "User.Read"]
            .map(String::from)
            .into();
        let granted = parse_scopes(
            "openid https://graph.microsoft.com/Mail.Read https://graph.microsoft.com/User.Read",
        );
        assert!(missing(&wanted, &granted).is_empty());
        let without_mail = parse_scopes("openid https://graph.microsoft.com/User.Read");
        assert_eq!(missing(&wanted, &without_mail), ["Mail.Read"]);
    }

    #[test]
    fn the_clocks_name_a_bare_refusal() {
        let now = Utc::now();
        let rules = |publishing| GrantRules {
            publishing,
            grant_limit: 100,
            lifetimes: Lifetimes::GOOGLE,
        };
        let plain = GrantRefusal::ExpiredOrRevoked;
        let drive = "openid email https://x.test/drive";
        let cause =
            |row: &Connection, publishing| cause_of(plain, row, rules(publishing), None, now);
        // Eight days after consent, never refreshed: Testing expiry unless declared
        // production, and never for basic scopes.
        assert_eq!(
            cause(&row(drive, 8, now), PublishingStatus::Unknown),
            Cause::TestingModeExpired
        );
        assert_eq!(
            cause(&row(drive, 8, now), PublishingStatus::Production),
            Cause::RevokedByUser
        );
        assert_eq!(
            cause(&row("openid email", 8, now), PublishingStatus::Testing),
            Cause::RevokedByUser
        );
        // Refreshed after day 7: not a Testing grant, whatever the status says.
        let mut refreshed = row(drive, 8, now);
        refreshed.grant.last_refreshed_at = Some(now - TimeDelta::hours(12));
        assert_eq!(
            cause(&refreshed, PublishingStatus::Unknown),
            Cause::RevokedByUser
        );
        // Six months unused: idle, unless the status is declared testing.
        assert_eq!(
            cause(&row(drive, 200, now), PublishingStatus::Unknown),
            Cause::IdleExpired
        );
        assert_eq!(
            cause(&row(drive, 200, now), PublishingStatus::Testing),
            Cause::TestingModeExpired
        );
        // What the provider says comes first; then evictions.
        let r = row(drive, 200, now);
        assert_eq!(
            cause_of(
                GrantRefusal::Named(Cause::AdminPolicyEnforced),
                &r,
                rules(PublishingStatus::Unknown),
                Some(500),
                now
            ),
            Cause::AdminPolicyEnforced
        );
        assert_eq!(
            cause_of(plain, &r, rules(PublishingStatus::Unknown), Some(100), now),
            Cause::TokenLimitEvicted
        );
        assert_eq!(
            cause_of(
                GrantRefusal::Unspecified,
                &row(drive, 1, now),
                rules(PublishingStatus::Unknown),
                Some(99),
                now
            ),
            Cause::UnknownInvalidGrant
        );
    }

    #[test]
    fn every_cause_reads_back_from_its_code_and_has_a_remedy() {
        for &cause in <Cause as strum::VariantArray>::VARIANTS {
            assert_eq!(Cause::from_code(cause.code()), Some(cause));
            assert!(cause.remedy().len() > 40, "{cause:?}");
        }
        assert_eq!(
            Cause::from_code("invalid_grant"),
            Some(Cause::UnknownInvalidGrant)
        );
        assert_eq!(Cause::from_code("nonsense"), None);
    }

    #[test]
    fn scopes_compare_as_google_means_them() {
        let granted = parse_scopes(
            "openid https://www.googleapis.com/auth/userinfo.email  https://x.test/drive",
        );
        assert_eq!(granted.len(), 3);
        let wanted: Vec<String> = ["email", "profile", "https://x.test/drive", "profile"]
            .map(String::from)
            .to_vec();
        assert_eq!(missing(&wanted, &granted), vec!["profile".to_string()]);
        assert_eq!(merge(&granted, &wanted).len(), 4);
        assert!(only_basic(&parse_scopes("openid email profile")));
        assert!(!only_basic(&granted));
    }
}
