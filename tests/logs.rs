//! Logs: the switch logs through tracing, as JSON on request (every line a
//! JSON object), and nothing per packet on the fast path, even at debug
//! level: thousands of forwarded packets add no log lines.
//!
//! ```text
//!   pod a (node-1) ── UDP echo x 2000 ──> pod b ... (default lab)
//!   node-1's switch: PODSWITCH_LOG_FORMAT=json PODSWITCH_LOG=debug
//! ```

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{require_root, wait_until, TestLab};

/// The lab's log of node `node`'s switch (lab/src/cluster.rs).
fn switch_log(lab: &TestLab, node: &str) -> PathBuf {
    PathBuf::from("/run/podswitch/lab")
        .join(&lab.name)
        .join("logs")
        .join(format!("{node}-switch.log"))
}

fn log_lines(path: &PathBuf) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn json_logs_and_nothing_per_packet_at_debug_level() {
    if !require_root() {
        return;
    }
    // Inherited by `lab up` and the switches it starts (this test binary
    // has this one test, so no other thread reads the environment).
    std::env::set_var("PODSWITCH_LOG_FORMAT", "json");
    std::env::set_var("PODSWITCH_LOG", "debug");
    let lab = TestLab::up("logs", None);
    let log = switch_log(&lab, "node-1");
    assert!(
        wait_until(Duration::from_secs(10), || !log_lines(&log).is_empty()),
        "no switch log at {}",
        log.display()
    );
    let pods = lab.pods();
    let (a, _) = &pods[0];
    let (_, b_ip) = &pods[1];
    // Let start-up logging settle, then count.
    let settled = wait_until(Duration::from_secs(10), || {
        let n = log_lines(&log).len();
        std::thread::sleep(Duration::from_millis(300));
        log_lines(&log).len() == n
    });
    assert!(settled, "the switch log keeps growing while idle");
    let before = log_lines(&log).len();
    let r = lab.tool(
        a,
        &[
            "udp-echo",
            "--to",
            &format!("{b_ip}:9000"),
            "--count",
            "2000",
        ],
    );
    assert_eq!(r["received"].as_u64(), Some(2000), "udp echo: {r}");
    let lines = log_lines(&log);
    let added = lines.len() - before;
    eprintln!(
        "node-1 switch log: {} JSON lines, {added} during 2000 UDP echoes",
        lines.len()
    );
    // 4000 forwarded packets (and their ARP) on node-1's switch: no line
    // may be per packet. A handful of control-side lines is allowed.
    assert!(
        added < 10,
        "{added} log lines during 2000 echoes: {:#?}",
        &lines[before..]
    );
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"));
        assert!(v["level"].is_string(), "no level: {l}");
        assert!(v["timestamp"].is_string(), "no timestamp: {l}");
        assert!(v["fields"].is_object(), "no fields: {l}");
    }
    // Debug level was really on (start-up logs at debug exist), so the
    // silence above is not the filter's doing.
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
        "no debug line at PODSWITCH_LOG=debug: {lines:#?}"
    );
}
