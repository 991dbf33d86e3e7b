//! The lab's cluster: nodes (a network namespace, a switch process and an
//! agent process each), pods (a network namespace, a port on their node's
//! switch, and a workload process), and the state file that remembers them
//! between commands.
//!
//! The lab plays the Kubernetes control plane: `apply` and `delete`
//! validate, allocate (ClusterIPs, NodePorts, pod IPs) and write the
//! objects to the manifest directory; each node's agent carries them to
//! its switch (`agents.rs`). The lab itself still wires pods to switches
//! (`add_port`), as the CNI plugin does in a cluster.
//!
//! Layout on the machine, for a lab called `NAME` (all names carry the
//! prefix `psw-NAME-`, so labs never collide and a crashed one is found
//! and removed by `lab down`):
//!
//! ```text
//! /run/netns/psw-NAME-node-1          node namespace: the switch runs here
//! /run/netns/psw-NAME-<ns>-<pod>      pod namespace: eth0 is a tap of node-1's switch
//! /run/podswitch/lab/NAME/lab.json    lab state (nodes, pods, pids, IPs)
//! /run/podswitch/lab/NAME/node-1.sock switch control socket (0600)
//! /run/podswitch/lab/NAME/node-1/     switch state (survives switch restarts)
//! /run/podswitch/lab/NAME/manifests/  Nodes, Pods, Services: what the agents read
//! /run/podswitch/lab/NAME/agent.toml  the agents' service settings
//! /run/podswitch/lab/NAME/node-1-agent.json  node-1's agent status
//! /run/podswitch/lab/NAME/logs/       switch, agent and workload logs
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use std::net::IpAddr;
use std::os::fd::AsFd;

use ipnet::IpNet;
use podswitch_switch::control::api::{ClusterMode, Mac, PodSpec, Request};
use podswitch_switch::control::client;
use podswitch_switch::port::netlink::Netlink;
use podswitch_switch::port::netns;

use super::agents;
use super::services::{self, LabService, ServiceError, ServiceRequest};
use podswitch_agent::manifest::{self, LabPod, Object};

/// Where lab state lives.
pub const LAB_ROOT: &str = "/run/podswitch/lab";
/// The embedded default lab file.
pub const DEFAULT_LAB: &str = include_str!("../../configs/labs/default.yaml");
/// How long a switch may take to answer on its control socket after start.
const SWITCH_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The underlay router (the nodes' default gateway), on the underlay bridge.
pub const UNDERLAY_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 254);
/// The underlay's side of the link to the outside host.
pub const OUTSIDE_ROUTER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The outside host ("the internet"), TEST-NET-3.
pub const OUTSIDE_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

/// Node `index`'s underlay address: 198.18.0.index (RFC 2544 range).
pub fn underlay_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, index as u8)
}

/// A node's VTEP MAC: locally administered, derived from its underlay address.
pub fn vtep_mac(node: &NodeState) -> Mac {
    Mac::for_vtep(node.underlay_ip.unwrap_or(Ipv4Addr::UNSPECIFIED))
}

/// Writes a sysctl under /proc/sys inside a namespace.
fn set_sysctl(netns_path: &Path, key: &str, value: &str) -> anyhow::Result<()> {
    let key = key.to_string();
    let value = value.to_string();
    netns::run_in(netns_path, move || {
        std::fs::write(format!("/proc/sys/{key}"), &value)
            .with_context(|| format!("sysctl {key}={value}"))
    })??;
    Ok(())
}

/// The `kind: Lab` document of a lab file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabFile {
    pub api_version: String,
    pub kind: String,
    pub metadata: LabMeta,
    #[serde(default)]
    pub spec: LabSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabMeta {
    pub name: String,
}

/// Shape of the lab.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabSpec {
    /// Number of nodes (node-1 .. node-N).
    #[serde(default = "one")]
    pub nodes: usize,
    /// Cluster pod range; node i gets the i-th /24 of it.
    #[serde(default = "default_cluster_cidr", rename = "clusterCIDR")]
    pub cluster_cidr: Ipv4Net,
    /// Pod MTU.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// Worker threads per switch (0 = one per core).
    #[serde(default)]
    pub workers_per_switch: usize,
    /// How pod traffic crosses nodes: `native` or `vxlan`.
    #[serde(default)]
    pub mode: ClusterMode,
    /// VXLAN network identifier.
    #[serde(default = "one_u32")]
    pub vni: u32,
    /// VXLAN UDP port: 4789 (IANA) or 8472 (Linux/flannel).
    #[serde(default = "default_vxlan_port", rename = "vxlanPort")]
    pub vxlan_port: u16,
    /// Pod MTU; default: `mtu` (the underlay's) minus the encapsulation
    /// overhead (50 bytes for VXLAN over IPv4, 0 in native mode).
    #[serde(default, rename = "podMTU", skip_serializing_if = "Option::is_none")]
    pub pod_mtu: Option<u32>,
}

fn one_u32() -> u32 {
    1
}
fn default_vxlan_port() -> u16 {
    4789
}

/// Outer Ethernet (14) + IPv4 (20) + UDP (8) + VXLAN (8).
pub const VXLAN_OVERHEAD: u32 = 50;

impl LabSpec {
    /// The MTU pods get.
    pub fn effective_pod_mtu(&self) -> u32 {
        self.pod_mtu.unwrap_or(match self.mode {
            ClusterMode::Native => self.mtu,
            ClusterMode::Vxlan => self.mtu - VXLAN_OVERHEAD,
        })
    }
}

fn one() -> usize {
    1
}
fn default_cluster_cidr() -> Ipv4Net {
    "10.244.0.0/16".parse().expect("valid CIDR")
}
fn default_mtu() -> u32 {
    1500
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            nodes: 1,
            cluster_cidr: default_cluster_cidr(),
            mtu: default_mtu(),
            workers_per_switch: 0,
            mode: ClusterMode::Native,
            vni: 1,
            vxlan_port: default_vxlan_port(),
            pod_mtu: None,
        }
    }
}

/// A parsed lab file: the lab and the manifests to apply after `up`.
#[derive(Debug, Clone)]
pub struct LabDefinition {
    pub lab: LabFile,
    pub objects: Vec<Object>,
}

