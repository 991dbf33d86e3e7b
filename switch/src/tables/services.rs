//! The service table: frontends (cluster IP, NodePort, external IP, each
//! with a port and protocol) and their backends, with one Maglev lookup
//! table per frontend. Built from [`ServiceSpec`]s on the control thread,
//! off the fast path, and published whole with the rest of the tables.
//!
//! Maglev table sizes: the smallest of [`MAGLEV_SIZES`] that gives every
//! eligible endpoint at least 100 slots (the paper's M >= 100 N, under 1%
//! imbalance), capped by the configured size (default 16381). A 5-endpoint
//! service thus costs 2 KiB rather than 32 KiB, which is what lets 10k
//! services fit in 20 MiB. Within one size Maglev's minimal-disruption
//! promise holds; an endpoint count that crosses a size boundary reshuffles
//! that service's *new* flows (established ones keep their endpoint through
//! conntrack). Lookup tables are shared by every frontend with the same
//! eligible endpoints (cluster IP, NodePort, external IPs of one port).
//!
//! # Updates cost what they change
//!
//! A [`ServiceLayout`] stays on the control thread beside the published
//! table and records where each Service sits in it (its name's index, its
//! frontends' indices, its ports' backend ranges) and which Maglev tables
//! are in use. [`ServiceLayout::patch`] validates and builds only the
//! Services a patch names (their Maglev tables, unless an identical one
//! exists), then copies the flat arrays and hash maps of the current table
//! (a few hundred microseconds at 10k Services: no Maglev table, name or
//! endpoint list is rebuilt, the copy shares them through `Arc`s) and
//! moves the changed Services in: frontends and names are removed by
//! `swap_remove` (the table's order is not name order after a patch),
//! freed backend ranges are reused by a later range of the same length, and
//! the backends are compacted once more are free than used. The copy is
//! what keeps the fast path's maps flat: a persistent map with structural
//! sharing (`im`, `rpds`) would make each per-packet probe a walk of
//! several nodes. A refused patch changes neither the table nor the layout:
//! everything that can fail happens before the first change.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use rustc_hash::{FxHashMap, FxHashSet};

use super::maglev::{self, Maglev, MaglevError};
use podswitch_api::{ClusterMode, Protocol, ServiceSettings, ServiceSpec};

/// The pseudo-protocol of session-affinity records in the flow table.
pub const AFFINITY_PROTO: u8 = 253;

/// The ports masqueraded flows get (4096 ports: 61440-65535, above the
/// kernel's default ephemeral range 32768-60999 so the node's own sockets
/// never collide with them, and one u32 match wide for the steering
/// filter). Each worker takes the ports congruent to its index.
pub const SNAT_PORTS: Range<u32> = 61440..65536;

/// The Maglev table sizes used (primes, each about four times the last).
pub const MAGLEV_SIZES: [usize; 6] = [251, 1021, 4093, 16381, 65537, 262_147];

/// The Maglev table size for `n` eligible endpoints under `cap`.
pub fn maglev_size_for(n: usize, cap: usize) -> usize {
    MAGLEV_SIZES
        .iter()
        .copied()
        .find(|&m| m >= n.saturating_mul(100))
        .unwrap_or(cap)
        .min(cap)
        .max(n.min(cap))
}

/// What identifies a Maglev table: its size and its eligible endpoints'
/// keys, in the frontend's order.
type MaglevKey = (usize, Vec<u64>);

/// A lookup table in use, and by how many frontends of the layout.
#[derive(Debug, Clone)]
struct SharedMaglev {
    table: Arc<Maglev>,
    users: u32,
}

pub use podswitch_api::FrontendKind;

/// One endpoint of one frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node.
    pub local: bool,
    pub ready: bool,
    pub terminating: bool,
    /// Serving and terminating: takes new flows when no backend of the
    /// port is ready (KEP-1669, kube-proxy since 1.26).
    pub serving_terminating: bool,
}

/// An address:port/protocol that load-balances to backends.
#[derive(Debug, Clone)]
pub struct Frontend {
    /// Index into [`ServiceTable::names`].
    pub service: u32,
    pub kind: FrontendKind,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
    /// All backends (new flows and existing ones), in `ServiceTable::backends`.
    pub backends: Range<u32>,
    /// The backends new flows may go to (ready; local only under a Local
    /// traffic policy), as indices into `ServiceTable::backends`. Shared,
    /// so that copying the table for a patch copies a pointer.
    pub eligible: Arc<[u32]>,
    /// Picks among `eligible` (shared between frontends and tables).
    pub maglev: Arc<Maglev>,
    /// sessionAffinity ClientIP timeout; 0 = none.
    pub affinity_secs: u32,
    /// Traffic policy Local for this frontend's kind.
    pub local_only: bool,
}

/// One eligible backend's part of a frontend's Maglev table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevShare {
    /// Index into [`ServiceTable::backends`].
    pub backend: u32,
    /// Table slots that map to it (of [`Maglev::size`]).
    pub slots: usize,
}

impl Frontend {
    /// The slots each eligible backend owns in this frontend's Maglev
    /// table, in `eligible` order; they sum to the table size. Counts the
    /// table (O(M)): for the control API, not the fast path.
    pub fn maglev_shares(&self) -> Vec<MaglevShare> {
        let counts = self.maglev.slot_counts();
        self.eligible
            .iter()
            .enumerate()
            .map(|(i, &backend)| MaglevShare {
                backend,
                slots: counts.get(i).copied().unwrap_or(0),
            })
            .collect()
    }
}

/// The whole service table.
///
/// `names` and `fronts` hold exactly the live Services and frontends, in
/// no particular order once patched; `backends` may hold slots no
/// frontend refers to any more (freed by a patch, reused or compacted
/// later): reach backends through a frontend's `backends` range.
#[derive(Debug, Clone)]
pub struct ServiceTable {
    /// `namespace/name` by service index.
    pub names: Vec<String>,
    pub fronts: Vec<Frontend>,
    pub backends: Vec<Backend>,
    by_key: FxHashMap<u64, u32>,
    /// Frontend addresses, with how many frontends listen on each (so that
    /// removing one keeps the address while others use it).
    frontend_ips: FxHashMap<u32, u32>,
    /// Service addresses (ClusterIPs, external and load-balancer IPs: every
    /// frontend address but the node's own NodePort addresses), counted as
    /// `frontend_ips` is. Traffic to one of them on a port no Service
    /// serves is refused, never routed (issue 23).
    service_ips: FxHashMap<u32, u32>,
    /// The service ranges (ClusterIP CIDRs): an address in them that is no
    /// Service's is dropped, never routed, as kube-proxy's nftables mode
    /// drops traffic to unallocated ClusterIPs.
    service_cidrs: Vec<Ipv4Net>,
    /// Endpoints `ip:port/proto`, with how many Service ports list each.
    endpoints: FxHashMap<u64, u32>,
    /// Backends some Service port lists (the rest of `backends` is free).
    live_backends: usize,
    no_masquerade: Vec<Ipv4Net>,
    pub masquerade: bool,
    /// This node's underlay address (NodePorts, masquerade).
    pub node_ip: Option<Ipv4Addr>,
    /// The pods' gateway: the source address of hairpin traffic, and of
    /// NodePort traffic to other nodes in VXLAN mode.
    pub gateway_ip: Ipv4Addr,
    pub mode: ClusterMode,
    pub maglev_size: usize,
}

#[inline]
fn pack(ip: Ipv4Addr, port: u16, proto: u8) -> u64 {
    (u64::from(u32::from(ip)) << 24) | (u64::from(port) << 8) | u64::from(proto)
}

/// A stable identity of a backend for Maglev (so a backend keeps its slots
/// whatever the order endpoints are listed in).
fn backend_key(ip: Ipv4Addr, port: u16) -> u64 {
    let x = (u64::from(u32::from(ip)) << 16) | u64::from(port);
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Counts one more user of `key`.
fn count_in<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, u32>, key: K) {
    *map.entry(key).or_insert(0) += 1;
}

