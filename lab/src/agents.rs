//! The lab's control plane → data plane path: one `podswitch agent files`
//! per node, fed by the manifests the lab's API server writes.
//!
//! ```text
//!  lab apply/delete ── API server (cluster.rs, services.rs: allocation)
//!        │ writes (write-then-rename)
//!        v
//!  /run/podswitch/lab/NAME/manifests/{nodes,pods,services}.json
//!        │ polled by
//!        v
//!  podswitch agent files --netns <node-i> ... (one per node, in its netns)
//!        │ EndpointSlices derived, translated, pushed (full sync, patches)
//!        v
//!  node-i's switch (control socket node-i.sock)
//! ```
//!
//! The manifests are what `lab get nodes|pods|svc -o json` prints (Nodes
//! with their pod CIDR and underlay address, Pods with their IPs, phase
//! and deletionTimestamp, Services with their allocated ClusterIPs and
//! NodePorts), so the agent plays the EndpointSlice controller and
//! kube-proxy, as it does from a real API server. The lab itself only
//! wires pods (taps, as the CNI plugin does).
//!
//! After writing, the lab waits (unless told not to) until every node's
//! switch holds what was written: each Service as the node's agent
//! translates it (the lab runs the same translation on the same objects:
//! [`service_specs`]), and none of the
//! Services just removed. A node whose agent or switch is not running is
//! skipped with a warning: its switch keeps its last topology
//! (fail-static) until the agent is started again and resyncs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use podswitch_switch::control::api::{ServiceSettings, ServiceSpec};
use podswitch_switch::control::client::Client;

use super::cluster::{pid_alive, wait_for, LabPaths, LabState, NodeState};
use super::{services, view};
use podswitch_agent::source::status;

/// How often a lab agent checks the manifests (milliseconds): a stat of
/// three files, so apply → switch stays well under the issue's 1 s.
pub const AGENT_POLL_MS: u64 = 20;

/// A lab agent's periodic full sync. Long: the lab rewrites the
/// manifests on every change and agents resync after a switch restart,
/// while benches and tests also give the lab's switches tables of their
/// own (`lab bench-services`, tests/services.rs), which a periodic full
/// sync would replace mid-run.
pub const AGENT_RESYNC_SECS: u64 = 3600;

/// A lab agent's longest wait between retries of a failed push
/// (milliseconds): a restarted switch answers its socket within this of
/// the agent trying again, which keeps switch restart → resync well
/// under the issue's 1 s (the default backoff grows to 5 s).
pub const AGENT_RETRY_MAX_MS: u64 = 200;

/// How long the lab waits for agents to bring the switches in step.
pub const AGENT_SYNC_TIMEOUT: Duration = Duration::from_secs(10);

/// The files the lab writes, by name: what `lab get ... -o json` prints.
const MANIFEST_FILES: [&str; 3] = ["nodes.json", "pods.json", "services.json"];

impl LabPaths {
    /// The directory the lab's API server writes and the agents read.
    pub fn manifest_dir(&self) -> PathBuf {
        self.dir.join("manifests")
    }

    /// The agents' config (the cluster's service settings).
    pub fn agent_config(&self) -> PathBuf {
        self.dir.join("agent.toml")
    }

    /// Where node `node`'s agent writes its status
    /// (`podswitch agent status --status-file ...`).
    pub fn agent_status_file(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}-agent.json"))
    }

    /// Node `node`'s agent log.
    pub fn agent_log(&self, node: &str) -> PathBuf {
        self.logs().join(format!("{node}-agent.log"))
    }
}

