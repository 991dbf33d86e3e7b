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
