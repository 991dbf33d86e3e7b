//! The switch's HTTP endpoint in a one-node lab: known traffic shows up in
//! the Prometheus series, and the health endpoints answer.
//!
//! ```text
//!   pod a ──tap──┐                          curl 127.0.0.1:9464/metrics
//!                ├── switch (node-1 netns) <─ (inside the node's netns)
//!   pod b ──tap──┘
//! ```

mod common;

use common::*;
use std::collections::BTreeMap;
use std::time::Duration;

/// `curl` inside the node's namespace: (HTTP status, body).
fn get(lab: &TestLab, path: &str) -> Option<(u16, String)> {
    let url = format!("http://127.0.0.1:9464{path}");
    let out = lab.exec_node(
        "node-1",
        &["curl", "-s", "-m", "5", "-w", "\n%{http_code}", &url],
    );
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

/// Sample lines as `name{labels}` -> value (labels as written).
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            let value = value.parse().unwrap_or_else(|_| panic!("value in {l:?}"));
            (series.to_string(), value)
        })
        .collect()
}

/// The value of the port series of `pod` (label `namespace/pod` or `pod`).
fn port_value(all: &BTreeMap<String, f64>, metric: &str, pod: &str) -> Option<f64> {
    all.iter()
        .find(|(k, _)| {
            k.starts_with(&format!("{metric}{{"))
                && (k.contains(&format!("port=\"{pod}\"")) || k.contains(&format!("/{pod}\"")))
        })
        .map(|(_, v)| *v)
}

#[test]
fn scrape_shows_known_traffic_and_health_answers() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("metrics", None);
    assert!(
        wait_until(Duration::from_secs(10), || {
            get(&lab, "/readyz").is_some_and(|(c, _)| c == 200)
        }),
        "/readyz never became 200: {:?}",
        get(&lab, "/readyz")
    );
    assert_eq!(get(&lab, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(&lab, "/nope").map(|r| r.0), Some(404));

    let pods = lab.pods();
    let (a, a_ip) = &pods[0];
    let (b, b_ip) = &pods[1];
    let r = lab.tool(
        a,
        &["udp-echo", "--to", &format!("{b_ip}:9000"), "--count", "50"],
    );
    assert_eq!(r["received"].as_u64(), Some(50), "udp echo: {r}");
    // Five pings to the pod's gateway (the first address of its node's
    // pod CIDR), answered by the switch.
    let gw = a_ip
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.1"))
        .unwrap();
    let ping = lab.exec(a, &["ping", "-c", "5", "-i", "0.2", "-W", "2", &gw]);
    assert!(ping.status.success(), "ping the gateway: {ping:?}");

    let mut all = BTreeMap::new();
    let seen = wait_until(Duration::from_secs(10), || {
        let Some((200, body)) = get(&lab, "/metrics") else {
            return false;
        };
        all = samples(&body);
        [a, b].iter().all(|p| {
            port_value(&all, "podswitch_port_rx_packets_total", p).is_some_and(|v| v >= 50.0)
        })
    });
    assert!(seen, "rx packets of {a} and {b} below 50: {all:#?}");
    for p in [a, b] {
        for m in [
            "podswitch_port_tx_packets_total",
            "podswitch_port_rx_bytes_total",
        ] {
            let v = port_value(&all, m, p).unwrap_or_default();
            assert!(v >= 50.0, "{m} of {p} is {v}");
        }
    }
    assert!(
        all.contains_key(r#"podswitch_drops_total{stage="parse",reason="ipv6_not_routed"}"#),
        "no ipv6_not_routed series"
    );
    assert!(
        all.contains_key(r#"podswitch_drop_bytes_total{stage="parse",reason="ipv6_not_routed"}"#)
    );
    assert_eq!(all.get("podswitch_conntrack_capacity"), Some(&262_144.0));
    assert!(
        all.get(r#"podswitch_forwarded_packets_total{path="local"}"#)
            .is_some_and(|v| *v >= 100.0),
        "forwarded local: {:?}",
        all.get(r#"podswitch_forwarded_packets_total{path="local"}"#)
    );
    // Datapath events: the gateway answered the pings (and at least one
    // ARP request for itself); the workers ran batches.
    for (m, at_least) in [
        ("podswitch_icmp_echo_replies_total", 5.0),
        ("podswitch_arp_replies_total", 1.0),
        ("podswitch_batches_total", 1.0),
        // The 50 UDP echoes and their replies, pod to pod: the fast
        // path's shape.
        ("podswitch_fast_path_packets_total", 100.0),
    ] {
        let v = all.get(m).copied().unwrap_or_default();
        assert!(v >= at_least, "{m} is {v}, expected at least {at_least}");
    }
    for m in [
        r#"podswitch_vxlan_packets_total{direction="tx"}"#,
        "podswitch_tcp_resets_sent_total",
        "podswitch_gso_superframes_total",
        "podswitch_capture_ring_drops_total",
    ] {
        assert!(all.contains_key(m), "{m} missing");
    }
    // The lab adds its pods through the control API: each add is timed.
    assert!(all
        .get("podswitch_control_apply_seconds_count")
        .is_some_and(|v| *v >= 1.0));
    for m in [
        // Pod-to-pod traffic without services is not tracked, so these
        // need only exist here (tests/services.rs covers the flows).
        "podswitch_conntrack_entries",
        "podswitch_conntrack_created_total",
        "podswitch_conntrack_expired_total",
        "podswitch_conntrack_evicted_total",
        "podswitch_conntrack_removed_total",
        "podswitch_nat_port_exhausted_total",
        "podswitch_services",
    ] {
        assert!(all.contains_key(m), "{m} missing");
    }
}
