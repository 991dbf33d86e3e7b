//! Stage 4, route: longest-prefix match on the destination, TTL, MAC
//! rewrite, and the ICMP errors a router owes its senders.
//!
//! - A local pod: TTL decremented (RFC 1812 §5.3.1, checksum patched per
//!   RFC 1624), Ethernet rewritten gateway -> pod, forwarded to its port.
//!   The vnet header is left as it is, so a TSO superframe or a partial
//!   checksum reaches the destination tap unchanged (no segmentation).
//! - TTL 1 or 0: ICMP time exceeded (type 11 code 0).
//! - Inside a local pod CIDR without a pod: ICMP host unreachable (3/1).
//! - No route: ICMP net unreachable (3/0).
//! - Larger than the destination's MTU with DF: ICMP fragmentation needed
//!   (3/4) with the destination MTU (RFC 1191), so PMTU discovery works.

use std::net::IpAddr;
use std::time::Instant;

use etherparse::{icmpv4::DestUnreachableHeader, icmpv4::TimeExceededCode, Icmpv4Type};

use super::icmp_error::{error_allowed, rewrite_as_error, RateLimit};
use super::parse::ETH_LEN;
use super::{drop_packet, Batch, DropReason, Packet, Verdict, L3};
use crate::metrics::WorkerCounters;
use crate::tables::{PortKind, RouteTarget, Tables};
use crate::wire::checksum;

/// The size each wire packet will have on the next hop: the datagram, or
/// for a superframe one segment plus its headers.
fn wire_len(m: &super::Meta) -> u32 {
    if m.vnet.is_gso() {
        u32::from(m.l4_off) - ETH_LEN as u32 + u32::from(m.l4_hdr_len) + u32::from(m.vnet.gso_size)
    } else {
        u32::from(m.ip_len)
    }
}

/// The overlay's MTU: the underlay's minus the encapsulation, the MTU
/// the overlay port was given.
#[inline]
fn overlay_mtu(tables: &Tables, ov: &crate::tables::Overlay) -> u32 {
    tables.port(ov.port).map(|port| port.mtu).unwrap_or(1450)
}

/// The rewrite of a forwarded IPv4 frame: Ethernet to the next hop, TTL
/// decremented (RFC 1812 §5.3.1) with the header checksum patched.
/// The caller has checked that the frame holds the IPv4 header.
#[inline(always)]
fn rewrite_for_next_hop(p: &mut Packet, dst_mac: &[u8; 6], src_mac: &[u8; 6]) {
    // One fixed-size view: Ethernet and the IPv4 header up to its checksum.
    if let Some(h) = p
        .frame_mut()
        .get_mut(..ETH_LEN + 12)
        .and_then(|h| <&mut [u8; ETH_LEN + 12]>::try_from(h).ok())
    {
        h[0..6].copy_from_slice(dst_mac);
        h[6..12].copy_from_slice(src_mac);
        checksum::ipv4_decrement_ttl(&mut h[ETH_LEN..]);
    }
    p.meta.ttl -= 1;
}

/// Where [`RouteStage::route_one`] forwards a whole (non-GSO) IPv4
/// datagram from a pod to one destination address, when it forwards it:
/// what it derives from the tables for that address, resolved once so
/// that the fast path can route the other datagrams of a batch to the
/// same address without the longest-prefix match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PodHop {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    /// The largest datagram (IPv4 total length) forwarded as it is.
    mtu: u32,
    /// `Forward` to a local port or `Encap` to an overlay node.
    verdict: Verdict,
}

/// Whether a packet to `dst` must not go to the node's kernel: a Service
/// address or the service ranges ([`ServiceTable::must_not_route`]). Out
/// of line: only packets to the host port ask.
///
/// [`ServiceTable::must_not_route`]: crate::tables::services::ServiceTable::must_not_route
#[cold]
#[inline(never)]
fn not_for_the_host(tables: &Tables, dst: std::net::Ipv4Addr) -> bool {
    tables.services.must_not_route(dst)
}

