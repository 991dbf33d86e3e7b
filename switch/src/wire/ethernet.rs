//! The Ethernet II header (IEEE 802.3 clause 3.2, DIX framing): the first
//! 14 bytes of every frame a port hands over.
//!
//! ```text
//! | destination MAC (6) | source MAC (6) | EtherType (2) | payload ...
//! ```

/// Length of the header.
pub const HEADER_LEN: usize = 14;

/// EtherType of IPv4 (RFC 894).
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of ARP (RFC 826).
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv6 (RFC 2464).
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// A MAC address.
pub type MacAddr = [u8; 6];

mod field {
    use core::ops::Range;
    pub const DESTINATION: Range<usize> = 0..6;
    pub const SOURCE: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// Why a buffer is not an Ethernet frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EthernetError {
    /// Fewer bytes than the header.
    #[error("Ethernet frame shorter than its {HEADER_LEN}-byte header")]
    Truncated,
}

/// The 14-byte Ethernet header, read field by field (a fixed-size array:
/// no accessor has a bounds check).
#[derive(Debug, Clone, Copy)]
pub struct EthernetHeader<'a>(&'a [u8; HEADER_LEN]);

impl<'a> EthernetHeader<'a> {
    #[inline(always)]
    pub fn new(header: &'a [u8; HEADER_LEN]) -> Self {
        EthernetHeader(header)
    }

    #[inline(always)]
    pub fn destination(&self) -> MacAddr {
        let d = &self.0[field::DESTINATION];
        [d[0], d[1], d[2], d[3], d[4], d[5]]
    }

    #[inline(always)]
    pub fn source(&self) -> MacAddr {
        let s = &self.0[field::SOURCE];
        [s[0], s[1], s[2], s[3], s[4], s[5]]
    }

    #[inline(always)]
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([
            self.0[field::ETHERTYPE.start],
            self.0[field::ETHERTYPE.start + 1],
        ])
    }

    /// Whether the destination is a group (broadcast or multicast) address:
    /// the I/G bit, the least significant bit of the first octet.
    #[inline(always)]
    pub fn is_group_destination(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

/// A read-only view of an Ethernet II frame at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` after checking it holds the whole header; no accessor
    /// panics afterwards.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, EthernetError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(EthernetError::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }

    /// The header, field by field.
    #[inline(always)]
    pub fn header(&self) -> EthernetHeader<'_> {
        EthernetHeader(
            self.buffer.as_ref()[..HEADER_LEN]
                .try_into()
                .expect("new_checked checked the length"),
        )
    }

    /// The bytes after the header.
    #[inline(always)]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_from_a_built_frame() {
        let mut f = Vec::new();
        etherparse::Ethernet2Header {
            source: [2, 0, 0, 0, 0, 1],
            destination: [0xff; 6],
            ether_type: etherparse::EtherType::ARP,
        }
        .write(&mut f)
        .unwrap();
        f.extend_from_slice(&[7, 8]);
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        let h = e.header();
        assert_eq!(h.source(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(h.destination(), [0xff; 6]);
        assert_eq!(h.ethertype(), ETHERTYPE_ARP);
        assert!(h.is_group_destination());
        assert_eq!(e.payload(), &[7, 8]);
    }

    #[test]
    fn short_buffers_are_refused() {
        for len in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&[0u8; HEADER_LEN][..len]).err(),
                Some(EthernetError::Truncated)
            );
        }
        assert!(EthernetFrame::new_checked(&[0u8; HEADER_LEN][..]).is_ok());
    }
}
