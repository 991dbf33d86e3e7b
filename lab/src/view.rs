//! `lab get`: the lab's pods, nodes, Services and EndpointSlices as kubectl
//! shows them, as tables or as a Kubernetes `List` with status filled in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ClientIPConfig, Container, ContainerPort, LoadBalancerIngress, LoadBalancerStatus, Node,
    NodeAddress, NodeCondition, NodeSpec, NodeStatus, Pod, PodIP, PodSpec, PodStatus, Service,
    ServicePort, ServiceSpec, ServiceStatus, SessionAffinityConfig,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use podswitch_agent::manifest;
use podswitch_agent::translate::endpoints::derive_endpoint_slices;
use podswitch_agent::translate::{ClusterObjects, SERVICE_NAME_LABEL};
use podswitch_switch::control::api::Protocol;
use serde_json::json;

use super::cluster::{pid_alive, LabState, NodeState, PodState};
use super::services::{LabService, ServiceType, TargetPort};

fn time(s: &str) -> Option<Time> {
    serde_json::from_value(json!(s)).ok()
}

fn phase(p: &PodState) -> &'static str {
    match p.workload_pid {
        Some(pid) if pid_alive(pid) => "Running",
        _ => "Failed",
    }
}

/// What kubectl's STATUS column shows: `Terminating` while a pod drains.
fn status(p: &PodState) -> &'static str {
    if p.deletion.is_some() {
        "Terminating"
    } else {
        phase(p)
    }
}

fn node_ready(n: &NodeState) -> bool {
    n.switch_pid.is_some_and(pid_alive)
}

