//! Counters the datapath keeps and the control API reads.
//!
//! Each worker owns one [`WorkerCounters`]; only that worker writes it, so
//! an increment is a relaxed load and store (no locked instruction), and
//! readers sum the workers at read time. Every block is cache-line aligned
//! so workers never share a line.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::drop_reason::DropReason;
pub use podswitch_api::stats::{DatapathStats, DropStat, PortStats, WorkerPollStats};

/// A single-writer counter.
#[derive(Debug, Default)]
#[repr(transparent)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the owning worker calls this (single writer).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-stage throughput counters of one worker.
#[derive(Debug, Default)]
pub struct StageCounters {
    /// Frames read from ports.
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    /// Frames written to ports.
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// Batches processed and the frames in them.
    pub batches: Counter,
    /// ARP requests answered for the gateway (proxy ARP).
    pub arp_replies: Counter,
    /// ICMP echo requests to the gateway answered.
    pub icmp_echo_replies: Counter,
    /// ICMP errors generated (time exceeded, unreachable).
    pub icmp_errors_sent: Counter,
    /// Packets routed to a local pod.
    pub forwarded_local: Counter,
    /// Packets routed to another node over the overlay.
    pub forwarded_overlay: Counter,
    /// VXLAN datagrams sent and received (after segmentation / before coalescing).
    pub vxlan_tx: Counter,
    pub vxlan_rx: Counter,
    /// TCP superframes handed to the node's kernel whole through the
    /// tunnel port (UDP-tunnel GSO); their datagrams count in `vxlan_tx`.
    pub vxlan_tx_tunnel_gso: Counter,
    /// Datagrams that carried a whole TCP superframe (sent with
    /// UDP-tunnel GSO across a veth), delivered to pods as one.
    pub vxlan_rx_superframes: Counter,
    /// Decapsulated TCP segments merged into a superframe (receive GRO).
    pub gro_merged: Counter,
    /// GSO superframes forwarded whole (no software segmentation).
    pub gso_superframes: Counter,
    /// Packets the fast path took from frame to verdict (the rest of the
    /// batch went stage by stage).
    pub fast_path: Counter,
    /// Partial checksums completed in software for a port without offload.
    pub csum_completed: Counter,
    /// Flows created in the conntrack table by this worker.
    pub ct_created: Counter,
    /// SYNs that reused the tuple of a closed or TIME_WAIT service flow and
    /// were load-balanced afresh (the old flow retired).
    pub ct_reopened: Counter,
    /// New service flows that followed a session-affinity record.
    pub lb_affinity_hits: Counter,
    /// TCP resets sent for segments of flows that no longer exist.
    pub tcp_resets_sent: Counter,
    /// ICMP errors about tracked flows translated (RELATED).
    pub icmp_related_translated: Counter,
    /// Frames copied into a packet capture's ring (`ctl capture`).
    pub capture_frames: Counter,
    /// Frames a capture selected but lost because its ring was full.
    pub capture_ring_drops: Counter,
}

/// Where one worker's time goes and how often it wakes
/// ([`crate::worker::poll`]). The three times add up to the worker's wall
/// time.
#[derive(Debug, Default)]
pub struct PollCounters {
    /// Nanoseconds in loop iterations that moved frames (reading,
    /// the pipeline, writing).
    pub working_ns: Counter,
    /// Nanoseconds busy-polling without finding a frame.
    pub polling_ns: Counter,
    /// Nanoseconds parked in epoll.
    pub sleeping_ns: Counter,
    /// Returns from a parked epoll wait with an event (the thread was
    /// woken).
    pub wakeups: Counter,
    /// Busy polls (zero-timeout epoll waits) that found nothing.
    pub empty_polls: Counter,
    /// Yields between busy polls that gave the core to another thread
    /// (then the adaptive mode parks until the next frame).
    pub contended_yields: Counter,
}

