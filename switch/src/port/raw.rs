//! AF_PACKET raw sockets bound to one interface, for test tools that must
//! write arbitrary (including malformed) Ethernet frames and read what
//! arrives, below the kernel's IP stack. The switch's datapath never uses
//! them; `podswitch tool inject-malformed` and the lab's tests do.
//!
//! Binding a packet socket to an interface index (`sockaddr_ll`), enabling
//! `PACKET_VNET_HDR` and reading an interface's MTU (`SIOCGIFMTU`) have no
//! safe wrapper in nix or socket2, so this module calls libc directly and
//! allows `unsafe_code` (denied everywhere else in the crate). Each unsafe
//! block is one syscall on a descriptor this module owns, with pointers to
//! properly sized local structs; socket creation, send and receive go
//! through nix's safe wrappers.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, LinkAddr, MsgFlags, SockFlag, SockType, SockaddrLike};
use nix::sys::time::TimeVal;

/// Size of `struct virtio_net_hdr` (without `num_buffers`), the prefix of
/// every frame on a socket made by [`RawSocket::bind_with_vnet_hdr`].
pub const VNET_HDR_LEN: usize = 10;

/// An AF_PACKET `SOCK_RAW` socket bound to one interface for all
/// ethertypes, in the network namespace of the thread that created it.
#[derive(Debug)]
pub struct RawSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSocket {
    /// Opens a packet socket on `ifname` (in the calling thread's network
    /// namespace). Frames sent are written to the interface as they are;
    /// [`RawSocket::recv`] returns frames arriving on it.
    pub fn bind(ifname: &str) -> io::Result<Self> {
        Self::open(ifname, false)
    }

    /// Like [`RawSocket::bind`], with `PACKET_VNET_HDR` enabled: every frame
    /// sent must start with a [`VNET_HDR_LEN`]-byte `struct virtio_net_hdr`
    /// (the kernel then applies its checksum and GSO requests, or rejects
    /// the write with `EINVAL`), and every frame received starts with one.
    pub fn bind_with_vnet_hdr(ifname: &str) -> io::Result<Self> {
        Self::open(ifname, true)
    }

