//! Bodies of the fuzz targets in `fuzz/fuzz_targets/` (cargo-fuzz,
//! libFuzzer), kept here so stable Rust can run them too: the checked-in
//! corpus under `fuzz/corpus/<target>/` is replayed by `cargo test`
//! (`tests/fuzz_corpus.rs`), so every input that once found a bug stays a
//! regression test.
//!
//! Each function takes arbitrary bytes and panics only when an invariant
//! breaks: bad input must end as a counted drop or a clear error. See
//! docs/fuzzing.md for the targets, their input formats and the runs.
#![doc(hidden)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::conntrack::{ConnTrack, ConntrackConfig};
use crate::metrics::WorkerCounters;
use crate::pipeline::{decap, Batch, DropReason, Packet, Pipeline, Verdict, L3};
use crate::tables::services::{NodeView, ServiceTable};
use crate::tables::{Gateway, Overlay, OverlayNode, PodPort, PortId, PortKind, Tables};
use crate::wire::{checksum, segment, vnet_hdr, vxlan};
use podswitch_api::{
    self as api, ClusterMode, EndpointSpec, Mac, Protocol, Request, ServicePortSpec,
    ServiceSettings, ServiceSpec,
};

// ---------------------------------------------------------------------------
// The fuzzed node.
//
//   pod A 10.244.1.2 (port 0) ─┐                  ┌─ node-2 192.168.56.12
//   pod B 10.244.1.3 (port 1) ─┤  switch node-1   │   pods 10.244.2.0/24
//   pod C 10.244.1.4 (port 2,  ├─ gw 10.244.1.1 ──┤   (VXLAN: overlay port 4,
//         no offloads, MTU 1400)│  192.168.56.11   │    VNI 1, UDP 8472;
//   host psw0 (port 3) ────────┘                  └─  native: via the host port)
//
//   Services: default/web 10.96.0.10:80/TCP -> A:8080, node-2's 10.244.2.5:8080,
//             NodePort 30080; default/dns 10.96.0.11:53/UDP -> B:5353,
//             affinity; masquerade to anything outside 10.244.0.0/16.
// ---------------------------------------------------------------------------

/// The node's name.
pub const NODE: &str = "node-1";
/// The pods' gateway MAC.
pub const GW_MAC: [u8; 6] = [0xee; 6];
pub const GW: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
pub const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
pub const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
pub const POD_C: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 4);
/// This node's underlay address.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 11);
/// The remote node's underlay address and one of its pods.
pub const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 56, 12);
pub const REMOTE_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 5);
/// The Services' cluster IPs.
pub const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
pub const WEB_NODE_PORT: u16 = 30080;
/// VXLAN parameters (flannel's).
pub const VNI: u32 = 1;
pub const VXLAN_PORT: u16 = 8472;

pub const PORT_A: PortId = 0;
pub const PORT_B: PortId = 1;
pub const PORT_C: PortId = 2;
pub const PORT_HOST: PortId = 3;
pub const PORT_OVERLAY: PortId = 4;

/// A pod's MAC, as the switch derives it.
pub fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    Mac::for_pod_ipv4(ip).0
}

/// The local VTEP MAC, and node-2's.
pub fn vtep_mac() -> [u8; 6] {
    Mac::for_vtep(NODE_IP).0
}
pub fn remote_vtep_mac() -> [u8; 6] {
    Mac::for_vtep(REMOTE_IP).0
}

/// The Services of the fuzzed node.
pub fn services() -> Vec<ServiceSpec> {
    let ep = |ip: Ipv4Addr, port: u16, node: &str| EndpointSpec {
        ip,
        port,
        node: Some(node.into()),
        ready: true,
        terminating: false,
        serving: None,
    };
    vec![
        ServiceSpec {
            name: "default/web".into(),
            cluster_ips: vec![WEB_VIP],
            external_ips: vec![],
            ports: vec![ServicePortSpec {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                node_port: Some(WEB_NODE_PORT),
                endpoints: vec![ep(POD_A, 8080, NODE), ep(REMOTE_POD, 8080, "node-2")],
            }],
            affinity_timeout_secs: None,
            external_traffic_local: false,
            internal_traffic_local: false,
        },
        ServiceSpec {
            name: "default/dns".into(),
            cluster_ips: vec![DNS_VIP],
            external_ips: vec![],
            ports: vec![ServicePortSpec {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
                node_port: None,
                endpoints: vec![ep(POD_B, 5353, NODE)],
            }],
            affinity_timeout_secs: Some(10800),
            external_traffic_local: false,
            internal_traffic_local: false,
        },
    ]
}

fn node_view(mode: ClusterMode) -> NodeView<'static> {
    NodeView {
        name: NODE,
        node_ip: Some(NODE_IP),
        node_port_ips: &[NODE_IP],
        gateway_ip: GW,
        mode,
        // Small: the fuzzer rebuilds tables for control requests.
        maglev_size: 251,
    }
}

