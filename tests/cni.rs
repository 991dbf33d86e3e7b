//! The CNI plugin (`podswitch-cni`) run exactly as a container runtime runs
//! it: `CNI_*` environment, the network configuration on stdin, the result
//! or error on stdout, inside the node's network namespace, against a real
//! lab node's switch, for pods in real network namespaces. Chained with
//! Debian's reference plugins (loopback, portmap, bandwidth, host-local)
//! the way libcni chains a conflist.
//!
//! ```text
//!   psw-LAB-node-1 (198.18.0.1)          pod netns psw-LAB-pN
//!   switch ── tap ─────────────────────► eth0 10.244.1.x/32
//!     ▲   control socket                    default via 10.244.1.1
//!     │
//!   podswitch-cni (run by the test as the runtime would, in the node netns)
//! ```

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::*;
use podswitch_switch::control::api::{PortInfo, Request};
use podswitch_switch::control::client;
use podswitch_switch::port::netlink::Netlink;
use podswitch_switch::port::netns;
use serde_json::{json, Value};

/// Where Debian's containernetworking-plugins put the reference plugins.
const REFERENCE_PLUGINS: &str = "/usr/lib/cni";
/// The node-1 gateway of every lab (first address of 10.244.1.0/24).
const GATEWAY: &str = "10.244.1.1";

fn cni_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_podswitch-cni"))
}

/// A scratch directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "psw-cni-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A pod's network namespace, as a runtime creates it before calling CNI;
/// deleted on drop. Named `psw-LAB-...`, so `lab down` also finds it
/// after a crash.
struct PodNetns {
    name: String,
    path: PathBuf,
}

impl PodNetns {
    fn new(lab: &TestLab, tag: &str) -> PodNetns {
        let name = format!("psw-{}-{tag}", lab.name);
        let path = netns::create(&name).unwrap_or_else(|e| panic!("create netns {name}: {e}"));
        PodNetns { name, path }
    }

    /// Whether `ifname` exists inside.
    fn has_link(&self, ifname: &str) -> bool {
        Netlink::in_netns(&self.path)
            .and_then(|nl| nl.link_index(ifname))
            .expect("netlink in pod netns")
            .is_some()
    }

    /// Runs `cmd` inside; true if it exits 0.
    fn run(&self, cmd: &[&str]) -> bool {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path.display()))
            .args(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Pings `dst` (one retry: the first packet of a fresh pod may race
    /// its route setup).
    fn ping(&self, dst: &str) -> bool {
        let cmd = ["ping", "-c", "1", "-W", "2", dst];
        self.run(&cmd) || self.run(&cmd)
    }
}

impl Drop for PodNetns {
    fn drop(&mut self) {
        if let Err(e) = netns::delete(&self.name) {
            eprintln!("cleanup of {}: {e}", self.name);
        }
    }
}

/// A background process killed on drop.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One attachment, as the runtime names it.
#[derive(Clone)]
struct Attachment {
    container: String,
    netns: Option<PathBuf>,
    ifname: String,
    args: String,
}

impl Attachment {
    fn pod(lab: &TestLab, pod: &PodNetns, name: &str) -> Attachment {
        Attachment {
            container: format!("{}-{name}", lab.name),
            netns: Some(pod.path.clone()),
            ifname: "eth0".into(),
            args: format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name}"),
        }
    }
}

/// What one plugin run gave.
#[derive(Debug)]
struct Outcome {
    success: bool,
    stdout: Value,
    raw: String,
    stderr: String,
    elapsed: Duration,
}

impl Outcome {
    fn code(&self) -> u64 {
        self.stdout["code"].as_u64().unwrap_or(0)
    }

    #[track_caller]
    fn expect_ok(self, what: &str) -> Value {
        assert!(
            self.success,
            "{what} failed: {}\nstderr: {}",
            self.raw, self.stderr
        );
        self.stdout
    }

