//! Nodes → this node's view of itself and the switch's [`RemoteNode`]s.
//!
//! Each Node gives its pod CIDRs (`spec.podCIDRs`, else `spec.podCIDR`),
//! its underlay address (the first IPv4 `InternalIP` of
//! `status.addresses`) and its VTEP MAC: the [`VTEP_MAC_ANNOTATION`] if
//! set, else the `VtepMAC` of flannel's [`FLANNEL_BACKEND_DATA_ANNOTATION`],
//! else the switch's own default ([`Mac::for_vtep`] of the underlay
//! address), so podswitch nodes and flannel nodes interoperate.
//!
//! The result is what the switch's `set_remote_nodes` accepts: nodes whose
//! underlay address is this node's, or whose pod CIDRs overlap this node's
//! or an earlier node's (by name), are left out with a problem, since the
//! switch would refuse the whole list for them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use podswitch_switch::control::api::{Mac, RemoteNode};
use serde::{Deserialize, Serialize};

use super::problem::{ObjectRef, Outcome, Problem, Reason};

/// podswitch's own VTEP MAC annotation on a Node, e.g.
/// `podswitch.io/vtep-mac: "02:56:c0:a8:01:0b"`. It wins over flannel's.
pub const VTEP_MAC_ANNOTATION: &str = "podswitch.io/vtep-mac";

/// flannel's VXLAN backend annotation on a Node:
/// `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`.
pub const FLANNEL_BACKEND_DATA_ANNOTATION: &str = "flannel.alpha.coreos.com/backend-data";

/// The node this agent serves, as its Node object describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalNode {
    pub name: String,
    pub underlay_ipv4: Option<Ipv4Addr>,
    /// IPv4 pod CIDRs.
    pub pod_cidrs: Vec<IpNet>,
    pub vtep_mac: Option<Mac>,
}

/// What one Node object says, before the cross-node checks.
struct NodeFacts {
    name: String,
    underlay_ipv4: Option<Ipv4Addr>,
    pod_cidrs: Vec<IpNet>,
    vtep_mac: Option<Mac>,
}

#[derive(Deserialize)]
struct FlannelBackendData {
    #[serde(rename = "VtepMAC")]
    vtep_mac: Option<String>,
}

/// Reads one Node; `None` (with a problem) when it is of no use.
fn node_facts(key: &str, node: &Node, problems: &mut Vec<Problem>) -> Option<NodeFacts> {
    let Some(name) = node.metadata.name.clone().filter(|n| !n.is_empty()) else {
        problems.push(Problem::new(
            &ObjectRef::node(key),
            Some("metadata.name".into()),
            Reason::MissingName,
            Outcome::Rejected,
        ));
        return None;
    };
    let object = ObjectRef::node(&name);
    let reject = |problems: &mut Vec<Problem>, field: String, reason| {
        problems.push(Problem::new(
            &object,
            Some(field),
            reason,
            Outcome::Rejected,
        ));
    };

    // Pod CIDRs: podCIDRs is authoritative when set; podCIDR is its first.
    let spec = node.spec.as_ref();
    let listed = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
    let (texts, field): (Vec<String>, &str) = if listed.is_empty() {
        (
            spec.and_then(|s| s.pod_cidr.clone())
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect(),
            "spec.podCIDR",
        )
    } else {
        (listed, "spec.podCIDRs")
    };
    let mut pod_cidrs = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let at = if field == "spec.podCIDR" {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        };
        let net = match text.parse::<IpNet>() {
            Ok(net) => net,
            Err(e) => {
                reject(
                    problems,
                    at,
                    Reason::InvalidCidr {
                        value: text.clone(),
                        detail: e.to_string(),
                    },
                );
                return None;
            }
        };
        if net.trunc() != net {
            reject(
                problems,
                at,
                Reason::InvalidCidr {
                    value: text.clone(),
                    detail: format!("host bits are set (the network is {})", net.trunc()),
                },
            );
            return None;
        }
        // IPv4 only for now: IPv6 CIDRs of dual-stack nodes are skipped.
        if net.addr().is_ipv4() {
            pod_cidrs.push(net);
        }
    }

    // Underlay: the first IPv4 InternalIP.
    let mut underlay_ipv4 = None;
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    for (i, a) in addresses.iter().enumerate() {
        if a.type_ != "InternalIP" {
            continue;
        }
        match a.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                underlay_ipv4 = Some(ip);
                break;
            }
            Ok(IpAddr::V6(_)) => {}
            Err(_) => {
                reject(
                    problems,
                    format!("status.addresses[{i}].address"),
                    Reason::InvalidIp {
                        value: a.address.clone(),
                    },
                );
                return None;
            }
        }
    }

    // VTEP MAC: podswitch's annotation, else flannel's, else the default.
    let annotations = node.metadata.annotations.as_ref();
    let mut vtep_mac = None;
    if let Some(text) = annotations.and_then(|a| a.get(VTEP_MAC_ANNOTATION)) {
        vtep_mac = parse_vtep_mac(&object, VTEP_MAC_ANNOTATION, text, problems);
    } else if let Some(json) = annotations.and_then(|a| a.get(FLANNEL_BACKEND_DATA_ANNOTATION)) {
        match serde_json::from_str::<FlannelBackendData>(json) {
            Ok(FlannelBackendData {
                vtep_mac: Some(text),
            }) => {
                vtep_mac =
                    parse_vtep_mac(&object, FLANNEL_BACKEND_DATA_ANNOTATION, &text, problems);
            }
            // flannel's host-gw backend writes backend-data without a VTEP.
            Ok(FlannelBackendData { vtep_mac: None }) => {}
            Err(e) => problems.push(Problem::new(
                &object,
                Some(format!(
                    "metadata.annotations[{FLANNEL_BACKEND_DATA_ANNOTATION}]"
                )),
                Reason::InvalidAnnotation {
                    annotation: FLANNEL_BACKEND_DATA_ANNOTATION,
                    detail: format!("not the JSON flannel writes: {e}"),
                },
                Outcome::PartlyApplied,
            )),
        }
    }
    if vtep_mac.is_none() {
        vtep_mac = underlay_ipv4.map(Mac::for_vtep);
    }

    Some(NodeFacts {
        name,
        underlay_ipv4,
        pod_cidrs,
        vtep_mac,
    })
}

