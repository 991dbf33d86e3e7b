//! `podswitch ctl`: read a running switch's state over its control socket.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use podswitch_switch::capture::file::CaptureFormat;
use podswitch_switch::capture::{CaptureFilter, CapturePoint, CaptureProto};
use podswitch_switch::control::api::CaptureSpec;
use podswitch_switch::control::api::{
    FlowFilter, Flows, Hello, PortInfo, Protocol, Request, ServiceSettings, ServiceSpec, Stats,
    Topology,
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
    /// The Services the switch holds: frontends and endpoints.
    Services,
    /// Conntrack flows: list (filtered), count, or flush.
    Conntrack(ConntrackArgs),
    /// Dry-run a synthetic packet through the stages (nothing is sent).
    Trace(TraceArgs),
    /// Capture frames at a port's ingress/egress or on the underlay into a
    /// pcap/pcapng file (`-w -`: stdout, e.g. `| tshark -r -`).
    Capture(CaptureArgs),
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

/// The result of `get_services`.
#[derive(Debug, serde::Deserialize)]
struct ServicesResult {
    settings: ServiceSettings,
    services: Vec<ServiceSpec>,
}

fn protocol_str(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// One line per Service port: its frontends (ClusterIPs, external IPs,
/// NodePort), options, and endpoints with their conditions.
fn services_table(r: &ServicesResult) -> String {
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
                    let state = match (e.ready, e.terminating) {
                        (true, _) => "ready",
                        (false, true) => "terminating",
                        (false, false) => "not-ready",
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
                outln!("generation {}  workers {}", s.generation, s.workers);
                outln!(
                    "rx {} pkts / {} B   tx {} pkts / {} B   batches {}",
                    d.rx_packets,
                    d.rx_bytes,
                    d.tx_packets,
                    d.tx_bytes,
                    d.batches
                );
                outln!("forwarded {}  gso superframes {}  arp replies {}  echo replies {}  icmp errors {}", d.forwarded_local, d.gso_superframes, d.arp_replies, d.icmp_echo_replies, d.icmp_errors_sent);
                outln!(
                    "\n{:<8} {:<26} {:>10} {:>12}  DESCRIPTION",
                    "STAGE",
                    "REASON",
                    "PACKETS",
                    "BYTES"
                );
                for r in &d.drops {
                    outln!(
                        "{:<8} {:<26} {:>10} {:>12}  {}",
                        r.stage,
                        r.reason,
                        r.packets,
                        r.bytes,
                        r.description
                    );
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
                &Request::Trace {
                    ingress: t.from.clone(),
                    packet: podswitch_switch::pipeline::trace::TracePacket {
                        src,
                        dst: t.dst,
                        proto: t.proto,
                        sport: t.sport,
                        dport: t.dport,
                    },
                },
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
                let v: serde_json::Value =
                    client::call(&args.socket, &Request::FlushFlows { filter })?;
                if json {
                    outln!("{v}");
                } else {
                    outln!("removed {} flow(s)", v["removed"]);
                }
                return Ok(());
            }
            let limit = if c.count { 0 } else { c.limit };
            let r: Flows = client::call(
                &args.socket,
                &Request::ListFlows {
                    filter,
                    limit: Some(limit),
                },
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
        CtlCommand::Services => {
            if json {
                let v: serde_json::Value = client::call(&args.socket, &Request::GetServices)?;
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let r: ServicesResult = client::call(&args.socket, &Request::GetServices)?;
                out!("{}", services_table(&r));
            }
        }
        CtlCommand::Topology => {
            let t: Topology = client::call(&args.socket, &Request::GetTopology)?;
            outln!("{}", serde_json::to_string_pretty(&t)?);
        }
    }
    Ok(())
}
