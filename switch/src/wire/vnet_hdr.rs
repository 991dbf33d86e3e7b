//! `struct virtio_net_hdr_mrg_rxbuf` (12 bytes), the prefix of every frame
//! read from or written to a tap opened with `IFF_VNET_HDR` and
//! `TUNSETVNETHDRSZ = 12`.
//!
//! Layout per the virtio spec §5.1.6 and `include/uapi/linux/virtio_net.h`;
//! fields are little-endian (modern virtio; we never set TUNSETVNETBE).
//! The kernel fills it on tap reads (a TSO superframe from the pod carries
//! `gso_type`/`gso_size`, a partially checksummed one `NEEDS_CSUM` with
//! `csum_start`/`csum_offset`) and honours it on writes.

use std::fmt;

/// Header length with `num_buffers` (what TUNSETVNETHDRSZ is set to).
pub const LEN: usize = 12;

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const GSO_TYPE: usize = 1;
    pub const HDR_LEN: Range<usize> = 2..4;
    pub const GSO_SIZE: Range<usize> = 4..6;
    pub const CSUM_START: Range<usize> = 6..8;
    pub const CSUM_OFFSET: Range<usize> = 8..10;
    pub const NUM_BUFFERS: Range<usize> = 10..12;
}

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the L4 checksum is partial; the receiver
/// must complete it from `csum_start`, storing at `csum_start + csum_offset`.
pub const FLAG_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the checksum was already verified.
pub const FLAG_DATA_VALID: u8 = 2;

/// `gso_type` values (low 7 bits) and the ECN flag bit.
pub mod gso {
    pub const NONE: u8 = 0;
    pub const TCPV4: u8 = 1;
    pub const UDP: u8 = 3;
    pub const TCPV6: u8 = 4;
    pub const UDP_L4: u8 = 5;
    /// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV4`, OR'ed onto the inner type: a
    /// superframe inside a UDP tunnel (VXLAN) over IPv4 (Linux >= 6.17).
    pub const UDP_TUNNEL_IPV4: u8 = 0x20;
    /// `VIRTIO_NET_HDR_GSO_UDP_TUNNEL_IPV6`: the same over IPv6.
    pub const UDP_TUNNEL_IPV6: u8 = 0x40;
    pub const ECN: u8 = 0x80;
}

/// `VIRTIO_NET_HDR_F_UDP_TUNNEL_CSUM`: the outer UDP checksum is partial
/// too (the kernel completes it per segment).
pub const FLAG_UDP_TUNNEL_CSUM: u8 = 8;

/// Length of `struct virtio_net_hdr_v1_hash_tunnel` (Linux >= 6.17): the
/// 12-byte header, the hash report (8 bytes, unused here) and the outer
/// transport and inner network header offsets. A tap takes tunnel GSO
/// only with `TUNSETVNETHDRSZ` at least this.
pub const TUNNEL_LEN: usize = 24;

/// Field offsets of the tunnel header beyond the first [`LEN`] bytes.
pub mod tunnel_field {
    use std::ops::Range;
    /// `outer_th_offset`: the outer UDP header, from the frame's start.
    pub const OUTER_TH_OFFSET: Range<usize> = 20..22;
    /// `inner_nh_offset`: the inner IP header, from the frame's start.
    pub const INNER_NH_OFFSET: Range<usize> = 22..24;
}

/// A GSO superframe inside a UDP tunnel, as the 24-byte header
/// [`TUNNEL_LEN`] describes it to the kernel (`virtio_net_hdr_tnl_to_skb`
/// in `include/linux/virtio_net.h`). Offsets count from the first byte of
/// the (outer) Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelRepr {
    /// Inner segmentation: `TcpV4` or `TcpV6` (UDP_L4 is allowed by the
    /// kernel but not produced here).
    pub inner: GsoKind,
    pub ecn: bool,
    pub gso_size: u16,
    /// The inner transport header (where the kernel starts its checksum).
    pub csum_start: u16,
    pub csum_offset: u16,
    /// `csum_start` + the inner TCP header's length.
    pub hdr_len: u16,
    pub outer_th_offset: u16,
    pub inner_nh_offset: u16,
    /// The outer UDP checksum is partial (pseudo-header sum) and the
    /// kernel completes it per segment; false: it is zero (IPv4 only).
    pub outer_csum: bool,
}

