//! The workers' poll modes on a running switch: each mode forwards real
//! traffic (through io_uring and through read/write), `ctl config` shows
//! the mode in force, the per-worker time
//! accounting says what the mode does (a polling worker polls, an
//! interrupt-driven one is woken), and an idle switch in the default mode
//! costs next to nothing.
//!
//! ```text
//!   pod a ──tap──┐
//!                ├── switch (node-1 netns)   ctl poll-mode interrupt|adaptive|poll
//!   pod b ──tap──┘
//! ```

mod common;

use common::*;
use std::time::{Duration, Instant};

/// Summed per-worker poll counters of the node's switch.
#[derive(Debug, Default, Clone, Copy)]
struct PollTotals {
    working_ns: u64,
    polling_ns: u64,
    sleeping_ns: u64,
    wakeups: u64,
    empty_polls: u64,
}

fn poll_totals(lab: &TestLab) -> PollTotals {
    let s = lab.stats("node-1");
    let workers = s["datapath"]["workers"].as_array().expect("workers");
    assert!(!workers.is_empty(), "no per-worker poll stats: {s}");
    let mut t = PollTotals::default();
    for w in workers {
        let f = |k: &str| w[k].as_u64().unwrap_or_else(|| panic!("{k} in {w}"));
        t.working_ns += f("working_ns");
        t.polling_ns += f("polling_ns");
        t.sleeping_ns += f("sleeping_ns");
        t.wakeups += f("wakeups");
        t.empty_polls += f("empty_polls");
    }
    t
}

fn set_mode(lab: &TestLab, mode: &str) {
    let out = podswitch_ok(&["ctl", "-s", &lab.socket("node-1"), "poll-mode", mode]);
    assert!(out.contains(&format!("poll mode {mode}")), "{out}");
    let cfg: serde_json::Value = serde_json::from_str(&podswitch_ok(&[
        "ctl",
        "-s",
        &lab.socket("node-1"),
        "config",
        "-o",
        "json",
    ]))
    .expect("config json");
    assert_eq!(cfg["config"]["poll_mode"], mode, "ctl config: {cfg}");
}

/// UDP echo of `count` datagrams from a to b; all must come back.
fn echo(lab: &TestLab, a: &str, b_ip: &str, count: u32) {
    let r = lab.tool(
        a,
        &[
            "udp-echo",
            "--to",
            &format!("{b_ip}:9000"),
            "--count",
            &count.to_string(),
        ],
    );
    assert_eq!(
        r["received"].as_u64(),
        Some(u64::from(count)),
        "udp echo: {r}"
    );
}

/// CPU seconds (user + system) of process `pid` so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted after the comm.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// The pid of the node's switch, found by its control socket.
fn switch_pid(lab: &TestLab) -> u32 {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("switch run .*{}", lab.socket("node-1"))])
        .output()
        .expect("pgrep");
    let text = String::from_utf8_lossy(&out.stdout);
    let pids: Vec<u32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert_eq!(pids.len(), 1, "switch processes: {text:?}");
    pids[0]
}

