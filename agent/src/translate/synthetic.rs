//! Synthetic clusters of real-shaped objects, for the benches and the
//! measured tests (`benches/agent.rs`, `tests/lab_agent.rs`): `n`
//! ClusterIP Services with one EndpointSlice each.

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::{ClusterObjects, SERVICE_NAME_LABEL};

/// The `i`-th Service's cluster IP: 10.96.1.0 upwards (above the static
/// band, as the lab allocates).
pub fn cluster_ip(i: usize) -> String {
    let n = 256 + i as u32;
    format!("10.96.{}.{}", (n >> 8) & 0xff, n & 0xff)
}

/// Service `svc-<i>` in namespace `bench`, port 80 (`http`) to target 8080.
pub fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": format!("svc-{i}"), "namespace": "bench",
            "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip(i), "clusterIPs": [cluster_ip(i)],
            "selector": {"app": format!("svc-{i}")},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]},
    }))
    .expect("a valid Service")
}

/// The EndpointSlice of `svc-<i>`: `endpoints` ready pods of `node`
/// (addresses in 10.244.1.0/24). `generation` goes into the resourceVersion and shifts the addresses,
/// so successive generations differ.
pub fn slice(i: usize, endpoints: usize, node: &str, generation: u64) -> EndpointSlice {
    let eps: Vec<serde_json::Value> = (0..endpoints)
        .map(|j| {
            let host = 2 + (i * 7 + j + generation as usize) % 250;
            json!({"addresses": [format!("10.244.1.{host}")],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node,
                "targetRef": {"kind": "Pod", "namespace": "bench", "name": format!("svc-{i}-{j}")}})
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": format!("svc-{i}-abcde"), "namespace": "bench",
            "resourceVersion": format!("{}", 2 + generation),
            "labels": {SERVICE_NAME_LABEL: format!("svc-{i}"),
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    }))
    .expect("a valid EndpointSlice")
}

/// This node: `name`, pod CIDR 10.244.1.0/24, InternalIP `underlay`.
pub fn node(name: &str, underlay: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": underlay}]},
    }))
    .expect("a valid Node")
}

/// A cluster of `services` Services with `endpoints` endpoints each, on
/// one node.
pub fn cluster(services: usize, endpoints: usize, node_name: &str) -> ClusterObjects {
    let mut o = ClusterObjects::default();
    o.nodes
        .insert(node_name.to_owned(), node(node_name, "198.18.0.1"));
    for i in 0..services {
        o.services.insert(format!("bench/svc-{i}"), service(i));
        o.endpoint_slices.insert(
            format!("bench/svc-{i}-abcde"),
            slice(i, endpoints, node_name, 0),
        );
    }
    o
}
