//! The podswitch control API, version 1: plain data and the client.
//!
//! Every request, its arguments and its result are documented here; the
//! wire format is one JSON object per line in each direction over the
//! switch's Unix socket (mode 0600):
//!
//! ```text
//! -> {"v":1,"op":"add_port","args":{"pod":{"name":"default/web-0","netns":"/run/netns/x","ipv4":"10.244.1.5"}}}
//! <- {"ok":true,"result":{...}}
//! <- {"ok":false,"error":{"code":"invalid_argument","field":"pod.ipv4","message":"..."}}
//! ```
//!
//! A request is validated whole before anything changes: an invalid one
//! changes nothing. This crate depends on nothing of the datapath (no
//! tables, no I/O, no tokio): the agent, the CNI plugin, `podswitch ctl`
//! and the lab link it to talk to a switch, and the switch builds its
//! tables from its model types.

pub mod capture;
pub mod client;
pub mod config;
pub mod flow;
pub mod io;
pub mod reply;
pub mod stats;
pub mod trace;

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The IANA VXLAN port (RFC 7348 §5), the default destination port.
pub const VXLAN_UDP_PORT: u16 = 4789;

/// What kind of address a frontend listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

pub use crate::reply::Reply;
use crate::stats::{DatapathStats, PortStats};

/// The API version this switch speaks. Requests carry `"v"`; a request for
/// another version is refused with `unsupported_version`.
pub const API_VERSION: u32 = 1;

/// A MAC address, written `0a:58:0a:f4:01:02`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// The MAC a pod gets when none is given: `0a:58` followed by its IPv4
    /// address, as the Kubernetes bridge and OVN plugins do. Locally
    /// administered and unicast, and unique while IPs are.
    pub fn for_pod_ipv4(ip: Ipv4Addr) -> Mac {
        let o = ip.octets();
        Mac([0x0a, 0x58, o[0], o[1], o[2], o[3]])
    }

    /// The VTEP MAC a node gets when none is given: `02:56` followed by its
    /// underlay IPv4 address (locally administered, unique per node).
    pub fn for_vtep(underlay: Ipv4Addr) -> Mac {
        let o = underlay.octets();
        Mac([0x02, 0x56, o[0], o[1], o[2], o[3]])
    }

    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts
                .next()
                .ok_or_else(|| format!("MAC {s:?} has fewer than 6 octets"))?;
            if p.len() != 2 {
                return Err(format!("MAC {s:?}: octet {p:?} is not two hex digits"));
            }
            *b = u8::from_str_radix(p, 16)
                .map_err(|_| format!("MAC {s:?}: octet {p:?} is not hex"))?;
        }
        if parts.next().is_some() {
            return Err(format!("MAC {s:?} has more than 6 octets"));
        }
        Ok(Mac(out))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn default_ifname() -> String {
    "eth0".to_string()
}

/// A pod to attach: the switch creates a tap for it in its own namespace
/// and moves it into `netns` as `ifname`, with the pod's address, MAC, MTU
/// and routes (see the README's addressing scheme).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PodSpec {
    /// `namespace/name`; the port's key.
    pub name: String,
    /// Path of the pod's network namespace (e.g. /run/netns/NAME or /proc/PID/ns/net).
    pub netns: PathBuf,
    /// Interface name inside the pod.
    #[serde(default = "default_ifname")]
    pub ifname: String,
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Defaults to [`Mac::for_pod_ipv4`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<Mac>,
    /// Defaults to the node's pod MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

fn default_gateway_mac() -> Mac {
    Mac([0xee, 0xee, 0xee, 0xee, 0xee, 0xee])
}

fn default_mtu() -> u32 {
    1500
}

fn default_host_interface() -> Option<String> {
    Some("psw0".to_string())
}

/// How pod traffic crosses between nodes (chosen per cluster).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterMode {
    /// Pod IPs on the wire: the node's kernel routes remote pod CIDRs to
    /// their node's underlay IP (flannel host-gw, AWS VPC CNI style).
    #[default]
    Native,
    /// VXLAN overlay (RFC 7348), flannel/Calico VXLAN style.
    Vxlan,
}

/// Another node of the cluster, as this switch needs to know it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteNode {
    pub name: String,
    /// The node's underlay (InternalIP) address.
    pub underlay_ipv4: Ipv4Addr,
    pub pod_cidrs: Vec<IpNet>,
    /// The node's VTEP MAC (VXLAN mode), as flannel's
    /// `flannel.alpha.coreos.com/backend-data` annotation carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<Mac>,
}

/// The node this switch serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    /// The node's pod CIDRs (one per family); pods get addresses from them.
    pub pod_cidrs: Vec<IpNet>,
    /// MAC the switch answers ARP with (default ee:ee:ee:ee:ee:ee, as Calico).
    #[serde(default = "default_gateway_mac")]
    pub gateway_mac: Mac,
    /// Pods' default gateway; default: first address of the IPv4 pod CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ipv4: Option<Ipv4Addr>,
    /// Pod MTU.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The tap through which the node's own network stack reaches its pods
    /// (and, in native mode, other nodes and the outside); `null` for none.
    #[serde(default = "default_host_interface")]
    pub host_interface: Option<String>,
    /// The node's underlay address (its InternalIP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay_ipv4: Option<Ipv4Addr>,
    /// How pod traffic crosses nodes.
    #[serde(default)]
    pub mode: ClusterMode,
    /// VXLAN parameters (VXLAN mode).
    #[serde(default)]
    pub vxlan: VxlanSpec,
}

fn default_vni() -> u32 {
    1
}
fn default_vxlan_port() -> u16 {
    VXLAN_UDP_PORT
}

