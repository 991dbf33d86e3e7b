//! The capture filter: a small, fixed language evaluated in the switch on
//! each frame seen at an armed capture point, before anything is copied.
//!
//! All given conditions must hold (AND); an empty filter matches every
//! frame:
//!
//! | field  | matches                                                          |
//! | ------ | ---------------------------------------------------------------- |
//! | `proto`| `tcp`, `udp`, `icmp` (IPv4 protocol 6, 17, 1) or `arp`           |
//! | `host` | an IPv4 address that is the source or destination (for ARP, the sender or target protocol address) |
//! | `port` | a TCP or UDP port that is the source or destination              |
//!
//! On the underlay the filter looks at the *inner* frame of a VXLAN
//! datagram, so `host POD_IP` selects the datagrams carrying that pod's
//! traffic. Frames are read with etherparse's lax slicer, so a truncated
//! frame or a GSO superframe whose lengths are not final still matches on
//! the headers it has; nothing is allocated.

use etherparse::{IpNumber, LaxNetSlice, LaxSlicedPacket, TransportSlice};

pub use podswitch_api::capture::{CaptureFilter, CaptureProto};

/// The IPv4 protocol number (none for ARP).
fn ip_number(proto: CaptureProto) -> Option<IpNumber> {
    match proto {
        CaptureProto::Tcp => Some(IpNumber::TCP),
        CaptureProto::Udp => Some(IpNumber::UDP),
        CaptureProto::Icmp => Some(IpNumber::ICMP),
        CaptureProto::Arp => None,
    }
}

/// Frame matching, the switch's half of [`CaptureFilter`] (the filter
/// itself is a control API type).
pub trait FilterMatch {
    /// Whether the Ethernet `frame` matches.
    fn matches(&self, frame: &[u8]) -> bool;
}

