//! Services in the lab, control plane only: the API server's ClusterIP and
//! NodePort allocation, the EndpointSlice controller (named target ports
//! resolved per pod), the service table every node's switch gets, and
//! graceful pod deletion that lets Services drain.
//!
//! ```text
//!   node-1 switch  <- set_services -+- lab apply / delete
//!   node-2 switch  <- set_services -+
//!   Deployment store (3 pods: TCP 80 "http", UDP 9000 "echo")
//!   Services store (8080->80), store-multi (http, echo by name),
//!            store-np (NodePort 30080), store-lb (LoadBalancer, 203.0.113.100)
//! ```

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use podswitch_lab::cluster::Lab;
use podswitch_switch::control::api::{Protocol, ServiceSpec};
use serde_json::Value;

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn json(lab: &TestLab, args: &[&str]) -> Value {
    serde_json::from_str(&lab.run_ok(args)).expect("JSON output")
}

/// `get svc -o json` items by name.
fn services(lab: &TestLab) -> BTreeMap<String, Value> {
    let v = json(lab, &["get", "svc", "-o", "json"]);
    assert_eq!(v["kind"], "List", "{v}");
    v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| {
            (
                s["metadata"]["name"].as_str().unwrap().to_string(),
                s.clone(),
            )
        })
        .collect()
}

/// What a node's switch holds: `ctl services -o json`.
fn switch_services(lab: &TestLab, node: &str) -> Value {
    let out = podswitch_ok(&["ctl", "-s", &lab.socket(node), "services", "-o", "json"]);
    serde_json::from_str(&out).expect("services JSON")
}

fn switch_specs(lab: &TestLab, node: &str) -> Vec<ServiceSpec> {
    serde_json::from_value(switch_services(lab, node)["services"].clone()).expect("ServiceSpecs")
}

fn spec<'a>(specs: &'a [ServiceSpec], name: &str) -> &'a ServiceSpec {
    specs
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no {name} in {specs:?}"))
}

/// Pods whose name starts with `prefix`, as name -> (ip, node).
fn pods_named(lab: &TestLab, prefix: &str) -> BTreeMap<String, (String, String)> {
    lab.pods_with_nodes()
        .into_iter()
        .filter(|(n, _, _)| n.starts_with(prefix))
        .map(|(n, ip, node)| (n, (ip, node)))
        .collect()
}

fn in_service_cidr(ip: &str) -> bool {
    let ip: Ipv4Addr = ip.parse().expect("IPv4");
    u32::from(ip) & 0xfff0_0000 == u32::from(Ipv4Addr::new(10, 96, 0, 0))
        && ip != Ipv4Addr::new(10, 96, 0, 0)
        && ip != Ipv4Addr::new(10, 96, 0, 1)
}