/// Builds the fuzzed node's tables in native or VXLAN mode, as the daemon
/// would publish them.
pub fn build_tables(mode: ClusterMode) -> Tables {
    let pod = |id: PortId, ip: Ipv4Addr, mtu: u32, offloads: bool| {
        Some(PodPort {
            id,
            pod: format!("default/pod-{id}"),
            ifname: "eth0".into(),
            netns: PathBuf::from("/run/netns/fuzz"),
            mac: mac_of(ip),
            ipv4: Some(ip),
            ipv6: None,
            mtu,
            offloads,
            kind: PortKind::Pod,
        })
    };
    let node_port = |id: PortId, name: &str, mac: [u8; 6], kind: PortKind| {
        Some(PodPort {
            id,
            pod: name.into(),
            ifname: name.rsplit('/').next().unwrap_or(name).into(),
            netns: PathBuf::new(),
            mac,
            ipv4: None,
            ipv6: None,
            mtu: 1500,
            offloads: true,
            kind,
        })
    };
    let mut ports = vec![
        pod(PORT_A, POD_A, 1500, true),
        pod(PORT_B, POD_B, 1500, true),
        pod(PORT_C, POD_C, 1400, false),
        node_port(
            PORT_HOST,
            "host/psw0",
            [0x02, 0, 0, 0, 0, 0x01],
            PortKind::Host,
        ),
    ];
    if mode == ClusterMode::Vxlan {
        ports.push(node_port(
            PORT_OVERLAY,
            "overlay/vxlan",
            vtep_mac(),
            PortKind::Overlay,
        ));
    }
    let mut tables = Tables::new(
        NODE,
        Gateway {
            mac: GW_MAC,
            ipv4: GW,
            ipv6: None,
        },
        vec!["10.244.1.0/24".parse().expect("valid")],
        ports,
    );
    if mode == ClusterMode::Vxlan {
        tables = tables.with_overlay(Overlay {
            vni: VNI,
            udp_port: VXLAN_PORT,
            local_ipv4: NODE_IP,
            vtep_mac: vtep_mac(),
            port: PORT_OVERLAY,
            pod_mtu: 1450,
            nodes: vec![OverlayNode {
                name: "node-2".into(),
                underlay_ipv4: REMOTE_IP,
                vtep_mac: remote_vtep_mac(),
                pod_cidrs: vec!["10.244.2.0/24".parse().expect("valid")],
            }],
        });
    }
    let svcs = services();
    tables.services = Arc::new(
        ServiceTable::build(&svcs, &ServiceSettings::default(), &node_view(mode))
            .expect("the fuzzed node's services are valid"),
    );
    tables
}

fn tables(mode: ClusterMode) -> &'static Tables {
    static NATIVE: OnceLock<Tables> = OnceLock::new();
    static VXLAN: OnceLock<Tables> = OnceLock::new();
    match mode {
        ClusterMode::Native => NATIVE.get_or_init(|| build_tables(ClusterMode::Native)),
        ClusterMode::Vxlan => VXLAN.get_or_init(|| build_tables(ClusterMode::Vxlan)),
    }
}

// ---------------------------------------------------------------------------
// Target `pipeline`: frames from taps and datagrams from the underlay.
// ---------------------------------------------------------------------------

/// Where a record of a `pipeline` input comes from (low 3 bits of its
/// selector byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// vnet header + frame read from a pod's tap.
    Pod(PortId),
    /// vnet header + frame read from the host port (the node's stack).
    Host,
    /// A UDP payload read from the underlay VXLAN socket from node-2
    /// (first two bytes: the GRO segment size; then the datagrams).
    Underlay,
    /// The same from an address that is no known node.
    UnderlayUnknown,
}

impl Source {
    fn of(sel: u8) -> Source {
        match sel & 7 {
            0 | 5 => Source::Pod(PORT_A),
            1 | 6 => Source::Pod(PORT_B),
            2 => Source::Pod(PORT_C),
            3 => Source::Host,
            4 => Source::Underlay,
            _ => Source::UnderlayUnknown,
        }
    }

    fn code(self) -> u8 {
        match self {
            Source::Pod(PORT_B) => 1,
            Source::Pod(PORT_C) => 2,
            Source::Pod(_) => 0,
            Source::Host => 3,
            Source::Underlay => 4,
            Source::UnderlayUnknown => 7,
        }
    }
}

/// Selector bit: the whole input runs on the VXLAN node (taken from the
/// first record).
pub const SEL_VXLAN: u8 = 0x08;
/// Selector bits 4-5: advance the clock before this record by 0, 1 s,
/// 2 min or 1 day (flows expire).
pub const SEL_CLOCK_SHIFT: u8 = 4;
/// Selector bit: process what is queued before this record (a new batch).
pub const SEL_NEW_BATCH: u8 = 0x80;

/// Encodes one record of a `pipeline` input (for seeds and tests).
pub fn pipeline_record(out: &mut Vec<u8>, source: Source, flags: u8, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
    out.push(source.code() | flags);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&bytes[..usize::from(len)]);
}

/// Packets per batch in the fuzzer (each buffer is 64 KiB).
const FUZZ_BATCH: usize = 16;

/// What the fuzzer knew about a packet before the pipeline ran.
#[derive(Debug, Clone, Copy, Default)]
struct Before {
    /// The L4 checksum was valid (or partial and correctly seeded, so a
    /// completion must make it valid).
    l4_valid: bool,
}

struct Run {
    pipeline: Pipeline,
    counters: Arc<WorkerCounters>,
    /// The same node with the fast path off: every batch runs through both
    /// and they must agree (verdicts, bytes, counters, flows), so the fast
    /// path can never decide differently from the stages it fuses.
    stages_only: Pipeline,
    stages_counters: Arc<WorkerCounters>,
    tables: &'static Tables,
    now: Instant,
    before: Vec<Before>,
    encap_buf: Vec<u8>,
    outcome: Outcome,
}

thread_local! {
    static BATCH: std::cell::RefCell<Batch> = std::cell::RefCell::new(Batch::new(FUZZ_BATCH));
    /// The stage-path lane's copy of [`BATCH`].
    static STAGES_BATCH: std::cell::RefCell<Batch> =
        std::cell::RefCell::new(Batch::new(FUZZ_BATCH));
}