impl PodHop {
    /// The hop `route_one` forwards such a datagram to `dst` by; `None`
    /// where it would not forward it (no route, an unassigned pod
    /// address, a port or node missing from the tables), so that
    /// `route_one` must handle the packet.
    pub(super) fn resolve(tables: &Tables, dst: std::net::Ipv4Addr) -> Option<PodHop> {
        match tables.routes.lookup_v4(dst)? {
            RouteTarget::Local(port) => {
                let to = tables.port(port)?;
                if to.kind == PortKind::Host && not_for_the_host(tables, dst) {
                    return None;
                }
                Some(PodHop {
                    dst_mac: to.mac,
                    src_mac: tables.gateway.mac,
                    mtu: to.mtu,
                    verdict: Verdict::Forward { port },
                })
            }
            RouteTarget::Node(node) => {
                let ov = tables.overlay.as_ref()?;
                let remote = ov.nodes.get(usize::from(node))?;
                Some(PodHop {
                    dst_mac: remote.vtep_mac,
                    src_mac: ov.vtep_mac,
                    mtu: overlay_mtu(tables, ov),
                    verdict: Verdict::Encap { node },
                })
            }
            RouteTarget::Unassigned => None,
        }
    }

    /// Forwards `p` (a whole IPv4 datagram from a pod, to the address the
    /// hop was resolved for) exactly as `route_one` would, unless it is
    /// one `route_one` answers with an ICMP error (TTL expiring, larger
    /// than the MTU): then it returns false and leaves `p` untouched.
    #[inline]
    pub(super) fn forward(&self, p: &mut Packet, c: &WorkerCounters) -> bool {
        if p.meta.ttl <= 1 || u32::from(p.meta.ip_len) > self.mtu {
            return false;
        }
        rewrite_for_next_hop(p, &self.dst_mac, &self.src_mac);
        match self.verdict {
            Verdict::Encap { .. } => c.stages.forwarded_overlay.inc(),
            _ => c.stages.forwarded_local.inc(),
        }
        p.verdict = self.verdict;
        true
    }
}

/// ICMP errors per second per worker, and the burst allowed.
pub const ICMP_ERROR_RATE: u32 = 1000;
pub const ICMP_ERROR_BURST: u32 = 200;

/// The route stage; owns the worker's ICMP error rate limiter.
#[derive(Debug)]
pub struct RouteStage {
    icmp_limit: RateLimit,
    /// ICMP errors built since [`RouteStage::take_errors_built`] was last
    /// asked (their packets carry `Meta::own_icmp_error`).
    errors_built: usize,
}

impl Default for RouteStage {
    fn default() -> Self {
        Self::new()
    }
}

impl RouteStage {
    pub fn new() -> Self {
        RouteStage {
            icmp_limit: RateLimit::new(ICMP_ERROR_RATE, ICMP_ERROR_BURST),
            errors_built: 0,
        }
    }

    /// How many ICMP errors this stage built since the last call.
    #[inline]
    pub fn take_errors_built(&mut self) -> usize {
        std::mem::take(&mut self.errors_built)
    }

    pub fn process(
        &mut self,
        batch: &mut Batch,
        tables: &Tables,
        c: &WorkerCounters,
        now: Instant,
    ) {
        for p in batch.packets_mut() {
            if !p.pending() || p.meta.l3 != L3::Ipv4 {
                continue;
            }
            self.route_one(p, tables, c, now);
        }
    }

