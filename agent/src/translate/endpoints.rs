//! The EndpointSlice controller's job, for sources without one: the
//! agent's file source (a bare-metal user's manifests) and the lab.
//!
//! As Kubernetes' controller does: a Service with a selector gets the
//! pods of its namespace that the selector matches; each Service port's
//! `targetPort` is resolved per pod (a number, or the containerPort with
//! that name and protocol: `FindPort`; a pod without it is left out of
//! that port); pods are grouped by their resolved port set (one slice
//! each, at most [`MAX_ENDPOINTS_PER_SLICE`] endpoints); conditions are
//! `ready` (serving and not terminating, or the Service publishes
//! not-ready addresses), `serving` and `terminating` (deletionTimestamp
//! set). Failed and Succeeded pods, and pods without an IPv4 address,
//! are left out.
//!
//! [`derive_endpoint_slices`] is the one EndpointSlice controller of the
//! project: [`super::ClusterObjects::derive_endpoint_slices`] runs it for
//! the file source and for the lab (whose agents read the file source,
//! and which lists the same slices in `lab get endpointslices`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podswitch_switch::control::api::Protocol;

use super::services::{namespace_of, SERVICE_NAME_LABEL};

/// The most endpoints one EndpointSlice holds (the controller's default
/// `--max-endpoints-per-slice`).
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;

/// `endpointslice.kubernetes.io/managed-by` of the slices derived here.
pub const MANAGED_BY: &str = "podswitch.io/agent";

/// One resolved port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ResolvedPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// An endpoint's conditions (discovery.k8s.io/v1 EndpointConditions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

/// The conditions of a pod's endpoint: `ready` is never true for a
/// terminating endpoint unless the Service publishes not-ready addresses
/// (EndpointConditions docs).
fn conditions(serving: bool, terminating: bool, publish_not_ready: bool) -> Conditions {
    Conditions {
        ready: publish_not_ready || (serving && !terminating),
        serving,
        terminating,
    }
}

/// Kubernetes' `FindPort`: the number of the container port named `name`
/// with `protocol`, among `(name, protocol, number)` of a pod's
/// containers.
fn find_port<'a>(
    container_ports: impl IntoIterator<Item = (Option<&'a str>, Protocol, u16)>,
    name: &str,
    protocol: Protocol,
) -> Option<u16> {
    container_ports
        .into_iter()
        .find(|(n, p, _)| *n == Some(name) && *p == protocol)
        .map(|(_, _, number)| number)
}

/// Groups endpoints by their resolved port set, each group sorted by
/// `ip` and cut into slices of [`MAX_ENDPOINTS_PER_SLICE`]. No endpoint
/// at all gives one empty group (the controller's placeholder slice).
fn group_by_ports<E: Clone>(
    endpoints: impl IntoIterator<Item = (Vec<ResolvedPort>, E)>,
    ip: impl Fn(&E) -> Ipv4Addr,
) -> Vec<(Vec<ResolvedPort>, Vec<E>)> {
    let mut groups: BTreeMap<Vec<ResolvedPort>, Vec<E>> = BTreeMap::new();
    for (ports, e) in endpoints {
        groups.entry(ports).or_default().push(e);
    }
    if groups.is_empty() {
        return vec![(Vec::new(), Vec::new())];
    }
    let mut out = Vec::new();
    for (ports, mut endpoints) in groups {
        endpoints.sort_by_key(|e| ip(e));
        for chunk in endpoints.chunks(MAX_ENDPOINTS_PER_SLICE) {
            out.push((ports.clone(), chunk.to_vec()));
        }
    }
    out
}

fn parse_protocol(value: Option<&str>) -> Option<Protocol> {
    match value {
        None | Some("") | Some("TCP") => Some(Protocol::Tcp),
        Some("UDP") => Some(Protocol::Udp),
        _ => None,
    }
}

fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// A pod as the controller reads it.
struct PodView<'a> {
    pod: &'a Pod,
    ip: Ipv4Addr,
    node: Option<&'a str>,
    conditions: Conditions,
}

/// Reads a pod: `None` when it cannot be an endpoint (no IPv4 podIP,
/// Failed or Succeeded). A pod with no Ready condition (a hand-written
/// manifest) counts as ready.
fn pod_view<'a>(pod: &'a Pod, publish_not_ready: bool) -> Option<PodView<'a>> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Failed" | "Succeeded")) {
        return None;
    }
    let ip = status
        .pod_ip
        .as_deref()
        .into_iter()
        .chain(status.pod_ips.iter().flatten().map(|p| p.ip.as_str()))
        .find_map(|t| t.parse::<Ipv4Addr>().ok())?;
    let ready_condition = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.status == "True");
    let serving = ready_condition.unwrap_or(true);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    Some(PodView {
        pod,
        ip,
        node: pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        conditions: conditions(serving, terminating, publish_not_ready),
    })
}

fn container_ports(pod: &Pod) -> impl Iterator<Item = (Option<&str>, Protocol, u16)> {
    pod.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some((
                p.name.as_deref(),
                parse_protocol(p.protocol.as_deref())?,
                u16::try_from(p.container_port).ok()?,
            ))
        })
}

