//! Stage 1, parse: validates the vnet header and the Ethernet, IP and L4
//! headers, enforces anti-spoofing and the ingress MTU, and fills
//! [`Meta`](super::Meta) for the later stages.
//!
//! Nothing a pod writes is trusted: every length and offset is checked
//! against the frame before a later stage touches it.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::{EtherType, Ethernet2HeaderSlice, IpNumber, Ipv4Slice, TcpHeaderSlice};

use super::{drop_packet, Batch, DropReason, Packet, L3};
use crate::metrics::WorkerCounters;
use crate::tables::{PortKind, RouteTarget, Tables};
use crate::wire::checksum;
use crate::wire::vnet_hdr::{self, GsoKind, VnetHdr};

/// Ethernet II header length.
pub const ETH_LEN: usize = 14;
/// Datagrams above this are dropped at ingress whatever the port MTU says
/// (jumbo frames); smaller ones over the port MTU meet the route stage's
/// path MTU check.
pub const MAX_INGRESS_MTU: u32 = 9216;

/// The parse stage (stateless).
#[derive(Debug, Default)]
pub struct ParseStage;

impl ParseStage {
    pub fn process(&mut self, batch: &mut Batch, tables: &Tables, c: &WorkerCounters) {
        for p in batch.packets_mut() {
            if p.pending() {
                if let Err(reason) = parse_one(p, tables) {
                    drop_packet(p, reason, c);
                }
            }
        }
    }
}

fn parse_one(p: &mut Packet, tables: &Tables) -> Result<(), DropReason> {
    if p.len() < vnet_hdr::LEN + ETH_LEN {
        return Err(DropReason::FrameTooShort);
    }
    let frame_len = p.len() - vnet_hdr::LEN;
    let hdr =
        VnetHdr::new_checked(&p.data()[..vnet_hdr::LEN]).map_err(|_| DropReason::FrameTooShort)?;
    // A plain frame (the common case) gets the constant, stored field by
    // field; a parsed `Repr` is built on the stack and copied in wider
    // loads than it was written with, which stalls the store buffer.
    if hdr.is_plain() {
        p.meta.vnet = vnet_hdr::Repr::NONE;
    } else {
        p.meta.vnet =
            vnet_hdr::Repr::parse(&hdr, frame_len).map_err(|_| DropReason::VnetHdrInvalid)?;
    }
    let port = tables
        .port(p.ingress)
        .ok_or(DropReason::UnknownIngressPort)?;
    let (src_mac, dst, ether_type) = {
        let eth =
            Ethernet2HeaderSlice::from_slice(p.frame()).map_err(|_| DropReason::FrameTooShort)?;
        (eth.source(), eth.destination(), eth.ether_type())
    };
    let is_pod = port.kind == PortKind::Pod;
    if is_pod && src_mac != port.mac {
        return Err(DropReason::SourceMacSpoofed);
    }
    let group = dst[0] & 1 == 1;
    if port.kind == PortKind::Overlay {
        // A remote VTEP addresses our VTEP MAC (RFC 7348 §4, flannel's
        // neighbour entries); nothing else is accepted from the overlay.
        if dst != port.mac {
            return Err(DropReason::DestinationMacNotGateway);
        }
    } else if !group && dst != tables.gateway.mac && port.kind != PortKind::Host {
        // The node's stack also hands over frames it received itself
        // (NodePort steering keeps the underlay's Ethernet header).
        return Err(DropReason::DestinationMacNotGateway);
    }
    p.meta.l3_off = ETH_LEN as u16;
    match ether_type {
        EtherType::ARP => {
            if p.meta.vnet.is_gso() {
                return Err(DropReason::GsoMismatch);
            }
            p.meta.l3 = L3::Arp;
            Ok(())
        }
        EtherType::IPV4 => {
            parse_ipv4(p, is_pod.then_some(port.ipv4), port.mtu)?;
            if port.kind == PortKind::Overlay {
                check_overlay_source(p, tables)?;
            }
            Ok(())
        }
        EtherType::IPV6 => {
            p.meta.l3 = L3::Ipv6;
            Err(DropReason::Ipv6NotRouted)
        }
        _ => Err(DropReason::UnsupportedEthertype),
    }
}

