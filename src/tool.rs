//! `podswitch tool ...`: the built-in traffic tools, run inside a pod's
//! namespace (`podswitch lab exec POD -- podswitch tool ...`). Each prints
//! one JSON line with its result.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use podswitch_lab::manifest::Protocol;
use podswitch_lab::{probe, traffic};
use podswitch_switch::control::api::Mac;

#[derive(clap::Args, Debug)]
pub struct ToolArgs {
    #[command(subcommand)]
    command: ToolCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

impl From<Proto> for Protocol {
    fn from(p: Proto) -> Self {
        match p {
            Proto::Tcp => Protocol::Tcp,
            Proto::Udp => Protocol::Udp,
        }
    }
}

#[derive(Subcommand, Debug)]
enum ToolCommand {
    /// Accept one TCP connection, read to EOF, report bytes and CRC-32.
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Send N bytes of deterministic data, report bytes and CRC-32.
    TcpSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Send numbered UDP datagrams to an echo server and check the replies.
    UdpEcho {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 100)]
        count: u32,
        #[arg(long, default_value_t = 512)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        timeout_secs: u64,
    },
    /// Request/response echo server for latency tests.
    RrServer {
        #[arg(long, value_enum)]
        proto: Proto,
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Request/response latency client (HDR histogram percentiles).
    RrClient {
        #[arg(long, value_enum)]
        proto: Proto,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
        #[arg(long, default_value_t = 1_000_000)]
        max: u64,
    },
    /// ICMP echo with a chosen TTL; reports replies and ICMP errors.
    Ping {
        #[arg(long)]
        to: Ipv4Addr,
        #[arg(long, default_value_t = 3)]
        count: u32,
        #[arg(long, default_value_t = 64)]
        ttl: u32,
        #[arg(long, default_value_t = 2)]
        timeout_secs: u64,
    },
    /// One HTTP GET; prints status and body.
    HttpGet {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value = "podswitch")]
        host: String,
        #[arg(long, default_value = "/")]
        path: String,
    },
    /// N HTTP GETs, each on a new TCP connection; reports successes,
    /// failures (with the first errors), and which pods answered
    /// (`From=`) and whom they saw (`ClientIP=`).
    HttpLoad {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 60)]
        count: u32,
        /// Pause between requests.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Stop early after this many seconds.
        #[arg(long, default_value_t = 60.0)]
        max_secs: f64,
    },
    /// Write malformed frames to an interface (AF_PACKET).
    Inject {
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// Destination MAC (the gateway's).
        #[arg(long, default_value = "ee:ee:ee:ee:ee:ee")]
        dst_mac: Mac,
        #[arg(long)]
        src_ip: Ipv4Addr,
        #[arg(long)]
        dst_ip: Ipv4Addr,
    },
}

fn print<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string(v)?);
    Ok(())
}

pub fn run(args: ToolArgs) -> anyhow::Result<()> {
    match args.command {
        ToolCommand::TcpSink {
            listen,
            timeout_secs,
        } => print(&traffic::TcpSink::bind(listen)?.run(Duration::from_secs(timeout_secs))?),
        ToolCommand::TcpSend {
            to,
            bytes,
            timeout_secs,
        } => print(&traffic::tcp_send(
            to,
            bytes,
            Duration::from_secs(timeout_secs),
        )?),
        ToolCommand::UdpEcho {
            to,
            count,
            size,
            timeout_secs,
        } => print(&traffic::udp_echo_check(
            to,
            count,
            size,
            Duration::from_secs(timeout_secs),
        )?),
        ToolCommand::RrServer { proto, listen } => traffic::rr_server(proto.into(), listen),
        ToolCommand::RrClient {
            proto,
            to,
            size,
            secs,
            max,
        } => print(&traffic::rr_client(
            proto.into(),
            to,
            size,
            Duration::from_secs_f64(secs),
            max,
        )?),
        ToolCommand::Ping {
            to,
            count,
            ttl,
            timeout_secs,
        } => print(&probe::icmp_probe(
            to,
            count,
            ttl,
            Duration::from_secs(timeout_secs),
        )?),
        ToolCommand::HttpLoad {
            to,
            count,
            interval_ms,
            max_secs,
        } => print(&http_load(
            to,
            count,
            Duration::from_millis(interval_ms),
            Duration::from_secs_f64(max_secs),
        )),
        ToolCommand::HttpGet { to, host, path } => {
            let (status, body) = probe::http_get(to, &host, &path, Duration::from_secs(10))?;
            print(&serde_json::json!({"status": status, "body": body}))
        }
        ToolCommand::Inject {
            ifname,
            dst_mac,
            src_ip,
            dst_ip,
        } => {
            let nl = podswitch_switch::port::netlink::Netlink::current()?;
            let idx = nl
                .link_index(&ifname)?
                .ok_or_else(|| anyhow::anyhow!("no interface {ifname}"))?;
            let src_mac = nl.link_mac(idx)?;
            print(&traffic::inject_malformed(
                &ifname, src_mac, dst_mac.0, src_ip, dst_ip,
            )?)
        }
    }
}

/// The value of `key=` in an echo workload's answer line.
fn field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
}

fn http_load(to: SocketAddr, count: u32, interval: Duration, max: Duration) -> serde_json::Value {
    let started = std::time::Instant::now();
    let mut from = std::collections::BTreeMap::<String, u32>::new();
    let mut client_ips = std::collections::BTreeMap::<String, u32>::new();
    let (mut ok, mut failed, mut errors) = (0u32, 0u32, Vec::new());
    for i in 0..count {
        if started.elapsed() > max {
            break;
        }
        match probe::http_get(to, "podswitch", "/load", Duration::from_secs(5)) {
            Ok((200, body)) => {
                ok += 1;
                *from
                    .entry(field(&body, "From").unwrap_or("?").to_string())
                    .or_default() += 1;
                *client_ips
                    .entry(field(&body, "ClientIP").unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            Ok((status, _)) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(format!("request {i}: HTTP {status}"));
                }
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(format!("request {i}: {e:#}"));
                }
            }
        }
        if !interval.is_zero() {
            std::thread::sleep(interval);
        }
    }
    serde_json::json!({
        "ok": ok,
        "failed": failed,
        "errors": errors,
        "from": from,
        "client_ips": client_ips,
        "secs": started.elapsed().as_secs_f64(),
    })
}
