//! The pure half of the daemon: validating the desired node, pods and
//! remote nodes, and resolving a pod's spec against its node. Nothing
//! here touches the kernel or the published tables.

use super::*;

impl SwitchState {
    /// Validates a node spec.
    pub(super) fn validate_node(node: &NodeSpec) -> Result<(), ApiError> {
        if node.name.is_empty() {
            return Err(ApiError::invalid("node.name", "must not be empty"));
        }
        if node.ipv4_cidr().is_none() {
            return Err(ApiError::invalid(
                "node.pod_cidrs",
                "needs an IPv4 pod CIDR",
            ));
        }
        if !(576..=65535).contains(&node.mtu) {
            return Err(ApiError::invalid(
                "node.mtu",
                format!("{} is outside 576..=65535", node.mtu),
            ));
        }
        if !node.gateway_mac.is_unicast() {
            return Err(ApiError::invalid(
                "node.gateway_mac",
                "must be a unicast MAC",
            ));
        }
        let gw = node.gateway_ipv4().ok_or_else(|| {
            ApiError::invalid("node.pod_cidrs", "IPv4 pod CIDR has no host addresses")
        })?;
        if !node
            .pod_cidrs
            .iter()
            .any(|c| c.contains(&std::net::IpAddr::V4(gw)))
        {
            return Err(ApiError::invalid(
                "node.gateway_ipv4",
                format!("{gw} is not inside a pod CIDR"),
            ));
        }
        if node.vxlan.vni > crate::wire::vxlan::VNI_MAX {
            return Err(ApiError::invalid(
                "node.vxlan.vni",
                format!("{} does not fit in 24 bits", node.vxlan.vni),
            ));
        }
        if node.vxlan.port == 0 {
            return Err(ApiError::invalid("node.vxlan.port", "must not be 0"));
        }
        if node.mode == ClusterMode::Vxlan && node.underlay_ipv4.is_none() {
            return Err(ApiError::invalid(
                "node.underlay_ipv4",
                "VXLAN mode needs the node's underlay address",
            ));
        }
        Ok(())
    }

    /// Validates and resolves a pod spec against `node` (field names are
    /// prefixed with `prefix`).
    pub(super) fn resolve_pod(
        node: &NodeSpec,
        spec: &PodSpec,
        prefix: &str,
    ) -> Result<PodSpec, ApiError> {
        let f = |name: &str| format!("{prefix}.{name}");
        if spec.name.is_empty() || spec.name.len() > 253 {
            return Err(ApiError::invalid(f("name"), "must be 1..=253 characters"));
        }
        if spec.ifname.is_empty()
            || spec.ifname.len() > 15
            || spec.ifname.contains(['/', ' ', ':'])
            || spec.ifname == "."
            || spec.ifname == ".."
        {
            return Err(ApiError::invalid(
                f("ifname"),
                format!("{:?} is not a valid interface name", spec.ifname),
            ));
        }
        if !spec.netns.is_absolute() || !spec.netns.exists() {
            return Err(ApiError::invalid(
                f("netns"),
                format!("{} does not exist", spec.netns.display()),
            ));
        }
        let ip = spec
            .ipv4
            .ok_or_else(|| ApiError::invalid(f("ipv4"), "required"))?;
        let cidr = node.ipv4_cidr().expect("validated node has an IPv4 CIDR");
        if !cidr.contains(&ip) {
            return Err(ApiError::invalid(
                f("ipv4"),
                format!("{ip} is outside the node's pod CIDR {cidr}"),
            ));
        }
        if ip == cidr.network() || ip == cidr.broadcast() || Some(ip) == node.gateway_ipv4() {
            return Err(ApiError::invalid(
                f("ipv4"),
                format!("{ip} is the network, broadcast or gateway address of {cidr}"),
            ));
        }
        if spec.ipv6.is_some() {
            return Err(ApiError::invalid(
                f("ipv6"),
                "IPv6 pods are not supported yet",
            ));
        }
        let mac = spec.mac.unwrap_or_else(|| Mac::for_pod_ipv4(ip));
        if !mac.is_unicast() || mac == node.gateway_mac {
            return Err(ApiError::invalid(
                f("mac"),
                format!("{mac} must be unicast and not the gateway's"),
            ));
        }
        let mtu = spec.mtu.unwrap_or(node.mtu);
        if !(576..=65535).contains(&mtu) {
            return Err(ApiError::invalid(
                f("mtu"),
                format!("{mtu} is outside 576..=65535"),
            ));
        }
        Ok(PodSpec {
            mac: Some(mac),
            mtu: Some(mtu),
            ..spec.clone()
        })
    }

