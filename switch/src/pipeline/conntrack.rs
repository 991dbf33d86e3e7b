//! Stage 2, conntrack: service load balancing and address translation,
//! decided per flow and remembered in the shared flow table.
//!
//! For each IPv4 packet that may concern a translation (to a service
//! frontend, from a service endpoint, to one of this node's translation
//! addresses, or from a pod to outside the cluster):
//! - a packet of a known flow is translated as the flow says (DNAT for the
//!   original direction, the reverse for replies) and advances the flow's
//!   state (the TCP state machine, UDP replied);
//! - the first packet to a frontend picks a backend (session affinity,
//!   else Maglev over the eligible endpoints), adds source translation when
//!   the reply must come back through this node (hairpin, NodePort to a
//!   remote endpoint under the Cluster policy), and creates the flow;
//! - the first packet from a pod to outside the cluster is masqueraded to
//!   the node's address with a port picked at random among this worker's
//!   share of [`SNAT_PORTS`] (random-fully; no two workers share a port);
//! - an ICMP error about a tracked flow (RELATED) is translated, outer and
//!   quoted headers both;
//! - a frontend without endpoints answers ICMP port unreachable, and a TCP
//!   segment that opens nothing (no SYN) and belongs to no flow gets a RST
//!   (its endpoint is gone), never a black hole.
//!
//! Pod-to-pod traffic that involves no service is not tracked at all: it
//! costs two hash-set probes here and nothing else.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type};

use super::icmp_error::{error_allowed, rewrite_as_error, RateLimit};
use super::nat::{self, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST};
use super::{drop_packet, Batch, DropReason, Packet, Verdict, L3};
use crate::conntrack::{
    flow_flags, state::tcp_next, tcp_flags, ConnTrack, Dir, FlowKey, FlowRef, FlowState,
};
use crate::metrics::WorkerCounters;
use crate::tables::services::{ServiceTable, AFFINITY_PROTO, SNAT_PORTS};
use crate::tables::{PortKind, Tables};
use podswitch_api::ClusterMode;

/// How many lookups ahead pass 2 starts fetching an entry: far enough
/// that the line has arrived when its lookup comes, near enough that the
/// fetches in flight fit the miss buffers. Measured on the 2-core AMD EPYC
/// VM (services bench, 1 s runs): 0 ahead 8.0 Mpps hot, 4: 9.3, 6: 9.3,
/// 8: 9.4, 16: 8.6; heads fetched further ahead as well only lost.
const ENTRY_PREFETCH_AHEAD: usize = 8;

/// Free ports tried before a new masqueraded flow is refused.
const PORT_TRIES: usize = 64;

/// The conntrack stage of one worker.
#[derive(Debug)]
pub struct ConntrackStage {
    ct: Arc<ConnTrack>,
    worker: usize,
    workers: usize,
    rng: u64,
    icmp_limit: RateLimit,
    /// The packets of the current batch the stage works on (reused: the
    /// fast path does not allocate once it has seen a full batch).
    work: Vec<Work>,
    /// This batch's per-packet pass has inserted or retired a flow, so the
    /// lookups done ahead of it may be stale and are done again.
    table_changed: bool,
}

/// A packet of the batch the stage has to look at, as the first pass
/// classified it.
#[derive(Debug, Clone, Copy)]
struct Work {
    /// Index in the batch.
    at: usize,
    what: WorkKind,
}

#[derive(Debug, Clone, Copy)]
enum WorkKind {
    /// An ICMP error: translated if it quotes a tracked flow.
    Related,
    /// A packet looked up in the flow table.
    Track(Track),
}

/// A packet that may belong to (or open) a tracked flow.
#[derive(Debug, Clone, Copy)]
struct Track {
    key: FlowKey,
    /// `ct.bucket_of(&key)`.
    bucket: usize,
    /// The lookup done in pass 2 (valid until the batch changes the table).
    found: Option<FlowRef>,
    /// To a service frontend's address.
    to_frontend: bool,
    /// From a pod to outside the cluster (masqueraded if new).
    masquerade: bool,
    /// From outside the cluster to a pod (tracked untranslated if new).
    inbound: bool,
}

/// The flow hash Maglev picks with: the same on every worker, so a
/// retransmitted SYN that lands elsewhere picks the same backend.
#[inline]
fn flow_hash(k: &FlowKey) -> u64 {
    let a = (u64::from(u32::from(k.src)) << 32) | u64::from(u32::from(k.dst));
    let b = (u64::from(k.sport) << 24) | (u64::from(k.dport) << 8) | u64::from(k.proto);
    let mut h = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    h ^= h >> 32;
    h = h.wrapping_mul(0xD6E8_FEB8_6659_FD93);
    h ^ (h >> 29)
}

/// Why a packet is looked up in the flow table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TrackClass {
    /// To a service frontend's address.
    pub to_frontend: bool,
    /// From a pod to outside the cluster (masqueraded if new).
    pub masquerade: bool,
    /// From outside the cluster to a pod (tracked untranslated if new).
    pub inbound: bool,
}

/// Whether a (non-error) packet with tuple `key` concerns a translation or
/// a tracked flow; `to_frontend`: `svc.is_frontend_ip(key.dst)`; `from_pod`:
/// it entered on a pod's port (asked only when the answer matters). The
/// conntrack stage and the fast path classify with this one function, so
/// they track the same packets.
#[inline]
pub(super) fn track_class(
    svc: &ServiceTable,
    key: &FlowKey,
    to_frontend: bool,
    from_pod: impl FnOnce() -> bool,
) -> Option<TrackClass> {
    // A packet to a frontend is always looked up; the other probes
    // matter only for the rest (most packets to a service skip them).
    if to_frontend {
        return Some(TrackClass {
            to_frontend,
            masquerade: false,
            inbound: false,
        });
    }
    let maybe_reply = svc.is_endpoint(key.src, key.sport, key.proto) || svc.is_nat_address(key.dst);
    let from_pod = from_pod();
    let masquerade = from_pod && svc.masquerades(key.dst);
    // A connection from outside the cluster to a pod is tracked (without
    // translation) so that the pod's replies are recognised as replies and
    // not masqueraded, as Linux's conntrack does.
    let inbound =
        !from_pod && !maybe_reply && svc.masquerades(key.src) && !svc.masquerades(key.dst);
    (maybe_reply || masquerade || inbound).then_some(TrackClass {
        to_frontend,
        masquerade,
        inbound,
    })
}

