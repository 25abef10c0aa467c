//! Who the client is: the one rule for the flow log's `ipAddress`, the rate limits and
//! the per-client connection cap.
//!
//! The client is the socket's peer, unless the peer is a trusted proxy
//! (`AXNT_TRUSTED_PROXIES`): then `X-Forwarded-For` is walked from the right, each proxy
//! having appended the address it saw, past every hop that is itself a trusted proxy;
//! the first hop that is not is the client. Hops further left are the client's to
//! forge and are never read. A hop that is not an address stops the walk: the client is
//! then the last trusted proxy seen, so garbage never buys a fresh rate-limit bucket.
//! Addresses are taken in canonical form (`::ffff:10.0.0.5` is `10.0.0.5`).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::HeaderValue;
use axum::http::request::Parts;

use crate::config::TrustedProxies;

/// The client's address, from the request's peer and `X-Forwarded-For`.
pub(crate) fn client_ip(parts: &Parts, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>()?.0.ip();
    Some(resolve(
        peer,
        parts.headers.get_all("x-forwarded-for").iter(),
        trusted,
    ))
}

/// The walk described in the module's documentation. Several `X-Forwarded-For` lines
/// are one list, in order.
fn resolve<'a>(
    peer: IpAddr,
    forwarded_for: impl DoubleEndedIterator<Item = &'a HeaderValue>,
    trusted: &TrustedProxies,
) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    for line in forwarded_for.rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for hop in line.rsplit(',') {
            let Some(hop) = parse_hop(hop.trim()) else {
                return client;
            };
            if !trusted.contains(hop) {
                return hop;
            }
            client = hop;
        }
    }
    client
}

/// A hop: an address, or an address with a port (some proxies add it:
/// `203.0.113.7:52341`, `[2001:db8::7]:52341`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|s| s.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// What per-client limits count by: an IPv4 address, or an IPv6 client's /64. A host
/// or subscriber is given a whole /64, so counting its single addresses would give one
/// client 2^64 allowances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey(IpAddr);

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        Self(match ip.to_canonical() {
            IpAddr::V4(v4) => IpAddr::V4(v4),
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX))),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(entries: &str) -> TrustedProxies {
        entries.parse().expect("proxies")
    }

    fn client(peer: &str, lines: &[&str], proxies: &TrustedProxies) -> String {
        let values: Vec<HeaderValue> = lines
            .iter()
            .map(|l| HeaderValue::from_str(l).expect("value"))
            .collect();
        resolve(peer.parse().expect("peer"), values.iter(), proxies).to_string()
    }

    #[test]
    fn the_right_most_hop_that_is_not_a_trusted_proxy_is_the_client() {
        let proxies = trusted("10.0.0.0/8, fd00::/8");
        // The client forged the left-most hop; the load balancer appended the real one.
        assert_eq!(
            client("10.0.0.5", &["1.2.3.4, 203.0.113.7"], &proxies),
            "203.0.113.7"
        );
        // Two proxies in a row, on two header lines.
        assert_eq!(
            client("10.0.0.5", &["1.2.3.4, 203.0.113.7", "10.9.9.9"], &proxies),
            "203.0.113.7"
        );
        assert_eq!(
            client("fd00::5", &["198.51.100.1, fd00::6"], &proxies),
            "198.51.100.1"
        );
        // No header: the proxy itself.
        assert_eq!(client("10.0.0.5", &[], &proxies), "10.0.0.5");
        // Only proxies: the left-most of them.
        assert_eq!(
            client("10.0.0.5", &["10.1.1.1, 10.2.2.2"], &proxies),
            "10.1.1.1"
        );
        // A port on a hop is dropped.
        assert_eq!(
            client("10.0.0.5", &["203.0.113.7:52341"], &proxies),
            "203.0.113.7"
        );
        assert_eq!(
            client("10.0.0.5", &["[2001:db8::7]:52341"], &proxies),
            "2001:db8::7"
        );
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let proxies = trusted("10.0.0.0/8");
        assert_eq!(
            client("198.51.100.9", &["203.0.113.7"], &proxies),
            "198.51.100.9"
        );
        assert_eq!(
            client("198.51.100.9", &[], &TrustedProxies::default()),
            "198.51.100.9"
        );
    }

    #[test]
    fn ipv4_mapped_peers_and_hops_are_their_ipv4_addresses() {
        let proxies = trusted("127.0.0.1");
        assert_eq!(
            client("::ffff:127.0.0.1", &["::ffff:203.0.113.7"], &proxies),
            "203.0.113.7"
        );
        assert_eq!(client("::ffff:198.51.100.9", &[], &proxies), "198.51.100.9");
    }

    #[test]
    fn a_malformed_hop_stops_the_walk_at_the_last_trusted_proxy() {
        let proxies = trusted("10.0.0.0/8");
        for garbage in ["unknown", "", "203.0.113.7 x", "_hidden"] {
            assert_eq!(
                client("10.0.0.5", &[&format!("203.0.113.7, {garbage}")], &proxies),
                "10.0.0.5",
                "{garbage:?}"
            );
            assert_eq!(
                client("10.0.0.5", &[&format!("{garbage}, 10.0.0.6")], &proxies),
                "10.0.0.6",
                "{garbage:?}"
            );
        }
        // Garbage left of the client is never read.
        assert_eq!(
            client("10.0.0.5", &["unknown, 203.0.113.7"], &proxies),
            "203.0.113.7"
        );
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let key = |s: &str| ClientKey::from(s.parse::<IpAddr>().expect("ip"));
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:ffff")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(key("192.0.2.1"), key("192.0.2.2"));
        assert_eq!(key("::ffff:192.0.2.1"), key("192.0.2.1"));
    }
}