/// Counts one user of `key` less, forgetting it at zero.
fn count_out<K: std::hash::Hash + Eq>(map: &mut FxHashMap<K, u32>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

/// Where this node stands, for building its view of the services.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    pub name: &'a str,
    pub node_ip: Option<Ipv4Addr>,
    /// The addresses NodePorts open on ([`super::node_ports`]).
    pub node_port_ips: &'a [Ipv4Addr],
    pub gateway_ip: Ipv4Addr,
    pub mode: ClusterMode,
    pub maglev_size: usize,
}

/// A [`NodeView`] kept by the layout, to tell whether a patch may build on
/// the table (the node is the one the table was built for).
#[derive(Debug, Clone, PartialEq, Eq)]
struct BuiltFor {
    name: String,
    node_ip: Option<Ipv4Addr>,
    node_port_ips: Vec<Ipv4Addr>,
    gateway_ip: Ipv4Addr,
    mode: ClusterMode,
    maglev_size: usize,
    settings: ServiceSettings,
}

impl BuiltFor {
    fn new(node: &NodeView<'_>, settings: &ServiceSettings) -> Self {
        BuiltFor {
            name: node.name.to_string(),
            node_ip: node.node_ip,
            node_port_ips: node.node_port_ips.to_vec(),
            gateway_ip: node.gateway_ip,
            mode: node.mode,
            maglev_size: node.maglev_size,
            settings: settings.clone(),
        }
    }

    fn is(&self, node: &NodeView<'_>, settings: &ServiceSettings) -> bool {
        self.name == node.name
            && self.node_ip == node.node_ip
            && self.node_port_ips == node.node_port_ips
            && self.gateway_ip == node.gateway_ip
            && self.mode == node.mode
            && self.maglev_size == node.maglev_size
            && &self.settings == settings
    }

    fn view(&self) -> NodeView<'_> {
        NodeView {
            name: &self.name,
            node_ip: self.node_ip,
            node_port_ips: &self.node_port_ips,
            gateway_ip: self.gateway_ip,
            mode: self.mode,
            maglev_size: self.maglev_size,
        }
    }
}

impl ServiceTable {
    /// An empty table (no services; masquerade off).
    pub fn empty(gateway_ip: Ipv4Addr) -> Self {
        ServiceTable {
            names: Vec::new(),
            fronts: Vec::new(),
            backends: Vec::new(),
            by_key: FxHashMap::default(),
            frontend_ips: FxHashMap::default(),
            service_ips: FxHashMap::default(),
            service_cidrs: Vec::new(),
            endpoints: FxHashMap::default(),
            live_backends: 0,
            no_masquerade: Vec::new(),
            masquerade: false,
            node_ip: None,
            gateway_ip,
            mode: ClusterMode::Native,
            maglev_size: maglev::DEFAULT_TABLE_SIZE,
        }
    }

    /// An empty table with the node's settings: masquerade and the
    /// addresses never masqueraded.
    fn for_node(settings: &ServiceSettings, node: &NodeView<'_>) -> Self {
        let mut t = ServiceTable::empty(node.gateway_ip);
        t.masquerade = settings.masquerade;
        t.node_ip = node.node_ip;
        t.mode = node.mode;
        t.maglev_size = node.maglev_size;
        t.service_cidrs = settings
            .service_cidrs
            .iter()
            .filter_map(|net| match net {
                IpNet::V4(n) => Some(n.trunc()),
                IpNet::V6(_) => None,
            })
            .collect();
        for net in settings
            .cluster_cidrs
            .iter()
            .chain(&settings.service_cidrs)
            .chain(&settings.masquerade_exclude)
        {
            if let IpNet::V4(n) = net {
                t.no_masquerade.push(n.trunc());
            }
        }
        // The node's own addresses are reached directly.
        t.no_masquerade.extend(node.node_ip.map(Ipv4Net::from));
        t.no_masquerade.push(Ipv4Net::from(node.gateway_ip));
        t
    }

    /// Validates and builds; on error names the offending field
    /// (`services[i].ports[j].node_port`, ...) and builds nothing.
    pub fn build<'s>(
        services: impl IntoIterator<Item = &'s ServiceSpec>,
        settings: &ServiceSettings,
        node: &NodeView<'_>,
    ) -> Result<ServiceTable, ServiceError> {
        ServiceLayout::build(services, settings, node, None).map(|(table, _)| table)
    }

    /// Whether the stage has anything to do at all.
    #[inline]
    pub fn active(&self) -> bool {
        !self.fronts.is_empty() || (self.masquerade && self.node_ip.is_some())
    }

    /// The frontend a packet to `ip:port/proto` hits.
    #[inline]
    pub fn frontend(&self, ip: Ipv4Addr, port: u16, proto: u8) -> Option<u32> {
        if self.by_key.is_empty() {
            return None;
        }
        self.by_key.get(&pack(ip, port, proto)).copied()
    }

    /// Whether any frontend listens on `ip` (one probe before the
    /// per-port lookup; most packets are not to a service).
    #[inline]
    pub fn is_frontend_ip(&self, ip: Ipv4Addr) -> bool {
        !self.frontend_ips.is_empty() && self.frontend_ips.contains_key(&u32::from(ip))
    }

    /// Whether `ip` is a Service address (a ClusterIP, external or
    /// load-balancer IP) other than this node's own or the gateway's: a
    /// packet to it that no Service port takes is refused.
    #[inline]
    pub fn is_service_ip(&self, ip: Ipv4Addr) -> bool {
        !self.service_ips.is_empty()
            && self.service_ips.contains_key(&u32::from(ip))
            && Some(ip) != self.node_ip
            && ip != self.gateway_ip
    }

    /// Whether a packet to `ip` left untranslated must not be routed: a
    /// Service address, or an address in the service ranges. (Such a
    /// packet would go to the node's kernel, which routes the service
    /// ranges back to the switch: a loop until the TTL runs out.)
    #[inline]
    pub fn must_not_route(&self, ip: Ipv4Addr) -> bool {
        self.is_service_ip(ip) || self.service_cidrs.iter().any(|n| n.contains(&ip))
    }

    /// Whether `ip:port/proto` is some service's endpoint (so a packet from
    /// it may be a reply to translate back).
    #[inline]
    pub fn is_endpoint(&self, ip: Ipv4Addr, port: u16, proto: u8) -> bool {
        !self.endpoints.is_empty() && self.endpoints.contains_key(&pack(ip, port, proto))
    }

    /// Whether `ip` is one of this node's own translation addresses (a
    /// packet to it may be a reply to a source-translated flow).
    #[inline]
    pub fn is_nat_address(&self, ip: Ipv4Addr) -> bool {
        Some(ip) == self.node_ip || ip == self.gateway_ip
    }

    /// Whether pod traffic to `dst` leaves with the node's address.
    #[inline]
    pub fn masquerades(&self, dst: Ipv4Addr) -> bool {
        self.masquerade
            && self.node_ip.is_some()
            && !self.no_masquerade.iter().any(|n| n.contains(&dst))
    }

    /// Whether backend `ip:port` of frontend `f` still exists (ready or
    /// terminating); flows to a backend that does not are reset.
    pub fn has_backend(&self, f: u32, ip: Ipv4Addr, port: u16) -> bool {
        self.fronts.get(f as usize).is_some_and(|fr| {
            self.backends[fr.backends.start as usize..fr.backends.end as usize]
                .iter()
                .any(|b| b.ip == ip && b.port == port)
        })
    }

    /// Whether flows of frontend `f` to backend `ip:port` keep it: TCP
    /// flows while the endpoint is listed at all (an established connection
    /// outlives readiness, as with kube-proxy); UDP flows only while it is
    /// ready or serving-terminating, so a client's next datagram moves on
    /// from an endpoint that stopped being ready (kube-proxy #125467).
    pub fn keeps_flows_to(&self, f: u32, ip: Ipv4Addr, port: u16) -> bool {
        self.fronts.get(f as usize).is_some_and(|fr| {
            self.backends[fr.backends.start as usize..fr.backends.end as usize]
                .iter()
                .any(|b| {
                    b.ip == ip
                        && b.port == port
                        && (fr.proto != 17 || b.ready || b.serving_terminating)
                })
        })
    }

    /// Whether a tracked flow lost its endpoint in this table (its frontend
    /// is gone, or no longer lists the endpoint; for UDP, the endpoint is
    /// no longer ready or serving: [`Self::keeps_flows_to`]). Such flows are
    /// removed: a TCP client's next segment gets a RST, a UDP client's next
    /// datagram (a DNS retry) picks a live endpoint.
    pub fn flow_is_stale(&self, f: &crate::conntrack::FlowInfo) -> bool {
        if f.flags & crate::conntrack::flow_flags::DNAT == 0 {
            return false;
        }
        let Some(reply) = f.reply else { return false };
        match self.frontend(f.orig.dst, f.orig.dport, f.orig.proto) {
            Some(fr) => !self.keeps_flows_to(fr, reply.src, reply.sport),
            None => true,
        }
    }

    /// Endpoints in the table (counted once per frontend port).
    pub fn endpoint_count(&self) -> usize {
        self.live_backends
    }

    /// Backend slots freed by patches and not yet reused.
    pub fn free_backend_slots(&self) -> usize {
        self.backends.len() - self.live_backends
    }
}

