//! The sans-IO packet pipeline: frames and tables in, verdicts out.
//!
//! A worker reads a batch of frames from its queues, then runs the batch
//! through the stages in order, each stage looping over the whole batch
//! (VPP's vector idea) and skipping packets an earlier stage has decided:
//!
//! ```text
//!  fast path: known flows from pods, all of the below in one pass
//!  parse ──> conntrack ──> gateway ──> route ──> output
//!  vnet_hdr   services      proxy ARP   LPM        offload fix-ups for the
//!  eth/ip/l4  (Maglev), NAT ICMP echo   TTL, MACs  destination port
//!  anti-spoof masquerade                ICMP errors
//! ```
//!
//! For `Encap` verdicts, [`encap`] builds the VXLAN datagrams (or the
//! headers of one superframe the kernel segments) and the worker sends
//! them; for datagrams from the underlay, [`decap`] checks them and loads
//! the inner frames. Only the worker (`crate::worker`) touches file
//! descriptors; everything here is deterministic and testable in memory.
//! A failure on one packet is a [`Verdict::Drop`] with a [`DropReason`],
//! never an `Err`.

pub mod conntrack;
pub mod decap;
pub use crate::drop_reason;
pub mod encap;
pub mod fastpath;
pub mod gateway;
pub mod icmp_error;
pub mod nat;
pub mod output;
pub mod parse;
pub mod route;
#[cfg(test)]
mod tcp_tests;
pub mod trace;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

pub use drop_reason::DropReason;

use crate::metrics::WorkerCounters;
use crate::tables::{PortId, Tables};
use crate::wire::vnet_hdr;

/// Bytes reserved in front of the vnet header for encapsulation headers
/// (outer Ethernet + IPv6 + UDP + VXLAN = 70, rounded up).
pub const HEADROOM: usize = 128;
/// Largest frame a tap hands us: a 64 KiB GSO superframe plus Ethernet.
pub const MAX_FRAME: usize = 65535 + 14;
/// Size of every packet buffer.
pub const BUF_SIZE: usize = HEADROOM + vnet_hdr::LEN + MAX_FRAME;
/// Frames per batch.
pub const BATCH_SIZE: usize = 64;

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet.
    Pending,
    /// Send out of this port.
    Forward { port: PortId },
    /// Send back out of the ingress port (the frame was rewritten into a reply).
    Reply,
    /// Encapsulate (VXLAN) towards this overlay node (index into
    /// `Tables::overlay.nodes`).
    Encap { node: u16 },
    /// Dropped and counted.
    Drop(DropReason),
}

/// The network layer of a parsed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L3 {
    Unparsed,
    Arp,
    Ipv4,
    Ipv6,
}

/// What the parse stage learned, for the stages after it.
#[derive(Debug, Clone, Copy)]
pub struct Meta {
    pub l3: L3,
    pub vnet: vnet_hdr::Repr,
    /// Offset of the L3 header within the frame (after the vnet header).
    pub l3_off: u16,
    /// Offset of the L4 header within the frame.
    pub l4_off: u16,
    /// Length of the L4 header (TCP with options, UDP 8, ICMP 8).
    pub l4_hdr_len: u16,
    /// IP protocol number.
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP total length (IPv4) as the header says.
    pub ip_len: u16,
    /// The first (or only) fragment: it carries the L4 header.
    pub first_fragment: bool,
    pub more_fragments: bool,
    pub dont_fragment: bool,
    pub ttl: u8,
    /// For frames decapsulated from the overlay: the sending node (index
    /// into `Tables::overlay.nodes`), where replies such as ICMP errors go.
    pub from_node: Option<u16>,
    /// An ICMP error the route stage built from a packet that may already
    /// have been translated: its quote and destination are translated back
    /// to what the sender sent before it leaves (RFC 5508 §4.2).
    pub own_icmp_error: bool,
}

impl Default for Meta {
    fn default() -> Self {
        Meta {
            l3: L3::Unparsed,
            vnet: vnet_hdr::Repr::NONE,
            l3_off: 0,
            l4_off: 0,
            l4_hdr_len: 0,
            proto: 0,
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            ip_len: 0,
            first_fragment: true,
            more_fragments: false,
            dont_fragment: false,
            ttl: 0,
            from_node: None,
            own_icmp_error: false,
        }
    }
}

