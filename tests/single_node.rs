//! Single-node lab, real traffic: three pods on one node, each on a tap of
//! the node's switch.
//!
//! ```text
//!   pod a (10.244.1.2) ──tap──┐
//!   pod b (10.244.1.3) ──tap──┼── switch (node-1 netns, gateway 10.244.1.1)
//!   pod c (10.244.1.4) ──tap──┘
//! ```

mod common;

use common::*;
use std::time::Duration;

fn ok(out: &std::process::Output) -> bool {
    out.status.success()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn pods_ping_each_other_and_the_gateway() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("ping", None);
    let pods = lab.pods();
    assert_eq!(pods.len(), 3);
    for (a, _) in &pods {
        let out = lab.exec(a, &["ping", "-c", "2", "-W", "2", "10.244.1.1"]);
        assert!(ok(&out), "{a} -> gateway: {}", text(&out));
        for (b, ip) in &pods {
            if a != b {
                let out = lab.exec(a, &["ping", "-c", "2", "-W", "2", ip]);
                assert!(ok(&out), "{a} -> {b}: {}", text(&out));
                // TTL 64 from the pod, minus one hop through the switch.
                assert!(text(&out).contains("ttl=63"), "{}", text(&out));
            }
        }
    }
    let st = lab.stats("node-1");
    assert!(st["datapath"]["arp_replies"].as_u64().unwrap() >= 3);
    assert!(st["datapath"]["icmp_echo_replies"].as_u64().unwrap() >= 6);
}

#[test]
fn ttl_expiry_and_unassigned_addresses_get_icmp_errors() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("icmp", None);
    let pods = lab.pods();
    let (a, b_ip) = (&pods[0].0, &pods[1].1);
    // iputils ping reports the router's error.
    let out = lab.exec(a, &["ping", "-c", "1", "-t", "1", "-W", "2", b_ip]);
    assert!(
        text(&out).contains("From 10.244.1.1") && text(&out).contains("Time to live exceeded"),
        "{}",
        text(&out)
    );
    let out = lab.exec(a, &["ping", "-c", "1", "-W", "2", "10.244.1.200"]);
    assert!(
        text(&out).contains("From 10.244.1.1")
            && text(&out).contains("Destination Host Unreachable"),
        "{}",
        text(&out)
    );
    // The built-in probe sees the exact type and code.
    let r = lab.tool(a, &["ping", "--to", b_ip, "--count", "1", "--ttl", "1"]);
    assert_eq!(r["errors"][0]["type"], 11);
    assert_eq!(r["errors"][0]["code"], 0);
    let r = lab.tool(a, &["ping", "--to", "10.244.1.200", "--count", "1"]);
    assert_eq!(
        (
            r["errors"][0]["type"].as_u64(),
            r["errors"][0]["code"].as_u64()
        ),
        (Some(3), Some(1))
    );
    assert!(lab.drops("node-1", "ttl_expired") >= 2);
    assert!(lab.drops("node-1", "host_unreachable") >= 2);
}

#[test]
fn udp_echo_and_http_see_the_client_pod_ip() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("l4", None);
    let pods = lab.pods();
    for (a, a_ip) in &pods {
        for (b, b_ip) in &pods {
            if a == b {
                continue;
            }
            let r = lab.tool(
                a,
                &[
                    "udp-echo",
                    "--to",
                    &format!("{b_ip}:9000"),
                    "--count",
                    "50",
                    "--size",
                    "1000",
                ],
            );
            assert_eq!(
                (r["received"].as_u64(), r["mismatched"].as_u64()),
                (Some(50), Some(0)),
                "{a} -> {b}: {r}"
            );
            // A real HTTP client (curl) against the echo workload: no NAT.
            let out = lab.exec(
                a,
                &[
                    "curl",
                    "-sS",
                    "--max-time",
                    "5",
                    &format!("http://{b_ip}/hello"),
                ],
            );
            let body = text(&out);
            assert!(ok(&out), "{body}");
            assert!(body.contains(&format!("From={b} ")), "{body}");
            assert!(
                body.contains(&format!("ClientIP={a_ip} ")),
                "client IP not kept: {body}"
            );
            assert!(body.contains("Path=/hello"), "{body}");
        }
    }
}

#[test]
fn one_gib_tcp_transfer_arrives_intact_as_tso_superframes() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("gib", None);
    let pods = lab.pods();
    let (a, b, b_ip) = (&pods[0].0, &pods[1].0, &pods[1].1);
    let sink = lab.spawn_tool(
        b,
        &[
            "tcp-sink",
            "--listen",
            "0.0.0.0:5001",
            "--timeout-secs",
            "300",
        ],
    );
    // The sender retries its connect until the sink listens (deadline 120 s).
    let sent = lab.tool(
        a,
        &[
            "tcp-send",
            "--to",
            &format!("{b_ip}:5001"),
            "--bytes",
            "1073741824",
        ],
    );
    let out = sink.wait_with_output().expect("sink");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sink json");
    assert_eq!(sent["bytes"].as_u64(), Some(1 << 30));
    assert_eq!(got["bytes"], sent["bytes"]);
    assert_eq!(got["crc32"], sent["crc32"], "payload corrupted on the way");
    let st = lab.stats("node-1");
    // Same-node TSO superframes are forwarded whole: no software segmentation.
    let gso = st["datapath"]["gso_superframes"].as_u64().unwrap();
    assert!(
        gso > 1000,
        "expected TSO superframes through the switch, saw {gso}"
    );
    eprintln!("1 GiB: {} Gbit/s, {gso} superframes", sent["gbit_per_s"]);
}

