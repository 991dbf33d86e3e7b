//! Packet capture (`podswitch ctl capture`): copies of the frames a port
//! reads or writes, or of the VXLAN datagrams on the underlay, taken in
//! the workers and handed to the control socket, like VPP's `pcap trace`
//! or tcpdump on a Cilium port.
//!
//! Where it sits in the packet path (`worker.rs` calls it):
//! - **ingress** of a port: a batch's frames right after they are read
//!   (from a pod's tap or the host port), before any stage rewrites them;
//!   the 12-byte vnet_hdr is not part of the copy, only the Ethernet frame;
//! - **egress** of a port: each frame the switch has just written to it;
//! - **underlay**: each VXLAN datagram received (before decapsulation) or
//!   sent (after segmentation) on the overlay sockets. Only the UDP payload
//!   exists there, so the copy starts with synthetic outer Ethernet (zero
//!   MACs), IPv4 and UDP (checksum 0, as RFC 7348 §5 sends it) headers
//!   with the real addresses and ports, so tshark dissects the VXLAN.
//!
//! Cost: a worker loads one relaxed atomic ([`CaptureHub::armed`]) per
//! batch; with no capture armed that is all. When armed, each frame at a
//! chosen point is matched against the session's [`CaptureFilter`]; a
//! matching one is copied into the session's bounded [`FrameRing`] of
//! preallocated buffers, or counted as dropped when the ring is full —
//! a worker never waits and never allocates. The control thread drains
//! the ring when `capture_read` asks ([`CaptureHub::read`]); a capture
//! ends at its frame count, its duration, on `capture_stop`, or when its
//! reader has not asked for 30 s.

pub mod client;
pub mod file;
pub mod filter;
pub mod ring;

use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

pub use filter::{CaptureFilter, CaptureProto, FilterMatch};
pub use podswitch_api::capture::{
    CaptureCounts, CapturePoint, DEFAULT_DURATION_MS, DEFAULT_MAX_FRAMES, MAX_DURATION_MS,
    MAX_FRAMES_LIMIT, MAX_SNAPLEN,
};
pub use ring::{CapturedFrame, Direction, FrameRing};

use crate::metrics::{Counter, WorkerCounters};
use crate::tables::PortId;
use podswitch_api::{CaptureBatch, CaptureFrame, CaptureSpec, CaptureStarted};

/// Why the hub refused a capture request, and the field of the request
/// at fault (`max_frames`, `filter.port`, `id`) if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureError {
    /// The offending field of the request.
    pub field: Option<&'static str>,
    pub kind: CaptureErrorKind,
}

/// What is wrong with a capture request, or with the hub.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaptureErrorKind {
    /// A frame count of 0 or above [`MAX_FRAMES_LIMIT`].
    #[error("{0} is outside 1..={MAX_FRAMES_LIMIT}")]
    MaxFramesOutOfRange(u64),
    /// A duration of 0 or above [`MAX_DURATION_MS`].
    #[error("{0} is outside 1..={MAX_DURATION_MS}")]
    DurationOutOfRange(u64),
    /// A snap length shorter than an Ethernet header or above [`MAX_SNAPLEN`].
    #[error("{0} is outside {MIN_SNAPLEN}..={MAX_SNAPLEN}")]
    SnaplenOutOfRange(u32),
    /// Filter conditions that can never hold together (the filter's own
    /// explanation).
    #[error("{0}")]
    BadFilter(String),
    /// [`MAX_SESSIONS`] captures already running.
    #[error("{MAX_SESSIONS} captures are already running; stop one first")]
    TooManySessions,
    /// No capture with this id (any more).
    #[error("no capture {0} (finished and read, stopped for silence, or never started)")]
    NoSuchCapture(u64),
    /// The session map's lock was poisoned by a panic.
    #[error("capture sessions poisoned by an earlier panic")]
    SessionsPoisoned,
    /// One session's lock was poisoned by a panic.
    #[error("capture session poisoned")]
    SessionPoisoned,
}

impl CaptureError {
    /// `kind`, in no particular field.
    fn new(kind: CaptureErrorKind) -> CaptureError {
        CaptureError { field: None, kind }
    }

