//! Translation tests on objects shaped as `kubectl get -o json` prints
//! them (agent/tests-data/kubernetes/*.json) and on small inline ones.

use std::net::Ipv4Addr;

use podswitch_switch::control::api::{
    ClusterMode, EndpointSpec, Mac, Protocol, RemoteNode, Request, ServiceSettings, ServiceSpec,
};
use podswitch_switch::tables::maglev::DEFAULT_TABLE_SIZE;
use podswitch_switch::tables::services::{NodeView, ServiceTable};
use serde_json::json;

use super::*;

fn fixture(name: &str) -> ClusterObjects {
    let path = format!(
        "{}/tests-data/kubernetes/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut objects = ClusterObjects::default();
    objects
        .insert_json(serde_json::from_str(&text).expect("fixture is JSON"))
        .expect("fixture decodes");
    objects
}

fn config() -> TranslateConfig {
    TranslateConfig {
        node_name: "node-1".into(),
        settings: ServiceSettings::default(),
    }
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn ep(addr: &str, port: u16, node: Option<&str>, ready: bool, terminating: bool) -> EndpointSpec {
    EndpointSpec {
        ip: ip(addr),
        port,
        node: node.map(str::to_owned),
        ready,
        terminating,
        serving: None,
    }
}

/// (kind, namespace/name, field, outcome) of every problem.
fn problem_list(t: &NodeTopology) -> Vec<(ObjectKind, String, String, Outcome)> {
    t.problems
        .iter()
        .map(|p| {
            let name = match &p.object.namespace {
                Some(ns) => format!("{ns}/{}", p.object.name),
                None => p.object.name.clone(),
            };
            (
                p.object.kind,
                name,
                p.field.clone().unwrap_or_default(),
                p.outcome,
            )
        })
        .collect()
}

/// The switch's own validation of a service table must pass for anything
/// translation emits, or one bad object would hold back every other.
fn assert_switch_accepts(t: &NodeTopology) {
    let node_ip = t.local_node.as_ref().and_then(|n| n.underlay_ipv4);
    let node = NodeView {
        name: "node-1",
        node_ip,
        node_port_ips: node_ip.as_slice(),
        gateway_ip: ip("10.244.1.1"),
        mode: ClusterMode::Native,
        maglev_size: DEFAULT_TABLE_SIZE,
    };
    if let Err(e) = ServiceTable::build(t.services.values(), &t.settings, &node) {
        panic!("the switch refuses the translated services: {e}");
    }
}

#[test]
fn cluster_fixture_gives_remote_nodes_with_their_vtep_macs() {
    let t = translate(&fixture("cluster.json"), &config());
    let local = t.local_node.as_ref().expect("node-1 is in the fixture");
    assert_eq!(local.underlay_ipv4, Some(ip("192.168.56.11")));
    assert_eq!(local.pod_cidrs, ["10.244.1.0/24".parse().unwrap()]);
    let vtep = |s: &str| Some(s.parse::<Mac>().unwrap());
    assert_eq!(
        t.remote_nodes,
        [
            RemoteNode {
                name: "node-2".into(),
                underlay_ipv4: ip("192.168.56.12"),
                pod_cidrs: vec!["10.244.2.0/24".parse().unwrap()],
                // flannel's backend-data annotation.
                vtep_mac: vtep("8e:1c:2a:51:7d:10"),
            },
            RemoteNode {
                name: "node-3".into(),
                underlay_ipv4: ip("192.168.56.13"),
                pod_cidrs: vec!["10.244.3.0/24".parse().unwrap()],
                // podswitch's own annotation.
                vtep_mac: vtep("02:56:c0:a8:38:0d"),
            },
            RemoteNode {
                name: "node-4".into(),
                underlay_ipv4: ip("192.168.56.14"),
                pod_cidrs: vec!["10.244.4.0/24".parse().unwrap()],
                // No annotation: the switch's default for that underlay.
                vtep_mac: Some(Mac::for_vtep(ip("192.168.56.14"))),
            },
        ]
    );
}

#[test]
fn several_ports_named_ports_and_several_slices_per_service() {
    let t = translate(&fixture("cluster.json"), &config());
    let web = &t.services["shop/web"];
    assert_eq!(web.cluster_ips, [ip("10.96.12.40")]);
    assert!(web.external_traffic_local, "externalTrafficPolicy: Local");
    assert!(!web.internal_traffic_local);
    assert_eq!(web.affinity_timeout_secs, None);
    let ports: Vec<(&str, Protocol, u16, Option<u16>)> = web
        .ports
        .iter()
        .map(|p| (p.name.as_str(), p.protocol, p.port, p.node_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("http", Protocol::Tcp, 80, Some(30080)),
            ("metrics", Protocol::Tcp, 9090, Some(30090)),
            ("dns", Protocol::Udp, 53, Some(30053)),
        ]
    );
    // `http` is a named targetPort: one slice's pods have it on 8080, the
    // other's on 80; both slices are merged, sorted by address.
    assert_eq!(
        web.ports[0].endpoints,
        [
            ep("10.244.1.5", 8080, Some("node-1"), true, false),
            // Terminating but still serving: the fallback when no
            // endpoint of the port is ready (KEP-1669).
            EndpointSpec {
                serving: Some(true),
                ..ep("10.244.1.6", 8080, Some("node-1"), false, true)
            },
            ep("10.244.2.7", 80, Some("node-2"), true, false),
            ep("10.244.2.9", 8080, Some("node-2"), false, false),
            ep("10.244.3.4", 80, Some("node-3"), true, false),
        ]
    );
    let metrics: Vec<u16> = web.ports[1].endpoints.iter().map(|e| e.port).collect();
    assert_eq!(metrics, [9091; 5]);
    // Only the first slice's pods have a `dns` port.
    let dns: Vec<(Ipv4Addr, u16)> = web.ports[2]
        .endpoints
        .iter()
        .map(|e| (e.ip, e.port))
        .collect();
    assert_eq!(
        dns,
        [
            (ip("10.244.1.5"), 5353),
            (ip("10.244.1.6"), 5353),
            (ip("10.244.2.9"), 5353)
        ]
    );
}

#[test]
fn affinity_traffic_policies_load_balancers_and_manual_slices() {
    let t = translate(&fixture("cluster.json"), &config());
    let db = &t.services["shop/db"];
    assert_eq!(db.affinity_timeout_secs, Some(3600));
    assert!(db.internal_traffic_local && !db.external_traffic_local);
    assert_eq!(
        db.ports[0].endpoints,
        [ep("10.244.2.11", 5432, Some("node-2"), true, false)]
    );

    // externalIPs, then the ingress IPs whose ipMode is not Proxy.
    let edge = &t.services["shop/edge"];
    assert_eq!(edge.external_ips, [ip("203.0.113.10"), ip("198.51.100.20")]);
    assert_eq!(edge.ports[0].node_port, Some(31443));
    assert!(edge.ports[0].endpoints.is_empty());

    // The `kubernetes` Service: no selector, a slice written by hand.
    let api = &t.services["default/kubernetes"];
    assert_eq!(
        api.ports[0].endpoints,
        [ep("192.168.56.10", 6443, None, true, false)]
    );

    // Dual-stack: the IPv4 half only, the IPv6 slice ignored.
    let dual = &t.services["shop/dual"];
    assert_eq!(dual.cluster_ips, [ip("10.96.50.5")]);
    assert_eq!(dual.ports[0].name, "");
    assert_eq!(
        dual.ports[0].endpoints,
        [ep("10.244.1.30", 8080, Some("node-1"), true, false)]
    );

    // SCTP: that port is left out, the UDP one stays.
    let diameter = &t.services["shop/diameter"];
    assert_eq!(diameter.ports.len(), 1);
    assert_eq!(
        (diameter.ports[0].protocol, diameter.ports[0].port),
        (Protocol::Udp, 1812)
    );
    assert_eq!(
        t.services.keys().collect::<Vec<_>>(),
        [
            "default/kubernetes",
            "shop/db",
            "shop/diameter",
            "shop/dual",
            "shop/edge",
            "shop/web"
        ]
    );
    assert_switch_accepts(&t);
}

#[test]
fn cluster_fixture_reports_what_it_skipped_and_this_nodes_pods() {
    let t = translate(&fixture("cluster.json"), &config());
    use ObjectKind::*;
    use Outcome::*;
    let s = |k, n: &str, f: &str, o| (k, n.to_string(), f.to_string(), o);
    assert_eq!(
        problem_list(&t),
        [
            s(Pod, "shop/stray-5f6d7c8b9-zzzzz", "status.podIPs", Warning),
            s(Service, "shop/db-headless", "spec.clusterIP", Skipped),
            s(
                Service,
                "shop/diameter",
                "spec.ports[0].protocol",
                PartlyApplied
            ),
            s(Service, "shop/docs", "spec.type", Skipped),
            s(Service, "shop/edge", "spec.selector", Warning),
        ]
    );
    let reasons: Vec<String> = t.problems.iter().map(|p| p.to_string()).collect();
    assert!(reasons[1].contains("headless"), "{reasons:?}");
    assert!(reasons[2].contains("\"SCTP\""), "{reasons:?}");
    assert!(reasons[3].contains("ExternalName"), "{reasons:?}");
    assert!(reasons[4].contains("matches no pods"), "{reasons:?}");

    let pods: Vec<(&str, Option<Ipv4Addr>, bool)> = t
        .local_pods
        .iter()
        .map(|p| (p.name.as_str(), p.ipv4, p.host_network))
        .collect();
    assert_eq!(
        pods,
        [
            (
                "kube-system/podswitch-8h2kd",
                Some(ip("192.168.56.11")),
                true
            ),
            ("shop/stray-5f6d7c8b9-zzzzz", Some(ip("10.244.9.9")), false),
            ("shop/web-7c9d5b8f4-abcde", Some(ip("10.244.1.5")), false),
        ]
    );
}

#[test]
fn bad_objects_are_reported_and_left_out_without_holding_back_good_ones() {
    let t = translate(&fixture("bad-objects.json"), &config());
    use ObjectKind::*;
    use Outcome::*;
    let s = |k, n: &str, f: &str, o| (k, n.to_string(), f.to_string(), o);
    assert_eq!(
        problem_list(&t),
        [
            s(Node, "node-5", "spec.podCIDRs[0]", Rejected),
            s(Node, "node-6", "spec.podCIDRs", Rejected),
            s(
                Node,
                "node-7",
                "metadata.annotations[podswitch.io/vtep-mac]",
                PartlyApplied
            ),
            s(Node, "node-8", "spec.podCIDRs", Skipped),
            s(Service, "shop/bad-ip", "spec.clusterIPs[0]", Rejected),
            s(Service, "shop/huge-port", "spec.ports", Rejected),
            s(
                Service,
                "shop/huge-port",
                "spec.ports[0].port",
                PartlyApplied
            ),
            s(Service, "shop/nobody", "spec.selector", Warning),
            s(Service, "shop/outside", "spec.clusterIPs[0]", Rejected),
            s(
                Service,
                "shop/policy",
                "spec.externalTrafficPolicy",
                Rejected
            ),
            s(Service, "shop/thief", "spec.externalIPs", PartlyApplied),
            s(
                EndpointSlice,
                "shop/good-a1b2c",
                "endpoints[1].addresses[0]",
                PartlyApplied
            ),
            s(
                EndpointSlice,
                "shop/good-d3e4f",
                "ports[0].port",
                PartlyApplied
            ),
        ]
    );
    let text = |name: &str, field: &str| {
        t.problems
            .iter()
            .find(|p| p.object.name == name && p.field.as_deref() == Some(field))
            .map(|p| p.to_string())
            .unwrap()
    };
    assert!(text("node-5", "spec.podCIDRs[0]").contains("10.244.5.0/33"));
    assert!(text("node-6", "spec.podCIDRs").contains("overlaps the pod CIDR of this node"));
    assert!(text("huge-port", "spec.ports[0].port").contains("70000"));
    assert!(text("outside", "spec.clusterIPs[0]").contains("outside the service CIDRs"));
    assert!(text("thief", "spec.externalIPs").contains("already belongs to Service shop/good"));

    // The good ones are all there.
    assert_eq!(
        t.remote_nodes.iter().map(|n| &n.name).collect::<Vec<_>>(),
        ["node-7"]
    );
    assert_eq!(
        t.remote_nodes[0].vtep_mac,
        Some(Mac::for_vtep(ip("192.168.56.17")))
    );
    assert_eq!(
        t.services.keys().collect::<Vec<_>>(),
        ["shop/good", "shop/nobody", "shop/thief"]
    );
    assert_eq!(
        t.services["shop/good"].ports[0].endpoints,
        [ep("10.244.1.40", 8080, Some("node-1"), true, false)]
    );
    assert!(t.services["shop/thief"].external_ips.is_empty());
    assert_switch_accepts(&t);
}

fn svc(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "ns", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": spec,
    })
}

