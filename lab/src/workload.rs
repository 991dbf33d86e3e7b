//! The echo workload every lab pod runs in place of its container images.
//!
//! It runs inside the pod's network namespace (the caller has already
//! entered it) and serves each declared port:
//! - TCP: an HTTP/1.1 server answering every request with `200 OK` and one
//!   `text/plain` line saying who answered and whom it saw:
//!   `Host=<host> Path=<path> From=<pod> ClientIP=<ip> ClientPort=<port>`.
//!   That line is what the lab's tests check to prove service load
//!   balancing (`From=`), source NAT or its absence (`ClientIP=`) and
//!   port translation.
//! - UDP: every datagram is echoed back to its sender.
//!
//! Each port listens on `0.0.0.0` and, when the namespace has IPv6, on
//! `[::]` as a separate v6-only socket, so IPv4 clients are never seen as
//! v4-mapped IPv6 addresses.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, Context};
use nix::sys::socket::{self, sockopt, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn6};

/// Threads answering HTTP requests per TCP listener, so one slow client
/// does not stall the others.
const HTTP_WORKERS_PER_LISTENER: usize = 4;

/// Largest UDP payload over IPv4 (65535 - 20 - 8).
const MAX_DATAGRAM: usize = 65_507;

/// Runs the echo workload for `pod_name` on the given ports (on `0.0.0.0`
/// and, if possible, `[::]`) and blocks forever. Returns only if a port
/// cannot be bound or a serving thread dies.
pub fn run_echo(pod_name: &str, tcp_ports: &[u16], udp_ports: &[u16]) -> anyhow::Result<()> {
    EchoWorkload::start(pod_name, tcp_ports, udp_ports)?.wait()
}

/// A started echo workload: its listening addresses and serving threads.
#[derive(Debug)]
pub struct EchoWorkload {
    tcp: Vec<SocketAddr>,
    udp: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoWorkload {
    /// Binds every port on `0.0.0.0` (required) and `[::]` (skipped when the
    /// namespace has no IPv6) and starts serving.
    pub fn start(pod_name: &str, tcp_ports: &[u16], udp_ports: &[u16]) -> anyhow::Result<Self> {
        let binds = [
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), true),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), false),
        ];
        Self::start_with(pod_name, &binds, tcp_ports, udp_ports)
    }

    /// Binds every port on each of `ips` (all required) and starts serving.
    /// Port 0 picks an ephemeral port; see [`EchoWorkload::tcp_addrs`].
    pub fn start_on(
        pod_name: &str,
        ips: &[IpAddr],
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> anyhow::Result<Self> {
        let binds: Vec<_> = ips.iter().map(|&ip| (ip, true)).collect();
        Self::start_with(pod_name, &binds, tcp_ports, udp_ports)
    }

    fn start_with(
        pod_name: &str,
        binds: &[(IpAddr, bool)],
        tcp_ports: &[u16],
        udp_ports: &[u16],
    ) -> anyhow::Result<Self> {
        let content_type: tiny_http::Header = "Content-Type: text/plain; charset=utf-8"
            .parse()
            .map_err(|()| anyhow!("building the Content-Type header"))?;
        let mut workload = EchoWorkload {
            tcp: Vec::new(),
            udp: Vec::new(),
            threads: Vec::new(),
        };
        for &port in tcp_ports {
            for &(ip, required) in binds {
                let addr = SocketAddr::new(ip, port);
                let listener = match tcp_listener(addr) {
                    Ok(l) => l,
                    Err(e) if !required => {
                        tracing::debug!(%addr, error = %e, "echo: skipping optional listener");
                        continue;
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("pod {pod_name}: listening on TCP {addr}"))
                    }
                };
                let local = listener.local_addr()?;
                let server = tiny_http::Server::from_listener(listener, None)
                    .map_err(|e| anyhow!("pod {pod_name}: HTTP server on {local}: {e}"))?;
                let server = Arc::new(server);
                for worker in 0..HTTP_WORKERS_PER_LISTENER {
                    let server = Arc::clone(&server);
                    let pod = pod_name.to_owned();
                    let content_type = content_type.clone();
                    let thread = std::thread::Builder::new()
                        .name(format!("echo-http-{}-{worker}", local.port()))
                        .spawn(move || serve_http(&server, &pod, &content_type))
                        .context("spawning an HTTP echo thread")?;
                    workload.threads.push(thread);
                }
                workload.tcp.push(local);
            }
        }
        for &port in udp_ports {
            for &(ip, required) in binds {
                let addr = SocketAddr::new(ip, port);
                let sock = match udp_socket(addr) {
                    Ok(s) => s,
                    Err(e) if !required => {
                        tracing::debug!(%addr, error = %e, "echo: skipping optional socket");
                        continue;
                    }
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("pod {pod_name}: binding UDP {addr}"))
                    }
                };
                let local = sock.local_addr()?;
                let thread = std::thread::Builder::new()
                    .name(format!("echo-udp-{}", local.port()))
                    .spawn(move || serve_udp(&sock))
                    .context("spawning a UDP echo thread")?;
                workload.threads.push(thread);
                workload.udp.push(local);
            }
        }
        tracing::info!(
            pod = pod_name,
            tcp = ?workload.tcp,
            udp = ?workload.udp,
            "echo workload serving"
        );
        Ok(workload)
    }

    /// The TCP (HTTP) addresses actually listened on.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp
    }

    /// The UDP addresses actually bound.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp
    }

    /// Blocks while the workload serves (forever, unless a thread dies).
    pub fn wait(self) -> anyhow::Result<()> {
        if self.threads.is_empty() {
            // A pod with nothing to serve still lives until it is deleted.
            loop {
                std::thread::park();
            }
        }
        for thread in self.threads {
            let name = thread.thread().name().unwrap_or("echo").to_owned();
            thread
                .join()
                .map_err(|_| anyhow!("echo thread {name} panicked"))?;
        }
        Err(anyhow!("echo workload threads ended"))
    }
}

