//! Topology tables: immutable snapshots the workers read, and how they are
//! published.
//!
//! The control thread builds a new [`Tables`] from the desired topology and
//! swaps it in whole ([`TablePublisher::publish`], arc-swap). A worker loads
//! the current snapshot once per batch; no lock is taken on either side.
//! Addresses are `IpAddr`-generic and routes are kept per family, so IPv6
//! slots in beside IPv4 without a change of shape.

pub mod maglev;
pub mod node_ports;
pub mod services;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ipnet::{IpNet, Ipv6Net};
use prefix_trie::PrefixMap;
use serde::{Deserialize, Serialize};

/// Index of a port in [`Tables::ports`]; stable while the port exists.
pub type PortId = u32;

/// The switch's own addresses towards its pods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gateway {
    /// The MAC every pod sends to (proxy ARP answers with it).
    pub mac: [u8; 6],
    /// The pods' default gateway, by convention the first address of the
    /// node's IPv4 pod CIDR.
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
}

/// A pod's port as the datapath sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodPort {
    pub id: PortId,
    /// `namespace/name` of the pod.
    pub pod: String,
    /// Interface name inside the pod (usually `eth0`).
    pub ifname: String,
    /// The pod's network namespace (a path such as /run/netns/NAME).
    pub netns: PathBuf,
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
    pub mtu: u32,
    /// Whether the port takes partial checksums and GSO superframes as they
    /// are (taps with vnet_hdr and TUNSETOFFLOAD do).
    pub offloads: bool,
    /// What is behind the port.
    #[serde(default)]
    pub kind: PortKind,
}

/// What is behind a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortKind {
    /// A pod: may send only with its own MAC and addresses.
    #[default]
    Pod,
    /// The node's own network stack (the `psw0` tap in the node's
    /// namespace): the node's processes, and in native mode traffic routed
    /// by the node's kernel from and to other nodes and the outside. It
    /// sends with any source address.
    Host,
    /// Frames decapsulated from the VXLAN overlay (sent by other nodes'
    /// pods, addressed to this node's VTEP MAC).
    Overlay,
}

/// Where a destination prefix leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteTarget {
    /// A pod on this node.
    Local(PortId),
    /// Inside a local pod CIDR but no pod has the address.
    Unassigned,
    /// A pod CIDR of another node, reached over the VXLAN overlay; the
    /// index into [`Overlay::nodes`].
    Node(u16),
}

/// A remote node as the overlay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayNode {
    pub name: String,
    pub underlay_ipv4: Ipv4Addr,
    pub vtep_mac: [u8; 6],
    pub pod_cidrs: Vec<IpNet>,
}

/// The VXLAN overlay (RFC 7348) of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub vni: u32,
    pub udp_port: u16,
    pub local_ipv4: Ipv4Addr,
    pub vtep_mac: [u8; 6],
    /// The port id decapsulated frames enter the pipeline on.
    pub port: PortId,
    pub nodes: Vec<OverlayNode>,
    /// The pods' MTU (the inner frames'): the segment size of a TCP
    /// superframe that arrives whole (UDP-tunnel GSO across a veth).
    pub pod_mtu: u16,
}

impl Overlay {
    /// The node with this underlay address (decap accepts only these).
    pub fn node_by_ip(&self, ip: Ipv4Addr) -> Option<u16> {
        self.nodes
            .iter()
            .position(|n| n.underlay_ipv4 == ip)
            .map(|i| i as u16)
    }
}

/// Routes: a longest-prefix match per family.
///
/// IPv4 prefixes are kept as one map per distinct prefix length, keyed by
/// the truncated address as a `u32`, probed longest first (typically /32
/// for the local pods, then /24 for the nodes' pod CIDRs, then /0), instead
/// of a trie walk (a trie lookup was ~320 instructions per packet). Where a
/// level's prefixes are close together, as a node's pod addresses and a
/// cluster's per-node CIDRs are, the level is also a direct-indexed array
/// over their range ([`DenseLevel`]): a probe is then a subtraction, a
/// shift and a bounds check instead of a hash-map lookup. A node has a
/// handful of prefix lengths, so the walk is short. IPv6 has an
/// exact-match table of host routes in front of a trie.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    hosts: rustc_hash::FxHashMap<std::net::Ipv6Addr, RouteTarget>,
    /// IPv4 prefixes by length, longest first; keys are truncated network
    /// addresses.
    v4: Vec<PrefixLevel>,
    v6: PrefixMap<Ipv6Net, RouteTarget>,
}