/// Where each Service sits in a published [`ServiceTable`], and the Maglev
/// tables in use: the control thread's index for patching the table rather
/// than rebuilding it. Kept beside the table it describes (the one
/// [`ServiceLayout::build`] or the last [`ServiceLayout::patch`] returned)
/// and never shared with the workers.
#[derive(Debug, Clone, Default)]
pub struct ServiceLayout {
    /// The node and settings the table was built for; `None` before the
    /// first build.
    built_for: Option<BuiltFor>,
    services: FxHashMap<String, Placement>,
    maglevs: FxHashMap<MaglevKey, SharedMaglev>,
    /// Free backend ranges: their starts, by length.
    free: FxHashMap<u32, Vec<u32>>,
}

/// Where one Service sits.
#[derive(Debug, Clone)]
struct Placement {
    /// Index into [`ServiceTable::names`].
    name: u32,
    ports: Vec<PortPlacement>,
}

/// Where one port of a Service sits.
#[derive(Debug, Clone)]
struct PortPlacement {
    proto: u8,
    /// Its endpoints, in [`ServiceTable::backends`].
    backends: Range<u32>,
    /// Its frontends, indices into [`ServiceTable::fronts`].
    fronts: Vec<u32>,
}

/// A Service validated and built, not yet placed in a table.
struct Prepared<'s> {
    spec: &'s ServiceSpec,
    ports: Vec<PreparedPort>,
}

struct PreparedPort {
    proto: u8,
    backends: Vec<Backend>,
    fronts: Vec<PreparedFront>,
}

struct PreparedFront {
    kind: FrontendKind,
    ip: Ipv4Addr,
    port: u16,
    local_only: bool,
    /// Positions in the port's backends.
    eligible: Vec<u32>,
    maglev_key: MaglevKey,
    maglev: Arc<Maglev>,
}

/// A table a patch built.
#[derive(Debug)]
pub struct PatchedTable {
    pub table: ServiceTable,
    /// Whether a frontend, or an endpoint of a frontend, went away: only
    /// then can a tracked flow have lost its endpoint.
    pub endpoints_lost: bool,
}

/// Why a service table was not built or patched: what is wrong, and the
/// field of the request that holds it (`services[3].ports[0].node_port`,
/// with the list and index the caller named), if one does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// The offending field, as a path into the request.
    pub field: Option<String>,
    pub kind: ServiceErrorKind,
}

/// What is wrong with the Services or their settings.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceErrorKind {
    /// The Maglev table size is not a prime.
    #[error("{0} is not a prime")]
    MaglevSizeNotPrime(usize),
    /// The NodePort range is empty or starts at port 0.
    #[error("{lo}-{hi} is not a range of ports")]
    BadNodePortRange { lo: u16, hi: u16 },
    /// A patch came before any table was built.
    #[error("no service table to patch: set the Services first")]
    NoTableToPatch,
    /// A Service without a name.
    #[error("must not be empty")]
    EmptyName,
    /// A cluster IP outside every service CIDR.
    #[error("{0} is outside the service CIDRs")]
    ClusterIpOutsideServiceCidrs(Ipv4Addr),
    /// A Service port or endpoint port of 0.
    #[error("must be 1-65535")]
    PortZero,
    /// A NodePort outside the configured range.
    #[error("{port} is outside the NodePort range {lo}-{hi}")]
    NodePortOutsideRange { port: u16, lo: u16, hi: u16 },
    /// The frontend's endpoints do not fit a Maglev table.
    #[error("{0}")]
    Maglev(MaglevError),
    /// Another Service (not removed by the same change) holds the frontend.
    #[error("{ip}:{port}/{protocol:?} is already a frontend of another service ({holder})")]
    FrontendTaken {
        ip: Ipv4Addr,
        port: u16,
        protocol: Protocol,
        /// The Service that holds it.
        holder: String,
    },
}

impl ServiceError {
    /// `kind`, in `field`.
    fn at(field: impl Into<String>, kind: ServiceErrorKind) -> ServiceError {
        ServiceError {
            field: Some(field.into()),
            kind,
        }
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.kind),
            None => self.kind.fmt(f),
        }
    }
}

impl std::error::Error for ServiceError {}

/// Field names of errors: `{list}[{index}].{field}`.
struct At<'a> {
    list: &'a str,
    index: usize,
}

impl At<'_> {
    fn field(&self, f: &str) -> String {
        format!("{}[{}].{f}", self.list, self.index)
    }
}