/// VXLAN parameters, the same on every node of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VxlanSpec {
    /// VXLAN network identifier (flannel uses 1).
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// UDP destination port: 4789 (IANA, RFC 7348) or 8472 (Linux's and
    /// flannel's default).
    #[serde(default = "default_vxlan_port")]
    pub port: u16,
    /// This node's VTEP MAC; default [`Mac::for_vtep`] of the underlay address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<Mac>,
}

impl Default for VxlanSpec {
    fn default() -> Self {
        VxlanSpec {
            vni: default_vni(),
            port: default_vxlan_port(),
            vtep_mac: None,
        }
    }
}

impl NodeSpec {
    pub fn ipv4_cidr(&self) -> Option<ipnet::Ipv4Net> {
        self.pod_cidrs.iter().find_map(|c| match c {
            IpNet::V4(n) => Some(*n),
            IpNet::V6(_) => None,
        })
    }

    /// The gateway address pods route through.
    pub fn gateway_ipv4(&self) -> Option<Ipv4Addr> {
        self.gateway_ipv4
            .or_else(|| self.ipv4_cidr().and_then(|n| n.hosts().next()))
    }
}

/// The whole desired state of one switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub node: NodeSpec,
    #[serde(default)]
    pub pods: Vec<PodSpec>,
    /// The other nodes of the cluster.
    #[serde(default)]
    pub remote_nodes: Vec<RemoteNode>,
}

/// A Service's transport protocol (SCTP is not supported and refused).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

/// One endpoint of a Service port, as an EndpointSlice lists it, with the
/// target port already resolved (by number, or by name from the pod's
/// containerPort names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The node the endpoint runs on (decides locality for
    /// externalTrafficPolicy Local).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// EndpointSlice `conditions.ready` (default true).
    #[serde(default = "default_true")]
    pub ready: bool,
    /// EndpointSlice `conditions.terminating`: gets no new flows, keeps
    /// its existing ones, unless no endpoint of the port is ready (below).
    #[serde(default)]
    pub terminating: bool,
    /// EndpointSlice `conditions.serving` (absent: as `ready`, as
    /// kube-proxy reads it). When a Service port has no ready endpoint,
    /// new flows go to the serving, terminating ones (KEP-1669).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serving: Option<bool>,
}

impl EndpointSpec {
    /// Whether the endpoint serves: `serving`, or `ready` where the
    /// condition is absent.
    pub fn is_serving(&self) -> bool {
        self.serving.unwrap_or(self.ready)
    }
}

fn default_true() -> bool {
    true
}

/// One port of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServicePortSpec {
    /// The port's name (may be empty for a single-port Service).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub protocol: Protocol,
    /// The Service port on the cluster IPs and external IPs.
    pub port: u16,
    /// The NodePort on every node's address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_port: Option<u16>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

/// A Service as the datapath needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `namespace/name`; the key.
    pub name: String,
    /// spec.clusterIPs (IPv4 ones).
    #[serde(default)]
    pub cluster_ips: Vec<Ipv4Addr>,
    /// spec.externalIPs and status.loadBalancer.ingress IPs: traffic to
    /// them on a Service port is handled like NodePort traffic.
    #[serde(default)]
    pub external_ips: Vec<Ipv4Addr>,
    pub ports: Vec<ServicePortSpec>,
    /// sessionAffinity ClientIP: the timeout in seconds (Kubernetes
    /// default 10800); `None` for no affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_timeout_secs: Option<u32>,
    /// externalTrafficPolicy Local: NodePort and external traffic goes only
    /// to endpoints on this node and keeps the client IP.
    #[serde(default)]
    pub external_traffic_local: bool,
    /// internalTrafficPolicy Local: cluster IP traffic goes only to
    /// endpoints on the client's node.
    #[serde(default)]
    pub internal_traffic_local: bool,
}

/// Cluster-wide settings of the service datapath.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// The cluster's pod CIDRs (clusterCIDR): never masqueraded.
    pub cluster_cidrs: Vec<IpNet>,
    /// The service CIDRs (ClusterIPs).
    pub service_cidrs: Vec<IpNet>,
    /// Masquerade pod traffic to destinations outside the cluster.
    #[serde(default = "default_true")]
    pub masquerade: bool,
    /// Destinations that are never masqueraded (besides the cluster and
    /// service CIDRs), like ip-masq-agent's nonMasqueradeCIDRs.
    #[serde(default)]
    pub masquerade_exclude: Vec<IpNet>,
    /// The NodePort range (inclusive), default 30000-32767.
    #[serde(default = "default_node_port_range")]
    pub node_port_range: (u16, u16),
}

fn default_node_port_range() -> (u16, u16) {
    (30000, 32767)
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            cluster_cidrs: vec!["10.244.0.0/16".parse().expect("valid")],
            service_cidrs: vec!["10.96.0.0/12".parse().expect("valid")],
            masquerade: true,
            masquerade_exclude: Vec::new(),
            node_port_range: default_node_port_range(),
        }
    }
}

/// Selects flows of the conntrack table; every given field must match
/// (on either direction's tuple).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowFilter {
    /// Source or destination address inside this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<IpNet>,
    /// Source or destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `tcp`, `udp` or `icmp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    /// A state name (`established`, `time_wait`, `unreplied`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// Result of `list_flows`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flows {
    /// Flows in the table (all of them, not only the selected).
    pub total: usize,
    pub capacity: usize,
    /// Flows that matched the filter (all of them, even beyond `limit`).
    pub matched: usize,
    pub flows: Vec<crate::flow::FlowInfo>,
}

