//! The IPv4 header (RFC 791 §3.1), options included.
//!
//! ```text
//!  0                   1                   2                   3
//! |Version|  IHL  |Type of Service|          Total Length         |
//! |         Identification        |Flags|      Fragment Offset    |
//! |  Time to Live |    Protocol   |         Header Checksum       |
//! |                       Source Address                          |
//! |                    Destination Address                        |
//! |                    Options (IHL > 5)                          |
//! ```
//!
//! [`Ipv4Packet::new_checked`] accepts what etherparse's `Ipv4Slice`
//! accepts for every protocol but AH (etherparse also parses an AH
//! extension; a router does not look inside one): version 4, IHL at least
//! 5, and a total length that covers the header and lies within the
//! buffer. The parse stage's property test holds the two to that.

use std::net::Ipv4Addr;

use super::checksum;

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// Protocol numbers (IANA) the datapath looks at.
pub mod protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

mod field {
    use core::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const SOURCE: Range<usize> = 12..16;
    pub const DESTINATION: Range<usize> = 16..20;
}

const FLAG_DONT_FRAGMENT: u16 = 0x4000;
const FLAG_MORE_FRAGMENTS: u16 = 0x2000;
const FRAGMENT_OFFSET: u16 = 0x1fff;

/// Why a buffer is not an IPv4 datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4Error {
    /// Fewer than 20 bytes, or fewer than the header's IHL says.
    #[error("IPv4 header truncated")]
    Truncated,
    /// The version nibble is not 4.
    #[error("IP version {0} in an IPv4 header")]
    Version(u8),
    /// IHL below 5 words.
    #[error("IPv4 header length {0} words (at least 5)")]
    HeaderLen(u8),
    /// The total length is shorter than the header or longer than the
    /// buffer.
    #[error("IPv4 total length {total} does not fit a {header}-byte header in {buffer} bytes")]
    TotalLen {
        total: u16,
        header: usize,
        buffer: usize,
    },
}

/// The fixed 20 bytes of an IPv4 header, read field by field: the view
/// the parse stage's one-pass read of the common shape uses (a fixed-size
/// array, so no accessor has a bounds check), and what [`Ipv4Packet`]
/// reads its fields through.
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Header<'a>(&'a [u8; MIN_HEADER_LEN]);

impl<'a> Ipv4Header<'a> {
    #[inline(always)]
    pub fn new(header: &'a [u8; MIN_HEADER_LEN]) -> Self {
        Ipv4Header(header)
    }

    #[inline(always)]
    fn be16(&self, at: core::ops::Range<usize>) -> u16 {
        u16::from_be_bytes([self.0[at.start], self.0[at.start + 1]])
    }

    /// The version and IHL byte: 0x45 for an option-less IPv4 header.
    #[inline(always)]
    pub fn version_ihl(&self) -> u8 {
        self.0[field::VER_IHL]
    }

    /// Header length in bytes, options included, as IHL says.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.0[field::VER_IHL] & 0x0f) * 4
    }

    /// Whether the header carries options (or is not a well-formed
    /// option-less IPv4 header at all).
    #[inline(always)]
    pub fn has_options(&self) -> bool {
        self.0[field::VER_IHL] != 0x45
    }

    #[inline(always)]
    pub fn total_len(&self) -> u16 {
        self.be16(field::TOTAL_LEN)
    }

    #[inline(always)]
    pub fn dont_fragment(&self) -> bool {
        self.be16(field::FLAGS_FRAG) & FLAG_DONT_FRAGMENT != 0
    }

    #[inline(always)]
    pub fn more_fragments(&self) -> bool {
        self.be16(field::FLAGS_FRAG) & FLAG_MORE_FRAGMENTS != 0
    }

    /// Fragment offset in 8-byte units.
    #[inline(always)]
    pub fn fragment_offset(&self) -> u16 {
        self.be16(field::FLAGS_FRAG) & FRAGMENT_OFFSET
    }

    /// Neither more fragments follow nor is this a later fragment.
    #[inline(always)]
    pub fn is_whole(&self) -> bool {
        self.be16(field::FLAGS_FRAG) & (FLAG_MORE_FRAGMENTS | FRAGMENT_OFFSET) == 0
    }

    #[inline(always)]
    pub fn ttl(&self) -> u8 {
        self.0[field::TTL]
    }

    #[inline(always)]
    pub fn protocol(&self) -> u8 {
        self.0[field::PROTOCOL]
    }

    #[inline(always)]
    pub fn source(&self) -> Ipv4Addr {
        let s = &self.0[field::SOURCE];
        Ipv4Addr::new(s[0], s[1], s[2], s[3])
    }

    #[inline(always)]
    pub fn destination(&self) -> Ipv4Addr {
        let d = &self.0[field::DESTINATION];
        Ipv4Addr::new(d[0], d[1], d[2], d[3])
    }

    /// Whether the checksum of an option-less header verifies (RFC 1071,
    /// summed as five words); for a header with options use
    /// [`Ipv4Packet::checksum_valid`].
    #[inline(always)]
    pub fn fixed_checksum_valid(&self) -> bool {
        checksum::sum_ipv4_header(self.0) == 0xffff
    }
}

