//! Callers as the configuration names them: `key`, `name:key`, or an object
//! `{name, apiKey | iamArn | oidc, operations, providers, clients, userIds}`; one shape
//! rule for every source (settings, the secret, the embedded data directory's file).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;

use super::key::ApiKey;
use super::{Caller, CallerKind, Operation, matches_pattern};

/// A caller as the configuration gives it, as an object:
/// `{"name": "billing", "apiKey": "…", "operations": ["read_tokens"], "providers":
/// ["google"], "clients": ["…apps.googleusercontent.com"], "userIds": ["tenant-a:*"]}`,
/// with `iamArn` or `oidc` in place of `apiKey` for the other kinds.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CallerObject {
    name: Option<String>,
    /// The key, or `sha256:` and the hex of its SHA-256 (so the configuration need not
    /// hold the key itself). `key` in the older `api_keys` lists.
    #[serde(alias = "apiKey")]
    key: Option<String>,
    /// An IAM role ARN (`arn:aws:iam::123456789012:role/reader`) or user ARN, `*`
    /// standing for any run of characters.
    #[serde(rename = "iamArn")]
    iam_arn: Option<String>,
    oidc: Option<OidcBinding>,
    #[serde(default)]
    operations: Option<Vec<Operation>>,
    #[serde(default)]
    providers: Option<Vec<String>>,
    #[serde(default)]
    clients: Option<Vec<String>>,
    #[serde(default, rename = "userIds")]
    user_ids: Option<Vec<String>>,
}

/// Which workload tokens are this caller's: the issuer that signs them, the audience
/// they must name, and claims they must carry (`sub` among them), each value exact or
/// a pattern with `*`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcBinding {
    /// The issuer exactly as its tokens' `iss` says it (and its discovery document).
    pub issuer: String,
    /// What the token's `aud` must contain.
    pub audience: String,
    /// Claim name → the value it must have (a string claim; numbers and booleans are
    /// compared by their JSON text). Every claim named must match.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

impl OidcBinding {
    /// Whether a verified token of these claims (issuer and audience already checked)
    /// carries every bound claim.
    pub(crate) fn claims_match(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        self.claims.iter().all(|(name, pattern)| {
            let text = match claims.get(name) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    v.to_string()
                }
                _ => return false,
            };
            matches_pattern(pattern, &text)
        })
    }
}

/// How a caller other than a key proves who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// An IAM ARN pattern, role ARNs without their path (an assumed role's ARN does
    /// not carry it): `arn:aws:iam::123456789012:role/reader`.
    Iam(String),
    Oidc(OidcBinding),
}

/// A caller that proves itself by an identity, not a key.
#[derive(Debug, Clone)]
pub struct IdentityCaller {
    pub(crate) identity: Identity,
    pub(crate) caller: Arc<Caller>,
}

/// A configured caller: `key`, `name:key`, or an object with limits.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum CallerEntry {
    Text(String),
    Object(Box<CallerObject>),
}

/// Why a configured caller was refused; names the rule, never a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCallerEntry {
    #[error(transparent)]
    Key(#[from] super::InvalidApiKey),
    #[error("a caller's name must be 1 to 64 letters, digits, '.', '_' or '-'")]
    Name,
    #[error("two callers are named {0:?}")]
    DuplicateName(String),
    #[error("a key given as a digest must be sha256: and 64 hex digits")]
    Digest,
    #[error("a userIds pattern must be 1 to 256 characters, without '/' or control characters")]
    UserPattern,
    #[error("a caller needs exactly one of apiKey, iamArn or oidc")]
    Credential,
    #[error("a caller with iamArn or oidc needs a name")]
    Unnamed,
    #[error(
        "iamArn must be an IAM role or user ARN (arn:aws:iam::<12-digit account>:role/<name> or :user/<name>; '*' only in the name)"
    )]
    IamArn,
    #[error("oidc needs an https issuer (http only on loopback) and a non-empty audience")]
    Oidc,
    #[error(
        "oidc needs claims.sub (exact, or a pattern that is more than '*'): the issuer and audience alone may be shared"
    )]
    OidcSubject,
}

pub(super) fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Callers of every kind, as one configuration list gives them.
#[derive(Debug, Clone, Default)]
pub struct CallerList {
    pub(crate) keys: Vec<ApiKey>,
    pub(crate) identities: Vec<IdentityCaller>,
}