#[test]
fn services_are_allocated_resolved_pushed_and_drained() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up_with("svc", &["--nodes", "2"]);
    let out = lab.run_ok(&["apply", "-f", &fixture("services.yaml")]);
    assert_eq!(out.matches(" created").count(), 3, "{out}");
    let store_pods = pods_named(&lab, "store-");
    assert_eq!(store_pods.len(), 3);

    // --- The API server: allocation and defaults. ---
    let svcs = services(&lab);
    assert_eq!(
        svcs.keys().collect::<Vec<_>>(),
        ["store", "store-lb", "store-multi", "store-np"]
    );
    let mut ips = BTreeSet::new();
    for (name, s) in &svcs {
        assert_eq!(
            (&s["apiVersion"], &s["kind"]),
            (&"v1".into(), &"Service".into())
        );
        let ip = s["spec"]["clusterIP"].as_str().unwrap();
        assert!(in_service_cidr(ip), "{name}: {ip}");
        assert_eq!(s["spec"]["clusterIPs"], serde_json::json!([ip]), "{name}");
        assert!(ips.insert(ip.to_string()), "{name}: {ip} given twice");
    }
    let store = &svcs["store"]["spec"];
    assert_eq!(store["type"], "ClusterIP");
    assert_eq!(store["ports"][0]["port"], 8080);
    assert_eq!(store["ports"][0]["targetPort"], 80);
    assert_eq!(store["ports"][0]["protocol"], "TCP");
    assert!(store["ports"][0].get("nodePort").is_none(), "{store}");
    let multi = &svcs["store-multi"]["spec"];
    assert_eq!(multi["sessionAffinity"], "ClientIP");
    assert_eq!(
        multi["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"],
        10800
    );
    assert_eq!(multi["ports"][1]["targetPort"], "echo");
    assert_eq!(multi["ports"][1]["protocol"], "UDP");
    let np = &svcs["store-np"]["spec"];
    assert_eq!(np["type"], "NodePort");
    assert_eq!(np["ports"][0]["nodePort"], 30080);
    assert_eq!(np["externalTrafficPolicy"], "Local");
    let lb = &svcs["store-lb"];
    assert_eq!(lb["spec"]["type"], "LoadBalancer");
    let lb_node_port = lb["spec"]["ports"][0]["nodePort"].as_u64().unwrap();
    assert!(
        (30000..=32767).contains(&lb_node_port) && lb_node_port != 30080,
        "{lb_node_port}"
    );
    assert_eq!(
        lb["spec"]["externalIPs"],
        serde_json::json!(["203.0.113.100"])
    );
    assert_eq!(
        lb["status"]["loadBalancer"]["ingress"][0]["ip"],
        "203.0.113.101"
    );
    let table = lab.run_ok(&["get", "svc"]);
    assert!(table.contains("80:30080/TCP"), "{table}");
    assert!(table.contains("203.0.113.100,203.0.113.101"), "{table}");

    // Re-applying keeps every address and port (kubectl apply).
    let out = lab.run_ok(&["apply", "-f", &fixture("services.yaml")]);
    assert!(!out.contains("created"), "{out}");
    assert_eq!(services(&lab), svcs, "re-applying changed the Services");

    // --- The EndpointSlice controller. ---
    let slices = json(&lab, &["get", "endpointslices", "-o", "json"]);
    let items = slices["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{slices}");
    for slice in items {
        assert_eq!(slice["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(slice["kind"], "EndpointSlice");
        assert_eq!(slice["addressType"], "IPv4");
        let svc = slice["metadata"]["labels"]["kubernetes.io/service-name"]
            .as_str()
            .unwrap();
        let name = slice["metadata"]["name"].as_str().unwrap();
        let suffix = name.strip_prefix(&format!("{svc}-")).unwrap();
        assert_eq!(suffix.len(), 5, "{name}");
        let endpoints = slice["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), 3, "{slice}");
        for e in endpoints {
            let pod = e["targetRef"]["name"].as_str().unwrap();
            assert_eq!(e["targetRef"]["kind"], "Pod");
            let (ip, node) = &store_pods[pod];
            assert_eq!(e["addresses"], serde_json::json!([ip]));
            assert_eq!(&e["nodeName"], node);
            assert_eq!(
                e["conditions"],
                serde_json::json!({"ready": true, "serving": true, "terminating": false})
            );
        }
        let ports: Vec<(String, String, u64)> = slice["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["protocol"].as_str().unwrap().to_string(),
                    p["port"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(&str, &str, u64)> = match svc {
            "store" => vec![("", "TCP", 80)],
            "store-multi" => vec![("echo", "UDP", 9000), ("http", "TCP", 80)],
            _ => vec![("http", "TCP", 80)],
        };
        let mut ports = ports;
        ports.sort();
        let want: Vec<(String, String, u64)> = want
            .into_iter()
            .map(|(a, b, c)| (a.into(), b.into(), c))
            .collect();
        assert_eq!(ports, want, "{svc}");
    }

    // --- Every switch holds the same table: what the lab computes. ---
    let st = Lab::new(&lab.name, exe())
        .unwrap()
        .state()
        .unwrap()
        .expect("lab state");
    let expected = podswitch_lab::agents::service_specs(&st, "node-1");
    for node in ["node-1", "node-2"] {
        assert_eq!(podswitch_lab::agents::service_specs(&st, node), expected);
        let held = switch_services(&lab, node);
        assert_eq!(
            held["settings"]["service_cidrs"],
            serde_json::json!(["10.96.0.0/12"])
        );
        assert_eq!(
            held["settings"]["cluster_cidrs"],
            serde_json::json!(["10.244.0.0/16"])
        );
        assert_eq!(
            held["settings"]["node_port_range"],
            serde_json::json!([30000, 32767])
        );
        assert_eq!(switch_specs(&lab, node), expected, "{node}");
    }
    let s = spec(&expected, "default/store");
    assert_eq!(
        s.cluster_ips[0].to_string(),
        svcs["store"]["spec"]["clusterIP"].as_str().unwrap()
    );
    assert_eq!(s.ports[0].port, 8080);
    assert!(s.ports[0]
        .endpoints
        .iter()
        .all(|e| e.port == 80 && e.ready && !e.terminating));
    assert_eq!(s.ports[0].endpoints.len(), 3);
    let m = spec(&expected, "default/store-multi");
    assert_eq!(m.affinity_timeout_secs, Some(10800));
    assert_eq!(m.ports[1].protocol, Protocol::Udp);
    assert!(m.ports[1].endpoints.iter().all(|e| e.port == 9000));
    assert!(spec(&expected, "default/store-np").external_traffic_local);
    assert_eq!(
        spec(&expected, "default/store-np").ports[0].node_port,
        Some(30080)
    );
    let l = spec(&expected, "default/store-lb");
    assert_eq!(
        l.external_ips,
        [
            Ipv4Addr::new(203, 0, 113, 100),
            Ipv4Addr::new(203, 0, 113, 101)
        ]
    );
    assert_eq!(l.ports[0].node_port, Some(lb_node_port as u16));
    let table = podswitch_ok(&["ctl", "-s", &lab.socket("node-1"), "services"]);
    assert!(
        table.contains("default/store-multi") && table.contains("(ready)"),
        "{table}"
    );

    // --- A bad Service changes nothing (all or nothing). ---
    let pods_before = lab.pods();
    let held_before = switch_services(&lab, "node-1");
    let out = lab.run(&["apply", "-f", &fixture("bad-service-ip.yaml")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "default/outside",
        "spec.clusterIP",
        "10.0.0.5",
        "10.96.0.0/12",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    let out = lab.run(&["apply", "-f", &fixture("bad-node-port.yaml")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "default/store-np2",
        "spec.ports[0].nodePort",
        "30080",
        "already allocated",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert_eq!(services(&lab), svcs, "a bad Service changed the Services");
    assert_eq!(lab.pods(), pods_before, "a bad Service changed the pods");
    assert_eq!(switch_services(&lab, "node-1"), held_before);

    // --- Graceful scale-down: the removed pod drains, then goes. ---
    let started = Instant::now();
    let child = Command::new(exe())
        .args(["lab", "--name", &lab.name, "apply", "-f"])
        .arg(fixture("services-scaled.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn lab apply");
    let mut draining: Option<Ipv4Addr> = None;
    let seen = wait_until(Duration::from_secs(10), || {
        let specs = switch_specs(&lab, "node-2");
        let eps = &spec(&specs, "default/store").ports[0].endpoints;
        draining = eps.iter().find(|e| e.terminating && !e.ready).map(|e| e.ip);
        draining.is_some()
    });
    assert!(seen, "no terminating endpoint appeared on node-2's switch");
    let draining = draining.unwrap();
    // Both switches have it; the other endpoints stay ready.
    for node in ["node-1", "node-2"] {
        let specs = switch_specs(&lab, node);
        let eps = &spec(&specs, "default/store").ports[0].endpoints;
        assert_eq!(eps.len(), 3, "{node}: {eps:?}");
        for e in eps {
            assert_eq!(
                (e.ready, e.terminating),
                if e.ip == draining {
                    (false, true)
                } else {
                    (true, false)
                },
                "{node}: {e:?}"
            );
        }
    }
    let (doomed, _) = store_pods
        .iter()
        .find(|(_, (ip, _))| *ip == draining.to_string())
        .expect("the draining endpoint is a store pod");
    let pods = json(&lab, &["get", "pods", "-o", "json"]);
    let listed = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == doomed.as_str())
        .expect("the draining pod is still listed");
    assert!(
        listed["metadata"]["deletionTimestamp"].is_string(),
        "{listed}"
    );
    let table = lab.run_ok(&["get", "pods"]);
    let row = table.lines().find(|l| l.contains(doomed.as_str())).unwrap();
    assert!(row.contains("Terminating"), "{row}");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("pod/default/{doomed} deleted")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1900),
        "returned after {:?}, before the 2 s grace period",
        started.elapsed()
    );
    for node in ["node-1", "node-2"] {
        let specs = switch_specs(&lab, node);
        let eps = &spec(&specs, "default/store").ports[0].endpoints;
        assert_eq!(eps.len(), 2, "{node}: {eps:?}");
        assert!(eps.iter().all(|e| e.ready && e.ip != draining), "{eps:?}");
    }
    assert_eq!(pods_named(&lab, "store-").len(), 2);
    assert!(netns_matching(&format!("psw-{}-default-{doomed}", lab.name)).is_empty());

    // --- Immediate deletion, and deleting a Service frees it. ---
    let victim = pods_named(&lab, "store-").into_keys().next().unwrap();
    lab.run_ok(&["delete", "pod", &victim, "--grace-period", "0"]);
    let specs = switch_specs(&lab, "node-1");
    assert_eq!(spec(&specs, "default/store").ports[0].endpoints.len(), 1);
    lab.run_ok(&["delete", "svc", "store-lb"]);
    assert!(!services(&lab).contains_key("store-lb"));
    for node in ["node-1", "node-2"] {
        let specs = switch_specs(&lab, node);
        assert!(specs.iter().all(|s| s.name != "default/store-lb"), "{node}");
        assert_eq!(specs.len(), 3);
    }
}
