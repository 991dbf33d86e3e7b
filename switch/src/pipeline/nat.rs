//! Address and port translation in place: the header rewrites the
//! conntrack stage decides, with checksums patched incrementally (RFC 1624)
//! and partial (offloaded) checksums kept partial, so TSO superframes are
//! translated whole.
//!
//! Also the replies a translator owes: a TCP RST for a segment of a flow
//! that does not exist (its endpoint is gone), and the translation of ICMP
//! errors about a tracked flow (RELATED), outer and quoted headers both.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::PacketBuilder;

use super::parse::ETH_LEN;
use super::{Packet, Verdict};
use crate::conntrack::FlowKey;
use crate::tables::Gateway;
use crate::wire::{checksum, vnet_hdr};

/// ICMP echo request and reply types.
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_ECHO_REPLY: u8 = 0;

/// Whether an ICMP type is an error that quotes a packet (RELATED).
#[inline]
pub fn is_icmp_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 11 | 12)
}

/// The offset of the L4 checksum within the L4 header.
#[inline]
fn csum_offset(proto: u8) -> Option<usize> {
    match proto {
        6 => Some(16),
        17 => Some(6),
        1 => Some(2),
        _ => None,
    }
}

#[inline]
fn rd16(b: &[u8], at: usize) -> u16 {
    let w: [u8; 2] = b[at..at + 2].try_into().expect("two bytes");
    u16::from_be_bytes(w)
}

#[inline]
fn wr16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
fn rd_ip(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::from(rd32(b, at))
}

/// The tuple of an IPv4 packet whose IP header starts at `l3` and L4 at
/// `l4` in `f`; `None` for protocols and ICMP types that are not tracked.
#[inline]
pub fn tuple_at(f: &[u8], l3: usize, l4: usize, proto: u8) -> Option<FlowKey> {
    tuple_with(f, rd_ip(f, l3 + 12), rd_ip(f, l3 + 16), l4, proto)
}