    /// Asserts a CNI error with `code` shaped as the spec says.
    #[track_caller]
    fn expect_error(&self, code: u64, what: &str) {
        assert!(
            !self.success,
            "{what}: expected error {code}, got success {}",
            self.raw
        );
        assert_eq!(self.code(), code, "{what}: {}", self.raw);
        assert!(
            self.stdout["cniVersion"].is_string(),
            "{what}: no cniVersion in {}",
            self.raw
        );
        assert!(
            !self.stdout["msg"].as_str().unwrap_or_default().is_empty(),
            "{what}: no msg in {}",
            self.raw
        );
    }
}

/// Runs `plugin` inside the node's network namespace the way libcni does.
fn invoke(
    node_netns: &Path,
    plugin: &Path,
    command: &str,
    att: Option<&Attachment>,
    stdin: &[u8],
) -> Outcome {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", node_netns.display()))
        .arg(plugin)
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", REFERENCE_PLUGINS)
        .env_remove("CNI_CONTAINERID")
        .env_remove("CNI_NETNS")
        .env_remove("CNI_IFNAME")
        .env_remove("CNI_ARGS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(a) = att {
        cmd.env("CNI_CONTAINERID", &a.container)
            .env("CNI_IFNAME", &a.ifname)
            .env("CNI_ARGS", &a.args);
        if let Some(n) = &a.netns {
            cmd.env("CNI_NETNS", n);
        }
    }
    let start = Instant::now();
    let mut child = cmd.spawn().expect("spawn plugin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write config");
    let out = child.wait_with_output().expect("wait for plugin");
    let raw = String::from_utf8_lossy(&out.stdout).into_owned();
    Outcome {
        success: out.status.success(),
        stdout: serde_json::from_str(&raw).unwrap_or(Value::Null),
        raw,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// A one-node lab without pods, with the pieces a runtime on its node has.
struct Node {
    lab: TestLab,
    netns: PathBuf,
    socket: PathBuf,
    data_dir: TempDir,
}

impl Node {
    fn up(tag: &str) -> Node {
        let dir = TempDir::new("lab");
        let file = dir.0.join("lab.yaml");
        std::fs::write(
            &file,
            "apiVersion: lab.podswitch.io/v1alpha1\nkind: Lab\nmetadata:\n  name: cni\nspec:\n  nodes: 1\n",
        )
        .expect("write lab file");
        let lab = TestLab::up_with(tag, &["-f", file.to_str().expect("utf-8")]);
        Node {
            netns: PathBuf::from(format!("/run/netns/psw-{}-node-1", lab.name)),
            socket: PathBuf::from(lab.socket("node-1")),
            data_dir: TempDir::new(tag),
            lab,
        }
    }

    /// The podswitch plugin's configuration, with `extra` keys merged in.
    fn conf(&self, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": "1.0.0",
            "name": "podswitch",
            "type": "podswitch-cni",
            "switchSocket": self.socket,
            "dataDir": self.data_dir.0,
        });
        if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
            c.extend(extra);
        }
        c
    }

    fn run(&self, command: &str, att: Option<&Attachment>, conf: &Value) -> Outcome {
        invoke(
            &self.netns,
            &cni_exe(),
            command,
            att,
            conf.to_string().as_bytes(),
        )
    }

    fn ports(&self) -> Vec<PortInfo> {
        client::call(&self.socket, &Request::ListPorts).expect("list_ports")
    }

    /// The addresses the built-in IPAM holds for network `network`.
    fn ip_files(&self, network: &str) -> Vec<Ipv4Addr> {
        std::fs::read_dir(self.data_dir.0.join(network))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The pod's IPv4 address from an ADD result.
fn result_ip(r: &Value) -> Ipv4Addr {
    let cidr = r["ips"][0]["address"].as_str().expect("ips[0].address");
    cidr.split('/').next().unwrap().parse().expect("IPv4")
}

/// `conf` with `prevResult` set, as a runtime sends it for CHECK and DEL.
fn with_prev(conf: &Value, prev: &Value) -> Value {
    let mut c = conf.clone();
    c["prevResult"] = prev.clone();
    c
}

/// 50 pods added at once get 50 different addresses, each pod reaches the
/// gateway, CHECK/STATUS/GC behave, DEL removes everything and DEL twice
/// is fine.
#[test]
fn concurrent_adds_unique_ips_then_check_gc_and_idempotent_del() {
    if !require_root() {
        return;
    }
    const PODS: usize = 50;
    let node = Node::up("cni50");
    let pods: Vec<PodNetns> = (0..PODS)
        .map(|i| PodNetns::new(&node.lab, &format!("p{i}")))
        .collect();
    let atts: Vec<Attachment> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| Attachment::pod(&node.lab, p, &format!("pod-{i}")))
        .collect();
    let conf = node.conf(
        json!({"dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local"]}}),
    );

    let start = Instant::now();
    let results: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = atts
            .iter()
            .map(|a| s.spawn(|| node.run("ADD", Some(a), &conf)))
            .collect();
        handles
            .into_iter()
            .zip(&atts)
            .map(|(h, a)| {
                h.join()
                    .expect("thread")
                    .expect_ok(&format!("ADD {}", a.container))
            })
            .collect()
    });
    eprintln!("{PODS} concurrent ADDs took {:?}", start.elapsed());

    let ips: HashSet<Ipv4Addr> = results.iter().map(result_ip).collect();
    assert_eq!(ips.len(), PODS, "addresses must be unique");
    for (r, p) in results.iter().zip(&pods) {
        let ip = result_ip(r);
        assert!(
            "10.244.1.0/24"
                .parse::<ipnet::Ipv4Net>()
                .unwrap()
                .contains(&ip)
                && ip.to_string() != GATEWAY,
            "{ip}"
        );
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["interfaces"][0]["name"], "eth0");
        assert_eq!(r["interfaces"][0]["sandbox"], p.path.to_str().unwrap());
        assert_eq!(r["ips"][0]["gateway"], GATEWAY);
        assert_eq!(r["ips"][0]["interface"], 0);
        assert_eq!(r["routes"][0], json!({"dst": "0.0.0.0/0", "gw": GATEWAY}));
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
        assert!(r["interfaces"][0].get("mtu").is_none(), "mtu is a 1.1 key");
    }
    assert_eq!(node.ports().len(), PODS);
    assert_eq!(node.ip_files("podswitch").len(), PODS);
    assert_eq!(
        node.ports()
            .iter()
            .filter(|p| p.pod.starts_with("default/pod-"))
            .count(),
        PODS,
        "ports are named namespace/pod from CNI_ARGS"
    );

    // Every pod reaches its gateway, and pods reach each other.
    std::thread::scope(|s| {
        for p in &pods {
            s.spawn(move || assert!(p.ping(GATEWAY), "{} cannot ping the gateway", p.name));
        }
    });
    assert!(pods[0].ping(&result_ip(&results[PODS - 1]).to_string()));

    // CHECK with the ADD's result passes; with a wrong address it fails.
    let ok = node.run("CHECK", Some(&atts[0]), &with_prev(&conf, &results[0]));
    ok.expect_ok("CHECK");
    let mut wrong = results[0].clone();
    wrong["ips"][0]["address"] = json!("10.244.1.254/32");
    node.run("CHECK", Some(&atts[0]), &with_prev(&conf, &wrong))
        .expect_error(104, "CHECK with an address the pod lacks");

    // STATUS and GC are 1.1.0 commands.
    let conf11 = node.conf(json!({"cniVersion": "1.1.0"}));
    node.run("STATUS", None, &conf11).expect_ok("STATUS");
    node.run("STATUS", None, &node.conf(json!({})))
        .expect_error(1, "STATUS with a 1.0.0 config");
    let mut gc = conf11.clone();
    gc["cni.dev/valid-attachments"] = atts[5..]
        .iter()
        .map(|a| json!({"containerID": a.container, "ifname": "eth0"}))
        .collect();
    node.run("GC", None, &gc).expect_ok("GC");
    assert_eq!(node.ip_files("podswitch").len(), PODS - 5, "GC frees 5");
    assert_eq!(node.ports().len(), PODS - 5, "GC removes their ports");
    for p in &pods[..5] {
        assert!(!p.has_link("eth0"), "GC'd pod {} keeps eth0", p.name);
    }

    // DEL of all (the GC'd ones included), at once; then again.
    let node_ref = &node;
    for round in ["DEL", "DEL again"] {
        std::thread::scope(|s| {
            for (a, r) in atts.iter().zip(&results) {
                let c = with_prev(&conf, r);
                s.spawn(move || node_ref.run("DEL", Some(a), &c).expect_ok(round));
            }
        });
        assert!(node.ports().is_empty(), "{round}: ports left");
        assert!(
            node.ip_files("podswitch").is_empty(),
            "{round}: addresses left"
        );
    }
    for p in &pods {
        assert!(!p.has_link("eth0"), "{} keeps eth0", p.name);
    }
    // DEL of a container never added, without CNI_NETNS: success.
    let ghost = Attachment {
        container: "never-added".into(),
        netns: None,
        ifname: "eth0".into(),
        args: String::new(),
    };
    node.run("DEL", Some(&ghost), &conf)
        .expect_ok("DEL of an unknown container");
}