impl TunnelRepr {
    /// Writes the header into `buf` (hash fields zero).
    pub fn emit(&self, buf: &mut [u8; TUNNEL_LEN]) {
        let mut gso_type = match self.inner {
            GsoKind::TcpV6 => gso::TCPV6,
            GsoKind::UdpL4 => gso::UDP_L4,
            _ => gso::TCPV4,
        } | gso::UDP_TUNNEL_IPV4;
        if self.ecn {
            gso_type |= gso::ECN;
        }
        *buf = [0; TUNNEL_LEN];
        buf[field::FLAGS] = FLAG_NEEDS_CSUM
            | if self.outer_csum {
                FLAG_UDP_TUNNEL_CSUM
            } else {
                0
            };
        buf[field::GSO_TYPE] = gso_type;
        let mut put = |r: std::ops::Range<usize>, v: u16| buf[r].copy_from_slice(&v.to_le_bytes());
        put(field::HDR_LEN, self.hdr_len);
        put(field::GSO_SIZE, self.gso_size);
        put(field::CSUM_START, self.csum_start);
        put(field::CSUM_OFFSET, self.csum_offset);
        put(tunnel_field::OUTER_TH_OFFSET, self.outer_th_offset);
        put(tunnel_field::INNER_NH_OFFSET, self.inner_nh_offset);
    }
}

/// The kind of segmentation offload a frame asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsoKind {
    None,
    TcpV4,
    TcpV6,
    /// UDP fragmentation offload (UFO), legacy.
    Udp,
    /// UDP segmentation (USO), `UDP_SEGMENT` sockets, kernel >= 6.2.
    UdpL4,
}

/// Why a vnet header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VnetHdrError {
    /// Fewer than 12 bytes.
    Truncated,
    /// `gso_type` is not one the kernel defines.
    UnknownGsoType(u8),
    /// GSO requested with `gso_size` 0.
    ZeroGsoSize,
    /// GSO requested without `NEEDS_CSUM` (the kernel requires a partial checksum).
    GsoWithoutCsum,
    /// `csum_start + csum_offset + 2` lies beyond the frame.
    CsumOutOfFrame,
}

impl fmt::Display for VnetHdrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => write!(f, "vnet header shorter than {LEN} bytes"),
            Self::UnknownGsoType(t) => write!(f, "unknown gso_type {t:#x}"),
            Self::ZeroGsoSize => write!(f, "GSO with gso_size 0"),
            Self::GsoWithoutCsum => write!(f, "GSO without NEEDS_CSUM"),
            Self::CsumOutOfFrame => write!(f, "csum_start/csum_offset beyond the frame"),
        }
    }
}

impl std::error::Error for VnetHdrError {}

