//! The cross-check of the built-in traffic generator against real peers
//! from Debian: iperf3 (TCP throughput, one stream) and sockperf (UDP
//! ping-pong round trips), run in the same pod namespaces as the bench's
//! own tools, when they are installed.
//!
//! Each is run so that it measures what the built-in generator measures
//! beside it (see [`iperf3`] and [`sockperf`] for the windows).
//!
//! Both run as child processes under `ip netns exec <name>` (iproute2
//! moves the child into the namespace and remounts /sys for it); the
//! server is waited for until its socket shows in the namespace's
//! `/proc/net/{tcp,udp}` and is killed when the measurement ends (a
//! guard, also on error).

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde::Deserialize;

use podswitch_lab::demo::in_netns;

/// What sockperf's ping-pong leaves out at the start of a run ("Warm up
/// time=400 msec" in the summary of sockperf 3.7).
pub const SOCKPERF_WARMUP: Duration = Duration::from_millis(400);
/// What it leaves out at the end: a `-t 1` run reports a valid duration
/// of 0.550 s, a `-t 2` run 1.552 s.
pub const SOCKPERF_COOLDOWN: Duration = Duration::from_millis(50);

/// How long a server may take to start listening.
const SERVER_START: Duration = Duration::from_secs(5);

/// Whether `program` runs (`program --version` succeeds or at least
/// starts).
pub fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The name of the namespace at `path` (`/run/netns/NAME`), as
/// `ip netns exec` takes it.
fn netns_name(path: &Path) -> anyhow::Result<&str> {
    path.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} is not a named network namespace", path.display()))
}

/// A server child, killed and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `/proc/net/{tcp,udp}[6]` text has a socket bound to local
/// `port` (TCP: listening).
pub fn proc_net_has_port(text: &str, port: u16, tcp: bool) -> bool {
    let want = format!(":{port:04X}");
    text.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Header lines have "local_address" there, never ":PORT".
        f.len() > 3 && f[1].ends_with(&want) && (!tcp || f[3] == "0A")
    })
}

/// Waits until a socket on `port` shows in the namespace at `ns`.
fn wait_listening(ns: &Path, port: u16, tcp: bool, server: &mut Server) -> anyhow::Result<()> {
    let file = if tcp { "tcp" } else { "udp" };
    let deadline = Instant::now() + SERVER_START;
    loop {
        let text = in_netns(ns, move || {
            // thread-self: this thread's namespace, not the process's. A
            // dual-stack listener (iperf3's) shows in the *6 file.
            let v4 = std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
                .context("reading /proc/thread-self/net")?;
            let v6 = std::fs::read_to_string(format!("/proc/thread-self/net/{file}6"))
                .unwrap_or_default();
            Ok(v4 + &v6)
        })?;
        if proc_net_has_port(&text, port, tcp) {
            return Ok(());
        }
        if let Some(status) = server.0.try_wait()? {
            bail!("the server exited ({status}) before listening on port {port}");
        }
        if Instant::now() >= deadline {
            bail!("no server listening on {file} port {port} after {SERVER_START:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(ns: &str, args: &[&str]) -> anyhow::Result<Server> {
    Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Server)
        .with_context(|| format!("starting {} in {ns}", args.join(" ")))
}

fn run(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} in {ns}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} in {ns} failed ({}): {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Deserialize)]
struct IperfJson {
    start: IperfStart,
    end: IperfEnd,
}
#[derive(Deserialize)]
struct IperfStart {
    test_start: IperfTestStart,
}
#[derive(Deserialize)]
struct IperfTestStart {
    omit: u64,
}
#[derive(Deserialize)]
struct IperfEnd {
    sum_received: IperfSum,
}
#[derive(Deserialize)]
struct IperfSum {
    bits_per_second: f64,
}

/// The receiver's rate from `iperf3 -J` output, in Gbit/s, after checking
/// that the run left out `omit` seconds as asked.
pub fn parse_iperf3(json: &str, omit: u64) -> anyhow::Result<f64> {
    let j: IperfJson = serde_json::from_str(json).context("parsing iperf3 -J output")?;
    ensure!(
        j.start.test_start.omit == omit,
        "iperf3 omitted {} s, not {omit} s",
        j.start.test_start.omit
    );
    Ok(j.end.sum_received.bits_per_second / 1e9)
}

