//! The agent against real switches in a lab (issue #5):
//!
//! ```text
//!  test process ── Translator + SwitchSink ──> node-1's switch (netns psw-NAME-node-1)
//!  podswitch agent files --dir D ───────────> node-1's switch
//!        ^ D: Node, Pods (the lab's pod IPs), Service demo/echo
//! ```
//!
//! - 10k Services with 50k endpoints translated and pushed, and single
//!   endpoint changes, timed end to end against the real switch;
//! - `podswitch agent files`: the Service reaches the switch, traffic to
//!   its ClusterIP flows, a broken file shows in `agent status`, killing
//!   the agent leaves traffic flowing (fail-static), a restarted agent
//!   resyncs what changed meanwhile, a restarted switch gets its Services
//!   back from the agent.
//!
//! The lab's own agent of the node these tests drive is stopped first
//! (tests/lab_agents.rs tests the lab's agents).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{exe, podswitch, podswitch_ok, require_root, wait_until, TestLab};
use podswitch_agent::source::{SwitchSink, TopologySink};
use podswitch_agent::translate::{synthetic, Changes, TranslateConfig, Translator};
use podswitch_switch::control::api::{Request, ServiceSettings};
use podswitch_switch::control::client;

/// Stops the lab's own agent of `node` (the lab runs one per node, see
/// tests/lab_agents.rs): these tests drive that node's switch themselves,
/// and two agents with different manifests would undo each other's full
/// syncs.
fn stop_lab_agent(lab: &TestLab, node: &str) {
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/podswitch/lab/{}/lab.json", lab.name)).unwrap(),
    )
    .unwrap();
    let pid = state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n["agent_pid"].as_i64())
        .expect("the lab's agent");
    Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .unwrap();
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    }));
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The Services a switch holds: name → endpoints as `ip:port`.
fn switch_services(socket: &str) -> Vec<(String, Vec<String>)> {
    let v: serde_json::Value =
        client::call(Path::new(socket), &Request::GetServices).expect("get_services");
    v["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            let eps = s["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["endpoints"].as_array().cloned().unwrap_or_default())
                .map(|e| format!("{}:{}", e["ip"].as_str().unwrap(), e["port"]))
                .collect();
            (s["name"].as_str().unwrap().to_string(), eps)
        })
        .collect()
}

#[test]
fn ten_thousand_services_and_single_endpoint_changes_reach_a_real_switch_in_time() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up_with("agent10k", &["--nodes", "1"]);
    stop_lab_agent(&lab, "node-1");
    let socket = lab.socket("node-1");
    const SERVICES: usize = 10_000;
    const ENDPOINTS: usize = 5;
    let mut objects = synthetic::cluster(SERVICES, ENDPOINTS, "node-1");
    let config = TranslateConfig {
        node_name: "node-1".into(),
        settings: ServiceSettings::default(),
    };
    let mut sink = SwitchSink::new(Path::new(&socket), "node-1");

    // Full: translate everything, encode, the switch builds and publishes.
    let started = Instant::now();
    let mut translator = Translator::new(config);
    translator.update(&objects, &Changes::everything());
    let translated = started.elapsed();
    sink.full_sync(&translator.topology().full_sync())
        .expect("full sync");
    let full = started.elapsed();
    println!(
        "10k services / 50k endpoints: translate {translated:?}, translate + push (switch applied) {full:?}"
    );
    let held = switch_services(&socket);
    assert_eq!(held.len(), SERVICES);
    assert!(held.iter().all(|(_, eps)| eps.len() == ENDPOINTS));

    // One endpoint change at a time: translate, encode, switch applies.
    let mut times = Vec::new();
    let mut agent_side = Vec::new();
    for generation in 1..=20u64 {
        let i = (generation as usize * 487) % SERVICES;
        let key = format!("bench/svc-{i}-abcde");
        let started = Instant::now();
        objects.endpoint_slices.insert(
            key.clone(),
            synthetic::slice(i, ENDPOINTS, "node-1", generation),
        );
        let patch = translator.update(
            &objects,
            &Changes {
                endpoint_slices: [key].into(),
                ..Changes::default()
            },
        );
        agent_side.push(started.elapsed());
        assert_eq!(patch.upsert.len(), 1);
        sink.apply_patch(&patch).expect("patch");
        times.push(started.elapsed());
    }
    let (one, agent) = (median(times.clone()), median(agent_side));
    println!(
        "one endpoint change: median {one:?} end to end (agent side {agent:?}, switch side {:?}), max {:?}",
        one.saturating_sub(agent),
        times.iter().max().unwrap()
    );
    // The last change is what the switch holds.
    let held = switch_services(&socket);
    let i = (20 * 487) % SERVICES;
    let expected: Vec<String> = synthetic::slice(i, ENDPOINTS, "node-1", 20)
        .endpoints
        .iter()
        .map(|e| format!("{}:8080", e.addresses[0]))
        .collect();
    let mut got = held
        .iter()
        .find(|(n, _)| n == &format!("bench/svc-{i}"))
        .unwrap()
        .1
        .clone();
    let mut expected_sorted = expected.clone();
    got.sort();
    expected_sorted.sort();
    assert_eq!(got, expected_sorted);

    // The issue's bounds, for optimised builds (a debug build of the agent
    // translates several times slower and gets room): 10k Services in 1 s,
    // one endpoint change end to end (translate, push, the switch patches
    // its table incrementally and publishes) in 10 ms.
    let slack = if cfg!(debug_assertions) { 8 } else { 1 };
    assert!(full <= Duration::from_secs(slack), "{full:?}");
    assert!(agent <= Duration::from_millis(10 * slack), "{agent:?}");
    assert!(one <= Duration::from_millis(10 * slack), "{one:?}");
}

