//! The lab runs one agent per node (issue #5): `lab apply`/`lab delete`
//! write manifests, each node's `podswitch agent files` carries them to
//! its switch.
//!
//! ```text
//!  lab apply ──> /run/podswitch/lab/NAME/manifests/{nodes,pods,services}.json
//!                     │                         │
//!          agent (netns node-1)      agent (netns node-2)
//!                     v                         v
//!              switch node-1  <── underlay ──>  switch node-2
//!               web pods, echo pods              web pod, echo pod
//! ```
//!
//! Timed from the lab command returning (`--no-wait`: once the manifests
//! are written, as `kubectl apply` returns) to every switch's
//! `get_services` showing the change: apply, delete, a restarted agent's
//! resync, a restarted switch's full state. Killing an agent leaves TCP
//! and UDP through the ClusterIP working (fail-static).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{podswitch, podswitch_ok, require_root, wait_until, TestLab};
use podswitch_switch::control::api::{Request, Topology};
use podswitch_switch::control::client;

const NODES: [&str; 2] = ["node-1", "node-2"];

fn echo_manifest(replicas: u32) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      containers:
        - name: echo
          image: podswitch/echo
          ports:
            - {{name: http, containerPort: 80}}
            - {{name: udp, containerPort: 9000, protocol: UDP}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports:
    - {{name: http, port: 8080, targetPort: http}}
    - {{name: udp, port: 9000, protocol: UDP, targetPort: udp}}
"
    )
}

/// The endpoints of `default/echo` on a node's switch, per port (`None`:
/// the switch does not hold the Service).
fn echo_endpoints(socket: &str) -> Option<Vec<usize>> {
    let v: serde_json::Value = client::call(Path::new(socket), &Request::GetServices).ok()?;
    let svc = v["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == "default/echo")?
        .clone();
    Some(
        svc["ports"]
            .as_array()?
            .iter()
            .map(|p| p["endpoints"].as_array().map_or(0, Vec::len))
            .collect(),
    )
}

/// Waits until `cond` holds for every node; returns when each did,
/// measured from `since` (panics after `deadline` with `what`).
fn time_every_node(
    lab: &TestLab,
    since: Instant,
    deadline: Duration,
    what: &str,
    cond: impl Fn(&str) -> bool,
) -> Vec<Duration> {
    let mut done: Vec<Option<Duration>> = vec![None; NODES.len()];
    let all = wait_until(deadline, || {
        for (i, node) in NODES.iter().enumerate() {
            if done[i].is_none() && cond(&lab.socket(node)) {
                done[i] = Some(since.elapsed());
            }
        }
        done.iter().all(Option::is_some)
    });
    assert!(
        all,
        "{what}: not on every switch within {deadline:?}: {done:?}"
    );
    done.into_iter().map(|d| d.unwrap()).collect()
}

fn cluster_ip(lab: &TestLab, name: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&lab.run_ok(&["get", "svc", "-o", "json"])).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metadata"]["name"] == name)
        .and_then(|s| s["spec"]["clusterIP"].as_str())
        .unwrap_or_else(|| panic!("no Service {name}: {v}"))
        .to_string()
}

