//! The I/O side of a worker thread: reads batches from its tap queues,
//! runs the pipeline, writes the results.
//!
//! Each worker owns queue `w` of every port and owns its packets end to
//! end: a frame read on worker `w` is parsed, routed and written by worker
//! `w` (to queue `w` of the destination), so nothing is handed between
//! threads and no lock is taken. The kernel spreads a pod's flows over the
//! queues by flow hash. Topology arrives as a [`Snapshot`] loaded once per
//! batch; when its generation changes the worker re-registers its queues.
//!
//! Reads are edge-triggered (mio/epoll): a ready queue is read until
//! EAGAIN, at most [`PER_PORT_BURST`] frames per turn so one busy pod
//! cannot starve the others; a queue with more waiting goes back on the
//! ready list and is served without waiting for another event.
//!
//! When nothing is ready, the worker busy-polls or parks in epoll as its
//! [`poll::PollMode`] says (`adaptive` by default: polling for a budget
//! after the last frame, then parking), and charges its time to working,
//! polling or sleeping ([`crate::metrics::PollCounters`]).
//!
//! VXLAN: datagrams read from the underlay socket go through the overlay
//! input stage ([`crate::pipeline::decap::receive`]: checks, receive
//! coalescing, loading) into the batch; `Encap` verdicts leave through the
//! tunnel port in place ([`crate::pipeline::encap::udp_tunnel_frame`]) or
//! through the socket ([`crate::pipeline::encap::vxlan_datagrams`]). What
//! is left here is the I/O.
//!
//! Packet capture hooks in at three places: a batch's frames right after
//! they are read (ingress), each frame after it is written (egress), and
//! each VXLAN datagram received or sent (underlay). With no capture armed
//! they cost one relaxed load per batch ([`CaptureHub::armed`]).

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::capture::{ArmedCaptures, CaptureHub, Direction};
use crate::metrics::{PortWorkerCounters, WorkerCounters};
use crate::pipeline::{Batch, DropReason, Pipeline, Verdict};
use crate::port::tap::TapQueue;
use crate::port::underlay::UnderlaySocket;
use crate::port::uring::{ReadOp, TapRing, RING_ENTRIES};
use crate::tables::{PortId, TablePublisher, Tables};

pub mod poll;

pub use podswitch_api::io::IoBackend;
use poll::PollControl;

/// Frames read from one queue before the worker moves to the next.
pub const PER_PORT_BURST: usize = 32;
/// The token of the worker's waker (ports use their id).
pub const WAKE_TOKEN: Token = Token(usize::MAX);

/// A port's I/O: one tap queue and one counter block per worker.
#[derive(Debug)]
pub struct PortIo {
    pub queues: Vec<TapQueue>,
    pub counters: Box<[PortWorkerCounters]>,
}

impl PortIo {
    pub fn new(queues: Vec<TapQueue>) -> Self {
        let counters = (0..queues.len())
            .map(|_| PortWorkerCounters::default())
            .collect();
        PortIo { queues, counters }
    }
}

/// What workers read: the tables and, by port id, the ports' I/O.
#[derive(Debug)]
pub struct Snapshot {
    pub tables: Tables,
    pub io: Vec<Option<Arc<PortIo>>>,
}

impl Snapshot {
    pub fn empty(tables: Tables) -> Self {
        Snapshot {
            tables,
            io: Vec::new(),
        }
    }
}

/// The port of a tx-plan entry that goes to the tunnel port (not a port
/// of the snapshot).
const TUNNEL_PORT: PortId = PortId::MAX;

/// The token of the worker's underlay (VXLAN) socket.
pub const OVERLAY_TOKEN: Token = Token(usize::MAX - 1);
/// Sockets per worker that VXLAN is sent from: the UDP source port is
/// picked among theirs by the inner flow hash, so a node's flows spread
/// over underlay ECMP paths (RFC 7348 §5) while each flow keeps one port.
pub const VXLAN_TX_SOCKETS: usize = 8;

/// A worker's side of the VXLAN overlay: its share of the receive port
/// (SO_REUSEPORT spreads datagrams over the workers) and its send sockets,
/// with buffers allocated once.
pub struct OverlayIo {
    rx: UnderlaySocket,
    tx: Vec<UnderlaySocket>,
    in_buf: Box<[u8]>,
    /// Unconsumed datagrams of the last GRO read: (offset, end, segment size, source).
    pending: Option<(usize, usize, usize, std::net::SocketAddrV4)>,
    out_buf: Box<[u8]>,
    /// This worker's queue of the tunnel port, where TCP superframes go
    /// whole (UDP-tunnel GSO); `None`: every frame takes the socket.
    tunnel: Option<TunnelTx>,
}

