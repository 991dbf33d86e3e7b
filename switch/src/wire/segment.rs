//! Software segmentation of a TCP/IPv4 TSO superframe for the overlay path.
//!
//! A pod's tap hands us superframes of up to 64 KiB with a virtio_net_hdr
//! asking for `GSO_TCPV4` and a partial checksum (virtio spec §5.1.6.2). The
//! same-node path passes them on whole; the overlay path cannot, since the
//! remote node receives plain UDP datagrams. [`segment_tcp_v4`] cuts the
//! superframe into MSS-sized frames, back to back in one caller-provided
//! buffer, each preceded by a prefix (the VXLAN header, RFC 7348 §5) the
//! caller writes, with every segment but the last the same length, so the
//! result goes out in one `sendmsg` with `UDP_SEGMENT` (see
//! `port::underlay`).
//!
//! Which header fields change per segment follows Linux
//! (`net/ipv4/tcp_offload.c: tcp_gso_segment`, `net/ipv4/af_inet.c:
//! inet_gso_segment`) and wireguard-go (`tun/offload_linux.go: gsoSplit`):
//! IPv4 total length, id + i and header checksum; TCP sequence number + i ×
//! MSS; FIN and PSH only on the last segment; CWR only on the first
//! (RFC 3168 §6.1.2: CWR is set on one packet only). The TCP checksum of
//! each segment is computed in full over its own pseudo-header (RFC 9293
//! §3.1), ignoring whatever partial sum the field held, as gsoSplit does.
//!
//! No allocation: the caller passes the output buffer.

use super::checksum;
use super::vnet_hdr::{self, GsoKind};

const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const PROTO_TCP: u8 = 6;
/// Offset of the checksum in the TCP header (`csum_offset` for TCP).
const TCP_CSUM_OFFSET: usize = 16;
const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Why a frame could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The output buffer cannot hold every segment.
    #[error("output buffer too small: {needed} bytes needed, {available} available")]
    OutTooSmall { needed: usize, available: usize },
    /// The frame is not Ethernet/IPv4/TCP (or is an IPv4 fragment).
    #[error("frame is not an unfragmented Ethernet/IPv4/TCP packet")]
    NotTcpV4,
    /// Header lengths, IPv4 total length and frame length disagree.
    #[error("inconsistent lengths: {0}")]
    BadLength(&'static str),
    /// The vnet header asks for GSO other than TCPv4.
    #[error("unsupported GSO kind {0:?} for TCP/IPv4 segmentation")]
    UnsupportedGso(GsoKind),
    /// GSO requested with `gso_size` 0.
    #[error("GSO with gso_size 0")]
    ZeroGsoSize,
    /// `csum_start`/`csum_offset` do not point at the TCP checksum.
    #[error("partial checksum at start {start} offset {offset} is not the TCP checksum")]
    CsumNotTcp { start: u16, offset: u16 },
}

/// Layout of the segments written into the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentedBuf {
    /// Number of segments (at least 1).
    pub segments: usize,
    /// Prefix plus one full inner segment: every segment but the last has
    /// exactly this length (the `UDP_SEGMENT` size).
    pub segment_len: usize,
    /// Bytes written to the output buffer.
    pub total_len: usize,
}

/// Where the headers of a validated Ethernet/IPv4/TCP frame are.
struct Layout {
    ip_hdr_len: usize,
    tcp_hdr_len: usize,
    /// Ethernet + IPv4 + TCP header bytes.
    hdrs_len: usize,
    /// TCP payload bytes (bounded by the IPv4 total length, so Ethernet
    /// padding is never taken for payload).
    payload_len: usize,
}

fn parse_layout(frame: &[u8]) -> Result<Layout, SegmentError> {
    let eth =
        etherparse::Ethernet2HeaderSlice::from_slice(frame).map_err(|_| SegmentError::NotTcpV4)?;
    if eth.ether_type().0 != ETHERTYPE_IPV4 {
        return Err(SegmentError::NotTcpV4);
    }
    let ip_bytes = &frame[ETH_LEN..];
    let ip =
        etherparse::Ipv4HeaderSlice::from_slice(ip_bytes).map_err(|_| SegmentError::NotTcpV4)?;
    if ip.protocol() != etherparse::IpNumber::TCP || ip.is_fragmenting_payload() {
        return Err(SegmentError::NotTcpV4);
    }
    let ip_hdr_len = ip.slice().len();
    let total = usize::from(ip.total_len());
    if total > ip_bytes.len() {
        return Err(SegmentError::BadLength(
            "IPv4 total length beyond the frame",
        ));
    }
    if total < ip_hdr_len {
        return Err(SegmentError::BadLength(
            "IPv4 total length below its header length",
        ));
    }
    let tcp = etherparse::TcpHeaderSlice::from_slice(&ip_bytes[ip_hdr_len..total])
        .map_err(|_| SegmentError::BadLength("TCP header beyond the IPv4 total length"))?;
    let tcp_hdr_len = tcp.slice().len();
    let hdrs_len = ETH_LEN + ip_hdr_len + tcp_hdr_len;
    Ok(Layout {
        ip_hdr_len,
        tcp_hdr_len,
        hdrs_len,
        payload_len: total - ip_hdr_len - tcp_hdr_len,
    })
}

