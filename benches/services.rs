//! Packet rate of the service datapath: a pod talks to a ClusterIP whose
//! endpoints live on another node, so every packet is parsed, matched to
//! its flow (or given one: Maglev pick and insert), destination-translated,
//! routed to the overlay and VXLAN-encapsulated; and the cost of building
//! the service table the stage reads.
//!
//! Topology (everything in memory, no taps, no sockets):
//!
//! ```text
//!   bench-node 198.18.0.1                          n2 198.18.0.2
//!   pod-0   10.244.1.2   (port 0) ──┐              ┌── 10.244.2.10:80
//!   ...                             ├─ psw ══VXLAN═╪── 10.244.2.11:80
//!   pod-249 10.244.1.251 (port 249)─┘   VNI 1      └── 10.244.2.12:80
//!
//!   service default/web: ClusterIP 10.96.0.10:8080/TCP -> the three above
//! ```
//!
//! A flow is a pod and a source port (`flow(i)`: pod `i % 250`, port
//! `1024 + i / 250`), so every frame carries its pod's own MAC and address
//! and enters on its pod's port, as the parse stage's anti-spoofing demands.
//!
//! | case (`services/`)            | what is timed, per batch of [`BATCH`]                      | target       |
//! | ----------------------------- | ---------------------------------------------------------- | ------------ |
//! | `established_hot_100k`        | ACKs of flows picked at random among 100k: `process`+encap | >= 20 Mpps   |
//! | `established_cached_4k`       | same among 4k flows, whose table lines all fit in L2       | (no target)  |
//! | `established_cold_1m`         | same among 1M flows (table of 2M slots), cache-cold        | >= 5 Mpps    |
//! | `new_flow`                    | SYNs of never-seen tuples: Maglev, insert, DNAT, encap     | >= 2 Mpps    |
//! | `vxlan_encap`                 | ACKs from pods straight to a pod on n2 (no service): encap | (no target)  |
//! | `vxlan_decap`                 | the reverse: datagrams from n2's pods, decap, to our pods  | (no target)  |
//! | `build_10k_services`          | `ServiceTable::build`, 10k ClusterIPs x 5 endpoints        | <= 1 s       |
//! | `build_10k_services_nodeport` | same with a NodePort on every service (20k frontends)      | (no target)  |
//!
//! The build cases run with the node's Maglev size cap at its default,
//! [`DEFAULT_TABLE_SIZE`]; the table sizes itself to the endpoint count
//! (`maglev_size_for`: 5 endpoints get 1021 slots) and frontends with the
//! same endpoints share one lookup table, so the NodePort variant builds
//! no more tables than the plain one. The old table is dropped outside
//! the clock. Set-up prints how many tables were built and their size.
//!
//! Per-packet cases report packets per second (`Throughput::Elements`);
//! the build cases report frontends per second, and their time per
//! iteration is the build time.
//!
//! The two overlay cases need no service: `vxlan_encap` sends ACKs of
//! flows from our pods to 10.244.2.100:80 (routed to n2, untracked, so the
//! fast path takes them), encapsulated as below; `vxlan_decap` receives
//! [`BATCH`] VXLAN datagrams from n2, ACKs from pods 10.244.2.100-149 port
//! 80 to pods 0..63 here, and does what the worker does with them (see
//! [`Decapsulator`]) before `Pipeline::process` forwards them to the pods.
//!
//! # What "encap" means here
//!
//! After `Pipeline::process`, each `Encap { node }` packet is encapsulated
//! the way the worker's `send_encap` does for a plain (non-GSO) frame: the
//! inner frame is copied behind a VXLAN header into an output area and the
//! UDP source port comes from the inner flow hash (RFC 7348 §5). The worker
//! leaves the outer IPv4/UDP to its kernel socket; here the outer Ethernet,
//! IPv4 and UDP headers are written too, from a per-node template with the
//! lengths and the IPv4 checksum patched per packet (50 bytes in all), which
//! is what an encapsulation that owns its headers costs. `send_encap` is
//! not a pure function (it ends in a `sendmsg`), and a `Packet`'s headroom
//! is private to the switch crate, so the bench writes into its own area.
//!
//! # Timing model
//!
//! As in `benches/pipeline.rs`: one `Batch` per case, reused. Before each
//! timed batch the untimed setup writes [`BATCH`] frames into it (a copy of
//! a template with the source MAC, address, port and checksums patched for
//! the flow); only `process` and the encapsulation are inside the clock
//! (two `Instant::now` reads per batch included).
//!
//! The flows of the established cases are opened once, untimed, by running
//! one SYN per flow through the same pipeline; they stay in `SynSent` (no
//! SYN+ACK comes back), which costs the ACK path exactly what `Established`
//! does: lookup, translation, one TCP transition, no store. The new-flow
//! case creates flows in a table of 4M slots and empties it (untimed,
//! `ConnTrack::remove_where`) before it passes 3M, below the 7/8 mark where
//! the sweeper would start evicting; its tuples cycle through 16M, so none
//! is in the table when it comes round again.
//!
//! Before measuring, every case runs once and is checked: verdicts `Encap`
//! to the remote node, inner destination a backend at port 80 with the
//! client's address and port kept, the outer headers valid (IPv4 checksum,
//! UDP length, VXLAN I flag and VNI) and followed by the inner frame; the
//! established cases must create no flow and the new-flow case one per SYN.
//!
//! Under `cargo test --benches` (no `--bench` argument) each case runs once
//! with its scale cut down (10k and 20k flows, 100 services), so CI stays
//! fast.
//!
//! # Instructions per packet
//!
//! `services --instructions CASE` runs one packet case a fixed number of
//! batches at the bench scale with a frozen clock, for callgrind
//! (`benches/instructions/mod.rs`); `benches/tools/instructions.sh` counts
//! the established 4k and 100k cases, `new_flow`, `vxlan_encap` and
//! `vxlan_decap` that way on every `./run test` (through the switch
//! crate's `instructions` bench, which compiles this file as a module) and
//! fails when one grows more than 5 % over its committed baseline. The
//! flow table's hash seed is fixed ([`CONNTRACK_SEED`]) in every mode, so
//! the chains are the same from one run to the next.
//!
//! Run: `cargo bench --bench services` (about a minute) or
//! `cargo bench --bench services -- established_hot` for one case.

