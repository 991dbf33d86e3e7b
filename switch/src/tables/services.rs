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
//! eligible endpoints (cluster IP, NodePort, external IPs of one port) and
//! carried over from the previous table when unchanged, so an update costs
//! only the services it changes.

use std::net::Ipv4Addr;
use std::ops::Range;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use rustc_hash::{FxHashMap, FxHashSet};

use super::maglev::{self, Maglev};
use crate::control::api::{ApiError, ClusterMode, ServiceSettings, ServiceSpec};

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

/// Lookup tables by (size, eligible endpoint keys), for sharing and reuse.
type MaglevCache = FxHashMap<(usize, Vec<u64>), Arc<Maglev>>;

/// What kind of address a frontend listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    /// externalIPs and LoadBalancer ingress IPs.
    External,
}

impl FrontendKind {
    /// NodePort and external traffic: externalTrafficPolicy applies.
    pub fn is_external(self) -> bool {
        !matches!(self, FrontendKind::ClusterIp)
    }
}

/// One endpoint of one frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node.
    pub local: bool,
    pub ready: bool,
    pub terminating: bool,
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
    /// traffic policy), as indices into `ServiceTable::backends`.
    pub eligible: Vec<u32>,
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
#[derive(Debug, Clone)]
pub struct ServiceTable {
    /// `namespace/name` by service index.
    pub names: Vec<String>,
    pub fronts: Vec<Frontend>,
    pub backends: Vec<Backend>,
    by_key: FxHashMap<u64, u32>,
    frontend_ips: FxHashSet<u32>,
    endpoints: FxHashSet<u64>,
    no_masquerade: Vec<Ipv4Net>,
    pub masquerade: bool,
    /// This node's underlay address (NodePorts, masquerade).
    pub node_ip: Option<Ipv4Addr>,
    /// The pods' gateway: the source address of hairpin traffic, and of
    /// NodePort traffic to other nodes in VXLAN mode.
    pub gateway_ip: Ipv4Addr,
    pub mode: ClusterMode,
    pub maglev_size: usize,
    maglev_cache: MaglevCache,
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

/// Where this node stands, for building its view of the services.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    pub name: &'a str,
    pub node_ip: Option<Ipv4Addr>,
    pub gateway_ip: Ipv4Addr,
    pub mode: ClusterMode,
    pub maglev_size: usize,
}

impl ServiceTable {
    /// An empty table (no services; masquerade off).
    pub fn empty(gateway_ip: Ipv4Addr) -> Self {
        ServiceTable {
            names: Vec::new(),
            fronts: Vec::new(),
            backends: Vec::new(),
            by_key: FxHashMap::default(),
            frontend_ips: FxHashSet::default(),
            endpoints: FxHashSet::default(),
            no_masquerade: Vec::new(),
            masquerade: false,
            node_ip: None,
            gateway_ip,
            mode: ClusterMode::Native,
            maglev_size: maglev::DEFAULT_TABLE_SIZE,
            maglev_cache: MaglevCache::default(),
        }
    }