/// A read/write view of a vnet header at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct VnetHdr<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VnetHdr<T> {
    /// Wraps `buffer` after checking it holds at least [`LEN`] bytes; no
    /// accessor panics afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, VnetHdrError> {
        if buffer.as_ref().len() < LEN {
            return Err(VnetHdrError::Truncated);
        }
        Ok(Self { buffer })
    }

    #[inline]
    fn u16_at(&self, r: core::ops::Range<usize>) -> u16 {
        let b = self.buffer.as_ref();
        u16::from_le_bytes([b[r.start], b[r.start + 1]])
    }

    /// No checksum offload, no GSO, no header-length hint: what
    /// [`Repr::NONE`] means (most frames).
    #[inline]
    pub fn is_plain(&self) -> bool {
        self.flags() == 0 && self.gso_type() == 0 && self.hdr_len() == 0
    }

    #[inline]
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }
    #[inline]
    pub fn gso_type(&self) -> u8 {
        self.buffer.as_ref()[field::GSO_TYPE]
    }
    #[inline]
    pub fn hdr_len(&self) -> u16 {
        self.u16_at(field::HDR_LEN)
    }
    pub fn gso_size(&self) -> u16 {
        self.u16_at(field::GSO_SIZE)
    }
    pub fn csum_start(&self) -> u16 {
        self.u16_at(field::CSUM_START)
    }
    pub fn csum_offset(&self) -> u16 {
        self.u16_at(field::CSUM_OFFSET)
    }
    pub fn num_buffers(&self) -> u16 {
        self.u16_at(field::NUM_BUFFERS)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VnetHdr<T> {
    fn set_u16_at(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_le_bytes());
    }
    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }
    pub fn set_gso_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::GSO_TYPE] = v;
    }
    pub fn set_hdr_len(&mut self, v: u16) {
        self.set_u16_at(field::HDR_LEN, v)
    }
    pub fn set_gso_size(&mut self, v: u16) {
        self.set_u16_at(field::GSO_SIZE, v)
    }
    pub fn set_csum_start(&mut self, v: u16) {
        self.set_u16_at(field::CSUM_START, v)
    }
    pub fn set_csum_offset(&mut self, v: u16) {
        self.set_u16_at(field::CSUM_OFFSET, v)
    }
    pub fn set_num_buffers(&mut self, v: u16) {
        self.set_u16_at(field::NUM_BUFFERS, v)
    }
}

/// The parsed, validated meaning of a vnet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repr {
    /// `Some((start, offset))` when the L4 checksum is partial (NEEDS_CSUM).
    pub csum: Option<(u16, u16)>,
    pub gso: GsoKind,
    /// Segment payload size for GSO frames.
    pub gso_size: u16,
    /// The kernel's hint of the header length (eth + ip + l4) for GSO frames.
    pub hdr_len: u16,
    /// ECN bit of `gso_type` (TCP CWR must be carried on the first segment only).
    pub ecn: bool,
}

impl Repr {
    /// A plain frame: no offload, full checksums.
    pub const NONE: Repr = Repr {
        csum: None,
        gso: GsoKind::None,
        gso_size: 0,
        hdr_len: 0,
        ecn: false,
    };

    /// Parses and validates a header against the length of the Ethernet
    /// frame that follows it (`frame_len`). Nothing here trusts the sender:
    /// a pod controls these fields through `PACKET_VNET_HDR` sockets.
    ///
    /// Always inlined: returned through memory, the result is written
    /// field by field and read back in wider loads, a store-forwarding
    /// stall on every packet.
    #[inline(always)]
    pub fn parse<T: AsRef<[u8]>>(hdr: &VnetHdr<T>, frame_len: usize) -> Result<Repr, VnetHdrError> {
        let ecn = hdr.gso_type() & gso::ECN != 0;
        let gso = match hdr.gso_type() & !gso::ECN {
            gso::NONE => GsoKind::None,
            gso::TCPV4 => GsoKind::TcpV4,
            gso::TCPV6 => GsoKind::TcpV6,
            gso::UDP => GsoKind::Udp,
            gso::UDP_L4 => GsoKind::UdpL4,
            other => return Err(VnetHdrError::UnknownGsoType(other)),
        };
        let csum = if hdr.flags() & FLAG_NEEDS_CSUM != 0 {
            let (start, offset) = (hdr.csum_start(), hdr.csum_offset());
            if usize::from(start) + usize::from(offset) + 2 > frame_len {
                return Err(VnetHdrError::CsumOutOfFrame);
            }
            Some((start, offset))
        } else {
            None
        };
        if gso != GsoKind::None {
            if hdr.gso_size() == 0 {
                return Err(VnetHdrError::ZeroGsoSize);
            }
            if csum.is_none() {
                return Err(VnetHdrError::GsoWithoutCsum);
            }
        }
        Ok(Repr {
            csum,
            gso,
            gso_size: if gso == GsoKind::None {
                0
            } else {
                hdr.gso_size()
            },
            hdr_len: hdr.hdr_len(),
            ecn,
        })
    }

