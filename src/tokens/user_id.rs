//! The id an application gives its user: the key of every connection and flow-log
//! item. Parsed once where a request brings it (a JSON body or a path); handlers and
//! the token service then carry it typed.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A `userId` as callers may send it: 1–256 bytes, no control characters. The one
/// place that says what a user id may be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct UserId(String);

/// Why a user id was refused; names the rule, never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("userId must be 1 to 256 characters without control characters")]
pub(crate) struct InvalidUserId;

impl UserId {
    const MAX_LEN: usize = 256;

    pub(crate) fn parse(text: impl Into<String>) -> Result<Self, InvalidUserId> {
        let text = text.into();
        if text.is_empty() || text.len() > Self::MAX_LEN || text.chars().any(char::is_control) {
            return Err(InvalidUserId);
        }
        Ok(Self(text))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Deserializing applies the rule, so a body or path with a bad id is refused by its
/// extractor (`400 invalid_request`) before a handler runs.
impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        assert!(UserId::parse("u-123").is_ok());
        assert!(UserId::parse("ünïcödé user@example.com").is_ok());
        assert!(UserId::parse("x".repeat(256)).is_ok());
        assert_eq!(UserId::parse(""), Err(InvalidUserId));
        assert_eq!(UserId::parse("x".repeat(257)), Err(InvalidUserId));
        assert_eq!(UserId::parse("a\nb"), Err(InvalidUserId));
        assert_eq!(UserId::parse("a\u{7f}"), Err(InvalidUserId));
    }

    #[test]
    fn deserializing_applies_the_rule_without_quoting_the_value() {
        let id: UserId = serde_json::from_str(r#""u-1""#).expect("valid");
        assert_eq!(id.as_str(), "u-1");
        let e = serde_json::from_str::<UserId>(r#""planted\u0000""#).expect_err("control");
        assert!(!e.to_string().contains("planted"));
    }
}
