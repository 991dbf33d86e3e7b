//! Encap for the kernel's UDP-tunnel GSO: the headers that turn a pod's
//! TCP superframe into one VXLAN superframe, which the node's kernel
//! segments as late as its own vxlan device does (at the NIC, or never
//! across a veth).
//!
//! A pod's TSO superframe (a vnet header with GSO TCPV4 and a partial
//! checksum, up to 64 KiB) keeps its bytes; in front of it go a 24-byte
//! `virtio_net_hdr_v1_hash_tunnel` and the outer Ethernet, IPv4, UDP and
//! VXLAN headers. Written into a tap with `TUNSETVNETHDRSZ` = 24 (Linux
//! 6.17 or later), the kernel takes it as an skb with `SKB_GSO_UDP_TUNNEL |
//! SKB_GSO_TCPV4`, routes it to the underlay like any forwarded datagram,
//! and cuts it into VXLAN datagrams (fixing every segment's outer and
//! inner lengths, IDs and checksums) only where a device cannot carry it.
//! `docs/design/udp-tunnel-gso.md` has the kernel's rules this follows.
//!
//! Only the headers are built here (74 bytes, into a caller's buffer); the
//! worker puts them in the packet's headroom in front of the untouched
//! frame. Plain frames take the same way ([`udp_tunnel_frame`]), one
//! datagram each, so every datagram's UDP source port comes from its inner
//! flow (RFC 7348 §5) and the writes batch with the pod taps'.
//!
//! Where the kernel cannot take a superframe whole, [`vxlan_datagrams`]
//! builds the VXLAN datagrams (UDP payloads) back to back for one
//! `UDP_SEGMENT` send: a superframe cut into segments with full checksums
//! (`wire::segment`), anything else one datagram.

use std::net::Ipv4Addr;

use super::DropReason;
use crate::wire::checksum;
use crate::wire::vnet_hdr::{self, GsoKind, TunnelRepr};
use crate::wire::vxlan;

/// Outer Ethernet + IPv4 + UDP + VXLAN.
pub const OUTER_LEN: usize = 14 + 20 + 8 + vxlan::HEADER_LEN;
/// The tunnel vnet header and the outer headers, as written before the
/// inner frame.
pub const TUNNEL_PREFIX_LEN: usize = vnet_hdr::TUNNEL_LEN + OUTER_LEN;
/// Where the outer UDP header starts in the frame (after Ethernet, IPv4).
const OUTER_UDP: usize = 14 + 20;

/// The outer addresses of one VXLAN superframe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterV4 {
    /// The tap's own MAC: the kernel takes only frames addressed to it.
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src_ip: Ipv4Addr,
    pub dst_ip: Ipv4Addr,
    /// From the inner flow hash (RFC 7348 §5, [`vxlan::source_port`]).
    pub src_port: u16,
    pub dst_port: u16,
    pub vni: u32,
}

/// Why a frame goes the software-segmentation way instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotTunnelable {
    /// Not a TCP-over-IPv4 GSO superframe with its checksum at the TCP
    /// header (the kernel's tunnel GSO takes TCP and UDP_L4; pods' UDP
    /// superframes are not offered on their taps).
    NotTcpV4Gso,
    /// At most one segment: nothing to segment.
    OneSegment,
    /// A segment with its outer headers would not fit the underlay MTU
    /// (the kernel would fragment every one of them).
    SegmentsExceedMtu,
    /// With the outer headers the datagram would pass 64 KiB.
    TooLong,
}

