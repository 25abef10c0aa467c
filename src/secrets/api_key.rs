//! The internal API's bearer keys: one shape rule for every source (settings, the
//! secret, the embedded data directory's file, a request's `Authorization` header).

use std::fmt;

use subtle::ConstantTimeEq;

use crate::crypto::sha256;

/// An API key. Only its SHA-256 is kept, taken once when the key is parsed: comparing
/// digests in constant time makes the comparison's time independent of key lengths,
/// and no key text stays in memory. `Debug` prints nothing of it.
#[derive(Clone)]
pub struct ApiKey {
    digest: [u8; 32],
}

/// Why a key was refused; names the rule, never the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("every key must be at least {} characters", ApiKey::MIN_LEN)]
pub struct InvalidApiKey;

impl ApiKey {
    /// Shorter keys are refused: configured ones at start-up, presented ones with 401
    /// (no accepted key is that short, so such a key never matched anyway).
    pub(crate) const MIN_LEN: usize = 16;

    pub fn parse(text: &str) -> Result<Self, InvalidApiKey> {
        if text.len() < Self::MIN_LEN {
            return Err(InvalidApiKey);
        }
        Ok(Self {
            digest: sha256(text.as_bytes()),
        })
    }

    /// Whether this key is one of `accepted`, in constant time: every key is visited,
    /// so the time does not depend on which one matched.
    pub(crate) fn is_one_of(&self, accepted: &[ApiKey]) -> bool {
        accepted.iter().fold(false, |found, key| {
            found | bool::from(key.digest.ct_eq(&self.digest))
        })
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
