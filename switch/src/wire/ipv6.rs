//! The fixed IPv6 header (RFC 8200 §3). Extension headers are not walked
//! here yet: the datapath does not route IPv6 (issue 25), and the parse
//! stage counts IPv6 frames as `ipv6_not_routed`.
//!
//! ```text
//! |Version| Traffic Class |           Flow Label                  |
//! |         Payload Length        |  Next Header  |   Hop Limit   |
//! |                Source Address (16)                            |
//! |              Destination Address (16)                         |
//! ```

use std::net::Ipv6Addr;

/// Length of the fixed header.
pub const HEADER_LEN: usize = 40;

mod field {
    use core::ops::Range;
    pub const VERSION: usize = 0;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SOURCE: Range<usize> = 8..24;
    pub const DESTINATION: Range<usize> = 24..40;
}

/// Why a buffer is not an IPv6 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ipv6Error {
    /// Fewer than 40 bytes.
    #[error("IPv6 header shorter than {HEADER_LEN} bytes")]
    Truncated,
    /// The version nibble is not 6.
    #[error("IP version {0} in an IPv6 header")]
    Version(u8),
    /// The payload length runs past the buffer.
    #[error("IPv6 payload length {0} beyond the buffer")]
    PayloadLen(u16),
}

/// A read-only view of an IPv6 packet at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps `buffer` after checking the version and that the payload
    /// length lies within it; no accessor panics afterwards.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, Ipv6Error> {
        let b = buffer.as_ref();
        let h: &[u8; HEADER_LEN] = b
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(Ipv6Error::Truncated)?;
        let version = h[field::VERSION] >> 4;
        if version != 6 {
            return Err(Ipv6Error::Version(version));
        }
        let payload = u16::from_be_bytes([h[4], h[5]]);
        if b.len() - HEADER_LEN < usize::from(payload) {
            return Err(Ipv6Error::PayloadLen(payload));
        }
        Ok(Ipv6Packet { buffer })
    }

    #[inline]
    fn fixed(&self) -> &[u8; HEADER_LEN] {
        self.buffer.as_ref()[..HEADER_LEN]
            .try_into()
            .expect("new_checked checked the length")
    }

    #[inline]
    pub fn payload_len(&self) -> u16 {
        let h = self.fixed();
        u16::from_be_bytes([h[field::PAYLOAD_LEN.start], h[field::PAYLOAD_LEN.start + 1]])
    }

    /// The protocol of the first header after the fixed one (an extension
    /// header or the upper layer).
    #[inline]
    pub fn next_header(&self) -> u8 {
        self.fixed()[field::NEXT_HEADER]
    }

    #[inline]
    pub fn hop_limit(&self) -> u8 {
        self.fixed()[field::HOP_LIMIT]
    }

    #[inline]
    pub fn source(&self) -> Ipv6Addr {
        let s: [u8; 16] = self.fixed()[field::SOURCE].try_into().expect("16 bytes");
        Ipv6Addr::from(s)
    }

    #[inline]
    pub fn destination(&self) -> Ipv6Addr {
        let d: [u8; 16] = self.fixed()[field::DESTINATION]
            .try_into()
            .expect("16 bytes");
        Ipv6Addr::from(d)
    }

    /// The bytes after the fixed header, up to the payload length.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + usize::from(self.payload_len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_from_a_built_packet() {
        let mut b = Vec::new();
        let src: [u8; 16] = "fd00:10:244:1::2".parse::<Ipv6Addr>().unwrap().octets();
        let dst: [u8; 16] = "fd00:10:96::a".parse::<Ipv6Addr>().unwrap().octets();
        etherparse::PacketBuilder::ipv6(src, dst, 64)
            .udp(4000, 53)
            .write(&mut b, &[1, 2, 3])
            .unwrap();
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.next_header(), 17);
        assert_eq!(p.hop_limit(), 64);
        assert_eq!(p.payload_len(), 11);
        assert_eq!(p.source(), Ipv6Addr::from(src));
        assert_eq!(p.destination(), Ipv6Addr::from(dst));
        assert_eq!(p.payload().len(), 11);
    }

    #[test]
    fn malformed_headers_are_refused_by_reason() {
        let mut b = [0u8; 48];
        b[0] = 0x60;
        b[5] = 8;
        assert!(Ipv6Packet::new_checked(&b[..]).is_ok());
        b[5] = 9;
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]).err(),
            Some(Ipv6Error::PayloadLen(9))
        );
        b[0] = 0x40;
        assert_eq!(
            Ipv6Packet::new_checked(&b[..]).err(),
            Some(Ipv6Error::Version(4))
        );
        assert_eq!(
            Ipv6Packet::new_checked(&b[..39]).err(),
            Some(Ipv6Error::Truncated)
        );
    }
}
