//! Handing the flow table over across a restart (an upgrade).
//!
//! The old switch, once its workers have stopped, writes every live flow
//! and session-affinity record to a versioned file in its state directory
//! ([`save`]); the new switch reads it into its empty table before its
//! workers forward a packet ([`load`]). Translated connections (Service
//! DNAT, egress SNAT) keep working: a masqueraded flow's NAT port is its
//! reply tuple, and a port is free exactly when no reply tuple holds it,
//! so the NAT port allocations come over with the flows.
//!
//! The table's clock is per process (seconds since the table was made),
//! so a flow is written with its *idle age*, and the file with its wall
//! clock time. On load the time the switch was down is added to every
//! age, flows that expired meanwhile are left out, and the new table's
//! clock is rebased so the oldest kept flow's last packet falls at or
//! after its start: every flow keeps exactly the lifetime it had left.
//!
//! Format, version 1 (little-endian):
//!
//! ```text
//! header   64 B   magic "PSWFLOWS", version u32, record length u32,
//!                 saved at (Unix ms) u64, flows u64, extra length u64,
//!                 24 reserved bytes (zero)
//! extra    n B    the caller's (the daemon keeps its Services there, JSON)
//! records  40 B × flows
//! trailer  4 B    CRC-32 (IEEE) of everything before it
//! ```
//!
//! A file that is not exactly that (another version, truncated, a bad
//! checksum, an impossible record) is refused whole: [`load`] verifies the
//! entire file before it inserts anything, so the table is either the
//! file's or empty. Memory is bounded: records are streamed, only the
//! extra section (capped at [`MAX_EXTRA`]) is held.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{flow_flags, ConnTrack, Dir, FlowKey, FlowState};

/// The file's first eight bytes.
pub const MAGIC: [u8; 8] = *b"PSWFLOWS";
/// The format this switch writes and reads.
pub const VERSION: u32 = 1;
/// Bytes before the extra section.
pub const HEADER_LEN: usize = 64;
/// Bytes per flow record.
pub const RECORD_LEN: usize = 40;
const TRAILER_LEN: usize = 4;
/// The largest extra section accepted.
pub const MAX_EXTRA: u64 = 256 << 20;
/// The most flows a file may hold (the table's own cap).
pub const MAX_FLOWS: u64 = u32::MAX as u64 / 4;
/// Flow flags a record may carry.
const KNOWN_FLAGS: u8 = flow_flags::FIN_ORIG
    | flow_flags::FIN_REPLY
    | flow_flags::DNAT
    | flow_flags::SNAT
    | flow_flags::ORIG_ONLY;

/// Why a handover file could not be written or was refused.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The file could not be created, read or written.
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file does not start with [`MAGIC`].
    #[error("{}: not a flow handover file", path.display())]
    BadMagic { path: PathBuf },
    /// Written by a switch with another format.
    #[error("{}: format version {found}; this switch reads version {VERSION}", path.display())]
    Version { path: PathBuf, found: u32 },
    /// The file's size or a header field is not what the format allows.
    #[error("{}: {what}", path.display())]
    Malformed { path: PathBuf, what: String },
    /// The content does not match its checksum.
    #[error("{}: checksum mismatch (stored {stored:08x}, computed {computed:08x})", path.display())]
    Checksum {
        path: PathBuf,
        stored: u32,
        computed: u32,
    },
    /// A record no switch writes.
    #[error("{}: record {index}: {what}", path.display())]
    BadRecord {
        path: PathBuf,
        index: u64,
        what: String,
    },
    /// Written too long ago to describe live connections.
    #[error("{}: written {age_secs} s ago, more than the {max_secs} s a handover is kept", path.display())]
    Stale {
        path: PathBuf,
        age_secs: u64,
        max_secs: u64,
    },
    /// Loading needs an empty table.
    #[error("the flow table already holds {0} flows; a handover loads into an empty one")]
    NotEmpty(usize),
    /// The table changed while it was written (workers still running).
    #[error("{}: the flow table changed while it was written", path.display())]
    Changed { path: PathBuf },
}

/// What [`save`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Saved {
    pub flows: u64,
    pub bytes: u64,
}

