//! The UDP header (RFC 768): ports and length.
//!
//! ```text
//! | source port (2) | destination port (2) | length (2) | checksum (2) |
//! ```

/// Length of the header.
pub const HEADER_LEN: usize = 8;

/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: u16 = 6;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
}

/// Why a buffer is not a UDP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UdpError {
    /// Fewer than 8 bytes.
    #[error("UDP header shorter than {HEADER_LEN} bytes")]
    Truncated,
}

/// The 8-byte UDP header, read field by field (a fixed-size array: no
/// accessor has a bounds check).
#[derive(Debug, Clone, Copy)]
pub struct UdpHeader<'a>(&'a [u8; HEADER_LEN]);

impl<'a> UdpHeader<'a> {
    #[inline(always)]
    pub fn new(header: &'a [u8; HEADER_LEN]) -> Self {
        UdpHeader(header)
    }

    #[inline(always)]
    fn be16(&self, at: usize) -> u16 {
        u16::from_be_bytes([self.0[at], self.0[at + 1]])
    }

    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        self.be16(field::SRC_PORT)
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        self.be16(field::DST_PORT)
    }

    /// The length field: header and payload, in bytes.
    #[inline(always)]
    pub fn length(&self) -> u16 {
        self.be16(field::LENGTH)
    }
}

/// A read-only view of a UDP datagram at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct UdpDatagram<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpDatagram<T> {
    /// Wraps `buffer` after checking it holds the header; no accessor
    /// panics afterwards. The length field is not checked against the
    /// buffer: a router forwards what the IP header delimits.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, UdpError> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(UdpError::Truncated);
        }
        Ok(UdpDatagram { buffer })
    }

    /// The header, field by field.
    #[inline(always)]
    pub fn header(&self) -> UdpHeader<'_> {
        UdpHeader(
            self.buffer.as_ref()[..HEADER_LEN]
                .try_into()
                .expect("new_checked checked the length"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_short_buffers() {
        let mut b = Vec::new();
        etherparse::UdpHeader::without_ipv4_checksum(5353, 53, 4)
            .unwrap()
            .write(&mut b)
            .unwrap();
        let datagram = UdpDatagram::new_checked(&b[..]).unwrap();
        let u = datagram.header();
        assert_eq!((u.src_port(), u.dst_port(), u.length()), (5353, 53, 12));
        assert_eq!(
            UdpDatagram::new_checked(&b[..7]).err(),
            Some(UdpError::Truncated)
        );
    }
}
