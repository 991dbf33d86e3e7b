//! The switch daemon (`podswitch switch run`): starts one worker per core,
//! serves the control socket, and keeps the desired topology, the ports'
//! taps and the published snapshot in step.
//!
//! State that must survive a restart (the node and its pods) is written to
//! `<state_dir>/state.json` after every change; on start the daemon reads
//! it back and re-attaches to the pods' persistent taps by name, so pods
//! keep their interfaces and addresses while the switch restarts.
//!
//! A switch stopped by SIGTERM or SIGINT (an upgrade) also hands over its
//! flow table and Services in `<state_dir>/handover.bin` once its workers
//! have stopped; the next switch loads and removes it before its workers
//! forward anything, so translated connections (Service DNAT, egress SNAT)
//! carry on across the restart ([`crate::conntrack::persist`]).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::conntrack::ConnTrack;
use crate::metrics::WorkerCounters;
use crate::port::pod::{self, PodWiring};
use crate::port::steer::SteerAddress;
use crate::tables::node_ports::{self, NodePortAddress};
use crate::tables::services::{NodeView, PatchedTable, ServiceLayout, ServiceTable};
use crate::tables::{Gateway, PodPort, PortId, PortKind, RouteTarget, TablePublisher, Tables};
use crate::worker::poll::{check_budget_us, PollControl};
use crate::worker::{IoBackend, PortIo, Snapshot, Worker};
use podswitch_api::{
    ApiError, Applied, BackendState, ClusterMode, ErrorCode, FlowFilter, Flows, FrontendState,
    Hello, IoBackendSet, KernelRoute, LocalNodeState, Mac, NodeSpec, Nodes, PodSpec, PollSettings,
    PortInfo, RemoteNode, RemoteNodeState, Request, RouteEntry, RouteHop, RouteLookup, Routes,
    RunningConfig, ServiceRouting, ServiceSettings, ServiceSpec, ServiceState, ServicesApplied,
    Stats, Topology, VtepState, VxlanSpec, VxlanTunnelGsoSet,
};

pub use podswitch_api::config::{parse_metrics_address, DaemonConfig};

/// The name of the tunnel port ([`pod::tunnel_port`]) in the node's
/// namespace.
pub const TUNNEL_PORT_NAME: &str = "psw-vxgso";

/// How often the flow table is swept for expired flows.
/// The daemon thread's tick: heartbeat, capture reaping, the sweeper.
const MAIN_TICK: Duration = Duration::from_millis(250);

const SWEEP_INTERVAL: Duration = Duration::from_millis(1000);
/// How often the node's addresses are re-read when NodePorts open on CIDRs
/// (an address added to the node answers NodePorts within this).
const ADDRESS_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// What is saved in `state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedState {
    node: NodeSpec,
    pods: Vec<PodSpec>,
    #[serde(default)]
    remote_nodes: Vec<RemoteNode>,
}

/// The file a stopping switch hands its flows and Services over in
/// (`<state_dir>/handover.bin`, [`crate::conntrack::persist`]); the next
/// switch loads it before forwarding and removes it.
pub const HANDOVER_FILE: &str = "handover.bin";
/// A handover older than this is refused: it is meant for a restart, not
/// for a switch started again after a long stop (whose agent resyncs it).
const HANDOVER_MAX_AGE: Duration = Duration::from_secs(15 * 60);

/// The Services a handover carries (its extra section, JSON): with them
/// the new switch translates from its first packet, not from its agent's
/// first push.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoverServices {
    /// The node the file was written for.
    node: String,
    settings: ServiceSettings,
    services: Vec<ServiceSpec>,
}

/// Loads the flows and Services a previous switch handed over, into the
/// still unshared `conntrack`. A missing file is a cold start; a bad one
/// is logged, set aside as `handover.bin.rejected`, and the switch starts
/// empty. The file is consumed either way.
fn take_handover(
    state_dir: &Path,
    node: &str,
    conntrack: &mut ConnTrack,
) -> Option<HandoverServices> {
    let path = state_dir.join(HANDOVER_FILE);
    if !path.exists() {
        return None;
    }
    let started = std::time::Instant::now();
    let loaded = crate::conntrack::persist::load(
        conntrack,
        &path,
        started,
        std::time::SystemTime::now(),
        HANDOVER_MAX_AGE,
    );
    let restored = match loaded {
        Ok(r) => {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "cannot remove the loaded handover file");
            }
            r
        }
        Err(e) => {
            let aside = path.with_extension("bin.rejected");
            let _ = std::fs::rename(&path, &aside);
            tracing::error!(error = %error_chain(&e), kept_as = %aside.display(), "handover file refused; starting with an empty flow table");
            return None;
        }
    };
    tracing::info!(
        flows = restored.flows,
        expired = restored.expired,
        no_room = restored.no_room,
        age_ms = restored.age.as_millis() as u64,
        load_ms = started.elapsed().as_millis() as u64,
        "flows handed over by the previous switch restored"
    );
    match serde_json::from_slice::<HandoverServices>(&restored.extra) {
        Ok(s) if s.node == node => Some(s),
        Ok(s) => {
            tracing::warn!(file_node = %s.node, %node, "handover Services are another node's; waiting for the agent's");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "handover Services unreadable; waiting for the agent's");
            None
        }
    }
}

/// Writes the flow table and the Services for the next switch. Called
/// once the workers have stopped, so the table is final.
fn write_handover(state_dir: &Path, state: &SwitchState) {
    let path = state_dir.join(HANDOVER_FILE);
    let started = std::time::Instant::now();
    let services = HandoverServices {
        node: state.node.name.clone(),
        settings: state.service_settings.clone(),
        services: state.services.values().cloned().collect(),
    };
    let extra = match serde_json::to_vec(&services) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode the Services for the handover");
            Vec::new()
        }
    };
    match crate::conntrack::persist::save(
        &state.conntrack,
        &path,
        &extra,
        started,
        std::time::SystemTime::now(),
    ) {
        Ok(s) => tracing::info!(
            flows = s.flows,
            services = services.services.len(),
            bytes = s.bytes,
            save_ms = started.elapsed().as_millis() as u64,
            path = %path.display(),
            "flows and Services written for the next switch"
        ),
        Err(e) => {
            tracing::error!(error = %error_chain(&e), "flow handover not written; the next switch starts with an empty flow table")
        }
    }
}

/// The node's own stack, as a port.
/// This node's VTEP: the overlay port's id and MAC.
struct Vtep {
    id: PortId,
    mac: Mac,
    local: Ipv4Addr,
}

struct HostPort {
    id: PortId,
    name: String,
    mac: [u8; 6],
    io: Arc<PortIo>,
}

struct PortState {
    /// Resolved: mac and mtu filled in.
    spec: PodSpec,
    id: PortId,
    io: Arc<PortIo>,
}

/// The control plane's view: desired topology and live ports. Guarded by
/// a Mutex on the control path only; workers never see it.
pub struct SwitchState {
    node: NodeSpec,
    host: Option<HostPort>,
    vtep: Option<Vtep>,
    remote_nodes: Vec<RemoteNode>,
    /// Desired services by name, and the cluster-wide service settings.
    services: BTreeMap<String, ServiceSpec>,
    service_settings: ServiceSettings,
    /// The built service table published with every snapshot.
    service_table: Arc<ServiceTable>,
    /// Where each Service sits in `service_table`, for patching it.
    service_layout: ServiceLayout,
    maglev_size: usize,
    conntrack: Arc<ConnTrack>,
    /// Where NodePorts open, as configured, and the node addresses that
    /// resolves to now.
    node_port_addresses: Vec<NodePortAddress>,
    node_port_ips: Vec<Ipv4Addr>,
    /// The addresses whose traffic is steered into the switch, with the
    /// slot of filter priorities each uses.
    steered: BTreeMap<Ipv4Addr, (u16, SteerAddress)>,
    ports: BTreeMap<String, PortState>,
    slots: Vec<Option<String>>,
    generation: u64,
    publisher: Arc<TablePublisher<Snapshot>>,
    wakers: Vec<Arc<mio::Waker>>,
    counters: Vec<Arc<WorkerCounters>>,
    state_file: PathBuf,
    /// Latency of requests that change the switch, for `/metrics`.
    apply_seconds: prometheus_client::metrics::histogram::Histogram,
    /// Packet captures, shared with the workers.
    captures: Arc<crate::capture::CaptureHub>,
    /// The configuration as loaded, for `get_config` (the poll mode as
    /// last set).
    running_config: podswitch_api::RunningConfig,
    /// The workers' poll mode and budget, shared with them.
    poll_control: Arc<PollControl>,
    /// The tap I/O the workers use (`io_uring` or `syscalls`).
    io_backend_in_use: &'static str,
    /// Whether the workers have tunnel port queues (UDP-tunnel GSO).
    tunnel_gso_available: bool,
    /// Workers that have an io_uring.
    io_backend_rings: usize,
}

impl SwitchState {
    fn workers(&self) -> usize {
        self.counters.len()
    }