/// What [`load`] restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Flows (and affinity records) now in the table.
    pub flows: u64,
    /// Left out: they expired while the switch was down.
    pub expired: u64,
    /// Left out: the table (a smaller cap than before) was full.
    pub no_room: u64,
    /// The caller's extra section.
    pub extra: Vec<u8>,
    /// How long ago the file was written.
    pub age: Duration,
}

/// One flow as the file holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    orig: FlowKey,
    reply: FlowKey,
    state: u8,
    flags: u8,
    timeout: u32,
    aux: u32,
    /// Seconds since the flow's last packet.
    idle: u32,
}

fn put_key(b: &mut [u8], k: &FlowKey) {
    b[0..4].copy_from_slice(&k.src.octets());
    b[4..8].copy_from_slice(&k.dst.octets());
    b[8..10].copy_from_slice(&k.sport.to_le_bytes());
    b[10..12].copy_from_slice(&k.dport.to_le_bytes());
    b[12] = k.proto;
}

fn get_key(b: &[u8]) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        dst: Ipv4Addr::new(b[4], b[5], b[6], b[7]),
        sport: u16::from_le_bytes([b[8], b[9]]),
        dport: u16::from_le_bytes([b[10], b[11]]),
        proto: b[12],
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl Record {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        put_key(&mut b[0..13], &self.orig);
        put_key(&mut b[13..26], &self.reply);
        b[26] = self.state;
        b[27] = self.flags;
        b[28..32].copy_from_slice(&self.timeout.to_le_bytes());
        b[32..36].copy_from_slice(&self.aux.to_le_bytes());
        b[36..40].copy_from_slice(&self.idle.to_le_bytes());
        b
    }

    /// Decodes and checks a record: a state and flags a table can hold.
    fn decode(b: &[u8; RECORD_LEN]) -> Result<Record, String> {
        let r = Record {
            orig: get_key(&b[0..13]),
            reply: get_key(&b[13..26]),
            state: b[26],
            flags: b[27],
            timeout: le32(&b[28..32]),
            aux: le32(&b[32..36]),
            idle: le32(&b[36..40]),
        };
        let state = FlowState::from_u8(r.state);
        if state == FlowState::Free || state as u8 != r.state {
            return Err(format!("state {} is not a flow state", r.state));
        }
        if r.flags & !KNOWN_FLAGS != 0 {
            return Err(format!("unknown flow flags {:#04x}", r.flags));
        }
        if (state == FlowState::Affinity) != (r.flags & flow_flags::ORIG_ONLY != 0) {
            return Err("an affinity record must be indexed one way, a flow both".into());
        }
        Ok(r)
    }
}

struct Header {
    saved_ms: u64,
    flows: u64,
    extra_len: u64,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(RECORD_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.saved_ms.to_le_bytes());
        b[24..32].copy_from_slice(&self.flows.to_le_bytes());
        b[32..40].copy_from_slice(&self.extra_len.to_le_bytes());
        b
    }

    fn decode(b: &[u8; HEADER_LEN], path: &Path) -> Result<Header, HandoverError> {
        if b[0..8] != MAGIC {
            return Err(HandoverError::BadMagic { path: path.into() });
        }
        let version = le32(&b[8..12]);
        if version != VERSION {
            return Err(HandoverError::Version {
                path: path.into(),
                found: version,
            });
        }
        let malformed = |what: String| HandoverError::Malformed {
            path: path.into(),
            what,
        };
        let record_len = le32(&b[12..16]);
        if record_len as usize != RECORD_LEN {
            return Err(malformed(format!(
                "record length {record_len}, version {VERSION} has {RECORD_LEN}"
            )));
        }
        let h = Header {
            saved_ms: le64(&b[16..24]),
            flows: le64(&b[24..32]),
            extra_len: le64(&b[32..40]),
        };
        if h.flows > MAX_FLOWS {
            return Err(malformed(format!("{} flows, at most {MAX_FLOWS}", h.flows)));
        }
        if h.extra_len > MAX_EXTRA {
            return Err(malformed(format!(
                "extra section of {} bytes, at most {MAX_EXTRA}",
                h.extra_len
            )));
        }
        Ok(h)
    }

    fn file_len(&self) -> u64 {
        HEADER_LEN as u64 + self.extra_len + self.flows * RECORD_LEN as u64 + TRAILER_LEN as u64
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().min(u128::from(u64::MAX)) as u64)
}

