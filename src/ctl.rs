//! `podswitch ctl`: read a running switch's state over its control socket.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use podswitch_switch::capture::file::CaptureFormat;
use podswitch_switch::capture::{CaptureFilter, CapturePoint, CaptureProto};
use podswitch_switch::control::api::CaptureSpec;
use podswitch_switch::control::api::{
    ClusterMode, FlowFilter, Flows, FlowsRemoved, Hello, IoBackendSet, Nodes, PollSettings,
    PortInfo, Protocol, Request, RouteEntry, RouteHop, RouteLookup, Routes, RunningConfig,
    ServiceState, Services, Stats, Topology, VxlanTunnelGsoSet,
};
use podswitch_switch::control::client;

#[derive(clap::Args, Debug)]
pub struct CtlArgs {
    /// The switch's control socket.
    #[arg(
        long,
        short = 's',
        env = "PODSWITCH_SOCKET",
        default_value = "/run/podswitch/switch.sock"
    )]
    socket: PathBuf,
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// API and switch version.
    Hello,
    /// Pod ports with their counters.
    Ports,
    /// Datapath counters and drops by stage and reason.
    Stats,
    /// The switch's current topology (node and pods).
    Topology,
    /// This node (underlay, pod CIDRs, gateway, mode, VTEP) and every
    /// other node the switch knows.
    Nodes,
    /// The route stage's forwarding table, longest prefix first, and the
    /// service/masquerade side; `--lookup` shows what one address matches.
    Routes(RoutesArgs),
    /// The Services the switch holds: frontends, endpoints, and each
    /// frontend's Maglev table (size, slots and share per endpoint).
    Services(ServicesArgs),
    /// The daemon's running configuration (as loaded: file, then flags).
    Config,
    /// Conntrack flows: list (filtered), count, or flush.
    Conntrack(ConntrackArgs),
    /// Dry-run a synthetic packet through the stages (nothing is sent).
    Trace(TraceArgs),
    /// Capture frames at a port's ingress/egress or on the underlay into a
    /// pcap/pcapng file (`-w -`: stdout, e.g. `| tshark -r -`).
    Capture(CaptureArgs),
    /// Change how idle workers wait for frames on the running switch
    /// (`interrupt`, `adaptive` or `poll`); `ctl config` shows the mode in
    /// force, `ctl stats` where each worker's time goes.
    PollMode(PollModeArgs),
    /// Switch the workers' tap I/O on the running switch: io_uring
    /// (batched), syscalls (one read/write per frame) or auto.
    IoBackend(IoBackendArgs),
    /// Send VXLAN through the tunnel port (on: TCP superframes handed to
    /// the node's kernel whole, UDP-tunnel GSO) or the UDP socket (off:
    /// segmented in the switch) on the running switch; `ctl stats` shows
    /// which is in use.
    VxlanTunnelGso(VxlanTunnelGsoArgs),
}

#[derive(clap::Args, Debug)]
struct VxlanTunnelGsoArgs {
    /// on or off (also true/false, yes/no, 1/0).
    #[arg(action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    on: bool,
}

#[derive(clap::Args, Debug)]
struct IoBackendArgs {
    backend: podswitch_switch::worker::IoBackend,
}

#[derive(clap::Args, Debug)]
struct PollModeArgs {
    /// interrupt: park in epoll when idle; adaptive: busy-poll for the
    /// budget after the last frame, then park; poll: never park.
    mode: podswitch_switch::worker::poll::PollMode,
    /// The adaptive budget in microseconds (unchanged when omitted).
    #[arg(long)]
    budget_us: Option<u64>,
}

#[derive(clap::Args, Debug)]
struct RoutesArgs {
    /// Print only the entry this destination matches (like `ip route get`).
    #[arg(long, value_name = "ADDRESS")]
    lookup: Option<std::net::IpAddr>,
}

#[derive(clap::Args, Debug)]
struct ServicesArgs {
    /// Only this Service (`namespace/name`).
    name: Option<String>,
}