/// One worker's [`PollCounters`], as reported.
pub fn poll_stats(c: &PollCounters) -> WorkerPollStats {
    WorkerPollStats {
        working_ns: c.working_ns.get(),
        polling_ns: c.polling_ns.get(),
        sleeping_ns: c.sleeping_ns.get(),
        wakeups: c.wakeups.get(),
        empty_polls: c.empty_polls.get(),
        contended_yields: c.contended_yields.get(),
    }
}

/// All counters of one worker.
#[derive(Debug)]
#[repr(align(64))]
pub struct WorkerCounters {
    pub stages: StageCounters,
    pub poll: PollCounters,
    pub drop_packets: [Counter; DropReason::COUNT],
    pub drop_bytes: [Counter; DropReason::COUNT],
}

impl Default for WorkerCounters {
    fn default() -> Self {
        Self {
            stages: StageCounters::default(),
            poll: PollCounters::default(),
            drop_packets: std::array::from_fn(|_| Counter::default()),
            drop_bytes: std::array::from_fn(|_| Counter::default()),
        }
    }
}

impl WorkerCounters {
    #[inline]
    pub fn count_drop(&self, reason: DropReason, bytes: usize) {
        self.drop_packets[reason as usize].inc();
        self.drop_bytes[reason as usize].add(bytes as u64);
    }
}

/// Per-port counters, one slot per worker.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct PortWorkerCounters {
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub rx_drops: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    pub tx_drops: Counter,
}

/// Summed per-port counters, as the control API reports them.
pub fn port_stats(slots: &[PortWorkerCounters]) -> PortStats {
    let mut s = PortStats::default();
    for c in slots {
        s.rx_packets += c.rx_packets.get();
        s.rx_bytes += c.rx_bytes.get();
        s.rx_drops += c.rx_drops.get();
        s.tx_packets += c.tx_packets.get();
        s.tx_bytes += c.tx_bytes.get();
        s.tx_drops += c.tx_drops.get();
    }
    s
}

/// Summed worker counters, as the control API reports them.
pub fn datapath_stats(workers: &[std::sync::Arc<WorkerCounters>]) -> DatapathStats {
    let mut s = DatapathStats::default();
    for w in workers {
        let c = &w.stages;
        s.rx_packets += c.rx_packets.get();
        s.rx_bytes += c.rx_bytes.get();
        s.tx_packets += c.tx_packets.get();
        s.tx_bytes += c.tx_bytes.get();
        s.batches += c.batches.get();
        s.arp_replies += c.arp_replies.get();
        s.icmp_echo_replies += c.icmp_echo_replies.get();
        s.icmp_errors_sent += c.icmp_errors_sent.get();
        s.forwarded_local += c.forwarded_local.get();
        s.forwarded_overlay += c.forwarded_overlay.get();
        s.vxlan_tx += c.vxlan_tx.get();
        s.vxlan_rx += c.vxlan_rx.get();
        s.vxlan_tx_tunnel_gso += c.vxlan_tx_tunnel_gso.get();
        s.vxlan_rx_superframes += c.vxlan_rx_superframes.get();
        s.gro_merged += c.gro_merged.get();
        s.gso_superframes += c.gso_superframes.get();
        s.fast_path += c.fast_path.get();
        s.csum_completed += c.csum_completed.get();
        s.capture_frames += c.capture_frames.get();
        s.capture_ring_drops += c.capture_ring_drops.get();
    }
    s.workers = workers.iter().map(|w| poll_stats(&w.poll)).collect();
    for r in DropReason::ALL {
        let packets: u64 = workers
            .iter()
            .map(|w| w.drop_packets[*r as usize].get())
            .sum();
        let bytes: u64 = workers
            .iter()
            .map(|w| w.drop_bytes[*r as usize].get())
            .sum();
        if packets > 0 {
            s.drops.push(DropStat {
                stage: r.stage().name().to_string(),
                reason: r.name().to_string(),
                description: r.description().to_string(),
                packets,
                bytes,
            });
        }
    }
    s
}