impl ServiceLayout {
    /// Validates `settings` and `services` and builds their table from
    /// nothing, reusing `previous`'s Maglev tables where the eligible
    /// endpoints are the same. On error names the offending field
    /// (`services[i].ports[j].node_port`, `i` counting `services` in the
    /// order given) and builds nothing. A name listed twice: the last wins.
    pub fn build<'s>(
        services: impl IntoIterator<Item = &'s ServiceSpec>,
        settings: &ServiceSettings,
        node: &NodeView<'_>,
        previous: Option<&ServiceLayout>,
    ) -> Result<(ServiceTable, ServiceLayout), ServiceError> {
        if !maglev::is_prime(node.maglev_size) {
            return Err(ServiceError::at(
                "maglev_table_size",
                ServiceErrorKind::MaglevSizeNotPrime(node.maglev_size),
            ));
        }
        let (lo, hi) = settings.node_port_range;
        if lo == 0 || lo > hi {
            return Err(ServiceError::at(
                "settings.node_port_range",
                ServiceErrorKind::BadNodePortRange { lo, hi },
            ));
        }
        let mut layout = ServiceLayout {
            built_for: Some(BuiltFor::new(node, settings)),
            ..ServiceLayout::default()
        };
        let mut table = ServiceTable::for_node(settings, node);
        let upsert: Vec<(usize, &ServiceSpec)> = services.into_iter().enumerate().collect();
        let going = FxHashSet::default();
        let prepared = layout.prepare(&table, &upsert, "services", &going, previous)?;
        layout.commit(&mut table, &going, prepared);
        Ok((table, layout))
    }

    /// Whether a patch may build on the table: it was built for this node
    /// and these settings (otherwise build anew).
    pub fn fits(&self, settings: &ServiceSettings, node: &NodeView<'_>) -> bool {
        self.built_for
            .as_ref()
            .is_some_and(|b| b.is(node, settings))
    }

    /// The Services in the table.
    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Service `name`'s frontends, indices into the table's `fronts`, in
    /// the order its spec lists them (port by port: cluster IPs, external
    /// IPs, NodePort); none for a Service not in the table.
    pub fn frontends_of(&self, name: &str) -> impl Iterator<Item = u32> + '_ {
        self.services
            .get(name)
            .into_iter()
            .flat_map(|p| p.ports.iter().flat_map(|port| port.fronts.iter().copied()))
    }

    /// Removes the Services named in `remove` and adds or replaces (by
    /// name) those in `upsert`, building only their Maglev tables; `table`
    /// is the table this layout describes. `upsert` pairs each Service
    /// with its index for error fields (`{list}[i].ports[j].node_port`); a
    /// name upserted twice: the last wins; a name removed and upserted:
    /// replaced; a name removed that is not in the table: nothing to do.
    ///
    /// On error (a bad field, a frontend another Service holds, a layout
    /// never built) neither `table` nor the layout changes.
    pub fn patch(
        &mut self,
        table: &ServiceTable,
        upsert: &[(usize, &ServiceSpec)],
        remove: &[&str],
        list: &str,
    ) -> Result<PatchedTable, ServiceError> {
        if self.built_for.is_none() {
            return Err(ServiceError {
                field: None,
                kind: ServiceErrorKind::NoTableToPatch,
            });
        }
        debug_assert_eq!(table.names.len(), self.services.len(), "another table");
        // The last of several upserts of one name wins.
        let mut last: FxHashMap<&str, usize> = FxHashMap::default();
        for (k, (_, s)) in upsert.iter().enumerate() {
            last.insert(s.name.as_str(), k);
        }
        let upsert: Vec<(usize, &ServiceSpec)> = upsert
            .iter()
            .enumerate()
            .filter(|(k, (_, s))| last.get(s.name.as_str()) == Some(k))
            .map(|(_, u)| *u)
            .collect();
        let going: FxHashSet<&str> = remove
            .iter()
            .copied()
            .chain(upsert.iter().map(|(_, s)| s.name.as_str()))
            .filter(|n| self.services.contains_key(*n))
            .collect();
        let prepared = self.prepare(table, &upsert, list, &going, None)?;
        // Nothing fails from here on.
        let mut next = table.clone();
        let endpoints_lost = self.commit(&mut next, &going, prepared);
        Ok(PatchedTable {
            table: next,
            endpoints_lost,
        })
    }

    /// Validates `upsert` and builds what it needs (Maglev tables not in
    /// use yet), against `table` without the Services in `going`. Changes
    /// nothing.
    fn prepare<'s>(
        &self,
        table: &ServiceTable,
        upsert: &[(usize, &'s ServiceSpec)],
        list: &str,
        going: &FxHashSet<&str>,
        previous: Option<&ServiceLayout>,
    ) -> Result<Vec<Prepared<'s>>, ServiceError> {
        let built_for = self.built_for.as_ref().expect("checked by the callers");
        let (node, settings) = (built_for.view(), &built_for.settings);
        let (lo, hi) = settings.node_port_range;
        // Frontends claimed by this patch, and by whom.
        let mut claimed: FxHashMap<u64, &str> = FxHashMap::default();
        // Maglev tables built by this patch, shared by its frontends.
        let mut built: FxHashMap<MaglevKey, Arc<Maglev>> = FxHashMap::default();
        let mut out = Vec::with_capacity(upsert.len());
        for &(index, svc) in upsert {
            let at = At { list, index };
            if svc.name.is_empty() {
                return Err(ServiceError::at(
                    at.field("name"),
                    ServiceErrorKind::EmptyName,
                ));
            }
            for (k, ip) in svc.cluster_ips.iter().enumerate() {
                let inside = settings
                    .service_cidrs
                    .iter()
                    .any(|c| c.contains(&std::net::IpAddr::V4(*ip)));
                if !inside {
                    return Err(ServiceError::at(
                        at.field(&format!("cluster_ips[{k}]")),
                        ServiceErrorKind::ClusterIpOutsideServiceCidrs(*ip),
                    ));
                }
            }
            let mut ports = Vec::with_capacity(svc.ports.len());
            for (pi, port) in svc.ports.iter().enumerate() {
                let pat = |f: &str| at.field(&format!("ports[{pi}].{f}"));
                if port.port == 0 {
                    return Err(ServiceError::at(pat("port"), ServiceErrorKind::PortZero));
                }
                let proto = port.protocol.number();
                let mut backends = Vec::with_capacity(port.endpoints.len());
                for (ei, ep) in port.endpoints.iter().enumerate() {
                    if ep.port == 0 {
                        return Err(ServiceError::at(
                            pat(&format!("endpoints[{ei}].port")),
                            ServiceErrorKind::PortZero,
                        ));
                    }
                    backends.push(Backend {
                        ip: ep.ip,
                        port: ep.port,
                        local: ep.node.as_deref() == Some(node.name),
                        ready: ep.ready && !ep.terminating,
                        terminating: ep.terminating,
                        serving_terminating: ep.terminating && ep.is_serving(),
                    });
                }
                let mut frontends: Vec<(FrontendKind, Ipv4Addr, u16, String)> = Vec::new();
                for ip in &svc.cluster_ips {
                    frontends.push((FrontendKind::ClusterIp, *ip, port.port, pat("port")));
                }
                for ip in &svc.external_ips {
                    frontends.push((
                        FrontendKind::External,
                        *ip,
                        port.port,
                        at.field("external_ips"),
                    ));
                }
                if let Some(np) = port.node_port {
                    if np < lo || np > hi {
                        return Err(ServiceError::at(
                            pat("node_port"),
                            ServiceErrorKind::NodePortOutsideRange { port: np, lo, hi },
                        ));
                    }
                    for &ip in node.node_port_ips {
                        frontends.push((FrontendKind::NodePort, ip, np, pat("node_port")));
                    }
                }
                let mut fronts = Vec::with_capacity(frontends.len());
                for (kind, ip, fport, field) in frontends {
                    let local_only = if kind.is_external() {
                        svc.external_traffic_local
                    } else {
                        svc.internal_traffic_local
                    };
                    // Ready endpoints (local ones under a Local policy);
                    // where there is none, the serving terminating ones,
                    // as kube-proxy's CategorizeEndpoints falls back.
                    let pick = |want: fn(&Backend) -> bool| -> Vec<u32> {
                        (0..backends.len() as u32)
                            .filter(|&b| {
                                let b = &backends[b as usize];
                                want(b) && (!local_only || b.local)
                            })
                            .collect()
                    };
                    let mut eligible = pick(|b| b.ready);
                    if eligible.is_empty() {
                        eligible = pick(|b| b.serving_terminating);
                    }
                    let keys: Vec<u64> = eligible
                        .iter()
                        .map(|&b| {
                            let b = &backends[b as usize];
                            backend_key(b.ip, b.port)
                        })
                        .collect();
                    let size = maglev_size_for(keys.len(), node.maglev_size);
                    let maglev_key = (size, keys);
                    let maglev = match built
                        .get(&maglev_key)
                        .or_else(|| self.maglevs.get(&maglev_key).map(|m| &m.table))
                        .or_else(|| {
                            previous
                                .and_then(|p| p.maglevs.get(&maglev_key))
                                .map(|m| &m.table)
                        }) {
                        Some(m) => Arc::clone(m),
                        None => {
                            let m = Arc::new(Maglev::build(&maglev_key.1, size).map_err(|e| {
                                ServiceError::at(pat("endpoints"), ServiceErrorKind::Maglev(e))
                            })?);
                            built.insert(maglev_key.clone(), Arc::clone(&m));
                            m
                        }
                    };
                    let key = pack(ip, fport, proto);
                    let holder = claimed.get(&key).copied().or_else(|| {
                        let &f = table.by_key.get(&key)?;
                        let owner = table.names[table.fronts[f as usize].service as usize].as_str();
                        (!going.contains(owner)).then_some(owner)
                    });
                    if let Some(holder) = holder {
                        return Err(ServiceError::at(
                            field,
                            ServiceErrorKind::FrontendTaken {
                                ip,
                                port: fport,
                                protocol: port.protocol,
                                holder: holder.to_string(),
                            },
                        ));
                    }
                    claimed.insert(key, svc.name.as_str());
                    fronts.push(PreparedFront {
                        kind,
                        ip,
                        port: fport,
                        local_only,
                        eligible,
                        maglev_key,
                        maglev,
                    });
                }
                ports.push(PreparedPort {
                    proto,
                    backends,
                    fronts,
                });
            }
            out.push(Prepared { spec: svc, ports });
        }
        Ok(out)
    }

    /// Takes the Services in `going` out of `t` and puts `prepared` in.
    /// Returns whether a frontend or a frontend's endpoint went away.
    fn commit(
        &mut self,
        t: &mut ServiceTable,
        going: &FxHashSet<&str>,
        prepared: Vec<Prepared<'_>>,
    ) -> bool {
        // What the leaving Services served, where their flows stayed:
        // (frontend, endpoint) pairs.
        let mut served: Vec<(Ipv4Addr, u16, u8, Ipv4Addr, u16)> = Vec::new();
        for name in going {
            let Some(p) = self.services.get(*name) else {
                continue;
            };
            for port in &p.ports {
                for &fi in &port.fronts {
                    let f = &t.fronts[fi as usize];
                    served.extend(
                        t.backends[f.backends.start as usize..f.backends.end as usize]
                            .iter()
                            .filter(|b| t.keeps_flows_to(fi, b.ip, b.port))
                            .map(|b| (f.ip, f.port, f.proto, b.ip, b.port)),
                    );
                }
            }
        }
        for name in going {
            self.detach(t, name);
        }
        for p in prepared {
            self.attach(t, p);
        }
        if t.free_backend_slots() > t.live_backends.max(1024) {
            self.compact(t);
        }
        served.iter().any(|&(ip, port, proto, bip, bport)| {
            t.frontend(ip, port, proto)
                .is_none_or(|f| !t.keeps_flows_to(f, bip, bport))
        })
    }

    /// Takes Service `name` out of `t`.
    fn detach(&mut self, t: &mut ServiceTable, name: &str) {
        let Some(p) = self.services.remove(name) else {
            return;
        };
        // Highest index first: a swap_remove then never moves one of this
        // Service's own frontends.
        let mut fronts: Vec<u32> = p
            .ports
            .iter()
            .flat_map(|x| x.fronts.iter().copied())
            .collect();
        fronts.sort_unstable_by(|a, b| b.cmp(a));
        for fi in fronts {
            self.remove_front(t, fi);
        }
        for port in &p.ports {
            let range = port.backends.start as usize..port.backends.end as usize;
            for b in &t.backends[range.clone()] {
                count_out(&mut t.endpoints, pack(b.ip, b.port, port.proto));
            }
            t.live_backends -= range.len();
            if !range.is_empty() {
                self.free
                    .entry(range.len() as u32)
                    .or_default()
                    .push(port.backends.start);
            }
        }
        t.names.swap_remove(p.name as usize);
        if let Some(moved) = t.names.get(p.name as usize) {
            // The last name moved into the hole: its Service's index changes.
            let mp = self
                .services
                .get_mut(moved)
                .expect("every name in the table has a placement");
            mp.name = p.name;
            for port in &mp.ports {
                for &fi in &port.fronts {
                    t.fronts[fi as usize].service = p.name;
                }
            }
        }
    }

    /// Removes frontend `fi` from `t` (its Service's placement is the
    /// caller's); the last frontend takes its index.
    fn remove_front(&mut self, t: &mut ServiceTable, fi: u32) {
        let f = &t.fronts[fi as usize];
        t.by_key.remove(&pack(f.ip, f.port, f.proto));
        count_out(&mut t.frontend_ips, u32::from(f.ip));
        if f.kind != FrontendKind::NodePort {
            count_out(&mut t.service_ips, u32::from(f.ip));
        }
        let keys: Vec<u64> = f
            .eligible
            .iter()
            .map(|&b| {
                let b = &t.backends[b as usize];
                backend_key(b.ip, b.port)
            })
            .collect();
        let key = (maglev_size_for(keys.len(), t.maglev_size), keys);
        if let std::collections::hash_map::Entry::Occupied(mut e) = self.maglevs.entry(key) {
            e.get_mut().users -= 1;
            if e.get().users == 0 {
                e.remove();
            }
        }
        let last = t.fronts.len() as u32 - 1;
        t.fronts.swap_remove(fi as usize);
        if fi == last {
            return;
        }
        let moved = &t.fronts[fi as usize];
        t.by_key.insert(pack(moved.ip, moved.port, moved.proto), fi);
        let owner = &t.names[moved.service as usize];
        let placement = self
            .services
            .get_mut(owner)
            .expect("every frontend's Service has a placement");
        for slot in placement.ports.iter_mut().flat_map(|p| p.fronts.iter_mut()) {
            if *slot == last {
                *slot = fi;
            }
        }
    }

    /// Puts a prepared Service into `t`.
    fn attach(&mut self, t: &mut ServiceTable, p: Prepared<'_>) {
        let name = t.names.len() as u32;
        t.names.push(p.spec.name.clone());
        let mut ports = Vec::with_capacity(p.ports.len());
        for port in p.ports {
            let n = port.backends.len();
            let start = match self.free.get_mut(&(n as u32)).and_then(|s| s.pop()) {
                Some(start) => {
                    t.backends[start as usize..start as usize + n].copy_from_slice(&port.backends);
                    start
                }
                None if n == 0 => 0,
                None => {
                    let start = t.backends.len() as u32;
                    t.backends.extend_from_slice(&port.backends);
                    start
                }
            };
            for b in &port.backends {
                count_in(&mut t.endpoints, pack(b.ip, b.port, port.proto));
            }
            t.live_backends += n;
            let backends = start..start + n as u32;
            let mut fronts = Vec::with_capacity(port.fronts.len());
            for f in port.fronts {
                let shared = self
                    .maglevs
                    .entry(f.maglev_key)
                    .or_insert_with(|| SharedMaglev {
                        table: f.maglev,
                        users: 0,
                    });
                shared.users += 1;
                let fi = t.fronts.len() as u32;
                t.by_key.insert(pack(f.ip, f.port, port.proto), fi);
                count_in(&mut t.frontend_ips, u32::from(f.ip));
                if f.kind != FrontendKind::NodePort {
                    count_in(&mut t.service_ips, u32::from(f.ip));
                }
                t.fronts.push(Frontend {
                    service: name,
                    kind: f.kind,
                    ip: f.ip,
                    port: f.port,
                    proto: port.proto,
                    backends: backends.clone(),
                    eligible: f.eligible.iter().map(|&e| start + e).collect(),
                    maglev: Arc::clone(&shared.table),
                    affinity_secs: p.spec.affinity_timeout_secs.unwrap_or(0),
                    local_only: f.local_only,
                });
                fronts.push(fi);
            }
            ports.push(PortPlacement {
                proto: port.proto,
                backends,
                fronts,
            });
        }
        self.services
            .insert(p.spec.name.clone(), Placement { name, ports });
    }

    /// Packs the live backends at the front of `t.backends`, in no
    /// particular order, and forgets the free ranges.
    fn compact(&mut self, t: &mut ServiceTable) {
        let mut backends = Vec::with_capacity(t.live_backends);
        for p in self.services.values_mut() {
            for port in &mut p.ports {
                let old = port.backends.clone();
                let start = backends.len() as u32;
                backends.extend_from_slice(&t.backends[old.start as usize..old.end as usize]);
                port.backends = start..backends.len() as u32;
                for &fi in &port.fronts {
                    let f = &mut t.fronts[fi as usize];
                    f.backends = port.backends.clone();
                    f.eligible = f.eligible.iter().map(|&b| b - old.start + start).collect();
                }
            }
        }
        t.backends = backends;
        self.free.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use podswitch_api::{EndpointSpec, Protocol, ServicePortSpec};
    use proptest::prelude::*;

    fn endpoint(last: u8, ready: bool, terminating: bool) -> EndpointSpec {
        EndpointSpec {
            ip: Ipv4Addr::new(10, 244, 2, last),
            port: 80,
            node: Some("node-2".into()),
            ready,
            terminating,
            serving: None,
        }
    }

    const NODE_PORT_IPS: &[Ipv4Addr] = &[Ipv4Addr::new(192, 168, 0, 1)];

    fn view() -> NodeView<'static> {
        NodeView {
            name: "node-1",
            node_ip: Some(Ipv4Addr::new(192, 168, 0, 1)),
            node_port_ips: NODE_PORT_IPS,
            gateway_ip: Ipv4Addr::new(10, 244, 1, 1),
            mode: ClusterMode::Native,
            maglev_size: maglev::DEFAULT_TABLE_SIZE,
        }
    }

    /// Service `i`: cluster IP 10.96.0.i, port 80 (NodePort 30000 + i if
    /// `node_port`), `n` endpoints from 10.244.(i / 200).(i % 200 + k).
    fn service(i: u32, n: u32, node_port: bool) -> ServiceSpec {
        ServiceSpec {
            name: format!("ns/svc-{i}"),
            cluster_ips: vec![Ipv4Addr::from(0x0a60_0000 + i)],
            external_ips: Vec::new(),
            ports: vec![ServicePortSpec {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: node_port.then(|| 30000 + i as u16),
                endpoints: (0..n)
                    .map(|k| EndpointSpec {
                        ip: Ipv4Addr::from(0x0af4_0000 + i * 256 + k),
                        port: 8080,
                        node: Some(if k % 2 == 0 { "node-1" } else { "node-2" }.into()),
                        ready: true,
                        terminating: false,
                        serving: None,
                    })
                    .collect(),
            }],
            affinity_timeout_secs: None,
            external_traffic_local: true,
            internal_traffic_local: false,
        }
    }

    /// A frontend as the fast path sees it, by value.
    #[derive(Debug, PartialEq)]
    struct FrontView {
        service: String,
        kind: FrontendKind,
        backends: Vec<Backend>,
        eligible: Vec<Backend>,
        maglev: Vec<u16>,
        affinity_secs: u32,
        local_only: bool,
    }

    /// Everything a lookup in `t` can observe, independent of the order
    /// Services and frontends sit in.
    #[derive(Debug, PartialEq)]
    struct TableView {
        names: Vec<String>,
        fronts: BTreeMap<(Ipv4Addr, u16, u8), FrontView>,
        frontend_ips: BTreeMap<u32, u32>,
        service_ips: BTreeMap<u32, u32>,
        endpoints: BTreeMap<u64, u32>,
        live_backends: usize,
        settings: (Vec<Ipv4Net>, bool, Option<Ipv4Addr>, Ipv4Addr, usize),
        service_cidrs: Vec<Ipv4Net>,
    }

    fn observe(t: &ServiceTable) -> TableView {
        let mut names = t.names.clone();
        names.sort();
        let fronts = t
            .fronts
            .iter()
            .map(|f| {
                let b = |i: u32| t.backends[i as usize];
                (
                    (f.ip, f.port, f.proto),
                    FrontView {
                        service: t.names[f.service as usize].clone(),
                        kind: f.kind,
                        backends: f.backends.clone().map(b).collect(),
                        eligible: f.eligible.iter().map(|&i| b(i)).collect(),
                        maglev: f.maglev.as_slice().to_vec(),
                        affinity_secs: f.affinity_secs,
                        local_only: f.local_only,
                    },
                )
            })
            .collect();
        TableView {
            names,
            fronts,
            frontend_ips: t.frontend_ips.iter().map(|(k, v)| (*k, *v)).collect(),
            service_ips: t.service_ips.iter().map(|(k, v)| (*k, *v)).collect(),
            service_cidrs: t.service_cidrs.clone(),
            endpoints: t.endpoints.iter().map(|(k, v)| (*k, *v)).collect(),
            live_backends: t.live_backends,
            settings: (
                t.no_masquerade.clone(),
                t.masquerade,
                t.node_ip,
                t.gateway_ip,
                t.maglev_size,
            ),
        }
    }

    /// The layout describes `t` exactly, and `t` is self-consistent.
    fn check_layout(t: &ServiceTable, layout: &ServiceLayout) {
        assert_eq!(t.by_key.len(), t.fronts.len(), "one key per frontend");
        for (i, f) in t.fronts.iter().enumerate() {
            assert_eq!(
                t.by_key.get(&pack(f.ip, f.port, f.proto)),
                Some(&(i as u32))
            );
            assert!((f.service as usize) < t.names.len());
            assert!(f.eligible.iter().all(|e| f.backends.contains(e)));
            assert_eq!(f.maglev.backends(), f.eligible.len());
        }
        assert_eq!(layout.services.len(), t.names.len());
        let mut live = 0;
        let mut placed_fronts = 0;
        let mut users: FxHashMap<*const Maglev, u32> = FxHashMap::default();
        for (name, p) in &layout.services {
            assert_eq!(&t.names[p.name as usize], name);
            for port in &p.ports {
                live += port.backends.len();
                for &fi in &port.fronts {
                    let f = &t.fronts[fi as usize];
                    assert_eq!(f.service, p.name, "{name}");
                    assert_eq!(f.backends, port.backends, "{name}");
                    assert_eq!(f.proto, port.proto, "{name}");
                    *users.entry(Arc::as_ptr(&f.maglev)).or_default() += 1;
                    placed_fronts += 1;
                }
            }
        }
        assert_eq!(placed_fronts, t.fronts.len());
        assert_eq!(live, t.live_backends);
        let free: usize = layout
            .free
            .iter()
            .map(|(len, starts)| *len as usize * starts.len())
            .sum();
        assert_eq!(free, t.free_backend_slots(), "free ranges add up");
        let cached: FxHashMap<*const Maglev, u32> = layout
            .maglevs
            .values()
            .map(|m| (Arc::as_ptr(&m.table), m.users))
            .collect();
        assert_eq!(cached, users, "Maglev tables in use, counted");
    }

    /// A patch through the layout, and the same end state built in full.
    fn patch_and_build(
        t: &ServiceTable,
        layout: &mut ServiceLayout,
        current: &BTreeMap<String, ServiceSpec>,
        upsert: &[ServiceSpec],
        remove: &[&str],
    ) -> (
        Result<PatchedTable, ServiceError>,
        Result<ServiceTable, ServiceError>,
        BTreeMap<String, ServiceSpec>,
    ) {
        let mut next = current.clone();
        for r in remove {
            next.remove(*r);
        }
        for s in upsert {
            next.insert(s.name.clone(), s.clone());
        }
        let ups: Vec<(usize, &ServiceSpec)> = upsert.iter().enumerate().collect();
        let patched = layout.patch(t, &ups, remove, "upsert");
        let full = ServiceTable::build(next.values(), &ServiceSettings::default(), &view());
        (patched, full, next)
    }

    /// NodePorts open on exactly the configured addresses (kube-proxy's
    /// `--nodeport-addresses`), which need not include the node address.
    #[test]
    fn node_ports_open_on_the_configured_addresses_only() {
        fn view_on(ips: &[Ipv4Addr]) -> NodeView<'_> {
            NodeView {
                node_port_ips: ips,
                ..view()
            }
        }
        let svc = service(7, 2, true);
        let node_ip = Ipv4Addr::new(192, 168, 0, 1);
        let extra = Ipv4Addr::new(192, 168, 0, 202);
        let settings = ServiceSettings::default();
        let t = ServiceTable::build([&svc], &settings, &view_on(&[node_ip, extra])).unwrap();
        for ip in [node_ip, extra] {
            assert!(t.frontend(ip, 30007, 6).is_some(), "NodePort on {ip}");
        }
        assert!(t
            .frontend(Ipv4Addr::new(192, 168, 0, 201), 30007, 6)
            .is_none());
        let t = ServiceTable::build([&svc], &settings, &view_on(&[extra])).unwrap();
        assert!(t.frontend(extra, 30007, 6).is_some());
        assert!(
            t.frontend(node_ip, 30007, 6).is_none(),
            "the node address was not configured"
        );
        // The node address still masquerades and is still a NAT address.
        assert!(t.is_nat_address(node_ip));
        let t = ServiceTable::build([&svc], &settings, &view_on(&[])).unwrap();
        assert!(t.frontend(node_ip, 30007, 6).is_none());
        assert!(t.frontend(Ipv4Addr::from(0x0a60_0007), 80, 6).is_some());
    }

    #[test]
    fn maglev_shares_cover_the_table_near_equally_over_eligible_backends() {
        let svc = ServiceSpec {
            name: "default/api".into(),
            cluster_ips: vec![Ipv4Addr::new(10, 96, 1, 0)],
            external_ips: Vec::new(),
            ports: vec![ServicePortSpec {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 8080,
                node_port: None,
                endpoints: vec![
                    endpoint(2, true, false),
                    endpoint(3, true, false),
                    endpoint(4, false, true),
                    endpoint(5, true, false),
                ],
            }],
            affinity_timeout_secs: None,
            external_traffic_local: false,
            internal_traffic_local: false,
        };
        let view = NodeView {
            name: "node-1",
            node_ip: None,
            node_port_ips: &[],
            gateway_ip: Ipv4Addr::new(10, 244, 1, 1),
            mode: ClusterMode::Native,
            maglev_size: maglev::DEFAULT_TABLE_SIZE,
        };
        let t = ServiceTable::build([&svc], &ServiceSettings::default(), &view).unwrap();
        let f = &t.fronts[0];
        // Three eligible (the terminating one gets no new flows): M = 1021,
        // the smallest size giving each at least 100 slots.
        let m = f.maglev.size();
        assert_eq!(m, 1021);
        let shares = f.maglev_shares();
        let ips: Vec<u8> = shares
            .iter()
            .map(|s| t.backends[s.backend as usize].ip.octets()[3])
            .collect();
        assert_eq!(ips, [2, 3, 5]);
        assert_eq!(shares.iter().map(|s| s.slots).sum::<usize>(), m);
        // Maglev's balance: floor(M/N) or ceil(M/N) each, M mod N of them ceil.
        let slots: Vec<usize> = shares.iter().map(|s| s.slots).collect();
        assert!(slots.iter().all(|&s| s == 340 || s == 341), "{slots:?}");
        assert_eq!(slots.iter().filter(|&&s| s == 341).count(), 1021 % 3);
        // No eligible backend: no shares, an empty table.
        let mut none = svc.clone();
        for e in &mut none.ports[0].endpoints {
            e.ready = false;
        }
        let t = ServiceTable::build([&none], &ServiceSettings::default(), &view).unwrap();
        assert!(t.fronts[0].maglev_shares().is_empty());
        assert_eq!(t.fronts[0].maglev.size(), 0);
    }

    #[test]
    fn one_endpoint_change_rebuilds_one_service_and_equals_a_full_build() {
        let specs: BTreeMap<String, ServiceSpec> = (0..50)
            .map(|i| service(i, 5, true))
            .map(|s| (s.name.clone(), s))
            .collect();
        let settings = ServiceSettings::default();
        let (t, mut layout) =
            ServiceLayout::build(specs.values(), &settings, &view(), None).unwrap();
        check_layout(&t, &layout);
        assert!(layout.fits(&settings, &view()));
        let mut changed = service(7, 5, true);
        changed.ports[0].endpoints[2].ip = Ipv4Addr::new(10, 244, 99, 9);
        let (patched, full, _) = patch_and_build(&t, &mut layout, &specs, &[changed], &[]);
        let patched = patched.unwrap();
        assert!(patched.endpoints_lost, "10.244.7.2 left svc-7");
        let next = &patched.table;
        check_layout(next, &layout);
        assert_eq!(observe(next), observe(&full.unwrap()));
        // Every other Service keeps its very Maglev tables.
        let by_name = |t: &ServiceTable, n: &str| -> Vec<*const Maglev> {
            let mut v: Vec<_> = t
                .fronts
                .iter()
                .filter(|f| t.names[f.service as usize] == n)
                .map(|f| Arc::as_ptr(&f.maglev))
                .collect();
            v.sort();
            v
        };
        for i in (0..50).filter(|&i| i != 7) {
            let n = format!("ns/svc-{i}");
            assert_eq!(by_name(&t, &n), by_name(next, &n), "{n}");
        }
        assert_ne!(by_name(&t, "ns/svc-7"), by_name(next, "ns/svc-7"));
        // The old table is untouched (workers may still hold it).
        assert_eq!(
            observe(&t),
            observe(&ServiceTable::build(specs.values(), &settings, &view()).unwrap())
        );
        // The freed range was reused: no backend slot is free.
        assert_eq!(next.free_backend_slots(), 0);
        // A readiness change loses no endpoint.
        let mut next_specs = specs.clone();
        let mut s = next_specs["ns/svc-3"].clone();
        s.ports[0].endpoints[0].ready = false;
        next_specs.insert(s.name.clone(), s.clone());
        let (p, full, _) = patch_and_build(next, &mut layout, &specs, &[s], &[]);
        let p = p.unwrap();
        assert!(!p.endpoints_lost);
        check_layout(&p.table, &layout);
        assert_eq!(observe(&p.table).fronts.len(), 100);
        let _ = full;
        // On a UDP port it does: its flows must move on (kube-proxy #125467).
        let table = p.table;
        let mut udp = next_specs["ns/svc-4"].clone();
        udp.ports[0].protocol = Protocol::Udp;
        let (p, _, _) = patch_and_build(&table, &mut layout, &next_specs, &[udp.clone()], &[]);
        let p = p.unwrap();
        next_specs.insert(udp.name.clone(), udp.clone());
        assert!(p.endpoints_lost, "the TCP port went away");
        let mut unready = udp.clone();
        unready.ports[0].endpoints[0].ready = false;
        let (p, _, _) = patch_and_build(&p.table, &mut layout, &next_specs, &[unready], &[]);
        assert!(
            p.unwrap().endpoints_lost,
            "a UDP endpoint stopped being ready"
        );
    }

    #[test]
    fn a_refused_patch_changes_nothing() {
        let specs: BTreeMap<String, ServiceSpec> = (0..10)
            .map(|i| service(i, 3, true))
            .map(|s| (s.name.clone(), s))
            .collect();
        let settings = ServiceSettings::default();
        let (t, mut layout) =
            ServiceLayout::build(specs.values(), &settings, &view(), None).unwrap();
        let before = (observe(&t), format!("{:?}", layout_view(&layout)));
        // The second upsert takes svc-1's cluster IP; the first is valid.
        let fine = service(42, 2, false);
        let mut thief = service(43, 2, false);
        thief.cluster_ips = vec![Ipv4Addr::from(0x0a60_0001)];
        let ups = [(0, &fine), (1, &thief)];
        let e = layout.patch(&t, &ups, &["ns/svc-2"], "upsert").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("upsert[1].ports[0].port"));
        assert!(e.to_string().contains("ns/svc-1"), "{e}");
        assert!(
            matches!(&e.kind, ServiceErrorKind::FrontendTaken { holder, .. } if holder == "ns/svc-1"),
            "{e}"
        );
        assert_eq!(before, (observe(&t), format!("{:?}", layout_view(&layout))));
        // Its NodePort out of range.
        let mut bad = service(3, 3, true);
        bad.ports[0].node_port = Some(40000);
        let e = layout.patch(&t, &[(0, &bad)], &[], "upsert").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("upsert[0].ports[0].node_port"));
        assert_eq!(before, (observe(&t), format!("{:?}", layout_view(&layout))));
        // Taking the IP of a Service removed in the same patch is fine.
        let p = layout
            .patch(&t, &[(0, &thief)], &["ns/svc-1"], "upsert")
            .unwrap();
        check_layout(&p.table, &layout);
        assert!(p.endpoints_lost);
        // A layout never built patches nothing.
        assert!(ServiceLayout::default()
            .patch(&t, &[], &[], "upsert")
            .is_err());
    }

    #[test]
    fn backends_are_compacted_once_more_are_free_than_used() {
        let settings = ServiceSettings::default();
        let mut specs: BTreeMap<String, ServiceSpec> = BTreeMap::new();
        let first = service(1, 1100, false);
        specs.insert(first.name.clone(), first);
        let other = service(2, 4, true);
        specs.insert(other.name.clone(), other);
        let (mut t, mut layout) =
            ServiceLayout::build(specs.values(), &settings, &view(), None).unwrap();
        let mut compacted = false;
        for n in 1101..1106 {
            let s = service(1, n, false);
            let (p, full, next) = patch_and_build(&t, &mut layout, &specs, &[s], &[]);
            let p = p.unwrap();
            check_layout(&p.table, &layout);
            assert_eq!(observe(&p.table), observe(&full.unwrap()));
            compacted |= p.table.free_backend_slots() == 0;
            assert!(p.table.free_backend_slots() <= p.table.endpoint_count().max(1024));
            (t, specs) = (p.table, next);
        }
        assert!(compacted);
    }

    /// The layout's content, in a fixed order.
    fn layout_view(l: &ServiceLayout) -> impl std::fmt::Debug {
        let mut services: Vec<String> = l
            .services
            .iter()
            .map(|(n, p)| format!("{n} {p:?}"))
            .collect();
        services.sort();
        let mut maglevs: Vec<String> = l
            .maglevs
            .iter()
            .map(|(k, m)| format!("{k:?} {:p} {}", Arc::as_ptr(&m.table), m.users))
            .collect();
        maglevs.sort();
        let mut free: Vec<(u32, Vec<u32>)> = l.free.iter().map(|(k, v)| (*k, v.clone())).collect();
        free.sort();
        (format!("{:?}", l.built_for), services, maglevs, free)
    }

    fn arb_endpoint() -> impl Strategy<Value = EndpointSpec> {
        (
            1u8..7,
            prop_oneof![20 => Just(8080u16), 5 => Just(9090), 1 => Just(0)],
            prop::option::of(prop::sample::select(vec!["node-1", "node-2"])),
            any::<bool>(),
            prop::bool::weighted(0.2),
        )
            .prop_map(|(last, port, node, ready, terminating)| EndpointSpec {
                ip: Ipv4Addr::new(10, 244, 2, last),
                port,
                node: node.map(String::from),
                ready,
                terminating,
                serving: None,
            })
    }

    fn arb_port() -> impl Strategy<Value = ServicePortSpec> {
        (
            prop::sample::select(vec![80u16, 443]),
            prop::bool::weighted(0.2),
            prop::option::weighted(0.4, prop_oneof![10 => 30000u16..30004, 1 => Just(40000u16)]),
            prop::collection::vec(arb_endpoint(), 0..5),
        )
            .prop_map(|(port, udp, node_port, endpoints)| ServicePortSpec {
                name: String::new(),
                protocol: if udp { Protocol::Udp } else { Protocol::Tcp },
                port,
                node_port,
                endpoints,
            })
    }

    fn arb_service() -> impl Strategy<Value = ServiceSpec> {
        (
            0u8..6,
            prop::collection::vec(1u8..6, 0..2),
            prop::collection::vec(1u8..3, 0..2),
            prop::collection::vec(arb_port(), 1..3),
            prop::option::of(Just(600u32)),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(n, cips, eips, ports, aff, ext, int)| ServiceSpec {
                name: format!("ns/s{n}"),
                cluster_ips: cips
                    .into_iter()
                    .map(|c| Ipv4Addr::new(10, 96, 0, c))
                    .collect(),
                external_ips: eips
                    .into_iter()
                    .map(|c| Ipv4Addr::new(203, 0, 113, c))
                    .collect(),
                ports,
                affinity_timeout_secs: aff,
                external_traffic_local: ext,
                internal_traffic_local: int,
            })
    }

    /// One patch: upserts, and names to remove (of `s0`..`s5`).
    fn arb_patch() -> impl Strategy<Value = (Vec<ServiceSpec>, Vec<String>)> {
        (
            prop::collection::vec(arb_service(), 0..4),
            prop::collection::vec((0u8..6).prop_map(|n| format!("ns/s{n}")), 0..3),
        )
    }

    /// Ready endpoints take new flows; terminating ones only when none
    /// is ready, and only if serving; a Local policy picks among local
    /// ones first and falls back within them (kube-proxy's
    /// CategorizeEndpoints).
    #[test]
    fn terminating_endpoints_are_the_fallback_when_none_is_ready() {
        let serving = |last: u8, serving: bool| EndpointSpec {
            serving: Some(serving),
            ..endpoint(last, false, true)
        };
        let eligible = |eps: Vec<EndpointSpec>| -> Vec<u8> {
            let mut spec = service(1, 0, false);
            spec.ports[0].endpoints = eps;
            let t = ServiceTable::build([&spec], &ServiceSettings::default(), &view()).unwrap();
            let f = &t.fronts[0];
            let mut v: Vec<u8> = f
                .eligible
                .iter()
                .map(|&b| t.backends[b as usize].ip.octets()[3])
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            eligible(vec![endpoint(1, true, false), serving(2, true)]),
            [1]
        );
        assert_eq!(eligible(vec![serving(2, true), serving(3, true)]), [2, 3]);
        assert_eq!(eligible(vec![serving(2, true), serving(3, false)]), [2]);
        assert_eq!(eligible(vec![serving(3, false)]), Vec::<u8>::new());
        assert_eq!(eligible(vec![endpoint(4, false, false)]), Vec::<u8>::new());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any sequence of patches gives the table a full build of the
        /// resulting Services gives (as lookups see it), refuses exactly
        /// what a full build refuses, and a refused one changes nothing.
        #[test]
        fn patches_give_the_table_a_full_build_gives(
            initial in prop::collection::vec(arb_service(), 0..6),
            patches in prop::collection::vec(arb_patch(), 1..8),
        ) {
            let settings = ServiceSettings::default();
            let mut current: BTreeMap<String, ServiceSpec> =
                initial.into_iter().map(|s| (s.name.clone(), s)).collect();
            let (mut t, mut layout) =
                match ServiceLayout::build(current.values(), &settings, &view(), None) {
                    Ok(built) => built,
                    Err(_) => {
                        current.clear();
                        ServiceLayout::build(current.values(), &settings, &view(), None)
                            .unwrap()
                    }
                };
            check_layout(&t, &layout);
            for (upsert, remove) in patches {
                // The daemon refuses a removal of an unknown name up front.
                let remove: Vec<&str> = remove
                    .iter()
                    .map(String::as_str)
                    .filter(|n| current.contains_key(*n))
                    .collect();
                let before = (observe(&t), format!("{:?}", layout_view(&layout)));
                let (patched, full, next) =
                    patch_and_build(&t, &mut layout, &current, &upsert, &remove);
                match (patched, full) {
                    (Ok(p), Ok(full)) => {
                        check_layout(&p.table, &layout);
                        prop_assert_eq!(observe(&p.table), observe(&full));
                        t = p.table;
                        current = next;
                    }
                    (Err(_), Err(_)) => {
                        prop_assert_eq!(
                            &before,
                            &(observe(&t), format!("{:?}", layout_view(&layout)))
                        );
                    }
                    (p, f) => prop_assert!(
                        false,
                        "patch {:?} but full build {:?}",
                        p.map(|_| ()),
                        f.map(|_| ())
                    ),
                }
            }
        }
    }
}