    /// `kind`, in `field`.
    fn at(field: &'static str, kind: CaptureErrorKind) -> CaptureError {
        CaptureError {
            field: Some(field),
            kind,
        }
    }
}

impl std::fmt::Display for CaptureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field {
            Some(field) => write!(f, "{field}: {}", self.kind),
            None => self.kind.fmt(f),
        }
    }
}

impl std::error::Error for CaptureError {}

/// The shortest snap length: an Ethernet header.
pub const MIN_SNAPLEN: u32 = 14;
/// Captures that may run at once (each has its own ring).
pub const MAX_SESSIONS: usize = 4;
/// Memory of one capture's ring; it sets the number of slots
/// (between [`MIN_SLOTS`] and [`MAX_SLOTS`]) for the slot size.
pub const RING_BYTES: usize = 16 << 20;
pub const MIN_SLOTS: usize = 64;
pub const MAX_SLOTS: usize = 4096;
/// Bytes of the synthetic outer headers of an underlay capture.
pub const OUTER_HEADERS_LEN: usize = 14 + 20 + 8;
/// The longest frame a capture can see: a port's largest frame, or an
/// underlay datagram with its outer headers.
pub const MAX_CAPTURED_LEN: usize = crate::pipeline::MAX_FRAME + OUTER_HEADERS_LEN;
/// A reader silent for this long is gone: its capture is stopped and freed.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(30);
/// How long a finished capture is kept before it reports `done`, so a
/// worker in the middle of a batch that still saw it armed has pushed its
/// last frame.
const SETTLE: Duration = Duration::from_millis(100);
/// Default budget of frame bytes in one `capture_read` answer.
pub const DEFAULT_READ_BYTES: usize = 4 << 20;

/// Whether a capture at `point` takes a frame going `d`.
fn point_takes(point: CapturePoint, d: Direction) -> bool {
    matches!(
        (point, d),
        (CapturePoint::Both, _)
            | (CapturePoint::Ingress, Direction::Ingress)
            | (CapturePoint::Egress, Direction::Egress)
    )
}

/// What a capture watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureTarget {
    /// A pod's port or the host port, by id.
    Port(PortId),
    /// The VXLAN sockets of every worker.
    Underlay,
}

/// One worker's counts for one capture (single writer: that worker).
#[derive(Debug, Default)]
#[repr(align(64))]
struct SessionCounters {
    captured: Counter,
    ring_dropped: Counter,
    filtered: Counter,
}

/// One armed capture.
#[derive(Debug)]
pub struct CaptureSession {
    target: CaptureTarget,
    point: CapturePoint,
    filter: CaptureFilter,
    snaplen: usize,
    max_frames: u64,
    deadline: Instant,
    /// Frames admitted against `max_frames` (captured, or reserved by a
    /// worker that is copying).
    admitted: AtomicU64,
    stopped: AtomicBool,
    ring: FrameRing,
    counters: Box<[SessionCounters]>,
    /// Control side only.
    control: Mutex<SessionControl>,
}

#[derive(Debug)]
struct SessionControl {
    last_read: Instant,
    finished_at: Option<Instant>,
}

impl CaptureSession {
    /// Whether the session still takes frames at `now`.
    #[inline]
    fn open(&self, now: Instant) -> bool {
        !self.stopped.load(Ordering::Relaxed)
            && now < self.deadline
            && self.admitted.load(Ordering::Relaxed) < self.max_frames
    }

    /// The sum of the workers' counts.
    pub fn counts(&self) -> CaptureCounts {
        let mut c = CaptureCounts::default();
        for w in self.counters.iter() {
            c.captured += w.captured.get();
            c.dropped += w.ring_dropped.get();
            c.filtered += w.filtered.get();
        }
        c
    }

