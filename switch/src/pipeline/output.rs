//! Stage 5, output: makes each forwarded frame acceptable to its
//! destination port.
//!
//! Taps opened with vnet_hdr and TUNSETOFFLOAD take partial checksums and
//! GSO superframes as they are. A port without offloads gets partial
//! checksums completed in software; a superframe to such a port is dropped
//! and counted (software segmentation arrives with the overlay path).

use super::{drop_packet, Batch, DropReason, Verdict};
use crate::metrics::WorkerCounters;
use crate::tables::Tables;
use crate::wire::{checksum, vnet_hdr};

/// The output stage (stateless).
#[derive(Debug, Default)]
pub struct OutputStage;

impl OutputStage {
    pub fn process(&mut self, batch: &mut Batch, tables: &Tables, c: &WorkerCounters) {
        for p in batch.packets_mut() {
            let Verdict::Forward { port } = p.verdict else {
                continue;
            };
            let Some(dst) = tables.port(port) else {
                p.verdict = Verdict::Pending;
                drop_packet(p, DropReason::PortGone, c);
                continue;
            };
            if dst.offloads {
                continue;
            }
            let vnet = p.meta.vnet;
            if vnet.is_gso() {
                p.verdict = Verdict::Pending;
                drop_packet(p, DropReason::OffloadUnsupported, c);
                continue;
            }
            if let Some((start, offset)) = vnet.csum {
                if checksum::complete_partial(
                    p.frame_mut(),
                    usize::from(start),
                    usize::from(offset),
                ) {
                    c.stages.csum_completed.inc();
                }
                p.set_vnet(vnet_hdr::Repr::NONE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::{Batch, Pipeline, Verdict};
    use super::*;

    #[test]
    fn partial_checksum_completed_for_port_without_offloads() {
        let mut t = tables();
        if let Some(Some(p)) = t.ports.get_mut(1) {
            p.offloads = false;
        }
        // A UDP frame whose checksum field holds only the pseudo-header
        // sum, as a pod's kernel leaves it with NEEDS_CSUM.
        let mut f = udp_frame(POD_A, POD_B, 64);
        let full = u16::from_be_bytes([f[VNET + 40], f[VNET + 41]]);
        let l4 = VNET + 34;
        let udp_len = (f.len() - l4) as u32;
        let mut pseudo = checksum::sum(&POD_A, 0);
        pseudo = checksum::sum(&POD_B, pseudo);
        pseudo = checksum::sum(&[0, 17], pseudo);
        pseudo = checksum::sum(&(udp_len as u16).to_be_bytes(), pseudo);
        f[VNET + 40..VNET + 42].copy_from_slice(&(pseudo as u16).to_be_bytes());
        set_vnet(&mut f, 1, 0, 0, 34, 6);
        let mut pl = Pipeline::new(counters());
        let mut b = Batch::new(1);
        b.push_bytes(0, &f);
        pl.process(&mut b, &t, std::time::Instant::now());
        let p = &b.packets()[0];
        assert_eq!(p.verdict, Verdict::Forward { port: 1 });
        let out = p.data();
        assert_eq!(u16::from_be_bytes([out[VNET + 40], out[VNET + 41]]), full);
        assert_eq!(out[0], 0, "vnet header cleared");
    }
}
