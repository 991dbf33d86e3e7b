//! The switch daemon's configuration (`podswitch switch run`'s file and
//! flags, `ctl config`'s answer), and the NodePort address list it holds.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::flow::ConntrackConfig;
use crate::io::{IoBackend, PollMode};
use crate::NodeSpec;

/// Maglev's default lookup-table size per frontend (a prime): it suits
/// Services of up to ~160 backends (`podswitch_switch::tables::maglev`).
pub const DEFAULT_MAGLEV_TABLE_SIZE: usize = 16381;

/// The default metrics address: localhost only, so nothing is exposed
/// off the node unless the operator asks for it.
pub const DEFAULT_METRICS_ADDRESS: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9464);

/// How the daemon is started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// The node this switch serves.
    pub node: NodeSpec,
    /// Control socket path (created mode 0600).
    pub control_socket: PathBuf,
    /// Where state that survives restarts is kept.
    pub state_dir: PathBuf,
    /// Worker threads (and tap queues per pod); 0 = one per core.
    #[serde(default)]
    pub workers: usize,
    /// The flow table: its cap and timeouts.
    #[serde(default)]
    pub conntrack: ConntrackConfig,
    /// Maglev lookup-table size per service frontend (a prime).
    #[serde(default = "default_maglev_size")]
    pub maglev_table_size: usize,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (HTTP);
    /// localhost by default, an empty string turns the endpoint off.
    #[serde(
        default = "default_metrics_address",
        deserialize_with = "deserialize_metrics_address"
    )]
    pub metrics_address: Option<SocketAddr>,
    /// Where NodePorts open (kube-proxy's `--nodeport-addresses`):
    /// `"primary"` (the node's underlay address) and IPv4 CIDRs matched
    /// against the node's addresses; default `["primary"]`
    /// (`podswitch_switch::tables::node_ports`).
    #[serde(default = "default_list")]
    pub node_port_addresses: Vec<NodePortAddress>,
    /// How idle workers wait for frames: `interrupt` (park in epoll at
    /// once), `adaptive` (busy-poll for `adaptive_poll_us` after the last
    /// frame, then park; the default) or `poll` (never park)
    /// (`podswitch_switch::worker::poll`).
    #[serde(default)]
    pub poll_mode: PollMode,
    /// In `adaptive` mode, how long after its last frame a worker keeps
    /// polling, in microseconds.
    #[serde(default = "default_adaptive_poll_us")]
    pub adaptive_poll_us: u64,
    /// How workers move tap frames: `auto` (io_uring where the kernel and
    /// its seccomp profile allow it, else read/write; the default),
    /// `io_uring` (or refuse to start), `syscalls` (one read/write per
    /// frame).
    #[serde(default)]
    pub io_backend: IoBackend,
    /// In VXLAN mode, send every datagram through a tap in the node's
    /// namespace and hand pods' TCP superframes to the node's kernel whole
    /// (UDP-tunnel GSO, Linux >= 6.17), to be segmented as late as the
    /// kernel's own vxlan device does it; false, or an older kernel: send
    /// through a UDP socket and segment superframes in the switch.
    /// Default true.
    #[serde(default = "default_true")]
    pub vxlan_tunnel_gso: bool,
}

fn default_true() -> bool {
    true
}

fn default_adaptive_poll_us() -> u64 {
    crate::io::DEFAULT_ADAPTIVE_BUDGET_US
}

fn default_metrics_address() -> Option<SocketAddr> {
    Some(DEFAULT_METRICS_ADDRESS)
}

/// A metrics address as written in a config: `""` (or none) disables it.
pub fn parse_metrics_address(s: &str) -> Result<Option<SocketAddr>, std::net::AddrParseError> {
    let s = s.trim();
    if s.is_empty() {
        Ok(None)
    } else {
        s.parse().map(Some)
    }
}

fn deserialize_metrics_address<'de, D>(d: D) -> Result<Option<SocketAddr>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_metrics_address(&s)
            .map_err(|e| serde::de::Error::custom(format!("metrics_address {s:?}: {e}"))),
    }
}

fn default_maglev_size() -> usize {
    DEFAULT_MAGLEV_TABLE_SIZE
}

/// One entry of the NodePort address list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePortAddress {
    /// The node's underlay address (`"primary"`).
    Primary,
    /// Every address of the node inside this IPv4 prefix.
    Cidr(Ipv4Net),
}

/// Why an entry of the list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodePortAddressError {
    /// Neither `primary` nor a CIDR.
    #[error("{0:?} is neither \"primary\" nor a CIDR (like 198.18.0.0/15)")]
    NotACidr(String),
    /// An IPv6 prefix: the service table is IPv4-only for now.
    #[error("{0}: NodePorts are IPv4-only for now")]
    Ipv6(IpNet),
    /// A prefix with host bits set (kube-proxy refuses these too).
    #[error("{0} has host bits set (did you mean {1}?)")]
    HostBits(Ipv4Net, Ipv4Net),
}

impl std::str::FromStr for NodePortAddress {
    type Err = NodePortAddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("primary") {
            return Ok(NodePortAddress::Primary);
        }
        match s.parse::<IpNet>() {
            Ok(IpNet::V4(n)) if n != n.trunc() => Err(NodePortAddressError::HostBits(n, n.trunc())),
            Ok(IpNet::V4(n)) => Ok(NodePortAddress::Cidr(n)),
            Ok(n @ IpNet::V6(_)) => Err(NodePortAddressError::Ipv6(n)),
            Err(_) => Err(NodePortAddressError::NotACidr(s.to_string())),
        }
    }
}

impl std::fmt::Display for NodePortAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodePortAddress::Primary => f.write_str("primary"),
            NodePortAddress::Cidr(n) => n.fmt(f),
        }
    }
}

impl Serialize for NodePortAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodePortAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The default list: the primary address only.
pub fn default_list() -> Vec<NodePortAddress> {
    vec![NodePortAddress::Primary]
}

/// Parses a comma-separated list (the `--nodeport-addresses` flag).
///
/// # Errors
/// An entry that is not `primary` or an IPv4 CIDR, or an empty list.
pub fn parse_list(s: &str) -> Result<Vec<NodePortAddress>, NodePortAddressError> {
    let list: Vec<NodePortAddress> = s
        .split(',')
        .filter(|e| !e.trim().is_empty())
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    if list.is_empty() {
        return Err(NodePortAddressError::NotACidr(s.to_string()));
    }
    Ok(list)
}