use std::collections::HashSet;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use etherparse::{PacketBuilder, TcpOptionElement};
use podswitch_switch::conntrack::{ConnTrack, ConntrackConfig};
use podswitch_switch::control::api::{
    ClusterMode, EndpointSpec, Protocol, ServicePortSpec, ServiceSettings, ServiceSpec,
};
use podswitch_switch::metrics::WorkerCounters;
use podswitch_switch::pipeline::{decap, Batch, DropReason, Packet, Pipeline, Verdict};
use podswitch_switch::tables::maglev::{Maglev, DEFAULT_TABLE_SIZE};
use podswitch_switch::tables::services::{maglev_size_for, NodeView, ServiceLayout, ServiceTable};
use podswitch_switch::tables::{Gateway, Overlay, OverlayNode, PodPort, PortId, PortKind, Tables};
use podswitch_switch::wire::{checksum, vnet_hdr, vxlan};

mod instructions;

/// Frames per batch, as a worker reads them.
const BATCH: usize = 64;
/// Pods on the benchmark node (the clients).
const PODS: usize = 250;
/// The first source port of every pod's flows.
const FIRST_SPORT: u16 = 1024;
/// Source ports per pod: 1024..65535.
const SPORTS: usize = 65535 - FIRST_SPORT as usize;
/// TCP payload of the measured ACK segments (a small request).
const PAYLOAD: usize = 64;
/// The gateway's MAC and address (first of the pod CIDR).
const GW_MAC: [u8; 6] = [0xee; 6];
const GW_IP: [u8; 4] = [10, 244, 1, 1];
/// The service: ClusterIP 10.96.0.10:8080/TCP.
const VIP: [u8; 4] = [10, 96, 0, 10];
const VIP_PORT: u16 = 8080;
/// Its endpoints, pods on node n2.
const BACKENDS: [[u8; 4]; 3] = [[10, 244, 2, 10], [10, 244, 2, 11], [10, 244, 2, 12]];
const BACKEND_PORT: u16 = 80;
/// The pod on n2 the `vxlan_encap` flows go to (no service), and the
/// first of the 50 pods the `vxlan_decap` datagrams come from.
const REMOTE_POD: [u8; 4] = [10, 244, 2, 100];
const REMOTE_POD_PORT: u16 = 80;
/// Flows the `vxlan_encap` case cycles through (untracked: only the
/// frames differ).
const ENCAP_FLOWS: usize = 4_000;
/// The flow table's hash seed (fixed: the same chains on every run).
const CONNTRACK_SEED: u64 = 0x5eed_c0ff_ee00_0002;
/// Underlay addresses (TEST-NET benchmarking range, RFC 2544).
const NODE_IP: [u8; 4] = [198, 18, 0, 1];
const NODE_PORT_IPS: &[Ipv4Addr] = &[Ipv4Addr::new(198, 18, 0, 1)];
const REMOTE_IP: [u8; 4] = [198, 18, 0, 2];
/// VTEP MACs of this node and of n2, and the underlay MACs (this node's
/// NIC, n2's NIC as the next hop).
const VTEP_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
const REMOTE_VTEP_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
const NIC_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 1];
const REMOTE_NIC_MAC: [u8; 6] = [0x02, 0xbb, 0, 0, 0, 2];
const VNI: u32 = 1;
/// The overlay port's id (after the pods) and MTU (1500 - 50).
const OVERLAY_PORT: PortId = PODS as PortId;
const OVERLAY_MTU: u32 = 1450;
/// Outer Ethernet + IPv4 + UDP, then VXLAN.
const OUTER_LEN: usize = 14 + 20 + 8;
const ENCAP_LEN: usize = OUTER_LEN + vxlan::HEADER_LEN;
/// Room per packet in the encapsulation output area: headers and a
/// 1500-byte datagram, 25 cache lines (not a power of two, so the slots'
/// first lines do not all fall in the same L1 sets).
const ENCAP_SLOT: usize = 1600;

/// Criterion passes `--bench` when benchmarking; without it (`cargo test
/// --benches`) each case runs once and the scale is cut down.
fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// How big each case is.
#[derive(Debug, Clone, Copy)]
struct Scale {
    cached_flows: usize,
    hot_flows: usize,
    cold_flows: usize,
    cold_max_flows: usize,
    new_flow_max_flows: usize,
    services: usize,
}

impl Scale {
    fn get() -> Scale {
        if bench_mode() {
            Self::BENCH
        } else {
            Scale {
                cached_flows: 1_000,
                hot_flows: 10_000,
                cold_flows: 20_000,
                cold_max_flows: 40_000,
                new_flow_max_flows: 65_536,
                services: 100,
            }
        }
    }

    /// The scale benchmarked, and counted in the instruction-count mode.
    const BENCH: Scale = Scale {
        cached_flows: 4_000,
        hot_flows: 100_000,
        cold_flows: 1_000_000,
        cold_max_flows: 2_000_000,
        new_flow_max_flows: 4_000_000,
        services: 10_000,
    };
}

/// The address of pod `i`: 10.244.1.(i + 2).
fn pod_ip(i: usize) -> [u8; 4] {
    [10, 244, 1, i as u8 + 2]
}

/// The MAC of a pod, derived from its address as the CNI bridge plugin does.
fn mac_of(ip: [u8; 4]) -> [u8; 6] {
    [0x0a, 0x58, ip[0], ip[1], ip[2], ip[3]]
}

/// Flow `i`: its pod and source port.
fn flow(i: usize) -> (usize, u16) {
    let port = i / PODS % SPORTS;
    (i % PODS, FIRST_SPORT + port as u16)
}

