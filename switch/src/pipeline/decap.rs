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
use crate::wire::vnet_hdr;
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
    match inner_checksum_state(frame) {
        InnerChecksum::Valid | InnerChecksum::NotChecked => Ok(false),
        InnerChecksum::Partial {
            l4_start,
            csum_off,
            end,
        } => {
            if crate::wire::checksum::complete_partial(&mut frame[..end], l4_start, csum_off) {
                Ok(true)
            } else {
                Err(DropReason::InnerChecksumInvalid)
            }
        }
        InnerChecksum::Truncated => Err(DropReason::L4HeaderInvalid),
        InnerChecksum::Invalid => Err(DropReason::InnerChecksumInvalid),
    }
}

/// What [`receive`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Appended to the batch's last packet, which it continues (receive
    /// coalescing: the same TCP flow, the next sequence number).
    Merged,
    /// Loaded into a new packet of the batch.
    Loaded,
    /// Dropped, and counted under this reason.
    Dropped(DropReason),
    /// The batch is full and the datagram was not coalesced: nothing was
    /// done; offer it again once the batch has been processed.
    BatchFull,
}

/// The overlay's input stage, one datagram at a time (VPP's
/// `vxlan4-input`): checks the datagram from `src` ([`decap`]), appends its
/// inner TCP segment to the batch's last packet when `coalescing` (that
/// packet came from the same read) and it continues that flow
/// ([`try_coalesce`]), or loads it as a new packet ([`load_inner`]).
/// Counts merges, whole superframes and drops in `c`; the caller counts
/// the datagrams it read.
pub fn receive(
    batch: &mut super::Batch,
    dgram: &[u8],
    src: Ipv4Addr,
    overlay: &Overlay,
    coalescing: bool,
    c: &crate::metrics::WorkerCounters,
) -> Received {
    let inner = match decap(dgram, src, overlay) {
        Ok(inner) => inner,
        Err(reason) => {
            c.count_drop(reason, dgram.len());
            return Received::Dropped(reason);
        }
    };
    if coalescing {
        if let Some(prev) = batch.packets_mut().last_mut() {
            if !coalesce_closed(prev)
                && inner_checksum_state(inner) == InnerChecksum::Valid
                && try_coalesce(prev, inner)
            {
                c.stages.gro_merged.inc();
                return Received::Merged;
            }
        }
    }
    let Some(p) = batch.next_free() else {
        return Received::BatchFull;
    };
    match load_inner(p, inner, src, overlay) {
        Ok(whole_superframe) => {
            if whole_superframe {
                c.stages.vxlan_rx_superframes.inc();
            }
            batch.commit();
            Received::Loaded
        }
        Err(reason) => {
            c.count_drop(reason, dgram.len());
            Received::Dropped(reason)
        }
    }
}

/// Loads the inner frame of a datagram from `src` (as [`decap`] returned
/// it) into `p`, on the overlay port, with the vnet header
/// [`inner_offload`] gives it. Returns whether it is a superframe that
/// crossed the underlay whole.
pub fn load_inner(
    p: &mut super::Packet,
    inner: &[u8],
    src: Ipv4Addr,
    overlay: &Overlay,
) -> Result<bool, DropReason> {
    let vnet = inner_offload(inner, overlay.pod_mtu)?;
    // A datagram's payload always fits a packet buffer.
    if !p.load_frame(overlay.port, vnet, inner) {
        return Err(DropReason::VxlanInvalid);
    }
    p.meta.from_node = overlay.node_by_ip(src);
    Ok(vnet.is_gso())
}

