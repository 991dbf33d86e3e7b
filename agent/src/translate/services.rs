//! Services and their EndpointSlices → the switch's [`ServiceSpec`]s, as
//! kube-proxy reads them.
//!
//! [`translate_service`] is the one place that turns a Service and the
//! EndpointSlices labelled with its name ([`SERVICE_NAME_LABEL`]) into
//! what the switch load-balances: frontends (cluster IPs, external IPs,
//! load balancer ingress IPs, NodePorts) and, per Service port, the
//! endpoints of every slice port with the same name and protocol (several
//! slices merged, duplicates folded). It is pure, and the one Service
//! translation: the Kubernetes source, the file source and the lab (which
//! runs it on the objects its agents read, to know what every switch
//! should hold) all use it.
//!
//! Then [`resolve_frontends`] settles what only the whole set can: two
//! Services may not share a frontend `ip:port/protocol` (the switch would
//! refuse the whole table), so a contested one stays with the older
//! Service and the other loses it, with a problem.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use podswitch_switch::control::api::{
    EndpointSpec, Protocol, ServicePortSpec, ServiceSettings, ServiceSpec,
};

use super::problem::{ObjectKind, ObjectRef, Outcome, Problem, Reason};

/// The label an EndpointSlice carries with the name of its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// sessionAffinityConfig.clientIP.timeoutSeconds when not given (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECS: u32 = 10_800;
/// The largest timeoutSeconds Kubernetes accepts (1 day).
pub const MAX_AFFINITY_TIMEOUT_SECS: u32 = 86_400;

/// One Service translated, before the cluster-wide frontend checks.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslatedService {
    /// `None` when the Service was left out (see `problems`).
    pub spec: Option<ServiceSpec>,
    /// About the Service and about its EndpointSlices.
    pub problems: Vec<Problem>,
    /// metadata.creationTimestamp: the older Service keeps a contested
    /// frontend.
    pub created: Option<Timestamp>,
}

/// `metadata.namespace` as the API server defaults it.
pub(crate) fn namespace_of(ns: &Option<String>) -> &str {
    ns.as_deref().filter(|n| !n.is_empty()).unwrap_or("default")
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// `protocol:` of a Service or EndpointSlice port (default TCP).
fn parse_protocol(value: Option<&str>) -> Result<Protocol, Reason> {
    match value {
        None | Some("") | Some("TCP") => Ok(Protocol::Tcp),
        Some("UDP") => Ok(Protocol::Udp),
        Some(other) => Err(Reason::UnsupportedProtocol {
            value: other.to_owned(),
        }),
    }
}

fn port_number(value: i32) -> Result<u16, Reason> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or(Reason::PortOutOfRange {
            value: i64::from(value),
        })
}

/// Why an address cannot be a frontend traffic is sent to (Kubernetes'
/// `ValidateNonSpecialIP`).
fn special_address(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some("multicast or broadcast")
    } else {
        None
    }
}

/// One port of an EndpointSlice.
struct SlicePort {
    name: String,
    protocol: Protocol,
    port: u16,
}

/// An EndpointSlice read once: its usable ports and endpoints.
struct ParsedSlice {
    ports: Vec<SlicePort>,
    endpoints: Vec<EndpointSpec>,
}