/// Whether a packet of flow `r` (TCP flags `tcp_flags`, 0 for other
/// protocols) leaves the flow's state as it is: no SYN, FIN or RST, and
/// no transition of the state machine (an established TCP flow, a UDP or
/// ICMP flow already replied to, or a packet in the original direction
/// of one not yet replied to). Such a packet is translated and its flow
/// touched, nothing more ([`ConntrackStage`]'s `established` does exactly
/// that for it), so the order in which two such packets are handled does
/// not matter.
#[inline]
pub(super) fn leaves_state(ct: &ConnTrack, r: FlowRef, proto: u8, tcp_flags: u8) -> bool {
    let e = ct.entry(r.index);
    let (state, flags) = (e.state(), e.flags());
    match proto {
        6 => {
            tcp_flags & (tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST) == 0
                && tcp_next(state, flags, r.dir, tcp_flags) == (state, flags)
        }
        _ => !(r.dir == Dir::Reply && state == FlowState::Unreplied),
    }
}

/// Translates a packet of known flow `r` as the flow says and records the
/// activity; for a packet [`leaves_state`] holds for, this is all the
/// conntrack stage does with it. Returns the packet's destination address
/// after the translation. `rewrite(p, to)` rewrites the packet's tuple
/// to `to` ([`nat::rewrite`], or the fast path's fixed-offset form).
#[inline]
pub(super) fn translate(
    ct: &ConnTrack,
    p: &mut Packet,
    r: FlowRef,
    key: &FlowKey,
    now_s: u32,
    rewrite: impl FnOnce(&mut Packet, &FlowKey),
) -> Ipv4Addr {
    let e = ct.entry(r.index);
    let other = match r.dir {
        Dir::Orig => Dir::Reply,
        Dir::Reply => Dir::Orig,
    };
    let to = e.key(other).reversed();
    if to != *key {
        rewrite(p, &to);
    }
    e.touch(now_s);
    to.dst
}

impl ConntrackStage {
    pub fn new(ct: Arc<ConnTrack>, worker: usize, workers: usize) -> Self {
        // Random-fully: SNAT ports must not be predictable, from one
        // worker to the next or from one run of the switch to the next
        // (RandomState is seeded from the OS's random source).
        Self::with_seed(ct, worker, workers, RandomState::new().hash_one(worker))
    }

    /// As [`Self::new`], with the port allocator's randomness from `seed`:
    /// the same seed and the same packets give the same ports (tests,
    /// fuzzing, replaying a run).
    pub fn with_seed(ct: Arc<ConnTrack>, worker: usize, workers: usize, seed: u64) -> Self {
        ConntrackStage {
            ct,
            worker,
            workers: workers.max(1),
            rng: seed | 1,
            icmp_limit: RateLimit::new(
                super::route::ICMP_ERROR_RATE,
                super::route::ICMP_ERROR_BURST,
            ),
            work: Vec::new(),
            table_changed: false,
        }
    }

    pub fn table(&self) -> &Arc<ConnTrack> {
        &self.ct
    }

    /// Runs the stage over a batch in passes. A lookup in a large table
    /// is two dependent cache misses (the chain head, then the entry);
    /// taken one packet at a time, between the translations, they never
    /// overlap. So: classify every packet, hash its tuple and prefetch its
    /// chain head; then look every packet up, in a loop that does nothing
    /// else, so the CPU runs many lookups ahead at once; and only then do
    /// the per-packet work. The first two passes only read, so the outcome
    /// is that of processing the packets one by one, in order: once the
    /// per-packet pass inserts or retires a flow, the rest of the batch is
    /// looked up again and sees it.
    pub fn process(
        &mut self,
        batch: &mut Batch,
        tables: &Tables,
        c: &WorkerCounters,
        now: Instant,
    ) {
        let svc = &*tables.services;
        if !svc.active() {
            return;
        }
        let now_s = self.ct.clock(now);
        self.ct.enter(self.worker);
        self.classify(batch, tables, svc);
        self.look_up_all();
        self.table_changed = false;
        let mut work = std::mem::take(&mut self.work);
        let packets = batch.packets_mut();
        for w in &work {
            let p = &mut packets[w.at];
            // By reference: a copy of the `Track` onto the stack is read
            // back in wider loads than it was written with (a stall).
            match &w.what {
                WorkKind::Related => self.related(p, c),
                WorkKind::Track(t) => self.track(p, t, tables, svc, c, now_s, now),
            }
        }
        work.clear();
        self.work = work;
        self.ct.exit(self.worker);
    }

    /// Pass 1: which packets the stage looks at, their tuples and buckets.
    fn classify(&mut self, batch: &Batch, tables: &Tables, svc: &ServiceTable) {
        self.work.clear();
        for (at, p) in batch.packets().iter().enumerate() {
            if !(p.pending() && p.meta.l3 == L3::Ipv4 && p.meta.first_fragment) {
                continue;
            }
            let what = if p.meta.proto == 1
                && nat::is_icmp_error(
                    p.frame()
                        .get(usize::from(p.meta.l4_off))
                        .copied()
                        .unwrap_or(255),
                ) {
                WorkKind::Related
            } else {
                match self.tracked(p, tables, svc) {
                    Some(t) => WorkKind::Track(t),
                    None => continue,
                }
            };
            self.work.push(Work { at, what });
        }
    }

    /// Whether a (non-error) packet concerns a translation or a tracked
    /// flow, and if so its tuple.
    #[inline]
    fn tracked(&self, p: &Packet, tables: &Tables, svc: &ServiceTable) -> Option<Track> {
        let key = nat::packet_tuple(p)?;
        let from_pod = || tables.port(p.ingress).map(|x| x.kind) == Some(PortKind::Pod);
        let class = track_class(svc, &key, svc.is_frontend_ip(key.dst), from_pod)?;
        let bucket = self.ct.bucket_of(&key);
        self.ct.prefetch_head(bucket);
        Some(Track {
            bucket,
            found: None,
            key,
            to_frontend: class.to_frontend,
            masquerade: class.masquerade,
            inbound: class.inbound,
        })
    }