/// The one line the HTTP echo answers with.
pub fn echo_line(host: &str, path: &str, pod_name: &str, client: Option<SocketAddr>) -> String {
    let (ip, port) = match client {
        Some(c) => (c.ip().to_string(), c.port().to_string()),
        None => (String::new(), String::new()),
    };
    format!("Host={host} Path={path} From={pod_name} ClientIP={ip} ClientPort={port}\n")
}

fn serve_http(server: &tiny_http::Server, pod_name: &str, content_type: &tiny_http::Header) {
    loop {
        let request = match server.recv() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "echo: accepting an HTTP request failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let host = request
            .headers()
            .iter()
            .find(|h| h.field.equiv("Host"))
            .map(|h| h.value.as_str().to_owned())
            .unwrap_or_default();
        let line = echo_line(
            &host,
            request.url(),
            pod_name,
            request.remote_addr().copied(),
        );
        let response = tiny_http::Response::from_string(line).with_header(content_type.clone());
        if let Err(e) = request.respond(response) {
            tracing::debug!(error = %e, "echo: writing an HTTP response failed");
        }
    }
}

fn serve_udp(sock: &UdpSocket) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, peer)) => {
                if let Err(e) = sock.send_to(&buf[..n], peer) {
                    tracing::debug!(%peer, error = %e, "echo: UDP reply failed");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!(error = %e, "echo: UDP receive failed");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// A TCP listener; IPv6 ones are v6-only so that the IPv4 listener on the
/// same port can coexist and IPv4 clients keep IPv4 addresses.
pub(crate) fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    match addr {
        SocketAddr::V4(_) => TcpListener::bind(addr),
        SocketAddr::V6(v6) => {
            let fd = v6_only_socket(SockType::Stream)?;
            socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(v6))?;
            socket::listen(&fd, Backlog::new(1024).unwrap_or(Backlog::MAXCONN))?;
            Ok(TcpListener::from(fd))
        }
    }
}

/// A UDP socket; IPv6 ones are v6-only (see [`tcp_listener`]).
pub(crate) fn udp_socket(addr: SocketAddr) -> io::Result<UdpSocket> {
    match addr {
        SocketAddr::V4(_) => UdpSocket::bind(addr),
        SocketAddr::V6(v6) => {
            let fd = v6_only_socket(SockType::Datagram)?;
            socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn6::from(v6))?;
            Ok(UdpSocket::from(fd))
        }
    }
}

fn v6_only_socket(ty: SockType) -> io::Result<std::os::fd::OwnedFd> {
    let fd = socket::socket(AddressFamily::Inet6, ty, SockFlag::SOCK_CLOEXEC, None)?;
    socket::setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    #[test]
    fn http_and_udp_echo_on_loopback() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let w = EchoWorkload::start_on("web-abc", &[lo], &[0], &[0]).unwrap();
        let http = w.tcp_addrs()[0];
        let udp = w.udp_addrs()[0];
        assert_ne!(http.port(), 0);

        let mut s = TcpStream::connect(http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let me = s.local_addr().unwrap();
        s.write_all(b"GET /hello?x=1 HTTP/1.1\r\nHost: web.shop:8080\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(
            reply
                .to_ascii_lowercase()
                .contains("content-type: text/plain"),
            "{reply}"
        );
        let expected = format!(
            "Host=web.shop:8080 Path=/hello?x=1 From=web-abc ClientIP=127.0.0.1 ClientPort={}\n",
            me.port()
        );
        assert!(reply.ends_with(&expected), "{reply}");

        let c = UdpSocket::bind("127.0.0.1:0").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        c.send_to(b"ping 1", udp).unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping 1");
        assert_eq!(from, udp);
    }

    #[test]
    fn ipv6_listener_coexists_with_ipv4_on_one_port() {
        // Find a free port, then bind it on both families like start() does.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let v4 = tcp_listener(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)).unwrap();
        match tcp_listener(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)) {
            Ok(v6) => assert_eq!(v6.local_addr().unwrap().port(), port),
            // No IPv6 in this environment: start() skips it the same way.
            Err(e) => eprintln!("no IPv6 here: {e}"),
        }
        drop(v4);
    }

    #[test]
    fn port_in_use_is_a_named_error() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = EchoWorkload::start_on("p", &[IpAddr::V4(Ipv4Addr::LOCALHOST)], &[port], &[])
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("pod p") && msg.contains(&port.to_string()),
            "{msg}"
        );
    }
}
