//! How setting values are read: durations given as whole seconds, milliseconds or days
//! (the unit is in the key's name: `…_secs`, `…_ms`, `…_days`), and lists given either
//! as a TOML array or as one comma-separated string (the only way an environment
//! variable can give one).
//!
//! Numbers arrive as numbers from files and as strings from the environment; the
//! settings loader reads the latter leniently, so these only ask serde for a `u64`.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::callers::{CallerEntry, CallerList};
use crate::crypto::SecretKey;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

const SECS_PER_DAY: u64 = 86_400;

pub(crate) fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

/// Seconds where 0 means off.
pub(crate) fn secs_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    secs(d).map(|every| (!every.is_zero()).then_some(every))
}

pub(crate) fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

pub(crate) fn days<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d)?
        .checked_mul(SECS_PER_DAY)
        .map(Duration::from_secs)
        .ok_or_else(|| D::Error::custom("too many days"))
}

/// A list given either as a TOML array or as one comma-separated string.
#[derive(Deserialize)]
#[serde(untagged)]
enum ListOrCsv {
    List(Vec<String>),
    Csv(String),
}

/// The list's items, trimmed, empty ones dropped.
pub(crate) fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let items = match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(items) => items,
        ListOrCsv::Csv(csv) => csv.split(',').map(str::to_string).collect(),
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect())
}

/// Callers, each parsed by the one rule for them. No error here can quote a key.
/// Each entry is `key`, `name:key`, or (in a file, or as a JSON list in the
/// environment) an object `{name, apiKey | iamArn | oidc, operations, providers,
/// clients, userIds}`.
pub(crate) fn callers<'de, D: Deserializer<'de>>(d: D) -> Result<CallerList, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Entries {
        List(Vec<CallerEntry>),
        Csv(String),
    }
    let entries = match Entries::deserialize(d)? {
        Entries::List(entries) => entries,
        // The environment's way to give limits: a JSON list of keys and objects.
        Entries::Csv(json) if json.trim_start().starts_with('[') => {
            serde_json::from_str(&json).map_err(|e| {
                // serde's message could quote a key: only where, and what kind of error.
                D::Error::custom(format!(
                    "not a JSON list of keys and {{name, apiKey | iamArn | oidc, operations, providers, clients, userIds}} objects (line {}, column {}: {:?} error)",
                    e.line(),
                    e.column(),
                    e.classify()
                ))
            })?
        }
        Entries::Csv(csv) => csv
            .split(',')
            .map(|k| CallerEntry::Text(k.to_string()))
            .collect(),
    };
    CallerList::from_entries(entries).map_err(D::Error::custom)
}

/// The state key: base64 of 32 bytes, parsed by the one parser of it. The error names
/// the shape, never the value.
pub(crate) fn state_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretKey>, D::Error> {
    let text = SecretString::from(String::deserialize(d)?);
    SecretKey::from_base64(text.expose_secret())
        .map(Some)
        .map_err(|_| D::Error::custom("must be base64 of 32 bytes"))
}

/// Whole hours.
pub(crate) fn hours<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    secs(d).map(|d| d.saturating_mul(3_600))
}

/// `whsec_` + base64 of 24 to 64 bytes, or empty for none. Never quoted in an error.
pub(crate) fn webhook_secret<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::crypto::WebhookSecret>, D::Error> {
    let text = SecretString::from(String::deserialize(d)?);
    if text.expose_secret().trim().is_empty() {
        return Ok(None);
    }
    crate::crypto::WebhookSecret::parse(text.expose_secret())
        .map(Some)
        .map_err(D::Error::custom)
}

/// A socket address, or `off` (or empty) for none.
pub(crate) fn addr_or_off<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e| {
        D::Error::custom(format!(
            "{text:?} is not a socket address (host:port) or off: {e}"
        ))
    })
}

/// A list of URLs, each parsed here; an error quotes the entry.
pub(crate) fn url_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<url::Url>, D::Error> {
    parsed_list(d, "a URL")
}

/// A list of IP addresses, each parsed here; an error quotes the entry.
/// Trusted proxies: addresses or CIDR ranges.
pub(crate) fn trusted_proxies<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<super::TrustedProxies, D::Error> {
    parsed_list::<_, super::net::ProxyEntry>(d, "an IP address or CIDR range")
        .map(|entries| entries.into_iter().collect())
}

/// Webhook endpoint URLs: an error names the entry by its position, never its text (a
/// receiver's URL may carry its own token).
pub(crate) fn webhook_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<url::Url>, D::Error> {
    strings(d)?
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            item.parse::<url::Url>()
                .map_err(|e| D::Error::custom(format!("entry {} is not a URL: {e}", i + 1)))
        })
        .collect()
}

fn parsed_list<'de, D, T>(d: D, what: &str) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: Display,
{
    strings(d)?
        .into_iter()
        .map(|item| {
            item.parse()
                .map_err(|e| D::Error::custom(format!("{item:?} is not {what}: {e}")))
        })
        .collect()
}