/// The node: [`PODS`] pods on 10.244.1.0/24, the overlay to n2 (pod CIDR
/// 10.244.2.0/24), and the service table.
fn tables() -> Tables {
    let pod = |i: usize| {
        let ip = pod_ip(i);
        Some(PodPort {
            id: i as PortId,
            pod: format!("bench/pod-{i}"),
            ifname: "eth0".into(),
            netns: PathBuf::from(format!("/run/netns/bench-pod{i}")),
            mac: mac_of(ip),
            ipv4: Some(Ipv4Addr::from(ip)),
            ipv6: None,
            mtu: OVERLAY_MTU,
            offloads: true,
            kind: PortKind::Pod,
        })
    };
    let mut ports: Vec<Option<PodPort>> = (0..PODS).map(pod).collect();
    ports.push(Some(PodPort {
        id: OVERLAY_PORT,
        pod: "overlay/vxlan".into(),
        ifname: "vxlan".into(),
        netns: PathBuf::new(),
        mac: VTEP_MAC,
        ipv4: None,
        ipv6: None,
        mtu: OVERLAY_MTU,
        offloads: true,
        kind: PortKind::Overlay,
    }));
    let gateway = Gateway {
        mac: GW_MAC,
        ipv4: Ipv4Addr::from(GW_IP),
        ipv6: None,
    };
    let mut t = Tables::new(
        "bench-node",
        gateway,
        vec!["10.244.1.0/24".parse().expect("valid CIDR")],
        ports,
    )
    .with_overlay(Overlay {
        vni: VNI,
        udp_port: vxlan::UDP_PORT,
        local_ipv4: Ipv4Addr::from(NODE_IP),
        vtep_mac: VTEP_MAC,
        port: OVERLAY_PORT,
        pod_mtu: 1450,
        nodes: vec![OverlayNode {
            name: "n2".into(),
            underlay_ipv4: Ipv4Addr::from(REMOTE_IP),
            vtep_mac: REMOTE_VTEP_MAC,
            pod_cidrs: vec!["10.244.2.0/24".parse().expect("valid CIDR")],
        }],
    });
    let web = ServiceSpec {
        name: "default/web".into(),
        cluster_ips: vec![Ipv4Addr::from(VIP)],
        external_ips: vec![],
        ports: vec![ServicePortSpec {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: VIP_PORT,
            node_port: None,
            endpoints: BACKENDS
                .iter()
                .map(|ip| EndpointSpec {
                    ip: Ipv4Addr::from(*ip),
                    port: BACKEND_PORT,
                    node: Some("n2".into()),
                    ready: true,
                    terminating: false,
                    serving: None,
                })
                .collect(),
        }],
        affinity_timeout_secs: None,
        external_traffic_local: false,
        internal_traffic_local: false,
    };
    t.services = Arc::new(
        ServiceTable::build([&web], &ServiceSettings::default(), &node_view())
            .expect("the bench service is valid"),
    );
    t
}

/// This node as the service table sees it (VXLAN mode, default Maglev size).
fn node_view() -> NodeView<'static> {
    NodeView {
        name: "bench-node",
        node_ip: Some(Ipv4Addr::from(NODE_IP)),
        node_port_ips: NODE_PORT_IPS,
        gateway_ip: Ipv4Addr::from(GW_IP),
        mode: ClusterMode::Vxlan,
        maglev_size: DEFAULT_TABLE_SIZE,
    }
}

/// A TCP segment of flow (`pod`, `sport`) to the service, with timestamps
/// as Linux sends them: a SYN, or an ACK with [`PAYLOAD`] bytes. Built by
/// etherparse: the reference [`SegmentTemplate`] is checked against.
fn tcp_segment(pod: usize, sport: u16, syn: bool) -> Vec<u8> {
    tcp_segment_to(pod, sport, (VIP, VIP_PORT), syn)
}

/// [`tcp_segment`] to `dst` (address, port) instead of the service.
fn tcp_segment_to(pod: usize, sport: u16, dst: ([u8; 4], u16), syn: bool) -> Vec<u8> {
    let src = pod_ip(pod);
    let b = PacketBuilder::ethernet2(mac_of(src), GW_MAC)
        .ipv4(src, dst.0, 64)
        .tcp(sport, dst.1, 1000, 64240);
    let (b, payload) = if syn {
        (b.syn(), 0)
    } else {
        (b.ack(5000), PAYLOAD)
    };
    let b = b
        .options(&[
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::Timestamp(1, 2),
        ])
        .expect("TCP options fit");
    let mut out = vec![0u8; vnet_hdr::LEN];
    b.write(&mut out, &vec![0xcd; payload])
        .expect("fixture serialises");
    out
}

/// Offsets in a vnet-prefixed frame.
const ETH: usize = vnet_hdr::LEN;
const IP: usize = ETH + 14;
const TCP: usize = IP + 20;

#[inline]
fn rd16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// A segment of flow 0 that is turned into any flow's by patching the
/// source MAC, address and port and both checksums (RFC 1624), much
/// cheaper than building each frame.
struct SegmentTemplate {
    bytes: Vec<u8>,
}

impl SegmentTemplate {
    /// Segments to the service.
    fn new(syn: bool) -> Self {
        Self::to((VIP, VIP_PORT), syn)
    }

    /// Segments to `dst` (address, port).
    fn to(dst: ([u8; 4], u16), syn: bool) -> Self {
        let (pod, sport) = flow(0);
        SegmentTemplate {
            bytes: tcp_segment_to(pod, sport, dst, syn),
        }
    }

    /// Writes flow `i`'s segment into `p`, ready for the pipeline.
    #[inline]
    fn write(&self, p: &mut Packet, i: usize) {
        let (pod, sport) = flow(i);
        let f = &mut p.read_area()[..self.bytes.len()];
        f.copy_from_slice(&self.bytes);
        let ip = pod_ip(pod);
        f[ETH + 6..ETH + 12].copy_from_slice(&mac_of(ip));
        let (old_ip, new_ip) = (u32::from_be_bytes(pod_ip(0)), u32::from_be_bytes(ip));
        let old_port = rd16(f, TCP);
        f[IP + 12..IP + 16].copy_from_slice(&ip);
        f[TCP..TCP + 2].copy_from_slice(&sport.to_be_bytes());
        let ip_check = checksum::update_u32(rd16(f, IP + 10), old_ip, new_ip);
        f[IP + 10..IP + 12].copy_from_slice(&ip_check.to_be_bytes());
        let tcp_check = checksum::update_u16(
            checksum::update_u32(rd16(f, TCP + 16), old_ip, new_ip),
            old_port,
            sport,
        );
        f[TCP + 16..TCP + 18].copy_from_slice(&tcp_check.to_be_bytes());
        p.filled(pod as PortId, self.bytes.len());
    }
}

