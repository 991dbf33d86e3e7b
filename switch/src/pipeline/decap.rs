//! Stage 0 for overlay traffic, decap: checks a VXLAN datagram received on
//! the underlay socket and yields the inner Ethernet frame, which then
//! enters the pipeline on the overlay port.
//!
//! RFC 7348 §4.1-§5: the I flag must be set; reserved bits are ignored;
//! only the configured VNI is accepted, and only from known nodes' underlay
//! addresses (anything else could inject traffic into pods).

use std::net::Ipv4Addr;

use super::DropReason;
use crate::tables::Overlay;
use crate::wire::vxlan::{Repr, VxlanHeader};

/// The inner frame of a valid datagram from a known node, or why not.
pub fn decap<'a>(
    datagram: &'a [u8],
    src: Ipv4Addr,
    overlay: &Overlay,
) -> Result<&'a [u8], DropReason> {
    if overlay.node_by_ip(src).is_none() {
        return Err(DropReason::UnknownNode);
    }
    let hdr = VxlanHeader::new_checked(datagram).map_err(|_| DropReason::VxlanInvalid)?;
    let repr = Repr::parse(&hdr).map_err(|_| DropReason::VxlanInvalid)?;
    if repr.vni != overlay.vni {
        return Err(DropReason::VxlanWrongVni);
    }
    Ok(&datagram[crate::wire::vxlan::HEADER_LEN..])
}

/// Makes the inner TCP/UDP checksum of a decapsulated IPv4 frame whole.
///
/// A sender whose underlay never computes checksums (veth, or a kernel
/// vxlan device in front of a virtual NIC) leaves the inner L4 checksum
/// partial: the field holds only the folded pseudo-header sum, as Linux
/// leaves a `CHECKSUM_PARTIAL` skb. A kernel receiver carries that state
/// along in the skb; bytes read from a UDP socket have lost it. So: a
/// valid checksum is left alone; a partial one is completed; anything else
/// is corruption and dropped. Returns whether the checksum was completed.
pub fn repair_inner_l4_checksum(frame: &mut [u8]) -> Result<bool, DropReason> {
    use crate::wire::checksum::{checksum, complete_partial, sum};
    const ETH: usize = 14;
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return Ok(false);
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    let proto = ip[9];
    if ihl < 20 || total < ihl || ETH + total > frame.len() || frag != 0 {
        return Ok(false);
    }
    let (csum_off, min_len) = match proto {
        6 => (16, 20),
        17 => (6, 8),
        _ => return Ok(false),
    };
    let l4_len = total - ihl;
    if l4_len < min_len {
        return Err(DropReason::L4HeaderInvalid);
    }
    let l4_start = ETH + ihl;
    let mut pseudo = sum(&ip[12..20], 0);
    pseudo = sum(&[0, proto], pseudo);
    pseudo = sum(&(l4_len as u16).to_be_bytes(), pseudo);
    let l4 = &frame[l4_start..l4_start + l4_len];
    let field = u16::from_be_bytes([l4[csum_off], l4[csum_off + 1]]);
    if proto == 17 && field == 0 {
        return Ok(false); // UDP without a checksum (RFC 768).
    }
    if checksum(l4) == !(pseudo as u16) || sum(l4, pseudo) as u16 == 0xffff {
        return Ok(false);
    }
    if field == pseudo as u16 {
        let end = l4_start + l4_len;
        if complete_partial(&mut frame[..end], l4_start, csum_off) {
            return Ok(true);
        }
    }
    Err(DropReason::InnerChecksumInvalid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::OverlayNode;

    fn overlay() -> Overlay {
        Overlay {
            vni: 1,
            udp_port: 8472,
            local_ipv4: Ipv4Addr::new(198, 18, 0, 1),
            vtep_mac: [2, 0x56, 198, 18, 0, 1],
            port: 9,
            nodes: vec![OverlayNode {
                name: "node-2".into(),
                underlay_ipv4: Ipv4Addr::new(198, 18, 0, 2),
                vtep_mac: [2, 0x56, 198, 18, 0, 2],
                pod_cidrs: vec!["10.244.2.0/24".parse().unwrap()],
            }],
        }
    }

    fn datagram(flags: u8, vni: u32) -> Vec<u8> {
        let mut d = vec![
            flags,
            0,
            0,
            0,
            (vni >> 16) as u8,
            (vni >> 8) as u8,
            vni as u8,
            0,
        ];
        d.extend_from_slice(&[0xaa; 60]);
        d
    }

    fn tcp_frame() -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 244, 9, 2], [10, 244, 1, 2], 63)
            .tcp(40000, 80, 7, 1000);
        let mut out = Vec::new();
        b.write(&mut out, b"hello over the overlay").unwrap();
        out
    }

    #[test]
    fn inner_checksum_full_partial_and_corrupt() {
        let good = tcp_frame();
        let mut f = good.clone();
        assert_eq!(repair_inner_l4_checksum(&mut f), Ok(false));
        assert_eq!(f, good);
        // Partial, as a kernel sender leaves it: the folded pseudo-header sum.
        let l4_len = (good.len() - 34) as u16;
        let mut pseudo = crate::wire::checksum::sum(&good[26..34], 0);
        pseudo = crate::wire::checksum::sum(&[0, 6], pseudo);
        pseudo = crate::wire::checksum::sum(&l4_len.to_be_bytes(), pseudo);
        let mut f = good.clone();
        f[34 + 16..34 + 18].copy_from_slice(&(pseudo as u16).to_be_bytes());
        assert_eq!(repair_inner_l4_checksum(&mut f), Ok(true));
        assert_eq!(f, good, "completed checksum equals the real one");
        let mut f = good.clone();
        let last = f.len() - 1;
        f[last] ^= 0x55;
        assert_eq!(
            repair_inner_l4_checksum(&mut f),
            Err(DropReason::InnerChecksumInvalid)
        );
    }

    #[test]
    fn accepts_only_known_nodes_and_the_configured_vni() {
        let ov = overlay();
        let node2 = Ipv4Addr::new(198, 18, 0, 2);
        assert_eq!(decap(&datagram(0x08, 1), node2, &ov).unwrap().len(), 60);
        assert_eq!(
            decap(&datagram(0x08, 1), Ipv4Addr::new(198, 18, 0, 99), &ov),
            Err(DropReason::UnknownNode)
        );
        assert_eq!(
            decap(&datagram(0x08, 2), node2, &ov),
            Err(DropReason::VxlanWrongVni)
        );
        assert_eq!(
            decap(&datagram(0x00, 1), node2, &ov),
            Err(DropReason::VxlanInvalid)
        );
        assert_eq!(
            decap(&[0x08, 0, 0], node2, &ov),
            Err(DropReason::VxlanInvalid)
        );
        // Reserved bits are ignored on receipt.
        assert!(decap(&datagram(0xff, 1), node2, &ov).is_ok());
    }
}