/// Broken configurations, an exhausted range and a switch that is not
/// running: each ADD fails with the spec's error and leaves nothing behind.
#[test]
fn failed_adds_give_spec_errors_and_leave_nothing_behind() {
    if !require_root() {
        return;
    }
    let node = Node::up("cnifail");
    let pod = PodNetns::new(&node.lab, "bad");
    let att = Attachment::pod(&node.lab, &pod, "bad");
    let nothing_left = |what: &str| {
        assert!(node.ports().is_empty(), "{what}: a port was left");
        assert!(!pod.has_link("eth0"), "{what}: eth0 was left");
        assert!(
            node.ip_files("podswitch").is_empty(),
            "{what}: an address was left"
        );
    };
    let raw = |stdin: &str| invoke(&node.netns, &cni_exe(), "ADD", Some(&att), stdin.as_bytes());

    raw("{\"cniVersion\": \"1.0.0\", \"name\": ").expect_error(6, "truncated JSON");
    nothing_left("truncated JSON");
    let mut no_version = node.conf(json!({}));
    no_version.as_object_mut().unwrap().remove("cniVersion");
    node.run("ADD", Some(&att), &no_version)
        .expect_error(7, "missing cniVersion");
    nothing_left("missing cniVersion");
    for v in ["0.2.0", "2.0.0"] {
        let o = node.run("ADD", Some(&att), &node.conf(json!({ "cniVersion": v })));
        o.expect_error(1, &format!("cniVersion {v}"));
        assert!(
            o.stdout["details"].as_str().unwrap().contains("1.0.0"),
            "{}",
            o.raw
        );
    }
    node.run(
        "ADD",
        Some(&att),
        &node.conf(json!({"ipam": {"type": "podswitch", "routes": [{"dst": "0.0.0.0/0"}]}})),
    )
    .expect_error(2, "unsupported ipam.routes");
    node.run(
        "ADD",
        Some(&att),
        &node.conf(json!({"ipam": {"subnet": "10.244.2.0/24"}})),
    )
    .expect_error(7, "a subnet outside the node's pod CIDR");
    let mut bad_if = att.clone();
    bad_if.ifname = "this-name-is-too-long".into();
    node.run("ADD", Some(&bad_if), &node.conf(json!({})))
        .expect_error(4, "CNI_IFNAME too long");
    let mut no_netns = att.clone();
    no_netns.netns = None;
    node.run("ADD", Some(&no_netns), &node.conf(json!({})))
        .expect_error(4, "ADD without CNI_NETNS");
    let mut gone = att.clone();
    gone.netns = Some(PathBuf::from(format!(
        "/run/netns/psw-{}-gone",
        node.lab.name
    )));
    node.run("ADD", Some(&gone), &node.conf(json!({})))
        .expect_error(3, "ADD into a netns that does not exist");
    nothing_left("broken configurations");

    // The switch is not running: fail fast with 11, allocate nothing.
    let down = node.conf(json!({
        "switchSocket": format!("/run/podswitch/lab/{}/no-such-switch.sock", node.lab.name)
    }));
    let o = node.run("ADD", Some(&att), &down);
    o.expect_error(11, "switch not running");
    assert!(o.elapsed < Duration::from_secs(1), "took {:?}", o.elapsed);
    assert!(
        o.stdout["msg"].as_str().unwrap().contains("not running"),
        "{}",
        o.raw
    );
    nothing_left("switch not running");
    assert!(
        !node.data_dir.0.join("podswitch").exists(),
        "the IPAM store was touched"
    );

    // A /29 holds 5 pods (no network, broadcast or gateway address).
    let small = node.conf(json!({"ipam": {"subnet": "10.244.1.0/29"}}));
    let full: Vec<PodNetns> = (0..5)
        .map(|i| PodNetns::new(&node.lab, &format!("f{i}")))
        .collect();
    let full_atts: Vec<Attachment> = full
        .iter()
        .enumerate()
        .map(|(i, p)| Attachment::pod(&node.lab, p, &format!("full-{i}")))
        .collect();
    let mut ips = Vec::new();
    for a in &full_atts {
        ips.push(result_ip(
            &node
                .run("ADD", Some(a), &small)
                .expect_ok("ADD into the /29"),
        ));
    }
    ips.sort();
    assert_eq!(
        ips,
        [
            "10.244.1.2",
            "10.244.1.3",
            "10.244.1.4",
            "10.244.1.5",
            "10.244.1.6"
        ]
        .map(|s| s.parse::<Ipv4Addr>().unwrap())
    );
    let o = node.run("ADD", Some(&att), &small);
    o.expect_error(101, "ADD into a full /29");
    assert!(
        o.stdout["msg"].as_str().unwrap().contains("10.244.1.0/29"),
        "{}",
        o.raw
    );
    assert_eq!(node.ports().len(), 5, "no port for the refused pod");
    assert!(!pod.has_link("eth0"));
    assert_eq!(node.ip_files("podswitch").len(), 5);
    for a in &full_atts {
        node.run("DEL", Some(a), &small).expect_ok("DEL");
    }
    nothing_left("after DEL of the /29 pods");
}