/// A pod as a Kubernetes object with its status.
pub fn pod_object(p: &PodState) -> Pod {
    let containers = p
        .pod
        .containers
        .iter()
        .map(|c| Container {
            name: c.name.clone(),
            command: c.command.clone(),
            ports: Some(
                c.ports
                    .iter()
                    .map(|port| ContainerPort {
                        name: port.name.clone(),
                        container_port: i32::from(port.container_port),
                        protocol: Some(port.protocol.as_str().to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        })
        .collect();
    Pod {
        metadata: ObjectMeta {
            name: Some(p.pod.name.clone()),
            namespace: Some(p.pod.namespace.clone()),
            labels: if p.pod.labels.is_empty() {
                None
            } else {
                Some(p.pod.labels.clone())
            },
            creation_timestamp: time(&p.created),
            deletion_timestamp: p.deletion.as_ref().and_then(|d| time(&d.requested)),
            deletion_grace_period_seconds: p
                .deletion
                .as_ref()
                .map(|d| i64::from(d.grace_period_seconds)),
            owner_references: p.pod.owner.as_ref().map(|o| {
                let hash = p
                    .pod
                    .labels
                    .get("pod-template-hash")
                    .cloned()
                    .unwrap_or_default();
                vec![OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: format!("{o}-{hash}"),
                    controller: Some(true),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(p.node.clone()),
            containers,
            termination_grace_period_seconds: p.pod.termination_grace_period_seconds,
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some(phase(p).to_string()),
            pod_ip: Some(p.ip.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: p.ip.to_string(),
            }]),
            start_time: time(&p.created),
            ..Default::default()
        }),
    }
}

/// A node as a Kubernetes object with its status.
pub fn node_object(n: &NodeState) -> Node {
    let mut labels = BTreeMap::new();
    labels.insert("kubernetes.io/hostname".to_string(), n.name.clone());
    Node {
        metadata: ObjectMeta {
            name: Some(n.name.clone()),
            labels: Some(labels),
            creation_timestamp: time(&n.created),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: Some(n.pod_cidr.to_string()),
            pod_cidrs: Some(vec![n.pod_cidr.to_string()]),
            ..Default::default()
        }),
        status: Some(NodeStatus {
            addresses: n.underlay_ip.map(|ip| {
                vec![
                    NodeAddress {
                        type_: "InternalIP".into(),
                        address: ip.to_string(),
                    },
                    NodeAddress {
                        type_: "Hostname".into(),
                        address: n.name.clone(),
                    },
                ]
            }),
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if node_ready(n) { "True" } else { "False" }.into(),
                reason: Some(
                    if node_ready(n) {
                        "SwitchRunning"
                    } else {
                        "SwitchDown"
                    }
                    .into(),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
}

fn list(items: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

/// The objects every node's agent translates: the Nodes, Pods and
/// Services the lab writes for it (`agents::write_manifests`, what `lab get
/// ... -o json` prints), with the EndpointSlices the agent derives from
/// them ([`ClusterObjects::derive_endpoint_slices`], as its file source
/// does).
pub fn cluster_objects(st: &LabState) -> ClusterObjects {
    let mut o = ClusterObjects::default();
    for n in &st.nodes {
        o.nodes.insert(n.name.clone(), node_object(n));
    }
    for p in st.pods.values() {
        o.pods.insert(p.key(), pod_object(p));
    }
    for s in st.services.values() {
        o.services.insert(s.key(), service_object(s));
    }
    o.derive_endpoint_slices();
    o
}

/// `kubectl get pods -o json`.
pub fn pods_json(st: &LabState) -> serde_json::Value {
    list(
        st.pods
            .values()
            .map(|p| {
                let mut v = serde_json::to_value(pod_object(p)).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("apiVersion".into(), "v1".into());
                    o.insert("kind".into(), "Pod".into());
                }
                v
            })
            .collect(),
    )
}

/// `kubectl get nodes -o json`.
pub fn nodes_json(st: &LabState) -> serde_json::Value {
    list(
        st.nodes
            .iter()
            .map(|n| {
                let mut v = serde_json::to_value(node_object(n)).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("apiVersion".into(), "v1".into());
                    o.insert("kind".into(), "Node".into());
                }
                v
            })
            .collect(),
    )
}

fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i + 1 == cols {
                    s.clone()
                } else {
                    format!("{s:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

/// `kubectl get pods [-o wide]`.
pub fn pods_table(st: &LabState, wide: bool) -> String {
    let mut rows = vec![if wide {
        vec![
            "NAMESPACE",
            "NAME",
            "READY",
            "STATUS",
            "IP",
            "NODE",
            "NETNS",
        ]
    } else {
        vec!["NAMESPACE", "NAME", "READY", "STATUS", "IP", "NODE"]
    }
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>()];
    for p in st.pods.values() {
        let ph = phase(p);
        let mut r = vec![
            p.pod.namespace.clone(),
            p.pod.name.clone(),
            if ph == "Running" && p.deletion.is_none() {
                "1/1"
            } else {
                "0/1"
            }
            .to_string(),
            status(p).to_string(),
            p.ip.to_string(),
            p.node.clone(),
        ];
        if wide {
            r.push(p.netns.display().to_string());
        }
        rows.push(r);
    }
    table(rows)
}

/// `kubectl get nodes [-o wide]`.
pub fn nodes_table(st: &LabState, wide: bool) -> String {
    let mut rows = vec![if wide {
        vec![
            "NAME",
            "STATUS",
            "INTERNAL-IP",
            "POD-CIDR",
            "PODS",
            "SWITCH-PID",
            "NETNS",
        ]
    } else {
        vec!["NAME", "STATUS", "INTERNAL-IP", "POD-CIDR", "PODS"]
    }
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>()];
    for n in &st.nodes {
        let pods = st.pods.values().filter(|p| p.node == n.name).count();
        let mut r = vec![
            n.name.clone(),
            if node_ready(n) { "Ready" } else { "NotReady" }.to_string(),
            n.underlay_ip.map(|i| i.to_string()).unwrap_or_default(),
            n.pod_cidr.to_string(),
            pods.to_string(),
        ];
        if wide {
            r.push(n.switch_pid.map(|p| p.to_string()).unwrap_or_default());
            r.push(n.netns.display().to_string());
        }
        rows.push(r);
    }
    table(rows)
}

fn with_type_meta(v: serde_json::Value, api_version: &str, kind: &str) -> serde_json::Value {
    let mut v = v;
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), api_version.into());
        o.insert("kind".into(), kind.into());
    }
    v
}

fn protocol_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// A Service as the API server returns it: the applied manifest with its
/// defaults and allocations (ClusterIP, NodePorts) filled in, and the load
/// balancer's ingress in its status.
pub fn service_object(s: &LabService) -> Service {
    let mut svc = s.manifest.clone();
    svc.metadata.namespace = Some(s.namespace.clone());
    svc.metadata.creation_timestamp = time(&s.created);
    let old = svc.spec.take().unwrap_or_default();
    let cluster_ip = s
        .cluster_ip
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "None".into());
    let manifest_ports = old.ports.clone().unwrap_or_default();
    let ports: Vec<ServicePort> = s
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| ServicePort {
            app_protocol: manifest_ports.get(i).and_then(|m| m.app_protocol.clone()),
            name: (!p.name.is_empty()).then(|| p.name.clone()),
            node_port: p.node_port.map(i32::from),
            port: i32::from(p.port),
            protocol: Some(protocol_str(p.protocol).into()),
            target_port: Some(match &p.target_port {
                TargetPort::Number(n) => IntOrString::Int(i32::from(*n)),
                TargetPort::Name(n) => IntOrString::String(n.clone()),
            }),
        })
        .collect();
    let externally_accessible = s.type_ != ServiceType::ClusterIP || !s.external_ips.is_empty();
    let policy = |local: bool| if local { "Local" } else { "Cluster" }.to_string();
    let is_lb = s.type_ == ServiceType::LoadBalancer;
    svc.spec = Some(ServiceSpec {
        type_: Some(s.type_.as_str().into()),
        cluster_ip: Some(cluster_ip.clone()),
        cluster_ips: Some(vec![cluster_ip]),
        ip_families: Some(vec!["IPv4".into()]),
        ip_family_policy: Some("SingleStack".into()),
        ports: (!ports.is_empty()).then_some(ports),
        selector: s.selector.clone(),
        session_affinity: Some(
            if s.affinity_timeout_secs.is_some() {
                "ClientIP"
            } else {
                "None"
            }
            .into(),
        ),
        session_affinity_config: s.affinity_timeout_secs.map(|t| SessionAffinityConfig {
            client_ip: Some(ClientIPConfig {
                timeout_seconds: Some(t as i32),
            }),
        }),
        external_traffic_policy: externally_accessible.then(|| policy(s.external_traffic_local)),
        internal_traffic_policy: Some(policy(s.internal_traffic_local)),
        external_ips: (!s.external_ips.is_empty())
            .then(|| s.external_ips.iter().map(|ip| ip.to_string()).collect()),
        allocate_load_balancer_node_ports: is_lb
            .then(|| old.allocate_load_balancer_node_ports.unwrap_or(true)),
        publish_not_ready_addresses: old.publish_not_ready_addresses,
        load_balancer_ip: old.load_balancer_ip,
        load_balancer_class: old.load_balancer_class,
        traffic_distribution: old.traffic_distribution,
        ..Default::default()
    });
    svc.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus {
            ingress: (is_lb && !s.load_balancer_ingress.is_empty()).then(|| {
                s.load_balancer_ingress
                    .iter()
                    .map(|ip| LoadBalancerIngress {
                        ip: Some(ip.to_string()),
                        ip_mode: Some("VIP".into()),
                        ..Default::default()
                    })
                    .collect()
            }),
        }),
        conditions: None,
    });
    svc
}