    /// Validates a node spec.
    fn validate_node(node: &NodeSpec) -> Result<(), ApiError> {
        if node.name.is_empty() {
            return Err(ApiError::invalid("node.name", "must not be empty"));
        }
        if node.ipv4_cidr().is_none() {
            return Err(ApiError::invalid(
                "node.pod_cidrs",
                "needs an IPv4 pod CIDR",
            ));
        }
        if !(576..=65535).contains(&node.mtu) {
            return Err(ApiError::invalid(
                "node.mtu",
                format!("{} is outside 576..=65535", node.mtu),
            ));
        }
        if !node.gateway_mac.is_unicast() {
            return Err(ApiError::invalid(
                "node.gateway_mac",
                "must be a unicast MAC",
            ));
        }
        let gw = node.gateway_ipv4().ok_or_else(|| {
            ApiError::invalid("node.pod_cidrs", "IPv4 pod CIDR has no host addresses")
        })?;
        if !node
            .pod_cidrs
            .iter()
            .any(|c| c.contains(&std::net::IpAddr::V4(gw)))
        {
            return Err(ApiError::invalid(
                "node.gateway_ipv4",
                format!("{gw} is not inside a pod CIDR"),
            ));
        }
        if node.vxlan.vni > crate::wire::vxlan::VNI_MAX {
            return Err(ApiError::invalid(
                "node.vxlan.vni",
                format!("{} does not fit in 24 bits", node.vxlan.vni),
            ));
        }
        if node.vxlan.port == 0 {
            return Err(ApiError::invalid("node.vxlan.port", "must not be 0"));
        }
        if node.mode == ClusterMode::Vxlan && node.underlay_ipv4.is_none() {
            return Err(ApiError::invalid(
                "node.underlay_ipv4",
                "VXLAN mode needs the node's underlay address",
            ));
        }
        Ok(())
    }

    /// Validates and resolves a pod spec against `node` (field names are
    /// prefixed with `prefix`).
    fn resolve_pod(node: &NodeSpec, spec: &PodSpec, prefix: &str) -> Result<PodSpec, ApiError> {
        let f = |name: &str| format!("{prefix}.{name}");
        if spec.name.is_empty() || spec.name.len() > 253 {
            return Err(ApiError::invalid(f("name"), "must be 1..=253 characters"));
        }
        if spec.ifname.is_empty()
            || spec.ifname.len() > 15
            || spec.ifname.contains(['/', ' ', ':'])
            || spec.ifname == "."
            || spec.ifname == ".."
        {
            return Err(ApiError::invalid(
                f("ifname"),
                format!("{:?} is not a valid interface name", spec.ifname),
            ));
        }
        if !spec.netns.is_absolute() || !spec.netns.exists() {
            return Err(ApiError::invalid(
                f("netns"),
                format!("{} does not exist", spec.netns.display()),
            ));
        }
        let ip = spec
            .ipv4
            .ok_or_else(|| ApiError::invalid(f("ipv4"), "required"))?;
        let cidr = node.ipv4_cidr().expect("validated node has an IPv4 CIDR");
        if !cidr.contains(&ip) {
            return Err(ApiError::invalid(
                f("ipv4"),
                format!("{ip} is outside the node's pod CIDR {cidr}"),
            ));
        }
        if ip == cidr.network() || ip == cidr.broadcast() || Some(ip) == node.gateway_ipv4() {
            return Err(ApiError::invalid(
                f("ipv4"),
                format!("{ip} is the network, broadcast or gateway address of {cidr}"),
            ));
        }
        if spec.ipv6.is_some() {
            return Err(ApiError::invalid(
                f("ipv6"),
                "IPv6 pods are not supported yet",
            ));
        }
        let mac = spec.mac.unwrap_or_else(|| Mac::for_pod_ipv4(ip));
        if !mac.is_unicast() || mac == node.gateway_mac {
            return Err(ApiError::invalid(
                f("mac"),
                format!("{mac} must be unicast and not the gateway's"),
            ));
        }
        let mtu = spec.mtu.unwrap_or(node.mtu);
        if !(576..=65535).contains(&mtu) {
            return Err(ApiError::invalid(
                f("mtu"),
                format!("{mtu} is outside 576..=65535"),
            ));
        }
        Ok(PodSpec {
            mac: Some(mac),
            mtu: Some(mtu),
            ..spec.clone()
        })
    }