#[test]
fn every_poll_mode_forwards_and_accounts_its_time() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("pollmodes", None);
    let pods = lab.pods();
    let (a, _) = &pods[0];
    let (_, b_ip) = &pods[1];
    // Warm up (neighbours, the echo server).
    echo(&lab, a, b_ip, 5);

    // poll: the workers never park. While idle, their time goes to
    // polling, counted as empty polls, and they are not woken.
    set_mode(&lab, "poll");
    echo(&lab, a, b_ip, 50);
    let before = poll_totals(&lab);
    std::thread::sleep(Duration::from_millis(500));
    let after = poll_totals(&lab);
    // Summed over the workers: each of them polls the whole time.
    let polled_ms = (after.polling_ns - before.polling_ns) / 1_000_000;
    let slept_ms = (after.sleeping_ns - before.sleeping_ns) / 1_000_000;
    let empty = after.empty_polls - before.empty_polls;
    eprintln!("poll: 500 ms idle: polling {polled_ms} ms, sleeping {slept_ms} ms, {empty} empty polls, {} wake-ups", after.wakeups - before.wakeups);
    assert!(empty > 1000, "poll mode: {empty} empty polls in 500 ms");
    assert_eq!(slept_ms, 0, "poll mode parked for {slept_ms} ms");
    assert!(
        polled_ms >= 400,
        "poll mode polled only {polled_ms} ms of 500"
    );

    // interrupt: the workers park at once; traffic wakes them, and they
    // never spin.
    set_mode(&lab, "interrupt");
    std::thread::sleep(Duration::from_millis(300));
    let before = poll_totals(&lab);
    echo(&lab, a, b_ip, 50);
    let after = poll_totals(&lab);
    let wakeups = after.wakeups - before.wakeups;
    let empty = after.empty_polls - before.empty_polls;
    eprintln!("interrupt: 50 echoes: {wakeups} wake-ups, {empty} empty polls");
    // udp-echo sends in bursts, so a wake-up may serve several frames.
    assert!(wakeups >= 1, "interrupt mode: no wake-up for 50 echoes");
    assert!(
        after.working_ns > before.working_ns,
        "interrupt mode: no working time for 50 echoes"
    );
    assert_eq!(empty, 0, "interrupt mode busy-polled {empty} times");

    // adaptive (the default): polls after traffic, parks when idle.
    set_mode(&lab, "adaptive");
    std::thread::sleep(Duration::from_millis(300));
    let before = poll_totals(&lab);
    echo(&lab, a, b_ip, 50);
    std::thread::sleep(Duration::from_millis(500));
    let after = poll_totals(&lab);
    let empty = after.empty_polls - before.empty_polls;
    let polled_ms = (after.polling_ns - before.polling_ns) as f64 / 1e6;
    let slept_ms = (after.sleeping_ns - before.sleeping_ns) as f64 / 1e6;
    eprintln!(
        "adaptive: 50 echoes + 500 ms idle: {empty} empty polls, polling {polled_ms:.1} ms, sleeping {slept_ms:.1} ms, {} wake-ups",
        after.wakeups - before.wakeups
    );
    assert!(empty > 0, "adaptive mode never busy-polled after traffic");
    assert!(
        slept_ms > polled_ms,
        "adaptive mode polled {polled_ms:.1} ms and slept only {slept_ms:.1} ms while mostly idle"
    );
    // Every mode change went through without losing a frame.
    echo(&lab, a, b_ip, 20);

    // The tap I/O switches the same way: batched through io_uring (the
    // default where the kernel has it, as here) and one read/write per
    // frame; both forward.
    assert_eq!(lab.stats("node-1")["io_backend"], "io_uring");
    for backend in ["syscalls", "io_uring"] {
        let out = podswitch_ok(&["ctl", "-s", &lab.socket("node-1"), "io-backend", backend]);
        assert!(out.contains(&format!("tap I/O {backend}")), "{out}");
        assert_eq!(lab.stats("node-1")["io_backend"], backend);
        let rx = lab.stats("node-1")["datapath"]["rx_packets"]
            .as_u64()
            .unwrap();
        echo(&lab, a, b_ip, 30);
        let rx2 = lab.stats("node-1")["datapath"]["rx_packets"]
            .as_u64()
            .unwrap();
        assert!(
            rx2 >= rx + 60,
            "{backend}: {rx} -> {rx2} frames read for 30 echoes"
        );
    }
    assert_eq!(lab.drops("node-1", "tx_queue_full"), 0);

    // A bad mode is refused with the choices, and changes nothing.
    let out = podswitch(&["ctl", "-s", &lab.socket("node-1"), "poll-mode", "busy"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interrupt, adaptive, poll"), "{err}");
    let out = podswitch(&[
        "ctl",
        "-s",
        &lab.socket("node-1"),
        "poll-mode",
        "adaptive",
        "--budget-us",
        "0",
    ]);
    assert!(!out.status.success(), "a zero budget was accepted");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("budget"), "{err}");
}

#[test]
fn idle_switch_in_the_default_mode_costs_under_one_percent_of_a_core() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("pollidle", None);
    let pods = lab.pods();
    let (a, _) = &pods[0];
    let (_, b_ip) = &pods[1];
    echo(&lab, a, b_ip, 20);
    let cfg = podswitch_ok(&["ctl", "-s", &lab.socket("node-1"), "config"]);
    assert!(cfg.contains("poll_mode = \"adaptive\""), "{cfg}");
    let pid = switch_pid(&lab);
    // Let the workers park after the echoes.
    std::thread::sleep(Duration::from_millis(200));
    let (t0, c0) = (Instant::now(), cpu_seconds(pid));
    std::thread::sleep(Duration::from_secs(10));
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_seconds(pid) - c0);
    let share = 100.0 * cpu / wall;
    eprintln!("idle switch, adaptive: {cpu:.2} CPU s in {wall:.1} s = {share:.2} % of a core");
    assert!(share <= 1.0, "an idle switch used {share:.2} % of a core");
}