/// A sandbox whose runtime died before its DEL leaves a port behind; the
/// pod's next sandbox still gets its port, and the late DEL of the old one
/// frees only the old sandbox's address, not the new sandbox's port.
#[test]
fn new_sandbox_replaces_a_stale_port_and_late_del_spares_it() {
    if !require_root() {
        return;
    }
    let node = Node::up("cnistale");
    let conf = node.conf(json!({}));
    let old_ns = PodNetns::new(&node.lab, "old");
    let mut old = Attachment::pod(&node.lab, &old_ns, "web");
    old.container = format!("{}-sandbox-1", node.lab.name);
    let old_ip = result_ip(&node.run("ADD", Some(&old), &conf).expect_ok("first ADD"));
    // The runtime loses the sandbox without a DEL.
    drop(old_ns);
    let new_ns = PodNetns::new(&node.lab, "new");
    let mut new = Attachment::pod(&node.lab, &new_ns, "web");
    new.container = format!("{}-sandbox-2", node.lab.name);
    let r = node
        .run("ADD", Some(&new), &conf)
        .expect_ok("ADD of the new sandbox");
    let new_ip = result_ip(&r);
    assert_ne!(old_ip, new_ip, "the old address is still reserved");
    let ports = node.ports();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].pod, "default/web");
    assert_eq!(ports[0].ipv4, Some(new_ip));
    assert!(new_ns.ping(GATEWAY));
    // The old sandbox's DEL comes late, without its netns.
    old.netns = None;
    node.run("DEL", Some(&old), &conf).expect_ok("late DEL");
    assert_eq!(node.ports().len(), 1, "the new sandbox's port must stay");
    assert_eq!(node.ip_files("podswitch"), vec![new_ip]);
    assert!(new_ns.ping(GATEWAY));
    node.run("DEL", Some(&new), &with_prev(&conf, &r))
        .expect_ok("DEL");
    assert!(node.ports().is_empty());
    assert!(node.ip_files("podswitch").is_empty());
}

