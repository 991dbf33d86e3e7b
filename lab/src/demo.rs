//! `podswitch lab demo`, the README's first command: brings up the default
//! lab, checks connectivity between every pair of pods, measures latency
//! and throughput through podswitch and through the kernel bridge (the CNI
//! bridge plugin's layout) interleaved in the same run, prints a report,
//! and tears everything down, also on Ctrl-C.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Serialize;

use podswitch_switch::control::api::{Request, Stats};
use podswitch_switch::control::client;
use podswitch_switch::port::netns;

use super::bridge::KernelBridgeLab;
use super::cluster::{self, Lab, PodState};
use super::{probe, traffic};
use podswitch_agent::manifest::Protocol;

/// Runs `f` on a new thread inside the network namespace `path`.
pub fn spawn_in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let _guard = netns::enter(&path).with_context(|| format!("entering {}", path.display()))?;
        f()
    })
}

/// Runs `f` inside `path` and waits for it.
pub fn in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    spawn_in_netns(path, f)
        .join()
        .map_err(|_| anyhow::anyhow!("thread panicked"))?
}

/// One pair's connectivity result.
#[derive(Debug, Clone, Serialize)]
pub struct PairResult {
    pub from: String,
    pub to: String,
    pub icmp: bool,
    pub http_client_ip_kept: bool,
    pub udp_echo: bool,
}

/// One measured metric, podswitch vs the kernel bridge.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub metric: String,
    pub unit: String,
    pub higher_is_better: bool,
    pub podswitch: Vec<f64>,
    pub kernel_bridge: Vec<f64>,
    pub podswitch_median: f64,
    pub kernel_bridge_median: f64,
    /// podswitch relative to the kernel, >1 is better for podswitch.
    pub ratio: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub machine: Machine,
    pub pods: Vec<(String, String)>,
    pub gateway_ping: Vec<(String, bool)>,
    pub pairs: Vec<PairResult>,
    pub rounds: usize,
    pub comparisons: Vec<Comparison>,
    pub switch: Option<Stats>,
}

/// What makes the numbers reproducible.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpu: String,
    pub cores: usize,
    pub podswitch_version: String,
}

impl Machine {
    pub fn read() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            kernel,
            cpu,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            podswitch_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

/// Measures TCP throughput from `from` to a sink in `to` for `secs`.
pub fn measure_throughput(
    from: &Path,
    to: &Path,
    to_ip: IpAddr,
    port: u16,
    secs: f64,
) -> anyhow::Result<f64> {
    let (tx, rx) = mpsc::channel();
    let sink = spawn_in_netns(to, move || {
        let s = traffic::TcpSink::bind(SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port))?;
        let _ = tx.send(());
        s.run(Duration::from_secs_f64(secs + 30.0))
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("sink did not start")?;
    let dst = SocketAddr::new(to_ip, port);
    let sent = in_netns(from, move || {
        traffic::tcp_stream_send(dst, Duration::from_secs_f64(secs))
    })?;
    let got = sink
        .join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))??;
    if got.bytes != sent.bytes || got.crc32 != sent.crc32 {
        bail!(
            "throughput run corrupted data: sent {} B crc {:08x}, received {} B crc {:08x}",
            sent.bytes,
            sent.crc32,
            got.bytes,
            got.crc32
        );
    }
    Ok(sent.gbit_per_s)
}

/// Measures request/response latency from `from` to an rr server in `to`.
pub fn measure_rr(
    from: &Path,
    to: &Path,
    to_ip: IpAddr,
    port: u16,
    proto: Protocol,
    secs: f64,
) -> anyhow::Result<traffic::RrReport> {
    let (tx, rx) = mpsc::channel();
    let listen = SocketAddr::new(IpAddr::from([0, 0, 0, 0]), port);
    // The server thread lives until the process exits or its namespace is
    // torn down; it holds no resources the demo needs back.
    let _server = spawn_in_netns(to, move || {
        let s = traffic::RrServer::bind(proto, listen)?;
        let _ = tx.send(());
        s.run()
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("rr server did not start")?;
    let dst = SocketAddr::new(to_ip, port);
    in_netns(from, move || {
        traffic::rr_client(proto, dst, 64, Duration::from_secs_f64(secs), 10_000_000)
    })
}

fn check_pair(from: &PodState, to: &PodState) -> PairResult {
    let (dst, src_ip) = (to.ip, from.ip);
    let icmp = in_netns(&from.netns, move || {
        probe::icmp_probe(dst, 1, 64, Duration::from_secs(2))
    })
    .map(|r| r.echo_replies == 1)
    .unwrap_or(false);
    let http = in_netns(&from.netns, move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match probe::http_get(
                SocketAddr::new(IpAddr::V4(dst), 80),
                "demo",
                "/",
                Duration::from_secs(2),
            ) {
                Ok((200, body)) => return Ok(body),
                _ if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok((s, _)) => bail!("HTTP {s}"),
                Err(e) => return Err(e),
            }
        }
    })
    .map(|b| b.contains(&format!("ClientIP={src_ip} ")))
    .unwrap_or(false);
    let udp = in_netns(&from.netns, move || {
        traffic::udp_echo_check(
            SocketAddr::new(IpAddr::V4(dst), 9000),
            5,
            64,
            Duration::from_secs(2),
        )
    })
    .map(|r| r.received == 5 && r.mismatched == 0)
    .unwrap_or(false);
    PairResult {
        from: from.pod.name.clone(),
        to: to.pod.name.clone(),
        icmp,
        http_client_ip_kept: http,
        udp_echo: udp,
    }
}

