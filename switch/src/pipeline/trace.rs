//! A dry run of the pipeline for one synthetic packet (`podswitch ctl
//! trace`, like `vppctl trace` or Cilium's policy trace): the packet is
//! built as its ingress port would send it, run through the same stages
//! the workers run, and each stage's outcome is reported. Nothing is sent.
//!
//! The run uses a private, empty flow table, so it shows what the switch
//! decides for a *new* flow with this tuple: the same backend a worker
//! picks (Maglev hashes the tuple; the tables are the live ones), the same
//! translations and the same route. Session-affinity records and existing
//! flows of the live table are not consulted.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use etherparse::PacketBuilder;
use serde::{Deserialize, Serialize};

use super::{nat, Batch, Pipeline, Verdict};
use crate::conntrack::{ConnTrack, ConntrackConfig, FlowKey};
use crate::metrics::WorkerCounters;
use crate::tables::{PortId, Tables};
use crate::wire::vnet_hdr;

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
}

fn verdict_str(v: Verdict) -> String {
    match v {
        Verdict::Pending => "pending".into(),
        Verdict::Forward { port } => format!("forward port {port}"),
        Verdict::Reply => "reply to sender".into(),
        Verdict::Encap { node } => format!("encap to node {node}"),
        Verdict::Drop(r) => format!("drop {}", r.name()),
    }
}

/// Builds the frame `pkt` as port `ingress` would send it (its MAC to the
/// gateway's), with an empty vnet header.
fn build(tables: &Tables, ingress: PortId, pkt: &TracePacket) -> Result<Vec<u8>, String> {
    let port = tables
        .port(ingress)
        .ok_or_else(|| format!("no port {ingress}"))?;
    let b = PacketBuilder::ethernet2(port.mac, tables.gateway.mac).ipv4(
        pkt.src.octets(),
        pkt.dst.octets(),
        64,
    );
    let mut frame = vec![0u8; vnet_hdr::LEN];
    let r = match pkt.proto.as_str() {
        "tcp" => b
            .tcp(pkt.sport, pkt.dport, 1, 64240)
            .syn()
            .write(&mut frame, &[]),
        "udp" => b.udp(pkt.sport, pkt.dport).write(&mut frame, b"trace"),
        "icmp" => b
            .icmpv4_echo_request(pkt.sport, 1)
            .write(&mut frame, b"trace"),
        other => return Err(format!("proto {other:?} is not tcp, udp or icmp")),
    };
    r.map_err(|e| e.to_string())?;
    Ok(frame)
}

/// Runs `pkt` from port `ingress` through the stages over `tables`.
///
/// # Errors
/// An unknown port or protocol.
pub fn trace(tables: &Tables, ingress: PortId, pkt: &TracePacket) -> Result<Trace, String> {
    let frame = build(tables, ingress, pkt)?;
    let ct = Arc::new(ConnTrack::new(
        ConntrackConfig {
            max_flows: 16,
            ..Default::default()
        },
        1,
    ));
    let counters = Arc::new(WorkerCounters::default());
    let mut pl = Pipeline::with_conntrack(Arc::clone(&counters), ct, 0, 1);
    let mut batch = Batch::new(1);
    batch.push_bytes(ingress, &frame);
    let now = Instant::now();
    let c = &*counters;
    let mut steps = Vec::new();
    let record = |batch: &Batch, stage: &str, steps: &mut Vec<StageStep>| {
        let p = &batch.packets()[0];
        steps.push(StageStep {
            stage: stage.to_string(),
            verdict: verdict_str(p.verdict),
            tuple: nat::packet_tuple(p),
        });
    };
    pl.parse.process(&mut batch, tables, c);
    record(&batch, "parse", &mut steps);
    pl.conntrack.process(&mut batch, tables, c, now);
    record(&batch, "conntrack", &mut steps);
    pl.gateway.process(&mut batch, tables, c);
    record(&batch, "gateway", &mut steps);
    pl.route.process(&mut batch, tables, c, now);
    record(&batch, "route", &mut steps);
    pl.output.process(&mut batch, tables, c);
    record(&batch, "output", &mut steps);
    let v = batch.packets()[0].verdict;
    let egress = match v {
        Verdict::Forward { port } => tables.port(port).map(|p| p.pod.clone()),
        Verdict::Reply => tables.port(ingress).map(|p| p.pod.clone()),
        Verdict::Encap { node } => tables
            .overlay
            .as_ref()
            .and_then(|o| o.nodes.get(usize::from(node)))
            .map(|n| format!("node {} ({})", n.name, n.underlay_ipv4)),
        _ => None,
    };
    Ok(Trace {
        ingress: tables
            .port(ingress)
            .map(|p| p.pod.clone())
            .unwrap_or_default(),
        steps,
        verdict: verdict_str(v),
        egress,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    #[test]
    fn pod_to_pod_is_forwarded_and_nothing_is_tracked() {
        let t = tables();
        let r = trace(
            &t,
            0,
            &TracePacket {
                src: POD_A.into(),
                dst: POD_B.into(),
                proto: "tcp".into(),
                sport: 40000,
                dport: 80,
            },
        )
        .unwrap();
        assert_eq!(r.verdict, "forward port 1");
        assert_eq!(r.steps.len(), 5);
        assert_eq!(r.steps[0].verdict, "pending");
        let bad = trace(
            &t,
            0,
            &TracePacket {
                src: POD_A.into(),
                dst: POD_B.into(),
                proto: "sctp".into(),
                sport: 1,
                dport: 2,
            },
        );
        assert!(bad.is_err());
        assert!(trace(
            &t,
            77,
            &TracePacket {
                src: POD_A.into(),
                dst: POD_B.into(),
                proto: "udp".into(),
                sport: 1,
                dport: 2
            }
        )
        .is_err());
    }
}