impl CallerList {
    /// The entries' callers; no name twice.
    pub(crate) fn from_entries(
        entries: impl IntoIterator<Item = CallerEntry>,
    ) -> Result<Self, InvalidCallerEntry> {
        let mut list = Self::default();
        for entry in entries {
            if matches!(&entry, CallerEntry::Text(t) if t.trim().is_empty()) {
                continue;
            }
            entry.add_to(&mut list)?;
        }
        check_names(&list)?;
        Ok(list)
    }

    /// Adds `other`'s callers (names are checked by [`check_names`]).
    pub(crate) fn extend(&mut self, other: Self) {
        self.keys.extend(other.keys);
        self.identities.extend(other.identities);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.identities.is_empty()
    }

    /// The callers proved by IAM whose ARN pattern `arn` matches, in order.
    pub(crate) fn iam_caller(&self, arn: &str) -> Option<Arc<Caller>> {
        self.identities.iter().find_map(|c| match &c.identity {
            Identity::Iam(pattern) if matches_pattern(pattern, arn) => Some(Arc::clone(&c.caller)),
            _ => None,
        })
    }

    /// Whether any caller proves itself by IAM.
    pub(crate) fn has_iam(&self) -> bool {
        self.identities
            .iter()
            .any(|c| matches!(c.identity, Identity::Iam(_)))
    }

    /// The OIDC bindings, with their callers.
    pub(crate) fn oidc(&self) -> impl Iterator<Item = (&OidcBinding, &Arc<Caller>)> {
        self.identities.iter().filter_map(|c| match &c.identity {
            Identity::Oidc(binding) => Some((binding, &c.caller)),
            Identity::Iam(_) => None,
        })
    }
}

impl CallerEntry {
    /// Adds the caller this entry configures, named and limited as it says.
    fn add_to(self, list: &mut CallerList) -> Result<(), InvalidCallerEntry> {
        let o = match self {
            Self::Text(text) => {
                list.keys.push(ApiKey::parse_entry(text.trim())?);
                return Ok(());
            }
            Self::Object(o) => *o,
        };
        if o.user_ids.as_ref().is_some_and(|patterns| {
            patterns.iter().any(|p| {
                p.is_empty() || p.len() > 256 || p.contains('/') || p.chars().any(char::is_control)
            })
        }) {
            return Err(InvalidCallerEntry::UserPattern);
        }
        let name = o.name.as_deref().map(str::trim);
        if name.is_some_and(|n| !valid_name(n)) {
            return Err(InvalidCallerEntry::Name);
        }
        let limit = |caller: &mut Caller| {
            caller.operations = o.operations;
            caller.providers = o.providers;
            caller.clients = o.clients;
            caller.user_ids = o.user_ids;
        };
        match (o.key, o.iam_arn, o.oidc) {
            (Some(key), None, None) => {
                let text = key.trim();
                let mut key = match text.strip_prefix("sha256:") {
                    Some(hex) => ApiKey::from_digest_hex(hex)?,
                    None => ApiKey::parse(text)?,
                };
                let caller = key.caller_mut();
                if let Some(name) = name {
                    caller.id = name.to_string();
                }
                limit(caller);
                list.keys.push(key);
            }
            (None, Some(arn), None) => {
                let name = name.ok_or(InvalidCallerEntry::Unnamed)?;
                let mut caller = Caller::unlimited(name.to_string(), CallerKind::Iam);
                limit(&mut caller);
                list.identities.push(IdentityCaller {
                    identity: Identity::Iam(iam_pattern(&arn)?),
                    caller: Arc::new(caller),
                });
            }
            (None, None, Some(binding)) => {
                let name = name.ok_or(InvalidCallerEntry::Unnamed)?;
                let issuer_ok = crate::guard::https_or_loopback(&binding.issuer);
                if !issuer_ok || binding.audience.trim().is_empty() {
                    return Err(InvalidCallerEntry::Oidc);
                }
                // Issuer and audience alone would admit every workload of a shared
                // issuer (any repository's GitHub Actions job chooses its audience).
                let binds_subject = binding
                    .claims
                    .get("sub")
                    .is_some_and(|sub| sub.chars().any(|c| c != '*'));
                if !binds_subject {
                    return Err(InvalidCallerEntry::OidcSubject);
                }
                let mut caller = Caller::unlimited(name.to_string(), CallerKind::Oidc);
                limit(&mut caller);
                list.identities.push(IdentityCaller {
                    identity: Identity::Oidc(binding),
                    caller: Arc::new(caller),
                });
            }
            _ => return Err(InvalidCallerEntry::Credential),
        }
        Ok(())
    }
}