    /// Checks a whole desired pod set for duplicates (names, IPs, MACs,
    /// namespace+interface).
    fn check_unique<'a>(pods: impl Iterator<Item = (&'a PodSpec, String)>) -> Result<(), ApiError> {
        let mut names = BTreeMap::new();
        let mut ips = BTreeMap::new();
        let mut macs = BTreeMap::new();
        let mut ifs = BTreeMap::new();
        for (p, field) in pods {
            if let Some(prev) = names.insert(p.name.clone(), field.clone()) {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!("pod {} given twice ({prev} and {field})", p.name),
                )
                .with_field(format!("{field}.name")));
            }
            if let Some(ip) = p.ipv4 {
                if let Some(prev) = ips.insert(ip, p.name.clone()) {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("{ip} is already pod {prev}'s"),
                    )
                    .with_field(format!("{field}.ipv4")));
                }
            }
            if let Some(mac) = p.mac {
                if let Some(prev) = macs.insert(mac, p.name.clone()) {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("{mac} is already pod {prev}'s"),
                    )
                    .with_field(format!("{field}.mac")));
                }
            }
            if let Some(prev) = ifs.insert((p.netns.clone(), p.ifname.clone()), p.name.clone()) {
                return Err(ApiError::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "{} in {} is already pod {prev}'s",
                        p.ifname,
                        p.netns.display()
                    ),
                )
                .with_field(format!("{field}.netns")));
            }
        }
        Ok(())
    }

    /// Builds and publishes a snapshot from the current ports, wakes the
    /// workers and saves the state.
    fn publish(&mut self) {
        self.generation += 1;
        let gw = Gateway {
            mac: self.node.gateway_mac.0,
            ipv4: self.node.gateway_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED),
            ipv6: None,
        };
        let mut ports: Vec<Option<PodPort>> = vec![None; self.slots.len()];
        let mut io: Vec<Option<Arc<PortIo>>> = vec![None; self.slots.len()];
        for st in self.ports.values() {
            let s = &st.spec;
            ports[st.id as usize] = Some(PodPort {
                id: st.id,
                pod: s.name.clone(),
                ifname: s.ifname.clone(),
                netns: s.netns.clone(),
                mac: s.mac.map(|m| m.0).unwrap_or_default(),
                ipv4: s.ipv4,
                ipv6: s.ipv6,
                mtu: s.mtu.unwrap_or(self.node.mtu),
                offloads: true,
                kind: PortKind::Pod,
            });
            io[st.id as usize] = Some(Arc::clone(&st.io));
        }
        if let Some(h) = &self.host {
            ports[h.id as usize] = Some(self.node_port(
                h.id,
                &format!("host/{}", h.name),
                &h.name,
                h.mac,
                PortKind::Host,
            ));
            io[h.id as usize] = Some(Arc::clone(&h.io));
        }
        if let Some(v) = &self.vtep {
            ports[v.id as usize] =
                Some(self.node_port(v.id, "overlay/vxlan", "vxlan", v.mac.0, PortKind::Overlay));
        }
        let mut tables = Tables::new(&self.node.name, gw, self.node.pod_cidrs.clone(), ports);
        if let Some(v) = &self.vtep {
            tables = tables.with_overlay(crate::tables::Overlay {
                vni: self.node.vxlan.vni,
                udp_port: self.node.vxlan.port,
                local_ipv4: v.local,
                vtep_mac: v.mac.0,
                port: v.id,
                pod_mtu: u16::try_from(self.node.mtu).unwrap_or(u16::MAX),
                nodes: self
                    .remote_nodes
                    .iter()
                    .map(|n| crate::tables::OverlayNode {
                        name: n.name.clone(),
                        underlay_ipv4: n.underlay_ipv4,
                        vtep_mac: n
                            .vtep_mac
                            .unwrap_or_else(|| Mac::for_vtep(n.underlay_ipv4))
                            .0,
                        pod_cidrs: n.pod_cidrs.clone(),
                    })
                    .collect(),
            });
        }
        tables.generation = self.generation;
        tables.services = Arc::clone(&self.service_table);
        self.publisher.publish(Snapshot { tables, io });
        for w in &self.wakers {
            let _ = w.wake();
        }
        if let Err(e) = self.save() {
            tracing::error!(error = %format!("{e:#}"), "cannot save switch state");
        }
    }

    /// A port of the node itself (host port, overlay): no address of its own.
    fn node_port(
        &self,
        id: PortId,
        pod: &str,
        ifname: &str,
        mac: [u8; 6],
        kind: PortKind,
    ) -> PodPort {
        PodPort {
            id,
            pod: pod.to_string(),
            ifname: ifname.to_string(),
            netns: PathBuf::new(),
            mac,
            ipv4: None,
            ipv6: None,
            mtu: self.node.mtu,
            offloads: true,
            kind,
        }
    }

    fn save(&self) -> anyhow::Result<()> {
        let saved = SavedState {
            node: self.node.clone(),
            pods: self.ports.values().map(|p| p.spec.clone()).collect(),
            remote_nodes: self.remote_nodes.clone(),
        };
        let tmp = self.state_file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&saved)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state_file)
            .with_context(|| format!("renaming to {}", self.state_file.display()))?;
        Ok(())
    }

    fn alloc_slot(&mut self, name: &str) -> PortId {
        if let Some(i) = self.slots.iter().position(|s| s.is_none()) {
            self.slots[i] = Some(name.to_string());
            i as PortId
        } else {
            self.slots.push(Some(name.to_string()));
            (self.slots.len() - 1) as PortId
        }
    }

    fn wiring<'a>(&self, spec: &'a PodSpec) -> PodWiring<'a> {
        PodWiring {
            pod: &spec.name,
            netns: &spec.netns,
            ifname: &spec.ifname,
            mac: spec.mac.map(|m| m.0).unwrap_or_default(),
            mtu: spec.mtu.unwrap_or(self.node.mtu),
            ipv4: spec.ipv4.unwrap_or(Ipv4Addr::UNSPECIFIED),
            gateway: self.node.gateway_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED),
        }
    }

    /// Creates the taps of already-validated pods; all or nothing.
    fn create_ports(
        &mut self,
        specs: &[PodSpec],
    ) -> Result<Vec<(PodSpec, Vec<crate::port::tap::TapQueue>)>, ApiError> {
        for s in specs {
            pod::precheck(&self.wiring(s)).map_err(|e| match e {
                pod::WiringError::InterfaceExists { .. } => {
                    ApiError::new(ErrorCode::AlreadyExists, e.to_string())
                }
                other => ApiError::internal(error_chain(&other)),
            })?;
        }
        let mut made = Vec::new();
        for s in specs {
            match pod::create(&self.wiring(s), self.workers()) {
                Ok(q) => made.push((s.clone(), q)),
                Err(e) => {
                    for (done, _) in &made {
                        let w = self.wiring(done);
                        let _ = pod::delete(w.pod, w.netns, w.ifname, w.mac);
                    }
                    return Err(ApiError::internal(error_chain(&e)));
                }
            }
        }
        Ok(made)
    }

    fn install(&mut self, made: Vec<(PodSpec, Vec<crate::port::tap::TapQueue>)>) {
        for (spec, queues) in made {
            let id = self.alloc_slot(&spec.name);
            self.ports.insert(
                spec.name.clone(),
                PortState {
                    spec,
                    id,
                    io: Arc::new(PortIo::new(queues)),
                },
            );
        }
    }

    fn remove(&mut self, name: &str) -> Option<PortState> {
        let st = self.ports.remove(name)?;
        if let Some(slot) = self.slots.get_mut(st.id as usize) {
            *slot = None;
        }
        Some(st)
    }

    fn delete_links(&self, removed: &[PortState]) {
        for st in removed {
            let w = self.wiring(&st.spec);
            if let Err(e) = pod::delete(w.pod, w.netns, w.ifname, w.mac) {
                tracing::warn!(error = %e, "removing pod interface");
            }
        }
    }

    fn apply(
        &mut self,
        new_node: Option<NodeSpec>,
        add: &[PodSpec],
        remove: &[String],
        exact: bool,
    ) -> Result<Applied, ApiError> {
        let node = new_node.clone().unwrap_or_else(|| self.node.clone());
        Self::validate_node(&node)?;
        let mut resolved = Vec::new();
        for (i, p) in add.iter().enumerate() {
            resolved.push(Self::resolve_pod(&node, p, &format!("pods[{i}]"))?);
        }
        let node_changed = node != self.node;
        // Decide the final set.
        let mut to_remove: Vec<String> = Vec::new();
        for (i, r) in remove.iter().enumerate() {
            if !self.ports.contains_key(r) {
                return Err(ApiError::new(ErrorCode::NotFound, format!("no pod {r}"))
                    .with_field(format!("remove[{i}]")));
            }
            to_remove.push(r.clone());
        }
        let mut to_add = Vec::new();
        let mut unchanged = 0;
        for r in &resolved {
            match self.ports.get(&r.name) {
                Some(cur) if cur.spec == *r && !node_changed => unchanged += 1,
                Some(_) => {
                    to_remove.push(r.name.clone());
                    to_add.push(r.clone());
                }
                None => to_add.push(r.clone()),
            }
        }
        if exact || node_changed {
            for (name, st) in &self.ports {
                if !resolved.iter().any(|r| &r.name == name) && !to_remove.contains(name) {
                    if exact {
                        to_remove.push(name.clone());
                    } else {
                        // The node changed: keep the pod, re-created on the new node config.
                        let r =
                            Self::resolve_pod(&node, &st.spec, &format!("existing pod {name}"))?;
                        to_remove.push(name.clone());
                        to_add.push(r);
                    }
                }
            }
        }
        to_remove.sort();
        to_remove.dedup();
        // The set after the change must be consistent.
        let keep = self
            .ports
            .values()
            .filter(|p| !to_remove.contains(&p.spec.name))
            .map(|p| (&p.spec, format!("existing pod {}", p.spec.name)));
        let adding = to_add
            .iter()
            .enumerate()
            .map(|(i, p)| (p, format!("pods[{i}]")));
        Self::check_unique(keep.chain(adding))?;
        // Everything is valid: change the kernel state. Removals first, so
        // a re-created pod can reuse its interface name.
        let removed: Vec<PortState> = to_remove.iter().filter_map(|n| self.remove(n)).collect();
        self.delete_links(&removed);
        let old_node = std::mem::replace(&mut self.node, node);
        match self.create_ports(&to_add) {
            Ok(made) => self.install(made),
            Err(e) => {
                // Put back what was removed, as it was.
                self.node = old_node;
                let specs: Vec<PodSpec> = removed.iter().map(|r| r.spec.clone()).collect();
                if let Ok(made) = self.create_ports(&specs) {
                    self.install(made);
                }
                self.publish();
                return Err(e);
            }
        }
        self.publish();
        let added: Vec<String> = to_add.iter().map(|p| p.name.clone()).collect();
        Ok(Applied {
            removed: to_remove
                .into_iter()
                .filter(|n| !added.contains(n))
                .collect(),
            added,
            unchanged,
            generation: self.generation,
        })
    }

    fn validate_remote_nodes(&self, nodes: &[RemoteNode], node: &NodeSpec) -> Result<(), ApiError> {
        let mut names = std::collections::BTreeSet::new();
        let mut cidrs: Vec<(IpNet, String)> = node
            .pod_cidrs
            .iter()
            .map(|c| (*c, format!("this node ({})", node.name)))
            .collect();
        for (i, n) in nodes.iter().enumerate() {
            let f = |x: &str| format!("nodes[{i}].{x}");
            if n.name.is_empty() || !names.insert(n.name.clone()) || n.name == node.name {
                return Err(ApiError::invalid(
                    f("name"),
                    format!("{:?} is empty, repeated or this node's own name", n.name),
                ));
            }
            if Some(n.underlay_ipv4) == node.underlay_ipv4
                || n.underlay_ipv4.is_unspecified()
                || n.underlay_ipv4.is_multicast()
                || n.underlay_ipv4.is_broadcast()
            {
                return Err(ApiError::invalid(
                    f("underlay_ipv4"),
                    format!(
                        "{} is not a usable unicast address of another node",
                        n.underlay_ipv4
                    ),
                ));
            }
            if n.pod_cidrs.is_empty() {
                return Err(ApiError::invalid(
                    f("pod_cidrs"),
                    "needs at least one pod CIDR",
                ));
            }
            for c in &n.pod_cidrs {
                if let Some((_, owner)) = cidrs
                    .iter()
                    .find(|(o, _)| o.contains(&c.network()) || c.contains(&o.network()))
                {
                    return Err(ApiError::invalid(
                        f("pod_cidrs"),
                        format!("{c} overlaps the pod CIDR of {owner}"),
                    ));
                }
                cidrs.push((*c, format!("node {}", n.name)));
            }
            if node.mode == ClusterMode::Vxlan && n.vtep_mac.is_none_or(|m| !m.is_unicast()) {
                return Err(ApiError::invalid(
                    f("vtep_mac"),
                    "VXLAN mode needs each node's unicast VTEP MAC",
                ));
            }
        }
        Ok(())
    }

    /// Replaces the other nodes; in native mode, routes their pod CIDRs
    /// through their underlay addresses in the node's kernel.
    fn set_remote_nodes(&mut self, nodes: Vec<RemoteNode>) -> Result<(), ApiError> {
        self.validate_remote_nodes(&nodes, &self.node)?;
        if self.node.mode == ClusterMode::Native && self.host.is_some() {
            let nl = crate::port::netlink::Netlink::current()
                .map_err(|e| ApiError::internal(error_chain(&e)))?;
            // Routes of nodes that left (or moved) go first.
            for old in &self.remote_nodes {
                for c in &old.pod_cidrs {
                    let kept = nodes
                        .iter()
                        .any(|n| n.underlay_ipv4 == old.underlay_ipv4 && n.pod_cidrs.contains(c));
                    if !kept {
                        if let Err(e) = nl.delete_route(*c, std::net::IpAddr::V4(old.underlay_ipv4))
                        {
                            tracing::warn!(error = %error_chain(&e), node = %old.name, "removing a departed node's route");
                        }
                    }
                }
            }
            for n in &nodes {
                for c in &n.pod_cidrs {
                    pod::add_route_idempotent(
                        &nl,
                        *c,
                        Some(std::net::IpAddr::V4(n.underlay_ipv4)),
                        None,
                    )
                    .map_err(|e| {
                        ApiError::internal(format!(
                            "route {c} via {} (node {}): {}",
                            n.underlay_ipv4,
                            n.name,
                            error_chain(&e)
                        ))
                    })?;
                }
            }
        }
        self.remote_nodes = nodes;
        Ok(())
    }

    fn port_info(&self, st: &PortState) -> PortInfo {
        PortInfo {
            id: st.id,
            pod: st.spec.name.clone(),
            netns: st.spec.netns.clone(),
            ifname: st.spec.ifname.clone(),
            mac: st.spec.mac.unwrap_or(Mac([0; 6])),
            ipv4: st.spec.ipv4,
            ipv6: st.spec.ipv6,
            mtu: st.spec.mtu.unwrap_or(self.node.mtu),
            queues: st.io.queues.len(),
            stats: crate::metrics::port_stats(&st.io.counters),
        }
    }

    /// Validates, builds and publishes a whole service table; on error
    /// nothing changes. When the node and settings are those the current
    /// table was built for, only the Services that differ are built (a
    /// full resync from an agent costs what changed meanwhile).
    fn apply_services(
        &mut self,
        settings: ServiceSettings,
        services: BTreeMap<String, ServiceSpec>,
    ) -> Result<ServicesApplied, ApiError> {
        let started = std::time::Instant::now();
        let view = service_view(&self.node, self.maglev_size, &self.node_port_ips);
        let patched = if self.service_layout.fits(&settings, &view) {
            let upsert: Vec<(usize, &ServiceSpec)> = services
                .values()
                .enumerate()
                .filter(|(_, s)| self.services.get(&s.name) != Some(*s))
                .collect();
            let remove: Vec<&str> = self
                .services
                .keys()
                .filter(|n| !services.contains_key(*n))
                .map(String::as_str)
                .collect();
            self.service_layout
                .patch(&self.service_table, &upsert, &remove, "services")?
        } else {
            let (table, layout) = ServiceLayout::build(
                services.values(),
                &settings,
                &view,
                Some(&self.service_layout),
            )?;
            self.service_layout = layout;
            PatchedTable {
                table,
                endpoints_lost: true,
            }
        };
        self.steer(settings.node_port_range);
        self.service_settings = settings;
        self.services = services;
        self.route_service_cidrs(&self.service_settings);
        Ok(self.publish_services(patched, started))
    }

    /// Adds or replaces (by name, the last of several wins) and removes
    /// Services in one step, building only those (their Maglev tables, and
    /// a copy of the table's flat maps); on error nothing changes.
    fn patch_services(
        &mut self,
        upsert: Vec<ServiceSpec>,
        remove: Vec<String>,
    ) -> Result<ServicesApplied, ApiError> {
        let started = std::time::Instant::now();
        for (i, name) in remove.iter().enumerate() {
            if !self.services.contains_key(name) {
                return Err(
                    ApiError::new(ErrorCode::NotFound, format!("no service {name}"))
                        .with_field(format!("remove[{i}]")),
                );
            }
        }
        let view = service_view(&self.node, self.maglev_size, &self.node_port_ips);
        if !self.service_layout.fits(&self.service_settings, &view) {
            // Never built, or built for another node: build in full.
            let mut next = self.services.clone();
            for name in &remove {
                next.remove(name);
            }
            for svc in upsert {
                next.insert(svc.name.clone(), svc);
            }
            return self.apply_services(self.service_settings.clone(), next);
        }
        let ups: Vec<(usize, &ServiceSpec)> = upsert.iter().enumerate().collect();
        let rem: Vec<&str> = remove.iter().map(String::as_str).collect();
        let patched = self
            .service_layout
            .patch(&self.service_table, &ups, &rem, "upsert")?;
        self.steer(self.service_settings.node_port_range);
        // The service CIDRs are routed already; new external IPs may not be.
        let external: Vec<IpNet> = upsert
            .iter()
            .flat_map(|s| &s.external_ips)
            .map(|ip| IpNet::from(std::net::IpAddr::V4(*ip)))
            .collect();
        for name in &remove {
            self.services.remove(name);
        }
        for svc in upsert {
            self.services.insert(svc.name.clone(), svc);
        }
        self.route_to_host_port(&external);
        Ok(self.publish_services(patched, started))
    }

    /// Publishes a built service table and resets the flows it strands.
    fn publish_services(
        &mut self,
        patched: PatchedTable,
        started: std::time::Instant,
    ) -> ServicesApplied {
        let table = Arc::new(patched.table);
        self.service_table = Arc::clone(&table);
        self.publish();
        // Flows whose endpoint is gone are removed: the client's next
        // segment gets a RST, a UDP client's next datagram a new endpoint.
        // Only a change that took a frontend or an endpoint away can
        // strand one (the walk visits the whole flow table).
        let flows_reset = if patched.endpoints_lost {
            self.conntrack.remove_where(|f| table.flow_is_stale(f))
        } else {
            0
        };
        ServicesApplied {
            services: self.services.len(),
            frontends: table.fronts.len(),
            endpoints: table.endpoint_count(),
            flows_reset,
            build_us: started.elapsed().as_micros() as u64,
            generation: self.generation,
        }
    }

    /// Routes the service CIDRs from the node's stack into the switch, so
    /// host-network clients reach cluster IPs.
    fn route_service_cidrs(&self, settings: &ServiceSettings) {
        // External and load-balancer IPs arrive at the node routed to it
        // (not addressed to it): the node's stack hands them to the switch.
        let external = self
            .services
            .values()
            .flat_map(|s| s.external_ips.iter())
            .map(|ip| IpNet::from(std::net::IpAddr::V4(*ip)));
        let cidrs: Vec<IpNet> = settings
            .service_cidrs
            .iter()
            .copied()
            .chain(external)
            .collect();
        self.route_to_host_port(&cidrs);
    }

    /// Routes `cidrs` from the node's stack to the host port (idempotent).
    fn route_to_host_port(&self, cidrs: &[IpNet]) {
        let Some(host) = &self.host else { return };
        for cidr in cidrs {
            if let Err(e) = pod::add_host_route(&host.name, *cidr) {
                tracing::warn!(error = %error_chain(&e), %cidr, "cannot route the service CIDR to the host port");
            }
        }
    }

    /// The addresses to steer into the switch: the node address (replies
    /// to translated flows, and NodePorts if they open there) and every
    /// other address NodePorts open on.
    fn steer_addresses(&self, node_ports: (u16, u16)) -> Vec<SteerAddress> {
        let mut out: Vec<SteerAddress> = self
            .node_port_ips
            .iter()
            .map(|&ip| SteerAddress {
                ip,
                node_ports: Some(node_ports),
                translation: Some(ip) == self.node.underlay_ipv4,
            })
            .collect();
        if let Some(ip) = self.node.underlay_ipv4 {
            if !self.node_port_ips.contains(&ip) {
                out.push(SteerAddress {
                    ip,
                    node_ports: None,
                    translation: true,
                });
            }
        }
        out
    }

    /// Installs NodePort and masquerade steering for every address that
    /// needs it and does not have it yet (a no-op when all do).
    fn steer(&mut self, node_ports: (u16, u16)) {
        let Some(host) = &self.host else { return };
        for addr in self.steer_addresses(node_ports) {
            let slot = match self.steered.get(&addr.ip) {
                Some((_, done)) if *done == addr => continue,
                Some((slot, _)) => *slot,
                None => self
                    .steered
                    .values()
                    .map(|(slot, _)| slot + 1)
                    .max()
                    .unwrap_or(0),
            };
            match pod::steer_to_host_port(&host.name, &addr, slot) {
                Ok(n) => {
                    tracing::info!(filters = n, ip = %addr.ip, node_ports = addr.node_ports.is_some(), "NodePort and masquerade traffic steered into the switch");
                    self.steered.insert(addr.ip, (slot, addr));
                }
                Err(e) => {
                    tracing::warn!(error = %e, ip = %addr.ip, "steering not installed; NodePorts and masquerade replies to this address will not reach the switch")
                }
            }
        }
    }

    /// The addresses NodePorts open on now, from the node's addresses;
    /// `None` if the list has no CIDR (nothing to re-read) or the
    /// addresses cannot be listed (logged).
    fn resolve_node_port_ips(&self) -> Option<Vec<Ipv4Addr>> {
        if !node_ports::needs_local_addresses(&self.node_port_addresses) {
            return None;
        }
        let local = pod::local_ipv4_addresses(self.host.as_ref().map(|h| h.name.as_str()))
            .map_err(
                |e| tracing::warn!(error = %e, "cannot list the node's addresses for NodePorts"),
            )
            .ok()?;
        Some(node_ports::resolve(
            &self.node_port_addresses,
            self.node.underlay_ipv4,
            &local,
        ))
    }

    /// Re-reads the node's addresses and, if the addresses NodePorts open
    /// on changed, rebuilds the service table for them and steers the new
    /// ones. Only lists with a CIDR depend on the node's addresses.
    fn refresh_node_port_ips(&mut self) {
        let Some(ips) = self.resolve_node_port_ips() else {
            return;
        };
        if ips == self.node_port_ips {
            return;
        }
        tracing::info!(before = ?self.node_port_ips, now = ?ips, "NodePort addresses changed");
        let before = std::mem::replace(&mut self.node_port_ips, ips);
        let settings = self.service_settings.clone();
        let services = self.services.clone();
        if let Err(e) = self.apply_services(settings, services) {
            tracing::warn!(error = %e, "Services not rebuilt for the new NodePort addresses");
            self.node_port_ips = before;
        }
    }

    /// Handles one control request, timing those that change the switch.
    pub fn handle(&mut self, req: Request) -> Result<serde_json::Value, ApiError> {
        let mutating = matches!(
            req,
            Request::AddPort(podswitch_api::AddPortArgs { .. })
                | Request::RemovePort(podswitch_api::RemovePortArgs { .. })
                | Request::ReplaceTopology(podswitch_api::ReplaceTopologyArgs { .. })
                | Request::PatchTopology(podswitch_api::PatchTopologyArgs { .. })
                | Request::SetServices(podswitch_api::SetServicesArgs { .. })
                | Request::PatchServices(podswitch_api::PatchServicesArgs { .. })
                | Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs { .. })
        );
        let start = std::time::Instant::now();
        let result = self.dispatch(req);
        if mutating {
            self.apply_seconds.observe(start.elapsed().as_secs_f64());
        }
        result
    }

    /// The handles a metrics scrape reads; cheap (`Arc` clones), so the
    /// scrape holds the state's lock only briefly.
    fn scrape_sources(&self) -> crate::exporter::ScrapeSources {
        let mut ports: Vec<_> = self
            .ports
            .values()
            .map(|p| (p.spec.name.clone(), Arc::clone(&p.io)))
            .collect();
        if let Some(h) = &self.host {
            ports.push((format!("host/{}", h.name), Arc::clone(&h.io)));
        }
        crate::exporter::ScrapeSources {
            workers: self.counters.clone(),
            ports,
            conntrack: Arc::clone(&self.conntrack),
            services: Arc::clone(&self.service_table),
            service_count: self.services.len(),
        }
    }

    /// What a capture's `port` names: a pod, the host port (`host/psw0`
    /// or `psw0`), or `underlay` (VXLAN mode only).
    fn capture_target(
        &self,
        port: &str,
    ) -> Result<(crate::capture::CaptureTarget, String), ApiError> {
        use crate::capture::CaptureTarget;
        if port == "underlay" {
            return match self.vtep {
                Some(_) => Ok((CaptureTarget::Underlay, port.to_string())),
                None => Err(ApiError::invalid(
                    "port",
                    format!(
                        "node {} runs in native mode: there is no VXLAN underlay to capture \
                         (capture host/{} instead)",
                        self.node.name,
                        self.node.host_interface.as_deref().unwrap_or("psw0")
                    ),
                )),
            };
        }
        if let Some(p) = self.ports.get(port) {
            return Ok((CaptureTarget::Port(p.id), p.spec.name.clone()));
        }
        if let Some(h) = self
            .host
            .as_ref()
            .filter(|h| port == h.name || port == format!("host/{}", h.name))
        {
            return Ok((CaptureTarget::Port(h.id), format!("host/{}", h.name)));
        }
        Err(ApiError::new(
            ErrorCode::NotFound,
            format!("no port {port} (a pod as namespace/name, host/psw0, or underlay)"),
        )
        .with_field("port"))
    }

    /// This node and the others, read from the published snapshot (the
    /// overlay's nodes in VXLAN mode; in native mode the remote nodes
    /// live in the node's kernel routes, so they come from the desired
    /// state the switch installed them from).
    fn nodes(&self) -> Nodes {
        let snapshot = self.publisher.load_full();
        let t = &snapshot.tables;
        let local = LocalNodeState {
            name: t.node.clone(),
            underlay_ipv4: self.node.underlay_ipv4,
            pod_cidrs: t.pod_cidrs.clone(),
            gateway_ipv4: t.gateway.ipv4,
            gateway_mac: Mac(t.gateway.mac),
            mtu: self.node.mtu,
            mode: self.node.mode,
            host_interface: self.host.as_ref().map(|h| h.name.clone()),
            vxlan: t.overlay.as_ref().map(|o| VtepState {
                vni: o.vni,
                udp_port: o.udp_port,
                local_ipv4: o.local_ipv4,
                vtep_mac: Mac(o.vtep_mac),
            }),
        };
        let remote = match &t.overlay {
            Some(o) => o
                .nodes
                .iter()
                .map(|n| RemoteNodeState {
                    name: n.name.clone(),
                    underlay_ipv4: n.underlay_ipv4,
                    pod_cidrs: n.pod_cidrs.clone(),
                    vtep_mac: Some(Mac(n.vtep_mac)),
                })
                .collect(),
            None => self
                .remote_nodes
                .iter()
                .map(|n| RemoteNodeState {
                    name: n.name.clone(),
                    underlay_ipv4: n.underlay_ipv4,
                    pod_cidrs: n.pod_cidrs.clone(),
                    vtep_mac: None,
                })
                .collect(),
        };
        Nodes {
            generation: t.generation,
            local,
            remote,
        }
    }

    /// The route stage's table as the published snapshot holds it, and
    /// what `lookup` matches.
    fn routes(&self, lookup: Option<std::net::IpAddr>) -> Routes {
        let snapshot = self.publisher.load_full();
        let t = &snapshot.tables;
        let hop = |target: RouteTarget| -> RouteHop {
            match target {
                RouteTarget::Local(id) => match t.port(id) {
                    Some(p) if p.kind == PortKind::Host => RouteHop::Host {
                        port: id,
                        interface: p.ifname.clone(),
                    },
                    Some(p) => RouteHop::Pod {
                        port: id,
                        pod: p.pod.clone(),
                    },
                    // A port removed under a stale route: forwarded nowhere.
                    None => RouteHop::Unassigned,
                },
                RouteTarget::Node(i) => {
                    match t.overlay.as_ref().and_then(|o| o.nodes.get(usize::from(i))) {
                        Some(n) => RouteHop::Overlay {
                            node: n.name.clone(),
                            underlay_ipv4: n.underlay_ipv4,
                            vtep_mac: Mac(n.vtep_mac),
                        },
                        None => RouteHop::NoRoute,
                    }
                }
                RouteTarget::Unassigned => RouteHop::Unassigned,
            }
        };
        let routes: Vec<RouteEntry> = t
            .routes
            .entries()
            .into_iter()
            .map(|(prefix, target)| RouteEntry {
                prefix,
                hop: hop(target),
            })
            .collect();
        let kernel_routes: Vec<KernelRoute> = if t.overlay.is_none() && self.host.is_some() {
            self.remote_nodes
                .iter()
                .flat_map(|n| {
                    n.pod_cidrs.iter().map(|c| KernelRoute {
                        prefix: *c,
                        node: n.name.clone(),
                        via: n.underlay_ipv4,
                    })
                })
                .collect()
        } else {
            Vec::new()
        };
        let svc = &t.services;
        let settings = &self.service_settings;
        let lookup = lookup.map(|dst| {
            let route = t
                .routes
                .lookup_entry(dst)
                .map(|(prefix, target)| RouteEntry {
                    prefix,
                    hop: hop(target),
                });
            let owner = if t.pod_cidrs.iter().any(|c| c.contains(&dst)) {
                Some((t.node.clone(), None))
            } else {
                self.remote_nodes
                    .iter()
                    .find(|n| n.pod_cidrs.iter().any(|c| c.contains(&dst)))
                    .map(|n| (n.name.clone(), Some(n.underlay_ipv4)))
            };
            // The kernel next hop matters only where the switch hands the
            // packet to the node's stack (native mode).
            let via = match (&route, &owner) {
                (
                    Some(RouteEntry {
                        hop: RouteHop::Host { .. },
                        ..
                    }),
                    Some((_, via)),
                ) => *via,
                _ => None,
            };
            let v4 = match dst {
                std::net::IpAddr::V4(a) => Some(a),
                std::net::IpAddr::V6(_) => None,
            };
            let mut services: Vec<String> = v4
                .map(|a| {
                    svc.fronts
                        .iter()
                        .filter(|f| {
                            f.ip == a && f.kind != crate::tables::services::FrontendKind::NodePort
                        })
                        .filter_map(|f| svc.names.get(f.service as usize).cloned())
                        .collect()
                })
                .unwrap_or_default();
            services.sort();
            services.dedup();
            RouteLookup {
                dst,
                route,
                node: owner.map(|o| o.0),
                via,
                gateway: v4 == Some(t.gateway.ipv4),
                services,
                masquerade: v4.is_some_and(|a| svc.masquerades(a)),
            }
        });
        Routes {
            generation: t.generation,
            mode: self.node.mode,
            routes,
            kernel_routes,
            services: ServiceRouting {
                node_ip: svc.node_ip,
                masquerade: svc.masquerade,
                cluster_cidrs: settings.cluster_cidrs.clone(),
                service_cidrs: settings.service_cidrs.clone(),
                masquerade_exclude: settings.masquerade_exclude.clone(),
                node_port_range: settings.node_port_range,
                frontends: svc.fronts.len(),
            },
            lookup,
        }
    }

    /// Each Service's frontends with their Maglev state, from the
    /// published service table; endpoint nodes come from the specs.
    fn service_state(&self, name: Option<&str>) -> Result<Vec<ServiceState>, ApiError> {
        if let Some(n) = name {
            if !self.services.contains_key(n) {
                return Err(
                    ApiError::new(ErrorCode::NotFound, format!("no service {n}"))
                        .with_field("name"),
                );
            }
        }
        // The published table, by Service name and each Service's
        // frontends in spec order (the table's own order is not name order
        // once patched).
        let table = &self.service_table;
        let names: Vec<&str> = match name {
            Some(n) => vec![n],
            None => self.services.keys().map(String::as_str).collect(),
        };
        let mut out: Vec<ServiceState> = Vec::new();
        for fi in names
            .into_iter()
            .flat_map(|n| self.service_layout.frontends_of(n))
        {
            let f = &table.fronts[fi as usize];
            let Some(svc_name) = table.names.get(f.service as usize) else {
                continue;
            };
            let spec = self.services.get(svc_name);
            let node_of = |ip: Ipv4Addr, port: u16| {
                spec.into_iter()
                    .flat_map(|s| s.ports.iter())
                    .flat_map(|p| p.endpoints.iter())
                    .find(|e| e.ip == ip && e.port == port)
                    .and_then(|e| e.node.clone())
            };
            let m = f.maglev.size();
            let shares = f.maglev_shares();
            let backends = (f.backends.start..f.backends.end)
                .filter_map(|i| table.backends.get(i as usize).map(|b| (i, b)))
                .map(|(i, b)| {
                    let slots = shares
                        .iter()
                        .find(|s| s.backend == i)
                        .map_or(0, |s| s.slots);
                    BackendState {
                        ip: b.ip,
                        port: b.port,
                        node: node_of(b.ip, b.port),
                        local: b.local,
                        ready: b.ready,
                        terminating: b.terminating,
                        eligible: f.eligible.contains(&i),
                        slots,
                        share: if m == 0 { 0.0 } else { slots as f64 / m as f64 },
                    }
                })
                .collect();
            let front = FrontendState {
                kind: f.kind,
                ip: f.ip,
                port: f.port,
                protocol: if f.proto == podswitch_api::Protocol::Udp.number() {
                    podswitch_api::Protocol::Udp
                } else {
                    podswitch_api::Protocol::Tcp
                },
                table_size: m,
                eligible: f.eligible.len(),
                affinity_secs: f.affinity_secs,
                local_only: f.local_only,
                backends,
            };
            match out.last_mut().filter(|s| &s.name == svc_name) {
                Some(s) => s.frontends.push(front),
                None => out.push(ServiceState {
                    name: svc_name.clone(),
                    frontends: vec![front],
                }),
            }
        }
        // A Service without frontends (headless) is still listed by name.
        if let Some(n) = name {
            if out.is_empty() {
                out.push(ServiceState {
                    name: n.to_string(),
                    frontends: Vec::new(),
                });
            }
        }
        Ok(out)
    }

    fn dispatch(&mut self, req: Request) -> Result<serde_json::Value, ApiError> {
        let to_json = |v: Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| ApiError::internal(e.to_string()))
        };
        match req {
            Request::Hello => to_json(serde_json::to_value(Hello {
                api_version: podswitch_api::API_VERSION,
                switch_version: env!("CARGO_PKG_VERSION").to_string(),
                node: self.node.name.clone(),
                workers: self.workers(),
            })),
            Request::AddPort(podswitch_api::AddPortArgs { pod }) => {
                if self.ports.contains_key(&pod.name) {
                    return Err(ApiError::new(
                        ErrorCode::AlreadyExists,
                        format!("pod {} already has a port", pod.name),
                    )
                    .with_field("pod.name"));
                }
                let spec = Self::resolve_pod(&self.node, &pod, "pod")?;
                let keep = self
                    .ports
                    .values()
                    .map(|p| (&p.spec, format!("existing pod {}", p.spec.name)));
                Self::check_unique(keep.chain(std::iter::once((&spec, "pod".to_string()))))?;
                let made = self.create_ports(std::slice::from_ref(&spec))?;
                self.install(made);
                self.publish();
                let st = &self.ports[&spec.name];
                to_json(serde_json::to_value(self.port_info(st)))
            }
            Request::RemovePort(podswitch_api::RemovePortArgs { name }) => {
                let st = self.remove(&name).ok_or_else(|| {
                    ApiError::new(ErrorCode::NotFound, format!("no pod {name}")).with_field("name")
                })?;
                self.publish();
                self.delete_links(&[st]);
                Ok(serde_json::Value::Null)
            }
            Request::ReplaceTopology(podswitch_api::ReplaceTopologyArgs { topology }) => {
                self.validate_remote_nodes(&topology.remote_nodes, &topology.node)?;
                let applied = self.apply(Some(topology.node), &topology.pods, &[], true)?;
                self.set_remote_nodes(topology.remote_nodes)?;
                self.publish();
                to_json(serde_json::to_value(applied))
            }
            Request::PatchTopology(podswitch_api::PatchTopologyArgs { add, remove }) => {
                let applied = self.apply(None, &add, &remove, false)?;
                to_json(serde_json::to_value(applied))
            }
            Request::SetRemoteNodes(podswitch_api::SetRemoteNodesArgs { nodes }) => {
                self.set_remote_nodes(nodes)?;
                self.publish();
                Ok(serde_json::Value::Null)
            }
            Request::SetServices(podswitch_api::SetServicesArgs { settings, services }) => {
                let mut next = BTreeMap::new();
                for (i, svc) in services.into_iter().enumerate() {
                    if next.contains_key(&svc.name) {
                        return Err(ApiError::new(
                            ErrorCode::AlreadyExists,
                            format!("service {} listed twice", svc.name),
                        )
                        .with_field(format!("services[{i}].name")));
                    }
                    next.insert(svc.name.clone(), svc);
                }
                let settings = settings.unwrap_or_else(|| self.service_settings.clone());
                let applied = self.apply_services(settings, next)?;
                to_json(serde_json::to_value(applied))
            }
            Request::PatchServices(podswitch_api::PatchServicesArgs { upsert, remove }) => {
                let applied = self.patch_services(upsert, remove)?;
                to_json(serde_json::to_value(applied))
            }
            Request::GetServices => Ok(serde_json::json!({
                "settings": self.service_settings,
                "services": self.services.values().collect::<Vec<_>>(),
            })),
            Request::ListFlows(podswitch_api::ListFlowsArgs { filter, limit }) => {
                let pred = flow_predicate(&filter)?;
                let limit = limit.unwrap_or(1000);
                let mut matched = 0;
                let flows = self.conntrack.list(usize::MAX, |f| {
                    let m = pred(f);
                    matched += usize::from(m);
                    m
                });
                to_json(serde_json::to_value(Flows {
                    total: self.conntrack.len(),
                    capacity: self.conntrack.capacity(),
                    matched,
                    flows: flows.into_iter().take(limit).collect(),
                }))
            }
            Request::Trace(podswitch_api::TraceArgs { ingress, packet }) => {
                let id = self
                    .ports
                    .get(&ingress)
                    .map(|p| p.id)
                    .or_else(|| {
                        self.host
                            .as_ref()
                            .filter(|h| ingress == format!("host/{}", h.name))
                            .map(|h| h.id)
                    })
                    .ok_or_else(|| {
                        ApiError::new(ErrorCode::NotFound, format!("no port {ingress}"))
                            .with_field("ingress")
                    })?;
                let snapshot = self.publisher.load_full();
                let t = crate::pipeline::trace::trace(
                    &snapshot.tables,
                    id,
                    &packet,
                    Some(&self.conntrack),
                )
                .map_err(|e| ApiError::invalid("packet", e))?;
                to_json(serde_json::to_value(t))
            }
            Request::FlushFlows(podswitch_api::FlushFlowsArgs { filter }) => {
                let pred = flow_predicate(&filter)?;
                let removed = self.conntrack.remove_where(|f| pred(f));
                Ok(serde_json::json!({ "removed": removed }))
            }
            Request::CaptureStart(spec) => {
                let (target, name) = self.capture_target(&spec.port)?;
                let started =
                    self.captures
                        .start(target, &name, &spec, Some(self.node.vxlan.port))?;
                to_json(serde_json::to_value(started))
            }
            Request::CaptureRead(podswitch_api::CaptureReadArgs { id, max_bytes }) => {
                to_json(serde_json::to_value(self.captures.read(id, max_bytes)?))
            }
            Request::CaptureStop(podswitch_api::CaptureStopArgs { id }) => {
                to_json(serde_json::to_value(self.captures.stop(id)?))
            }
            Request::GetNodes => to_json(serde_json::to_value(self.nodes())),
            Request::GetRoutes(podswitch_api::GetRoutesArgs { lookup }) => {
                to_json(serde_json::to_value(self.routes(lookup)))
            }
            Request::GetServiceState(podswitch_api::GetServiceStateArgs { name }) => {
                to_json(serde_json::to_value(self.service_state(name.as_deref())?))
            }
            Request::GetConfig => to_json(serde_json::to_value(&self.running_config)),
            Request::GetTopology => to_json(serde_json::to_value(Topology {
                node: self.node.clone(),
                pods: self.ports.values().map(|p| p.spec.clone()).collect(),
                remote_nodes: self.remote_nodes.clone(),
            })),
            Request::ListPorts => to_json(serde_json::to_value(
                self.ports
                    .values()
                    .map(|p| self.port_info(p))
                    .collect::<Vec<_>>(),
            )),
            Request::SetIoBackend(podswitch_api::SetIoBackendArgs { backend }) => {
                let has_rings = self.io_backend_rings == self.workers();
                let batched = match backend {
                    IoBackend::Syscalls => false,
                    IoBackend::Auto => has_rings,
                    IoBackend::IoUring if has_rings => true,
                    IoBackend::IoUring => {
                        return Err(ApiError::invalid(
                            "backend",
                            "the workers have no io_uring (the switch started with io_backend = \"syscalls\" or the kernel refused it)",
                        ))
                    }
                };
                self.poll_control.set_batched_io(batched);
                self.io_backend_in_use = if batched { "io_uring" } else { "syscalls" };
                self.running_config.config.io_backend = backend;
                tracing::info!(%backend, in_use = self.io_backend_in_use, "tap I/O set");
                to_json(serde_json::to_value(IoBackendSet {
                    in_use: self.io_backend_in_use.to_string(),
                }))
            }
            Request::SetVxlanTunnelGso(podswitch_api::SetVxlanTunnelGsoArgs { on }) => {
                if on && !self.tunnel_gso_available {
                    return Err(ApiError::invalid(
                        "on",
                        "the switch has no tunnel port (not VXLAN mode, vxlan_tunnel_gso = false at start, or a kernel before 6.17)",
                    ));
                }
                self.poll_control.set_tunnel_gso(on);
                self.running_config.config.vxlan_tunnel_gso = on;
                tracing::info!(on, "VXLAN UDP-tunnel GSO set");
                to_json(serde_json::to_value(VxlanTunnelGsoSet { in_use: on }))
            }
            Request::SetPollMode(podswitch_api::SetPollModeArgs { mode, budget_us }) => {
                let budget_us = budget_us.unwrap_or(self.running_config.config.adaptive_poll_us);
                check_budget_us(budget_us)
                    .map_err(|e| ApiError::invalid("budget_us", e.to_string()))?;
                self.poll_control.set(mode, budget_us);
                // A parked worker picks the change up now, not after its park.
                for w in &self.wakers {
                    let _ = w.wake();
                }
                self.running_config.config.poll_mode = mode;
                self.running_config.config.adaptive_poll_us = budget_us;
                tracing::info!(%mode, budget_us, "poll mode set");
                to_json(serde_json::to_value(PollSettings { mode, budget_us }))
            }
            Request::GetStats => to_json(serde_json::to_value(Stats {
                generation: self.generation,
                workers: self.workers(),
                io_backend: self.io_backend_in_use.to_string(),
                vxlan_tunnel_gso: self.tunnel_gso_available && self.poll_control.tunnel_gso(),
                datapath: crate::metrics::datapath_stats(&self.counters),
                ports: self.ports.values().map(|p| self.port_info(p)).collect(),
            })),
        }
    }
}

