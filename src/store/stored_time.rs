//! Times as the store holds them: RFC 3339 in UTC, to the millisecond (read back by
//! chrono's own parser).

use chrono::{DateTime, Utc};
use serde::Serializer;

/// The text of a stored time.
pub(crate) fn text(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `serialize_with` for a time.
pub(crate) fn one<S: Serializer>(at: &DateTime<Utc>, out: S) -> Result<S::Ok, S::Error> {
    out.serialize_str(&text(at))
}

/// `serialize_with` for an optional time (with `skip_serializing_if` when absent).
pub(crate) fn opt<S: Serializer>(at: &Option<DateTime<Utc>>, out: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => one(at, out),
        None => out.serialize_none(),
    }
}