/// A known node speaks for its own pods only: a decapsulated packet whose
/// source is in this node's pod CIDRs (a local pod, the gateway) or in
/// another node's is refused. Sources outside every pod CIDR (node
/// addresses, outside clients of a NodePort) pass. The sending node's own
/// CIDR, the common case, is one prefix compare.
fn check_overlay_source(p: &Packet, tables: &Tables) -> Result<(), DropReason> {
    let (IpAddr::V4(src), Some(from), Some(overlay)) =
        (p.meta.src, p.meta.from_node, tables.overlay.as_ref())
    else {
        return Ok(());
    };
    let sender = overlay.nodes.get(usize::from(from));
    if sender.is_some_and(|n| n.pod_cidrs.iter().any(|c| c.contains(&p.meta.src))) {
        return Ok(());
    }
    match tables.routes.lookup_v4(src) {
        Some(RouteTarget::Unassigned) => Err(DropReason::OverlaySourceSpoofed),
        Some(RouteTarget::Node(n)) if n != from => Err(DropReason::OverlaySourceSpoofed),
        Some(RouteTarget::Local(id))
            if tables
                .port(id)
                .is_some_and(|port| port.kind == PortKind::Pod) =>
        {
            Err(DropReason::OverlaySourceSpoofed)
        }
        _ => Ok(()),
    }
}

/// The IPv4 header fields the stage uses, however they were read.
#[derive(Debug, PartialEq, Eq)]
struct Ipv4Fields {
    /// Header length in bytes (with options).
    hl: usize,
    total_len: u16,
    proto: IpNumber,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    dont_fragment: bool,
    more_fragments: bool,
    /// Fragment offset in 8-byte units.
    frag_off: u16,
    /// RFC 1812 §5.2.2: a router verifies the header checksum.
    checksum_valid: bool,
}

impl Ipv4Fields {
    /// The common case from one fixed-size view: a 20-byte header without
    /// options carrying TCP, UDP or ICMP. It checks what etherparse's
    /// `Ipv4Slice::from_slice` checks for such a header (version and IHL
    /// in the first byte, total length at least the header and within the
    /// frame), so both paths accept and refuse the same datagrams; `None`
    /// hands anything else (options, AH, short buffers) to etherparse.
    #[inline]
    fn fixed(ip: &[u8]) -> Option<Result<(Ipv4Fields, &[u8]), DropReason>> {
        let h: &[u8; 20] = ip.get(..20)?.try_into().ok()?;
        if h[0] != 0x45 || !matches!(h[9], 1 | 6 | 17) {
            return None;
        }
        let total_len = u16::from_be_bytes([h[2], h[3]]);
        if total_len < 20 || ip.len() < usize::from(total_len) {
            return Some(Err(DropReason::Ipv4HeaderInvalid));
        }
        let flags_frag = u16::from_be_bytes([h[6], h[7]]);
        let fields = Ipv4Fields {
            hl: 20,
            total_len,
            proto: IpNumber(h[9]),
            src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
            dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
            ttl: h[8],
            dont_fragment: flags_frag & 0x4000 != 0,
            more_fragments: flags_frag & 0x2000 != 0,
            frag_off: flags_frag & 0x1fff,
            checksum_valid: checksum::sum_ipv4_header(h) == 0xffff,
        };
        Some(Ok((fields, &ip[20..usize::from(total_len)])))
    }

    /// Any other header, through etherparse.
    fn sliced(ip: &[u8]) -> Result<(Ipv4Fields, &[u8]), DropReason> {
        let slice = Ipv4Slice::from_slice(ip).map_err(|_| DropReason::Ipv4HeaderInvalid)?;
        let h = slice.header();
        // Almost every header has no options: sum its five words directly.
        let checksum_valid = match <&[u8; 20]>::try_from(h.slice()) {
            Ok(fixed) => checksum::sum_ipv4_header(fixed) == 0xffff,
            Err(_) => checksum::checksum(h.slice()) == 0,
        };
        let fields = Ipv4Fields {
            hl: h.slice().len(),
            total_len: h.total_len(),
            proto: h.protocol(),
            src: h.source_addr(),
            dst: h.destination_addr(),
            ttl: h.ttl(),
            dont_fragment: h.dont_fragment(),
            more_fragments: h.more_fragments(),
            frag_off: h.fragments_offset().value(),
            checksum_valid,
        };
        Ok((fields, slice.payload().payload))
    }
}