#[test]
fn malformed_frames_are_dropped_by_reason_and_others_keep_talking() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("bad", None);
    let pods = lab.pods();
    let ((a, a_ip), (b, b_ip), (c, c_ip)) = (&pods[0], &pods[1], &pods[2]);
    // Background traffic between b and c while a misbehaves.
    let sink = lab.spawn_tool(
        c,
        &[
            "tcp-sink",
            "--listen",
            "0.0.0.0:5002",
            "--timeout-secs",
            "120",
        ],
    );
    let before = lab.stats("node-1");
    for _ in 0..3 {
        let r = lab.tool(a, &["inject", "--src-ip", a_ip, "--dst-ip", b_ip]);
        assert!(r["kinds"].as_array().unwrap().len() >= 15, "{r}");
    }
    let sent = lab.tool(
        b,
        &[
            "tcp-send",
            "--to",
            &format!("{c_ip}:5002"),
            "--bytes",
            "67108864",
        ],
    );
    let got: serde_json::Value =
        serde_json::from_slice(&sink.wait_with_output().unwrap().stdout).unwrap();
    assert_eq!(got["crc32"], sent["crc32"]);
    let after = lab.stats("node-1");
    let drops = |s: &serde_json::Value, r: &str| {
        s["datapath"]["drops"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| d["reason"] == r)
            .map(|d| d["packets"].as_u64().unwrap())
            .sum::<u64>()
    };
    // (Runt frames and frames over the pod's own MTU are refused by the
    // pod's kernel before they reach the tap; see below for the MTU case.)
    for reason in [
        "ipv4_header_invalid",
        "ipv4_checksum_invalid",
        "l4_header_invalid",
        "arp_invalid",
        "arp_not_answered",
        "unsupported_ethertype",
    ] {
        assert!(
            drops(&after, reason) > drops(&before, reason),
            "no {reason} drop counted: {}",
            after["datapath"]["drops"]
        );
    }
    // A pod that raises its own MTU above its port's: oversize frames are
    // not forwarded; the sender learns the path MTU (RFC 1191).
    let out = lab.exec(a, &["ip", "link", "set", "dev", "eth0", "mtu", "9000"]);
    assert!(ok(&out), "{}", text(&out));
    let over_before = drops(&lab.stats("node-1"), "frame_over_mtu");
    let out = lab.exec(
        a,
        &["ping", "-c", "2", "-W", "1", "-M", "do", "-s", "3000", b_ip],
    );
    assert!(
        !ok(&out),
        "a 3028-byte packet crossed a 1500-MTU port: {}",
        text(&out)
    );
    // The switch answered with ICMP fragmentation needed and the port's MTU
    // (after which the pod's kernel refuses the next one itself).
    assert!(text(&out).contains("mtu = 1500"), "{}", text(&out));
    assert!(drops(&lab.stats("node-1"), "frame_over_mtu") > over_before);
    // The switch is alive and still answers.
    let out = lab.exec(a, &["ping", "-c", "1", "-W", "2", b_ip]);
    assert!(ok(&out), "{}", text(&out));
    let out = lab.run_ok(&["get", "nodes"]);
    assert!(out.contains("Ready"), "{out}");
}

#[test]
fn switch_restart_reattaches_persistent_taps() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("restart", None);
    let pods = lab.pods();
    let (a, b_ip) = (&pods[0].0, &pods[1].1);
    assert!(ok(&lab.exec(a, &["ping", "-c", "1", "-W", "2", b_ip])));
    for hard in [false, true] {
        let mut args = vec!["restart-switch", "node-1"];
        if hard {
            args.push("--hard");
        }
        lab.run_ok(&args);
        // The pod kept its interface; traffic resumes once the switch is back.
        assert!(
            wait_until(Duration::from_secs(5), || ok(
                &lab.exec(a, &["ping", "-c", "1", "-W", "1", b_ip])
            )),
            "no traffic after restart (hard={hard})"
        );
        let ports: serde_json::Value = serde_json::from_str(&podswitch_ok(&[
            "ctl",
            "-s",
            &lab.socket("node-1"),
            "ports",
            "-o",
            "json",
        ]))
        .unwrap();
        assert_eq!(
            ports.as_array().unwrap().len(),
            3,
            "ports not re-attached: {ports}"
        );
    }
}

#[test]
fn lab_down_leaves_nothing_behind_even_after_kill_9() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("down", None);
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/podswitch/lab/{}/lab.json", lab.name)).unwrap(),
    )
    .unwrap();
    let switch_pid = st["nodes"][0]["switch_pid"].as_i64().unwrap() as i32;
    let workload_pids: Vec<i32> = st["pods"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p["workload_pid"].as_i64().unwrap() as i32)
        .collect();
    let prefix = format!("psw-{}-", lab.name);
    // node-1, the underlay, the outside host and three pods.
    assert_eq!(netns_matching(&prefix).len(), 6);
    // kill -9 the switch, then tear down.
    assert!(std::process::Command::new("kill")
        .args(["-9", &switch_pid.to_string()])
        .status()
        .unwrap()
        .success());
    lab.run_ok(&["down"]);
    assert!(
        netns_matching(&prefix).is_empty(),
        "namespaces left: {:?}",
        netns_matching(&prefix)
    );
    for pid in std::iter::once(switch_pid).chain(workload_pids) {
        let alive = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
            .unwrap_or(false);
        assert!(!alive, "process {pid} survived lab down");
    }
    assert!(!std::path::Path::new(&format!("/run/podswitch/lab/{}", lab.name)).exists());
    // No tap or link of the lab is left in the root namespace.
    let links = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("psw"))
        .collect::<Vec<_>>();
    assert!(links.is_empty(), "links left in the root netns: {links:?}");
}