/// Outer Ethernet, IPv4 and UDP headers towards one node, with the IPv4
/// header's sum precomputed without its total length.
struct OuterHeader {
    bytes: [u8; OUTER_LEN],
    /// Folded ones'-complement sum of the IPv4 header, length and checksum 0.
    ip_sum: u32,
}

impl OuterHeader {
    fn new(local: Ipv4Addr, remote: Ipv4Addr, udp_port: u16) -> Self {
        let mut b = [0u8; OUTER_LEN];
        b[0..6].copy_from_slice(&REMOTE_NIC_MAC);
        b[6..12].copy_from_slice(&NIC_MAC);
        b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        // Version 4, IHL 5, no DSCP, id 0, DF (no fragmentation of
        // encapsulated traffic), TTL 64, UDP.
        b[14..24].copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17]);
        b[26..30].copy_from_slice(&local.octets());
        b[30..34].copy_from_slice(&remote.octets());
        b[36..38].copy_from_slice(&udp_port.to_be_bytes());
        // RFC 7348 §5: the outer UDP checksum SHOULD be zero over IPv4.
        let ip_sum = checksum::sum(&b[14..34], 0);
        OuterHeader { bytes: b, ip_sum }
    }
}

/// What the worker does with `Encap` verdicts, minus the send.
struct Encapsulator {
    nodes: Vec<OuterHeader>,
    vx: vxlan::Repr,
    out: Vec<u8>,
}

impl Encapsulator {
    fn new(tables: &Tables) -> Self {
        let ov = tables.overlay.as_ref().expect("overlay configured");
        Encapsulator {
            nodes: ov
                .nodes
                .iter()
                .map(|n| OuterHeader::new(ov.local_ipv4, n.underlay_ipv4, ov.udp_port))
                .collect(),
            vx: vxlan::Repr { vni: ov.vni },
            out: vec![0u8; BATCH * ENCAP_SLOT],
        }
    }

    /// Encapsulates every `Encap` packet of the batch into its slot of the
    /// output area; counts what the worker counts.
    #[inline]
    fn run(&mut self, batch: &Batch, c: &WorkerCounters) {
        for (p, slot) in batch
            .packets()
            .iter()
            .zip(self.out.chunks_exact_mut(ENCAP_SLOT))
        {
            let Verdict::Encap { node } = p.verdict else {
                continue;
            };
            // The worker's drops for an unknown node and a datagram that
            // does not fit its buffer.
            let Some(h) = self.nodes.get(usize::from(node)) else {
                c.count_drop(DropReason::NoRoute, p.len());
                continue;
            };
            let frame = p.frame();
            let total = ENCAP_LEN + frame.len();
            if total > ENCAP_SLOT {
                c.count_drop(DropReason::SegmentationFailed, p.len());
                continue;
            }
            let out = &mut slot[..total];
            out[..OUTER_LEN].copy_from_slice(&h.bytes);
            let ip_len = (total - 14) as u16;
            let mut s = h.ip_sum + u32::from(ip_len);
            s = (s & 0xffff) + (s >> 16);
            out[16..18].copy_from_slice(&ip_len.to_be_bytes());
            out[24..26].copy_from_slice(&(!(s as u16)).to_be_bytes());
            // RFC 7348 §5: source port from the inner flow hash.
            let sport =
                vxlan::source_port(vxlan::inner_flow_hash(frame), vxlan::DEFAULT_SOURCE_PORTS);
            out[34..36].copy_from_slice(&sport.to_be_bytes());
            out[38..40].copy_from_slice(&(ip_len - 20).to_be_bytes());
            self.vx.emit_into(&mut out[OUTER_LEN..ENCAP_LEN]);
            out[ENCAP_LEN..].copy_from_slice(frame);
            c.stages.vxlan_tx.inc();
            c.stages.tx_packets.inc();
            c.stages.tx_bytes.add(total as u64);
        }
    }

    /// The datagram written for packet `i` of the last batch.
    fn output(&self, i: usize, frame_len: usize) -> &[u8] {
        &self.out[i * ENCAP_SLOT..i * ENCAP_SLOT + ENCAP_LEN + frame_len]
    }
}

/// One worker's datapath over a flow table: pipeline, encapsulation, and a
/// batch reused for every iteration.
struct Datapath {
    tables: Tables,
    pipeline: Pipeline,
    encap: Encapsulator,
    ct: Arc<ConnTrack>,
    batch: Batch,
}

impl Datapath {
    fn new(max_flows: usize) -> Self {
        let tables = tables();
        let ct = Arc::new(ConnTrack::with_seed(
            ConntrackConfig {
                max_flows,
                ..Default::default()
            },
            1,
            CONNTRACK_SEED,
        ));
        let counters = Arc::new(WorkerCounters::default());
        Datapath {
            encap: Encapsulator::new(&tables),
            pipeline: Pipeline::with_conntrack(counters, Arc::clone(&ct), 0, 1),
            tables,
            ct,
            batch: Batch::new(BATCH),
        }
    }

    /// Fills the batch with `template`'s segments of `flows`.
    #[inline]
    fn load(&mut self, template: &SegmentTemplate, flows: impl IntoIterator<Item = usize>) {
        self.batch.clear();
        for i in flows.into_iter().take(BATCH) {
            let p = self.batch.next_free().expect("batch has room");
            template.write(p, i);
            self.batch.commit();
        }
    }

    /// The timed part: the pipeline, then the encapsulation.
    #[inline]
    fn run(&mut self, now: Instant) {
        self.pipeline.process(&mut self.batch, &self.tables, now);
        self.encap.run(&self.batch, self.pipeline.counters());
    }

    /// Opens flows `0..n` with one SYN each (untimed set-up) at `now`.
    fn open_flows(&mut self, n: usize, now: Instant) {
        let syn = SegmentTemplate::new(true);
        for start in (0..n).step_by(BATCH) {
            self.load(&syn, start..n.min(start + BATCH));
            self.run(now);
        }
        assert_eq!(self.ct.len(), n, "every SYN opened a flow");
    }

    fn flows_created(&self) -> u64 {
        self.pipeline.counters().stages.ct_created.get()
    }

    /// Checks the last batch: every packet encapsulated towards n2, inner
    /// packet from its client to a backend's port 80, outer headers valid.
    fn check_batch(&self, case: &str, flows: &[usize]) {
        self.check_batch_to(case, flows, &BACKENDS, BACKEND_PORT);
    }