/// One packet buffer, allocated once and reused for the life of a worker.
///
/// Layout: `[headroom][vnet_hdr (12)][ethernet frame ...]`; `start` is the
/// offset of the vnet header, so encapsulation can grow the packet towards
/// the front without copying.
pub struct Packet {
    buf: Box<[u8]>,
    start: usize,
    len: usize,
    /// The port the frame came in on.
    pub ingress: PortId,
    pub meta: Meta,
    pub verdict: Verdict,
}

impl std::fmt::Debug for Packet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packet")
            .field("len", &self.len)
            .field("ingress", &self.ingress)
            .field("verdict", &self.verdict)
            .finish()
    }
}

impl Default for Packet {
    fn default() -> Self {
        Self::new()
    }
}

impl Packet {
    /// Allocates a buffer (done once per pool slot, never per packet).
    pub fn new() -> Self {
        Packet {
            buf: vec![0u8; BUF_SIZE].into_boxed_slice(),
            start: HEADROOM,
            len: 0,
            ingress: 0,
            meta: Meta::default(),
            verdict: Verdict::Pending,
        }
    }

    /// The area an I/O read fills: vnet header then frame.
    pub fn read_area(&mut self) -> &mut [u8] {
        self.start = HEADROOM;
        &mut self.buf[HEADROOM..]
    }

    /// Fills the packet with a vnet header from `vnet` and `frame` (the
    /// inner frame of a decapsulated datagram). Returns false if it does
    /// not fit.
    pub fn load_frame(&mut self, ingress: PortId, vnet: vnet_hdr::Repr, frame: &[u8]) -> bool {
        let s = HEADROOM + vnet_hdr::LEN;
        if frame.len() > BUF_SIZE - s {
            return false;
        }
        self.buf[s..s + frame.len()].copy_from_slice(frame);
        self.filled(ingress, vnet_hdr::LEN + frame.len());
        self.set_vnet(vnet);
        true
    }

    /// Marks `len` bytes of the read area as filled and resets the state.
    pub fn filled(&mut self, ingress: PortId, len: usize) {
        self.start = HEADROOM;
        self.len = len.min(BUF_SIZE - HEADROOM);
        self.ingress = ingress;
        self.meta = Meta::default();
        self.verdict = Verdict::Pending;
    }

    /// Fills the packet from bytes (vnet header + frame); for tests, benches
    /// and in-memory ports. Truncates to the buffer size.
    pub fn load(&mut self, ingress: PortId, bytes: &[u8]) {
        let n = bytes.len().min(BUF_SIZE - HEADROOM);
        self.buf[HEADROOM..HEADROOM + n].copy_from_slice(&bytes[..n]);
        self.filled(ingress, n);
    }

    /// vnet header + frame, as written to a tap.
    #[inline]
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    #[inline]
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    /// Grows the data by `n` bytes at the front, into the headroom, and
    /// returns the data (now starting with those `n` bytes, then what was
    /// there: the vnet header and the frame). `None` when the headroom is
    /// shorter than `n`. For the worker's output only: the frame no
    /// longer follows a 12-byte vnet header afterwards.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        self.start = self.start.checked_sub(n)?;
        self.len += n;
        Some(self.data_mut())
    }

    /// Whole length including the vnet header.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The Ethernet frame (after the vnet header); empty if runt.
    #[inline]
    pub fn frame(&self) -> &[u8] {
        self.data().get(vnet_hdr::LEN..).unwrap_or(&[])
    }

    #[inline]
    pub fn frame_mut(&mut self) -> &mut [u8] {
        self.data_mut().get_mut(vnet_hdr::LEN..).unwrap_or(&mut [])
    }

    /// Sets the frame length (after the vnet header), within the buffer.
    pub fn set_frame_len(&mut self, frame_len: usize) {
        self.len = (vnet_hdr::LEN + frame_len).min(BUF_SIZE - self.start);
    }

    /// Room for a frame of up to `max` bytes, for building replies in place.
    pub fn frame_area(&mut self) -> &mut [u8] {
        let s = self.start + vnet_hdr::LEN;
        &mut self.buf[s..]
    }

    /// How long a frame this buffer can hold.
    pub fn frame_capacity(&self) -> usize {
        BUF_SIZE - self.start - vnet_hdr::LEN
    }

    /// Rewrites the vnet header from `repr`.
    pub fn set_vnet(&mut self, repr: vnet_hdr::Repr) {
        let s = self.start;
        let mut h = vnet_hdr::VnetHdr::new_checked(&mut self.buf[s..s + vnet_hdr::LEN])
            .expect("buffer holds a vnet header");
        repr.emit(&mut h);
        self.meta.vnet = repr;
    }

    /// Decides the packet's fate (first decision wins).
    #[inline]
    pub fn decide(&mut self, v: Verdict) {
        if self.verdict == Verdict::Pending {
            self.verdict = v;
        }
    }

    #[inline]
    pub fn pending(&self) -> bool {
        self.verdict == Verdict::Pending
    }
}