/// Reads one slice. IPv6 and FQDN slices are skipped without a problem
/// (IPv4 only for now); bad ports and endpoints are left out with one.
fn parse_slice(slice: &EndpointSlice, problems: &mut Vec<Problem>) -> Option<ParsedSlice> {
    if slice.address_type != "IPv4" {
        return None;
    }
    let object = ObjectRef::namespaced(
        ObjectKind::EndpointSlice,
        namespace_of(&slice.metadata.namespace),
        slice.metadata.name.as_deref().unwrap_or(""),
    );
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        // A port with no number means "all ports", which no Service
        // controller writes for a Service with ports; nothing to map.
        let Some(number) = p.port else { continue };
        let port = match port_number(number) {
            Ok(port) => port,
            Err(reason) => {
                problems.push(Problem::new(
                    &object,
                    Some(format!("ports[{i}].port")),
                    reason,
                    Outcome::PartlyApplied,
                ));
                continue;
            }
        };
        // An SCTP slice port belongs to an SCTP Service port, which is
        // reported (and left out) with the Service.
        let Ok(protocol) = parse_protocol(p.protocol.as_deref()) else {
            continue;
        };
        ports.push(SlicePort {
            name: p.name.clone().unwrap_or_default(),
            protocol,
            port,
        });
    }
    let mut endpoints = Vec::with_capacity(slice.endpoints.len());
    for (j, e) in slice.endpoints.iter().enumerate() {
        // "Consumers ... may choose to only use the first element"
        // (EndpointSlice API); kube-proxy does.
        let Some(text) = e.addresses.first() else {
            problems.push(Problem::new(
                &object,
                Some(format!("endpoints[{j}].addresses")),
                Reason::NoEndpointAddress,
                Outcome::PartlyApplied,
            ));
            continue;
        };
        let ip = match text.parse::<Ipv4Addr>() {
            Ok(ip) => ip,
            Err(_) => {
                problems.push(Problem::new(
                    &object,
                    Some(format!("endpoints[{j}].addresses[0]")),
                    Reason::InvalidIp {
                        value: text.clone(),
                    },
                    Outcome::PartlyApplied,
                ));
                continue;
            }
        };
        // EndpointConditions: nil ready means ready, nil terminating means
        // not terminating (as kube-proxy's endpointslicecache reads them).
        // Nil serving means as ready; it is sent only where it says more.
        let conditions = e.conditions.as_ref();
        let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
        endpoints.push(EndpointSpec {
            ip,
            port: 0,
            node: e.node_name.clone().filter(|n| !n.is_empty()),
            ready,
            terminating: conditions.and_then(|c| c.terminating).unwrap_or(false),
            serving: conditions.and_then(|c| c.serving).filter(|&s| s != ready),
        });
    }
    Some(ParsedSlice { ports, endpoints })
}

/// How good an endpoint is when the same `ip:port` is in two slices (it
/// is, for a moment, while the controller moves it): ready beats not
/// ready, not terminating beats terminating, serving beats not serving.
fn endpoint_rank(e: &EndpointSpec) -> (bool, bool, bool) {
    (e.ready, !e.terminating, e.is_serving())
}

/// The endpoints of the Service port `name`/`protocol`: from every slice
/// port with that name and protocol, sorted by address and port.
fn port_endpoints(slices: &[ParsedSlice], name: &str, protocol: Protocol) -> Vec<EndpointSpec> {
    let mut merged: BTreeMap<(Ipv4Addr, u16), EndpointSpec> = BTreeMap::new();
    for slice in slices {
        for sp in slice
            .ports
            .iter()
            .filter(|sp| sp.name == name && sp.protocol == protocol)
        {
            for e in &slice.endpoints {
                let candidate = EndpointSpec {
                    port: sp.port,
                    ..e.clone()
                };
                match merged.get(&(e.ip, sp.port)) {
                    Some(have) if endpoint_rank(have) >= endpoint_rank(&candidate) => {}
                    _ => {
                        merged.insert((e.ip, sp.port), candidate);
                    }
                }
            }
        }
    }
    merged.into_values().collect()
}

