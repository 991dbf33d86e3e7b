//! Steering service traffic that arrives at the node's own address into
//! the switch, the way Cilium attaches to the host device at tc ingress.
//!
//! NodePort requests, and replies to flows the switch masqueraded to the
//! node's address, arrive on the node's underlay interface addressed to
//! the node itself; left alone, the node's kernel would answer them with a
//! RST. A u32 filter on the interface's ingress redirects exactly these
//! packets to the host port (`psw0`), where the switch reads them:
//! - TCP and UDP to `node_ip` with a destination port in the NodePort range
//!   or in [`SNAT_PORTS`] (one 0xf000 mask), and to every other address
//!   NodePorts open on ([`crate::tables::node_ports`]) in the NodePort range;
//! - ICMP echo replies and errors to `node_ip` (replies to masqueraded
//!   pings, errors about masqueraded flows; the switch hands those it does
//!   not track back to the node's stack through the same host port).
//!
//! Matches assume a 20-byte IPv4 header and first fragments, which the
//! filters check too. Traffic the switch sends with the node's address
//! leaves through the host port and the node's routing, which accepts it
//! because the host port has `accept_local` set.

use std::net::Ipv4Addr;

use super::netlink::{Netlink, NetlinkError};
use crate::tables::services::SNAT_PORTS;

/// Filter priorities used (the ingress qdisc is ours).
const FIRST_PRIORITY: u16 = 100;

/// Splits the inclusive port range `lo..=hi` into (value, mask) blocks
/// aligned to powers of two, as a u32 match needs.
pub fn port_masks(lo: u16, hi: u16) -> Vec<(u16, u16)> {
    let mut out = Vec::new();
    let (mut cur, hi) = (u32::from(lo), u32::from(hi));
    while cur <= hi {
        // The largest aligned block starting at `cur` that fits.
        let mut size = if cur == 0 {
            1 << 16
        } else {
            1u32 << cur.trailing_zeros()
        };
        while cur + size - 1 > hi {
            size >>= 1;
        }
        out.push((cur as u16, !((size - 1) as u16)));
        cur += size;
    }
    out
}

/// Filter priorities one address may use: address `k` of [`install`]
/// takes `FIRST_PRIORITY + k * PRIORITIES_PER_ADDRESS` onwards.
pub const PRIORITIES_PER_ADDRESS: u16 = 64;

/// What is steered for one address of the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SteerAddress {
    pub ip: Ipv4Addr,
    /// The NodePort range, if NodePorts open on this address.
    pub node_ports: Option<(u16, u16)>,
    /// The address the switch translates to (masquerade, NodePort SNAT):
    /// replies to its [`SNAT_PORTS`] and ICMP echo replies and errors are
    /// steered too.
    pub translation: bool,
}

/// The u32 keys (offset, value, mask) of the steering rules of `addr`.
pub fn rules(addr: &SteerAddress) -> Vec<Vec<(i32, u32, u32)>> {
    let base = [
        // version 4, IHL 5
        (0, 0x4500_0000, 0xff00_0000),
        // first fragment (offset 0)
        (4, 0, 0x0000_1fff),
        (16, u32::from(addr.ip), 0xffff_ffff),
    ];
    let proto = |p: u32| (8, p << 16, 0x00ff_0000);
    let mut out = Vec::new();
    let mut ranges = addr
        .node_ports
        .map(|(lo, hi)| port_masks(lo, hi))
        .unwrap_or_default();
    if addr.translation {
        ranges.push((SNAT_PORTS.start as u16, 0xf000));
    }
    for p in [6u32, 17] {
        for &(val, mask) in &ranges {
            let mut k = base.to_vec();
            k.push(proto(p));
            k.push((20, u32::from(val), u32::from(mask)));
            out.push(k);
        }
    }
    // Echo replies answer masqueraded pings; errors may concern any flow
    // the switch translated to or from this address.
    let icmp: &[u32] = if addr.translation {
        &[0, 3, 11]
    } else {
        &[3, 11]
    };
    if addr.translation || addr.node_ports.is_some() {
        for &icmp_type in icmp {
            let mut k = base.to_vec();
            k.push(proto(1));
            k.push((20, icmp_type << 24, 0xff00_0000));
            out.push(k);
        }
    }
    out
}