/// Writes into `out` the tunnel vnet header and the outer headers for
/// `frame` (an Ethernet frame whose vnet header from the pod is `vnet`),
/// or says why the frame must be segmented in software. Checks what the
/// kernel checks before it accepts a tunnel GSO header, so a frame this
/// accepts is never refused with `EINVAL` at the write.
pub fn udp_tunnel_superframe(
    out: &mut [u8; TUNNEL_PREFIX_LEN],
    frame: &[u8],
    vnet: &vnet_hdr::Repr,
    outer: &OuterV4,
    underlay_mtu: u16,
) -> Result<(), NotTunnelable> {
    const ETH: usize = 14;
    if vnet.gso != GsoKind::TcpV4 || frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return Err(NotTunnelable::NotTcpV4Gso);
    }
    let ihl = usize::from(frame[ETH] & 0x0f) * 4;
    let l4 = ETH + ihl;
    let Some((start, 16)) = vnet.csum.map(|(s, o)| (usize::from(s), o)) else {
        return Err(NotTunnelable::NotTcpV4Gso);
    };
    if frame[ETH] >> 4 != 4
        || ihl < 20
        || start != l4
        || frame[ETH + 9] != 6
        || frame.len() < l4 + 20
    {
        return Err(NotTunnelable::NotTcpV4Gso);
    }
    let tcp_len = usize::from(frame[l4 + 12] >> 4) * 4;
    if tcp_len < 20 || frame.len() < l4 + tcp_len {
        return Err(NotTunnelable::NotTcpV4Gso);
    }
    let gso_size = usize::from(vnet.gso_size);
    if frame.len() - l4 - tcp_len <= gso_size {
        return Err(NotTunnelable::OneSegment);
    }
    // What each segment weighs on the underlay (skb_gso_network_seglen).
    if 20 + 8 + vxlan::HEADER_LEN + l4 + tcp_len + gso_size > usize::from(underlay_mtu) {
        return Err(NotTunnelable::SegmentsExceedMtu);
    }
    let udp_len = 8 + vxlan::HEADER_LEN + frame.len();
    let ip_len = 20 + udp_len;
    if ip_len > usize::from(u16::MAX) {
        return Err(NotTunnelable::TooLong);
    }
    let (hdr, rest) = out.split_at_mut(vnet_hdr::TUNNEL_LEN);
    let hdr: &mut [u8; vnet_hdr::TUNNEL_LEN] = hdr.try_into().unwrap_or_else(|_| unreachable!());
    TunnelRepr {
        inner: GsoKind::TcpV4,
        ecn: vnet.ecn,
        gso_size: vnet.gso_size,
        csum_start: (OUTER_LEN + l4) as u16,
        csum_offset: 16,
        hdr_len: (OUTER_LEN + l4 + tcp_len) as u16,
        outer_th_offset: OUTER_UDP as u16,
        inner_nh_offset: (OUTER_LEN + ETH) as u16,
        outer_csum: false,
    }
    .emit(hdr);
    emit_outer(rest, ip_len, udp_len, outer);
    Ok(())
}

/// What a frame becomes on the tunnel port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelFrame {
    /// A TCP superframe the kernel segments (into about `segments`
    /// datagrams) where a device needs it.
    Superframe { segments: usize },
    /// One datagram.
    Plain,
}