/// The `pipeline` target: runs arbitrary frames from pod taps and the host
/// port, and arbitrary VXLAN datagrams from the underlay, through the
/// whole pipeline of a small node, then checks what comes out.
///
/// Input: records `[selector][len: u16 BE][len bytes]` (a short last
/// record takes what is left). Selector: low 3 bits the [`Source`],
/// [`SEL_VXLAN`], the clock bits at [`SEL_CLOCK_SHIFT`], [`SEL_NEW_BATCH`].
pub fn pipeline_frames(data: &[u8]) -> Outcome {
    let mode = match data.first() {
        Some(s) if s & SEL_VXLAN != 0 => ClusterMode::Vxlan,
        _ => ClusterMode::Native,
    };
    // Seeded: a crash found by the fuzzer replays exactly, and the two
    // lanes draw the same random numbers.
    let lane = || {
        let counters = Arc::new(WorkerCounters::default());
        let ct = Arc::new(ConnTrack::with_seed(
            ConntrackConfig {
                max_flows: 64,
                ..Default::default()
            },
            1,
            crate::pipeline::REPLAY_SEED,
        ));
        let pipeline = Pipeline::seeded(
            Arc::clone(&counters),
            ct,
            0,
            1,
            crate::pipeline::REPLAY_SEED,
        );
        (pipeline, counters)
    };
    let (pipeline, counters) = lane();
    let (mut stages_only, stages_counters) = lane();
    stages_only.fast_path = false;
    let mut run = Run {
        pipeline,
        counters,
        stages_only,
        stages_counters,
        tables: tables(mode),
        now: Instant::now(),
        before: Vec::with_capacity(FUZZ_BATCH),
        encap_buf: vec![0u8; 64 * 1024 + 16 * 1024],
        outcome: Outcome::default(),
    };
    BATCH.with(|b| {
        STAGES_BATCH.with(|sb| {
            let mut lanes = Lanes {
                batch: &mut b.borrow_mut(),
                stages: &mut sb.borrow_mut(),
            };
            let batch = &mut lanes;
            batch.clear();
            let mut rest = data;
            while let Some((&sel, tail)) = rest.split_first() {
                let (len, tail) = match tail {
                    [h, l, tail @ ..] => (usize::from(u16::from_be_bytes([*h, *l])), tail),
                    _ => (tail.len(), &[][..]),
                };
                let (bytes, tail) = tail.split_at(len.min(tail.len()));
                rest = tail;
                if sel & SEL_NEW_BATCH != 0 && !batch.is_empty() {
                    run.process(batch);
                }
                run.now += match (sel >> SEL_CLOCK_SHIFT) & 3 {
                    0 => Duration::ZERO,
                    1 => Duration::from_secs(1),
                    2 => Duration::from_secs(120),
                    _ => Duration::from_secs(86_400),
                };
                run.load(batch, Source::of(sel), bytes);
            }
            if !batch.is_empty() {
                run.process(batch);
            }
        })
    });
    run.outcome.fast_path =
        crate::metrics::datapath_stats(std::slice::from_ref(&run.counters)).fast_path;
    run.outcome
}

/// The two lanes' batches, loaded alike.
struct Lanes<'a> {
    /// For the default pipeline (fast path on).
    batch: &'a mut Batch,
    /// For the stage path.
    stages: &'a mut Batch,
}

impl Lanes<'_> {
    fn clear(&mut self) {
        self.batch.clear();
        self.stages.clear();
    }

    fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    fn is_full(&self) -> bool {
        self.batch.is_full()
    }

    fn len(&self) -> usize {
        self.batch.len()
    }
}

/// What became of the packets of one `pipeline` input (for tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Written to a tap: (port, frame length).
    pub forwarded: Vec<(PortId, usize)>,
    /// Encapsulated towards another node: VXLAN datagrams sent.
    pub encapsulated: usize,
    /// Dropped in the pipeline, and before it (decap).
    pub dropped: Vec<DropReason>,
    /// Packets the fast path took (and the stage-path lane matched).
    pub fast_path: u64,
}

impl Run {
    /// Loads one record into the batch as the worker would, processing the
    /// batch first whenever it is full.
    fn load(&mut self, batch: &mut Lanes<'_>, source: Source, bytes: &[u8]) {
        match source {
            Source::Pod(port) => self.load_tap(batch, port, bytes),
            Source::Host => self.load_tap(batch, PORT_HOST, bytes),
            Source::Underlay => self.load_underlay(batch, REMOTE_IP, bytes),
            Source::UnderlayUnknown => {
                self.load_underlay(batch, Ipv4Addr::new(192, 168, 56, 99), bytes)
            }
        }
    }

    fn load_tap(&mut self, lanes: &mut Lanes<'_>, port: PortId, bytes: &[u8]) {
        if lanes.is_full() {
            self.process(lanes);
        }
        for (i, batch) in [&mut *lanes.batch, &mut *lanes.stages]
            .into_iter()
            .enumerate()
        {
            let Some(p) = batch.next_free() else { return };
            // As `Worker::fill_batch`: a read fills the read area.
            let area = p.read_area();
            let n = bytes.len().min(area.len());
            area[..n].copy_from_slice(&bytes[..n]);
            p.filled(port, n);
            if i == 0 {
                let before = before_of(p.data());
                self.before.push(before);
            }
            batch.commit();
        }
    }

    /// As `Worker::fill_from_overlay`: decap each datagram of one GRO read,
    /// coalesce TCP segments into the previous packet of the same read,
    /// repair partial inner checksums, or count the drop.
    fn load_underlay(&mut self, lanes: &mut Lanes<'_>, src: Ipv4Addr, bytes: &[u8]) {
        let Some(overlay) = self.tables.overlay.as_ref() else {
            // Native mode has no VXLAN socket: nothing to read.
            return;
        };
        let (seg, buf) = match bytes {
            [h, l, rest @ ..] => (usize::from(u16::from_be_bytes([*h, *l])).max(1), rest),
            _ => return,
        };
        let c = Arc::clone(&self.counters);
        let sc = Arc::clone(&self.stages_counters);
        let mut first_new = lanes.len();
        for dgram in buf.chunks(seg) {
            if lanes.is_full() {
                self.process(lanes);
                first_new = 0;
            }
            let coalescing = lanes.len() > first_new;
            let stages = decap::receive(lanes.stages, dgram, src, overlay, coalescing, &sc);
            let batch = &mut *lanes.batch;
            let received = decap::receive(batch, dgram, src, overlay, coalescing, &c);
            assert_eq!(
                received, stages,
                "decap decided differently in the two lanes"
            );
            match received {
                decap::Received::Loaded => {
                    let before = before_of(batch.packets()[batch.len() - 1].data());
                    self.before.push(before);
                }
                // A coalesced superframe's checksum is left partial with a
                // correct seed: still valid.
                decap::Received::Merged => {}
                decap::Received::Dropped(reason) => self.outcome.dropped.push(reason),
                decap::Received::BatchFull => unreachable!("processed when full"),
            }
        }
    }