    /// [`Datapath::check_batch`] for packets to one of `dsts` at `dport`.
    fn check_batch_to(&self, case: &str, flows: &[usize], dsts: &[[u8; 4]], dport: u16) {
        let backends: Vec<Ipv4Addr> = dsts.iter().map(|b| Ipv4Addr::from(*b)).collect();
        for (k, (p, &i)) in self.batch.packets().iter().zip(flows).enumerate() {
            assert_eq!(
                p.verdict,
                Verdict::Encap { node: 0 },
                "{case}: packet {k} (flow {i})"
            );
            let f = p.frame();
            let (pod, sport) = flow(i);
            let (src, dst) = (
                Ipv4Addr::new(f[26], f[27], f[28], f[29]),
                Ipv4Addr::new(f[30], f[31], f[32], f[33]),
            );
            assert_eq!(
                (src, rd16(f, 34)),
                (Ipv4Addr::from(pod_ip(pod)), sport),
                "{case}: packet {k}: client address and port kept"
            );
            assert!(
                backends.contains(&dst) && rd16(f, 36) == dport,
                "{case}: packet {k}: inner destination {dst}:{} is not {backends:?}:{dport}",
                rd16(f, 36)
            );
            assert_eq!(
                checksum::checksum(&f[14..34]),
                0,
                "{case}: inner IPv4 checksum"
            );
            assert_eq!(
                p.meta.vnet,
                vnet_hdr::Repr::NONE,
                "{case}: plain frames only"
            );

            let d = self.encap.output(k, f.len());
            assert_eq!(&d[0..6], &REMOTE_NIC_MAC, "{case}: outer destination MAC");
            assert_eq!(
                checksum::checksum(&d[14..34]),
                0,
                "{case}: outer IPv4 checksum"
            );
            assert_eq!(
                usize::from(rd16(d, 16)),
                d.len() - 14,
                "{case}: outer IPv4 length"
            );
            assert_eq!(&d[30..34], &REMOTE_IP, "{case}: outer destination");
            assert_eq!(rd16(d, 36), vxlan::UDP_PORT, "{case}: outer UDP port");
            assert_eq!(
                rd16(d, 34),
                vxlan::source_port(vxlan::inner_flow_hash(f), vxlan::DEFAULT_SOURCE_PORTS),
                "{case}: outer UDP source port from the inner flow hash"
            );
            assert_eq!(usize::from(rd16(d, 38)), d.len() - 34, "{case}: UDP length");
            let hdr = vxlan::VxlanHeader::new_checked(&d[OUTER_LEN..]).expect("VXLAN header");
            assert_eq!(vxlan::Repr::parse(&hdr), Ok(vxlan::Repr { vni: VNI }));
            assert_eq!(hdr.payload(), f, "{case}: the inner frame follows");
            assert_eq!(
                &f[0..6],
                &REMOTE_VTEP_MAC,
                "{case}: inner Ethernet to n2's VTEP"
            );
        }
    }
}

/// splitmix64: the fixed pseudo-random sequence flows are picked by.
struct Picker(u64);

impl Picker {
    /// A flow index in `0..n`, uniformly (multiply-shift).
    #[inline]
    fn next(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((u128::from(z) * n as u128) >> 64) as usize
    }
}

/// An established-flow case: `flows` open flows, ACKs of random ones.
struct Established {
    dp: Datapath,
    ack: SegmentTemplate,
    picker: Picker,
    picks: [usize; BATCH],
    flows: usize,
}

impl Established {
    /// Opens the flows and checks one batch, all at `now`.
    fn new(case: &str, flows: usize, max_flows: usize, now: Instant) -> Self {
        let mut dp = Datapath::new(max_flows);
        let setup = Instant::now();
        dp.open_flows(flows, now);
        eprintln!(
            "{case}: {flows} flows opened in {:.2?} (untimed set-up)",
            setup.elapsed()
        );
        let mut e = Established {
            dp,
            ack: SegmentTemplate::new(false),
            picker: Picker(0x5eed_f10e_5eed_f10e),
            picks: [0; BATCH],
            flows,
        };
        // The template patching gives what etherparse builds.
        for i in [0, 1, 7 * PODS + 3, flows - 1] {
            let (pod, sport) = flow(i);
            e.dp.load(&e.ack, [i]);
            assert_eq!(
                e.dp.batch.packets()[0].data(),
                tcp_segment(pod, sport, false)
            );
        }
        let created = e.dp.flows_created();
        e.next_batch();
        e.dp.run(now);
        e.dp.check_batch(case, &e.picks);
        assert_eq!(e.dp.flows_created(), created, "{case}: no flow created");
        assert_eq!(e.dp.ct.len(), flows, "{case}: no flow created");
        e
    }

    /// Loads ACKs of the next [`BATCH`] flows of the sequence.
    #[inline]
    fn next_batch(&mut self) {
        for p in &mut self.picks {
            *p = self.picker.next(self.flows);
        }
        let picks = self.picks;
        self.dp.load(&self.ack, picks);
    }
}

/// The new-flow case: SYNs of tuples never seen (a running flow counter).
struct NewFlows {
    dp: Datapath,
    syn: SegmentTemplate,
    next: usize,
    /// The first tuple of the batch loaded last.
    last: usize,
    /// Emptied (untimed) before it holds more than this.
    clear_at: usize,
}

impl NewFlows {
    /// Checks one batch at `now`.
    fn new(max_flows: usize, now: Instant) -> Self {
        let mut n = NewFlows {
            dp: Datapath::new(max_flows),
            syn: SegmentTemplate::new(true),
            next: 0,
            last: 0,
            clear_at: max_flows / 4 * 3,
        };
        n.next_batch();
        n.dp.run(now);
        let flows: Vec<usize> = (0..BATCH).collect();
        n.dp.check_batch("new_flow", &flows);
        assert_eq!(n.dp.flows_created(), BATCH as u64, "one flow per SYN");
        n
    }

    /// Loads the SYNs of the next [`BATCH`] tuples; empties the table first
    /// if they could take it past `clear_at`.
    #[inline]
    fn next_batch(&mut self) {
        if self.dp.ct.len() + BATCH > self.clear_at {
            self.dp.ct.remove_where(|_| true);
        }
        let start = self.next;
        self.last = start;
        self.next = (start + BATCH) % (PODS * SPORTS);
        let syn = &self.syn;
        self.dp.load(syn, start..start + BATCH);
    }
}