fn slice(
    name: &str,
    service: &str,
    ports: serde_json::Value,
    eps: serde_json::Value,
) -> serde_json::Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name, "namespace": "ns", "labels": {"kubernetes.io/service-name": service}},
        "ports": ports, "endpoints": eps,
    })
}

/// `items` and this node's Node.
fn objects(mut items: Vec<serde_json::Value>) -> ClusterObjects {
    items.push(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": "node-1"},
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {"addresses": [{"type": "InternalIP", "address": "192.168.56.11"}]},
    }));
    objects_without_node(items)
}

fn objects_without_node(items: Vec<serde_json::Value>) -> ClusterObjects {
    let mut o = ClusterObjects::default();
    o.insert_json(json!({"apiVersion": "v1", "kind": "List", "items": items}))
        .unwrap();
    o
}

#[test]
fn affinity_defaults_to_three_hours_and_bad_values_are_refused() {
    let t = translate(
        &objects(vec![
            svc(
                "a",
                json!({"clusterIP": "10.96.0.10", "sessionAffinity": "ClientIP", "ports": [{"port": 80}]}),
            ),
            svc(
                "b",
                json!({"clusterIP": "10.96.0.11", "sessionAffinity": "ClientIP",
                "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 0}}, "ports": [{"port": 80}]}),
            ),
            svc(
                "c",
                json!({"clusterIP": "10.96.0.12", "sessionAffinity": "Sticky", "ports": [{"port": 80}]}),
            ),
        ]),
        &config(),
    );
    assert_eq!(
        t.services["ns/a"].affinity_timeout_secs,
        Some(services::DEFAULT_AFFINITY_TIMEOUT_SECS)
    );
    assert_eq!(t.services.len(), 1);
    assert!(matches!(
        t.problems[0].reason,
        Reason::InvalidAffinityTimeout { value: 0 }
    ));
    assert!(matches!(
        t.problems[1].reason,
        Reason::UnknownSessionAffinity { .. }
    ));
}

#[test]
fn an_endpoint_in_two_slices_counts_once_and_ready_wins() {
    // While the controller moves an endpoint between slices it is briefly
    // in both.
    let t = translate(
        &objects(vec![
            svc(
                "a",
                json!({"clusterIP": "10.96.0.10", "selector": {"app": "a"}, "ports": [{"name": "http", "port": 80}]}),
            ),
            slice(
                "a-1",
                "a",
                json!([{"name": "http", "port": 8080}]),
                json!([{"addresses": ["10.244.1.2"], "conditions": {"ready": false}}]),
            ),
            slice(
                "a-2",
                "a",
                json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
                json!([{"addresses": ["10.244.1.2"], "conditions": {"ready": true}},
                       {"addresses": ["10.244.1.3"]}]),
            ),
            // A slice of another Service, and one of no Service: not a's.
            slice(
                "b-1",
                "b",
                json!([{"name": "http", "port": 9}]),
                json!([{"addresses": ["10.244.1.9"]}]),
            ),
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                   "metadata": {"name": "custom", "namespace": "ns"},
                   "ports": [{"name": "http", "port": 7}], "endpoints": [{"addresses": ["10.244.1.7"]}]}),
        ]),
        &config(),
    );
    assert_eq!(
        t.services["ns/a"].ports[0].endpoints,
        // Conditions left out mean ready and not terminating.
        [
            ep("10.244.1.2", 8080, None, true, false),
            ep("10.244.1.3", 8080, None, true, false)
        ]
    );
    assert!(t.problems.is_empty(), "{:?}", t.problems);
}

