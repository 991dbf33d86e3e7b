//! `podswitch ctl`: read a running switch's state over its control socket.

use std::path::PathBuf;

use clap::{Subcommand, ValueEnum};
use podswitch_switch::control::api::{Hello, PortInfo, Request, Stats, Topology};
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
}

pub fn run(args: CtlArgs) -> anyhow::Result<()> {
    let json = args.output == Output::Json;
    match args.command {
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
        CtlCommand::Topology => {
            let t: Topology = client::call(&args.socket, &Request::GetTopology)?;
            outln!("{}", serde_json::to_string_pretty(&t)?);
        }
    }
    Ok(())
}