    /// Runs the batch through the pipeline and checks every packet.
    fn process(&mut self, lanes: &mut Lanes<'_>) {
        self.stages_only
            .process(lanes.stages, self.tables, self.now);
        let batch = &mut *lanes.batch;
        // Coalescing may have changed a packet after it was loaded.
        for (i, p) in batch.packets().iter().enumerate() {
            if p.meta.vnet.is_gso() {
                self.before[i] = before_of(p.data());
            }
        }
        let drops_before: Vec<u64> = self.counters.drop_packets.iter().map(|c| c.get()).collect();
        self.pipeline.process(batch, self.tables, self.now);
        self.compare_lanes(batch, lanes.stages);
        lanes.stages.clear();
        let mut verdict_drops = [0u64; DropReason::COUNT];
        for (i, p) in batch.packets().iter().enumerate() {
            let before = self.before.get(i).copied().unwrap_or_default();
            match p.verdict {
                Verdict::Pending => panic!("packet {i} left undecided: {p:?}"),
                Verdict::Drop(r) => {
                    verdict_drops[r as usize] += 1;
                    self.outcome.dropped.push(r);
                }
                Verdict::Forward { port } => self.check_forward(p, port, before),
                Verdict::Reply if p.meta.from_node.is_some() => {
                    let node = p.meta.from_node.unwrap_or_default();
                    self.check_encap(p, node, before, true)
                }
                Verdict::Reply => self.check_forward(p, p.ingress, before),
                Verdict::Encap { node } => self.check_encap(p, node, before, false),
            }
        }
        // Every drop is counted under its reason.
        for r in DropReason::ALL {
            let i = *r as usize;
            let delta = self.counters.drop_packets[i].get() - drops_before[i];
            assert!(
                delta >= verdict_drops[i],
                "{} packets dropped as {} but {delta} counted",
                verdict_drops[i],
                r.name()
            );
        }
        self.before.clear();
        batch.clear();
    }

    /// The fast path and the stage path decided alike: every packet's
    /// verdict and bytes, every counter but the fast path's own, and the
    /// flow table.
    fn compare_lanes(&self, batch: &Batch, stages: &Batch) {
        assert_eq!(
            batch.len(),
            stages.len(),
            "the lanes' batches differ in size"
        );
        for (i, (a, b)) in batch.packets().iter().zip(stages.packets()).enumerate() {
            assert_eq!(
                a.verdict, b.verdict,
                "packet {i}: the fast path and the stage path disagree"
            );
            assert_eq!(
                a.data(),
                b.data(),
                "packet {i}: bytes differ between the paths"
            );
        }
        let stats = |c: &Arc<WorkerCounters>| crate::metrics::DatapathStats {
            // Which path took a packet is the one difference.
            fast_path: 0,
            workers: Vec::new(),
            ..crate::metrics::datapath_stats(std::slice::from_ref(c))
        };
        assert_eq!(
            stats(&self.counters),
            stats(&self.stages_counters),
            "counters differ between the paths"
        );
        assert_eq!(
            flows(&self.pipeline),
            flows(&self.stages_only),
            "flow tables differ between the paths"
        );
    }

    /// A frame written to a tap: a valid vnet header, a parsable frame with
    /// consistent lengths and checksums.
    fn check_forward(&mut self, p: &Packet, port: PortId, before: Before) {
        let dst = self
            .tables
            .port(port)
            .unwrap_or_else(|| panic!("forwarded to unknown port {port}"));
        let data = p.data();
        assert!(data.len() >= vnet_hdr::LEN + 14, "runt frame forwarded");
        self.outcome
            .forwarded
            .push((port, data.len() - vnet_hdr::LEN));
        let frame = &data[vnet_hdr::LEN..];
        let hdr = vnet_hdr::VnetHdr::new_checked(&data[..vnet_hdr::LEN]).expect("12 bytes");
        let repr = vnet_hdr::Repr::parse(&hdr, frame.len())
            .unwrap_or_else(|e| panic!("emitted vnet header invalid: {e:?}"));
        if !dst.offloads {
            assert!(
                repr.csum.is_none() && !repr.is_gso(),
                "offloads left on a frame to port {port}, which takes none"
            );
        }
        if dst.kind == PortKind::Pod {
            assert_eq!(&frame[..6], &dst.mac, "frame to a pod not addressed to it");
            assert_eq!(
                &frame[6..12],
                &GW_MAC,
                "frame to a pod not from the gateway"
            );
        }
        check_frame(frame, &repr, before);
    }

