//! `podswitch`: the one binary users run. Thin: parses arguments and calls
//! the switch and agent libraries.
#![forbid(unsafe_code)]

/// `println!` that ends the program quietly when stdout is a closed pipe
/// (`podswitch ctl stats | head`) instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// `print!` with the same broken-pipe handling as `outln!`.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod agent;
mod bench;
mod ctl;
mod lab;
mod tool;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Userspace pod-networking switch for Kubernetes, and its standalone lab.
#[derive(Parser, Debug)]
#[command(name = "podswitch", version, about, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "PODSWITCH_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Native,
    Vxlan,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The switch daemon.
    Switch {
        #[command(subcommand)]
        command: SwitchCommand,
    },
    /// Talk to a running switch over its control socket.
    Ctl(ctl::CtlArgs),
    /// A standalone lab cluster of network namespaces (no Kubernetes needed).
    Lab(lab::LabArgs),
    /// Overlay vs native vs kernel: latency, connection rate, throughput,
    /// packet rate and CPU per GB, interleaved in one run, with plots.
    Bench(bench::BenchArgs),
    /// The node agent: topology from the Kubernetes API or manifest files, pushed to the switch.
    Agent(agent::AgentArgs),
    /// Traffic tools run inside pod namespaces by tests and the report.
    #[command(hide = true)]
    Tool(tool::ToolArgs),
}

#[derive(Subcommand, Debug)]
enum SwitchCommand {
    /// Run the switch daemon until SIGINT/SIGTERM.
    Run(SwitchRunArgs),
}