/// Result of `set_services`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesApplied {
    pub services: usize,
    pub frontends: usize,
    pub endpoints: usize,
    /// Conntrack entries of removed endpoints marked for reset.
    pub flows_reset: usize,
    /// How long building and publishing the table took, in microseconds.
    pub build_us: u64,
    pub generation: u64,
}

/// Result of `get_services`: the settings and the Services the switch
/// holds, in name order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Services {
    pub settings: ServiceSettings,
    pub services: Vec<ServiceSpec>,
}

/// Result of `flush_flows`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsRemoved {
    /// Flows the filter selected, now gone from the table.
    pub removed: usize,
}

fn default_capture_frames() -> u64 {
    crate::capture::DEFAULT_MAX_FRAMES
}

fn default_capture_ms() -> u64 {
    crate::capture::DEFAULT_DURATION_MS
}

fn default_snaplen() -> u32 {
    crate::capture::MAX_SNAPLEN
}

/// Arguments of `capture_start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureSpec {
    /// A pod (`namespace/name`), the host port (`host/psw0` or `psw0`), or
    /// `underlay` for the VXLAN datagrams of the overlay sockets.
    pub port: String,
    /// `ingress` (frames the switch reads from the port), `egress` (frames
    /// it writes to it) or `both` (the default).
    #[serde(default)]
    pub point: crate::capture::CapturePoint,
    /// Which frames to keep (`proto`, `host`, `port`); see
    /// [`crate::capture::CaptureFilter`].
    #[serde(default)]
    pub filter: crate::capture::CaptureFilter,
    /// Stop after this many frames (default 1000).
    #[serde(default = "default_capture_frames")]
    pub max_frames: u64,
    /// Stop after this long (default 10 000 ms).
    #[serde(default = "default_capture_ms")]
    pub duration_ms: u64,
    /// Bytes kept of each frame (default and maximum 262144: whole frames).
    #[serde(default = "default_snaplen")]
    pub snaplen: u32,
}

/// Result of `capture_start`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureStarted {
    pub id: u64,
    /// The port as the switch names it.
    pub port: String,
    pub point: crate::capture::CapturePoint,
    /// The filter in words (`icmp and host 10.244.1.2`), empty for none.
    pub filter: String,
    pub snaplen: u32,
    pub max_frames: u64,
    pub duration_ms: u64,
    /// Frames the capture ring holds between two reads.
    pub ring_slots: usize,
    /// On the underlay: the VXLAN UDP port (tell tshark when it is not
    /// 4789: `-d udp.port==8472,vxlan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan_udp_port: Option<u16>,
}

/// One captured frame, as `capture_read` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureFrame {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The frame's length on the wire (`data` may be cut by the snaplen).
    pub orig_len: u32,
    pub direction: crate::capture::Direction,
    /// The bytes, base64 (RFC 4648 §4, padded): an Ethernet frame.
    pub data: String,
}

/// Result of `capture_read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureBatch {
    pub frames: Vec<CaptureFrame>,
    /// The capture ended and every frame was read; the id is forgotten.
    pub done: bool,
    /// Frames put in the ring so far.
    pub captured: u64,
    /// Matching frames lost because the ring was full (the reader was slow).
    pub dropped: u64,
    /// Frames at the capture point that the filter did not select.
    pub filtered: u64,
}

/// This node as the switch holds it (`get_nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalNodeState {
    pub name: String,
    /// The node's underlay address (its InternalIP), if known.
    pub underlay_ipv4: Option<Ipv4Addr>,
    pub pod_cidrs: Vec<IpNet>,
    /// The pods' default gateway and the MAC proxy ARP answers with.
    pub gateway_ipv4: Ipv4Addr,
    pub gateway_mac: Mac,
    /// Pod MTU.
    pub mtu: u32,
    pub mode: ClusterMode,
    /// The host port (`psw0`), if the switch has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_interface: Option<String>,
    /// VXLAN mode: this node's VTEP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VtepState>,
}

/// This node's VXLAN tunnel endpoint, as the overlay uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VtepState {
    pub vni: u32,
    pub udp_port: u16,
    pub local_ipv4: Ipv4Addr,
    pub vtep_mac: Mac,
}

/// Another node as the switch holds it (`get_nodes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteNodeState {
    pub name: String,
    pub underlay_ipv4: Ipv4Addr,
    pub pod_cidrs: Vec<IpNet>,
    /// VXLAN mode: the VTEP MAC inner frames to it are addressed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<Mac>,
}

/// Result of `get_nodes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nodes {
    /// The snapshot the answer was read from.
    pub generation: u64,
    pub local: LocalNodeState,
    pub remote: Vec<RemoteNodeState>,
}

/// Where a route of the switch's forwarding table leads (`get_routes`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "target", rename_all = "snake_case")]
pub enum RouteHop {
    /// A pod on this node: forwarded to its port.
    Pod { port: u32, pod: String },
    /// The node's own stack (the host port): its kernel routes the packet
    /// on (the node itself, other nodes in native mode, the outside).
    Host { port: u32, interface: String },
    /// A pod CIDR of another node, VXLAN-encapsulated to its VTEP.
    Overlay {
        node: String,
        underlay_ipv4: Ipv4Addr,
        vtep_mac: Mac,
    },
    /// Inside a local pod CIDR with no pod: dropped, ICMP host unreachable.
    Unassigned,
    /// Leads nowhere (a node index the overlay no longer has): dropped,
    /// ICMP net unreachable.
    NoRoute,
}