/// The vnet header a decapsulated IPv4 frame is delivered with, from the
/// state of its inner checksum, or why it is dropped.
///
/// A partial checksum (the field holds the pseudo-header sum, as a
/// kernel sender leaves a `CHECKSUM_PARTIAL` skb whose underlay never
/// computed it: a veth, or UDP-tunnel GSO) is passed on as partial
/// (`NEEDS_CSUM`), as the kernel's own vxlan device passes it on, instead
/// of being completed here: the pod's kernel trusts it, a NIC completes it.
/// A TCP frame longer than one segment at `pod_mtu` is a superframe that
/// crossed the underlay whole (UDP-tunnel GSO over a veth): it goes to the
/// pod as one, with GSO TCPV4 and the segment size the sender's MTU gives.
/// Anything else must carry a valid checksum (or none, for UDP).
///
/// The partial test comes first and costs a pseudo-header sum; only the
/// rest pays a sum over the payload.
pub fn inner_offload(frame: &[u8], pod_mtu: u16) -> Result<vnet_hdr::Repr, DropReason> {
    let l4 = match inner_l4(frame) {
        InnerL4::NotChecked => return Ok(vnet_hdr::Repr::NONE),
        InnerL4::Truncated => return Err(DropReason::L4HeaderInvalid),
        InnerL4::Checked(l4) => l4,
    };
    if l4.field == l4.pseudo as u16 {
        let csum = Some((l4.start as u16, l4.csum_off as u16));
        let seg = &frame[l4.start..l4.start + l4.len];
        if l4.proto == 6 {
            let tcp_len = usize::from(seg[12] >> 4) * 4;
            if tcp_len < 20 || tcp_len > l4.len {
                return Err(DropReason::L4HeaderInvalid);
            }
            let ihl = l4.start - 14;
            let mss = usize::from(pod_mtu).saturating_sub(ihl + tcp_len).max(1);
            if l4.len - tcp_len > mss {
                return Ok(vnet_hdr::Repr {
                    csum,
                    gso: vnet_hdr::GsoKind::TcpV4,
                    gso_size: mss as u16,
                    hdr_len: (l4.start + tcp_len) as u16,
                    ecn: false,
                });
            }
        }
        return Ok(vnet_hdr::Repr {
            csum,
            ..vnet_hdr::Repr::NONE
        });
    }
    if l4.valid(frame) {
        return Ok(vnet_hdr::Repr::NONE);
    }
    Err(DropReason::InnerChecksumInvalid)
}

/// The state of a decapsulated frame's inner TCP/UDP checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerChecksum {
    /// Not IPv4 TCP/UDP, a fragment, or UDP without a checksum.
    NotChecked,
    Valid,
    /// The folded pseudo-header sum, as a kernel sender leaves it.
    Partial {
        l4_start: usize,
        csum_off: usize,
        end: usize,
    },
    Truncated,
    Invalid,
}

/// Reads (without changing anything) the inner checksum's state.
pub fn inner_checksum_state(frame: &[u8]) -> InnerChecksum {
    let l4 = match inner_l4(frame) {
        InnerL4::NotChecked => return InnerChecksum::NotChecked,
        InnerL4::Truncated => return InnerChecksum::Truncated,
        InnerL4::Checked(l4) => l4,
    };
    if l4.valid(frame) {
        return InnerChecksum::Valid;
    }
    if l4.field == l4.pseudo as u16 {
        return InnerChecksum::Partial {
            l4_start: l4.start,
            csum_off: l4.csum_off,
            end: l4.start + l4.len,
        };
    }
    InnerChecksum::Invalid
}

/// A decapsulated IPv4 frame's TCP or UDP part, as far as its checksum
/// goes.
enum InnerL4 {
    /// Not IPv4 TCP/UDP, a fragment, or UDP without a checksum.
    NotChecked,
    Truncated,
    Checked(L4Checksum),
}

struct L4Checksum {
    proto: u8,
    /// Where the L4 header starts in the frame, and its length with data.
    start: usize,
    len: usize,
    /// The checksum field's offset in the L4 header, and its value.
    csum_off: usize,
    field: u16,
    /// The unfolded pseudo-header sum.
    pseudo: u32,
}

impl L4Checksum {
    /// Whether the checksum over the segment is whole and right.
    #[inline]
    fn valid(&self, frame: &[u8]) -> bool {
        crate::wire::checksum::sum(&frame[self.start..self.start + self.len], self.pseudo) as u16
            == 0xffff
    }
}

