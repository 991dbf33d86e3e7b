//! Stage 0, fast path: the packets of flows the switch already knows,
//! taken from the frame to their verdict in one pass per packet, before
//! the stage-by-stage path sees the batch.
//!
//! Most packets a node forwards are of established connections from its
//! pods: a plain (or checksum-offloaded) IPv4 TCP or UDP datagram from the
//! pod's own MAC and address to the gateway. For those the stages after
//! parse only ever translate the packet as its flow says, touch the flow
//! and route it; each stage looping over the whole batch and the metadata
//! written by one and read back by the next cost more than that work.
//!
//! The fast path takes a packet only where the result is the stage path's:
//!
//! 1. **Parse**: every packet from a pod's port is parsed by the parse
//!    stage's own function ([`super::parse::parse_from`], over the views
//!    in [`crate::wire`]): one parser for both paths. A packet it refuses
//!    is dropped and counted here, by the same reason. The fast path takes
//!    a whole (unfragmented) IPv4 TCP or UDP datagram without GSO,
//!    addressed to the gateway's MAC; any other parsed packet (ARP, ICMP,
//!    fragments, GSO, group MACs) goes on to the stage path with its
//!    metadata filled, and the parse stage skips it. Packets from the host
//!    and overlay ports are left to the stage path unparsed.
//! 2. **Conntrack**: the tuple is classified by the conntrack stage's own
//!    function (`track_class`). A packet that concerns no translation is
//!    not tracked, as on the stage path. A tracked one is looked up (the
//!    lookups of a batch in one loop, their cache misses overlapping, as
//!    the conntrack stage does) and taken only if its flow exists and the
//!    packet leaves the flow's state as it is (`leaves_state`: no SYN, FIN
//!    or RST, no transition). It is then translated and its flow touched,
//!    which is all the conntrack stage would do with it.
//! 3. **Gateway and route**: the same functions as the stage path's
//!    (`gateway_ipv4`, [`super::route::RouteStage::route_one`]). The
//!    output stage then runs over the whole batch as usual.
//!
//! **Order.** The stage path handles the rest of the batch afterwards.
//! That is the same as handling the batch in order, because a packet taken
//! here neither changes a flow's state nor inserts or removes one, and a
//! packet is not taken when an earlier packet of the batch that the stage
//! path will handle belongs to the same flow (that packet may change the
//! flow: a FIN, a reply, a SYN reopening the tuple). For that, every other
//! IPv4 TCP, UDP or ICMP echo packet of the batch is looked up too, and the
//! flows it finds are marked. The only differences are when the route
//! stage's ICMP error budget is drawn on, which only matters once that
//! rate limit is exhausted, and that a packet the parse refuses is dropped
//! before earlier packets are handled, which touches nothing but counters.
//!
//! The unit test `fast_path_agrees_with_the_stage_path` runs random
//! batches (established, new, closing and replied flows, pod-to-pod,
//! malformed frames) through two pipelines, one with the fast path and one
//! without, and compares every verdict, frame, counter and flow.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use super::conntrack::{leaves_state, track_class, translate};
use super::gateway::to_gateway_ipv4;
use super::parse::{self, ETH_LEN};
use super::route::{PodHop, RouteStage};
use super::{drop_packet, nat, Batch, DropReason, Packet, BATCH_SIZE};
use crate::conntrack::{ConnTrack, FlowKey, FlowRef};
use crate::metrics::WorkerCounters;
use crate::tables::{PortKind, Tables};

/// Entries fetched this many lookups ahead (as the conntrack stage does).
const ENTRY_PREFETCH_AHEAD: usize = 8;

