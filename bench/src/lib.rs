//! `podswitch bench`: overlay vs native vs kernel, measured in one run.
//!
//! Every mode gets a lab of the same shape (TESTBED.md addresses, all in
//! namespaces this run creates, with a per-run name prefix), and every
//! test runs interleaved over the modes (round 1: A B C ..., round 2:
//! A B C ...), so that a slow phase of this shared 2-core machine lands on
//! every mode alike and the per-round ratios stay meaningful.
//!
//! | mode | lab | path measured |
//! | --- | --- | --- |
//! | `kernel-bridge` | [`KernelBridgeLab`] | pod -> cni0 bridge -> pod, one node |
//! | `kernel-hostgw` | [`KernelNodesLab`] host-gw | pod -> node 1 routes via node 2 -> pod |
//! | `kernel-vxlan` | [`KernelNodesLab`] vxlan | pod -> flannel.1 (VXLAN) -> node 2 -> pod |
//! | `kernel-iptables` | [`KernelServiceLab`] | pod -> ClusterIP DNAT (kube-proxy's rules) -> 3 backends |
//! | `podswitch-local` | podswitch lab, native | pod -> switch -> pod, one node |
//! | `podswitch-native` | same lab | pod -> switch 1 -> node 1 kernel -> node 2 -> switch 2 -> pod |
//! | `podswitch-vxlan` | podswitch lab, vxlan | pod -> switch 1 =VXLAN= switch 2 -> pod |
//! | `podswitch-services` | the native lab | pod -> switch (ClusterIP, Maglev, DNAT) -> 3 backends |
//!
//! Tests: request/response latency ([`load::rr_histogram`]; TCP and UDP,
//! 64 B and 1 KiB; percentiles from an HDR histogram), new connections
//! ([`traffic::tcp_crr`]), TCP throughput with one and with N streams
//! ([`load::stream_send`] into [`load::StreamSink`], counted like iperf3),
//! the small-packet rate ([`load::udp_flood`], 64-byte UDP payloads
//! counted at the receiver) and CPU seconds per GB during the one-stream
//! run ([`cpu`]). The Service modes run the TCP tests that go through a
//! ClusterIP (rr and crr). Afterwards the built-in generator is
//! cross-checked on the kernel baselines against iperf3 and sockperf
//! ([`external`]), alternating runs of the same length on the same path.
#![forbid(unsafe_code)]

pub use podswitch_lab::cpu;
pub mod external;
pub mod kernel_nodes;
pub mod load;
pub mod plot;
pub mod report;
pub mod stats;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use podswitch_switch::control::api::{
    EndpointSpec, IoBackendSet, PollSettings, Request, ServicePortSpec, ServiceSpec,
    ServicesApplied,
};
use podswitch_switch::control::client;
use podswitch_switch::worker::poll::PollMode;
use podswitch_switch::worker::IoBackend;

use podswitch_agent::manifest::Protocol;
use podswitch_lab::bridge::KernelBridgeLab;
use podswitch_lab::cluster::{self, Lab, LabState};
use podswitch_lab::demo::{in_netns, spawn_in_netns, Machine};
use podswitch_lab::kube_proxy::{self, KernelServiceLab};
use podswitch_lab::traffic;

use kernel_nodes::{Backend, KernelNodesLab};
use report::{Cdf, Comparison, CrossCheck, Meta, Metric, ModeReport, ModeSetup, Report, Settings};

/// A network setup measured by the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    KernelBridge,
    KernelHostGw,
    KernelVxlan,
    KernelIptables,
    PodswitchLocal,
    PodswitchNative,
    PodswitchVxlan,
    PodswitchServices,
}

impl Mode {
    /// Every mode, in report order.
    pub const ALL: [Mode; 8] = [
        Mode::PodswitchLocal,
        Mode::KernelBridge,
        Mode::PodswitchNative,
        Mode::KernelHostGw,
        Mode::PodswitchVxlan,
        Mode::KernelVxlan,
        Mode::PodswitchServices,
        Mode::KernelIptables,
    ];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::KernelBridge => "kernel-bridge",
            Mode::KernelHostGw => "kernel-hostgw",
            Mode::KernelVxlan => "kernel-vxlan",
            Mode::KernelIptables => "kernel-iptables",
            Mode::PodswitchLocal => "podswitch-local",
            Mode::PodswitchNative => "podswitch-native",
            Mode::PodswitchVxlan => "podswitch-vxlan",
            Mode::PodswitchServices => "podswitch-services",
        }
    }

    /// Parses a [`Mode::name`].
    pub fn parse(s: &str) -> anyhow::Result<Mode> {
        Mode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .with_context(|| {
                format!(
                    "unknown mode {s:?} (modes: {})",
                    Mode::ALL.map(Mode::name).join(", ")
                )
            })
    }

    /// Whether this is a kernel baseline.
    pub fn is_kernel(self) -> bool {
        matches!(
            self,
            Mode::KernelBridge | Mode::KernelHostGw | Mode::KernelVxlan | Mode::KernelIptables
        )
    }

    /// The kernel baseline a podswitch mode is compared with.
    pub fn baseline(self) -> Option<Mode> {
        match self {
            Mode::PodswitchLocal => Some(Mode::KernelBridge),
            Mode::PodswitchNative => Some(Mode::KernelHostGw),
            Mode::PodswitchVxlan => Some(Mode::KernelVxlan),
            Mode::PodswitchServices => Some(Mode::KernelIptables),
            _ => None,
        }
    }

    /// Whether traffic goes to a ClusterIP (only the TCP tests apply).
    pub fn is_service(self) -> bool {
        matches!(self, Mode::KernelIptables | Mode::PodswitchServices)
    }
}

/// One kind of measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Test {
    TcpRr64,
    TcpRr1k,
    UdpRr64,
    UdpRr1k,
    TcpCrr,
    TcpStream1,
    TcpStreamN,
    UdpPps64,
}

impl Test {
    /// Every test, in run order.
    pub const ALL: [Test; 8] = [
        Test::TcpRr64,
        Test::TcpRr1k,
        Test::UdpRr64,
        Test::UdpRr1k,
        Test::TcpCrr,
        Test::TcpStream1,
        Test::TcpStreamN,
        Test::UdpPps64,
    ];