impl crate::control::server::Handler for SwitchState {
    fn handle(&mut self, req: Request) -> Result<serde_json::Value, ApiError> {
        SwitchState::handle(self, req)
    }
}

/// The predicate a [`FlowFilter`] describes; a bad field is an error
/// naming it.
fn flow_predicate(
    f: &FlowFilter,
) -> Result<impl Fn(&crate::conntrack::FlowInfo) -> bool, ApiError> {
    let proto = match f.proto.as_deref() {
        None => None,
        Some("tcp") => Some(6u8),
        Some("udp") => Some(17),
        Some("icmp") => Some(1),
        Some(p) => {
            return Err(ApiError::invalid(
                "filter.proto",
                format!("{p:?} is not tcp, udp or icmp"),
            ))
        }
    };
    let state = match &f.state {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<crate::conntrack::FlowState>(serde_json::Value::String(
                s.clone(),
            ))
            .map_err(|_| ApiError::invalid("filter.state", format!("unknown state {s:?}")))?,
        ),
    };
    let (addr, port) = (f.addr, f.port);
    Ok(move |fl: &crate::conntrack::FlowInfo| {
        let keys = [Some(fl.orig), fl.reply];
        let keys = keys.iter().flatten();
        proto.is_none_or(|p| fl.orig.proto == p)
            && state.is_none_or(|s| fl.state == s)
            && addr.is_none_or(|a| {
                keys.clone().any(|k| {
                    a.contains(&std::net::IpAddr::V4(k.src))
                        || a.contains(&std::net::IpAddr::V4(k.dst))
                })
            })
            && port.is_none_or(|p| keys.clone().any(|k| k.sport == p || k.dport == p))
    })
}