/// `kubectl get services -o json`.
pub fn services_json(st: &LabState) -> serde_json::Value {
    list(
        st.services
            .values()
            .map(|s| {
                with_type_meta(
                    serde_json::to_value(service_object(s)).unwrap_or_default(),
                    "v1",
                    "Service",
                )
            })
            .collect(),
    )
}

/// The name of the `index`-th EndpointSlice of `svc`: `<svc>-<5 chars>`,
/// as the controller's generateName makes it, the characters derived from
/// the Service and the slice's ports so a slice keeps its name.
pub fn slice_name(svc: &LabService, slice: &EndpointSlice, index: usize) -> String {
    // generateName's prefix is cut to leave room for the suffix in 63.
    let mut prefix = format!("{}-", svc.name);
    prefix.truncate(58);
    let ports: String = slice
        .ports
        .iter()
        .flatten()
        .map(|p| {
            format!(
                "{}:{}/{};",
                p.name.as_deref().unwrap_or(""),
                p.port.unwrap_or(0),
                p.protocol.as_deref().unwrap_or("TCP")
            )
        })
        .collect();
    let first = slice
        .endpoints
        .first()
        .and_then(|e| e.addresses.first())
        .map(String::as_str)
        .unwrap_or_default();
    let suffix = manifest::stable_suffix(&[
        svc.namespace.as_bytes(),
        b"\0",
        svc.name.as_bytes(),
        b"\0",
        ports.as_bytes(),
        b"\0",
        // Chunks of one port set are told apart by their first address.
        if index == 0 { b"" } else { first.as_bytes() },
    ]);
    format!("{prefix}{suffix}")
}