/// libcni's chaining of a conflist: each plugin gets the list's name and
/// cniVersion, the runtimeConfig its capabilities ask for, and the
/// previous plugin's result; DEL runs in reverse.
struct Chain<'a> {
    node: &'a Node,
    list: Value,
}

impl Chain<'_> {
    fn plugin_path(&self, plugin: &Value) -> PathBuf {
        match plugin["type"].as_str().expect("type") {
            "podswitch-cni" => cni_exe(),
            other => Path::new(REFERENCE_PLUGINS).join(other),
        }
    }

    fn plugin_conf(&self, plugin: &Value, runtime: &Value, prev: Option<&Value>) -> Value {
        let mut c = plugin.clone();
        c["name"] = self.list["name"].clone();
        c["cniVersion"] = self.list["cniVersion"].clone();
        if let Some(caps) = plugin["capabilities"].as_object() {
            let rc: serde_json::Map<String, Value> = caps
                .iter()
                .filter(|(k, on)| **on == json!(true) && runtime.get(k.as_str()).is_some())
                .map(|(k, _)| (k.clone(), runtime[k.as_str()].clone()))
                .collect();
            if !rc.is_empty() {
                c["runtimeConfig"] = Value::Object(rc);
            }
        }
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    fn plugins(&self) -> Vec<Value> {
        self.list["plugins"].as_array().expect("plugins").clone()
    }

    fn add(&self, att: &Attachment, runtime: &Value) -> Value {
        let mut prev: Option<Value> = None;
        for p in self.plugins() {
            let conf = self.plugin_conf(&p, runtime, prev.as_ref());
            let o = invoke(
                &self.node.netns,
                &self.plugin_path(&p),
                "ADD",
                Some(att),
                conf.to_string().as_bytes(),
            );
            prev = Some(o.expect_ok(&format!("chained ADD of {}", p["type"])));
        }
        prev.expect("a result")
    }

    fn each(&self, command: &str, att: &Attachment, runtime: &Value, result: &Value) {
        let mut plugins = self.plugins();
        if command == "DEL" {
            plugins.reverse();
        }
        for p in plugins {
            let conf = self.plugin_conf(&p, runtime, Some(result));
            let o = invoke(
                &self.node.netns,
                &self.plugin_path(&p),
                command,
                Some(att),
                conf.to_string().as_bytes(),
            );
            if command == "CHECK" && known_check_failure(&p, &o.stdout) {
                continue;
            }
            o.expect_ok(&format!("chained {command} of {}", p["type"]));
        }
    }
}

