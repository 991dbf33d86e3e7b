//! Capture files: pcap and pcapng with link type Ethernet, written with
//! the `pcap-file` crate, readable by tcpdump, tshark and Wireshark.
//!
//! - **pcap**: the nanosecond variant of the classic format (magic
//!   `0xa1b23c4d`), so timestamps keep the switch's resolution.
//! - **pcapng**: one Interface Description Block naming the port, its
//!   filter (`if_filter`) and `if_tsresol` = 9 (nanoseconds); one Enhanced
//!   Packet Block per frame with its direction in `epb_flags` (inbound =
//!   read by the switch, outbound = written by it); and at the end an
//!   Interface Statistics Block with the frames dropped because the ring
//!   was full (`isb_ifdrop`) and accepted by the filter (`isb_filteraccept`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness, TsResolution};

use super::{CaptureCounts, Direction};

/// The file formats `ctl capture` writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaptureFormat {
    #[default]
    Pcap,
    Pcapng,
}

impl std::str::FromStr for CaptureFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pcap" => Ok(CaptureFormat::Pcap),
            "pcapng" => Ok(CaptureFormat::Pcapng),
            other => Err(format!("{other:?} is not pcap or pcapng")),
        }
    }
}

/// Why a capture file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CaptureFileError {
    /// Writing the header or a frame failed (disk full, closed pipe ...).
    #[error("writing the capture file")]
    Write(#[from] pcap_file::PcapError),
    #[error("writing the capture file")]
    Io(#[from] std::io::Error),
}

/// What the file says about the interface it was taken on.
#[derive(Debug, Clone, Default)]
pub struct CaptureInterface {
    /// The port (`default/web-0`, `host/psw0`, `underlay`).
    pub name: String,
    /// A description (`ingress and egress of ...`).
    pub description: String,
    /// The filter, as text (empty for none).
    pub filter: String,
    pub snaplen: u32,
}

/// The output, shared between the format writer and [`CaptureFileWriter`]
/// so the latter can flush it (`PcapWriter` lends no access to it).
struct SharedOut<W>(Rc<RefCell<W>>);

impl<W: Write> Write for SharedOut<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.0.borrow_mut().write_all(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

enum Inner<W: Write> {
    Pcap(PcapWriter<SharedOut<W>>),
    PcapNg(PcapNgWriter<SharedOut<W>>),
}

/// A capture file being written.
pub struct CaptureFileWriter<W: Write> {
    inner: Inner<W>,
    out: Rc<RefCell<W>>,
    snaplen: u32,
    frames: u64,
}

// pcapng `epb_flags` bits 0-1: the direction (RFC draft pcapng §4.3.1).
const EPB_INBOUND: u32 = 0b01;
const EPB_OUTBOUND: u32 = 0b10;

impl<W: Write> CaptureFileWriter<W> {
    /// Writes the file header (pcap) or the section and interface blocks
    /// (pcapng) to `out`.
    pub fn new(
        out: W,
        format: CaptureFormat,
        iface: &CaptureInterface,
    ) -> Result<Self, CaptureFileError> {
        let snaplen = iface.snaplen.max(1);
        let shared = Rc::new(RefCell::new(out));
        let out = SharedOut(Rc::clone(&shared));
        let inner = match format {
            CaptureFormat::Pcap => Inner::Pcap(PcapWriter::with_header(
                out,
                PcapHeader {
                    snaplen,
                    datalink: DataLink::ETHERNET,
                    ts_resolution: TsResolution::NanoSecond,
                    endianness: Endianness::native(),
                    ..Default::default()
                },
            )?),
            CaptureFormat::Pcapng => {
                let mut w = PcapNgWriter::new(out)?;
                let mut options = vec![
                    InterfaceDescriptionOption::IfName(Cow::Owned(iface.name.clone())),
                    InterfaceDescriptionOption::IfTsResol(9),
                ];
                if !iface.description.is_empty() {
                    options.push(InterfaceDescriptionOption::IfDescription(Cow::Owned(
                        iface.description.clone(),
                    )));
                }
                if !iface.filter.is_empty() {
                    // if_filter: first byte 0 = a libpcap-style filter string.
                    let mut f = vec![0u8];
                    f.extend_from_slice(iface.filter.as_bytes());
                    options.push(InterfaceDescriptionOption::IfFilter(Cow::Owned(f)));
                }
                w.write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: DataLink::ETHERNET,
                    snaplen,
                    options,
                })?;
                Inner::PcapNg(w)
            }
        };
        Ok(CaptureFileWriter {
            inner,
            out: shared,
            snaplen,
            frames: 0,
        })
    }

    /// Appends one frame (cut to the snaplen if longer).
    pub fn write_frame(
        &mut self,
        ts_ns: u64,
        orig_len: u32,
        direction: Direction,
        data: &[u8],
    ) -> Result<(), CaptureFileError> {
        let data = &data[..data.len().min(self.snaplen as usize)];
        let orig_len = orig_len.max(data.len() as u32);
        let timestamp = Duration::from_nanos(ts_ns);
        match &mut self.inner {
            Inner::Pcap(w) => {
                w.write_packet(&PcapPacket::new(timestamp, orig_len, data))?;
            }
            Inner::PcapNg(w) => {
                let flags = match direction {
                    Direction::Ingress => EPB_INBOUND,
                    Direction::Egress => EPB_OUTBOUND,
                };
                w.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: 0,
                    timestamp,
                    original_len: orig_len,
                    data: Cow::Borrowed(data),
                    options: vec![EnhancedPacketOption::Flags(flags)],
                })?;
            }
        }
        self.frames += 1;
        Ok(())
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Flushes what was written to the output.
    pub fn flush(&mut self) -> Result<(), CaptureFileError> {
        Ok(self.out.borrow_mut().flush()?)
    }

    /// Ends the file (pcapng: the statistics block with `counts`, from
    /// `start_ns` to `end_ns`), flushes and returns the output.
    pub fn finish(
        mut self,
        counts: &CaptureCounts,
        start_ns: u64,
        end_ns: u64,
    ) -> Result<W, CaptureFileError> {
        if let Inner::PcapNg(w) = &mut self.inner {
            w.write_pcapng_block(InterfaceStatisticsBlock {
                interface_id: 0,
                timestamp: end_ns,
                options: vec![
                    InterfaceStatisticsOption::IsbStartTime(start_ns),
                    InterfaceStatisticsOption::IsbEndTime(end_ns),
                    InterfaceStatisticsOption::IsbIfRecv(
                        counts.captured + counts.dropped + counts.filtered,
                    ),
                    InterfaceStatisticsOption::IsbIfDrop(counts.dropped),
                    InterfaceStatisticsOption::IsbFilterAccept(counts.captured + counts.dropped),
                ],
            })?;
        }
        self.flush()?;
        drop(self.inner);
        Rc::try_unwrap(self.out)
            .map(RefCell::into_inner)
            .map_err(|_| CaptureFileError::Io(std::io::Error::other("capture output still shared")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pcap_file::pcap::PcapReader;
    use pcap_file::pcapng::{Block, PcapNgReader};

    fn iface() -> CaptureInterface {
        CaptureInterface {
            name: "default/web-0".into(),
            description: "ingress and egress".into(),
            filter: "icmp".into(),
            snaplen: 64,
        }
    }

    const T0: u64 = 1_700_000_000_123_456_789;

    fn write(format: CaptureFormat) -> Vec<u8> {
        let mut w = CaptureFileWriter::new(Vec::new(), format, &iface()).unwrap();
        w.write_frame(T0, 42, Direction::Ingress, &[0xaa; 42])
            .unwrap();
        // Longer than the snaplen: cut, with the original length kept.
        w.write_frame(T0 + 1_000, 100, Direction::Egress, &[0xbb; 100])
            .unwrap();
        assert_eq!(w.frames(), 2);
        let counts = CaptureCounts {
            captured: 2,
            dropped: 3,
            filtered: 4,
        };
        w.finish(&counts, T0 - 5, T0 + 5).unwrap()
    }

    #[test]
    fn pcap_reads_back_with_nanoseconds() {
        let bytes = write(CaptureFormat::Pcap);
        let mut r = PcapReader::new(&bytes[..]).unwrap();
        let h = r.header();
        assert_eq!(h.datalink, DataLink::ETHERNET);
        assert_eq!(h.ts_resolution, TsResolution::NanoSecond);
        assert_eq!(h.snaplen, 64);
        let p = r.next_packet().unwrap().unwrap();
        assert_eq!(p.timestamp, Duration::from_nanos(T0));
        assert_eq!((p.orig_len, &p.data[..]), (42, &[0xaa; 42][..]));
        // pcap-file's checked reader refuses orig_len > snaplen (a cut
        // frame, which tcpdump and tshark read fine): read the raw record.
        let p = r.next_raw_packet().unwrap().unwrap();
        assert_eq!(
            (u64::from(p.ts_sec), p.ts_frac),
            (T0 / 1_000_000_000, 123_457_789)
        );
        assert_eq!((p.orig_len, p.incl_len, p.data.len()), (100, 64, 64));
        assert!(r.next_raw_packet().is_none());
    }

    #[test]
    fn pcapng_reads_back_with_interface_direction_and_drops() {
        let bytes = write(CaptureFormat::Pcapng);
        let mut r = PcapNgReader::new(&bytes[..]).unwrap();
        let mut packets = Vec::new();
        let mut stats = None;
        let mut idb = None;
        while let Some(b) = r.next_block() {
            match b.unwrap() {
                Block::InterfaceDescription(i) => idb = Some(i.into_owned()),
                Block::EnhancedPacket(p) => packets.push(p.into_owned()),
                Block::InterfaceStatistics(s) => stats = Some(s.into_owned()),
                _ => {}
            }
        }
        let idb = idb.expect("an interface block");
        assert_eq!(idb.linktype, DataLink::ETHERNET);
        assert_eq!(idb.snaplen, 64);
        assert!(idb
            .options
            .contains(&InterfaceDescriptionOption::IfTsResol(9)));
        assert!(idb
            .options
            .contains(&InterfaceDescriptionOption::IfName("default/web-0".into())));
        assert_eq!(packets.len(), 2);
        assert_eq!(packets[0].timestamp, Duration::from_nanos(T0));
        assert_eq!(packets[0].original_len, 42);
        assert_eq!(
            packets[0].options,
            [EnhancedPacketOption::Flags(EPB_INBOUND)]
        );
        assert_eq!((packets[1].original_len, packets[1].data.len()), (100, 64));
        assert_eq!(
            packets[1].options,
            [EnhancedPacketOption::Flags(EPB_OUTBOUND)]
        );
        let stats = stats.expect("a statistics block");
        assert!(stats
            .options
            .contains(&InterfaceStatisticsOption::IsbIfDrop(3)));
        assert!(stats
            .options
            .contains(&InterfaceStatisticsOption::IsbFilterAccept(5)));
    }

    #[test]
    fn formats_parse_from_their_names() {
        assert_eq!("pcap".parse(), Ok(CaptureFormat::Pcap));
        assert_eq!("pcapng".parse(), Ok(CaptureFormat::Pcapng));
        assert!("erf".parse::<CaptureFormat>().is_err());
    }
}
