//! Hitless restart (issue 9, item 4): node-1's switch is stopped
//! (SIGTERM, as an upgrade does) and started again with the same
//! arguments while traffic flows through it.
//!
//! ```text
//!   outside 203.0.113.10:8000 (echo) ── underlay router 198.18.0.254 ──┬──────────────┐
//!                                                              node-1 .1       node-2 .2
//!                                                              client          api x3
//!
//!   client ── TCP ──> ClusterIP api:8080 (DNAT on node-1) ──> an api pod:80
//!   client ── TCP ──> 203.0.113.10:8000 (SNAT on node-1 to 198.18.0.1:6xxxx)
//!   client ── UDP every 5 ms ──> an api pod:5353 (echo): when forwarding resumes
//! ```
//!
//! Both TCP connections exchange requests and replies before, during and
//! after the restart on the same sockets; the old switch hands its flows
//! (and Services) over in its state directory and the new one loads them
//! before forwarding, so the same translation (the same backend, the same
//! SNAT port) carries on. The pods' taps persist (same ifindex), forwarding
//! resumes within 1 s of the old process's exit, and the new switch's
//! `ctl conntrack` shows both flows with their original tuples.
//!
//! The control test restarts the same way without the handover file and
//! shows both connections break, so the first test cannot pass by luck.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use podswitch_switch::port::netns;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/svc-datapath.yaml"
);
const OUTSIDE: &str = "203.0.113.10:8000";
/// Requests per chatter loop at most (bounded traffic).
const MAX_EXCHANGES: usize = 2_000;
/// Probe datagrams at most (5 ms apart: 20 s).
const MAX_PROBES: u32 = 4_000;

/// A process killed when dropped.
struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `/run/netns/psw-LAB-...` whose name ends with `suffix`.
fn netns_path(lab: &TestLab, suffix: &str) -> PathBuf {
    let name = netns_matching(&format!("psw-{}-", lab.name))
        .into_iter()
        .find(|n| n.ends_with(suffix))
        .unwrap_or_else(|| panic!("no netns *{suffix} in lab {}", lab.name));
    Path::new("/run/netns").join(name)
}

/// A TCP connection opened from inside `ns`.
fn connect_in(ns: &Path, to: SocketAddr) -> TcpStream {
    let s = netns::run_in(ns, move || {
        TcpStream::connect_timeout(&to, Duration::from_secs(3))
    })
    .expect("enter the pod's netns")
    .unwrap_or_else(|e| panic!("connect to {to}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// One HTTP/1.1 keep-alive request on `s`; the body of the answer.
fn http_exchange(s: &TcpStream, path: &str) -> std::io::Result<String> {
    let mut w = s;
    w.write_all(format!("GET {path} HTTP/1.1\r\nHost: api\r\n\r\n").as_bytes())?;
    let mut r = BufReader::new(s);
    let mut len = None;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed mid-response"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = vec![0u8; len.ok_or_else(|| std::io::Error::other("no Content-Length"))?];
    r.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}

/// One line to the outside echo and its answer (`peer=IP:PORT <line>`).
fn echo_exchange(s: &TcpStream, line: &str) -> std::io::Result<String> {
    let mut w = s;
    w.write_all(format!("{line}\n").as_bytes())?;
    let mut answer = String::new();
    // One line per request, so no read-ahead is lost between calls.
    let mut byte = [0u8; 1];
    let mut r = s;
    while !answer.ends_with('\n') {
        if r.read(&mut byte)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        answer.push(byte[0] as char);
    }
    Ok(answer.trim().to_string())
}

/// A line echo server in the outside host's namespace that prefixes each
/// answer with the peer it sees (the SNAT address and port).
fn outside_echo(ns: &Path, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let addr: SocketAddr = OUTSIDE.parse().unwrap();
    let listener = netns::run_in(ns, move || TcpListener::bind(addr))
        .expect("enter the outside netns")
        .expect("bind the outside echo");
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let (conn, peer) = match listener.accept() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            std::thread::spawn(move || {
                let mut r = BufReader::new(&conn);
                let mut w = &conn;
                let mut line = String::new();
                while matches!(r.read_line(&mut line), Ok(n) if n > 0) {
                    let _ = w.write_all(format!("peer={peer} {}\n", line.trim()).as_bytes());
                    line.clear();
                }
            });
        }
    })
}