    /// What `Worker::send_encap` sends for this packet: segmented (TCP) or
    /// copied, behind a VXLAN header; each datagram must carry a valid
    /// inner frame.
    fn check_encap(&mut self, p: &Packet, node: u16, before: Before, reply: bool) {
        let overlay = self
            .tables
            .overlay
            .as_ref()
            .unwrap_or_else(|| panic!("Encap verdict on a node without overlay"));
        assert!(
            usize::from(node) < overlay.nodes.len(),
            "encapsulated towards unknown node {node}"
        );
        let frame = p.frame();
        let vnet = p.meta.vnet;
        let vx = vxlan::Repr { vni: overlay.vni };
        let h = vxlan::HEADER_LEN;
        let out = &mut self.encap_buf;
        let is_tcp = p.meta.proto == 6 && p.meta.l3 == L3::Ipv4;
        let (total, seg_len) = if is_tcp && (vnet.is_gso() || vnet.csum.is_some()) {
            match segment::segment_tcp_v4(frame, &vnet, h, out, |b| {
                vx.emit_into(b);
            }) {
                Ok(s) => (s.total_len, s.segment_len),
                // Counted as segmentation_failed by the worker.
                Err(_) => return,
            }
        } else if vnet.is_gso() {
            return;
        } else {
            let n = h + frame.len();
            if n > out.len() {
                return;
            }
            vx.emit_into(&mut out[..h]);
            out[h..n].copy_from_slice(frame);
            if let Some((start, offset)) = vnet.csum {
                checksum::complete_partial(&mut out[h..n], usize::from(start), usize::from(offset));
            }
            (n, n)
        };
        for dgram in out[..total].chunks(seg_len.max(1)) {
            self.outcome.encapsulated += 1;
            let hdr = vxlan::VxlanHeader::new_checked(dgram).expect("VXLAN header written");
            let r = vxlan::Repr::parse(&hdr).expect("VXLAN header valid");
            assert_eq!(r.vni, overlay.vni);
            let inner = &dgram[h..];
            assert!(inner.len() >= 14, "runt inner frame");
            // Forwarded frames go from our VTEP to the remote one, whose
            // VXLAN device takes only frames addressed to it. A reply the
            // gateway builds swaps the request's MACs instead, so it goes
            // back to whatever source MAC the sender used.
            if !reply {
                assert_eq!(
                    &inner[..6],
                    &overlay.nodes[usize::from(node)].vtep_mac,
                    "inner frame not addressed to the remote VTEP"
                );
                assert_eq!(
                    &inner[6..12],
                    &overlay.vtep_mac,
                    "inner source not our VTEP"
                );
            }
            check_frame(inner, &vnet_hdr::Repr::NONE, before);
        }
    }
}

/// A pipeline's flows, without what is each table's own (slot numbers,
/// clocks), in a stable order.
fn flows(pl: &Pipeline) -> Vec<crate::conntrack::FlowInfo> {
    let mut v: Vec<_> = pl
        .conntrack
        .table()
        .list(usize::MAX, |_| true)
        .into_iter()
        .map(|f| crate::conntrack::FlowInfo {
            index: 0,
            idle_secs: 0,
            expires_in_secs: 0,
            ..f
        })
        .collect();
    v.sort_by_key(|f| (f.orig, f.state));
    v
}

