//! The flow table as the control API shows and configures it: a flow's
//! tuple and state, the table's size and timeouts. The switch's flow table
//! (`podswitch_switch::conntrack`) stores these types; they carry no
//! datapath logic beyond the state names and the timeout of each.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// A flow's tuple in one direction (IPv4). For ICMP echo the identifier
/// is the source "port" of a request and the destination "port" of a
/// reply, so reversing a tuple works for all three protocols alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FlowKey {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

impl FlowKey {
    #[inline]
    pub fn new(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, proto: u8) -> Self {
        FlowKey {
            src,
            dst,
            sport,
            dport,
            proto,
        }
    }

    /// The tuple of a packet going the other way.
    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// The key packed in two words, as the flow table stores it.
    #[inline]
    pub fn words(&self) -> [u64; 2] {
        [
            (u64::from(u32::from(self.src)) << 32) | u64::from(u32::from(self.dst)),
            (u64::from(self.sport) << 48) | (u64::from(self.dport) << 32) | u64::from(self.proto),
        ]
    }

    /// The key back from [`FlowKey::words`].
    #[inline]
    pub fn from_words(w: [u64; 2]) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::from((w[0] >> 32) as u32),
            dst: Ipv4Addr::from(w[0] as u32),
            sport: (w[1] >> 48) as u16,
            dport: (w[1] >> 32) as u16,
            proto: w[1] as u8,
        }
    }
}

impl std::fmt::Display for FlowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = match self.proto {
            6 => "tcp",
            17 => "udp",
            1 => "icmp",
            _ => "ip",
        };
        write!(
            f,
            "{p} {}:{} -> {}:{}",
            self.src, self.sport, self.dst, self.dport
        )
    }
}

/// Flow state, stored as a `u8` in the shared table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum FlowState {
    /// The slot holds no flow.
    Free = 0,
    /// TCP: SYN seen from the originator.
    SynSent = 1,
    /// TCP: SYN+ACK seen from the responder.
    SynRecv = 2,
    /// TCP: the handshake completed.
    Established = 3,
    /// TCP: one side sent FIN.
    FinWait = 4,
    /// TCP: the other side acknowledged the first FIN (half-closed).
    CloseWait = 5,
    /// TCP: both sides sent FIN.
    LastAck = 6,
    /// TCP: the last FIN was acknowledged.
    TimeWait = 7,
    /// TCP: reset.
    Close = 8,
    /// UDP or ICMP echo: only the originator has sent.
    Unreplied = 9,
    /// UDP or ICMP echo: both directions seen.
    Replied = 10,
    /// A session-affinity record (not a flow).
    Affinity = 11,
}

impl FlowState {
    #[inline]
    pub fn from_u8(v: u8) -> FlowState {
        match v {
            1 => FlowState::SynSent,
            2 => FlowState::SynRecv,
            3 => FlowState::Established,
            4 => FlowState::FinWait,
            5 => FlowState::CloseWait,
            6 => FlowState::LastAck,
            7 => FlowState::TimeWait,
            8 => FlowState::Close,
            9 => FlowState::Unreplied,
            10 => FlowState::Replied,
            11 => FlowState::Affinity,
            _ => FlowState::Free,
        }
    }

    /// Established-like states: evicted last when the table is full.
    #[inline]
    pub fn is_established(self) -> bool {
        matches!(
            self,
            FlowState::Established | FlowState::Replied | FlowState::Affinity
        )
    }
}

/// Timeouts in seconds, per state. Defaults: the kernel's, with the values
/// kube-proxy sets (`--conntrack-tcp-timeout-established` 24 h,
/// `--conntrack-tcp-timeout-close-wait` 1 h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timeouts {
    pub tcp_syn_sent: u32,
    pub tcp_syn_recv: u32,
    pub tcp_established: u32,
    pub tcp_fin_wait: u32,
    pub tcp_close_wait: u32,
    pub tcp_last_ack: u32,
    pub tcp_time_wait: u32,
    pub tcp_close: u32,
    /// UDP seen in one direction only (a DNS query whose server died).
    pub udp_unreplied: u32,
    /// UDP seen both ways.
    pub udp_replied: u32,
    pub icmp: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 120,
            tcp_syn_recv: 60,
            tcp_established: 86_400,
            tcp_fin_wait: 120,
            tcp_close_wait: 3_600,
            tcp_last_ack: 30,
            tcp_time_wait: 120,
            tcp_close: 10,
            udp_unreplied: 30,
            udp_replied: 120,
            icmp: 30,
        }
    }
}

impl Timeouts {
    /// The idle timeout of a flow of `proto` in `state`.
    #[inline]
    pub fn of(&self, proto: u8, state: FlowState) -> u32 {
        use FlowState::*;
        match (proto, state) {
            (_, SynSent) => self.tcp_syn_sent,
            (_, SynRecv) => self.tcp_syn_recv,
            (_, Established) => self.tcp_established,
            (_, FinWait) => self.tcp_fin_wait,
            (_, CloseWait) => self.tcp_close_wait,
            (_, LastAck) => self.tcp_last_ack,
            (_, TimeWait) => self.tcp_time_wait,
            (_, Close) => self.tcp_close,
            (1, _) => self.icmp,
            (_, Unreplied) => self.udp_unreplied,
            (_, Replied) => self.udp_replied,
            (_, Affinity | Free) => 0,
        }
    }
}

/// A flow as the control side reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowInfo {
    pub index: u32,
    pub orig: FlowKey,
    pub reply: Option<FlowKey>,
    pub state: FlowState,
    pub flags: u8,
    /// Seconds since last packet.
    pub idle_secs: u32,
    /// Seconds left before expiry.
    pub expires_in_secs: u32,
}

/// Configuration of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConntrackConfig {
    /// The cap: flows (each indexed both ways) the table holds at most.
    pub max_flows: usize,
    pub timeouts: Timeouts,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            max_flows: 262_144,
            timeouts: Timeouts::default(),
        }
    }
}
