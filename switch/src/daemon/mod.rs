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

mod dispatch;
mod handover;
pub mod kernel;
mod plan;
#[cfg(test)]
mod tests_kernel;
mod views;

pub use handover::HANDOVER_FILE;
use handover::{take_handover, write_handover};
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
use crate::tables::services::{
    NodeView, PatchedTable, ServiceError, ServiceErrorKind, ServiceLayout, ServiceTable,
};
use crate::tables::{Gateway, PodPort, PortId, PortKind, RouteTarget, TablePublisher, Tables};
use crate::worker::poll::{check_budget_us, PollControl};
use crate::worker::{IoBackend, PortIo, Snapshot, Worker};
use podswitch_api::{
    ApiError, Applied, BackendState, ClusterMode, ErrorCode, FlowFilter, Flows, FlowsRemoved,
    FrontendState, Hello, IoBackendSet, KernelRoute, LocalNodeState, Mac, NodeSpec, Nodes, PodSpec,
    PollSettings, PortInfo, RemoteNode, RemoteNodeState, Reply, Request, RouteEntry, RouteHop,
    RouteLookup, Routes, RunningConfig, ServiceRouting, ServiceSettings, ServiceSpec, ServiceState,
    Services, ServicesApplied, Stats, Topology, VtepState, VxlanSpec, VxlanTunnelGsoSet,
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
    /// Where taps, routes and steering are made ([`kernel::LinuxKernel`],
    /// or a fake in unit tests).
    kernel: Box<dyn kernel::NodeKernel>,
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

    fn apply(
        &mut self,
        new_node: Option<NodeSpec>,
        add: &[PodSpec],
        remove: &[String],
        exact: bool,
    ) -> Result<Applied, ApiError> {
        let current: BTreeMap<&str, &PodSpec> = self
            .ports
            .iter()
            .map(|(n, p)| (n.as_str(), &p.spec))
            .collect();
        let plan::PortPlan {
            node,
            to_remove,
            to_add,
            unchanged,
        } = plan::plan_ports(&self.node, &current, new_node, add, remove, exact)?;
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
        let settings = self.service_settings.clone();
        self.route_service_cidrs(&settings);
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
/// `log_format` is how the process logs (`text` or `json`), for
/// `ctl config`; the daemon does not set up logging itself.
pub fn run(mut config: DaemonConfig, log_format: Option<String>) -> anyhow::Result<()> {
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
        log_format,
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
        kernel: Box::new(kernel::LinuxKernel),
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
    use super::handover::HandoverServices;
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
