//! A Service manifest checked as the API server checks it (the subset of
//! its rules that matters here), refusing what podswitch cannot do (SCTP,
//! IPv6, ExternalName, loadBalancerSourceRanges) instead of ignoring it.
//! Manifest parsing (`super`) and the lab's control plane
//! (`podswitch_lab::services`, which allocates ClusterIPs and NodePorts in
//! `plan`) both use it, so parsing and applying agree on what is valid.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podswitch_switch::control::api::Protocol;
use serde::{Deserialize, Serialize};

use crate::manifest::{self, LabPod};

/// The service CIDR (ClusterIPs), kube-apiserver's default
/// `--service-cluster-ip-range` and ../shared/TESTBED.md's plan.
pub const SERVICE_CIDR: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(10, 96, 0, 0), 12);

/// The first address of the service CIDR, which Kubernetes gives the
/// `kubernetes` Service (the API server); never allocated to another.
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);

/// The NodePort range, kube-apiserver's default
/// `--service-node-port-range` (inclusive).
pub const NODE_PORT_RANGE: (u16, u16) = (30000, 32767);

/// sessionAffinityConfig.clientIP.timeoutSeconds when not given (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;
/// The largest timeoutSeconds Kubernetes accepts (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86_400;

/// The lab's terminationGracePeriodSeconds when the manifest gives none
/// (Kubernetes' default is 30 s; the lab's pods drain in a moment).
pub const DEFAULT_GRACE_PERIOD_SECS: u32 = 2;
/// The longest grace period the lab honours, so that a manifest written
/// for a real cluster (`terminationGracePeriodSeconds: 3600`) does not
/// block `lab delete` for an hour.
pub const MAX_GRACE_PERIOD_SECS: u32 = 30;

/// The grace period the lab gives `pod` when it is deleted: its
/// `terminationGracePeriodSeconds`, [`DEFAULT_GRACE_PERIOD_SECS`] when
/// unset, at most [`MAX_GRACE_PERIOD_SECS`].
pub fn grace_period(pod: &LabPod) -> u32 {
    match pod.termination_grace_period_seconds {
        None => DEFAULT_GRACE_PERIOD_SECS,
        Some(s) => s.clamp(0, i64::from(MAX_GRACE_PERIOD_SECS)) as u32,
    }
}

/// `spec.type` of a Service the lab runs (ExternalName is DNS only and
/// refused: the lab has no DNS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceType {
    ClusterIP,
    NodePort,
    LoadBalancer,
}

impl ServiceType {
    /// The manifest spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// `spec.ports[].targetPort`: a number, or the name of a containerPort that
/// each selected pod resolves for itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// One port of a [`LabService`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabServicePort {
    /// `name`; empty only for a single-port Service.
    pub name: String,
    pub protocol: Protocol,
    /// The Service port (on the ClusterIP and external IPs).
    pub port: u16,
    pub target_port: TargetPort,
    /// The allocated (or requested) NodePort.
    pub node_port: Option<u16>,
}

/// A Service as the lab's API server stores it: the manifest, validated
/// and with its ClusterIP and NodePorts allocated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabService {
    pub namespace: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: ServiceType,
    /// `None` for a headless Service (`clusterIP: None`).
    pub cluster_ip: Option<Ipv4Addr>,
    pub ports: Vec<LabServicePort>,
    /// `spec.selector`; `None` (or an empty selector) selects no pods.
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// The load balancer's ingress IPs (LoadBalancer only):
    /// `status.loadBalancer.ingress[].ip`, else `spec.loadBalancerIP`.
    pub load_balancer_ingress: Vec<Ipv4Addr>,
    /// sessionAffinity ClientIP: its timeout in seconds.
    pub affinity_timeout_secs: Option<u32>,
    /// externalTrafficPolicy Local.
    pub external_traffic_local: bool,
    /// internalTrafficPolicy Local.
    pub internal_traffic_local: bool,
    /// `spec.publishNotReadyAddresses`.
    pub publish_not_ready_addresses: bool,
    /// The manifest as applied (what `lab get svc -o json` starts from).
    pub manifest: Service,
    /// creationTimestamp (RFC 3339), kept across re-applies.
    pub created: String,
}

impl LabService {
    /// `namespace/name`: the key in the lab state and the switch's name.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the type exposes NodePorts (NodePort, and LoadBalancer unless
    /// `allocateLoadBalancerNodePorts: false`).
    pub fn wants_node_ports(&self) -> bool {
        match self.type_ {
            ServiceType::ClusterIP => false,
            ServiceType::NodePort => true,
            ServiceType::LoadBalancer => self
                .manifest
                .spec
                .as_ref()
                .and_then(|s| s.allocate_load_balancer_node_ports)
                .unwrap_or(true),
        }
    }