/// The IPv4 routes of one prefix length.
#[derive(Debug, Clone)]
struct PrefixLevel {
    /// Netmask of the length (0 for /0).
    mask: u32,
    routes: rustc_hash::FxHashMap<u32, RouteTarget>,
    /// The same routes as an array, while their range is small enough.
    dense: Option<DenseLevel>,
}

/// Prefixes of one length as an array indexed by prefix number (the
/// network address shifted right by the host bits) minus the first one's.
#[derive(Debug, Clone)]
struct DenseLevel {
    /// The first slot's prefix number.
    base: u32,
    /// Host bits of the length (32 - prefix length; 32 for /0).
    shift: u32,
    slots: Box<[Option<RouteTarget>]>,
}

/// Most slots a dense level may have (8 bytes each: 32 KiB): a /32 level
/// of a node's pods (a /24 or /22 pod CIDR) or a /24 level with a CIDR per
/// node of a 4k-node cluster fits; a level spread wider stays a hash map.
const DENSE_MAX_SLOTS: u64 = 4096;

impl DenseLevel {
    /// The routes of a level as an array with room to grow on both sides,
    /// or `None` if their range needs more than [`DENSE_MAX_SLOTS`].
    fn build(mask: u32, routes: &rustc_hash::FxHashMap<u32, RouteTarget>) -> Option<Self> {
        // 32 for /0: every address is prefix number 0.
        let shift = mask.trailing_zeros();
        let number = |net: u32| u64::from(net.checked_shr(shift).unwrap_or(0));
        let lo = routes.keys().map(|&k| number(k)).min()?;
        let hi = routes.keys().map(|&k| number(k)).max()?;
        let span = hi - lo + 1;
        if span > DENSE_MAX_SLOTS {
            return None;
        }
        // Room to grow, half below and half above (within the address
        // space): inserting a node's pods one by one rebuilds the array
        // only when it has doubled, so building a table stays linear.
        let room = (span * 2).min(DENSE_MAX_SLOTS) - span;
        let last_number = number(u32::MAX);
        let base = lo.saturating_sub(room / 2);
        let end = (hi + room - (lo - base)).min(last_number);
        let mut slots = vec![None; (end - base + 1) as usize].into_boxed_slice();
        for (&net, &t) in routes {
            slots[(number(net) - base) as usize] = Some(t);
        }
        Some(DenseLevel {
            base: base as u32,
            shift,
            slots,
        })
    }

    /// Sets one route; false if it falls outside the array.
    fn set(&mut self, net: u32, target: RouteTarget) -> bool {
        let number = net.checked_shr(self.shift).unwrap_or(0);
        match number
            .checked_sub(self.base)
            .and_then(|i| self.slots.get_mut(i as usize))
        {
            Some(slot) => {
                *slot = Some(target);
                true
            }
            None => false,
        }
    }

    /// The route whose prefix `a` falls in, if the array has one.
    #[inline]
    fn get(&self, a: u32) -> Option<RouteTarget> {
        let number = a.checked_shr(self.shift).unwrap_or(0);
        let i = number.wrapping_sub(self.base) as usize;
        self.slots.get(i).copied().flatten()
    }
}