/// CHECK failures of Debian's reference plugins (1.1.1) that do not depend
/// on podswitch's result and are tolerated, each with its exact message;
/// any other failure fails the test.
fn known_check_failure(plugin: &Value, reply: &Value) -> bool {
    let msg = reply["msg"].as_str().unwrap_or_default();
    match plugin["type"].as_str() {
        // portmap CHECKs the ip6tables rules of an IPv4-only pod, which it
        // never created (containernetworking/plugins#819).
        Some("portmap") => msg.starts_with("could not check ipv6 dnat"),
        // bandwidth CHECK looks for the host end of a veth even when no
        // limit is set; a tap has none.
        Some("bandwidth") => msg.contains("has no veth peer"),
        _ => false,
    }
}

/// Runs the loopback plugin as containerd does before the pod's network.
fn loopback(node: &Node, att: &Attachment, command: &str) {
    let conf = json!({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"});
    invoke(
        &node.netns,
        &Path::new(REFERENCE_PLUGINS).join("loopback"),
        command,
        Some(att),
        conf.to_string().as_bytes(),
    )
    .expect_ok(&format!("loopback {command}"));
}

/// Starts the lab's echo workload (HTTP on port 80) inside `pod`.
fn echo_server(pod: &PodNetns, name: &str) -> Background {
    Background(
        Command::new(exe())
            .args(["lab", "pod-run", "--pod", name, "--netns"])
            .arg(&pod.path)
            .args(["--tcp", "80"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start echo workload"),
    )
}

/// An HTTP GET from inside `from` (`podswitch tool http-get`).
fn http_get(from: &Path, to: &str) -> Option<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", from.display()))
        .arg(exe())
        .args(["tool", "http-get", "--to", to, "--path", "/cni"])
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    (v["status"] == 200).then(|| v["body"].as_str().unwrap_or_default().to_string())
}

/// The conflist of configs/cni chained as libcni runs it (loopback first,
/// then podswitch, portmap with a hostPort, bandwidth): the pods forward
/// through the switch, the hostPort reaches the pod from outside the node,
/// CHECK passes and DEL cleans up. Then IPAM delegated to host-local.
#[test]
fn chained_with_reference_plugins_and_host_local() {
    if !require_root() {
        return;
    }
    let node = Node::up("cnichain");
    let mut list: Value =
        serde_json::from_str(include_str!("../configs/cni/10-podswitch.conflist"))
            .expect("conflist");
    assert_eq!(list["cniVersion"], "1.0.0");
    let ours = &mut list["plugins"][0];
    assert_eq!(ours["type"], "podswitch-cni");
    ours["switchSocket"] = json!(node.socket);
    ours["dataDir"] = json!(node.data_dir.0);
    let chain = Chain { node: &node, list };

    let (pa, pb) = (PodNetns::new(&node.lab, "a"), PodNetns::new(&node.lab, "b"));
    let (a, b) = (
        Attachment::pod(&node.lab, &pa, "web-a"),
        Attachment::pod(&node.lab, &pb, "web-b"),
    );
    let runtime_a =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let runtime_b = json!({});
    loopback(&node, &a, "ADD");
    let ra = chain.add(&a, &runtime_a);
    loopback(&node, &b, "ADD");
    let rb = chain.add(&b, &runtime_b);
    let (ip_a, ip_b) = (result_ip(&ra), result_ip(&rb));
    assert!(
        pa.run(&["ping", "-c", "1", "-W", "2", "127.0.0.1"]),
        "loopback is up"
    );

    let _web_a = echo_server(&pa, "default/web-a");
    let _web_b = echo_server(&pb, "default/web-b");
    assert!(pa.ping(&ip_b.to_string()), "a cannot ping b");
    assert!(pb.ping(&ip_a.to_string()), "b cannot ping a");
    let mut body = None;
    assert!(
        wait_until(Duration::from_secs(5), || {
            body = http_get(&pa.path, &format!("{ip_b}:80"));
            body.is_some()
        }),
        "HTTP a -> b"
    );
    let body = body.unwrap();
    assert!(body.contains("From=default/web-b"), "{body}");
    assert!(body.contains(&format!("ClientIP={ip_a}")), "{body}");
    // portmap's hostPort, from the lab's outside host to the node's address.
    let outside = PathBuf::from(format!("/run/netns/psw-{}-outside", node.lab.name));
    let via_host_port = http_get(&outside, "198.18.0.1:8080").expect("HTTP to the hostPort");
    assert!(
        via_host_port.contains("From=default/web-a"),
        "{via_host_port}"
    );
    assert!(
        via_host_port.contains("ClientIP=203.0.113.10"),
        "{via_host_port}"
    );

    chain.each("CHECK", &a, &runtime_a, &ra);
    chain.each("DEL", &a, &runtime_a, &ra);
    loopback(&node, &a, "DEL");
    chain.each("DEL", &b, &runtime_b, &rb);
    loopback(&node, &b, "DEL");
    assert!(node.ports().is_empty());
    assert!(node.ip_files("podswitch").is_empty());
    assert!(
        http_get(&outside, "198.18.0.1:8080").is_none(),
        "the hostPort outlived DEL"
    );

    // IPAM delegated to host-local: the address comes from its range.
    let hl_dir = TempDir::new("host-local");
    let conf = node.conf(json!({"ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.1.0/24", "rangeStart": "10.244.1.200", "rangeEnd": "10.244.1.210"}]],
        "dataDir": hl_dir.0,
    }}));
    let pc = PodNetns::new(&node.lab, "c");
    let c = Attachment::pod(&node.lab, &pc, "hl");
    let rc = node
        .run("ADD", Some(&c), &conf)
        .expect_ok("ADD with host-local");
    let ip_c = result_ip(&rc);
    assert!(
        (Ipv4Addr::new(10, 244, 1, 200)..=Ipv4Addr::new(10, 244, 1, 210)).contains(&ip_c),
        "{ip_c} is not from host-local's range"
    );
    assert!(hl_dir.0.join("podswitch").join(ip_c.to_string()).exists());
    assert!(
        node.ip_files("podswitch").is_empty(),
        "the built-in IPAM stayed out"
    );
    assert!(pc.ping(GATEWAY));
    node.run("CHECK", Some(&c), &with_prev(&conf, &rc))
        .expect_ok("CHECK with host-local");
    node.run("DEL", Some(&c), &with_prev(&conf, &rc))
        .expect_ok("DEL with host-local");
    assert!(!hl_dir.0.join("podswitch").join(ip_c.to_string()).exists());
    assert!(node.ports().is_empty());
    node.run("DEL", Some(&c), &with_prev(&conf, &rc))
        .expect_ok("second DEL with host-local");
}

