//! Three nodes joined by an underlay, in both cluster modes, real traffic.
//!
//! ```text
//!            outside host 203.0.113.10
//!                     |
//!   underlay router 198.18.0.254 (bridge br0)
//!      |                 |                 |
//!   node-1 .1         node-2 .2         node-3 .3      (eth0, its own netns, its own switch)
//!   psw0 + taps       psw0 + taps       psw0 + taps
//!   10.244.1.0/24     10.244.2.0/24     10.244.3.0/24
//! ```
//!
//! native: pod IPs on the wire, the nodes' kernels route pod CIDRs to the
//! owning node's underlay address; vxlan: the switches encapsulate
//! (RFC 7348) and the underlay only ever sees node addresses.

mod common;

use common::*;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn three_node_cluster(mode: &str) {
    // Six replicas spread over three nodes.
    let lab = TestLab::up_with(mode, &["--nodes", "3", "--mode", mode]);
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    lab.run_ok(&["apply", "-f", &format!("{fixtures}/six-replicas.yaml")]);
    let pods = lab.pods_with_nodes();
    assert_eq!(pods.len(), 9);
    for n in ["node-1", "node-2", "node-3"] {
        assert_eq!(
            pods.iter().filter(|p| p.2 == n).count(),
            3,
            "replicas not spread: {pods:?}"
        );
    }
    let nodes: serde_json::Value =
        serde_json::from_str(&lab.run_ok(&["get", "nodes", "-o", "json"])).unwrap();
    for (i, n) in nodes["items"].as_array().unwrap().iter().enumerate() {
        assert_eq!(n["status"]["addresses"][0]["type"], "InternalIP");
        assert_eq!(
            n["status"]["addresses"][0]["address"],
            format!("198.18.0.{}", i + 1)
        );
        assert_eq!(n["spec"]["podCIDR"], format!("10.244.{}.0/24", i + 1));
    }
    // One pod per node for the all-pairs matrix.
    let reps: Vec<&(String, String, String)> = ["node-1", "node-2", "node-3"]
        .iter()
        .map(|n| pods.iter().find(|p| &p.2 == n).unwrap())
        .collect();
    for a in &reps {
        for b in &reps {
            if a.0 == b.0 {
                continue;
            }
            let out = lab.exec(&a.0, &["ping", "-c", "2", "-W", "2", &b.1]);
            assert!(
                out.status.success(),
                "{mode}: ping {} ({}) -> {} ({}): {}",
                a.0,
                a.2,
                b.0,
                b.2,
                text(&out)
            );
            // TCP to the echo workload; the client's own IP arrives (no NAT).
            let r = lab.tool(&a.0, &["http-get", "--to", &format!("{}:80", b.1)]);
            let body = r["body"].as_str().unwrap();
            assert!(
                body.contains(&format!("ClientIP={} ", a.1)),
                "{mode}: {body}"
            );
            assert!(body.contains(&format!("From={} ", b.0)), "{mode}: {body}");
        }
        // The pod's own node reaches it (kubelet probes) and it reaches its node.
        let out = lab.exec_node(&a.2, &["ping", "-c", "1", "-W", "2", &a.1]);
        assert!(
            out.status.success(),
            "{mode}: {} -> {}: {}",
            a.2,
            a.0,
            text(&out)
        );
        let out = lab.exec_node(
            &a.2,
            &[
                "curl",
                "-sS",
                "--max-time",
                "5",
                &format!("http://{}/probe", a.1),
            ],
        );
        assert!(text(&out).contains("Path=/probe"), "{mode}: {}", text(&out));
        let node_ip = format!("198.18.0.{}", &a.2["node-".len()..]);
        let out = lab.exec(&a.0, &["ping", "-c", "1", "-W", "2", &node_ip]);
        assert!(
            out.status.success(),
            "{mode}: {} -> its node {node_ip}: {}",
            a.0,
            text(&out)
        );
    }
    // A bulk TCP transfer across nodes arrives intact. In VXLAN mode on a
    // kernel with UDP-tunnel GSO (6.17+), node-1 hands its pod's TSO
    // superframes to its kernel whole and node-3 receives them whole
    // (veths never segment); then the same with the tunnel GSO turned
    // off, where node-1 segments them in software.
    let (a, b) = (reps[0], reps[2]);
    let bulk = |port: u16| {
        let sink = lab.spawn_tool(
            &b.0,
            &[
                "tcp-sink",
                "--listen",
                &format!("0.0.0.0:{port}"),
                "--timeout-secs",
                "120",
            ],
        );
        let sent = lab.tool(
            &a.0,
            &[
                "tcp-send",
                "--to",
                &format!("{}:{port}", b.1),
                "--bytes",
                "67108864",
            ],
        );
        let got: serde_json::Value =
            serde_json::from_slice(&sink.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(got["bytes"], sent["bytes"]);
        assert_eq!(
            got["crc32"], sent["crc32"],
            "{mode}: data corrupted across nodes"
        );
    };
    bulk(5003);
    if mode == "vxlan" {
        let (tx, rx) = (lab.stats("node-1"), lab.stats("node-3"));
        assert_eq!(
            tx["vxlan_tunnel_gso"], true,
            "this kernel has UDP-tunnel GSO: {tx}"
        );
        let whole = tx["datapath"]["vxlan_tx_tunnel_gso"].as_u64().unwrap();
        assert!(whole > 0, "no superframe went whole: {}", tx["datapath"]);
        assert!(
            rx["datapath"]["vxlan_rx_superframes"].as_u64().unwrap() > 0,
            "node-3 received no whole superframe: {}",
            rx["datapath"]
        );
        let sock = std::path::PathBuf::from(lab.socket("node-1"));
        let set: podswitch_switch::control::api::VxlanTunnelGsoSet =
            podswitch_switch::control::client::call(
                &sock,
                &podswitch_switch::control::api::Request::SetVxlanTunnelGso(
                    podswitch_api::SetVxlanTunnelGsoArgs { on: false },
                ),
            )
            .unwrap();
        assert!(!set.in_use);
        let before = lab.stats("node-1")["datapath"]["vxlan_tx"]
            .as_u64()
            .unwrap();
        bulk(5004);
        let d = &lab.stats("node-1")["datapath"];
        assert_eq!(d["vxlan_tx_tunnel_gso"].as_u64(), Some(whole), "{d}");
        // 64 MiB in segments of at most 1398 bytes.
        assert!(d["vxlan_tx"].as_u64().unwrap() - before > 48_000, "{d}");
    }
    // The outside host (203.0.113.10) is reachable through the underlay. In
    // native mode the underlay routes pod CIDRs (as a VPC route table does),
    // so it answers pods directly; in VXLAN mode replies need egress SNAT
    // (the services issue).
    if mode == "native" {
        let out = lab.exec(&a.0, &["ping", "-c", "1", "-W", "2", "203.0.113.10"]);
        assert!(out.status.success(), "pod -> outside: {}", text(&out));
        let out = podswitch(&[
            "lab",
            "--name",
            &lab.name,
            "exec",
            "--outside",
            "--",
            "curl",
            "-sS",
            "--max-time",
            "5",
            &format!("http://{}/from-outside", b.1),
        ]);
        assert!(
            text(&out).contains("ClientIP=203.0.113.10 "),
            "outside -> pod: {}",
            text(&out)
        );
    }
    if mode == "native" {
        // A node that leaves the cluster takes its route with it, and comes
        // back when it returns.
        let sock = std::path::PathBuf::from(lab.socket("node-1"));
        let topo: podswitch_switch::control::api::Topology =
            podswitch_switch::control::client::call(
                &sock,
                &podswitch_switch::control::api::Request::GetTopology,
            )
            .unwrap();
        let all = topo.remote_nodes.clone();
        let without_3: Vec<_> = all.iter().filter(|n| n.name != "node-3").cloned().collect();
        let set = |nodes: Vec<podswitch_switch::control::api::RemoteNode>| {
            let _: serde_json::Value = podswitch_switch::control::client::call(
                &sock,
                &podswitch_switch::control::api::Request::SetRemoteNodes(
                    podswitch_api::SetRemoteNodesArgs { nodes },
                ),
            )
            .unwrap();
        };
        set(without_3);
        let routes = text(&lab.exec_node("node-1", &["ip", "route"]));
        assert!(!routes.contains("10.244.3.0/24"), "{routes}");
        set(all);
        let routes = text(&lab.exec_node("node-1", &["ip", "route"]));
        assert!(routes.contains("10.244.3.0/24 via 198.18.0.3"), "{routes}");
    }
    let st = lab.stats("node-1");
    if mode == "vxlan" {
        let d = &st["datapath"];
        assert!(d["forwarded_overlay"].as_u64().unwrap() > 0, "{d}");
        assert!(
            d["vxlan_tx"].as_u64().unwrap() > d["forwarded_overlay"].as_u64().unwrap(),
            "superframes were not segmented: {d}"
        );
        // Path MTU discovery through the overlay: a pod that believes in a
        // 1500 MTU is told the overlay's by ICMP fragmentation needed.
        let out = lab.exec(&a.0, &["ip", "link", "set", "dev", "eth0", "mtu", "1500"]);
        assert!(out.status.success(), "{}", text(&out));
        let out = lab.exec(
            &a.0,
            &["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1472", &b.1],
        );
        assert!(text(&out).contains("mtu = 1450"), "{mode}: {}", text(&out));
        // ... and TCP then works at the discovered MTU.
        let sink = lab.spawn_tool(
            &b.0,
            &[
                "tcp-sink",
                "--listen",
                "0.0.0.0:5004",
                "--timeout-secs",
                "60",
            ],
        );
        let sent = lab.tool(
            &a.0,
            &[
                "tcp-send",
                "--to",
                &format!("{}:5004", b.1),
                "--bytes",
                "8388608",
                "--timeout-secs",
                "60",
            ],
        );
        let got: serde_json::Value =
            serde_json::from_slice(&sink.wait_with_output().unwrap().stdout).unwrap();
        assert_eq!(got["crc32"], sent["crc32"]);
        lab.exec(&a.0, &["ip", "link", "set", "dev", "eth0", "mtu", "1450"]);
        // Pod MTU = underlay MTU - 50.
        // (Through netlink: `lab exec` does not remount /sys like `ip netns exec`.)
        let out = lab.exec(&a.0, &["ip", "-o", "link", "show", "eth0"]);
        assert!(text(&out).contains(" mtu 1450 "), "{}", text(&out));
    }
}

#[test]
fn three_nodes_native_mode() {
    if !require_root() {
        return;
    }
    three_node_cluster("native");
}

#[test]
fn three_nodes_vxlan_mode() {
    if !require_root() {
        return;
    }
    three_node_cluster("vxlan");
}
