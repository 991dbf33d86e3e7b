//! Stage 1, parse: validates the vnet header and the Ethernet, IP and L4
//! headers, enforces anti-spoofing and the ingress MTU, and fills
//! [`Meta`](super::Meta) for the later stages.
//!
//! Nothing a pod writes is trusted: every length and offset is checked
//! against the frame before a later stage touches it.

use std::net::{IpAddr, Ipv4Addr};

use super::{drop_packet, Batch, DropReason, Meta, Packet, L3};
use crate::conntrack::FlowKey;
use crate::metrics::WorkerCounters;
use crate::tables::{PodPort, PortKind, RouteTarget, Tables};
use crate::wire::ethernet::{
    self, EthernetFrame, EthernetHeader, ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6,
};
use crate::wire::ipv4::{self, protocol, Ipv4Header, Ipv4Packet};
use crate::wire::tcp::{self, TcpHeader, TcpSegment};
use crate::wire::udp::{self, UdpDatagram, UdpHeader};
use crate::wire::vnet_hdr::{self, GsoKind, VnetHdr};

/// Ethernet II header length.
pub const ETH_LEN: usize = ethernet::HEADER_LEN;
/// ICMP messages carry at least a type, code, checksum and four bytes
/// (RFC 792): the eight bytes the gateway and NAT read.
mod icmp {
    pub const HEADER_LEN: usize = 8;
}
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
            // The fast path may have parsed a packet it then left to the
            // stage path: its metadata is already filled.
            if p.pending() && p.meta.l3 == L3::Unparsed {
                if let Err(reason) = parse_one(p, tables) {
                    drop_packet(p, reason, c);
                }
            }
        }
    }
}

fn parse_one(p: &mut Packet, tables: &Tables) -> Result<(), DropReason> {
    let port = tables
        .port(p.ingress)
        .ok_or(DropReason::UnknownIngressPort)?;
    parse_from(p, port, tables).map(|_| ())
}

/// The flow tuple and TCP flags (0 for UDP) of a packet of the common
/// shape ([`parse_common`]): what the fast path needs to look its flow up
/// without reading the frame again.
pub(super) type CommonTuple = (FlowKey, u8);

/// Parses a packet that came in on `port` (the port its `ingress` names)
/// and fills its metadata; the fast path calls this too, so every packet
/// is read by the one parser. The common shape takes [`parse_common`] and
/// returns its tuple; anything else (and anything it refuses)
/// [`parse_general`], which returns `None` on success.
#[inline(always)]
pub(super) fn parse_from(
    p: &mut Packet,
    port: &PodPort,
    tables: &Tables,
) -> Result<Option<CommonTuple>, DropReason> {
    match parse_common(p, port, tables) {
        Some(tuple) => Ok(Some(tuple)),
        None => parse_general(p, port, tables).map(|()| None),
    }
}

/// Bytes the common shape has at least: vnet header, Ethernet, an
/// option-less IPv4 header.
const COMMON_LEN: usize = vnet_hdr::LEN + ETH_LEN + ipv4::MIN_HEADER_LEN;

