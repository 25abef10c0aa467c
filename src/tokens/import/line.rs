//! The migration format: one JSON object per line (`userId`, `provider`,
//! `refreshToken`, `accessToken`, `expiresAt`, `scopes`, `sub`, `email`, `client`,
//! `consentedAt`), checked field by field. A refusal names the field and the kind of
//! problem, never the value: serde's own messages quote what they found, and that may
//! be a token.

use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::ids::UserId;
use crate::oauth::grant;

/// Longest token a line may carry. Google's are a few hundred bytes; Microsoft's
/// access tokens a few kilobytes.
const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Most scopes a line may name.
const MAX_SCOPES: usize = 200;
/// Longest `sub`, `email`, `client` or scope.
const MAX_TEXT_BYTES: usize = 512;

/// One line of the migration format as written (JSON, camelCase). Unknown fields are
/// refused: a misspelt `refresh_token` must not pass for a line without one.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Line {
    user_id: String,
    provider: String,
    refresh_token: SecretString,
    #[serde(default)]
    access_token: Option<SecretString>,
    #[serde(default)]
    expires_at: Option<Instant>,
    #[serde(default)]
    scopes: Option<Scopes>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    client: Option<String>,
    #[serde(default)]
    consented_at: Option<Instant>,
}

/// A time: RFC 3339 text, or epoch seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum Instant {
    Text(String),
    Seconds(i64),
}

/// Scopes: a list, or one space-separated string (as a token response's `scope`).
#[derive(Deserialize)]
#[serde(untagged)]
enum Scopes {
    List(Vec<String>),
    Text(String),
}

/// Why a line was refused: the field (its JSON path) and what is wrong with it, never
/// its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub(crate) struct LineError {
    pub(crate) field: String,
    pub(crate) problem: String,
}

impl LineError {
    fn new(field: &str, problem: impl Into<String>) -> Self {
        Self {
            field: field.to_string(),
            problem: problem.into(),
        }
    }
}

/// A line that passed its checks: a grant to import. Never printed (no `Debug`).
pub(crate) struct ImportedGrant {
    pub(crate) user_id: UserId,
    pub(crate) provider: String,
    pub(super) refresh_token: SecretString,
    pub(super) access_token: Option<SecretString>,
    pub(super) expires_at: Option<DateTime<Utc>>,
    pub(super) scopes: Vec<String>,
    pub(super) sub: Option<String>,
    pub(super) email: Option<String>,
    pub(super) client: Option<String>,
    pub(super) consented_at: Option<DateTime<Utc>>,
}

impl ImportedGrant {
    /// The OAuth client the line names, if any.
    pub(crate) fn client(&self) -> Option<&str> {
        self.client.as_deref()
    }

    /// Parses and checks one line of the migration format.
    pub(crate) fn parse(text: &str) -> Result<Self, LineError> {
        let mut input = serde_json::Deserializer::from_str(text);
        let line: Line = serde_path_to_error::deserialize(&mut input).map_err(shape)?;
        input.end().map_err(|_| {
            LineError::new("line", "more than one JSON value (one object per line)")
        })?;
        Self::check(line)
    }

    /// Parses and checks a JSON value of the migration format (the import API's body,
    /// with the path's `userId` and `provider`).
    pub(crate) fn from_value(value: serde_json::Value) -> Result<Self, LineError> {
        let line: Line = serde_path_to_error::deserialize(value).map_err(shape)?;
        Self::check(line)
    }

