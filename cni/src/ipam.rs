//! The built-in IPAM: pod addresses from a range of the node's pod CIDR,
//! kept on disk the way the reference `host-local` plugin keeps them, so
//! concurrent plugin processes (one per pod being created) never hand out
//! the same address.
//!
//! Layout of `<dataDir>/<network name>/`:
//! - `<ip>`: one file per allocated address, created with `O_EXCL`,
//!   holding three lines: container ID, interface name, switch port name;
//! - `lock`: `flock`ed exclusively around every read-modify-write;
//! - `last_reserved_ip`: where the next search starts, so a freed address
//!   is not reused at once (host-local does the same).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use nix::fcntl::{Flock, FlockArg};

/// Why an IPAM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The range settings are inconsistent.
    #[error("invalid IPAM range: {0}")]
    InvalidRange(String),
    /// Every address of the range is taken.
    #[error("no free IP address left in {range}")]
    Exhausted { range: String },
    /// This container and interface already hold an address.
    #[error("container {container_id} interface {ifname} already holds {ip}")]
    AlreadyAllocated {
        container_id: String,
        ifname: String,
        ip: Ipv4Addr,
    },
    /// The store could not be read or written.
    #[error("IPAM store {}: {op}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The addresses one network hands out: `start..=end` inside `subnet`,
/// never the subnet's network or broadcast address nor the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    subnet: Ipv4Net,
    start: Ipv4Addr,
    end: Ipv4Addr,
    gateway: Option<Ipv4Addr>,
}

impl Range {
    /// A range of `subnet`, from `start` (default: the first host) to `end`
    /// (default: the last host), skipping `gateway`.
    ///
    /// # Errors
    /// A subnet smaller than /30, or `start`/`end` outside it or reversed.
    pub fn new(
        subnet: Ipv4Net,
        start: Option<Ipv4Addr>,
        end: Option<Ipv4Addr>,
        gateway: Option<Ipv4Addr>,
    ) -> Result<Range, IpamError> {
        let subnet = subnet.trunc();
        if subnet.prefix_len() > 30 {
            return Err(IpamError::InvalidRange(format!(
                "{subnet} has no host addresses besides network and broadcast"
            )));
        }
        let first = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let last = Ipv4Addr::from(u32::from(subnet.broadcast()) - 1);
        let start = start.unwrap_or(first);
        let end = end.unwrap_or(last);
        for (what, ip) in [("rangeStart", start), ("rangeEnd", end)] {
            if !subnet.contains(&ip) {
                return Err(IpamError::InvalidRange(format!(
                    "{what} {ip} is outside {subnet}"
                )));
            }
        }
        if start > end {
            return Err(IpamError::InvalidRange(format!(
                "rangeStart {start} is after rangeEnd {end}"
            )));
        }
        Ok(Range {
            subnet,
            start,
            end,
            gateway,
        })
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// Whether `ip` may be handed out.
    pub fn is_usable(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&ip)
            && ip != self.subnet.network()
            && ip != self.subnet.broadcast()
            && Some(ip) != self.gateway
    }

    /// Every usable address once, starting after `after` (if it is in the
    /// range) and wrapping around.
    pub fn candidates(&self, after: Option<Ipv4Addr>) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let (lo, hi) = (u32::from(self.start), u32::from(self.end));
        let begin = match after {
            Some(a) if (lo..hi).contains(&u32::from(a)) => u32::from(a) + 1,
            _ => lo,
        };
        (begin..=hi)
            .chain(lo..begin)
            .map(Ipv4Addr::from)
            .filter(|ip| self.is_usable(*ip))
    }
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}-{})", self.subnet, self.start, self.end)
    }
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub container_id: String,
    pub ifname: String,
    /// The switch port created for it (empty when unknown).
    pub port: String,
}

impl Record {
    fn encode(&self) -> String {
        format!("{}\n{}\n{}\n", self.container_id, self.ifname, self.port)
    }

    /// Reads a record; also host-local's `ID\r\nIFNAME` form.
    fn decode(s: &str) -> Record {
        let mut lines = s.lines().map(|l| l.trim_end_matches('\r').to_string());
        Record {
            container_id: lines.next().unwrap_or_default(),
            ifname: lines.next().unwrap_or_default(),
            port: lines.next().unwrap_or_default(),
        }
    }