/// A worker's queue of the tunnel port ([`crate::port::pod::tunnel_port`]).
struct TunnelTx {
    queue: TapQueue,
    /// The tap's MAC: the superframes' destination.
    mac: [u8; 6],
    /// The vnet and outer headers of the superframe being written.
    prefix: [u8; crate::pipeline::encap::TUNNEL_PREFIX_LEN],
}

impl OverlayIo {
    /// Sends TCP superframes whole through `queue` of the tunnel port
    /// whose MAC is `mac`.
    pub fn with_tunnel(mut self, queue: TapQueue, mac: [u8; 6]) -> Self {
        self.tunnel = Some(TunnelTx {
            queue,
            mac,
            prefix: [0; crate::pipeline::encap::TUNNEL_PREFIX_LEN],
        });
        self
    }

    /// Whether TCP superframes can go whole through a tunnel port.
    pub fn has_tunnel(&self) -> bool {
        self.tunnel.is_some()
    }

    /// Binds the receive socket on `local:port` (shared by workers) and
    /// the send sockets on `local:0`.
    pub fn bind(local: std::net::Ipv4Addr, port: u16) -> std::io::Result<Self> {
        let rx = UnderlaySocket::bind(std::net::SocketAddrV4::new(local, port), true)?;
        let tx = (0..VXLAN_TX_SOCKETS)
            .map(|_| UnderlaySocket::bind(std::net::SocketAddrV4::new(local, 0), false))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(OverlayIo {
            rx,
            tx,
            in_buf: vec![0u8; 65536].into_boxed_slice(),
            pending: None,
            // A 64 KiB superframe cut into MSS-sized segments, each with a
            // VXLAN header and copies of the inner headers.
            out_buf: vec![0u8; 3 * 65536].into_boxed_slice(),
            tunnel: None,
        })
    }
}

/// One worker thread's state.
pub struct Worker {
    overlay: Option<OverlayIo>,
    overlay_ready: bool,
    id: usize,
    poll: Poll,
    events: Events,
    snapshots: Arc<TablePublisher<Snapshot>>,
    /// Ports registered with `poll`, by id.
    registered: Vec<Option<Arc<PortIo>>>,
    generation: u64,
    ready: VecDeque<PortId>,
    in_ready: Vec<bool>,
    pipeline: Pipeline,
    batch: Batch,
    shutdown: Arc<AtomicBool>,
    /// Packet captures armed through the control socket.
    captures: Arc<CaptureHub>,
    /// The poll mode and budget, shared with the control thread.
    poll_control: Arc<PollControl>,
    /// Batched tap I/O; `None`: one read/write system call per frame.
    ring: Option<TapRing>,
    /// Reads to queue per port in the next batched read: doubles while a
    /// queue fills them all, shrinks to what it gave otherwise.
    read_burst: Vec<u8>,
    /// Per batched read: (port, reads, queue fd).
    rx_plan: Vec<(PortId, usize, std::os::fd::RawFd)>,
    /// Per batched write: (packet index, port, queue fd).
    tx_plan: Vec<(usize, PortId, std::os::fd::RawFd)>,
    /// Completion results of the last batched read or write.
    results: Vec<i32>,
}

/// Sets up the batched I/O a worker uses for `backend`: `Ok(None)` for
/// read/write (asked for, or `auto` on a kernel or sandbox without
/// io_uring, which is logged once per worker).
pub fn tap_ring(backend: IoBackend, worker: usize) -> std::io::Result<Option<TapRing>> {
    match backend {
        IoBackend::Syscalls => Ok(None),
        IoBackend::IoUring => TapRing::new().map(Some),
        IoBackend::Auto => match TapRing::new() {
            Ok(r) => Ok(Some(r)),
            Err(e) => {
                tracing::warn!(worker, error = %e, "io_uring unavailable; tap I/O falls back to one read/write per frame");
                Ok(None)
            }
        },
    }
}