    /// Writes this header into `hdr` (num_buffers = 0).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, hdr: &mut VnetHdr<T>) {
        let (flags, start, offset) = match self.csum {
            Some((s, o)) => (FLAG_NEEDS_CSUM, s, o),
            None => (0, 0, 0),
        };
        let mut gso_type = match self.gso {
            GsoKind::None => gso::NONE,
            GsoKind::TcpV4 => gso::TCPV4,
            GsoKind::TcpV6 => gso::TCPV6,
            GsoKind::Udp => gso::UDP,
            GsoKind::UdpL4 => gso::UDP_L4,
        };
        if self.ecn {
            gso_type |= gso::ECN;
        }
        hdr.set_flags(flags);
        hdr.set_gso_type(gso_type);
        hdr.set_hdr_len(self.hdr_len);
        hdr.set_gso_size(self.gso_size);
        hdr.set_csum_start(start);
        hdr.set_csum_offset(offset);
        hdr.set_num_buffers(0);
    }

    /// Whether the frame is a segmentation superframe.
    pub fn is_gso(&self) -> bool {
        self.gso != GsoKind::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(
        flags: u8,
        gso_type: u8,
        hdr_len: u16,
        gso_size: u16,
        start: u16,
        off: u16,
    ) -> [u8; LEN] {
        let mut b = [0u8; LEN];
        let mut h = VnetHdr::new_checked(&mut b[..]).unwrap();
        h.set_flags(flags);
        h.set_gso_type(gso_type);
        h.set_hdr_len(hdr_len);
        h.set_gso_size(gso_size);
        h.set_csum_start(start);
        h.set_csum_offset(off);
        b
    }

    #[test]
    fn tso_superframe_parses() {
        let b = hdr(FLAG_NEEDS_CSUM, gso::TCPV4, 66, 1448, 34, 16);
        let r = Repr::parse(&VnetHdr::new_checked(&b[..]).unwrap(), 65000).unwrap();
        assert_eq!(r.gso, GsoKind::TcpV4);
        assert_eq!(r.gso_size, 1448);
        assert_eq!(r.csum, Some((34, 16)));
    }

    #[test]
    fn emit_then_parse_round_trips() {
        let r = Repr {
            csum: Some((34, 6)),
            gso: GsoKind::UdpL4,
            gso_size: 1000,
            hdr_len: 42,
            ecn: false,
        };
        let mut b = [0xffu8; LEN];
        r.emit(&mut VnetHdr::new_checked(&mut b[..]).unwrap());
        assert_eq!(
            Repr::parse(&VnetHdr::new_checked(&b[..]).unwrap(), 4054).unwrap(),
            r
        );
    }

    #[test]
    fn nonsense_is_rejected() {
        let parse = |b: [u8; LEN], len| Repr::parse(&VnetHdr::new_checked(&b[..]).unwrap(), len);
        assert_eq!(
            parse(hdr(0, 9, 0, 0, 0, 0), 100),
            Err(VnetHdrError::UnknownGsoType(9))
        );
        assert_eq!(
            parse(hdr(1, gso::TCPV4, 0, 0, 34, 16), 100),
            Err(VnetHdrError::ZeroGsoSize)
        );
        assert_eq!(
            parse(hdr(0, gso::TCPV4, 0, 1448, 0, 0), 100),
            Err(VnetHdrError::GsoWithoutCsum)
        );
        assert_eq!(
            parse(hdr(1, 0, 0, 0, 90, 16), 100),
            Err(VnetHdrError::CsumOutOfFrame)
        );
        assert_eq!(
            parse(hdr(1, 0, 0, 0, 0xffff, 0xffff), 100),
            Err(VnetHdrError::CsumOutOfFrame)
        );
        assert!(VnetHdr::new_checked(&[0u8; 5][..]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..20), len in 0usize..70000) {
            if let Ok(h) = VnetHdr::new_checked(&bytes[..]) {
                let _ = Repr::parse(&h, len);
            }
        }
    }
}