    /// Checks a whole desired pod set for duplicates (names, IPs, MACs,
    /// namespace+interface).
    pub(super) fn check_unique<'a>(
        pods: impl Iterator<Item = (&'a PodSpec, String)>,
    ) -> Result<(), ApiError> {
        let mut names = BTreeMap::new();
        let mut ips = BTreeMap::new();
        let mut macs = BTreeMap::new();
        let mut ifs = BTreeMap::new();
        for (p, field) in pods {
            if let Some(prev) = names.insert(p.name.clone(), field.clone()) {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("pod {} given twice ({prev} and {field})", p.name),
                )
                .with_field(format!("{field}.name")));
            }
            if let Some(ip) = p.ipv4 {
                if let Some(prev) = ips.insert(ip, p.name.clone()) {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("{ip} is already pod {prev}'s"),
                    )
                    .with_field(format!("{field}.ipv4")));
                }
            }
            if let Some(mac) = p.mac {
                if let Some(prev) = macs.insert(mac, p.name.clone()) {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("{mac} is already pod {prev}'s"),
                    )
                    .with_field(format!("{field}.mac")));
                }
            }
            if let Some(prev) = ifs.insert((p.netns.clone(), p.ifname.clone()), p.name.clone()) {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "{} in {} is already pod {prev}'s",
                        p.ifname,
                        p.netns.display()
                    ),
                )
                .with_field(format!("{field}.netns")));
            }
        }
        Ok(())
    }

    pub(super) fn validate_remote_nodes(
        &self,
        nodes: &[RemoteNode],
        node: &NodeSpec,
    ) -> Result<(), ApiError> {
        let mut names = std::collections::BTreeSet::new();
        let mut cidrs: Vec<(IpNet, String)> = node
            .pod_cidrs
            .iter()
            .map(|c| (*c, format!("this node ({})", node.name)))
            .collect();
        for (i, n) in nodes.iter().enumerate() {
            let f = |x: &str| format!("nodes[{i}].{x}");
            if n.name.is_empty() || !names.insert(n.name.clone()) || n.name == node.name {
                return Err(ApiError::invalid(
                    f("name"),
                    format!("{:?} is empty, repeated or this node's own name", n.name),
                ));
            }
            if Some(n.underlay_ipv4) == node.underlay_ipv4
                || n.underlay_ipv4.is_unspecified()
                || n.underlay_ipv4.is_multicast()
                || n.underlay_ipv4.is_broadcast()
            {
                return Err(ApiError::invalid(
                    f("underlay_ipv4"),
                    format!(
                        "{} is not a usable unicast address of another node",
                        n.underlay_ipv4
                    ),
                ));
            }
            if n.pod_cidrs.is_empty() {
                return Err(ApiError::invalid(
                    f("pod_cidrs"),
                    "needs at least one pod CIDR",
                ));
            }
            for c in &n.pod_cidrs {
                if let Some((_, owner)) = cidrs
                    .iter()
                    .find(|(o, _)| o.contains(&c.network()) || c.contains(&o.network()))
                {
                    return Err(ApiError::invalid(
                        f("pod_cidrs"),
                        format!("{c} overlaps the pod CIDR of {owner}"),
                    ));
                }
                cidrs.push((*c, format!("node {}", n.name)));
            }
            if node.mode == ClusterMode::Vxlan && n.vtep_mac.is_none_or(|m| !m.is_unicast()) {
                return Err(ApiError::invalid(
                    f("vtep_mac"),
                    "VXLAN mode needs each node's unicast VTEP MAC",
                ));
            }
        }
        Ok(())
    }
}

/// What a topology request changes in the node's pods: decided whole, on
/// data only, before anything is touched ([`plan_ports`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PortPlan {
    /// The node after the request.
    pub node: NodeSpec,
    /// Pods to remove (sorted; a changed pod is removed and added again).
    pub to_remove: Vec<String>,
    /// Pods to create, resolved (MAC and MTU filled in).
    pub to_add: Vec<PodSpec>,
    /// Pods asked for that are already there as asked.
    pub unchanged: usize,
}

/// The reconcile step: from the node's pods now (`current`, by name) and a
/// request (a new node, pods to add, names to remove; `exact`: the pods
/// listed are all there should be), the pods to remove and to create, or
/// the error that refuses the request. Pure: the daemon executes the plan
/// afterwards, and a refused request has changed nothing.
pub fn plan_ports(
    node_now: &NodeSpec,
    current: &BTreeMap<&str, &PodSpec>,
    new_node: Option<NodeSpec>,
    add: &[PodSpec],
    remove: &[String],
    exact: bool,
) -> Result<PortPlan, ApiError> {
    let node = new_node.clone().unwrap_or_else(|| node_now.clone());
    SwitchState::validate_node(&node)?;
    let mut resolved = Vec::new();
    for (i, p) in add.iter().enumerate() {
        resolved.push(SwitchState::resolve_pod(&node, p, &format!("pods[{i}]"))?);
    }
    let node_changed = node != *node_now;
    // Decide the final set.
    let mut to_remove: Vec<String> = Vec::new();
    for (i, r) in remove.iter().enumerate() {
        if !current.contains_key(r.as_str()) {
            return Err(ApiError::new(ErrorCode::NotFound, format!("no pod {r}"))
                .with_field(format!("remove[{i}]")));
        }
        to_remove.push(r.clone());
    }
    let mut to_add = Vec::new();
    let mut unchanged = 0;
    for r in &resolved {
        match current.get(r.name.as_str()) {
            Some(cur) if **cur == *r && !node_changed => unchanged += 1,
            Some(_) => {
                to_remove.push(r.name.clone());
                to_add.push(r.clone());
            }
            None => to_add.push(r.clone()),
        }
    }
    if exact || node_changed {
        for (name, spec) in current {
            if !resolved.iter().any(|r| r.name == *name) && !to_remove.iter().any(|n| n == name) {
                if exact {
                    to_remove.push(name.to_string());
                } else {
                    // The node changed: keep the pod, re-created on the new node config.
                    let r = SwitchState::resolve_pod(&node, spec, &format!("existing pod {name}"))?;
                    to_remove.push(name.to_string());
                    to_add.push(r);
                }
            }
        }
    }
    to_remove.sort();
    to_remove.dedup();
    // The set after the change must be consistent.
    let keep = current
        .values()
        .filter(|p| !to_remove.contains(&p.name))
        .map(|p| (*p, format!("existing pod {}", p.name)));
    let adding = to_add
        .iter()
        .enumerate()
        .map(|(i, p)| (p, format!("pods[{i}]")));
    SwitchState::check_unique(keep.chain(adding))?;
    Ok(PortPlan {
        node,
        to_remove,
        to_add,
        unchanged,
    })
}
