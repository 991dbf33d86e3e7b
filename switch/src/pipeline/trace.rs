//! A dry run of the pipeline for one synthetic packet (`podswitch ctl
//! trace`, like `vppctl trace` or Cilium's policy trace): the packet is
//! built as its ingress port would send it, run through the same stages
//! the workers run, and each stage's outcome is reported. Nothing is sent.
//!
//! The run uses a private flow table, seeded from the live one: the flow
//! the tuple already belongs to (either direction) and the client's
//! session-affinity record for the Service, if they exist, are copied in
//! (lookups only: the live table is never written). So the trace shows
//! what a worker decides for this packet now: an existing flow keeps its
//! backend and translation (a TCP packet of an existing flow is traced as
//! an ACK of it, a new one as a SYN), an affinity record pins the backend,
//! and otherwise Maglev picks the backend a worker would (it hashes the
//! tuple; the tables are the live ones).

use std::sync::Arc;
use std::time::Instant;

use etherparse::PacketBuilder;

use super::{nat, Batch, Pipeline, Verdict};
use crate::conntrack::{ConnTrack, ConntrackConfig, FlowKey};
use crate::metrics::WorkerCounters;
use crate::tables::services::AFFINITY_PROTO;
use crate::tables::{PortId, Tables};
use crate::wire::vnet_hdr;

pub use podswitch_api::trace::{StageStep, Trace, TracePacket};

/// The IP protocol number of a trace packet's `proto`.
fn proto_number(proto: &str) -> Result<u8, String> {
    match proto {
        "tcp" => Ok(6),
        "udp" => Ok(17),
        "icmp" => Ok(1),
        other => Err(format!("proto {other:?} is not tcp, udp or icmp")),
    }
}