    /// Whether `selector` selects `pod`: same namespace, a non-empty
    /// selector, every label equal.
    pub fn selects(&self, pod: &LabPod) -> bool {
        match &self.selector {
            Some(sel) if !sel.is_empty() => {
                pod.namespace == self.namespace
                    && sel.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
            }
            _ => false,
        }
    }
}

/// One invalid field of a Service manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, Kubernetes style (`spec.ports[1].nodePort`).
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why a Service could not be applied: which Service, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Service {service}: field `{field}`: {reason}")]
pub struct ServiceError {
    /// `namespace/name`.
    pub service: String,
    pub field: String,
    pub reason: String,
}

/// What a Service manifest asks for: validated, before allocation.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRequest {
    /// The Service with every field but the allocations (`cluster_ip` is
    /// `None`, `node_port`s are the requested ones).
    pub service: LabService,
    /// What the manifest says of the ClusterIP.
    pub cluster_ip: ClusterIpRequest,
}

/// `spec.clusterIP` / `spec.clusterIPs` of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterIpRequest {
    /// Unset or empty: allocate one.
    Allocate,
    /// `None`: headless, no ClusterIP.
    Headless,
    /// This address.
    Fixed(Ipv4Addr),
}

fn parse_ipv4(field: &str, value: &str, what: &str) -> Result<Ipv4Addr, FieldError> {
    match value.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(ip),
        Ok(IpAddr::V6(_)) => Err(FieldError::new(
            field,
            format!("{value:?}: IPv6 {what} are not supported by the lab (IPv4 single-stack)"),
        )),
        Err(_) => Err(FieldError::new(
            field,
            format!("{value:?} is not a valid IP address"),
        )),
    }
}

/// Kubernetes' `ValidateNonSpecialIP`, for externalIPs and load balancer
/// IPs: an address traffic can actually be sent to.
fn check_routable(field: &str, ip: Ipv4Addr) -> Result<(), FieldError> {
    let why = if ip.is_unspecified() {
        "the unspecified address"
    } else if ip.is_loopback() {
        "a loopback address"
    } else if ip.is_link_local() {
        "a link-local address"
    } else if ip.is_multicast() || ip.is_broadcast() {
        "a multicast or broadcast address"
    } else {
        return Ok(());
    };
    Err(FieldError::new(
        field,
        format!("{ip} may not be {why} (Kubernetes refuses it too)"),
    ))
}

fn parse_protocol(field: &str, value: Option<&str>) -> Result<Protocol, FieldError> {
    match value {
        None | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some("SCTP") => Err(FieldError::new(
            field,
            "SCTP is not supported by the lab's switch (TCP and UDP only)",
        )),
        Some(other) => Err(FieldError::new(
            field,
            format!("unsupported protocol {other:?}: must be one of TCP, UDP, SCTP"),
        )),
    }
}

pub fn protocol_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

fn port_number(field: &str, port: i32) -> Result<u16, FieldError> {
    u16::try_from(port).ok().filter(|p| *p != 0).ok_or_else(|| {
        FieldError::new(
            field,
            format!("{port} is not a valid port number (1..=65535)"),
        )
    })
}

