//! What the OAuth flow means: providers ([`provider`]), sealed flow state ([`flow`]),
//! and which return URLs a flow may send the browser to ([`ReturnUrls`]).

pub(crate) mod flow;
pub(crate) mod grant;
pub(crate) mod provider;
pub(crate) mod risc;

use serde::{Deserialize, Serialize};
use url::Url;

/// The allow-list of return URLs (`AXNT_ALLOWED_RETURN_URLS`).
///
/// An entry is an origin (`https://app.example.com`: any path there) or a URL prefix
/// (`https://app.example.com/settings/`: that path and below, at a segment boundary).
/// Scheme, host and port must match exactly; user info and fragments are refused.
#[derive(Debug, Clone)]
pub(crate) struct ReturnUrls {
    entries: Vec<Url>,
}

impl ReturnUrls {
    /// Entries as the settings parsed and checked them.
    pub(crate) fn new(entries: &[Url]) -> Self {
        Self {
            entries: entries.to_vec(),
        }
    }

    /// The normalised URL when `candidate` is allowed.
    pub(crate) fn check(&self, candidate: &str) -> Option<ReturnUrl> {
        let url = Url::parse(candidate).ok()?;
        if !matches!(url.scheme(), "http" | "https")
            || !url.username().is_empty()
            || url.password().is_some()
            || url.fragment().is_some()
            || url.host_str().is_none()
        {
            return None;
        }
        self.entries
            .iter()
            .any(|entry| allows(entry, &url))
            .then_some(ReturnUrl(url))
    }
}

/// A return URL that passed [`ReturnUrls::check`]: the only way to make one, besides
/// opening the sealed flow state it travels in (which only this service can seal).
/// Serialized as the URL string, as the sealed state has always held it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct ReturnUrl(Url);

impl ReturnUrl {
    /// The URL with `pairs` set in its query: where the browser is sent back. A
    /// parameter the URL already carries under one of these names is replaced, not
    /// repeated, so the application reads one `status`.
    pub(crate) fn with_query(&self, pairs: &[(&str, &str)]) -> Url {
        let mut url = self.0.clone();
        let kept: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(name, _)| !pairs.iter().any(|(set, _)| set == name))
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        url.set_query(None);
        if !kept.is_empty() || !pairs.is_empty() {
            url.query_pairs_mut().extend_pairs(kept).extend_pairs(pairs);
        }
        url
    }

    pub(crate) fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

fn allows(entry: &Url, url: &Url) -> bool {
    if entry.scheme() != url.scheme()
        || entry.host_str() != url.host_str()
        || entry.port_or_known_default() != url.port_or_known_default()
    {
        return false;
    }
    let prefix = entry.path();
    if prefix == "/" {
        return true;
    }
    let path = url.path();
    path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_and_prefixes() {
        let urls = ReturnUrls::new(&[
            Url::parse("https://app.example.com").expect("url"),
            Url::parse("http://127.0.0.1:3000/done").expect("url"),
        ]);
        assert!(urls.check("https://app.example.com/anything?x=1").is_some());
        assert!(urls.check("https://app.example.com:443/").is_some());
        assert!(urls.check("http://127.0.0.1:3000/done").is_some());
        assert!(urls.check("http://127.0.0.1:3000/done/more").is_some());
        assert!(urls.check("http://127.0.0.1:3000/doneandmore").is_none());
        assert!(urls.check("http://127.0.0.1:3001/done").is_none());
        assert!(
            urls.check("http://app.example.com/").is_none(),
            "scheme must match"
        );
        assert!(urls.check("https://app.example.com.evil.test/").is_none());
        assert!(urls.check("https://evil.test@app.example.com/").is_none());
        assert!(urls.check("https://app.example.com/#frag").is_none());
        assert!(urls.check("javascript:alert(1)").is_none());
        assert!(urls.check("//app.example.com/").is_none());
    }

    #[test]
    fn a_return_url_travels_as_its_string() {
        let urls = ReturnUrls::new(&[Url::parse("https://app.example.com").expect("url")]);
        let url = urls
            .check("https://APP.example.com/done?x=1")
            .expect("allowed");
        let json = serde_json::to_value(&url).expect("serialize");
        assert_eq!(json, "https://app.example.com/done?x=1");
        let back: ReturnUrl = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, url);
        assert_eq!(
            url.with_query(&[("status", "connected")]).as_str(),
            "https://app.example.com/done?x=1&status=connected"
        );
    }

    #[test]
    fn parameters_the_return_url_carries_are_replaced_not_repeated() {
        let urls = ReturnUrls::new(&[Url::parse("https://app.example.com").expect("url")]);
        let url = urls
            .check("https://app.example.com/done?status=old&x=1&error=stale")
            .expect("allowed");
        assert_eq!(
            url.with_query(&[("status", "error"), ("error", "access_denied")])
                .as_str(),
            "https://app.example.com/done?x=1&status=error&error=access_denied"
        );
    }

    #[test]
    fn an_empty_list_allows_nothing() {
        assert!(
            ReturnUrls::new(&[])
                .check("https://app.example.com/")
                .is_none()
        );
    }
}