/// The fast path of one worker.
#[derive(Debug)]
pub struct FastPathStage {
    ct: Arc<ConnTrack>,
    worker: usize,
    /// The packets of the current batch the stage looks at (reused).
    work: Vec<Work>,
    /// Flows an earlier packet of the batch left to the stage path will
    /// touch (reused; rarely more than a few).
    touched: Vec<u32>,
    /// What each destination address of the batch gets, after translation.
    dests: PerBatch<Destination>,
    /// Whether a destination address (before translation) is a service
    /// frontend's.
    frontends: PerBatch<bool>,
    /// Packets this stage has taken (for tests and benches).
    pub taken: u64,
}

/// What the gateway and route stages do with a whole IPv4 TCP or UDP
/// datagram from a pod to one address: a function of the address and the
/// tables alone, so it is worked out once per address and batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    /// Dropped by the gateway (a non-unicast address, or the gateway's
    /// own, which answers nothing but echo requests).
    Drop(DropReason),
    /// Forwarded by this hop (unless TTL or MTU call for an ICMP error).
    Hop(PodHop),
    /// Anything else: `route_one` decides.
    Route,
}

impl Destination {
    /// Out of line: it runs once per address and batch, and keeps the
    /// per-packet loop's registers to itself.
    #[inline(never)]
    fn resolve(dst: Ipv4Addr, tables: &Tables) -> Destination {
        match to_gateway_ipv4(dst, tables) {
            Err(reason) => Destination::Drop(reason),
            // Not an echo request (`gateway_ipv4`): TCP or UDP.
            Ok(true) => Destination::Drop(DropReason::GatewayNotServed),
            Ok(false) => PodHop::resolve(tables, dst).map_or(Destination::Route, Destination::Hop),
        }
    }
}

/// What one batch's packets have found out about an address: a small
/// direct-mapped table emptied per batch (the tables cannot change within
/// one), so most packets of a batch skip a hash lookup.
#[derive(Debug)]
struct PerBatch<V> {
    /// Batches seen; a slot is valid for the batch whose number it holds.
    batch: u64,
    slots: [(u64, u32, V); PER_BATCH_SLOTS],
}

/// Slots of [`PerBatch`]: a batch rarely has more distinct addresses; a
/// collision only costs the lookup it saves.
const PER_BATCH_SLOTS: usize = 16;

impl<V: Copy> PerBatch<V> {
    fn new(empty: V) -> Self {
        PerBatch {
            batch: 1,
            slots: [(0, 0, empty); PER_BATCH_SLOTS],
        }
    }

    fn clear(&mut self) {
        self.batch += 1;
    }

    /// The value for `addr`, from `resolve` the first time in a batch.
    #[inline]
    fn get(&mut self, addr: Ipv4Addr, resolve: impl FnOnce() -> V) -> V {
        let a = u32::from(addr);
        // Fibonacci hashing: the top bits of the product.
        let i = (a.wrapping_mul(0x9E37_79B9) >> (32 - PER_BATCH_SLOTS.trailing_zeros())) as usize;
        let slot = &mut self.slots[i % PER_BATCH_SLOTS];
        if slot.0 != self.batch || slot.1 != a {
            *slot = (self.batch, a, resolve());
        }
        slot.2
    }
}

/// A packet the stage looks at.
#[derive(Debug, Clone, Copy)]
struct Work {
    /// Index in the batch.
    at: u16,
    kind: WorkKind,
    /// TCP flags (0 for UDP).
    tcp_flags: u8,
    key: FlowKey,
    /// `ct.bucket_of(&key)` for looked-up packets.
    bucket: usize,
    found: Option<FlowRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WorkKind {
    /// Parsed here; concerns no translation: only gateway and route.
    Untracked,
    /// Parsed here; taken if its flow exists and keeps its state.
    Tracked,
    /// Left to the stage path; looked up only to learn which flow it will
    /// touch.
    Other,
}

impl FastPathStage {
    pub fn new(ct: Arc<ConnTrack>, worker: usize) -> Self {
        FastPathStage {
            ct,
            worker,
            work: Vec::with_capacity(BATCH_SIZE),
            touched: Vec::with_capacity(BATCH_SIZE),
            dests: PerBatch::new(Destination::Route),
            frontends: PerBatch::new(false),
            taken: 0,
        }
    }

