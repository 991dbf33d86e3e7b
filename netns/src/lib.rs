//! Named network namespaces, managed the way `ip netns` manages them.
//!
//! A named namespace is an nsfs file bind-mounted at `/run/netns/NAME`; it
//! lives as long as that mount (or any process or file descriptor inside it)
//! does. The switch uses these to build pods and test clusters, and to run
//! the few operations whose result depends on the calling thread's namespace
//! (opening a netlink socket, attaching to a tap by name) inside the right
//! one.
//!
//! A network namespace belongs to a *thread*, not to a process. Everything
//! here either works on a short-lived dedicated thread ([`create`],
//! [`run_in`]) or restores the calling thread's namespace when done
//! ([`enter`] and its [`NetnsGuard`]), so no worker thread is ever left in a
//! namespace it did not ask for. All of it is safe Rust over `nix`.

use std::fs::{self, File};
use std::io;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::stat::Mode;

/// Directory that holds the bind mounts of named namespaces (as `ip netns`).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The calling thread's own network namespace.
const THREAD_SELF_NETNS: &str = "/proc/thread-self/ns/net";

/// Longest file name Linux accepts (NAME_MAX).
const NAME_MAX: usize = 255;

/// Serialises the one-time preparation of [`NETNS_RUN_DIR`] as a shared mount
/// point, so that concurrent [`create`] calls do not stack bind mounts.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