#[test]
fn endpoint_ports_are_matched_by_name_and_protocol() {
    let t = translate(
        &objects(vec![
            svc(
                "a",
                json!({"clusterIP": "10.96.0.10", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP"},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}),
            ),
            slice(
                "a-1",
                "a",
                json!([
                {"name": "dns-tcp", "port": 5353, "protocol": "TCP"},
                {"name": "dns", "port": 5353, "protocol": "UDP"},
                {"name": "dns", "port": 6000, "protocol": "TCP"}]),
                json!([{"addresses": ["10.244.1.2"]}]),
            ),
        ]),
        &config(),
    );
    let a = &t.services["ns/a"];
    assert_eq!(
        (a.ports[0].protocol, a.ports[0].endpoints[0].port),
        (Protocol::Udp, 5353)
    );
    assert_eq!(
        (a.ports[1].protocol, a.ports[1].endpoints[0].port),
        (Protocol::Tcp, 5353)
    );
}

#[test]
fn node_ports_outside_the_range_and_contested_frontends() {
    let t = translate(
        &objects(vec![
            svc(
                "old",
                json!({"clusterIP": "10.96.0.10", "type": "NodePort", "ports": [{"port": 80, "nodePort": 30000}]}),
            ),
            // Same NodePort, created later: loses the NodePort only.
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "new", "namespace": "ns", "creationTimestamp": "2025-06-01T00:00:00Z"},
                   "spec": {"clusterIP": "10.96.0.11", "type": "NodePort",
                            "ports": [{"port": 80, "nodePort": 30000}, {"name": "b", "port": 81, "nodePort": 8080}]}}),
            // Same cluster IP and port as `old` (a stale object): left out.
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": "twin", "namespace": "ns", "creationTimestamp": "2025-06-02T00:00:00Z"},
                   "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}),
            // An external IP equal to its own cluster IP is no clash.
            svc(
                "self",
                json!({"clusterIP": "10.96.0.12", "externalIPs": ["10.96.0.12", "127.0.0.1", "bogus"], "ports": [{"port": 80}]}),
            ),
        ]),
        &config(),
    );
    assert_eq!(t.services["ns/old"].ports[0].node_port, Some(30000));
    assert_eq!(t.services["ns/new"].ports[0].node_port, None);
    assert_eq!(t.services["ns/new"].ports[1].node_port, None);
    assert!(!t.services.contains_key("ns/twin"));
    assert!(t.services["ns/self"].external_ips.is_empty());
    let reasons: Vec<(&str, &Reason)> = t
        .problems
        .iter()
        .map(|p| (p.object.name.as_str(), &p.reason))
        .collect();
    assert!(
        matches!(reasons[0], ("new", Reason::FrontendTaken { .. })),
        "{reasons:?}"
    );
    assert!(
        matches!(
            reasons[1],
            ("new", Reason::NodePortOutsideRange { port: 8080, .. })
        ),
        "{reasons:?}"
    );
    assert!(
        matches!(reasons[2], ("self", Reason::UnusableExternalIp { .. })),
        "{reasons:?}"
    );
    assert!(
        matches!(reasons[3], ("self", Reason::InvalidIp { .. })),
        "{reasons:?}"
    );
    assert!(
        matches!(reasons[4], ("twin", Reason::FrontendTaken { .. })),
        "{reasons:?}"
    );
    assert_switch_accepts(&t);
}