impl FilterMatch for CaptureFilter {
    #[inline]
    fn matches(&self, frame: &[u8]) -> bool {
        if self.is_empty() {
            return true;
        }
        let Ok(pkt) = LaxSlicedPacket::from_ethernet(frame) else {
            return false;
        };
        match &pkt.net {
            Some(LaxNetSlice::Ipv4(ip)) => {
                let h = ip.header();
                if let Some(want) = self.proto {
                    if ip_number(want) != Some(h.protocol()) {
                        return false;
                    }
                }
                if let Some(host) = self.host {
                    if h.source_addr() != host && h.destination_addr() != host {
                        return false;
                    }
                }
                if let Some(port) = self.port {
                    let ports = match &pkt.transport {
                        Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
                        Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
                        // Non-first fragments and other protocols have no ports.
                        _ => return false,
                    };
                    if ports.0 != port && ports.1 != port {
                        return false;
                    }
                }
                true
            }
            Some(LaxNetSlice::Arp(arp)) => {
                if self.proto.is_some_and(|p| p != CaptureProto::Arp) || self.port.is_some() {
                    return false;
                }
                self.host.is_none_or(|host| {
                    let h = host.octets();
                    arp.sender_protocol_addr() == h || arp.target_protocol_addr() == h
                })
            }
            // IPv6 and anything else only pass an empty filter (above).
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use std::net::Ipv4Addr;

    const A: [u8; 4] = [10, 244, 1, 2];
    const B: [u8; 4] = [10, 244, 1, 3];
    const MAC_A: [u8; 6] = [0x0a, 0x58, 10, 244, 1, 2];
    const GW: [u8; 6] = [0xee; 6];

    fn udp(sport: u16, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MAC_A, GW)
            .ipv4(A, B, 64)
            .udp(sport, dport);
        let mut v = Vec::new();
        b.write(&mut v, b"hello").unwrap();
        v
    }

    fn tcp(sport: u16, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MAC_A, GW)
            .ipv4(A, B, 64)
            .tcp(sport, dport, 1, 65535)
            .syn();
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    fn echo_request() -> Vec<u8> {
        let b = PacketBuilder::ethernet2(MAC_A, GW)
            .ipv4(A, B, 64)
            .icmpv4_echo_request(7, 1);
        let mut v = Vec::new();
        b.write(&mut v, b"ping").unwrap();
        v
    }

    fn arp_request() -> Vec<u8> {
        let arp = etherparse::ArpPacket::new(
            etherparse::ArpHardwareId::ETHERNET,
            etherparse::EtherType::IPV4,
            etherparse::ArpOperation::REQUEST,
            &MAC_A,
            &A,
            &[0; 6],
            &[10, 244, 1, 1],
        )
        .unwrap();
        let b = PacketBuilder::ethernet2(MAC_A, [0xff; 6]).arp(arp);
        let mut v = Vec::new();
        b.write(&mut v).unwrap();
        v
    }

    fn f(proto: Option<CaptureProto>, host: Option<[u8; 4]>, port: Option<u16>) -> CaptureFilter {
        CaptureFilter {
            proto,
            host: host.map(Ipv4Addr::from),
            port,
        }
    }

    #[test]
    fn empty_filter_matches_everything_even_garbage() {
        let any = CaptureFilter::default();
        for frame in [
            udp(1, 2),
            tcp(1, 2),
            echo_request(),
            arp_request(),
            vec![1, 2],
        ] {
            assert!(any.matches(&frame));
        }
    }

    #[test]
    fn proto_selects_by_ip_protocol_or_arp() {
        use CaptureProto::*;
        let cases = [
            (udp(5000, 53), Udp),
            (tcp(40000, 80), Tcp),
            (echo_request(), Icmp),
            (arp_request(), Arp),
        ];
        for (frame, proto) in &cases {
            for want in [Tcp, Udp, Icmp, Arp] {
                assert_eq!(
                    f(Some(want), None, None).matches(frame),
                    want == *proto,
                    "{want:?} on a {proto:?} frame"
                );
            }
        }
    }

    #[test]
    fn host_is_source_or_destination() {
        for frame in [udp(1, 2), tcp(1, 2), echo_request()] {
            assert!(f(None, Some(A), None).matches(&frame));
            assert!(f(None, Some(B), None).matches(&frame));
            assert!(!f(None, Some([10, 244, 1, 9]), None).matches(&frame));
        }
        // ARP: sender or target protocol address.
        assert!(f(None, Some([10, 244, 1, 1]), None).matches(&arp_request()));
        assert!(f(Some(CaptureProto::Arp), Some(A), None).matches(&arp_request()));
        assert!(!f(None, Some(B), None).matches(&arp_request()));
    }

    #[test]
    fn port_is_source_or_destination_l4_port() {
        assert!(f(None, None, Some(53)).matches(&udp(5000, 53)));
        assert!(f(None, None, Some(5000)).matches(&udp(5000, 53)));
        assert!(f(Some(CaptureProto::Tcp), None, Some(80)).matches(&tcp(40000, 80)));
        assert!(!f(Some(CaptureProto::Udp), None, Some(80)).matches(&tcp(40000, 80)));
        assert!(!f(None, None, Some(81)).matches(&tcp(40000, 80)));
        assert!(!f(None, None, Some(7)).matches(&echo_request()));
        assert!(!f(None, None, Some(1)).matches(&arp_request()));
        // All conditions together.
        assert!(f(Some(CaptureProto::Udp), Some(B), Some(53)).matches(&udp(5000, 53)));
        assert!(!f(Some(CaptureProto::Udp), Some(B), Some(54)).matches(&udp(5000, 53)));
    }

    #[test]
    fn truncated_frames_match_on_the_headers_they_have() {
        let frame = tcp(40000, 80);
        // Ethernet + IPv4 header only: proto and host still decide.
        let cut = &frame[..34];
        assert!(f(Some(CaptureProto::Tcp), Some(A), None).matches(cut));
        assert!(!f(None, None, Some(80)).matches(cut));
        assert!(!f(Some(CaptureProto::Tcp), None, None).matches(&frame[..10]));
    }

    #[test]
    fn contradictory_filters_are_refused() {
        assert!(f(Some(CaptureProto::Icmp), None, Some(1))
            .validate()
            .is_err());
        assert!(f(Some(CaptureProto::Arp), None, Some(1))
            .validate()
            .is_err());
        assert!(f(Some(CaptureProto::Tcp), None, Some(1)).validate().is_ok());
        assert_eq!(
            f(Some(CaptureProto::Icmp), Some(A), None).describe(),
            "icmp and host 10.244.1.2"
        );
    }
}
