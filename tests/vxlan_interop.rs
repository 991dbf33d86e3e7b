//! podswitch's VXLAN against the Linux kernel's `vxlan` device set up the
//! way flannel sets it up (VNI 1, UDP 8472, no learning; per remote node a
//! route via the node's VTEP address, a permanent neighbour entry with its
//! VTEP MAC and an FDB entry pointing that MAC at its underlay IP).
//!
//! ```text
//!   podswitch node-1 (198.18.0.1)           kernel node (198.18.0.9)
//!   pod 10.244.1.x -- switch ==VXLAN 8472== flannel.1 -- cni0 -- pod 10.244.9.2
//! ```
//!
//! The kernel node is built with iproute2 here, exactly as a flannel node
//! looks; podswitch learns of it through its control API.

mod common;

use common::*;
use podswitch_switch::control::api::{RemoteNode, Request};
use podswitch_switch::control::client;
use std::process::{Command, Stdio};

fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pods_talk_both_ways_with_a_flannel_style_kernel_vxlan_node() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up_with(
        "interop",
        &["--nodes", "1", "--mode", "vxlan", "--vxlan-port", "8472"],
    );
    let p = format!("psw-{}-", lab.name);
    let (u, k, kp) = (
        format!("{p}underlay"),
        format!("{p}kernel-node"),
        format!("{p}kernel-pod"),
    );
    let kmac = "02:56:c6:12:00:09";
    let vtep1 = "02:56:c6:12:00:01";
    for cmd in [
        format!("ip netns add {k}"),
        format!("ip netns add {kp}"),
        format!("ip -n {u} link add n9 type veth peer name eth0 netns {k}"),
        format!("ip -n {u} link set n9 master br0 up"),
        format!("ip -n {k} link set lo up"),
        format!("ip -n {k} addr add 198.18.0.9/24 dev eth0"),
        format!("ip -n {k} link set eth0 up"),
        format!("ip -n {k} link add flannel.1 type vxlan id 1 local 198.18.0.9 dev eth0 dstport 8472 nolearning"),
        format!("ip -n {k} link set flannel.1 address {kmac} mtu 1450 up"),
        format!("ip -n {k} link add cni0 type bridge"),
        format!("ip -n {k} addr add 10.244.9.1/24 dev cni0"),
        format!("ip -n {k} link set cni0 mtu 1450 up"),
        format!("ip -n {k} link add veth0 mtu 1450 type veth peer name eth0 mtu 1450 netns {kp}"),
        format!("ip -n {k} link set veth0 master cni0 up"),
        format!("ip -n {kp} link set lo up"),
        format!("ip -n {kp} addr add 10.244.9.2/24 dev eth0"),
        format!("ip -n {kp} link set eth0 up"),
        format!("ip -n {kp} route add default via 10.244.9.1"),
        format!("ip netns exec {k} sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'"),
        // flannel's entries for the podswitch node.
        format!("ip -n {k} route add 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink"),
        format!("ip -n {k} neigh add 10.244.1.0 lladdr {vtep1} dev flannel.1 nud permanent"),
        format!("ip netns exec {k} bridge fdb add {vtep1} dev flannel.1 dst 198.18.0.1"),
    ] {
        sh(&cmd);
    }
    // podswitch learns of the kernel node (as the agent would from its Node object).
    let nodes = vec![RemoteNode {
        name: "kernel-node".into(),
        underlay_ipv4: "198.18.0.9".parse().unwrap(),
        pod_cidrs: vec!["10.244.9.0/24".parse().unwrap()],
        vtep_mac: Some(kmac.parse().unwrap()),
    }];
    let _: serde_json::Value = client::call(
        std::path::Path::new(&lab.socket("node-1")),
        &Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs { nodes }),
    )
    .expect("set_remote_nodes");

    let pods = lab.pods();
    let (pod, pod_ip) = (&pods[0].0, &pods[0].1);
    // podswitch pod -> kernel pod.
    let out = lab.exec(pod, &["ping", "-c", "2", "-W", "2", "10.244.9.2"]);
    assert!(
        out.status.success(),
        "podswitch -> kernel: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // kernel pod -> podswitch pod, ICMP and HTTP (client IP kept).
    let kexec = |args: &[&str]| {
        Command::new("ip")
            .args(["netns", "exec", &kp])
            .args(args)
            .output()
            .unwrap()
    };
    let out = kexec(&["ping", "-c", "2", "-W", "2", pod_ip]);
    assert!(
        out.status.success(),
        "kernel -> podswitch: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = kexec(&[
        "curl",
        "-sS",
        "--max-time",
        "5",
        &format!("http://{pod_ip}/interop"),
    ]);
    let body = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !body.contains("ClientIP=10.244.9.2 ") {
        let st = lab.stats("node-1");
        let _ = Command::new("sh")
            .args([
                "-c",
                &format!(
                    "ip -n {k} -s link show flannel.1; ip -n {k} neigh; ip netns exec {kp} ss -tn"
                ),
            ])
            .status();
        panic!("{body}\n{}", st["datapath"]);
    }
    // Bulk TCP both ways, intact: TSO superframes from the podswitch pod are
    // segmented into VXLAN datagrams the kernel accepts.
    let exe = exe();
    let exe = exe.to_str().unwrap();
    let sink = Command::new("ip")
        .args([
            "netns",
            "exec",
            &kp,
            exe,
            "tool",
            "tcp-sink",
            "--listen",
            "0.0.0.0:5005",
            "--timeout-secs",
            "60",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let sent = lab.tool(
        pod,
        &[
            "tcp-send",
            "--to",
            "10.244.9.2:5005",
            "--bytes",
            "33554432",
            "--timeout-secs",
            "60",
        ],
    );
    let got: serde_json::Value =
        serde_json::from_slice(&sink.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(
        (&got["bytes"], &got["crc32"]),
        (&sent["bytes"], &sent["crc32"]),
        "podswitch -> kernel bulk"
    );
    let sink = lab.spawn_tool(
        pod,
        &[
            "tcp-sink",
            "--listen",
            "0.0.0.0:5006",
            "--timeout-secs",
            "60",
        ],
    );
    let out = kexec(&[
        exe,
        "tool",
        "tcp-send",
        "--to",
        &format!("{pod_ip}:5006"),
        "--bytes",
        "33554432",
        "--timeout-secs",
        "15",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.stats("node-1")["datapath"]
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got: serde_json::Value =
        serde_json::from_slice(&sink.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(
        (&got["bytes"], &got["crc32"]),
        (&sent["bytes"], &sent["crc32"]),
        "kernel -> podswitch bulk"
    );
    // 32 MiB each way crossed the overlay. The kernel's side hands its TSO
    // bursts through the veths as UDP-tunnel GSO packets, which the switch
    // receives whole (one `vxlan_rx`, a `vxlan_rx_superframes`), so
    // received datagrams are far fewer than wire segments. The switch
    // sends its pod's superframes whole the same way (UDP-tunnel GSO on
    // this 6.18 kernel), and the kernel's vxlan device took them: the
    // bytes above arrived intact.
    let d = &lab.stats("node-1")["datapath"];
    assert!(
        d["vxlan_rx"].as_u64().unwrap() > 100 && d["vxlan_tx"].as_u64().unwrap() > 1000,
        "{d}"
    );
    assert!(d["vxlan_tx_tunnel_gso"].as_u64().unwrap() > 0, "{d}");
    assert!(d["vxlan_rx_superframes"].as_u64().unwrap() > 0, "{d}");
}