    /// Offers one frame (already known to be at this session's point):
    /// filter, count limit, copy. `filter_on` is what the filter reads
    /// (the inner frame on the underlay), `parts` what is copied.
    #[inline]
    fn offer(
        &self,
        worker: usize,
        direction: Direction,
        filter_on: &[u8],
        parts: &[&[u8]],
        orig_len: usize,
        wc: &WorkerCounters,
    ) {
        let Some(c) = self.counters.get(worker) else {
            return;
        };
        if !self.filter.matches(filter_on) {
            c.filtered.inc();
            return;
        }
        if self.admitted.fetch_add(1, Ordering::Relaxed) >= self.max_frames {
            return;
        }
        let ts_ns = wall_clock_ns();
        let orig_len = u32::try_from(orig_len).unwrap_or(u32::MAX);
        match self
            .ring
            .push(ts_ns, orig_len, direction, parts, self.snaplen)
        {
            Ok(()) => {
                c.captured.inc();
                wc.stages.capture_frames.inc();
            }
            Err(_) => {
                // Not captured: give the count back.
                self.admitted.fetch_sub(1, Ordering::Relaxed);
                c.ring_dropped.inc();
                wc.stages.capture_ring_drops.inc();
            }
        }
    }
}

/// The sessions a worker sees in one batch.
pub struct ArmedCaptures {
    sessions: Arc<Vec<Arc<CaptureSession>>>,
    now: Instant,
}

impl ArmedCaptures {
    /// A frame read from (`Ingress`) or written to (`Egress`) `port`.
    #[inline]
    pub fn port_frame(
        &self,
        worker: usize,
        port: PortId,
        direction: Direction,
        frame: &[u8],
        wc: &WorkerCounters,
    ) {
        for s in self.sessions.iter() {
            if s.target == CaptureTarget::Port(port)
                && point_takes(s.point, direction)
                && s.open(self.now)
            {
                s.offer(worker, direction, frame, &[frame], frame.len(), wc);
            }
        }
    }

    /// A VXLAN datagram (the UDP payload) received from `src` on `dst`
    /// (`Ingress`) or sent from `src` to `dst` (`Egress`).
    #[inline]
    pub fn underlay_datagram(
        &self,
        worker: usize,
        direction: Direction,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        datagram: &[u8],
        wc: &WorkerCounters,
    ) {
        for s in self.sessions.iter() {
            if s.target == CaptureTarget::Underlay
                && point_takes(s.point, direction)
                && s.open(self.now)
            {
                let inner = datagram
                    .get(crate::wire::vxlan::HEADER_LEN..)
                    .unwrap_or(&[]);
                let Some(outer) = outer_headers(src, dst, datagram.len()) else {
                    continue;
                };
                s.offer(
                    worker,
                    direction,
                    inner,
                    &[&outer, datagram],
                    OUTER_HEADERS_LEN + datagram.len(),
                    wc,
                );
            }
        }
    }
}

/// Synthetic Ethernet + IPv4 + UDP headers for a UDP payload of
/// `payload_len` bytes from `src` to `dst` (zero MACs, TTL 64, DF, UDP
/// checksum 0). `None` if the payload does not fit in an IPv4 packet.
fn outer_headers(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload_len: usize,
) -> Option<[u8; OUTER_HEADERS_LEN]> {
    let udp_len = u16::try_from(payload_len + 8).ok()?;
    let mut ip = etherparse::Ipv4Header::new(
        udp_len,
        64,
        etherparse::IpNumber::UDP,
        src.ip().octets(),
        dst.ip().octets(),
    )
    .ok()?;
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    let eth = etherparse::Ethernet2Header {
        source: [0; 6],
        destination: [0; 6],
        ether_type: etherparse::EtherType::IPV4,
    };
    let udp = etherparse::UdpHeader {
        source_port: src.port(),
        destination_port: dst.port(),
        length: udp_len,
        checksum: 0,
    };
    let mut out = [0u8; OUTER_HEADERS_LEN];
    out[..14].copy_from_slice(&eth.to_bytes());
    out[14..34].copy_from_slice(&ip.to_bytes());
    out[34..].copy_from_slice(&udp.to_bytes());
    Some(out)
}

fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The captures of one switch: what the workers read on the fast path,
/// and the control side's sessions by id.
#[derive(Debug)]
pub struct CaptureHub {
    /// True while `active` is not empty: the one load per batch.
    armed: AtomicBool,
    active: ArcSwap<Vec<Arc<CaptureSession>>>,
    sessions: Mutex<BTreeMap<u64, Arc<CaptureSession>>>,
    next_id: AtomicU64,
    workers: usize,
}

