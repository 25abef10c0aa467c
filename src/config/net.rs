//! `AXNT_TRUSTED_PROXIES`: the proxies whose `X-Forwarded-For` is believed, as single
//! addresses or CIDR ranges.
//!
//! Addresses are compared in their canonical form: an IPv4-mapped IPv6 address
//! (`::ffff:10.0.0.5`, what a dual-stack socket reports for an IPv4 peer) is the IPv4
//! address it carries, in a setting as in a peer or a forwarded hop.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net};

/// The trusted proxies, each a network (a single address is a /32 or /128).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Whether `ip` (in any form, IPv4-mapped included) is one of them.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// One entry of the list: `10.0.0.5`, `10.0.0.0/8`, `fd00::/8`, `::ffff:10.0.0.5`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxyEntry(IpNet);

impl FromStr for ProxyEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let net = match s.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => s
                .parse::<IpNet>()
                .map_err(|_| "expected e.g. 10.0.0.5 or 10.0.0.0/8".to_string())?,
        };
        // A range written with host bits (`10.1.2.3/8`) is more likely a typo for an
        // address than the range it would widen to; a /0 trusts the whole internet to
        // name its own address. Both are refused rather than guessed.
        if net != net.trunc() {
            return Err(format!(
                "host bits are set: the range is {}, the address alone is {}",
                net.trunc(),
                net.addr()
            ));
        }
        let net = canonical(net);
        if net.prefix_len() == 0 {
            return Err(
                "trusts every address: anyone could forge X-Forwarded-For; name the load balancer's subnets"
                    .to_string(),
            );
        }
        Ok(Self(net))
    }
}

impl fmt::Display for ProxyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A comma-separated list, as the environment gives it.
impl FromStr for TrustedProxies {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.parse::<ProxyEntry>()
                    .map_err(|why| format!("{e:?}: {why}"))
            })
            .collect()
    }
}

impl FromIterator<ProxyEntry> for TrustedProxies {
    fn from_iter<I: IntoIterator<Item = ProxyEntry>>(entries: I) -> Self {
        Self(entries.into_iter().map(|e| e.0).collect())
    }
}

/// An IPv6 range inside `::ffff:0:0/96` is the IPv4 range it maps.
fn canonical(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && let Some(v4) = v6.network().to_ipv4_mapped()
        && let Some(prefix) = v6.prefix_len().checked_sub(96)
        && let Ok(v4) = Ipv4Net::new(v4, prefix)
    {
        return IpNet::V4(v4);
    }
    net
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(entries: &[&str]) -> TrustedProxies {
        entries.join(",").parse().expect("entries")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_range_with_host_bits_or_of_everything_is_refused() {
        for bad in [
            "10.1.2.3/8",
            "0.0.0.0/0",
            "::/0",
            "fd00::1/8",
            "::ffff:10.1.2.3/104",
        ] {
            assert!(bad.parse::<ProxyEntry>().is_err(), "{bad}");
        }
        for good in [
            "10.0.0.0/8",
            "10.1.2.3/32",
            "fd00::/8",
            "::ffff:10.0.0.0/104",
        ] {
            assert!(good.parse::<ProxyEntry>().is_ok(), "{good}");
        }
    }

    #[test]
    fn ranges_and_single_addresses_match_in_every_form() {
        let trusted = proxies(&["10.0.0.0/8", "fd00::/8", "192.0.2.7"]);
        for inside in [
            "10.1.2.3",
            "::ffff:10.1.2.3",
            "fd12:3456::1",
            "192.0.2.7",
            "::ffff:192.0.2.7",
        ] {
            assert!(trusted.contains(ip(inside)), "{inside}");
        }
        for outside in ["11.0.0.1", "192.0.2.8", "fe80::1", "::1", "::ffff:11.0.0.1"] {
            assert!(!trusted.contains(ip(outside)), "{outside}");
        }
    }

    #[test]
    fn an_ipv4_mapped_entry_is_its_ipv4_address() {
        let trusted = proxies(&["::ffff:10.0.0.5", "::ffff:172.16.0.0/108"]);
        assert!(trusted.contains(ip("10.0.0.5")));
        assert!(trusted.contains(ip("::ffff:10.0.0.5")));
        assert!(trusted.contains(ip("172.16.200.1")), "/108 maps to /12");
        assert!(!trusted.contains(ip("172.32.0.1")));
        assert_eq!(
            "::ffff:172.16.0.0/108"
                .parse::<ProxyEntry>()
                .expect("entry")
                .to_string(),
            "172.16.0.0/12"
        );
    }

    #[test]
    fn names_and_malformed_ranges_are_refused() {
        for bad in ["proxy.internal", "10.0.0.0/33", "10.0.0.0/", "10.0.0"] {
            assert!(bad.parse::<ProxyEntry>().is_err(), "{bad}");
        }
    }
}