/// Always inlined: returned through memory, the six fields cost more to
/// store and reload than to compute (the instruction guard's vxlan_decap).
#[inline(always)]
fn inner_l4(frame: &[u8]) -> InnerL4 {
    use crate::wire::checksum::sum;
    const ETH: usize = 14;
    if frame.len() < ETH + 20 || frame[12..14] != [0x08, 0x00] {
        return InnerL4::NotChecked;
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff;
    let proto = ip[9];
    if ihl < 20 || total < ihl || ETH + total > frame.len() || frag != 0 {
        return InnerL4::NotChecked;
    }
    let (csum_off, min_len) = match proto {
        6 => (16, 20),
        17 => (6, 8),
        _ => return InnerL4::NotChecked,
    };
    let len = total - ihl;
    if len < min_len {
        return InnerL4::Truncated;
    }
    let start = ETH + ihl;
    let field = u16::from_be_bytes([frame[start + csum_off], frame[start + csum_off + 1]]);
    if proto == 17 && field == 0 {
        return InnerL4::NotChecked; // UDP without a checksum (RFC 768).
    }
    let mut pseudo = sum(&ip[12..20], 0);
    pseudo = sum(&[0, proto], pseudo);
    pseudo = sum(&(len as u16).to_be_bytes(), pseudo);
    InnerL4::Checked(L4Checksum {
        proto,
        start,
        len,
        csum_off,
        field,
        pseudo,
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::overlay;
    use super::*;

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

    /// The frame with its TCP checksum replaced by the pseudo-header sum.
    fn made_partial(good: &[u8]) -> Vec<u8> {
        let l4_len = (good.len() - 34) as u16;
        let mut pseudo = crate::wire::checksum::sum(&good[26..34], 0);
        pseudo = crate::wire::checksum::sum(&[0, 6], pseudo);
        pseudo = crate::wire::checksum::sum(&l4_len.to_be_bytes(), pseudo);
        let mut f = good.to_vec();
        f[34 + 16..34 + 18].copy_from_slice(&(pseudo as u16).to_be_bytes());
        f
    }

    fn tcp_frame_of(payload: usize) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 244, 9, 2], [10, 244, 1, 2], 63)
            .tcp(40000, 80, 7, 1000);
        let mut out = Vec::new();
        b.write(&mut out, &vec![0x5a; payload]).unwrap();
        out
    }

    #[test]
    fn partial_checksums_stay_partial_and_whole_superframes_become_gso() {
        let good = tcp_frame_of(100);
        assert_eq!(inner_offload(&good, 1450), Ok(vnet_hdr::Repr::NONE));
        let small = made_partial(&good);
        let r = inner_offload(&small, 1450).unwrap();
        assert_eq!((r.csum, r.gso), (Some((34, 16)), vnet_hdr::GsoKind::None));
        // 30 000 bytes of payload arrived in one datagram: a superframe
        // with the segment size of a 1450-byte MTU (20 IP + 20 TCP).
        let big = made_partial(&tcp_frame_of(30_000));
        let r = inner_offload(&big, 1450).unwrap();
        assert_eq!(r.gso, vnet_hdr::GsoKind::TcpV4);
        assert_eq!((r.gso_size, r.hdr_len, r.csum), (1410, 54, Some((34, 16))));
        // What the pipeline will parse back.
        let mut hdr = [0u8; vnet_hdr::LEN];
        r.emit(&mut vnet_hdr::VnetHdr::new_checked(&mut hdr[..]).unwrap());
        let back = vnet_hdr::Repr::parse(
            &vnet_hdr::VnetHdr::new_checked(&hdr[..]).unwrap(),
            big.len(),
        );
        assert_eq!(back, Ok(r));
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x55;
        assert_eq!(
            inner_offload(&bad, 1450),
            Err(DropReason::InnerChecksumInvalid)
        );
        // Truncations never panic.
        for n in 0..big.len().min(200) {
            let _ = inner_offload(&big[..n], 1450);
        }
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

/// Receive-side coalescing (GRO) of decapsulated TCP segments into one
/// superframe for the destination tap, as wireguard-go's
/// `tun/offload_linux.go` (tcpGRO) and Linux's `tcp_gro_receive` do: the
/// next segment is appended to the packet built so far when it continues
/// the same flow exactly (same addresses, ports, TOS/TTL/DF, TCP header
/// length and options, ACK number and window; sequence number right after
/// the data so far), carries only ACK (PSH allowed on the last), and is
/// not longer than the first segment; a shorter or PSH segment closes the
/// superframe. The result is handed to the tap with a GSO TCPV4 vnet
/// header (gso_size = the first segment's payload) and a partial checksum,
/// which is how the pod's kernel takes a superframe.
///
/// `dst` is the frame built so far (vnet header in front), `seg` the next
/// inner frame, both with valid (full) checksums. Returns false, changing
/// nothing, when `seg` cannot be appended.
pub fn try_coalesce(dst: &mut super::Packet, seg: &[u8]) -> bool {
    use crate::wire::vnet_hdr::{GsoKind, Repr};
    const ETH: usize = 14;
    const IP: usize = 20;
    let d = dst.frame();
    // Only plain IPv4 (no options) TCP, no fragments, both sides.
    let tcp_hdr_len = |f: &[u8]| -> Option<usize> {
        if f.len() < ETH + IP + 20 || f[12..14] != [0x08, 0x00] || f[ETH] != 0x45 || f[ETH + 9] != 6
        {
            return None;
        }
        let frag = u16::from_be_bytes([f[ETH + 6], f[ETH + 7]]);
        if frag & 0x3fff != 0 {
            return None;
        }
        let thl = usize::from(f[ETH + IP + 12] >> 4) * 4;
        let total = usize::from(u16::from_be_bytes([f[ETH + 2], f[ETH + 3]]));
        (thl >= 20 && ETH + total <= f.len() && total >= IP + thl).then_some(thl)
    };
    let (Some(dthl), Some(sthl)) = (tcp_hdr_len(d), tcp_hdr_len(seg)) else {
        return false;
    };
    if dthl != sthl {
        return false;
    }
    let hl = ETH + IP + dthl;
    let d_total = usize::from(u16::from_be_bytes([d[ETH + 2], d[ETH + 3]]));
    let s_total = usize::from(u16::from_be_bytes([seg[ETH + 2], seg[ETH + 3]]));
    let d_payload = d_total - IP - dthl;
    let s_payload = s_total - IP - sthl;
    if d_payload == 0 || s_payload == 0 || d.len() < ETH + d_total {
        return false;
    }
    let vnet = dst.meta.vnet;
    let gso_size = if vnet.gso == GsoKind::TcpV4 {
        usize::from(vnet.gso_size)
    } else {
        d_payload
    };
    // The superframe so far must be whole segments, the new one no longer.
    if vnet.gso != GsoKind::None && vnet.gso != GsoKind::TcpV4
        || !d_payload.is_multiple_of(gso_size)
        || s_payload > gso_size
    {
        return false;
    }
    if d_total + s_payload > 65535 - 64 || ETH + d_total + s_payload > dst.frame_capacity() {
        return false;
    }
    // Same flow and IP header fields that must match (TOS, DF, TTL, protocol, addresses).
    if d[ETH + 1] != seg[ETH + 1]
        || d[ETH + 6] & 0x40 != seg[ETH + 6] & 0x40
        || d[ETH + 8] != seg[ETH + 8]
        || d[ETH + 12..ETH + 20] != seg[ETH + 12..ETH + 20]
    {
        return false;
    }
    let (dt, st) = (&d[ETH + IP..hl], &seg[ETH + IP..hl]);
    // Ports, ACK number, window, options; flags: ACK only so far.
    const ACK: u8 = 0x10;
    const PSH: u8 = 0x08;
    if dt[0..4] != st[0..4]
        || dt[8..12] != st[8..12]
        || dt[14..16] != st[14..16]
        || dt[20..] != st[20..]
        || dt[13] != ACK
        || (st[13] != ACK && st[13] != ACK | PSH)
    {
        return false;
    }
    let d_seq = u32::from_be_bytes([dt[4], dt[5], dt[6], dt[7]]);
    let s_seq = u32::from_be_bytes([st[4], st[5], st[6], st[7]]);
    if d_seq.wrapping_add(d_payload as u32) != s_seq {
        return false;
    }
    let s_flags = st[13];
    // Append the payload and fix the headers.
    let new_total = d_total + s_payload;
    let area = dst.frame_area();
    area[ETH + d_total..ETH + new_total].copy_from_slice(&seg[hl..hl + s_payload]);
    area[ETH + 2..ETH + 4].copy_from_slice(&(new_total as u16).to_be_bytes());
    area[ETH + 10..ETH + 12].fill(0);
    let ipc = crate::wire::checksum::checksum(&area[ETH..ETH + IP]);
    area[ETH + 10..ETH + 12].copy_from_slice(&ipc.to_be_bytes());
    area[ETH + IP + 13] = s_flags;
    // Partial checksum: the folded pseudo-header sum over the new length.
    let tcp_len = (new_total - IP) as u16;
    let mut pseudo = crate::wire::checksum::sum(&area[ETH + 12..ETH + 20], 0);
    pseudo = crate::wire::checksum::sum(&[0, 6], pseudo);
    pseudo = crate::wire::checksum::sum(&tcp_len.to_be_bytes(), pseudo);
    area[ETH + IP + 16..ETH + IP + 18].copy_from_slice(&(pseudo as u16).to_be_bytes());
    dst.set_frame_len(ETH + new_total);
    dst.set_vnet(Repr {
        csum: Some(((ETH + IP) as u16, 16)),
        gso: GsoKind::TcpV4,
        gso_size: gso_size as u16,
        hdr_len: hl as u16,
        ecn: false,
    });
    true
}

/// Whether a superframe built by [`try_coalesce`] is closed (its last
/// segment was short or carried PSH), so nothing more may be appended.
pub fn coalesce_closed(p: &super::Packet) -> bool {
    let f = p.frame();
    f.len() > 14 + 20 + 13 && f[14 + 20 + 13] & 0x08 != 0
}

#[cfg(test)]
mod gro_tests {
    use super::*;

    fn seg(seq: u32, payload: &[u8], psh: bool) -> Vec<u8> {
        let mut b = etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4([10, 244, 9, 2], [10, 244, 1, 2], 63)
            .tcp(40000, 80, seq, 1000)
            .ack(77);
        if psh {
            b = b.psh();
        }
        let mut out = Vec::new();
        b.write(&mut out, payload).unwrap();
        out
    }

    /// The pseudo-header bytes of an IPv4/TCP frame.
    fn pseudo_of(f: &[u8]) -> Vec<u8> {
        let mut v = f[26..34].to_vec();
        v.extend_from_slice(&[0, 6]);
        v.extend_from_slice(&((f.len() - 34) as u16).to_be_bytes());
        v
    }

    fn vxlan(inner: &[u8]) -> Vec<u8> {
        let mut d = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        d.extend_from_slice(inner);
        d
    }

    #[test]
    fn receive_loads_coalesces_drops_and_stops_at_a_full_batch() {
        let ov = super::super::testutil::overlay();
        let node2 = Ipv4Addr::new(198, 18, 0, 2);
        let c = crate::metrics::WorkerCounters::default();
        let data = [0x33u8; 2896];
        let (a, b) = (
            seg(1000, &data[..1448], false),
            seg(2448, &data[1448..], true),
        );
        let mut batch = super::super::Batch::new(2);
        // The first of a read loads; the next of the same flow merges.
        assert_eq!(
            receive(&mut batch, &vxlan(&a), node2, &ov, false, &c),
            Received::Loaded
        );
        assert_eq!(
            receive(&mut batch, &vxlan(&b), node2, &ov, true, &c),
            Received::Merged
        );
        assert_eq!((batch.len(), c.stages.gro_merged.get()), (1, 1));
        assert_eq!(batch.packets()[0].meta.from_node, Some(0));
        assert_eq!(batch.packets()[0].ingress, ov.port);
        // Not coalescing (another read): a packet of its own.
        let next = seg(3896, &[1; 10], false);
        assert_eq!(
            receive(&mut batch, &vxlan(&next), node2, &ov, false, &c),
            Received::Loaded
        );
        // Full: nothing done, the datagram is offered again later.
        let more = seg(9000, &[1; 10], false);
        assert_eq!(
            receive(&mut batch, &vxlan(&more), node2, &ov, false, &c),
            Received::BatchFull
        );
        assert_eq!(batch.len(), 2);
        // Unknown senders are dropped and counted.
        let stranger = Ipv4Addr::new(198, 18, 0, 99);
        assert_eq!(
            receive(&mut batch, &vxlan(&a), stranger, &ov, false, &c),
            Received::Dropped(DropReason::UnknownNode)
        );
        assert_eq!(c.drop_packets[DropReason::UnknownNode as usize].get(), 1);
    }

    #[test]
    fn contiguous_segments_coalesce_into_a_tso_superframe() {
        let data: Vec<u8> = (0..4000u32).map(|i| (i * 7) as u8).collect();
        let segs = [
            seg(1000, &data[..1448], false),
            seg(2448, &data[1448..2896], false),
            seg(3896, &data[2896..], true),
        ];
        let mut p = super::super::Packet::new();
        assert!(p.load_frame(0, crate::wire::vnet_hdr::Repr::NONE, &segs[0]));
        assert!(try_coalesce(&mut p, &segs[1]));
        assert!(!coalesce_closed(&p));
        assert!(try_coalesce(&mut p, &segs[2]));
        assert!(coalesce_closed(&p));
        // A further segment does not fit after PSH.
        assert!(!try_coalesce(&mut p, &seg(5000, &[1; 10], false)));
        let v = p.meta.vnet;
        assert_eq!(
            (v.gso, v.gso_size, v.csum),
            (crate::wire::vnet_hdr::GsoKind::TcpV4, 1448, Some((34, 16)))
        );
        // Completing the partial checksum gives a valid datagram with all the data.
        let mut f = p.frame().to_vec();
        assert!(crate::wire::checksum::complete_partial(&mut f, 34, 16));
        let s = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
        let Some(etherparse::TransportSlice::Tcp(t)) = s.transport else {
            panic!()
        };
        let Some(etherparse::NetSlice::Ipv4(_)) = s.net else {
            panic!()
        };
        assert_eq!(
            crate::wire::checksum::sum(&f[34..], crate::wire::checksum::sum(&pseudo_of(&f), 0)),
            0xffff,
            "valid TCP checksum"
        );
        assert_eq!(t.payload(), &data[..]);
        assert!(t.psh());
    }

    #[test]
    fn gaps_other_flows_and_longer_segments_do_not_coalesce() {
        let mut p = super::super::Packet::new();
        assert!(p.load_frame(
            0,
            crate::wire::vnet_hdr::Repr::NONE,
            &seg(1000, &[1; 1000], false)
        ));
        assert!(!try_coalesce(&mut p, &seg(2500, &[1; 1000], false)), "gap");
        assert!(
            !try_coalesce(&mut p, &seg(2000, &[1; 1200], false)),
            "longer than the first"
        );
        let mut other = seg(2000, &[1; 1000], false);
        other[14 + 20 + 1] ^= 1; // source port
        assert!(!try_coalesce(&mut p, &other), "other flow");
        assert!(try_coalesce(&mut p, &seg(2000, &[1; 1000], false)));
    }
}
