//! `podswitch ctl capture` against running labs: known traffic is captured
//! at a port's ingress/egress and on the VXLAN underlay, written as pcap
//! and pcapng (to a file and to stdout), and tshark — a real, independent
//! dissector — finds exactly the expected packets.
//!
//! ```text
//!   one node (native):                     two nodes (vxlan, UDP 8472):
//!   pod a ──tap──┐                          pod a ─ switch node-1 ═VXLAN═ switch node-2 ─ pod b
//!                ├── switch node-1                 capture: underlay (both ways)
//!   pod b ──tap──┘   capture: a ingress/both, b egress, b egress (TCP)
//! ```

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// tshark, or a clear failure: `./run test` installs it.
fn tshark() -> Command {
    let found = Command::new("tshark")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "tshark is not installed (Debian package tshark; ./run test installs it)"
    );
    Command::new("tshark")
}

/// `tshark -r FILE [extra] -T fields -e F...`, one Vec per packet.
fn fields(file: &str, extra: &[&str], fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = tshark();
    cmd.args(["-r", file]).args(extra).args(["-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd.output().expect("run tshark");
    assert!(
        out.status.success(),
        "tshark -r {file} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_fields(&out.stdout)
}

fn parse_fields(stdout: &[u8]) -> Vec<Vec<String>> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// A running `ctl capture`, killed if the test ends before it does.
struct CaptureRun {
    child: Child,
    stderr: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl CaptureRun {
    /// Starts `podswitch ctl -s SOCKET capture ARGS` (stdout to `stdout`)
    /// and waits until the switch has armed it.
    fn start(socket: &str, args: &[&str], stdout: Stdio) -> CaptureRun {
        let mut child = Command::new(exe())
            .args(["ctl", "-s", socket, "capture"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ctl capture");
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut run = CaptureRun {
            child,
            stderr: rx,
            seen: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !run.seen.iter().any(|l| l.starts_with("capturing on ")) {
            let left = deadline.saturating_duration_since(Instant::now());
            match run.stderr.recv_timeout(left) {
                Ok(l) => run.seen.push(l),
                Err(_) => panic!(
                    "ctl capture {args:?} never armed: {:?} (exit {:?})",
                    run.seen,
                    run.child.try_wait()
                ),
            }
        }
        run
    }

    /// Waits (with a deadline) for the capture to end by itself; returns
    /// its stderr.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait ctl") {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "ctl capture did not end: {:?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(25));
        };
        // The reader thread ends at EOF.
        while let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        let text = self.seen.join("\n");
        assert!(status.success(), "ctl capture failed ({status}): {text}");
        text
    }
}

impl Drop for CaptureRun {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The count in a summary line like `5 frames captured`.
fn summary(stderr: &str, what: &str) -> u64 {
    stderr
        .lines()
        .find(|l| l.contains(what))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {what:?} line in {stderr}"))
}

fn ping(lab: &TestLab, pod: &str, to: &str, count: u32) {
    let out = lab.exec(
        pod,
        &["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "2", to],
    );
    assert!(
        out.status.success(),
        "ping {pod} -> {to}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A scratch file removed at the end.
struct TempFile(String);

impl TempFile {
    fn new(name: &str) -> TempFile {
        TempFile(format!(
            "{}/psw-capture-{}-{name}",
            std::env::temp_dir().display(),
            std::process::id()
        ))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn pod_port_captures_in_pcap_and_pcapng_show_exactly_the_pings() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up("capture", None);
    let sock = lab.socket("node-1");
    let pods = lab.pods();
    let (a, a_ip) = &pods[0];
    let (b, b_ip) = &pods[1];
    let a_port = format!("default/{a}");
    let b_port = format!("default/{b}");

    // 1. Ingress of a, pcap, ICMP to/from b: the 5 echo requests a sent.
    let pcap = TempFile::new("a-ingress.pcap");
    let run = CaptureRun::start(
        &sock,
        &[
            "--port",
            &a_port,
            "--point",
            "ingress",
            "--proto",
            "icmp",
            "--host",
            b_ip,
            "-c",
            "5",
            "--duration",
            "20",
            "-w",
            &pcap.0,
        ],
        Stdio::null(),
    );
    ping(&lab, a, b_ip, 5);
    let err = run.finish();
    assert_eq!(summary(&err, "frames captured"), 5, "{err}");
    assert_eq!(summary(&err, "dropped by the capture ring"), 0, "{err}");
    let rows = fields(&pcap.0, &[], &["ip.src", "ip.dst", "icmp.type", "ip.ttl"]);
    let want = vec![a_ip.clone(), b_ip.clone(), "8".into(), "64".into()];
    assert_eq!(rows, vec![want; 5], "tshark on the ingress pcap");

    // 2. Both directions of a, pcapng: 5 requests in, 5 replies out, with
    // the direction in each packet's flags.
    let ng = TempFile::new("a-both.pcapng");
    let run = CaptureRun::start(
        &sock,
        &[
            "--port",
            &a_port,
            "--proto",
            "icmp",
            "--host",
            b_ip,
            "-c",
            "10",
            "--duration",
            "20",
            "--format",
            "pcapng",
            "-w",
            &ng.0,
        ],
        Stdio::null(),
    );
    ping(&lab, a, b_ip, 5);
    let err = run.finish();
    assert_eq!(summary(&err, "frames captured"), 10, "{err}");
    let rows = fields(
        &ng.0,
        &[],
        &[
            "frame.packet_flags_direction",
            "ip.src",
            "ip.dst",
            "icmp.type",
            "frame.interface_name",
        ],
    );
    assert_eq!(rows.len(), 10, "{rows:?}");
    let inbound: Vec<_> = rows.iter().filter(|r| r[0] == "0x00000001").collect();
    let outbound: Vec<_> = rows.iter().filter(|r| r[0] == "0x00000002").collect();
    assert_eq!((inbound.len(), outbound.len()), (5, 5), "{rows:?}");
    for r in inbound {
        assert_eq!(r[1..], [a_ip, b_ip, "8", &a_port], "{rows:?}");
    }
    for r in outbound {
        assert_eq!(r[1..], [b_ip, a_ip, "0", &a_port], "{rows:?}");
    }

    // 3. Egress of b to stdout, piped into `tshark -r -`: the requests as
    // the switch wrote them to b (routed: TTL 63).
    let mut run = CaptureRun::start(
        &sock,
        &[
            "--port",
            &b_port,
            "--point",
            "egress",
            "--proto",
            "icmp",
            "--host",
            a_ip,
            "-c",
            "5",
            "--duration",
            "20",
            "-w",
            "-",
        ],
        Stdio::piped(),
    );
    let pipe = run.child.stdout.take().expect("ctl stdout");
    let mut shark = tshark()
        .args(["-r", "-", "-T", "fields"])
        .args([
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "icmp.type",
            "-e",
            "ip.ttl",
        ])
        .stdin(pipe)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tshark");
    ping(&lab, a, b_ip, 5);
    let err = run.finish();
    assert_eq!(summary(&err, "frames captured"), 5, "{err}");
    let mut stdout = Vec::new();
    shark
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    assert!(shark.wait().unwrap().success(), "tshark -r - failed");
    let want = vec![a_ip.clone(), b_ip.clone(), "8".into(), "63".into()];
    assert_eq!(parse_fields(&stdout), vec![want; 5], "tshark on stdin");

    // 4. TCP into b (snaplen 128, port filter): frames are cut but keep
    // their length; the vnet_hdr is not in the copy (tshark finds the
    // ports at the right offset) and TSO superframes come whole.
    let tcp = TempFile::new("b-tcp.pcap");
    let run = CaptureRun::start(
        &sock,
        &[
            "--port",
            &b_port,
            "--point",
            "egress",
            "--proto",
            "tcp",
            "--port-num",
            "5003",
            "--snaplen",
            "128",
            "-c",
            "200",
            "--duration",
            "5",
            "-w",
            &tcp.0,
        ],
        Stdio::null(),
    );
    let sink = lab.spawn_tool(
        b,
        &[
            "tcp-sink",
            "--listen",
            "0.0.0.0:5003",
            "--timeout-secs",
            "20",
        ],
    );
    // Give the sink its listening socket (a refused connect is retried).
    let sent = (0..40)
        .find_map(|_| {
            let exe = exe();
            let out = lab.exec(
                a,
                &[
                    exe.to_str().unwrap(),
                    "tool",
                    "tcp-send",
                    "--to",
                    &format!("{b_ip}:5003"),
                    "--bytes",
                    "4194304",
                    "--timeout-secs",
                    "20",
                ],
            );
            if out.status.success() {
                Some(out)
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
        .expect("tcp-send never connected");
    assert!(sent.status.success());
    assert!(sink.wait_with_output().unwrap().status.success());
    let err = run.finish();
    let rows = fields(
        &tcp.0,
        &[],
        &["frame.len", "frame.cap_len", "tcp.srcport", "tcp.dstport"],
    );
    assert!(!rows.is_empty(), "no TCP captured: {err}");
    let mut longest = 0;
    for r in &rows {
        let (len, cap): (usize, usize) = (r[0].parse().unwrap(), r[1].parse().unwrap());
        assert!(cap <= 128 && cap <= len, "{r:?}");
        assert!(r[2] == "5003" || r[3] == "5003", "{r:?}");
        longest = longest.max(len);
    }
    assert!(
        longest > 1514,
        "no TSO superframe among {} frames (longest {longest})",
        rows.len()
    );

    // The datapath counted what it copied, and nothing is armed any more.
    let stats = lab.stats("node-1");
    let copied = stats["datapath"]["capture_frames"].as_u64().unwrap_or(0);
    assert!(copied >= 25, "capture_frames {copied}");
    assert_eq!(stats["datapath"]["capture_ring_drops"].as_u64(), Some(0));

    // Bad requests: clear refusals, no file left behind.
    let bad = TempFile::new("bad.pcap");
    for (args, says) in [
        (vec!["--port", "default/nope"], "no port default/nope"),
        (vec!["--port", "underlay"], "native mode"),
        (
            vec!["--port", &a_port, "--proto", "icmp", "--port-num", "53"],
            "filter.port",
        ),
        (vec!["--port", &a_port, "--snaplen", "4"], "snaplen"),
    ] {
        let mut full = vec!["ctl", "-s", &sock, "capture", "-w", &bad.0];
        full.extend_from_slice(&args);
        let out = podswitch(&full);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(text.contains(says), "{args:?}: {text}");
        assert!(!text.contains("panicked"), "{text}");
        assert!(
            !std::path::Path::new(&bad.0).exists(),
            "{args:?} left a file"
        );
    }
}

#[test]
fn underlay_capture_shows_vxlan_datagrams_with_the_vni_both_ways() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up_with(
        "capvx",
        &["--nodes", "2", "--mode", "vxlan", "--vxlan-port", "8472"],
    );
    let pods = lab.pods_with_nodes();
    let a = pods
        .iter()
        .find(|p| p.2 == "node-1")
        .expect("a pod on node-1");
    let b = pods
        .iter()
        .find(|p| p.2 == "node-2")
        .expect("a pod on node-2");
    let sock = lab.socket("node-1");

    for (format, file) in [("pcap", "underlay.pcap"), ("pcapng", "underlay.pcapng")] {
        let out = TempFile::new(file);
        let run = CaptureRun::start(
            &sock,
            &[
                "--port",
                "underlay",
                "--proto",
                "icmp",
                "--host",
                &b.1,
                "-c",
                "10",
                "--duration",
                "20",
                "--format",
                format,
                "-w",
                &out.0,
            ],
            Stdio::null(),
        );
        ping(&lab, &a.0, &b.1, 5);
        let err = run.finish();
        assert_eq!(summary(&err, "frames captured"), 10, "{err}");
        assert!(
            err.contains("tshark -d udp.port==8472,vxlan"),
            "no tshark hint for port 8472: {err}"
        );
        let rows = fields(
            &out.0,
            &["-d", "udp.port==8472,vxlan"],
            &["vxlan.vni", "ip.src", "ip.dst", "udp.dstport", "icmp.type"],
        );
        // ip.src/ip.dst list the outer then the inner address.
        let request = vec![
            "1".to_string(),
            format!("198.18.0.1,{}", a.1),
            format!("198.18.0.2,{}", b.1),
            "8472".into(),
            "8".into(),
        ];
        let reply = vec![
            "1".to_string(),
            format!("198.18.0.2,{}", b.1),
            format!("198.18.0.1,{}", a.1),
            "8472".into(),
            "0".into(),
        ];
        assert_eq!(rows.len(), 10, "{format}: {rows:?}");
        assert_eq!(
            rows.iter().filter(|r| **r == request).count(),
            5,
            "{format}: {rows:?}"
        );
        assert_eq!(
            rows.iter().filter(|r| **r == reply).count(),
            5,
            "{format}: {rows:?}"
        );
    }
}