fn state(lab: &TestLab) -> serde_json::Value {
    let path = format!("/run/podswitch/lab/{}/lab.json", lab.name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn pid_of(lab: &TestLab, node: &str, field: &str) -> i32 {
    let st = state(lab);
    st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node)
        .and_then(|n| n[field].as_i64())
        .unwrap_or_else(|| panic!("no {field} of {node}: {st}")) as i32
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

/// One HTTP request and 20 UDP echoes through the ClusterIP, from `pod`.
fn traffic_flows(lab: &TestLab, pod: &str, ip: &str, what: &str) {
    let out = lab.exec(
        pod,
        &["curl", "-sS", "-m", "2", &format!("http://{ip}:8080/")],
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("From=echo-"),
        "{what}: TCP via {ip}:8080 from {pod}: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let u = lab.tool(
        pod,
        &["udp-echo", "--to", &format!("{ip}:9000"), "--count", "20"],
    );
    assert_eq!(
        u["received"], 20,
        "{what}: UDP via {ip}:9000 from {pod}: {u}"
    );
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[test]
fn agents_carry_lab_changes_to_every_switch_and_survive_restarts() {
    if !require_root() {
        return;
    }
    // The default lab: two nodes, web pods on both.
    let lab = TestLab::up_with("agents", &["--nodes", "2"]);
    let dir = std::env::temp_dir().join(format!("podswitch-lab-agents-{}", lab.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |replicas: u32| {
        let path = dir.join(format!("echo-{replicas}.yaml"));
        std::fs::write(&path, echo_manifest(replicas)).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (two, three) = (file(2), file(3));
    let mut agents: Vec<i32> = NODES.iter().map(|n| pid_of(&lab, n, "agent_pid")).collect();
    assert!(
        agents.iter().all(|p| alive(*p)),
        "one agent per node: {agents:?}"
    );

    // 1. apply: every switch holds the Service with both endpoints.
    lab.run_ok(&["apply", "-f", &two, "--no-wait"]);
    let applied = Instant::now();
    let took = time_every_node(&lab, applied, Duration::from_secs(5), "apply", |s| {
        echo_endpoints(s) == Some(vec![2, 2])
    });
    println!(
        "lab apply -> every switch: {} (node-1 {}, node-2 {})",
        ms(*took.iter().max().unwrap()),
        ms(took[0]),
        ms(took[1])
    );
    assert!(
        took.iter().all(|t| *t <= Duration::from_secs(1)),
        "{took:?}"
    );
    let ip = cluster_ip(&lab, "echo");
    let pods = lab.pods_with_nodes();
    let client_on = |node: &str| {
        pods.iter()
            .find(|(name, _, n)| n == node && name.starts_with("web-"))
            .map(|(name, _, _)| name.clone())
            .unwrap_or_else(|| panic!("no web pod on {node}: {pods:?}"))
    };
    let (client1, client2) = (client_on("node-1"), client_on("node-2"));
    traffic_flows(&lab, &client1, &ip, "after apply");
    traffic_flows(&lab, &client2, &ip, "after apply");

    // 2. delete: gone from every switch.
    lab.run_ok(&["delete", "-f", &two, "--grace-period", "0", "--no-wait"]);
    let deleted = Instant::now();
    let took = time_every_node(&lab, deleted, Duration::from_secs(5), "delete", |s| {
        echo_endpoints(s).is_none()
    });
    println!(
        "lab delete -> gone from every switch: {} (node-1 {}, node-2 {})",
        ms(*took.iter().max().unwrap()),
        ms(took[0]),
        ms(took[1])
    );
    assert!(
        took.iter().all(|t| *t <= Duration::from_secs(1)),
        "{took:?}"
    );

    // 3. node-2's agent dies: its switch keeps forwarding (fail-static),
    // and `lab apply` goes on for the nodes whose agents run.
    lab.run_ok(&["apply", "-f", &two]);
    let ip = cluster_ip(&lab, "echo");
    assert_eq!(echo_endpoints(&lab.socket("node-2")), Some(vec![2, 2]));
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &agents[1].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(wait_until(Duration::from_secs(5), || !alive(agents[1])));
    for i in 0..3 {
        traffic_flows(
            &lab,
            &client2,
            &ip,
            &format!("agent of node-2 gone, round {i}"),
        );
    }
    // A change while it is away: a third replica.
    lab.run_ok(&["apply", "-f", &three]);
    assert_eq!(echo_endpoints(&lab.socket("node-1")), Some(vec![3, 3]));
    assert_eq!(
        echo_endpoints(&lab.socket("node-2")),
        Some(vec![2, 2]),
        "no agent, no change: node-2's switch keeps its last Services"
    );
    traffic_flows(&lab, &client2, &ip, "agent of node-2 gone, after a change");

    // 4. A new agent resyncs what changed meanwhile.
    let restarting = Instant::now();
    lab.run_ok(&["restart-agent", "node-2", "--no-wait"]);
    let started = restarting.elapsed();
    let resynced = wait_until(Duration::from_secs(5), || {
        echo_endpoints(&lab.socket("node-2")) == Some(vec![3, 3])
    });
    let took = restarting.elapsed();
    assert!(resynced, "{:?}", echo_endpoints(&lab.socket("node-2")));
    println!(
        "agent restart -> node-2's switch resynced: {} (the command took {})",
        ms(took),
        ms(started)
    );
    agents[1] = pid_of(&lab, "node-2", "agent_pid");
    assert!(alive(agents[1]));
    traffic_flows(&lab, &client2, &ip, "after the agent's resync");

    // 5. node-1's switch restarts (SIGKILL): it restores its pods from its
    // own state, its agent gives it the nodes and Services back.
    let old_switch = pid_of(&lab, "node-1", "switch_pid");
    lab.run_ok(&["restart-switch", "node-1", "--hard", "--no-wait"]);
    let up = Instant::now();
    let socket = lab.socket("node-1");
    let back = wait_until(Duration::from_secs(5), || {
        echo_endpoints(&socket) == Some(vec![3, 3])
            && client::call::<Topology>(Path::new(&socket), &Request::GetTopology)
                .is_ok_and(|t| t.remote_nodes.len() == 1)
    });
    let took = up.elapsed();
    assert!(back, "{:?}", echo_endpoints(&socket));
    assert_ne!(pid_of(&lab, "node-1", "switch_pid"), old_switch);
    println!(
        "switch restart (answering) -> full state back from its agent: {}",
        ms(took)
    );
    assert!(took <= Duration::from_secs(1), "{took:?}");
    assert!(
        wait_until(Duration::from_secs(5), || lab
            .exec(
                &client1,
                &["curl", "-sS", "-m", "1", &format!("http://{ip}:8080/")]
            )
            .status
            .success()),
        "traffic after the switch restart"
    );
    traffic_flows(&lab, &client1, &ip, "after the switch restart");

    // 6. `lab down` stops the agents and removes the manifests.
    podswitch_ok(&["lab", "down", "--name", &lab.name]);
    assert!(
        wait_until(Duration::from_secs(5), || agents.iter().all(|p| !alive(*p))),
        "agents left running: {agents:?}"
    );
    assert!(!Path::new(&format!("/run/podswitch/lab/{}/manifests", lab.name)).exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A crashed lab command leaves its agents (and everything else)
/// running without a state file: the next `lab up` with that name clears
/// them and starts its own.
#[test]
fn leftover_agents_of_a_crashed_run_do_not_break_the_next_one() {
    if !require_root() {
        return;
    }
    let lab = TestLab::up_with("agentcrash", &["--nodes", "1"]);
    let old = pid_of(&lab, "node-1", "agent_pid");
    // The crash: the state is lost, the processes stay.
    std::fs::remove_file(format!("/run/podswitch/lab/{}/lab.json", lab.name)).unwrap();
    assert!(alive(old));
    let out = podswitch(&["lab", "up", "--name", &lab.name, "--nodes", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!alive(old), "the crashed run's agent was stopped");
    let new = pid_of(&lab, "node-1", "agent_pid");
    assert!(alive(new));
    let status = podswitch_ok(&[
        "agent",
        "status",
        "--status-file",
        &format!("/run/podswitch/lab/{}/node-1-agent.json", lab.name),
    ]);
    assert!(status.contains(&format!("pid {new},")), "{status}");
    assert!(status.contains("full sync"), "{status}");
}
