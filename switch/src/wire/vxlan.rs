//! The 8-byte VXLAN header (RFC 7348 §5) that prefixes every inner Ethernet
//! frame on the overlay path, and the outer UDP source port chosen from the
//! inner flow.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//!
//! RFC 7348 §5: the I flag MUST be 1 for a valid VNI; the other flag bits
//! and the reserved fields MUST be zero on transmission and MUST be ignored
//! on receipt. So [`Repr::parse`] rejects only a missing I flag.
//!
//! The encapsulation stage uses [`inner_flow_hash`] and [`source_port`] so
//! that all packets of one inner flow take the same outer 5-tuple (and thus
//! the same ECMP path and receive queue on the remote node), while different
//! flows spread (RFC 7348 §5, "Outer UDP Header: Source Port").

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;

/// The IANA-assigned VXLAN UDP port (RFC 7348 §5).
pub const UDP_PORT: u16 = 4789;

/// The I flag: the VNI field is valid (RFC 7348 §5).
pub const FLAG_I: u8 = 0x08;

/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// RFC 7348 §5 recommends the dynamic/private port range for the outer
/// source port: 49152-65535 (inclusive).
pub const DEFAULT_SOURCE_PORTS: (u16, u16) = (49152, 65535);

mod field {
    use core::ops::Range;
    pub const FLAGS: usize = 0;
    pub const VNI: Range<usize> = 4..7;
}

/// Why a VXLAN header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VxlanError {
    /// Fewer than 8 bytes.
    #[error("VXLAN header shorter than {HEADER_LEN} bytes")]
    Truncated,
    /// The I flag is not set, so the VNI is not valid (RFC 7348 §5).
    #[error("VXLAN I flag not set (flags {0:#04x})")]
    NoVni(u8),
}

/// A read/write view of a VXLAN header at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct VxlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// Wraps `buffer` after checking it holds at least [`HEADER_LEN`] bytes;
    /// no accessor or setter panics afterwards.
    pub fn new_checked(buffer: T) -> Result<Self, VxlanError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(VxlanError::Truncated);
        }
        Ok(Self { buffer })
    }

    /// The flags byte (I flag = [`FLAG_I`]).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    /// The 24-bit VNI (meaningful only with the I flag set).
    pub fn vni(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VNI];
        u32::from_be_bytes([0, b[0], b[1], b[2]])
    }

    /// The bytes after the header: the inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> VxlanHeader<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }

    /// Sets the VNI; bits above the low 24 are dropped.
    pub fn set_vni(&mut self, vni: u32) {
        let b = (vni & VNI_MAX).to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&b[1..4]);
    }

    /// Zeroes the reserved fields (bytes 1-3 and 7), as RFC 7348 §5
    /// requires on transmission.
    pub fn clear_reserved(&mut self) {
        let b = self.buffer.as_mut();
        b[1..4].fill(0);
        b[7] = 0;
    }
}

/// The meaning of a VXLAN header: its VNI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// VXLAN Network Identifier, 24 bits ([`VNI_MAX`]); configuration
    /// validates it, [`Repr::emit`] writes only its low 24 bits.
    pub vni: u32,
}

impl Repr {
    /// Parses a header: the I flag must be set; reserved bits are ignored
    /// (RFC 7348 §5).
    pub fn parse<T: AsRef<[u8]>>(hdr: &VxlanHeader<T>) -> Result<Repr, VxlanError> {
        let flags = hdr.flags();
        if flags & FLAG_I == 0 {
            return Err(VxlanError::NoVni(flags));
        }
        Ok(Repr { vni: hdr.vni() })
    }

    /// Writes the header: I flag, VNI, every reserved bit zero.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, hdr: &mut VxlanHeader<T>) {
        hdr.clear_reserved();
        hdr.set_flags(FLAG_I);
        hdr.set_vni(self.vni);
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `buf`;
    /// false (nothing written) if `buf` is shorter. Convenient as the
    /// per-segment prefix writer of `wire::segment`.
    pub fn emit_into(&self, buf: &mut [u8]) -> bool {
        match VxlanHeader::new_checked(buf) {
            Ok(mut h) => {
                self.emit(&mut h);
                true
            }
            Err(_) => false,
        }
    }
}

