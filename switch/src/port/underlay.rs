//! The node's VXLAN UDP socket (RFC 7348 §5, port 4789), in the node's
//! network namespace and through the kernel's stack, with UDP GSO and GRO.
//!
//! Send: the overlay path segments a pod's TSO superframe into VXLAN
//! datagrams of equal size back to back in one buffer (`wire::segment`);
//! [`UnderlaySocket::send_gso`] hands them to the kernel in one `sendmsg`
//! with a `UDP_SEGMENT` control message (Linux >= 4.18), which the kernel
//! (or the NIC) cuts into datagrams. Receive: with the `UDP_GRO` socket
//! option (Linux >= 5.0) one `recvmsg` may return several datagrams of one
//! flow coalesced, with their size in a `UDP_GRO` control message; callers
//! split them at that size.
//!
//! One socket per worker, all bound to the same address with `SO_REUSEPORT`,
//! so the kernel spreads the remote nodes' flows (whose source ports come
//! from the inner flow hash) over the workers. Everything goes through
//! nix's safe wrappers: this module has no `unsafe`.
//!
//! Limits of `UDP_SEGMENT` (`net/ipv4/udp.c: udp_send_skb`): at most
//! [`MAX_GSO_SEGMENTS`] segments and 64 KiB per call (larger buffers are
//! sent in several calls), and every segment plus its IPv4/UDP headers must
//! fit the route's MTU (the overlay MTU guarantees that), or the kernel
//! returns EINVAL.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockProtocol, SockType, SockaddrIn,
};

/// Most segments one `UDP_SEGMENT` send may carry (`UDP_MAX_SEGMENTS`: 64
/// before Linux 6.11 raised it to 128; we stay with the older limit).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// Largest UDP payload over IPv4: 65535 - 20 (IPv4) - 8 (UDP).
pub const MAX_UDP_PAYLOAD: usize = 65_507;

/// Socket receive and send buffer size asked for (bytes).
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// A non-blocking UDP socket on the underlay with GSO/GRO where the kernel
/// has them.
#[derive(Debug)]
pub struct UnderlaySocket {
    socket: UdpSocket,
    local: SocketAddrV4,
    gro: bool,
    /// Cleared for good when the kernel refuses a GSO send (EIO: the route's
    /// device cannot checksum; EINVAL: no support), as quinn-udp does.
    gso: AtomicBool,
}

/// A cmsg buffer aligned for `struct cmsghdr`, on the stack, so receiving
/// allocates nothing (room for one `UDP_GRO` int and then some).
#[repr(C, align(8))]
struct CmsgBuf([u8; 64]);

fn nix_err(op: &str, e: Errno) -> io::Error {
    let e = io::Error::from(e);
    io::Error::new(e.kind(), format!("{op}: {e}"))
}