/// The common shape, read in one pass over a fixed-size prefix: a whole
/// (unfragmented) option-less IPv4 TCP or UDP datagram from a pod's port,
/// with a plain or checksum-only vnet header, sent to the gateway's MAC
/// from the pod's MAC and address, with valid lengths and checksum, under
/// the ingress size cap. Every check [`parse_general`] makes, for exactly
/// this shape, so it fills the same metadata (the property test
/// `common_shape_agrees_with_the_general_parse` holds the two together).
/// `None` (nothing written) for any other packet, valid or not.
#[inline(always)]
fn parse_common(p: &mut Packet, port: &PodPort, tables: &Tables) -> Option<CommonTuple> {
    if port.kind != PortKind::Pod {
        return None;
    }
    let own = port.ipv4?;
    let data = p.data();
    let fixed: &[u8; COMMON_LEN] = data.get(..COMMON_LEN)?.try_into().ok()?;
    let (vnet_bytes, headers) = fixed.split_at(vnet_hdr::LEN);
    let (eth, ip) = headers.split_at(ETH_LEN);
    let eth = EthernetHeader::new(eth.try_into().ok()?);
    let ip = Ipv4Header::new(ip.try_into().ok()?);
    // What tells the common shape apart first: ARP, ICMP, IPv6 and
    // options leave after three compares.
    let proto = ip.protocol();
    if eth.ethertype() != ETHERTYPE_IPV4
        || ip.has_options()
        || !matches!(proto, protocol::TCP | protocol::UDP)
    {
        return None;
    }
    let frame_len = data.len() - vnet_hdr::LEN;
    let hdr = VnetHdr::new_checked(vnet_bytes).ok()?;
    let vnet = if hdr.is_plain() {
        vnet_hdr::Repr::NONE
    } else {
        let repr = vnet_hdr::Repr::parse(&hdr, frame_len).ok()?;
        if repr.is_gso() {
            return None;
        }
        repr
    };
    if eth.destination() != tables.gateway.mac || eth.source() != port.mac {
        return None;
    }
    let total_len = ip.total_len();
    if !ip.is_whole()
        || total_len < ipv4::MIN_HEADER_LEN as u16
        || frame_len - ETH_LEN < usize::from(total_len)
        || !ip.fixed_checksum_valid()
    {
        return None;
    }
    let (src, dst) = (ip.source(), ip.destination());
    if src != own || u32::from(total_len) > port.mtu.max(MAX_INGRESS_MTU) {
        return None;
    }
    let l4 = data.get(COMMON_LEN..vnet_hdr::LEN + ETH_LEN + usize::from(total_len))?;
    let (l4_hdr_len, sport, dport, tcp_flags, csum_field) = if proto == protocol::TCP {
        let tcp = TcpHeader::new(l4.get(..tcp::MIN_HEADER_LEN)?.try_into().ok()?);
        let hl = tcp.header_len();
        if hl < tcp::MIN_HEADER_LEN || l4.len() < hl {
            return None;
        }
        let (sport, dport) = (tcp.src_port(), tcp.dst_port());
        (hl, sport, dport, tcp.flags(), tcp::CHECKSUM_OFFSET)
    } else {
        let udp = UdpHeader::new(l4.get(..udp::HEADER_LEN)?.try_into().ok()?);
        let (sport, dport) = (udp.src_port(), udp.dst_port());
        (udp::HEADER_LEN, sport, dport, 0, udp::CHECKSUM_OFFSET)
    };
    if let Some((start, offset)) = vnet.csum {
        if usize::from(start) != ETH_LEN + ipv4::MIN_HEADER_LEN || offset != csum_field {
            return None;
        }
    }
    let (dont_fragment, ttl) = (ip.dont_fragment(), ip.ttl());
    let from_node = p.meta.from_node;
    p.meta = Meta {
        l3: L3::Ipv4,
        vnet,
        l3_off: ETH_LEN as u16,
        l4_off: (ETH_LEN + ipv4::MIN_HEADER_LEN) as u16,
        l4_hdr_len: l4_hdr_len as u16,
        proto,
        src: IpAddr::V4(src),
        dst: IpAddr::V4(dst),
        ip_len: total_len,
        first_fragment: true,
        more_fragments: false,
        dont_fragment,
        ttl,
        from_node,
        own_icmp_error: false,
    };
    // Ethernet padding is trimmed, as the general parse does.
    let l2_len = ETH_LEN + usize::from(total_len);
    if l2_len < frame_len {
        p.set_frame_len(l2_len);
    }
    Some((FlowKey::new(src, sport, dst, dport, proto), tcp_flags))
}

