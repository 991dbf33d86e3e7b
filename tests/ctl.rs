//! `podswitch ctl` against running switches: nodes, routes (and
//! `--lookup`), services with their Maglev state, the running
//! configuration; JSON checked field by field, the human tables for their
//! key fields.
//!
//! ```text
//!   node-1 198.18.0.1 (10.244.1.0/24)        node-2 198.18.0.2 (10.244.2.0/24)
//!     client                                   api x3, alt
//!        └──────── native routes or VXLAN ────────┘
//! ```
//!
//! Plus one standalone switch started with non-default flags, whose
//! `ctl config` must show exactly those.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/svc-datapath.yaml"
);

/// One request line on the control socket, the raw response back.
fn raw(socket: &str, line: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(socket).expect("connect");
    s.write_all(line.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut resp = String::new();
    BufReader::new(s).read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

/// `podswitch ctl -s SOCKET ARGS... -o json`, parsed.
fn ctl_json(socket: &str, args: &[&str]) -> serde_json::Value {
    let mut a = vec!["ctl", "-s", socket];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    let out = podswitch_ok(&a);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {out}"))
}

/// `podswitch ctl -s SOCKET ARGS...` (the human table).
fn ctl_text(socket: &str, args: &[&str]) -> String {
    let mut a = vec!["ctl", "-s", socket];
    a.extend_from_slice(args);
    podswitch_ok(&a)
}

fn assert_contains(text: &str, needles: &[&str], what: &str) {
    for n in needles {
        assert!(text.contains(n), "{what}: no {n:?} in\n{text}");
    }
}

fn nodes_routes_services_config(mode: &str) {
    if !require_root() {
        return;
    }
    let lab = TestLab::up_with(&format!("ctl{mode}"), &["--nodes", "2", "--mode", mode]);
    lab.run_ok(&["apply", "-f", FIXTURE]);
    let pods = lab.pods_with_nodes();
    let pod = |prefix: &str| {
        pods.iter()
            .find(|p| p.0.starts_with(prefix))
            .unwrap_or_else(|| panic!("no pod {prefix}*: {pods:?}"))
            .clone()
    };
    let client = pod("client");
    let api = pod("api-");
    assert_eq!((client.2.as_str(), api.2.as_str()), ("node-1", "node-2"));
    let s1 = lab.socket("node-1");
    let s2 = lab.socket("node-2");

    // --- nodes: each switch sees itself and the other, with the lab's
    // addresses (node i: underlay 198.18.0.i, pod CIDR 10.244.i.0/24).
    for (sock, me, other) in [(&s1, 1, 2), (&s2, 2, 1)] {
        let n = ctl_json(sock, &["nodes"]);
        let l = &n["local"];
        assert_eq!(l["name"], format!("node-{me}"), "{n}");
        assert_eq!(l["underlay_ipv4"], format!("198.18.0.{me}"), "{n}");
        assert_eq!(
            l["pod_cidrs"],
            serde_json::json!([format!("10.244.{me}.0/24")])
        );
        assert_eq!(l["gateway_ipv4"], format!("10.244.{me}.1"), "{n}");
        assert_eq!(l["gateway_mac"], "ee:ee:ee:ee:ee:ee", "{n}");
        assert_eq!(l["mode"], mode, "{n}");
        let remote = n["remote"].as_array().expect("remote");
        assert_eq!(remote.len(), 1, "{n}");
        assert_eq!(remote[0]["name"], format!("node-{other}"));
        assert_eq!(remote[0]["underlay_ipv4"], format!("198.18.0.{other}"));
        assert_eq!(
            remote[0]["pod_cidrs"],
            serde_json::json!([format!("10.244.{other}.0/24")])
        );
        if mode == "vxlan" {
            assert_eq!(l["vxlan"]["local_ipv4"], format!("198.18.0.{me}"), "{n}");
            assert!(l["vxlan"]["vtep_mac"].is_string(), "{n}");
            assert!(remote[0]["vtep_mac"].is_string(), "{n}");
        } else {
            assert!(l.get("vxlan").is_none(), "{n}");
        }
    }
    let text = ctl_text(&s1, &["nodes"]);
    assert_contains(
        &text,
        &[
            "NODE",
            "node-1 (this node)",
            "198.18.0.1",
            "node-2",
            "198.18.0.2",
            "10.244.2.0/24",
            mode,
        ],
        "ctl nodes",
    );

    // --- routes: the table, longest prefix first.
    let r = ctl_json(&s1, &["routes"]);
    let routes = r["routes"].as_array().expect("routes");
    let lens: Vec<u8> = routes
        .iter()
        .map(|e| {
            let p: ipnet::IpNet = e["prefix"].as_str().unwrap().parse().unwrap();
            p.prefix_len()
        })
        .collect();
    assert!(lens.windows(2).all(|w| w[0] >= w[1]), "order: {lens:?}");
    let client_route = routes
        .iter()
        .find(|e| e["prefix"] == format!("{}/32", client.1))
        .unwrap_or_else(|| panic!("no host route to the client: {r}"));
    assert_eq!(client_route["target"], "pod");
    assert!(
        client_route["pod"].as_str().unwrap().ends_with("/client"),
        "{client_route}"
    );
    assert!(
        routes
            .iter()
            .any(|e| e["prefix"] == "10.244.1.0/24" && e["target"] == "unassigned"),
        "{r}"
    );
    assert!(
        routes
            .iter()
            .any(|e| e["prefix"] == "0.0.0.0/0" && e["target"] == "host"),
        "{r}"
    );
    assert_eq!(
        r["services"]["service_cidrs"],
        serde_json::json!(["10.96.0.0/12"])
    );
    assert!(r["services"]["frontends"].as_u64().unwrap() >= 2, "{r}");
    if mode == "native" {
        assert_eq!(r["kernel_routes"][0]["prefix"], "10.244.2.0/24", "{r}");
        assert_eq!(r["kernel_routes"][0]["via"], "198.18.0.2", "{r}");
    }

    // --lookup of a pod on the other node names that node.
    let l = &ctl_json(&s1, &["routes", "--lookup", &api.1])["lookup"];
    assert_eq!(l["dst"], api.1.as_str(), "{l}");
    assert_eq!(l["node"], "node-2", "{l}");
    match mode {
        "vxlan" => {
            assert_eq!(l["route"]["prefix"], "10.244.2.0/24", "{l}");
            assert_eq!(l["route"]["target"], "overlay", "{l}");
            assert_eq!(l["route"]["node"], "node-2", "{l}");
            assert_eq!(l["route"]["underlay_ipv4"], "198.18.0.2", "{l}");
        }
        _ => {
            // Native: the switch hands it to the node's stack, whose
            // route (installed by the switch) goes via node-2.
            assert_eq!(l["route"]["prefix"], "0.0.0.0/0", "{l}");
            assert_eq!(l["route"]["target"], "host", "{l}");
            assert_eq!(l["via"], "198.18.0.2", "{l}");
        }
    }
    assert_eq!(
        l["masquerade"], false,
        "pod-to-pod is never masqueraded: {l}"
    );
    // --lookup of a local pod names its port.
    let l = &ctl_json(&s1, &["routes", "--lookup", &client.1])["lookup"];
    assert_eq!(l["route"]["prefix"], format!("{}/32", client.1), "{l}");
    assert_eq!(l["route"]["target"], "pod", "{l}");
    assert!(
        l["route"]["pod"].as_str().unwrap().ends_with("/client"),
        "{l}"
    );
    assert_eq!(l["node"], "node-1", "{l}");
    // The gateway, a cluster IP, the outside.
    let l = &ctl_json(&s1, &["routes", "--lookup", "10.244.1.1"])["lookup"];
    assert_eq!(l["gateway"], true, "{l}");
    let vip = cluster_ip(&lab, "api");
    let l = &ctl_json(&s1, &["routes", "--lookup", &vip])["lookup"];
    assert_eq!(l["services"], serde_json::json!(["default/api"]), "{l}");
    let l = &ctl_json(&s1, &["routes", "--lookup", "203.0.113.10"])["lookup"];
    assert_eq!(l["route"]["target"], "host", "{l}");
    assert_eq!(l["masquerade"], true, "{l}");

    let text = ctl_text(&s1, &["routes"]);
    assert_contains(
        &text,
        &[
            "PREFIX",
            "TARGET",
            &format!("{}/32", client.1),
            "10.244.1.0/24",
            "unassigned",
            "0.0.0.0/0",
            "host port psw0",
            "10.96.0.0/12",
            "masquerade",
        ],
        "ctl routes",
    );
    let text = ctl_text(&s1, &["routes", "--lookup", &api.1]);
    assert_contains(&text, &[&api.1, "node-2"], "ctl routes --lookup");
    // Bad input: the CLI refuses a bad address, the API names the field.
    let out = podswitch(&["ctl", "-s", &s1, "routes", "--lookup", "10.244.1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--lookup"));
    let e = raw(
        &s1,
        r#"{"v":1,"op":"get_routes","args":{"lookup":"10.244.1.300"}}"#,
    );
    assert_eq!(e["ok"], false, "{e}");
    assert_eq!(e["error"]["code"], "invalid_argument", "{e}");
    assert_eq!(e["error"]["field"], "lookup", "{e}");

    // --- services with their Maglev state: api has three ready endpoints.
    let v = ctl_json(&s1, &["services"]);
    let state = v["state"].as_array().expect("state");
    let api_state = state
        .iter()
        .find(|s| s["name"] == "default/api")
        .unwrap_or_else(|| panic!("no default/api in {v}"));
    let front = api_state["frontends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "cluster_ip")
        .unwrap_or_else(|| panic!("no ClusterIP frontend: {api_state}"));
    assert_eq!(front["ip"], vip.as_str());
    assert_eq!(front["port"], 8080);
    assert_eq!(front["eligible"], 3, "{front}");
    // The smallest of the table sizes giving each endpoint >= 100 slots.
    let m = front["table_size"].as_u64().unwrap() as usize;
    assert_eq!(m, 1021, "{front}");
    let backends = front["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 3, "{front}");
    let slots: Vec<usize> = backends
        .iter()
        .map(|b| b["slots"].as_u64().unwrap() as usize)
        .collect();
    println!("{mode}: M = {m}, slots {slots:?}");
    assert_eq!(slots.iter().sum::<usize>(), m, "{front}");
    // Maglev's populate gives each of N backends floor(M/N) or ceil(M/N)
    // slots (one per round), exactly M mod N of them the larger.
    let (lo, hi) = (m / 3, m.div_ceil(3));
    assert!(slots.iter().all(|&s| s == lo || s == hi), "{slots:?}");
    assert_eq!(slots.iter().filter(|&&s| s == hi).count(), m % 3);
    for b in backends {
        let share = b["share"].as_f64().unwrap();
        assert!((share - 1.0 / 3.0).abs() <= 1.0 / m as f64, "{b}");
        assert_eq!(b["node"], "node-2", "{b}");
        assert_eq!(b["ready"], true, "{b}");
        assert_eq!(b["eligible"], true, "{b}");
        assert_eq!(b["port"], 80, "{b}");
    }
    // One Service by name, and an unknown one.
    let one = ctl_json(&s1, &["services", "default/api"]);
    assert_eq!(one["state"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["services"].as_array().unwrap().len(), 1, "{one}");
    let out = podswitch(&["ctl", "-s", &s1, "services", "default/nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no service default/nope"), "{err}");
    let e = raw(
        &s1,
        r#"{"v":1,"op":"get_service_state","args":{"name":"default/nope"}}"#,
    );
    assert_eq!(
        (&e["error"]["code"], &e["error"]["field"]),
        (&"not_found".into(), &"name".into()),
        "{e}"
    );
    let text = ctl_text(&s1, &["services"]);
    let hi_pct = format!("{:.2}%", hi as f64 / m as f64 * 100.0);
    assert_contains(
        &text,
        &[
            "default/api",
            "Maglev",
            "SLOTS",
            "SHARE",
            &format!("{vip}:8080/TCP"),
            "1021",
            &api.1,
            &hi_pct,
        ],
        "ctl services",
    );

    // --- config: what the lab started the switch with (defaults, but
    // for the socket and node).
    let c = ctl_json(&s1, &["config"]);
    assert_eq!(c["config"]["metrics_address"], "127.0.0.1:9464", "{c}");
    assert_eq!(c["config"]["conntrack"]["max_flows"], 262144, "{c}");
    assert_eq!(c["config"]["maglev_table_size"], 16381, "{c}");
    assert_eq!(c["config"]["control_socket"], s1.as_str(), "{c}");
    assert_eq!(c["config"]["node"]["name"], "node-1", "{c}");
    assert_eq!(c["config"]["node"]["mode"], mode, "{c}");
    assert!(c["config"]["workers"].as_u64().unwrap() >= 1, "{c}");
    assert!(c["log_format"].is_string(), "{c}");
    let text = ctl_text(&s1, &["config"]);
    assert_contains(
        &text,
        &[
            "metrics_address = \"127.0.0.1:9464\"",
            "maglev_table_size = 16381",
            "[conntrack]",
            "max_flows = 262144",
            "[conntrack.timeouts]",
            "[node]",
            "name = \"node-1\"",
        ],
        "ctl config",
    );

    // --- ports: the client's port with its tap, MAC, address, queues and
    // counters after three pings across the nodes.
    let ping = lab.exec(
        &client.0,
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", &api.1],
    );
    assert!(ping.status.success(), "{mode}: ping: {ping:?}");
    let ports = ctl_json(&s1, &["ports"]);
    let port = ports
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["ipv4"] == client.1.as_str())
        .unwrap_or_else(|| panic!("{mode}: no port with {}: {ports}", client.1))
        .clone();
    assert!(port["pod"].as_str().unwrap().ends_with("client"), "{port}");
    assert_eq!(port["ifname"], "eth0", "{port}");
    assert_eq!(port["mac"].as_str().unwrap().len(), 17, "{port}");
    assert!(port["queues"].as_u64().unwrap() >= 1, "{port}");
    assert!(port["stats"]["rx_packets"].as_u64().unwrap() >= 3, "{port}");
    assert!(port["stats"]["tx_packets"].as_u64().unwrap() >= 3, "{port}");
    let text = ctl_text(&s1, &["ports"]);
    assert_contains(
        &text,
        &[port["pod"].as_str().unwrap(), &client.1],
        "ctl ports",
    );

    // --- stats: drops by stage and reason as a table (or "no drops").
    let text = ctl_text(&s1, &["stats"]);
    assert!(
        text.contains("STAGE") && text.contains("REASON") || text.contains("no drops"),
        "{text}"
    );
}

fn cluster_ip(lab: &TestLab, svc: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&lab.run_ok(&["get", "svc", "-o", "json"])).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == svc)
        .unwrap_or_else(|| panic!("no service {svc}: {v}"))["spec"]["clusterIP"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn ctl_shows_nodes_routes_services_config_native() {
    nodes_routes_services_config("native");
}

#[test]
fn ctl_shows_nodes_routes_services_config_vxlan() {
    nodes_routes_services_config("vxlan");
}

/// A switch process and its namespace and state, removed when dropped.
struct Standalone {
    child: Child,
    netns: String,
    dir: std::path::PathBuf,
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn ctl_config_shows_the_flags_the_switch_was_started_with() {
    if !require_root() {
        return;
    }
    let tag = format!("psw-ctlcfg-{}", std::process::id());
    assert!(Command::new("ip")
        .args(["netns", "add", &tag])
        .status()
        .unwrap()
        .success());
    let dir = std::path::PathBuf::from(format!("/run/podswitch/{tag}"));
    let sock = dir.join("switch.sock");
    let child = Command::new(exe())
        .args([
            "--log-format",
            "json",
            "switch",
            "run",
            "--node",
            "cfg-1",
            "--pod-cidr",
            "10.250.1.0/24",
            "--workers",
            "1",
            "--conntrack-max",
            "4096",
            "--maglev-table-size",
            "4093",
            "--metrics-address",
            "127.0.0.1:9599",
        ])
        .arg("--control-socket")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--netns")
        .arg(format!("/run/netns/{tag}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the switch");
    let sw = Standalone {
        child,
        netns: tag,
        dir,
    };
    let sock = sock.to_str().unwrap().to_string();
    assert!(
        wait_until(Duration::from_secs(10), || podswitch(&[
            "ctl", "-s", &sock, "hello"
        ])
        .status
        .success()),
        "the switch did not come up"
    );
    let c = ctl_json(&sock, &["config"]);
    let cfg = &c["config"];
    assert_eq!(cfg["metrics_address"], "127.0.0.1:9599", "{c}");
    assert_eq!(cfg["conntrack"]["max_flows"], 4096, "{c}");
    assert_eq!(cfg["maglev_table_size"], 4093, "{c}");
    assert_eq!(cfg["workers"], 1, "{c}");
    assert_eq!(cfg["node"]["name"], "cfg-1", "{c}");
    assert_eq!(
        cfg["node"]["pod_cidrs"],
        serde_json::json!(["10.250.1.0/24"])
    );
    assert_eq!(cfg["control_socket"], sock.as_str(), "{c}");
    assert_eq!(c["log_format"], "json", "{c}");
    assert_eq!(c["node_from_state"], false, "{c}");
    let text = ctl_text(&sock, &["config"]);
    assert_contains(
        &text,
        &[
            "metrics_address = \"127.0.0.1:9599\"",
            "max_flows = 4096",
            "maglev_table_size = 4093",
            "workers = 1",
            "log format json",
        ],
        "ctl config",
    );
    // A node without neighbours or services still answers every view.
    let n = ctl_json(&sock, &["nodes"]);
    assert_eq!(n["local"]["name"], "cfg-1", "{n}");
    assert_eq!(n["remote"], serde_json::json!([]), "{n}");
    let r = ctl_json(&sock, &["routes", "--lookup", "10.250.1.77"]);
    assert_eq!(r["lookup"]["route"]["target"], "unassigned", "{r}");
    assert_eq!(r["lookup"]["route"]["prefix"], "10.250.1.0/24", "{r}");
    let s = ctl_json(&sock, &["services"]);
    assert_eq!(s["state"], serde_json::json!([]), "{s}");
    drop(sw);
}