/// install.sh puts the binary and the conflist where a runtime looks, as
/// the DaemonSet's init container runs it (no root needed).
#[test]
fn install_script_installs_binary_and_conflist() {
    let dir = TempDir::new("install");
    let (bin, conf) = (dir.0.join("opt/cni/bin"), dir.0.join("etc/cni/net.d"));
    let out = Command::new("sh")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/configs/cni/install.sh"
        ))
        .env("CNI_BIN_DIR", &bin)
        .env("CNI_CONF_DIR", &conf)
        .env("PODSWITCH_CNI_BIN", cni_exe())
        .env("PODSWITCH_SWITCH_SOCKET", "/run/podswitch/node-7.sock")
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "install.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let installed = bin.join("podswitch-cni");
    assert_eq!(
        std::fs::metadata(&installed).unwrap().len(),
        std::fs::metadata(cni_exe()).unwrap().len()
    );
    let list: Value = serde_json::from_slice(
        &std::fs::read(conf.join("10-podswitch.conflist")).expect("conflist installed"),
    )
    .expect("installed conflist is JSON");
    assert_eq!(
        list["plugins"][0]["switchSocket"],
        "/run/podswitch/node-7.sock"
    );
    let types: Vec<&str> = list["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["podswitch-cni", "portmap", "bandwidth"]);
    // No temporary files are left, and the installed plugin runs.
    for d in [&bin, &conf] {
        let names: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{}: {names:?}", d.display());
    }
    let mut v = Command::new(&installed)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run installed plugin");
    v.stdin
        .take()
        .unwrap()
        .write_all(br#"{"cniVersion":"1.0.0"}"#)
        .unwrap();
    let out = v.wait_with_output().unwrap();
    let reply: Value = serde_json::from_slice(&out.stdout).expect("VERSION reply");
    assert!(reply["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.1.0")));
    // A missing binary is a clear error.
    let out = Command::new("sh")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/configs/cni/install.sh"
        ))
        .env("CNI_BIN_DIR", &bin)
        .env("CNI_CONF_DIR", &conf)
        .env("PODSWITCH_CNI_BIN", dir.0.join("missing"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing"));
}