/// Translates one Service and its EndpointSlices (those labelled
/// [`SERVICE_NAME_LABEL`] with its name, in its namespace) into what the
/// switch takes, checked against `settings` (the service CIDRs and the
/// NodePort range) so that the switch never refuses it.
///
/// Invalid parts are left out with a problem: a bad or SCTP port drops
/// that port, a bad external IP that IP, a bad endpoint that endpoint; an
/// invalid Service-wide field (type, cluster IP, affinity, traffic
/// policy) drops the Service. ExternalName and headless Services, and
/// IPv6-only ones, are skipped (IPv6 addresses of dual-stack Services are
/// ignored).
pub fn translate_service(
    service: &Service,
    slices: &[&EndpointSlice],
    settings: &ServiceSettings,
) -> TranslatedService {
    let created = service.metadata.creation_timestamp.as_ref().map(|t| t.0);
    let namespace = namespace_of(&service.metadata.namespace);
    let name = service.metadata.name.as_deref().unwrap_or("");
    let object = ObjectRef::namespaced(ObjectKind::Service, namespace, name);
    let mut problems = Vec::new();
    let left_out = |field: Option<&str>, reason, outcome| TranslatedService {
        spec: None,
        problems: vec![Problem::new(
            &object,
            field.map(str::to_owned),
            reason,
            outcome,
        )],
        created,
    };
    if name.is_empty() {
        return left_out(
            Some("metadata.name"),
            Reason::MissingName,
            Outcome::Rejected,
        );
    }
    let Some(spec) = service.spec.as_ref() else {
        return left_out(Some("spec"), Reason::MissingSpec, Outcome::Rejected);
    };

    let wants_node_ports = match spec.type_.as_deref() {
        None | Some("") | Some("ClusterIP") => false,
        Some("NodePort") | Some("LoadBalancer") => true,
        Some("ExternalName") => {
            return left_out(Some("spec.type"), Reason::ExternalName, Outcome::Skipped)
        }
        Some(other) => {
            return left_out(
                Some("spec.type"),
                Reason::UnknownServiceType {
                    value: other.to_owned(),
                },
                Outcome::Rejected,
            )
        }
    };
    let is_load_balancer = spec.type_.as_deref() == Some("LoadBalancer");

    // Cluster IPs: clusterIPs when set (its first is clusterIP), else clusterIP.
    let (ip_texts, ip_field): (Vec<&str>, &str) = match spec.cluster_ips.as_deref() {
        Some(ips) if !ips.is_empty() => {
            (ips.iter().map(String::as_str).collect(), "spec.clusterIPs")
        }
        _ => (
            spec.cluster_ip.as_deref().into_iter().collect(),
            "spec.clusterIP",
        ),
    };
    let ip_texts: Vec<&str> = ip_texts.into_iter().filter(|t| !t.is_empty()).collect();
    if ip_texts.contains(&"None") {
        return left_out(Some("spec.clusterIP"), Reason::Headless, Outcome::Skipped);
    }
    let mut cluster_ips = Vec::new();
    let mut saw_ipv6 = false;
    for (i, text) in ip_texts.iter().enumerate() {
        let field = match ip_field {
            "spec.clusterIPs" => format!("{ip_field}[{i}]"),
            _ => ip_field.to_owned(),
        };
        match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => {
                let inside = settings
                    .service_cidrs
                    .iter()
                    .any(|c| c.contains(&IpAddr::V4(ip)));
                if !inside {
                    return left_out(
                        Some(&field),
                        Reason::ClusterIpOutsideServiceCidrs {
                            ip,
                            cidrs: settings.service_cidrs.clone(),
                        },
                        Outcome::Rejected,
                    );
                }
                if !cluster_ips.contains(&ip) {
                    cluster_ips.push(ip);
                }
            }
            Ok(IpAddr::V6(_)) => saw_ipv6 = true,
            Err(_) => {
                return left_out(
                    Some(&field),
                    Reason::InvalidIp {
                        value: (*text).to_owned(),
                    },
                    Outcome::Rejected,
                )
            }
        }
    }
    if cluster_ips.is_empty() {
        return match saw_ipv6 {
            true => left_out(Some(ip_field), Reason::Ipv6Only, Outcome::Skipped),
            false => left_out(Some(ip_field), Reason::NoClusterIp, Outcome::Rejected),
        };
    }

    let affinity_timeout_secs = match spec.session_affinity.as_deref() {
        None | Some("") | Some("None") => None,
        Some("ClientIP") => {
            let timeout = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds);
            match timeout {
                None => Some(DEFAULT_AFFINITY_TIMEOUT_SECS),
                Some(t) if (1..=i64::from(MAX_AFFINITY_TIMEOUT_SECS)).contains(&i64::from(t)) => {
                    Some(t as u32)
                }
                Some(t) => {
                    return left_out(
                        Some("spec.sessionAffinityConfig.clientIP.timeoutSeconds"),
                        Reason::InvalidAffinityTimeout {
                            value: i64::from(t),
                        },
                        Outcome::Rejected,
                    )
                }
            }
        }
        Some(other) => {
            return left_out(
                Some("spec.sessionAffinity"),
                Reason::UnknownSessionAffinity {
                    value: other.to_owned(),
                },
                Outcome::Rejected,
            )
        }
    };
    let policy = |value: Option<&str>| match value {
        None | Some("") | Some("Cluster") => Ok(false),
        Some("Local") => Ok(true),
        Some(other) => Err(Reason::UnknownTrafficPolicy {
            value: other.to_owned(),
        }),
    };
    let external_traffic_local = match policy(spec.external_traffic_policy.as_deref()) {
        Ok(local) => local,
        Err(reason) => {
            return left_out(
                Some("spec.externalTrafficPolicy"),
                reason,
                Outcome::Rejected,
            )
        }
    };
    let internal_traffic_local = match policy(spec.internal_traffic_policy.as_deref()) {
        Ok(local) => local,
        Err(reason) => {
            return left_out(
                Some("spec.internalTrafficPolicy"),
                reason,
                Outcome::Rejected,
            )
        }
    };

    // The slices, read once for all ports.
    let parsed: Vec<ParsedSlice> = slices
        .iter()
        .filter_map(|s| parse_slice(s, &mut problems))
        .collect();

    let (lo, hi) = settings.node_port_range;
    let mut ports = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let field = |f: &str| Some(format!("spec.ports[{i}].{f}"));
        let mut part_left_out = |f: &str, reason| {
            problems.push(Problem::new(
                &object,
                field(f),
                reason,
                Outcome::PartlyApplied,
            ))
        };
        let port = match port_number(p.port) {
            Ok(port) => port,
            Err(reason) => {
                part_left_out("port", reason);
                continue;
            }
        };
        let protocol = match parse_protocol(p.protocol.as_deref()) {
            Ok(protocol) => protocol,
            Err(reason) => {
                part_left_out("protocol", reason);
                continue;
            }
        };
        if !seen.insert((port, protocol)) {
            part_left_out(
                "port",
                Reason::DuplicatePort {
                    port,
                    protocol: protocol_name(protocol),
                },
            );
            continue;
        }
        let node_port = match p.node_port.filter(|_| wants_node_ports) {
            None | Some(0) => None,
            Some(n) => match port_number(n) {
                Err(reason) => {
                    part_left_out("nodePort", reason);
                    None
                }
                Ok(n) if !(lo..=hi).contains(&n) => {
                    part_left_out("nodePort", Reason::NodePortOutsideRange { port: n, lo, hi });
                    None
                }
                Ok(n) => Some(n),
            },
        };
        let name = p.name.clone().unwrap_or_default();
        let endpoints = port_endpoints(&parsed, &name, protocol);
        ports.push(ServicePortSpec {
            name,
            protocol,
            port,
            node_port,
            endpoints,
        });
    }
    if ports.is_empty() {
        problems.push(Problem::new(
            &object,
            Some("spec.ports".into()),
            Reason::NoUsablePorts,
            Outcome::Rejected,
        ));
        return TranslatedService {
            spec: None,
            problems,
            created,
        };
    }

    // External IPs: spec.externalIPs, and for a LoadBalancer the ingress
    // IPs its load balancer reports (not those with ipMode Proxy: that
    // load balancer sends traffic to the nodes, not to its IP; KEP-1860).
    let mut external_ips: Vec<Ipv4Addr> = Vec::new();
    let mut candidates: Vec<(String, &str)> = spec
        .external_ips
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, t)| (format!("spec.externalIPs[{i}]"), t.as_str()))
        .collect();
    if is_load_balancer {
        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_deref())
            .unwrap_or_default();
        for (k, ing) in ingress.iter().enumerate() {
            if ing.ip_mode.as_deref() == Some("Proxy") {
                continue;
            }
            if let Some(ip) = ing.ip.as_deref().filter(|s| !s.is_empty()) {
                candidates.push((format!("status.loadBalancer.ingress[{k}].ip"), ip));
            }
        }
    }
    for (field, text) in candidates {
        let reason = match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(ip)) => match special_address(ip) {
                None => {
                    if !external_ips.contains(&ip) && !cluster_ips.contains(&ip) {
                        external_ips.push(ip);
                    }
                    continue;
                }
                Some(why) => Reason::UnusableExternalIp { ip, why },
            },
            Ok(IpAddr::V6(_)) => continue,
            Err(_) => Reason::InvalidIp {
                value: text.to_owned(),
            },
        };
        problems.push(Problem::new(
            &object,
            Some(field),
            reason,
            Outcome::PartlyApplied,
        ));
    }

    let has_selector = spec.selector.as_ref().is_some_and(|s| !s.is_empty());
    if has_selector && ports.iter().all(|p| p.endpoints.is_empty()) {
        problems.push(Problem::new(
            &object,
            Some("spec.selector".into()),
            Reason::SelectorMatchesNothing,
            Outcome::Warning,
        ));
    }

    TranslatedService {
        spec: Some(ServiceSpec {
            name: format!("{namespace}/{name}"),
            cluster_ips,
            external_ips,
            ports,
            affinity_timeout_secs,
            external_traffic_local,
            internal_traffic_local,
        }),
        problems,
        created,
    }
}

