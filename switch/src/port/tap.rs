//! Pod ports: multi-queue TAP devices that carry a virtio_net_hdr in front
//! of every frame, so the kernel can hand the switch TSO/USO superframes and
//! frames with checksums still to be filled in.
//!
//! This is the only home of TUN ioctls in podswitch. They have no safe
//! wrapper anywhere (`nix` has no TUN support and the tap crates lack
//! vnet_hdr or multi-queue, see DEPENDENCIES.md), so this module allows
//! `unsafe_code` for the `libc::ioctl` calls alone; every block says why it
//! is sound. Reads and writes go through `nix`'s safe wrappers.
//!
//! A queue is one open `/dev/net/tun` file attached to the device. Each queue
//! is read until `EAGAIN` by one worker; the kernel spreads the pod's flows
//! over the queues. Queue descriptors keep working when the link is moved to
//! another namespace and renamed (as the pod's `eth0`), which lets the switch
//! create the tap in the node namespace and hand the link to the pod.
//!
//! Every frame read or written starts with a [`VNET_HDR_LEN`]-byte
//! `struct virtio_net_hdr_mrg_rxbuf` (virtio spec 1.2 §5.1.6), little-endian.
//! On read the kernel fills the first 10 bytes (`struct virtio_net_hdr`) and
//! leaves `num_buffers` (bytes 10..12) as it was in the buffer.

#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use libc::{c_int, c_short, c_ulong};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::netns::{self, NetnsError};

/// Bytes of virtio_net_hdr in front of every frame: `struct
/// virtio_net_hdr_mrg_rxbuf`, set on the device with `TUNSETVNETHDRSZ`.
pub const VNET_HDR_LEN: usize = 12;

/// A read buffer this long holds any frame the tap can deliver: the vnet
/// header, an Ethernet header with one VLAN tag and a 64 KiB GSO superframe.
pub const MAX_READ_LEN: usize = VNET_HDR_LEN + 14 + 4 + 65_535;

/// Offloads every kernel with multi-queue vnet_hdr taps accepts: checksum
/// offload and TCP segmentation (with ECN) for IPv4 and IPv6.
pub const TAP_OFFLOADS_BASE: u32 =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Offload flags passed to `TUNSETOFFLOAD`: checksum and TCP segmentation.
///
/// UDP segmentation (`TUN_F_USO4|TUN_F_USO6`, Linux >= 6.2, see
/// [`TAP_OFFLOADS_USO`]) works on this kernel, but the overlay path can
/// segment only TCP superframes so far, so it is not advertised: a pod's
/// `UDP_SEGMENT` sends are segmented by its own kernel.
pub const TAP_OFFLOADS: u32 = TAP_OFFLOADS_BASE;

/// [`TAP_OFFLOADS_BASE`] plus UDP segmentation offload (Linux >= 6.2; older
/// kernels refuse it with `EINVAL`).
pub const TAP_OFFLOADS_USO: u32 = TAP_OFFLOADS_BASE | libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// Most queues a multi-queue tap can have (the kernel's `MAX_TAP_QUEUES`).
pub const MAX_QUEUES: usize = 256;

/// The TUN/TAP clone device.
const TUN_DEVICE: &str = "/dev/net/tun";

/// Longest interface name (IFNAMSIZ - 1, room for the NUL).
const IFNAME_MAX: usize = libc::IFNAMSIZ - 1;

/// Flags for `TUNSETIFF`: an Ethernet tap, no packet-info prefix, a
/// virtio_net_hdr prefix, one file per queue.
const TAP_FLAGS: c_int =
    libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_MULTI_QUEUE;