    /// The name on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            Test::TcpRr64 => "tcp-rr-64",
            Test::TcpRr1k => "tcp-rr-1k",
            Test::UdpRr64 => "udp-rr-64",
            Test::UdpRr1k => "udp-rr-1k",
            Test::TcpCrr => "tcp-crr",
            Test::TcpStream1 => "tcp-stream-1",
            Test::TcpStreamN => "tcp-stream-n",
            Test::UdpPps64 => "udp-pps-64",
        }
    }

    /// Parses a [`Test::name`].
    pub fn parse(s: &str) -> anyhow::Result<Test> {
        Test::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .with_context(|| {
                format!(
                    "unknown test {s:?} (tests: {})",
                    Test::ALL.map(Test::name).join(", ")
                )
            })
    }

    /// Whether the test runs in `mode`: through a ClusterIP only the TCP
    /// request/response tests do (the Services have TCP ports only).
    pub fn applies(self, mode: Mode) -> bool {
        !mode.is_service() || matches!(self, Test::TcpRr64 | Test::TcpRr1k | Test::TcpCrr)
    }

    /// Request/response protocol and size, for the latency tests.
    fn rr(self) -> Option<(Protocol, usize)> {
        match self {
            Test::TcpRr64 => Some((Protocol::Tcp, 64)),
            Test::TcpRr1k => Some((Protocol::Tcp, 1024)),
            Test::UdpRr64 => Some((Protocol::Udp, 64)),
            Test::UdpRr1k => Some((Protocol::Udp, 1024)),
            _ => None,
        }
    }
}

/// What to run and for how long.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub quick: bool,
    pub modes: Vec<Mode>,
    /// The switches' poll modes; each podswitch mode runs once per poll
    /// mode, interleaved with the others (default: adaptive only).
    pub poll_modes: Vec<PollMode>,
    /// The switches' tap I/O, crossed with the poll modes (default: auto).
    pub io_backends: Vec<IoBackend>,
    pub tests: Vec<Test>,
    pub rounds: usize,
    /// Seconds per request/response measurement.
    pub rr_secs: f64,
    /// Seconds per TCP_CRR measurement.
    pub crr_secs: f64,
    /// Seconds per throughput measurement, after the warm-up.
    pub stream_secs: f64,
    /// Seconds of each throughput run left out at its start (connection
    /// set-up, slow start), as `iperf3 --omit` leaves them out.
    pub stream_warmup_secs: f64,
    /// Seconds per small-packet measurement.
    pub pps_secs: f64,
    /// Seconds of each iperf3/sockperf run (whole seconds, at least 1).
    pub crosscheck_secs: u64,
    /// Seconds of warm-up before each throughput run of the cross-check,
    /// on both sides (iperf3's `--omit`, whole seconds).
    pub crosscheck_warmup_secs: u64,
    /// Streams in `tcp-stream-n`.
    pub streams: usize,
    /// Services on both Service sides (the target plus synthetic ones).
    pub services: usize,
    /// Worker threads per switch (0 = one per core).
    pub workers: usize,
    /// Run the iperf3/sockperf cross-check.
    pub crosscheck: bool,
    /// Alternating runs of each side in the cross-check.
    pub crosscheck_runs: usize,
    /// Leave CPU idle states on (by default the run holds
    /// `/dev/cpu_dma_latency` at 0 so wake-ups do not dominate latency).
    pub allow_cpu_idle: bool,
}

impl BenchConfig {
    /// The defaults: `quick` finishes in under a minute on a 2-core
    /// machine; the full run in about four.
    pub fn new(quick: bool) -> Self {
        let (rounds, rr, crr, stream, warmup, pps, cc, cc_runs) = if quick {
            (2, 0.15, 0.15, 0.3, 0.1, 0.15, 1, 1)
        } else {
            (3, 0.8, 1.0, 1.5, 0.5, 1.0, 2, 5)
        };
        BenchConfig {
            quick,
            modes: Mode::ALL.to_vec(),
            poll_modes: vec![PollMode::default()],
            io_backends: vec![IoBackend::default()],
            tests: Test::ALL.to_vec(),
            rounds,
            rr_secs: rr,
            crr_secs: crr,
            stream_secs: stream,
            stream_warmup_secs: warmup,
            pps_secs: pps,
            crosscheck_secs: cc,
            crosscheck_warmup_secs: 1,
            streams: 4,
            services: 100,
            workers: 0,
            crosscheck: true,
            crosscheck_runs: cc_runs,
            allow_cpu_idle: false,
        }
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.modes.is_empty(), "no modes to measure");
        ensure!(!self.poll_modes.is_empty(), "no poll modes to measure");
        ensure!(
            !self.io_backends.is_empty(),
            "no tap I/O backends to measure"
        );
        ensure!(
            (1..=self.io_backends.len())
                .all(|i| !self.io_backends[i..].contains(&self.io_backends[i - 1])),
            "a tap I/O backend is listed twice"
        );
        ensure!(
            self.poll_modes
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                == self.poll_modes.len(),
            "a poll mode is listed twice"
        );
        ensure!(!self.tests.is_empty(), "no tests to run");
        ensure!(
            (1..=100).contains(&self.rounds),
            "rounds must be 1..=100, not {}",
            self.rounds
        );
        for (name, v) in [
            ("rr", self.rr_secs),
            ("crr", self.crr_secs),
            ("stream", self.stream_secs),
            ("pps", self.pps_secs),
        ] {
            ensure!(
                v.is_finite() && (0.05..=60.0).contains(&v),
                "{name} seconds must be 0.05..=60, not {v}"
            );
        }
        ensure!(
            self.stream_warmup_secs.is_finite() && (0.0..=10.0).contains(&self.stream_warmup_secs),
            "stream warm-up seconds must be 0..=10, not {}",
            self.stream_warmup_secs
        );
        ensure!(
            (1..=30).contains(&self.crosscheck_secs),
            "cross-check seconds must be 1..=30"
        );
        ensure!(
            self.crosscheck_warmup_secs <= 10,
            "cross-check warm-up seconds must be 0..=10"
        );
        ensure!(
            (1..=10).contains(&self.crosscheck_runs),
            "cross-check runs must be 1..=10"
        );
        ensure!(
            (1..=16).contains(&self.streams),
            "streams must be 1..=16, not {}",
            self.streams
        );
        ensure!(
            (1..=kube_proxy::MAX_SERVICES).contains(&self.services),
            "services must be 1..={}",
            kube_proxy::MAX_SERVICES
        );
        Ok(())
    }
}

/// The TCP and UDP request/response servers' port in a server pod.
const RR_PORT: u16 = 7001;
/// The small-packet receiver's port.
const PPS_PORT: u16 = 7002;
/// First port of the throughput sinks (each run takes the next ones).
const SINK_PORT_BASE: u16 = 7100;
/// iperf3's server port (sockperf's is the next).
const EXTERNAL_PORT: u16 = 5201;
/// Cap on transactions per measurement (the deadline comes first).
const MAX_TRANSACTIONS: u64 = 10_000_000;

/// The podswitch lab of the native modes: two nodes; on node 1 the client,
/// a server and the three Service backends, on node 2 a server.
const NATIVE_LAB: &str = r#"
apiVersion: lab.podswitch.io/v1alpha1
kind: Lab
metadata:
  name: bench