#[test]
fn a_missing_local_node_is_a_warning_and_ipv6_only_services_are_skipped() {
    let t = translate(
        &objects_without_node(vec![svc(
            "v6",
            json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10"], "ports": [{"port": 80}]}),
        )]),
        &config(),
    );
    assert!(t.services.is_empty());
    let list = problem_list(&t);
    assert_eq!(
        list,
        [
            (
                ObjectKind::Node,
                "node-1".into(),
                String::new(),
                Outcome::Warning
            ),
            (
                ObjectKind::Service,
                "ns/v6".into(),
                "spec.clusterIPs".into(),
                Outcome::Skipped
            ),
        ]
    );
}

#[test]
fn decode_errors_name_the_object_and_field() {
    let mut o = ClusterObjects::default();
    let e = o
        .insert_json(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "x"}, "spec": {"ports": [{"port": "eighty"}]}}))
        .unwrap_err();
    let text = e.to_string();
    assert!(text.contains("Service \"x\""), "{text}");
    assert!(text.contains("spec.ports[0].port"), "{text}");
    assert_eq!(
        o.insert_json(
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}})
        )
        .unwrap(),
        0
    );
}

// ---------------------------------------------------------------------------
// Diff

fn spec(name: &str, endpoint: &str) -> ServiceSpec {
    let t = translate(
        &objects(vec![
            svc(
                name,
                json!({"clusterIP": format!("10.96.0.{}", name.len()), "ports": [{"port": 80}]}),
            ),
            slice(
                &format!("{name}-1"),
                name,
                json!([{"port": 80}]),
                json!([{"addresses": [endpoint]}]),
            ),
        ]),
        &config(),
    );
    t.services.values().next().unwrap().clone()
}