/// The EndpointSlices of `service` over `pods` (all pods; those of other
/// namespaces are skipped). Empty for a Service without a selector (its
/// slices are written by hand) and for ExternalName Services. Ports that
/// translation would refuse (SCTP, out of range) are skipped here and
/// reported there.
pub fn derive_endpoint_slices<'a>(
    service: &Service,
    pods: impl IntoIterator<Item = &'a Pod>,
) -> Vec<EndpointSlice> {
    let Some(spec) = service.spec.as_ref() else {
        return Vec::new();
    };
    let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
        return Vec::new();
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Vec::new();
    }
    let namespace = namespace_of(&service.metadata.namespace);
    let name = service.metadata.name.as_deref().unwrap_or("");
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let service_ports: Vec<(String, Protocol, IntOrString)> = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|p| {
            let protocol = parse_protocol(p.protocol.as_deref())?;
            let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
            Some((p.name.clone().unwrap_or_default(), protocol, target))
        })
        .collect();

    let selected = pods.into_iter().filter(|pod| {
        namespace_of(&pod.metadata.namespace) == namespace
            && pod
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| selector.iter().all(|(k, v)| l.get(k) == Some(v)))
    });
    let endpoints = selected
        .filter_map(|pod| pod_view(pod, publish_not_ready))
        .map(|view| {
            let ports: Vec<ResolvedPort> = service_ports
                .iter()
                .filter_map(|(port_name, protocol, target)| {
                    let port = match target {
                        IntOrString::Int(n) => u16::try_from(*n).ok().filter(|n| *n != 0)?,
                        IntOrString::String(s) => match s.parse::<u16>() {
                            Ok(n) => n,
                            Err(_) => find_port(container_ports(view.pod), s, *protocol)?,
                        },
                    };
                    Some(ResolvedPort {
                        name: port_name.clone(),
                        protocol: *protocol,
                        port,
                    })
                })
                .collect();
            (ports, view)
        });
    let groups = group_by_ports(
        endpoints.map(|(ports, v)| (ports, (v.ip, v.node, v.conditions, v.pod))),
        |e| e.0,
    );

    groups
        .into_iter()
        .enumerate()
        .map(|(index, (ports, endpoints))| EndpointSlice {
            metadata: ObjectMeta {
                name: Some(format!("{name}-{index}")),
                namespace: Some(namespace.to_owned()),
                labels: Some(
                    [
                        (SERVICE_NAME_LABEL.to_owned(), name.to_owned()),
                        (
                            "endpointslice.kubernetes.io/managed-by".to_owned(),
                            MANAGED_BY.to_owned(),
                        ),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            ports: Some(
                ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: Some(p.name.clone()),
                        protocol: Some(protocol_name(p.protocol).into()),
                        port: Some(i32::from(p.port)),
                        app_protocol: None,
                    })
                    .collect(),
            ),
            endpoints: endpoints
                .into_iter()
                .map(|(ip, node, c, pod)| Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(c.ready),
                        serving: Some(c.serving),
                        terminating: Some(c.terminating),
                    }),
                    node_name: node.map(str::to_owned),
                    target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: Some(namespace.to_owned()),
                        name: pod.metadata.name.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(name: &str, ip: &str, http_port: i32, extra: serde_json::Value) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": "web"}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c",
                "ports": [{"name": "http", "containerPort": http_port}]}]},
            "status": {"phase": "Running", "podIP": ip},
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in e {
                if let Some(m) = o.get_mut(k).and_then(|x| x.as_object_mut()) {
                    for (kk, vv) in val.as_object().unwrap() {
                        m.insert(kk.clone(), vv.clone());
                    }
                }
            }
        }
        serde_json::from_value(v).unwrap()
    }

    fn service() -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "ports": [
                {"name": "http", "port": 80, "targetPort": "http"},
                {"name": "metrics", "port": 9000, "targetPort": 9100}]},
        }))
        .unwrap()
    }

    #[test]
    fn named_ports_resolve_per_pod_and_conditions_follow_pod_state() {
        let pods = [
            pod("a", "10.244.1.2", 8080, json!({})),
            pod("b", "10.244.1.3", 8081, json!({})),
            pod(
                "c",
                "10.244.1.4",
                8080,
                json!({"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
            ),
            pod(
                "d",
                "10.244.1.5",
                8080,
                json!({"status": {"phase": "Failed"}}),
            ),
            pod(
                "e",
                "10.244.1.6",
                8080,
                json!({"metadata": {"labels": {"app": "other"}}}),
            ),
        ];
        let slices = derive_endpoint_slices(&service(), &pods);
        assert_eq!(slices.len(), 2, "two port mappings: 8080 and 8081");
        let s8080 = &slices[0];
        assert_eq!(s8080.ports.as_ref().unwrap()[0].port, Some(8080));
        assert_eq!(s8080.ports.as_ref().unwrap()[1].port, Some(9100));
        let ips: Vec<&str> = s8080
            .endpoints
            .iter()
            .map(|e| e.addresses[0].as_str())
            .collect();
        assert_eq!(
            ips,
            ["10.244.1.2", "10.244.1.4"],
            "failed and other left out"
        );
        let c = s8080.endpoints[1].conditions.as_ref().unwrap();
        assert_eq!(
            (c.ready, c.serving, c.terminating),
            (Some(false), Some(true), Some(true))
        );
        assert_eq!(
            s8080.metadata.labels.as_ref().unwrap()[SERVICE_NAME_LABEL],
            "web"
        );
        assert_eq!(slices[1].endpoints[0].addresses[0], "10.244.1.3");
    }

    #[test]
    fn no_selector_no_slices_and_no_pods_one_empty_slice() {
        let mut svc = service();
        assert_eq!(derive_endpoint_slices(&svc, &[]).len(), 1);
        assert!(derive_endpoint_slices(&svc, &[])[0].endpoints.is_empty());
        svc.spec.as_mut().unwrap().selector = None;
        assert!(derive_endpoint_slices(&svc, &[]).is_empty());
    }
}
