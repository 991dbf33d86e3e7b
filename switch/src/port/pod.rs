//! Wiring a pod's port: create the tap in the node's namespace, move it
//! into the pod's namespace as `eth0` with the pod's MAC, MTU, address and
//! routes, and undo all of it on failure or removal.
//!
//! Addressing scheme (the Calico/Cilium layout): the pod gets its IP as a
//! /32, an on-link host route to the gateway address, and a default route
//! via the gateway. Every packet a pod sends therefore goes to the switch,
//! which answers ARP for the gateway (and proxy-ARP for anything else).

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::Path;

use ipnet::IpNet;

use super::netlink::{Netlink, NetlinkError};
use super::netns::{self, NetnsError};
use super::tap::{self, TapError, TapQueue};

/// What wiring a pod port needs.
#[derive(Debug, Clone)]
pub struct PodWiring<'a> {
    pub pod: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub ipv4: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// Why wiring failed; names the pod and the step.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("pod {pod}: {step}: {source}")]
    Tap {
        pod: String,
        step: &'static str,
        source: TapError,
    },
    #[error("pod {pod}: {step}: {source}")]
    Netlink {
        pod: String,
        step: &'static str,
        source: NetlinkError,
    },
    #[error("pod {pod}: {step}: {source}")]
    Netns {
        pod: String,
        step: &'static str,
        source: NetnsError,
    },
    #[error("pod {pod}: interface {ifname} already exists in {netns}")]
    InterfaceExists {
        pod: String,
        ifname: String,
        netns: String,
    },
    #[error("pod {pod}: {what}")]
    Other { pod: String, what: String },
}

/// The temporary name of a pod's tap while it is still in the node's
/// namespace: `psw` and a hash of the pod's name (fits IFNAMSIZ).
pub fn temp_tap_name(pod: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    pod.hash(&mut h);
    format!("psw{:010x}", h.finish() & 0xff_ffff_ffff)
}

/// Checks, without changing anything, that the pod's namespace exists and
/// has no interface called `ifname` yet.
pub fn precheck(w: &PodWiring<'_>) -> Result<(), WiringError> {
    let nl = Netlink::in_netns(w.netns).map_err(|source| WiringError::Netlink {
        pod: w.pod.into(),
        step: "open netlink in the pod's netns",
        source,
    })?;
    let exists = nl
        .link_index(w.ifname)
        .map_err(|source| WiringError::Netlink {
            pod: w.pod.into(),
            step: "look up the pod interface",
            source,
        })?;
    if exists.is_some() {
        return Err(WiringError::InterfaceExists {
            pod: w.pod.into(),
            ifname: w.ifname.into(),
            netns: w.netns.display().to_string(),
        });
    }
    Ok(())
}

/// Creates and wires the pod's tap with `queues` queues. On error nothing
/// is left behind.
pub fn create(w: &PodWiring<'_>, queues: usize) -> Result<Vec<TapQueue>, WiringError> {
    let tmp = temp_tap_name(w.pod);
    let node = Netlink::current().map_err(|source| WiringError::Netlink {
        pod: w.pod.into(),
        step: "open netlink in the node netns",
        source,
    })?;
    // A leftover from a crash between creation and the move.
    if let Ok(Some(stale)) = node.link_index(&tmp) {
        let _ = node.link_delete(stale);
    }
    let queues = tap::open_tap(&tmp, queues).map_err(|source| WiringError::Tap {
        pod: w.pod.into(),
        step: "create tap",
        source,
    })?;
    match wire(w, &tmp, &node, &queues) {
        Ok(()) => Ok(queues),
        Err(e) => {
            // Undo: the link is either still in the node namespace or
            // already in the pod's; delete it wherever it is.
            let _ = queues[0].set_persist(false);
            if let Ok(Some(i)) = node.link_index(&tmp) {
                let _ = node.link_delete(i);
            }
            if let Ok(pod_nl) = Netlink::in_netns(w.netns) {
                for name in [tmp.as_str(), w.ifname] {
                    if let Ok(Some(i)) = pod_nl.link_index(name) {
                        if pod_nl.link_mac(i).ok() == Some(w.mac) {
                            let _ = pod_nl.link_delete(i);
                        }
                    }
                }
            }
            Err(e)
        }
    }
}