#[derive(clap::Args, Debug)]
struct CaptureArgs {
    /// A pod (`namespace/name`), the host port (`host/psw0`), or `underlay`
    /// (the VXLAN datagrams the node sends and receives).
    #[arg(long)]
    port: String,
    /// `ingress` (frames the switch reads from the port), `egress` (frames
    /// it writes to it) or `both`.
    #[arg(long, default_value = "both")]
    point: CapturePoint,
    /// Only this protocol: tcp, udp, icmp or arp.
    #[arg(long)]
    proto: Option<CaptureProto>,
    /// Only frames from or to this IPv4 address (on the underlay: the inner
    /// packet's).
    #[arg(long)]
    host: Option<std::net::Ipv4Addr>,
    /// Only TCP/UDP frames with this source or destination port.
    #[arg(long = "port-num")]
    port_num: Option<u16>,
    /// Stop after this many frames.
    #[arg(short = 'c', long, default_value_t = podswitch_switch::capture::DEFAULT_MAX_FRAMES)]
    count: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Bytes kept of each frame.
    #[arg(long, default_value_t = podswitch_switch::capture::MAX_SNAPLEN)]
    snaplen: u32,
    /// File format: pcap (nanosecond timestamps) or pcapng.
    #[arg(long, default_value = "pcap")]
    format: CaptureFormat,
    /// Where to write: a file, or `-` for stdout.
    #[arg(short = 'w', long = "write", value_name = "FILE")]
    write: PathBuf,
}

#[derive(clap::Args, Debug)]
struct TraceArgs {
    /// The ingress port: a pod (`namespace/name`) or `host/psw0`.
    #[arg(long)]
    from: String,
    /// Source address (default: the pod's own).
    #[arg(long)]
    src: Option<std::net::Ipv4Addr>,
    #[arg(long)]
    dst: std::net::Ipv4Addr,
    /// tcp (a SYN), udp, or icmp (an echo request; --sport is its id).
    #[arg(long, default_value = "tcp")]
    proto: String,
    #[arg(long, default_value_t = 40000)]
    sport: u16,
    #[arg(long, default_value_t = 80)]
    dport: u16,
}

#[derive(clap::Args, Debug)]
struct ConntrackArgs {
    /// Flows with an address (either end, either direction) in this prefix.
    #[arg(long)]
    addr: Option<ipnet::IpNet>,
    /// Flows with this port at either end.
    #[arg(long)]
    port: Option<u16>,
    /// tcp, udp or icmp.
    #[arg(long)]
    proto: Option<String>,
    /// A state: syn_sent, established, time_wait, unreplied, replied, ...
    #[arg(long)]
    state: Option<String>,
    /// Print only the counts.
    #[arg(long)]
    count: bool,
    /// Remove the selected flows (all of them without a filter).
    #[arg(long, conflicts_with = "count")]
    flush: bool,
    /// List at most this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,
}