/// A running `podswitch agent files`, killed on drop.
struct Agent(Child);

impl Agent {
    fn start(dir: &Path, socket: &str, status: &Path) -> Agent {
        let child = Command::new(exe())
            .args([
                "agent",
                "files",
                "--node-name",
                "node-1",
                "--switch-socket",
                socket,
            ])
            .arg("--dir")
            .arg(dir)
            .arg("--status-file")
            .arg(status)
            .env("PODSWITCH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        Agent(child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `text` to `dir/name` as the lab writes: a hidden temporary,
/// then renamed.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn manifests(pods: &[(String, String)]) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1}\n\
         spec: {podCIDR: 10.244.1.0/24}\n\
         status: {addresses: [{type: InternalIP, address: 198.18.0.1}]}\n\
         ---\napiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: demo}\n\
         spec:\n  clusterIP: 10.96.5.5\n  selector: {app: echo}\n\
         \x20 ports: [{name: http, port: 8080, targetPort: http}]\n",
    );
    for (name, ip) in pods {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: demo, labels: {{app: echo}}}}\n\
             spec: {{nodeName: node-1, containers: [{{name: web, ports: [{{name: http, containerPort: 80}}]}}]}}\n\
             status: {{phase: Running, podIP: {ip}}}\n"
        ));
    }
    out
}

fn echo_endpoints(socket: &str) -> Option<usize> {
    switch_services(socket)
        .into_iter()
        .find(|(n, _)| n == "demo/echo")
        .map(|(_, eps)| eps.len())
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn agent_files_feeds_the_switch_reports_problems_and_survives_restarts() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up_with("agentfiles", &["--nodes", "1"]);
    stop_lab_agent(&lab, "node-1");
    let socket = lab.socket("node-1");
    let pods = lab.pods();
    assert!(pods.len() >= 2, "the default lab's pods: {pods:?}");
    let client_pod = pods[0].0.clone();
    let dir = TempDir(std::env::temp_dir().join(format!("podswitch-agent-{}", lab.name)));
    let manifest_dir = dir.0.join("manifests");
    std::fs::create_dir_all(&manifest_dir).unwrap();
    let status = dir.0.join("status.json");
    write(&manifest_dir, "cluster.yaml", &manifests(&pods));

    // The Service reaches the switch.
    let started = Instant::now();
    let mut agent = Agent::start(&manifest_dir, &socket, &status);
    assert!(
        wait_until(Duration::from_secs(5), || echo_endpoints(&socket)
            == Some(pods.len())),
        "{:?}",
        switch_services(&socket)
    );
    println!(
        "agent start -> Service on the switch: {:?}",
        started.elapsed()
    );
    let curl = |what: &str| {
        let out = lab.exec(
            &client_pod,
            &["curl", "-sS", "-m", "2", "http://10.96.5.5:8080/"],
        );
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    curl("through the agent's Service");

    // An edit reaches the switch within 1 s.
    let edited = Instant::now();
    write(&manifest_dir, "cluster.yaml", &manifests(&pods[..1]));
    assert!(wait_until(Duration::from_secs(1), || echo_endpoints(
        &socket
    ) == Some(1)));
    println!("file edit -> switch: {:?}", edited.elapsed());

    // A broken file: reported in `agent status`, the Service stays.
    write(&manifest_dir, "zz-broken.yaml", "kind: [Service\n");
    let status_arg = status.to_str().unwrap();
    assert!(wait_until(Duration::from_secs(2), || {
        let out = podswitch(&["agent", "status", "--status-file", status_arg]);
        String::from_utf8_lossy(&out.stdout).contains("zz-broken.yaml")
    }));
    let shown = podswitch_ok(&["agent", "status", "--status-file", status_arg]);
    println!("{shown}");
    assert!(shown.contains("last push:"), "{shown}");
    assert_eq!(echo_endpoints(&socket), Some(1));

    // The agent dies: the switch keeps forwarding (fail-static).
    drop(agent);
    for i in 0..5 {
        curl(&format!("agent gone, request {i}"));
    }
    // Changed while it was away; a new agent resyncs.
    write(&manifest_dir, "cluster.yaml", &manifests(&pods));
    let restarted = Instant::now();
    agent = Agent::start(&manifest_dir, &socket, &status);
    assert!(wait_until(Duration::from_secs(2), || echo_endpoints(
        &socket
    ) == Some(pods.len())));
    println!("agent restart -> resynced: {:?}", restarted.elapsed());

    // The switch restarts (it restores its pods, not its Services): the
    // agent gives them back.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("/run/podswitch/lab/{}/lab.json", lab.name)).unwrap(),
    )
    .unwrap();
    let pid = state["nodes"][0]["switch_pid"].as_i64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Command::new("kill").arg(pid.to_string()).status().unwrap();
    assert!(wait_until(Duration::from_secs(5), || !Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()
        || std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.contains(") Z "))));
    let mut switch = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("restart the switch");
    assert!(wait_until(Duration::from_secs(10), || client::call::<
        serde_json::Value,
    >(
        Path::new(&socket),
        &Request::Hello
    )
    .is_ok()));
    let up = Instant::now();
    assert!(wait_until(Duration::from_secs(1), || echo_endpoints(
        &socket
    ) == Some(pods.len())));
    println!("switch restart -> Services back: {:?}", up.elapsed());
    assert!(wait_until(Duration::from_secs(5), || lab
        .exec(
            &client_pod,
            &["curl", "-sS", "-m", "1", "http://10.96.5.5:8080/"]
        )
        .status
        .success()));
    drop(agent);
    drop(lab);
    let _ = switch.kill();
    let _ = switch.wait();
}