/// An error and its sources, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let msg = c.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        cur = c.source();
    }
    s
}

/// Runs the daemon until SIGINT/SIGTERM.
pub fn run(mut config: DaemonConfig) -> anyhow::Result<()> {
    if config.workers == 0 {
        config.workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
    }
    config.workers = config.workers.clamp(1, crate::port::tap::MAX_QUEUES);
    check_budget_us(config.adaptive_poll_us).context("adaptive_poll_us")?;
    let poll_control = Arc::new(PollControl::new(config.poll_mode, config.adaptive_poll_us));
    anyhow::ensure!(
        !config.node_port_addresses.is_empty(),
        "node_port_addresses is empty: list \"primary\" and/or CIDRs (0.0.0.0/0 opens NodePorts on every address)"
    );
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating state dir {}", config.state_dir.display()))?;
    let state_file = config.state_dir.join("state.json");
    let saved: Option<SavedState> = match std::fs::read(&state_file) {
        Ok(b) => Some(
            serde_json::from_slice(&b)
                .with_context(|| format!("parsing {}", state_file.display()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", state_file.display())),
    };
    let running_config = RunningConfig {
        switch_version: env!("CARGO_PKG_VERSION").to_string(),
        config: config.clone(),
        log_format: log_format_of_this_process(),
        log_filter: std::env::var("PODSWITCH_LOG").unwrap_or_else(|_| "info".to_string()),
        state_file: state_file.clone(),
        node_from_state: saved.is_some(),
    };
    let node = saved
        .as_ref()
        .map(|s| s.node.clone())
        .unwrap_or_else(|| config.node.clone());
    SwitchState::validate_node(&node).map_err(|e| anyhow::anyhow!("node config: {e}"))?;

    let shutdown = Arc::new(AtomicBool::new(false));
    let health = Arc::new(crate::exporter::Health::default());
    health.beat();
    let gw = Gateway {
        mac: node.gateway_mac.0,
        ipv4: node.gateway_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED),
        ipv6: None,
    };
    let publisher = Arc::new(TablePublisher::new(Snapshot::empty(Tables::new(
        &node.name,
        gw.clone(),
        node.pod_cidrs.clone(),
        Vec::new(),
    ))));
    let mut wakers = Vec::new();
    let mut counters = Vec::new();
    let mut rings = 0;
    let mut handles = Vec::new();
    // Flows handed over by the previous switch go in before any worker runs.
    let mut table = ConnTrack::new(config.conntrack, config.workers);
    let handover = take_handover(&config.state_dir, &node.name, &mut table);
    let conntrack = Arc::new(table);
    let captures = Arc::new(crate::capture::CaptureHub::new(config.workers));
    tracing::info!(
        max_flows = conntrack.capacity(),
        memory_mib = conntrack.memory_bytes() >> 20,
        "conntrack table allocated"
    );
    // Whole TCP superframes to the underlay, where the kernel can take them.
    let mut tunnel_queues = Vec::new();
    let mut tunnel_mac = [0u8; 6];
    if node.mode == ClusterMode::Vxlan && config.vxlan_tunnel_gso {
        match pod::tunnel_port(TUNNEL_PORT_NAME, config.workers) {
            Ok((queues, mac)) => {
                tunnel_queues = queues;
                tunnel_mac = mac;
            }
            Err(e) => tracing::warn!(
                error = %error_chain(&e),
                "no UDP-tunnel GSO (needs Linux 6.17 or later): VXLAN superframes are segmented in the switch"
            ),
        }
    }
    let tunnel_gso_available = !tunnel_queues.is_empty();
    let mut tunnel_queues = tunnel_queues.into_iter();
    for id in 0..config.workers {
        let c = Arc::new(WorkerCounters::default());
        let overlay = match (node.mode, node.underlay_ipv4) {
            (ClusterMode::Vxlan, Some(local)) => Some({
                let io =
                    crate::worker::OverlayIo::bind(local, node.vxlan.port).with_context(|| {
                        format!("binding the VXLAN socket on {local}:{}", node.vxlan.port)
                    })?;
                match tunnel_queues.next() {
                    Some(q) => io.with_tunnel(q, tunnel_mac),
                    None => io,
                }
            }),
            (ClusterMode::Vxlan, None) => {
                anyhow::bail!("VXLAN mode needs the node's underlay address (--underlay-ip)")
            }
            _ => None,
        };
        let (worker, waker) = Worker::new(
            id,
            Arc::clone(&publisher),
            Arc::clone(&c),
            Arc::clone(&shutdown),
            overlay,
            Arc::clone(&conntrack),
            config.workers,
        )
        .context("creating worker poller")?;
        let ring = crate::worker::tap_ring(config.io_backend, id).with_context(|| {
            format!("setting up io_uring for worker {id} (io_backend = \"io_uring\")")
        })?;
        rings += usize::from(ring.is_some());
        let worker = worker
            .with_captures(Arc::clone(&captures))
            .with_poll_control(Arc::clone(&poll_control))
            .with_ring(ring);
        wakers.push(waker);
        counters.push(c);
        let running = health.worker_started();
        handles.push(
            std::thread::Builder::new()
                .name(format!("psw-worker-{id}"))
                .spawn(move || {
                    // Counted until the worker returns or unwinds.
                    let _running = running;
                    worker.run()
                })
                .context("spawning worker")?,
        );
    }
    let node_ip = node.underlay_ipv4;
    let mut state = SwitchState {
        node,
        host: None,
        vtep: None,
        remote_nodes: Vec::new(),
        services: BTreeMap::new(),
        service_settings: ServiceSettings::default(),
        service_table: Arc::new(ServiceTable::empty(gw.ipv4)),
        service_layout: ServiceLayout::default(),
        maglev_size: config.maglev_table_size,
        conntrack: Arc::clone(&conntrack),
        node_port_addresses: config.node_port_addresses.clone(),
        node_port_ips: node_ports::resolve(&config.node_port_addresses, node_ip, &[]),
        steered: BTreeMap::new(),
        ports: BTreeMap::new(),
        slots: Vec::new(),
        generation: 0,
        publisher,
        wakers,
        counters,
        state_file,
        apply_seconds: crate::exporter::apply_latency_histogram(),
        captures: Arc::clone(&captures),
        running_config,
        poll_control,
        io_backend_rings: rings,
        tunnel_gso_available,
        io_backend_in_use: if rings == config.workers {
            "io_uring"
        } else if rings == 0 {
            "syscalls"
        } else {
            "mixed"
        },
    };
    if let Some(name) = state.node.host_interface.clone() {
        // The node forwards between its pods, the host port and the underlay.
        if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
            tracing::warn!(error = %e, "cannot enable IPv4 forwarding in the node's namespace");
        }
        let (queues, mac) =
            pod::host_port(&name, config.workers, state.node.mtu, &state.node.pod_cidrs)
                .map_err(|e| anyhow::anyhow!("{}", error_chain(&e)))?;
        let id = state.alloc_slot(&format!("host/{name}"));
        state.host = Some(HostPort {
            id,
            name,
            mac,
            io: Arc::new(PortIo::new(queues)),
        });
    }
    if let Some(ips) = state.resolve_node_port_ips() {
        state.node_port_ips = ips;
    }
    tracing::info!(addresses = ?state.node_port_ips, "NodePorts open on these addresses");
    if let (ClusterMode::Vxlan, Some(local)) = (state.node.mode, state.node.underlay_ipv4) {
        let id = state.alloc_slot("overlay/vxlan");
        let mac = state
            .node
            .vxlan
            .vtep_mac
            .unwrap_or_else(|| Mac::for_vtep(local));
        state.vtep = Some(Vtep { id, mac, local });
    }
    // Re-attach to the pods of the previous run.
    if let Some(saved) = saved {
        if let Err(e) = state.set_remote_nodes(saved.remote_nodes) {
            tracing::warn!(error = %e, "remote nodes of the previous run not restored");
        }
        for spec in saved.pods {
            let mac = spec.mac.map(|m| m.0).unwrap_or_default();
            match pod::reattach(&spec.name, &spec.netns, &spec.ifname, mac, config.workers) {
                Ok(queues) => {
                    tracing::info!(pod = %spec.name, "re-attached to persistent tap");
                    state.install(vec![(spec, queues)]);
                }
                Err(e) => tracing::warn!(error = %e, "pod from the previous run not re-attached"),
            }
        }
    }
    // The handed-over Services, so the restored flows translate from the
    // first packet; the agent's next push replaces them.
    if let Some(h) = handover {
        let services = h
            .services
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        match state.apply_services(h.settings, services) {
            Ok(a) => tracing::info!(
                services = a.services,
                flows_reset = a.flows_reset,
                "Services handed over by the previous switch restored"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "handover Services refused; waiting for the agent's")
            }
        }
    }
    state.publish();
    health.set_published();
    let state_io = state.io_backend_in_use;
    let apply_seconds = state.apply_seconds.clone();
    let state = Arc::new(Mutex::new(state));
    let exporter_thread = match config.metrics_address {
        Some(addr) => {
            let st = Arc::clone(&state);
            let source = Box::new(move || st.lock().ok().map(|s| s.scrape_sources()));
            let registry = crate::exporter::registry(source, apply_seconds);
            let exporter = crate::exporter::Exporter::bind(addr, registry, Arc::clone(&health))?;
            let s = Arc::clone(&shutdown);
            tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
            Some(
                std::thread::Builder::new()
                    .name("psw-metrics".into())
                    .spawn(move || exporter.serve(s))
                    .context("spawning metrics thread")?,
            )
        }
        None => None,
    };
    let server = crate::control::server::ControlServer::bind(&config.control_socket)?;
    let server_shutdown = Arc::clone(&shutdown);
    let server_state = Arc::clone(&state);
    let server_thread = std::thread::Builder::new()
        .name("psw-control".into())
        .spawn(move || server.serve(server_state, server_shutdown))
        .context("spawning control thread")?;
    {
        let s = Arc::clone(&shutdown);
        ctrlc::set_handler(move || s.store(true, Ordering::SeqCst))
            .context("installing signal handler")?;
    }
    tracing::info!(node = %config.node.name, workers = config.workers, poll_mode = %config.poll_mode, adaptive_poll_us = config.adaptive_poll_us, io = state_io, socket = %config.control_socket.display(), "switch running");
    tracing::debug!(?config, "daemon configuration");
    let needs_address_checks = node_ports::needs_local_addresses(&config.node_port_addresses);
    // The flow table's sweeper runs here, off the workers.
    let mut last_sweep = std::time::Instant::now();
    let mut last_address_check = std::time::Instant::now();
    while !shutdown.load(Ordering::SeqCst) {
        health.beat();
        // Each wake-up of an idle thread costs ~0.5 ms of CPU on a small VM:
        // an idle switch wakes ~15 times a second in all (#29: <= 1 % of a core).
        std::thread::sleep(MAIN_TICK);
        // Captures that ended or lost their reader stop costing the workers.
        captures.reap(std::time::Instant::now());
        if last_sweep.elapsed() >= SWEEP_INTERVAL {
            last_sweep = std::time::Instant::now();
            let r = conntrack.sweep(last_sweep);
            if r.expired + r.evicted > 0 {
                tracing::debug!(?r, flows = conntrack.len(), "conntrack sweep");
            }
        }
        if needs_address_checks && last_address_check.elapsed() >= ADDRESS_CHECK_INTERVAL {
            last_address_check = std::time::Instant::now();
            if let Ok(mut st) = state.lock() {
                st.refresh_node_port_ips();
            }
        }
    }
    tracing::info!("shutting down; pod taps persist");
    if let Ok(st) = state.lock() {
        for w in &st.wakers {
            let _ = w.wake();
        }
    }
    for h in handles {
        let _ = h.join();
    }
    // The workers are gone: the flow table is final. Hand it over, with
    // the Services (under the lock: no request changes them meanwhile).
    {
        let st = state.lock().unwrap_or_else(|e| e.into_inner());
        write_handover(&config.state_dir, &st);
    }
    let _ = std::fs::remove_file(&config.control_socket);
    drop(server_thread);
    if let Some(t) = exporter_thread {
        let _ = t.join();
    }
    Ok(())
}