/// One route of the switch's forwarding table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub prefix: IpNet,
    #[serde(flatten)]
    pub hop: RouteHop,
}

/// A route the switch installed in the node's kernel (native mode): the
/// node's stack sends the pod CIDR of `node` to its underlay address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRoute {
    pub prefix: IpNet,
    pub node: String,
    pub via: Ipv4Addr,
}

/// The service side of routing: what is translated and what is not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRouting {
    /// Pod traffic to destinations outside the cluster leaves with this
    /// address (the node's), when masquerade is on.
    pub node_ip: Option<Ipv4Addr>,
    pub masquerade: bool,
    pub cluster_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    pub masquerade_exclude: Vec<IpNet>,
    pub node_port_range: (u16, u16),
    /// Frontends (ClusterIP, NodePort, external) in the table.
    pub frontends: usize,
}

/// What one destination matches (`get_routes` with `lookup`, like `ip
/// route get`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteLookup {
    pub dst: std::net::IpAddr,
    /// The matching entry; `null` when nothing matches (`no_route`).
    pub route: Option<RouteEntry>,
    /// The node whose pod CIDR holds `dst`: this one or another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Native mode: the underlay next hop the node's kernel uses after the
    /// host port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Ipv4Addr>,
    /// `dst` is the pods' gateway: the switch answers it itself (ARP, ICMP
    /// echo) before routing.
    pub gateway: bool,
    /// `dst` is a frontend address of these Services: translated to an
    /// endpoint before routing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    /// Pod traffic to `dst` is masqueraded to the node's address.
    pub masquerade: bool,
}

/// Result of `get_routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Routes {
    /// The snapshot the answer was read from.
    pub generation: u64,
    pub mode: ClusterMode,
    /// The route stage's table, longest prefix first (the order it
    /// prefers them in).
    pub routes: Vec<RouteEntry>,
    /// Native mode: what the node's kernel does with remote pod CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_routes: Vec<KernelRoute>,
    pub services: ServiceRouting,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<RouteLookup>,
}

/// One endpoint of a frontend with its part of the Maglev table
/// (`get_service_state`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendState {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// The node it runs on, as the EndpointSlice says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// On this node.
    pub local: bool,
    pub ready: bool,
    pub terminating: bool,
    /// Serving (only says more than `ready` for a terminating endpoint).
    #[serde(default)]
    pub serving: bool,
    /// New flows may go to it (ready, or serving and terminating when no
    /// endpoint is ready; local under a Local policy).
    pub eligible: bool,
    /// Maglev table slots it owns (0 when not eligible).
    pub slots: usize,
    /// `slots / table_size`: the fraction of new flows it gets.
    pub share: f64,
}

/// A frontend's load-balancing state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontendState {
    pub kind: FrontendKind,
    pub ip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    /// Maglev table size `M` (a prime; 0 with no eligible backend).
    pub table_size: usize,
    /// Backends new flows may go to (`N`); each owns `floor(M/N)` or
    /// `ceil(M/N)` slots.
    pub eligible: usize,
    /// Session affinity timeout in seconds; 0 for none.
    pub affinity_secs: u32,
    /// Traffic policy Local for this frontend's kind.
    pub local_only: bool,
    pub backends: Vec<BackendState>,
}

/// A Service's frontends as the switch load-balances them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    pub frontends: Vec<FrontendState>,
}

/// Result of `get_config`: the daemon's configuration as it was loaded
/// (file, then flags), with the worker count resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunningConfig {
    pub switch_version: String,
    pub config: crate::config::DaemonConfig,
    /// `text` or `json`; `null` if the daemon was not told.
    pub log_format: Option<String>,
    /// The tracing filter (`PODSWITCH_LOG`, default `info`).
    pub log_filter: String,
    /// Where the node and its pods are remembered across restarts.
    pub state_file: PathBuf,
    /// The node came from `state_file` (a restart), not from `config.node`.
    pub node_from_state: bool,
}