/// One iperf3 TCP stream from `client` to a one-off server in `server`
/// at `ip:port`: `--omit omit` seconds of warm-up, then `-t secs`
/// measured (whole seconds, at least 1); Gbit/s received.
///
/// The rate is `end.sum_received`: the server's bytes read after its
/// omitted seconds, until the client's TEST_END arrives (the client
/// stops writing then), over that time. The built-in generator measures
/// the same window ([`StreamWindow`](super::load::StreamWindow)).
///
/// # Errors
/// If iperf3 is missing, does not start, or fails.
pub fn iperf3(
    client: &Path,
    server: &Path,
    ip: Ipv4Addr,
    port: u16,
    omit: u64,
    secs: u64,
    pin: Option<super::Placement>,
) -> anyhow::Result<f64> {
    let port_s = port.to_string();
    let mut srv = spawn(netns_name(server)?, &["iperf3", "-s", "-1", "-p", &port_s])?;
    wait_listening(server, port, true, &mut srv)?;
    let (ip_s, secs_s, omit_s) = (ip.to_string(), secs.max(1).to_string(), omit.to_string());
    // `-A n,m`: the client on core n, the server (for this test) on m.
    let affinity = pin.map(|p| format!("{},{}", p.sender, p.receiver));
    let mut args = vec![
        "iperf3", "-c", &ip_s, "-p", &port_s, "-t", &secs_s, "--omit", &omit_s, "-J",
    ];
    if let Some(a) = &affinity {
        args.extend(["-A", a.as_str()]);
    }
    let out = run(netns_name(client)?, &args)?;
    parse_iperf3(&out, omit)
}

/// Round-trip percentiles from sockperf's ping-pong summary (with
/// `--full-rtt`), microseconds: (p50, p99).
pub fn parse_sockperf(text: &str) -> anyhow::Result<(f64, f64)> {
    let pct = |want: &str| -> anyhow::Result<f64> {
        text.lines()
            .find_map(|l| {
                let (_, rest) = l.split_once("---> percentile ")?;
                let (p, v) = rest.split_once('=')?;
                (p.trim() == want).then(|| v.trim().parse::<f64>().ok())?
            })
            .with_context(|| format!("no percentile {want} in sockperf's output"))
    };
    Ok((pct("50.000")?, pct("99.000")?))
}

/// sockperf UDP ping-pong with `size`-byte messages from `client` to a
/// server in `server` at `ip:port`, for `secs` (whole seconds, at least 1,
/// of which sockperf measures those after [`SOCKPERF_WARMUP`] and before
/// [`SOCKPERF_COOLDOWN`]); round-trip (p50, p99) in microseconds.
///
/// # Errors
/// If sockperf is missing, does not start, or fails.
pub fn sockperf(
    client: &Path,
    server: &Path,
    ip: Ipv4Addr,
    port: u16,
    size: usize,
    secs: u64,
) -> anyhow::Result<(f64, f64)> {
    let (ip_s, port_s) = (ip.to_string(), port.to_string());
    let mut srv = spawn(
        netns_name(server)?,
        &["sockperf", "server", "-i", &ip_s, "-p", &port_s],
    )?;
    wait_listening(server, port, false, &mut srv)?;
    let out = run(
        netns_name(client)?,
        &[
            "sockperf",
            "ping-pong",
            "-i",
            &ip_s,
            "-p",
            &port_s,
            "-m",
            &size.to_string(),
            "-t",
            &secs.max(1).to_string(),
            "--full-rtt",
        ],
    )?;
    parse_sockperf(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockperf_summary_is_parsed() {
        let text = "sockperf: ---> <MAX> observation = 11301.238\n\
                    sockperf: ---> percentile 99.999 = 4825.552\n\
                    sockperf: ---> percentile 99.000 =   16.787\n\
                    sockperf: ---> percentile 90.000 =    5.749\n\
                    sockperf: ---> percentile 50.000 =    5.284\n";
        assert_eq!(parse_sockperf(text).unwrap(), (5.284, 16.787));
        assert!(parse_sockperf("sockperf: Test ended").is_err());
    }

    #[test]
    fn iperf3_json_is_parsed() {
        let j = r#"{"start":{"test_start":{"omit":1,"duration":2}},"end":{"sum_sent":{"bits_per_second":1},"sum_received":{"bits_per_second":12.5e9}}}"#;
        assert_eq!(parse_iperf3(j, 1).unwrap(), 12.5);
        // A run that did not leave out what was asked is not comparable.
        assert!(parse_iperf3(j, 0).is_err());
        assert!(parse_iperf3("{}", 0).is_err());
    }

    #[test]
    fn proc_net_listening_socket() {
        let tcp = "  sl  local_address rem_address   st\n   0: 00000000:1451 00000000:0000 0A 0\n   1: 0100007F:1F90 0100007F:C000 01 0\n";
        assert!(proc_net_has_port(tcp, 5201, true));
        // Port 8080 is there but established, not listening.
        assert!(!proc_net_has_port(tcp, 8080, true));
        assert!(proc_net_has_port(tcp, 8080, false));
        assert!(!proc_net_has_port(tcp, 1, false));
        let tcp6 = "  sl  local_address remote_address st\n   0: 00000000000000000000000000000000:1451 00000000000000000000000000000000:0000 0A 0\n";
        assert!(proc_net_has_port(tcp6, 5201, true));
    }
}