    /// Takes what it can of the batch; the packets it takes have their
    /// verdict (or a drop, counted) when it returns, the others are as
    /// they came. Returns whether any packet is left for the stage path.
    pub fn process(
        &mut self,
        batch: &mut Batch,
        tables: &Tables,
        route: &mut RouteStage,
        c: &WorkerCounters,
        now: Instant,
    ) -> bool {
        let svc = &*tables.services;
        let tracking = svc.active();
        self.work.clear();
        self.touched.clear();
        self.dests.clear();
        self.frontends.clear();
        // Pass 1: parse, classify, hash and prefetch.
        for (at, p) in batch.packets_mut().iter_mut().enumerate() {
            if !p.pending() {
                continue;
            }
            let (kind, key, tcp_flags) = match parse_fast(p, tables, c) {
                Parsed::Fast(key, fl) => {
                    let tracked = tracking && {
                        let to_frontend =
                            self.frontends.get(key.dst, || svc.is_frontend_ip(key.dst));
                        track_class(svc, &key, to_frontend, || true).is_some()
                    };
                    let kind = if tracked {
                        WorkKind::Tracked
                    } else {
                        WorkKind::Untracked
                    };
                    (kind, key, fl)
                }
                Parsed::Other | Parsed::NotFromPod if tracking => match raw_tuple(p) {
                    Some(key) => (WorkKind::Other, key, 0),
                    None => continue,
                },
                Parsed::Other | Parsed::NotFromPod | Parsed::Dropped => continue,
            };
            let bucket = if kind == WorkKind::Untracked {
                0
            } else {
                let b = self.ct.bucket_of(&key);
                self.ct.prefetch_head(b);
                b
            };
            self.work.push(Work {
                at: at as u16,
                kind,
                tcp_flags,
                key,
                bucket,
                found: None,
            });
        }
        if self.work.is_empty() {
            return batch.packets().iter().any(|p| p.pending());
        }
        self.ct.enter(self.worker);
        let taken_before = self.taken;
        self.look_up_all();
        // Pass 3, in batch order.
        let now_s = self.ct.clock(now);
        let ct = &*self.ct;
        let packets = batch.packets_mut();
        for w in &self.work {
            let p = &mut packets[usize::from(w.at)];
            // Where the packet goes, after its translation.
            let dst = match w.kind {
                WorkKind::Other => {
                    if let Some(r) = w.found {
                        self.touched.push(r.index);
                    }
                    continue;
                }
                WorkKind::Tracked => {
                    let take = w.found.filter(|r| {
                        !self.touched.contains(&r.index)
                            && leaves_state(ct, *r, w.key.proto, w.tcp_flags)
                    });
                    let Some(r) = take else {
                        // The stage path handles it, from the parse
                        // stage's result.
                        if let Some(r) = w.found {
                            self.touched.push(r.index);
                        }
                        continue;
                    };
                    translate(ct, p, r, &w.key, now_s, |p, to| {
                        nat::rewrite_plain_ipv4(p, &w.key, to)
                    })
                }
                WorkKind::Untracked => w.key.dst,
            };
            self.taken += 1;
            match self.dests.get(dst, || Destination::resolve(dst, tables)) {
                Destination::Drop(reason) => drop_packet(p, reason, c),
                Destination::Hop(hop) => {
                    if !hop.forward(p, c) {
                        route.route_one(p, tables, c, now);
                    }
                }
                Destination::Route => route.route_one(p, tables, c, now),
            }
        }
        self.ct.exit(self.worker);
        c.stages.fast_path.add(self.taken - taken_before);
        batch.packets().iter().any(|p| p.pending())
    }