/// The `vxlan_encap` case: ACKs from pods to a pod on n2, no service.
struct OverlayEncap {
    dp: Datapath,
    ack: SegmentTemplate,
    next: usize,
}

impl OverlayEncap {
    /// Checks one batch at `now`.
    fn new(now: Instant) -> Self {
        let mut e = OverlayEncap {
            // No flow is tracked: the table stays empty.
            dp: Datapath::new(ConntrackConfig::default().max_flows),
            ack: SegmentTemplate::to((REMOTE_POD, REMOTE_POD_PORT), false),
            next: 0,
        };
        e.next_batch();
        e.dp.run(now);
        e.check();
        assert_eq!(e.dp.ct.len(), 0, "vxlan_encap: pod to pod is not tracked");
        e
    }

    /// Loads ACKs of the next [`BATCH`] flows (of [`ENCAP_FLOWS`]).
    #[inline]
    fn next_batch(&mut self) {
        let start = self.next;
        self.next = (start + BATCH) % ENCAP_FLOWS;
        let ack = &self.ack;
        self.dp.load(ack, start..start + BATCH);
    }

    fn check(&self) {
        let start = (self.next + ENCAP_FLOWS - BATCH) % ENCAP_FLOWS;
        let flows: Vec<usize> = (start..start + BATCH).collect();
        self.dp
            .check_batch_to("vxlan_encap", &flows, &[REMOTE_POD], REMOTE_POD_PORT);
    }
}

/// What the worker's `fill_from_overlay` does with a datagram from the
/// underlay socket, minus the receive: `decap::receive` checks the VXLAN
/// header, the VNI and the sending node, copies the inner frame into a
/// packet of the batch with the vnet header its inner checksum calls for
/// (partial stays partial, anything else is verified), and notes the node
/// it came from. Each datagram here is a read
/// of its own: datagrams of different inner flows carry different outer
/// source ports (RFC 7348 §5), so the kernel's UDP GRO does not merge
/// them, and the worker's receive-side coalescing, which only looks
/// within one read, never runs.
struct Decapsulator {
    /// VXLAN header and inner frame, as the underlay socket hands them over.
    datagrams: Vec<Vec<u8>>,
    /// The sender's underlay address (n2).
    src: Ipv4Addr,
}

impl Decapsulator {
    /// Fills `batch` from the datagrams; counts what the worker counts.
    #[inline]
    fn run(&self, batch: &mut Batch, tables: &Tables, c: &WorkerCounters) {
        let ov = tables.overlay.as_ref().expect("overlay configured");
        for dgram in &self.datagrams {
            c.stages.vxlan_rx.inc();
            if decap::receive(batch, dgram, self.src, ov, false, c) == decap::Received::BatchFull {
                return;
            }
        }
    }
}

/// The `vxlan_decap` case: [`BATCH`] datagrams from n2, ACKs from pods
/// 10.244.2.100-149 port 80 to our pods 0..63 (one flow each, the same
/// datagrams every batch: decapsulation only reads them).
struct OverlayDecap {
    dp: Datapath,
    decap: Decapsulator,
}

impl OverlayDecap {
    /// Checks one batch at `now`.
    fn new(now: Instant) -> Self {
        let ov = tables().overlay.expect("overlay configured");
        let datagrams = (0..BATCH)
            .map(|k| {
                let src = [10, 244, 2, REMOTE_POD[3] + (k % 50) as u8];
                let dst = pod_ip(k);
                let mut out = vec![0u8; vxlan::HEADER_LEN];
                vxlan::Repr { vni: ov.vni }.emit_into(&mut out);
                // As n2's route stage leaves it: to our VTEP, TTL spent.
                PacketBuilder::ethernet2(REMOTE_VTEP_MAC, VTEP_MAC)
                    .ipv4(src, dst, 63)
                    .tcp(REMOTE_POD_PORT, 40000, 5000, 64240)
                    .ack(1000)
                    .options(&[
                        TcpOptionElement::Noop,
                        TcpOptionElement::Noop,
                        TcpOptionElement::Timestamp(3, 4),
                    ])
                    .expect("TCP options fit")
                    .write(&mut out, &[0xcd; PAYLOAD])
                    .expect("fixture serialises");
                out
            })
            .collect();
        let mut d = OverlayDecap {
            dp: Datapath::new(ConntrackConfig::default().max_flows),
            decap: Decapsulator {
                datagrams,
                src: Ipv4Addr::from(REMOTE_IP),
            },
        };
        d.dp.batch.clear();
        d.run(now);
        d.check();
        assert_eq!(d.dp.ct.len(), 0, "vxlan_decap: pod to pod is not tracked");
        d
    }

    /// The timed part: decapsulation into the batch, then the pipeline.
    #[inline]
    fn run(&mut self, now: Instant) {
        let dp = &mut self.dp;
        self.decap
            .run(&mut dp.batch, &dp.tables, dp.pipeline.counters());
        dp.pipeline.process(&mut dp.batch, &dp.tables, now);
    }

    /// Every datagram delivered to its pod, from the gateway's MAC.
    fn check(&self) {
        assert_eq!(self.dp.batch.len(), BATCH, "vxlan_decap: every datagram");
        for (k, p) in self.dp.batch.packets().iter().enumerate() {
            assert_eq!(
                p.verdict,
                Verdict::Forward { port: k as PortId },
                "vxlan_decap: packet {k}"
            );
            let f = p.frame();
            assert_eq!(
                &f[0..6],
                &mac_of(pod_ip(k)),
                "vxlan_decap: to the pod's MAC"
            );
            assert_eq!(&f[6..12], &GW_MAC, "vxlan_decap: from the gateway's MAC");
            assert_eq!(f[22], 62, "vxlan_decap: TTL decremented");
        }
    }
}