/// Why a network namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name is empty, too long, `.`/`..`, or contains `/` or NUL.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A namespace with this name already exists.
    #[error("network namespace {name:?} already exists at {}", path.display())]
    AlreadyExists {
        /// The requested name.
        name: String,
        /// Where it already is.
        path: PathBuf,
    },
    /// Preparing `/run/netns` (creating it, making it a shared mount) failed.
    #[error("cannot prepare {}: {op}", path.display())]
    RunDir {
        /// The directory.
        path: PathBuf,
        /// The step that failed.
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Creating a new namespace or pinning it with a bind mount failed.
    #[error("cannot create network namespace {name:?}: {op}")]
    Create {
        /// The requested name.
        name: String,
        /// The step that failed (`unshare`, `bind mount`, ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Unmounting or removing a named namespace failed.
    #[error("cannot delete network namespace at {}: {op}", path.display())]
    Delete {
        /// The namespace file.
        path: PathBuf,
        /// The step that failed (`umount`, `remove`).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Opening a namespace file failed (it does not exist, or is not ours to
    /// open).
    #[error("cannot open network namespace {}", path.display())]
    Open {
        /// The namespace file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// `setns(CLONE_NEWNET)` failed: the file is not a network namespace or
    /// the caller lacks CAP_SYS_ADMIN.
    #[error("cannot enter network namespace {}", path.display())]
    Enter {
        /// The namespace file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Switching the thread back to its original namespace failed.
    #[error("cannot return the thread to its previous network namespace")]
    Restore {
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Spawning the helper thread failed.
    #[error("cannot spawn a thread for network namespace {}", path.display())]
    Thread {
        /// The namespace the thread was meant to run in.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// Path of the named namespace `name`: `/run/netns/NAME`.
///
/// This does not check the name; [`create`] and [`delete`] do.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Whether a named namespace `name` exists (its file is present).
///
/// Invalid names never exist.
pub fn exists(name: &str) -> bool {
    validate_name(name).is_ok() && fs::symlink_metadata(path(name)).is_ok()
}

/// Create the named namespace `name`, like `ip netns add NAME`.
///
/// Makes `/run/netns` a shared mount point (so later namespaces propagate to
/// other mount namespaces, as `ip` does), creates `/run/netns/NAME`, then on a
/// dedicated short-lived thread unshares a new network namespace and
/// bind-mounts `/proc/thread-self/ns/net` onto the file. The caller's thread
/// never changes namespace. On failure nothing is left behind.
///
/// Returns the path of the new namespace.
///
/// # Errors
/// [`NetnsError::InvalidName`], [`NetnsError::AlreadyExists`] if the file is
/// already there, or the step that failed.
pub fn create(name: &str) -> Result<PathBuf, NetnsError> {
    validate_name(name)?;
    prepare_run_dir()?;
    let target = path(name);

    // O_EXCL: two creators of the same name cannot both succeed.
    match nix::fcntl::open(
        &target,
        OFlag::O_RDONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => drop(fd),
        Err(Errno::EEXIST) => {
            return Err(NetnsError::AlreadyExists {
                name: name.to_owned(),
                path: target,
            })
        }
        Err(errno) => {
            return Err(NetnsError::Create {
                name: name.to_owned(),
                op: "create the namespace file",
                source: errno.into(),
            })
        }
    }

    let mount_target = target.clone();
    let pinned = std::thread::Builder::new()
        .name("netns-create".to_owned())
        .spawn(move || -> Result<(), (&'static str, Errno)> {
            // unshare(CLONE_NEWNET) moves only this thread, which exits right
            // after, so no thread of the process stays in the new namespace.
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| ("unshare(CLONE_NEWNET)", e))?;
            mount(
                Some(THREAD_SELF_NETNS),
                &mount_target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| ("bind mount /proc/thread-self/ns/net", e))
        })
        .map_err(|source| NetnsError::Thread {
            path: target.clone(),
            source,
        })?
        .join();

    let failure = match pinned {
        Ok(Ok(())) => return Ok(target),
        Ok(Err((op, errno))) => NetnsError::Create {
            name: name.to_owned(),
            op,
            source: errno.into(),
        },
        Err(_) => NetnsError::Create {
            name: name.to_owned(),
            op: "namespace thread panicked",
            source: io::Error::other("thread panicked"),
        },
    };
    // Best effort: the error being returned is the one that matters.
    let _ = fs::remove_file(&target);
    Err(failure)
}

/// Delete the named namespace `name`, like `ip netns delete NAME`.
///
/// Lazily unmounts (`MNT_DETACH`) and removes `/run/netns/NAME`. The
/// namespace itself disappears once no process, thread or descriptor holds
/// it. Deleting a namespace that does not exist succeeds.
///
/// # Errors
/// [`NetnsError::InvalidName`], or the step that failed.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    validate_name(name)?;
    let target = path(name);
    match umount2(&target, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-created namespace); ENOENT: gone.
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(errno) => {
            return Err(NetnsError::Delete {
                path: target,
                op: "umount2(MNT_DETACH)",
                source: errno.into(),
            })
        }
    }
    match fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(NetnsError::Delete {
            path: target,
            op: "remove the namespace file",
            source,
        }),
    }
}

/// Open a network namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`, ...)
/// for `setns` or for moving links into it.
///
/// # Errors
/// [`NetnsError::Open`] with the path.
pub fn open(path: &Path) -> Result<OwnedFd, NetnsError> {
    File::open(path)
        .map(OwnedFd::from)
        .map_err(|source| NetnsError::Open {
            path: path.to_owned(),
            source,
        })
}

/// Keeps the current thread inside another network namespace; dropping it
/// moves the thread back to the namespace it was in before [`enter`].
///
/// Not `Send`: it must be dropped on the thread that entered.
#[must_use = "dropping the guard immediately returns the thread to its previous namespace"]
#[derive(Debug)]
pub struct NetnsGuard {
    previous: Option<OwnedFd>,
    /// `setns` acts on the calling thread, so the guard must stay on it.
    _not_send: PhantomData<*const ()>,
}

impl NetnsGuard {
    /// Return the thread to its previous namespace now, reporting failure
    /// (which `Drop` can only log).
    ///
    /// # Errors
    /// [`NetnsError::Restore`] if `setns` back fails.
    pub fn restore(mut self) -> Result<(), NetnsError> {
        self.restore_inner()
    }

    fn restore_inner(&mut self) -> Result<(), NetnsError> {
        match self.previous.take() {
            Some(fd) => setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError::Restore {
                source: errno.into(),
            }),
            None => Ok(()),
        }
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(error) = self.restore_inner() {
            // A thread stuck in the wrong namespace would configure the wrong
            // devices; there is no way to report it from Drop but loudly.
            tracing::error!(%error, "thread left in a foreign network namespace");
        }
    }
}

/// Move the *current thread* into the namespace at `path` until the returned
/// guard is dropped.
///
/// Prefer [`run_in`], which never changes the caller's thread. Sockets,
/// taps and netlink connections opened while inside stay bound to that
/// namespace after the guard is gone.
///
/// # Errors
/// [`NetnsError::Open`] for either namespace file, [`NetnsError::Enter`] if
/// `setns` fails (the thread then has not moved).
pub fn enter(path: &Path) -> Result<NetnsGuard, NetnsError> {
    let previous = open(Path::new(THREAD_SELF_NETNS))?;
    let target = open(path)?;
    setns(&target, CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError::Enter {
        path: path.to_owned(),
        source: errno.into(),
    })?;
    Ok(NetnsGuard {
        previous: Some(previous),
        _not_send: PhantomData,
    })
}

/// Run `f` on a new thread inside the namespace at `path` and return its
/// result. The caller's thread never changes namespace.
///
/// # Errors
/// [`NetnsError::Thread`] if the thread cannot be spawned, or the
/// [`enter`] error if the namespace cannot be entered (then `f` is not run).
///
/// # Panics
/// If `f` panics, the panic is resumed on the caller's thread, as
/// `std::thread::scope` does.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let target = path.to_owned();
    let handle = std::thread::Builder::new()
        .name("netns-run".to_owned())
        .spawn(move || -> Result<T, NetnsError> {
            // The thread ends after `f`, so there is nothing to restore.
            let fd = open(&target)?;
            setns(&fd, CloneFlags::CLONE_NEWNET).map_err(|errno| NetnsError::Enter {
                path: target,
                source: errno.into(),
            })?;
            Ok(f())
        })
        .map_err(|source| NetnsError::Thread {
            path: path.to_owned(),
            source,
        })?;
    match handle.join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Pids of the processes whose network namespace is the one at `path`, like
/// `ip netns pids`. Processes whose `/proc/PID/ns/net` cannot be read (gone,
/// or not ours to inspect) are skipped; an unreadable `path` gives none.
pub fn pids_in(path: &Path) -> Vec<i32> {
    let Ok(target) = fs::metadata(path) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|ns| ns.dev() == target.dev() && ns.ino() == target.ino())
        })
        .collect();
    pids.sort_unstable();
    pids
}