/// The DaemonSet's `podswitch agent ...` commands (the agent container
/// and the pod-cidr init container) are what this binary parses: each is
/// run with `--help` appended, which clap answers only after accepting
/// every argument before it.
#[test]
fn the_daemonset_argv_matches_the_agent_cli() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/kubernetes/daemonset.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let mut commands: Vec<Vec<String>> = Vec::new();
    let mut current: Option<Vec<String>> = None;
    for line in text.lines() {
        let t = line.trim();
        if t == "command:" {
            current = Some(Vec::new());
        } else if let (Some(item), Some(cmd)) = (t.strip_prefix("- "), current.as_mut()) {
            cmd.push(item.to_string());
        } else if let Some(cmd) = current.take() {
            if cmd.first().map(String::as_str) == Some("podswitch") {
                commands.push(cmd);
            }
        }
    }
    let subcommands: Vec<&str> = commands.iter().map(|c| c[2].as_str()).collect();
    assert_eq!(subcommands, ["pod-cidr", "kubernetes"], "{commands:?}");
    for cmd in &commands {
        let mut args: Vec<String> = cmd[1..]
            .iter()
            .map(|a| a.replace("$(NODE_NAME)", "node-1"))
            .collect();
        args.push("--help".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = podswitch(&args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// What the lab's API server holds (`lab get nodes|pods|svc -o json`:
/// Nodes, Pods with their IPs and status, Services with their allocated
/// ClusterIPs and NodePorts), read by the agent's file source
/// (EndpointSlices derived by the shared endpoints controller) and
/// translated for each node, is the table the lab computes for every
/// switch (`podswitch_lab::agents::service_specs`, what `lab apply` waits for) and what
/// each node's switch holds, given by that node's agent.
#[test]
fn the_file_source_on_the_labs_objects_gives_the_labs_service_table() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up_with("agentsame", &["--nodes", "2"]);
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/services.yaml");
    lab.run_ok(&["apply", "-f", fixture]);
    let dir = TempDir(std::env::temp_dir().join(format!("podswitch-same-{}", lab.name)));
    std::fs::create_dir_all(&dir.0).unwrap();
    for kind in ["nodes", "pods", "svc"] {
        let json = lab.run_ok(&["get", kind, "-o", "json"]);
        std::fs::write(dir.0.join(format!("{kind}.json")), json).unwrap();
    }
    let mut cache = podswitch_agent::source::files::ManifestCache::default();
    cache.refresh(&dir.0);
    assert_eq!(cache.problems(), [], "the lab's objects read cleanly");
    let (objects, problems) = cache.objects();
    assert!(problems.is_empty(), "{problems:?}");
    for node in ["node-1", "node-2"] {
        let config = TranslateConfig {
            node_name: node.into(),
            settings: ServiceSettings {
                cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
                ..ServiceSettings::default()
            },
        };
        let topology = podswitch_agent::translate::translate(&objects, &config);
        let ours: Vec<serde_json::Value> = topology
            .services
            .values()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        let v: serde_json::Value =
            client::call(Path::new(&lab.socket(node)), &Request::GetServices).unwrap();
        let theirs = v["services"].as_array().unwrap().clone();
        assert!(!theirs.is_empty());
        let st = podswitch_lab::cluster::Lab::new(&lab.name, exe())
            .unwrap()
            .state()
            .unwrap()
            .unwrap();
        let labs: Vec<serde_json::Value> = podswitch_lab::agents::service_specs(&st, node)
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        assert_eq!(ours, labs, "{node}: agent (left) vs the lab's own table");
        assert_eq!(
            serde_json::to_string_pretty(&ours).unwrap(),
            serde_json::to_string_pretty(&theirs).unwrap(),
            "{node}: agent (left) vs lab (right)"
        );
    }
}