/// The agent config file for `settings` (TOML, as `podswitch agent
/// --config` reads it).
pub fn agent_config_toml(settings: &ServiceSettings) -> String {
    let list = |nets: &[ipnet::IpNet]| {
        nets.iter()
            .map(|n| format!("\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "# Written by `podswitch lab up`: the lab's service settings, for its agents.\n\
         [services]\n\
         cluster_cidrs = [{}]\n\
         service_cidrs = [{}]\n\
         masquerade = {}\n\
         masquerade_exclude = [{}]\n\
         node_port_range = [{}, {}]\n",
        list(&settings.cluster_cidrs),
        list(&settings.service_cidrs),
        settings.masquerade,
        list(&settings.masquerade_exclude),
        settings.node_port_range.0,
        settings.node_port_range.1,
    )
}

/// Writes `text` to `dir/name` unless it holds it already: a hidden
/// temporary, then a rename, so an agent never reads half a file.
fn write_if_changed(dir: &Path, name: &str, text: &[u8]) -> anyhow::Result<()> {
    let path = dir.join(name);
    if std::fs::read(&path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Makes the manifest directory (empty) and the agents' config: at
/// `lab up`, also over what a crashed run left.
pub fn prepare(paths: &LabPaths, st: &LabState) -> anyhow::Result<()> {
    let dir = paths.manifest_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .with_context(|| format!("removing the stale {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let config = agent_config_toml(&services::settings(st.spec.cluster_cidr));
    std::fs::write(paths.agent_config(), config)
        .with_context(|| format!("writing {}", paths.agent_config().display()))?;
    write_manifests(paths, st)
}

/// Writes the lab's objects for the agents: Nodes, Pods, Services.
/// Pods before Services, so that a new Service shows with its endpoints.
pub fn write_manifests(paths: &LabPaths, st: &LabState) -> anyhow::Result<()> {
    let dir = paths.manifest_dir();
    let lists = [
        view::nodes_json(st),
        view::pods_json(st),
        view::services_json(st),
    ];
    for (name, list) in MANIFEST_FILES.iter().zip(lists) {
        let text = serde_json::to_vec_pretty(&list).context("encoding lab objects")?;
        write_if_changed(&dir, name, &text)?;
    }
    Ok(())
}

/// Starts node `node`'s agent inside its network namespace; returns its
/// pid. It outlives this command (`lab down` stops it).
pub fn spawn_agent(paths: &LabPaths, exe: &Path, node: &NodeState) -> anyhow::Result<i32> {
    let log_path = paths.agent_log(&node.name);
    let log = File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    // A status file of an earlier agent must not pass for this one's.
    let _ = std::fs::remove_file(paths.agent_status_file(&node.name));
    let mut cmd = Command::new(exe);
    cmd.args(["agent", "files", "--node-name", &node.name])
        .arg("--switch-socket")
        .arg(&node.control_socket)
        .arg("--dir")
        .arg(paths.manifest_dir())
        .arg("--config")
        .arg(paths.agent_config())
        .arg("--status-file")
        .arg(paths.agent_status_file(&node.name))
        .args(["--poll-ms", &AGENT_POLL_MS.to_string()])
        .args(["--resync-secs", &AGENT_RESYNC_SECS.to_string()])
        .args(["--retry-max-ms", &AGENT_RETRY_MAX_MS.to_string()])
        .arg("--netns")
        .arg(&node.netns)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting the agent of {}", node.name))?;
    let pid = child.id() as i32;
    // Reaped by init once the lab command exits, as the switches are.
    std::mem::forget(child);
    Ok(pid)
}

/// How many full syncs node `node`'s agent has made, from its status
/// file (`None`: no status yet).
pub fn full_syncs(paths: &LabPaths, node: &str) -> Option<u64> {
    let st = status::read_status(&paths.agent_status_file(node)).ok()?;
    Some(st.source_status["full_syncs"].as_u64().unwrap_or(0))
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// Waits until node `node`'s agent (`pid`) has made more than `after`
/// full syncs.
pub fn wait_full_sync(
    paths: &LabPaths,
    node: &NodeState,
    pid: i32,
    after: u64,
) -> anyhow::Result<()> {
    let synced = wait_for(AGENT_SYNC_TIMEOUT, || {
        !pid_alive(pid) || full_syncs(paths, &node.name).is_some_and(|n| n > after)
    });
    if !synced || !pid_alive(pid) {
        let status = status::read_status(&paths.agent_status_file(&node.name))
            .map(|s| s.source_status.to_string())
            .unwrap_or_else(|e| e.to_string());
        bail!(
            "the agent of {} ({}) made no full sync of its switch within {:?}; status: {status}; \
             its log ({}) ends:\n{}",
            node.name,
            if pid_alive(pid) {
                format!("pid {pid}")
            } else {
                "exited".to_string()
            },
            AGENT_SYNC_TIMEOUT,
            paths.agent_log(&node.name).display(),
            log_tail(&paths.agent_log(&node.name))
        );
    }
    Ok(())
}

/// What a switch's Services differ in from what the lab wrote: `None`
/// when it holds every expected Service as expected and none of
/// `removed`.
fn service_difference(
    socket: &Path,
    expected: &BTreeMap<String, serde_json::Value>,
    removed: &BTreeSet<String>,
) -> Option<String> {
    let held =
        match Client::connect(socket, Duration::from_secs(2)).and_then(|mut c| c.get_services()) {
            Ok(held) => held,
            Err(e) => return Some(format!("get_services: {e}")),
        };
    // As JSON, the shape `expected` has: each spec as the switch sent it.
    let held: BTreeMap<&str, serde_json::Value> = held
        .services
        .iter()
        .filter_map(|s| Some((s.name.as_str(), serde_json::to_value(s).ok()?)))
        .collect();
    for (name, spec) in expected {
        match held.get(name.as_str()) {
            None => return Some(format!("Service {name} is missing")),
            Some(h) if h != spec => return Some(format!("Service {name} differs: {h}")),
            Some(_) => {}
        }
    }
    removed
        .iter()
        .find(|n| held.contains_key(n.as_str()))
        .map(|n| format!("Service {n} is still there"))
}

/// The service table node `node`'s switch should hold: what its agent
/// translates from the objects the lab writes (the lab runs the same
/// translation on the same objects). It can differ between nodes: an
/// external IP that is a node's own address and one of its NodePorts is
/// left out on that node only.
pub fn service_specs(st: &LabState, node: &str) -> Vec<ServiceSpec> {
    services::switch_specs_for(
        node,
        &view::cluster_objects(st),
        &services::settings(st.spec.cluster_cidr),
    )
}

/// Waits until the switch of every node in `nodes` whose switch and agent
/// run holds the lab's Services (see the module docs); returns how long
/// that took.
pub fn wait_switches(
    paths: &LabPaths,
    st: &LabState,
    nodes: &[NodeState],
    removed: &BTreeSet<String>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let expected = |node: &str| -> BTreeMap<String, serde_json::Value> {
        service_specs(st, node)
            .into_iter()
            .map(|s| {
                let v = serde_json::to_value(&s).unwrap_or_default();
                (s.name, v)
            })
            .collect()
    };
    let mut waiting: Vec<&NodeState> = Vec::new();
    for n in nodes {
        if !n.switch_pid.is_some_and(pid_alive) {
            tracing::warn!(node = %n.name, "switch not running: its agent gives it the Services when it is restarted");
        } else if !n.agent_pid.is_some_and(pid_alive) {
            tracing::warn!(node = %n.name,
                "agent not running: its switch keeps its last Services until `podswitch lab restart-agent {}`", n.name);
        } else {
            waiting.push(n);
        }
    }
    let deadline = started + AGENT_SYNC_TIMEOUT;
    for n in waiting {
        let expected = expected(&n.name);
        while let Some(diff) = service_difference(&n.control_socket, &expected, removed) {
            if Instant::now() >= deadline {
                bail!(
                    "the switch of {} is not in step with the lab after {:?}: {diff}; see its \
                     agent's log {} and `podswitch agent status --status-file {}`",
                    n.name,
                    AGENT_SYNC_TIMEOUT,
                    paths.agent_log(&n.name).display(),
                    paths.agent_status_file(&n.name).display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(started.elapsed())
}

/// Stops an agent: SIGTERM (SIGKILL if `hard`), waits until it is gone.
pub fn stop_agent(pid: i32, hard: bool) {
    let p = Pid::from_raw(pid);
    let signal = if hard {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    if kill(p, signal).is_err() {
        return;
    }
    if !wait_for(Duration::from_secs(3), || !pid_alive(pid)) {
        let _ = kill(p, Signal::SIGKILL);
        wait_for(Duration::from_secs(2), || !pid_alive(pid));
    }
}

/// Kills agents of an earlier run of this lab that are still running
/// (found by their status files, and only if their command line names
/// this lab's manifest directory); returns how many.
pub fn kill_stale_agents(paths: &LabPaths) -> usize {
    let dir_arg = paths.manifest_dir();
    let dir_arg = dir_arg.as_os_str().as_encoded_bytes();
    let mut killed = 0;
    for entry in std::fs::read_dir(&paths.dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with("-agent.json") {
            continue;
        }
        let Ok(st) = status::read_status(&entry.path()) else {
            continue;
        };
        let pid = st.pid as i32;
        let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            c.split(|b| *b == 0).any(|a| a == dir_arg)
                && c.split(|b| *b == 0).any(|a| a == b"agent")
        });
        if ours && pid_alive(pid) {
            stop_agent(pid, true);
            killed += 1;
        }
    }
    killed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_config_reads_back_as_the_settings() {
        #[derive(serde::Deserialize)]
        struct File {
            services: ServiceSettings,
        }
        let settings = services::settings("10.244.0.0/16".parse().unwrap());
        let text = agent_config_toml(&settings);
        let back: File = toml::from_str(&text).unwrap();
        assert_eq!(back.services, settings);
    }
}
