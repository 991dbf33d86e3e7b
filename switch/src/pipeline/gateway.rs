//! Stage 3, gateway: what the switch answers itself as the pods' gateway.
//!
//! - Proxy ARP: every ARP request from a pod for any address other than its
//!   own is answered with the gateway MAC, so pods send everything to the
//!   switch (as Calico and Cilium do) and the switch routes at L3.
//! - ICMP echo to the gateway address is answered in place.
//! - Anything else to the gateway address, and broadcast or multicast IP
//!   destinations, are dropped and counted.

use std::net::{IpAddr, Ipv4Addr};

use etherparse::{ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType};

use super::parse::ETH_LEN;
use super::{drop_packet, Batch, DropReason, Packet, Verdict, L3};
use crate::metrics::WorkerCounters;
use crate::tables::{PortKind, Tables};
use crate::wire::checksum;
use crate::wire::vnet_hdr;

/// ARP payload for Ethernet/IPv4 (RFC 826): 28 bytes.
const ARP_ETH_IPV4_LEN: usize = 28;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;

/// The gateway stage (stateless).
#[derive(Debug, Default)]
pub struct GatewayStage;

impl GatewayStage {
    pub fn process(&mut self, batch: &mut Batch, tables: &Tables, c: &WorkerCounters) {
        for p in batch.packets_mut() {
            if !p.pending() {
                continue;
            }
            let result = match p.meta.l3 {
                L3::Arp => answer_arp(p, tables).map(|()| c.stages.arp_replies.inc()),
                L3::Ipv4 => gateway_ipv4(p, tables, c),
                _ => Ok(()),
            };
            if let Err(reason) = result {
                drop_packet(p, reason, c);
            }
        }
    }
}

fn answer_arp(p: &mut Packet, tables: &Tables) -> Result<(), DropReason> {
    let port = tables.port(p.ingress);
    let port_ip = port.and_then(|port| port.ipv4);
    let port_mac = port.map(|port| port.mac);
    let kind = port.map(|port| port.kind);
    let (from_host, from_pod) = (kind == Some(PortKind::Host), kind == Some(PortKind::Pod));
    let (sender_mac, sender_ip, target_ip, operation) = {
        let arp = ArpPacketSlice::from_slice(&p.frame()[ETH_LEN..])
            .map_err(|_| DropReason::ArpInvalid)?;
        if arp.hw_addr_type() != ArpHardwareId::ETHERNET
            || arp.proto_addr_type() != EtherType::IPV4
            || arp.hw_addr_size() != 6
            || arp.proto_addr_size() != 4
        {
            return Err(DropReason::ArpInvalid);
        }
        let mut sender_mac = [0u8; 6];
        sender_mac.copy_from_slice(arp.sender_hw_addr());
        let sip =
            <[u8; 4]>::try_from(arp.sender_protocol_addr()).map_err(|_| DropReason::ArpInvalid)?;
        let tip =
            <[u8; 4]>::try_from(arp.target_protocol_addr()).map_err(|_| DropReason::ArpInvalid)?;
        (
            sender_mac,
            Ipv4Addr::from(sip),
            Ipv4Addr::from(tip),
            arp.operation(),
        )
    };
    // A pod ARPs only with its own IP and MAC, whatever the opcode: a
    // reply or a gratuitous ARP claiming another pod's address is a spoof,
    // counted as one before "needs no answer" is considered. A probe's
    // sender 0.0.0.0 (RFC 5227 §2.1.1) claims nothing.
    if from_pod {
        if !sender_ip.is_unspecified() && Some(sender_ip) != port_ip {
            return Err(DropReason::SourceIpSpoofed);
        }
        if port_mac != Some(sender_mac) {
            return Err(DropReason::SourceMacSpoofed);
        }
    }
    if operation != ArpOperation::REQUEST {
        return Err(DropReason::ArpNotAnswered);
    }
    // A probe (sender 0.0.0.0, RFC 5227) or a gratuitous ARP needs no answer.
    if sender_ip.is_unspecified() || sender_ip == target_ip {
        return Err(DropReason::ArpNotAnswered);
    }
    // The node's stack ARPs for pods from its own addresses; nothing else
    // (the overlay) ARPs through the switch.
    if !from_host {
        if Some(sender_ip) != port_ip {
            return Err(DropReason::SourceIpSpoofed);
        }
        if port_mac != Some(sender_mac) {
            return Err(DropReason::SourceMacSpoofed);
        }
    }
    let gw_mac = tables.gateway.mac;
    p.set_vnet(vnet_hdr::Repr::NONE);
    let f = p.frame_mut();
    f[0..6].copy_from_slice(&sender_mac);
    f[6..12].copy_from_slice(&gw_mac);
    let a = &mut f[ETH_LEN..ETH_LEN + ARP_ETH_IPV4_LEN];
    a[6..8].copy_from_slice(&ArpOperation::REPLY.0.to_be_bytes());
    a[8..14].copy_from_slice(&gw_mac);
    a[14..18].copy_from_slice(&target_ip.octets());
    a[18..24].copy_from_slice(&sender_mac);
    a[24..28].copy_from_slice(&sender_ip.octets());
    p.set_frame_len(ETH_LEN + ARP_ETH_IPV4_LEN);
    p.verdict = Verdict::Reply;
    Ok(())
}