impl RouteTable {
    /// Adds a route; a later insert of the same prefix replaces it.
    pub fn insert(&mut self, net: IpNet, target: RouteTarget) {
        if let IpNet::V6(n) = net {
            if n.prefix_len() == n.max_prefix_len() {
                self.hosts.insert(n.addr(), target);
                return;
            }
        }
        match net {
            IpNet::V4(n) => {
                let mask = u32::from(n.netmask());
                let at = match self.v4.iter().position(|l| l.mask <= mask) {
                    Some(i) if self.v4[i].mask == mask => i,
                    Some(i) => {
                        self.v4.insert(i, PrefixLevel::new(mask));
                        i
                    }
                    None => {
                        self.v4.push(PrefixLevel::new(mask));
                        self.v4.len() - 1
                    }
                };
                self.v4[at].insert(u32::from(n.network()), target);
            }
            IpNet::V6(n) => {
                self.v6.insert(n.trunc(), target);
            }
        }
    }

    /// Longest-prefix match for one IPv4 address: the packet path's. Kept
    /// out of line: it is small without the IPv6 half of [`Self::lookup`],
    /// and inlined into the fast path's loop it cost the established
    /// service flow more in register spills (+17 instructions per packet)
    /// than the call.
    #[inline(never)]
    pub fn lookup_v4(&self, a: Ipv4Addr) -> Option<RouteTarget> {
        let a = u32::from(a);
        self.v4.iter().find_map(|l| l.get(a))
    }

    /// Longest-prefix match for one address.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<RouteTarget> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => match self.hosts.get(&a) {
                Some(t) => Some(*t),
                None => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, t)| *t),
            },
        }
    }
}

/// Listing and explaining routes, for the control API (`ctl routes`); off
/// the fast path: these allocate and walk every level.
impl RouteTable {
    /// Every route, longest prefix first and then by address (IPv4 before
    /// IPv6): the order in which [`RouteTable::lookup`] prefers them.
    pub fn entries(&self) -> Vec<(IpNet, RouteTarget)> {
        let mut out: Vec<(IpNet, RouteTarget)> = self
            .hosts
            .iter()
            .map(|(a, t)| (IpNet::from(IpAddr::V6(*a)), *t))
            .collect();
        for l in &self.v4 {
            let len = l.mask.count_ones() as u8;
            out.extend(l.routes.iter().map(|(net, t)| {
                let n = ipnet::Ipv4Net::new(Ipv4Addr::from(*net), len)
                    .expect("a netmask has at most 32 bits");
                (IpNet::V4(n), *t)
            }));
        }
        out.extend(self.v6.iter().map(|(n, t)| (IpNet::V6(n), *t)));
        out.sort_by_key(|(n, _)| {
            (
                matches!(n, IpNet::V6(_)),
                std::cmp::Reverse(n.prefix_len()),
                n.addr(),
            )
        });
        out
    }

    /// The route `addr` matches, with its prefix: the entry
    /// [`RouteTable::lookup`] picks (like `ip route get`).
    pub fn lookup_entry(&self, addr: IpAddr) -> Option<(IpNet, RouteTarget)> {
        if let IpAddr::V6(a) = addr {
            if let Some(t) = self.hosts.get(&a) {
                return Some((IpNet::from(addr), *t));
            }
        }
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|l| {
                    let net = a & l.mask;
                    l.routes.get(&net).map(|t| {
                        let n = ipnet::Ipv4Net::new(Ipv4Addr::from(net), l.mask.count_ones() as u8)
                            .expect("a netmask has at most 32 bits");
                        (IpNet::V4(n), *t)
                    })
                })
            }
            IpAddr::V6(a) => self
                .v6
                .get_lpm(&Ipv6Net::from(a))
                .map(|(n, t)| (IpNet::V6(n), *t)),
        }
    }
}

impl PrefixLevel {
    fn new(mask: u32) -> Self {
        PrefixLevel {
            mask,
            routes: Default::default(),
            dense: None,
        }
    }

    fn insert(&mut self, net: u32, target: RouteTarget) {
        self.routes.insert(net, target);
        let fits = match &mut self.dense {
            Some(d) => d.set(net, target),
            None => false,
        };
        if !fits {
            self.dense = DenseLevel::build(self.mask, &self.routes);
        }
    }