    fn open(ifname: &str, vnet_hdr: bool) -> io::Result<Self> {
        let with_name = |e: io::Error, what: &str| {
            io::Error::new(e.kind(), format!("{what} on interface {ifname:?}: {e}"))
        };
        let ifindex = nix::net::if_::if_nametoindex(ifname)
            .map_err(|e| with_name(e.into(), "looking up interface"))?;
        let ifindex = i32::try_from(ifindex)
            .map_err(|_| with_name(io::ErrorKind::InvalidData.into(), "interface index"))?;
        // Protocol 0: the socket receives nothing until bind() sets ETH_P_ALL
        // for this one interface, so no frame from another interface can be
        // queued in between (packet(7)).
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| with_name(e.into(), "creating AF_PACKET socket"))?;
        if vnet_hdr {
            let one: libc::c_int = 1;
            // SAFETY: `fd` is an open socket we own; `one` is a live c_int
            // and the length passed is its size.
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_PACKET,
                    libc::PACKET_VNET_HDR,
                    (&one as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(with_name(
                    io::Error::last_os_error(),
                    "enabling PACKET_VNET_HDR",
                ));
            }
        }
        // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: `fd` is an open AF_PACKET socket we own; `sll` is a live,
        // initialised sockaddr_ll and the length passed is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(with_name(
                io::Error::last_os_error(),
                "binding AF_PACKET socket",
            ));
        }
        Ok(RawSocket { fd, ifindex })
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> i32 {
        self.ifindex
    }

    /// The bound interface's MTU (`SIOCGIFMTU`), the largest L3 packet the
    /// kernel accepts on a plain (non-GSO) send.
    pub fn mtu(&self) -> io::Result<u32> {
        let name = nix::net::if_::if_indextoname(self.ifindex as libc::c_uint)?;
        let bytes = name.as_bytes_with_nul();
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        if bytes.len() > req.ifr_name.len() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        // SAFETY: SIOCGIFMTU reads ifr_name and writes ifr_ifru.ifru_mtu of
        // the live, NUL-terminated ifreq we pass; `fd` is a socket we own.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::SIOCGIFMTU as _,
                &mut req as *mut libc::ifreq,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel filled the ifru_mtu member of the union.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        u32::try_from(mtu).map_err(|_| io::ErrorKind::InvalidData.into())
    }

    /// Writes one frame (preceded by its virtio_net_hdr on a vnet-hdr
    /// socket). Returns the bytes written; the kernel's verdict on a
    /// malformed frame (`EINVAL`, `EMSGSIZE`, ...) comes back as the error.
    pub fn send(&self, frame: &[u8]) -> io::Result<usize> {
        loop {
            match socket::send(self.fd.as_raw_fd(), frame, MsgFlags::empty()) {
                Err(Errno::EINTR) => continue,
                other => return other.map_err(io::Error::from),
            }
        }
    }

    /// Waits up to `timeout` for a frame arriving on the interface and
    /// copies it into `buf` (truncated to `buf.len()`). Frames this host
    /// sends out of the interface are skipped. Returns `Ok(None)` on
    /// timeout; a zero timeout only polls.
    pub fn recv(&self, buf: &mut [u8], timeout: Duration) -> io::Result<Option<usize>> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let flags = if remaining.is_zero() {
                MsgFlags::MSG_DONTWAIT
            } else {
                // SO_RCVTIMEO of zero means "forever", hence the poll above;
                // round sub-microsecond remainders up.
                let tv = TimeVal::new(
                    remaining.as_secs() as _,
                    remaining.subsec_micros().max(1) as _,
                );
                socket::setsockopt(&self.fd, socket::sockopt::ReceiveTimeout, &tv)?;
                MsgFlags::empty()
            };
            match recv_link(self.fd.as_fd(), buf, flags) {
                Ok((n, pkttype)) => {
                    if pkttype == Some(libc::PACKET_OUTGOING) {
                        if remaining.is_zero() {
                            return Ok(None);
                        }
                        continue;
                    }
                    return Ok(Some(n));
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl AsFd for RawSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One `recvfrom`, returning the length and the `sll_pkttype`.
fn recv_link(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> nix::Result<(usize, Option<u8>)> {
    // nix's recvfrom has no flags argument; recvmsg does.
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = socket::recvmsg::<LinkAddr>(fd.as_raw_fd(), &mut iov, None, flags)?;
    let pkttype = msg
        .address
        .as_ref()
        .filter(|a| a.len() > 0)
        .map(LinkAddr::pkttype);
    Ok((msg.bytes, pkttype))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A network namespace holding a veth pair `va` <-> `vb`, removed on drop.
    struct VethNetns {
        name: String,
    }

    impl VethNetns {
        fn create(tag: &str) -> Option<Self> {
            let name = format!("pswt-{}-{tag}", std::process::id());
            let ip = |args: &[&str]| {
                Command::new("ip")
                    .args(args)
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if !ip(&["netns", "add", &name]) {
                return None;
            }
            let ns = VethNetns { name };
            let n = ns.name.as_str();
            let ok = ip(&[
                "-n", n, "link", "add", "name", "va", "type", "veth", "peer", "name", "vb",
            ]) && ip(&["-n", n, "link", "set", "va", "up"])
                && ip(&["-n", n, "link", "set", "vb", "up"]);
            ok.then_some(ns)
        }

        /// Runs `f` on a thread that has entered the namespace.
        fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            let path = format!("/run/netns/{}", self.name);
            std::thread::scope(|s| {
                s.spawn(|| {
                    let file = std::fs::File::open(&path).expect("open netns");
                    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                    f()
                })
                .join()
                .expect("netns thread")
            })
        }
    }

    impl Drop for VethNetns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .status();
        }
    }

    fn privileged() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn unknown_interface_is_a_named_error() {
        let err = RawSocket::bind("pswt-no-such-if").unwrap_err();
        assert!(err.to_string().contains("pswt-no-such-if"), "{err}");
    }

    #[test]
    fn frames_cross_a_veth_pair() {
        if !privileged() {
            eprintln!("skipping: needs root");
            return;
        }
        let Some(ns) = VethNetns::create("raw") else {
            panic!("could not create test namespace (root but no netns support?)");
        };
        ns.run(|| {
            let a = RawSocket::bind("va").unwrap();
            let b = RawSocket::bind("vb").unwrap();
            assert!(a.mtu().unwrap() >= 1280);
            let mut frame = vec![0u8; 60];
            frame[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
            frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
            frame[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental
            frame[14..20].copy_from_slice(b"pswt!!");
            assert_eq!(a.send(&frame).unwrap(), 60);
            // a's own outgoing copy is skipped: a sees nothing.
            let mut buf = [0u8; 2048];
            let deadline = Instant::now() + Duration::from_secs(2);
            let got = loop {
                let n = b.recv(&mut buf, Duration::from_millis(500)).unwrap();
                match n {
                    Some(n) if buf[12..14] == [0x88, 0xb5] => break Some(n),
                    Some(_) if Instant::now() < deadline => continue, // IPv6 ND noise
                    other => break other,
                }
            };
            assert_eq!(got, Some(60));
            assert_eq!(&buf[14..20], b"pswt!!");
            assert_eq!(
                a.recv(&mut buf, Duration::ZERO)
                    .unwrap()
                    .filter(|_| buf[12..14] == [0x88, 0xb5]),
                None
            );

            // vnet-hdr socket: a zero header plus the frame is accepted.
            let v = RawSocket::bind_with_vnet_hdr("va").unwrap();
            let mut with_hdr = vec![0u8; VNET_HDR_LEN];
            with_hdr.extend_from_slice(&frame);
            assert_eq!(v.send(&with_hdr).unwrap(), with_hdr.len());
        });
    }
}