/// Every request of API version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "op",
    content = "args",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Request {
    /// Version handshake. Result: [`Hello`].
    Hello,
    /// Attach one pod. Result: [`PortInfo`].
    AddPort(AddPortArgs),
    /// Detach a pod and delete its tap. Result: null. Unknown names are an error.
    RemovePort(RemovePortArgs),
    /// Make the switch's state exactly `topology` (node and pods): pods not
    /// listed are removed, new ones added, changed ones re-created. Result:
    /// [`Applied`].
    ReplaceTopology(ReplaceTopologyArgs),
    /// Add and remove pods in one all-or-nothing step. Result: [`Applied`].
    PatchTopology(PatchTopologyArgs),
    /// Replace the set of other nodes (their pod CIDRs and underlay
    /// addresses). Result: null.
    SetRemoteNodes(SetRemoteNodesArgs),
    /// Replace the whole service table (and, if given, the settings) in
    /// one atomic step: the new table is built off the fast path and
    /// published whole. Result: [`ServicesApplied`].
    SetServices(SetServicesArgs),
    /// Add or replace (`upsert`, by name) and remove Services in one
    /// atomic step. Result: [`ServicesApplied`].
    PatchServices(PatchServicesArgs),
    /// Result: [`Services`].
    GetServices,
    /// Conntrack flows matching `filter` (at most `limit`, default 1000).
    /// Result: [`Flows`].
    ListFlows(ListFlowsArgs),
    /// A dry run of one synthetic packet from port `ingress` (a pod's
    /// `namespace/name`, or `host/psw0`) through the stages over the live
    /// tables; nothing is sent and no flow is created. Result:
    /// [`crate::trace::Trace`].
    Trace(TraceArgs),
    /// Removes the flows matching `filter` (an empty filter flushes the
    /// table). Result: [`FlowsRemoved`].
    FlushFlows(FlushFlowsArgs),
    /// Arm a packet capture on a port (or the underlay); frames are then
    /// taken with `capture_read` until it answers `done`. Result:
    /// [`CaptureStarted`].
    CaptureStart(CaptureSpec),
    /// The frames captured since the last read (about `max_bytes` of frame
    /// data at most, default 4 MiB) and the counts so far; `done` once the
    /// capture ended and everything was read. Result: [`CaptureBatch`].
    CaptureRead(CaptureReadArgs),
    /// Stop capture `id` now; what it took can still be read. Result:
    /// [`crate::capture::CaptureCounts`].
    CaptureStop(CaptureStopArgs),
    /// This node and the others, as the switch's tables hold them.
    /// Result: [`Nodes`].
    GetNodes,
    /// The route stage's forwarding table and the service/masquerade
    /// side; with `lookup`, also which entry that destination matches.
    /// Result: [`Routes`].
    GetRoutes(GetRoutesArgs),
    /// Each Service's frontends with their Maglev state (table size,
    /// slots and share per backend); only `name` if given (unknown:
    /// `not_found`). Result: `[ServiceState]`.
    GetServiceState(GetServiceStateArgs),
    /// The daemon's configuration as loaded. Result: [`RunningConfig`].
    GetConfig,
    /// Result: [`Topology`].
    GetTopology,
    /// Result: `[PortInfo]`.
    ListPorts,
    /// Result: [`Stats`].
    GetStats,
    /// Changes how idle workers wait for frames, on the running switch;
    /// `budget_us` (the adaptive budget) keeps its value when omitted.
    /// Result: [`PollSettings`].
    SetPollMode(SetPollModeArgs),
    /// Switches the workers' tap I/O on the running switch: `io_uring`
    /// (refused when the workers have no ring), `syscalls`, or `auto`.
    /// Result: [`IoBackendSet`].
    SetIoBackend(SetIoBackendArgs),
    /// Sends VXLAN through the tunnel port (UDP-tunnel GSO for
    /// superframes, batched writes) or through the UDP socket (superframes
    /// segmented in the switch), on the running switch; on is refused
    /// where the switch has no tunnel port.
    /// Result: [`VxlanTunnelGsoSet`].
    SetVxlanTunnelGso(SetVxlanTunnelGsoArgs),
}

impl Request {
    /// The request's `op`, as on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Hello => "hello",
            Request::AddPort(_) => "add_port",
            Request::RemovePort(_) => "remove_port",
            Request::ReplaceTopology(_) => "replace_topology",
            Request::PatchTopology(_) => "patch_topology",
            Request::SetRemoteNodes(_) => "set_remote_nodes",
            Request::SetServices(_) => "set_services",
            Request::PatchServices(_) => "patch_services",
            Request::GetServices => "get_services",
            Request::ListFlows(_) => "list_flows",
            Request::Trace(_) => "trace",
            Request::FlushFlows(_) => "flush_flows",
            Request::CaptureStart(_) => "capture_start",
            Request::CaptureRead(_) => "capture_read",
            Request::CaptureStop(_) => "capture_stop",
            Request::GetNodes => "get_nodes",
            Request::GetRoutes(_) => "get_routes",
            Request::GetServiceState(_) => "get_service_state",
            Request::GetConfig => "get_config",
            Request::GetTopology => "get_topology",
            Request::ListPorts => "list_ports",
            Request::GetStats => "get_stats",
            Request::SetPollMode(_) => "set_poll_mode",
            Request::SetIoBackend(_) => "set_io_backend",
            Request::SetVxlanTunnelGso(_) => "set_vxlan_tunnel_gso",
        }
    }
}

/// The arguments of [`Request::AddPort`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPortArgs {
    pub pod: PodSpec,
}

/// The arguments of [`Request::RemovePort`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemovePortArgs {
    pub name: String,
}

/// The arguments of [`Request::ReplaceTopology`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceTopologyArgs {
    pub topology: Topology,
}

/// The arguments of [`Request::PatchTopology`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchTopologyArgs {
    #[serde(default)]
    pub add: Vec<PodSpec>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The arguments of [`Request::SetRemoteNodes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetRemoteNodesArgs {
    pub nodes: Vec<RemoteNode>,
}

/// The arguments of [`Request::SetServices`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetServicesArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<ServiceSettings>,
    pub services: Vec<ServiceSpec>,
}

/// The arguments of [`Request::PatchServices`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PatchServicesArgs {
    #[serde(default)]
    pub upsert: Vec<ServiceSpec>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The arguments of [`Request::ListFlows`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListFlowsArgs {
    #[serde(default)]
    pub filter: FlowFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The arguments of [`Request::Trace`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceArgs {
    pub ingress: String,
    pub packet: crate::trace::TracePacket,
}

/// The arguments of [`Request::FlushFlows`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlushFlowsArgs {
    #[serde(default)]
    pub filter: FlowFilter,
}

/// The arguments of [`Request::CaptureRead`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureReadArgs {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<usize>,
}

/// The arguments of [`Request::CaptureStop`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureStopArgs {
    pub id: u64,
}

/// The arguments of [`Request::GetRoutes`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetRoutesArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<std::net::IpAddr>,
}

/// The arguments of [`Request::GetServiceState`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetServiceStateArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The arguments of [`Request::SetPollMode`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPollModeArgs {
    pub mode: crate::io::PollMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_us: Option<u64>,
}

/// The arguments of [`Request::SetIoBackend`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetIoBackendArgs {
    pub backend: crate::io::IoBackend,
}

/// The arguments of [`Request::SetVxlanTunnelGso`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetVxlanTunnelGsoArgs {
    pub on: bool,
}

/// Result of `set_vxlan_tunnel_gso`: whether TCP superframes now go to the
/// kernel whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VxlanTunnelGsoSet {
    pub in_use: bool,
}

/// Result of `set_io_backend`: the tap I/O now in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoBackendSet {
    /// `io_uring` or `syscalls`.
    pub in_use: String,
}

/// Result of `set_poll_mode`: the mode and adaptive budget now in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollSettings {
    pub mode: crate::io::PollMode,
    pub budget_us: u64,
}

/// Result of `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub api_version: u32,
    pub switch_version: String,
    pub node: String,
    pub workers: usize,
}