fn protocol_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// One line per Service port: its frontends (ClusterIPs, external IPs,
/// NodePort), options, and endpoints with their conditions.
fn services_table(r: &Services) -> String {
    let cidrs = |v: &[ipnet::IpNet]| {
        v.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut out = format!(
        "service CIDRs {}  cluster CIDRs {}  NodePorts {}-{}  masquerade {}\n\n",
        cidrs(&r.settings.service_cidrs),
        cidrs(&r.settings.cluster_cidrs),
        r.settings.node_port_range.0,
        r.settings.node_port_range.1,
        if r.settings.masquerade { "on" } else { "off" }
    );
    let mut rows: Vec<[String; 5]> = vec![[
        "SERVICE".into(),
        "PORT".into(),
        "FRONTENDS".into(),
        "OPTIONS".into(),
        "ENDPOINTS".into(),
    ]];
    for s in &r.services {
        let mut options = Vec::new();
        if let Some(t) = s.affinity_timeout_secs {
            options.push(format!("affinity={t}s"));
        }
        if s.external_traffic_local {
            options.push("external=Local".to_string());
        }
        if s.internal_traffic_local {
            options.push("internal=Local".to_string());
        }
        let options = if options.is_empty() {
            "-".to_string()
        } else {
            options.join(",")
        };
        for p in &s.ports {
            let proto = protocol_str(p.protocol);
            let mut frontends: Vec<String> = s
                .cluster_ips
                .iter()
                .chain(&s.external_ips)
                .map(|ip| format!("{ip}:{}", p.port))
                .collect();
            if let Some(n) = p.node_port {
                frontends.push(format!("*:{n}"));
            }
            let endpoints: Vec<String> = p
                .endpoints
                .iter()
                .map(|e| {
                    let state = match (e.ready, e.terminating, e.is_serving()) {
                        (true, _, _) => "ready",
                        (false, true, true) => "terminating,serving",
                        (false, true, false) => "terminating",
                        (false, false, _) => "not-ready",
                    };
                    format!("{}:{}({state})", e.ip, e.port)
                })
                .collect();
            rows.push([
                s.name.clone(),
                if p.name.is_empty() {
                    format!("{}/{proto}", p.port)
                } else {
                    format!("{}:{}/{proto}", p.name, p.port)
                },
                frontends.join(","),
                options.clone(),
                if endpoints.is_empty() {
                    "<none>".to_string()
                } else {
                    endpoints.join(",")
                },
            ]);
        }
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        for (c, w) in widths.iter().enumerate() {
            out.push_str(&format!("{:<w$}   ", r[c]));
        }
        out.push_str(&r[4]);
        out.push('\n');
    }
    out
}

/// Aligns `rows` (the first is the header) in columns two spaces apart;
/// the last column is not padded.
fn render_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |x| x.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn join<T: std::fmt::Display>(v: &[T]) -> String {
    if v.is_empty() {
        return "-".to_string();
    }
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// `ctl nodes`: this node's addresses and mode, then every node.
fn nodes_table(n: &Nodes) -> String {
    let l = &n.local;
    let mode = match (&l.mode, &l.vxlan) {
        (ClusterMode::Vxlan, Some(v)) => format!(
            "vxlan (VNI {}, UDP port {}, VTEP {} on {})",
            v.vni, v.udp_port, v.vtep_mac, v.local_ipv4
        ),
        (ClusterMode::Vxlan, None) => "vxlan".to_string(),
        (ClusterMode::Native, _) => "native (pod IPs on the underlay)".to_string(),
    };
    let mut out = format!(
        "node {}  underlay {}  mode {}\ngateway {} {}  pod MTU {}  host port {}\n\n",
        l.name,
        l.underlay_ipv4.map_or("-".to_string(), |a| a.to_string()),
        mode,
        l.gateway_ipv4,
        l.gateway_mac,
        l.mtu,
        l.host_interface.as_deref().unwrap_or("-"),
    );
    let vtep =
        |m: Option<podswitch_switch::control::api::Mac>| m.map_or("-".into(), |m| m.to_string());
    let mut rows = vec![row(["NODE", "UNDERLAY", "POD CIDRS", "VTEP MAC"])];
    rows.push(vec![
        format!("{} (this node)", l.name),
        l.underlay_ipv4.map_or("-".to_string(), |a| a.to_string()),
        join(&l.pod_cidrs),
        vtep(l.vxlan.as_ref().map(|v| v.vtep_mac)),
    ]);
    for r in &n.remote {
        rows.push(vec![
            r.name.clone(),
            r.underlay_ipv4.to_string(),
            join(&r.pod_cidrs),
            vtep(r.vtep_mac),
        ]);
    }
    out.push_str(&render_table(&rows));
    out
}

/// A route's target in words.
fn describe_hop(h: &RouteHop) -> String {
    match h {
        RouteHop::Pod { port, pod } => format!("pod {pod} (port {port})"),
        RouteHop::Host { port, interface } => {
            format!("host port {interface} (port {port}): the node's stack routes it")
        }
        RouteHop::Overlay {
            node,
            underlay_ipv4,
            vtep_mac,
        } => format!("node {node} over VXLAN to {underlay_ipv4} (VTEP {vtep_mac})"),
        RouteHop::Unassigned => "unassigned: dropped, ICMP host unreachable".to_string(),
        RouteHop::NoRoute => "nowhere: dropped, ICMP net unreachable".to_string(),
    }
}

fn routes_table(r: &Routes) -> String {
    let mut rows = vec![row(["PREFIX", "TARGET"])];
    for e in &r.routes {
        rows.push(vec![e.prefix.to_string(), describe_hop(&e.hop)]);
    }
    let mut out = format!(
        "forwarding table (generation {}, {} mode), longest prefix first\n",
        r.generation,
        match r.mode {
            ClusterMode::Native => "native",
            ClusterMode::Vxlan => "vxlan",
        }
    );
    out.push_str(&render_table(&rows));
    if !r.kernel_routes.is_empty() {
        out.push_str("\nnode kernel routes installed by the switch (after the host port)\n");
        let mut rows = vec![row(["PREFIX", "VIA", "NODE"])];
        for k in &r.kernel_routes {
            rows.push(vec![
                k.prefix.to_string(),
                k.via.to_string(),
                k.node.clone(),
            ]);
        }
        out.push_str(&render_table(&rows));
    }
    let s = &r.services;
    out.push_str(&format!(
        "\nservices: {} frontends  service CIDRs {}  cluster CIDRs {}  NodePorts {}-{}\n",
        s.frontends,
        join(&s.service_cidrs),
        join(&s.cluster_cidrs),
        s.node_port_range.0,
        s.node_port_range.1
    ));
    out.push_str(&match (s.masquerade, s.node_ip) {
        (true, Some(ip)) => format!(
            "masquerade: pod traffic leaving the cluster gets {ip}; not for the cluster and service CIDRs{}\n",
            if s.masquerade_exclude.is_empty() {
                String::new()
            } else {
                format!(" and {}", join(&s.masquerade_exclude))
            }
        ),
        (true, None) => "masquerade: on, but the node has no underlay address (inactive)\n".into(),
        (false, _) => "masquerade: off\n".into(),
    });
    out
}

fn lookup_text(l: &RouteLookup) -> String {
    let mut out = match &l.route {
        Some(RouteEntry { prefix, hop }) => {
            format!("{} via {prefix}: {}\n", l.dst, describe_hop(hop))
        }
        None => format!("{}: no route (dropped, ICMP net unreachable)\n", l.dst),
    };
    if let Some(n) = &l.node {
        out.push_str(&format!("  pod CIDR of node {n}"));
        if let Some(via) = l.via {
            out.push_str(&format!(", which the node's kernel reaches via {via}"));
        }
        out.push('\n');
    }
    if l.gateway {
        out.push_str("  the pods' gateway: answered by the switch (ARP, ICMP echo)\n");
    }
    if !l.services.is_empty() {
        out.push_str(&format!(
            "  frontend of {}: translated to an endpoint before routing\n",
            l.services.join(", ")
        ));
    }
    if l.masquerade {
        out.push_str("  pod traffic to it is masqueraded to the node's address\n");
    }
    out
}

/// Each frontend's Maglev table: size M, eligible N, and per endpoint its
/// slots and share (Maglev gives each floor(M/N) or ceil(M/N) slots).
fn maglev_table(state: &[ServiceState]) -> String {
    let mut rows = vec![row([
        "SERVICE", "FRONTEND", "KIND", "M", "N", "ENDPOINT", "NODE", "STATE", "SLOTS", "SHARE",
        "VS M/N",
    ])];
    for s in state {
        let mut first_of_service = true;
        for f in &s.frontends {
            let kind = serde_json::to_value(f.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let head = vec![
                if first_of_service {
                    s.name.clone()
                } else {
                    String::new()
                },
                format!("{}:{}/{}", f.ip, f.port, protocol_str(f.protocol)),
                kind,
                f.table_size.to_string(),
                f.eligible.to_string(),
            ];
            first_of_service = false;
            if f.backends.is_empty() {
                let mut r = head;
                r.extend(["<none>".to_string()]);
                rows.push(r);
                continue;
            }
            let ideal = if f.eligible == 0 {
                0.0
            } else {
                f.table_size as f64 / f.eligible as f64
            };
            for (i, b) in f.backends.iter().enumerate() {
                let mut r = if i == 0 {
                    head.clone()
                } else {
                    vec![String::new(); 5]
                };
                let state = match (b.ready, b.terminating, b.eligible) {
                    // Serving and terminating, taking new flows because no
                    // endpoint is ready (KEP-1669).
                    (_, true, true) => "terminating, serving (fallback)",
                    (_, true, false) if b.serving => "terminating, serving",
                    (_, true, _) => "terminating",
                    (true, _, true) => "ready",
                    (true, _, false) => "ready, not local",
                    (false, _, _) => "not-ready",
                };
                r.extend([
                    format!("{}:{}", b.ip, b.port),
                    b.node.clone().unwrap_or_else(|| "-".into()),
                    state.to_string(),
                    b.slots.to_string(),
                    format!("{:.2}%", b.share * 100.0),
                    if b.eligible && ideal > 0.0 {
                        format!("{:+.2}%", (b.slots as f64 - ideal) / ideal * 100.0)
                    } else {
                        "-".to_string()
                    },
                ]);
                rows.push(r);
            }
        }
    }
    render_table(&rows)
}

/// A JSON value as TOML-ish lines: scalars first as `key = value`, then
/// each table as `[path]`; `null` as a comment.
fn toml_ish(v: &serde_json::Value) -> String {
    fn scalar(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Array(a) => {
                format!("[{}]", a.iter().map(scalar).collect::<Vec<_>>().join(", "))
            }
            other => other.to_string(),
        }
    }
    fn walk(path: &str, v: &serde_json::Value, out: &mut String) {
        let Some(obj) = v.as_object() else { return };
        if !path.is_empty() {
            out.push_str(&format!("\n[{path}]\n"));
        }
        for (k, x) in obj {
            match x {
                serde_json::Value::Object(_) => {}
                serde_json::Value::Null => out.push_str(&format!("# {k} = (none)\n")),
                _ => out.push_str(&format!("{k} = {}\n", scalar(x))),
            }
        }
        for (k, x) in obj {
            if x.is_object() {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(&p, x, out);
            }
        }
    }
    let mut out = String::new();
    walk("", v, &mut out);
    out
}

fn config_text(c: &RunningConfig) -> anyhow::Result<String> {
    let mut out = format!(
        "# podswitch {} running configuration (as loaded: file, then flags; workers resolved)\n",
        c.switch_version
    );
    out.push_str(&format!(
        "# log format {}  log filter {:?}  state file {}{}\n",
        c.log_format.as_deref().unwrap_or("(unknown)"),
        c.log_filter,
        c.state_file.display(),
        if c.node_from_state {
            " (the node below was restored from it)"
        } else {
            ""
        }
    ));
    out.push_str(&toml_ish(&serde_json::to_value(&c.config)?));
    Ok(out)
}

/// `ctl capture`: arms the capture, writes the file, prints tcpdump-style
/// lines on stderr (stdout may be the capture).
fn capture(socket: &std::path::Path, c: CaptureArgs, json: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    if !(c.duration.is_finite() && c.duration > 0.0) {
        anyhow::bail!("--duration must be a positive number of seconds");
    }
    let spec = CaptureSpec {
        port: c.port,
        point: c.point,
        filter: CaptureFilter {
            proto: c.proto,
            host: c.host,
            port: c.port_num,
        },
        max_frames: c.count,
        duration_ms: (c.duration * 1000.0).ceil() as u64,
        snaplen: c.snaplen,
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = Arc::clone(&stop);
        // Ctrl-C (or SIGTERM) ends the capture cleanly, the file complete.
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let to_stdout = c.write.as_os_str() == "-";
    let path = c.write.clone();
    // Opened once the switch has armed the capture: a refused one leaves no file.
    let open = move || -> anyhow::Result<std::io::BufWriter<Box<dyn std::io::Write>>> {
        let out: Box<dyn std::io::Write> = if to_stdout {
            Box::new(std::io::stdout().lock())
        } else {
            Box::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            )
        };
        Ok(std::io::BufWriter::with_capacity(1 << 20, out))
    };
    let (_, summary) = podswitch_switch::capture::client::run(
        socket,
        &spec,
        c.format,
        open,
        &stop,
        |s| {
            let filter = if s.filter.is_empty() {
                String::new()
            } else {
                format!(", filter \"{}\"", s.filter)
            };
            eprintln!(
                "capturing on {} ({}){filter}, link-type EN10MB (Ethernet), snapshot length {} bytes, \
                 up to {} frames or {} s",
                s.port,
                podswitch_switch::capture::client::describe_point(s.point),
                s.snaplen,
                s.max_frames,
                s.duration_ms as f64 / 1000.0
            );
            if let Some(p) = s.vxlan_udp_port.filter(|p| *p != 4789) {
                eprintln!("VXLAN is on UDP port {p}: read with tshark -d udp.port=={p},vxlan");
            }
        },
    )
    .with_context(|| {
        if to_stdout {
            "capture to stdout".to_string()
        } else {
            format!("capture to {}", c.write.display())
        }
    })?;
    let n = &summary.counts;
    eprintln!("{} frames captured", summary.written);
    eprintln!(
        "{} frames dropped by the capture ring (reader too slow)",
        n.dropped
    );
    eprintln!("{} frames did not match the filter", n.filtered);
    if json && !to_stdout {
        outln!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(())
}

pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let json = args.output == Output::Json;
    match args.command {
        CtlCommand::Capture(c) => capture(&args.socket, c, json)?,
        CtlCommand::Hello => {
            let h: Hello = client::call(&args.socket, &Request::Hello)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&h)?);
            } else {
                outln!(
                    "node {} (switch {}, API v{}, {} workers)",
                    h.node,
                    h.switch_version,
                    h.api_version,
                    h.workers
                );
            }
        }
        CtlCommand::Ports => {
            let ports: Vec<PortInfo> = client::call(&args.socket, &Request::ListPorts)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&ports)?);
            } else {
                outln!(
                    "{:<4} {:<32} {:<15} {:<17} {:>5} {:>3} {:>12} {:>12} {:>8}",
                    "ID",
                    "POD",
                    "IP",
                    "MAC",
                    "MTU",
                    "Q",
                    "RX-PKTS",
                    "TX-PKTS",
                    "DROPS"
                );
                for p in ports {
                    outln!(
                        "{:<4} {:<32} {:<15} {:<17} {:>5} {:>3} {:>12} {:>12} {:>8}",
                        p.id,
                        p.pod,
                        p.ipv4.map(|i| i.to_string()).unwrap_or_default(),
                        p.mac.to_string(),
                        p.mtu,
                        p.queues,
                        p.stats.rx_packets,
                        p.stats.tx_packets,
                        p.stats.rx_drops + p.stats.tx_drops
                    );
                }
            }
        }
        CtlCommand::Stats => {
            let s: Stats = client::call(&args.socket, &Request::GetStats)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                let d = &s.datapath;
                outln!(
                    "generation {}  workers {}  tap I/O {}  vxlan tunnel gso {}",
                    s.generation,
                    s.workers,
                    s.io_backend,
                    if s.vxlan_tunnel_gso { "on" } else { "off" }
                );
                outln!(
                    "rx {} pkts / {} B   tx {} pkts / {} B   batches {}",
                    d.rx_packets,
                    d.rx_bytes,
                    d.tx_packets,
                    d.tx_bytes,
                    d.batches
                );
                outln!("forwarded {}  gso superframes {}  arp replies {}  echo replies {}  icmp errors {}", d.forwarded_local, d.gso_superframes, d.arp_replies, d.icmp_echo_replies, d.icmp_errors_sent);
                outln!("fast path {} packets", d.fast_path);
                if !d.workers.is_empty() {
                    let mut rows = vec![row([
                        "WORKER",
                        "WORKING",
                        "POLLING",
                        "SLEEPING",
                        "WAKEUPS",
                        "EMPTY POLLS",
                        "CONTENDED YIELDS",
                    ])];
                    for (i, w) in d.workers.iter().enumerate() {
                        let total = (w.working_ns + w.polling_ns + w.sleeping_ns).max(1) as f64;
                        let pct = |ns: u64| format!("{:.1} %", 100.0 * ns as f64 / total);
                        rows.push(vec![
                            i.to_string(),
                            pct(w.working_ns),
                            pct(w.polling_ns),
                            pct(w.sleeping_ns),
                            w.wakeups.to_string(),
                            w.empty_polls.to_string(),
                            w.contended_yields.to_string(),
                        ]);
                    }
                    outln!("\nworker time since start");
                    out!("{}", render_table(&rows));
                }
                if d.drops.is_empty() {
                    outln!("\nno drops");
                } else {
                    let mut drops = d.drops.clone();
                    drops.sort_by(|a, b| (&a.stage, &a.reason).cmp(&(&b.stage, &b.reason)));
                    let mut rows =
                        vec![row(["STAGE", "REASON", "PACKETS", "BYTES", "DESCRIPTION"])];
                    for r in &drops {
                        rows.push(vec![
                            r.stage.clone(),
                            r.reason.clone(),
                            r.packets.to_string(),
                            r.bytes.to_string(),
                            r.description.clone(),
                        ]);
                    }
                    let total: u64 = drops.iter().map(|r| r.packets).sum();
                    outln!("\ndrops by stage and reason ({total} packets)");
                    out!("{}", render_table(&rows));
                }
            }
        }
        CtlCommand::Trace(t) => {
            let src = match t.src {
                Some(ip) => ip,
                None => {
                    let ports: Vec<PortInfo> = client::call(&args.socket, &Request::ListPorts)?;
                    ports
                        .iter()
                        .find(|p| p.pod == t.from)
                        .and_then(|p| p.ipv4)
                        .ok_or_else(|| {
                            anyhow::anyhow!("{} has no IPv4 address; give --src", t.from)
                        })?
                }
            };
            let trace: podswitch_switch::pipeline::trace::Trace = client::call(
                &args.socket,
                &Request::Trace(podswitch_api::TraceArgs {
                    ingress: t.from.clone(),
                    packet: podswitch_switch::pipeline::trace::TracePacket {
                        src,
                        dst: t.dst,
                        proto: t.proto,
                        sport: t.sport,
                        dport: t.dport,
                    },
                }),
            )?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&trace)?);
            } else {
                outln!("from {}", trace.ingress);
                match &trace.existing_flow {
                    Some(f) => outln!(
                        "  live flow: {} ({}, reply {})",
                        f.orig,
                        serde_json::to_value(f.state)?.as_str().unwrap_or("?"),
                        f.reply.map(|k| k.to_string()).unwrap_or_default()
                    ),
                    None => outln!("  live flow: none (traced as a new flow)"),
                }
                if let Some(b) = &trace.affinity_backend {
                    outln!("  session affinity: pinned to {b}");
                }
                for s in &trace.steps {
                    let tuple = s.tuple.map(|k| k.to_string()).unwrap_or_default();
                    outln!("  {:<10} {:<28} {}", s.stage, s.verdict, tuple);
                }
                outln!(
                    "=> {}{}",
                    trace.verdict,
                    trace.egress.map(|e| format!(" ({e})")).unwrap_or_default()
                );
            }
        }
        CtlCommand::Conntrack(c) => {
            let filter = FlowFilter {
                addr: c.addr,
                port: c.port,
                proto: c.proto,
                state: c.state,
            };
            if c.flush {
                let r: FlowsRemoved = client::call(
                    &args.socket,
                    &Request::FlushFlows(podswitch_api::FlushFlowsArgs { filter }),
                )?;
                if json {
                    outln!("{}", serde_json::to_string(&r)?);
                } else {
                    outln!("removed {} flow(s)", r.removed);
                }
                return Ok(());
            }
            let limit = if c.count { 0 } else { c.limit };
            let r: Flows = client::call(
                &args.socket,
                &Request::ListFlows(podswitch_api::ListFlowsArgs {
                    filter,
                    limit: Some(limit),
                }),
            )?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                if !c.count {
                    for f in &r.flows {
                        let reply = f.reply.map(|k| format!("  reply {k}")).unwrap_or_default();
                        outln!(
                            "{:<12} {}{}  idle {}s expires {}s",
                            serde_json::to_value(f.state)?.as_str().unwrap_or("?"),
                            f.orig,
                            reply,
                            f.idle_secs,
                            f.expires_in_secs
                        );
                    }
                }
                outln!(
                    "{} matched, {} in the table (capacity {})",
                    r.matched,
                    r.total,
                    r.capacity
                );
            }
        }
        CtlCommand::Services(a) => {
            let state: Vec<ServiceState> = client::call(
                &args.socket,
                &Request::GetServiceState(podswitch_api::GetServiceStateArgs {
                    name: a.name.clone(),
                }),
            )?;
            let mut r: Services = client::call(&args.socket, &Request::GetServices)?;
            if let Some(n) = &a.name {
                r.services.retain(|s| &s.name == n);
            }
            if json {
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({
                        "settings": r.settings,
                        "services": r.services,
                        "state": state,
                    }))?
                );
            } else {
                out!("{}", services_table(&r));
                outln!("\nMaglev tables (M slots over N eligible endpoints: floor(M/N) or ceil(M/N) each)");
                out!("{}", maglev_table(&state));
            }
        }
        CtlCommand::Nodes => {
            let n: Nodes = client::call(&args.socket, &Request::GetNodes)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&n)?);
            } else {
                out!("{}", nodes_table(&n));
            }
        }
        CtlCommand::Routes(a) => {
            let r: Routes = client::call(
                &args.socket,
                &Request::GetRoutes(podswitch_api::GetRoutesArgs { lookup: a.lookup }),
            )?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                match &r.lookup {
                    Some(l) => out!("{}", lookup_text(l)),
                    None => out!("{}", routes_table(&r)),
                }
            }
        }
        CtlCommand::Config => {
            let c: RunningConfig = client::call(&args.socket, &Request::GetConfig)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                out!("{}", config_text(&c)?);
            }
        }
        CtlCommand::Topology => {
            let t: Topology = client::call(&args.socket, &Request::GetTopology)?;
            outln!("{}", serde_json::to_string_pretty(&t)?);
        }
        CtlCommand::IoBackend(a) => {
            let r: IoBackendSet = client::call(
                &args.socket,
                &Request::SetIoBackend(podswitch_api::SetIoBackendArgs { backend: a.backend }),
            )?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                outln!("tap I/O {}", r.in_use);
            }
        }
        CtlCommand::VxlanTunnelGso(a) => {
            let r: VxlanTunnelGsoSet = client::call(
                &args.socket,
                &Request::SetVxlanTunnelGso(podswitch_api::SetVxlanTunnelGsoArgs { on: a.on }),
            )?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                outln!("vxlan tunnel gso {}", if r.in_use { "on" } else { "off" });
            }
        }
        CtlCommand::PollMode(a) => {
            let r: PollSettings = client::call(
                &args.socket,
                &Request::SetPollMode(podswitch_api::SetPollModeArgs {
                    mode: a.mode,
                    budget_us: a.budget_us,
                }),
            )?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                outln!("poll mode {}  adaptive budget {} µs", r.mode, r.budget_us);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align_and_the_last_is_not_padded() {
        let t = render_table(&[row(["A", "LONGER", "Z"]), row(["xyz", "b", "end"])]);
        assert_eq!(t, "A    LONGER  Z\nxyz  b       end\n");
    }

    #[test]
    fn toml_ish_puts_scalars_before_tables_and_marks_nulls() {
        let v = serde_json::json!({
            "b": {"c": 1, "d": {"e": "x"}},
            "a": [1, 2],
            "m": null,
            "s": "t",
        });
        assert_eq!(
            toml_ish(&v),
            "a = [1, 2]\n# m = (none)\ns = \"t\"\n\n[b]\nc = 1\n\n[b.d]\ne = \"x\"\n"
        );
    }

    #[test]
    fn lookup_text_names_the_entry_node_and_next_hop() {
        let l = RouteLookup {
            dst: "10.244.2.3".parse().unwrap(),
            route: Some(RouteEntry {
                prefix: "0.0.0.0/0".parse().unwrap(),
                hop: RouteHop::Host {
                    port: 0,
                    interface: "psw0".into(),
                },
            }),
            node: Some("node-2".into()),
            via: Some("198.18.0.2".parse().unwrap()),
            gateway: false,
            services: Vec::new(),
            masquerade: false,
        };
        let t = lookup_text(&l);
        assert!(
            t.starts_with("10.244.2.3 via 0.0.0.0/0: host port psw0"),
            "{t}"
        );
        assert!(
            t.contains("pod CIDR of node node-2, which the node's kernel reaches via 198.18.0.2"),
            "{t}"
        );
        let none = RouteLookup {
            route: None,
            node: None,
            via: None,
            ..l
        };
        assert!(lookup_text(&none).contains("no route"));
    }
}
