//! `lab get`: the lab's pods and nodes as kubectl shows them, as tables or
//! as a Kubernetes `List` with status filled in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, Node, NodeAddress, NodeCondition, NodeSpec, NodeStatus, Pod, PodIP,
    PodSpec, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde_json::json;

use super::cluster::{pid_alive, LabState, NodeState, PodState};

fn time(s: &str) -> Option<Time> {
    serde_json::from_value(json!(s)).ok()
}

fn phase(p: &PodState) -> &'static str {
    match p.workload_pid {
        Some(pid) if pid_alive(pid) => "Running",
        _ => "Failed",
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
            if ph == "Running" { "1/1" } else { "0/1" }.to_string(),
            ph.to_string(),
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