    fn is(&self, container_id: &str, ifname: &str) -> bool {
        self.container_id == container_id && self.ifname == ifname
    }
}

const LOCK_FILE: &str = "lock";
const LAST_RESERVED_FILE: &str = "last_reserved_ip";

/// The allocations of one network on disk.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store of network `network` under `data_dir` (created if needed,
    /// mode 0700: it names every pod of the node).
    ///
    /// # Errors
    /// [`IpamError::Io`] if the directory cannot be created.
    pub fn open(data_dir: &Path, network: &str) -> Result<Store, IpamError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = data_dir.join(network);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| IpamError::Io {
                path: dir.clone(),
                op: "create the directory",
                source,
            })?;
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> IpamError {
        let path = path.to_path_buf();
        move |source| IpamError::Io { path, op, source }
    }

    /// Takes the store's lock until the guard is dropped. The lock is
    /// `flock`, so it also excludes other threads of this process that
    /// opened the file themselves.
    fn lock(&self) -> Result<Flock<File>, IpamError> {
        let path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(self.io(&path, "open the lock file"))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, errno)| self.io(&path, "flock the lock file")(errno.into()))
    }

    /// Every allocation, sorted by address. Files that are not addresses
    /// (the lock, `last_reserved_ip`) are skipped.
    ///
    /// # Errors
    /// [`IpamError::Io`] if the directory cannot be listed.
    pub fn records(&self) -> Result<Vec<(Ipv4Addr, Record)>, IpamError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(self.io(&self.dir, "list"))?;
        for entry in entries {
            let entry = entry.map_err(self.io(&self.dir, "list"))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            match fs::read_to_string(&path) {
                Ok(s) => out.push((ip, Record::decode(&s))),
                // Freed since the listing.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(&path, "read")(e)),
            }
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// The addresses held by `container_id` on `ifname`.
    ///
    /// # Errors
    /// [`IpamError::Io`].
    pub fn find(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<(Ipv4Addr, Record)>, IpamError> {
        Ok(self
            .records()?
            .into_iter()
            .filter(|(_, r)| r.is(container_id, ifname))
            .collect())
    }

    /// Allocates one address of `range` for `record`'s container and
    /// interface.
    ///
    /// # Errors
    /// [`IpamError::AlreadyAllocated`] if they already hold one,
    /// [`IpamError::Exhausted`] if none is free, [`IpamError::Io`].
    pub fn allocate(&self, range: &Range, record: &Record) -> Result<Ipv4Addr, IpamError> {
        let _lock = self.lock()?;
        if let Some((ip, _)) = self
            .records()?
            .into_iter()
            .find(|(_, r)| r.is(&record.container_id, &record.ifname))
        {
            return Err(IpamError::AlreadyAllocated {
                container_id: record.container_id.clone(),
                ifname: record.ifname.clone(),
                ip,
            });
        }
        let last_path = self.dir.join(LAST_RESERVED_FILE);
        let last = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
        for ip in range.candidates(last) {
            let path = self.dir.join(ip.to_string());
            // O_EXCL: even a writer that ignored the lock cannot take the
            // same address twice.
            let mut file = match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(self.io(&path, "create")(e)),
            };
            if let Err(e) = file
                .write_all(record.encode().as_bytes())
                .and_then(|()| file.sync_all())
            {
                let _ = fs::remove_file(&path);
                return Err(self.io(&path, "write")(e));
            }
            // Only a hint for the next search; losing it is harmless.
            let _ = fs::write(&last_path, ip.to_string());
            return Ok(ip);
        }
        Err(IpamError::Exhausted {
            range: range.to_string(),
        })
    }

    /// Frees every address of `container_id` on `ifname`; returns them.
    /// Nothing to free is not an error (DEL is idempotent).
    ///
    /// # Errors
    /// [`IpamError::Io`].
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<Ipv4Addr>, IpamError> {
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for (ip, _) in self.find(container_id, ifname)? {
            self.remove(ip)?;
            freed.push(ip);
        }
        Ok(freed)
    }

    /// Frees `ip` if `container_id` on `ifname` still holds it.
    ///
    /// # Errors
    /// [`IpamError::Io`].
    pub fn release_ip(
        &self,
        ip: Ipv4Addr,
        container_id: &str,
        ifname: &str,
    ) -> Result<bool, IpamError> {
        let _lock = self.lock()?;
        let path = self.dir.join(ip.to_string());
        match fs::read_to_string(&path) {
            Ok(s) if Record::decode(&s).is(container_id, ifname) => {
                self.remove(ip)?;
                Ok(true)
            }
            Ok(_) => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(self.io(&path, "read")(e)),
        }
    }

    /// Frees every address whose container and interface are not in
    /// `keep` and for which `also_free` agrees (it may refuse, e.g. when
    /// the switch port could not be removed); returns what was freed.
    ///
    /// # Errors
    /// [`IpamError::Io`].
    pub fn gc(
        &self,
        keep: &std::collections::HashSet<(String, String)>,
        mut also_free: impl FnMut(Ipv4Addr, &Record) -> bool,
    ) -> Result<Vec<(Ipv4Addr, Record)>, IpamError> {
        let _lock = self.lock()?;
        let mut freed = Vec::new();
        for (ip, rec) in self.records()? {
            if keep.contains(&(rec.container_id.clone(), rec.ifname.clone())) {
                continue;
            }
            if also_free(ip, &rec) {
                self.remove(ip)?;
                freed.push((ip, rec));
            }
        }
        Ok(freed)
    }

    fn remove(&self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&path, "remove")(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A scratch directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "psw-ipam-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn rec(id: &str) -> Record {
        Record {
            container_id: id.into(),
            ifname: "eth0".into(),
            port: format!("default/{id}"),
        }
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn range_skips_network_broadcast_and_gateway() {
        let r = Range::new(
            "10.244.1.0/29".parse().unwrap(),
            None,
            None,
            Some(ip("10.244.1.1")),
        )
        .unwrap();
        let all: Vec<_> = r.candidates(None).collect();
        assert_eq!(
            all,
            [
                "10.244.1.2",
                "10.244.1.3",
                "10.244.1.4",
                "10.244.1.5",
                "10.244.1.6"
            ]
            .map(ip)
        );
        // Wraps around after the last reserved address.
        let from: Vec<_> = r.candidates(Some(ip("10.244.1.4"))).collect();
        assert_eq!(
            from,
            [
                "10.244.1.5",
                "10.244.1.6",
                "10.244.1.2",
                "10.244.1.3",
                "10.244.1.4"
            ]
            .map(ip)
        );
        // Explicit bounds, including the network address: still skipped.
        let r = Range::new(
            "10.244.1.8/29".parse().unwrap(),
            Some(ip("10.244.1.8")),
            Some(ip("10.244.1.10")),
            Some(ip("10.244.1.1")),
        )
        .unwrap();
        assert_eq!(
            r.candidates(None).collect::<Vec<_>>(),
            ["10.244.1.9", "10.244.1.10"].map(ip)
        );
    }

    #[test]
    fn invalid_ranges_are_refused() {
        let net = "10.244.1.0/24".parse().unwrap();
        assert!(Range::new("10.0.0.0/31".parse().unwrap(), None, None, None).is_err());
        assert!(Range::new(net, Some(ip("10.244.2.1")), None, None).is_err());
        assert!(Range::new(net, None, Some(ip("10.0.0.1")), None).is_err());
        assert!(Range::new(net, Some(ip("10.244.1.9")), Some(ip("10.244.1.8")), None).is_err());
    }

    #[test]
    fn allocate_free_and_exhaust() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0, "net").unwrap();
        let range = Range::new(
            "10.244.1.0/29".parse().unwrap(),
            None,
            None,
            Some(ip("10.244.1.1")),
        )
        .unwrap();
        let mut got = Vec::new();
        for i in 0..5 {
            got.push(store.allocate(&range, &rec(&format!("c{i}"))).unwrap());
        }
        assert_eq!(
            got,
            [
                "10.244.1.2",
                "10.244.1.3",
                "10.244.1.4",
                "10.244.1.5",
                "10.244.1.6"
            ]
            .map(ip)
        );
        assert!(matches!(
            store.allocate(&range, &rec("c9")),
            Err(IpamError::Exhausted { .. })
        ));
        assert!(!tmp.0.join("net").join("10.244.1.7").exists());
        // The same container and interface cannot get a second address.
        assert!(matches!(
            store.allocate(&range, &rec("c0")),
            Err(IpamError::AlreadyAllocated { .. })
        ));
        // The file says who holds the address.
        let content = fs::read_to_string(tmp.0.join("net/10.244.1.4")).unwrap();
        assert_eq!(content, "c2\neth0\ndefault/c2\n");
        assert_eq!(store.find("c2", "eth0").unwrap()[0].0, ip("10.244.1.4"));

        assert_eq!(store.release("c2", "eth0").unwrap(), vec![ip("10.244.1.4")]);
        assert!(
            store.release("c2", "eth0").unwrap().is_empty(),
            "idempotent"
        );
        assert!(store.find("c2", "eth0").unwrap().is_empty());
        // The freed address is the only one left.
        assert_eq!(
            store.allocate(&range, &rec("c7")).unwrap(),
            ip("10.244.1.4")
        );
        // release_ip only frees what the container holds.
        assert!(!store.release_ip(ip("10.244.1.4"), "other", "eth0").unwrap());
        assert!(store.release_ip(ip("10.244.1.4"), "c7", "eth0").unwrap());
        assert!(!store.release_ip(ip("10.244.1.4"), "c7", "eth0").unwrap());
    }

    #[test]
    fn next_search_starts_after_the_last_reserved() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0, "net").unwrap();
        let range = Range::new(
            "10.244.1.0/24".parse().unwrap(),
            None,
            None,
            Some(ip("10.244.1.1")),
        )
        .unwrap();
        assert_eq!(store.allocate(&range, &rec("a")).unwrap(), ip("10.244.1.2"));
        store.release("a", "eth0").unwrap();
        assert_eq!(store.allocate(&range, &rec("b")).unwrap(), ip("10.244.1.3"));
    }

    #[test]
    fn gc_frees_what_is_not_kept() {
        let tmp = TempDir::new();
        let store = Store::open(&tmp.0, "net").unwrap();
        let range = Range::new("10.244.1.0/24".parse().unwrap(), None, None, None).unwrap();
        for id in ["a", "b", "c", "d"] {
            store.allocate(&range, &rec(id)).unwrap();
        }
        let keep: HashSet<(String, String)> = [("a", "eth0"), ("c", "eth0"), ("d", "eth1")]
            .iter()
            .map(|(c, i)| (c.to_string(), i.to_string()))
            .collect();
        // "d" is kept only on eth1, so its eth0 address goes; "b" is
        // refused by the callback and stays.
        let freed = store.gc(&keep, |_, r| r.container_id != "b").unwrap();
        assert_eq!(
            freed
                .iter()
                .map(|(_, r)| r.container_id.as_str())
                .collect::<Vec<_>>(),
            vec!["d"]
        );
        let left: Vec<_> = store
            .records()
            .unwrap()
            .into_iter()
            .map(|(_, r)| r.container_id)
            .collect();
        assert_eq!(left, vec!["a", "b", "c"]);
    }

    #[test]
    fn host_local_records_are_read() {
        assert_eq!(
            Record::decode("abc\r\neth0"),
            Record {
                container_id: "abc".into(),
                ifname: "eth0".into(),
                port: String::new()
            }
        );
        assert_eq!(Record::decode(""), Record::decode("\n\n\n"));
    }

    /// Many threads, each with its own lock file descriptor (as separate
    /// plugin processes have), never get the same address.
    #[test]
    fn concurrent_allocations_are_unique() {
        let tmp = TempDir::new();
        let range = Range::new(
            "10.244.1.0/26".parse().unwrap(),
            None,
            None,
            Some(ip("10.244.1.1")),
        )
        .unwrap();
        let dir = tmp.0.clone();
        let handles: Vec<_> = (0..61)
            .map(|i| {
                let dir = dir.clone();
                let range = range.clone();
                std::thread::spawn(move || {
                    let store = Store::open(&dir, "net").unwrap();
                    store.allocate(&range, &rec(&format!("c{i}")))
                })
            })
            .collect();
        let mut ips: Vec<Ipv4Addr> = handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect();
        ips.sort();
        ips.dedup();
        assert_eq!(
            ips.len(),
            61,
            "61 usable addresses in a /26 without the gateway"
        );
        let store = Store::open(&dir, "net").unwrap();
        assert!(matches!(
            store.allocate(&range, &rec("one-too-many")),
            Err(IpamError::Exhausted { .. })
        ));
    }
}
