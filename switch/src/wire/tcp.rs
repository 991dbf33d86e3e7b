//! The TCP header (RFC 9293 §3.1): what the datapath reads of it (ports,
//! flags, header length); checksums and NAT rewrites patch bytes in place
//! ([`super::checksum`]).

/// Length of a header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: u16 = 16;

/// Flag bits of the flags byte (offset 13).
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
}

/// Why a buffer is not a TCP header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TcpError {
    /// Fewer than 20 bytes, or fewer than the data offset says.
    #[error("TCP header truncated")]
    Truncated,
    /// A data offset below 5 words.
    #[error("TCP data offset {0} words (at least 5)")]
    DataOffset(u8),
}

/// The fixed 20 bytes of a TCP header, read field by field (a fixed-size
/// array: no accessor has a bounds check).
#[derive(Debug, Clone, Copy)]
pub struct TcpHeader<'a>(&'a [u8; MIN_HEADER_LEN]);

impl<'a> TcpHeader<'a> {
    #[inline(always)]
    pub fn new(header: &'a [u8; MIN_HEADER_LEN]) -> Self {
        TcpHeader(header)
    }

    #[inline(always)]
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes([self.0[field::SRC_PORT], self.0[field::SRC_PORT + 1]])
    }

    #[inline(always)]
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes([self.0[field::DST_PORT], self.0[field::DST_PORT + 1]])
    }

    /// Header length in bytes, options included, as the data offset says.
    #[inline(always)]
    pub fn header_len(&self) -> usize {
        usize::from(self.0[field::DATA_OFFSET] >> 4) * 4
    }

    /// The flags byte (CWR ECE URG ACK PSH RST SYN FIN; see [`flags`]).
    #[inline(always)]
    pub fn flags(&self) -> u8 {
        self.0[field::FLAGS]
    }
}

/// A read-only view of a TCP segment at the start of `buffer`.
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wraps `buffer` after checking it holds the whole header, options
    /// included (what etherparse's `TcpHeaderSlice` checks); no accessor
    /// panics afterwards.
    #[inline]
    pub fn new_checked(buffer: T) -> Result<Self, TcpError> {
        let b = buffer.as_ref();
        let h: &[u8; MIN_HEADER_LEN] = b
            .get(..MIN_HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(TcpError::Truncated)?;
        let words = h[field::DATA_OFFSET] >> 4;
        if words < 5 {
            return Err(TcpError::DataOffset(words));
        }
        if b.len() < usize::from(words) * 4 {
            return Err(TcpError::Truncated);
        }
        Ok(TcpSegment { buffer })
    }

    /// The fixed part of the header, field by field.
    #[inline(always)]
    pub fn header(&self) -> TcpHeader<'_> {
        TcpHeader(
            self.buffer.as_ref()[..MIN_HEADER_LEN]
                .try_into()
                .expect("new_checked checked the length"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_read_from_a_built_segment() {
        let mut b = Vec::new();
        etherparse::TcpHeader::new(40000, 8080, 1, 65535)
            .write(&mut b)
            .unwrap();
        b[13] = flags::SYN | flags::ACK;
        let segment = TcpSegment::new_checked(&b[..]).unwrap();
        let t = segment.header();
        assert_eq!((t.src_port(), t.dst_port()), (40000, 8080));
        assert_eq!(t.header_len(), 20);
        assert_eq!(t.flags(), flags::SYN | flags::ACK);
    }

    #[test]
    fn bad_data_offsets_are_refused() {
        let mut b = [0u8; 24];
        b[12] = 4 << 4;
        assert_eq!(
            TcpSegment::new_checked(&b[..]).err(),
            Some(TcpError::DataOffset(4))
        );
        b[12] = 6 << 4;
        assert_eq!(
            TcpSegment::new_checked(&b[..])
                .unwrap()
                .header()
                .header_len(),
            24
        );
        b[12] = 7 << 4;
        assert_eq!(
            TcpSegment::new_checked(&b[..]).err(),
            Some(TcpError::Truncated)
        );
        assert_eq!(
            TcpSegment::new_checked(&b[..19]).err(),
            Some(TcpError::Truncated)
        );
    }

    proptest::proptest! {
        /// The view accepts and refuses exactly what etherparse does.
        #[test]
        fn agrees_with_etherparse(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let ours = TcpSegment::new_checked(&bytes[..]).map(|s| { let t = s.header(); (t.src_port(), t.dst_port(), t.header_len()) });
            let theirs = etherparse::TcpHeaderSlice::from_slice(&bytes)
                .map(|t| (t.source_port(), t.destination_port(), t.slice().len()));
            proptest::prop_assert_eq!(ours.ok(), theirs.ok());
        }
    }
}