fn state(services: &[ServiceSpec], nodes: &[&str]) -> NodeTopology {
    let mut t = NodeTopology::empty(ServiceSettings::default());
    t.services = services
        .iter()
        .map(|s| (s.name.clone(), s.clone()))
        .collect();
    t.remote_nodes = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| RemoteNode {
            name: n.to_string(),
            underlay_ipv4: Ipv4Addr::new(192, 168, 56, 20 + i as u8),
            pod_cidrs: vec![format!("10.244.{}.0/24", 20 + i).parse().unwrap()],
            vtep_mac: None,
        })
        .collect();
    t
}

#[test]
fn diff_upserts_new_and_changed_services_and_removes_gone_ones() {
    let a = spec("a", "10.244.1.2");
    let b = spec("bb", "10.244.1.3");
    let b2 = spec("bb", "10.244.1.4");
    let c = spec("ccc", "10.244.1.5");
    let old = state(&[a.clone(), b.clone()], &["node-2"]);
    let new = state(&[b2.clone(), c.clone()], &["node-2"]);
    let patch = diff(&old, &new);
    assert_eq!(patch.remote_nodes, None);
    assert_eq!(patch.upsert, [b2.clone(), c.clone()]);
    assert_eq!(patch.remove, ["ns/a"]);
    assert_eq!(
        patch.requests(),
        [Request::PatchServices(podswitch_api::PatchServicesArgs {
            upsert: vec![b2, c],
            remove: vec!["ns/a".into()]
        })]
    );
    assert!(diff(&new, &new).is_empty());
    assert!(diff(&new, &new).requests().is_empty());
    assert!(!needs_full_sync(&old, &new));
}

