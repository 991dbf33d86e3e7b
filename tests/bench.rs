//! `podswitch bench --quick` end to end: every lab (podswitch native,
//! VXLAN and Services; kernel bridge, host-gw, vxlan and iptables) comes
//! up, every mode is measured interleaved, the cross-check against
//! iperf3 and sockperf runs on the kernel baselines, and the table, JSON
//! and SVG come out.
//!
//! This test fails on broken measurement only (a mode without samples, a
//! latency that is zero or not finite, percentiles out of order, no
//! throughput, a missing file or series), never on slow numbers: the
//! machine is shared and its speed is not what is tested.

mod common;

use common::*;

const MODES: [&str; 8] = [
    "podswitch-local",
    "kernel-bridge",
    "podswitch-native",
    "kernel-hostgw",
    "podswitch-vxlan",
    "kernel-vxlan",
    "podswitch-services",
    "kernel-iptables",
];
const TESTS: [&str; 8] = [
    "tcp-rr-64",
    "tcp-rr-1k",
    "udp-rr-64",
    "udp-rr-1k",
    "tcp-crr",
    "tcp-stream-1",
    "tcp-stream-n",
    "udp-pps-64",
];

fn is_service(mode: &str) -> bool {
    mode.ends_with("services") || mode.ends_with("iptables")
}

fn applies(test: &str, mode: &str) -> bool {
    !is_service(mode) || matches!(test, "tcp-rr-64" | "tcp-rr-1k" | "tcp-crr")
}