/// A configured IAM ARN as it is matched: a role's path dropped (STS names an assumed
/// role `arn:aws:sts::<account>:assumed-role/<name>/<session>`, without it).
fn iam_pattern(arn: &str) -> Result<String, InvalidCallerEntry> {
    let arn = arn.trim();
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [prefix, partition, service, region, account, resource] = parts[..] else {
        return Err(InvalidCallerEntry::IamArn);
    };
    // The account (and partition) exact: a `*` there would match the name in every
    // AWS account.
    if prefix != "arn"
        || !partition.starts_with("aws")
        || !partition
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'-')
        || service != "iam"
        || !region.is_empty()
        || account.len() != 12
        || !account.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(InvalidCallerEntry::IamArn);
    }
    let Some((kind, name)) = resource.split_once('/') else {
        return Err(InvalidCallerEntry::IamArn);
    };
    let name = match kind {
        "role" => name.rsplit('/').next().unwrap_or(name),
        "user" => name,
        _ => return Err(InvalidCallerEntry::IamArn),
    };
    if name.is_empty() {
        return Err(InvalidCallerEntry::IamArn);
    }
    Ok(format!("arn:{partition}:iam::{account}:{kind}/{name}"))
}

/// The ARN a caller is matched by, from the one STS answered: an assumed role's
/// session becomes its role (`arn:aws:sts::1:assumed-role/reader/s` →
/// `arn:aws:iam::1:role/reader`); a user's ARN stays as it is.
pub(crate) fn principal_arn(sts_arn: &str) -> String {
    let parts: Vec<&str> = sts_arn.splitn(6, ':').collect();
    if let ["arn", partition, "sts", "", account, resource] = parts[..]
        && let Some(rest) = resource.strip_prefix("assumed-role/")
        && let Some((role, _session)) = rest.split_once('/')
    {
        return format!("arn:{partition}:iam::{account}:role/{role}");
    }
    sts_arn.to_string()
}