    fn check(line: Line) -> Result<Self, LineError> {
        let user_id = UserId::parse(line.user_id).map_err(|_| {
            LineError::new(
                "userId",
                "not a user id (1 to 256 characters, no '/', '\\' or control characters)",
            )
        })?;
        if line.provider.is_empty() || line.provider.len() > MAX_TEXT_BYTES {
            return Err(LineError::new("provider", "empty or too long"));
        }
        check_token("refreshToken", &line.refresh_token)?;
        if let Some(access_token) = &line.access_token {
            check_token("accessToken", access_token)?;
        }
        let expires_at = line.expires_at.map(|t| time("expiresAt", t)).transpose()?;
        let consented_at = line
            .consented_at
            .map(|t| time("consentedAt", t))
            .transpose()?;
        if consented_at.is_some_and(|t| t > Utc::now() + chrono::TimeDelta::minutes(5)) {
            return Err(LineError::new("consentedAt", "in the future"));
        }
        let scopes = match line.scopes {
            None => Vec::new(),
            Some(Scopes::Text(text)) => grant::parse_scopes(&text),
            Some(Scopes::List(list)) => list,
        };
        if scopes.len() > MAX_SCOPES {
            return Err(LineError::new(
                "scopes",
                format!("more than {MAX_SCOPES} scopes"),
            ));
        }
        if let Some(i) = scopes.iter().position(|s| !is_plain(s)) {
            return Err(LineError::new(
                &format!("scopes[{i}]"),
                "empty, too long, or holds spaces or control characters",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let scopes: Vec<String> = scopes
            .into_iter()
            .filter(|s| seen.insert(s.clone()))
            .collect();
        for (field, value) in [
            ("sub", &line.sub),
            ("email", &line.email),
            ("client", &line.client),
        ] {
            if value.as_deref().is_some_and(|v| !is_plain(v)) {
                return Err(LineError::new(
                    field,
                    "empty, too long, or holds spaces or control characters",
                ));
            }
        }
        Ok(Self {
            user_id,
            provider: line.provider,
            refresh_token: line.refresh_token,
            access_token: line.access_token,
            expires_at,
            scopes,
            sub: line.sub,
            email: line.email,
            client: line.client,
            consented_at,
        })
    }
}

/// The field and the kind of problem of a line serde refused, never the value (serde's
/// own message quotes it, and the value may be a token).
fn shape(e: serde_path_to_error::Error<serde_json::Error>) -> LineError {
    let path = e.path().to_string();
    let inner = e.inner();
    let message = inner.to_string();
    if message.starts_with("unknown field") {
        // The path ends in the field's name, which the line chose: named only when it
        // looks like a field name (a misconverted line may have a token as a key).
        let name = path.rsplit('.').next().unwrap_or_default();
        let plain = (1..=40).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_');
        return LineError::new(
            if plain { name } else { "line" },
            "not a field of the migration format",
        );
    }
    if message.starts_with("missing field") {
        // serde names the missing field (one of ours) in its message, not in the path.
        let field = message.split('`').nth(1).unwrap_or("a field");
        return LineError::new(field, "missing");
    }
    let problem = match crate::secrets::shape_error(&e).rsplit_once(": ") {
        Some((_, what)) => what.to_string(),
        None => "not valid".to_string(),
    };
    let field = if path == "." || path == "?" || path.is_empty() {
        "line"
    } else {
        &path
    };
    LineError::new(field, problem)
}

fn check_token(field: &str, token: &SecretString) -> Result<(), LineError> {
    let token = token.expose_secret();
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(LineError::new(field, "empty or too long"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(LineError::new(field, "holds spaces or control characters"));
    }
    Ok(())
}

fn is_plain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_TEXT_BYTES
        && !text.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn time(field: &str, value: Instant) -> Result<DateTime<Utc>, LineError> {
    match value {
        Instant::Text(text) => DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| LineError::new(field, "not an RFC 3339 time or epoch seconds")),
        Instant::Seconds(secs) => DateTime::from_timestamp(secs, 0)
            .ok_or_else(|| LineError::new(field, "epoch seconds out of range")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(text: &str) -> LineError {
        match ImportedGrant::parse(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_full_line_parses_with_either_time_and_scope_form() {
        let grant = ImportedGrant::parse(
            r#"{"userId":"u-1","provider":"google","refreshToken":"1//rt","accessToken":"ya29.at","expiresAt":"2026-12-05T10:00:00Z","scopes":"openid email","sub":"123","email":"a@example.com","client":"c.apps","consentedAt":1764000000}"#,
        )
        .expect("a good line");
        assert_eq!(grant.user_id.as_str(), "u-1");
        assert_eq!(grant.scopes, ["openid", "email"]);
        assert_eq!(grant.expires_at.map(|t| t.timestamp()), Some(1_796_464_800));
        assert_eq!(
            grant.consented_at.map(|t| t.timestamp()),
            Some(1_764_000_000)
        );
        let listed = ImportedGrant::parse(
            r#"{"userId":"u","provider":"google","refreshToken":"r","scopes":["openid","email"]}"#,
        )
        .expect("scopes as a list");
        assert_eq!(listed.scopes, ["openid", "email"]);
    }

    #[test]
    fn a_refused_line_names_its_field_and_never_its_value() {
        let secret = "1//0gSECRETrefreshTOKEN";
        for (text, field) in [
            (
                r#"{"userId":"u","provider":"google"}"#.to_string(),
                "refreshToken",
            ),
            (
                format!(
                    r#"{{"userId":"u","provider":"google","refreshToken":"{secret}","expiresAt":"{secret}"}}"#
                ),
                "expiresAt",
            ),
            (
                format!(
                    r#"{{"userId":"u","provider":"google","refreshToken":"{secret}","consentedAt":true}}"#
                ),
                "consentedAt",
            ),
            (
                format!(r#"{{"userId":"u","provider":"google","refreshToken":["{secret}"]}}"#),
                "refreshToken",
            ),
            (
                format!(r#"{{"userId":"u","provider":"google","refresh_token":"{secret}"}}"#),
                "refresh_token",
            ),
            (
                format!(r#"{{"userId":"a/b","provider":"google","refreshToken":"{secret}"}}"#),
                "userId",
            ),
            (
                format!(r#"{{"userId":"u","provider":"google","refreshToken":"{secret} x"}}"#),
                "refreshToken",
            ),
            (
                format!(
                    r#"{{"userId":"u","provider":"google","refreshToken":"{secret}","scopes":["openid",""]}}"#
                ),
                "scopes[1]",
            ),
            (
                format!(r#"{{"userId":"u","provider":"google","refreshToken":"{secret}""#),
                "line",
            ),
            (format!(r#"["{secret}"]"#), "line"),
            (
                format!(r#"{{"userId":"u","provider":"google","refreshToken":"r","{secret}":1}}"#),
                "line",
            ),
            (
                format!(r#"{{"userId":"u","provider":"google","refreshToken":"{secret}"}} {{}}"#),
                "line",
            ),
        ] {
            let e = refused(&text);
            assert_eq!(e.field, field, "{text}: {e}");
            assert!(!e.to_string().contains("SECRET"), "{text}: {e}");
        }
    }
}