spec:
  nodes: 2
  clusterCIDR: 10.244.0.0/16
  mtu: 1500
  mode: native
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node-1, containers: [{name: echo, image: podswitch/echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: local}
spec: {nodeName: node-1, containers: [{name: echo, image: podswitch/echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: remote}
spec: {nodeName: node-2, containers: [{name: echo, image: podswitch/echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: crr-0, labels: {app: crr}}
spec: {nodeName: node-1, containers: [{name: echo, image: podswitch/echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: crr-1, labels: {app: crr}}
spec: {nodeName: node-1, containers: [{name: echo, image: podswitch/echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: crr-2, labels: {app: crr}}
spec: {nodeName: node-1, containers: [{name: echo, image: podswitch/echo}]}
"#;

/// The podswitch lab of the VXLAN mode: two nodes, a pod on each.
const VXLAN_LAB: &str = r#"
apiVersion: lab.podswitch.io/v1alpha1
kind: Lab
metadata:
  name: bench
spec:
  nodes: 2
  clusterCIDR: 10.244.0.0/16
  mtu: 1500
  mode: vxlan
---
apiVersion: v1
kind: Pod
metadata: {name: client}
spec: {nodeName: node-1, containers: [{name: echo, image: podswitch/echo}]}
---
apiVersion: v1
kind: Pod
metadata: {name: remote}
spec: {nodeName: node-2, containers: [{name: echo, image: podswitch/echo}]}
"#;

/// Where one mode's traffic goes.
#[derive(Debug, Clone)]
struct Target {
    mode: Mode,
    client: PathBuf,
    /// The server pod; None for the Service modes (three backends).
    server: Option<PathBuf>,
    /// The request/response server (a pod, or the ClusterIP).
    rr: SocketAddr,
    server_ip: Ipv4Addr,
    /// Switch processes of the mode, for the CPU accounting.
    switch_pids: Vec<i32>,
    /// Their control sockets, to set the poll mode.
    switch_sockets: Vec<PathBuf>,
    /// The poll mode this target runs its switches in (podswitch modes;
    /// set before each of its tests, so targets may share a lab).
    poll_mode: Option<PollMode>,
    /// The tap I/O its switches use, set like the poll mode.
    io_backend: Option<IoBackend>,
    setup: ModeSetup,
}

impl Target {
    /// The mode's name, with the poll mode when the run compares several
    /// (`podswitch-local@poll`).
    /// and with the tap I/O when it compares several
    /// (`podswitch-local@adaptive/syscalls`).
    fn label(&self, several_poll_modes: bool, several_io_backends: bool) -> String {
        let mut l = self.mode.name().to_string();
        if let (Some(p), true) = (self.poll_mode, several_poll_modes) {
            l = format!("{l}@{}", p.name());
        }
        if let (Some(b), true) = (self.io_backend, several_io_backends) {
            l = format!("{l}/{}", b.name());
        }
        l
    }

    /// Puts the target's switches in its poll mode and tap I/O.
    fn enter_poll_mode(&self) -> anyhow::Result<()> {
        if let Some(backend) = self.io_backend {
            for sock in &self.switch_sockets {
                let _: IoBackendSet = client::call(
                    sock,
                    &Request::SetIoBackend(podswitch_api::SetIoBackendArgs { backend }),
                )
                .with_context(|| format!("setting tap I/O {backend} on {}", sock.display()))?;
            }
        }
        let Some(mode) = self.poll_mode else {
            return Ok(());
        };
        for sock in &self.switch_sockets {
            let _: PollSettings = client::call(
                sock,
                &Request::SetPollMode(podswitch_api::SetPollModeArgs {
                    mode,
                    budget_us: None,
                }),
            )
            .with_context(|| format!("setting poll mode {mode} on {}", sock.display()))?;
        }
        Ok(())
    }
}

/// A podswitch lab torn down on drop.
struct LabGuard(Lab);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.down() {
            eprintln!("bench: tearing down lab {}: {e:#}", self.0.paths().name);
        }
    }
}

/// Every lab of the run; dropping it tears them all down.
#[derive(Default)]
struct Labs {
    podswitch: Vec<LabGuard>,
    bridge: Option<KernelBridgeLab>,
    hostgw: Option<KernelNodesLab>,
    vxlan: Option<KernelNodesLab>,
    iptables: Option<KernelServiceLab>,
}

/// Serves request/response (TCP and UDP) on [`RR_PORT`] in `ns`, from
/// threads that live as long as the process (or the namespace).
fn start_rr_servers(ns: &Path, port: u16) -> anyhow::Result<()> {
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let listen = SocketAddr::from(([0, 0, 0, 0], port));
        let server = in_netns(ns, move || traffic::RrServer::bind(proto, listen))
            .with_context(|| format!("starting the {proto} rr server in {}", ns.display()))?;
        std::thread::Builder::new()
            .name(format!("bench-rr-{proto}"))
            .spawn(move || server.run())
            .context("spawning an rr server thread")?;
    }
    Ok(())
}

/// `net.ipv4.tcp_tw_reuse=1` in a client pod, as the kube-proxy lab's
/// client has it: TCP_CRR leaves a TIME_WAIT socket per transaction.
fn tw_reuse(ns: &Path) -> anyhow::Result<()> {
    in_netns(ns, || {
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")
            .context("setting net.ipv4.tcp_tw_reuse=1")
    })
}

/// The MTU and offloads of `eth0` in `ns` (iproute2 and ethtool; a
/// missing tool leaves the field empty).
fn link_setup(ns: &Path) -> (Option<u32>, BTreeMap<String, String>) {
    let Some(name) = ns.file_name().and_then(|n| n.to_str()) else {
        return (None, BTreeMap::new());
    };
    let mtu = Command::new("ip")
        .args(["-n", name, "-o", "link", "show", "dev", "eth0"])
        .output()
        .ok()
        .and_then(|o| {
            let t = String::from_utf8_lossy(&o.stdout).into_owned();
            let mut it = t.split_whitespace();
            it.find(|w| *w == "mtu")?;
            it.next()?.parse().ok()
        });
    let offloads = Command::new("ip")
        .args(["netns", "exec", name, "ethtool", "-k", "eth0"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| parse_ethtool_k(&String::from_utf8_lossy(&o.stdout)))
        .unwrap_or_default();
    (mtu, offloads)
}

/// The offloads that shape a path's cost, from `ethtool -k` output.
pub fn parse_ethtool_k(text: &str) -> BTreeMap<String, String> {
    const KEYS: [&str; 7] = [
        "rx-checksumming",
        "tx-checksumming",
        "scatter-gather",
        "tcp-segmentation-offload",
        "generic-segmentation-offload",
        "generic-receive-offload",
        "tx-udp-segmentation",
    ];
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let k = k.trim();
            KEYS.contains(&k).then(|| {
                (
                    k.to_string(),
                    v.split_whitespace().next().unwrap_or("").to_string(),
                )
            })
        })
        .collect()
}

fn podswitch_config(st: &LabState, workers: usize) -> BTreeMap<String, String> {
    let mut c = BTreeMap::new();
    c.insert("mode".into(), format!("{:?}", st.spec.mode).to_lowercase());
    c.insert(
        "workers".into(),
        if workers == 0 {
            "1/core".into()
        } else {
            workers.to_string()
        },
    );
    c.insert("pod_mtu".into(), st.spec.effective_pod_mtu().to_string());
    if st.spec.mode == podswitch_switch::control::api::ClusterMode::Vxlan {
        c.insert("vni".into(), st.spec.vni.to_string());
        c.insert("vxlan_port".into(), st.spec.vxlan_port.to_string());
    }
    c
}

/// The kube-proxy Services as the switch takes them (as
/// `podswitch lab bench-services` gives them).
fn service_specs(ports: &[kube_proxy::ServicePort], node: &str) -> Vec<ServiceSpec> {
    ports
        .iter()
        .map(|p| ServiceSpec {
            name: p.name.clone(),
            cluster_ips: vec![p.cluster_ip],
            external_ips: vec![],
            ports: vec![ServicePortSpec {
                name: String::new(),
                protocol: Default::default(),
                port: p.port,
                node_port: None,
                endpoints: p
                    .endpoints
                    .iter()
                    .map(|e| EndpointSpec {
                        ip: *e.ip(),
                        port: e.port(),
                        node: Some(node.to_string()),
                        ready: true,
                        terminating: false,
                        serving: None,
                    })
                    .collect(),
            }],
            affinity_timeout_secs: None,
            external_traffic_local: false,
            internal_traffic_local: false,
        })
        .collect()
}

fn pod<'a>(st: &'a LabState, name: &str) -> anyhow::Result<&'a cluster::PodState> {
    st.pods
        .values()
        .find(|p| p.pod.name == name)
        .with_context(|| format!("lab {} has no pod {name}", st.name))
}

fn switch_sockets(st: &LabState, nodes: &[&str]) -> Vec<PathBuf> {
    st.nodes
        .iter()
        .filter(|n| nodes.contains(&n.name.as_str()))
        .map(|n| n.control_socket.clone())
        .collect()
}

fn switch_pids(st: &LabState, nodes: &[&str]) -> Vec<i32> {
    st.nodes
        .iter()
        .filter(|n| nodes.contains(&n.name.as_str()))
        .filter_map(|n| n.switch_pid)
        .collect()
}

/// Brings up the labs the selected modes need and returns their targets.
fn build_labs(
    cfg: &BenchConfig,
    exe: &Path,
    prefix: &str,
    labs: &mut Labs,
) -> anyhow::Result<Vec<Target>> {
    let want = |m: Mode| cfg.modes.contains(&m);
    let mut targets = Vec::new();
    let native_modes = [
        Mode::PodswitchLocal,
        Mode::PodswitchNative,
        Mode::PodswitchServices,
    ];
    if native_modes.iter().any(|&m| want(m)) {
        let lab = Lab::new(&format!("{prefix}n"), exe.to_path_buf())?;
        if lab.state()?.is_some() {
            lab.down()?;
        }
        let mut def = cluster::parse_lab(NATIVE_LAB, "bench native lab")?;
        def.lab.metadata.name = lab.paths().name.clone();
        def.lab.spec.workers_per_switch = cfg.workers;
        let guard = LabGuard(lab);
        let st = guard
            .0
            .up(&def)
            .context("bringing up the podswitch native lab")?;
        labs.podswitch.push(guard);
        let client = pod(&st, "client")?;
        tw_reuse(&client.netns)?;
        let (mtu, offloads) = link_setup(&client.netns);
        let config = podswitch_config(&st, cfg.workers);
        for (mode, server, nodes, shape) in [
            (
                Mode::PodswitchLocal,
                "local",
                &["node-1"][..],
                "1 node, 2 pods on taps, switched by podswitch",
            ),
            (
                Mode::PodswitchNative,
                "remote",
                &["node-1", "node-2"][..],
                "2 nodes on an underlay bridge, 1 pod each, podswitch native routing",
            ),
        ] {
            if !want(mode) {
                continue;
            }
            let srv = pod(&st, server)?;
            start_rr_servers(&srv.netns, RR_PORT)?;
            targets.push(Target {
                mode,
                client: client.netns.clone(),
                server: Some(srv.netns.clone()),
                rr: SocketAddr::from((srv.ip, RR_PORT)),
                server_ip: srv.ip,
                switch_pids: switch_pids(&st, nodes),
                switch_sockets: switch_sockets(&st, nodes),
                poll_mode: None,
                io_backend: None,
                setup: ModeSetup {
                    shape: shape.into(),
                    mtu,
                    offloads: offloads.clone(),
                    podswitch_config: config.clone(),
                },
            });
        }
        if want(Mode::PodswitchServices) {
            let backends: Vec<&cluster::PodState> = st
                .pods
                .values()
                .filter(|p| p.pod.name.starts_with("crr-"))
                .collect();
            ensure!(backends.len() == 3, "expected 3 Service backends");
            for b in &backends {
                let listen = SocketAddr::from(([0, 0, 0, 0], kube_proxy::BACKEND_CRR_PORT));
                let server = in_netns(&b.netns, move || {
                    traffic::RrServer::bind(Protocol::Tcp, listen)
                })
                .with_context(|| format!("binding the rr server in {}", b.pod.name))?;
                std::thread::spawn(move || server.run());
            }
            let node = st.nodes.first().context("the lab has no node")?;
            let ips: Vec<Ipv4Addr> = backends.iter().map(|p| p.ip).collect();
            let ports = kube_proxy::service_ports(cfg.services, &ips)?;
            let _: ServicesApplied = client::call(
                &node.control_socket,
                &Request::SetServices(podswitch_api::SetServicesArgs {
                    settings: None,
                    services: service_specs(&ports, &node.name),
                }),
            )
            .with_context(|| format!("giving the switch {} services", cfg.services))?;
            let mut c = config.clone();
            c.insert("services".into(), cfg.services.to_string());
            targets.push(Target {
                mode: Mode::PodswitchServices,
                client: client.netns.clone(),
                server: None,
                rr: KernelServiceLab::crr_target(),
                server_ip: kube_proxy::TARGET_CLUSTER_IP,
                switch_pids: switch_pids(&st, &["node-1"]),
                switch_sockets: switch_sockets(&st, &["node-1"]),
                poll_mode: None,
                io_backend: None,
                setup: ModeSetup {
                    shape: format!(
                        "1 node, client + 3 backends, ClusterIP {} of {} Services in podswitch",
                        kube_proxy::TARGET_CLUSTER_IP,
                        cfg.services
                    ),
                    mtu,
                    offloads,
                    podswitch_config: c,
                },
            });
        }
    }
    if want(Mode::PodswitchVxlan) {
        let lab = Lab::new(&format!("{prefix}v"), exe.to_path_buf())?;
        if lab.state()?.is_some() {
            lab.down()?;
        }
        let mut def = cluster::parse_lab(VXLAN_LAB, "bench vxlan lab")?;
        def.lab.metadata.name = lab.paths().name.clone();
        def.lab.spec.workers_per_switch = cfg.workers;
        let guard = LabGuard(lab);
        let st = guard
            .0
            .up(&def)
            .context("bringing up the podswitch vxlan lab")?;
        labs.podswitch.push(guard);
        let client = pod(&st, "client")?;
        let srv = pod(&st, "remote")?;
        tw_reuse(&client.netns)?;
        start_rr_servers(&srv.netns, RR_PORT)?;
        let (mtu, offloads) = link_setup(&client.netns);
        targets.push(Target {
            mode: Mode::PodswitchVxlan,
            client: client.netns.clone(),
            server: Some(srv.netns.clone()),
            rr: SocketAddr::from((srv.ip, RR_PORT)),
            server_ip: srv.ip,
            switch_pids: switch_pids(&st, &["node-1", "node-2"]),
            switch_sockets: switch_sockets(&st, &["node-1", "node-2"]),
            poll_mode: None,
            io_backend: None,
            setup: ModeSetup {
                shape: "2 nodes on an underlay bridge, 1 pod each, podswitch VXLAN (UDP 4789)"
                    .into(),
                mtu,
                offloads,
                podswitch_config: podswitch_config(&st, cfg.workers),
            },
        });
    }
    let kernel_target = |mode: Mode,
                         client: &Path,
                         server: &Path,
                         ip: Ipv4Addr,
                         shape: &str|
     -> anyhow::Result<Target> {
        tw_reuse(client)?;
        start_rr_servers(server, RR_PORT)?;
        let (mtu, offloads) = link_setup(client);
        Ok(Target {
            mode,
            client: client.to_path_buf(),
            server: Some(server.to_path_buf()),
            rr: SocketAddr::from((ip, RR_PORT)),
            server_ip: ip,
            switch_pids: vec![],
            switch_sockets: vec![],
            poll_mode: None,
            io_backend: None,
            setup: ModeSetup {
                shape: shape.into(),
                mtu,
                offloads,
                podswitch_config: BTreeMap::new(),
            },
        })
    };
    if want(Mode::KernelBridge) {
        let kb = KernelBridgeLab::up(
            prefix,
            2,
            "10.244.250.0/24".parse().expect("valid CIDR"),
            1500,
        )?;
        targets.push(kernel_target(
            Mode::KernelBridge,
            kb.pod_netns(0),
            kb.pod_netns(1),
            kb.pod_ip(1),
            "1 node, 2 pods on veths in a Linux bridge (CNI bridge plugin)",
        )?);
        labs.bridge = Some(kb);
    }
    for (mode, backend, base, shape) in [
        (
            Mode::KernelHostGw,
            Backend::HostGw,
            100u8,
            "2 nodes on an underlay bridge, 1 pod each, kernel routes (flannel host-gw)",
        ),
        (
            Mode::KernelVxlan,
            Backend::Vxlan,
            110u8,
            "2 nodes on an underlay bridge, 1 pod each, kernel vxlan device (flannel vxlan, UDP 8472)",
        ),
    ] {
        if !want(mode) {
            continue;
        }
        let tag = if backend == Backend::HostGw { "hg" } else { "vx" };
        let kl = KernelNodesLab::up(&format!("{prefix}-{tag}"), backend, base)?;
        targets.push(kernel_target(
            mode,
            kl.client_netns(),
            kl.server_netns(),
            kl.server_ip(),
            shape,
        )?);
        if backend == Backend::HostGw {
            labs.hostgw = Some(kl);
        } else {
            labs.vxlan = Some(kl);
        }
    }
    if want(Mode::KernelIptables) {
        let kp = KernelServiceLab::up(prefix, cfg.services)?;
        let (mtu, offloads) = link_setup(kp.client_netns());
        targets.push(Target {
            mode: Mode::KernelIptables,
            client: kp.client_netns().to_path_buf(),
            server: None,
            rr: KernelServiceLab::crr_target(),
            server_ip: kube_proxy::TARGET_CLUSTER_IP,
            switch_pids: vec![],
            switch_sockets: vec![],
            poll_mode: None,
            io_backend: None,
            setup: ModeSetup {
                shape: format!(
                    "1 node, client + 3 backends, ClusterIP {} of {} Services in kube-proxy's iptables rules",
                    kube_proxy::TARGET_CLUSTER_IP,
                    cfg.services
                ),
                mtu,
                offloads,
                podswitch_config: BTreeMap::new(),
            },
        });
        labs.iptables = Some(kp);
    }
    // Report order.
    targets.sort_by_key(|t| Mode::ALL.iter().position(|m| *m == t.mode));
    // One target per podswitch mode and poll mode, sharing the mode's lab.
    let targets = targets
        .into_iter()
        .flat_map(|t| {
            if t.mode.is_kernel() {
                return vec![t];
            }
            let mut out = Vec::new();
            for &p in &cfg.poll_modes {
                for &b in &cfg.io_backends {
                    let mut v = t.clone();
                    v.poll_mode = Some(p);
                    v.io_backend = Some(b);
                    let c = &mut v.setup.podswitch_config;
                    c.insert("poll_mode".into(), p.name().into());
                    c.insert("io_backend".into(), b.name().into());
                    out.push(v);
                }
            }
            out
        })
        .collect();
    Ok(targets)
}

/// One throughput run's result.
struct StreamResult {
    gbit_per_s: f64,
    bytes: u64,
    cpu: cpu::CpuUsage,
}

/// `streams` TCP streams from the client to sinks in the server pod:
/// `warmup` seconds left out, then `secs` measured at the receivers (a
/// [`load::StreamWindow`], iperf3's window); every byte sent must arrive.
fn measure_stream(
    t: &Target,
    streams: usize,
    warmup: f64,
    secs: f64,
    port: u16,
    pin: Option<Placement>,
) -> anyhow::Result<StreamResult> {
    let server = t.server.clone().context("no server pod")?;
    let (tx, rx) = mpsc::channel();
    let mut sinks = Vec::new();
    // One window for all streams, from now: the sinks start in
    // milliseconds, well within the warm-up.
    let window = load::StreamWindow::from_now(
        Duration::from_secs_f64(warmup),
        Duration::from_secs_f64(secs),
    );
    let deadline = window.stop + Duration::from_secs(30);
    for k in 0..streams {
        let tx = tx.clone();
        let listen = SocketAddr::from(([0, 0, 0, 0], port + k as u16));
        sinks.push(spawn_in_netns(&server, move || {
            if let Some(p) = pin {
                pin_thread(p.receiver)?;
            }
            let s = load::StreamSink::bind(listen)?;
            let _ = tx.send(());
            s.run(window, deadline)
        }));
    }
    for _ in 0..streams {
        rx.recv_timeout(Duration::from_secs(5))
            .context("a throughput sink did not start")?;
    }
    let before = cpu::snapshot(&t.switch_pids)?;
    let senders: Vec<_> = (0..streams)
        .map(|k| {
            let dst = SocketAddr::from((t.server_ip, port + k as u16));
            spawn_in_netns(&t.client, move || {
                if let Some(p) = pin {
                    pin_thread(p.sender)?;
                }
                load::stream_send(dst, window.stop, Duration::from_secs(10))
            })
        })
        .collect();
    let mut sent = Vec::new();
    for s in senders {
        sent.push(
            s.join()
                .map_err(|_| anyhow::anyhow!("a sender panicked"))??,
        );
    }
    let after = cpu::snapshot(&t.switch_pids)?;
    let mut bytes = 0u64;
    let mut gbit = 0f64;
    for (sink, sent) in sinks.into_iter().zip(&sent) {
        let got = sink
            .join()
            .map_err(|_| anyhow::anyhow!("a sink panicked"))??;
        ensure!(
            got.bytes == sent.bytes,
            "throughput run lost data: sent {} B, received {} B",
            sent.bytes,
            got.bytes
        );
        bytes += got.bytes;
        // Each stream at its receiver, as iperf3 sums its streams.
        gbit += got.gbit_per_s();
    }
    ensure!(bytes > 0, "no data was delivered");
    Ok(StreamResult {
        gbit_per_s: gbit,
        bytes,
        cpu: cpu::usage(&before, &after, cpu::ticks_per_second()),
    })
}

/// 64-byte UDP payloads from the client to a counter in the server pod;
/// datagrams received per second.
fn measure_pps(t: &Target, secs: f64) -> anyhow::Result<f64> {
    let server = t.server.clone().context("no server pod")?;
    let (tx, rx) = mpsc::channel();
    let counter = spawn_in_netns(&server, move || {
        let c = load::UdpCounter::bind(SocketAddr::from(([0, 0, 0, 0], PPS_PORT)))?;
        let _ = tx.send(());
        c.run(
            Duration::from_millis(150),
            Instant::now() + Duration::from_secs_f64(secs + 5.0),
        )
    });
    rx.recv_timeout(Duration::from_secs(5))
        .context("the packet counter did not start")?;
    let dst = SocketAddr::from((t.server_ip, PPS_PORT));
    let sent = in_netns(&t.client, move || {
        load::udp_flood(dst, 64, Duration::from_secs_f64(secs))
    })?;
    let got = counter
        .join()
        .map_err(|_| anyhow::anyhow!("the packet counter panicked"))??;
    ensure!(sent > 0, "no datagram could be sent");
    Ok(got as f64 / secs)
}

/// Samples of one mode, filled round by round.
#[derive(Default)]
struct Samples {
    /// metric name -> (test, unit, higher is better, per-round values).
    metrics: Vec<(String, &'static str, &'static str, bool, Vec<f64>)>,
    /// Latency histograms merged over the rounds, by test.
    hists: BTreeMap<&'static str, Histogram<u64>>,
    cpu: Vec<cpu::CpuUsage>,
}

impl Samples {
    fn push(&mut self, name: &str, test: &'static str, unit: &'static str, hib: bool, v: f64) {
        match self.metrics.iter_mut().find(|m| m.0 == name) {
            Some(m) => m.4.push(v),
            None => self
                .metrics
                .push((name.to_string(), test, unit, hib, vec![v])),
        }
    }
}

/// Runs one test on one mode and records its samples.
fn run_test(
    cfg: &BenchConfig,
    t: &Target,
    test: Test,
    port: &mut u16,
    s: &mut Samples,
) -> anyhow::Result<()> {
    let name = test.name();
    if let Some((proto, size)) = test.rr() {
        let dst = t.rr;
        let dur = Duration::from_secs_f64(cfg.rr_secs);
        let (h, _lost) = in_netns(&t.client, move || {
            load::rr_histogram(proto, dst, size, dur, MAX_TRANSACTIONS)
        })?;
        let p = stats::Percentiles::from_histogram(&h)
            .with_context(|| format!("{name}: no transaction completed"))?;
        for (q, v) in p.named() {
            s.push(&format!("{name} {q}"), name, "us", false, v);
        }
        s.hists
            .entry(name)
            .or_insert_with(stats::latency_histogram)
            .add(&h)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        return Ok(());
    }
    match test {
        Test::TcpCrr => {
            let dst = t.rr;
            let dur = Duration::from_secs_f64(cfg.crr_secs);
            let r = in_netns(&t.client, move || {
                traffic::tcp_crr(dst, dur, MAX_TRANSACTIONS)
            })?;
            ensure!(r.count > 0, "{name}: no connection completed");
            s.push(name, name, "conn/s", true, r.per_sec);
        }
        Test::TcpStream1 | Test::TcpStreamN => {
            let streams = if test == Test::TcpStream1 {
                1
            } else {
                cfg.streams
            };
            *port = if *port + 32 > 7900 {
                SINK_PORT_BASE
            } else {
                *port + 16
            };
            let r = measure_stream(
                t,
                streams,
                cfg.stream_warmup_secs,
                cfg.stream_secs,
                *port,
                None,
            )?;
            s.push(name, name, "Gbit/s", true, r.gbit_per_s);
            if test == Test::TcpStream1 {
                let gb = r.bytes as f64 / 1e9;
                s.push(
                    "cpu-s-per-gb",
                    name,
                    "cpu-s/GB",
                    false,
                    r.cpu.total_s() / gb,
                );
                s.cpu.push(r.cpu);
            }
        }
        Test::UdpPps64 => {
            let pps = measure_pps(t, cfg.pps_secs)?;
            s.push(name, name, "kpps", true, pps / 1000.0);
        }
        _ => unreachable!("latency tests are handled above"),
    }
    Ok(())
}

/// Alternates the built-in generator and iperf3 (one TCP stream), then
/// the built-in generator and sockperf (UDP ping-pong, 64 B, median
/// round trip), on one kernel baseline, `cfg.crosscheck_runs` times each,
/// the one or the other first in turn (so that a machine getting busier
/// or quieter during the pairs favours neither), each pair measuring the
/// same window. A tool that is missing or fails is reported as not run;
/// a failing built-in run is an error.
fn cross_check(cfg: &BenchConfig, t: &Target, port: &mut u16) -> anyhow::Result<Vec<CrossCheck>> {
    let Some(server) = &t.server else {
        return Ok(Vec::new());
    };
    let (secs, omit) = (cfg.crosscheck_secs, cfg.crosscheck_warmup_secs);
    let mut out = Vec::new();
    // Both sides of the stream comparison put sender and receiver on the
    // same two cores: left to the scheduler, one tool's sender and
    // receiver shared a core in some runs and not in others (on the
    // bridge, where the receive path runs in the sender's softirq, 12-13
    // against 14-15 Gbit/s), which the other tool's runs did not match.
    let placement = Placement::two_cores();
    if cfg.tests.contains(&Test::TcpStream1) {
        let mut own = Vec::new();
        let mut ext: Result<Vec<f64>, String> = if external::installed("iperf3") {
            Ok(Vec::new())
        } else {
            Err("iperf3 is not installed".into())
        };
        for run in 0..cfg.crosscheck_runs {
            for builtin in pair_order(run) {
                if builtin {
                    *port = if *port + 32 > 7900 {
                        SINK_PORT_BASE
                    } else {
                        *port + 16
                    };
                    own.push(
                        measure_stream(t, 1, omit as f64, secs as f64, *port, placement)?
                            .gbit_per_s,
                    );
                } else if let Ok(v) = &mut ext {
                    match external::iperf3(
                        &t.client,
                        server,
                        t.server_ip,
                        EXTERNAL_PORT,
                        omit,
                        secs,
                        placement,
                    ) {
                        Ok(g) => v.push(g),
                        Err(e) => ext = Err(format!("{e:#}")),
                    }
                }
            }
        }
        out.push(
            CrossCheck::new(t.mode.name(), "iperf3", "tcp-stream-1", "Gbit/s", own, ext)
                .with_window(format!(
                    "receiver's bytes over {secs} s after {omit} s of warm-up, one stream of 128 KiB writes{} (built-in: sink from first byte + {omit} s to the sender's stop; iperf3 -t {secs} --omit {omit}: end.sum_received)",
                    placement.map_or(String::new(), |p| format!(", sender on core {} and receiver on core {} on both sides", p.sender, p.receiver))
                )),
        );
    }
    if cfg.tests.contains(&Test::UdpRr64) {
        let mut own = Vec::new();
        let mut ext: Result<Vec<f64>, String> = if external::installed("sockperf") {
            Ok(Vec::new())
        } else {
            Err("sockperf is not installed".into())
        };
        let dur = Duration::from_secs(secs);
        // sockperf's window: what it leaves out, the built-in leaves out.
        let record = external::SOCKPERF_WARMUP..dur.saturating_sub(external::SOCKPERF_COOLDOWN);
        for run in 0..cfg.crosscheck_runs {
            for builtin in pair_order(run) {
                if builtin {
                    let (dst, record) = (t.rr, record.clone());
                    let (h, _) = in_netns(&t.client, move || {
                        load::rr_histogram_in(Protocol::Udp, dst, 64, dur, record, MAX_TRANSACTIONS)
                    })?;
                    own.push(
                        stats::Percentiles::from_histogram(&h)
                            .context("udp-rr-64: no transaction completed")?
                            .p50,
                    );
                } else if let Ok(v) = &mut ext {
                    match external::sockperf(
                        &t.client,
                        server,
                        t.server_ip,
                        EXTERNAL_PORT + 1,
                        64,
                        secs,
                    ) {
                        Ok((p50, _)) => v.push(p50),
                        Err(e) => ext = Err(format!("{e:#}")),
                    }
                }
            }
        }
        out.push(
            CrossCheck::new(t.mode.name(), "sockperf", "udp-rr-64 p50", "us", own, ext)
                .with_window(format!(
                    "round trips of 64 B UDP ping-pong, one outstanding, from {} ms to {} ms of a {secs} s run (sockperf's warm-up and cool-down left out on both sides)",
                    record.start.as_millis(),
                    record.end.as_millis()
                )),
        );
    }
    Ok(out)
}

/// Which cores a measurement's sender and receiver run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub sender: usize,
    pub receiver: usize,
}

impl Placement {
    /// Sender on core 0, receiver on core 1; `None` on a single-core
    /// machine (nothing to choose).
    fn two_cores() -> Option<Placement> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores >= 2).then_some(Placement {
            sender: 0,
            receiver: 1,
        })
    }
}