/// A reusable vector of packets.
pub struct Batch {
    pkts: Vec<Packet>,
    len: usize,
}

impl Default for Batch {
    fn default() -> Self {
        Self::new(BATCH_SIZE)
    }
}

impl Batch {
    /// Allocates `capacity` packet buffers once.
    pub fn new(capacity: usize) -> Self {
        Batch {
            pkts: (0..capacity).map(|_| Packet::new()).collect(),
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.pkts.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.pkts.len()
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The next free packet, or `None` if the batch is full. Call
    /// [`Batch::commit`] once it is filled.
    pub fn next_free(&mut self) -> Option<&mut Packet> {
        self.pkts.get_mut(self.len)
    }

    /// Counts the packet handed out by [`Batch::next_free`] as part of the batch.
    pub fn commit(&mut self) {
        if self.len < self.pkts.len() {
            self.len += 1;
        }
    }

    /// The read areas of up to `n` free packets after the batch's, for a
    /// batched read; then [`Batch::commit_reads`] says which were filled.
    pub fn free_read_areas(&mut self, n: usize) -> impl Iterator<Item = &mut [u8]> {
        let end = (self.len + n).min(self.pkts.len());
        self.pkts[self.len..end].iter_mut().map(Packet::read_area)
    }

    /// After a batched read into the free packets: `filled[k]` is what the
    /// k-th free packet got (its port and length), or `None`. The filled
    /// ones join the batch in order; the others stay free.
    pub fn commit_reads(&mut self, filled: impl IntoIterator<Item = Option<(PortId, usize)>>) {
        let first = self.len;
        for (k, f) in filled.into_iter().enumerate() {
            let Some((port, n)) = f else { continue };
            if first + k >= self.pkts.len() {
                break;
            }
            // Packets own their buffers, so moving one is a swap of
            // pointers, never a copy of a frame.
            self.pkts.swap(self.len, first + k);
            self.pkts[self.len].filled(port, n);
            self.len += 1;
        }
    }

    /// Loads one packet from bytes (tests, benches). Returns false if full.
    pub fn push_bytes(&mut self, ingress: PortId, bytes: &[u8]) -> bool {
        match self.next_free() {
            Some(p) => {
                p.load(ingress, bytes);
                self.commit();
                true
            }
            None => false,
        }
    }

    pub fn packets(&self) -> &[Packet] {
        &self.pkts[..self.len]
    }

    pub fn packets_mut(&mut self) -> &mut [Packet] {
        &mut self.pkts[..self.len]
    }
}

/// Per-worker pipeline: the stages and the worker's counters.
pub struct Pipeline {
    pub fast: fastpath::FastPathStage,
    /// Whether [`fastpath`] runs first (on by default; off, every packet
    /// takes the stage path, for comparisons).
    pub fast_path: bool,
    pub parse: parse::ParseStage,
    pub gateway: gateway::GatewayStage,
    pub conntrack: conntrack::ConntrackStage,
    pub route: route::RouteStage,
    pub output: output::OutputStage,
    counters: std::sync::Arc<WorkerCounters>,
}

/// The seed of [`Pipeline::new`]'s table hash and port allocator.
pub const REPLAY_SEED: u64 = 0x7073_7731_5eed_0001;

impl Pipeline {
    /// A pipeline with a conntrack table of its own (tests, benches),
    /// deterministic: the table's hash and the port allocator are seeded
    /// with [`REPLAY_SEED`], so one input gives one output, run after run.
    pub fn new(counters: std::sync::Arc<WorkerCounters>) -> Self {
        let ct = crate::conntrack::ConnTrack::with_seed(Default::default(), 1, REPLAY_SEED);
        Self::seeded(counters, std::sync::Arc::new(ct), 0, 1, REPLAY_SEED)
    }

    /// Worker `worker` of `workers`, sharing the flow table `ct`; its
    /// randomness (SNAT port choice) from the OS.
    pub fn with_conntrack(
        counters: std::sync::Arc<WorkerCounters>,
        ct: std::sync::Arc<crate::conntrack::ConnTrack>,
        worker: usize,
        workers: usize,
    ) -> Self {
        let stage = conntrack::ConntrackStage::new(std::sync::Arc::clone(&ct), worker, workers);
        Self::with_stage(counters, ct, worker, stage)
    }

    /// As [`Self::with_conntrack`], with the randomness from `seed`: a run
    /// can be replayed (tests, fuzzing; build `ct` with
    /// `ConnTrack::with_seed` too).
    pub fn seeded(
        counters: std::sync::Arc<WorkerCounters>,
        ct: std::sync::Arc<crate::conntrack::ConnTrack>,
        worker: usize,
        workers: usize,
        seed: u64,
    ) -> Self {
        let stage =
            conntrack::ConntrackStage::with_seed(std::sync::Arc::clone(&ct), worker, workers, seed);
        Self::with_stage(counters, ct, worker, stage)
    }

    fn with_stage(
        counters: std::sync::Arc<WorkerCounters>,
        ct: std::sync::Arc<crate::conntrack::ConnTrack>,
        worker: usize,
        conntrack: conntrack::ConntrackStage,
    ) -> Self {
        Pipeline {
            fast: fastpath::FastPathStage::new(ct, worker),
            fast_path: true,
            parse: parse::ParseStage,
            gateway: gateway::GatewayStage,
            conntrack,
            route: route::RouteStage::new(),
            output: output::OutputStage,
            counters,
        }
    }

    pub fn counters(&self) -> &std::sync::Arc<WorkerCounters> {
        &self.counters
    }

    /// Runs every stage over the batch. Afterwards each packet has a
    /// verdict other than `Pending`; drops are already counted.
    pub fn process(&mut self, batch: &mut Batch, tables: &Tables, now: Instant) {
        let c = &*self.counters;
        c.stages.batches.inc();
        // The stage path runs only for what the fast path left (they only
        // ever act on pending packets).
        let rest = !self.fast_path || self.fast.process(batch, tables, &mut self.route, c, now);
        if rest {
            self.parse.process(batch, tables, c);
            // Conntrack before the gateway: replies to flows translated to
            // the gateway's address (hairpin, NodePort in VXLAN mode) are
            // addressed to it and must be translated back, not answered.
            self.conntrack.process(batch, tables, c, now);
            self.gateway.process(batch, tables, c);
            self.route.process(batch, tables, c, now);
        }
        // Errors about packets NAT already rewrote (too big for the
        // endpoint's port, TTL expired after DNAT) quote the rewritten
        // packet: translated back here, as the kernel's NAT does for the
        // errors it forwards. Rare: the common batch pays one test.
        if self.route.take_errors_built() > 0 {
            self.conntrack.translate_own_errors(batch, c);
        }
        self.output.process(batch, tables, c);
    }
}

/// Records a drop on the packet and in the counters.
#[inline]
pub(crate) fn drop_packet(p: &mut Packet, reason: DropReason, c: &WorkerCounters) {
    if p.pending() {
        c.count_drop(reason, p.len());
        p.verdict = Verdict::Drop(reason);
    }
}

#[cfg(test)]
pub(crate) mod testutil;

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn batched_reads_join_the_batch_in_order_and_skip_holes() {
        let mut b = Batch::new(6);
        assert!(b.push_bytes(9, &[9; 20]));
        // Four read areas after the one packet; the 2nd and 4th stay empty.
        let mut areas = 0;
        for (k, area) in b.free_read_areas(4).enumerate() {
            area[..4].copy_from_slice(&[k as u8; 4]);
            areas += 1;
        }
        assert_eq!(areas, 4);
        b.commit_reads([Some((1, 30)), None, Some((2, 40)), None]);
        let got: Vec<(PortId, usize, u8)> = b
            .packets()
            .iter()
            .map(|p| (p.ingress, p.len(), p.data()[0]))
            .collect();
        assert_eq!(got, [(9, 20, 9), (1, 30, 0), (2, 40, 2)]);
        // What is left is still free and reusable.
        assert_eq!(b.free_read_areas(10).count(), 3);
    }

    #[test]
    fn batched_reads_never_overfill() {
        let mut b = Batch::new(2);
        assert_eq!(b.free_read_areas(5).count(), 2);
        b.commit_reads([Some((1, 10)), Some((1, 10)), Some((1, 10))]);
        assert_eq!(b.len(), 2);
        assert!(b.is_full());
        assert_eq!(b.free_read_areas(5).count(), 0);
    }
}