    /// The route of this length that `a` falls in.
    #[inline]
    fn get(&self, a: u32) -> Option<RouteTarget> {
        match &self.dense {
            Some(d) => d.get(a),
            None => self.routes.get(&(a & self.mask)).copied(),
        }
    }
}

/// One immutable snapshot of everything the pipeline reads.
#[derive(Debug, Clone)]
pub struct Tables {
    /// Increases with every publish; workers compare it to notice changes.
    pub generation: u64,
    pub node: String,
    pub gateway: Gateway,
    pub pod_cidrs: Vec<IpNet>,
    /// Indexed by [`PortId`]; `None` for free slots.
    pub ports: Vec<Option<PodPort>>,
    pub routes: RouteTable,
    /// Set in VXLAN mode.
    pub overlay: Option<Overlay>,
    /// Services: frontends, backends, masquerade settings.
    pub services: Arc<services::ServiceTable>,
}

impl Tables {
    /// Builds a snapshot; routes are derived: each pod CIDR is `Unassigned`
    /// and each pod address a host route to its port.
    pub fn new(
        node: &str,
        gateway: Gateway,
        pod_cidrs: Vec<IpNet>,
        ports: Vec<Option<PodPort>>,
    ) -> Self {
        let mut routes = RouteTable::default();
        for cidr in &pod_cidrs {
            routes.insert(*cidr, RouteTarget::Unassigned);
        }
        // Everything that is not a local pod goes to the node's stack, which
        // routes it (other nodes in native mode, the outside).
        if let Some(host) = ports.iter().flatten().find(|p| p.kind == PortKind::Host) {
            routes.insert(
                "0.0.0.0/0".parse().expect("valid"),
                RouteTarget::Local(host.id),
            );
        }
        for p in ports.iter().flatten() {
            if let Some(a) = p.ipv4 {
                routes.insert(IpNet::from(IpAddr::V4(a)), RouteTarget::Local(p.id));
            }
            if let Some(a) = p.ipv6 {
                routes.insert(IpNet::from(IpAddr::V6(a)), RouteTarget::Local(p.id));
            }
        }
        let services = Arc::new(services::ServiceTable::empty(gateway.ipv4));
        Tables {
            generation: 0,
            node: node.to_string(),
            gateway,
            pod_cidrs,
            ports,
            routes,
            overlay: None,
            services,
        }
    }

    /// Adds the VXLAN overlay: each remote node's pod CIDRs route to it.
    pub fn with_overlay(mut self, overlay: Overlay) -> Self {
        for (i, n) in overlay.nodes.iter().enumerate() {
            for c in &n.pod_cidrs {
                self.routes.insert(*c, RouteTarget::Node(i as u16));
            }
        }
        self.overlay = Some(overlay);
        self
    }

    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PodPort> {
        self.ports.get(id as usize).and_then(|p| p.as_ref())
    }
}

/// Publishes snapshots of `T` to readers without locks (RCU-style).
#[derive(Debug)]
pub struct TablePublisher<T> {
    current: ArcSwap<T>,
}