fn wire(
    w: &PodWiring<'_>,
    tmp: &str,
    node: &Netlink,
    queues: &[TapQueue],
) -> Result<(), WiringError> {
    let pod = || w.pod.to_string();
    let nl_err = |step: &'static str| {
        move |source| WiringError::Netlink {
            pod: w.pod.into(),
            step,
            source,
        }
    };
    queues[0]
        .set_persist(true)
        .map_err(|source| WiringError::Tap {
            pod: pod(),
            step: "make tap persistent",
            source,
        })?;
    let idx = node
        .link_index(tmp)
        .map_err(nl_err("find the new tap"))?
        .ok_or_else(|| WiringError::Other {
            pod: pod(),
            what: format!("tap {tmp} vanished after creation"),
        })?;
    node.link_set_mtu(idx, w.mtu).map_err(nl_err("set MTU"))?;
    node.link_set_mac(idx, w.mac).map_err(nl_err("set MAC"))?;
    let ns = netns::open(w.netns).map_err(|source| WiringError::Netns {
        pod: pod(),
        step: "open the pod's netns",
        source,
    })?;
    node.link_set_netns(idx, ns.as_fd())
        .map_err(nl_err("move the tap into the pod's netns"))?;
    let p = Netlink::in_netns(w.netns).map_err(nl_err("open netlink in the pod's netns"))?;
    let pidx = p
        .link_index(tmp)
        .map_err(nl_err("find the tap in the pod's netns"))?
        .ok_or_else(|| WiringError::Other {
            pod: pod(),
            what: format!("tap {tmp} not found after the move"),
        })?;
    p.link_set_name(pidx, w.ifname)
        .map_err(nl_err("rename the tap"))?;
    p.set_lo_up().map_err(nl_err("bring lo up"))?;
    p.add_address(pidx, IpAddr::V4(w.ipv4), 32)
        .map_err(nl_err("add the pod address"))?;
    p.link_set_up(pidx)
        .map_err(nl_err("bring the pod interface up"))?;
    p.add_route(IpNet::from(IpAddr::V4(w.gateway)), None, Some(pidx))
        .map_err(nl_err("add the on-link route to the gateway"))?;
    p.add_route(
        "0.0.0.0/0".parse().expect("valid"),
        Some(IpAddr::V4(w.gateway)),
        Some(pidx),
    )
    .map_err(nl_err("add the default route"))?;
    Ok(())
}

/// Re-attaches to a pod's persistent tap after a switch restart.
pub fn reattach(
    pod: &str,
    netns: &Path,
    ifname: &str,
    mac: [u8; 6],
    queues: usize,
) -> Result<Vec<TapQueue>, WiringError> {
    let nl = Netlink::in_netns(netns).map_err(|source| WiringError::Netlink {
        pod: pod.into(),
        step: "open netlink in the pod's netns",
        source,
    })?;
    let idx = nl
        .link_index(ifname)
        .map_err(|source| WiringError::Netlink {
            pod: pod.into(),
            step: "find the pod interface",
            source,
        })?
        .ok_or_else(|| WiringError::Other {
            pod: pod.into(),
            what: format!("no {ifname} in {}", netns.display()),
        })?;
    let have = nl.link_mac(idx).map_err(|source| WiringError::Netlink {
        pod: pod.into(),
        step: "read the pod MAC",
        source,
    })?;
    if have != mac {
        return Err(WiringError::Other {
            pod: pod.into(),
            what: format!("{ifname} in {} has another MAC; not ours", netns.display()),
        });
    }
    tap::attach_in_netns(netns, ifname, queues).map_err(|source| WiringError::Tap {
        pod: pod.into(),
        step: "re-attach tap",
        source,
    })
}