fn bench_overlay(c: &mut Criterion) {
    let mut group = c.benchmark_group("services");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut case: Option<OverlayEncap> = None;
    group.bench_function("vxlan_encap", |b| {
        let e = case.get_or_insert_with(|| OverlayEncap::new(Instant::now()));
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                e.next_batch();
                let start = Instant::now();
                e.dp.run(black_box(start));
                timed += start.elapsed();
            }
            black_box(e.dp.batch.packets().first().map(|p| p.verdict));
            timed
        });
    });
    let mut case: Option<OverlayDecap> = None;
    group.bench_function("vxlan_decap", |b| {
        let d = case.get_or_insert_with(|| OverlayDecap::new(Instant::now()));
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                d.dp.batch.clear();
                let start = Instant::now();
                d.run(black_box(start));
                timed += start.elapsed();
            }
            black_box(d.dp.batch.packets().first().map(|p| p.verdict));
            timed
        });
    });
    group.finish();
}

fn bench_established(c: &mut Criterion) {
    let scale = Scale::get();
    let mut group = c.benchmark_group("services");
    group.throughput(Throughput::Elements(BATCH as u64));
    let cases = [
        (
            "established_cached_4k",
            scale.cached_flows,
            ConntrackConfig::default().max_flows,
        ),
        (
            "established_hot_100k",
            scale.hot_flows,
            ConntrackConfig::default().max_flows,
        ),
        (
            "established_cold_1m",
            scale.cold_flows,
            scale.cold_max_flows,
        ),
    ];
    for (name, flows, max_flows) in cases {
        // Set up lazily, so a filter that skips the case skips its set-up.
        let mut case: Option<Established> = None;
        group.bench_function(name, |b| {
            let e = case.get_or_insert_with(|| {
                let e = Established::new(name, flows, max_flows, Instant::now());
                let ct = &e.dp.ct;
                eprintln!(
                    "{name}: conntrack {} flows in {} slots, {} MiB: {} bytes per slot, {} per flow",
                    ct.len(),
                    ct.capacity(),
                    ct.memory_bytes() >> 20,
                    ct.memory_bytes() / ct.capacity(),
                    ct.memory_bytes() / ct.len()
                );
                e
            });
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    e.next_batch();
                    let start = Instant::now();
                    e.dp.run(black_box(start));
                    timed += start.elapsed();
                }
                black_box(e.dp.batch.packets().first().map(|p| p.verdict));
                timed
            });
        });
    }
    let mut case: Option<NewFlows> = None;
    group.bench_function("new_flow", |b| {
        let n = case.get_or_insert_with(|| NewFlows::new(scale.new_flow_max_flows, Instant::now()));
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                n.next_batch();
                let start = Instant::now();
                n.dp.run(black_box(start));
                timed += start.elapsed();
            }
            black_box(n.dp.batch.packets().first().map(|p| p.verdict));
            timed
        });
    });
    group.finish();
}

/// `n` ClusterIP services with 5 endpoints each, on nodes n1..n16, and a
/// NodePort each if `node_ports` (from 30000 up).
fn many_services(n: usize, node_ports: bool) -> Vec<ServiceSpec> {
    (0..n)
        .map(|i| {
            let i32_ = i as u32;
            // ClusterIPs from 10.96.0.1 up, inside 10.96.0.0/12.
            let vip = Ipv4Addr::from(0x0a60_0001 + i32_);
            ServiceSpec {
                name: format!("bench/svc-{i}"),
                cluster_ips: vec![vip],
                external_ips: vec![],
                ports: vec![ServicePortSpec {
                    name: "http".into(),
                    protocol: Protocol::Tcp,
                    port: 8080,
                    node_port: node_ports.then(|| 30000 + i as u16),
                    endpoints: (0..5u32)
                        .map(|e| {
                            // Pods from 10.128.0.0 up, 5 per service.
                            let ip = Ipv4Addr::from(0x0a80_0000 + i32_ * 5 + e);
                            EndpointSpec {
                                ip,
                                port: 80,
                                node: Some(format!("n{}", (i32_ * 5 + e) % 16 + 1)),
                                ready: true,
                                terminating: false,
                                serving: None,
                            }
                        })
                        .collect(),
                }],
                affinity_timeout_secs: None,
                external_traffic_local: false,
                internal_traffic_local: false,
            }
        })
        .collect()
}

fn bench_build(c: &mut Criterion) {
    let scale = Scale::get();
    // Kubernetes' default NodePort range (30000-32767) holds 2768; widened
    // (--service-node-port-range) so every service gets one.
    let settings = ServiceSettings {
        node_port_range: (30000, 30000 + scale.services.max(2768) as u16 - 1),
        ..ServiceSettings::default()
    };
    let node = node_view();
    let mut group = c.benchmark_group("services");
    // An iteration takes a good fraction of a second: ten samples of the
    // same few iterations each, not criterion's linear ramp.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(300));
    group.measurement_time(Duration::from_secs(3));
    for (name, node_ports) in [
        ("build_10k_services", false),
        ("build_10k_services_nodeport", true),
    ] {
        let frontends = scale.services * if node_ports { 2 } else { 1 };
        // Built and checked lazily, so a filter that skips the case skips it.
        let mut specs: Option<Vec<ServiceSpec>> = None;
        group.throughput(Throughput::Elements(frontends as u64));
        group.bench_function(name, |b| {
            let specs = specs.get_or_insert_with(|| {
                let specs = many_services(scale.services, node_ports);
                let t = ServiceTable::build(&specs, &settings, &node).expect("services are valid");
                assert_eq!(t.fronts.len(), frontends, "{name}: frontends");
                let size = maglev_size_for(5, DEFAULT_TABLE_SIZE);
                assert!(
                    t.fronts
                        .iter()
                        .all(|f| f.maglev.size() == size && f.eligible.len() == 5),
                    "{name}: a Maglev table of {size} slots over 5 backends per frontend"
                );
                let tables: HashSet<*const Maglev> =
                    t.fronts.iter().map(|f| Arc::as_ptr(&f.maglev)).collect();
                eprintln!(
                    "{name}: {frontends} frontends share {} Maglev tables of {size} slots ({} KiB)",
                    tables.len(),
                    tables.len() * size * 2 / 1024
                );
                specs
            });
            // The old table is dropped outside the clock: build only.
            b.iter_with_large_drop(|| {
                ServiceTable::build(black_box(&*specs), &settings, &node)
                    .expect("services are valid")
            });
        });
    }
    group.finish();
}