#[derive(clap::Args, Debug)]
struct SwitchRunArgs {
    /// Daemon config file (TOML, see configs/switch.toml); flags override it.
    #[arg(long, env = "PODSWITCH_CONFIG")]
    config: Option<PathBuf>,
    /// Node name.
    #[arg(long)]
    node: Option<String>,
    /// The node's IPv4 pod CIDR.
    #[arg(long)]
    pod_cidr: Option<ipnet::IpNet>,
    /// Pod MTU.
    #[arg(long)]
    mtu: Option<u32>,
    /// Worker threads (0 = one per core).
    #[arg(long)]
    workers: Option<usize>,
    /// Control socket path.
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// State directory (survives restarts).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The node's underlay address (its InternalIP).
    #[arg(long)]
    underlay_ip: Option<std::net::Ipv4Addr>,
    /// How pod traffic crosses nodes.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// VXLAN network identifier.
    #[arg(long)]
    vni: Option<u32>,
    /// VXLAN UDP port (4789, or 8472 like Linux and flannel).
    #[arg(long)]
    vxlan_port: Option<u16>,
    /// Conntrack table cap (flows); memory is fixed at start (80 bytes per flow).
    #[arg(long)]
    conntrack_max: Option<usize>,
    /// Maglev lookup-table size per service frontend (a prime: 16381, 65537, ...).
    #[arg(long)]
    maglev_table_size: Option<usize>,
    /// Serve /metrics, /healthz and /readyz over HTTP here (default
    /// 127.0.0.1:9464); an empty value turns the endpoint off.
    #[arg(long)]
    metrics_address: Option<String>,
    /// Where NodePorts open, comma-separated, as kube-proxy's flag:
    /// "primary" (the underlay address) and IPv4 CIDRs matched against the
    /// node's addresses (default "primary").
    #[arg(long)]
    nodeport_addresses: Option<String>,
    /// How idle workers wait for frames: interrupt (park in epoll at once),
    /// adaptive (busy-poll for --adaptive-poll-us after the last frame,
    /// then park; the default) or poll (never park: dedicated cores).
    #[arg(long, env = "PODSWITCH_POLL_MODE")]
    poll_mode: Option<podswitch_switch::worker::poll::PollMode>,
    /// The adaptive mode's budget in microseconds (default 100).
    #[arg(long, env = "PODSWITCH_ADAPTIVE_POLL_US")]
    adaptive_poll_us: Option<u64>,
    /// How workers move tap frames: auto (io_uring where the kernel allows
    /// it, else one read/write per frame), io_uring, or syscalls.
    #[arg(long, env = "PODSWITCH_IO_BACKEND")]
    io_backend: Option<podswitch_switch::worker::IoBackend>,
    /// In VXLAN mode, send through a tunnel tap and hand TCP superframes
    /// to the node's kernel whole (UDP-tunnel GSO, Linux >= 6.17; the
    /// default) or send through a UDP socket and segment them in the
    /// switch (false).
    #[arg(long, env = "PODSWITCH_VXLAN_TUNNEL_GSO", value_parser = clap::builder::BoolishValueParser::new())]
    vxlan_tunnel_gso: Option<bool>,
    /// Enter this network namespace before starting (the node's namespace).
    #[arg(long)]
    netns: Option<PathBuf>,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PODSWITCH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn switch_run(args: SwitchRunArgs, log_format: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    use podswitch_switch::daemon::{self, DaemonConfig};
    let mut config: Option<DaemonConfig> = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?)
        }
        None => None,
    };
    if config.is_none() {
        let node = args
            .node
            .clone()
            .context("--node (or --config) is required")?;
        let cidr = args
            .pod_cidr
            .context("--pod-cidr (or --config) is required")?;
        config = Some(DaemonConfig {
            node: daemon::node_spec(&node, cidr, args.mtu.unwrap_or(1500)),
            control_socket: PathBuf::from(format!("/run/podswitch/{node}.sock")),
            state_dir: daemon::default_state_dir(&node),
            workers: 0,
            conntrack: Default::default(),
            maglev_table_size: podswitch_switch::tables::maglev::DEFAULT_TABLE_SIZE,
            metrics_address: Some(podswitch_switch::exporter::DEFAULT_METRICS_ADDRESS),
            node_port_addresses: podswitch_switch::tables::node_ports::default_list(),
            poll_mode: Default::default(),
            adaptive_poll_us: podswitch_switch::worker::poll::DEFAULT_ADAPTIVE_BUDGET_US,
            io_backend: Default::default(),
            vxlan_tunnel_gso: true,
        });
    }
    let mut config = config.context("no configuration")?;
    if let Some(n) = args.node {
        config.node.name = n;
    }
    if let Some(c) = args.pod_cidr {
        config.node.pod_cidrs = vec![c];
    }
    if let Some(m) = args.mtu {
        config.node.mtu = m;
    }
    if let Some(ip) = args.underlay_ip {
        config.node.underlay_ipv4 = Some(ip);
    }
    if let Some(m) = args.mode {
        config.node.mode = match m {
            Mode::Native => podswitch_switch::control::api::ClusterMode::Native,
            Mode::Vxlan => podswitch_switch::control::api::ClusterMode::Vxlan,
        };
    }
    if let Some(v) = args.vni {
        config.node.vxlan.vni = v;
    }
    if let Some(p) = args.vxlan_port {
        config.node.vxlan.port = p;
    }
    if let Some(w) = args.workers {
        config.workers = w;
    }
    if let Some(n) = args.conntrack_max {
        config.conntrack.max_flows = n;
    }
    if let Some(m) = args.maglev_table_size {
        anyhow::ensure!(
            podswitch_switch::tables::maglev::is_prime(m),
            "--maglev-table-size {m} is not a prime"
        );
        config.maglev_table_size = m;
    }
    if let Some(a) = &args.metrics_address {
        config.metrics_address = daemon::parse_metrics_address(a)
            .with_context(|| format!("--metrics-address {a:?} is not an address:port"))?;
    }
    if let Some(list) = &args.nodeport_addresses {
        config.node_port_addresses = podswitch_switch::tables::node_ports::parse_list(list)
            .with_context(|| format!("--nodeport-addresses {list:?}"))?;
    }
    if let Some(m) = args.poll_mode {
        config.poll_mode = m;
    }
    if let Some(us) = args.adaptive_poll_us {
        config.adaptive_poll_us =
            podswitch_switch::worker::poll::check_budget_us(us).context("--adaptive-poll-us")?;
    }
    if let Some(b) = args.io_backend {
        config.io_backend = b;
    }
    if let Some(on) = args.vxlan_tunnel_gso {
        config.vxlan_tunnel_gso = on;
    }
    if let Some(s) = args.control_socket {
        config.control_socket = s;
    }
    if let Some(s) = args.state_dir {
        config.state_dir = s;
    }
    if let Some(ns) = &args.netns {
        // Before any thread exists, so every worker inherits the namespace.
        podswitch_lab::cluster::enter_netns_for_good(ns)?;
    }
    daemon::run(config, Some(log_format.to_string()))
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Switch {
            command: SwitchCommand::Run(args),
        } => switch_run(
            args,
            match cli.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            },
        ),
        Command::Ctl(args) => ctl::run(args),
        Command::Lab(args) => lab::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Agent(args) => agent::run(args),
        Command::Tool(args) => tool::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