/// Segments an Ethernet/IPv4/TCP frame as its vnet header asks, writing
/// `[prefix][Ethernet][IPv4][TCP][payload]` per segment back to back into
/// `out`; `write_prefix` fills each `prefix_len`-byte prefix.
///
/// - `vnet.gso == TcpV4`: split into `gso_size`-byte payloads (see the
///   module docs for what changes per segment); every checksum is complete.
/// - no GSO, partial checksum (`NEEDS_CSUM`): one segment, checksum completed.
/// - no GSO, full checksum: one segment, the frame copied unchanged.
///
/// Never panics on bad input; errors are described by [`SegmentError`].
pub fn segment_tcp_v4(
    frame: &[u8],
    vnet: &vnet_hdr::Repr,
    prefix_len: usize,
    out: &mut [u8],
    mut write_prefix: impl FnMut(&mut [u8]),
) -> Result<SegmentedBuf, SegmentError> {
    let l = parse_layout(frame)?;
    let tcp_start = ETH_LEN + l.ip_hdr_len;
    if let Some((start, offset)) = vnet.csum {
        if usize::from(start) != tcp_start || usize::from(offset) != TCP_CSUM_OFFSET {
            return Err(SegmentError::CsumNotTcp { start, offset });
        }
    }
    let mss = match vnet.gso {
        GsoKind::TcpV4 if vnet.gso_size == 0 => return Err(SegmentError::ZeroGsoSize),
        GsoKind::TcpV4 => usize::from(vnet.gso_size),
        GsoKind::None => {
            if vnet.csum.is_none() {
                // Full checksums already: the frame goes as it is.
                return copy_one(frame, prefix_len, out, write_prefix);
            }
            l.payload_len.max(1)
        }
        other => return Err(SegmentError::UnsupportedGso(other)),
    };

    // At most 64 KiB of payload, so neither count nor sizes can overflow.
    let seg_payload = mss.min(l.payload_len);
    let segments = l.payload_len.div_ceil(mss).max(1);
    let segment_len = prefix_len + l.hdrs_len + seg_payload;
    let total_len = segments * (prefix_len + l.hdrs_len) + l.payload_len;
    if out.len() < total_len {
        return Err(SegmentError::OutTooSmall {
            needed: total_len,
            available: out.len(),
        });
    }

    let hdrs = &frame[..l.hdrs_len];
    let payload = &frame[l.hdrs_len..l.hdrs_len + l.payload_len];
    let ip_id = u16::from_be_bytes([frame[ETH_LEN + 4], frame[ETH_LEN + 5]]);
    let seq = u32::from_be_bytes([
        frame[tcp_start + 4],
        frame[tcp_start + 5],
        frame[tcp_start + 6],
        frame[tcp_start + 7],
    ]);
    let flags = frame[tcp_start + 13];
    // Pseudo-header without the length: source, destination, protocol.
    let pseudo = checksum::sum(&frame[ETH_LEN + 12..ETH_LEN + 20], u32::from(PROTO_TCP));

    for i in 0..segments {
        // A header-only frame still yields its one (empty) chunk.
        let chunk = &payload[i * mss..((i + 1) * mss).min(l.payload_len)];
        let seg =
            &mut out[i * segment_len..i * segment_len + prefix_len + l.hdrs_len + chunk.len()];
        let (prefix, inner) = seg.split_at_mut(prefix_len);
        write_prefix(prefix);
        inner[..l.hdrs_len].copy_from_slice(hdrs);
        inner[l.hdrs_len..].copy_from_slice(chunk);

        let last = i + 1 == segments;
        let (ip, tcp) = inner[ETH_LEN..].split_at_mut(l.ip_hdr_len);
        let tcp_len = l.tcp_hdr_len + chunk.len();
        // Fits: at most the original total length.
        let ip_total = (l.ip_hdr_len + tcp_len) as u16;
        ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
        ip[4..6].copy_from_slice(&ip_id.wrapping_add(i as u16).to_be_bytes());
        ip[10..12].fill(0);
        let ip_csum = checksum::checksum(ip);
        ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());

        let seg_seq = seq.wrapping_add((i * mss) as u32);
        tcp[4..8].copy_from_slice(&seg_seq.to_be_bytes());
        let mut f = flags;
        if !last {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            f &= !TCP_CWR;
        }
        tcp[13] = f;
        tcp[TCP_CSUM_OFFSET..TCP_CSUM_OFFSET + 2].fill(0);
        let s = checksum::sum(tcp, pseudo + tcp_len as u32);
        tcp[TCP_CSUM_OFFSET..TCP_CSUM_OFFSET + 2].copy_from_slice(&(!(s as u16)).to_be_bytes());
    }

    Ok(SegmentedBuf {
        segments,
        segment_len,
        total_len,
    })
}