/// Refuses two configured callers of one name (their audit entries could not be told
/// apart).
pub(crate) fn check_names(list: &CallerList) -> Result<(), InvalidCallerEntry> {
    let mut seen = std::collections::HashSet::new();
    let names = list
        .keys
        .iter()
        .map(|k| k.caller().id.as_str())
        .chain(list.identities.iter().map(|c| c.caller.id.as_str()));
    for name in names {
        if !seen.insert(name) {
            return Err(InvalidCallerEntry::DuplicateName(name.to_string()));
        }
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::sha256;

    /// The one key an object entry configures.
    fn one_key(json: &str) -> Result<ApiKey, InvalidCallerEntry> {
        let entry: CallerEntry = serde_json::from_str(json).expect("an object");
        let list = CallerList::from_entries([entry])?;
        Ok(list.keys.into_iter().next().expect("a key"))
    }

    /// The one identity caller an object entry configures.
    fn one_identity(json: &str) -> Result<IdentityCaller, InvalidCallerEntry> {
        let entry: CallerEntry = serde_json::from_str(json).expect("an object");
        let list = CallerList::from_entries([entry])?;
        Ok(list.identities.into_iter().next().expect("an identity"))
    }

    #[test]
    fn iam_callers_match_roles_by_account_and_name() {
        let caller = one_identity(
            r#"{"name":"reader","iamArn":"arn:aws:iam::123456789012:role/team/reader","operations":["read_tokens"]}"#,
        )
        .expect("valid");
        assert_eq!(caller.caller.kind, CallerKind::Iam);
        let list = CallerList {
            keys: Vec::new(),
            identities: vec![caller],
        };
        let session = principal_arn("arn:aws:sts::123456789012:assumed-role/reader/i-0abc");
        assert_eq!(session, "arn:aws:iam::123456789012:role/reader");
        assert_eq!(
            list.iam_caller(&session).map(|c| c.id.clone()).as_deref(),
            Some("reader")
        );
        assert!(
            list.iam_caller("arn:aws:iam::210987654321:role/reader")
                .is_none()
        );
        assert!(
            list.iam_caller("arn:aws:iam::123456789012:user/reader")
                .is_none()
        );
        assert_eq!(
            principal_arn("arn:aws:iam::123456789012:user/ops/alice"),
            "arn:aws:iam::123456789012:user/ops/alice"
        );
        for bad in [
            r#"{"iamArn":"arn:aws:iam::123456789012:role/x"}"#,
            r#"{"name":"a","iamArn":"arn:aws:s3:::bucket"}"#,
            r#"{"name":"a","iamArn":"role/x"}"#,
            r#"{"name":"a","iamArn":"arn:aws:iam::123456789012:group/x"}"#,
            r#"{"name":"a","iamArn":"arn:aws:iam::*:role/reader"}"#,
            r#"{"name":"a","iamArn":"arn:aws:iam::12345678901*:role/reader"}"#,
            r#"{"name":"a","iamArn":"arn:aws:iam::123456789012:role/x","apiKey":"0123456789abcdef"}"#,
            r#"{"name":"a"}"#,
        ] {
            assert!(one_identity(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn oidc_callers_bind_claims_exactly_or_by_pattern() {
        let caller = one_identity(
            r#"{"name":"ci","oidc":{"issuer":"https://token.actions.githubusercontent.com","audience":"axnt","claims":{"sub":"repo:acme/*:ref:refs/heads/main","runner":"1"}}}"#,
        )
        .expect("valid");
        let Identity::Oidc(binding) = &caller.identity else {
            panic!("an oidc binding");
        };
        let claims = |v: serde_json::Value| v.as_object().cloned().expect("object");
        assert!(binding.claims_match(&claims(
            serde_json::json!({"sub": "repo:acme/api:ref:refs/heads/main", "runner": 1})
        )));
        assert!(!binding.claims_match(&claims(
            serde_json::json!({"sub": "repo:other/api:ref:refs/heads/main", "runner": 1})
        )));
        assert!(!binding.claims_match(&claims(
            serde_json::json!({"sub": "repo:acme/api:ref:refs/heads/main"})
        )));
        for bad in [
            r#"{"name":"a","oidc":{"issuer":"http://issuer.example","audience":"x"}}"#,
            r#"{"name":"a","oidc":{"issuer":"https://issuer.example","audience":" "}}"#,
            r#"{"name":"a","oidc":{"issuer":"https://issuer.example","audience":"x","extra":1}}"#,
            r#"{"name":"a","oidc":{"issuer":"https://issuer.example","audience":"x"}}"#,
            r#"{"name":"a","oidc":{"issuer":"https://issuer.example","audience":"x","claims":{"sub":"**"}}}"#,
        ] {
            assert!(
                serde_json::from_str::<CallerEntry>(bad)
                    .ok()
                    .is_none_or(|e| CallerList::from_entries([e]).is_err()),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_key_may_be_configured_by_its_digest() {
        let hex: String = sha256(b"0123456789abcdef")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let key = one_key(&format!(
            r#"{{"name":"svc","apiKey":"sha256:{hex}","userIds":["t:*"]}}"#
        ))
        .expect("valid");
        assert!(
            ApiKey::parse("0123456789abcdef")
                .expect("key")
                .is_one_of(std::slice::from_ref(&key))
        );
        assert!(key.caller().may_use_user("t:1") && !key.caller().may_use_user("u:1"));
        for bad in ["sha256:abc", "sha256:zz", "sha256:"] {
            assert_eq!(
                one_key(&format!(r#"{{"apiKey":"{bad}"}}"#)).err(),
                Some(InvalidCallerEntry::Digest),
                "{bad}"
            );
        }
    }

    #[test]
    fn configured_entries_name_their_caller() {
        let named = ApiKey::parse_entry("billing:0123456789abcdef").expect("named");
        assert_eq!(named.caller().id, "billing");
        assert!(
            ApiKey::parse("0123456789abcdef")
                .expect("key")
                .is_one_of(&[named])
        );
        // A colon that does not follow a valid name is part of the key.
        let bare = ApiKey::parse_entry("a b:0123456789abcdef").expect("bare");
        assert!(bare.caller().id.starts_with("key-"));
        assert!(
            ApiKey::parse("a b:0123456789abcdef")
                .expect("key")
                .is_one_of(&[bare])
        );
        let limited = one_key(
            r#"{"name":"reader","key":"0123456789abcdef","operations":["read_tokens"],"providers":["google"]}"#,
        )
        .expect("valid");
        let caller = limited.caller();
        assert!(caller.may(Operation::ReadTokens) && !caller.may(Operation::ReadLogs));
        assert!(caller.may_use("google") && !caller.may_use("github"));
        let twice = CallerList::from_entries([
            CallerEntry::Text("x:0123456789abcdef".into()),
            CallerEntry::Text("x:0123456789abcdeg".into()),
        ]);
        assert_eq!(
            twice.err(),
            Some(InvalidCallerEntry::DuplicateName("x".into()))
        );
    }
}