/// A read-only view of an IPv4 datagram at the start of `buffer` (which
/// may carry trailing bytes, such as Ethernet padding, after it).
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` after checking the version, the header length and
    /// the total length against it (module doc); no accessor panics
    /// afterwards.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Ipv4Error> {
        let b = buffer.as_ref();
        let h: &[u8; MIN_HEADER_LEN] = b
            .get(..MIN_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Ipv4Error::Truncated)?;
        // Almost every header is option-less: one compare.
        let header = if h[field::VER_IHL] == 0x45 {
            MIN_HEADER_LEN
        } else {
            let version = h[field::VER_IHL] >> 4;
            if version != 4 {
                return Err(Ipv4Error::Version(version));
            }
            let ihl = h[field::VER_IHL] & 0x0f;
            if ihl < 5 {
                return Err(Ipv4Error::HeaderLen(ihl));
            }
            let header = usize::from(ihl) * 4;
            if b.len() < header {
                return Err(Ipv4Error::Truncated);
            }
            header
        };
        let total = u16::from_be_bytes([h[2], h[3]]);
        if usize::from(total) < header || b.len() < usize::from(total) {
            return Err(Ipv4Error::TotalLen {
                total,
                header,
                buffer: b.len(),
            });
        }
        Ok(Ipv4Packet { buffer })
    }

    /// The fixed part of the header, field by field.
    #[inline(always)]
    pub fn header(&self) -> Ipv4Header<'_> {
        Ipv4Header(
            self.buffer.as_ref()[..MIN_HEADER_LEN]
                .try_into()
                .expect("new_checked checked the length"),
        )
    }

    /// Whether the header checksum verifies (RFC 1071; a router verifies
    /// it, RFC 1812 §5.2.2), options included.
    #[inline(always)]
    pub fn checksum_valid(&self) -> bool {
        let h = self.header();
        if h.has_options() {
            options_checksum_valid(&self.buffer.as_ref()[..h.header_len()])
        } else {
            h.fixed_checksum_valid()
        }
    }

    /// The datagram's payload: from the end of the header to the total
    /// length (padding after it excluded).
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        let h = self.header();
        // In bounds: new_checked checked header_len <= total_len <= len.
        &self.buffer.as_ref()[h.header_len()..usize::from(h.total_len())]
    }
}

/// The checksum of a header with options (rare: kept out of line).
#[cold]
#[inline(never)]
fn options_checksum_valid(header: &[u8]) -> bool {
    checksum::checksum(header) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        etherparse::PacketBuilder::ipv4([10, 244, 1, 2], [10, 96, 0, 10], 63)
            .udp(4000, 53)
            .write(&mut b, payload)
            .unwrap();
        b
    }

    #[test]
    fn fields_read_from_a_built_datagram() {
        let d = datagram(&[1, 2, 3]);
        let p = Ipv4Packet::new_checked(&d[..]).unwrap();
        let h = p.header();
        assert_eq!(h.header_len(), 20);
        assert_eq!(h.version_ihl(), 0x45);
        assert_eq!(usize::from(h.total_len()), d.len());
        assert_eq!(h.protocol(), protocol::UDP);
        assert_eq!(h.ttl(), 63);
        assert_eq!(h.source(), Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(h.destination(), Ipv4Addr::new(10, 96, 0, 10));
        assert!(h.dont_fragment());
        assert!(!h.more_fragments());
        assert_eq!(h.fragment_offset(), 0);
        assert!(h.is_whole());
        assert!(h.fixed_checksum_valid());
        assert!(p.checksum_valid());
        assert_eq!(p.payload().len(), 8 + 3);
    }

    #[test]
    fn options_are_summed_and_skipped() {
        let mut d = datagram(&[9; 4]);
        // Insert a 4-byte option (NOP NOP NOP EOL) and fix the header.
        d.splice(20..20, [1, 1, 1, 0]);
        d[0] = 0x46;
        let total = d.len() as u16;
        d[2..4].copy_from_slice(&total.to_be_bytes());
        d[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum::checksum(&d[..24]);
        d[10..12].copy_from_slice(&sum.to_be_bytes());
        let p = Ipv4Packet::new_checked(&d[..]).unwrap();
        assert!(p.header().has_options());
        assert_eq!(p.header().header_len(), 24);
        assert!(p.checksum_valid());
        assert_eq!(p.payload().len(), 8 + 4);
        let mut bad = d.clone();
        bad[21] ^= 0xff; // an option byte: covered by the checksum
        assert!(!Ipv4Packet::new_checked(&bad[..]).unwrap().checksum_valid());
    }

    #[test]
    fn malformed_headers_are_refused_by_reason() {
        let d = datagram(&[0; 8]);
        let with = |i: usize, v: u8| {
            let mut d = d.clone();
            d[i] = v;
            Ipv4Packet::new_checked(d).err()
        };
        assert_eq!(with(0, 0x65), Some(Ipv4Error::Version(6)));
        assert_eq!(with(0, 0x44), Some(Ipv4Error::HeaderLen(4)));
        assert_eq!(
            with(0, 0x4f),
            Some(Ipv4Error::Truncated),
            "IHL 15 in 36 bytes"
        );
        assert!(matches!(with(3, 19), Some(Ipv4Error::TotalLen { .. })));
        assert!(matches!(with(2, 1), Some(Ipv4Error::TotalLen { .. })));
        assert_eq!(
            Ipv4Packet::new_checked(&d[..19]).err(),
            Some(Ipv4Error::Truncated)
        );
        // Trailing bytes after the datagram (Ethernet padding) are fine.
        let mut padded = d.clone();
        padded.extend_from_slice(&[0; 6]);
        let p = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload().len(), 16);
    }
}