/// Any packet: every ethertype, port kind, IPv4 option, fragment and
/// GSO; the drop reason for whatever is wrong. The frame is read through
/// the [`crate::wire`] views from one borrow, and the metadata written
/// once at the end.
#[inline(always)]
fn parse_general(p: &mut Packet, port: &PodPort, tables: &Tables) -> Result<(), DropReason> {
    let data = p.data();
    if data.len() < vnet_hdr::LEN + ETH_LEN {
        return Err(DropReason::FrameTooShort);
    }
    let (vnet_bytes, frame) = data.split_at(vnet_hdr::LEN);
    let hdr = VnetHdr::new_checked(vnet_bytes).map_err(|_| DropReason::FrameTooShort)?;
    let vnet = if hdr.is_plain() {
        vnet_hdr::Repr::NONE
    } else {
        vnet_hdr::Repr::parse(&hdr, frame.len()).map_err(|_| DropReason::VnetHdrInvalid)?
    };
    let eth_frame = EthernetFrame::new_checked(frame).map_err(|_| DropReason::FrameTooShort)?;
    let eth = eth_frame.header();
    let is_pod = port.kind == PortKind::Pod;
    if is_pod && eth.source() != port.mac {
        return Err(DropReason::SourceMacSpoofed);
    }
    let dst = eth.destination();
    if port.kind == PortKind::Overlay {
        // A remote VTEP addresses our VTEP MAC (RFC 7348 §4, flannel's
        // neighbour entries); nothing else is accepted from the overlay.
        if dst != port.mac {
            return Err(DropReason::DestinationMacNotGateway);
        }
    } else if !eth.is_group_destination()
        && dst != tables.gateway.mac
        && port.kind != PortKind::Host
    {
        // The node's stack also hands over frames it received itself
        // (NodePort steering keeps the underlay's Ethernet header).
        return Err(DropReason::DestinationMacNotGateway);
    }
    match eth.ethertype() {
        ETHERTYPE_ARP => {
            if vnet.is_gso() {
                return Err(DropReason::GsoMismatch);
            }
            let m = &mut p.meta;
            m.vnet = vnet;
            m.l3_off = ETH_LEN as u16;
            m.l3 = L3::Arp;
            Ok(())
        }
        ETHERTYPE_IPV4 => {
            let own_ip = is_pod.then_some(port.ipv4);
            let ip = parse_ipv4(eth_frame.payload(), vnet, own_ip, port.mtu)?;
            let frame_len = frame.len();
            // Field by field: `from_node` (set by decapsulation) stays.
            let m = &mut p.meta;
            m.l3 = L3::Ipv4;
            m.vnet = vnet;
            m.l3_off = ETH_LEN as u16;
            m.l4_off = (ETH_LEN + ip.header_len) as u16;
            m.l4_hdr_len = ip.l4_hdr_len;
            m.proto = ip.proto;
            m.src = IpAddr::V4(ip.src);
            m.dst = IpAddr::V4(ip.dst);
            m.ip_len = ip.total_len;
            m.first_fragment = ip.first_fragment;
            m.more_fragments = ip.more_fragments;
            m.dont_fragment = ip.dont_fragment;
            m.ttl = ip.ttl;
            m.own_icmp_error = false;
            // Ethernet padding beyond the IP datagram is trimmed (never
            // for GSO, whose lengths the kernel fixes per segment).
            let l2_len = ETH_LEN + usize::from(ip.total_len);
            if !vnet.is_gso() && l2_len < frame_len {
                p.set_frame_len(l2_len);
            }
            if port.kind == PortKind::Overlay {
                check_overlay_source(p, tables)?;
            }
            Ok(())
        }
        ETHERTYPE_IPV6 => {
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
#[inline(always)]
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

/// What the parse stage keeps of a valid IPv4 datagram's headers.
struct Ipv4Parsed {
    header_len: usize,
    total_len: u16,
    proto: u8,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
    first_fragment: bool,
    more_fragments: bool,
    dont_fragment: bool,
    /// TCP with options, UDP and ICMP 8; 0 for other protocols and
    /// later fragments.
    l4_hdr_len: u16,
}

/// Validates the IPv4 datagram at the start of `ip` (the Ethernet
/// payload). `own_ip` is `Some(the pod's address)` for pod ports
/// (anti-spoofing) and `None` for the host port, which sends with any
/// source.
#[inline(always)]
fn parse_ipv4(
    ip: &[u8],
    vnet: vnet_hdr::Repr,
    own_ip: Option<Option<Ipv4Addr>>,
    mtu: u32,
) -> Result<Ipv4Parsed, DropReason> {
    let packet = Ipv4Packet::new_checked(ip).map_err(|_| DropReason::Ipv4HeaderInvalid)?;
    if !packet.checksum_valid() {
        return Err(DropReason::Ipv4ChecksumInvalid);
    }
    let ip = packet.header();
    let src = ip.source();
    if let Some(own) = own_ip {
        if Some(src) != own {
            return Err(DropReason::SourceIpSpoofed);
        }
    }
    let total_len = ip.total_len();
    // A datagram over the ingress MTU is not dropped here: the route stage
    // checks it against the egress path's MTU and answers with ICMP
    // fragmentation needed (RFC 1191) when DF is set, so path MTU
    // discovery works; absurd sizes are still refused.
    // (Only pods: the overlay and the node's stack may hand over frames
    // that GRO coalesced upstream.)
    if own_ip.is_some() && !vnet.is_gso() && u32::from(total_len) > mtu.max(MAX_INGRESS_MTU) {
        return Err(DropReason::FrameOverMtu);
    }
    let proto = ip.protocol();
    let first_fragment = ip.fragment_offset() == 0;
    let more_fragments = ip.more_fragments();
    let header_len = ip.header_len();
    let l4 = packet.payload();
    let l4_hdr_len = if first_fragment {
        match proto {
            protocol::TCP => TcpSegment::new_checked(l4)
                .map_err(|_| DropReason::L4HeaderInvalid)?
                .header()
                .header_len(),
            protocol::UDP => {
                UdpDatagram::new_checked(l4).map_err(|_| DropReason::L4HeaderInvalid)?;
                udp::HEADER_LEN
            }
            protocol::ICMP => {
                if l4.len() < icmp::HEADER_LEN {
                    return Err(DropReason::L4HeaderInvalid);
                }
                icmp::HEADER_LEN
            }
            _ => 0,
        }
    } else {
        0
    };
    match vnet.gso {
        GsoKind::None => {}
        GsoKind::TcpV4 if proto == protocol::TCP && first_fragment => {}
        GsoKind::Udp | GsoKind::UdpL4 if proto == protocol::UDP && first_fragment => {}
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
            protocol::TCP => tcp::CHECKSUM_OFFSET,
            protocol::UDP => udp::CHECKSUM_OFFSET,
            _ => return Err(DropReason::VnetHdrInvalid),
        };
        let whole = first_fragment && !more_fragments;
        if !whole || usize::from(start) != ETH_LEN + header_len || offset != field {
            return Err(DropReason::VnetHdrInvalid);
        }
    }
    Ok(Ipv4Parsed {
        header_len,
        total_len,
        proto,
        src,
        dst: ip.destination(),
        ttl: ip.ttl(),
        first_fragment,
        more_fragments,
        dont_fragment: ip.dont_fragment(),
        l4_hdr_len: l4_hdr_len as u16,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use proptest::strategy::Strategy as _;

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

        /// The IPv4 view reads and refuses exactly what etherparse does,
        /// for every protocol but AH (which etherparse also parses).
        #[test]
        fn ipv4_view_agrees_with_etherparse(
            header in proptest::array::uniform20(proptest::num::u8::ANY),
            version_ihl in proptest::sample::select(vec![0x45u8, 0x46, 0x4f, 0x44, 0x55, 0x65]),
            proto in proptest::num::u8::ANY.prop_filter("AH", |p| *p != 51),
            payload in 0usize..80,
            total_len in proptest::option::of(0u16..140),
        ) {
            let mut ip = header.to_vec();
            ip[0] = version_ihl;
            ip[9] = proto;
            ip.resize(20 + payload, 0xa5);
            // Mostly a consistent length; sometimes any.
            let total = total_len.unwrap_or(ip.len() as u16);
            ip[2..4].copy_from_slice(&total.to_be_bytes());
            let ours = Ipv4Packet::new_checked(&ip[..]).ok().map(|v| {
                let h = v.header();
                (h.header_len(), h.total_len(), h.protocol(), h.source(), h.destination(),
                 h.ttl(), h.dont_fragment(), h.more_fragments(), h.fragment_offset(),
                 v.checksum_valid(), v.payload().to_vec())
            });
            let theirs = etherparse::Ipv4Slice::from_slice(&ip).ok().map(|s| {
                let h = s.header();
                (h.slice().len(), h.total_len(), h.protocol().0, h.source_addr(),
                 h.destination_addr(), h.ttl(), h.dont_fragment(), h.more_fragments(),
                 h.fragments_offset().value(), crate::wire::checksum::checksum(h.slice()) == 0,
                 s.payload().payload.to_vec())
            });
            proptest::prop_assert_eq!(ours, theirs);
        }

        /// The common shape's one-pass read fills exactly what the general
        /// parse fills, and refuses nothing the general parse accepts in
        /// that shape: random damage to valid TCP and UDP frames (with and
        /// without a partial-checksum vnet header, with padding).
        #[test]
        fn common_shape_agrees_with_the_general_parse(
            tcp in proptest::bool::ANY,
            payload in 0usize..60,
            pad in 0usize..20,
            csum in proptest::bool::ANY,
            damage in proptest::collection::vec((0usize..80, proptest::num::u8::ANY), 0..3),
        ) {
            let mut f = if tcp { tcp_frame(POD_A, POD_B, payload) } else { udp_frame(POD_A, POD_B, payload) };
            f.resize(f.len() + pad, 0);
            if csum {
                set_vnet(&mut f, 1, 0, 0, 34, if tcp { 16 } else { 6 });
            }
            for (at, v) in damage {
                let i = at % f.len();
                f[i] = v;
            }
            let t = tables();
            let port = t.port(0).expect("port 0 is pod A's");
            let load = || {
                let mut b = Batch::new(1);
                b.push_bytes(0, &f);
                b
            };
            let (mut common, mut general) = (load(), load());
            let c = &mut common.packets_mut()[0];
            let g = &mut general.packets_mut()[0];
            let by_common = parse_common(c, port, &t);
            let by_general = parse_general(g, port, &t);
            if let Some((key, flags)) = by_common {
                proptest::prop_assert!(by_general.is_ok(), "the general parse refused {by_general:?}");
                proptest::prop_assert_eq!(format!("{:?}", c.meta), format!("{:?}", g.meta));
                proptest::prop_assert_eq!(c.data(), g.data());
                let l4 = usize::from(g.meta.l4_off);
                let f = g.frame();
                let port_at = |i: usize| u16::from_be_bytes([f[l4 + i], f[l4 + i + 1]]);
                proptest::prop_assert_eq!((key.sport, key.dport), (port_at(0), port_at(2)));
                proptest::prop_assert_eq!(key.src, std::net::Ipv4Addr::from(POD_A));
                let want_flags = if tcp { f[l4 + 13] } else { 0 };
                proptest::prop_assert_eq!(flags, want_flags);
            } else if by_general.is_ok() {
                // Valid, so not of the common shape.
                let m = &g.meta;
                let common_shape = m.l3 == L3::Ipv4
                    && m.l4_off == 34
                    && matches!(m.proto, 6 | 17)
                    && m.first_fragment
                    && !m.more_fragments
                    && !m.vnet.is_gso()
                    && g.frame()[..6] == t.gateway.mac;
                proptest::prop_assert!(!common_shape, "the common shape refused a packet of its own shape: {:?}", m);
            }
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