/// One frontend: destination address, port, protocol.
type Frontend = (Ipv4Addr, u16, Protocol);

fn show(f: &Frontend) -> String {
    format!("{}:{}/{}", f.0, f.1, protocol_name(f.2))
}

/// Makes every frontend belong to one Service, as the switch requires.
///
/// Cluster IPs are allocated uniquely by the API server, so they are
/// claimed first; then NodePorts on `node_ip` (this node's address, where
/// the switch serves them); then external and load balancer IPs, which
/// users type. Within each round the older Service (creationTimestamp,
/// then `namespace/name`) wins. A Service whose cluster IP frontend is
/// taken is left out; one whose NodePort is taken loses that NodePort;
/// one whose external IP clashes on any of its ports loses that IP (the
/// switch has no per-port external IPs). Each loss is a problem.
pub fn resolve_frontends(
    services: &mut BTreeMap<String, ServiceSpec>,
    created: &HashMap<String, Option<Timestamp>>,
    node_ip: Option<Ipv4Addr>,
    problems: &mut Vec<Problem>,
) {
    let mut order: Vec<String> = services.keys().cloned().collect();
    order.sort_by(|a, b| {
        let ca = created.get(a).copied().flatten();
        let cb = created.get(b).copied().flatten();
        ca.cmp(&cb).then_with(|| a.cmp(b))
    });
    let object = |key: &str| {
        let (ns, name) = key.split_once('/').unwrap_or(("default", key));
        ObjectRef::namespaced(ObjectKind::Service, ns, name)
    };
    let mut owner: HashMap<Frontend, String> = HashMap::new();

    // Round 1: cluster IPs; a Service claims all of its, or none.
    let mut dropped = Vec::new();
    for key in &order {
        let svc = &services[key];
        let fronts: Vec<Frontend> = svc
            .ports
            .iter()
            .flat_map(|p| {
                svc.cluster_ips
                    .iter()
                    .map(move |ip| (*ip, p.port, p.protocol))
            })
            .collect();
        if let Some((f, o)) = fronts
            .iter()
            .find_map(|f| owner.get(f).map(|o| (f, o.clone())))
        {
            problems.push(Problem::new(
                &object(key),
                Some("spec.clusterIP".into()),
                Reason::FrontendTaken {
                    frontend: show(f),
                    owner: o,
                },
                Outcome::Rejected,
            ));
            dropped.push(key.clone());
            continue;
        }
        for f in fronts {
            owner.insert(f, key.clone());
        }
    }
    for key in &dropped {
        services.remove(key);
    }
    order.retain(|k| services.contains_key(k));

    // Round 2: NodePorts, on this node's address.
    let node_ip = node_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    for key in &order {
        let Some(svc) = services.get_mut(key) else {
            continue;
        };
        for (i, p) in svc.ports.iter_mut().enumerate() {
            let Some(np) = p.node_port else { continue };
            let f = (node_ip, np, p.protocol);
            // Any owner clashes, this Service included: two of its ports
            // on one nodePort/protocol are as much a conflict as two Services.
            match owner.get(&f) {
                Some(o) => {
                    problems.push(Problem::new(
                        &object(key),
                        Some(format!("spec.ports[{i}].nodePort")),
                        Reason::FrontendTaken {
                            frontend: show(&f),
                            owner: o.clone(),
                        },
                        Outcome::PartlyApplied,
                    ));
                    p.node_port = None;
                }
                _ => {
                    owner.insert(f, key.clone());
                }
            }
        }
    }

    // Round 3: external and load balancer IPs, all ports of an IP or none.
    for key in &order {
        let Some(svc) = services.get_mut(key) else {
            continue;
        };
        let ports: Vec<(u16, Protocol)> = svc.ports.iter().map(|p| (p.port, p.protocol)).collect();
        let mut kept = Vec::with_capacity(svc.external_ips.len());
        for ip in &svc.external_ips {
            let clash = ports.iter().find_map(|(port, proto)| {
                let f = (*ip, *port, *proto);
                owner.get(&f).filter(|o| *o != key).map(|o| (f, o.clone()))
            });
            match clash {
                Some((f, o)) => problems.push(Problem::new(
                    &object(key),
                    Some("spec.externalIPs".into()),
                    Reason::FrontendTaken {
                        frontend: show(&f),
                        owner: o,
                    },
                    Outcome::PartlyApplied,
                )),
                None => {
                    for (port, proto) in &ports {
                        owner.insert((*ip, *port, *proto), key.clone());
                    }
                    kept.push(*ip);
                }
            }
        }
        svc.external_ips = kept;
    }
}
