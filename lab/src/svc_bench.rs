//! `podswitch lab bench-services`: the ClusterIP connection rate (a new TCP
//! connection per request, like netperf's TCP_CRR) through podswitch and
//! through kube-proxy's iptables rules, with the same set of Services on
//! both sides (1k, 10k ...), measured interleaved in one run.
//!
//! Both sides have one node with three backend pods serving the target
//! Service (10.96.0.10:5001) and a client pod on the same node; the other
//! Services are the same synthetic ones ([`kube_proxy::service_ports`]).
//! The kernel side is [`KernelServiceLab`] (routed veths, iptables-restore
//! of kube-proxy's chains); the podswitch side is a one-node lab whose
//! switch gets the Services over its control API.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;

use podswitch_switch::control::api::{
    EndpointSpec, Request, ServicePortSpec, ServiceSpec, ServicesApplied,
};
use podswitch_switch::control::client;

use super::cluster::{self, Lab};
use super::demo::in_netns;
use super::kube_proxy::{self, KernelServiceLab};
use super::traffic;
use podswitch_agent::manifest::Protocol;

/// The podswitch side's lab: one node, three backends, one client.
const LAB: &str = r#"
apiVersion: lab.podswitch.io/v1alpha1
kind: Lab
metadata:
  name: svcbench
spec:
  nodes: 1
  clusterCIDR: 10.244.0.0/16
  mtu: 1500
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: crr
spec:
  replicas: 3
  selector:
    matchLabels:
      app: crr
  template:
    metadata:
      labels:
        app: crr
    spec:
      containers:
        - name: echo
          image: podswitch/echo
          ports:
            - containerPort: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: client
spec:
  containers:
    - name: echo
      image: podswitch/echo
"#;

/// One Service count's results.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub services: usize,
    /// Connections per second, per round.
    pub podswitch: Vec<f64>,
    pub kube_proxy: Vec<f64>,
    /// Median of the per-round ratios podswitch / kube-proxy.
    pub ratio_median: f64,
    /// How long the switch took to build and publish the table (µs).
    pub podswitch_apply_us: u64,
    /// How long iptables-restore took (µs) and the rules it loaded.
    pub iptables_restore_us: u64,
    pub iptables_rules: usize,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub rounds: usize,
    pub secs: f64,
    pub rows: Vec<Row>,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The kube-proxy Services as the switch takes them.
fn specs(ports: &[kube_proxy::ServicePort], node: &str) -> Vec<ServiceSpec> {
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

/// Runs the comparison for each count in `services`.
///
/// # Errors
/// A lab that cannot be built or a measurement that fails.
pub fn run(lab: &Lab, services: &[usize], rounds: usize, secs: f64) -> anyhow::Result<Report> {
    if lab.state()?.is_some() {
        lab.down()?;
    }
    struct Teardown<'a>(&'a Lab);
    impl Drop for Teardown<'_> {
        fn drop(&mut self) {
            if let Err(e) = self.0.down() {
                eprintln!("teardown failed: {e:#}");
            }
        }
    }
    let _teardown = Teardown(lab);
    let mut def = cluster::parse_lab(LAB, "bench-services lab")?;
    def.lab.metadata.name = lab.paths().name.clone();
    let st = lab.up(&def)?;
    let node = st.nodes.first().context("the lab has no node")?;
    let backends: Vec<_> = st
        .pods
        .values()
        .filter(|p| p.pod.name.starts_with("crr-"))
        .cloned()
        .collect();
    let client_pod = st
        .pods
        .values()
        .find(|p| p.pod.name == "client")
        .context("no client pod")?
        .clone();
    anyhow::ensure!(backends.len() == 3, "expected 3 backends");
    let backend_ips: Vec<_> = backends.iter().map(|p| p.ip).collect();
    // Request/response servers on the backends, as on the kernel side:
    // bound inside each pod's namespace, then served from a thread.
    for b in &backends {
        let listen = SocketAddr::from(([0, 0, 0, 0], kube_proxy::BACKEND_CRR_PORT));
        let server = in_netns(&b.netns, move || {
            traffic::RrServer::bind(Protocol::Tcp, listen)
        })
        .with_context(|| format!("binding the rr server in {}", b.pod.name))?;
        std::thread::spawn(move || server.run());
    }
    // As on the kernel side: connect() may take a port whose TIME_WAIT is
    // over a second old, or the client runs out of ports after ~14k
    // connections and measures its own port search.
    in_netns(&client_pod.netns, || {
        std::fs::write("/proc/sys/net/ipv4/tcp_tw_reuse", "1")
            .context("setting net.ipv4.tcp_tw_reuse=1 in the client pod")
    })?;
    let target = kube_proxy::KernelServiceLab::crr_target();
    let dur = Duration::from_secs_f64(secs);
    let mut rows = Vec::new();
    for &n in services {
        let ports = kube_proxy::service_ports(n, &backend_ips)?;
        let applied: ServicesApplied = client::call(
            &node.control_socket,
            &Request::SetServices(podswitch_api::SetServicesArgs {
                settings: None,
                services: specs(&ports, &node.name),
            }),
        )
        .with_context(|| format!("giving the switch {n} services"))?;
        let kp = KernelServiceLab::up(&format!("{}kp{n}", lab.paths().prefix()), n)?;
        let client_ns = client_pod.netns.clone();
        let crr = move || {
            let ns = client_ns.clone();
            in_netns(&ns, move || traffic::tcp_crr(target, dur, 10_000_000))
        };
        // Warm up both paths (ARP, first flows).
        let _ = crr();
        let _ = kp.measure_crr(Duration::from_millis(300));
        let (mut ps, mut kr, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let a = crr().context("podswitch crr")?.per_sec;
            let b = kp.measure_crr(dur).context("kube-proxy crr")?.per_sec;
            eprintln!("  {n} services: podswitch {a:.0}/s, kube-proxy {b:.0}/s");
            ps.push(a);
            kr.push(b);
            ratios.push(if b > 0.0 { a / b } else { 0.0 });
        }
        let load = kp.load().clone();
        kp.down()?;
        rows.push(Row {
            services: n,
            podswitch: ps,
            kube_proxy: kr,
            ratio_median: median(&mut ratios),
            podswitch_apply_us: applied.build_us,
            iptables_restore_us: load.restore_time.as_micros() as u64,
            iptables_rules: load.rules(),
        });
    }
    Ok(Report { rounds, secs, rows })
}

/// The report as a table.
pub fn render(r: &Report) -> String {
    let mut s = format!(
        "ClusterIP new-connection rate (TCP_CRR), {} interleaved rounds of {:.1} s, medians\n",
        r.rounds, r.secs
    );
    s.push_str(&format!(
        "{:>9}  {:>12}  {:>12}  {:>6}  {:>14}  {:>16}\n",
        "services", "podswitch/s", "kube-proxy/s", "ratio", "switch apply", "iptables-restore"
    ));
    for row in &r.rows {
        let (mut a, mut b) = (row.podswitch.clone(), row.kube_proxy.clone());
        s.push_str(&format!(
            "{:>9}  {:>12.0}  {:>12.0}  {:>5.2}x  {:>11.1} ms  {:>13.1} ms\n",
            row.services,
            median(&mut a),
            median(&mut b),
            row.ratio_median,
            row.podswitch_apply_us as f64 / 1000.0,
            row.iptables_restore_us as f64 / 1000.0,
        ));
    }
    s
}