    /// Pass 2: the lookups, entries prefetched ahead.
    fn look_up_all(&mut self) {
        let ct = &*self.ct;
        let looked_up = |w: &Work| w.kind != WorkKind::Untracked;
        for w in self
            .work
            .iter()
            .filter(|w| looked_up(w))
            .take(ENTRY_PREFETCH_AHEAD)
        {
            ct.prefetch_entry(w.bucket);
        }
        for i in 0..self.work.len() {
            if let Some(ahead) = self.work.get(i + ENTRY_PREFETCH_AHEAD) {
                if looked_up(ahead) {
                    ct.prefetch_entry(ahead.bucket);
                }
            }
            let w = &mut self.work[i];
            if looked_up(w) {
                w.found = ct.lookup_in(w.bucket, &w.key);
            }
        }
    }
}

/// The tuple of any IPv4 TCP, UDP or ICMP echo packet, read without
/// validating anything (the stage path validates it): which flow the stage
/// path may touch for it.
#[inline]
fn raw_tuple(p: &Packet) -> Option<FlowKey> {
    let f = p.frame();
    if f.len() < ETH_LEN + 20 || f[12..14] != [0x08, 0x00] {
        return None;
    }
    let l4 = ETH_LEN + usize::from(f[ETH_LEN] & 0x0f) * 4;
    nat::tuple_at(f, ETH_LEN, l4, f[ETH_LEN + 9])
}

/// What the fast path makes of a packet after parsing it.
enum Parsed {
    /// The shape it takes (module doc, item 1): the tuple and TCP flags.
    Fast(FlowKey, u8),
    /// Parsed (its metadata filled) but of another shape: the stage path
    /// carries on from the parse stage's result.
    Other,
    /// Not from a pod's port: left unparsed to the stage path.
    NotFromPod,
    /// Refused by the parse stage's checks: dropped and counted.
    Dropped,
}

/// Parses a packet from a pod's port with the parse stage's own function
/// ([`parse::parse_from`]), and says whether it has the shape the fast
/// path takes: the parse stage's common shape, a whole option-less IPv4
/// TCP or UDP datagram without GSO, addressed to the gateway's MAC. A packet the parse stage refuses is dropped here
/// with the reason the stage path would give it.
#[inline]
fn parse_fast(p: &mut Packet, tables: &Tables, c: &WorkerCounters) -> Parsed {
    let Some(port) = tables
        .port(p.ingress)
        .filter(|port| port.kind == PortKind::Pod)
    else {
        return Parsed::NotFromPod;
    };
    match parse::parse_from(p, port, tables) {
        Err(reason) => {
            drop_packet(p, reason, c);
            Parsed::Dropped
        }
        // The common shape is the shape the fast path takes.
        Ok(Some((key, tcp_flags))) => Parsed::Fast(key, tcp_flags),
        Ok(None) => Parsed::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::Pipeline;
    use super::*;
    use crate::conntrack::FlowInfo;
    use crate::metrics::DatapathStats;
    use crate::tables::RouteTarget;
    use etherparse::PacketBuilder;
    use podswitch_api::ServiceSettings;

    /// A small deterministic generator (splitmix64), so a failing batch
    /// is reproduced by its seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A TCP segment with `flags` (FIN 1, SYN 2, RST 4, ACK 16).
    fn tcp(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16, flags: u8, payload: usize) -> Vec<u8> {
        let mut b = PacketBuilder::ethernet2(mac_of(src), GW_MAC)
            .ipv4(src, dst, 64)
            .tcp(sp, dp, 1000, 65535);
        if flags & 1 != 0 {
            b = b.fin();
        }
        if flags & 2 != 0 {
            b = b.syn();
        }
        if flags & 4 != 0 {
            b = b.rst();
        }
        if flags & 16 != 0 {
            b = b.ack(7);
        }
        let mut f = vec![0u8; VNET];
        b.write(&mut f, &vec![0x5a; payload]).unwrap();
        f
    }

    fn udp(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16, payload: usize) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(mac_of(src), GW_MAC)
            .ipv4(src, dst, 64)
            .udp(sp, dp);
        let mut f = vec![0u8; VNET];
        b.write(&mut f, &vec![0x3c; payload]).unwrap();
        f
    }

    /// One random frame and its ingress port: clients A and C (ports 0
    /// and 2) talk to the Service (endpoint B) over a few source
    /// ports, so flows are opened, used, closed and reopened; B answers;
    /// pods talk directly; and some frames are damaged.
    fn frame(r: &mut Rng) -> (u32, Vec<u8>) {
        const FLAGS: [u8; 6] = [16, 16, 16, 2, 1 | 16, 4];
        let (client, port) = if r.below(4) == 0 {
            (POD_C, 2)
        } else {
            (POD_A, 0)
        };
        let sport = 40000 + r.below(6) as u16;
        let payload = r.below(3) as usize * 700;
        let (ingress, mut f) = match r.below(10) {
            0..=4 => {
                let fl = FLAGS[r.below(FLAGS.len() as u64) as usize];
                (port, tcp(client, sport, VIP, 8080, fl, payload))
            }
            5 | 6 => {
                // The endpoint's reply (SYN+ACK, ACK or FIN+ACK).
                let fl = [2 | 16, 16, 1 | 16][r.below(3) as usize];
                (1, tcp(POD_B, 80, client, sport, fl, payload))
            }
            7 => (port, udp(client, sport, POD_B, 53, payload)),
            8 => {
                // Straight to an address, not a service: pod B, a pod on
                // another node (over the overlay, one of many addresses,
                // more than a batch's destination slots), a pod CIDR
                // address without a pod, a node the overlay lacks, the
                // gateway, broadcast, pod C (MTU 1400), the outside.
                let dst = match r.below(8) {
                    0 => POD_B,
                    1 | 2 => [10, 244, 2, r.below(40) as u8],
                    3 => [10, 244, 1, 200],
                    4 => [10, 244, 3, 7],
                    5 => [GW, [255; 4]][r.below(2) as usize],
                    6 => POD_C,
                    _ => [203, 0, 113, 9],
                };
                let payload = [payload, 1372, 1373, 1400, 1422, 1423][r.below(6) as usize];
                if r.below(2) == 0 {
                    (port, udp(client, sport, dst, 53, payload))
                } else {
                    (port, tcp(client, sport, dst, 22, 16, payload))
                }
            }
            _ => {
                // Checksum offloaded to the switch (NEEDS_CSUM at the TCP
                // checksum field), as a pod with tap offloads sends.
                let mut f = tcp(client, sport, VIP, 8080, 16, payload);
                set_vnet(&mut f, 1, 0, 0, 34, 16);
                (port, f)
            }
        };
        match r.below(12) {
            0 => {
                // One byte anywhere in the headers.
                let at = r.below(f.len().min(VNET + 54) as u64) as usize;
                f[at] ^= 1 << r.below(8);
            }
            1 => f.truncate(VNET + r.below(60) as usize),
            2 => f.extend_from_slice(&[0; 6]), // Ethernet padding
            3 if f.len() >= VNET + 34 => {
                // TTL 1 or 0: time exceeded, on the stage path.
                f[VNET + 22] = r.below(2) as u8;
                let len = u16::from_be_bytes([f[VNET + 16], f[VNET + 17]]);
                fix_ipv4(&mut f, len);
            }
            _ => {}
        }
        (ingress, f)
    }

    fn flows(pl: &Pipeline) -> Vec<FlowInfo> {
        let mut v: Vec<FlowInfo> = pl
            .conntrack
            .table()
            .list(usize::MAX, |_| true)
            .into_iter()
            .map(|f| FlowInfo {
                // Slot numbers and clocks are each table's own.
                index: 0,
                idle_secs: 0,
                expires_in_secs: 0,
                ..f
            })
            .collect();
        v.sort_by_key(|f| (f.orig, f.state));
        v
    }

    /// ```text
    ///   pod A (0), pod C (2) ──> VIP:8080 ──> B:80 (1)
    /// ```
    /// 400 random batches through a pipeline with the fast path and one
    /// without: every packet ends alike, byte for byte, and so do the
    /// counters and the flow table after every batch.
    #[test]
    fn fast_path_agrees_with_the_stage_path() {
        // One endpoint, not a client: a hairpin flow's source port is
        // random (random-fully), so two pipelines would differ there.
        // Nothing masqueraded either (its source ports are random too):
        // the outside and broadcast destinations are routed as they are.
        let settings = ServiceSettings {
            masquerade_exclude: vec!["0.0.0.0/0".parse().unwrap()],
            ..ServiceSettings::default()
        };
        let mut t = svc_tables_with(&[(POD_B, false)], None, &settings);
        // An overlay with one remote node, 10.244.2.0/24 (MTU 1450 by
        // default: no port 9), and a route to a node it does not list.
        t.overlay = Some(overlay());
        t.routes
            .insert("10.244.2.0/24".parse().unwrap(), RouteTarget::Node(0));
        t.routes
            .insert("10.244.3.0/24".parse().unwrap(), RouteTarget::Node(7));
        let mut fast = Pipeline::new(counters());
        let mut slow = Pipeline::new(counters());
        slow.fast_path = false;
        let mut taken = 0;
        let start = Instant::now();
        for seed in 0..400u64 {
            let mut r = Rng(seed);
            let n = 1 + r.below(64) as usize;
            let frames: Vec<(u32, Vec<u8>)> = (0..n).map(|_| frame(&mut r)).collect();
            let mut out = Vec::new();
            // A second apart: the ICMP error budget (200 a burst) is full
            // at every batch, so both paths answer every error; which of a
            // batch's errors an exhausted budget answers is not compared.
            let now = start + std::time::Duration::from_secs(seed);
            for pl in [&mut fast, &mut slow] {
                let mut b = Batch::new(n);
                for (ingress, f) in &frames {
                    b.push_bytes(*ingress, f);
                }
                pl.process(&mut b, &t, now);
                out.push(
                    b.packets()
                        .iter()
                        .map(|p| (p.verdict, p.data().to_vec()))
                        .collect::<Vec<_>>(),
                );
            }
            for (i, (a, b)) in out[0].iter().zip(&out[1]).enumerate() {
                assert_eq!(a.0, b.0, "seed {seed}, packet {i}: verdict");
                assert_eq!(a.1, b.1, "seed {seed}, packet {i}: bytes");
            }
            let stats = |pl: &Pipeline| DatapathStats {
                // Which path took a packet is the one difference.
                fast_path: 0,
                ..crate::metrics::datapath_stats(std::slice::from_ref(pl.counters()))
            };
            assert_eq!(stats(&fast), stats(&slow), "seed {seed}: counters");
            assert_eq!(flows(&fast), flows(&slow), "seed {seed}: flows");
            taken = fast.fast.taken;
        }
        let counted =
            crate::metrics::datapath_stats(std::slice::from_ref(fast.counters())).fast_path;
        assert_eq!(counted, taken, "the fast path's counter");
        assert_eq!(
            crate::metrics::datapath_stats(std::slice::from_ref(slow.counters())).fast_path,
            0
        );
        // The comparison means something only if both paths ran a lot.
        let total = fast.counters().stages.batches.get();
        assert!(taken > 2000, "fast path took {taken} packets");
        assert!(
            stats_forwarded(&slow) > taken,
            "the stage path handled packets too ({total} batches)"
        );
    }

    fn stats_forwarded(pl: &Pipeline) -> u64 {
        let s = crate::metrics::datapath_stats(std::slice::from_ref(pl.counters()));
        s.forwarded_local + s.forwarded_overlay
    }
}
