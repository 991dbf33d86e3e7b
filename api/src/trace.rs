//! `ctl trace`: a synthetic packet and what each pipeline stage did to it.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::flow::{FlowInfo, FlowKey};

/// The synthetic packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracePacket {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// `tcp` (a SYN), `udp` or `icmp` (an echo request).
    pub proto: String,
    #[serde(default)]
    pub sport: u16,
    #[serde(default)]
    pub dport: u16,
}

/// What one stage did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStep {
    pub stage: String,
    /// The verdict after the stage (`pending` while undecided).
    pub verdict: String,
    /// The packet's tuple after the stage.
    pub tuple: Option<FlowKey>,
}

/// The whole trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    pub ingress: String,
    pub steps: Vec<StageStep>,
    /// The final verdict, with the egress port's name when forwarded.
    pub verdict: String,
    pub egress: Option<String>,
    /// The live flow the packet belongs to, if any (its translation is
    /// what the trace applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing_flow: Option<FlowInfo>,
    /// The backend (`ip:port`) the client's session-affinity record pins,
    /// if the Service has affinity and the record exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity_backend: Option<String>,
}