/// The outer UDP source port for an inner flow hash, within `range`
/// (inclusive; the bounds may come in either order).
///
/// RFC 7348 §5: "it is recommended that the UDP source port number be
/// calculated using a hash of fields from the inner packet". Like Linux's
/// `udp_flow_src_port`, the hash is folded (`h ^ h << 16`) and scaled by a
/// multiply-shift instead of a modulo, so its high bits choose the port.
pub fn source_port(flow_hash: u32, range: (u16, u16)) -> u16 {
    let (lo, hi) = if range.0 <= range.1 {
        range
    } else {
        (range.1, range.0)
    };
    let span = u64::from(hi - lo) + 1;
    let h = flow_hash ^ (flow_hash << 16);
    // (h * span) >> 32 < span <= 65536, so the sum stays within lo..=hi.
    lo + ((u64::from(h) * span) >> 32) as u16
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_SCTP: u8 = 132;

/// A small, fast, deterministic mixer (one multiply-xorshift per word and
/// a splitmix64-style finaliser): stable across runs and builds, unlike a
/// randomly seeded hasher, and with good high bits for [`source_port`].
struct FlowMix(u64);

impl FlowMix {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn word(&mut self, w: u64) {
        self.0 = (self.0 ^ w).wrapping_mul(Self::K).rotate_left(29);
    }

    fn bytes(&mut self, b: &[u8]) {
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(u64::from_be_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.word(u64::from_be_bytes(w));
        }
    }

    fn finish(self) -> u32 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z ^ (z >> 32)) as u32
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Hashes the flow of an inner Ethernet frame for [`source_port`].
///
/// IPv4 and IPv6 (one 802.1Q tag allowed): addresses, protocol and, for
/// TCP/UDP/SCTP, the ports. IPv4 fragments hash without ports, so every
/// fragment of a datagram takes the same path; IPv6 extension headers are
/// not walked (such packets hash on addresses and next header). Anything
/// else hashes on the Ethernet addresses and type. Never panics, never
/// allocates.
pub fn inner_flow_hash(frame: &[u8]) -> u32 {
    let mut m = FlowMix(0x243f_6a88_85a3_08d3);
    // The common case first, from one fixed-size view: untagged IPv4
    // without options, not a fragment, TCP/UDP/SCTP. It mixes the same
    // words as the general path below, so both give the same hash.
    if let Some(h) = frame.get(..38).and_then(|h| <&[u8; 38]>::try_from(h).ok()) {
        let proto = h[23];
        let not_fragment = (u16::from_be_bytes([h[20], h[21]]) & 0x3fff) == 0;
        if h[12..15] == [0x08, 0x00, 0x45]
            && not_fragment
            && matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP)
        {
            let addrs =
                u64::from_be_bytes([h[26], h[27], h[28], h[29], h[30], h[31], h[32], h[33]]);
            let ports = u32::from_be_bytes([h[34], h[35], h[36], h[37]]);
            m.word(addrs);
            m.word((u64::from(proto) << 32) | u64::from(ports));
            return m.finish();
        }
    }
    let mut l3 = 14;
    let mut ethertype = be16(frame, 12);
    if ethertype == Some(ETHERTYPE_VLAN) {
        ethertype = be16(frame, 16);
        l3 = 18;
    }
    let ip = frame.get(l3..).unwrap_or(&[]);
    let flow = match ethertype {
        Some(ETHERTYPE_IPV4) => ipv4_flow(ip, &mut m),
        Some(ETHERTYPE_IPV6) => ipv6_flow(ip, &mut m),
        _ => None,
    };
    if flow.is_none() {
        m = FlowMix(0x1319_8a2e_0370_7344);
        m.bytes(frame.get(..14).unwrap_or(frame));
    }
    m.finish()
}