impl Worker {
    /// Creates worker `id` with its own poller; returns it and the waker
    /// the control thread uses after publishing a snapshot.
    pub fn new(
        id: usize,
        snapshots: Arc<TablePublisher<Snapshot>>,
        counters: Arc<WorkerCounters>,
        shutdown: Arc<AtomicBool>,
        overlay: Option<OverlayIo>,
        conntrack: Arc<crate::conntrack::ConnTrack>,
        workers: usize,
    ) -> std::io::Result<(Self, Arc<Waker>)> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE_TOKEN)?);
        if let Some(ov) = &overlay {
            poll.registry().register(
                &mut SourceFd(&ov.rx.as_raw_fd()),
                OVERLAY_TOKEN,
                Interest::READABLE,
            )?;
        }
        let overlay_ready = overlay.is_some();
        Ok((
            Worker {
                overlay,
                overlay_ready,
                id,
                poll,
                events: Events::with_capacity(256),
                snapshots,
                registered: Vec::new(),
                generation: u64::MAX,
                ready: VecDeque::with_capacity(256),
                in_ready: Vec::new(),
                pipeline: Pipeline::with_conntrack(counters, conntrack, id, workers),
                batch: Batch::default(),
                shutdown,
                captures: Arc::new(CaptureHub::new(workers)),
                poll_control: Arc::new(PollControl::default()),
                ring: None,
                read_burst: Vec::new(),
                rx_plan: Vec::with_capacity(crate::pipeline::BATCH_SIZE),
                tx_plan: Vec::with_capacity(crate::pipeline::BATCH_SIZE),
                results: vec![0; RING_ENTRIES as usize],
            },
            waker,
        ))
    }

    /// Takes its packet captures from `hub` (shared with the control
    /// thread) instead of a private one nobody arms.
    pub fn with_captures(mut self, hub: Arc<CaptureHub>) -> Self {
        self.captures = hub;
        self
    }

    /// Follows the poll mode in `control` (shared with the control
    /// thread) instead of a private default one.
    pub fn with_poll_control(mut self, control: Arc<PollControl>) -> Self {
        self.poll_control = control;
        self
    }

    /// Moves tap frames through `ring` (batched) instead of one system
    /// call per frame.
    pub fn with_ring(mut self, ring: Option<TapRing>) -> Self {
        self.ring = ring;
        self
    }

    /// Runs until shutdown is flagged.
    pub fn run(mut self) {
        let poll_counters = Arc::clone(self.pipeline.counters());
        let pc = &poll_counters.poll;
        // The end of the last iteration that moved a frame, and of the
        // last iteration: time is charged from one to the next.
        let mut last_frame = Instant::now();
        let mut mark = last_frame;
        // Since the last frame, a yield between polls lost the core.
        let mut contended = false;
        while !self.shutdown.load(Ordering::Relaxed) {
            let snap = self.snapshots.load_full();
            if snap.tables.generation != self.generation {
                self.sync_ports(&snap);
            }
            let timeout = if self.ready.is_empty() && !self.overlay_ready {
                let (mode, budget) = self.poll_control.get();
                poll::idle_timeout(
                    mode,
                    budget,
                    mark.saturating_duration_since(last_frame),
                    contended,
                )
            } else {
                Duration::ZERO
            };
            let parked = !timeout.is_zero();
            let polled = self.poll.poll(&mut self.events, Some(timeout));
            let woke = Instant::now();
            if parked {
                pc.sleeping_ns.add(nanos(woke - mark));
                mark = woke;
                if polled.is_ok() && !self.events.is_empty() {
                    pc.wakeups.inc();
                }
            }
            if let Err(e) = polled {
                if e.kind() != ErrorKind::Interrupted {
                    tracing::error!(worker = self.id, error = %e, "poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
            let moved = self.serve_ready();
            let now = Instant::now();
            if moved {
                pc.working_ns.add(nanos(now - mark));
                last_frame = now;
                contended = false;
            } else {
                pc.polling_ns.add(nanos(now - mark));
                if !parked {
                    pc.empty_polls.inc();
                    // A pod's process woken on this core (the other end of
                    // the ping-pong) runs now instead of after our time
                    // slice: busy polling must not starve what it serves
                    // on a machine with fewer cores than busy threads.
                    std::thread::yield_now();
                    if !contended && now.elapsed() > poll::CONTENDED_YIELD {
                        // Someone needed this core: the adaptive mode parks
                        // (the yield's time is charged to the park).
                        contended = true;
                        pc.contended_yields.inc();
                    }
                }
            }
            mark = now;
        }
    }

    /// Takes the events of the last poll, then reads, processes and writes
    /// batches until no queue is ready; says whether any frame was read.
    fn serve_ready(&mut self) -> bool {
        let mut moved = false;
        for ev in self.events.iter() {
            let t = ev.token();
            if t == OVERLAY_TOKEN {
                self.overlay_ready = true;
            } else if t != WAKE_TOKEN {
                mark_ready(&mut self.ready, &mut self.in_ready, t.0 as PortId);
            }
        }
        while (!self.ready.is_empty() || self.overlay_ready)
            && !self.shutdown.load(Ordering::Relaxed)
        {
            let snap = self.snapshots.load_full();
            if snap.tables.generation != self.generation {
                self.sync_ports(&snap);
            }
            let captures = self.captures.armed();
            self.fill_batch();
            self.fill_from_overlay(&snap.tables, captures.as_ref());
            if self.batch.is_empty() {
                continue;
            }
            moved = true;
            if let Some(caps) = &captures {
                // Before any stage rewrites the frames.
                self.capture_ingress(caps);
            }
            self.pipeline
                .process(&mut self.batch, &snap.tables, Instant::now());
            self.transmit(&snap, captures.as_ref());
        }
        moved
    }

    /// Reads from ready queues round-robin until the batch is full or no
    /// queue is ready.
    fn fill_batch(&mut self) {
        if self.ring.is_some() && self.poll_control.batched_io() {
            return self.fill_batch_batched();
        }
        self.batch.clear();
        let c = Arc::clone(self.pipeline.counters());
        let mut turns = self.ready.len();
        while turns > 0 && !self.batch.is_full() {
            turns -= 1;
            let Some(port) = self.ready.pop_front() else {
                break;
            };
            let Some(Some(io)) = self.registered.get(port as usize) else {
                self.in_ready[port as usize] = false;
                continue;
            };
            let (q, pc) = (&io.queues[self.id], &io.counters[self.id]);
            let mut drained = false;
            for _ in 0..PER_PORT_BURST {
                let Some(p) = self.batch.next_free() else {
                    break;
                };
                match q.read(p.read_area()) {
                    Ok(n) => {
                        p.filled(port, n);
                        self.batch.commit();
                        pc.rx_packets.inc();
                        pc.rx_bytes.add(n as u64);
                        c.stages.rx_packets.inc();
                        c.stages.rx_bytes.add(n as u64);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // The device went away (port being removed); the next
                        // snapshot drops it.
                        tracing::debug!(worker = self.id, port, error = %e, "tap read failed");
                        drained = true;
                        break;
                    }
                }
            }
            if drained {
                self.in_ready[port as usize] = false;
            } else {
                self.ready.push_back(port);
            }
        }
    }

    /// [`Worker::fill_batch`] through the ring: a burst of reads from each
    /// ready queue, all in one system call.
    fn fill_batch_batched(&mut self) {
        self.batch.clear();
        let c = Arc::clone(self.pipeline.counters());
        let room = self.batch.capacity();
        self.rx_plan.clear();
        let mut planned = 0;
        let mut turns = self.ready.len();
        while turns > 0 && planned < room {
            turns -= 1;
            let Some(port) = self.ready.pop_front() else {
                break;
            };
            let i = port as usize;
            let Some(Some(io)) = self.registered.get(i) else {
                self.in_ready[i] = false;
                continue;
            };
            if self.read_burst.len() <= i {
                self.read_burst.resize(i + 1, 2);
            }
            let k = usize::from(self.read_burst[i])
                .clamp(1, PER_PORT_BURST)
                .min(room - planned);
            self.rx_plan.push((port, k, io.queues[self.id].as_raw_fd()));
            planned += k;
        }
        if planned == 0 {
            return;
        }
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let plan = &self.rx_plan;
        let ops = plan
            .iter()
            .flat_map(|&(_, k, fd)| (0..k).map(move |j| (fd, j + 1 < k)))
            .zip(self.batch.free_read_areas(planned))
            .map(|((fd, then_same_queue), buf)| ReadOp {
                fd,
                buf,
                then_same_queue,
            });
        let made = match ring.read(ops, &mut self.results) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(worker = self.id, error = %e, "batched tap read failed");
                0
            }
        };
        let mut at = 0;
        for &(port, k, _) in &self.rx_plan {
            let i = port as usize;
            let (mut got, mut drained) = (0, false);
            for &r in &self.results[at..(at + k).min(made)] {
                if r >= 0 {
                    got += 1;
                    let n = r as u64;
                    if let Some(Some(io)) = self.registered.get(i) {
                        let pc = &io.counters[self.id];
                        pc.rx_packets.inc();
                        pc.rx_bytes.add(n);
                    }
                    c.stages.rx_packets.inc();
                    c.stages.rx_bytes.add(n);
                } else {
                    // EAGAIN: the queue is empty; anything else: the
                    // device is going away (the next snapshot drops it).
                    drained = true;
                    if r != -libc::EAGAIN {
                        tracing::debug!(worker = self.id, port, errno = -r, "tap read failed");
                    }
                }
            }
            at += k;
            self.read_burst[i] = if got == k {
                (k * 2).min(PER_PORT_BURST) as u8
            } else {
                (got + 1).max(2) as u8
            };
            if drained || made == 0 {
                self.in_ready[i] = false;
            } else {
                self.ready.push_back(port);
            }
        }
        let plan = &self.rx_plan;
        let ports = plan
            .iter()
            .flat_map(|&(port, k, _)| std::iter::repeat_n(port, k));
        let results = &self.results[..made];
        self.batch.commit_reads(
            ports
                .zip(results)
                .map(|(port, &r)| (r >= 0).then_some((port, r as usize))),
        );
    }

    /// Offers the frames of the batch just read to the armed captures of
    /// their ingress ports.
    fn capture_ingress(&self, caps: &ArmedCaptures) {
        let c = self.pipeline.counters();
        for p in self.batch.packets() {
            caps.port_frame(self.id, p.ingress, Direction::Ingress, p.frame(), c);
        }
    }

    /// Reads VXLAN datagrams (GRO-coalesced) until EAGAIN or the batch is
    /// full; each valid one becomes a packet on the overlay port.
    fn fill_from_overlay(&mut self, tables: &Tables, caps: Option<&ArmedCaptures>) {
        let Some(ov) = self.overlay.as_mut() else {
            self.overlay_ready = false;
            return;
        };
        let c = Arc::clone(self.pipeline.counters());
        let Some(table) = tables.overlay.as_ref() else {
            // Not (yet) configured: drain and count.
            while let Ok(Some((n, _, _))) = ov.rx.recv_gro(&mut ov.in_buf) {
                c.count_drop(DropReason::UnknownNode, n);
            }
            self.overlay_ready = false;
            return;
        };
        while !self.batch.is_full() {
            let (mut off, end, seg, src) = match ov.pending.take() {
                Some(p) => p,
                None => match ov.rx.recv_gro(&mut ov.in_buf) {
                    Ok(Some((n, seg, src))) => (0, n, seg.max(1), src),
                    Ok(None) => {
                        self.overlay_ready = false;
                        return;
                    }
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => {
                        tracing::debug!(worker = self.id, error = %e, "underlay receive failed");
                        c.count_drop(DropReason::VxlanInvalid, 0);
                        continue;
                    }
                },
            };
            // Coalesce only within this read, starting after what is already in the batch.
            let first_new = self.batch.len();
            while off < end {
                if self.batch.is_full() {
                    ov.pending = Some((off, end, seg, src));
                    return;
                }
                let coalescing = self.batch.len() > first_new;
                let dgram = &ov.in_buf[off..(off + seg).min(end)];
                off += seg;
                c.stages.vxlan_rx.inc();
                if let Some(caps) = caps {
                    let local = std::net::SocketAddrV4::new(table.local_ipv4, table.udp_port);
                    caps.underlay_datagram(self.id, Direction::Ingress, src, local, dgram, &c);
                }
                let received = crate::pipeline::decap::receive(
                    &mut self.batch,
                    dgram,
                    *src.ip(),
                    table,
                    coalescing,
                    &c,
                );
                if received == crate::pipeline::decap::Received::BatchFull {
                    ov.pending = Some((off - seg, end, seg, src));
                    return;
                }
            }
        }
    }

    /// Encapsulates one packet towards `node` and sends it through the
    /// UDP socket (segmenting a TSO superframe once, one VXLAN datagram per
    /// segment, in one UDP GSO send): the path of a switch without a tunnel
    /// port; the datagrams sent are offered to underlay captures.
    fn send_encap(
        ov: &mut OverlayIo,
        tables: &Tables,
        node: u16,
        p: &crate::pipeline::Packet,
        c: &WorkerCounters,
        worker: usize,
        caps: Option<&ArmedCaptures>,
    ) {
        let (Some(table), len) = (tables.overlay.as_ref(), p.len()) else {
            return;
        };
        let Some(remote) = table.nodes.get(usize::from(node)) else {
            c.count_drop(DropReason::NoRoute, len);
            return;
        };
        let frame = p.frame();
        let vnet = p.meta.vnet;
        let is_tcp = p.meta.proto == 6 && p.meta.l3 == crate::pipeline::L3::Ipv4;
        let hash = crate::wire::vxlan::inner_flow_hash(frame);
        let (total, seg_len, segments) = match crate::pipeline::encap::vxlan_datagrams(
            frame,
            &vnet,
            is_tcp,
            table.vni,
            &mut ov.out_buf,
        ) {
            Ok(d) => (d.total, d.segment_len, d.segments),
            Err(reason) => {
                c.count_drop(reason, len);
                return;
            }
        };
        let sock = &ov.tx[hash as usize % ov.tx.len()];
        let dst = std::net::SocketAddrV4::new(remote.underlay_ipv4, table.udp_port);
        match sock.send_gso(&ov.out_buf[..total], seg_len, dst) {
            Ok(sent) => {
                if let Some(caps) = caps {
                    // What went out, one datagram per segment.
                    let src = sock.local_addr();
                    for dgram in ov.out_buf[..sent.min(total)].chunks(seg_len.max(1)) {
                        caps.underlay_datagram(worker, Direction::Egress, src, dst, dgram, c);
                    }
                }
                c.stages.vxlan_tx.add(segments as u64);
                c.stages.tx_packets.add(segments as u64);
                c.stages.tx_bytes.add(total as u64);
            }
            Err(_) => c.count_drop(DropReason::UnderlayTxError, len),
        }
    }

    fn transmit(&mut self, snap: &Snapshot, caps: Option<&ArmedCaptures>) {
        let c = Arc::clone(self.pipeline.counters());
        self.tx_plan.clear();
        let batched = self.ring.is_some() && self.poll_control.batched_io();
        let tunneled = self.prepare_tunnel(&snap.tables);
        let tunnel_fd = self
            .overlay
            .as_ref()
            .and_then(|ov| ov.tunnel.as_ref())
            .map(|t| t.queue.as_raw_fd());
        let mut refused = false;
        for (i, p) in self.batch.packets().iter().enumerate() {
            if tunneled & (1 << i) != 0 {
                if let (true, Some(fd)) = (batched, tunnel_fd) {
                    self.tx_plan.push((i, TUNNEL_PORT, fd));
                } else if let Some(t) = self.overlay.as_ref().and_then(|ov| ov.tunnel.as_ref()) {
                    let written = t.queue.write(p.data());
                    refused |= Self::account_tunnel_write(self.id, written, p, &c, caps);
                }
                continue;
            }
            let out_port = match p.verdict {
                Verdict::Encap { node } => {
                    match self.overlay.as_mut() {
                        Some(ov) => Self::send_encap(ov, &snap.tables, node, p, &c, self.id, caps),
                        None => c.count_drop(DropReason::NoRoute, p.len()),
                    }
                    continue;
                }
                Verdict::Forward { port } => port,
                // A reply (an ICMP error) to a packet from another node goes
                // back over the overlay to that node.
                Verdict::Reply if p.meta.from_node.is_some() => {
                    match (self.overlay.as_mut(), p.meta.from_node) {
                        (Some(ov), Some(node)) => {
                            Self::send_encap(ov, &snap.tables, node, p, &c, self.id, caps)
                        }
                        _ => c.count_drop(DropReason::NoRoute, p.len()),
                    }
                    continue;
                }
                Verdict::Reply => p.ingress,
                Verdict::Drop(_) | Verdict::Pending => {
                    if let Some(Some(io)) = snap.io.get(p.ingress as usize) {
                        io.counters[self.id].rx_drops.inc();
                    }
                    if p.verdict == Verdict::Pending {
                        // A packet no stage decided is a bug; never send it.
                        c.count_drop(DropReason::UnsupportedEthertype, p.len());
                    }
                    continue;
                }
            };
            let Some(Some(io)) = snap.io.get(out_port as usize) else {
                c.count_drop(DropReason::PortGone, p.len());
                continue;
            };
            let Some(q) = io.queues.get(self.id) else {
                c.count_drop(DropReason::PortGone, p.len());
                continue;
            };
            if batched {
                // Written below, with the rest of the batch, in one call.
                self.tx_plan.push((i, out_port, q.as_raw_fd()));
                continue;
            }
            let written = q.write(p.data());
            Self::account_write(self.id, written, io, out_port, p, &c, caps);
        }
        if self.tx_plan.is_empty() {
            self.after_tunnel_writes(refused);
            return;
        }
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let packets = self.batch.packets();
        let frames = self
            .tx_plan
            .iter()
            .map(|&(i, _, fd)| (fd, packets[i].data()));
        let made = match ring.write(frames, &mut self.results) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(worker = self.id, error = %e, "batched tap write failed");
                0
            }
        };
        for (j, &(i, port, _)) in self.tx_plan.iter().enumerate() {
            let p = &packets[i];
            let written = match self.results.get(j) {
                Some(&r) if j < made && r >= 0 => Ok(r as usize),
                Some(&r) if j < made => Err(std::io::Error::from_raw_os_error(-r)),
                _ => Err(std::io::Error::from_raw_os_error(libc::EIO)),
            };
            if port == TUNNEL_PORT {
                refused |= Self::account_tunnel_write(self.id, written, p, &c, caps);
                continue;
            }
            let Some(Some(io)) = snap.io.get(port as usize) else {
                continue;
            };
            Self::account_write(self.id, written, io, port, p, &c, caps);
        }
        self.tx_plan.clear();
        self.after_tunnel_writes(refused);
    }

    /// Turns every `Encap` packet of the batch (and every reply to another
    /// node) that can go through the tunnel port into a frame for it, in
    /// place: the vnet and outer headers go into the headroom in front of
    /// the frame ([`crate::pipeline::encap::udp_tunnel_frame`]). Returns
    /// the packets so prepared, as a bit mask by index; the rest take the
    /// socket.
    fn prepare_tunnel(&mut self, tables: &Tables) -> u64 {
        use crate::pipeline::encap;
        const _: () = assert!(crate::pipeline::BATCH_SIZE <= 64, "one bit per packet");
        if !self.poll_control.tunnel_gso() {
            return 0;
        }
        let (Some(tx), Some(table)) = (
            self.overlay.as_mut().and_then(|ov| ov.tunnel.as_mut()),
            tables.overlay.as_ref(),
        ) else {
            return 0;
        };
        // The underlay MTU the pods' MTU implies (outer IPv4, UDP, VXLAN and
        // the inner Ethernet header ride on each segment).
        let underlay_mtu = table.pod_mtu.saturating_add(encap::OUTER_LEN as u16);
        let mut mask = 0u64;
        for (i, p) in self.batch.packets_mut().iter_mut().enumerate() {
            let node = match (p.verdict, p.meta.from_node) {
                (Verdict::Encap { node }, _) | (Verdict::Reply, Some(node)) => node,
                _ => continue,
            };
            // Unknown nodes are counted by the socket path.
            let Some(remote) = table.nodes.get(usize::from(node)) else {
                continue;
            };
            let frame = p.frame();
            let outer = encap::OuterV4 {
                dst_mac: tx.mac,
                src_mac: table.vtep_mac,
                src_ip: table.local_ipv4,
                dst_ip: remote.underlay_ipv4,
                src_port: crate::wire::vxlan::source_port(
                    crate::wire::vxlan::inner_flow_hash(frame),
                    crate::wire::vxlan::DEFAULT_SOURCE_PORTS,
                ),
                dst_port: table.udp_port,
                vni: table.vni,
            };
            let vnet = p.meta.vnet;
            if encap::udp_tunnel_frame(&mut tx.prefix, frame, &vnet, &outer, underlay_mtu).is_err()
            {
                continue;
            }
            let grow = encap::TUNNEL_PREFIX_LEN - crate::wire::vnet_hdr::LEN;
            if let Some(data) = p.prepend(grow) {
                data[..encap::TUNNEL_PREFIX_LEN].copy_from_slice(&tx.prefix);
                mask |= 1 << i;
            }
        }
        mask
    }

    /// Counts one frame written to the tunnel port (its datagrams, or the
    /// superframe and the datagrams the kernel will cut it into) and offers
    /// the datagram to underlay captures. Returns true when the kernel
    /// refused it as malformed (`EINVAL`: no UDP-tunnel GSO after all).
    fn account_tunnel_write(
        worker: usize,
        written: std::io::Result<usize>,
        p: &crate::pipeline::Packet,
        c: &WorkerCounters,
        caps: Option<&ArmedCaptures>,
    ) -> bool {
        use crate::pipeline::encap;
        use crate::wire::vnet_hdr::TUNNEL_LEN;
        let data = p.data();
        match written {
            Ok(_) => {
                let le = |i: usize| usize::from(u16::from_le_bytes([data[i], data[i + 1]]));
                let frame_len = data.len() - TUNNEL_LEN;
                let segments = if data[1] == 0 {
                    1
                } else {
                    c.stages.vxlan_tx_tunnel_gso.inc();
                    frame_len.saturating_sub(le(2)).div_ceil(le(4).max(1))
                };
                c.stages.vxlan_tx.add(segments as u64);
                c.stages.tx_packets.add(segments as u64);
                c.stages.tx_bytes.add((frame_len - 14) as u64);
                if let Some(caps) = caps {
                    // What the kernel sends, as one (unsegmented) datagram.
                    let o = TUNNEL_LEN;
                    let ip = |at: usize| {
                        std::net::Ipv4Addr::new(data[at], data[at + 1], data[at + 2], data[at + 3])
                    };
                    let port = |at: usize| u16::from_be_bytes([data[at], data[at + 1]]);
                    let src = std::net::SocketAddrV4::new(ip(o + 26), port(o + 34));
                    let dst = std::net::SocketAddrV4::new(ip(o + 30), port(o + 36));
                    let dgram = &data[o + encap::OUTER_LEN - crate::wire::vxlan::HEADER_LEN..];
                    caps.underlay_datagram(worker, Direction::Egress, src, dst, dgram, c);
                }
                false
            }
            Err(e) => {
                c.count_drop(DropReason::UnderlayTxError, data.len());
                e.raw_os_error() == Some(libc::EINVAL)
            }
        }
    }

    /// After a batch's tunnel writes: a kernel that refused one as
    /// malformed has no UDP-tunnel GSO after all, and this worker sends
    /// through the socket from now on.
    fn after_tunnel_writes(&mut self, refused: bool) {
        if refused {
            if let Some(ov) = self.overlay.as_mut() {
                if ov.tunnel.take().is_some() {
                    tracing::warn!(
                        worker = self.id,
                        "the kernel refused a frame on the tunnel port; this worker sends VXLAN through its socket from now on"
                    );
                }
            }
        }
    }

    /// Counts one frame written to a tap queue (or not), and offers it to
    /// the port's egress captures.
    fn account_write(
        worker: usize,
        written: std::io::Result<usize>,
        io: &PortIo,
        port: PortId,
        p: &crate::pipeline::Packet,
        c: &WorkerCounters,
        caps: Option<&ArmedCaptures>,
    ) {
        let pc = &io.counters[worker];
        match written {
            Ok(n) => {
                if let Some(caps) = caps {
                    caps.port_frame(worker, port, Direction::Egress, p.frame(), c);
                }
                pc.tx_packets.inc();
                pc.tx_bytes.add(n as u64);
                c.stages.tx_packets.inc();
                c.stages.tx_bytes.add(n as u64);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                pc.tx_drops.inc();
                c.count_drop(DropReason::TxQueueFull, p.len());
            }
            Err(_) => {
                pc.tx_drops.inc();
                c.count_drop(DropReason::TxError, p.len());
            }
        }
    }

    /// Registers queues of new ports and deregisters removed ones.
    fn sync_ports(&mut self, snap: &Snapshot) {
        let n = snap.io.len().max(self.registered.len());
        self.registered.resize(n, None);
        self.in_ready.resize(n, false);
        for id in 0..n {
            let new = snap.io.get(id).cloned().flatten();
            let same = match (&self.registered[id], &new) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            if let Some(old) = self.registered[id].take() {
                if let Some(q) = old.queues.get(self.id) {
                    let _ = self
                        .poll
                        .registry()
                        .deregister(&mut SourceFd(&q.as_raw_fd()));
                }
            }
            if let Some(io) = new {
                if let Some(q) = io.queues.get(self.id) {
                    match self.poll.registry().register(
                        &mut SourceFd(&q.as_raw_fd()),
                        Token(id),
                        Interest::READABLE,
                    ) {
                        Ok(()) => {
                            // Frames may already be queued; edge-triggered
                            // registration reports them, but be certain.
                            mark_ready(&mut self.ready, &mut self.in_ready, id as PortId);
                            self.registered[id] = Some(io);
                        }
                        Err(e) => {
                            tracing::error!(worker = self.id, port = id, error = %e, "cannot register tap queue")
                        }
                    }
                }
            }
        }
        self.generation = snap.tables.generation;
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn mark_ready(ready: &mut VecDeque<PortId>, in_ready: &mut Vec<bool>, port: PortId) {
    let i = port as usize;
    if i >= in_ready.len() {
        in_ready.resize(i + 1, false);
    }
    if !in_ready[i] {
        in_ready[i] = true;
        ready.push_back(port);
    }
}
