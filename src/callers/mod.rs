//! Who calls the internal API, and what each caller may do. A caller is named once in
//! the configuration (`AXNT_API_KEYS`, `AXNT_CALLERS`, the secret's `api_keys` and
//! `callers`) with how it proves who it is:
//!
//! - an API key ([`key`]): `Authorization: Bearer <key>`, compared by digest in
//!   constant time;
//! - an AWS IAM role or user ([`iam`]): `Authorization: AWS-IAM <signed
//!   sts:GetCallerIdentity>`, which this service sends to STS and trusts the ARN of;
//! - an OIDC workload token ([`oidc`]): `Authorization: Bearer <JWT>` from an issuer
//!   the operator trusts, its signature, issuer, audience and expiry checked and its
//!   claims bound.
//!
//! Whatever the kind, the caller has one name (audit, metrics and the flow log use it)
//! and the same limits: operations, providers, OAuth clients and user-id patterns.

mod entry;
pub(crate) mod iam;
mod key;
pub(crate) mod oidc;

use serde::Deserialize;

pub(crate) use entry::{CallerEntry, check_names};
pub use entry::{CallerList, Identity, IdentityCaller, InvalidCallerEntry, OidcBinding};
pub(crate) use key::PresentedKey;
pub use key::{ApiKey, InvalidApiKey};

/// How a check of a credential that is not a key ended (`axnt_caller_checks_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub(crate) enum CheckOutcome {
    /// STS answered, or the token was checked against its issuer's keys.
    Verified,
    /// An identity STS proved within the cache's life.
    Cached,
    Refused,
    /// STS or the issuer could not be asked.
    Unavailable,
}

/// Why a credential proved no caller.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum CredentialError {
    /// Not a credential of any caller (401); the text names the rule broken, never a
    /// value of the credential or another caller.
    #[error("{0}")]
    Refused(String),
    /// STS or the issuer could not be asked (503).
    #[error("{0}")]
    Unavailable(String),
}

/// The checks of credentials that are not keys: STS for IAM callers (when
/// `AXNT_IAM_SERVER_ID` is set) and the issuers' keys for OIDC ones.
pub(crate) struct IdentityChecks {
    iam: Option<iam::IamVerifier>,
    oidc: oidc::OidcVerifier,
}

impl IdentityChecks {
    pub(crate) fn new(
        iam: Option<iam::IamVerifier>,
        timeout: std::time::Duration,
    ) -> Result<Self, String> {
        Ok(Self {
            iam,
            oidc: oidc::OidcVerifier::new(timeout)?,
        })
    }

    /// The caller of `callers` whose signed `sts:GetCallerIdentity` `credential` is.
    pub(crate) async fn iam_caller(
        &self,
        credential: &str,
        callers: &CallerList,
    ) -> Result<std::sync::Arc<Caller>, CredentialError> {
        let Some(iam) = &self.iam else {
            return Err(CredentialError::Refused(
                "this service takes no AWS-IAM credentials (AXNT_IAM_SERVER_ID is not set)".into(),
            ));
        };
        let (arn, _cached) = counted(CallerKind::Iam, iam.verify(credential).await)?;
        callers.iam_caller(&arn).ok_or_else(|| {
            tracing::info!(
                arn,
                "an IAM identity STS proved is no caller of this service"
            );
            CredentialError::Refused(format!("{arn} is not a caller of this service"))
        })
    }

    /// The caller of `callers` whose workload token `token` is; `None` when no caller
    /// is proved by a token, so `token` is only a key that matched none.
    pub(crate) async fn oidc_caller(
        &self,
        token: &str,
        callers: &CallerList,
    ) -> Option<Result<std::sync::Arc<Caller>, CredentialError>> {
        if callers.oidc().next().is_none() || !oidc::OidcVerifier::looks_like_jwt(token) {
            return None;
        }
        Some(
            counted(
                CallerKind::Oidc,
                // Tokens are checked each time (in memory): never a cached answer.
                self.oidc
                    .verify(token, callers.oidc())
                    .await
                    .map(|caller| (caller, false)),
            )
            .map(|(caller, _)| caller),
        )
    }
}

/// Counts a check's outcome (`axnt_caller_checks_total`) and passes it on.
fn counted<T>(
    kind: CallerKind,
    checked: Result<(T, bool), CredentialError>,
) -> Result<(T, bool), CredentialError> {
    use crate::series::Label;
    let outcome = match &checked {
        Ok((_, true)) => CheckOutcome::Cached,
        Ok((_, false)) => CheckOutcome::Verified,
        Err(CredentialError::Refused(_)) => CheckOutcome::Refused,
        Err(CredentialError::Unavailable(_)) => CheckOutcome::Unavailable,
    };
    metrics::counter!(crate::series::CALLER_CHECKS_TOTAL, "kind" => kind.label(), "outcome" => outcome.label())
        .increment(1);
    checked
}