/// Names of the named namespaces under [`NETNS_RUN_DIR`] that start with
/// `prefix`, sorted. Empty if the directory does not exist.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(entries) = fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort_unstable();
    names
}

/// A namespace name must be a single, ordinary path component.
fn validate_name(name: &str) -> Result<(), NetnsError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > NAME_MAX {
        Some("longer than 255 bytes")
    } else if name == "." || name == ".." {
        Some("not a file name")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetnsError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Make [`NETNS_RUN_DIR`] exist and be a shared mount point, as `ip netns
/// add` does, so that namespace mounts made here propagate to mount
/// namespaces created later (containers started after the pod namespace).
fn prepare_run_dir() -> Result<(), NetnsError> {
    let dir = Path::new(NETNS_RUN_DIR);
    let run_dir_error = |op: &'static str, source: io::Error| NetnsError::RunDir {
        path: dir.to_owned(),
        op,
        source,
    };
    // A poisoned lock only means another creator panicked; the setup below is
    // idempotent, so carry on.
    let _lock = RUN_DIR_SETUP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);

    fs::create_dir_all(dir).map_err(|e| run_dir_error("mkdir", e))?;
    let make_shared = || {
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match make_shared() {
        Ok(()) => Ok(()),
        // EINVAL: not a mount point yet. Bind it onto itself, then retry.
        Err(Errno::EINVAL) => {
            mount(
                Some(dir),
                dir,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| run_dir_error("bind mount onto itself", e.into()))?;
            make_shared().map_err(|e| run_dir_error("make shared", e.into()))
        }
        Err(e) => Err(run_dir_error("make shared", e.into())),
    }
}

/// Helpers for tests that need root (namespaces, taps), shared by every
/// crate of the workspace so the rule is written once: without root such a
/// test skips with a message, unless `PODSWITCH_REQUIRE_ROOT=1` (CI), where
/// it fails, so a green run never hides a skipped datapath test.
pub mod testing {
    /// The variable that turns a missing-privilege skip into a failure.
    pub const REQUIRE_ROOT_VAR: &str = "PODSWITCH_REQUIRE_ROOT";