/// A port as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    pub id: u32,
    pub pod: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub mac: Mac,
    pub ipv4: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    pub mtu: u32,
    pub queues: usize,
    pub stats: PortStats,
}

/// Result of `replace_topology` / `patch_topology`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
    pub generation: u64,
}

/// Result of `get_stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub generation: u64,
    pub workers: usize,
    /// How the workers move tap frames: `io_uring` (batched) or
    /// `syscalls` (one read/write per frame).
    #[serde(default)]
    pub io_backend: String,
    /// Whether VXLAN TCP superframes go to the node's kernel whole
    /// (UDP-tunnel GSO) rather than segmented in the switch.
    #[serde(default)]
    pub vxlan_tunnel_gso: bool,
    pub datapath: DatapathStats,
    pub ports: Vec<PortInfo>,
}

/// Error codes (stable strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not JSON or not a known request shape.
    BadRequest,
    UnsupportedVersion,
    /// A field has an invalid value; `field` names it.
    InvalidArgument,
    NotFound,
    AlreadyExists,
    /// The kernel refused (tap, netlink, netns); nothing was changed.
    Internal,
}

/// An error as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code:?}{}: {message}", field.as_ref().map(|f| format!(" ({f})")).unwrap_or_default())]
pub struct ApiError {
    pub code: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

impl ApiError {
    /// Attaches the name of the offending field.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            field: None,
            message: message.into(),
        }
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            code: ErrorCode::InvalidArgument,
            field: Some(field.into()),
            message: message.into(),
        }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

/// One response line. `result` is the operation's [`Reply`] as JSON
/// (`null` for those that answer nothing), present exactly when `ok`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl Response {
    /// The line answering a request: its reply, or the error it met. The
    /// reply goes through a [`serde_json::Value`] (whose objects keep
    /// their keys sorted), as it always has, so its keys are in the same
    /// order on the wire whatever order its type declares them in. A
    /// reply that does not serialize is an internal error.
    pub fn answer(outcome: Result<Reply, ApiError>) -> Response {
        let result = outcome.and_then(|reply| {
            serde_json::to_value(&reply).map_err(|e| ApiError::internal(e.to_string()))
        });
        match result {
            Ok(v) => Response {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Response::refusal(e),
        }
    }

    /// The line refusing a request.
    pub fn refusal(error: ApiError) -> Response {
        Response {
            ok: false,
            result: None,
            error: Some(error),
        }
    }
}

/// Parses one request line, naming the offending field on error.
pub fn decode_request(line: &str) -> Result<Request, ApiError> {
    let value: serde_json::Value = serde_json::from_str(line)
        .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::new(ErrorCode::BadRequest, "request must be a JSON object"))?;
    match obj.get("v").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(API_VERSION) => {}
        Some(v) => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedVersion,
                format!("API version {v} not supported; this switch speaks {API_VERSION}"),
            ))
        }
        None => return Err(ApiError::invalid("v", "missing API version \"v\"")),
    }
    for key in obj.keys() {
        if !matches!(key.as_str(), "v" | "op" | "args") {
            return Err(ApiError::invalid(
                key.clone(),
                "unknown top-level key (expected v, op, args)",
            ));
        }
    }
    let op = obj
        .get("op")
        .and_then(|o| o.as_str())
        .ok_or_else(|| ApiError::invalid("op", "missing or not a string"))?;
    let args = obj
        .get("args")
        .cloned()
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct NoArgs {}
    Ok(match op {
        "hello" => decode_args::<NoArgs>(args).map(|_| Request::Hello)?,
        "add_port" => Request::AddPort(decode_args(args)?),
        "remove_port" => Request::RemovePort(decode_args(args)?),
        "replace_topology" => Request::ReplaceTopology(decode_args(args)?),
        "patch_topology" => Request::PatchTopology(decode_args(args)?),
        "set_remote_nodes" => Request::SetRemoteNodes(decode_args(args)?),
        "set_services" => Request::SetServices(decode_args(args)?),
        "patch_services" => Request::PatchServices(decode_args(args)?),
        "get_services" => decode_args::<NoArgs>(args).map(|_| Request::GetServices)?,
        "list_flows" => Request::ListFlows(decode_args(args)?),
        "trace" => Request::Trace(decode_args(args)?),
        "flush_flows" => Request::FlushFlows(decode_args(args)?),
        "capture_start" => Request::CaptureStart(decode_args(args)?),
        "capture_read" => Request::CaptureRead(decode_args(args)?),
        "capture_stop" => Request::CaptureStop(decode_args(args)?),
        "get_nodes" => decode_args::<NoArgs>(args).map(|_| Request::GetNodes)?,
        "get_routes" => Request::GetRoutes(decode_args(args)?),
        "get_service_state" => Request::GetServiceState(decode_args(args)?),
        "get_config" => decode_args::<NoArgs>(args).map(|_| Request::GetConfig)?,
        "get_topology" => decode_args::<NoArgs>(args).map(|_| Request::GetTopology)?,
        "list_ports" => decode_args::<NoArgs>(args).map(|_| Request::ListPorts)?,
        "get_stats" => decode_args::<NoArgs>(args).map(|_| Request::GetStats)?,
        "set_poll_mode" => Request::SetPollMode(decode_args(args)?),
        "set_io_backend" => Request::SetIoBackend(decode_args(args)?),
        "set_vxlan_tunnel_gso" => Request::SetVxlanTunnelGso(decode_args(args)?),
        other => {
            return Err(ApiError {
                code: ErrorCode::BadRequest,
                field: Some("op".into()),
                message: format!("unknown op {other:?}"),
            })
        }
    })
}