/// The log format `podswitch` was started with: its global
/// `--log-format` flag, else `PODSWITCH_LOG_FORMAT`, else `text` (the
/// CLI's precedence). `None` when this process is not the `podswitch`
/// binary (a test harness running the daemon in-process).
fn log_format_of_this_process() -> Option<String> {
    let mut args = std::env::args();
    let exe = args.next()?;
    if !Path::new(&exe)
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("podswitch"))
    {
        return None;
    }
    let mut flag = None;
    while let Some(a) = args.next() {
        if a == "--log-format" {
            flag = args.next();
        } else if let Some(v) = a.strip_prefix("--log-format=") {
            flag = Some(v.to_string());
        }
    }
    Some(
        flag.or_else(|| std::env::var("PODSWITCH_LOG_FORMAT").ok())
            .unwrap_or_else(|| "text".to_string()),
    )
}

/// The default state directory for a node.
pub fn default_state_dir(node: &str) -> PathBuf {
    Path::new("/run/podswitch").join(node)
}

/// The node as its service table sees it.
fn service_view<'a>(
    node: &'a NodeSpec,
    maglev_size: usize,
    node_port_ips: &'a [Ipv4Addr],
) -> NodeView<'a> {
    NodeView {
        name: &node.name,
        node_ip: node.underlay_ipv4,
        node_port_ips,
        gateway_ip: node.gateway_ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED),
        mode: node.mode,
        maglev_size,
    }
}