/// Installs the steering filters of `addr` on the interface holding it,
/// redirecting to link `host_port`, at the priorities of address number
/// `slot`. Returns the number of filters.
///
/// # Errors
/// No interface has the address, or the kernel refused the qdisc or a
/// filter (tc's u32 classifier and mirred action are needed).
pub fn install(
    nl: &Netlink,
    addr: &SteerAddress,
    slot: u16,
    host_port: u32,
) -> Result<usize, SteerError> {
    let dev = nl
        .link_with_address(addr.ip)?
        .ok_or(SteerError::NoInterface(addr.ip))?;
    if dev == host_port {
        return Err(SteerError::OnHostPort(addr.ip));
    }
    let first = slot
        .checked_mul(PRIORITIES_PER_ADDRESS)
        .and_then(|p| p.checked_add(FIRST_PRIORITY))
        .filter(|p| *p <= u16::MAX - PRIORITIES_PER_ADDRESS)
        .ok_or(SteerError::TooManyAddresses(slot))?;
    nl.add_ingress_qdisc(dev)?;
    let rules = rules(addr);
    debug_assert!(rules.len() <= usize::from(PRIORITIES_PER_ADDRESS));
    for (i, keys) in rules.iter().enumerate() {
        nl.add_redirect_filter(dev, first + i as u16, keys, host_port)?;
    }
    Ok(rules.len())
}

/// Why steering could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// No interface of the node has its underlay address.
    #[error("no interface has the node address {0}")]
    NoInterface(Ipv4Addr),
    /// The address sits on the host port itself: steering it would loop.
    #[error("{0} is an address of the host port; NodePorts cannot open on it")]
    OnHostPort(Ipv4Addr),
    /// More NodePort addresses than filter priorities.
    #[error("too many NodePort addresses (address number {0})")]
    TooManyAddresses(u16),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covered(masks: &[(u16, u16)]) -> Vec<u16> {
        (0..=u16::MAX)
            .filter(|p| masks.iter().any(|&(v, m)| p & m == v))
            .collect()
    }

    #[test]
    fn node_port_range_masks_cover_exactly_the_range() {
        let m = port_masks(30000, 32767);
        assert!(m.len() <= 16, "{m:?}");
        assert_eq!(covered(&m), (30000..=32767).collect::<Vec<_>>());
        assert_eq!(port_masks(61440, 65535), vec![(61440, 0xf000)]);
        assert_eq!(covered(&port_masks(1, 1)), vec![1]);
        assert_eq!(covered(&port_masks(0, 65535)).len(), 65536);
    }

    #[test]
    fn rules_match_node_ip_and_ports() {
        let mut addr = SteerAddress {
            ip: Ipv4Addr::new(198, 18, 0, 1),
            node_ports: Some((30000, 32767)),
            translation: true,
        };
        let r = rules(&addr);
        assert!(r
            .iter()
            .all(|k| k.contains(&(16, 0xc612_0001, 0xffff_ffff))));
        assert_eq!(r.len(), 2 * (port_masks(30000, 32767).len() + 1) + 3);
        assert!(r.len() <= usize::from(PRIORITIES_PER_ADDRESS));
        // A NodePort-only address: the range and ICMP errors, no SNAT
        // ports, no echo replies.
        addr.translation = false;
        let r = rules(&addr);
        assert_eq!(r.len(), 2 * port_masks(30000, 32767).len() + 2);
        assert!(!r.iter().any(|k| k.contains(&(20, 0xf000, 0xf000))));
        // The node address without NodePorts still steers masquerade replies.
        addr.translation = true;
        addr.node_ports = None;
        assert_eq!(rules(&addr).len(), 2 + 3);
        addr.translation = false;
        assert!(rules(&addr).is_empty());
    }
}