/// The tuple of a packet from `src` to `dst` whose L4 header is at `l4`
/// in `f`: only the ports (or the echo identifier) are read. Always
/// inlined, so the tuple stays in registers (see `vnet_hdr::Repr::parse`).
#[inline(always)]
fn tuple_with(f: &[u8], src: Ipv4Addr, dst: Ipv4Addr, l4: usize, proto: u8) -> Option<FlowKey> {
    let be16 = |h: &[u8; 8], at: usize| u16::from_be_bytes([h[at], h[at + 1]]);
    match proto {
        6 | 17 => {
            let h: [u8; 4] = f.get(l4..l4 + 4)?.try_into().ok()?;
            let (sport, dport) = (
                u16::from_be_bytes([h[0], h[1]]),
                u16::from_be_bytes([h[2], h[3]]),
            );
            Some(FlowKey::new(src, sport, dst, dport, proto))
        }
        1 => {
            let h: &[u8; 8] = f.get(l4..l4 + 8)?.try_into().ok()?;
            match h[0] {
                ICMP_ECHO_REQUEST => Some(FlowKey::new(src, be16(h, 4), dst, 0, 1)),
                ICMP_ECHO_REPLY => Some(FlowKey::new(src, 0, dst, be16(h, 4), 1)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The tuple of a parsed IPv4 packet: the addresses as parse recorded
/// them in the metadata (kept current by [`rewrite`]), the ports from the
/// frame.
#[inline]
pub fn packet_tuple(p: &Packet) -> Option<FlowKey> {
    let m = &p.meta;
    let (IpAddr::V4(src), IpAddr::V4(dst)) = (m.src, m.dst) else {
        return None;
    };
    tuple_with(p.frame(), src, dst, usize::from(m.l4_off), m.proto)
}

#[inline]
fn rd32(b: &[u8], at: usize) -> u32 {
    let w: [u8; 4] = b[at..at + 4].try_into().expect("four bytes");
    u32::from_be_bytes(w)
}

/// Rewrites the addresses and ports of the IPv4 packet at `l3`/`l4` in `f`
/// to those of `to`, patching the IP header checksum and the L4 checksum
/// (`partial`: the L4 checksum is NEEDS_CSUM; `l4_csum`: whether to touch
/// it at all: a quoted packet inside an ICMP error may be truncated).
///
/// Checksums are patched as RFC 1624 eqn. 3 says, with every changed
/// field's term (`~m + m'`) summed first and folded once per checksum. An
/// unchanged field adds `~m + m` = 0xffff, which is zero in ones'
/// complement, so fields are not tested for change.
fn rewrite_at(
    f: &mut [u8],
    l3: usize,
    l4: usize,
    proto: u8,
    to: &FlowKey,
    partial: bool,
    l4_csum: bool,
) {
    // Fixed-size views of the IP header and the first 8 bytes of the L4
    // header (all three protocols have them: their callers checked), so
    // each field is one load or store with no bounds check of its own.
    let Some(ip) = f
        .get_mut(l3..l3 + 20)
        .and_then(|h| <&mut [u8; 20]>::try_from(h).ok())
    else {
        return;
    };
    let (new_src, new_dst) = (u32::from(to.src), u32::from(to.dst));
    let old_src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let old_dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let addrs = checksum::diff_u32(old_src, new_src) + checksum::diff_u32(old_dst, new_dst);
    let ip_check = !checksum::fold(u64::from(!u16::from_be_bytes([ip[10], ip[11]])) + addrs);
    ip[10..12].copy_from_slice(&ip_check.to_be_bytes());
    ip[12..16].copy_from_slice(&new_src.to_be_bytes());
    ip[16..20].copy_from_slice(&new_dst.to_be_bytes());

    let Some(l4h) = f
        .get_mut(l4..l4 + 8)
        .and_then(|h| <&mut [u8; 8]>::try_from(h).ok())
    else {
        return;
    };
    // The L4 header's own fields: both ports (one 32-bit word), or the
    // ICMP echo identifier.
    let ports = match proto {
        6 | 17 => {
            let new = (u32::from(to.sport) << 16) | u32::from(to.dport);
            let old = u32::from_be_bytes([l4h[0], l4h[1], l4h[2], l4h[3]]);
            l4h[0..4].copy_from_slice(&new.to_be_bytes());
            checksum::diff_u32(old, new)
        }
        1 => {
            let id = if l4h[0] == ICMP_ECHO_REQUEST {
                to.sport
            } else {
                to.dport
            };
            let old = u16::from_be_bytes([l4h[4], l4h[5]]);
            l4h[4..6].copy_from_slice(&id.to_be_bytes());
            u64::from(!old) + u64::from(id)
        }
        _ => 0,
    };

    if !l4_csum {
        return;
    }
    let Some(c) = csum_offset(proto).map(|o| l4 + o) else {
        return;
    };
    let Some(field) = f
        .get_mut(c..c + 2)
        .and_then(|h| <&mut [u8; 2]>::try_from(h).ok())
    else {
        return;
    };
    // ICMP has no pseudo-header.
    let pseudo = if proto == 1 { 0 } else { addrs };
    if let Some(new) = patched_l4_checksum(
        u16::from_be_bytes(*field),
        pseudo,
        ports,
        partial,
        proto == 17,
    ) {
        *field = new.to_be_bytes();
    }
}

/// The L4 checksum field `old` after a change whose pseudo-header terms
/// are `pseudo` and whose terms in the L4 header are `ports` (RFC 1624
/// eqn. 3); `None` where the field stays as it is (a UDP datagram sent
/// without a checksum).
#[inline]
fn patched_l4_checksum(old: u16, pseudo: u64, ports: u64, partial: bool, udp: bool) -> Option<u16> {
    // UDP checksum 0 means "none" (RFC 768): leave it so.
    if udp && old == 0 {
        return None;
    }
    if partial {
        // NEEDS_CSUM: the field holds the uncomplemented pseudo-header
        // sum, which the addresses change the other way round; the ports
        // are summed later, by whoever completes the checksum.
        return Some(checksum::fold(u64::from(old) + pseudo));
    }
    let c = !checksum::fold(u64::from(!old) + pseudo + ports);
    // A computed UDP checksum of 0 is sent as all ones (RFC 768).
    Some(if udp && c == 0 { 0xffff } else { c })
}

/// Rewrites a parsed packet's tuple to `to` and updates its metadata.
#[inline]
pub fn rewrite(p: &mut Packet, to: &FlowKey) {
    // The fields by name, not a copy of the whole `Meta`.
    let m = &p.meta;
    let partial = m.vnet.csum.is_some();
    let (l3, l4, proto) = (usize::from(m.l3_off), usize::from(m.l4_off), m.proto);
    rewrite_at(p.frame_mut(), l3, l4, proto, to, partial, true);
    p.meta.src = to.src.into();
    p.meta.dst = to.dst.into();
}

/// [`rewrite`] for the fast path's packets: an option-less IPv4 header
/// right behind the Ethernet header, a TCP or UDP header right behind it,
/// and `from` the packet's tuple (so the old fields are not read back).
/// The arithmetic of [`rewrite_at`] with the offsets fixed; the fast
/// path's test compares the bytes the two give.
#[inline]
pub fn rewrite_plain_ipv4(p: &mut Packet, from: &FlowKey, to: &FlowKey) {
    const IP: usize = ETH_LEN;
    let partial = p.meta.vnet.csum.is_some();
    let tcp = from.proto == 6;
    let words = |k: &FlowKey| {
        (
            u32::from(k.src),
            u32::from(k.dst),
            (u32::from(k.sport) << 16) | u32::from(k.dport),
        )
    };
    let ((old_src, old_dst, old_ports), (new_src, new_dst, new_ports)) = (words(from), words(to));
    let addrs = checksum::diff_u32(old_src, new_src) + checksum::diff_u32(old_dst, new_dst);
    let f = p.frame_mut();
    // The IPv4 header and the ports, one view.
    let Some(h) = f
        .get_mut(IP..IP + 24)
        .and_then(|h| <&mut [u8; 24]>::try_from(h).ok())
    else {
        return;
    };
    let ip_check = !checksum::fold(u64::from(!u16::from_be_bytes([h[10], h[11]])) + addrs);
    h[10..12].copy_from_slice(&ip_check.to_be_bytes());
    h[12..16].copy_from_slice(&new_src.to_be_bytes());
    h[16..20].copy_from_slice(&new_dst.to_be_bytes());
    h[20..24].copy_from_slice(&new_ports.to_be_bytes());
    let at = IP + 20 + if tcp { 16 } else { 6 };
    let Some(field) = f
        .get_mut(at..at + 2)
        .and_then(|h| <&mut [u8; 2]>::try_from(h).ok())
    else {
        return;
    };
    let ports = checksum::diff_u32(old_ports, new_ports);
    if let Some(new) = patched_l4_checksum(u16::from_be_bytes(*field), addrs, ports, partial, !tcp)
    {
        *field = new.to_be_bytes();
    }
    p.meta.src = to.src.into();
    p.meta.dst = to.dst.into();
}

/// The tuple of the packet quoted by an ICMP error (the packet as it was
/// sent, in the direction opposite to the error), with the quoted L3/L4
/// offsets within the frame.
pub fn quoted_tuple(p: &Packet) -> Option<(FlowKey, usize, usize)> {
    let f = p.frame();
    let inner = usize::from(p.meta.l4_off) + 8;
    let vihl = *f.get(inner)?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 || f.len() < inner + ihl + 8 {
        return None;
    }
    let proto = f[inner + 9];
    let l4 = inner + ihl;
    tuple_at(f, inner, l4, proto).map(|k| (k, inner, l4))
}

/// Translates an ICMP error about a tracked flow: the outer destination
/// (and source, if the error came from the flow's own peer) and the quoted
/// packet both move to the translated view, then the ICMP checksum is
/// recomputed (an error is small and never offloaded).
///
/// `to` is the translated tuple for packets going the error's way;
/// `from` is the tuple the error's direction had before translation.
pub fn rewrite_related(p: &mut Packet, from: &FlowKey, to: &FlowKey) -> bool {
    let Some((_, inner, inner_l4)) = quoted_tuple(p) else {
        return false;
    };
    let m = p.meta;
    let (l3, l4) = (usize::from(m.l3_off), usize::from(m.l4_off));
    let end = (l3 + usize::from(m.ip_len)).min(p.frame().len());
    let f = p.frame_mut();
    let inner_proto = f[inner + 9];
    // The quoted packet went the other way: its tuple becomes the reverse
    // of the translated one.
    rewrite_at(
        f,
        inner,
        inner_l4,
        inner_proto,
        &to.reversed(),
        false,
        false,
    );
    // Outer header: the destination always (it is the flow's peer); the
    // source only if the error was sent by the flow's endpoint itself.
    let outer_src = rd_ip(f, l3 + 12);
    let new_src = if outer_src == from.src {
        to.src
    } else {
        outer_src
    };
    let outer = FlowKey::new(new_src, 0, to.dst, 0, 1);
    let mut ip_check = rd16(f, l3 + 10);
    for (off, new) in [(12, outer.src), (16, outer.dst)] {
        let old = u32::from(rd_ip(f, l3 + off));
        ip_check = checksum::update_u32(ip_check, old, u32::from(new));
        f[l3 + off..l3 + off + 4].copy_from_slice(&new.octets());
    }
    wr16(f, l3 + 10, ip_check);
    // ICMP checksum over the whole message.
    wr16(f, l4 + 2, 0);
    let c = checksum::checksum(&f[l4..end]);
    wr16(f, l4 + 2, c);
    p.meta.src = outer.src.into();
    p.meta.dst = outer.dst.into();
    true
}

/// Replaces a TCP segment with the RST its destination would send
/// (RFC 9293 §3.10.7.1: for a segment with ACK, `seq = SEG.ACK`; else
/// `seq = 0, ack = SEG.SEQ + SEG.LEN`), from `src` (what the client
/// addressed) back to the client, out of the ingress port.
pub fn rewrite_as_rst(p: &mut Packet, gw: &Gateway) -> bool {
    let m = p.meta;
    if m.proto != 6 {
        return false;
    }
    let f = p.frame();
    let (l3, l4) = (usize::from(m.l3_off), usize::from(m.l4_off));
    if f.len() < l4 + 20 {
        return false;
    }
    let mut dst_mac = [0u8; 6];
    dst_mac.copy_from_slice(&f[6..12]);
    let (src, dst) = (rd_ip(f, l3 + 12), rd_ip(f, l3 + 16));
    let (sport, dport) = (rd16(f, l4), rd16(f, l4 + 2));
    let seq = u32::from_be_bytes([f[l4 + 4], f[l4 + 5], f[l4 + 6], f[l4 + 7]]);
    let ack = u32::from_be_bytes([f[l4 + 8], f[l4 + 9], f[l4 + 10], f[l4 + 11]]);
    let flags = f[l4 + 13];
    if flags & 0x04 != 0 {
        return false; // never answer a RST
    }
    let payload = usize::from(m.ip_len)
        .saturating_sub(l4 - l3)
        .saturating_sub(usize::from(m.l4_hdr_len));
    let seg_len = payload as u32 + u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
    let mut b = PacketBuilder::ethernet2(gw.mac, dst_mac)
        .ipv4(dst.octets(), src.octets(), 64)
        .tcp(dport, sport, if flags & 0x10 != 0 { ack } else { 0 }, 0)
        .rst();
    if flags & 0x10 == 0 {
        b = b.ack(seq.wrapping_add(seg_len));
    }
    let needed = b.size(0);
    let area = p.frame_area();
    if area.len() < needed {
        return false;
    }
    let mut out: &mut [u8] = &mut area[..needed];
    if b.write(&mut out, &[]).is_err() {
        return false;
    }
    p.set_frame_len(needed);
    p.set_vnet(vnet_hdr::Repr::NONE);
    p.meta.l3_off = ETH_LEN as u16;
    p.verdict = Verdict::Reply;
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    fn udp(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [0xee; 6])
            .ipv4(src, dst, 64)
            .udp(sp, dp);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn tcp(src: [u8; 4], sp: u16, dst: [u8; 4], dp: u16, payload: &[u8]) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [0xee; 6])
            .ipv4(src, dst, 64)
            .tcp(sp, dp, 1000, 65535)
            .ack(77);
        let mut v = Vec::new();
        b.write(&mut v, payload).unwrap();
        v
    }

    fn verify(frame: &[u8]) -> (FlowKey, bool) {
        let s = SlicedPacket::from_ethernet(frame).unwrap();
        let Some(NetSlice::Ipv4(ip)) = &s.net else {
            panic!()
        };
        assert_eq!(checksum::checksum(ip.header().slice()), 0, "ip checksum");
        let h = ip.header();
        let (src, dst) = (h.source_addr(), h.destination_addr());
        let l4_ok = match &s.transport {
            Some(TransportSlice::Udp(u)) => {
                u.to_header()
                    .calc_checksum_ipv4_raw(src.octets(), dst.octets(), u.payload())
                    .unwrap()
                    == u.checksum()
            }
            Some(TransportSlice::Tcp(t)) => {
                t.to_header()
                    .calc_checksum_ipv4_raw(src.octets(), dst.octets(), t.payload())
                    .unwrap()
                    == t.checksum()
            }
            _ => true,
        };
        (tuple_at(frame, 14, 34, h.protocol().0).unwrap(), l4_ok)
    }

    #[test]
    fn dnat_and_snat_keep_checksums_valid() {
        for mut f in [
            udp([10, 244, 1, 2], 40000, [10, 96, 0, 10], 53, b"query"),
            tcp(
                [10, 244, 1, 2],
                40000,
                [10, 96, 0, 10],
                8080,
                b"GET / HTTP/1.1\r\n",
            ),
        ] {
            let proto = f[14 + 9];
            let to = FlowKey::new(
                Ipv4Addr::new(198, 18, 0, 1),
                61441,
                Ipv4Addr::new(10, 244, 2, 7),
                80,
                proto,
            );
            rewrite_at(&mut f, 14, 34, proto, &to, false, true);
            let (k, ok) = verify(&f);
            assert_eq!(k, to);
            assert!(ok, "l4 checksum after rewrite (proto {proto})");
        }
    }

    #[test]
    fn partial_checksum_stays_a_valid_pseudo_header_sum() {
        // A NEEDS_CSUM segment: the field holds the pseudo-header sum.
        let mut f = tcp([10, 244, 1, 2], 40000, [10, 96, 0, 10], 8080, &[7u8; 100]);
        let pseudo = |f: &[u8]| {
            let mut ph = Vec::new();
            ph.extend_from_slice(&f[26..34]);
            ph.extend_from_slice(&[0, 6]);
            ph.extend_from_slice(&((f.len() - 34) as u16).to_be_bytes());
            checksum::sum(&ph, 0) as u16
        };
        let p0 = pseudo(&f);
        f[34 + 16..34 + 18].copy_from_slice(&p0.to_be_bytes());
        let to = FlowKey::new(
            Ipv4Addr::new(10, 244, 1, 2),
            40000,
            Ipv4Addr::new(10, 244, 2, 9),
            80,
            6,
        );
        rewrite_at(&mut f, 14, 34, 6, &to, true, true);
        assert_eq!(rd16(&f, 34 + 16), pseudo(&f));
        // Completing it gives a valid checksum.
        assert!(checksum::complete_partial(&mut f, 34, 16));
        assert!(verify(&f).1);
    }

    #[test]
    fn udp_without_checksum_keeps_zero() {
        let mut f = udp([10, 244, 1, 2], 40000, [10, 96, 0, 10], 53, b"q");
        wr16(&mut f, 34 + 6, 0);
        let to = FlowKey::new(
            Ipv4Addr::new(10, 244, 1, 2),
            40000,
            Ipv4Addr::new(10, 244, 3, 3),
            5353,
            17,
        );
        rewrite_at(&mut f, 14, 34, 17, &to, false, true);
        assert_eq!(rd16(&f, 34 + 6), 0);
        assert_eq!(tuple_at(&f, 14, 34, 17), Some(to));
    }

    #[test]
    fn icmp_echo_id_is_the_port() {
        let b = PacketBuilder::ethernet2([2; 6], [0xee; 6])
            .ipv4([10, 244, 1, 2], [203, 0, 113, 10], 64)
            .icmpv4_echo_request(0x1234, 1);
        let mut f = Vec::new();
        b.write(&mut f, b"ping").unwrap();
        let k = tuple_at(&f, 14, 34, 1).unwrap();
        assert_eq!((k.sport, k.dport), (0x1234, 0));
        let to = FlowKey::new(Ipv4Addr::new(198, 18, 0, 1), 61500, k.dst, 0, 1);
        rewrite_at(&mut f, 14, 34, 1, &to, false, true);
        assert_eq!(tuple_at(&f, 14, 34, 1), Some(to));
        assert_eq!(checksum::checksum(&f[34..]), 0, "icmp checksum");
        assert_eq!(checksum::checksum(&f[14..34]), 0);
    }
}