fn ports(l4: &[u8], proto: u8) -> Option<u32> {
    match proto {
        PROTO_TCP | PROTO_UDP | PROTO_SCTP => {
            let b = l4.get(0..4)?;
            Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
        _ => None,
    }
}

fn ipv4_flow(ip: &[u8], m: &mut FlowMix) -> Option<()> {
    let ihl = usize::from(*ip.first()? & 0x0f) * 4;
    if ihl < 20 {
        return None;
    }
    let proto = *ip.get(9)?;
    let addrs = ip.get(12..20)?;
    m.bytes(addrs);
    let frag = be16(ip, 6)? & 0x3fff; // MF flag + fragment offset
    let p = if frag == 0 {
        ports(ip.get(ihl..).unwrap_or(&[]), proto).unwrap_or(0)
    } else {
        0
    };
    m.word((u64::from(proto) << 32) | u64::from(p));
    Some(())
}

fn ipv6_flow(ip: &[u8], m: &mut FlowMix) -> Option<()> {
    let next = *ip.get(6)?;
    let addrs = ip.get(8..40)?;
    m.bytes(addrs);
    let p = ports(ip.get(40..).unwrap_or(&[]), next).unwrap_or(0);
    m.word((1 << 40) | (u64::from(next) << 32) | u64::from(p));
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, dst, 64)
            .udp(sport, dport);
        let mut v = Vec::new();
        b.write(&mut v, b"hello").unwrap();
        v
    }

    #[test]
    fn emit_then_parse_round_trips() {
        let mut b = [0xffu8; HEADER_LEN + 2];
        let r = Repr { vni: 0x00ab_cdef };
        r.emit(&mut VxlanHeader::new_checked(&mut b[..]).unwrap());
        assert_eq!(&b[..HEADER_LEN], &[0x08, 0, 0, 0, 0xab, 0xcd, 0xef, 0]);
        let h = VxlanHeader::new_checked(&b[..]).unwrap();
        assert_eq!(Repr::parse(&h).unwrap(), r);
        assert_eq!(h.payload(), &[0xff, 0xff]);
    }

    #[test]
    fn emit_masks_vni_to_24_bits() {
        let mut b = [0u8; HEADER_LEN];
        assert!(Repr { vni: 0x0100_0042 }.emit_into(&mut b));
        assert_eq!(VxlanHeader::new_checked(&b[..]).unwrap().vni(), 0x42);
        assert!(!Repr { vni: 1 }.emit_into(&mut [0u8; 7]));
    }

    #[test]
    fn reserved_bits_are_ignored_on_receipt() {
        // RFC 7348 §5: reserved bits MUST be ignored; only I matters.
        let b = [0xff, 0xff, 0xff, 0xff, 0, 0, 7, 0xff];
        let r = Repr::parse(&VxlanHeader::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(r.vni, 7);
    }

    #[test]
    fn missing_i_flag_or_short_buffer_is_rejected() {
        let b = [0xf7, 0, 0, 0, 0, 0, 7, 0];
        assert_eq!(
            Repr::parse(&VxlanHeader::new_checked(&b[..]).unwrap()),
            Err(VxlanError::NoVni(0xf7))
        );
        assert_eq!(
            VxlanHeader::new_checked(&b[..7]).unwrap_err(),
            VxlanError::Truncated
        );
    }

    #[test]
    fn source_port_stays_in_range() {
        for h in [0, 1, 0xffff, 0x1_0000, 0xdead_beef, u32::MAX] {
            let p = source_port(h, DEFAULT_SOURCE_PORTS);
            assert!(p >= 49152, "{h:#x} -> {p}");
            assert_eq!(source_port(h, (100, 100)), 100);
            assert_eq!(source_port(h, (0, 65535)), source_port(h, (65535, 0)));
        }
        // Both ends are reachable.
        assert_eq!(source_port(0, DEFAULT_SOURCE_PORTS), 49152);
        assert_eq!(source_port(0xffff_0000, DEFAULT_SOURCE_PORTS), 65535);
    }

    #[test]
    fn flow_hash_is_stable_per_flow_and_spreads_flows() {
        let a = udp_frame([10, 244, 1, 2], [10, 244, 2, 3], 40000, 53);
        assert_eq!(inner_flow_hash(&a), inner_flow_hash(&a.clone()));
        // The payload does not matter, only the flow.
        let mut a2 = a.clone();
        let n = a2.len();
        a2[n - 1] ^= 0xff;
        assert_eq!(inner_flow_hash(&a), inner_flow_hash(&a2));

        let mut ports = std::collections::HashSet::new();
        for sport in 40000..40256 {
            let f = udp_frame([10, 244, 1, 2], [10, 244, 2, 3], sport, 53);
            ports.insert(source_port(inner_flow_hash(&f), DEFAULT_SOURCE_PORTS));
        }
        // 256 flows over 16384 ports: collisions are rare.
        assert!(ports.len() > 240, "{}", ports.len());
    }

    #[test]
    fn fast_path_hash_equals_the_general_path() {
        // An untagged option-less frame takes the fast path; the same flow
        // with an 802.1Q tag, or as a first fragment, takes the general one.
        let plain = udp_frame([10, 244, 1, 2], [10, 244, 2, 3], 40000, 53);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(inner_flow_hash(&plain), inner_flow_hash(&tagged));
        let mut fragment = plain.clone();
        fragment[20] |= 0x20; // MF: hashed without ports on both paths
        let mut tagged_fragment = tagged.clone();
        tagged_fragment[24] |= 0x20;
        assert_eq!(
            inner_flow_hash(&fragment),
            inner_flow_hash(&tagged_fragment)
        );
        assert_ne!(inner_flow_hash(&plain), inner_flow_hash(&fragment));
    }

    #[test]
    fn flow_hash_of_odd_frames_does_not_panic() {
        for len in 0..80 {
            let f = udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
            let _ = inner_flow_hash(&f[..len.min(f.len())]);
        }
        let mut ipv4_bad_ihl = udp_frame([10, 0, 0, 1], [10, 0, 0, 2], 1, 2);
        ipv4_bad_ihl[14] = 0x4f;
        let _ = inner_flow_hash(&ipv4_bad_ihl);
    }

    proptest::proptest! {
        #[test]
        fn hash_and_port_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128), lo in 0u16.., hi in 0u16..) {
            let p = source_port(inner_flow_hash(&bytes), (lo, hi));
            proptest::prop_assert!(p >= lo.min(hi) && p <= lo.max(hi));
        }

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..16)) {
            if let Ok(h) = VxlanHeader::new_checked(&bytes[..]) {
                let _ = Repr::parse(&h);
            }
        }
    }
}
