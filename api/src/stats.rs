//! Counters as the control API reports them: the datapath's totals, per
//! drop reason, per worker (where its time went) and per port.

use serde::{Deserialize, Serialize};

/// One worker's [`PollCounters`], as reported.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerPollStats {
    pub working_ns: u64,
    pub polling_ns: u64,
    pub sleeping_ns: u64,
    pub wakeups: u64,
    pub empty_polls: u64,
    #[serde(default)]
    pub contended_yields: u64,
}

/// Summed per-port counters, as the control API reports them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_drops: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
}

/// One drop reason's totals, as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropStat {
    pub stage: String,
    pub reason: String,
    pub description: String,
    pub packets: u64,
    pub bytes: u64,
}

/// Summed worker counters, as the control API reports them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatapathStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub batches: u64,
    pub arp_replies: u64,
    pub icmp_echo_replies: u64,
    pub icmp_errors_sent: u64,
    pub forwarded_local: u64,
    #[serde(default)]
    pub forwarded_overlay: u64,
    #[serde(default)]
    pub vxlan_tx: u64,
    #[serde(default)]
    pub vxlan_rx: u64,
    #[serde(default)]
    pub vxlan_tx_tunnel_gso: u64,
    #[serde(default)]
    pub vxlan_rx_superframes: u64,
    #[serde(default)]
    pub gro_merged: u64,
    pub gso_superframes: u64,
    /// Packets the fast path took from frame to verdict.
    #[serde(default)]
    pub fast_path: u64,
    pub csum_completed: u64,
    /// Frames copied into packet captures, and those lost to a full ring.
    #[serde(default)]
    pub capture_frames: u64,
    #[serde(default)]
    pub capture_ring_drops: u64,
    /// Non-zero drop reasons only.
    pub drops: Vec<DropStat>,
    /// Per worker, in worker order: where its time went.
    #[serde(default)]
    pub workers: Vec<WorkerPollStats>,
}

impl DatapathStats {
    /// Packets dropped for `reason` (by its snake_case name).
    pub fn drops_of(&self, reason: &str) -> u64 {
        self.drops
            .iter()
            .filter(|d| d.reason == reason)
            .map(|d| d.packets)
            .sum()
    }
}
