//! The internal API's bearer keys: one shape rule for every source (settings, the
//! secret, the embedded data directory's file, a request's `Authorization` header).

use std::fmt;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use super::entry::valid_name;
use super::{Caller, CallerKind, InvalidCallerEntry};
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
            caller: Arc::new(Caller::unlimited(id, CallerKind::ApiKey)),
        }
    }

    /// A key configured by its digest: the 64 hex digits of its SHA-256.
    pub(super) fn from_digest_hex(hex: &str) -> Result<Self, InvalidCallerEntry> {
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(InvalidCallerEntry::Digest);
        }
        let mut digest = [0u8; 32];
        for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| InvalidCallerEntry::Digest)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| InvalidCallerEntry::Digest)?;
        }
        Ok(Self::with_digest(digest))
    }

    /// A configured entry: `name:key` (a name of letters, digits, `.`, `_`, `-`, then
    /// the key) or a bare key.
    pub fn parse_entry(text: &str) -> Result<Self, InvalidCallerEntry> {
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
        self.caller_mut().id = name.to_string();
    }

    /// This key's caller, to name and limit as its configuration says.
    pub(super) fn caller_mut(&mut self) -> &mut Caller {
        Arc::make_mut(&mut self.caller)
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
}