/// Every Service's EndpointSlices as the EndpointSlice controller would
/// write them now (one per Service unless pods map a named port
/// differently, or there are more than 100 endpoints): the agent's
/// controller ([`derive_endpoint_slices`], what the lab's agents derive),
/// under the names and manager Kubernetes' own controller gives them.
pub fn endpoint_slices(st: &LabState) -> Vec<EndpointSlice> {
    let pods: Vec<Pod> = st.pods.values().map(pod_object).collect();
    let mut out = Vec::new();
    for s in st.services.values() {
        let derived = derive_endpoint_slices(&service_object(s), &pods);
        for (i, mut slice) in derived.into_iter().enumerate() {
            let mut labels = BTreeMap::new();
            labels.insert(SERVICE_NAME_LABEL.to_string(), s.name.clone());
            labels.insert(
                "endpointslice.kubernetes.io/managed-by".to_string(),
                "endpointslice-controller.k8s.io".to_string(),
            );
            slice.metadata = ObjectMeta {
                name: Some(slice_name(s, &slice, i)),
                namespace: Some(s.namespace.clone()),
                generate_name: Some(format!("{}-", s.name)),
                labels: Some(labels),
                ..Default::default()
            };
            out.push(slice);
        }
    }
    out
}

/// `kubectl get endpointslices -o json`.
pub fn endpoint_slices_json(st: &LabState) -> serde_json::Value {
    list(
        endpoint_slices(st)
            .into_iter()
            .map(|e| {
                with_type_meta(
                    serde_json::to_value(e).unwrap_or_default(),
                    "discovery.k8s.io/v1",
                    "EndpointSlice",
                )
            })
            .collect(),
    )
}

/// `kubectl get services [-o wide]`.
pub fn services_table(st: &LabState, wide: bool) -> String {
    let mut header = vec![
        "NAMESPACE",
        "NAME",
        "TYPE",
        "CLUSTER-IP",
        "EXTERNAL-IP",
        "PORT(S)",
    ];
    if wide {
        header.push("SELECTOR");
    }
    let mut rows = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for s in st.services.values() {
        // kubectl's order: externalIPs, then the load balancer's ingress.
        let mut external: Vec<String> = s.external_ips.iter().map(|i| i.to_string()).collect();
        if s.type_ == ServiceType::LoadBalancer {
            external.extend(s.load_balancer_ingress.iter().map(|i| i.to_string()));
        }
        let external = if !external.is_empty() {
            external.join(",")
        } else if s.type_ == ServiceType::LoadBalancer {
            "<pending>".into()
        } else {
            "<none>".into()
        };
        let ports = s
            .ports
            .iter()
            .map(|p| match p.node_port {
                Some(n) => format!("{}:{n}/{}", p.port, protocol_str(p.protocol)),
                None => format!("{}/{}", p.port, protocol_str(p.protocol)),
            })
            .collect::<Vec<_>>()
            .join(",");
        let mut r = vec![
            s.namespace.clone(),
            s.name.clone(),
            s.type_.as_str().to_string(),
            s.cluster_ip
                .map(|i| i.to_string())
                .unwrap_or_else(|| "None".into()),
            external,
            if ports.is_empty() {
                "<none>".into()
            } else {
                ports
            },
        ];
        if wide {
            r.push(
                s.selector
                    .as_ref()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|| "<none>".into()),
            );
        }
        rows.push(r);
    }
    table(rows)
}