/// Whether an IPv4 packet to `dst` is for the gateway itself (`Ok(false)`:
/// it passes through); `Err` for a destination no packet may have
/// (broadcast, multicast, unspecified, 0.0.0.0/8). A function of the
/// address alone, so the fast path decides it once per destination.
#[inline]
pub(super) fn to_gateway_ipv4(dst: Ipv4Addr, tables: &Tables) -> Result<bool, DropReason> {
    if dst.is_broadcast() || dst.is_multicast() || dst.is_unspecified() || dst.octets()[0] == 0 {
        return Err(DropReason::NonUnicastDestination);
    }
    Ok(dst == tables.gateway.ipv4)
}

pub(super) fn gateway_ipv4(
    p: &mut Packet,
    tables: &Tables,
    c: &WorkerCounters,
) -> Result<(), DropReason> {
    let IpAddr::V4(dst) = p.meta.dst else {
        return Ok(());
    };
    if !to_gateway_ipv4(dst, tables)? {
        return Ok(());
    }
    let m = p.meta;
    let l4 = usize::from(m.l4_off);
    let is_echo = m.proto == 1
        && m.first_fragment
        && !m.more_fragments
        && !m.vnet.is_gso()
        && p.frame()[l4] == ICMP_ECHO_REQUEST
        && p.frame()[l4 + 1] == 0;
    if !is_echo {
        return Err(DropReason::GatewayNotServed);
    }
    let gw_mac = tables.gateway.mac;
    p.set_vnet(vnet_hdr::Repr::NONE);
    let end = ETH_LEN + usize::from(m.ip_len);
    let f = p.frame_mut();
    // Ethernet: back to the sender, from the gateway.
    let (dst_mac, src_mac) = f.split_at_mut(6);
    dst_mac.copy_from_slice(&src_mac[..6]);
    f[6..12].copy_from_slice(&gw_mac);
    // IPv4: swap addresses, fresh TTL, full header checksum.
    let ip = &mut f[ETH_LEN..l4];
    let (a, b) = ip[12..20].split_at_mut(4);
    a.swap_with_slice(b);
    ip[8] = 64;
    ip[10..12].fill(0);
    let hc = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&hc.to_be_bytes());
    // ICMP: echo reply; recompute over the whole message (it may have
    // arrived with a partial checksum).
    let icmp = &mut f[l4..end];
    icmp[0] = ICMP_ECHO_REPLY;
    icmp[2..4].fill(0);
    let ic = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&ic.to_be_bytes());
    p.verdict = Verdict::Reply;
    c.stages.icmp_echo_replies.inc();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{parse::ParseStage, Batch, Verdict};
    use super::*;

    fn run(frame: Vec<u8>) -> (Verdict, Vec<u8>) {
        let (t, c) = (tables(), counters());
        let mut b = Batch::new(1);
        b.push_bytes(0, &frame);
        ParseStage.process(&mut b, &t, &c);
        GatewayStage.process(&mut b, &t, &c);
        let p = &b.packets()[0];
        (p.verdict, p.data().to_vec())
    }

    #[test]
    fn proxy_arp_answers_any_address_with_gateway_mac() {
        for target in [GW, POD_B, [10, 244, 1, 200], [8, 8, 8, 8]] {
            let (v, out) = run(arp_request(POD_A, target));
            assert_eq!(v, Verdict::Reply);
            let f = &out[VNET..];
            assert_eq!(&f[0..6], &mac_of(POD_A));
            assert_eq!(&f[6..12], &GW_MAC);
            let arp = ArpPacketSlice::from_slice(&f[14..]).unwrap();
            assert_eq!(arp.operation(), ArpOperation::REPLY);
            assert_eq!(arp.sender_hw_addr(), &GW_MAC);
            assert_eq!(arp.sender_protocol_addr(), &target);
            assert_eq!(arp.target_protocol_addr(), &POD_A);
        }
    }

    #[test]
    fn arp_probe_gratuitous_and_spoofed_are_not_answered() {
        assert_eq!(
            run(arp_request([0, 0, 0, 0], GW)).0,
            Verdict::Drop(DropReason::ArpNotAnswered)
        );
        assert_eq!(
            run(arp_request(POD_A, POD_A)).0,
            Verdict::Drop(DropReason::ArpNotAnswered)
        );
        let mut f = arp_request(POD_A, GW);
        f[VNET + 14 + 14..VNET + 14 + 18].copy_from_slice(&POD_B); // sender IP of pod B
        assert_eq!(run(f).0, Verdict::Drop(DropReason::SourceIpSpoofed));
        let mut f = arp_request(POD_A, GW);
        f[VNET + 14 + 4] = 9; // hlen 9
        assert_eq!(run(f).0, Verdict::Drop(DropReason::ArpInvalid));
        let mut f = arp_request(POD_A, GW);
        f.truncate(VNET + 14 + 10);
        assert_eq!(run(f).0, Verdict::Drop(DropReason::ArpInvalid));
    }

    /// A pod claiming another pod's address or MAC in ARP is a spoof
    /// whatever the opcode; its own gratuitous ARP and probes are not.
    #[test]
    fn arp_spoofs_are_counted_before_needs_no_answer() {
        let spoofed_ip = Verdict::Drop(DropReason::SourceIpSpoofed);
        // Gratuitous ARP for pod B's address, from pod A's port.
        assert_eq!(run(arp_request(POD_B, POD_B)).0, spoofed_ip);
        // An unsolicited reply claiming pod B's address.
        let mut f = arp_request(POD_B, GW);
        f[VNET + 14 + 7] = 2;
        assert_eq!(run(f).0, spoofed_ip);
        // Pod A's address with another sender MAC (the Ethernet source is right).
        let mut f = arp_request(POD_A, GW);
        f[VNET + 14 + 8 + 5] ^= 1;
        assert_eq!(run(f).0, Verdict::Drop(DropReason::SourceMacSpoofed));
        let mut f = arp_request(POD_A, POD_A);
        f[VNET + 14 + 8 + 5] ^= 1;
        assert_eq!(run(f).0, Verdict::Drop(DropReason::SourceMacSpoofed));
        // Its own gratuitous ARP, a reply and a probe only need no answer.
        let not_answered = Verdict::Drop(DropReason::ArpNotAnswered);
        assert_eq!(run(arp_request(POD_A, POD_A)).0, not_answered);
        let mut f = arp_request(POD_A, GW);
        f[VNET + 14 + 7] = 2;
        assert_eq!(run(f).0, not_answered);
        assert_eq!(run(arp_request([0; 4], POD_B)).0, not_answered);
    }

    #[test]
    fn echo_to_gateway_is_answered() {
        let (v, out) = run(icmp_echo_frame(POD_A, GW, 64));
        assert_eq!(v, Verdict::Reply);
        let s = etherparse::SlicedPacket::from_ethernet(&out[VNET..]).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = s.net else {
            panic!("no ipv4")
        };
        assert_eq!(ip.header().source(), GW);
        assert_eq!(ip.header().destination(), POD_A);
        assert_eq!(checksum::checksum(ip.header().slice()), 0);
        let Some(etherparse::TransportSlice::Icmpv4(icmp)) = s.transport else {
            panic!("no icmp")
        };
        assert_eq!(icmp.type_u8(), 0);
        assert_eq!(checksum::checksum(icmp.slice()), 0);
        assert_eq!(icmp.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn udp_to_gateway_and_broadcast_are_dropped() {
        assert_eq!(
            run(udp_frame(POD_A, GW, 10)).0,
            Verdict::Drop(DropReason::GatewayNotServed)
        );
        assert_eq!(
            run(udp_frame(POD_A, [255, 255, 255, 255], 10)).0,
            Verdict::Drop(DropReason::NonUnicastDestination)
        );
        assert_eq!(
            run(udp_frame(POD_A, [224, 0, 0, 251], 10)).0,
            Verdict::Drop(DropReason::NonUnicastDestination)
        );
    }
}