/// Why a tap operation failed. Every variant names the device.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long or has characters the kernel refuses.
    #[error("invalid tap name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The queue count is 0 or more than [`MAX_QUEUES`].
    #[error("tap {name}: invalid queue count {queues} (1..={MAX_QUEUES})")]
    InvalidQueueCount {
        /// The device.
        name: String,
        /// The rejected count.
        queues: usize,
    },
    /// `/dev/net/tun` could not be opened (no tun module, or no access).
    #[error("tap {name}: cannot open {TUN_DEVICE}")]
    OpenTun {
        /// The device.
        name: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A TUN ioctl failed.
    #[error("tap {name}: ioctl {ioctl} failed")]
    Ioctl {
        /// The device.
        name: String,
        /// The ioctl (`TUNSETIFF`, `TUNSETOFFLOAD`, ...).
        ioctl: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// There is no device with this name in the namespace.
    #[error("tap {name}: no such device in netns {}", netns.display())]
    NoSuchDevice {
        /// The device.
        name: String,
        /// The namespace searched.
        netns: PathBuf,
    },
    /// The device exists but is not a multi-queue tap (a veth, a
    /// single-queue tap, a tun), so `TUNSETIFF` refused to attach.
    #[error("tap {name} in netns {}: exists but is not a multi-queue tap", netns.display())]
    NotMultiQueueTap {
        /// The device.
        name: String,
        /// The namespace.
        netns: PathBuf,
        /// The kernel's answer (`EINVAL`).
        #[source]
        source: io::Error,
    },
    /// Looking the device up by name failed for another reason.
    #[error("tap {name}: cannot look it up in netns {}", netns.display())]
    Lookup {
        /// The device.
        name: String,
        /// The namespace.
        netns: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The device was deleted or replaced while the queues were attaching.
    #[error("tap {name} in netns {}: device changed while attaching (index {before} -> {after:?})", netns.display())]
    Replaced {
        /// The device.
        name: String,
        /// The namespace.
        netns: PathBuf,
        /// Its index before attaching.
        before: u32,
        /// Its index after attaching, if it still exists.
        after: Option<u32>,
    },
    /// The namespace could not be entered.
    #[error("tap {name}: cannot attach in another namespace")]
    Netns {
        /// The device.
        name: String,
        /// The underlying error.
        #[source]
        source: NetnsError,
    },
}

/// One queue of a multi-queue vnet_hdr tap: a non-blocking `/dev/net/tun`
/// file attached to the device. Closing the last queue of a non-persistent
/// tap deletes the device.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
    name: String,
    offloads: u32,
}

impl TapQueue {
    /// The device's name when the queue was attached. The link may have been
    /// renamed since (e.g. to `eth0` in a pod); the queue keeps working.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `TUN_F_*` offloads the device accepted: [`TAP_OFFLOADS`], or
    /// [`TAP_OFFLOADS_BASE`] on kernels without USO.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// Read one frame, starting with its [`VNET_HDR_LEN`]-byte vnet header.
    /// Non-blocking: `WouldBlock` when the queue is empty. A buffer shorter
    /// than the frame truncates it; use [`MAX_READ_LEN`].
    ///
    /// # Errors
    /// `WouldBlock` when empty; `EINVAL` if `buf` is shorter than the vnet
    /// header; other errnos from `read(2)`.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        nix::unistd::read(&self.fd, buf).map_err(io::Error::from)
    }

    /// Write one frame, starting with its vnet header (zeroed for a plain
    /// frame with complete checksums).
    ///
    /// # Errors
    /// `WouldBlock` if the device cannot take it now; `EINVAL` for a frame
    /// whose vnet header does not match it; `EIO` if the link is down.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        nix::unistd::write(&self.fd, buf).map_err(io::Error::from)
    }

    /// Make the device persistent (it survives when every queue is closed,
    /// and can be re-attached with [`attach_in_netns`]), or not.
    ///
    /// # Errors
    /// [`TapError::Ioctl`] (`TUNSETPERSIST`).
    pub fn set_persist(&self, on: bool) -> Result<(), TapError> {
        ioctl_with_value(
            self.fd.as_fd(),
            &self.name,
            libc::TUNSETPERSIST,
            "TUNSETPERSIST",
            c_ulong::from(on),
        )
    }

    /// The device's current `IFF_*` flags as `TUNGETIFF` reports them
    /// (including `IFF_PERSIST`).
    ///
    /// # Errors
    /// [`TapError::Ioctl`] (`TUNGETIFF`).
    pub fn flags(&self) -> Result<c_int, TapError> {
        let mut req = IfReq::new(&self.name, 0);
        // SAFETY: TUNGETIFF writes a `struct ifreq` through the pointer;
        // `req` is a live, exclusively borrowed repr(C) value of exactly
        // that size, and `self.fd` is an open tun file.
        let rc =
            unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TUNGETIFF, &mut req as *mut IfReq) };
        check(rc, &self.name, "TUNGETIFF")?;
        // The kernel reports the flags as an unsigned short in ifr_flags.
        Ok(c_int::from(req.flags as u16))
    }
}