fn parse_vtep_mac(
    object: &ObjectRef,
    annotation: &'static str,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Option<Mac> {
    let parsed = text.parse::<Mac>().and_then(|m| match m.is_unicast() {
        true => Ok(m),
        false => Err("multicast or all-zero".to_string()),
    });
    match parsed {
        Ok(mac) => Some(mac),
        Err(detail) => {
            problems.push(Problem::new(
                object,
                Some(format!("metadata.annotations[{annotation}]")),
                Reason::InvalidVtepMac {
                    value: text.to_owned(),
                    detail,
                },
                Outcome::PartlyApplied,
            ));
            None
        }
    }
}

fn unusable_underlay(ip: Ipv4Addr, local: Option<Ipv4Addr>) -> Option<&'static str> {
    if Some(ip) == local {
        Some("it is this node's own")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("multicast or broadcast")
    } else if ip.is_loopback() {
        Some("loopback")
    } else {
        None
    }
}

/// This node (if its Node object is there) and the other nodes as the
/// switch takes them, sorted by name.
pub fn translate_nodes(
    nodes: &BTreeMap<String, Node>,
    this_node: &str,
    problems: &mut Vec<Problem>,
) -> (Option<LocalNode>, Vec<RemoteNode>) {
    let mut local = None;
    let mut others = Vec::new();
    for (key, node) in nodes {
        let Some(facts) = node_facts(key, node, problems) else {
            continue;
        };
        if facts.name == this_node {
            local = Some(LocalNode {
                name: facts.name,
                underlay_ipv4: facts.underlay_ipv4,
                pod_cidrs: facts.pod_cidrs,
                vtep_mac: facts.vtep_mac,
            });
        } else {
            others.push(facts);
        }
    }
    if local.is_none() {
        problems.push(Problem::new(
            &ObjectRef::node(this_node),
            None,
            Reason::LocalNodeMissing,
            Outcome::Warning,
        ));
    }

    let local_underlay = local.as_ref().and_then(|l| l.underlay_ipv4);
    let mut taken: Vec<(IpNet, String)> = local
        .iter()
        .flat_map(|l| {
            l.pod_cidrs
                .iter()
                .map(|c| (*c, format!("this node ({})", l.name)))
        })
        .collect();
    let mut remote = Vec::with_capacity(others.len());
    for facts in others {
        let object = ObjectRef::node(&facts.name);
        let Some(underlay) = facts.underlay_ipv4 else {
            problems.push(Problem::new(
                &object,
                Some("status.addresses".into()),
                Reason::NoInternalIp,
                Outcome::Rejected,
            ));
            continue;
        };
        if facts.pod_cidrs.is_empty() {
            problems.push(Problem::new(
                &object,
                Some("spec.podCIDRs".into()),
                Reason::NoIpv4PodCidr,
                Outcome::Skipped,
            ));
            continue;
        }
        if let Some(why) = unusable_underlay(underlay, local_underlay) {
            problems.push(Problem::new(
                &object,
                Some("status.addresses".into()),
                Reason::UnusableUnderlay { ip: underlay, why },
                Outcome::Rejected,
            ));
            continue;
        }
        let overlap = facts.pod_cidrs.iter().find_map(|c| {
            taken
                .iter()
                .find(|(o, _)| o.contains(&c.network()) || c.contains(&o.network()))
                .map(|(_, owner)| (*c, owner.clone()))
        });
        if let Some((cidr, owner)) = overlap {
            problems.push(Problem::new(
                &object,
                Some("spec.podCIDRs".into()),
                Reason::PodCidrOverlap { cidr, owner },
                Outcome::Rejected,
            ));
            continue;
        }
        taken.extend(
            facts
                .pod_cidrs
                .iter()
                .map(|c| (*c, format!("node {}", facts.name))),
        );
        remote.push(RemoteNode {
            name: facts.name,
            underlay_ipv4: underlay,
            pod_cidrs: facts.pod_cidrs,
            vtep_mac: facts.vtep_mac,
        });
    }
    (local, remote)
}
