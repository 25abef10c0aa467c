//! The id an application gives its user: the key of every connection and flow-log
//! item. Parsed once where a request brings it (a JSON body or a path); handlers and
//! the token service then carry it typed.

use serde::Deserialize;

/// A `userId` as callers may send it: 1–256 bytes of printable text without `/`, `\`,
/// control or invisible formatting characters, and not `.` or `..`. The one place that
/// says what a user id may be.
///
/// The id becomes a path segment of every API route that addresses it
/// (`/v1/users/{userId}/…`): an id with a slash, or one a client or proxy would fold as
/// a dot segment, makes a row no route can reach. Emails, UUIDs and provider-style ids
/// such as `auth0|123` pass.
///
/// Deserializing applies the rule (`try_from`), so a body or path with a bad id is
/// refused before a handler runs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub(crate) struct UserId(String);

/// Why a user id was refused; names the rule, never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "userId must be 1 to 256 bytes of printable text without '/', '\\' or control characters, and not '.' or '..'"
)]
pub(crate) struct InvalidUserId;

impl UserId {
    const MAX_LEN: usize = 256;

    pub(crate) fn parse(text: impl Into<String>) -> Result<Self, InvalidUserId> {
        let text = text.into();
        let refused = |c: char| c == '/' || c == '\\' || c.is_control() || is_invisible(c);
        if text.is_empty()
            || text.len() > Self::MAX_LEN
            || text == "."
            || text == ".."
            || text.chars().any(refused)
        {
            return Err(InvalidUserId);
        }
        Ok(Self(text))
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// The rule as the OpenAPI document states it (`UserId`): [`UserId::parse`] with its
/// ranges written as a pattern ([`is_invisible`]'s, control characters, `/` and `\`).
const PATTERN: &str =
    r"^[^/\\\u0000-\u001f\u007f-\u009f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+$";

/// The schema every `userId` in the OpenAPI document refers to.
impl utoipa::PartialSchema for UserId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "The application's id for its user: 1 to 256 bytes of printable text without `/`, `\\` or invisible characters, and not `.` or `..`",
            ))
            .min_length(Some(1))
            .max_length(Some(Self::MAX_LEN))
            .pattern(Some(PATTERN))
            .examples(["u-1"])
            .into()
    }
}

impl utoipa::ToSchema for UserId {}

/// Characters that print as nothing yet make two ids that look the same differ: zero
/// width spaces and joiners, direction marks and overrides, the byte order mark.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

super::text_id!(UserId, InvalidUserId);

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
        for good in [
            "auth0|123",
            "a.user+tag@example.com",
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            "...",
            ".hidden",
            "a b",
        ] {
            assert!(UserId::parse(good).is_ok(), "{good}");
        }
        for bad in [
            ".",
            "..",
            "../x",
            "a/b",
            "/",
            "a\\b",
            "a\tb",
            "a\u{0}",
            "a\u{85}",
            "a\u{200B}b",
            "\u{202E}abc",
            "\u{FEFF}a",
        ] {
            assert_eq!(UserId::parse(bad), Err(InvalidUserId), "{bad:?}");
        }
    }

    #[test]
    fn deserializing_applies_the_rule_without_quoting_the_value() {
        let id: UserId = serde_json::from_str(r#""u-1""#).expect("valid");
        assert_eq!(id.as_str(), "u-1");
        let e = serde_json::from_str::<UserId>(r#""planted\u0000""#).expect_err("control");
        assert!(!e.to_string().contains("planted"));
    }
}