/// Splits a YAML stream at document markers (`---` lines).
fn split_yaml_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(String::new());
            let rest = line.strip_prefix("---").unwrap_or("").trim();
            if !rest.is_empty() && !rest.starts_with('#') {
                docs.last_mut().expect("non-empty").push_str(rest);
                docs.last_mut().expect("non-empty").push('\n');
            }
        } else {
            let d = docs.last_mut().expect("non-empty");
            d.push_str(line);
            d.push('\n');
        }
    }
    docs.into_iter()
        .filter(|d| {
            d.lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        })
        .collect()
}

/// Parses a lab file: a `kind: Lab` document, then Kubernetes manifests.
pub fn parse_lab(text: &str, source: &str) -> anyhow::Result<LabDefinition> {
    let docs = split_yaml_documents(text);
    let first = docs
        .first()
        .with_context(|| format!("{source}: empty lab file"))?;
    let lab: LabFile = serde_saphyr::from_str(first)
        .map_err(|e| anyhow::anyhow!("{source}: document 1 (kind: Lab): {e}"))?;
    if lab.kind != "Lab" {
        bail!(
            "{source}: document 1 must be kind: Lab, found kind: {}",
            lab.kind
        );
    }
    validate_lab_name(&lab.metadata.name).with_context(|| format!("{source}: metadata.name"))?;
    if lab.spec.nodes == 0 || lab.spec.nodes > 250 {
        bail!(
            "{source}: spec.nodes must be 1..=250, got {}",
            lab.spec.nodes
        );
    }
    if lab.spec.cluster_cidr.prefix_len() > 23 - (lab.spec.nodes as f64).log2().ceil() as u8 {
        bail!(
            "{source}: spec.clusterCIDR {} has no room for {} /24 node ranges",
            lab.spec.cluster_cidr,
            lab.spec.nodes + 1
        );
    }
    if !(576..=65535).contains(&lab.spec.mtu) {
        bail!(
            "{source}: spec.mtu must be 576..=65535, got {}",
            lab.spec.mtu
        );
    }
    let rest = docs[1..].join("---\n");
    let objects = manifest::parse_manifests(&rest, source)?;
    Ok(LabDefinition { lab, objects })
}

fn validate_lab_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.len() > 24
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || name.starts_with('-')
    {
        bail!("lab name {name:?} must be 1..=24 characters of a-z, 0-9 and '-'");
    }
    Ok(())
}

/// A node as remembered in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub netns: PathBuf,
    pub pod_cidr: Ipv4Net,
    /// The node's underlay address (its InternalIP), on `eth0` in its netns.
    #[serde(default)]
    pub underlay_ip: Option<Ipv4Addr>,
    pub control_socket: PathBuf,
    pub state_dir: PathBuf,
    pub switch_pid: Option<i32>,
    /// The node's agent (`podswitch agent files` in the node's netns).
    #[serde(default)]
    pub agent_pid: Option<i32>,
    pub created: String,
}

/// A pod as remembered in the state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub pod: LabPod,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
    pub workload_pid: Option<i32>,
    pub created: String,
    /// Set while the pod is being deleted: it drains (its endpoints are
    /// terminating, its workload still runs) until the deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion: Option<PodDeletion>,
}

impl PodState {
    pub fn key(&self) -> String {
        format!("{}/{}", self.pod.namespace, self.pod.name)
    }
}

/// How long a new pod's workload may take to listen on its ports.
const WORKLOAD_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until every TCP port in `ports` accepts a connection on the
/// loopback of the namespace at `netns_path` (a TCP readiness probe), the
/// workload `pid` has exited, or `timeout` has passed (logged: the pod is
/// then published as it is, as before).
fn wait_listening(netns_path: &Path, ports: &[u16], pid: i32, timeout: Duration) {
    if ports.is_empty() {
        return;
    }
    let ports = ports.to_vec();
    let probe = netns::run_in(netns_path, move || {
        let deadline = Instant::now() + timeout;
        let mut waiting = ports;
        while !waiting.is_empty() && Instant::now() < deadline && pid_alive(pid) {
            waiting.retain(|&port| {
                let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err()
            });
            if !waiting.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        waiting
    });
    match probe {
        Ok(waiting) if waiting.is_empty() => {}
        Ok(waiting) => {
            tracing::warn!(
                ?waiting,
                pid,
                "workload not listening on these ports yet; published anyway"
            )
        }
        Err(e) => tracing::warn!(error = %e, "cannot probe the workload's ports"),
    }
}

/// A pod's graceful deletion, as Kubernetes records it in
/// `metadata.deletionTimestamp` and `deletionGracePeriodSeconds`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodDeletion {
    /// When the deletion was asked for (RFC 3339).
    pub requested: String,
    /// The grace period it got, in seconds.
    pub grace_period_seconds: u32,
    /// When the pod is removed, in milliseconds since the Unix epoch.
    pub deadline_unix_ms: u64,
}

/// The whole lab state file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub spec: LabSpec,
    pub nodes: Vec<NodeState>,
    /// By `namespace/name`.
    pub pods: BTreeMap<String, PodState>,
    /// Applied objects other than Pods and Services (Deployments), by
    /// `kind/namespace/name`.
    #[serde(default)]
    pub objects: BTreeMap<String, serde_json::Value>,
    /// Services with their allocated ClusterIPs and NodePorts, by
    /// `namespace/name`.
    #[serde(default)]
    pub services: BTreeMap<String, LabService>,
}

impl LabState {
    /// A Service by `name` or `namespace/name`.
    pub fn service(&self, name: &str) -> Option<&LabService> {
        if name.contains('/') {
            self.services.get(name)
        } else {
            self.services.get(&format!("default/{name}"))
        }
    }
}

/// Paths of one lab.
#[derive(Debug, Clone)]
pub struct LabPaths {
    pub name: String,
    pub dir: PathBuf,
}

