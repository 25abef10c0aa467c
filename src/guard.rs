//! The SSRF guard: webhook endpoints are public addresses only (unless
//! `AXNT_WEBHOOK_ALLOW_PRIVATE`). A host name is checked as it resolves, by the
//! delivery client's own resolver, so the address checked is the address connected to
//! (no window for DNS rebinding); redirects are never followed. A leaf: `config`
//! checks the URLs it loads with it, `webhooks` resolves with it.
//!
//! Also the one client every other outbound call uses ([`outbound_client`]: providers,
//! issuers' keys, STS), and the rule for URLs an operator configures whose answers are
//! trusted ([`https_or_loopback`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
#[cfg(test)]
use std::str::FromStr;

/// The HTTP client of calls to a provider, an issuer or STS: redirects never followed
/// (a redirect from a token endpoint or a key URL opens the door to SSRF), `timeout`
/// for the whole call and at most 5 s of it to connect, and the service's user agent.
pub(crate) fn outbound_client(timeout: std::time::Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(std::time::Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("axnt-oauth/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// Whether `url` may be trusted for keys or identities: https, or http on loopback (a
/// local issuer, the tests).
pub(crate) fn https_or_loopback(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| {
        u.scheme() == "https"
            || (u.scheme() == "http"
                && matches!(u.host_str(), Some("127.0.0.1" | "[::1]" | "localhost")))
    })
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local,
/// carrier-grade NAT, unique-local, multicast, unspecified, documentation or reserved.
pub(crate) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if v6.is_loopback() || v6.is_unspecified() {
                false
            } else if let Some(v4) = v6.to_ipv4() {
                // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d).
                is_public_v4(v4)
            } else if s[0] == 0x2002 {
                // 6to4: the IPv4 address is in the next 32 bits.
                is_public_v4(Ipv4Addr::new(
                    (s[1] >> 8) as u8,
                    s[1] as u8,
                    (s[2] >> 8) as u8,
                    s[2] as u8,
                ))
            } else {
                is_public_v6(v6)
            }
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_unspecified()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, shared (CGNAT)
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24, protocol assignments
        || (a == 198 && (18..20).contains(&b)) // 198.18.0.0/15, benchmarking
        || a >= 240) // 240.0.0.0/4, reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32, documentation
        || (s[0] == 0x0064 && s[1] == 0xff9b) // 64:ff9b::/96 and 64:ff9b:1::/48, NAT64
        || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
        || s[0] == 0x0100) // 100::/64, discard
}

/// Why an endpoint URL is refused whatever the settings, if it is.
pub(crate) fn unusable_url(url: &url::Url) -> Option<String> {
    if !matches!(url.scheme(), "https" | "http") {
        return Some("must be an http or https URL".into());
    }
    url.host().is_none().then(|| "has no host".into())
}

/// Whether the URL's host is a non-public address or a loopback name (no lookup).
pub(crate) fn private_host(url: &url::Url) -> Option<String> {
    match url.host() {
        None => None,
        Some(url::Host::Ipv4(ip)) if !is_public(IpAddr::V4(ip)) => {
            Some(format!("{ip} is not a public address"))
        }
        Some(url::Host::Ipv6(ip)) if !is_public(IpAddr::V6(ip)) => {
            Some(format!("{ip} is not a public address"))
        }
        Some(url::Host::Domain(d))
            if d.eq_ignore_ascii_case("localhost") || d.ends_with(".localhost") =>
        {
            Some(format!("{d} is a loopback name"))
        }
        _ => None,
    }
}

/// A resolver handing out public addresses only; a name with none fails to resolve.
pub(crate) struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(format!(
                    "{host} resolves to no public address (AXNT_WEBHOOK_ALLOW_PRIVATE=true allows private ones)"
                )
                .into());
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the settings refuse without `AXNT_WEBHOOK_ALLOW_PRIVATE`.
    fn refused_outright(url: &url::Url) -> Option<String> {
        unusable_url(url).or_else(|| private_host(url))
    }

    #[tokio::test]
    async fn a_name_resolving_to_loopback_only_does_not_resolve() {
        let e = PublicOnly
            .resolve(Name::from_str("localhost").expect("name"))
            .await
            .err()
            .expect("refused");
        assert!(e.to_string().contains("no public address"), "{e}");
    }

    #[test]
    fn only_public_unicast_addresses_pass() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "2001:db8::1",
            "::7f00:1",
            "2002:7f00:1::1",
            "2002:a00:1::1",
            "fec0::1",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
        for public in [
            "2002:808:808::1",
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
        for refused in [
            "http://127.0.0.1:9/hook",
            "http://[::1]/hook",
            "https://10.0.0.5/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://localhost:8080/",
            "ftp://example.com/",
        ] {
            assert!(
                refused_outright(&url::Url::parse(refused).expect("url")).is_some(),
                "{refused}"
            );
        }
        assert_eq!(
            refused_outright(&url::Url::parse("https://hooks.example.com/x").expect("url")),
            None
        );
    }
}
