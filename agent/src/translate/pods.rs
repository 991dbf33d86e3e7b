//! This node's Pods, as the agent keeps them for its status.
//!
//! Pods are attached to the switch by the CNI plugin (which knows their
//! network namespaces); the API only tells the agent which pods should be
//! there and with which addresses, so it can report a pod whose IP is not
//! from this node's pod CIDR (an IPAM mix-up) and, later, ports of pods
//! that are gone.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Pod;
use serde::Serialize;

use super::nodes::LocalNode;
use super::problem::{ObjectKind, ObjectRef, Outcome, Problem, Reason};
use super::services::namespace_of;

/// A pod scheduled on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalPod {
    /// `namespace/name`, the switch's port name for it.
    pub name: String,
    /// status.podIPs' IPv4 address (none before the CNI ADD ran).
    pub ipv4: Option<Ipv4Addr>,
    /// On the node's own network: no port on the switch.
    pub host_network: bool,
    /// status.phase (`Pending`, `Running`, `Succeeded`, `Failed`).
    pub phase: Option<String>,
    /// metadata.deletionTimestamp is set.
    pub terminating: bool,
}

/// The pods of `pods` scheduled on `this_node`, sorted by name.
pub fn translate_pods(
    pods: &BTreeMap<String, Pod>,
    this_node: &str,
    local: Option<&LocalNode>,
    problems: &mut Vec<Problem>,
) -> Vec<LocalPod> {
    let mut out = Vec::new();
    for pod in pods.values() {
        let spec = pod.spec.as_ref();
        if spec.and_then(|s| s.node_name.as_deref()) != Some(this_node) {
            continue;
        }
        let namespace = namespace_of(&pod.metadata.namespace);
        let name = pod.metadata.name.as_deref().unwrap_or("");
        let object = ObjectRef::namespaced(ObjectKind::Pod, namespace, name);
        let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
        let status = pod.status.as_ref();
        // podIPs lists one address per family; podIP is its first.
        let mut texts: Vec<(String, &str)> = status
            .and_then(|s| s.pod_ips.as_deref())
            .unwrap_or_default()
            .iter()
            .enumerate()
            .map(|(i, p)| (format!("status.podIPs[{i}].ip"), p.ip.as_str()))
            .collect();
        if texts.is_empty() {
            if let Some(ip) = status.and_then(|s| s.pod_ip.as_deref()) {
                texts.push(("status.podIP".into(), ip));
            }
        }
        let mut ipv4 = None;
        for (field, text) in texts.into_iter().filter(|(_, t)| !t.is_empty()) {
            match text.parse::<IpAddr>() {
                Ok(IpAddr::V4(ip)) if ipv4.is_none() => ipv4 = Some(ip),
                Ok(_) => {}
                Err(_) => problems.push(Problem::new(
                    &object,
                    Some(field),
                    Reason::InvalidIp {
                        value: text.to_owned(),
                    },
                    Outcome::PartlyApplied,
                )),
            }
        }
        if let (Some(ip), false, Some(local)) = (ipv4, host_network, local) {
            let inside = local.pod_cidrs.iter().any(|c| c.contains(&IpAddr::V4(ip)));
            if !inside && !local.pod_cidrs.is_empty() {
                problems.push(Problem::new(
                    &object,
                    Some("status.podIPs".into()),
                    Reason::PodIpOutsidePodCidr {
                        ip,
                        cidrs: local.pod_cidrs.clone(),
                    },
                    Outcome::Warning,
                ));
            }
        }
        out.push(LocalPod {
            name: format!("{namespace}/{name}"),
            ipv4,
            host_network,
            phase: status.and_then(|s| s.phase.clone()),
            terminating: pod.metadata.deletion_timestamp.is_some(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}
