//! Internet checksum helpers (RFC 1071) and incremental updates (RFC 1624).
//!
//! Rewrites on the fast path (TTL decrement, later NAT) patch checksums
//! incrementally instead of recomputing them over the whole packet.

/// Ones'-complement sum of `data` folded to 16 bits, starting from `initial`
/// (a 32-bit partial sum). Odd trailing bytes are padded with zero.
pub fn sum(data: &[u8], initial: u32) -> u32 {
    let mut acc = u64::from(initial);
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// The Internet checksum of `data` (ones' complement of the folded sum).
pub fn checksum(data: &[u8]) -> u16 {
    !(sum(data, 0) as u16)
}

/// RFC 1624 eqn. 3: the new checksum after a 16-bit field changes from
/// `old` to `new`: `HC' = ~(~HC + ~m + m')`.
pub fn update_u16(check: u16, old: u16, new: u16) -> u16 {
    // At most 3 * 0xffff: two end-around carries fold it to 16 bits.
    let mut acc = u32::from(!check) + u32::from(!old) + u32::from(new);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// Like [`update_u16`] for a 32-bit field (an IPv4 address).
pub fn update_u32(check: u16, old: u32, new: u32) -> u16 {
    let c = update_u16(check, (old >> 16) as u16, (new >> 16) as u16);
    update_u16(c, old as u16, new as u16)
}

/// Folds a ones'-complement sum of 16- or 32-bit big-endian words held in
/// a `u64` to 16 bits (end-around carry: 2^16 and 2^32 are both 1 modulo
/// 0xffff, so wider words sum correctly).
///
/// Two end-around-carry additions, halves of 32 bits and then of 16
/// (an add with carry each): 2^32 - 1 is a multiple of 0xffff, so the
/// first keeps the value modulo 0xffff. Like the textbook loop it gives 0
/// only for 0 and otherwise the representative in 1..=0xffff (a test
/// compares the two).
#[inline]
pub fn fold(acc: u64) -> u16 {
    let (s, carry) = (acc as u32).overflowing_add((acc >> 32) as u32);
    let s = s + u32::from(carry);
    let (t, carry) = (s as u16).overflowing_add((s >> 16) as u16);
    t + u16::from(carry)
}

/// The term a 32-bit field's change from `old` to `new` adds to a
/// ones'-complement sum (RFC 1624 eqn. 3: `~m + m'`). Several changes are
/// summed in a `u64` and folded once with [`fold`]: `HC' = ~fold(~HC +
/// terms)`.
#[inline]
pub fn diff_u32(old: u32, new: u32) -> u64 {
    u64::from(!old) + u64::from(new)
}

/// The ones'-complement sum of an option-less 20-byte IPv4 header, as five
/// 32-bit words: the header is valid when it is 0xffff (its checksum is
/// then 0). The common case of [`checksum`], without the byte loop.
///
/// The words are summed in the machine's byte order and the folded sum
/// swapped once at the end: a ones'-complement sum commutes with
/// swapping the bytes of every word (RFC 1071 §2(B)).
#[inline(always)]
pub fn sum_ipv4_header(h: &[u8; 20]) -> u16 {
    let w = |i: usize| u64::from(u32::from_ne_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]));
    u16::from_be(fold(w(0) + w(4) + w(8) + w(12) + w(16)))
}

/// Decrements the IPv4 TTL of the header at the start of `ipv4` and patches
/// its header checksum. The caller has checked the header is present and
/// the TTL is above 1.
#[inline]
pub fn ipv4_decrement_ttl(ipv4: &mut [u8]) {
    // A fixed-size view: one bounds check for the three fields.
    let Some(h) = ipv4
        .get_mut(..12)
        .and_then(|h| <&mut [u8; 12]>::try_from(h).ok())
    else {
        return;
    };
    // TTL is the high byte of the 16-bit word at offset 8 (with protocol),
    // so the word drops by 0x100 and RFC 1624's `~m + m'` is exactly
    // 0xfeff, whatever the word was (RFC 1141's observation), unless the
    // TTL was 0 and wraps.
    let ttl = h[8];
    h[8] = ttl.wrapping_sub(1);
    let check = u16::from_be_bytes([h[10], h[11]]);
    let new = if ttl != 0 {
        let mut acc = u32::from(!check) + 0xfeff;
        acc = (acc & 0xffff) + (acc >> 16);
        acc = (acc & 0xffff) + (acc >> 16);
        !(acc as u16)
    } else {
        update_u16(check, u16::from(h[9]), u16::from_be_bytes([h[8], h[9]]))
    };
    h[10..12].copy_from_slice(&new.to_be_bytes());
}