impl UnderlaySocket {
    /// Binds a non-blocking UDP socket to `addr` in the calling thread's
    /// network namespace; with `reuse_port`, `SO_REUSEPORT` first, so every
    /// worker can bind its own. Enables `UDP_GRO` if the kernel has it
    /// ([`Self::gro_enabled`] tells) and probes for `UDP_SEGMENT`.
    ///
    /// # Errors
    /// Socket creation, `SO_REUSEPORT` or bind failures, with the address.
    pub fn bind(addr: SocketAddrV4, reuse_port: bool) -> io::Result<Self> {
        let fd = socket::socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            SockProtocol::Udp,
        )
        .map_err(|e| nix_err("create UDP socket", e))?;
        if reuse_port {
            socket::setsockopt(&fd, sockopt::ReusePort, &true)
                .map_err(|e| nix_err(&format!("SO_REUSEPORT for {addr}"), e))?;
        }
        socket::bind(fd.as_raw_fd(), &SockaddrIn::from(addr))
            .map_err(|e| nix_err(&format!("bind UDP {addr}"), e))?;
        // Both are best effort: an old kernel (ENOPROTOOPT) gets plain
        // datagrams.
        let gro = socket::setsockopt(&fd, sockopt::UdpGroSegment, &true).is_ok();
        // Room for bursts: a single 64 KiB superframe becomes ~45 datagrams
        // at once, and the default ~208 KiB buffers overflow (drops, then
        // TCP retransmissions) at multi-Gbit/s. The *Force variants need
        // CAP_NET_ADMIN (the switch has it); fall back to the capped ones.
        if socket::setsockopt(&fd, sockopt::RcvBufForce, &SOCKET_BUFFER).is_err() {
            let _ = socket::setsockopt(&fd, sockopt::RcvBuf, &SOCKET_BUFFER);
        }
        if socket::setsockopt(&fd, sockopt::SndBufForce, &SOCKET_BUFFER).is_err() {
            let _ = socket::setsockopt(&fd, sockopt::SndBuf, &SOCKET_BUFFER);
        }
        let gso = socket::getsockopt(&fd, sockopt::UdpGsoSegment).is_ok();
        let socket = UdpSocket::from(fd);
        let local = match socket.local_addr()? {
            std::net::SocketAddr::V4(a) => a,
            std::net::SocketAddr::V6(_) => addr,
        };
        Ok(Self {
            socket,
            local,
            gro,
            gso: AtomicBool::new(gso),
        })
    }

    /// The bound address (with the kernel's port if `bind` asked for 0).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// Whether `UDP_GRO` is on: receives may return coalesced datagrams.
    pub fn gro_enabled(&self) -> bool {
        self.gro
    }

    /// Whether sends still use `UDP_SEGMENT` (false after the kernel
    /// refused it once, or if it never had it).
    pub fn gso_enabled(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Sends `buf`, datagrams of `segment_len` bytes back to back (the last
    /// may be shorter), to `dst`: one `sendmsg` with `UDP_SEGMENT` per up to
    /// [`MAX_GSO_SEGMENTS`] segments / 64 KiB, or one `send_to` per datagram
    /// without GSO. If the kernel refuses GSO (EIO or EINVAL), the
    /// datagrams are sent one by one and GSO stays off for this socket.
    ///
    /// Returns the bytes sent; fewer than `buf.len()` when a later call
    /// failed after earlier ones went out (UDP sends are all or nothing, so
    /// the count is always at a datagram boundary).
    ///
    /// # Errors
    /// `InvalidInput` if `segment_len` is 0 or above [`MAX_UDP_PAYLOAD`];
    /// the kernel's error (`WouldBlock` when the socket buffer is full) if
    /// nothing was sent.
    pub fn send_gso(&self, buf: &[u8], segment_len: usize, dst: SocketAddrV4) -> io::Result<usize> {
        if segment_len == 0 || segment_len > MAX_UDP_PAYLOAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("UDP segment size {segment_len} not in 1..={MAX_UDP_PAYLOAD}"),
            ));
        }
        let per_call = (MAX_UDP_PAYLOAD / segment_len).min(MAX_GSO_SEGMENTS) * segment_len;
        let addr = SockaddrIn::from(dst);
        let mut sent = 0;
        while sent < buf.len() {
            let result = if buf.len() - sent <= segment_len {
                self.send_one(&buf[sent..], dst)
            } else if self.gso_enabled() {
                let chunk = &buf[sent..buf.len().min(sent + per_call)];
                match self.sendmsg_gso(chunk, segment_len, &addr) {
                    Err(e @ (Errno::EIO | Errno::EINVAL)) => {
                        tracing::warn!(
                            local = %self.local, %dst, segment_len, error = %e,
                            "UDP GSO refused; sending datagrams one by one from now on"
                        );
                        self.gso.store(false, Ordering::Relaxed);
                        continue;
                    }
                    r => r.map_err(|e| nix_err(&format!("sendmsg UDP_SEGMENT to {dst}"), e)),
                }
            } else {
                self.send_one(&buf[sent..buf.len().min(sent + segment_len)], dst)
            };
            match result {
                Ok(n) => sent += n,
                Err(_) if sent > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(sent)
    }

    fn sendmsg_gso(
        &self,
        chunk: &[u8],
        segment_len: usize,
        addr: &SockaddrIn,
    ) -> Result<usize, Errno> {
        // segment_len <= MAX_UDP_PAYLOAD, checked by the caller.
        let size = segment_len as u16;
        // nix's sendmsg allocates the cmsg buffer (a few bytes) per call: one
        // per up to 64 datagrams.
        socket::sendmsg(
            self.socket.as_raw_fd(),
            &[IoSlice::new(chunk)],
            &[ControlMessage::UdpGsoSegments(&size)],
            MsgFlags::empty(),
            Some(addr),
        )
    }

    fn send_one(&self, datagram: &[u8], dst: SocketAddrV4) -> io::Result<usize> {
        self.socket.send_to(datagram, dst)
    }

    /// Receives one datagram, or with GRO several coalesced ones, into
    /// `buf`: `Some((len, segment_size, source))`, where `segment_size`
    /// is the size of every datagram but the last (`len` when not
    /// coalesced); `None` when nothing is waiting.
    ///
    /// # Errors
    /// `InvalidInput` if `buf` was too small for what arrived (the data is
    /// lost: give it [`MAX_UDP_PAYLOAD`] bytes at least); the kernel's error
    /// otherwise.
    pub fn recv_gro(&self, buf: &mut [u8]) -> io::Result<Option<(usize, usize, SocketAddrV4)>> {
        let mut cmsg = CmsgBuf([0; 64]);
        let buf_len = buf.len();
        let mut iov = [IoSliceMut::new(buf)];
        let msg = match socket::recvmsg::<SockaddrIn>(
            self.socket.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg.0),
            MsgFlags::empty(),
        ) {
            Ok(m) => m,
            Err(Errno::EAGAIN) => return Ok(None),
            Err(e) => return Err(nix_err(&format!("recvmsg on {}", self.local), e)),
        };
        if msg.flags.contains(MsgFlags::MSG_TRUNC) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "datagram on {} truncated to the {buf_len}-byte buffer",
                    self.local
                ),
            ));
        }
        let len = msg.bytes;
        let mut segment = len;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                if let ControlMessageOwned::UdpGroSegments(size) = c {
                    if let Ok(size) = usize::try_from(size) {
                        if size > 0 {
                            segment = size.min(len);
                        }
                    }
                }
            }
        }
        let from = msg.address.map_or(
            SocketAddrV4::new([0, 0, 0, 0].into(), 0),
            SocketAddrV4::from,
        );
        Ok(Some((len, segment, from)))
    }
}