/// Deletes the pod's interface (if its namespace and the interface with
/// our MAC still exist).
pub fn delete(pod: &str, netns: &Path, ifname: &str, mac: [u8; 6]) -> Result<(), WiringError> {
    if !netns.exists() {
        return Ok(());
    }
    let nl = Netlink::in_netns(netns).map_err(|source| WiringError::Netlink {
        pod: pod.into(),
        step: "open netlink in the pod's netns",
        source,
    })?;
    if let Some(idx) = nl
        .link_index(ifname)
        .map_err(|source| WiringError::Netlink {
            pod: pod.into(),
            step: "find the pod interface",
            source,
        })?
    {
        if nl.link_mac(idx).ok() == Some(mac) {
            nl.link_delete(idx).map_err(|source| WiringError::Netlink {
                pod: pod.into(),
                step: "delete the pod interface",
                source,
            })?;
        }
    }
    Ok(())
}

/// Creates (or, after a restart, re-attaches to) the host port: a
/// persistent tap `name` in the node's own namespace through which the
/// node's stack reaches its pods, with a route for each local pod CIDR
/// through it. The node's stack ARPs for pod addresses on it and the
/// switch answers (proxy ARP). Returns the queues and the tap's MAC (the
/// destination MAC of frames the switch hands to the node).
pub fn host_port(
    name: &str,
    queues: usize,
    mtu: u32,
    pod_cidrs: &[IpNet],
) -> Result<(Vec<TapQueue>, [u8; 6]), WiringError> {
    let who = format!("host port {name}");
    let nl_err = |step: &'static str| {
        let who = who.clone();
        move |source| WiringError::Netlink {
            pod: who,
            step,
            source,
        }
    };
    let queues = tap::open_tap(name, queues).map_err(|source| WiringError::Tap {
        pod: who.clone(),
        step: "create or attach tap",
        source,
    })?;
    queues[0]
        .set_persist(true)
        .map_err(|source| WiringError::Tap {
            pod: who.clone(),
            step: "make tap persistent",
            source,
        })?;
    let nl = Netlink::current().map_err(nl_err("open netlink"))?;
    let idx = nl
        .link_index(name)
        .map_err(nl_err("find the tap"))?
        .ok_or_else(|| WiringError::Other {
            pod: who.clone(),
            what: "tap vanished".into(),
        })?;
    nl.link_set_mtu(idx, mtu).map_err(nl_err("set MTU"))?;
    nl.link_set_up(idx).map_err(nl_err("bring the tap up"))?;
    for cidr in pod_cidrs {
        add_route_idempotent(&nl, *cidr, None, Some(idx))
            .map_err(nl_err("route the pod CIDR through the host port"))?;
    }
    let mac = nl.link_mac(idx).map_err(nl_err("read the tap MAC"))?;
    // The switch sends traffic translated to the node's own address (NodePort
    // replies, masqueraded pod traffic) into the node's stack through this
    // port, to be routed out: the kernel must accept a local source here.
    for (knob, value) in [("accept_local", "1"), ("rp_filter", "0")] {
        let path = format!("/proc/sys/net/ipv4/conf/{name}/{knob}");
        if let Err(e) = std::fs::write(&path, value) {
            tracing::warn!(error = %e, %path, "cannot set sysctl");
        }
    }
    relax_strict_rp_filter("host port");
    Ok((queues, mac))
}