/// The tuple the conntrack stage will see for `pkt` (for an echo request
/// the identifier is the source "port").
fn tuple_of(pkt: &TracePacket, proto: u8) -> FlowKey {
    let dport = if proto == 1 { 0 } else { pkt.dport };
    FlowKey::new(pkt.src, pkt.sport, pkt.dst, dport, proto)
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
/// gateway's), with an empty vnet header; a TCP segment is a SYN, or an
/// ACK when `established`.
fn build(
    tables: &Tables,
    ingress: PortId,
    pkt: &TracePacket,
    established: bool,
) -> Result<Vec<u8>, String> {
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
        "tcp" if established => b
            .tcp(pkt.sport, pkt.dport, 1, 64240)
            .ack(1)
            .write(&mut frame, &[]),
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

/// Runs `pkt` from port `ingress` through the stages over `tables`, with
/// the flow and affinity record `live` holds for it copied into a private
/// flow table (`None`: as if the live table were empty).
///
/// # Errors
/// An unknown port or protocol.
pub fn trace(
    tables: &Tables,
    ingress: PortId,
    pkt: &TracePacket,
    live: Option<&ConnTrack>,
) -> Result<Trace, String> {
    let proto = proto_number(&pkt.proto)?;
    let key = tuple_of(pkt, proto);
    let ct = Arc::new(ConnTrack::new(
        ConntrackConfig {
            max_flows: 16,
            ..Default::default()
        },
        1,
    ));
    let now = Instant::now();
    let now_s = ct.clock(now);
    let existing = live.and_then(|l| l.copy_flow(&key));
    if let Some(f) = &existing {
        let _ = ct.insert_copy(f, now_s);
    }
    // The client's affinity record for the Service it addresses.
    let svc = &*tables.services;
    let affinity = svc
        .frontend(key.dst, key.dport, proto)
        .and_then(|f| svc.fronts.get(f as usize))
        .filter(|fr| fr.affinity_secs > 0)
        .and_then(|fr| {
            let ak = FlowKey::new(key.src, u16::from(proto), fr.ip, fr.port, AFFINITY_PROTO);
            live.and_then(|l| l.copy_flow(&ak))
        });
    if let Some(a) = &affinity {
        let _ = ct.insert_copy(a, now_s);
    }
    let frame = build(tables, ingress, pkt, existing.is_some())?;
    let counters = Arc::new(WorkerCounters::default());
    let mut pl = Pipeline::with_conntrack(Arc::clone(&counters), ct, 0, 1);
    let mut batch = Batch::new(1);
    batch.push_bytes(ingress, &frame);
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
        existing_flow: existing.map(|f| f.info),
        affinity_backend: affinity.map(|a| {
            let b = a.reply_key();
            format!("{}:{}", b.src, b.sport)
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::net::Ipv4Addr;

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
            None,
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
            None,
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
            },
            None,
        )
        .is_err());
    }

    fn to_vip(sport: u16) -> TracePacket {
        TracePacket {
            src: POD_A.into(),
            dst: VIP.into(),
            proto: "tcp".into(),
            sport,
            dport: 8080,
        }
    }

    /// The backend a trace sent the packet to (the tuple after conntrack).
    fn backend(r: &Trace) -> Ipv4Addr {
        r.steps[1].tuple.expect("tuple").dst
    }

    #[test]
    fn an_existing_live_flow_keeps_its_backend_and_the_live_table_is_not_written() {
        let t = svc_tables(&[(POD_B, false), (POD_C, false)], None);
        let live = ConnTrack::new(ConntrackConfig::default(), 1);
        let fresh = trace(&t, 0, &to_vip(40000), Some(&live)).unwrap();
        assert!(fresh.existing_flow.is_none());
        assert_eq!(live.len(), 0, "a dry run creates no live flow");
        // A live flow to the backend Maglev does not pick for this tuple
        // (as after an endpoint change): the trace must follow the flow.
        let other: Ipv4Addr = if backend(&fresh) == Ipv4Addr::from(POD_B) {
            POD_C.into()
        } else {
            POD_B.into()
        };
        let orig = FlowKey::new(POD_A.into(), 40000, VIP.into(), 8080, 6);
        let reply = FlowKey::new(other, 80, POD_A.into(), 40000, 6);
        live.insert(
            orig,
            Some(reply),
            crate::conntrack::FlowState::Established,
            0,
            0,
            0,
            0,
        )
        .unwrap();
        let r = trace(&t, 0, &to_vip(40000), Some(&live)).unwrap();
        assert_eq!(backend(&r), other);
        assert_eq!(r.steps[1].tuple.unwrap().dport, 80);
        let f = r.existing_flow.expect("the live flow is reported");
        assert_eq!(f.orig, orig);
        assert_eq!(live.len(), 1);
        // Without the live table the trace is Maglev's pick again.
        assert_eq!(
            backend(&trace(&t, 0, &to_vip(40000), None).unwrap()),
            backend(&fresh)
        );
    }

    #[test]
    fn an_affinity_record_pins_the_backend_of_a_new_flow() {
        let t = svc_tables(&[(POD_B, false), (POD_C, false)], Some(60));
        let live = ConnTrack::new(ConntrackConfig::default(), 1);
        // Find a source port Maglev sends to POD_C, then pin the client to
        // POD_B with an affinity record.
        let sport = (40000..41000)
            .find(|&p| backend(&trace(&t, 0, &to_vip(p), None).unwrap()) == Ipv4Addr::from(POD_C))
            .expect("Maglev spreads 1000 ports over both backends");
        let ak = FlowKey::new(POD_A.into(), 6, VIP.into(), 8080, AFFINITY_PROTO);
        let payload = FlowKey::new(POD_B.into(), 80, VIP.into(), 8080, AFFINITY_PROTO);
        live.insert_record(ak, payload, 0, 60).unwrap();
        let r = trace(&t, 0, &to_vip(sport), Some(&live)).unwrap();
        assert_eq!(backend(&r), Ipv4Addr::from(POD_B));
        assert_eq!(r.affinity_backend.as_deref(), Some("10.244.1.3:80"));
        assert!(r.existing_flow.is_none());
    }
}