    /// Routes one parsed, pending IPv4 packet (the fast path calls this
    /// for the packets it takes, so both paths route alike).
    #[inline]
    pub fn route_one(&mut self, p: &mut Packet, tables: &Tables, c: &WorkerCounters, now: Instant) {
        {
            match tables.routes.lookup(p.meta.dst) {
                Some(RouteTarget::Local(port)) => self.forward_local(p, port, tables, c, now),
                Some(RouteTarget::Node(node)) => self.forward_remote(p, node, tables, c, now),
                Some(RouteTarget::Unassigned) => self.error(
                    p,
                    tables,
                    c,
                    now,
                    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
                    DropReason::HostUnreachable,
                ),
                None => self.error(
                    p,
                    tables,
                    c,
                    now,
                    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Network),
                    DropReason::NoRoute,
                ),
            }
        }
    }

    fn forward_local(
        &mut self,
        p: &mut Packet,
        port: u32,
        tables: &Tables,
        c: &WorkerCounters,
        now: Instant,
    ) {
        let Some(dst) = tables.port(port) else {
            drop_packet(p, DropReason::HostUnreachable, c);
            return;
        };
        // Toward the node's kernel, which routes the service ranges back
        // here: whatever conntrack did not translate stops (issue 23).
        if dst.kind == PortKind::Host {
            if let IpAddr::V4(to) = p.meta.dst {
                if not_for_the_host(tables, to) {
                    drop_packet(p, DropReason::ServiceAddressNotRouted, c);
                    return;
                }
            }
        }
        if self.ttl_expired(p, tables, c, now) {
            return;
        }
        let m = &p.meta;
        let (wire_len, dont_fragment, gso) = (wire_len(m), m.dont_fragment, m.vnet.is_gso());
        // Pods get path MTU feedback. Frames from the overlay or the node's
        // stack may be larger than the pod MTU because the receive path
        // coalesced them (GRO/LRO upstream); they are delivered whole, as
        // the kernel delivers a GRO packet, and the pod's stack takes them.
        let from_pod = tables.port(p.ingress).map(|x| x.kind) == Some(crate::tables::PortKind::Pod);
        if from_pod && wire_len > dst.mtu {
            if dont_fragment || gso {
                let mtu = dst.mtu.min(u32::from(u16::MAX)) as u16;
                self.error(
                    p,
                    tables,
                    c,
                    now,
                    Icmpv4Type::DestinationUnreachable(
                        DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
                    ),
                    DropReason::FrameOverMtu,
                );
            } else {
                // Fragmenting in the switch is not done: pods share the node MTU.
                drop_packet(p, DropReason::FrameOverMtu, c);
            }
            return;
        }
        rewrite_for_next_hop(p, &dst.mac, &tables.gateway.mac);
        if p.meta.vnet.is_gso() {
            c.stages.gso_superframes.inc();
        }
        c.stages.forwarded_local.inc();
        p.verdict = Verdict::Forward { port };
    }

    /// To a pod on another node over VXLAN: TTL, inner Ethernet rewritten to
    /// our VTEP MAC -> the remote VTEP MAC (what a kernel vxlan device with
    /// flannel's neighbour entries expects), MTU checked against the pod MTU
    /// (already the underlay MTU minus the encapsulation overhead).
    fn forward_remote(
        &mut self,
        p: &mut Packet,
        node: u16,
        tables: &Tables,
        c: &WorkerCounters,
        now: Instant,
    ) {
        let Some(ov) = &tables.overlay else {
            drop_packet(p, DropReason::NoRoute, c);
            return;
        };
        let Some(remote) = ov.nodes.get(usize::from(node)) else {
            drop_packet(p, DropReason::NoRoute, c);
            return;
        };
        if self.ttl_expired(p, tables, c, now) {
            return;
        }
        // The overlay's MTU: the underlay's minus the encapsulation, the MTU
        // the overlay port was given.
        let mtu = overlay_mtu(tables, ov);
        let wire_len = wire_len(&p.meta);
        if wire_len > mtu {
            let mtu = mtu.min(u32::from(u16::MAX)) as u16;
            self.error(
                p,
                tables,
                c,
                now,
                Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: mtu,
                }),
                DropReason::FrameOverMtu,
            );
            return;
        }
        rewrite_for_next_hop(p, &remote.vtep_mac, &ov.vtep_mac);
        c.stages.forwarded_overlay.inc();
        p.verdict = Verdict::Encap { node };
    }

    /// TTL 1 or 0: answered with ICMP time exceeded (RFC 1812 §5.3.1).
    fn ttl_expired(
        &mut self,
        p: &mut Packet,
        tables: &Tables,
        c: &WorkerCounters,
        now: Instant,
    ) -> bool {
        if p.meta.ttl > 1 {
            return false;
        }
        self.error(
            p,
            tables,
            c,
            now,
            Icmpv4Type::TimeExceeded(TimeExceededCode::TtlExceededInTransit),
            DropReason::TtlExpired,
        );
        true
    }

    /// Drops the packet for `reason` and, where allowed, replaces it with
    /// an ICMP error back to its sender.
    fn error(
        &mut self,
        p: &mut Packet,
        tables: &Tables,
        c: &WorkerCounters,
        now: Instant,
        icmp: Icmpv4Type,
        reason: DropReason,
    ) {
        c.count_drop(reason, p.len());
        if error_allowed(p)
            && self.icmp_limit.allow(now)
            && rewrite_as_error(p, &tables.gateway, icmp)
        {
            p.meta.own_icmp_error = true;
            self.errors_built += 1;
            c.stages.icmp_errors_sent.inc();
        } else {
            c.count_drop(DropReason::IcmpErrorSuppressed, 0);
            p.verdict = Verdict::Drop(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Batch, Pipeline, Verdict};
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn run(frames: &[Vec<u8>]) -> Vec<(Verdict, Vec<u8>)> {
        let t = tables();
        let mut pl = Pipeline::new(counters());
        let mut b = Batch::new(frames.len());
        for f in frames {
            b.push_bytes(0, f);
        }
        pl.process(&mut b, &t, Instant::now());
        b.packets()
            .iter()
            .map(|p| (p.verdict, p.data().to_vec()))
            .collect()
    }

    fn icmp_of(out: &[u8]) -> (u8, u8, [u8; 4], Vec<u8>) {
        let s = SlicedPacket::from_ethernet(&out[VNET..]).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!("not ipv4")
        };
        assert_eq!(checksum::checksum(ip.header().slice()), 0);
        let dst = ip.header().destination();
        let Some(TransportSlice::Icmpv4(icmp)) = s.transport else {
            panic!("not icmp")
        };
        assert_eq!(checksum::checksum(icmp.slice()), 0, "icmp checksum");
        (icmp.type_u8(), icmp.code_u8(), dst, icmp.slice().to_vec())
    }

    //   pod A (10.244.1.2) --> [switch] --> pod B (10.244.1.3)
    #[test]
    fn pod_to_pod_forward_v4() {
        let out = run(&[udp_frame(POD_A, POD_B, 100)]);
        assert_eq!(out[0].0, Verdict::Forward { port: 1 });
        let f = &out[0].1[VNET..];
        assert_eq!(&f[0..6], &mac_of(POD_B));
        assert_eq!(&f[6..12], &GW_MAC);
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..]).unwrap();
        assert_eq!(ip.ttl(), 63);
        assert_eq!(checksum::checksum(ip.slice()), 0);
    }

    #[test]
    fn tso_superframe_forwarded_whole() {
        let mut f = tcp_frame(POD_A, POD_B, 20000);
        set_vnet(&mut f, 1, crate::wire::vnet_hdr::gso::TCPV4, 1448, 34, 16);
        let out = run(&[f.clone()]);
        assert_eq!(out[0].0, Verdict::Forward { port: 1 });
        assert_eq!(out[0].1.len(), f.len());
        assert_eq!(&out[0].1[..VNET], &f[..VNET], "vnet header unchanged");
    }

    #[test]
    fn ttl_expiry_answered_with_time_exceeded() {
        let out = run(&[icmp_echo_frame(POD_A, POD_B, 1)]);
        assert_eq!(out[0].0, Verdict::Reply);
        let (t, code, dst, body) = icmp_of(&out[0].1);
        assert_eq!((t, code, dst), (11, 0, POD_A));
        // The quote starts with the original IP header.
        assert_eq!(&body[8 + 12..8 + 16], &POD_A);
    }

    #[test]
    fn unassigned_pod_address_answered_with_host_unreachable() {
        let out = run(&[udp_frame(POD_A, [10, 244, 1, 99], 10)]);
        assert_eq!(out[0].0, Verdict::Reply);
        let (t, code, ..) = icmp_of(&out[0].1);
        assert_eq!((t, code), (3, 1));
    }

    #[test]
    fn no_route_answered_with_net_unreachable() {
        let out = run(&[udp_frame(POD_A, [192, 0, 2, 1], 10)]);
        let (t, c, ..) = icmp_of(&out[0].1);
        assert_eq!((t, c), (3, 0));
    }

    #[test]
    fn oversize_df_to_smaller_mtu_gets_frag_needed() {
        // pod C has MTU 1400; a 1472-byte UDP payload with DF.
        let mut f = udp_frame(POD_A, POD_C, 1472);
        f[VNET + 14 + 6] |= 0x40;
        let len = (f.len() - VNET - 14) as u16;
        fix_ipv4(&mut f, len);
        let out = run(&[f]);
        assert_eq!(out[0].0, Verdict::Reply);
        let (t, c, _, body) = icmp_of(&out[0].1);
        assert_eq!((t, c), (3, 4));
        assert_eq!(u16::from_be_bytes([body[6], body[7]]), 1400);
    }

    #[test]
    fn no_error_about_an_error() {
        // A time-exceeded ICMP from A with TTL 1: no error back.
        let b = etherparse::PacketBuilder::ethernet2(mac_of(POD_A), GW_MAC)
            .ipv4(POD_A, POD_B, 1)
            .icmpv4(Icmpv4Type::TimeExceeded(
                TimeExceededCode::TtlExceededInTransit,
            ));
        let mut f = vec![0u8; VNET];
        b.write(&mut f, &[0u8; 28]).unwrap();
        let out = run(&[f]);
        assert_eq!(out[0].0, Verdict::Drop(DropReason::TtlExpired));
    }

    #[test]
    fn icmp_errors_are_rate_limited() {
        let frames: Vec<_> = (0..(ICMP_ERROR_BURST as usize + 10))
            .map(|_| udp_frame(POD_A, [10, 244, 1, 99], 10))
            .collect();
        let out = run(&frames);
        let replies = out.iter().filter(|o| o.0 == Verdict::Reply).count();
        assert_eq!(replies, ICMP_ERROR_BURST as usize);
    }
}
