//! What the OAuth flow means: providers ([`provider`]), sealed flow state ([`flow`]),
//! and which return URLs a flow may send the browser to ([`ReturnUrls`]).

pub mod flow;
pub mod provider;

use url::Url;

/// The allow-list of return URLs (`AXNT_ALLOWED_RETURN_URLS`).
///
/// An entry is an origin (`https://app.example.com`: any path there) or a URL prefix
/// (`https://app.example.com/settings/`: that path and below, at a segment boundary).
/// Scheme, host and port must match exactly; user info and fragments are refused.
#[derive(Debug, Clone)]
pub struct ReturnUrls {
    entries: Vec<Url>,
}

impl ReturnUrls {
    /// Entries as the settings parsed and checked them.
    pub fn new(entries: &[Url]) -> Self {
        Self {
            entries: entries.to_vec(),
        }
    }

    /// The normalised URL when `candidate` is allowed.
    pub fn check(&self, candidate: &str) -> Option<Url> {
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
            .then_some(url)
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
    fn an_empty_list_allows_nothing() {
        assert!(
            ReturnUrls::new(&[])
                .check("https://app.example.com/")
                .is_none()
        );
    }
}