/// Writes into `out` the vnet header and outer headers that send `frame`
/// (vnet header `vnet`, from the pipeline) through the tunnel port as
/// one VXLAN datagram, or as a superframe the kernel segments
/// ([`udp_tunnel_superframe`]). A plain frame keeps its partial checksum
/// (NEEDS_CSUM, moved past the outer headers): the kernel or the NIC
/// completes it where the datagram leaves, or the receiving switch passes
/// it on as partial.
///
/// # Errors
/// Why the frame must take the software path instead (a UDP superframe,
/// superframe segments over the underlay MTU, a datagram over 64 KiB).
pub fn udp_tunnel_frame(
    out: &mut [u8; TUNNEL_PREFIX_LEN],
    frame: &[u8],
    vnet: &vnet_hdr::Repr,
    outer: &OuterV4,
    underlay_mtu: u16,
) -> Result<TunnelFrame, NotTunnelable> {
    if vnet.is_gso() {
        match udp_tunnel_superframe(out, frame, vnet, outer, underlay_mtu) {
            Ok(()) => {
                let hdr = usize::from(u16::from_le_bytes([out[2], out[3]])) - OUTER_LEN;
                let payload = frame.len().saturating_sub(hdr);
                return Ok(TunnelFrame::Superframe {
                    segments: payload.div_ceil(usize::from(vnet.gso_size.max(1))),
                });
            }
            // One segment: a plain datagram with its partial checksum.
            Err(NotTunnelable::OneSegment) => {}
            Err(e) => return Err(e),
        }
    }
    let udp_len = 8 + vxlan::HEADER_LEN + frame.len();
    let ip_len = 20 + udp_len;
    if ip_len > usize::from(u16::MAX) {
        return Err(NotTunnelable::TooLong);
    }
    let (hdr, rest) = out.split_at_mut(vnet_hdr::TUNNEL_LEN);
    hdr.fill(0);
    if let Some((start, offset)) = vnet.csum {
        let mut h = vnet_hdr::VnetHdr::new_checked(&mut hdr[..vnet_hdr::LEN])
            .unwrap_or_else(|_| unreachable!("24 bytes"));
        vnet_hdr::Repr {
            csum: Some((start + OUTER_LEN as u16, offset)),
            ..vnet_hdr::Repr::NONE
        }
        .emit(&mut h);
    }
    emit_outer(rest, ip_len, udp_len, outer);
    Ok(TunnelFrame::Plain)
}

/// The outer Ethernet, IPv4, UDP and VXLAN headers, into `rest`
/// ([`OUTER_LEN`] bytes).
fn emit_outer(rest: &mut [u8], ip_len: usize, udp_len: usize, outer: &OuterV4) {
    // Outer Ethernet.
    rest[0..6].copy_from_slice(&outer.dst_mac);
    rest[6..12].copy_from_slice(&outer.src_mac);
    rest[12..14].copy_from_slice(&[0x08, 0x00]);
    // Outer IPv4: DF clear, as Linux's vxlan device by default (`df
    // unset`): a path narrower than the segments fragments them.
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&outer.src_ip.octets());
    ip[16..20].copy_from_slice(&outer.dst_ip.octets());
    let csum = !checksum::sum_ipv4_header(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    rest[14..34].copy_from_slice(&ip);
    // Outer UDP, checksum zero (RFC 7348 §5 allows it over IPv4; the kernel
    // keeps it zero in every segment).
    let udp = &mut rest[OUTER_UDP..OUTER_UDP + 8];
    udp[0..2].copy_from_slice(&outer.src_port.to_be_bytes());
    udp[2..4].copy_from_slice(&outer.dst_port.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    vxlan::Repr { vni: outer.vni }.emit_into(&mut rest[OUTER_UDP + 8..OUTER_LEN]);
}

/// The datagrams [`vxlan_datagrams`] wrote: `total` bytes, datagrams of
/// `segment_len` bytes back to back (the last may be shorter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagrams {
    pub total: usize,
    pub segment_len: usize,
    pub segments: usize,
}