/// Deserializes `args`, naming the path of the first bad field.
fn decode_args<T: serde::de::DeserializeOwned>(args: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(args).map_err(|e| {
        let path = e.path().to_string();
        ApiError {
            code: ErrorCode::InvalidArgument,
            field: if path == "." || path.is_empty() {
                None
            } else {
                Some(path)
            },
            message: e.into_inner().to_string(),
        }
    })
}

/// Serializes a request with its version, straight into the request line
/// (no `serde_json::Value` in between: a full sync of 10k Services is
/// encoded as it is written).
pub fn encode_request(req: &Request) -> String {
    #[derive(Serialize)]
    struct Line<'r> {
        v: u32,
        #[serde(flatten)]
        request: &'r Request,
    }
    serde_json::to_string(&Line {
        v: API_VERSION,
        request: req,
    })
    .unwrap_or_else(|e| {
        // Only a map with non-string keys fails; no request has one.
        format!(
            r#"{{"v":{API_VERSION},"op":"invalid","args":{{"error":{:?}}}}}"#,
            e.to_string()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let r = Request::AddPort(AddPortArgs {
            pod: PodSpec {
                name: "default/a".into(),
                netns: "/run/netns/a".into(),
                ifname: "eth0".into(),
                ipv4: Some("10.244.1.2".parse().unwrap()),
                ipv6: None,
                mac: None,
                mtu: None,
            },
        });
        assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        assert_eq!(
            decode_request(r#"{"v":1,"op":"hello"}"#).unwrap(),
            Request::Hello
        );
    }

    #[test]
    fn bad_requests_name_the_field() {
        let e = decode_request(r#"{"v":1,"op":"add_port","args":{"pod":{"name":"a","netns":"/x","ipv4":"10.244.1.300"}}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("pod.ipv4"), "{e}");
        let e = decode_request(r#"{"v":1,"op":"add_port","args":{"pod":{"name":"a","netns":"/x","mac":"zz:00:00:00:00:00"}}}"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("pod.mac"), "{e}");
        let e = decode_request(
            r#"{"v":1,"op":"add_port","args":{"pod":{"name":"a","netns":"/x","colour":"red"}}}"#,
        )
        .unwrap_err();
        assert!(e.message.contains("colour"), "{e}");
        assert_eq!(
            decode_request(r#"{"v":2,"op":"hello"}"#).unwrap_err().code,
            ErrorCode::UnsupportedVersion
        );
        assert_eq!(
            decode_request("not json").unwrap_err().code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            decode_request(r#"{"op":"hello"}"#)
                .unwrap_err()
                .field
                .as_deref(),
            Some("v")
        );
        assert_eq!(
            decode_request(r#"{"v":1,"op":"explode"}"#)
                .unwrap_err()
                .code,
            ErrorCode::BadRequest
        );
        assert_eq!(
            decode_request(r#"{"v":1,"op":"hello","args":{"x":1}}"#)
                .unwrap_err()
                .code,
            ErrorCode::InvalidArgument
        );
    }

    #[test]
    fn capture_requests_round_trip_and_bad_filters_name_the_field() {
        let r =
            decode_request(r#"{"v":1,"op":"capture_start","args":{"port":"default/a"}}"#).unwrap();
        let Request::CaptureStart(spec) = &r else {
            panic!("{r:?}");
        };
        assert_eq!(spec.point, crate::capture::CapturePoint::Both);
        assert_eq!(spec.max_frames, crate::capture::DEFAULT_MAX_FRAMES);
        assert_eq!(spec.duration_ms, crate::capture::DEFAULT_DURATION_MS);
        assert_eq!(spec.snaplen, crate::capture::MAX_SNAPLEN);
        assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        let r = Request::CaptureRead(CaptureReadArgs {
            id: 3,
            max_bytes: Some(10),
        });
        assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        let r = Request::CaptureStop(CaptureStopArgs { id: 3 });
        assert_eq!(decode_request(&encode_request(&r)).unwrap(), r);
        let e = decode_request(
            r#"{"v":1,"op":"capture_start","args":{"port":"a","filter":{"proto":"sctp"}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("filter.proto"), "{e}");
        let e = decode_request(
            r#"{"v":1,"op":"capture_start","args":{"port":"a","filter":{"host":"10.1.2"}}}"#,
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("filter.host"), "{e}");
        let e = decode_request(r#"{"v":1,"op":"capture_start","args":{"port":"a","point":"up"}}"#)
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("point"), "{e}");
    }

    #[test]
    fn inspection_requests_round_trip_and_bad_args_name_the_field() {
        for r in [
            Request::GetNodes,
            Request::GetConfig,
            Request::GetRoutes(GetRoutesArgs { lookup: None }),
            Request::GetRoutes(GetRoutesArgs {
                lookup: Some("10.244.2.3".parse().unwrap()),
            }),
            Request::GetRoutes(GetRoutesArgs {
                lookup: Some("fd00::1".parse().unwrap()),
            }),
            Request::GetServiceState(GetServiceStateArgs { name: None }),
            Request::GetServiceState(GetServiceStateArgs {
                name: Some("default/api".into()),
            }),
            Request::SetPollMode(SetPollModeArgs {
                mode: crate::io::PollMode::Poll,
                budget_us: None,
            }),
            Request::SetPollMode(SetPollModeArgs {
                mode: crate::io::PollMode::Adaptive,
                budget_us: Some(50),
            }),
            Request::SetIoBackend(SetIoBackendArgs {
                backend: crate::io::IoBackend::Syscalls,
            }),
            Request::SetVxlanTunnelGso(SetVxlanTunnelGsoArgs { on: false }),
        ] {
            assert_eq!(decode_request(&encode_request(&r)).unwrap(), r, "{r:?}");
        }
        assert_eq!(
            decode_request(r#"{"v":1,"op":"get_nodes"}"#).unwrap(),
            Request::GetNodes
        );
        assert_eq!(
            decode_request(r#"{"v":1,"op":"get_routes","args":{"lookup":"10.244.1.2"}}"#).unwrap(),
            Request::GetRoutes(GetRoutesArgs {
                lookup: Some("10.244.1.2".parse().unwrap())
            })
        );
        assert_eq!(
            decode_request(r#"{"v":1,"op":"get_service_state","args":{}}"#).unwrap(),
            Request::GetServiceState(GetServiceStateArgs { name: None })
        );
        for (line, field) in [
            (
                r#"{"v":1,"op":"get_routes","args":{"lookup":"10.244.1"}}"#,
                Some("lookup"),
            ),
            (
                r#"{"v":1,"op":"get_routes","args":{"lookup":"10.244.1.300"}}"#,
                Some("lookup"),
            ),
            (
                r#"{"v":1,"op":"get_routes","args":{"lookup":42}}"#,
                Some("lookup"),
            ),
            (
                r#"{"v":1,"op":"get_service_state","args":{"name":7}}"#,
                Some("name"),
            ),
            (r#"{"v":1,"op":"get_nodes","args":{"all":true}}"#, None),
            (r#"{"v":1,"op":"get_config","args":{"x":1}}"#, None),
            (
                r#"{"v":1,"op":"set_poll_mode","args":{"mode":"busy"}}"#,
                Some("mode"),
            ),
            (
                r#"{"v":1,"op":"set_poll_mode","args":{"mode":"poll","budget_us":-1}}"#,
                Some("budget_us"),
            ),
            (
                r#"{"v":1,"op":"get_routes","args":{"dst":"10.0.0.1"}}"#,
                None,
            ),
        ] {
            let e = decode_request(line).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument, "{line}: {e}");
            if field.is_some() {
                assert_eq!(e.field.as_deref(), field, "{line}: {e}");
            }
            assert!(!e.message.is_empty());
        }
        let e = decode_request(r#"{"v":1,"op":"get_route"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn inspection_results_round_trip() {
        let routes = Routes {
            generation: 4,
            mode: ClusterMode::Vxlan,
            routes: vec![
                RouteEntry {
                    prefix: "10.244.1.2/32".parse().unwrap(),
                    hop: RouteHop::Pod {
                        port: 2,
                        pod: "default/a".into(),
                    },
                },
                RouteEntry {
                    prefix: "10.244.2.0/24".parse().unwrap(),
                    hop: RouteHop::Overlay {
                        node: "node-2".into(),
                        underlay_ipv4: "198.18.0.2".parse().unwrap(),
                        vtep_mac: Mac::for_vtep("198.18.0.2".parse().unwrap()),
                    },
                },
                RouteEntry {
                    prefix: "10.244.1.0/24".parse().unwrap(),
                    hop: RouteHop::Unassigned,
                },
            ],
            kernel_routes: Vec::new(),
            services: ServiceRouting {
                node_ip: Some("198.18.0.1".parse().unwrap()),
                masquerade: true,
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
                masquerade_exclude: Vec::new(),
                node_port_range: (30000, 32767),
                frontends: 0,
            },
            lookup: Some(RouteLookup {
                dst: "10.244.2.7".parse().unwrap(),
                route: None,
                node: Some("node-2".into()),
                via: None,
                gateway: false,
                services: Vec::new(),
                masquerade: false,
            }),
        };
        let v = serde_json::to_value(&routes).unwrap();
        // The hop is flattened into the entry: {"prefix", "target", ...}.
        assert_eq!(v["routes"][0]["target"], "pod");
        assert_eq!(v["routes"][0]["pod"], "default/a");
        assert_eq!(v["routes"][1]["target"], "overlay");
        assert_eq!(v["routes"][1]["vtep_mac"], "02:56:c6:12:00:02");
        assert_eq!(v["routes"][2]["target"], "unassigned");
        assert_eq!(serde_json::from_value::<Routes>(v).unwrap(), routes);
    }

    #[test]
    fn mac_parse_and_default() {
        assert_eq!(
            "0a:58:0a:f4:01:02".parse::<Mac>().unwrap(),
            Mac::for_pod_ipv4("10.244.1.2".parse().unwrap())
        );
        assert!("0a:58:0a:f4:01".parse::<Mac>().is_err());
        assert!("0a:58:0a:f4:01:02:03".parse::<Mac>().is_err());
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(s in ".{0,200}") {
            let _ = decode_request(&s);
        }
    }
}