    /// Validates and builds; on error names the offending field
    /// (`services[i].ports[j].node_port`, ...) and builds nothing.
    pub fn build<'s>(
        services: impl IntoIterator<Item = &'s ServiceSpec>,
        settings: &ServiceSettings,
        node: &NodeView<'_>,
    ) -> Result<ServiceTable, ApiError> {
        Self::rebuild(services, settings, node, None)
    }

    /// Like [`ServiceTable::build`], reusing `previous`'s lookup tables
    /// where the eligible endpoints did not change.
    pub fn rebuild<'s>(
        services: impl IntoIterator<Item = &'s ServiceSpec>,
        settings: &ServiceSettings,
        node: &NodeView<'_>,
        previous: Option<&ServiceTable>,
    ) -> Result<ServiceTable, ApiError> {
        let empty = MaglevCache::default();
        let old_cache = previous.map(|p| &p.maglev_cache).unwrap_or(&empty);
        if !maglev::is_prime(node.maglev_size) {
            return Err(ApiError::invalid(
                "maglev_table_size",
                format!("{} is not a prime", node.maglev_size),
            ));
        }
        let (lo, hi) = settings.node_port_range;
        if lo == 0 || lo > hi {
            return Err(ApiError::invalid(
                "settings.node_port_range",
                format!("{lo}-{hi} is not a range of ports"),
            ));
        }
        let mut t = ServiceTable::empty(node.gateway_ip);
        t.masquerade = settings.masquerade;
        t.node_ip = node.node_ip;
        t.mode = node.mode;
        t.maglev_size = node.maglev_size;
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

        for (si, svc) in services.into_iter().enumerate() {
            let at = |f: &str| format!("services[{si}].{f}");
            if svc.name.is_empty() {
                return Err(ApiError::invalid(at("name"), "must not be empty"));
            }
            for (k, ip) in svc.cluster_ips.iter().enumerate() {
                let inside = settings
                    .service_cidrs
                    .iter()
                    .any(|c| c.contains(&std::net::IpAddr::V4(*ip)));
                if !inside {
                    return Err(ApiError::invalid(
                        at(&format!("cluster_ips[{k}]")),
                        format!("{ip} is outside the service CIDRs"),
                    ));
                }
            }
            let service = t.names.len() as u32;
            t.names.push(svc.name.clone());
            for (pi, port) in svc.ports.iter().enumerate() {
                let pat = |f: &str| at(&format!("ports[{pi}].{f}"));
                if port.port == 0 {
                    return Err(ApiError::invalid(pat("port"), "must be 1-65535"));
                }
                let proto = port.protocol.number();
                let start = t.backends.len() as u32;
                for (ei, ep) in port.endpoints.iter().enumerate() {
                    if ep.port == 0 {
                        return Err(ApiError::invalid(
                            pat(&format!("endpoints[{ei}].port")),
                            "must be 1-65535",
                        ));
                    }
                    t.backends.push(Backend {
                        ip: ep.ip,
                        port: ep.port,
                        local: ep.node.as_deref() == Some(node.name),
                        ready: ep.ready && !ep.terminating,
                        terminating: ep.terminating,
                    });
                    t.endpoints.insert(pack(ep.ip, ep.port, proto));
                }
                let backends = start..t.backends.len() as u32;
                let mut frontends: Vec<(FrontendKind, Ipv4Addr, u16, String)> = Vec::new();
                for ip in &svc.cluster_ips {
                    frontends.push((FrontendKind::ClusterIp, *ip, port.port, pat("port")));
                }
                for ip in &svc.external_ips {
                    frontends.push((FrontendKind::External, *ip, port.port, at("external_ips")));
                }
                if let Some(np) = port.node_port {
                    if np < lo || np > hi {
                        return Err(ApiError::invalid(
                            pat("node_port"),
                            format!("{np} is outside the NodePort range {lo}-{hi}"),
                        ));
                    }
                    if let Some(ip) = node.node_ip {
                        frontends.push((FrontendKind::NodePort, ip, np, pat("node_port")));
                    }
                }
                for (kind, ip, fport, field) in frontends {
                    let local_only = if kind.is_external() {
                        svc.external_traffic_local
                    } else {
                        svc.internal_traffic_local
                    };
                    let eligible: Vec<u32> = backends
                        .clone()
                        .filter(|&b| {
                            let b = &t.backends[b as usize];
                            b.ready && (!local_only || b.local)
                        })
                        .collect();
                    let keys: Vec<u64> = eligible
                        .iter()
                        .map(|&b| {
                            let b = &t.backends[b as usize];
                            backend_key(b.ip, b.port)
                        })
                        .collect();
                    let size = maglev_size_for(keys.len(), node.maglev_size);
                    let cache_key = (size, keys);
                    let maglev = match t
                        .maglev_cache
                        .get(&cache_key)
                        .or_else(|| old_cache.get(&cache_key))
                    {
                        Some(m) => Arc::clone(m),
                        None => Arc::new(
                            Maglev::build(&cache_key.1, size)
                                .map_err(|e| ApiError::invalid(pat("endpoints"), e.to_string()))?,
                        ),
                    };
                    t.maglev_cache.insert(cache_key, Arc::clone(&maglev));
                    let key = pack(ip, fport, proto);
                    if t.by_key.contains_key(&key) {
                        return Err(ApiError::invalid(
                            field,
                            format!(
                                "{ip}:{fport}/{:?} is already a frontend of another service",
                                port.protocol
                            ),
                        ));
                    }
                    t.by_key.insert(key, t.fronts.len() as u32);
                    t.frontend_ips.insert(u32::from(ip));
                    t.fronts.push(Frontend {
                        service,
                        kind,
                        ip,
                        port: fport,
                        proto,
                        backends: backends.clone(),
                        eligible,
                        maglev,
                        affinity_secs: svc.affinity_timeout_secs.unwrap_or(0),
                        local_only,
                    });
                }
            }
        }
        Ok(t)
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
        !self.frontend_ips.is_empty() && self.frontend_ips.contains(&u32::from(ip))
    }

    /// Whether `ip:port/proto` is some service's endpoint (so a packet from
    /// it may be a reply to translate back).
    #[inline]
    pub fn is_endpoint(&self, ip: Ipv4Addr, port: u16, proto: u8) -> bool {
        !self.endpoints.is_empty() && self.endpoints.contains(&pack(ip, port, proto))
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

    /// Whether a tracked flow lost its endpoint in this table (its frontend
    /// is gone, or no longer lists the endpoint as ready or terminating).
    /// Such flows are removed: a TCP client's next segment gets a RST, a
    /// UDP client's next datagram (a DNS retry) picks a live endpoint.
    pub fn flow_is_stale(&self, f: &crate::conntrack::FlowInfo) -> bool {
        if f.flags & crate::conntrack::flow_flags::DNAT == 0 {
            return false;
        }
        let Some(reply) = f.reply else { return false };
        match self.frontend(f.orig.dst, f.orig.dport, f.orig.proto) {
            Some(fr) => !self.has_backend(fr, reply.src, reply.sport),
            None => true,
        }
    }

    /// Endpoints in the table (counted once per frontend port).
    pub fn endpoint_count(&self) -> usize {
        self.backends.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::api::{EndpointSpec, Protocol, ServicePortSpec};

    fn endpoint(last: u8, ready: bool, terminating: bool) -> EndpointSpec {
        EndpointSpec {
            ip: Ipv4Addr::new(10, 244, 2, last),
            port: 80,
            node: Some("node-2".into()),
            ready,
            terminating,
        }
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
}
