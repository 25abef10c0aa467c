//! The internal API's bearer keys: one shape rule for every source (settings, the
//! secret, the embedded data directory's file, a request's `Authorization` header).

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::crypto::sha256;

/// An API key. Only its SHA-256 is kept, taken once when the key is parsed: comparing
/// digests in constant time makes the comparison's time independent of key lengths,
/// and no key text stays in memory. `Debug` prints nothing of it. A configured key
/// also names its caller (an id for audit and metrics, and optional limits).
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
    caller: Arc<Caller>,
}

/// Who presented a key: its id (the configured name, or `key-` and the first 8 hex
/// digits of the key's SHA-256 for an unnamed key) and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub id: String,
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

/// A configured key as the secret's `api_keys` may give it:
/// `{"name": "billing", "key": "…", "operations": ["read_tokens"], "providers": ["google"],
/// "clients": ["…apps.googleusercontent.com"]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct KeyObject {
    name: Option<String>,
    /// The key, or `sha256:` and the hex of its SHA-256 (so the configuration need not
    /// hold the key itself). `apiKey` in `AXNT_CALLERS`.
    #[serde(alias = "apiKey")]
    key: String,
    #[serde(default)]
    operations: Option<Vec<Operation>>,
    #[serde(default)]
    providers: Option<Vec<String>>,
    #[serde(default)]
    clients: Option<Vec<String>>,
    #[serde(default, rename = "userIds")]
    user_ids: Option<Vec<String>>,
}

/// A configured key: `key`, `name:key`, or an object with limits.
#[derive(Deserialize)]
#[serde(untagged)]
pub(crate) enum KeyEntry {
    Text(String),
    Object(KeyObject),
}

/// Why a configured key entry was refused; names the rule, never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidKeyEntry {
    #[error(transparent)]
    Key(#[from] InvalidApiKey),
    #[error("a key's name must be 1 to 64 letters, digits, '.', '_' or '-'")]
    Name,
    #[error("two keys are named {0:?}")]
    DuplicateName(String),
    #[error("a key given as a digest must be sha256: and 64 hex digits")]
    Digest,
    #[error("a userIds pattern must be 1 to 256 characters, without '/' or control characters")]
    UserPattern,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl KeyEntry {
    /// The key this entry configures, its caller named and limited as it says.
    pub(crate) fn into_key(self) -> Result<ApiKey, InvalidKeyEntry> {
        match self {
            Self::Text(text) => ApiKey::parse_entry(text.trim()),
            Self::Object(o) => {
                let text = o.key.trim();
                let mut key = match text.strip_prefix("sha256:") {
                    Some(hex) => ApiKey::from_digest_hex(hex)?,
                    None => ApiKey::parse(text)?,
                };
                if o.user_ids.as_ref().is_some_and(|patterns| {
                    patterns.iter().any(|p| {
                        p.is_empty()
                            || p.len() > 256
                            || p.contains('/')
                            || p.chars().any(char::is_control)
                    })
                }) {
                    return Err(InvalidKeyEntry::UserPattern);
                }
                if let Some(name) = o.name.as_deref().map(str::trim) {
                    if !valid_name(name) {
                        return Err(InvalidKeyEntry::Name);
                    }
                    key.rename(name);
                }
                let caller = Arc::make_mut(&mut key.caller);
                caller.operations = o.operations;
                caller.providers = o.providers;
                caller.clients = o.clients;
                caller.user_ids = o.user_ids;
                Ok(key)
            }
        }
    }
}

/// Refuses two configured keys of one name (their audit entries could not be told
/// apart).
pub(crate) fn check_names(keys: &[ApiKey]) -> Result<(), InvalidKeyEntry> {
    let mut seen = std::collections::HashSet::new();
    for key in keys {
        if !seen.insert(key.caller.id.as_str()) {
            return Err(InvalidKeyEntry::DuplicateName(key.caller.id.clone()));
        }
    }
    Ok(())
}

/// Why a key was refused; names the rule, never the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every key must be at least {} characters", ApiKey::MIN_LEN)]
pub struct InvalidApiKey;

impl ApiKey {
    /// Shorter keys are refused: configured ones at start-up, presented ones with 401
    /// (no accepted key is that short, so such a key never matched anyway).
    pub(crate) const MIN_LEN: usize = 16;

    /// A key as presented (or configured without a name): the whole text is the key.
    pub fn parse(text: &str) -> Result<Self, InvalidApiKey> {
        if text.len() < Self::MIN_LEN {
            return Err(InvalidApiKey);
        }
        Ok(Self::with_digest(sha256(text.as_bytes())))
    }

    /// The key of this digest, its caller unnamed (`key-` and the digest's first 8 hex
    /// digits) and unlimited.
    fn with_digest(digest: [u8; 32]) -> Self {
        let id = format!(
            "key-{}",
            digest[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        Self {
            digest,
            caller: Arc::new(Caller {
                id,
                operations: None,
                providers: None,
                clients: None,
                user_ids: None,
                calls: crate::series::CounterCells::new(
                    <Operation as strum::VariantArray>::VARIANTS.len(),
                ),
            }),
        }
    }

    /// A key configured by its digest: the 64 hex digits of its SHA-256.
    fn from_digest_hex(hex: &str) -> Result<Self, InvalidKeyEntry> {
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(InvalidKeyEntry::Digest);
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| InvalidKeyEntry::Digest)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| InvalidKeyEntry::Digest)?;
        }
        Ok(Self::with_digest(digest))
    }

    /// A configured entry: `name:key` (a name of letters, digits, `.`, `_`, `-`, then
    /// the key) or a bare key.
    pub fn parse_entry(text: &str) -> Result<Self, InvalidKeyEntry> {
        match text.split_once(':') {
            Some((name, key)) if valid_name(name) && key.len() >= Self::MIN_LEN => {
                let mut parsed = Self::parse(key)?;
                parsed.rename(name);
                Ok(parsed)
            }
            _ => Ok(Self::parse(text)?),
        }
    }

    fn rename(&mut self, name: &str) {
        Arc::make_mut(&mut self.caller).id = name.to_string();
    }

    /// Who this (configured) key belongs to.
    pub fn caller(&self) -> &Arc<Caller> {
        &self.caller
    }

    /// Whether this key is one of `accepted`, in constant time: every key is visited,
    /// so the time does not depend on which one matched.
    pub(crate) fn is_one_of(&self, accepted: &[ApiKey]) -> bool {
        self.find_in(accepted).is_some()
    }

    /// The caller of the key of `accepted` this one is, visiting every key (constant
    /// time in which one matched).
    pub(crate) fn find_in(&self, accepted: &[ApiKey]) -> Option<Arc<Caller>> {
        PresentedKey(self.digest).caller_in(accepted)
    }
}