fn copy_one(
    frame: &[u8],
    prefix_len: usize,
    out: &mut [u8],
    mut write_prefix: impl FnMut(&mut [u8]),
) -> Result<SegmentedBuf, SegmentError> {
    let total_len = prefix_len + frame.len();
    let Some(seg) = out.get_mut(..total_len) else {
        return Err(SegmentError::OutTooSmall {
            needed: total_len,
            available: out.len(),
        });
    };
    let (prefix, inner) = seg.split_at_mut(prefix_len);
    write_prefix(prefix);
    inner.copy_from_slice(frame);
    Ok(SegmentedBuf {
        segments: 1,
        segment_len: total_len,
        total_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Header, TcpHeader};

    const SRC: [u8; 4] = [10, 244, 1, 2];
    const DST: [u8; 4] = [10, 244, 2, 3];
    const PREFIX: usize = 8;

    fn payload(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A TSO superframe as a tap hands it over: full IPv4 checksum, the TCP
    /// checksum field holding the folded pseudo-header sum (over the whole
    /// TCP length), not complemented, as `tcp_v4_send_check` leaves it.
    fn superframe(tcp: &TcpHeader, data: &[u8], ip_id: u16) -> Vec<u8> {
        let eth = Ethernet2Header {
            source: [2, 0, 0, 0, 0, 1],
            destination: [2, 0, 0, 0, 0, 2],
            ether_type: EtherType::IPV4,
        };
        let mut ip = Ipv4Header::new(
            (tcp.header_len() + data.len()) as u16,
            64,
            IpNumber::TCP,
            SRC,
            DST,
        )
        .unwrap();
        ip.identification = ip_id;
        ip.dont_fragment = true;
        ip.header_checksum = ip.calc_header_checksum();
        let mut tcp = tcp.clone();
        let mut pseudo = [0u8; 12];
        pseudo[..4].copy_from_slice(&SRC);
        pseudo[4..8].copy_from_slice(&DST);
        pseudo[9] = 6;
        pseudo[10..].copy_from_slice(&((tcp.header_len() + data.len()) as u16).to_be_bytes());
        tcp.checksum = checksum::sum(&pseudo, 0) as u16;
        let mut v = Vec::new();
        eth.write(&mut v).unwrap();
        ip.write(&mut v).unwrap();
        tcp.write(&mut v).unwrap();
        v.extend_from_slice(data);
        // The fixture is what the kernel would hand over: completing the
        // partial sum gives the real checksum.
        let mut done = v.clone();
        assert!(checksum::complete_partial(&mut done, 34, 16));
        tcp.checksum = u16::from_be_bytes([done[50], done[51]]);
        assert_eq!(Ok(tcp.checksum), tcp.calc_checksum_ipv4(&ip, data));
        v
    }

    fn tcp_header(seq: u32) -> TcpHeader {
        let mut t = TcpHeader::new(40000, 8080, seq, 512);
        t.ack = true;
        t.acknowledgment_number = 77;
        t.psh = true;
        t.fin = true;
        t.cwr = true;
        t.ece = true;
        // Timestamps, as Linux sends them: a 32-byte TCP header.
        t.set_options_raw(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2])
            .unwrap();
        t
    }

    fn gso(mss: u16) -> vnet_hdr::Repr {
        vnet_hdr::Repr {
            csum: Some((34, 16)),
            gso: GsoKind::TcpV4,
            gso_size: mss,
            hdr_len: 66,
            ecn: true,
        }
    }

    /// Re-parses every segment with etherparse, checks checksums, lengths,
    /// ids, sequence numbers and flags, and returns the joined payload.
    fn check_segments(
        out: &[u8],
        r: &SegmentedBuf,
        orig: &TcpHeader,
        orig_id: u16,
        mss: usize,
    ) -> Vec<u8> {
        let mut joined = Vec::new();
        let mut off = 0;
        for i in 0..r.segments {
            let last = i + 1 == r.segments;
            let len = if last {
                r.total_len - off
            } else {
                r.segment_len
            };
            assert!(len <= r.segment_len);
            let seg = &out[off..off + len];
            assert_eq!(
                &seg[..PREFIX],
                &[0x08, 0, 0, 0, 0, 0, 42, 0],
                "prefix of segment {i}"
            );
            let p = etherparse::SlicedPacket::from_ethernet(&seg[PREFIX..]).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = p.net else {
                panic!("segment {i} not IPv4")
            };
            let iph = ip.header().to_header();
            assert_eq!(
                iph.header_checksum,
                iph.calc_header_checksum(),
                "ip csum {i}"
            );
            assert_eq!(iph.identification, orig_id.wrapping_add(i as u16));
            assert!(iph.dont_fragment);
            let Some(etherparse::TransportSlice::Tcp(tcp)) = p.transport else {
                panic!("segment {i} not TCP")
            };
            let th = tcp.to_header();
            let data = tcp.payload();
            assert_eq!(
                usize::from(iph.total_len),
                iph.header_len() + th.header_len() + data.len()
            );
            assert_eq!(
                th.checksum,
                th.calc_checksum_ipv4(&iph, data).unwrap(),
                "tcp csum {i}"
            );
            assert_eq!(
                th.sequence_number,
                orig.sequence_number.wrapping_add((i * mss) as u32)
            );
            assert_eq!(th.acknowledgment_number, orig.acknowledgment_number);
            assert_eq!(th.options, orig.options);
            assert_eq!(
                (th.fin, th.psh),
                if last {
                    (orig.fin, orig.psh)
                } else {
                    (false, false)
                }
            );
            assert_eq!(th.cwr, i == 0 && orig.cwr);
            assert_eq!(
                (th.ack, th.ece, th.syn, th.rst),
                (orig.ack, orig.ece, orig.syn, orig.rst)
            );
            if !last {
                assert_eq!(data.len(), mss);
            }
            joined.extend_from_slice(data);
            off += len;
        }
        assert_eq!(off, r.total_len);
        joined
    }

    fn vxlan_prefix(p: &mut [u8]) {
        assert!(crate::wire::vxlan::Repr { vni: 42 }.emit_into(p));
    }

    #[test]
    fn tso_superframe_splits_into_valid_segments() {
        let data = payload(10_000);
        let tcp = tcp_header(0xffff_f000); // sequence numbers wrap mid-frame
        let frame = superframe(&tcp, &data, 0xfffe);
        let mut out = vec![0u8; 16 * 1024];
        let r = segment_tcp_v4(&frame, &gso(1448), PREFIX, &mut out, vxlan_prefix).unwrap();
        assert_eq!(r.segments, 7); // 6 × 1448 + 1312
        assert_eq!(r.segment_len, PREFIX + 14 + 20 + 32 + 1448);
        assert_eq!(r.total_len, 7 * (PREFIX + 66) + 10_000);
        let joined = check_segments(&out, &r, &tcp, 0xfffe, 1448);
        assert_eq!(joined, data);
    }

    #[test]
    fn payload_multiple_of_mss_and_smaller_than_mss() {
        for (len, segs) in [(4 * 1000, 4), (999, 1), (1000, 1), (1001, 2), (0, 1)] {
            let data = payload(len);
            let tcp = tcp_header(1);
            let frame = superframe(&tcp, &data, 5);
            let mut out = vec![0u8; 8192];
            let r = segment_tcp_v4(&frame, &gso(1000), PREFIX, &mut out, vxlan_prefix).unwrap();
            assert_eq!(r.segments, segs, "len {len}");
            assert_eq!(check_segments(&out, &r, &tcp, 5, 1000), data);
        }
    }

    #[test]
    fn partial_checksum_without_gso_is_completed() {
        let data = payload(300);
        let tcp = tcp_header(9);
        let frame = superframe(&tcp, &data, 1);
        let vnet = vnet_hdr::Repr {
            csum: Some((34, 16)),
            ..vnet_hdr::Repr::NONE
        };
        let mut out = vec![0u8; 1024];
        let r = segment_tcp_v4(&frame, &vnet, PREFIX, &mut out, vxlan_prefix).unwrap();
        assert_eq!((r.segments, r.total_len), (1, PREFIX + frame.len()));
        assert_eq!(check_segments(&out, &r, &tcp, 1, 1 << 20), data);
    }

    #[test]
    fn full_checksum_frame_is_copied() {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(SRC, DST, 64)
            .tcp(1, 2, 3, 4)
            .write(&mut frame, b"payload")
            .unwrap();
        let mut out = vec![0u8; 256];
        let r = segment_tcp_v4(
            &frame,
            &vnet_hdr::Repr::NONE,
            PREFIX,
            &mut out,
            vxlan_prefix,
        )
        .unwrap();
        assert_eq!(
            r,
            SegmentedBuf {
                segments: 1,
                segment_len: PREFIX + frame.len(),
                total_len: PREFIX + frame.len()
            }
        );
        assert_eq!(&out[PREFIX..r.total_len], &frame[..]);
    }

    #[test]
    fn bad_input_is_an_error() {
        let data = payload(5000);
        let frame = superframe(&tcp_header(0), &data, 0);
        let mut out = vec![0u8; 8192];
        let seg = |f: &[u8], v: &vnet_hdr::Repr, out: &mut [u8]| {
            segment_tcp_v4(f, v, PREFIX, out, |_| {})
        };
        assert!(matches!(
            seg(&frame, &gso(1448), &mut out[..5000]),
            Err(SegmentError::OutTooSmall { .. })
        ));
        assert_eq!(
            seg(&frame, &gso(0), &mut out),
            Err(SegmentError::ZeroGsoSize)
        );
        let v6 = vnet_hdr::Repr {
            gso: GsoKind::TcpV6,
            ..gso(1448)
        };
        assert_eq!(
            seg(&frame, &v6, &mut out),
            Err(SegmentError::UnsupportedGso(GsoKind::TcpV6))
        );
        let off = vnet_hdr::Repr {
            csum: Some((34, 6)),
            ..gso(1448)
        };
        assert!(matches!(
            seg(&frame, &off, &mut out),
            Err(SegmentError::CsumNotTcp { .. })
        ));
        // Truncated: IPv4 total length beyond the frame.
        assert!(matches!(
            seg(&frame[..frame.len() - 1], &gso(1448), &mut out),
            Err(SegmentError::BadLength(_))
        ));
        // UDP is not TCP.
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ethernet2([0; 6], [0; 6])
            .ipv4(SRC, DST, 64)
            .udp(1, 2)
            .write(&mut udp, b"x")
            .unwrap();
        assert_eq!(seg(&udp, &gso(1448), &mut out), Err(SegmentError::NotTcpV4));
        // IPv4 total length shorter than IPv4 + TCP headers.
        let mut short = frame.clone();
        short[16..18].copy_from_slice(&30u16.to_be_bytes());
        assert!(matches!(
            seg(&short, &gso(1448), &mut out),
            Err(SegmentError::BadLength(_))
        ));
        assert_eq!(
            seg(&frame[..10], &gso(1448), &mut out),
            Err(SegmentError::NotTcpV4)
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        #[test]
        fn random_sizes_always_reassemble(len in 0usize..20_000, mss in 1u16..9000, seq: u32, id: u16) {
            let data = payload(len);
            let tcp = tcp_header(seq);
            let frame = superframe(&tcp, &data, id);
            let mut out = vec![0u8; len + (len / usize::from(mss) + 1) * (PREFIX + 66)];
            let r = segment_tcp_v4(&frame, &gso(mss), PREFIX, &mut out, vxlan_prefix).unwrap();
            proptest::prop_assert_eq!(r.segments, len.div_ceil(usize::from(mss)).max(1));
            proptest::prop_assert_eq!(check_segments(&out, &r, &tcp, id, usize::from(mss)), data);
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200), mss in 0u16..200, csum: bool, start in 0u16..80, out_len in 0usize..2000) {
            let vnet = vnet_hdr::Repr {
                csum: csum.then_some((start, 16)),
                gso: if mss == 0 { GsoKind::None } else { GsoKind::TcpV4 },
                gso_size: mss,
                hdr_len: 0,
                ecn: false,
            };
            let mut out = vec![0u8; out_len];
            let _ = segment_tcp_v4(&bytes, &vnet, PREFIX, &mut out, |_| {});
        }
    }
}