#[test]
fn quick_bench_measures_every_mode_and_writes_table_json_and_svg() {
    if !require_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("podswitch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json, svg) = (dir.join("report.json"), dir.join("report.svg"));
    let before = netns_matching("bn");
    let start = std::time::Instant::now();
    let table = podswitch_ok(&[
        "bench",
        "--quick",
        "--json",
        json.to_str().unwrap(),
        "--svg",
        svg.to_str().unwrap(),
    ]);
    eprintln!("{table}\n(--quick took {:?})", start.elapsed());
    // Nothing is left behind: no namespace of this run (its names start
    // with bn<pid>, its labs' with psw-bn<pid>).
    let left: Vec<String> = netns_matching("bn")
        .into_iter()
        .filter(|n| (n.starts_with("bn") || n.starts_with("psw-bn")) && !before.contains(n))
        .collect();
    assert!(left.is_empty(), "leftover namespaces: {left:?}");

    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("JSON written")).expect("JSON parses");
    for key in ["date", "kernel", "cpu", "cores", "podswitch_version"] {
        assert!(
            !r["meta"][key].is_null() && r["meta"][key] != "",
            "meta.{key}"
        );
    }
    // As root the run holds the CPUs out of deep idle states (and says so).
    let idle = r["meta"]["cpu_idle_states"].as_str().unwrap_or_default();
    assert!(
        idle.starts_with("off: /dev/cpu_dma_latency held at 0"),
        "cpu_idle_states: {idle:?}"
    );
    let modes = r["modes"].as_array().expect("modes");
    assert_eq!(modes.len(), MODES.len(), "{:?}", r["settings"]);
    let rounds = r["settings"]["rounds"].as_u64().unwrap() as usize;
    for name in MODES {
        let m = modes
            .iter()
            .find(|m| m["mode"] == name)
            .unwrap_or_else(|| panic!("mode {name} missing"));
        assert!(
            m["setup"]["mtu"].as_u64().unwrap_or(0) >= 1400,
            "{name}: MTU"
        );
        assert!(!m["setup"]["shape"].as_str().unwrap().is_empty());
        let metrics = m["metrics"].as_array().unwrap();
        let metric = |n: &str| -> &serde_json::Value {
            metrics
                .iter()
                .find(|x| x["name"] == n)
                .unwrap_or_else(|| panic!("{name}: metric {n} missing"))
        };
        let samples = |n: &str| -> Vec<f64> {
            let s: Vec<f64> = metric(n)["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().expect("a finite number"))
                .collect();
            assert_eq!(s.len(), rounds, "{name}: {n} has a sample per round");
            s
        };
        for test in TESTS.iter().filter(|t| applies(t, name)) {
            if test.contains("-rr-") {
                let q: Vec<Vec<f64>> = ["p50", "p90", "p99", "p99.9"]
                    .iter()
                    .map(|p| samples(&format!("{test} {p}")))
                    .collect();
                for round in 0..rounds {
                    let v: Vec<f64> = q.iter().map(|s| s[round]).collect();
                    assert!(
                        v.iter().all(|x| x.is_finite() && *x > 0.0),
                        "{name} {test}: {v:?}"
                    );
                    assert!(
                        v.windows(2).all(|w| w[0] <= w[1]),
                        "{name} {test}: percentiles out of order {v:?}"
                    );
                }
                let cdf = m["cdfs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["test"] == *test)
                    .unwrap_or_else(|| panic!("{name}: no CDF for {test}"));
                assert!(cdf["points"].as_array().unwrap().len() > 2);
            } else {
                let s = samples(test);
                assert!(
                    s.iter().all(|x| x.is_finite() && *x > 0.0),
                    "{name} {test}: {s:?}"
                );
            }
        }
        if applies("tcp-stream-1", name) {
            let cpu = samples("cpu-s-per-gb");
            assert!(cpu.iter().all(|x| x.is_finite() && *x >= 0.0), "{cpu:?}");
        }
    }
    // Every podswitch mode is compared with its kernel baseline.
    let comparisons = r["comparisons"].as_array().unwrap();
    for (ps, k) in [
        ("podswitch-local", "kernel-bridge"),
        ("podswitch-native", "kernel-hostgw"),
        ("podswitch-vxlan", "kernel-vxlan"),
        ("podswitch-services", "kernel-iptables"),
    ] {
        let c = comparisons
            .iter()
            .find(|c| c["podswitch"] == ps && c["kernel"] == k)
            .unwrap_or_else(|| panic!("no comparison {ps} vs {k}"));
        let rows = c["rows"].as_array().unwrap();
        assert!(!rows.is_empty());
        assert!(
            rows.iter()
                .all(|row| row["ratio"].as_f64().is_some_and(|x| x > 0.0)),
            "{ps}: {rows:?}"
        );
        assert!(
            table.contains(&format!("{ps} vs {k}")),
            "table lacks {ps} vs {k}"
        );
    }
    // The cross-check ran with both tools on the three non-Service
    // baselines (./run installs iperf3 and sockperf): whether the numbers
    // agree is reported, not asserted.
    let cc = r["crosscheck"].as_array().unwrap();
    for mode in ["kernel-bridge", "kernel-hostgw", "kernel-vxlan"] {
        for tool in ["iperf3", "sockperf"] {
            let c = cc
                .iter()
                .find(|c| c["mode"] == mode && c["tool"] == tool)
                .unwrap_or_else(|| panic!("no {tool} cross-check on {mode}"));
            let ext = c["external"].as_f64();
            assert!(
                ext.is_some_and(|x| x.is_finite() && x > 0.0),
                "{tool} on {mode} did not run: {c}"
            );
            assert!(c["disagreement"].as_f64().is_some());
        }
    }
    assert!(table.contains("Cross-check"));

    let svg = std::fs::read_to_string(&svg).expect("SVG written");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    // One series per mode in the TCP latency CDF (every mode has it), as
    // a legend entry (plotters puts a text's content on its own line).
    for name in MODES {
        assert!(
            svg.contains(&format!("\n{name}\n")),
            "SVG has no series for {name}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_rejects_unknown_modes_and_tests() {
    let out = podswitch(&["bench", "--modes", "calico"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown mode \"calico\""));
    let out = podswitch(&["bench", "--tests", "tcp-rr"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown test \"tcp-rr\""));
}