#[test]
fn diff_sends_the_whole_node_list_when_it_changes() {
    let old = state(&[], &["node-2"]);
    let new = state(&[], &["node-2", "node-3"]);
    let patch = diff(&old, &new);
    assert_eq!(patch.remote_nodes.as_ref(), Some(&new.remote_nodes));
    assert_eq!(
        patch.requests(),
        [Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs {
            nodes: new.remote_nodes.clone()
        })]
    );
    let full = new.full_sync().requests();
    assert_eq!(full.len(), 2);
    assert!(
        matches!(&full[0], Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs { nodes }) if nodes.len() == 2)
    );
    assert!(
        matches!(&full[1], Request::SetServices(podswitch_api::SetServicesArgs { settings: Some(_), services }) if services.is_empty())
    );
    let mut other = new.clone();
    other.settings.masquerade = false;
    assert!(needs_full_sync(&new, &other));
}

#[test]
fn applying_the_diff_to_the_old_services_gives_the_new_ones() {
    let t1 = translate(&fixture("cluster.json"), &config());
    let t2 = translate(&fixture("bad-objects.json"), &config());
    for (old, new) in [(&t1, &t2), (&t2, &t1)] {
        let patch = diff(old, new);
        let mut services = old.services.clone();
        for name in &patch.remove {
            services.remove(name);
        }
        for s in &patch.upsert {
            services.insert(s.name.clone(), s.clone());
        }
        assert_eq!(&services, &new.services);
    }
}

proptest::proptest! {
    /// Whatever the Services say (ports out of range, unknown protocols,
    /// shared cluster IPs, external IPs and NodePorts), what translation
    /// emits is a table the switch accepts.
    #[test]
    fn the_switch_accepts_whatever_translation_emits(
        services in proptest::collection::vec(
            (
                0u8..6,                                       // cluster IP (shared often)
                proptest::collection::vec(
                    (-2i32..70000, 0usize..4, proptest::option::of(29990i32..32800)),
                    1..4,
                ),
                proptest::option::of(0u8..6),                // external IP
                0u8..3,                                       // type
            ),
            1..12,
        )
    ) {
        let protocols = ["TCP", "UDP", "SCTP", "ICMP"];
        let types = ["ClusterIP", "NodePort", "LoadBalancer"];
        let items: Vec<serde_json::Value> = services
            .iter()
            .enumerate()
            .map(|(i, (cip, ports, ext, ty))| {
                let ports: Vec<serde_json::Value> = ports
                    .iter()
                    .enumerate()
                    .map(|(j, (port, proto, np))| json!({
                        "name": format!("p{j}"), "port": port, "protocol": protocols[*proto], "nodePort": np,
                    }))
                    .collect();
                let mut spec = json!({
                    "clusterIP": format!("10.96.0.{}", 10 + cip), "type": types[*ty as usize], "ports": ports,
                });
                if let Some(e) = ext {
                    spec["externalIPs"] = json!([format!("10.96.0.{}", 10 + e)]);
                }
                svc(&format!("s{i}"), spec)
            })
            .collect();
        let t = translate(&objects(items), &config());
        assert_switch_accepts(&t);
    }
}