impl AsFd for UnderlaySocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl AsRawFd for UnderlaySocket {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port::netlink::Netlink;
    use crate::port::netns::{
        self,
        test_support::{have_root, TestNetns},
    };
    use std::time::{Duration, Instant};

    fn localhost(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new([127, 0, 0, 1].into(), port)
    }

    /// Datagrams `n` × `seg` (the last `last` bytes), each filled with its index.
    fn batch(n: usize, seg: usize, last: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            let len = if i + 1 == n { last } else { seg };
            v.extend((0..len).map(|j| (i as u8).wrapping_mul(31) ^ (j as u8)));
        }
        v
    }

    /// Receives until `want` bytes arrived (or 2 s passed); returns the
    /// datagrams, split at the GRO segment size, and how many `recvmsg`
    /// calls returned data.
    fn receive(rx: &UnderlaySocket, want: usize, from: SocketAddrV4) -> (Vec<Vec<u8>>, usize) {
        let mut buf = vec![0u8; 65_536];
        let (mut got, mut calls, mut bytes) = (Vec::new(), 0, 0);
        let deadline = Instant::now() + Duration::from_secs(2);
        while bytes < want && Instant::now() < deadline {
            match rx.recv_gro(&mut buf).unwrap() {
                Some((len, seg, src)) => {
                    assert_eq!(src, from);
                    calls += 1;
                    bytes += len;
                    got.extend(buf[..len].chunks(seg).map(<[u8]>::to_vec));
                }
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        (got, calls)
    }

    fn in_fresh_netns<T: Send + 'static>(tag: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = TestNetns::new(tag);
        Netlink::in_netns(ns.path()).unwrap().set_lo_up().unwrap();
        netns::run_in(ns.path(), f).unwrap()
    }

    #[test]
    fn gso_send_gro_receive_on_loopback() {
        if !have_root("gso_send_gro_receive_on_loopback") {
            return;
        }
        let (gso, gro, got, calls, datagrams) = in_fresh_netns("udpgso", || {
            let rx = UnderlaySocket::bind(localhost(0), false).unwrap();
            let tx = UnderlaySocket::bind(localhost(0), false).unwrap();
            let data = batch(4, 1000, 700);
            let sent = tx.send_gso(&data, 1000, rx.local_addr()).unwrap();
            assert_eq!(sent, data.len());
            let (got, calls) = receive(&rx, data.len(), tx.local_addr());
            let datagrams: Vec<Vec<u8>> = data.chunks(1000).map(<[u8]>::to_vec).collect();
            (tx.gso_enabled(), rx.gro_enabled(), got, calls, datagrams)
        });
        eprintln!("loopback: gso {gso}, gro {gro}, 4 datagrams in {calls} recvmsg call(s)");
        assert_eq!(got, datagrams);
        assert!(gso && gro, "this kernel has UDP_SEGMENT and UDP_GRO");
    }

    #[test]
    fn large_batches_are_sent_in_several_gso_calls() {
        if !have_root("large_batches_are_sent_in_several_gso_calls") {
            return;
        }
        // 50 VXLAN-sized datagrams: 76 KB, more than one UDP_SEGMENT send.
        let (got, datagrams) = in_fresh_netns("udpgso", || {
            let rx = UnderlaySocket::bind(localhost(0), false).unwrap();
            let tx = UnderlaySocket::bind(localhost(0), false).unwrap();
            let data = batch(50, 1522, 100);
            assert_eq!(
                tx.send_gso(&data, 1522, rx.local_addr()).unwrap(),
                data.len()
            );
            assert!(tx.gso_enabled());
            let (got, _) = receive(&rx, data.len(), tx.local_addr());
            (
                got,
                data.chunks(1522).map(<[u8]>::to_vec).collect::<Vec<_>>(),
            )
        });
        assert_eq!(got, datagrams);
    }

    #[test]
    fn without_gso_datagrams_go_one_by_one() {
        if !have_root("without_gso_datagrams_go_one_by_one") {
            return;
        }
        let (got, calls, datagrams) = in_fresh_netns("udpgso", || {
            let rx = UnderlaySocket::bind(localhost(0), false).unwrap();
            let tx = UnderlaySocket::bind(localhost(0), false).unwrap();
            tx.gso.store(false, Ordering::Relaxed);
            let data = batch(3, 500, 20);
            assert_eq!(
                tx.send_gso(&data, 500, rx.local_addr()).unwrap(),
                data.len()
            );
            let (got, calls) = receive(&rx, data.len(), tx.local_addr());
            (
                got,
                calls,
                data.chunks(500).map(<[u8]>::to_vec).collect::<Vec<_>>(),
            )
        });
        assert_eq!(got, datagrams);
        // Separate sends of different sizes cannot all have been coalesced.
        assert!(calls >= 2, "{calls}");
    }

    #[test]
    fn reuse_port_binds_twice_and_bad_sizes_are_errors() {
        if !have_root("reuse_port_binds_twice_and_bad_sizes_are_errors") {
            return;
        }
        in_fresh_netns("udpgso", || {
            let a = UnderlaySocket::bind(localhost(0), true).unwrap();
            let b = UnderlaySocket::bind(a.local_addr(), true).unwrap();
            assert_eq!(a.local_addr(), b.local_addr());
            assert!(UnderlaySocket::bind(a.local_addr(), false).is_err());
            for size in [0, MAX_UDP_PAYLOAD + 1] {
                let e = a.send_gso(&[0; 10], size, b.local_addr()).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            }
            assert_eq!(a.recv_gro(&mut [0u8; 100]).unwrap(), None);
            // A receive buffer too small for the datagram is the caller's error.
            let c = UnderlaySocket::bind(localhost(0), false).unwrap();
            a.send_gso(&[7; 200], 200, c.local_addr()).unwrap();
            std::thread::sleep(Duration::from_millis(10));
            let e = c.recv_gro(&mut [0u8; 100]).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        });
    }
}