/// How a caller proves who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::VariantArray)]
#[strum(serialize_all = "snake_case")]
pub enum CallerKind {
    /// A bearer API key.
    ApiKey,
    /// A signed `sts:GetCallerIdentity` of an IAM role or user.
    Iam,
    /// A JWT from a trusted OpenID issuer.
    Oidc,
}

/// Who called: its id (the configured name, or `key-` and the first 8 hex digits of the
/// key's SHA-256 for an unnamed key), how it proved it, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
    /// How this caller authenticates.
    pub kind: CallerKind,
    /// `None`: every operation but the import (a key without limits keeps the old
    /// behaviour).
    pub operations: Option<Vec<Operation>>,
    /// `None`: every provider.
    pub providers: Option<Vec<String>>,
    /// `None`: every OAuth client. Some: only connections made with these clients
    /// (their client ids), and links made with them.
    pub clients: Option<Vec<String>>,
    /// `None`: every user. Some: only users whose id one of these patterns matches
    /// (`*` stands for any run of characters: `tenant-a:*`).
    pub user_ids: Option<Vec<String>>,
    /// [`API_CALLS_TOTAL`](crate::series::API_CALLS_TOTAL) by operation, for this caller.
    calls: crate::series::CounterCells,
}

impl Caller {
    /// A caller of this id and kind, without limits.
    pub(crate) fn unlimited(id: String, kind: CallerKind) -> Self {
        Self {
            id,
            kind,
            operations: None,
            providers: None,
            clients: None,
            user_ids: None,
            calls: crate::series::CounterCells::new(
                <Operation as strum::VariantArray>::VARIANTS.len(),
            ),
        }
    }

    /// Counts one call of `operation` by this caller.
    pub(crate) fn count_call(&self, operation: Operation) {
        use crate::series::Label;
        if let Some(counter) = self.calls.at(operation as usize, || {
            metrics::counter!(crate::series::API_CALLS_TOTAL, "caller" => self.id.clone(), "operation" => operation.label())
        }) {
            counter.increment(1);
        }
    }

    /// Whether this caller may do `operation`.
    pub(crate) fn may(&self, operation: Operation) -> bool {
        match &self.operations {
            None => operation.implied(),
            Some(ops) => ops.contains(&operation),
        }
    }

    /// Whether this caller may act on `provider`'s connections.
    pub(crate) fn may_use(&self, provider: &str) -> bool {
        self.providers
            .as_ref()
            .is_none_or(|ps| ps.iter().any(|p| p == provider))
    }

    /// Whether this caller may act on the connections of user `user_id`.
    pub(crate) fn may_use_user(&self, user_id: &str) -> bool {
        self.user_ids
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| matches_pattern(p, user_id)))
    }

    /// The operations this caller may do, in their order.
    pub(crate) fn allowed_operations(&self) -> Vec<Operation> {
        <Operation as strum::VariantArray>::VARIANTS
            .iter()
            .copied()
            .filter(|op| self.may(*op))
            .collect()
    }

    /// Whether this caller may act on connections (and links) of `client`. A caller
    /// limited to clients may not use a connection whose client is not recorded.
    pub(crate) fn may_use_client(&self, client: Option<&str>) -> bool {
        self.clients
            .as_ref()
            .is_none_or(|cs| client.is_some_and(|c| cs.iter().any(|allowed| allowed == c)))
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters (none
/// included) and every other character for itself.
pub(crate) fn matches_pattern(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let Some(first) = parts.next() else {
        return false;
    };
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        // No `*`: the whole text must be the pattern.
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What a key may be limited to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, strum::IntoStaticStr, strum::VariantArray,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Operation {
    /// `GET /v1/users/{userId}/tokens/{provider}`.
    ReadTokens,
    /// Connect sessions and their confirmation, listing and deleting connections.
    ManageConnections,
    /// Flow logs (and the audit trail).
    ReadLogs,
    /// The event feed.
    ConsumeEvents,
    /// `POST /v1/users/{userId}/connections/{provider}/import`: storing a grant made
    /// elsewhere. Never implied: a key must name it in its `operations`.
    ImportConnections,
}

impl Operation {
    /// Whether a key without an `operations` list may do this: every operation but
    /// the import, which writes tokens and so must be granted by name.
    fn implied(self) -> bool {
        self != Self::ImportConnections
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_patterns_match_with_stars_for_any_run() {
        for (pattern, text, matches) in [
            ("tenant-a:*", "tenant-a:1", true),
            ("tenant-a:*", "tenant-a:", true),
            ("tenant-a:*", "tenant-b:1", false),
            ("tenant-a:*", "xtenant-a:1", false),
            ("*:admin", "t:admin", true),
            ("*:admin", "t:admins", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "a-b-b-c", true),
            ("a*b*c", "acb", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("*", "", true),
        ] {
            assert_eq!(
                matches_pattern(pattern, text),
                matches,
                "{pattern} ~ {text}"
            );
        }
    }
}