    /// Whether the root-only test `test` may run (see the module docs).
    ///
    /// # Panics
    /// Without root when `PODSWITCH_REQUIRE_ROOT=1`.
    pub fn have_root(test: &str) -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert!(
            std::env::var(REQUIRE_ROOT_VAR).as_deref() != Ok("1"),
            "{test} needs root and {REQUIRE_ROOT_VAR}=1 forbids skipping it"
        );
        eprintln!("skipping {test}: needs root (set {REQUIRE_ROOT_VAR}=1 to make this fail)");
        false
    }
}

/// Helpers for tests that need root and real namespaces, shared by this
/// crate's tests and the switch's `port` tests (feature `test-support`,
/// never in a release build).
#[cfg(any(test, feature = "test-support"))]
pub mod test_support {
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicU32, Ordering};

    pub use crate::testing::have_root;

    /// A unique name `pswt-<tag>-<pid>-<n>` for this run.
    pub fn unique_name(tag: &str) -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        format!("pswt-{tag}-{}-{n}", std::process::id())
    }

    /// A short (<= 15 bytes) unique link name `pswt<pid><n>`.
    pub fn unique_link_name() -> String {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 100;
        format!("pswt{}{n}", std::process::id() % 10_000_000)
    }

    /// A named namespace deleted on drop, also when the test panics.
    pub struct TestNetns {
        name: String,
        path: PathBuf,
    }

    impl TestNetns {
        pub fn new(tag: &str) -> Self {
            let name = unique_name(tag);
            let path = super::create(&name).expect("create test netns");
            Self { name, path }
        }

        pub fn name(&self) -> &str {
            &self.name
        }

        pub fn path(&self) -> &Path {
            &self.path
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            if let Err(e) = super::delete(&self.name) {
                eprintln!("cleanup of {}: {e}", self.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{have_root, TestNetns};
    use super::*;

    #[test]
    fn invalid_names_are_rejected() {
        for name in ["", ".", "..", "a/b", "nul\0", &"x".repeat(256)] {
            assert!(matches!(create(name), Err(NetnsError::InvalidName { .. })));
            assert!(matches!(delete(name), Err(NetnsError::InvalidName { .. })));
            assert!(!exists(name));
        }
    }

    #[test]
    fn path_is_under_run_dir() {
        assert_eq!(path("pod1"), PathBuf::from("/run/netns/pod1"));
    }

    #[test]
    fn open_missing_names_the_path() {
        let err = open(Path::new("/run/netns/pswt-does-not-exist")).unwrap_err();
        assert!(err.to_string().contains("pswt-does-not-exist"), "{err}");
    }

    #[test]
    fn create_enter_run_in_delete() {
        if !have_root("create_enter_run_in_delete") {
            return;
        }
        let ns = TestNetns::new("ns");
        assert!(exists(ns.name()));
        assert!(list_with_prefix(ns.name()).contains(&ns.name().to_owned()));
        assert!(matches!(
            create(ns.name()),
            Err(NetnsError::AlreadyExists { .. })
        ));

        let own = fs::metadata(THREAD_SELF_NETNS).unwrap().ino();
        let target = fs::metadata(ns.path()).unwrap().ino();
        assert_ne!(own, target);

        // run_in: the closure sees the namespace, the caller does not move.
        let seen = run_in(ns.path(), || fs::metadata(THREAD_SELF_NETNS).unwrap().ino()).unwrap();
        assert_eq!(seen, target);
        assert_eq!(fs::metadata(THREAD_SELF_NETNS).unwrap().ino(), own);

        // enter: this thread moves, and the guard moves it back.
        {
            let _guard = enter(ns.path()).unwrap();
            assert_eq!(fs::metadata(THREAD_SELF_NETNS).unwrap().ino(), target);
        }
        assert_eq!(fs::metadata(THREAD_SELF_NETNS).unwrap().ino(), own);
        enter(ns.path()).unwrap().restore().unwrap();
        assert_eq!(fs::metadata(THREAD_SELF_NETNS).unwrap().ino(), own);

        // No process lives in a fresh namespace; ours does live in our own.
        assert!(pids_in(ns.path()).is_empty());
        assert!(pids_in(Path::new("/proc/self/ns/net")).contains(&(std::process::id() as i32)));

        let name = ns.name().to_owned();
        drop(ns);
        assert!(!exists(&name));
        delete(&name).expect("deleting an absent namespace is fine");
    }
}