/// A key as a request presents it: only its digest, which is all a lookup needs.
pub(crate) struct PresentedKey([u8; 32]);

impl PresentedKey {
    /// The presented text's digest; a text too short to be any key is refused.
    pub(crate) fn parse(text: &str) -> Result<Self, InvalidApiKey> {
        if text.len() < ApiKey::MIN_LEN {
            return Err(InvalidApiKey);
        }
        Ok(Self(sha256(text.as_bytes())))
    }

    /// The caller whose key this is among `accepted`, compared in constant time: every
    /// key is visited, so the time does not depend on which one matched.
    pub(crate) fn caller_in(&self, accepted: &[ApiKey]) -> Option<Arc<Caller>> {
        let mut found = None;
        for key in accepted {
            if bool::from(key.digest.ct_eq(&self.0)) {
                found = Some(Arc::clone(&key.caller));
            }
        }
        found
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_rule_and_matching() {
        assert_eq!(ApiKey::parse("short").err(), Some(InvalidApiKey));
        assert_eq!(ApiKey::parse("").err(), Some(InvalidApiKey));
        let key = ApiKey::parse("0123456789abcdef").expect("16 characters");
        let other = ApiKey::parse("0123456789abcdeg").expect("16 characters");
        assert!(key.is_one_of(&[other.clone(), key.clone()]));
        assert!(!key.is_one_of(&[other]));
        assert!(!key.is_one_of(&[]));
        assert_eq!(format!("{key:?}"), "ApiKey(..)");
    }

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

    #[test]
    fn a_key_may_be_configured_by_its_digest() {
        let hex: String = sha256(b"0123456789abcdef")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let entry: KeyEntry = serde_json::from_str(&format!(
            r#"{{"name":"svc","apiKey":"sha256:{hex}","userIds":["t:*"]}}"#
        ))
        .expect("object");
        let key = entry.into_key().expect("valid");
        assert!(
            ApiKey::parse("0123456789abcdef")
                .expect("key")
                .is_one_of(std::slice::from_ref(&key))
        );
        assert!(key.caller().may_use_user("t:1") && !key.caller().may_use_user("u:1"));
        for bad in ["sha256:abc", "sha256:zz", "sha256:"] {
            let entry: KeyEntry =
                serde_json::from_str(&format!(r#"{{"apiKey":"{bad}"}}"#)).expect("object");
            assert_eq!(
                entry.into_key().err(),
                Some(InvalidKeyEntry::Digest),
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
        let entry: KeyEntry = serde_json::from_str(
            r#"{"name":"reader","key":"0123456789abcdef","operations":["read_tokens"],"providers":["google"]}"#,
        )
        .expect("object");
        let limited = entry.into_key().expect("valid");
        let caller = limited.caller();
        assert!(caller.may(Operation::ReadTokens) && !caller.may(Operation::ReadLogs));
        assert!(caller.may_use("google") && !caller.may_use("github"));
        let twice = [
            ApiKey::parse_entry("x:0123456789abcdef").expect("x"),
            ApiKey::parse_entry("x:0123456789abcdeg").expect("x"),
        ];
        assert_eq!(
            check_names(&twice),
            Err(InvalidKeyEntry::DuplicateName("x".into()))
        );
    }
}