/// Runs the demo end to end.
pub fn run(lab: &Lab, quick: bool, json_out: Option<&Path>, workers: usize) -> anyhow::Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    if lab.state()?.is_some() {
        eprintln!(
            "lab {} is up from an earlier run; tearing it down first",
            lab.paths().name
        );
        lab.down()?;
    }
    struct Teardown<'a>(&'a Lab);
    impl Drop for Teardown<'_> {
        fn drop(&mut self) {
            match self.0.down() {
                Ok(r) => eprintln!(
                    "teardown: {} process(es) stopped, {} namespace(s) removed",
                    r.processes, r.namespaces
                ),
                Err(e) => eprintln!("teardown failed: {e:#}"),
            }
        }
    }
    let _teardown = Teardown(lab);
    let check = |step: &str| -> anyhow::Result<()> {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted before {step}");
        }
        Ok(())
    };
    eprintln!("[1/4] bringing up the default lab (2 nodes, 3 pods) ...");
    let mut def = cluster::parse_lab(cluster::DEFAULT_LAB, "embedded default lab")?;
    def.lab.metadata.name = lab.paths().name.clone();
    def.lab.spec.workers_per_switch = workers;
    let st = lab.up(&def)?;
    let pods: Vec<PodState> = st.pods.values().cloned().collect();
    check("connectivity")?;
    eprintln!("[2/4] connectivity matrix ...");
    let gateway_ping: Vec<(String, bool)> = pods
        .iter()
        .map(|p| {
            let gw = st
                .nodes
                .iter()
                .find(|n| n.name == p.node)
                .and_then(|n| n.pod_cidr.hosts().next())
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
            (
                p.pod.name.clone(),
                in_netns(&p.netns, move || {
                    probe::icmp_probe(gw, 1, 64, Duration::from_secs(2))
                })
                .map(|r| r.echo_replies == 1)
                .unwrap_or(false),
            )
        })
        .collect();
    let mut pairs = Vec::new();
    for a in &pods {
        for b in &pods {
            if a.pod.name != b.pod.name {
                pairs.push(check_pair(a, b));
            }
        }
    }
    check("performance")?;
    eprintln!("[3/4] kernel bridge baseline lab ...");
    let kb = KernelBridgeLab::up(
        &format!("{}kb", lab.paths().prefix()),
        2,
        "10.244.250.0/24".parse().expect("valid"),
        st.spec.mtu,
    )?;
    let rounds = if quick { 2 } else { 3 };
    let secs = if quick { 1.5 } else { 3.0 };
    let rr_secs = if quick { 1.0 } else { 2.0 };
    eprintln!("[4/4] measuring, {rounds} interleaved rounds (podswitch, kernel bridge, ...) ...");
    // As `podswitch bench` does: keep the CPUs out of deep idle states while
    // measuring, so a round trip does not measure a vCPU's wake-up.
    let idle_hold = crate::cpu::IdleStatesHold::take(true);
    eprintln!("      CPU idle states {}", idle_hold.status);
    // The same-node comparison needs two pods on one node.
    let (a, b) = pods
        .iter()
        .enumerate()
        .find_map(|(i, a)| {
            pods[i + 1..]
                .iter()
                .find(|b| b.node == a.node)
                .map(|b| (a, b))
        })
        .context("no two pods share a node")?;
    struct Series {
        metric: &'static str,
        unit: &'static str,
        higher_is_better: bool,
        podswitch: Vec<f64>,
        kernel: Vec<f64>,
    }
    let series = |metric, unit, higher_is_better| Series {
        metric,
        unit,
        higher_is_better,
        podswitch: vec![],
        kernel: vec![],
    };
    let mut m = [
        series("TCP throughput, 1 stream", "Gbit/s", true),
        series("TCP request/response 64 B, p50", "us", false),
        series("TCP request/response 64 B, p99", "us", false),
        series("UDP request/response 64 B, p50", "us", false),
    ];
    let mut port = 7000u16;
    for round in 0..rounds {
        check("the next round")?;
        for side in 0..2 {
            let (from, to, to_ip): (PathBuf, PathBuf, IpAddr) = if side == 0 {
                (a.netns.clone(), b.netns.clone(), IpAddr::V4(b.ip))
            } else {
                (
                    kb.pod_netns(0).to_path_buf(),
                    kb.pod_netns(1).to_path_buf(),
                    IpAddr::V4(kb.pod_ip(1)),
                )
            };
            port += 3;
            let tput = measure_throughput(&from, &to, to_ip, port, secs)
                .with_context(|| format!("round {round} throughput"))?;
            let tcp = measure_rr(&from, &to, to_ip, port + 1, Protocol::Tcp, rr_secs)?;
            let udp = measure_rr(&from, &to, to_ip, port + 2, Protocol::Udp, rr_secs)?;
            let vals = [tput, tcp.p50_us, tcp.p99_us, udp.p50_us];
            for (i, v) in vals.iter().enumerate() {
                if side == 0 {
                    m[i].podswitch.push(*v);
                } else {
                    m[i].kernel.push(*v);
                }
            }
        }
    }
    let comparisons: Vec<Comparison> = m
        .into_iter()
        .map(|s| {
            let (pm, km) = (median(&s.podswitch), median(&s.kernel));
            let hib = s.higher_is_better;
            Comparison {
                metric: s.metric.into(),
                unit: s.unit.into(),
                higher_is_better: hib,
                ratio: if hib { pm / km } else { km / pm },
                podswitch: s.podswitch,
                kernel_bridge: s.kernel,
                podswitch_median: pm,
                kernel_bridge_median: km,
            }
        })
        .collect();
    let switch = client::call::<Stats>(
        &st.nodes
            .iter()
            .find(|n| n.name == a.node)
            .unwrap_or(&st.nodes[0])
            .control_socket,
        &Request::GetStats,
    )
    .ok();
    drop(kb);
    let report = DemoReport {
        machine: Machine::read(),
        pods: pods
            .iter()
            .map(|p| (p.pod.name.clone(), p.ip.to_string()))
            .collect(),
        gateway_ping,
        pairs,
        rounds,
        comparisons,
        switch,
    };
    print!("{}", render(&report));
    if let Some(path) = json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let ok = report.gateway_ping.iter().all(|(_, ok)| *ok)
        && report
            .pairs
            .iter()
            .all(|p| p.icmp && p.http_client_ip_kept && p.udp_echo);
    if !ok {
        bail!("connectivity check failed (see the table above)");
    }
    Ok(())
}