/// Writes into `out` the VXLAN datagrams (VXLAN header + inner frame)
/// that carry `frame` (vnet header `vnet`; `tcp_v4`: the pipeline parsed
/// it as TCP over IPv4): a TCP superframe or a TCP segment with a partial
/// checksum is cut into segments of `gso_size` with full checksums, as
/// Linux's `tcp_gso_segment` cuts them; anything else is one datagram,
/// its partial checksum (if any) completed, since nothing after the
/// socket completes it.
///
/// # Errors
/// `SegmentationFailed`: a UDP superframe (pod taps do not offer USO), a
/// malformed superframe, or `out` too small.
pub fn vxlan_datagrams(
    frame: &[u8],
    vnet: &vnet_hdr::Repr,
    tcp_v4: bool,
    vni: u32,
    out: &mut [u8],
) -> Result<Datagrams, DropReason> {
    let vx = vxlan::Repr { vni };
    if tcp_v4 && (vnet.is_gso() || vnet.csum.is_some()) {
        let s = crate::wire::segment::segment_tcp_v4(frame, vnet, vxlan::HEADER_LEN, out, |b| {
            vx.emit_into(b);
        })
        .map_err(|_| DropReason::SegmentationFailed)?;
        return Ok(Datagrams {
            total: s.total_len,
            segment_len: s.segment_len,
            segments: s.segments,
        });
    }
    if vnet.is_gso() {
        return Err(DropReason::SegmentationFailed);
    }
    let h = vxlan::HEADER_LEN;
    let n = h + frame.len();
    if n > out.len() {
        return Err(DropReason::SegmentationFailed);
    }
    vx.emit_into(&mut out[..h]);
    out[h..n].copy_from_slice(frame);
    if let Some((start, offset)) = vnet.csum {
        checksum::complete_partial(&mut out[h..n], usize::from(start), usize::from(offset));
    }
    Ok(Datagrams {
        total: n,
        segment_len: n,
        segments: 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::vnet_hdr::tunnel_field;

    const OUTER: OuterV4 = OuterV4 {
        dst_mac: [0x02, 0, 0, 0, 0, 0xaa],
        src_mac: [0x02, 0, 0, 0, 0, 0xbb],
        src_ip: Ipv4Addr::new(198, 18, 0, 1),
        dst_ip: Ipv4Addr::new(198, 18, 0, 2),
        src_port: 50_000,
        dst_port: 4789,
        vni: 1,
    };

    /// A TSO superframe as a pod's kernel hands it to its tap: 10.244.1.2
    /// -> 10.244.2.2, a 32-byte TCP header (timestamps), `payload` bytes.
    fn superframe(payload: usize) -> (Vec<u8>, vnet_hdr::Repr) {
        let mut f = vec![0u8; 14 + 20 + 32 + payload];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip_len = (20 + 32 + payload) as u16;
        f[14] = 0x45;
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f[22] = 64;
        f[23] = 6;
        f[26..30].copy_from_slice(&[10, 244, 1, 2]);
        f[30..34].copy_from_slice(&[10, 244, 2, 2]);
        f[34 + 12] = 8 << 4;
        let vnet = vnet_hdr::Repr {
            csum: Some((34, 16)),
            gso: GsoKind::TcpV4,
            gso_size: 1386,
            hdr_len: 66,
            ecn: false,
        };
        (f, vnet)
    }

    fn le(b: &[u8], r: std::ops::Range<usize>) -> usize {
        usize::from(u16::from_le_bytes([b[r.start], b[r.start + 1]]))
    }

    #[test]
    fn superframe_headers_are_what_the_kernel_checks() {
        let (f, vnet) = superframe(30_000);
        let mut out = [0u8; TUNNEL_PREFIX_LEN];
        udp_tunnel_superframe(&mut out, &f, &vnet, &OUTER, 1500).unwrap();
        let (h, outer) = out.split_at(vnet_hdr::TUNNEL_LEN);
        assert_eq!(h[0], vnet_hdr::FLAG_NEEDS_CSUM);
        assert_eq!(h[1], 0x21, "TCPV4 | UDP_TUNNEL_IPV4");
        assert_eq!(le(h, 4..6), 1386, "gso_size");
        let (csum_start, outer_th, inner_nh) = (
            le(h, 6..8),
            le(h, tunnel_field::OUTER_TH_OFFSET),
            le(h, tunnel_field::INNER_NH_OFFSET),
        );
        assert_eq!((outer_th, inner_nh, csum_start), (34, 64, 84));
        assert_eq!(le(h, 8..10), 16, "csum_offset: the TCP checksum");
        assert_eq!(le(h, 2..4), 84 + 32, "hdr_len");
        // virtio_net_hdr_tnl_to_skb's checks.
        assert!(outer_th >= 14 + 20 && inner_nh >= outer_th + 8 && csum_start >= inner_nh + 20);
        // The outer headers.
        assert_eq!(&outer[0..6], &OUTER.dst_mac);
        let ip: [u8; 20] = outer[14..34].try_into().unwrap();
        assert_eq!(
            checksum::sum_ipv4_header(&ip),
            0xffff,
            "valid IPv4 header checksum"
        );
        assert_eq!(
            usize::from(u16::from_be_bytes([ip[2], ip[3]])),
            20 + 8 + 8 + f.len()
        );
        assert_eq!(ip[6] & 0x40, 0, "DF clear");
        assert_eq!(
            (&ip[12..16], &ip[16..20]),
            (&[198, 18, 0, 1][..], &[198, 18, 0, 2][..])
        );
        let udp = &outer[34..42];
        assert_eq!(u16::from_be_bytes([udp[0], udp[1]]), 50_000);
        assert_eq!(u16::from_be_bytes([udp[2], udp[3]]), 4789);
        assert_eq!(
            usize::from(u16::from_be_bytes([udp[4], udp[5]])),
            16 + f.len()
        );
        assert_eq!(&udp[6..8], &[0, 0], "outer UDP checksum zero");
        assert_eq!(&outer[42..50], &[0x08, 0, 0, 0, 0, 0, 1, 0]);
    }

    /// A superframe with a real pseudo-header checksum, as a pod's kernel
    /// leaves it.
    fn with_partial_checksum(mut f: Vec<u8>) -> Vec<u8> {
        let l4_len = (f.len() - 34) as u16;
        let mut pseudo = checksum::sum(&f[26..34], 0);
        pseudo = checksum::sum(&[0, 6], pseudo);
        pseudo = checksum::sum(&l4_len.to_be_bytes(), pseudo);
        f[50..52].copy_from_slice(&(pseudo as u16).to_be_bytes());
        f
    }

    #[test]
    fn plain_frames_keep_their_partial_checksum_past_the_outer_headers() {
        let mut out = [0u8; TUNNEL_PREFIX_LEN];
        let (f, mut vnet) = superframe(100);
        vnet.gso = GsoKind::None;
        vnet.gso_size = 0;
        assert_eq!(
            udp_tunnel_frame(&mut out, &f, &vnet, &OUTER, 1500),
            Ok(TunnelFrame::Plain)
        );
        let h = vnet_hdr::Repr::parse(
            &vnet_hdr::VnetHdr::new_checked(&out[..vnet_hdr::LEN]).unwrap(),
            OUTER_LEN + f.len(),
        )
        .unwrap();
        assert_eq!((h.gso, h.csum), (GsoKind::None, Some((84, 16))));
        assert_eq!(&out[vnet_hdr::LEN..vnet_hdr::TUNNEL_LEN], &[0; 12]);
        let ip: [u8; 20] = out[24 + 14..24 + 34].try_into().unwrap();
        assert_eq!(checksum::sum_ipv4_header(&ip), 0xffff);
        // A full checksum: no NEEDS_CSUM.
        udp_tunnel_frame(&mut out, &f, &vnet_hdr::Repr::NONE, &OUTER, 1500).unwrap();
        assert_eq!(&out[..vnet_hdr::TUNNEL_LEN], &[0; 24]);
        // A superframe of one segment goes as a plain datagram; a bigger
        // one as a superframe.
        let (f, vnet) = superframe(1000);
        assert_eq!(
            udp_tunnel_frame(&mut out, &f, &vnet, &OUTER, 1500),
            Ok(TunnelFrame::Plain)
        );
        let (f, vnet) = superframe(3 * 1386 + 1);
        assert_eq!(
            udp_tunnel_frame(&mut out, &f, &vnet, &OUTER, 1500),
            Ok(TunnelFrame::Superframe { segments: 4 })
        );
        assert_eq!(
            udp_tunnel_frame(&mut out, &f, &vnet, &OUTER, 1400),
            Err(NotTunnelable::SegmentsExceedMtu)
        );
    }

    #[test]
    fn software_path_cuts_superframes_into_checksummed_datagrams() {
        let (f, vnet) = superframe(3 * 1386 + 100);
        let f = with_partial_checksum(f);
        let mut out = vec![0u8; 3 * 65536];
        let d = vxlan_datagrams(&f, &vnet, true, 7, &mut out).unwrap();
        assert_eq!(d.segments, 4);
        assert_eq!(d.segment_len, 8 + 14 + 20 + 32 + 1386);
        for dgram in out[..d.total].chunks(d.segment_len) {
            assert_eq!(
                &dgram[..8],
                &[0x08, 0, 0, 0, 0, 0, 7, 0],
                "VXLAN header, VNI 7"
            );
            let inner = &dgram[8..];
            let ip: [u8; 20] = inner[14..34].try_into().unwrap();
            assert_eq!(checksum::sum_ipv4_header(&ip), 0xffff);
            let l4_len = inner.len() - 34;
            let mut pseudo = checksum::sum(&inner[26..34], 0);
            pseudo = checksum::sum(&[0, 6], pseudo);
            pseudo = checksum::sum(&(l4_len as u16).to_be_bytes(), pseudo);
            assert_eq!(
                checksum::sum(&inner[34..], pseudo) as u16,
                0xffff,
                "TCP checksum whole"
            );
        }
        // One frame, no offload: one datagram, the frame unchanged.
        let (small, _) = superframe(100);
        let d = vxlan_datagrams(&small, &vnet_hdr::Repr::NONE, true, 7, &mut out).unwrap();
        assert_eq!((d.segments, d.total), (1, 8 + small.len()));
        assert_eq!(&out[8..d.total], &small[..]);
        // UDP superframes are never offered by pod taps; a buffer too small fails.
        let udp = vnet_hdr::Repr {
            gso: GsoKind::UdpL4,
            ..vnet
        };
        assert_eq!(
            vxlan_datagrams(&f, &udp, false, 7, &mut out),
            Err(DropReason::SegmentationFailed)
        );
        assert_eq!(
            vxlan_datagrams(&small, &vnet_hdr::Repr::NONE, true, 7, &mut out[..50]),
            Err(DropReason::SegmentationFailed)
        );
    }

    #[test]
    fn what_is_not_a_multi_segment_tcp_superframe_is_left_to_software() {
        let mut out = [0u8; TUNNEL_PREFIX_LEN];
        let (f, vnet) = superframe(1000);
        assert_eq!(
            udp_tunnel_superframe(&mut out, &f, &vnet, &OUTER, 1500),
            Err(NotTunnelable::OneSegment)
        );
        let (f, vnet) = superframe(30_000);
        // 20 + 8 + 8 + 14 + 20 + 32 + 1386 = 1488 bytes per segment.
        assert_eq!(
            udp_tunnel_superframe(&mut out, &f, &vnet, &OUTER, 1487),
            Err(NotTunnelable::SegmentsExceedMtu)
        );
        let plain = vnet_hdr::Repr::NONE;
        assert_eq!(
            udp_tunnel_superframe(&mut out, &f, &plain, &OUTER, 1500),
            Err(NotTunnelable::NotTcpV4Gso)
        );
        let moved = vnet_hdr::Repr {
            csum: Some((40, 16)),
            ..vnet
        };
        assert_eq!(
            udp_tunnel_superframe(&mut out, &f, &moved, &OUTER, 1500),
            Err(NotTunnelable::NotTcpV4Gso)
        );
        let (big, vnet) = superframe(65_535 - 52);
        assert_eq!(
            udp_tunnel_superframe(&mut out, &big, &vnet, &OUTER, 1500),
            Err(NotTunnelable::TooLong)
        );
        // Truncated frames never panic.
        for n in 0..70 {
            let _ = udp_tunnel_superframe(&mut out, &f[..n], &vnet, &OUTER, 1500);
        }
    }
}