/// Creates the tunnel port: a tap `name` in the node's namespace, with
/// one queue per worker, that the switch writes whole VXLAN superframes
/// into (UDP-tunnel GSO, Linux >= 6.17; see [`crate::pipeline::encap`]).
/// The node's kernel routes them to the underlay and segments them only
/// where a device needs it. Nothing is ever read from it: it has no
/// address, no IPv6, and no ARP. Returns the queues and the tap's MAC
/// (the destination MAC of the superframes).
///
/// Not persistent: it goes away with the switch's descriptors.
///
/// # Errors
/// [`WiringError::Tap`] with `TUNSETOFFLOAD` / `EINVAL` on kernels without
/// UDP-tunnel GSO, or what creating and raising the link returned.
pub fn tunnel_port(name: &str, queues: usize) -> Result<(Vec<TapQueue>, [u8; 6]), WiringError> {
    let who = format!("tunnel port {name}");
    let nl_err = |step: &'static str| {
        let who = who.clone();
        move |source| WiringError::Netlink {
            pod: who,
            step,
            source,
        }
    };
    let queues = tap::open_udp_tunnel_tap(name, queues).map_err(|source| WiringError::Tap {
        pod: who.clone(),
        step: "create the tap with UDP-tunnel GSO",
        source,
    })?;
    // Before the link comes up: no IPv6 link-local address, no ND or MLD
    // sent into a queue nobody reads.
    let disable_ipv6 = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    let _ = std::fs::write(disable_ipv6, "1");
    // The superframes carry the node's own underlay address as source.
    for (knob, value) in [
        ("accept_local", "1"),
        ("rp_filter", "0"),
        ("forwarding", "1"),
    ] {
        let path = format!("/proc/sys/net/ipv4/conf/{name}/{knob}");
        if let Err(e) = std::fs::write(&path, value) {
            tracing::warn!(error = %e, %path, "cannot set sysctl");
        }
    }
    relax_strict_rp_filter("tunnel port");
    let nl = Netlink::current().map_err(nl_err("open netlink"))?;
    let idx = nl
        .link_index(name)
        .map_err(nl_err("find the tap"))?
        .ok_or_else(|| WiringError::Other {
            pod: who.clone(),
            what: "tap vanished".into(),
        })?;
    nl.link_set_up(idx).map_err(nl_err("bring the tap up"))?;
    let mac = nl.link_mac(idx).map_err(nl_err("read the tap MAC"))?;
    Ok((queues, mac))
}

/// rp_filter takes the stricter of "all" and the interface: a strict
/// "all" would drop what `port` hands the node with the node's own source.
fn relax_strict_rp_filter(port: &str) {
    let all = "/proc/sys/net/ipv4/conf/all/rp_filter";
    if std::fs::read_to_string(all).is_ok_and(|v| v.trim() == "1") {
        tracing::info!(
            port,
            "strict rp_filter in the node namespace relaxed to loose (2)"
        );
        let _ = std::fs::write(all, "2");
    }
}

/// Routes `cidr` from the node's stack into the host port `name`.
///
/// # Errors
/// The link is missing or the kernel refused the route.
pub fn add_host_route(name: &str, cidr: IpNet) -> Result<(), NetlinkError> {
    let nl = Netlink::current()?;
    let idx = nl
        .link_index(name)?
        .ok_or_else(|| NetlinkError::LinkNotFound {
            op: "route via host port",
            name: name.to_owned(),
            netns: nl.netns().clone(),
        })?;
    add_route_idempotent(&nl, cidr, None, Some(idx))
}

/// The IPv4 addresses of this namespace, except those of link `host_port`
/// (the switch's own host port: NodePorts never open there).
///
/// # Errors
/// A message naming the failed step.
pub fn local_ipv4_addresses(host_port: Option<&str>) -> Result<Vec<std::net::Ipv4Addr>, String> {
    let nl = Netlink::current().map_err(|e| format!("open netlink: {e}"))?;
    let skip = match host_port {
        Some(name) => nl
            .link_index(name)
            .map_err(|e| format!("find {name}: {e}"))?,
        None => None,
    };
    let addrs = nl
        .ipv4_addresses()
        .map_err(|e| format!("list addresses: {e}"))?;
    Ok(addrs
        .into_iter()
        .filter(|(link, _)| Some(*link) != skip)
        .map(|(_, ip)| ip)
        .collect())
}

/// Steers NodePort and masquerade-reply traffic from the interface holding
/// `node_ip` into the host port `name` (see [`super::steer`]).
///
/// # Errors
/// A message naming the failed step.
pub fn steer_to_host_port(
    name: &str,
    addr: &super::steer::SteerAddress,
    slot: u16,
) -> Result<usize, String> {
    let nl = Netlink::current().map_err(|e| format!("open netlink: {e}"))?;
    let idx = nl
        .link_index(name)
        .map_err(|e| format!("find {name}: {e}"))?
        .ok_or_else(|| format!("no link {name}"))?;
    super::steer::install(&nl, addr, slot, idx).map_err(|e| {
        let mut s = e.to_string();
        let mut cur = std::error::Error::source(&e);
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    })
}

/// Adds a route, accepting one that already exists (after a restart).
pub fn add_route_idempotent(
    nl: &Netlink,
    dst: IpNet,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
) -> Result<(), NetlinkError> {
    match nl.add_route(dst, gateway, oif) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}