fn mark(ok: bool) -> &'static str {
    if ok {
        "ok"
    } else {
        "FAIL"
    }
}

/// The human report.
pub fn render(r: &DemoReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "\npodswitch lab demo - podswitch {} on Linux {}, {} ({} cores)\n\n",
        r.machine.podswitch_version, r.machine.kernel, r.machine.cpu, r.machine.cores
    ));
    s.push_str("Pods (one tap each, their node's switch is their gateway):\n");
    for ((name, ip), (_, gw)) in r.pods.iter().zip(&r.gateway_ping) {
        s.push_str(&format!(
            "  {name:<28} {ip:<14} gateway ping {}\n",
            mark(*gw)
        ));
    }
    s.push_str("\nConnectivity matrix (ICMP echo, HTTP to the echo workload with the client's own IP seen, UDP echo):\n");
    for p in &r.pairs {
        s.push_str(&format!(
            "  {:<28} -> {:<28} icmp {:<4} http {:<4} udp {}\n",
            p.from,
            p.to,
            mark(p.icmp),
            mark(p.http_client_ip_kept),
            mark(p.udp_echo)
        ));
    }
    s.push_str(&format!("\nSame-node pod to pod, median of {} interleaved rounds (podswitch vs kernel bridge + veth, the CNI bridge plugin's layout):\n", r.rounds));
    s.push_str(&format!(
        "  {:<34} {:>12} {:>14} {:>8}   {}\n",
        "metric", "podswitch", "kernel bridge", "ratio", "range podswitch / kernel"
    ));
    for c in &r.comparisons {
        let range = |v: &[f64]| {
            format!(
                "{:.1}-{:.1}",
                v.iter().cloned().fold(f64::INFINITY, f64::min),
                v.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            )
        };
        s.push_str(&format!(
            "  {:<34} {:>12} {:>14} {:>7.2}x   {} / {}\n",
            format!("{} ({})", c.metric, c.unit),
            format!("{:.2}", c.podswitch_median),
            format!("{:.2}", c.kernel_bridge_median),
            c.ratio,
            range(&c.podswitch),
            range(&c.kernel_bridge)
        ));
    }
    s.push_str("  (ratio > 1 means podswitch is better)\n");
    if let Some(st) = &r.switch {
        let d = &st.datapath;
        s.push_str(&format!("\nSwitch counters: rx {} / tx {} packets, {} forwarded ({} as TSO superframes), {} ARP and {} echo replies, {} ICMP errors\n", d.rx_packets, d.tx_packets, d.forwarded_local, d.gso_superframes, d.arp_replies, d.icmp_echo_replies, d.icmp_errors_sent));
        for dr in &d.drops {
            s.push_str(&format!(
                "  drop {}/{}: {} packets ({})\n",
                dr.stage, dr.reason, dr.packets, dr.description
            ));
        }
    }
    s
}