impl ConnTrack {
    /// The live flows at table time `now_s` (expired ones are left out),
    /// as records. Control side.
    fn records(&self, now_s: u32) -> impl Iterator<Item = Record> + '_ {
        self.entries.iter().filter_map(move |e| {
            let state = e.state();
            if state == FlowState::Free {
                return None;
            }
            let idle = now_s.saturating_sub(e.last_seen());
            if idle >= self.timeout_of(e) {
                return None;
            }
            Some(Record {
                orig: e.key(Dir::Orig),
                reply: e.key(Dir::Reply),
                state: state as u8,
                flags: e.flags(),
                timeout: e.timeout.load(Ordering::Relaxed),
                aux: e.aux(),
                idle,
            })
        })
    }

    /// Empties a table no worker uses yet (a load that failed half way).
    fn clear(&mut self) {
        self.remove_where(|_| true);
        self.counters.removed.store(0, Ordering::Relaxed);
    }

    /// How long a record's flow may idle in this table.
    fn record_timeout(&self, r: &Record) -> u32 {
        if r.timeout != 0 {
            r.timeout
        } else {
            self.timeouts.of(r.orig.proto, FlowState::from_u8(r.state))
        }
    }
}

/// Writes every live flow of `ct` and `extra` to `path` (through a
/// temporary file renamed over it, so a reader sees the old file or the
/// new one, never half of one).
///
/// The workers must have stopped: a flow they create meanwhile would be
/// lost, and [`HandoverError::Changed`] is returned if the table changed.
/// The file is not fsynced: it outlives the process (an upgrade), not the
/// machine (the taps it serves would not survive a reboot either).
pub fn save(
    ct: &ConnTrack,
    path: &Path,
    extra: &[u8],
    now: Instant,
    wall: SystemTime,
) -> Result<Saved, HandoverError> {
    let now_s = ct.clock(now);
    let flows = ct.records(now_s).count() as u64;
    let name = path
        .file_name()
        .map_or_else(|| "handover".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let io_err = |op: &'static str| {
        let tmp = tmp.clone();
        move |source| HandoverError::Io {
            op,
            path: tmp,
            source,
        }
    };
    let header = Header {
        saved_ms: unix_ms(wall),
        flows,
        extra_len: extra.len() as u64,
    };
    let file = File::create(&tmp).map_err(io_err("creating"))?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    let mut crc = crc32fast::Hasher::new();
    let head = header.encode();
    crc.update(&head);
    crc.update(extra);
    out.write_all(&head).map_err(io_err("writing"))?;
    out.write_all(extra).map_err(io_err("writing"))?;
    let mut written = 0u64;
    for r in ct.records(now_s).take(flows as usize) {
        let b = r.encode();
        crc.update(&b);
        out.write_all(&b).map_err(io_err("writing"))?;
        written += 1;
    }
    if written != flows {
        drop(out);
        let _ = std::fs::remove_file(&tmp);
        return Err(HandoverError::Changed { path: path.into() });
    }
    out.write_all(&crc.finalize().to_le_bytes())
        .map_err(io_err("writing"))?;
    out.flush().map_err(io_err("writing"))?;
    drop(out);
    std::fs::rename(&tmp, path).map_err(|source| HandoverError::Io {
        op: "renaming over",
        path: path.into(),
        source,
    })?;
    Ok(Saved {
        flows,
        bytes: header.file_len(),
    })
}