/// What a chatter loop saw: each completed exchange's time and answer,
/// and the error that stopped it, if any.
#[derive(Default)]
struct Chatter {
    done: Vec<(Instant, String)>,
    error: Option<String>,
}

/// Exchanges request/answer on `s` every 10 ms until `stop`.
fn chatter(
    s: TcpStream,
    stop: Arc<AtomicBool>,
    exchange: fn(&TcpStream, &str) -> std::io::Result<String>,
) -> JoinHandle<Chatter> {
    std::thread::spawn(move || {
        let mut c = Chatter::default();
        for i in 0..MAX_EXCHANGES {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match exchange(&s, &format!("/chat/{i}")) {
                Ok(a) => c.done.push((Instant::now(), a)),
                Err(e) => {
                    c.error = Some(format!("exchange {i}: {e}"));
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        c
    })
}

/// A UDP probe from the client to an echo: sends every 5 ms, records the
/// time of every answer.
struct Probe {
    answers: Arc<Mutex<Vec<Instant>>>,
    threads: Vec<JoinHandle<()>>,
}

fn probe(ns: &Path, to: SocketAddr, stop: Arc<AtomicBool>) -> Probe {
    let sock = netns::run_in(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(to)?;
        Ok::<_, std::io::Error>(s)
    })
    .expect("enter the client netns")
    .expect("udp probe socket");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let rx = sock.try_clone().unwrap();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let (st, a) = (Arc::clone(&stop), Arc::clone(&answers));
    let receiver = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !st.load(Ordering::Relaxed) {
            if rx.recv(&mut buf).is_ok() {
                a.lock().unwrap().push(Instant::now());
            }
        }
    });
    let sender = std::thread::spawn(move || {
        for seq in 0..MAX_PROBES {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            let _ = sock.send(&seq.to_be_bytes());
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    Probe {
        answers,
        threads: vec![receiver, sender],
    }
}

/// The client's `eth0` ifindex (the tap, seen from the pod).
fn eth0_ifindex(lab: &TestLab, pod: &str) -> String {
    let out = lab.exec(pod, &["ip", "-o", "link", "show", "eth0"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .unwrap()
        .trim()
        .to_string()
}

/// node-1's switch flows (`ctl conntrack -o json`).
fn flows(lab: &TestLab) -> Vec<serde_json::Value> {
    let out = podswitch_ok(&[
        "ctl",
        "-s",
        &lab.socket("node-1"),
        "conntrack",
        "--proto",
        "tcp",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("conntrack json");
    v["flows"].as_array().cloned().unwrap_or_default()
}

/// The flow whose original destination is `dst` (`ip:port`), as
/// (original, reply) tuples.
fn flow_to(flows: &[serde_json::Value], dst: &str) -> Option<(String, String)> {
    let t = |k: &serde_json::Value| {
        format!(
            "{}:{}->{}:{}",
            k["src"].as_str().unwrap_or("?"),
            k["sport"],
            k["dst"].as_str().unwrap_or("?"),
            k["dport"]
        )
    };
    flows
        .iter()
        .find(|f| {
            format!(
                "{}:{}",
                f["orig"]["dst"].as_str().unwrap_or(""),
                f["orig"]["dport"]
            ) == dst
        })
        .map(|f| (t(&f["orig"]), t(&f["reply"])))
}

fn pid_gone(pid: i64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
}

#[test]
fn established_service_and_egress_connections_survive_a_switch_restart() {
    if !require_root() {
        return;
    }
    restart_scenario("native", true);
}

/// The same over VXLAN: the new switch re-binds the overlay sockets.
#[test]
fn established_connections_survive_a_switch_restart_over_vxlan() {
    if !require_root() {
        return;
    }
    restart_scenario("vxlan", true);
}

/// The control: the same restart with the handover file taken away
/// before the new switch starts. Both connections must break (a RST or a
/// stall), or the test above would prove nothing.
#[test]
fn without_the_handover_the_same_connections_break() {
    if !require_root() {
        return;
    }
    restart_scenario("native", false);
}

fn restart_scenario(mode: &str, handover: bool) {
    let tag = if handover { "hitless" } else { "hitcold" };
    let lab = TestLab::up_with(&format!("{tag}{mode}"), &["--nodes", "2", "--mode", mode]);
    println!("{mode} mode, handover {handover}");
    lab.run_ok(&["apply", "-f", FIXTURE]);
    let pods = lab.pods_with_nodes();
    let client = pods
        .iter()
        .find(|p| p.0 == "client")
        .cloned()
        .unwrap_or_else(|| panic!("no client pod: {pods:?}"));
    assert_eq!(client.2, "node-1");
    let api = pods
        .iter()
        .find(|p| p.0.starts_with("api-"))
        .cloned()
        .expect("an api pod");
    let svc: serde_json::Value =
        serde_json::from_str(&lab.run_ok(&["get", "svc", "-o", "json"])).unwrap();
    let vip = svc["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == "api")
        .expect("service api")["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string();
    let client_ns = netns_path(&lab, "-client");
    let outside_ns = netns_path(&lab, "-outside");
    let stop = Arc::new(AtomicBool::new(false));
    let echo = outside_echo(&outside_ns, Arc::clone(&stop));

    // Both connections established and answering, the probe answered.
    let vip_addr: SocketAddr = format!("{vip}:8080").parse().unwrap();
    let mut svc_conn = None;
    assert!(
        wait_until(Duration::from_secs(10), || {
            svc_conn = netns::run_in(&client_ns, move || {
                TcpStream::connect_timeout(&vip_addr, Duration::from_millis(500)).ok()
            })
            .ok()
            .flatten();
            svc_conn.is_some()
        }),
        "ClusterIP {vip_addr} never answered"
    );
    let svc_conn = svc_conn.unwrap();
    svc_conn
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let first = http_exchange(&svc_conn, "/before").expect("first request via the ClusterIP");
    assert!(first.contains("From=api-"), "{first}");
    let egress_conn = connect_in(&client_ns, OUTSIDE.parse().unwrap());
    let first_out = echo_exchange(&egress_conn, "before").expect("first line to the outside");
    assert!(first_out.starts_with("peer=198.18.0.1:"), "{first_out}");
    println!("before: ClusterIP answer {first:?}; outside sees {first_out:?}");
    let flows_before = flows(&lab);
    let svc_flow = flow_to(&flows_before, &format!("{vip}:8080")).expect("ClusterIP flow");
    let egress_flow = flow_to(&flows_before, OUTSIDE).expect("egress flow");

    let ifindex_before = eth0_ifindex(&lab, &client.0);
    let probe = probe(
        &client_ns,
        format!("{}:5353", api.1).parse().unwrap(),
        Arc::clone(&stop),
    );
    assert!(
        wait_until(Duration::from_secs(5), || !probe
            .answers
            .lock()
            .unwrap()
            .is_empty()),
        "UDP probe to {}:5353 never answered",
        api.1
    );
    let chat_stop = Arc::new(AtomicBool::new(false));
    let svc_chat = chatter(
        svc_conn.try_clone().unwrap(),
        Arc::clone(&chat_stop),
        http_exchange,
    );
    let out_chat = chatter(
        egress_conn.try_clone().unwrap(),
        Arc::clone(&chat_stop),
        echo_exchange,
    );
    std::thread::sleep(Duration::from_millis(300));

    // Restart node-1's switch as an upgrade would: SIGTERM, wait for the
    // exit, start the same command line.
    let lab_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/podswitch/lab/{}/lab.json", lab.name)).unwrap(),
    )
    .unwrap();
    let node = lab_json["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "node-1")
        .expect("node-1 in lab.json");
    let pid = node["switch_pid"].as_i64().expect("switch pid");
    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let log_path = format!("/run/podswitch/lab/{}/logs/node-1-switch.log", lab.name);
    let sigterm = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    // Polled tightly: the resume time is measured from this instant.
    let deadline = sigterm + Duration::from_secs(10);
    while !pid_gone(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(pid_gone(pid), "the old switch did not exit");
    let exited = Instant::now();
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log_path)
        .unwrap();
    if !handover {
        let dir = argv
            .iter()
            .position(|a| a == "--state-dir")
            .map(|i| PathBuf::from(&argv[i + 1]))
            .expect("--state-dir in the switch's command line");
        std::fs::remove_file(dir.join("handover.bin")).expect("the old switch wrote a handover");
    }
    let _switch = Guard(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the new switch"),
    );
    let resumed = wait_until(Duration::from_secs(10), || {
        probe.answers.lock().unwrap().iter().any(|t| *t > exited)
    });
    assert!(resumed, "forwarding never resumed after the restart");
    let (last_before, first_after) = {
        let a = probe.answers.lock().unwrap();
        (
            a.iter().filter(|t| **t < exited).max().copied().unwrap(),
            a.iter().find(|t| **t > exited).copied().unwrap(),
        )
    };
    let resume = first_after - exited;
    let outage = first_after - last_before;
    println!(
        "restart: SIGTERM -> old switch exited {:?}; exit -> first forwarded packet {resume:?}; \
         probe outage (last answer before -> first after) {outage:?}",
        exited - sigterm
    );

    // Let the connections carry on a while on the new switch.
    std::thread::sleep(Duration::from_millis(1500));
    chat_stop.store(true, Ordering::Relaxed);
    let (svc_chat, out_chat) = (svc_chat.join().unwrap(), out_chat.join().unwrap());
    // The same backend and the same SNAT port throughout.
    let client_port = |a: &str| {
        a.split_whitespace()
            .filter(|w| w.starts_with("From=") || w.starts_with("ClientPort="))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let who = client_port(&first);
    let peer = first_out.split_whitespace().next().unwrap().to_string();
    if !handover {
        let svc_broke = svc_chat.error.clone().or_else(|| {
            svc_chat
                .done
                .iter()
                .find(|(_, a)| client_port(a) != who)
                .map(|(_, a)| format!("answered as {a}"))
        });
        let out_broke = out_chat.error.clone().or_else(|| {
            out_chat
                .done
                .iter()
                .find(|(_, a)| !a.starts_with(&peer))
                .map(|(_, a)| format!("answered as {a}"))
        });
        println!(
            "cold restart: ClusterIP connection: {svc_broke:?}; egress connection: {out_broke:?}"
        );
        assert!(
            svc_broke.is_some(),
            "the ClusterIP connection survived a cold restart"
        );
        assert!(
            out_broke.is_some(),
            "the egress connection survived a cold restart"
        );
        stop.store(true, Ordering::Relaxed);
        for t in probe.threads {
            let _ = t.join();
        }
        let _ = echo.join();
        return;
    }
    for (what, c) in [("ClusterIP", &svc_chat), ("egress", &out_chat)] {
        assert!(c.error.is_none(), "{what}: {:?}", c.error);
        let after = c.done.iter().filter(|(t, _)| *t > first_after).count();
        assert!(after > 0, "{what}: no exchange after the restart");
        let gap = c
            .done
            .windows(2)
            .map(|w| w[1].0 - w[0].0)
            .max()
            .unwrap_or_default();
        println!(
            "{what}: {} exchanges on one connection, {after} after the restart, longest stall {gap:?}",
            c.done.len()
        );
    }
    assert!(
        svc_chat.done.iter().all(|(_, a)| client_port(a) == who),
        "ClusterIP answers changed backend or client port: {who} vs {:?}",
        svc_chat.done.last()
    );
    assert!(
        out_chat.done.iter().all(|(_, a)| a.starts_with(&peer)),
        "outside saw another peer than {peer}: {:?}",
        out_chat.done.last()
    );
    // And on the original sockets, one more each.
    let last = http_exchange(&svc_conn, "/after").expect("ClusterIP after the restart");
    assert_eq!(client_port(&last), who, "{last}");
    let last_out = echo_exchange(&egress_conn, "after").expect("egress after the restart");
    assert!(last_out.starts_with(&peer), "{last_out}");

    // Taps persisted; the new switch holds the same flows.
    assert_eq!(
        eth0_ifindex(&lab, &client.0),
        ifindex_before,
        "the pod's interface was re-created"
    );
    let flows_after = flows(&lab);
    assert_eq!(
        flow_to(&flows_after, &format!("{vip}:8080")),
        Some(svc_flow.clone())
    );
    assert_eq!(flow_to(&flows_after, OUTSIDE), Some(egress_flow.clone()));
    println!("conntrack after the restart: {svc_flow:?}, {egress_flow:?}");
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    for line in log.lines().filter(|l| {
        l.contains("next switch") || l.contains("handed over") || l.contains("handover")
    }) {
        println!("switch log: {line}");
    }
    assert!(
        resume < Duration::from_secs(1),
        "forwarding resumed {resume:?} after the old switch exited (about 1 s: a kernel \
         ARP retransmission; while no switch holds a tap it has no carrier, its neighbour \
         entries are evicted, and a resolution started then waits for the retry)"
    );

    stop.store(true, Ordering::Relaxed);
    for t in probe.threads {
        let _ = t.join();
    }
    let _ = echo.join();
}