impl ServiceRequest {
    /// Validates a Service manifest as the API server would (the subset of
    /// its rules that matters to the lab), refusing what the lab cannot do
    /// (SCTP, IPv6, ExternalName, loadBalancerSourceRanges) instead of
    /// ignoring it. The service CIDR and uniqueness checks need the other
    /// Services and happen in [`plan`]. `created` is the creation time to
    /// record.
    pub fn from_manifest(
        svc: &Service,
        namespace: &str,
        name: &str,
        created: &str,
    ) -> Result<ServiceRequest, FieldError> {
        let default_spec = Default::default();
        let spec = svc.spec.as_ref().unwrap_or(&default_spec);
        let type_ = match spec.type_.as_deref() {
            None | Some("") | Some("ClusterIP") => ServiceType::ClusterIP,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => {
                return Err(FieldError::new(
                    "spec.type",
                    "ExternalName is not supported by the lab (it is a DNS alias and the lab has no DNS)",
                ))
            }
            Some(other) => {
                return Err(FieldError::new(
                    "spec.type",
                    format!(
                        "{other:?}: must be one of ClusterIP, NodePort, LoadBalancer, ExternalName"
                    ),
                ))
            }
        };

        // spec.clusterIP and spec.clusterIPs (whose first entry must be
        // clusterIP when both are given).
        let mut cluster_ip_text = spec.cluster_ip.clone().filter(|s| !s.is_empty());
        let mut cluster_ip_field = "spec.clusterIP";
        if let Some(ips) = spec.cluster_ips.as_ref().filter(|v| !v.is_empty()) {
            if ips.len() > 1 {
                return Err(FieldError::new(
                    "spec.clusterIPs",
                    format!(
                        "{ips:?}: dual-stack Services are not supported by the lab (IPv4 single-stack)"
                    ),
                ));
            }
            match &cluster_ip_text {
                Some(ip) if *ip != ips[0] => {
                    return Err(FieldError::new(
                        "spec.clusterIPs[0]",
                        format!("{:?} must equal spec.clusterIP {ip:?}", ips[0]),
                    ))
                }
                Some(_) => {}
                None => {
                    cluster_ip_text = Some(ips[0].clone());
                    cluster_ip_field = "spec.clusterIPs[0]";
                }
            }
        }
        let cluster_ip = match cluster_ip_text.as_deref() {
            None => ClusterIpRequest::Allocate,
            Some("None") => ClusterIpRequest::Headless,
            Some(text) => {
                ClusterIpRequest::Fixed(parse_ipv4(cluster_ip_field, text, "ClusterIPs")?)
            }
        };
        if cluster_ip == ClusterIpRequest::Headless && type_ != ServiceType::ClusterIP {
            return Err(FieldError::new(
                "spec.clusterIP",
                format!("may not be None for {} Services", type_.as_str()),
            ));
        }
        for (i, family) in spec.ip_families.iter().flatten().enumerate() {
            if family != "IPv4" {
                return Err(FieldError::new(
                    format!("spec.ipFamilies[{i}]"),
                    format!("{family:?}: the lab is IPv4 single-stack"),
                ));
            }
        }
        if spec.ip_family_policy.as_deref() == Some("RequireDualStack") {
            return Err(FieldError::new(
                "spec.ipFamilyPolicy",
                "RequireDualStack: the lab is IPv4 single-stack",
            ));
        }
        if spec
            .load_balancer_source_ranges
            .as_ref()
            .is_some_and(|r| !r.is_empty())
        {
            return Err(FieldError::new(
                "spec.loadBalancerSourceRanges",
                "not supported by the lab (it would be a firewall the switch does not enforce)",
            ));
        }

        // Ports.
        let manifest_ports = spec.ports.as_deref().unwrap_or(&[]);
        if manifest_ports.is_empty() && cluster_ip != ClusterIpRequest::Headless {
            return Err(FieldError::new(
                "spec.ports",
                "required: a Service needs at least one port (only a headless Service may have none)",
            ));
        }
        let mut ports = Vec::with_capacity(manifest_ports.len());
        let mut names = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for (i, p) in manifest_ports.iter().enumerate() {
            let field = format!("spec.ports[{i}]");
            let port = port_number(&format!("{field}.port"), p.port)?;
            let protocol = parse_protocol(&format!("{field}.protocol"), p.protocol.as_deref())?;
            let name = p.name.clone().unwrap_or_default();
            if name.is_empty() {
                if manifest_ports.len() > 1 {
                    return Err(FieldError::new(
                        format!("{field}.name"),
                        "required: every port of a multi-port Service needs a name",
                    ));
                }
            } else {
                if !manifest::is_dns1123_label(&name) {
                    return Err(FieldError::new(
                        format!("{field}.name"),
                        format!("{name:?} is not a valid DNS-1123 label (at most 63 of a-z, 0-9 and '-', starting and ending alphanumeric)"),
                    ));
                }
                if !names.insert(name.clone()) {
                    return Err(FieldError::new(
                        format!("{field}.name"),
                        format!("duplicate port name {name:?}"),
                    ));
                }
            }
            if !keys.insert((port, protocol)) {
                return Err(FieldError::new(
                    field,
                    format!(
                        "duplicate port {port}/{}: another port has the same number and protocol",
                        protocol_str(protocol)
                    ),
                ));
            }
            let target_port = match &p.target_port {
                None | Some(IntOrString::Int(0)) => TargetPort::Number(port),
                Some(IntOrString::String(s)) if s.is_empty() => TargetPort::Number(port),
                Some(IntOrString::Int(n)) => {
                    TargetPort::Number(port_number(&format!("{field}.targetPort"), *n)?)
                }
                Some(IntOrString::String(s)) => {
                    if !manifest::is_port_name(s) {
                        return Err(FieldError::new(
                            format!("{field}.targetPort"),
                            format!("{s:?} is not a valid port name (at most 15 of a-z, 0-9 and '-', with at least one letter, RFC 6335)"),
                        ));
                    }
                    TargetPort::Name(s.clone())
                }
            };
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => {
                    let f = format!("{field}.nodePort");
                    if type_ == ServiceType::ClusterIP {
                        return Err(FieldError::new(
                            f,
                            "may not be used when `type` is ClusterIP",
                        ));
                    }
                    let (lo, hi) = NODE_PORT_RANGE;
                    match u16::try_from(n) {
                        Ok(n) if (lo..=hi).contains(&n) => Some(n),
                        _ => {
                            return Err(FieldError::new(
                                f,
                                format!("{n} is outside the NodePort range {lo}-{hi}"),
                            ))
                        }
                    }
                }
            };
            ports.push(LabServicePort {
                name,
                protocol,
                port,
                target_port,
                node_port,
            });
        }