/// `kubectl get endpointslices`: addresses of up to three endpoints, as
/// kubectl prints them, with terminating ones marked.
pub fn endpoint_slices_table(st: &LabState) -> String {
    let mut rows = vec![
        vec!["NAMESPACE", "NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    ];
    for e in endpoint_slices(st) {
        let ports: Vec<String> = e
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.map(|n| n.to_string()))
            .collect();
        let mut eps: Vec<String> = e
            .endpoints
            .iter()
            .take(3)
            .map(|ep| {
                let addr = ep.addresses.join(",");
                let terminating = ep
                    .conditions
                    .as_ref()
                    .and_then(|c| c.terminating)
                    .unwrap_or(false);
                if terminating {
                    format!("{addr}(terminating)")
                } else {
                    addr
                }
            })
            .collect();
        if e.endpoints.len() > 3 {
            eps.push(format!("+ {} more...", e.endpoints.len() - 3));
        }
        rows.push(vec![
            e.metadata.namespace.clone().unwrap_or_default(),
            e.metadata.name.clone().unwrap_or_default(),
            e.address_type.clone(),
            if ports.is_empty() {
                "<unset>".into()
            } else {
                ports.join(",")
            },
            if eps.is_empty() {
                "<none>".into()
            } else {
                eps.join(",")
            },
        ]);
    }
    table(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{plan, ServiceRequest};
    use podswitch_agent::manifest::{parse_manifests, Object};

    fn lab_service(yaml: &str) -> LabService {
        let objects = parse_manifests(yaml, "t.yaml").unwrap();
        let Object::Service(svc) = &objects[0] else {
            panic!("not a Service")
        };
        let r = ServiceRequest::from_manifest(
            svc,
            "default",
            objects[0].name(),
            "2025-01-01T00:00:00Z",
        )
        .unwrap();
        plan(&BTreeMap::new(), vec![r])
            .unwrap()
            .into_values()
            .next()
            .unwrap()
    }

    #[test]
    fn service_object_has_defaults_allocations_and_ingress() {
        let s = lab_service(
            "apiVersion: v1\nkind: Service\nmetadata: {name: lb, labels: {team: a}}\nspec:\n  type: LoadBalancer\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http, appProtocol: http}]\nstatus:\n  loadBalancer: {ingress: [{ip: 203.0.113.9}]}\n",
        );
        let v = serde_json::to_value(service_object(&s)).unwrap();
        assert_eq!(v["metadata"]["labels"]["team"], "a");
        assert_eq!(v["metadata"]["creationTimestamp"], "2025-01-01T00:00:00Z");
        let spec = &v["spec"];
        assert_eq!(spec["clusterIP"], "10.96.1.0");
        assert_eq!(spec["clusterIPs"], json!(["10.96.1.0"]));
        assert_eq!(spec["ports"][0]["nodePort"], 30086);
        assert_eq!(spec["ports"][0]["protocol"], "TCP");
        assert_eq!(spec["ports"][0]["targetPort"], "http");
        assert_eq!(spec["ports"][0]["appProtocol"], "http");
        assert_eq!(spec["sessionAffinity"], "None");
        assert_eq!(spec["externalTrafficPolicy"], "Cluster");
        assert_eq!(spec["internalTrafficPolicy"], "Cluster");
        assert_eq!(spec["allocateLoadBalancerNodePorts"], true);
        assert_eq!(
            v["status"]["loadBalancer"]["ingress"][0]["ip"],
            "203.0.113.9"
        );
        // A ClusterIP Service has no external policy and an empty status.
        let c = lab_service(
            "apiVersion: v1\nkind: Service\nmetadata: {name: c}\nspec:\n  clusterIP: None\n  selector: {app: web}\n",
        );
        let v = serde_json::to_value(service_object(&c)).unwrap();
        assert_eq!(v["spec"]["clusterIP"], "None");
        assert!(v["spec"].get("externalTrafficPolicy").is_none());
        assert!(v["spec"].get("ports").is_none());
        assert_eq!(v["status"], json!({"loadBalancer": {}}));
    }
}