/// Where a UDP header keeps its checksum (RFC 768).
const UDP_CSUM_OFFSET: usize = 6;

/// Completes a partial (NEEDS_CSUM) checksum in place: sums `frame` from
/// `start` to the end (the checksum field already holds the pseudo-header
/// sum, as the kernel leaves it) and stores the result at `start + offset`.
/// Used when a destination cannot take partial checksums. Returns false if
/// the offsets do not fit the frame.
pub fn complete_partial(frame: &mut [u8], start: usize, offset: usize) -> bool {
    let at = start + offset;
    if at + 2 > frame.len() || start > frame.len() {
        return false;
    }
    let mut c = checksum(&frame[start..]);
    // A computed UDP checksum of 0 is sent as 0xffff (RFC 768: 0 means "no
    // checksum"). The kernel asks for UDP with csum_offset 6 (`struct
    // udphdr`'s check); a TCP checksum (offset 16) stays 0, as Linux sends it.
    if c == 0 && offset == UDP_CSUM_OFFSET {
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_checksum_is_0xffff_for_udp_only() {
        // Data summing to 0xffff: the checksum (its complement) is 0.
        let mut udp = [0xff, 0xff, 0, 0, 0, 0, 0, 0];
        assert!(complete_partial(&mut udp, 0, 6));
        assert_eq!(&udp[6..], &[0xff, 0xff], "RFC 768: sent as all ones");
        let mut tcp = [0u8; 18];
        tcp[..2].copy_from_slice(&[0xff, 0xff]);
        assert!(complete_partial(&mut tcp, 0, 16));
        assert_eq!(&tcp[16..], &[0, 0], "TCP keeps 0, as Linux sends it");
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example bytes: sum 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(sum(&d, 0), 0xddf2);
    }

    #[test]
    fn ttl_decrement_matches_full_recompute() {
        let mut h = etherparse::Ipv4Header::new(
            100,
            64,
            etherparse::IpNumber::TCP,
            [10, 244, 1, 2],
            [10, 244, 1, 3],
        )
        .unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut b = h.to_bytes().to_vec();
        ipv4_decrement_ttl(&mut b);
        let mut expect = h.clone();
        expect.time_to_live = 63;
        expect.header_checksum = expect.calc_header_checksum();
        assert_eq!(&b[..], &expect.to_bytes()[..]);
        assert_eq!(checksum(&b), 0);
    }

    /// The textbook fold: end-around carries until 16 bits remain.
    fn fold_by_loop(acc: u64) -> u16 {
        let mut s = acc;
        while s > 0xffff {
            s = (s >> 16) + (s & 0xffff);
        }
        s as u16
    }

    proptest::proptest! {
        #[test]
        fn fold_equals_the_textbook_fold(acc in proptest::prelude::any::<u64>()) {
            proptest::prop_assert_eq!(fold(acc), fold_by_loop(acc));
        }

        #[test]
        fn ipv4_header_sum_equals_the_byte_loop(h in proptest::prelude::any::<[u8; 20]>()) {
            proptest::prop_assert_eq!(sum_ipv4_header(&h) as u32, sum(&h, 0));
        }
    }

    #[test]
    fn fold_edges() {
        for acc in [
            0,
            1,
            0xffff,
            0x1_0000,
            0xffff_ffff,
            0x1_0000_0000,
            u64::MAX,
            u64::MAX - 1,
            0xffff_0000_ffff,
        ] {
            assert_eq!(fold(acc), fold_by_loop(acc), "{acc:#x}");
        }
    }

    #[test]
    fn ttl_decrement_equals_the_general_update_for_every_ttl() {
        // Every TTL (0 wraps), and header checksums from all over the range.
        for ttl in 0..=255u8 {
            for check in (0..=0xffffu32).step_by(257) {
                let mut b = [0u8; 12];
                b[8] = ttl;
                b[9] = 6;
                b[10..12].copy_from_slice(&(check as u16).to_be_bytes());
                let old = u16::from_be_bytes([ttl, 6]);
                let new = u16::from_be_bytes([ttl.wrapping_sub(1), 6]);
                let expect = update_u16(check as u16, old, new);
                ipv4_decrement_ttl(&mut b);
                assert_eq!(b[8], ttl.wrapping_sub(1));
                assert_eq!(
                    u16::from_be_bytes([b[10], b[11]]),
                    expect,
                    "ttl {ttl} check {check:#x}"
                );
            }
        }
    }

    #[test]
    fn incremental_u32_matches_full() {
        let mut h = etherparse::Ipv4Header::new(
            100,
            64,
            etherparse::IpNumber::UDP,
            [10, 244, 1, 2],
            [10, 96, 0, 10],
        )
        .unwrap();
        h.header_checksum = h.calc_header_checksum();
        let old = h.header_checksum;
        let patched = update_u32(
            old,
            u32::from_be_bytes([10, 96, 0, 10]),
            u32::from_be_bytes([10, 244, 2, 7]),
        );
        h.destination = [10, 244, 2, 7];
        assert_eq!(patched, h.calc_header_checksum());
    }

    #[test]
    fn ipv4_header_fast_sum_matches_generic() {
        let mut h = etherparse::Ipv4Header::new(
            1480,
            1,
            etherparse::IpNumber::TCP,
            [255, 255, 255, 254],
            [10, 96, 0, 10],
        )
        .unwrap();
        h.header_checksum = h.calc_header_checksum();
        let b: [u8; 20] = h.to_bytes()[..].try_into().unwrap();
        assert_eq!(sum_ipv4_header(&b), 0xffff);
        assert_eq!(checksum(&b), 0);
        let mut bad = b;
        bad[3] ^= 1;
        assert_ne!(sum_ipv4_header(&bad), 0xffff);
        assert_ne!(checksum(&bad), 0);
    }

    proptest::proptest! {
        #[test]
        fn incremental_equals_recompute(words in proptest::collection::vec(proptest::num::u16::ANY, 1..40), idx in 0usize..40, new in proptest::num::u16::ANY) {
            let idx = idx % words.len();
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            let c = checksum(&bytes);
            let mut w2 = words.clone();
            w2[idx] = new;
            let bytes2: Vec<u8> = w2.iter().flat_map(|w| w.to_be_bytes()).collect();
            let full = checksum(&bytes2);
            let inc = update_u16(c, words[idx], new);
            // 0x0000 and 0xffff are the same value in ones' complement.
            proptest::prop_assert!(inc == full || (inc == 0xffff && full == 0) || (inc == 0 && full == 0xffff));
        }

        #[test]
        fn fast_header_sum_equals_generic(words in proptest::array::uniform10(proptest::num::u16::ANY)) {
            let mut h = [0u8; 20];
            for (i, w) in words.iter().enumerate() {
                h[2 * i..2 * i + 2].copy_from_slice(&w.to_be_bytes());
            }
            let generic = sum(&h, 0) as u16;
            proptest::prop_assert_eq!(sum_ipv4_header(&h), generic);
        }

        #[test]
        fn accumulated_updates_equal_one_at_a_time(words in proptest::collection::vec(proptest::num::u32::ANY, 2..10), news in proptest::collection::vec(proptest::num::u32::ANY, 2..10)) {
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            let c = checksum(&bytes);
            let mut seq = c;
            let mut acc = u64::from(!c);
            for (o, n) in words.iter().zip(&news) {
                seq = update_u32(seq, *o, *n);
                acc += diff_u32(*o, *n);
            }
            proptest::prop_assert_eq!(!fold(acc), seq);
        }
    }
}