/// One endpoint change among 10k Services with a NodePort each (issue #5:
/// one change reaches the datapath within 10 ms): `ServiceLayout::patch`
/// replaces one Service (its first endpoint a new pod), and the table it
/// replaces is dropped, both inside the clock, as the daemon does. The
/// Service changed walks through all 10k (stride 487). `copy_10k_table` is
/// the part of a patch that does not shrink with it: the copy of the
/// table's flat arrays and maps, and the drop of the old one.
fn bench_patch(c: &mut Criterion) {
    let scale = Scale::get();
    let settings = ServiceSettings {
        node_port_range: (30000, 30000 + scale.services.max(2768) as u16 - 1),
        ..ServiceSettings::default()
    };
    let node = node_view();
    let mut group = c.benchmark_group("services");
    group.throughput(Throughput::Elements(1));
    let mut case: Option<(Vec<ServiceSpec>, ServiceTable, ServiceLayout)> = None;
    let mut generation = 0u32;
    group.bench_function("patch_one_of_10k_services", |b| {
        let (specs, table, layout) = case.get_or_insert_with(|| {
            let specs = many_services(scale.services, true);
            let started = Instant::now();
            let (table, layout) = ServiceLayout::build(&specs, &settings, &node, None)
                .expect("services are valid");
            eprintln!(
                "patch_one_of_10k_services: {} services, {} frontends built in {:.2?} (untimed set-up)",
                specs.len(),
                table.fronts.len(),
                started.elapsed()
            );
            (specs, table, layout)
        });
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                generation += 1;
                let i = generation as usize * 487 % specs.len();
                let mut svc = specs[i].clone();
                svc.ports[0].endpoints[0].ip = Ipv4Addr::from(0x0b00_0000 + generation);
                let start = Instant::now();
                let patched = layout
                    .patch(table, &[(0, &svc)], &[], "upsert")
                    .expect("the patch is valid");
                assert!(patched.endpoints_lost, "the old pod left");
                drop(std::mem::replace(table, patched.table));
                timed += start.elapsed();
            }
            timed
        });
    });
    group.bench_function("copy_10k_table", |b| {
        let (_, table, _) = case.as_ref().expect("patch_one_of_10k_services ran first");
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                drop(black_box(table.clone()));
            }
            start.elapsed()
        });
    });
    // What a patch that takes an endpoint away adds in the daemon: the
    // walk of the whole flow table for flows it stranded (empty table of
    // the default 262144 flows, as in the lab).
    group.bench_function("stale_flow_walk_262k_empty", |b| {
        let (_, table, _) = case.as_ref().expect("patch_one_of_10k_services ran first");
        let ct = ConnTrack::new(ConntrackConfig::default(), 1);
        b.iter(|| black_box(ct.remove_where(|f| table.flow_is_stale(f))));
    });
    group.finish();
}

fn config() -> Criterion {
    // A few seconds per packet case, so the whole file runs in about a
    // minute; `--quick` stops earlier still.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

/// A packet case in the instruction-count mode: the criterion iteration's
/// untimed set-up, then its timed part (counted), with a frozen clock.
enum Counted {
    Established(&'static str, Box<Established>),
    NewFlow(Box<NewFlows>),
    Encap(OverlayEncap),
    Decap(OverlayDecap),
}

impl Counted {
    /// Sets case `name` up with its clock at `now`.
    fn new(name: &str, now: Instant) -> Self {
        let scale = Scale::BENCH;
        let default_max = ConntrackConfig::default().max_flows;
        match name {
            "established_cached_4k" => Counted::Established(
                "established_cached_4k",
                Box::new(Established::new(name, scale.cached_flows, default_max, now)),
            ),
            "established_hot_100k" => Counted::Established(
                "established_hot_100k",
                Box::new(Established::new(name, scale.hot_flows, default_max, now)),
            ),
            "established_cold_1m" => Counted::Established(
                "established_cold_1m",
                Box::new(Established::new(
                    name,
                    scale.cold_flows,
                    scale.cold_max_flows,
                    now,
                )),
            ),
            "new_flow" => Counted::NewFlow(Box::new(NewFlows::new(scale.new_flow_max_flows, now))),
            "vxlan_encap" => Counted::Encap(OverlayEncap::new(now)),
            "vxlan_decap" => Counted::Decap(OverlayDecap::new(now)),
            _ => instructions::unknown(
                name,
                &[
                    "established_cached_4k",
                    "established_hot_100k",
                    "established_cold_1m",
                    "new_flow",
                    "vxlan_encap",
                    "vxlan_decap",
                ],
            ),
        }
    }
}

/// [`Counted`] with the clock frozen at `now`.
struct Frozen {
    case: Counted,
    now: Instant,
}

impl instructions::Counted for Frozen {
    fn next_batch(&mut self) -> usize {
        match &mut self.case {
            Counted::Established(_, e) => e.next_batch(),
            Counted::NewFlow(n) => n.next_batch(),
            Counted::Encap(e) => e.next_batch(),
            Counted::Decap(d) => {
                d.dp.batch.clear();
                return d.decap.datagrams.len();
            }
        }
        BATCH
    }

    fn run(&mut self) {
        match &mut self.case {
            Counted::Established(_, e) => e.dp.run(self.now),
            Counted::NewFlow(n) => n.dp.run(self.now),
            Counted::Encap(e) => e.dp.run(self.now),
            Counted::Decap(d) => d.run(self.now),
        }
    }

    fn check(&self) {
        match &self.case {
            Counted::Established(name, e) => e.dp.check_batch(name, &e.picks),
            Counted::NewFlow(n) => {
                let flows: Vec<usize> = (n.last..n.last + BATCH).collect();
                n.dp.check_batch("new_flow", &flows);
            }
            Counted::Encap(e) => e.check(),
            Counted::Decap(d) => d.check(),
        }
    }
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_established, bench_overlay, bench_build, bench_patch
}

/// `--instructions CASE`: one case, a fixed number of batches (also
/// called by `switch/benches/instructions.rs`).
pub(crate) fn count_instructions(name: &str) {
    // One instant for the set-up and every batch, read before the flow
    // table is made: the table clock reads 0 throughout, whatever the
    // set-up took, so no flow ever ages or has its time stamp moved.
    let now = Instant::now();
    let case = Counted::new(name, now);
    instructions::count(name, &mut Frozen { case, now });
}

// criterion_main!, with the instruction-count mode in front.
fn main() {
    if let Some(name) = instructions::requested() {
        count_instructions(&name);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