        let mut external_ips = Vec::new();
        for (i, ip) in spec.external_ips.iter().flatten().enumerate() {
            let field = format!("spec.externalIPs[{i}]");
            let ip = parse_ipv4(&field, ip, "external IPs")?;
            check_routable(&field, ip)?;
            if !external_ips.contains(&ip) {
                external_ips.push(ip);
            }
        }

        let lb_ip = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty());
        let mut load_balancer_ingress = Vec::new();
        if let Some(text) = lb_ip {
            if type_ != ServiceType::LoadBalancer {
                return Err(FieldError::new(
                    "spec.loadBalancerIP",
                    "may only be used when `type` is LoadBalancer",
                ));
            }
            let ip = parse_ipv4("spec.loadBalancerIP", text, "load balancer IPs")?;
            check_routable("spec.loadBalancerIP", ip)?;
            load_balancer_ingress.push(ip);
        }
        if type_ == ServiceType::LoadBalancer {
            let ingress = svc
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref());
            let mut from_status = Vec::new();
            for (i, ing) in ingress.into_iter().flatten().enumerate() {
                // An ingress given only by hostname has no address to serve.
                let Some(text) = ing.ip.as_deref().filter(|s| !s.is_empty()) else {
                    continue;
                };
                let field = format!("status.loadBalancer.ingress[{i}].ip");
                let ip = parse_ipv4(&field, text, "load balancer IPs")?;
                check_routable(&field, ip)?;
                if !from_status.contains(&ip) {
                    from_status.push(ip);
                }
            }
            // The status is what the load balancer reports; it wins over
            // the (deprecated) request in spec.loadBalancerIP.
            if !from_status.is_empty() {
                load_balancer_ingress = from_status;
            }
        }

        let affinity_timeout_secs = match spec.session_affinity.as_deref() {
            None | Some("") | Some("None") => {
                if spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .is_some_and(|c| c.timeout_seconds.is_some())
                {
                    return Err(FieldError::new(
                        "spec.sessionAffinityConfig",
                        "must not be set when sessionAffinity is None",
                    ));
                }
                None
            }
            Some("ClientIP") => {
                let t = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                match t {
                    None => Some(DEFAULT_AFFINITY_TIMEOUT_SECS),
                    Some(t) if t >= 1 && t as u32 <= MAX_AFFINITY_TIMEOUT_SECS => Some(t as u32),
                    Some(t) => {
                        return Err(FieldError::new(
                            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                            format!("{t} must be 1..={MAX_AFFINITY_TIMEOUT_SECS}"),
                        ))
                    }
                }
            }
            Some(other) => {
                return Err(FieldError::new(
                    "spec.sessionAffinity",
                    format!("{other:?}: must be None or ClientIP"),
                ))
            }
        };

        let external_traffic_local = match spec.external_traffic_policy.as_deref() {
            None | Some("") => false,
            Some(p @ ("Cluster" | "Local")) => {
                if type_ == ServiceType::ClusterIP && external_ips.is_empty() {
                    return Err(FieldError::new(
                        "spec.externalTrafficPolicy",
                        "may only be set for externally-accessible Services (NodePort, LoadBalancer, or with externalIPs)",
                    ));
                }
                p == "Local"
            }
            Some(other) => {
                return Err(FieldError::new(
                    "spec.externalTrafficPolicy",
                    format!("{other:?}: must be Cluster or Local"),
                ))
            }
        };
        let internal_traffic_local = match spec.internal_traffic_policy.as_deref() {
            None | Some("") | Some("Cluster") => false,
            Some("Local") => true,
            Some(other) => {
                return Err(FieldError::new(
                    "spec.internalTrafficPolicy",
                    format!("{other:?}: must be Cluster or Local"),
                ))
            }
        };

        Ok(ServiceRequest {
            service: LabService {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                type_,
                cluster_ip: None,
                ports,
                selector: spec.selector.clone().filter(|s| !s.is_empty()),
                external_ips,
                load_balancer_ingress,
                affinity_timeout_secs,
                external_traffic_local,
                internal_traffic_local,
                publish_not_ready_addresses: spec.publish_not_ready_addresses.unwrap_or(false),
                manifest: svc.clone(),
                created: created.to_owned(),
            },
            cluster_ip,
        })
    }
}

// ---------------------------------------------------------------------------
// Allocation (the API server's ClusterIP and NodePort allocators)