impl AsFd for TapQueue {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for TapQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Create (or attach to, if a persistent one exists) a tap named `name` in
/// the calling thread's netns with `queues` queues:
/// `IFF_TAP|IFF_NO_PI|IFF_VNET_HDR|IFF_MULTI_QUEUE`, opened
/// `O_NONBLOCK|O_CLOEXEC`, `TUNSETVNETHDRSZ` = [`VNET_HDR_LEN`] and
/// `TUNSETOFFLOAD`([`TAP_OFFLOADS`], falling back to [`TAP_OFFLOADS_BASE`]).
///
/// The device starts down, with a random MAC; configure it with
/// [`super::netlink::Netlink`]. A name with `%d` lets the kernel pick the
/// number; [`TapQueue::name`] has the result.
///
/// # Errors
/// [`TapError::InvalidName`], [`TapError::InvalidQueueCount`],
/// [`TapError::OpenTun`], or the [`TapError::Ioctl`] that failed (`TUNSETIFF`
/// answers `EINVAL` if a non-tap device or a single-queue tap has the name,
/// `EPERM` without CAP_NET_ADMIN).
pub fn open_tap(name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
    validate(name, queues)?;
    open_queues(name, queues)
}

/// Attach `queues` queues to an existing tap called `name` in the namespace
/// at `netns` (e.g. a tap handed to a pod as `eth0`). `/dev/net/tun` is
/// opened on a thread inside `netns`, because the tun file's namespace is
/// where `TUNSETIFF` looks the name up; the queues then work from any
/// thread. The device is checked first, so this never creates one.
///
/// # Errors
/// [`TapError::NoSuchDevice`] if `netns` has no such device,
/// [`TapError::NotMultiQueueTap`] if it is not a multi-queue tap,
/// [`TapError::Netns`] if the namespace cannot be entered, or as
/// [`open_tap`].
pub fn attach_in_netns(netns: &Path, name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
    validate(name, queues)?;
    let (path, owned_name) = (netns.to_owned(), name.to_owned());
    netns::run_in(netns, move || attach_here(&path, &owned_name, queues)).map_err(|source| {
        TapError::Netns {
            name: name.to_owned(),
            source,
        }
    })?
}

/// [`attach_in_netns`], on a thread already inside `netns`.
fn attach_here(netns: &Path, name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
    let lookup = |name: &str| match nix::net::if_::if_nametoindex(name) {
        Ok(index) => Ok(Some(index)),
        Err(Errno::ENODEV) => Ok(None),
        Err(errno) => Err(TapError::Lookup {
            name: name.to_owned(),
            netns: netns.to_owned(),
            source: errno.into(),
        }),
    };
    // TUNSETIFF creates a device when the name is free; look first so an
    // attach never silently makes a new, empty tap.
    let before = lookup(name)?.ok_or_else(|| TapError::NoSuchDevice {
        name: name.to_owned(),
        netns: netns.to_owned(),
    })?;
    let attached = open_queues(name, queues).map_err(|error| match error {
        TapError::Ioctl {
            ioctl: "TUNSETIFF",
            source,
            ..
        } if source.raw_os_error() == Some(libc::EINVAL) => TapError::NotMultiQueueTap {
            name: name.to_owned(),
            netns: netns.to_owned(),
            source,
        },
        other => other,
    })?;
    // Deleted and recreated in between: what we attached to is not the
    // device that was asked for (and, not persistent, goes with our fds).
    let after = lookup(name)?;
    if after != Some(before) {
        return Err(TapError::Replaced {
            name: name.to_owned(),
            netns: netns.to_owned(),
            before,
            after,
        });
    }
    Ok(attached)
}

/// Open and attach `queues` files, then configure the vnet header and
/// offloads (device-wide settings, set once through the first queue).
fn open_queues(name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
    let attached = attach_queues(name, queues, VNET_HDR_LEN)?;
    let Some(first) = attached.first() else {
        return Ok(attached);
    };
    let offloads = match set_offload(first, TAP_OFFLOADS) {
        Ok(()) => TAP_OFFLOADS,
        // Before Linux 6.2 the USO bits are unknown and the whole set fails.
        Err(TapError::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            tracing::debug!(tap = %first.name, "kernel refused USO offload, using TSO/CSUM only");
            set_offload(first, TAP_OFFLOADS_BASE)?;
            TAP_OFFLOADS_BASE
        }
        Err(other) => return Err(other),
    };
    let mut attached = attached;
    for queue in &mut attached {
        queue.offloads = offloads;
    }
    Ok(attached)
}

/// `TUNSETOFFLOAD` flags that ask for UDP-tunnel GSO (Linux >= 6.17); the
/// kernel takes them only with checksum and a plain TSO/USO bit.
pub const TAP_OFFLOADS_UDP_TUNNEL: u32 =
    libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | TUN_F_UDP_TUNNEL_GSO;

/// `TUN_F_UDP_TUNNEL_GSO` (`include/uapi/linux/if_tun.h`, Linux 6.17); not
/// in libc 0.2.191.
pub const TUN_F_UDP_TUNNEL_GSO: u32 = 0x080;

/// Creates (or attaches to) the tap `name` with `queues` queues that the
/// switch writes VXLAN superframes into (UDP-tunnel GSO, see
/// [`crate::pipeline::encap`]): vnet headers of
/// [`vnet_hdr::TUNNEL_LEN`](crate::wire::vnet_hdr::TUNNEL_LEN) bytes.
///
/// # Errors
/// As [`open_tap`]; [`TapError::Ioctl`] with `TUNSETOFFLOAD` and `EINVAL`
/// when the kernel has no UDP-tunnel GSO (before 6.17): the caller keeps
/// segmenting in software.
pub fn open_udp_tunnel_tap(name: &str, queues: usize) -> Result<Vec<TapQueue>, TapError> {
    validate(name, queues)?;
    let mut attached = attach_queues(name, queues, crate::wire::vnet_hdr::TUNNEL_LEN)?;
    if let Some(first) = attached.first() {
        // The write path needs only the 24-byte header; the offload bits
        // are the kernel's way to say it knows the tunnel GSO types.
        set_offload(first, TAP_OFFLOADS_UDP_TUNNEL)?;
    }
    for queue in &mut attached {
        queue.offloads = TAP_OFFLOADS_UDP_TUNNEL;
    }
    Ok(attached)
}

/// Opens `queues` queues of `name` and sets the device's vnet header
/// length (device-wide, through the first queue).
fn attach_queues(
    name: &str,
    queues: usize,
    vnet_hdr_len: usize,
) -> Result<Vec<TapQueue>, TapError> {
    let mut attached: Vec<TapQueue> = Vec::with_capacity(queues);
    for _ in 0..queues {
        // After the first queue use the kernel's name, which resolves `%d`.
        let name = attached.first().map_or(name, |q| q.name.as_str());
        let queue = open_queue(name)?;
        attached.push(queue);
    }
    let Some(first) = attached.first() else {
        return Ok(attached);
    };
    let hdr_len = c_int::try_from(vnet_hdr_len).unwrap_or(c_int::MAX);
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer; `hdr_len`
    // is a live local int, and `first.fd` is an attached tun file.
    let rc = unsafe {
        libc::ioctl(
            first.fd.as_raw_fd(),
            libc::TUNSETVNETHDRSZ,
            &hdr_len as *const c_int,
        )
    };
    check(rc, &first.name, "TUNSETVNETHDRSZ")?;
    Ok(attached)
}

fn set_offload(queue: &TapQueue, offloads: u32) -> Result<(), TapError> {
    ioctl_with_value(
        queue.fd.as_fd(),
        &queue.name,
        libc::TUNSETOFFLOAD,
        "TUNSETOFFLOAD",
        c_ulong::from(offloads),
    )
}

/// Open `/dev/net/tun` and attach it to `name` as one more queue.
fn open_queue(name: &str) -> Result<TapQueue, TapError> {
    let fd = nix::fcntl::open(
        TUN_DEVICE,
        OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|errno| TapError::OpenTun {
        name: name.to_owned(),
        source: errno.into(),
    })?;
    let mut req = IfReq::new(name, TAP_FLAGS);
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` through the
    // pointer; `req` is a live, exclusively borrowed repr(C) value of exactly
    // that size (checked at compile time below), with a NUL-terminated name,
    // and `fd` is an open tun file we own.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    check(rc, name, "TUNSETIFF")?;
    Ok(TapQueue {
        fd,
        name: req.name(),
        offloads: 0,
    })
}

/// `ioctl(fd, request, value)` for the TUN ioctls that take their argument
/// by value.
fn ioctl_with_value(
    fd: BorrowedFd<'_>,
    name: &str,
    request: libc::Ioctl,
    ioctl: &'static str,
    value: c_ulong,
) -> Result<(), TapError> {
    // SAFETY: the callers pass TUNSETPERSIST or TUNSETOFFLOAD, which take an
    // integer by value and dereference no pointer; `fd` is a live descriptor.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), request, value) };
    check(rc, name, ioctl)
}

fn check(rc: c_int, name: &str, ioctl: &'static str) -> Result<(), TapError> {
    if rc < 0 {
        Err(TapError::Ioctl {
            name: name.to_owned(),
            ioctl,
            source: io::Error::last_os_error(),
        })
    } else {
        Ok(())
    }
}

fn validate(name: &str, queues: usize) -> Result<(), TapError> {
    if let Some(reason) = super::netlink::ifname_problem(name) {
        return Err(TapError::InvalidName {
            name: name.to_owned(),
            reason,
        });
    }
    if queues == 0 || queues > MAX_QUEUES {
        return Err(TapError::InvalidQueueCount {
            name: name.to_owned(),
            queues,
        });
    }
    Ok(())
}

/// The part of `struct ifreq` the TUN ioctls use: the name and `ifr_flags`,
/// padded to the full size of the kernel's union so that the kernel's
/// `copy_from_user(sizeof(struct ifreq))` stays inside this value.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: c_short,
    _pad: [u8; size_of::<libc::ifreq>() - libc::IFNAMSIZ - size_of::<c_short>()],
}

// The ioctls copy sizeof(struct ifreq) bytes in and out of `IfReq`.
const _: () = assert!(size_of::<IfReq>() == size_of::<libc::ifreq>());

impl IfReq {
    /// `name` must already be validated (at most IFNAMSIZ - 1 bytes); a
    /// longer one is cut, never overflowed.
    fn new(name: &str, flags: c_int) -> Self {
        let mut req = Self {
            name: [0; libc::IFNAMSIZ],
            // IFF_* flags for TUNSETIFF all fit the kernel's short.
            flags: flags as c_short,
            _pad: [0; size_of::<libc::ifreq>() - libc::IFNAMSIZ - size_of::<c_short>()],
        };
        let len = name.len().min(IFNAME_MAX);
        req.name[..len].copy_from_slice(&name.as_bytes()[..len]);
        req
    }

    fn name(&self) -> String {
        let len = self
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.name.len());
        String::from_utf8_lossy(&self.name[..len]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::netlink::Netlink;
    use crate::port::netns::test_support::{have_root, unique_link_name, TestNetns};
    use std::net::{IpAddr, Ipv4Addr, UdpSocket};
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    const POD_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xf4, 0x01, 0x02];
    const GW_MAC: [u8; 6] = [0x02, 0x00, 0x0a, 0xf4, 0x01, 0x01];
    const POD_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
    const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 1);
    /// virtio spec §5.1.6: `gso_type` values.
    const GSO_NONE: u8 = 0;
    const GSO_UDP_L4: u8 = 5;

    #[test]
    fn invalid_arguments_are_rejected_before_any_syscall() {
        for name in ["", "sixteen-chars-xx", "a/b", "a b", "a:b"] {
            assert!(
                matches!(open_tap(name, 1), Err(TapError::InvalidName { .. })),
                "{name:?}"
            );
        }
        assert!(matches!(
            open_tap("pswt0", 0),
            Err(TapError::InvalidQueueCount { .. })
        ));
        assert!(matches!(
            open_tap("pswt0", MAX_QUEUES + 1),
            Err(TapError::InvalidQueueCount { .. })
        ));
    }

    #[test]
    fn queues_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TapQueue>();
        assert_send_sync::<TapError>();
    }

    #[test]
    fn ifreq_round_trips_the_name() {
        let req = IfReq::new("fifteen-chars-x", TAP_FLAGS);
        assert_eq!(req.name(), "fifteen-chars-x");
        assert_eq!(*req.name.last().unwrap(), 0, "always NUL-terminated");
    }

    /// Reads every queue until `matches` accepts a frame (returned without
    /// the vnet header along with it) or `deadline` passes.
    fn wait_for_frame(
        queues: &[TapQueue],
        timeout: Duration,
        mut matches: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Option<(Vec<u8>, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; MAX_READ_LEN];
        loop {
            for queue in queues {
                loop {
                    match queue.read(&mut buf) {
                        Ok(n) => {
                            let (hdr, frame) = buf[..n].split_at(VNET_HDR_LEN);
                            if matches(hdr, frame) {
                                return Some((hdr.to_vec(), frame.to_vec()));
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read from {}: {e}", queue.name()),
                    }
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut fds: Vec<libc::pollfd> = queues
                .iter()
                .map(|q| libc::pollfd {
                    fd: q.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            let ms = c_int::try_from(left.as_millis()).unwrap_or(c_int::MAX);
            // SAFETY: `fds` is a live Vec of `fds.len()` initialised pollfd
            // structs, whose descriptors stay open (borrowed from `queues`)
            // for the duration of the call.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            assert!(rc >= 0, "poll tap queues: {}", io::Error::last_os_error());
        }
    }

    fn is_arp_request_for(frame: &[u8], target: Ipv4Addr) -> bool {
        frame.len() >= 42
            && frame[12..14] == [0x08, 0x06]
            && frame[20..22] == [0x00, 0x01]
            && frame[38..42] == target.octets()
    }

    fn is_udp_to(frame: &[u8], dst: Ipv4Addr, port: u16) -> bool {
        frame.len() >= 42
            && frame[12..14] == [0x08, 0x00]
            && frame[23] == 17
            && frame[30..34] == dst.octets()
            && frame[36..38] == port.to_be_bytes()
    }

    /// Send one UDP datagram from the pod, optionally as a UDP_SEGMENT
    /// (GSO) send with `segment`-byte segments.
    fn send_from_pod(pod: &Path, payload_len: usize, segment: Option<u16>) {
        netns::run_in(pod, move || -> io::Result<usize> {
            let socket = UdpSocket::bind((POD_IP, 0))?;
            if let Some(segment) = segment {
                nix::sys::socket::setsockopt(
                    &socket,
                    nix::sys::socket::sockopt::UdpGsoSegment,
                    &c_int::from(segment),
                )?;
            }
            socket.send_to(&vec![0xab; payload_len], (GW_IP, 9))
        })
        .expect("enter pod netns")
        .expect("send from pod");
    }

    fn ipv4_checksum(header: &[u8]) -> u16 {
        let sum: u32 = header
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let folded = (sum & 0xffff) + (sum >> 16);
        !(((folded & 0xffff) + (folded >> 16)) as u16)
    }

    /// A zero vnet header plus an Ethernet/IPv4/UDP frame from the gateway
    /// to the pod (UDP checksum 0: none, allowed for IPv4).
    fn frame_to_pod(dst_port: u16, payload: &[u8]) -> Vec<u8> {
        let udp_len = 8 + payload.len();
        let ip_len = 20 + udp_len;
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend_from_slice(&POD_MAC);
        f.extend_from_slice(&GW_MAC);
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip.extend_from_slice(&GW_IP.octets());
        ip.extend_from_slice(&POD_IP.octets());
        let csum = ipv4_checksum(&ip);
        ip[10..12].copy_from_slice(&csum.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&9u16.to_be_bytes());
        f.extend_from_slice(&dst_port.to_be_bytes());
        f.extend_from_slice(&(udp_len as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    /// ```text
    ///   netns "node"                         netns "pod"
    ///   switch: queue fds 0,1  ----tap---->  eth0 10.244.1.2/32 (created in node, moved)
    ///                                        10.244.1.1 dev eth0 scope link
    ///                                        default via 10.244.1.1
    /// ```
    /// The queues opened in the node keep working after the link moves and
    /// is renamed; a persistent tap survives its fds and can be re-attached
    /// from inside the pod; UDP_SEGMENT sends arrive as one superframe.
    #[test]
    fn tap_moved_into_pod_keeps_queues_and_reattaches() {
        if !have_root("tap_moved_into_pod_keeps_queues_and_reattaches") {
            return;
        }
        let node = TestNetns::new("node");
        let pod = TestNetns::new("pod");
        let tap = unique_link_name();

        let name = tap.clone();
        let queues = netns::run_in(node.path(), move || open_tap(&name, 2))
            .unwrap()
            .unwrap();
        assert_eq!(queues.len(), 2);
        assert_eq!(queues[0].name(), tap);
        eprintln!(
            "offloads accepted: {:#x} (TAP_OFFLOADS {TAP_OFFLOADS:#x})",
            queues[0].offloads()
        );
        queues[0].set_persist(true).unwrap();
        let flags = queues[1].flags().unwrap();
        for flag in [
            libc::IFF_TAP,
            libc::IFF_VNET_HDR,
            libc::IFF_MULTI_QUEUE,
            libc::IFF_PERSIST,
        ] {
            assert_ne!(flags & flag, 0, "flags {flags:#x} lack {flag:#x}");
        }

        // Configure in the node, then hand the link to the pod.
        let nl_node = Netlink::in_netns(node.path()).unwrap();
        assert_eq!(Netlink::current().unwrap().link_index(&tap).unwrap(), None);
        let index = nl_node
            .link_index(&tap)
            .unwrap()
            .expect("tap in node netns");
        nl_node.link_set_mtu(index, 1450).unwrap();
        nl_node.link_set_mac(index, POD_MAC).unwrap();
        nl_node.link_set_up(index).unwrap();
        let pod_fd = netns::open(pod.path()).unwrap();
        nl_node.link_set_netns(index, pod_fd.as_fd()).unwrap();
        assert_eq!(nl_node.link_index(&tap).unwrap(), None);

        let nl_pod = Netlink::in_netns(pod.path()).unwrap();
        let index = nl_pod
            .link_index(&tap)
            .unwrap()
            .expect("tap moved into pod");
        nl_pod.link_set_name(index, "eth0").unwrap();
        assert_eq!(nl_pod.link_index("eth0").unwrap(), Some(index));
        assert_eq!(nl_pod.link_mtu(index).unwrap(), 1450);
        assert_eq!(nl_pod.link_mac(index).unwrap(), POD_MAC);
        nl_pod.set_lo_up().unwrap();
        nl_pod.add_address(index, IpAddr::V4(POD_IP), 32).unwrap();
        nl_pod.link_set_up(index).unwrap();
        nl_pod
            .add_route("10.244.1.1/32".parse().unwrap(), None, Some(index))
            .unwrap();
        nl_pod
            .add_route("0.0.0.0/0".parse().unwrap(), Some(IpAddr::V4(GW_IP)), None)
            .unwrap();

        // 1. The pod resolves its gateway: the ARP request arrives on the
        //    queues opened in the node before the move.
        send_from_pod(pod.path(), 32, None);
        let (hdr, arp) = wait_for_frame(&queues, Duration::from_secs(5), |_, f| {
            is_arp_request_for(f, GW_IP)
        })
        .expect("ARP request for 10.244.1.1 on the moved tap's queues");
        assert_eq!(&arp[0..6], &[0xff; 6]);
        assert_eq!(&arp[6..12], &POD_MAC);
        assert_eq!(&arp[28..32], &POD_IP.octets(), "ARP sender is the pod");
        eprintln!(
            "ARP request: {} bytes after a vnet hdr {:02x?}",
            arp.len(),
            &hdr[..10]
        );

        // 2. Writes reach the pod's stack through the moved device too.
        let receiver = netns::run_in(pod.path(), || -> io::Result<UdpSocket> {
            let socket = UdpSocket::bind((POD_IP, 5555))?;
            socket.set_read_timeout(Some(Duration::from_secs(5)))?;
            Ok(socket)
        })
        .unwrap()
        .unwrap();
        let frame = frame_to_pod(5555, b"to the pod");
        assert_eq!(queues[1].write(&frame).unwrap(), frame.len());
        let mut buf = [0u8; 64];
        let (n, from) = receiver
            .recv_from(&mut buf)
            .expect("pod receives the written frame");
        assert_eq!(&buf[..n], b"to the pod");
        assert_eq!(from.ip(), IpAddr::V4(GW_IP));

        // 3. Persistence: closing every queue keeps the device.
        drop(queues);
        assert_eq!(
            nl_pod.link_index("eth0").unwrap(),
            Some(index),
            "persistent tap survives its fds"
        );

        // 4. Re-attach from inside the pod, by its new name.
        let queues = attach_in_netns(pod.path(), "eth0", 2).unwrap();
        assert_eq!(queues[0].name(), "eth0");
        nl_pod
            .add_neighbour(index, IpAddr::V4(GW_IP), GW_MAC)
            .unwrap();
        // The carrier came back with the re-attach; the pod's kernel
        // re-activates the device's qdisc from linkwatch (up to a second
        // later, more under load) and drops what is sent before. Resend
        // until a frame arrives, within a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (hdr, udp) = loop {
            send_from_pod(pod.path(), 100, None);
            if let Some(found) = wait_for_frame(&queues, Duration::from_millis(250), |_, f| {
                is_udp_to(f, GW_IP, 9)
            }) {
                break found;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no UDP frame on the re-attached queues within 10 s"
            );
        };
        assert_eq!(&udp[0..6], &GW_MAC);
        assert_eq!(hdr[1], GSO_NONE);
        eprintln!(
            "UDP frame: {} bytes, vnet hdr {:02x?}",
            udp.len(),
            &hdr[..10]
        );

        // 5. A UDP_SEGMENT send of 4 x 1000 bytes.
        send_from_pod(pod.path(), 4000, Some(1000));
        let (hdr, gso) = wait_for_frame(&queues, Duration::from_secs(5), |_, f| {
            is_udp_to(f, GW_IP, 9)
        })
        .expect("UDP_SEGMENT frame");
        let gso_size = u16::from_le_bytes([hdr[4], hdr[5]]);
        eprintln!(
            "UDP_SEGMENT send: first frame {} bytes (+{VNET_HDR_LEN} hdr), flags {:#x}, gso_type {}, gso_size {gso_size}",
            gso.len(),
            hdr[0],
            hdr[1],
        );
        if queues[0].offloads() & libc::TUN_F_USO4 != 0 {
            assert_eq!(hdr[1], GSO_UDP_L4, "USO accepted, so one superframe");
            assert_eq!(gso_size, 1000);
            assert_eq!(gso.len() + VNET_HDR_LEN, 12 + 14 + 20 + 8 + 4000);
            assert_eq!(hdr[0] & 1, 1, "VIRTIO_NET_HDR_F_NEEDS_CSUM");
        } else {
            eprintln!("kernel without USO: the stack segmented in software");
        }

        // 6. Attaching to something that is not a multi-queue tap, or to
        //    nothing, fails clearly and creates nothing.
        let err = attach_in_netns(pod.path(), "lo", 1).unwrap_err();
        assert!(matches!(err, TapError::NotMultiQueueTap { .. }), "{err}");
        let err = attach_in_netns(pod.path(), "pswt-none", 1).unwrap_err();
        assert!(matches!(err, TapError::NoSuchDevice { .. }), "{err}");
        assert!(err.to_string().contains("pswt-none"), "{err}");
        assert_eq!(nl_pod.link_index("pswt-none").unwrap(), None);

        queues[0].set_persist(false).unwrap();
        drop(queues);
        assert_eq!(
            nl_pod.link_index("eth0").unwrap(),
            None,
            "non-persistent tap goes with its last fd"
        );
    }
}
