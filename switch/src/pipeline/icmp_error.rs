//! Building ICMPv4 error messages (time exceeded, destination unreachable,
//! fragmentation needed) in place of the packet that caused them.
//!
//! RFC 1812 §4.3.2.7 says when not to send one; §4.3.2.3 says to quote as
//! much of the original as fits in 576 bytes; RFC 792 gives the formats.
//! Errors are rate limited per worker (a token bucket, like Linux's
//! `icmp_ratelimit`), so a flood of bad packets cannot become a flood of
//! errors.

use std::net::IpAddr;
use std::time::Instant;

use etherparse::{Icmpv4Type, PacketBuilder};

use super::parse::ETH_LEN;
use super::{Packet, Verdict};
use crate::tables::Gateway;
use crate::wire::vnet_hdr;

/// Largest error datagram (RFC 1812 §4.3.2.3).
const MAX_ERROR_DATAGRAM: usize = 576;
/// IPv4 (20) + ICMP (8) headers of the error itself.
const ERROR_HEADERS: usize = 28;

/// Whether RFC 1812 §4.3.2.7 allows an error about this packet: not about
/// an ICMP error, a non-first fragment, or a packet from an address that
/// does not name a single host.
pub fn error_allowed(p: &Packet) -> bool {
    let m = &p.meta;
    if !m.first_fragment {
        return false;
    }
    let IpAddr::V4(src) = m.src else { return false };
    if src.is_unspecified() || src.is_broadcast() || src.is_multicast() || src.is_loopback() {
        return false;
    }
    if m.proto == 1 {
        let l4 = usize::from(m.l4_off);
        let t = p.frame().get(l4).copied().unwrap_or(255);
        // Only echo request/reply, timestamp and info queries may be answered.
        if !matches!(t, 0 | 8 | 13 | 14 | 15 | 16) {
            return false;
        }
    }
    true
}

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: u32,
    burst: u32,
    tokens: u32,
    last: Option<Instant>,
}

impl RateLimit {
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes a token if one is available at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        let last = *self.last.get_or_insert(now);
        let elapsed = now.saturating_duration_since(last);
        let add = (elapsed.as_micros() as u64 * u64::from(self.rate) / 1_000_000) as u32;
        if add > 0 {
            self.tokens = self.tokens.saturating_add(add).min(self.burst);
            self.last = Some(now);
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// Replaces the packet with an ICMP error of `icmp_type` sent from the
/// gateway back to the packet's source, and sets the verdict to `Reply`.
/// Returns false (packet untouched) if the packet is not IPv4 or the error
/// does not fit.
pub fn rewrite_as_error(p: &mut Packet, gw: &Gateway, icmp_type: Icmpv4Type) -> bool {
    let IpAddr::V4(src) = p.meta.src else {
        return false;
    };
    let frame = p.frame();
    let mut dst_mac = [0u8; 6];
    dst_mac.copy_from_slice(&frame[6..12]);
    // Quote the original IP header and as much payload as fits.
    let start = usize::from(p.meta.l3_off);
    let end = (start + usize::from(p.meta.ip_len)).min(frame.len());
    let quote_len = (end - start).min(MAX_ERROR_DATAGRAM - ERROR_HEADERS);
    let mut quote = [0u8; MAX_ERROR_DATAGRAM - ERROR_HEADERS];
    quote[..quote_len].copy_from_slice(&frame[start..start + quote_len]);
    let builder = PacketBuilder::ethernet2(gw.mac, dst_mac)
        .ipv4(gw.ipv4.octets(), src.octets(), 64)
        .icmpv4(icmp_type);
    let needed = builder.size(quote_len);
    let area = p.frame_area();
    if area.len() < needed {
        return false;
    }
    let mut out: &mut [u8] = &mut area[..needed];
    if builder.write(&mut out, &quote[..quote_len]).is_err() {
        return false;
    }
    p.set_frame_len(needed);
    p.set_vnet(vnet_hdr::Repr::NONE);
    // The metadata now describes the error, not the packet it replaced.
    let m = &mut p.meta;
    m.l3_off = ETH_LEN as u16;
    m.l4_off = (ETH_LEN + 20) as u16;
    m.l4_hdr_len = 8;
    m.proto = 1;
    m.ip_len = (needed - ETH_LEN) as u16;
    m.src = IpAddr::V4(gw.ipv4);
    m.dst = IpAddr::V4(src);
    m.first_fragment = true;
    m.more_fragments = false;
    p.verdict = Verdict::Reply;
    true
}