/// Reads a file written by [`save`] into `ct`, which must be empty and
/// not yet shared with workers (its clock is rebased). The whole file is
/// verified first; on any error the table is left empty.
///
/// A file older than `max_age` is refused: its flows describe connections
/// that have long given up.
pub fn load(
    ct: &mut ConnTrack,
    path: &Path,
    now: Instant,
    wall: SystemTime,
    max_age: Duration,
) -> Result<Restored, HandoverError> {
    if !ct.is_empty() {
        return Err(HandoverError::NotEmpty(ct.len()));
    }
    let io_err = |op: &'static str| {
        move |source| HandoverError::Io {
            op,
            path: path.into(),
            source,
        }
    };
    let file = File::open(path).map_err(io_err("opening"))?;
    let len = file.metadata().map_err(io_err("reading"))?.len();
    let mut input = BufReader::with_capacity(1 << 16, file);
    let malformed = |what: String| HandoverError::Malformed {
        path: path.into(),
        what,
    };
    if len < (HEADER_LEN + TRAILER_LEN) as u64 {
        return Err(malformed(format!("truncated: {len} bytes, no header")));
    }
    let mut head = [0u8; HEADER_LEN];
    input.read_exact(&mut head).map_err(io_err("reading"))?;
    let header = Header::decode(&head, path)?;
    match header.file_len() {
        want if want > len => {
            return Err(malformed(format!(
                "truncated: {len} bytes, the header promises {want}"
            )))
        }
        want if want < len => {
            return Err(malformed(format!(
                "{} bytes after the end the header gives ({want})",
                len - want
            )))
        }
        _ => {}
    }
    let age = Duration::from_millis(unix_ms(wall).saturating_sub(header.saved_ms));
    if age > max_age {
        return Err(HandoverError::Stale {
            path: path.into(),
            age_secs: age.as_secs(),
            max_secs: max_age.as_secs(),
        });
    }
    let age_s = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);

    // Pass 1: checksum and records, nothing inserted.
    let mut crc = crc32fast::Hasher::new();
    crc.update(&head);
    let mut extra = vec![0u8; header.extra_len as usize];
    input.read_exact(&mut extra).map_err(io_err("reading"))?;
    crc.update(&extra);
    let mut oldest = 0u32;
    let mut rec = [0u8; RECORD_LEN];
    for index in 0..header.flows {
        input.read_exact(&mut rec).map_err(io_err("reading"))?;
        crc.update(&rec);
        let r = Record::decode(&rec).map_err(|what| HandoverError::BadRecord {
            path: path.into(),
            index,
            what,
        })?;
        let idle = r.idle.saturating_add(age_s);
        if idle < ct.record_timeout(&r) {
            oldest = oldest.max(idle);
        }
    }
    let mut trailer = [0u8; TRAILER_LEN];
    input.read_exact(&mut trailer).map_err(io_err("reading"))?;
    let (stored, computed) = (u32::from_le_bytes(trailer), crc.finalize());
    if stored != computed {
        return Err(HandoverError::Checksum {
            path: path.into(),
            stored,
            computed,
        });
    }

    // The oldest kept flow's last packet at (or after) the table's start.
    if let Some(start) = now.checked_sub(Duration::from_secs(u64::from(oldest))) {
        ct.start = ct.start.min(start);
    }
    let now_s = ct.clock(now);

    // Pass 2: insert.
    let records_at = (HEADER_LEN as u64) + header.extra_len;
    input
        .seek(SeekFrom::Start(records_at))
        .map_err(io_err("reading"))?;
    let mut restored = Restored {
        flows: 0,
        expired: 0,
        no_room: 0,
        extra,
        age,
    };
    for index in 0..header.flows {
        let decoded = input
            .read_exact(&mut rec)
            .map_err(io_err("reading"))
            .and_then(|()| {
                Record::decode(&rec).map_err(|what| HandoverError::BadRecord {
                    path: path.into(),
                    index,
                    what,
                })
            });
        let r = match decoded {
            Ok(r) => r,
            Err(e) => {
                // The file changed under us: all or nothing.
                ct.clear();
                return Err(e);
            }
        };
        let idle = r.idle.saturating_add(age_s);
        if idle >= ct.record_timeout(&r) {
            restored.expired += 1;
            continue;
        }
        let link_reply = r.flags & flow_flags::ORIG_ONLY == 0;
        let inserted = ct.insert_inner(
            r.orig,
            r.reply,
            link_reply,
            FlowState::from_u8(r.state),
            r.flags,
            now_s.saturating_sub(idle),
            r.timeout,
            r.aux,
        );
        match inserted {
            Some(_) => restored.flows += 1,
            None => restored.no_room += 1,
        }
    }
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::ConntrackConfig;

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!(
                "psw-handover-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn table(max: usize) -> ConnTrack {
        ConnTrack::new(
            ConntrackConfig {
                max_flows: max,
                ..Default::default()
            },
            2,
        )
    }

    fn k(a: [u8; 4], sp: u16, b: [u8; 4], dp: u16, proto: u8) -> FlowKey {
        FlowKey::new(a.into(), sp, b.into(), dp, proto)
    }

    /// A table like a node's: a ClusterIP flow (DNAT), a masqueraded flow
    /// (SNAT to the node's port 61443), an affinity record, a UDP flow.
    fn node_table(now: Instant) -> ConnTrack {
        let ct = table(64);
        let t = ct.clock(now);
        let svc = k([10, 244, 1, 2], 40000, [10, 96, 0, 10], 8080, 6);
        ct.insert(
            svc,
            Some(k([10, 244, 2, 7], 80, [10, 244, 1, 2], 40000, 6)),
            FlowState::Established,
            flow_flags::DNAT,
            t,
            0,
            3,
        )
        .unwrap();
        let out = k([10, 244, 1, 2], 41000, [203, 0, 113, 10], 8000, 6);
        ct.insert(
            out,
            Some(k([203, 0, 113, 10], 8000, [198, 18, 0, 1], 61443, 6)),
            FlowState::Established,
            flow_flags::SNAT,
            t,
            0,
            u32::MAX,
        )
        .unwrap();
        ct.insert_record(
            k([10, 244, 1, 2], 6, [10, 96, 0, 10], 8080, 253),
            k([10, 244, 2, 7], 80, [10, 96, 0, 10], 8080, 253),
            t,
            10_800,
        )
        .unwrap();
        ct.insert(
            k([10, 244, 1, 2], 5353, [10, 96, 0, 53], 53, 17),
            Some(k([10, 244, 2, 9], 53, [10, 244, 1, 2], 5353, 17)),
            FlowState::Replied,
            flow_flags::DNAT,
            t,
            0,
            1,
        )
        .unwrap();
        ct
    }

    fn sorted(ct: &ConnTrack) -> Vec<crate::conntrack::FlowInfo> {
        let mut v: Vec<_> = ct
            .list(usize::MAX, |_| true)
            .into_iter()
            .map(|mut f| {
                f.index = 0;
                f
            })
            .collect();
        v.sort_by_key(|f| f.orig);
        v
    }

    #[test]
    fn round_trip_keeps_flows_nat_and_affinity() {
        let dir = TempDir::new("rt");
        let path = dir.0.join("handover.bin");
        let now = Instant::now();
        let wall = SystemTime::now();
        let old = node_table(now);
        let saved = save(&old, &path, b"{\"services\":[]}", now, wall).unwrap();
        assert_eq!(saved.flows, 4);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            saved.bytes,
            "size as reported"
        );
        let mut new = table(64);
        let r = load(&mut new, &path, now, wall, Duration::from_secs(60)).unwrap();
        assert_eq!((r.flows, r.expired, r.no_room), (4, 0, 0));
        assert_eq!(r.extra, b"{\"services\":[]}");
        assert_eq!(sorted(&old), sorted(&new));
        // Both directions find the translated flows; the SNAT port is
        // taken (an allocator probing it sees a flow).
        let snat_reply = k([203, 0, 113, 10], 8000, [198, 18, 0, 1], 61443, 6);
        let r = new.lookup(&snat_reply).expect("masqueraded reply");
        assert_eq!(r.dir, Dir::Reply);
        assert_eq!(
            new.entry(r.index).key(Dir::Orig).src,
            Ipv4Addr::new(10, 244, 1, 2)
        );
        assert!(new
            .lookup(&k([10, 244, 2, 7], 80, [10, 244, 1, 2], 40000, 6))
            .is_some());
        let aff = new
            .lookup(&k([10, 244, 1, 2], 6, [10, 96, 0, 10], 8080, 253))
            .expect("affinity record");
        assert_eq!(new.entry(aff.index).key(Dir::Reply).src.octets()[3], 7);
        // The affinity payload is not indexed.
        assert!(new
            .lookup(&k([10, 244, 2, 7], 80, [10, 96, 0, 10], 8080, 253))
            .is_none());
    }

    #[test]
    fn ages_survive_and_downtime_counts() {
        let dir = TempDir::new("age");
        let path = dir.0.join("handover.bin");
        // A table 100 s old: an established flow idle 90 s, a UDP flow
        // idle 25 s (unreplied: 30 s timeout).
        let mut old = table(64);
        let now = Instant::now();
        old.start = now.checked_sub(Duration::from_secs(100)).unwrap();
        let a = k([10, 244, 1, 2], 1, [10, 96, 0, 1], 80, 6);
        old.insert(a, Some(a.reversed()), FlowState::Established, 0, 10, 0, 0)
            .unwrap();
        let u = k([10, 244, 1, 2], 2, [10, 96, 0, 1], 53, 17);
        old.insert(u, Some(u.reversed()), FlowState::Unreplied, 0, 75, 0, 0)
            .unwrap();
        let wall = SystemTime::now();
        save(&old, &path, &[], now, wall).unwrap();

        // Loaded 2 s later: both kept, ages 92 and 27.
        let mut new = table(64);
        let later = wall + Duration::from_secs(2);
        let r = load(&mut new, &path, now, later, Duration::from_secs(60)).unwrap();
        assert_eq!((r.flows, r.expired), (2, 0));
        let f = sorted(&new);
        assert_eq!((f[0].idle_secs, f[1].idle_secs), (92, 27));
        assert_eq!(f[1].expires_in_secs, 3);

        // Loaded 6 s later: the UDP flow expired meanwhile.
        let mut new = table(64);
        let r = load(
            &mut new,
            &path,
            now,
            wall + Duration::from_secs(6),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!((r.flows, r.expired), (1, 1));

        // Loaded an hour later: refused as stale, nothing restored.
        let mut new = table(64);
        let e = load(
            &mut new,
            &path,
            now,
            wall + Duration::from_secs(3600),
            Duration::from_secs(60),
        )
        .unwrap_err();
        assert!(matches!(e, HandoverError::Stale { .. }), "{e}");
        assert!(new.is_empty());
    }

    #[test]
    fn a_smaller_table_takes_what_fits() {
        let dir = TempDir::new("small");
        let path = dir.0.join("handover.bin");
        let now = Instant::now();
        let old = table(64);
        for i in 0..40u16 {
            let key = k([10, 244, 1, 2], 1000 + i, [10, 96, 0, 1], 80, 6);
            old.insert(
                key,
                Some(key.reversed()),
                FlowState::Established,
                0,
                0,
                0,
                0,
            )
            .unwrap();
        }
        let wall = SystemTime::now();
        save(&old, &path, &[], now, wall).unwrap();
        let mut new = table(16);
        let r = load(&mut new, &path, now, wall, Duration::from_secs(60)).unwrap();
        assert_eq!((r.flows, r.no_room), (16, 24));
    }

    /// Every way a file can be wrong is refused with its reason, and the
    /// table stays empty.
    #[test]
    fn corrupt_truncated_and_foreign_files_are_refused() {
        let dir = TempDir::new("bad");
        let path = dir.0.join("handover.bin");
        let now = Instant::now();
        let wall = SystemTime::now();
        save(&node_table(now), &path, b"extra", now, wall).unwrap();
        let good = std::fs::read(&path).unwrap();
        let try_load = |bytes: &[u8]| {
            let p = dir.0.join("case.bin");
            std::fs::write(&p, bytes).unwrap();
            let mut ct = table(64);
            let r = load(&mut ct, &p, now, wall, Duration::from_secs(60));
            assert!(ct.is_empty(), "nothing restored from a refused file");
            r.map(|_| ()).unwrap_err()
        };
        let records = HEADER_LEN + 5;

        let mut b = good.clone();
        b[records + 3] ^= 0x40;
        let e = try_load(&b);
        assert!(matches!(e, HandoverError::Checksum { .. }), "bit flip: {e}");

        let e = try_load(&good[..good.len() - 7]);
        assert!(
            matches!(e, HandoverError::Malformed { .. }) && e.to_string().contains("truncated"),
            "truncated: {e}"
        );
        let e = try_load(&good[..10]);
        assert!(e.to_string().contains("truncated"), "no header: {e}");
        let e = try_load(&[]);
        assert!(e.to_string().contains("truncated"), "empty: {e}");

        let mut b = good.clone();
        b.extend_from_slice(b"junk");
        let e = try_load(&b);
        assert!(e.to_string().contains("after the end"), "trailing: {e}");

        let mut b = good.clone();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        let e = try_load(&b);
        assert!(
            matches!(e, HandoverError::Version { found: 2, .. }),
            "version: {e}"
        );
        assert!(e.to_string().contains("reads version 1"), "{e}");

        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(try_load(&b), HandoverError::BadMagic { .. }));

        let mut b = good.clone();
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = try_load(&b);
        assert!(e.to_string().contains("flows, at most"), "huge count: {e}");

        // A record with an impossible state, checksum made to match: a
        // record no switch writes is refused too.
        let mut b = good.clone();
        b[records + 26] = 200;
        let body = b.len() - TRAILER_LEN;
        let crc = crc32fast::hash(&b[..body]);
        b[body..].copy_from_slice(&crc.to_le_bytes());
        let e = try_load(&b);
        assert!(
            matches!(e, HandoverError::BadRecord { index: 0, .. }),
            "bad state: {e}"
        );

        // A missing file is an I/O error naming it.
        let mut ct = table(16);
        let e = load(
            &mut ct,
            &dir.0.join("none.bin"),
            now,
            wall,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("none.bin"), "{e}");
    }

    #[test]
    fn loading_into_a_used_table_is_refused() {
        let dir = TempDir::new("used");
        let path = dir.0.join("handover.bin");
        let now = Instant::now();
        let wall = SystemTime::now();
        save(&node_table(now), &path, &[], now, wall).unwrap();
        let mut ct = node_table(now);
        let e = load(&mut ct, &path, now, wall, Duration::from_secs(60)).unwrap_err();
        assert!(matches!(e, HandoverError::NotEmpty(4)), "{e}");
    }

    /// The figures for a full table of a million flows: file size, save
    /// and load times (printed; bounded loosely so a slow CI box passes).
    #[test]
    fn a_million_flows_hand_over_in_bounded_size_and_time() {
        const N: usize = 1 << 20;
        let dir = TempDir::new("1m");
        let path = dir.0.join("handover.bin");
        let old = table(N);
        let now = Instant::now();
        for i in 0..N as u32 {
            let orig = FlowKey::new(
                Ipv4Addr::from(0x0af4_0000 | (i >> 16)),
                i as u16,
                Ipv4Addr::new(203, 0, 113, 10),
                443,
                6,
            );
            let reply = FlowKey::new(
                orig.dst,
                443,
                Ipv4Addr::from(0xc612_0000 | (i >> 12)),
                (i % 4096) as u16 + 61440,
                6,
            );
            old.insert(orig, Some(reply), FlowState::Established, 8, 0, 0, 0)
                .unwrap();
        }
        let wall = SystemTime::now();
        let t = Instant::now();
        let saved = save(&old, &path, &[], now, wall).unwrap();
        let save_time = t.elapsed();
        drop(old);
        let mut new = table(N);
        let t = Instant::now();
        let r = load(&mut new, &path, now, wall, Duration::from_secs(60)).unwrap();
        let load_time = t.elapsed();
        println!(
            "handover of {} flows: file {} bytes ({:.1} MiB, {} B/flow), save {save_time:?}, load {load_time:?}",
            saved.flows,
            saved.bytes,
            saved.bytes as f64 / (1 << 20) as f64,
            RECORD_LEN
        );
        assert_eq!(r.flows, N as u64);
        assert_eq!(new.len(), N);
        assert!(saved.bytes <= (N * RECORD_LEN + 1024) as u64);
        assert!(load_time < Duration::from_secs(10), "{load_time:?}");
    }
}