impl<T> TablePublisher<T> {
    pub fn new(initial: T) -> Self {
        Self {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// Swaps in a new snapshot; readers see it at their next load.
    pub fn publish(&self, next: T) {
        self.current.store(Arc::new(next));
    }

    /// The current snapshot (a reader holds it for one batch).
    #[inline]
    pub fn load(&self) -> arc_swap::Guard<Arc<T>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<T> {
        self.current.load_full()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: PortId, ip: [u8; 4]) -> Option<PodPort> {
        Some(PodPort {
            id,
            pod: format!("default/p{id}"),
            ifname: "eth0".into(),
            netns: PathBuf::from("/run/netns/x"),
            mac: [2, 0, 0, 0, 0, id as u8],
            ipv4: Some(Ipv4Addr::from(ip)),
            ipv6: None,
            mtu: 1500,
            offloads: true,
            kind: PortKind::Pod,
        })
    }

    #[test]
    fn lpm_prefers_host_route_over_cidr() {
        let gw = Gateway {
            mac: [0xee; 6],
            ipv4: Ipv4Addr::new(10, 244, 1, 1),
            ipv6: None,
        };
        let t = Tables::new(
            "n1",
            gw,
            vec!["10.244.1.0/24".parse().unwrap()],
            vec![port(0, [10, 244, 1, 2]), None, port(2, [10, 244, 1, 9])],
        );
        assert_eq!(
            t.routes.lookup("10.244.1.2".parse().unwrap()),
            Some(RouteTarget::Local(0))
        );
        assert_eq!(
            t.routes.lookup("10.244.1.9".parse().unwrap()),
            Some(RouteTarget::Local(2))
        );
        assert_eq!(
            t.routes.lookup("10.244.1.3".parse().unwrap()),
            Some(RouteTarget::Unassigned)
        );
        assert_eq!(t.routes.lookup("10.244.2.3".parse().unwrap()), None);
        assert!(t.port(1).is_none());
        assert!(t.port(99).is_none());
    }

    #[test]
    fn lpm_picks_the_longest_of_several_lengths() {
        let mut r = RouteTable::default();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        // Inserted out of order, and one prefix given untruncated.
        r.insert(net("10.244.0.0/16"), RouteTarget::Node(1));
        r.insert(net("0.0.0.0/0"), RouteTarget::Local(9));
        r.insert(net("10.244.2.77/24"), RouteTarget::Node(2));
        r.insert(net("10.244.2.128/25"), RouteTarget::Node(3));
        r.insert(net("10.244.2.200/32"), RouteTarget::Local(4));
        let at = |r: &RouteTable, a: &str| r.lookup(a.parse().unwrap());
        assert_eq!(at(&r, "10.244.2.200"), Some(RouteTarget::Local(4)));
        assert_eq!(at(&r, "10.244.2.201"), Some(RouteTarget::Node(3)));
        assert_eq!(at(&r, "10.244.2.5"), Some(RouteTarget::Node(2)));
        assert_eq!(at(&r, "10.244.7.5"), Some(RouteTarget::Node(1)));
        assert_eq!(at(&r, "192.0.2.1"), Some(RouteTarget::Local(9)));
        // A later insert of the same prefix replaces the route.
        r.insert(net("10.244.2.0/24"), RouteTarget::Unassigned);
        assert_eq!(at(&r, "10.244.2.5"), Some(RouteTarget::Unassigned));
        assert_eq!(r.v4.len(), 5, "one level per length, /32 included");
    }

    /// Longest-prefix match by brute force over the inserted routes (a
    /// later insert of a prefix replacing an earlier one).
    fn reference_lpm(routes: &[(u32, u8, RouteTarget)], a: u32) -> Option<RouteTarget> {
        let mut best: Option<(u8, RouteTarget)> = None;
        for &(net, len, t) in routes {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            if a & mask == net & mask && best.is_none_or(|(l, _)| len >= l) {
                best = Some((len, t));
            }
        }
        best.map(|(_, t)| t)
    }

    proptest::proptest! {
        /// Dense levels (clustered prefixes, grown one insert at a time)
        /// and hash-map levels (prefixes spread wider than
        /// `DENSE_MAX_SLOTS`) answer as a brute-force longest-prefix match,
        /// at the edges of the address space too.
        #[test]
        fn lookup_agrees_with_brute_force_lpm(
            base in proptest::prop_oneof![
                proptest::strategy::Just(0u32),
                proptest::strategy::Just(u32::MAX - 300),
                proptest::prelude::any::<u32>(),
            ],
            routes in proptest::collection::vec(
                (0u32..600, proptest::prop_oneof![
                    proptest::strategy::Just(32u8), proptest::strategy::Just(24u8),
                    proptest::strategy::Just(16u8), 0u8..=32,
                ], 0u32..3, proptest::prelude::any::<bool>()),
                1..80,
            ),
            probes in proptest::collection::vec((0u32..700, proptest::prelude::any::<u32>()), 1..60),
        ) {
            let mut r = RouteTable::default();
            let mut inserted = Vec::new();
            for (i, (off, len, kind, spread)) in routes.into_iter().enumerate() {
                // Spread prefixes put a level's numbers far apart.
                let net = if spread { base.wrapping_add(off.wrapping_mul(0x0101_0101)) } else { base.wrapping_add(off << (32 - u32::from(len)).min(31)) };
                let t = match kind {
                    0 => RouteTarget::Local(i as u32),
                    1 => RouteTarget::Unassigned,
                    _ => RouteTarget::Node(i as u16),
                };
                let n = ipnet::Ipv4Net::new(Ipv4Addr::from(net), len).unwrap().trunc();
                r.insert(IpNet::V4(n), t);
                inserted.push((u32::from(n.network()), len, t));
            }
            for (off, random) in probes {
                for a in [base.wrapping_add(off), base.wrapping_add(off << 8), random, 0, u32::MAX] {
                    proptest::prop_assert_eq!(
                        r.lookup(IpAddr::V4(Ipv4Addr::from(a))),
                        reference_lpm(&inserted, a),
                        "address {}", Ipv4Addr::from(a)
                    );
                }
            }
        }
    }

    #[test]
    fn a_node_of_pods_and_a_cluster_of_node_cidrs_are_dense() {
        let mut r = RouteTable::default();
        r.insert("10.244.1.0/24".parse().unwrap(), RouteTarget::Unassigned);
        for n in 2..200 {
            r.insert(
                format!("10.244.{n}.0/24").parse().unwrap(),
                RouteTarget::Node(n),
            );
        }
        for h in 2..252u32 {
            r.insert(
                IpNet::V4(ipnet::Ipv4Net::new(Ipv4Addr::from(0x0af4_0100 + h), 32).unwrap()),
                RouteTarget::Local(h),
            );
        }
        r.insert("0.0.0.0/0".parse().unwrap(), RouteTarget::Local(0));
        assert!(r.v4.iter().all(|l| l.dense.is_some()), "every level dense");
        assert!(r
            .v4
            .iter()
            .all(|l| l.dense.as_ref().unwrap().slots.len() as u64 <= DENSE_MAX_SLOTS));
        assert_eq!(
            r.lookup("10.244.1.77".parse().unwrap()),
            Some(RouteTarget::Local(77))
        );
        assert_eq!(
            r.lookup("10.244.1.1".parse().unwrap()),
            Some(RouteTarget::Unassigned)
        );
        assert_eq!(
            r.lookup("10.244.150.3".parse().unwrap()),
            Some(RouteTarget::Node(150))
        );
        assert_eq!(
            r.lookup("192.0.2.1".parse().unwrap()),
            Some(RouteTarget::Local(0))
        );
        // A prefix far from the others turns its level back into a hash map.
        r.insert("203.0.113.5/32".parse().unwrap(), RouteTarget::Local(999));
        assert!(r.v4[0].dense.is_none());
        assert_eq!(
            r.lookup("203.0.113.5".parse().unwrap()),
            Some(RouteTarget::Local(999))
        );
        assert_eq!(
            r.lookup("10.244.1.77".parse().unwrap()),
            Some(RouteTarget::Local(77))
        );
    }

    /// With many routes of several lengths, every lookup agrees with a
    /// linear longest-prefix scan of the routes.
    #[test]
    fn lookup_agrees_with_a_linear_longest_prefix_scan() {
        let mut r = RouteTable::default();
        let mut all: Vec<(u32, u32, RouteTarget)> = Vec::new();
        let mut add = |r: &mut RouteTable, net: u32, len: u8, t: RouteTarget| {
            let n = ipnet::Ipv4Net::new(Ipv4Addr::from(net), len).unwrap();
            r.insert(IpNet::V4(n), t);
            let mask = u32::from(n.netmask());
            all.push((net & mask, mask, t));
        };
        add(&mut r, 0, 0, RouteTarget::Local(9));
        add(&mut r, 0x0af4_0000, 16, RouteTarget::Unassigned);
        for i in 0..3000u32 {
            add(&mut r, 0x0af4_0000 | (i * 7), 32, RouteTarget::Local(i));
        }
        for i in 0..20u32 {
            add(
                &mut r,
                0x0af4_0000 | (i << 10),
                22,
                RouteTarget::Node(i as u16),
            );
        }
        for a in (0x0af4_0000u32..0x0af5_0000)
            .step_by(3)
            .chain([0, u32::MAX, 0xc000_0201])
        {
            let want = all
                .iter()
                .filter(|(net, mask, _)| a & mask == *net)
                .max_by_key(|(_, mask, _)| mask.count_ones())
                .map(|(_, _, t)| *t);
            assert_eq!(r.lookup(IpAddr::V4(Ipv4Addr::from(a))), want, "{a:#x}");
        }
    }

    #[test]
    fn entries_list_longest_prefix_first_and_lookup_entry_agrees() {
        let mut r = RouteTable::default();
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        r.insert(net("0.0.0.0/0"), RouteTarget::Local(9));
        r.insert(net("10.244.2.0/24"), RouteTarget::Node(0));
        r.insert(net("10.244.1.0/24"), RouteTarget::Unassigned);
        r.insert(net("10.244.1.3/32"), RouteTarget::Local(2));
        r.insert(net("10.244.1.2/32"), RouteTarget::Local(1));
        r.insert(net("10.0.0.0/8"), RouteTarget::Node(1));
        r.insert(net("fd00::/64"), RouteTarget::Unassigned);
        r.insert(net("fd00::5/128"), RouteTarget::Local(3));
        let listed: Vec<String> = r
            .entries()
            .iter()
            .map(|(n, t)| format!("{n} {t:?}"))
            .collect();
        assert_eq!(
            listed,
            [
                "10.244.1.2/32 Local(1)",
                "10.244.1.3/32 Local(2)",
                "10.244.1.0/24 Unassigned",
                "10.244.2.0/24 Node(0)",
                "10.0.0.0/8 Node(1)",
                "0.0.0.0/0 Local(9)",
                "fd00::5/128 Local(3)",
                "fd00::/64 Unassigned",
            ]
        );
        let at = |a: &str| r.lookup_entry(a.parse().unwrap());
        assert_eq!(
            at("10.244.1.2"),
            Some((net("10.244.1.2/32"), RouteTarget::Local(1)))
        );
        assert_eq!(
            at("10.244.1.77"),
            Some((net("10.244.1.0/24"), RouteTarget::Unassigned))
        );
        assert_eq!(
            at("10.244.2.9"),
            Some((net("10.244.2.0/24"), RouteTarget::Node(0)))
        );
        assert_eq!(
            at("10.9.9.9"),
            Some((net("10.0.0.0/8"), RouteTarget::Node(1)))
        );
        assert_eq!(
            at("192.0.2.1"),
            Some((net("0.0.0.0/0"), RouteTarget::Local(9)))
        );
        assert_eq!(
            at("fd00::7"),
            Some((net("fd00::/64"), RouteTarget::Unassigned))
        );
        assert_eq!(at("fd01::7"), None);
        // The listing's answer is the fast path's answer, everywhere.
        for a in [
            "10.244.1.2",
            "10.244.1.3",
            "10.244.1.4",
            "10.244.2.200",
            "10.1.0.1",
            "11.0.0.1",
            "fd00::5",
            "fd00::6",
            "fe80::1",
        ] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(r.lookup_entry(a).map(|e| e.1), r.lookup(a), "{a}");
            if let Some((n, _)) = r.lookup_entry(a) {
                assert!(n.contains(&a), "{n} does not contain {a}");
            }
        }
        // Without a default route, no entry.
        let t = RouteTable::default();
        assert!(t.entries().is_empty());
        assert_eq!(t.lookup_entry("10.0.0.1".parse().unwrap()), None);
    }

    #[test]
    fn publish_swaps_whole_snapshot() {
        let p = TablePublisher::new(1u32);
        let before = p.load_full();
        p.publish(2);
        assert_eq!(*before, 1);
        assert_eq!(**p.load(), 2);
    }
}