/// Helper for configs: a node spec from a name and pod CIDR.
pub fn node_spec(name: &str, pod_cidr: IpNet, mtu: u32) -> NodeSpec {
    NodeSpec {
        name: name.to_string(),
        pod_cidrs: vec![pod_cidr],
        gateway_mac: Mac([0xee; 6]),
        gateway_ipv4: None,
        mtu,
        host_interface: Some("psw0".to_string()),
        underlay_ipv4: None,
        mode: ClusterMode::Native,
        vxlan: VxlanSpec::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::ConntrackConfig;

    fn config_with(metrics: Option<serde_json::Value>) -> DaemonConfig {
        let node = node_spec("node-1", "10.244.1.0/24".parse().unwrap(), 1500);
        let mut v = serde_json::json!({
            "node": node,
            "control_socket": "/run/podswitch/t.sock",
            "state_dir": "/run/podswitch/t",
        });
        if let Some(m) = metrics {
            v["metrics_address"] = m;
        }
        serde_json::from_value(v).expect("config parses")
    }

    #[test]
    fn metrics_address_defaults_to_localhost_and_empty_disables_it() {
        assert_eq!(
            config_with(None).metrics_address,
            Some(crate::exporter::DEFAULT_METRICS_ADDRESS)
        );
        assert_eq!(config_with(Some("".into())).metrics_address, None);
        assert_eq!(
            config_with(Some("0.0.0.0:9100".into())).metrics_address,
            Some("0.0.0.0:9100".parse().unwrap())
        );
        assert_eq!(
            config_with(Some(serde_json::Value::Null)).metrics_address,
            None
        );
    }

    fn handover_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("psw-daemon-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn one_flow_table() -> ConnTrack {
        let ct = ConnTrack::new(ConntrackConfig::default(), 1);
        let k = crate::conntrack::FlowKey::new(
            Ipv4Addr::new(10, 244, 1, 2),
            40000,
            Ipv4Addr::new(203, 0, 113, 10),
            8000,
            6,
        );
        let r = crate::conntrack::FlowKey::new(k.dst, 8000, Ipv4Addr::new(198, 18, 0, 1), 61443, 6);
        ct.insert(
            k,
            Some(r),
            crate::conntrack::FlowState::Established,
            crate::conntrack::flow_flags::SNAT,
            0,
            0,
            0,
        )
        .unwrap();
        ct
    }

    /// A handover is consumed: its flows and Services come back once; the
    /// Services of another node are not taken.
    #[test]
    fn handover_is_loaded_once_and_only_for_its_node() {
        let dir = handover_dir("once");
        let extra = serde_json::to_vec(&HandoverServices {
            node: "node-1".into(),
            settings: ServiceSettings::default(),
            services: Vec::new(),
        })
        .unwrap();
        let path = dir.join(HANDOVER_FILE);
        let save = || {
            crate::conntrack::persist::save(
                &one_flow_table(),
                &path,
                &extra,
                std::time::Instant::now(),
                std::time::SystemTime::now(),
            )
            .unwrap()
        };
        save();
        let mut ct = ConnTrack::new(ConntrackConfig::default(), 1);
        let services = take_handover(&dir, "node-1", &mut ct).expect("services back");
        assert!(services.services.is_empty());
        assert_eq!(ct.len(), 1);
        assert!(!path.exists(), "consumed");
        let mut ct = ConnTrack::new(ConntrackConfig::default(), 1);
        assert!(take_handover(&dir, "node-1", &mut ct).is_none());
        assert!(ct.is_empty(), "a cold start");

        save();
        let mut ct = ConnTrack::new(ConntrackConfig::default(), 1);
        assert!(take_handover(&dir, "node-2", &mut ct).is_none());
        assert_eq!(ct.len(), 1, "flows are the node's own state dir's");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A damaged handover never stops the switch: it starts empty and the
    /// file is set aside for a look.
    #[test]
    fn a_damaged_handover_is_set_aside_and_the_switch_starts_empty() {
        let dir = handover_dir("bad");
        let path = dir.join(HANDOVER_FILE);
        crate::conntrack::persist::save(
            &one_flow_table(),
            &path,
            b"{}",
            std::time::Instant::now(),
            std::time::SystemTime::now(),
        )
        .unwrap();
        let mut b = std::fs::read(&path).unwrap();
        b.truncate(b.len() - 10);
        std::fs::write(&path, &b).unwrap();
        let mut ct = ConnTrack::new(ConntrackConfig::default(), 1);
        assert!(take_handover(&dir, "node-1", &mut ct).is_none());
        assert!(ct.is_empty());
        assert!(!path.exists());
        assert!(dir.join("handover.bin.rejected").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