/// Binds the calling thread to one core.
fn pin_thread(core: usize) -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core).with_context(|| format!("core {core}"))?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("binding a measurement thread to core {core}"))
}

/// Which side goes first in pair `run` of the cross-check: the built-in
/// generator in even pairs, the external tool in odd ones.
fn pair_order(run: usize) -> [bool; 2] {
    if run.is_multiple_of(2) {
        [true, false]
    } else {
        [false, true]
    }
}

fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

fn progress(total: u64) -> ProgressBar {
    let target = if std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let pb = ProgressBar::with_draw_target(Some(total), target);
    if let Ok(style) =
        ProgressStyle::with_template("{elapsed_precise} [{bar:32}] {pos}/{len} {msg}")
    {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Tells the user what is happening: on the progress bar when it is
/// drawn, as a line on stderr otherwise.
fn phase(pb: &ProgressBar, msg: &str) {
    if pb.is_hidden() {
        eprintln!("bench: {msg}");
    } else {
        pb.set_message(msg.to_string());
    }
}

/// Runs the bench: builds the labs, measures, cross-checks, tears down.
///
/// `exe` is the podswitch binary (it runs the switches); `name` the
/// per-run prefix of every lab and namespace.
///
/// # Errors
/// A lab that cannot be built, a measurement that fails (no transaction,
/// corrupted data), or Ctrl-C; everything built is torn down first.
pub fn run(cfg: &BenchConfig, exe: &Path, name: &str) -> anyhow::Result<Report> {
    cfg.validate()?;
    let started = Instant::now();
    let date = cluster::rfc3339(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    let load_start = load_average();
    // Held until the report is made (dropped at the end of `run`).
    let idle_hold = cpu::IdleStatesHold::take(!cfg.allow_cpu_idle);
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = Arc::clone(&interrupted);
        // Fails only when a handler exists already (a caller's): keep it.
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let check = |what: &str| -> anyhow::Result<()> {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted before {what}");
        }
        Ok(())
    };
    let steps: u64 = cfg.rounds as u64
        * cfg
            .tests
            .iter()
            .map(|t| {
                cfg.modes
                    .iter()
                    .filter(|&&m| t.applies(m))
                    .map(|m| {
                        if m.is_kernel() {
                            1
                        } else {
                            cfg.poll_modes.len() as u64
                        }
                    })
                    .sum::<u64>()
            })
            .sum::<u64>();
    let pb = progress(steps + 2);
    let mut labs = Labs::default();
    phase(&pb, "building the labs");
    let targets = build_labs(cfg, exe, name, &mut labs)?;
    pb.inc(1);
    // Warm up every path (ARP, first flows) and check it carries traffic.
    for t in &targets {
        check("warm-up")?;
        let dst = t.rr;
        in_netns(&t.client, move || {
            load::rr_histogram(Protocol::Tcp, dst, 64, Duration::from_millis(300), 1000)
        })
        .and_then(|(h, _)| {
            ensure!(!h.is_empty(), "no transaction completed");
            Ok(())
        })
        .with_context(|| format!("{}: warm-up request/response", t.mode.name()))?;
    }
    let several = (cfg.poll_modes.len() > 1, cfg.io_backends.len() > 1);
    let mut samples: BTreeMap<String, Samples> = BTreeMap::new();
    let mut port = SINK_PORT_BASE;
    for round in 1..=cfg.rounds {
        for &test in &cfg.tests {
            for t in targets.iter().filter(|t| test.applies(t.mode)) {
                check("the next measurement")?;
                let label = t.label(several.0, several.1);
                phase(
                    &pb,
                    &format!("round {round}/{}: {} {label}", cfg.rounds, test.name()),
                );
                t.enter_poll_mode()?;
                let s = samples.entry(label.clone()).or_default();
                let before = cpu::snapshot(&t.switch_pids)?;
                let began = Instant::now();
                run_test(cfg, t, test, &mut port, s)
                    .with_context(|| format!("round {round}: {} on {label}", test.name()))?;
                if !t.mode.is_kernel() {
                    // The switches' CPU during the test, in cores: what its
                    // result cost (a polling worker shows here).
                    let wall = began.elapsed().as_secs_f64();
                    let used = cpu::usage(
                        &before,
                        &cpu::snapshot(&t.switch_pids)?,
                        cpu::ticks_per_second(),
                    );
                    s.push(
                        &format!("{} switch-cpu", test.name()),
                        test.name(),
                        "cores",
                        false,
                        used.switch_s / wall.max(1e-3),
                    );
                }
                pb.inc(1);
            }
        }
    }
    let mut modes: Vec<ModeReport> = targets
        .iter()
        .map(|t| {
            let label = t.label(several.0, several.1);
            let s = samples.remove(&label).unwrap_or_default();
            ModeReport {
                mode: label,
                kernel: t.mode.is_kernel(),
                setup: t.setup.clone(),
                metrics: s
                    .metrics
                    .into_iter()
                    .map(|(n, test, unit, hib, v)| Metric::new(&n, test, unit, hib, v))
                    .collect(),
                cdfs: s
                    .hists
                    .iter()
                    .map(|(test, h)| Cdf {
                        test: test.to_string(),
                        points: stats::cdf(h),
                    })
                    .collect(),
                cpu: s.cpu,
            }
        })
        .collect();
    let mut crosscheck = Vec::new();
    if cfg.crosscheck {
        for t in targets
            .iter()
            .filter(|t| t.mode.is_kernel() && !t.mode.is_service())
        {
            check("the cross-check")?;
            phase(
                &pb,
                &format!("cross-check with iperf3 and sockperf: {}", t.mode.name()),
            );
            crosscheck.extend(cross_check(cfg, t, &mut port)?);
        }
    }
    pb.inc(1);
    phase(&pb, "tearing down");
    drop(labs);
    pb.finish_and_clear();
    let comparisons: Vec<Comparison> = modes
        .iter()
        .filter_map(|ps| {
            let mode = ps.mode.split(['@', '/']).next().unwrap_or(&ps.mode);
            let base = Mode::parse(mode).ok()?.baseline()?;
            let k = modes.iter().find(|m| m.mode == base.name())?;
            Some(report::compare(ps, k))
        })
        .collect();
    for m in &mut modes {
        m.metrics.sort_by_key(|x| metric_order(&x.name));
    }
    let machine = Machine::read();
    Ok(Report {
        meta: Meta {
            date,
            kernel: machine.kernel,
            cpu: machine.cpu,
            cores: machine.cores,
            podswitch_version: machine.podswitch_version,
            load_start,
            load_end: load_average(),
            elapsed_s: started.elapsed().as_secs_f64(),
            cpu_idle_states: idle_hold.status.clone(),
        },
        settings: Settings {
            quick: cfg.quick,
            rounds: cfg.rounds,
            rr_secs: cfg.rr_secs,
            crr_secs: cfg.crr_secs,
            stream_secs: cfg.stream_secs,
            stream_warmup_secs: cfg.stream_warmup_secs,
            pps_secs: cfg.pps_secs,
            crosscheck_secs: cfg.crosscheck_secs,
            crosscheck_warmup_secs: cfg.crosscheck_warmup_secs,
            crosscheck_runs: cfg.crosscheck_runs,
            streams: cfg.streams,
            services: cfg.services,
            workers_per_switch: cfg.workers,
            modes: cfg.modes.iter().map(|m| m.name().to_string()).collect(),
            poll_modes: cfg
                .poll_modes
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
            io_backends: cfg
                .io_backends
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
            tests: cfg.tests.iter().map(|t| t.name().to_string()).collect(),
        },
        modes,
        comparisons,
        crosscheck,
    })
}

/// Metrics in test order, CPU per GB after the throughput.
fn metric_order(name: &str) -> usize {
    let test = name.split(' ').next().unwrap_or(name);
    Test::ALL
        .iter()
        .position(|t| t.name() == test)
        .map_or(Test::ALL.len() * 10, |i| {
            i * 10 + if name == test { 0 } else { 1 }
        })
        + usize::from(name == "cpu-s-per-gb") * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in Mode::ALL {
            assert_eq!(Mode::parse(m.name()).unwrap(), m);
        }
        for t in Test::ALL {
            assert_eq!(Test::parse(t.name()).unwrap(), t);
        }
        assert!(Mode::parse("calico").is_err());
        assert!(Test::parse("tcp-rr").is_err());
    }

    #[test]
    fn every_podswitch_mode_has_a_kernel_baseline() {
        for m in Mode::ALL {
            assert_eq!(m.baseline().is_some(), !m.is_kernel(), "{m:?}");
            if let Some(b) = m.baseline() {
                assert!(b.is_kernel());
                assert_eq!(b.is_service(), m.is_service());
            }
        }
    }

    #[test]
    fn services_run_the_tcp_rr_tests_only() {
        let on_services: Vec<Test> = Test::ALL
            .into_iter()
            .filter(|t| t.applies(Mode::PodswitchServices))
            .collect();
        assert_eq!(on_services, [Test::TcpRr64, Test::TcpRr1k, Test::TcpCrr]);
        assert!(Test::ALL.iter().all(|t| t.applies(Mode::KernelVxlan)));
    }

    #[test]
    fn configs_are_checked() {
        assert!(BenchConfig::new(true).validate().is_ok());
        assert!(BenchConfig::new(false).validate().is_ok());
        let mut c = BenchConfig::new(true);
        c.rounds = 0;
        assert!(c.validate().is_err());
        let mut c = BenchConfig::new(true);
        c.rr_secs = f64::NAN;
        assert!(c.validate().is_err());
        let mut c = BenchConfig::new(true);
        c.modes.clear();
        assert!(c.validate().is_err());
    }

    #[test]
    fn ethtool_output_is_parsed() {
        let text = "Features for eth0:\nrx-checksumming: on [fixed]\ntx-checksumming: on\n\ttx-checksum-ipv4: off [fixed]\nscatter-gather: on\ntcp-segmentation-offload: on\ngeneric-receive-offload: off\n";
        let m = parse_ethtool_k(text);
        assert_eq!(m["rx-checksumming"], "on");
        assert_eq!(m["generic-receive-offload"], "off");
        assert!(!m.contains_key("tx-checksum-ipv4"));
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn metrics_sort_in_test_order() {
        let mut names = [
            "cpu-s-per-gb",
            "tcp-stream-1",
            "udp-rr-64 p50",
            "tcp-rr-64 p99",
            "tcp-rr-64 p50",
        ];
        names.sort_by_key(|n| metric_order(n));
        assert_eq!(names[0], "tcp-rr-64 p99");
        assert_eq!(names[3], "tcp-stream-1");
        assert_eq!(names[4], "cpu-s-per-gb");
    }
}