impl CaptureHub {
    /// A hub for `workers` worker threads.
    pub fn new(workers: usize) -> Self {
        CaptureHub {
            armed: AtomicBool::new(false),
            active: ArcSwap::from_pointee(Vec::new()),
            sessions: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            workers: workers.max(1),
        }
    }

    /// The armed sessions, for one batch; `None` (one relaxed load) when
    /// nothing is armed.
    #[inline]
    pub fn armed(&self) -> Option<ArmedCaptures> {
        if !self.armed.load(Ordering::Relaxed) {
            return None;
        }
        Some(ArmedCaptures {
            sessions: self.active.load_full(),
            now: Instant::now(),
        })
    }

    fn lock(
        &self,
    ) -> Result<std::sync::MutexGuard<'_, BTreeMap<u64, Arc<CaptureSession>>>, CaptureError> {
        self.sessions
            .lock()
            .map_err(|_| CaptureError::new(CaptureErrorKind::SessionsPoisoned))
    }

    /// Publishes the sessions that still take frames to the workers.
    fn rearm(&self, sessions: &BTreeMap<u64, Arc<CaptureSession>>, now: Instant) {
        let active: Vec<Arc<CaptureSession>> =
            sessions.values().filter(|s| s.open(now)).cloned().collect();
        let armed = !active.is_empty();
        self.active.store(Arc::new(active));
        self.armed.store(armed, Ordering::Relaxed);
    }

    /// Arms a capture on `target` (named `name` in the answer). The spec's
    /// limits and filter are checked first; nothing is armed on error.
    pub fn start(
        &self,
        target: CaptureTarget,
        name: &str,
        spec: &CaptureSpec,
        vxlan_udp_port: Option<u16>,
    ) -> Result<CaptureStarted, CaptureError> {
        if !(1..=MAX_FRAMES_LIMIT).contains(&spec.max_frames) {
            return Err(CaptureError::at(
                "max_frames",
                CaptureErrorKind::MaxFramesOutOfRange(spec.max_frames),
            ));
        }
        if !(1..=MAX_DURATION_MS).contains(&spec.duration_ms) {
            return Err(CaptureError::at(
                "duration_ms",
                CaptureErrorKind::DurationOutOfRange(spec.duration_ms),
            ));
        }
        if !(MIN_SNAPLEN..=MAX_SNAPLEN).contains(&spec.snaplen) {
            return Err(CaptureError::at(
                "snaplen",
                CaptureErrorKind::SnaplenOutOfRange(spec.snaplen),
            ));
        }
        spec.filter
            .validate()
            .map_err(|(field, why)| CaptureError::at(field, CaptureErrorKind::BadFilter(why)))?;
        let now = Instant::now();
        let mut sessions = self.lock()?;
        self.reap_locked(&mut sessions, now);
        if sessions.len() >= MAX_SESSIONS {
            return Err(CaptureError::new(CaptureErrorKind::TooManySessions));
        }
        let slot_len = (spec.snaplen as usize).min(MAX_CAPTURED_LEN);
        let slots = (RING_BYTES / slot_len)
            .clamp(MIN_SLOTS, MAX_SLOTS)
            .min(usize::try_from(spec.max_frames).unwrap_or(usize::MAX));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(CaptureSession {
            target,
            point: spec.point,
            filter: spec.filter,
            snaplen: spec.snaplen as usize,
            max_frames: spec.max_frames,
            deadline: now + Duration::from_millis(spec.duration_ms),
            admitted: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            ring: FrameRing::new(slots, slot_len),
            counters: (0..self.workers)
                .map(|_| SessionCounters::default())
                .collect(),
            control: Mutex::new(SessionControl {
                last_read: now,
                finished_at: None,
            }),
        });
        sessions.insert(id, session);
        self.rearm(&sessions, now);
        tracing::info!(id, port = name, point = ?spec.point, filter = %spec.filter.describe(), "capture armed");
        Ok(CaptureStarted {
            id,
            port: name.to_string(),
            point: spec.point,
            filter: spec.filter.describe(),
            snaplen: spec.snaplen,
            max_frames: spec.max_frames,
            duration_ms: spec.duration_ms,
            ring_slots: slots,
            vxlan_udp_port: if target == CaptureTarget::Underlay {
                vxlan_udp_port
            } else {
                None
            },
        })
    }

    fn session(&self, id: u64) -> Result<Arc<CaptureSession>, CaptureError> {
        self.lock()?
            .get(&id)
            .cloned()
            .ok_or_else(|| CaptureError::at("id", CaptureErrorKind::NoSuchCapture(id)))
    }

    /// Takes the frames waiting in capture `id`'s ring (up to about
    /// `max_bytes` of frame data). `done` says the capture has ended and
    /// everything was read; the capture is then forgotten.
    pub fn read(&self, id: u64, max_bytes: Option<usize>) -> Result<CaptureBatch, CaptureError> {
        let s = self.session(id)?;
        let now = Instant::now();
        let (finished_at, just_finished) = {
            let mut ctl = s
                .control
                .lock()
                .map_err(|_| CaptureError::new(CaptureErrorKind::SessionPoisoned))?;
            ctl.last_read = now;
            let just_finished = ctl.finished_at.is_none() && !s.open(now);
            if just_finished {
                ctl.finished_at = Some(now);
            }
            (ctl.finished_at, just_finished)
        };
        if just_finished {
            let sessions = self.lock()?;
            self.rearm(&sessions, now);
        }
        let budget = max_bytes.unwrap_or(DEFAULT_READ_BYTES).max(1);
        let mut frames = Vec::new();
        let mut bytes = 0;
        while bytes < budget {
            let Some(f) = s.ring.pop() else { break };
            bytes += f.data.len();
            frames.push(CaptureFrame {
                ts_ns: f.ts_ns,
                orig_len: f.orig_len,
                direction: f.direction,
                data: data_encoding::BASE64.encode(&f.data),
            });
            s.ring.recycle(f.data);
        }
        let settled = finished_at.is_some_and(|t| now.duration_since(t) >= SETTLE);
        let done = settled && s.ring.is_empty();
        let counts = s.counts();
        if done {
            self.lock()?.remove(&id);
            tracing::info!(id, ?counts, "capture finished");
        }
        Ok(CaptureBatch {
            frames,
            done,
            captured: counts.captured,
            dropped: counts.dropped,
            filtered: counts.filtered,
        })
    }

    /// Stops capture `id`: no frame is taken from now on; what is in the
    /// ring can still be read. Returns the counts so far.
    pub fn stop(&self, id: u64) -> Result<CaptureCounts, CaptureError> {
        let s = self.session(id)?;
        s.stopped.store(true, Ordering::Relaxed);
        let now = Instant::now();
        if let Ok(mut ctl) = s.control.lock() {
            ctl.finished_at.get_or_insert(now);
        }
        let sessions = self.lock()?;
        self.rearm(&sessions, now);
        Ok(s.counts())
    }

    /// Disarms captures that ended (count, duration) and forgets those
    /// whose reader went silent. The daemon calls this periodically, so
    /// an abandoned capture stops costing anything.
    pub fn reap(&self, now: Instant) {
        if let Ok(mut sessions) = self.sessions.lock() {
            if !sessions.is_empty() {
                self.reap_locked(&mut sessions, now);
            }
        }
    }

    fn reap_locked(&self, sessions: &mut BTreeMap<u64, Arc<CaptureSession>>, now: Instant) {
        let before = sessions.len();
        let mut changed = false;
        sessions.retain(|id, s| {
            let Ok(mut ctl) = s.control.lock() else {
                return false;
            };
            if ctl.finished_at.is_none() && !s.open(now) {
                ctl.finished_at = Some(now);
                changed = true;
            }
            let silent = now.duration_since(ctl.last_read) >= ABANDONED_AFTER;
            if silent {
                tracing::info!(id, "capture reader went silent; capture dropped");
            }
            !silent
        });
        if changed || sessions.len() != before {
            self.rearm(sessions, now);
        }
    }

    /// Captures currently held (armed or waiting to be read).
    pub fn len(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use std::net::Ipv4Addr;

    fn spec(max_frames: u64) -> CaptureSpec {
        CaptureSpec {
            port: "default/a".into(),
            point: CapturePoint::Both,
            filter: CaptureFilter {
                proto: Some(CaptureProto::Icmp),
                ..Default::default()
            },
            max_frames,
            duration_ms: 10_000,
            snaplen: MAX_SNAPLEN,
        }
    }

    fn echo() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2; 6], [0xee; 6])
            .ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64)
            .icmpv4_echo_request(1, 1)
            .write(&mut v, b"x")
            .unwrap();
        v
    }

    fn udp() -> Vec<u8> {
        let mut v = Vec::new();
        PacketBuilder::ethernet2([2; 6], [0xee; 6])
            .ipv4([10, 244, 1, 2], [10, 244, 1, 3], 64)
            .udp(1, 2)
            .write(&mut v, b"x")
            .unwrap();
        v
    }

    #[test]
    fn nothing_armed_costs_one_load_and_returns_none() {
        let hub = CaptureHub::new(2);
        assert!(hub.armed().is_none());
        let s = hub
            .start(CaptureTarget::Port(3), "default/a", &spec(10), None)
            .unwrap();
        assert!(hub.armed().is_some());
        hub.stop(s.id).unwrap();
        assert!(hub.armed().is_none(), "stop disarms at once");
    }

    #[test]
    fn frames_are_filtered_counted_and_bounded_by_count() {
        let hub = CaptureHub::new(2);
        let wc = WorkerCounters::default();
        let s = hub
            .start(CaptureTarget::Port(3), "default/a", &spec(3), None)
            .unwrap();
        let armed = hub.armed().unwrap();
        for _ in 0..5 {
            armed.port_frame(0, 3, Direction::Ingress, &echo(), &wc);
            armed.port_frame(1, 3, Direction::Egress, &udp(), &wc);
            // Another port: not seen at all.
            armed.port_frame(0, 4, Direction::Ingress, &echo(), &wc);
        }
        let b = hub.read(s.id, None).unwrap();
        assert_eq!(b.frames.len(), 3);
        assert_eq!((b.captured, b.dropped), (3, 0));
        // The udp frames before the count was reached were filtered; after
        // it nothing is looked at.
        assert!(b.filtered >= 1 && b.filtered <= 5, "{b:?}");
        assert_eq!(
            data_encoding::BASE64
                .decode(b.frames[0].data.as_bytes())
                .unwrap(),
            echo()
        );
        assert_eq!(b.frames[0].orig_len as usize, echo().len());
        assert_eq!(wc.stages.capture_frames.get(), 3);
        // Count reached: disarmed, and done once settled and read.
        assert!(hub.armed().is_none());
        let deadline = Instant::now() + Duration::from_secs(5);
        while !hub.read(s.id, None).unwrap().done {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            hub.read(s.id, None).unwrap_err().kind,
            CaptureErrorKind::NoSuchCapture(s.id)
        );
    }

    #[test]
    fn a_full_ring_counts_drops_and_a_read_makes_room() {
        let hub = CaptureHub::new(1);
        let wc = WorkerCounters::default();
        let s = hub
            .start(CaptureTarget::Port(1), "default/a", &spec(100_000), None)
            .unwrap();
        let armed = hub.armed().unwrap();
        let slots = s.ring_slots as u64;
        for _ in 0..slots + 10 {
            armed.port_frame(0, 1, Direction::Ingress, &echo(), &wc);
        }
        let b = hub.read(s.id, Some(usize::MAX)).unwrap();
        assert_eq!(b.frames.len() as u64, slots);
        assert_eq!((b.captured, b.dropped), (slots, 10));
        assert_eq!(wc.stages.capture_ring_drops.get(), 10);
        armed.port_frame(0, 1, Direction::Ingress, &echo(), &wc);
        assert_eq!(hub.read(s.id, None).unwrap().frames.len(), 1);
    }

    #[test]
    fn points_select_directions() {
        let hub = CaptureHub::new(1);
        let wc = WorkerCounters::default();
        let mut sp = spec(100);
        sp.point = CapturePoint::Egress;
        let s = hub
            .start(CaptureTarget::Port(1), "default/a", &sp, None)
            .unwrap();
        let armed = hub.armed().unwrap();
        armed.port_frame(0, 1, Direction::Ingress, &echo(), &wc);
        armed.port_frame(0, 1, Direction::Egress, &echo(), &wc);
        let b = hub.read(s.id, None).unwrap();
        assert_eq!(b.frames.len(), 1);
        assert_eq!(b.frames[0].direction, Direction::Egress);
    }

    #[test]
    fn underlay_copies_get_outer_headers_and_the_filter_reads_the_inner_frame() {
        let hub = CaptureHub::new(1);
        let wc = WorkerCounters::default();
        let mut sp = spec(100);
        sp.filter.host = Some(Ipv4Addr::new(10, 244, 1, 3));
        let s = hub
            .start(CaptureTarget::Underlay, "underlay", &sp, Some(8472))
            .unwrap();
        assert_eq!(s.vxlan_udp_port, Some(8472));
        let armed = hub.armed().unwrap();
        let mut dgram = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        dgram.extend_from_slice(&echo());
        let src = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 40000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 2), 8472);
        armed.underlay_datagram(0, Direction::Egress, src, dst, &dgram, &wc);
        let mut other = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
        other.extend_from_slice(&udp());
        armed.underlay_datagram(0, Direction::Egress, src, dst, &other, &wc);
        let b = hub.read(s.id, None).unwrap();
        assert_eq!((b.frames.len(), b.filtered), (1, 1));
        let data = data_encoding::BASE64
            .decode(b.frames[0].data.as_bytes())
            .unwrap();
        let outer = etherparse::SlicedPacket::from_ethernet(&data).unwrap();
        let Some(etherparse::NetSlice::Ipv4(ip)) = &outer.net else {
            panic!("no outer IPv4");
        };
        assert_eq!(ip.header().source_addr(), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(ip.header().destination_addr(), Ipv4Addr::new(198, 18, 0, 2));
        assert!(ip.header().to_header().calc_header_checksum() == ip.header().header_checksum());
        let Some(etherparse::TransportSlice::Udp(u)) = &outer.transport else {
            panic!("no outer UDP");
        };
        assert_eq!((u.source_port(), u.destination_port()), (40000, 8472));
        assert_eq!(u.payload(), &dgram[..]);
        assert_eq!(b.frames[0].orig_len as usize, data.len());
    }

    #[test]
    fn bad_specs_are_refused_with_the_field() {
        let hub = CaptureHub::new(1);
        let t = CaptureTarget::Port(1);
        let mut sp = spec(0);
        assert_eq!(
            hub.start(t, "a", &sp, None).unwrap_err().field,
            Some("max_frames")
        );
        sp = spec(1);
        sp.snaplen = MAX_SNAPLEN + 1;
        assert_eq!(
            hub.start(t, "a", &sp, None).unwrap_err().field,
            Some("snaplen")
        );
        sp = spec(1);
        sp.duration_ms = 0;
        assert_eq!(
            hub.start(t, "a", &sp, None).unwrap_err().field,
            Some("duration_ms")
        );
        sp = spec(1);
        sp.filter.port = Some(53);
        assert_eq!(
            hub.start(t, "a", &sp, None).unwrap_err().field,
            Some("filter.port")
        );
        for _ in 0..MAX_SESSIONS {
            hub.start(t, "a", &spec(1), None).unwrap();
        }
        assert_eq!(
            hub.start(t, "a", &spec(1), None).unwrap_err().kind,
            CaptureErrorKind::TooManySessions
        );
        assert!(!hub.is_empty() && hub.len() == MAX_SESSIONS);
    }

    #[test]
    fn a_silent_reader_loses_its_capture() {
        let hub = CaptureHub::new(1);
        let s = hub
            .start(CaptureTarget::Port(1), "a", &spec(10), None)
            .unwrap();
        hub.reap(Instant::now());
        assert_eq!(hub.len(), 1);
        hub.reap(Instant::now() + ABANDONED_AFTER + Duration::from_secs(1));
        assert!(hub.is_empty());
        assert!(hub.armed().is_none());
        assert_eq!(
            hub.read(s.id, None).unwrap_err().kind,
            CaptureErrorKind::NoSuchCapture(s.id)
        );
    }
}