/// `own_ip` is `Some(the pod's address)` for pod ports (anti-spoofing) and
/// `None` for the host port, which sends with any source.
fn parse_ipv4(
    p: &mut Packet,
    own_ip: Option<Option<Ipv4Addr>>,
    mtu: u32,
) -> Result<(), DropReason> {
    let vnet = p.meta.vnet;
    let frame = p.frame();
    let ip_bytes = frame.get(ETH_LEN..).unwrap_or(&[]);
    let (h, l4) = match Ipv4Fields::fixed(ip_bytes) {
        Some(fixed) => fixed?,
        None => Ipv4Fields::sliced(ip_bytes)?,
    };
    if !h.checksum_valid {
        return Err(DropReason::Ipv4ChecksumInvalid);
    }
    let src = h.src;
    if let Some(own) = own_ip {
        if Some(src) != own {
            return Err(DropReason::SourceIpSpoofed);
        }
    }
    let ip_len = h.total_len;
    // A datagram over the ingress MTU is not dropped here: the route stage
    // checks it against the egress path's MTU and answers with ICMP
    // fragmentation needed (RFC 1191) when DF is set, so path MTU
    // discovery works; absurd sizes are still refused.
    // (Only pods: the overlay and the node's stack may hand over frames
    // that GRO coalesced upstream.)
    if own_ip.is_some() && !vnet.is_gso() && u32::from(ip_len) > mtu.max(MAX_INGRESS_MTU) {
        return Err(DropReason::FrameOverMtu);
    }
    let proto = h.proto;
    let first_fragment = h.frag_off == 0;
    let hl = h.hl;
    let l4_hdr_len = if first_fragment {
        match proto {
            IpNumber::TCP => {
                let t = TcpHeaderSlice::from_slice(l4).map_err(|_| DropReason::L4HeaderInvalid)?;
                t.slice().len()
            }
            IpNumber::UDP | IpNumber::ICMP => {
                if l4.len() < 8 {
                    return Err(DropReason::L4HeaderInvalid);
                }
                8
            }
            _ => 0,
        }
    } else {
        0
    };
    match vnet.gso {
        GsoKind::None => {}
        GsoKind::TcpV4 if proto == IpNumber::TCP && first_fragment => {}
        GsoKind::Udp | GsoKind::UdpL4 if proto == IpNumber::UDP && first_fragment => {}
        _ => return Err(DropReason::GsoMismatch),
    }
    // A pod sets the partial checksum's place itself (PACKET_VNET_HDR); the
    // output stage or the encapsulation later completes it by writing at
    // csum_start + csum_offset, after anti-spoofing and routing. Anywhere
    // but this packet's TCP or UDP checksum field that write would land on
    // headers already validated (docs/fuzzing.md, finding 1), so a partial
    // checksum must start at the L4 header of a whole datagram, as Linux's
    // own senders set it (skb_partial_csum_set from the transport layer).
    if let Some((start, offset)) = vnet.csum {
        let field = match proto {
            IpNumber::TCP => 16,
            IpNumber::UDP => 6,
            _ => return Err(DropReason::VnetHdrInvalid),
        };
        let whole = first_fragment && !h.more_fragments;
        if !whole || usize::from(start) != ETH_LEN + hl || offset != field {
            return Err(DropReason::VnetHdrInvalid);
        }
    }
    let dst = h.dst;
    let (more_fragments, dont_fragment, ttl) = (h.more_fragments, h.dont_fragment, h.ttl);
    let frame_len = frame.len();
    let m = &mut p.meta;
    m.l3 = L3::Ipv4;
    m.l4_off = (ETH_LEN + hl) as u16;
    m.l4_hdr_len = l4_hdr_len as u16;
    m.proto = proto.0;
    m.src = IpAddr::V4(src);
    m.dst = IpAddr::V4(dst);
    m.ip_len = ip_len;
    m.first_fragment = first_fragment;
    m.more_fragments = more_fragments;
    m.dont_fragment = dont_fragment;
    m.ttl = ttl;
    // Ethernet padding beyond the IP datagram is trimmed (never for GSO,
    // whose lengths the kernel fixes per segment).
    let l2_len = ETH_LEN + usize::from(ip_len);
    if !vnet.is_gso() && l2_len < frame_len {
        p.set_frame_len(l2_len);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn parse(frame: Vec<u8>) -> super::super::Verdict {
        let (t, c) = (tables(), counters());
        let mut b = Batch::new(1);
        b.push_bytes(0, &frame);
        ParseStage.process(&mut b, &t, &c);
        b.packets()[0].verdict
    }

    fn dropped(r: DropReason) -> super::super::Verdict {
        super::super::Verdict::Drop(r)
    }

    #[test]
    fn valid_udp_passes() {
        assert_eq!(
            parse(udp_frame(POD_A, POD_B, 100)),
            super::super::Verdict::Pending
        );
    }

    #[test]
    fn malformed_frames_are_dropped_by_reason() {
        assert_eq!(parse(vec![0; 10]), dropped(DropReason::FrameTooShort));
        let mut f = udp_frame(POD_A, POD_B, 100);
        f[VNET + 14] = 0x44; // IHL 4
        assert_eq!(parse(f), dropped(DropReason::Ipv4HeaderInvalid));
        let mut f = udp_frame(POD_A, POD_B, 100);
        f[VNET + 14 + 2] = 0xff; // total length beyond the frame
        assert_eq!(parse(f), dropped(DropReason::Ipv4HeaderInvalid));
        let mut f = udp_frame(POD_A, POD_B, 100);
        f[VNET + 14 + 10] ^= 0xff;
        assert_eq!(parse(f), dropped(DropReason::Ipv4ChecksumInvalid));
        let mut f = udp_frame(POD_A, POD_B, 100);
        f[VNET + 12] = 0x88; // ethertype 0x88xx
        assert_eq!(parse(f), dropped(DropReason::UnsupportedEthertype));
        let mut f = udp_frame(POD_A, POD_B, 100);
        f[1] = 9; // gso_type 9
        assert_eq!(parse(f), dropped(DropReason::VnetHdrInvalid));
        // Over the port MTU: left to the route stage's path MTU check.
        let f = udp_frame(POD_A, POD_B, 1600);
        assert_eq!(parse(f), super::super::Verdict::Pending);
        let mut f = udp_frame(POD_A, POD_B, 10);
        set_ipv4_src(&mut f, [10, 244, 1, 77]);
        assert_eq!(parse(f), dropped(DropReason::SourceIpSpoofed));
        let mut f = udp_frame(POD_A, POD_B, 10);
        f[VNET + 6 + 5] ^= 1;
        assert_eq!(parse(f), dropped(DropReason::SourceMacSpoofed));
        let mut f = tcp_frame(POD_A, POD_B, 0);
        f.truncate(VNET + 14 + 20 + 10); // half a TCP header
        let ip_len = (f.len() - VNET - 14) as u16;
        fix_ipv4(&mut f, ip_len);
        assert_eq!(parse(f), dropped(DropReason::L4HeaderInvalid));
    }

    /// ```text
    ///   node-2 (10.244.2.0/24) ==VXLAN==> node-1: pods A, B; node-3 (10.244.3.0/24)
    /// ```
    /// Frames decapsulated from node-2 may come from node-2's pods or from
    /// outside every pod CIDR, never from node-1's or node-3's pods.
    #[test]
    fn overlay_sources_outside_the_sending_nodes_pods_are_refused() {
        use crate::tables::{Overlay, OverlayNode, PodPort};
        const VTEP: [u8; 6] = [2, 0x56, 198, 18, 0, 1];
        let mut t = tables();
        t.ports.push(Some(PodPort {
            id: 3,
            pod: "overlay".into(),
            ifname: "vxlan".into(),
            netns: Default::default(),
            mac: VTEP,
            ipv4: None,
            ipv6: None,
            mtu: 1500,
            offloads: true,
            kind: PortKind::Overlay,
        }));
        let node = |name: &str, i: u8| OverlayNode {
            name: name.into(),
            underlay_ipv4: std::net::Ipv4Addr::new(198, 18, 0, i),
            vtep_mac: [2, 0x56, 198, 18, 0, i],
            pod_cidrs: vec![format!("10.244.{i}.0/24").parse().unwrap()],
        };
        let t = t.with_overlay(Overlay {
            vni: 1,
            udp_port: 4789,
            local_ipv4: std::net::Ipv4Addr::new(198, 18, 0, 1),
            vtep_mac: VTEP,
            port: 3,
            pod_mtu: 1450,
            nodes: vec![node("node-2", 2), node("node-3", 3)],
        });
        let c = counters();
        let from_node_2 = |src: [u8; 4]| {
            let mut f = vec![0u8; VNET];
            etherparse::PacketBuilder::ethernet2([2, 0x56, 198, 18, 0, 2], VTEP)
                .ipv4(src, POD_A, 63)
                .udp(40000, 53)
                .write(&mut f, &[1, 2, 3, 4])
                .unwrap();
            let mut b = Batch::new(1);
            b.push_bytes(3, &f);
            b.packets_mut()[0].meta.from_node = Some(0);
            ParseStage.process(&mut b, &t, &c);
            b.packets()[0].verdict
        };
        let pending = super::super::Verdict::Pending;
        assert_eq!(from_node_2([10, 244, 2, 7]), pending);
        assert_eq!(from_node_2([198, 18, 0, 2]), pending);
        assert_eq!(from_node_2([203, 0, 113, 10]), pending);
        let spoofed = dropped(DropReason::OverlaySourceSpoofed);
        assert_eq!(from_node_2(POD_B), spoofed, "a local pod");
        assert_eq!(from_node_2(GW), spoofed, "the local gateway");
        assert_eq!(
            from_node_2([10, 244, 1, 200]),
            spoofed,
            "a free local address"
        );
        assert_eq!(from_node_2([10, 244, 3, 7]), spoofed, "another node's pod");
    }

    /// A partial checksum is completed after validation by writing at
    /// csum_start + csum_offset: only the packet's own TCP/UDP checksum
    /// field may be named (fuzz reproducers
    /// `repro-vnet-csum-start-in-ethernet-header` and `-trimmed-padding`).
    #[test]
    fn partial_checksums_must_name_the_l4_checksum_field() {
        const NEEDS_CSUM: u8 = 1;
        let udp = |start: u16, offset: u16| {
            let mut f = udp_frame(POD_A, POD_B, 100);
            set_vnet(&mut f, NEEDS_CSUM, 0, 0, start, offset);
            parse(f)
        };
        let tcp = |start: u16, offset: u16| {
            let mut f = tcp_frame(POD_A, POD_B, 100);
            set_vnet(&mut f, NEEDS_CSUM, 0, 0, start, offset);
            parse(f)
        };
        let pending = super::super::Verdict::Pending;
        let invalid = dropped(DropReason::VnetHdrInvalid);
        assert_eq!(udp(34, 6), pending);
        assert_eq!(tcp(34, 16), pending);
        assert_eq!(udp(0, 0), invalid, "over the Ethernet header");
        assert_eq!(udp(26, 0), invalid, "over the IPv4 source address");
        assert_eq!(udp(34, 16), invalid, "TCP's field in a UDP datagram");
        assert_eq!(tcp(34, 6), invalid, "UDP's field in a TCP segment");
        assert_eq!(udp(36, 4), invalid, "inside the UDP header");
        // Ethernet padding that parse trims: a 60-byte minimum frame.
        let mut f = udp_frame(POD_A, POD_B, 2);
        f.resize(VNET + 60, 0);
        set_vnet(&mut f, NEEDS_CSUM, 0, 0, 50, 6);
        assert_eq!(parse(f), invalid, "in the trimmed padding");
        let mut f = icmp_echo_frame(POD_A, POD_B, 64);
        set_vnet(&mut f, NEEDS_CSUM, 0, 0, 34, 2);
        assert_eq!(parse(f), invalid, "ICMP is never sent partial");
        let mut f = udp_frame(POD_A, POD_B, 100);
        f[VNET + 20] |= 0x20; // more fragments
        fix_ipv4(&mut f, 128);
        set_vnet(&mut f, NEEDS_CSUM, 0, 0, 34, 6);
        assert_eq!(parse(f), invalid, "a fragment cannot be completed");
    }

    #[test]
    fn gso_on_udp_as_tcpv4_is_a_mismatch() {
        let mut f = udp_frame(POD_A, POD_B, 100);
        set_vnet(&mut f, 1, vnet_hdr::gso::TCPV4, 1000, 34, 6);
        assert_eq!(parse(f), dropped(DropReason::GsoMismatch));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse(bytes);
        }

        /// The fixed-header fast path reads and refuses exactly what
        /// etherparse does, for every header it takes.
        #[test]
        fn fixed_header_path_agrees_with_etherparse(
            header in proptest::array::uniform20(proptest::num::u8::ANY),
            proto in proptest::sample::select(vec![1u8, 6, 17]),
            payload in 0usize..80,
            total_len in proptest::option::of(0u16..140),
        ) {
            let mut ip = header.to_vec();
            ip[0] = 0x45;
            ip[9] = proto;
            ip.resize(20 + payload, 0xa5);
            // Mostly a consistent length; sometimes any.
            let total = total_len.unwrap_or(ip.len() as u16);
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            let fixed = Ipv4Fields::fixed(&ip).expect("the fast path takes this header");
            proptest::prop_assert_eq!(fixed, Ipv4Fields::sliced(&ip));
        }

        #[test]
        fn corrupted_valid_frames_never_panic(idx in 0usize..80, val in proptest::num::u8::ANY, cut in 0usize..160) {
            let mut f = tcp_frame(POD_A, POD_B, 40);
            let i = idx % f.len();
            f[i] = val;
            f.truncate(cut.max(1).min(f.len()));
            let _ = parse(f);
        }
    }
}