/// Reads, before the pipeline, whether the packet's L4 checksum is valid
/// (or partial with a correct pseudo-header seed where the vnet header
/// points at it, which a completion turns valid).
fn before_of(data: &[u8]) -> Before {
    let Some(frame) = data.get(vnet_hdr::LEN..) else {
        return Before::default();
    };
    let Ok(hdr) = vnet_hdr::VnetHdr::new_checked(&data[..vnet_hdr::LEN]) else {
        return Before::default();
    };
    let Ok(repr) = vnet_hdr::Repr::parse(&hdr, frame.len()) else {
        return Before::default();
    };
    Before {
        l4_valid: l4_checksum(frame, &repr) == L4Checksum::Valid,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L4Checksum {
    /// Not IPv4, a fragment, not TCP/UDP/ICMP, or UDP without checksum.
    NotChecked,
    Valid,
    Invalid,
}

/// The state of an IPv4 frame's L4 checksum; a partial one (per `repr`)
/// counts as valid when it sits at the L4 checksum and holds the
/// pseudo-header sum.
fn l4_checksum(frame: &[u8], repr: &vnet_hdr::Repr) -> L4Checksum {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return L4Checksum::NotChecked;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    if ip[0] >> 4 != 4 || ihl < 20 || total < ihl || total > ip.len() || frag != 0 {
        return L4Checksum::NotChecked;
    }
    let proto = ip[9];
    let l4 = &ip[ihl..total];
    let csum_off = match proto {
        6 if l4.len() >= 20 => 16,
        17 if l4.len() >= 8 => 6,
        1 if l4.len() >= 8 => 2,
        _ => return L4Checksum::NotChecked,
    };
    let field = u16::from_be_bytes([l4[csum_off], l4[csum_off + 1]]);
    if proto == 17 && field == 0 && repr.csum.is_none() {
        return L4Checksum::NotChecked;
    }
    let pseudo = if proto == 1 {
        0
    } else {
        let mut s = checksum::sum(&ip[12..20], 0);
        s = checksum::sum(&[0, proto], s);
        checksum::sum(&(l4.len() as u16).to_be_bytes(), s)
    };
    match repr.csum {
        Some((start, offset)) => {
            let at_l4 = usize::from(start) == 14 + ihl && usize::from(offset) == csum_off;
            // A superframe's seed covers the pseudo header without the
            // length (the kernel's GSO convention); either is accepted.
            let mut no_len = checksum::sum(&ip[12..20], 0);
            no_len = checksum::sum(&[0, proto], no_len);
            let seeds = [
                checksum::fold(u64::from(pseudo)),
                checksum::fold(u64::from(no_len)),
            ];
            if proto != 1 && at_l4 && seeds.contains(&field) && total + 14 == frame.len() {
                L4Checksum::Valid
            } else {
                L4Checksum::Invalid
            }
        }
        None if checksum::sum(l4, pseudo) as u16 == 0xffff
            || checksum::fold(u64::from(checksum::sum(l4, pseudo))) == 0xffff =>
        {
            L4Checksum::Valid
        }
        None => L4Checksum::Invalid,
    }
}

/// Checks an emitted Ethernet frame: IPv4 header valid with a correct
/// checksum and a total length matching the frame (GSO aside), and the
/// L4 checksum valid if it was valid on the way in.
fn check_frame(frame: &[u8], repr: &vnet_hdr::Repr, before: Before) {
    let eth = etherparse::Ethernet2HeaderSlice::from_slice(frame).expect("Ethernet header");
    if eth.ether_type() != etherparse::EtherType::IPV4 {
        return;
    }
    let ip_bytes = &frame[14..];
    let ip = etherparse::Ipv4HeaderSlice::from_slice(ip_bytes)
        .unwrap_or_else(|e| panic!("emitted IPv4 header invalid: {e}"));
    assert_eq!(
        checksum::checksum(ip.slice()),
        0,
        "emitted IPv4 header checksum wrong"
    );
    assert!(ip.ttl() > 0, "emitted IPv4 packet with TTL 0");
    let total = usize::from(ip.total_len());
    if !repr.is_gso() {
        assert_eq!(
            total + 14,
            frame.len(),
            "IPv4 total length and frame length disagree"
        );
    }
    if before.l4_valid && l4_checksum(frame, repr) == L4Checksum::Invalid {
        panic!("a valid L4 checksum came out invalid (vnet {repr:?})");
    }
}

// ---------------------------------------------------------------------------
// Target `control_request`: the control API decoder and validation.
// ---------------------------------------------------------------------------

/// The `control_request` target: one request line as the control server
/// reads it. A decoded request must survive encode-then-decode unchanged;
/// service changes go through the validation the daemon applies before
/// publishing (`ServiceTable::rebuild`), which must either refuse with a
/// named field or build a table; a trace request runs over the fuzzed
/// node's tables.
pub fn control_request(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let line = line.trim_end();
    let req = match api::decode_request(line) {
        Ok(req) => req,
        Err(e) => {
            assert!(!e.message.is_empty(), "an error without a message");
            serde_json::to_string(&api::Response::refusal(e))
                .expect("an error response serializes");
            return;
        }
    };
    let encoded = api::encode_request(&req);
    match api::decode_request(&encoded) {
        Ok(again) => assert_eq!(again, req, "request changed in a round trip: {encoded}"),
        Err(e) => panic!("a decoded request does not decode again: {e} ({encoded})"),
    }
    match req {
        Request::SetServices(podswitch_api::SetServicesArgs { settings, services }) => {
            let settings = settings.unwrap_or_default();
            let _ = build_services(&services, &settings);
        }
        Request::PatchServices(podswitch_api::PatchServicesArgs { upsert, remove }) => {
            // As the daemon: the current set, upserts by name, then removals.
            let mut by_name: std::collections::BTreeMap<String, ServiceSpec> = self::services()
                .into_iter()
                .map(|s| (s.name.clone(), s))
                .collect();
            for s in upsert {
                by_name.insert(s.name.clone(), s);
            }
            for r in &remove {
                by_name.remove(r);
            }
            let all: Vec<ServiceSpec> = by_name.into_values().collect();
            let _ = build_services(&all, &ServiceSettings::default());
        }
        Request::Trace(podswitch_api::TraceArgs { ingress, packet }) => {
            let t = tables(ClusterMode::Vxlan);
            let port = t
                .ports
                .iter()
                .flatten()
                .find(|p| p.pod == ingress)
                .map(|p| p.id)
                .unwrap_or(PORT_A);
            if let Ok(trace) = crate::pipeline::trace::trace(t, port, &packet, None) {
                serde_json::to_string(&trace).expect("a trace serializes");
            }
        }
        _ => {}
    }
}

/// Builds a service table on both node kinds: a refusal says what is
/// wrong; a table built is consistent with what it was given.
fn build_services(
    services: &[ServiceSpec],
    settings: &ServiceSettings,
) -> Result<(), crate::tables::services::ServiceError> {
    for mode in [ClusterMode::Native, ClusterMode::Vxlan] {
        match ServiceTable::build(services, settings, &node_view(mode)) {
            Ok(table) => {
                let _ = table.endpoint_count();
                let _ = table.masquerades(Ipv4Addr::new(8, 8, 8, 8));
                let _ = table.is_frontend_ip(WEB_VIP);
            }
            Err(e) => {
                assert!(
                    !e.kind.to_string().is_empty(),
                    "a refusal without a message"
                );
                return Err(e);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Target `daemon_config`.
// ---------------------------------------------------------------------------

/// The `daemon_config` target: a `switch.toml` as `podswitch switch run
/// --config` reads it (`from_str` is `toml::from_str`, which this crate does
/// not depend on). A config that loads must survive the JSON round trip
/// `get_config` puts it through.
pub fn daemon_config<E: std::fmt::Display>(
    data: &[u8],
    from_str: impl Fn(&str) -> Result<crate::daemon::DaemonConfig, E>,
) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match from_str(text) {
        Ok(config) => {
            let json = serde_json::to_string(&config).expect("a loaded config serializes");
            let back: crate::daemon::DaemonConfig = serde_json::from_str(&json)
                .unwrap_or_else(|e| panic!("get_config's JSON does not load again: {e}: {json}"));
            assert_eq!(
                serde_json::to_string(&back).expect("serializes"),
                json,
                "config changed in a JSON round trip"
            );
            let _ = config.node.gateway_ipv4();
        }
        Err(e) => assert!(!e.to_string().is_empty(), "an error without a message"),
    }
}

// ---------------------------------------------------------------------------
// Seeds: real frames for the checked-in corpus.
// ---------------------------------------------------------------------------

fn vnet_plain() -> Vec<u8> {
    vec![0u8; vnet_hdr::LEN]
}

fn eth_ipv4(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac).ipv4(src.octets(), dst.octets(), 64)
}

fn tcp_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let mut out = vnet_plain();
    eth_ipv4(mac_of(src), GW_MAC, src, dst)
        .tcp(sport, dport, 1000, 64240)
        .syn()
        .write(&mut out, &[])
        .expect("writes");
    out
}

fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = vnet_plain();
    eth_ipv4(mac_of(src), GW_MAC, src, dst)
        .udp(sport, dport)
        .write(&mut out, payload)
        .expect("writes");
    out
}

fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut out = vnet_plain();
    eth_ipv4(mac_of(src), GW_MAC, src, dst)
        .icmpv4_echo_request(7, 1)
        .write(&mut out, b"podswitch-ping")
        .expect("writes");
    out
}

fn arp_request(sender_mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vnet_plain();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// A TSO superframe from pod A as its kernel hands it over: 3 x 1448
/// bytes of payload, `gso_type` TCPV4, partial checksum seeded with the
/// pseudo-header sum.
fn tso_superframe(dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let payload = vec![0x5a; 3 * 1448];
    let mut out = vnet_plain();
    eth_ipv4(mac_of(POD_A), GW_MAC, POD_A, dst)
        .tcp(40000, dport, 5000, 64240)
        .ack(1)
        .psh()
        .write(&mut out, &payload)
        .expect("writes");
    let l4 = vnet_hdr::LEN + 34;
    let l4_len = (out.len() - l4) as u16;
    let mut pseudo = checksum::sum(&POD_A.octets(), 0);
    pseudo = checksum::sum(&dst.octets(), pseudo);
    pseudo = checksum::sum(&[0, 6], pseudo);
    pseudo = checksum::sum(&l4_len.to_be_bytes(), pseudo);
    out[l4 + 16..l4 + 18].copy_from_slice(&checksum::fold(u64::from(pseudo)).to_be_bytes());
    let mut h = vnet_hdr::VnetHdr::new_checked(&mut out[..vnet_hdr::LEN]).expect("12 bytes");
    vnet_hdr::Repr {
        csum: Some((34, 16)),
        gso: vnet_hdr::GsoKind::TcpV4,
        gso_size: 1448,
        hdr_len: 54,
        ecn: false,
    }
    .emit(&mut h);
    out
}

/// A VXLAN datagram (UDP payload) from node-2 carrying `inner` (an
/// Ethernet frame without vnet header).
fn vxlan_datagram(inner: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; vxlan::HEADER_LEN];
    vxlan::Repr { vni: VNI }.emit_into(&mut d);
    d.extend_from_slice(inner);
    d
}

/// A frame from node-2's pod as it arrives inside VXLAN: addressed from
/// node-2's VTEP to ours.
fn overlay_inner_tcp(dst: Ipv4Addr, dport: u16, seq: u32, payload: &[u8], syn: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = eth_ipv4(remote_vtep_mac(), vtep_mac(), REMOTE_POD, dst).tcp(43000, dport, seq, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    b.write(&mut out, payload).expect("writes");
    out
}

/// One GRO read: the segment size, then the datagrams back to back.
fn gro_read(seg: usize, dgrams: &[Vec<u8>]) -> Vec<u8> {
    let mut v = (seg as u16).to_be_bytes().to_vec();
    for d in dgrams {
        v.extend_from_slice(d);
    }
    v
}

/// Seed inputs for `pipeline`, by name.
pub fn pipeline_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let one = |source: Source, flags: u8, bytes: Vec<u8>| {
        let mut v = Vec::new();
        pipeline_record(&mut v, source, flags, &bytes);
        v
    };
    let mut seeds = vec![
        (
            "arp-request-gateway",
            one(
                Source::Pod(PORT_A),
                0,
                arp_request(mac_of(POD_A), POD_A, GW),
            ),
        ),
        (
            "arp-request-pod",
            one(
                Source::Pod(PORT_A),
                0,
                arp_request(mac_of(POD_A), POD_A, POD_B),
            ),
        ),
        (
            "icmp-echo-gateway",
            one(Source::Pod(PORT_A), 0, icmp_echo(POD_A, GW)),
        ),
        (
            "icmp-echo-pod",
            one(Source::Pod(PORT_A), 0, icmp_echo(POD_A, POD_B)),
        ),
        (
            "udp-pod-to-pod-no-offload",
            one(
                Source::Pod(PORT_A),
                0,
                udp(POD_A, POD_C, 40000, 9, b"hello"),
            ),
        ),
        (
            "udp-dns-clusterip",
            one(
                Source::Pod(PORT_A),
                0,
                udp(POD_A, DNS_VIP, 40001, 53, b"query"),
            ),
        ),
        (
            "tcp-syn-egress-snat",
            one(
                Source::Pod(PORT_B),
                0,
                tcp_syn(POD_B, Ipv4Addr::new(93, 184, 216, 34), 41000, 443),
            ),
        ),
        (
            "gso-superframe-pod-to-pod",
            one(Source::Pod(PORT_A), 0, tso_superframe(POD_B, 8080)),
        ),
        (
            "gso-superframe-to-no-offload-pod",
            one(Source::Pod(PORT_A), 0, tso_superframe(POD_C, 8080)),
        ),
        (
            "gso-superframe-vxlan-remote",
            one(
                Source::Pod(PORT_A),
                SEL_VXLAN,
                tso_superframe(REMOTE_POD, 8080),
            ),
        ),
    ];
    // A TCP SYN to the ClusterIP, then the endpoint's SYN-ACK (reverse NAT).
    let mut syn_ack = vnet_plain();
    eth_ipv4(mac_of(POD_A), GW_MAC, POD_A, POD_B)
        .tcp(8080, 42000, 9000, 64240)
        .syn()
        .ack(1001)
        .write(&mut syn_ack, &[])
        .expect("writes");
    for (name, flags) in [
        ("tcp-syn-clusterip-native", 0),
        ("tcp-syn-clusterip-vxlan", SEL_VXLAN),
    ] {
        let mut v = Vec::new();
        pipeline_record(
            &mut v,
            Source::Pod(PORT_B),
            flags,
            &tcp_syn(POD_B, WEB_VIP, 42000, 80),
        );
        pipeline_record(&mut v, Source::Pod(PORT_A), SEL_NEW_BATCH, &syn_ack);
        seeds.push((name, v));
    }
    // NodePort from the outside through the host port.
    let mut nodeport = vnet_plain();
    etherparse::PacketBuilder::ethernet2([0x02, 0, 0, 0, 0, 0x99], [0x02, 0, 0, 0, 0, 0x01])
        .ipv4([203, 0, 113, 7], NODE_IP.octets(), 60)
        .tcp(50000, WEB_NODE_PORT, 1, 64240)
        .syn()
        .write(&mut nodeport, &[])
        .expect("writes");
    seeds.push(("tcp-syn-nodeport-host", one(Source::Host, 0, nodeport)));
    // VXLAN from node-2: a SYN to pod A, then two MSS segments one GRO read
    // coalesces, then an ICMP echo to the gateway, and one with a bad VNI.
    let syn = overlay_inner_tcp(POD_A, 8080, 100, &[], true);
    let seg1 = overlay_inner_tcp(POD_A, 8080, 101, &[0x11; 1400], false);
    let seg2 = overlay_inner_tcp(POD_A, 8080, 1501, &[0x22; 1400], false);
    seeds.push((
        "vxlan-tcp-syn-from-node-2",
        one(
            Source::Underlay,
            SEL_VXLAN,
            gro_read(0xffff, &[vxlan_datagram(&syn)]),
        ),
    ));
    seeds.push((
        "vxlan-gro-two-segments",
        one(
            Source::Underlay,
            SEL_VXLAN,
            gro_read(
                vxlan::HEADER_LEN + seg1.len(),
                &[vxlan_datagram(&seg1), vxlan_datagram(&seg2)],
            ),
        ),
    ));
    let mut ping = Vec::new();
    eth_ipv4(remote_vtep_mac(), vtep_mac(), REMOTE_POD, GW)
        .icmpv4_echo_request(9, 1)
        .write(&mut ping, b"overlay")
        .expect("writes");
    seeds.push((
        "vxlan-icmp-echo-gateway",
        one(
            Source::Underlay,
            SEL_VXLAN,
            gro_read(0xffff, &[vxlan_datagram(&ping)]),
        ),
    ));
    let mut wrong_vni = vxlan_datagram(&ping);
    wrong_vni[6] = 7;
    seeds.push((
        "vxlan-wrong-vni-and-unknown-node",
        [
            one(Source::Underlay, SEL_VXLAN, gro_read(0xffff, &[wrong_vni])),
            one(
                Source::UnderlayUnknown,
                0,
                gro_read(0xffff, &[vxlan_datagram(&ping)]),
            ),
        ]
        .concat(),
    ));
    // TTL 1 towards a remote pod: an ICMP time exceeded back to the pod.
    let mut ttl1 = vnet_plain();
    etherparse::PacketBuilder::ethernet2(mac_of(POD_A), GW_MAC)
        .ipv4(POD_A.octets(), REMOTE_POD.octets(), 1)
        .udp(33434, 33434)
        .write(&mut ttl1, b"traceroute")
        .expect("writes");
    seeds.push(("udp-ttl1-remote", one(Source::Pod(PORT_A), 0, ttl1)));
    seeds
}

/// Seed inputs for `control_request`, by name.
pub fn control_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let set = Request::SetServices(podswitch_api::SetServicesArgs {
        settings: Some(ServiceSettings::default()),
        services: services(),
    });
    let patch = Request::PatchServices(podswitch_api::PatchServicesArgs {
        upsert: services().into_iter().take(1).collect(),
        remove: vec!["default/dns".into()],
    });
    let trace = r#"{"v":1,"op":"trace","args":{"ingress":"default/pod-1","packet":{"src":"10.244.1.3","dst":"10.96.0.10","proto":"tcp","sport":42000,"dport":80}}}"#;
    let topo = r#"{"v":1,"op":"replace_topology","args":{"topology":{"node":{"name":"node-1","pod_cidrs":["10.244.1.0/24"],"mode":"vxlan","underlay_ipv4":"192.168.56.11"},"pods":[{"name":"default/a","netns":"/run/netns/a","ipv4":"10.244.1.2"}]}}}"#;
    let nodes = r#"{"v":1,"op":"set_remote_nodes","args":{"nodes":[{"name":"node-2","underlay_ipv4":"192.168.56.12","pod_cidrs":["10.244.2.0/24"],"vtep_mac":"02:00:c0:a8:38:0c"}]}}"#;
    vec![
        ("hello", br#"{"v":1,"op":"hello"}"#.to_vec()),
        ("set-services", api::encode_request(&set).into_bytes()),
        ("patch-services", api::encode_request(&patch).into_bytes()),
        ("trace", trace.as_bytes().to_vec()),
        ("replace-topology", topo.as_bytes().to_vec()),
        ("set-remote-nodes", nodes.as_bytes().to_vec()),
        (
            "list-flows",
            br#"{"v":1,"op":"list_flows","args":{"filter":{"addr":"10.244.1.0/24","proto":"tcp","state":"established"},"limit":10}}"#.to_vec(),
        ),
        (
            "capture-start",
            br#"{"v":1,"op":"capture_start","args":{"port":"default/a","point":"ingress","filter":{"proto":"tcp","port":80},"max_frames":10}}"#.to_vec(),
        ),
        ("bad-version", br#"{"v":2,"op":"hello"}"#.to_vec()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_run_clean() {
        let mut fast = 0;
        for (name, s) in pipeline_seeds() {
            let outcome = pipeline_frames(&s);
            eprintln!("pipeline seed {name}: {outcome:?}");
            fast += outcome.fast_path;
        }
        // The lanes' comparison means something only if the fast path ran.
        assert!(fast > 0, "no seed took the fast path");
        for (_, s) in control_seeds() {
            control_request(&s);
        }
    }

    #[test]
    fn seed_checksums_are_valid_going_in() {
        let f = tso_superframe(POD_B, 8080);
        assert!(before_of(&f).l4_valid);
        let f = tcp_syn(POD_B, WEB_VIP, 42000, 80);
        assert!(before_of(&f).l4_valid);
    }
}
