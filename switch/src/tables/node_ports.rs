//! Where NodePorts open: kube-proxy's `--nodeport-addresses`
//! (`nodePortAddresses` in its configuration).
//!
//! The list holds `"primary"` (the node's underlay address, its
//! InternalIP) and IPv4 CIDRs; a NodePort answers on every IPv4 address of
//! the node's namespace inside one of the CIDRs, and on the primary address
//! when it is listed. The default is `["primary"]`, kube-proxy's default in
//! its nftables mode (KEP-3866): a NodePort is not opened on an address
//! nobody asked for. `0.0.0.0/0` opens NodePorts on every address of the
//! node, as kube-proxy's iptables mode does by default.
//!
//! Loopback addresses never match: the switch steers NodePort traffic at the
//! ingress of the interface holding the address, and `lo` has no such
//! traffic. (kube-proxy's nftables mode does not open NodePorts on
//! 127.0.0.1 either.)
//!
//! The daemon resolves the list against the node's addresses when it
//! starts and re-checks it every few seconds, so an address added to the
//! node later starts answering without a restart.

use std::net::Ipv4Addr;

pub use podswitch_api::config::{default_list, parse_list, NodePortAddress, NodePortAddressError};

/// Whether the list needs the node's address list (it has a CIDR entry).
pub fn needs_local_addresses(list: &[NodePortAddress]) -> bool {
    list.iter().any(|a| matches!(a, NodePortAddress::Cidr(_)))
}

/// The addresses NodePorts open on: the primary address if listed, and
/// every non-loopback address in `local` inside a listed CIDR; sorted,
/// without repeats.
pub fn resolve(
    list: &[NodePortAddress],
    primary: Option<Ipv4Addr>,
    local: &[Ipv4Addr],
) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for entry in list {
        match entry {
            NodePortAddress::Primary => out.extend(primary),
            NodePortAddress::Cidr(n) => out.extend(
                local
                    .iter()
                    .copied()
                    .filter(|ip| !ip.is_loopback() && n.contains(ip)),
            ),
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn entries_parse_like_kube_proxy_and_bad_ones_say_why() {
        assert_eq!(
            parse_list("primary, 198.18.0.0/15").unwrap(),
            vec![
                NodePortAddress::Primary,
                NodePortAddress::Cidr("198.18.0.0/15".parse().unwrap())
            ]
        );
        let e = "198.18.0.1/15".parse::<NodePortAddress>().unwrap_err();
        assert!(e.to_string().contains("198.18.0.0/15"), "{e}");
        let e = "fd00::/64".parse::<NodePortAddress>().unwrap_err();
        assert!(e.to_string().contains("IPv4-only"), "{e}");
        let e = "eth0".parse::<NodePortAddress>().unwrap_err();
        assert!(e.to_string().contains("\"eth0\""), "{e}");
        assert!(parse_list(" , ").is_err());
        // A bare address is a /32.
        assert_eq!(
            "198.18.0.9/32".parse::<NodePortAddress>().unwrap(),
            NodePortAddress::Cidr("198.18.0.9/32".parse().unwrap())
        );
    }

    #[test]
    fn a_list_round_trips_through_serde() {
        let list = parse_list("primary,10.0.0.0/8").unwrap();
        let json = serde_json::to_string(&list).unwrap();
        assert_eq!(json, r#"["primary","10.0.0.0/8"]"#);
        let back: Vec<NodePortAddress> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, list);
        assert!(serde_json::from_str::<Vec<NodePortAddress>>(r#"["10.0.0.1/8"]"#).is_err());
    }

    #[test]
    fn resolution_takes_primary_and_matching_non_loopback_addresses() {
        let local = [
            ip("127.0.0.1"),
            ip("198.18.0.1"),
            ip("198.18.0.201"),
            ip("198.18.0.202"),
            ip("10.244.1.1"),
        ];
        let primary = Some(ip("198.18.0.1"));
        assert_eq!(
            resolve(&default_list(), primary, &local),
            vec![ip("198.18.0.1")]
        );
        assert_eq!(
            resolve(
                &parse_list("primary,198.18.0.202/32").unwrap(),
                primary,
                &local
            ),
            vec![ip("198.18.0.1"), ip("198.18.0.202")]
        );
        // Without "primary", the node address answers only if a CIDR has it.
        assert_eq!(
            resolve(&parse_list("198.18.0.200/29").unwrap(), primary, &local),
            vec![ip("198.18.0.201"), ip("198.18.0.202")]
        );
        assert_eq!(
            resolve(&parse_list("0.0.0.0/0").unwrap(), primary, &local),
            vec![
                ip("10.244.1.1"),
                ip("198.18.0.1"),
                ip("198.18.0.201"),
                ip("198.18.0.202")
            ]
        );
        assert!(resolve(&default_list(), None, &local).is_empty());
    }
}