impl LabPaths {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        validate_lab_name(name)?;
        Ok(LabPaths {
            name: name.to_string(),
            dir: Path::new(LAB_ROOT).join(name),
        })
    }
    /// Prefix of every namespace this lab creates.
    pub fn prefix(&self) -> String {
        format!("psw-{}-", self.name)
    }
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("lab.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.dir.join("logs")
    }
    fn lock(&self) -> anyhow::Result<Flock<File>> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(".lock"))
            .context("opening lab lock")?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow::anyhow!("locking lab {}: {e}", self.name))
    }
    pub fn load(&self) -> anyhow::Result<Option<LabState>> {
        match std::fs::read(self.state_file()) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| {
                format!("parsing {}", self.state_file().display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.state_file().display())),
        }
    }
    fn save(&self, st: &LabState) -> anyhow::Result<()> {
        let tmp = self.dir.join("lab.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(st)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.state_file()).context("saving lab state")?;
        Ok(())
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_rfc3339() -> String {
    rfc3339(unix_ms() / 1000)
}

/// `secs` since the Unix epoch as RFC 3339 UTC (`2025-01-31T12:00:00Z`).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Whether a process is alive (exists and is not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

fn stop_pid(pid: i32, grace: Duration) {
    let p = Pid::from_raw(pid);
    if kill(p, Signal::SIGTERM).is_err() {
        return;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !pid_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(p, Signal::SIGKILL);
}

/// Waits until `cond` holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lab: state plus the operations on it. Every operation takes the
/// lab's lock, so concurrent `lab` commands serialize.
pub struct Lab {
    paths: LabPaths,
    exe: PathBuf,
    wait_for_agents: bool,
}

/// What `restart_switch` and `restart_agent` did.
#[derive(Debug, Clone, Copy)]
pub struct RestartReport {
    pub pid: i32,
    /// From the restarted process being up to the switch holding the
    /// lab's Services again; `None` when not waited for.
    pub resynced_in: Option<Duration>,
}

impl Lab {
    /// A handle on lab `name`; `exe` is the podswitch binary to start
    /// switches and workloads with.
    pub fn new(name: &str, exe: PathBuf) -> anyhow::Result<Self> {
        Ok(Lab {
            paths: LabPaths::new(name)?,
            exe,
            wait_for_agents: true,
        })
    }

    /// Whether `apply`, `delete` and the restarts wait until the agents
    /// brought every switch in step (the default), or return once the
    /// manifests are written (as `kubectl apply` does).
    pub fn set_wait_for_agents(&mut self, wait: bool) {
        self.wait_for_agents = wait;
    }

    pub fn paths(&self) -> &LabPaths {
        &self.paths
    }

    /// The current state, if the lab is up.
    pub fn state(&self) -> anyhow::Result<Option<LabState>> {
        self.paths.load()
    }

    fn require_state(&self) -> anyhow::Result<LabState> {
        self.paths
            .load()?
            .with_context(|| format!("lab {} is not up (run `podswitch lab up`)", self.paths.name))
    }

    /// Brings the lab up: nodes, switches, then the manifests of the lab
    /// file. On failure everything made so far is torn down.
    pub fn up(&self, def: &LabDefinition) -> anyhow::Result<LabState> {
        {
            let _lock = self.paths.lock()?;
            if let Some(st) = self.paths.load()? {
                bail!("lab {} is already up with {} node(s); run `podswitch lab down --name {}` first", st.name, st.nodes.len(), st.name);
            }
            // Leftovers of a crashed run with this name.
            self.cleanup_leftovers();
            let mut st = LabState {
                name: self.paths.name.clone(),
                spec: def.lab.spec.clone(),
                nodes: Vec::new(),
                pods: BTreeMap::new(),
                objects: BTreeMap::new(),
                services: BTreeMap::new(),
            };
            std::fs::create_dir_all(self.paths.logs()).context("creating lab log dir")?;
            let result = (|| -> anyhow::Result<()> {
                self.build_underlay(&st.spec)?;
                for i in 1..=def.lab.spec.nodes {
                    let node = self.start_node(&st.spec, i)?;
                    st.nodes.push(node);
                    self.paths.save(&st)?;
                }
                // The Nodes (every switch learns the others from them) and
                // the settings, then one agent per node.
                agents::prepare(&self.paths, &st)?;
                for i in 0..st.nodes.len() {
                    let pid = agents::spawn_agent(&self.paths, &self.exe, &st.nodes[i])?;
                    st.nodes[i].agent_pid = Some(pid);
                    self.paths.save(&st)?;
                }
                for n in &st.nodes {
                    let pid = n.agent_pid.context("agent not started")?;
                    agents::wait_full_sync(&self.paths, n, pid, 0)?;
                }
                Ok(())
            })();
            if let Err(e) = result {
                drop(_lock);
                let _ = self.down();
                return Err(e);
            }
            self.paths.save(&st)?;
        }
        if !def.objects.is_empty() {
            if let Err(e) = self.apply(&def.objects) {
                let _ = self.down();
                return Err(e.context("applying the lab file's manifests"));
            }
        }
        self.require_state()
    }

    fn node_cidr(spec: &LabSpec, index: usize) -> anyhow::Result<Ipv4Net> {
        spec.cluster_cidr
            .subnets(24)
            .context("cluster CIDR narrower than /24")?
            .nth(index)
            .with_context(|| {
                format!(
                    "cluster CIDR {} has no /24 number {index}",
                    spec.cluster_cidr
                )
            })
    }

    fn start_node(&self, spec: &LabSpec, index: usize) -> anyhow::Result<NodeState> {
        let name = format!("node-{index}");
        let ns_name = format!("{}{}", self.paths.prefix(), name);
        let netns_path =
            netns::create(&ns_name).with_context(|| format!("creating netns {ns_name}"))?;
        podswitch_switch::port::netlink::Netlink::in_netns(&netns_path)
            .and_then(|nl| nl.set_lo_up())
            .with_context(|| format!("bringing lo up in {ns_name}"))?;
        let pod_cidr = Self::node_cidr(spec, index)?;
        let control_socket = self.paths.dir.join(format!("{name}.sock"));
        let state_dir = self.paths.dir.join(&name);
        let mut node = NodeState {
            name: name.clone(),
            netns: netns_path,
            pod_cidr,
            control_socket,
            state_dir,
            switch_pid: None,
            agent_pid: None,
            created: now_rfc3339(),
            underlay_ip: Some(underlay_ip(index)),
        };
        self.attach_node_to_underlay(&node, index)?;
        node.switch_pid = Some(self.spawn_switch(&node, spec)?);
        Ok(node)
    }

    /// The underlay: a namespace with a bridge (the nodes' L2 segment,
    /// 198.18.0.0/24, router .254) that also routes to the outside host's
    /// namespace (203.0.113.0/24), like a cloud subnet and its gateway.
    fn build_underlay(&self, spec: &LabSpec) -> anyhow::Result<()> {
        let u =
            netns::create(&self.underlay_netns_name()).context("creating the underlay netns")?;
        let o = netns::create(&self.outside_netns_name()).context("creating the outside netns")?;
        let un = Netlink::in_netns(&u)?;
        un.set_lo_up()?;
        un.create_bridge("br0")?;
        let br = un.link_index("br0")?.context("br0 vanished")?;
        un.add_address(br, IpAddr::V4(UNDERLAY_ROUTER), 24)?;
        un.link_set_up(br)?;
        let ofd = netns::open(&o)?;
        un.create_veth_peer_in("outside", "eth0", ofd.as_fd())?;
        let ol = un.link_index("outside")?.context("outside link vanished")?;
        un.add_address(ol, IpAddr::V4(OUTSIDE_ROUTER), 24)?;
        un.link_set_up(ol)?;
        let on = Netlink::in_netns(&o)?;
        on.set_lo_up()?;
        let oe = on.link_index("eth0")?.context("outside eth0 vanished")?;
        on.add_address(oe, IpAddr::V4(OUTSIDE_HOST), 24)?;
        on.link_set_up(oe)?;
        on.add_route(
            "0.0.0.0/0".parse().expect("valid"),
            Some(IpAddr::V4(OUTSIDE_ROUTER)),
            None,
        )?;
        set_sysctl(&u, "net/ipv4/ip_forward", "1")?;
        // In native mode the underlay knows where pod CIDRs live, as a VPC
        // route table does; in VXLAN mode pod addresses never touch it.
        if spec.mode == ClusterMode::Native {
            for i in 1..=spec.nodes {
                un.add_route(
                    IpNet::V4(Self::node_cidr(spec, i)?),
                    Some(IpAddr::V4(underlay_ip(i))),
                    None,
                )?;
            }
        }
        Ok(())
    }

    fn attach_node_to_underlay(&self, node: &NodeState, index: usize) -> anyhow::Result<()> {
        let u = netns::path(&self.underlay_netns_name());
        let un = Netlink::in_netns(&u)?;
        let nfd = netns::open(&node.netns)?;
        let port = format!("n{index}");
        un.create_veth_peer_in(&port, "eth0", nfd.as_fd())
            .with_context(|| format!("wiring {} to the underlay", node.name))?;
        let pi = un.link_index(&port)?.context("underlay port vanished")?;
        un.link_set_master(pi, un.link_index("br0")?.context("br0 vanished")?)?;
        un.link_set_up(pi)?;
        let nn = Netlink::in_netns(&node.netns)?;
        let e = nn.link_index("eth0")?.context("node eth0 vanished")?;
        nn.add_address(e, IpAddr::V4(underlay_ip(index)), 24)?;
        nn.link_set_up(e)?;
        nn.add_route(
            "0.0.0.0/0".parse().expect("valid"),
            Some(IpAddr::V4(UNDERLAY_ROUTER)),
            None,
        )?;
        Ok(())
    }

    /// The underlay namespace's name.
    pub fn underlay_netns_name(&self) -> String {
        format!("{}underlay", self.paths.prefix())
    }

    /// The outside host's namespace's name.
    pub fn outside_netns_name(&self) -> String {
        format!("{}outside", self.paths.prefix())
    }

    /// Starts (or restarts) a node's switch and waits until it answers.
    fn spawn_switch(&self, node: &NodeState, spec: &LabSpec) -> anyhow::Result<i32> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.paths.logs().join(format!("{}-switch.log", node.name)))
            .context("opening switch log")?;
        let mut cmd = Command::new(&self.exe);
        cmd.args([
            "switch",
            "run",
            "--node",
            &node.name,
            "--pod-cidr",
            &node.pod_cidr.to_string(),
            "--mtu",
            &spec.effective_pod_mtu().to_string(),
            "--vni",
            &spec.vni.to_string(),
            "--vxlan-port",
            &spec.vxlan_port.to_string(),
            "--workers",
            &spec.workers_per_switch.to_string(),
            "--mode",
            match spec.mode {
                ClusterMode::Native => "native",
                ClusterMode::Vxlan => "vxlan",
            },
        ])
        .args(
            node.underlay_ip
                .map(|ip| vec!["--underlay-ip".to_string(), ip.to_string()])
                .unwrap_or_default(),
        )
        .arg("--control-socket")
        .arg(&node.control_socket)
        .arg("--state-dir")
        .arg(&node.state_dir)
        .arg("--netns")
        .arg(&node.netns)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the switch of {}", node.name))?;
        let pid = child.id() as i32;
        // The child outlives this command; it is reaped by init once we exit.
        std::mem::forget(child);
        let sock = node.control_socket.clone();
        let ok = wait_for(SWITCH_START_TIMEOUT, || {
            if !pid_alive(pid) {
                return true;
            }
            client::call::<podswitch_api::Hello>(&sock, &Request::Hello).is_ok()
        });
        if !ok || !pid_alive(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            let log = std::fs::read_to_string(
                self.paths.logs().join(format!("{}-switch.log", node.name)),
            )
            .unwrap_or_default();
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .take(10)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            bail!(
                "switch of {} did not come up within {:?}; its log ends:\n{}",
                node.name,
                SWITCH_START_TIMEOUT,
                tail.join("\n")
            );
        }
        Ok(pid)
    }

    /// Restarts a node's switch (for tests of restart behaviour): kills it
    /// (SIGKILL if `hard`) and starts a new one on the same state.
    pub fn restart_switch(&self, node_name: &str, hard: bool) -> anyhow::Result<RestartReport> {
        let _lock = self.paths.lock()?;
        let mut st = self.require_state()?;
        let idx = st
            .nodes
            .iter()
            .position(|n| n.name == node_name)
            .with_context(|| format!("no node {node_name}"))?;
        if let Some(pid) = st.nodes[idx].switch_pid {
            if hard {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                wait_for(Duration::from_secs(5), || !pid_alive(pid));
            } else {
                stop_pid(pid, Duration::from_secs(5));
            }
        }
        let syncs = agents::full_syncs(&self.paths, node_name).unwrap_or(0);
        let pid = self.spawn_switch(&st.nodes[idx], &st.spec.clone())?;
        let up = Instant::now();
        st.nodes[idx].switch_pid = Some(pid);
        self.paths.save(&st)?;
        // The switch restores its pods from its own state; the nodes and
        // Services are the control plane's: its agent sees the new switch
        // and gives them again (a full sync), as kube-proxy resyncs.
        let node = &st.nodes[idx];
        let resynced_in = match (
            self.wait_for_agents,
            node.agent_pid.filter(|p| pid_alive(*p)),
        ) {
            (true, Some(agent)) => {
                agents::wait_full_sync(&self.paths, node, agent, syncs)?;
                agents::wait_switches(
                    &self.paths,
                    &st,
                    std::slice::from_ref(node),
                    &BTreeSet::new(),
                )?;
                Some(up.elapsed())
            }
            (true, None) => {
                tracing::warn!(node = %node.name, "agent not running: the restarted switch has no Services until `podswitch lab restart-agent {}`", node.name);
                None
            }
            (false, _) => None,
        };
        Ok(RestartReport { pid, resynced_in })
    }

    /// Restarts a node's agent (for tests of fail-static and resync):
    /// stops it (SIGKILL if `hard`; a dead one is just started) and starts
    /// a new one, which makes a full sync of the switch.
    pub fn restart_agent(&self, node_name: &str, hard: bool) -> anyhow::Result<RestartReport> {
        let _lock = self.paths.lock()?;
        let mut st = self.require_state()?;
        let idx = st
            .nodes
            .iter()
            .position(|n| n.name == node_name)
            .with_context(|| format!("no node {node_name}"))?;
        if let Some(pid) = st.nodes[idx].agent_pid.filter(|p| pid_alive(*p)) {
            agents::stop_agent(pid, hard);
        }
        let started = Instant::now();
        let pid = agents::spawn_agent(&self.paths, &self.exe, &st.nodes[idx])?;
        st.nodes[idx].agent_pid = Some(pid);
        self.paths.save(&st)?;
        let node = &st.nodes[idx];
        let resynced_in = match self.wait_for_agents && node.switch_pid.is_some_and(pid_alive) {
            true => {
                agents::wait_full_sync(&self.paths, node, pid, 0)?;
                agents::wait_switches(
                    &self.paths,
                    &st,
                    std::slice::from_ref(node),
                    &BTreeSet::new(),
                )?;
                Some(started.elapsed())
            }
            false => None,
        };
        Ok(RestartReport { pid, resynced_in })
    }

    fn pod_netns_name(&self, pod: &LabPod) -> String {
        format!("{}{}-{}", self.paths.prefix(), pod.namespace, pod.name)
    }

    /// Applies manifests as `kubectl apply` does against a control plane:
    /// Services get (or keep) their ClusterIP and NodePorts; pods that do
    /// not exist are created, pods whose spec changed are re-created, and
    /// pods a Deployment no longer has (scaled down, or replaced by a new
    /// template) are deleted gracefully; every switch then gets the new
    /// service table. Validation, Service allocation and pod placement
    /// happen before any change, so a bad object changes nothing; a failure
    /// while creating rolls back the pods this call created. Returns once
    /// the deleted pods are gone (after their grace period).
    pub fn apply(&self, objects: &[Object]) -> anyhow::Result<ApplyReport> {
        let _lock = self.paths.lock()?;
        let mut st = self.require_state()?;
        self.reap_expired(&mut st)?;
        let services_before: BTreeSet<String> = st.services.keys().cloned().collect();
        let pods = manifest::expand_pods(objects)?;
        let next_services = plan_services(&st, objects)?;
        let mut report = ApplyReport::default();
        // Pods the applied Deployments no longer have.
        let wanted: BTreeSet<String> = pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let scaled_down: Vec<String> = st
            .pods
            .values()
            .filter(|p| p.deletion.is_none() && !wanted.contains(&p.key()))
            .filter(|p| {
                objects.iter().any(|o| {
                    matches!(o, Object::Deployment(_))
                        && o.namespace() == p.pod.namespace
                        && p.pod.owner.as_deref() == Some(o.name())
                })
            })
            .map(|p| p.key())
            .collect();
        // Plan: placement and addresses for new pods.
        let mut used: BTreeMap<String, BTreeSet<Ipv4Addr>> = st
            .nodes
            .iter()
            .map(|n| (n.name.clone(), BTreeSet::new()))
            .collect();
        let mut load: BTreeMap<String, usize> =
            st.nodes.iter().map(|n| (n.name.clone(), 0)).collect();
        for p in st.pods.values() {
            used.entry(p.node.clone()).or_default().insert(p.ip);
            *load.entry(p.node.clone()).or_default() += 1;
        }
        let mut plan: Vec<(LabPod, String, Ipv4Addr)> = Vec::new();
        let mut recreate: Vec<String> = Vec::new();
        for pod in pods {
            let key = format!("{}/{}", pod.namespace, pod.name);
            if let Some(cur) = st.pods.get(&key) {
                if cur.pod == pod && cur.deletion.is_none() {
                    report.unchanged.push(key);
                    continue;
                }
                // Kubernetes refuses most pod updates; the lab replaces the
                // pod at once (a terminating one too: its name is wanted).
                recreate.push(key.clone());
            }
            let node = match &pod.node_name {
                Some(n) => {
                    if !st.nodes.iter().any(|x| &x.name == n) {
                        bail!(
                            "pod {key}: spec.nodeName {n:?} is not a node of lab {} (nodes: {})",
                            st.name,
                            st.nodes
                                .iter()
                                .map(|n| n.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    n.clone()
                }
                None => load
                    .iter()
                    .min_by_key(|(name, n)| (**n, (*name).clone()))
                    .map(|(n, _)| n.clone())
                    .context("lab has no nodes")?,
            };
            let cidr = st
                .nodes
                .iter()
                .find(|n| n.name == node)
                .map(|n| n.pod_cidr)
                .context("node vanished")?;
            let taken = used.entry(node.clone()).or_default();
            // .1 is the gateway; the network and broadcast addresses are not hosts.
            let ip = cidr
                .hosts()
                .skip(1)
                .find(|ip| !taken.contains(ip))
                .with_context(|| {
                    format!(
                        "pod {key}: pod CIDR {cidr} of {node} is exhausted ({} pods)",
                        taken.len()
                    )
                })?;
            taken.insert(ip);
            *load.entry(node.clone()).or_default() += 1;
            plan.push((pod, node, ip));
        }
        for key in &recreate {
            if let Some(old) = st.pods.remove(key) {
                self.delete_pod(&st, &old);
            }
        }
        let mut created: Vec<String> = Vec::new();
        for (pod, node, ip) in plan {
            let key = format!("{}/{}", pod.namespace, pod.name);
            match self.create_pod(&st, &pod, &node, ip) {
                Ok(ps) => {
                    st.pods.insert(key.clone(), ps);
                    created.push(key);
                }
                Err(e) => {
                    for k in &created {
                        if let Some(p) = st.pods.remove(k) {
                            self.delete_pod(&st, &p);
                        }
                    }
                    self.paths.save(&st)?;
                    if !recreate.is_empty() {
                        // The re-created pods' old endpoints are gone.
                        let _ = agents::write_manifests(&self.paths, &st);
                    }
                    return Err(e.context(format!(
                        "creating pod {key} (rolled back the {} pod(s) this apply created)",
                        created.len()
                    )));
                }
            }
        }
        for o in objects {
            if matches!(o, Object::Deployment(_)) {
                let v = object_json(o)?;
                st.objects
                    .insert(format!("{}/{}/{}", o.kind(), o.namespace(), o.name()), v);
            }
        }
        st.services = next_services;
        report.created = created;
        self.paths.save(&st)?;
        let removed: BTreeSet<String> = services_before
            .into_iter()
            .filter(|k| !st.services.contains_key(k))
            .collect();
        let published = self.publish(&st, &removed);
        if !scaled_down.is_empty() {
            report.deleted = self.drain_and_remove(&mut st, &scaled_down, None, &removed)?;
        }
        published?;
        Ok(report)
    }

    /// Writes the lab's objects for the agents and, unless told not to,
    /// waits until they brought every switch in step (`agents.rs`):
    /// holding the lab's Services, none of `removed`. A node whose switch
    /// or agent is not running is skipped with a warning.
    fn publish(&self, st: &LabState, removed: &BTreeSet<String>) -> anyhow::Result<()> {
        agents::write_manifests(&self.paths, st)?;
        if self.wait_for_agents {
            let took = agents::wait_switches(&self.paths, st, &st.nodes, removed)?;
            tracing::debug!(
                took_ms = took.as_millis() as u64,
                "every running agent brought its switch in step"
            );
        }
        Ok(())
    }

    /// Deletes pods as Kubernetes does, so that Services drain: each is
    /// marked terminating (its endpoints turn `ready: false, terminating:
    /// true`, and every switch is told), keeps running for its grace period
    /// (`grace_override`, else its own), then is removed (workload stopped,
    /// port and namespace deleted, IP released) and the switches are told
    /// again. Returns when all are gone, with their keys. A pod already
    /// terminating keeps its deadline.
    fn drain_and_remove(
        &self,
        st: &mut LabState,
        keys: &[String],
        grace_override: Option<u32>,
        removed: &BTreeSet<String>,
    ) -> anyhow::Result<Vec<String>> {
        let now = unix_ms();
        let mut draining = false;
        for key in keys {
            let Some(p) = st.pods.get_mut(key) else {
                continue;
            };
            let grace = grace_override.unwrap_or_else(|| services::grace_period(&p.pod));
            let d = p.deletion.get_or_insert_with(|| PodDeletion {
                requested: rfc3339(now / 1000),
                grace_period_seconds: grace,
                deadline_unix_ms: now + u64::from(grace) * 1000,
            });
            draining |= d.deadline_unix_ms > now;
        }
        self.paths.save(st)?;
        let mut first_err: Option<anyhow::Error> = None;
        if draining {
            if let Err(e) = self.publish(st, removed) {
                first_err.get_or_insert(e);
            }
        }
        let mut deleted = Vec::new();
        loop {
            let now = unix_ms();
            let mut next_deadline: Option<u64> = None;
            let mut due = Vec::new();
            for key in keys {
                if let Some(d) = st.pods.get(key).and_then(|p| p.deletion.as_ref()) {
                    if d.deadline_unix_ms <= now {
                        due.push(key.clone());
                    } else {
                        let at = d.deadline_unix_ms;
                        next_deadline = Some(next_deadline.map_or(at, |n| n.min(at)));
                    }
                }
            }
            if !due.is_empty() {
                for key in due {
                    if let Some(p) = st.pods.remove(&key) {
                        self.delete_pod(st, &p);
                        deleted.push(key);
                    }
                }
                self.paths.save(st)?;
                if let Err(e) = self.publish(st, removed) {
                    first_err.get_or_insert(e);
                }
            }
            match next_deadline {
                Some(at) => {
                    std::thread::sleep(Duration::from_millis(at.saturating_sub(unix_ms()).max(1)))
                }
                None => break,
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(deleted),
        }
    }

    /// Removes pods whose deletion deadline passed while no command was
    /// there to finish it (an interrupted `lab delete`).
    fn reap_expired(&self, st: &mut LabState) -> anyhow::Result<()> {
        let now = unix_ms();
        let expired: Vec<String> = st
            .pods
            .values()
            .filter(|p| {
                p.deletion
                    .as_ref()
                    .is_some_and(|d| d.deadline_unix_ms <= now)
            })
            .map(|p| p.key())
            .collect();
        if !expired.is_empty() {
            self.drain_and_remove(st, &expired, None, &BTreeSet::new())?;
        }
        Ok(())
    }

    fn create_pod(
        &self,
        st: &LabState,
        pod: &LabPod,
        node: &str,
        ip: Ipv4Addr,
    ) -> anyhow::Result<PodState> {
        let key = format!("{}/{}", pod.namespace, pod.name);
        let n = st
            .nodes
            .iter()
            .find(|n| n.name == node)
            .context("node vanished")?;
        let ns_name = self.pod_netns_name(pod);
        if netns::exists(&ns_name) {
            let _ = netns::delete(&ns_name);
        }
        let netns_path =
            netns::create(&ns_name).with_context(|| format!("creating netns {ns_name}"))?;
        let result = (|| -> anyhow::Result<PodState> {
            let spec = PodSpec {
                name: key.clone(),
                netns: netns_path.clone(),
                ifname: "eth0".into(),
                ipv4: Some(ip),
                ipv6: None,
                mac: None,
                mtu: None,
            };
            client::call::<podswitch_api::PortInfo>(
                &n.control_socket,
                &Request::AddPort(podswitch_api::AddPortArgs { pod: spec }),
            )
            .with_context(|| format!("switch of {node}: add_port"))?;
            let pid = self.spawn_workload(pod, &netns_path)?;
            Ok(PodState {
                pod: pod.clone(),
                node: node.to_string(),
                ip,
                netns: netns_path.clone(),
                workload_pid: Some(pid),
                created: now_rfc3339(),
                deletion: None,
            })
        })();
        if result.is_err() {
            let _ = client::call::<()>(
                &n.control_socket,
                &Request::RemovePort(podswitch_api::RemovePortArgs { name: key }),
            );
            kill_netns_processes(&netns_path);
            let _ = netns::delete(&ns_name);
        }
        result
    }

    fn spawn_workload(&self, pod: &LabPod, netns_path: &Path) -> anyhow::Result<i32> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(
                self.paths
                    .logs()
                    .join(format!("pod-{}-{}.log", pod.namespace, pod.name)),
            )
            .context("opening workload log")?;
        let mut cmd = Command::new(&self.exe);
        cmd.args(["lab", "pod-run", "--pod", &pod.name])
            .arg("--netns")
            .arg(netns_path);
        if let Some(command) = pod.containers.iter().find_map(|c| c.command.clone()) {
            cmd.arg("--").args(command);
        } else {
            let (tcp, udp) = manifest::echo_ports(pod);
            for p in tcp {
                cmd.args(["--tcp", &p.to_string()]);
            }
            for p in udp {
                cmd.args(["--udp", &p.to_string()]);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the workload of pod {}", pod.name))?;
        let pid = child.id() as i32;
        std::mem::forget(child);
        // Ready only once it listens, as a kubelet's TCP readiness probe
        // would have it: a pod published as an endpoint while its server
        // is still starting refuses the connections sent to it.
        if pod.containers.iter().all(|c| c.command.is_none()) {
            let (tcp, _) = manifest::echo_ports(pod);
            wait_listening(netns_path, &tcp, pid, WORKLOAD_READY_TIMEOUT);
        }
        Ok(pid)
    }

    fn delete_pod(&self, st: &LabState, p: &PodState) {
        if let Some(pid) = p.workload_pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Some(n) = st.nodes.iter().find(|n| n.name == p.node) {
            if let Err(e) = client::call::<()>(
                &n.control_socket,
                &Request::RemovePort(podswitch_api::RemovePortArgs { name: p.key() }),
            ) {
                tracing::warn!(pod = %p.key(), error = %e, "switch did not remove the port");
            }
        }
        kill_netns_processes(&p.netns);
        if let Some(name) = p.netns.file_name().and_then(|n| n.to_str()) {
            if let Err(e) = netns::delete(name) {
                tracing::warn!(pod = %p.key(), error = %e, "deleting pod netns");
            }
        }
    }

    /// Deletes what the manifests name: Pods by name, a Deployment's pods,
    /// Services (their ClusterIP and NodePorts are released) and recorded
    /// objects. Pods are deleted gracefully (see `drain_and_remove`), with
    /// `grace_period` seconds if given (0: at once) instead of their own;
    /// this returns when they are gone. Returns the deleted pod keys.
    pub fn delete(
        &self,
        objects: &[Object],
        grace_period: Option<u32>,
    ) -> anyhow::Result<Vec<String>> {
        let _lock = self.paths.lock()?;
        let mut st = self.require_state()?;
        self.reap_expired(&mut st)?;
        let mut doomed: Vec<String> = Vec::new();
        let mut removed = BTreeSet::new();
        for o in objects {
            match o {
                Object::Pod(_) => doomed.push(format!("{}/{}", o.namespace(), o.name())),
                Object::Deployment(_) => doomed.extend(
                    st.pods
                        .values()
                        .filter(|p| {
                            p.pod.namespace == o.namespace()
                                && p.pod.owner.as_deref() == Some(o.name())
                        })
                        .map(|p| p.key()),
                ),
                Object::Service(_) => {
                    let key = format!("{}/{}", o.namespace(), o.name());
                    if st.services.remove(&key).is_some() {
                        removed.insert(key);
                    }
                }
            }
            st.objects
                .remove(&format!("{}/{}/{}", o.kind(), o.namespace(), o.name()));
        }
        let mut seen = BTreeSet::new();
        doomed.retain(|k| st.pods.contains_key(k) && seen.insert(k.clone()));
        self.paths.save(&st)?;
        if doomed.is_empty() {
            if !removed.is_empty() {
                self.publish(&st, &removed)?;
            }
            return Ok(Vec::new());
        }
        self.drain_and_remove(&mut st, &doomed, grace_period, &removed)
    }

    /// Removes everything of this lab: processes, namespaces, state. Works
    /// from the state file and, for what a crash left unrecorded, from the
    /// name prefix.
    pub fn down(&self) -> anyhow::Result<DownReport> {
        let _lock = self.paths.lock()?;
        let mut report = DownReport::default();
        if let Ok(Some(st)) = self.paths.load() {
            for p in st.pods.values() {
                if let Some(pid) = p.workload_pid {
                    if pid_alive(pid) {
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        report.processes += 1;
                    }
                }
            }
            // Agents first: a switch going away is no news for them.
            for n in &st.nodes {
                if let Some(pid) = n.agent_pid.filter(|p| pid_alive(*p)) {
                    agents::stop_agent(pid, false);
                    report.processes += 1;
                }
            }
            for n in &st.nodes {
                if let Some(pid) = n.switch_pid {
                    if pid_alive(pid) {
                        stop_pid(pid, Duration::from_secs(3));
                        report.processes += 1;
                    }
                }
            }
        }
        let (procs, nss) = self.cleanup_leftovers();
        report.processes += procs;
        report.namespaces += nss;
        let _ = std::fs::remove_file(self.paths.state_file());
        for entry in std::fs::read_dir(&self.paths.dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let p = entry.path();
            if p.file_name().and_then(|n| n.to_str()) == Some(".lock") {
                continue;
            }
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(&p);
            } else {
                let _ = std::fs::remove_file(&p);
            }
        }
        let _ = std::fs::remove_file(self.paths.dir.join(".lock"));
        let _ = std::fs::remove_dir(&self.paths.dir);
        Ok(report)
    }

    /// Kills processes in, and deletes, every namespace with this lab's prefix.
    fn cleanup_leftovers(&self) -> (usize, usize) {
        // Agents of a crashed run that are still about (they run in their
        // node's netns, whose processes are killed below, but one that
        // had not entered it yet would not be found there).
        let mut procs = agents::kill_stale_agents(&self.paths);
        let mut count = 0;
        let names = netns::list_with_prefix(&self.paths.prefix());
        // Pods first, nodes last: a node's switch may still hold pod taps.
        let infra = |n: &String| n.ends_with("underlay") || n.ends_with("outside");
        let (nodes, pods): (Vec<_>, Vec<_>) = names
            .into_iter()
            .filter(|n| !infra(n))
            .partition(|n| n.contains("-node-"));
        let rest: Vec<String> = netns::list_with_prefix(&self.paths.prefix())
            .into_iter()
            .filter(infra)
            .collect();
        for name in pods.into_iter().chain(nodes).chain(rest) {
            procs += kill_netns_processes(&netns::path(&name));
            if netns::delete(&name).is_ok() {
                count += 1;
            }
        }
        (procs, count)
    }

    /// Resolves a pod by `name` or `namespace/name`.
    pub fn find_pod(&self, name: &str) -> anyhow::Result<PodState> {
        let st = self.require_state()?;
        let key = if name.contains('/') {
            name.to_string()
        } else {
            format!("default/{name}")
        };
        if let Some(p) = st.pods.get(&key) {
            return Ok(p.clone());
        }
        let matches: Vec<&PodState> = st.pods.values().filter(|p| p.pod.name == name).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => bail!(
                "no pod {name:?} in lab {} (pods: {})",
                st.name,
                st.pods
                    .values()
                    .map(|p| p.pod.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => bail!("pod name {name:?} is ambiguous; use namespace/name"),
        }
    }
}

/// Kills every process inside a namespace; returns how many.
pub fn kill_netns_processes(path: &Path) -> usize {
    let me = std::process::id() as i32;
    let pids: Vec<i32> = netns::pids_in(path)
        .into_iter()
        .filter(|p| *p != me)
        .collect();
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    for pid in &pids {
        wait_for(Duration::from_secs(2), || !pid_alive(*pid));
    }
    pids.len()
}

fn object_json(o: &Object) -> anyhow::Result<serde_json::Value> {
    Ok(match o {
        Object::Pod(p) => serde_json::to_value(p)?,
        Object::Deployment(d) => serde_json::to_value(d)?,
        Object::Service(s) => serde_json::to_value(s)?,
    })
}

/// What `apply` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ApplyReport {
    pub created: Vec<String>,
    pub unchanged: Vec<String>,
    /// Pods deleted (after their grace period) because a Deployment no
    /// longer has them.
    pub deleted: Vec<String>,
}

/// The Services the lab has after applying `objects`: the API server's
/// validation and allocation for every Service among them, all or nothing.
fn plan_services(
    st: &LabState,
    objects: &[Object],
) -> anyhow::Result<BTreeMap<String, LabService>> {
    let now = now_rfc3339();
    let mut requests = Vec::new();
    for o in objects {
        if let Object::Service(svc) = o {
            let r =
                ServiceRequest::from_manifest(svc, o.namespace(), o.name(), &now).map_err(|e| {
                    ServiceError {
                        service: format!("{}/{}", o.namespace(), o.name()),
                        field: e.field,
                        reason: e.reason,
                    }
                })?;
            requests.push(r);
        }
    }
    if requests.is_empty() {
        return Ok(st.services.clone());
    }
    Ok(services::plan(&st.services, requests)?)
}

/// What `down` removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct DownReport {
    pub processes: usize,
    pub namespaces: usize,
}

/// Enters `netns` on this thread and replaces the process with `cmd`
/// (for `lab exec` and pod workloads with a command). Returns only on error.
pub fn exec_in_netns(netns_path: &Path, cmd: &[String]) -> anyhow::Error {
    let Some((prog, args)) = cmd.split_first() else {
        return anyhow::anyhow!("no command given");
    };
    if let Err(e) = enter_netns_for_good(netns_path) {
        return e;
    }
    let err = Command::new(prog).args(args).exec();
    anyhow::anyhow!("cannot run {prog:?}: {err}")
}

/// Moves the calling thread into `netns` for the rest of its life. Call it
/// before spawning threads, which inherit it.
pub fn enter_netns_for_good(netns_path: &Path) -> anyhow::Result<()> {
    let f = File::open(netns_path)
        .with_context(|| format!("opening netns {}", netns_path.display()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering netns {}", netns_path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_lab_parses() {
        let def = parse_lab(DEFAULT_LAB, "default.yaml").unwrap();
        assert_eq!(def.lab.metadata.name, "default");
        assert_eq!(def.lab.spec.nodes, 2);
        let pods = manifest::expand_pods(&def.objects).unwrap();
        assert_eq!(pods.len(), 3);
    }

    #[test]
    fn bad_lab_files_are_rejected_with_the_field() {
        let e = parse_lab(
            "apiVersion: x\nkind: Lab\nmetadata:\n  name: BAD_NAME\n",
            "t",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("metadata.name"), "{e:#}");
        let e = parse_lab(
            "apiVersion: x\nkind: Lab\nmetadata:\n  name: ok\nspec:\n  nodes: 0\n",
            "t",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("spec.nodes"), "{e:#}");
        let e = parse_lab(
            "apiVersion: x\nkind: Lab\nmetadata:\n  name: ok\nspec:\n  colour: red\n",
            "t",
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("colour"), "{e:#}");
        let e = parse_lab("apiVersion: v1\nkind: Pod\nmetadata:\n  name: ok\n", "t").unwrap_err();
        assert!(format!("{e:#}").contains("kind: Lab"), "{e:#}");
    }

    #[test]
    fn node_cidrs_are_distinct_slash_24s() {
        let spec = LabSpec::default();
        assert_eq!(
            Lab::node_cidr(&spec, 1).unwrap().to_string(),
            "10.244.1.0/24"
        );
        assert_eq!(
            Lab::node_cidr(&spec, 2).unwrap().to_string(),
            "10.244.2.0/24"
        );
    }

    #[test]
    fn rfc3339_shape() {
        let s = now_rfc3339();
        assert_eq!(s.len(), 20);
        assert!(s.ends_with('Z'));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn state_files_from_before_services_still_load() {
        let old = r#"{"name":"x","spec":{"nodes":1},"nodes":[],"pods":{
            "default/a":{"pod":{"name":"a","namespace":"default","labels":{},
            "node_name":null,"owner":null,"containers":[]},"node":"node-1",
            "ip":"10.244.1.2","netns":"/run/netns/psw-x-default-a",
            "workload_pid":null,"created":"2025-01-01T00:00:00Z"}}}"#;
        let st: LabState = serde_json::from_str(old).unwrap();
        assert!(st.services.is_empty());
        assert_eq!(st.pods["default/a"].deletion, None);
        assert!(crate::agents::service_specs(&st, "node-1").is_empty());
    }
}