    /// Pass 2: every lookup of the batch, one after the other. The chain
    /// heads were prefetched in pass 1; the entry a head points at is
    /// prefetched [`ENTRY_PREFETCH_AHEAD`] lookups before its turn, so
    /// each lookup finds both its lines in cache.
    fn look_up_all(&mut self) {
        let ct = &*self.ct;
        for w in self.work.iter().take(ENTRY_PREFETCH_AHEAD) {
            if let WorkKind::Track(t) = &w.what {
                ct.prefetch_entry(t.bucket);
            }
        }
        for i in 0..self.work.len() {
            if let Some(Work {
                what: WorkKind::Track(t),
                ..
            }) = self.work.get(i + ENTRY_PREFETCH_AHEAD)
            {
                ct.prefetch_entry(t.bucket);
            }
            if let WorkKind::Track(t) = &mut self.work[i].what {
                t.found = ct.lookup_in(t.bucket, &t.key);
            }
        }
    }

    /// Pass 3 for a packet that may belong to a flow: translate it as its
    /// flow says, or open one.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn track(
        &mut self,
        p: &mut Packet,
        t: &Track,
        tables: &Tables,
        svc: &ServiceTable,
        c: &WorkerCounters,
        now_s: u32,
        now: Instant,
    ) {
        let key = &t.key;
        let found = if self.table_changed {
            self.ct.lookup_in(t.bucket, key)
        } else {
            t.found
        };
        if let Some(r) = found {
            if !(t.to_frontend && self.reopens_service_flow(p, r, key)) {
                self.established(p, r, key, now_s);
                return;
            }
            c.stages.ct_reopened.inc();
        }
        // What follows may retire or insert a flow (or an affinity record).
        self.table_changed = true;
        if t.to_frontend {
            if let Some(f) = svc.frontend(key.dst, key.dport, key.proto) {
                self.new_service_flow(p, tables, svc, f, key, c, now_s, now);
                return;
            }
            if svc.is_service_ip(key.dst) {
                self.refuse_unserved(p, tables, key, c, now);
                return;
            }
        }
        if t.masquerade {
            self.new_masquerade_flow(p, svc, key, c, now_s);
        } else if t.inbound {
            self.new_inbound_flow(p, key, c, now_s);
        }
    }

    /// A new flow to a Service address on a port no Service serves: TCP
    /// gets a RST (a RST gets nothing), anything else ICMP port
    /// unreachable, within the ICMP rate limit; dropped and counted either
    /// way, never routed (kube-proxy's nftables mode rejects it:
    /// "Reject traffic to invalid ports of ClusterIPs").
    fn refuse_unserved(
        &mut self,
        p: &mut Packet,
        tables: &Tables,
        key: &FlowKey,
        c: &WorkerCounters,
        now: Instant,
    ) {
        c.count_drop(DropReason::ServicePortUnserved, p.len());
        let answered = if key.proto == 6 {
            let fl = p
                .frame()
                .get(usize::from(p.meta.l4_off) + 13)
                .copied()
                .unwrap_or(0);
            fl & tcp_flags::RST == 0
                && self.icmp_limit.allow(now)
                && nat::rewrite_as_rst(p, &tables.gateway)
        } else {
            error_allowed(p)
                && self.icmp_limit.allow(now)
                && rewrite_as_error(
                    p,
                    &tables.gateway,
                    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
                )
        };
        if !answered {
            p.verdict = super::Verdict::Drop(DropReason::ServicePortUnserved);
        } else if key.proto == 6 {
            c.stages.tcp_resets_sent.inc();
        } else {
            c.stages.icmp_errors_sent.inc();
        }
    }

    /// A SYN on the tuple of a closed or TIME_WAIT service flow (a client
    /// reusing its port) starts a new connection: as Linux's conntrack
    /// does (nf_conntrack_proto_tcp.c, "SYN in TIME_WAIT"), the old flow
    /// is retired and the SYN is balanced afresh, so it never follows the
    /// old flow to an endpoint that is terminating or gone.
    fn reopens_service_flow(&self, p: &Packet, r: FlowRef, key: &FlowKey) -> bool {
        if key.proto != 6 || r.dir != Dir::Orig {
            return false;
        }
        let e = self.ct.entry(r.index);
        if e.flags() & flow_flags::DNAT == 0
            || !matches!(e.state(), FlowState::Close | FlowState::TimeWait)
        {
            return false;
        }
        let fl = p
            .frame()
            .get(usize::from(p.meta.l4_off) + 13)
            .copied()
            .unwrap_or(0);
        if fl & tcp_flags::SYN == 0 || fl & tcp_flags::ACK != 0 {
            return false;
        }
        e.retire();
        true
    }

    /// The first packet of a connection from outside the cluster to a pod:
    /// remembered untranslated.
    fn new_inbound_flow(&mut self, p: &mut Packet, key: &FlowKey, c: &WorkerCounters, now_s: u32) {
        let state = match key.proto {
            6 => {
                let fl = p
                    .frame()
                    .get(usize::from(p.meta.l4_off) + 13)
                    .copied()
                    .unwrap_or(0);
                if fl & tcp_flags::SYN == 0 || fl & tcp_flags::ACK != 0 {
                    return; // mid-stream: nothing to learn
                }
                FlowState::SynSent
            }
            1 if p.frame().get(usize::from(p.meta.l4_off)) != Some(&ICMP_ECHO_REQUEST) => return,
            _ => FlowState::Unreplied,
        };
        if self
            .ct
            .insert(*key, Some(key.reversed()), state, 0, now_s, 0, u32::MAX)
            .is_some()
        {
            c.stages.ct_created.inc();
        }
    }

    /// A packet of a known flow: translate it and advance the flow's state.
    #[inline]
    fn established(&mut self, p: &mut Packet, r: FlowRef, key: &FlowKey, now_s: u32) {
        translate(&self.ct, p, r, key, now_s, nat::rewrite);
        let e = self.ct.entry(r.index);
        let state = e.state();
        let (next, flags) = match key.proto {
            6 => {
                let fl = p
                    .frame()
                    .get(usize::from(p.meta.l4_off) + 13)
                    .copied()
                    .unwrap_or(0);
                tcp_next(state, e.flags(), r.dir, fl)
            }
            _ if r.dir == Dir::Reply && state == FlowState::Unreplied => {
                (FlowState::Replied, e.flags())
            }
            _ => (state, e.flags()),
        };
        e.set_state(next, flags);
    }

    /// The first packet to a frontend.
    #[allow(clippy::too_many_arguments)]
    fn new_service_flow(
        &mut self,
        p: &mut Packet,
        tables: &Tables,
        svc: &ServiceTable,
        f: u32,
        key: &FlowKey,
        c: &WorkerCounters,
        now_s: u32,
        now: Instant,
    ) {
        let fr = &svc.fronts[f as usize];
        if key.proto == 6 {
            let fl = p
                .frame()
                .get(usize::from(p.meta.l4_off) + 13)
                .copied()
                .unwrap_or(0);
            if fl & tcp_flags::SYN == 0 || fl & tcp_flags::ACK != 0 {
                // Mid-connection segment of no flow: its endpoint is gone
                // (or it never existed). Reset it, as the endpoint would.
                c.count_drop(DropReason::ServiceNoFlow, p.len());
                if !(self.icmp_limit.allow(now) && nat::rewrite_as_rst(p, &tables.gateway)) {
                    p.verdict = super::Verdict::Drop(DropReason::ServiceNoFlow);
                } else {
                    c.stages.tcp_resets_sent.inc();
                }
                return;
            }
        }
        // Session affinity first, then Maglev.
        let affinity_key = (fr.affinity_secs > 0).then(|| {
            FlowKey::new(
                key.src,
                u16::from(key.proto),
                fr.ip,
                fr.port,
                AFFINITY_PROTO,
            )
        });
        let mut backend = None;
        if let Some(ak) = &affinity_key {
            if let Some(r) = self.ct.lookup(ak) {
                let e = self.ct.entry(r.index);
                let stored = e.key(Dir::Reply);
                backend = fr.eligible.iter().copied().find(|&b| {
                    let b = &svc.backends[b as usize];
                    b.ip == stored.src && b.port == stored.sport
                });
                if backend.is_some() {
                    e.touch(now_s);
                    c.stages.lb_affinity_hits.inc();
                }
            }
        }
        let backend = backend.or_else(|| {
            fr.maglev
                .lookup(flow_hash(key))
                .and_then(|i| fr.eligible.get(usize::from(i)).copied())
        });
        let Some(b) = backend else {
            // No endpoints: reject, as kube-proxy does.
            c.count_drop(DropReason::ServiceNoEndpoints, p.len());
            if !(error_allowed(p)
                && self.icmp_limit.allow(now)
                && rewrite_as_error(
                    p,
                    &tables.gateway,
                    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
                ))
            {
                p.verdict = super::Verdict::Drop(DropReason::ServiceNoEndpoints);
            } else {
                c.stages.icmp_errors_sent.inc();
            }
            return;
        };
        let be = svc.backends[b as usize];
        let hairpin = be.ip == key.src;
        let remote_external = fr.kind.is_external() && !fr.local_only && !be.local;
        let snat_ip = if hairpin {
            Some(svc.gateway_ip)
        } else if remote_external {
            Some(match (svc.mode, svc.node_ip) {
                (ClusterMode::Native, Some(ip)) => ip,
                _ => svc.gateway_ip,
            })
        } else {
            None
        };
        let (src, sport, mut flags) = match snat_ip {
            Some(ip) => match self.alloc_port(ip, be.ip, be.port, key.proto) {
                Some(port) => (ip, port, flow_flags::DNAT | flow_flags::SNAT),
                None => {
                    drop_packet(p, DropReason::NatPortsExhausted, c);
                    return;
                }
            },
            None => (key.src, key.sport, flow_flags::DNAT),
        };
        let reply = FlowKey::new(be.ip, be.port, src, sport, key.proto);
        let state = if key.proto == 6 {
            FlowState::SynSent
        } else {
            FlowState::Unreplied
        };
        flags &= !flow_flags::ORIG_ONLY;
        if self
            .ct
            .insert(*key, Some(reply), state, flags, now_s, 0, f)
            .is_none()
        {
            drop_packet(p, DropReason::ConntrackFull, c);
            return;
        }
        c.stages.ct_created.inc();
        if let Some(ak) = affinity_key {
            if self.ct.lookup(&ak).is_none() {
                let stored = FlowKey::new(be.ip, be.port, fr.ip, fr.port, AFFINITY_PROTO);
                let _ = self.ct.insert_record(ak, stored, now_s, fr.affinity_secs);
            }
        }
        nat::rewrite(p, &reply.reversed());
    }

    /// The first packet from a pod to outside the cluster.
    fn new_masquerade_flow(
        &mut self,
        p: &mut Packet,
        svc: &ServiceTable,
        key: &FlowKey,
        c: &WorkerCounters,
        now_s: u32,
    ) {
        let Some(node_ip) = svc.node_ip else {
            return;
        };
        // ICMP echo: the identifier plays the source port.
        let (rport, is_echo) = match (key.proto, p.frame().get(usize::from(p.meta.l4_off))) {
            (1, Some(&ICMP_ECHO_REQUEST)) => (0, true),
            (1, _) => return,
            _ => (key.dport, false),
        };
        let Some(port) = self.alloc_port(node_ip, key.dst, rport, key.proto) else {
            drop_packet(p, DropReason::NatPortsExhausted, c);
            return;
        };
        let reply = if is_echo {
            FlowKey::new(key.dst, 0, node_ip, port, 1)
        } else {
            FlowKey::new(key.dst, key.dport, node_ip, port, key.proto)
        };
        let state = if key.proto == 6 {
            FlowState::SynSent
        } else {
            FlowState::Unreplied
        };
        if self
            .ct
            .insert(
                *key,
                Some(reply),
                state,
                flow_flags::SNAT,
                now_s,
                0,
                u32::MAX,
            )
            .is_none()
        {
            drop_packet(p, DropReason::ConntrackFull, c);
            return;
        }
        c.stages.ct_created.inc();
        nat::rewrite(p, &reply.reversed());
        let _ = ICMP_ECHO_REPLY;
    }

    /// A port on `local` for a flow with the remote end `remote:rport`,
    /// not used by any flow: tried at random among this worker's ports.
    fn alloc_port(
        &mut self,
        local: Ipv4Addr,
        remote: Ipv4Addr,
        rport: u16,
        proto: u8,
    ) -> Option<u16> {
        let n = (SNAT_PORTS.len() / self.workers) as u64;
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let start = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) % n;
        for i in 0..PORT_TRIES as u64 {
            let slot = (start + i * 7919) % n;
            let port = SNAT_PORTS.start as u64 + slot * self.workers as u64 + self.worker as u64;
            let port = port as u16;
            let probe = FlowKey::new(remote, rport, local, port, proto);
            if self.ct.lookup(&probe).is_none() {
                return Some(port);
            }
        }
        None
    }

    /// The ICMP errors a later stage built (`Meta::own_icmp_error`) about
    /// packets this stage may have translated: each is translated as an
    /// error about the flow arriving from the packet's next hop would be,
    /// so its quote shows the packet as its sender sent it (to the
    /// ClusterIP, from its own address) and it goes to that sender.
    pub fn translate_own_errors(&mut self, batch: &mut Batch, c: &WorkerCounters) {
        for p in batch.packets_mut() {
            if p.meta.own_icmp_error && p.verdict == Verdict::Reply {
                self.related(p, c);
            }
        }
    }

    /// An ICMP error: if it quotes a packet of a tracked flow, translate it
    /// the way the flow's packets in its direction are translated.
    fn related(&mut self, p: &mut Packet, c: &WorkerCounters) {
        let Some((quoted, _, _)) = nat::quoted_tuple(p) else {
            return;
        };
        let from = quoted.reversed();
        let Some(r) = self.ct.lookup(&from) else {
            return;
        };
        let e = self.ct.entry(r.index);
        let other = match r.dir {
            Dir::Orig => Dir::Reply,
            Dir::Reply => Dir::Orig,
        };
        let to = e.key(other).reversed();
        if to != from && nat::rewrite_related(p, &from, &to) {
            c.stages.icmp_related_translated.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Batch, Pipeline, Verdict};
    use super::*;
    use crate::tables::services::NodeView;
    use etherparse::PacketBuilder;
    use podswitch_api::{EndpointSpec, Protocol, ServicePortSpec, ServiceSettings, ServiceSpec};

    fn syn(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(mac_of(src), GW_MAC)
            .ipv4(src, dst, 64)
            .tcp(sport, dport, 1, 65535)
            .syn();
        let mut f = vec![0u8; VNET];
        b.write(&mut f, &[]).unwrap();
        f
    }

    fn run(pl: &mut Pipeline, t: &Tables, ingress: u32, f: &[u8]) -> (Verdict, Vec<u8>) {
        let mut b = Batch::new(1);
        b.push_bytes(ingress, f);
        pl.process(&mut b, t, Instant::now());
        let p = &b.packets()[0];
        (p.verdict, p.data().to_vec())
    }

    fn tuple(out: &[u8]) -> FlowKey {
        let f = &out[VNET..];
        nat::tuple_at(f, 14, 34, f[14 + 9]).unwrap()
    }

    #[test]
    fn cluster_ip_dnat_keeps_client_ip_and_reply_is_reversed() {
        let t = svc_tables(&[(POD_B, false)], None);
        let mut pl = Pipeline::new(counters());
        let (v, out) = run(&mut pl, &t, 0, &syn(POD_A, 40000, VIP, 8080));
        assert_eq!(v, Verdict::Forward { port: 1 });
        let k = tuple(&out);
        assert_eq!((k.src, k.sport), (POD_A.into(), 40000));
        assert_eq!((k.dst, k.dport), (POD_B.into(), 80));
        // The SYN+ACK from B goes back from the VIP.
        let b = PacketBuilder::ethernet2(mac_of(POD_B), GW_MAC)
            .ipv4(POD_B, POD_A, 64)
            .tcp(80, 40000, 9, 65535)
            .syn()
            .ack(2);
        let mut f = vec![0u8; VNET];
        b.write(&mut f, &[]).unwrap();
        let (v, out) = run(&mut pl, &t, 1, &f);
        assert_eq!(v, Verdict::Forward { port: 0 });
        let k = tuple(&out);
        assert_eq!((k.src, k.sport), (VIP.into(), 8080));
        let ct = pl.conntrack.table();
        let flows = ct.list(10, |_| true);
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].state, FlowState::SynRecv);
    }

    #[test]
    fn no_endpoints_answers_port_unreachable_and_stray_segment_gets_rst() {
        let t = svc_tables(&[], None);
        let mut pl = Pipeline::new(counters());
        let (v, out) = run(&mut pl, &t, 0, &syn(POD_A, 40000, VIP, 8080));
        assert_eq!(v, Verdict::Reply);
        assert_eq!(out[VNET + 34], 3, "ICMP unreachable");
        assert_eq!(out[VNET + 35], 3, "port unreachable");
        // An ACK of no flow to a service with endpoints: RST.
        let t = svc_tables(&[(POD_B, false)], None);
        let b = PacketBuilder::ethernet2(mac_of(POD_A), GW_MAC)
            .ipv4(POD_A, VIP, 64)
            .tcp(40001, 8080, 5, 65535)
            .ack(99);
        let mut f = vec![0u8; VNET];
        b.write(&mut f, b"data").unwrap();
        let (v, out) = run(&mut pl, &t, 0, &f);
        assert_eq!(v, Verdict::Reply);
        let k = tuple(&out);
        assert_eq!(
            (k.src, k.sport, k.dst, k.dport),
            (VIP.into(), 8080, POD_A.into(), 40001)
        );
        assert_eq!(out[VNET + 34 + 13] & 0x04, 0x04, "RST");
        assert_eq!(
            &out[VNET + 34 + 4..VNET + 34 + 8],
            &99u32.to_be_bytes(),
            "seq = their ack"
        );
    }

    /// ```text
    ///   pod A --> 10.96.0.10:9999 (the ClusterIP has only :8080)   TCP: RST
    ///   pod A --> 10.96.0.10:53/UDP, ping 10.96.0.10                ICMP port unreachable
    ///   pod A --> 10.96.7.7 (no Service's; in 10.96.0.0/12)          dropped
    ///   pod A --> 203.0.113.10 (outside)                             to the node, as before
    /// ```
    /// The node routes the service ranges back to the switch, so nothing
    /// with such a destination may go to the host port (issue 23).
    #[test]
    fn service_addresses_never_loop_through_the_node() {
        use crate::tables::{PodPort, PortKind};
        let mut t = svc_tables(&[(POD_B, false)], None);
        const HOST: u32 = 3;
        t.ports.push(Some(PodPort {
            id: HOST,
            pod: "host".into(),
            ifname: "psw-host".into(),
            netns: Default::default(),
            mac: [2, 0, 0, 0, 0, 9],
            ipv4: None,
            ipv6: None,
            mtu: 1500,
            offloads: true,
            kind: PortKind::Host,
        }));
        let services = Arc::clone(&t.services);
        let mut t = Tables::new(
            "node-1",
            t.gateway.clone(),
            t.pod_cidrs.clone(),
            t.ports.clone(),
        );
        t.services = services;
        let c = counters();
        let mut pl = Pipeline::new(Arc::clone(&c));
        let dropped = |r: DropReason| c.drop_packets[r as usize].get();
        // TCP to an unserved port of the ClusterIP: a RST from it.
        let (v, out) = run(&mut pl, &t, 0, &syn(POD_A, 40000, VIP, 9999));
        assert_eq!(v, Verdict::Reply);
        let k = tuple(&out);
        assert_eq!((k.src, k.sport, k.dst), (VIP.into(), 9999, POD_A.into()));
        assert_eq!(out[VNET + 34 + 13] & 0x04, 0x04, "RST");
        // UDP: ICMP port unreachable from the ClusterIP.
        let b = PacketBuilder::ethernet2(mac_of(POD_A), GW_MAC)
            .ipv4(POD_A, VIP, 64)
            .udp(40000, 53);
        let mut f = vec![0u8; VNET];
        b.write(&mut f, b"q").unwrap();
        let (v, out) = run(&mut pl, &t, 0, &f);
        assert_eq!(v, Verdict::Reply);
        assert_eq!((out[VNET + 34], out[VNET + 35]), (3, 3), "port unreachable");
        // Echo to the ClusterIP: port unreachable too (kube-proxy's reject).
        let (v, out) = run(&mut pl, &t, 0, &icmp_echo_frame(POD_A, VIP, 8));
        assert_eq!(v, Verdict::Reply);
        assert_eq!((out[VNET + 34], out[VNET + 35]), (3, 3), "port unreachable");
        assert_eq!(dropped(DropReason::ServicePortUnserved), 3);
        // A RST to an unserved port gets nothing back.
        let b = PacketBuilder::ethernet2(mac_of(POD_A), GW_MAC)
            .ipv4(POD_A, VIP, 64)
            .tcp(40001, 9999, 1, 0)
            .rst();
        let mut f = vec![0u8; VNET];
        b.write(&mut f, &[]).unwrap();
        let (v, _) = run(&mut pl, &t, 0, &f);
        assert_eq!(v, Verdict::Drop(DropReason::ServicePortUnserved));
        // An unallocated address of the service range, any protocol.
        for f in [
            syn(POD_A, 40002, [10, 96, 7, 7], 80),
            icmp_echo_frame(POD_A, [10, 96, 7, 7], 8),
        ] {
            let (v, _) = run(&mut pl, &t, 0, &f);
            assert_eq!(v, Verdict::Drop(DropReason::ServiceAddressNotRouted));
        }
        // The served port still works, and the outside is still routed.
        let (v, out) = run(&mut pl, &t, 0, &syn(POD_A, 40003, VIP, 8080));
        assert_eq!(v, Verdict::Forward { port: 1 });
        assert_eq!(tuple(&out).dst, Ipv4Addr::from(POD_B));
        let (v, _) = run(&mut pl, &t, 0, &syn(POD_A, 40004, [203, 0, 113, 10], 80));
        assert_eq!(v, Verdict::Forward { port: HOST });
    }

    /// KEP-1669: a port whose every endpoint is terminating (a rollout, a
    /// scale to zero) still takes new flows on the serving ones, until
    /// they are gone.
    #[test]
    fn serving_terminating_endpoints_take_new_flows_when_none_is_ready() {
        let t = svc_tables(&[(POD_B, true), (POD_C, true)], None);
        let mut pl = Pipeline::new(counters());
        let mut seen = std::collections::BTreeSet::new();
        for port in 40000..40040 {
            let (v, out) = run(&mut pl, &t, 0, &syn(POD_A, port, VIP, 8080));
            assert!(matches!(v, Verdict::Forward { .. }), "{v:?}");
            seen.insert(tuple(&out).dst);
        }
        assert_eq!(seen.len(), 2, "both terminating endpoints serve: {seen:?}");
    }

    #[test]
    fn terminating_endpoints_get_no_new_flows() {
        let t = svc_tables(&[(POD_B, true), (POD_C, false)], None);
        let mut pl = Pipeline::new(counters());
        for port in 40000..40050 {
            let (_, out) = run(&mut pl, &t, 0, &syn(POD_A, port, VIP, 8080));
            assert_eq!(tuple(&out).dst, Ipv4Addr::from(POD_C));
        }
    }

    /// A client reuses its port after a connection closed, while the
    /// endpoint it used is terminating:
    ///
    /// ```text
    ///   A:40000 --SYN--> VIP:8080 ==> B:80   (closed by RST)
    ///   B terminating, C ready
    ///   A:40000 --SYN--> VIP:8080 ==> C:80   (balanced afresh)
    /// ```
    #[test]
    fn syn_on_a_closed_service_flow_is_balanced_afresh() {
        let t = svc_tables(&[(POD_B, false)], None);
        let mut pl = Pipeline::new(counters());
        let (_, out) = run(&mut pl, &t, 0, &syn(POD_A, 40000, VIP, 8080));
        assert_eq!(tuple(&out).dst, Ipv4Addr::from(POD_B));
        let rst = PacketBuilder::ethernet2(mac_of(POD_A), GW_MAC)
            .ipv4(POD_A, VIP, 64)
            .tcp(40000, 8080, 2, 0)
            .rst();
        let mut f = vec![0u8; VNET];
        rst.write(&mut f, &[]).unwrap();
        run(&mut pl, &t, 0, &f);
        assert_eq!(
            pl.conntrack.table().list(10, |_| true)[0].state,
            FlowState::Close
        );
        // A retransmitted SYN of a live flow is not re-balanced.
        let (_, out) = run(&mut pl, &t, 0, &syn(POD_A, 40001, VIP, 8080));
        assert_eq!(tuple(&out).dst, Ipv4Addr::from(POD_B));
        let t = svc_tables(&[(POD_B, true), (POD_C, false)], None);
        let (_, out) = run(&mut pl, &t, 0, &syn(POD_A, 40001, VIP, 8080));
        assert_eq!(tuple(&out).dst, Ipv4Addr::from(POD_B), "SYN_SENT keeps B");
        // The port reuse goes to the ready endpoint, and C's answer is
        // translated back by the new flow.
        let (_, out) = run(&mut pl, &t, 0, &syn(POD_A, 40000, VIP, 8080));
        assert_eq!(tuple(&out).dst, Ipv4Addr::from(POD_C));
        let synack = PacketBuilder::ethernet2(mac_of(POD_C), GW_MAC)
            .ipv4(POD_C, POD_A, 64)
            .tcp(80, 40000, 9, 65535)
            .syn()
            .ack(2);
        let mut f = vec![0u8; VNET];
        synack.write(&mut f, &[]).unwrap();
        let (v, out) = run(&mut pl, &t, 2, &f);
        assert_eq!(v, Verdict::Forward { port: 0 });
        let k = tuple(&out);
        assert_eq!((k.src, k.sport), (VIP.into(), 8080));
        assert_eq!(pl.counters().stages.ct_reopened.get(), 1);
    }

    /// One batch, processed as if packet by packet although its lookups are
    /// done ahead (pass 2): a flow opened by a packet is found by the
    /// packets after it in the same batch.
    ///
    /// ```text
    ///   pod A ──> VIP:8080 ──> B:80 / C:80
    ///   batch: ACK of X (open), SYN Y, SYN Y again, ACK Y, ACK X
    /// ```
    #[test]
    fn flow_opened_in_a_batch_is_found_later_in_that_batch() {
        let t = svc_tables(&[(POD_B, false), (POD_C, false)], None);
        let mut pl = Pipeline::new(counters());
        let x = tuple(&run(&mut pl, &t, 0, &syn(POD_A, 40000, VIP, 8080)).1).dst;
        let ack = |sport: u16| {
            let b = PacketBuilder::ethernet2(mac_of(POD_A), GW_MAC)
                .ipv4(POD_A, VIP, 64)
                .tcp(sport, 8080, 2, 65535)
                .ack(10);
            let mut f = vec![0u8; VNET];
            b.write(&mut f, &[]).unwrap();
            f
        };
        let frames = [
            ack(40000),
            syn(POD_A, 40001, VIP, 8080),
            syn(POD_A, 40001, VIP, 8080),
            ack(40001),
            ack(40000),
        ];
        let mut b = Batch::new(frames.len());
        for f in &frames {
            b.push_bytes(0, f);
        }
        pl.process(&mut b, &t, Instant::now());
        let dsts: Vec<_> = b
            .packets()
            .iter()
            .map(|p| {
                assert!(
                    matches!(p.verdict, Verdict::Forward { .. }),
                    "{:?}",
                    p.verdict
                );
                tuple(p.data()).dst
            })
            .collect();
        assert_eq!(dsts[0], x);
        assert_eq!(dsts[4], x);
        assert_eq!(dsts[1], dsts[2], "the retransmitted SYN follows the first");
        assert_eq!(dsts[1], dsts[3], "the ACK follows its SYN");
        assert_eq!(pl.conntrack.table().len(), 2, "one flow per tuple");
        assert_eq!(pl.counters().stages.ct_created.get(), 2);
        let stats = crate::metrics::datapath_stats(std::slice::from_ref(pl.counters()));
        assert!(stats.drops.is_empty(), "{:?}", stats.drops);
    }

    #[test]
    fn affinity_pins_a_client_to_one_backend() {
        let t = svc_tables(&[(POD_B, false), (POD_C, false)], Some(10800));
        let mut pl = Pipeline::new(counters());
        let first = tuple(&run(&mut pl, &t, 0, &syn(POD_A, 40000, VIP, 8080)).1).dst;
        for port in 40001..40040 {
            assert_eq!(
                tuple(&run(&mut pl, &t, 0, &syn(POD_A, port, VIP, 8080)).1).dst,
                first
            );
        }
        // Without affinity both backends are used.
        let t = svc_tables(&[(POD_B, false), (POD_C, false)], None);
        let mut pl = Pipeline::new(counters());
        let seen: std::collections::HashSet<_> = (40000..40040)
            .map(|port| tuple(&run(&mut pl, &t, 0, &syn(POD_A, port, VIP, 8080)).1).dst)
            .collect();
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn hairpin_is_source_translated_to_the_gateway() {
        let t = svc_tables(&[(POD_A, false)], None);
        let mut pl = Pipeline::new(counters());
        let (v, out) = run(&mut pl, &t, 0, &syn(POD_A, 40000, VIP, 8080));
        assert_eq!(v, Verdict::Forward { port: 0 });
        let k = tuple(&out);
        assert_eq!(k.dst, Ipv4Addr::from(POD_A));
        assert_eq!(k.src, t.gateway.ipv4);
        assert!(SNAT_PORTS.contains(&u32::from(k.sport)));
    }

    #[test]
    fn the_same_seed_replays_the_same_snat_ports() {
        let t = svc_tables(&[(POD_A, false)], None);
        let ports = |seed: u64| {
            let ct = Arc::new(crate::conntrack::ConnTrack::with_seed(
                Default::default(),
                1,
                seed,
            ));
            let mut pl = Pipeline::seeded(counters(), ct, 0, 1, seed);
            (0..8)
                .map(|i| tuple(&run(&mut pl, &t, 0, &syn(POD_A, 40000 + i, VIP, 8080)).1).sport)
                .collect::<Vec<_>>()
        };
        assert_eq!(ports(7), ports(7), "one seed, one run");
        assert_ne!(ports(7), ports(8), "the ports come from the seed");
        // Pipeline::new is seeded too.
        let mut a = Pipeline::new(counters());
        let mut b = Pipeline::new(counters());
        let syn = syn(POD_A, 40000, VIP, 8080);
        assert_eq!(run(&mut a, &t, 0, &syn).1, run(&mut b, &t, 0, &syn).1);
    }

    fn udp_svc_tables(endpoints: &[[u8; 4]]) -> Tables {
        let mut t = svc_tables(&[], None);
        let spec = ServiceSpec {
            name: "kube-system/dns".into(),
            cluster_ips: vec![VIP.into()],
            external_ips: vec![],
            ports: vec![ServicePortSpec {
                name: "dns".into(),
                protocol: Protocol::Udp,
                port: 53,
                node_port: None,
                endpoints: endpoints
                    .iter()
                    .map(|ip| EndpointSpec {
                        ip: (*ip).into(),
                        port: 5353,
                        node: Some("n1".into()),
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
        let node = NodeView {
            name: "n1",
            node_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
            node_port_ips: &[Ipv4Addr::new(198, 18, 0, 1)],
            gateway_ip: t.gateway.ipv4,
            mode: ClusterMode::Native,
            maglev_size: 251,
        };
        t.services =
            Arc::new(ServiceTable::build([&spec], &ServiceSettings::default(), &node).unwrap());
        t
    }

    fn dns_query(sport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(mac_of(POD_A), GW_MAC)
            .ipv4(POD_A, VIP, 64)
            .udp(sport, 53);
        let mut f = vec![0u8; VNET];
        b.write(&mut f, b"query").unwrap();
        f
    }

    /// kube-proxy #125467: a UDP flow to an endpoint that stops being
    /// ready (still listed, not removed) is flushed, so the client's next
    /// datagram moves on; a TCP flow to it stays (the connection outlives
    /// readiness).
    #[test]
    fn udp_flows_leave_an_endpoint_that_stops_being_ready() {
        let t = udp_svc_tables(&[POD_B]);
        let mut pl = Pipeline::new(counters());
        let (_, out) = run(&mut pl, &t, 0, &dns_query(5001));
        assert_eq!(tuple(&out).dst, Ipv4Addr::from(POD_B));
        // B stays listed but not ready; C is ready.
        let mut t2 = udp_svc_tables(&[POD_B, POD_C]);
        let mut spec = (*t2.services).clone();
        for b in spec
            .backends
            .iter_mut()
            .filter(|b| b.ip == Ipv4Addr::from(POD_B))
        {
            b.ready = false;
        }
        t2.services = Arc::new(spec);
        let ct = Arc::clone(pl.conntrack.table());
        assert_eq!(ct.remove_where(|f| t2.services.flow_is_stale(f)), 1);
        // A TCP flow to a not-ready (listed) endpoint is not stale.
        let t3 = svc_tables(&[(POD_B, false)], None);
        let mut services = (*t3.services).clone();
        for b in services.backends.iter_mut() {
            b.ready = false;
        }
        let orig = FlowKey::new(POD_A.into(), 40000, VIP.into(), 8080, 6);
        let tcp = crate::conntrack::FlowInfo {
            index: 0,
            orig,
            reply: Some(FlowKey::new(POD_B.into(), 80, POD_A.into(), 40000, 6)),
            state: FlowState::Established,
            flags: crate::conntrack::flow_flags::DNAT,
            idle_secs: 0,
            expires_in_secs: 100,
        };
        assert!(!services.flow_is_stale(&tcp));
    }

    #[test]
    fn dns_flow_does_not_pin_a_removed_endpoint() {
        let t = udp_svc_tables(&[POD_B]);
        let mut pl = Pipeline::new(counters());
        let (_, out) = run(&mut pl, &t, 0, &dns_query(5000));
        assert_eq!(tuple(&out).dst, Ipv4Addr::from(POD_B));
        // The endpoint moves to C; the control side drops stale flows.
        let t2 = udp_svc_tables(&[POD_C]);
        let ct = Arc::clone(pl.conntrack.table());
        assert_eq!(ct.remove_where(|f| t2.services.flow_is_stale(f)), 1);
        // The client's retry (same source port) reaches the live endpoint.
        let (_, out) = run(&mut pl, &t2, 0, &dns_query(5000));
        assert_eq!(tuple(&out).dst, Ipv4Addr::from(POD_C));
        assert_eq!(tuple(&out).dport, 5353);
    }

    #[test]
    fn icmp_error_about_a_translated_flow_is_translated_back() {
        let t = svc_tables(&[(POD_B, false)], None);
        let mut pl = Pipeline::new(counters());
        let (_, fwd) = run(&mut pl, &t, 0, &syn(POD_A, 40000, VIP, 8080));
        // B's side answers the (translated) SYN with fragmentation needed,
        // quoting it as it arrived: A -> B:80.
        let quoted = &fwd[VNET + 14..];
        let b = PacketBuilder::ethernet2(mac_of(POD_B), GW_MAC)
            .ipv4(POD_B, POD_A, 64)
            .icmpv4(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
            ));
        let mut f = vec![0u8; VNET];
        b.write(&mut f, quoted).unwrap();
        let (v, out) = run(&mut pl, &t, 1, &f);
        assert_eq!(v, Verdict::Forward { port: 0 });
        let o = &out[VNET..];
        // Outer: from the VIP (the error came from the endpoint itself) to A.
        assert_eq!(&o[26..30], &VIP);
        assert_eq!(&o[30..34], &POD_A);
        // Quoted: what A sent, A:40000 -> VIP:8080.
        let inner = nat::tuple_at(o, 42, 62, 6).unwrap();
        assert_eq!(
            inner,
            FlowKey::new(POD_A.into(), 40000, VIP.into(), 8080, 6)
        );
        assert_eq!(
            crate::wire::checksum::checksum(&o[34..]),
            0,
            "ICMP checksum"
        );
        assert_eq!(
            crate::wire::checksum::checksum(&o[14..34]),
            0,
            "IP checksum"
        );
        assert_eq!(
            crate::wire::checksum::checksum(&o[42..62]),
            0,
            "quoted IP checksum"
        );
    }
}
