//! Built-in traffic tools the lab's tests and demo run inside pod
//! namespaces (`podswitch tool ...`). Each tool returns a report struct
//! that the CLI prints as one line of JSON, so a test can run a tool in a
//! pod and parse what happened.
//!
//! - Bulk integrity and throughput: [`TcpSink`] + [`tcp_send`] /
//!   [`tcp_stream_send`]. The sender writes a deterministic pseudo-random
//!   stream and both ends report its CRC-32, so a lost, duplicated,
//!   reordered or corrupted byte anywhere on the path changes the CRC.
//! - UDP integrity: [`udp_echo_check`] against the lab's echo workload.
//! - Latency: [`RrServer`] + [`rr_client`] (request/response, like
//!   netperf's `TCP_RR`/`UDP_RR`) and [`tcp_crr`] (connect, request,
//!   response, close, like `TCP_CRR`).
//! - Robustness: [`inject_malformed`] writes broken frames through an
//!   AF_PACKET socket to show the switch drops and counts them.
//!
//! Every tool is bounded by a count and a deadline (../shared/TESTBED.md).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder};
use hdrhistogram::Histogram;
use podswitch_switch::port::raw::{RawSocket, VNET_HDR_LEN};
use serde::{Deserialize, Serialize};

use podswitch_agent::manifest::Protocol;

/// Size of the repeating payload pattern.
const PATTERN_LEN: usize = 1 << 20;
/// Bytes per write for bulk senders.
const CHUNK: usize = 256 << 10;
/// How long a bulk sender waits for the sink to close after sending.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request/response message.
const MAX_RR_SIZE: usize = 1 << 20;
/// Smallest request/response message: room for the length and a sequence.
const MIN_RR_SIZE: usize = 8;
/// Largest UDP payload over IPv4.
const MAX_DATAGRAM: usize = 65_507;
/// Connections an [`RrServer`] serves at once; more are closed at once.
const MAX_RR_CONNECTIONS: usize = 512;

/// What [`TcpSink::run`] received.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpSinkReport {
    /// Bytes read before EOF.
    pub bytes: u64,
    /// CRC-32 (IEEE) of those bytes.
    pub crc32: u32,
    /// Seconds from accept to EOF.
    pub secs: f64,
    /// Goodput over `secs`, in Gbit/s.
    pub gbit_per_s: f64,
}

/// What [`tcp_send`] or [`tcp_stream_send`] sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpSendReport {
    /// Bytes written.
    pub bytes: u64,
    /// CRC-32 (IEEE) of those bytes; equals the sink's when the path is
    /// lossless.
    pub crc32: u32,
    /// Seconds from connect until the sink closed (everything delivered).
    pub secs: f64,
    /// Goodput over `secs`, in Gbit/s.
    pub gbit_per_s: f64,
}

/// What [`udp_echo_check`] saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdpEchoReport {
    /// Datagrams sent.
    pub sent: u64,
    /// Replies that were exact copies of a request, at most one per request.
    pub received: u64,
    /// Replies that were not: corrupted, unknown, or duplicates.
    pub mismatched: u64,
}

/// Request/response latency from [`rr_client`], in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RrReport {
    /// Completed transactions.
    pub count: u64,
    /// UDP requests whose reply never came (always 0 for TCP).
    pub lost: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Fastest.
    pub min_us: f64,
    /// Slowest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// Connect/request/response/close rate from [`tcp_crr`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrrReport {
    /// Completed transactions.
    pub count: u64,
    /// Transactions per second.
    pub per_sec: f64,
    /// Median transaction time (connect to response), microseconds.
    pub p50_us: f64,
    /// 99th percentile, microseconds.
    pub p99_us: f64,
}

/// What happened to each malformed frame [`inject_malformed`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectReport {
    /// The interface written to.
    pub ifname: String,
    /// One entry per kind of frame, in the order written.
    pub kinds: Vec<InjectOutcome>,
}

/// The kernel's verdict on one injected frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InjectOutcome {
    /// What is wrong with the frame (`ipv4_bad_header_checksum`, ...).
    pub kind: String,
    /// Frame length, without the virtio_net_hdr.
    pub len: usize,
    /// Whether the write was accepted (the frame went onto the link).
    pub accepted: bool,
    /// The error the kernel returned otherwise (`EINVAL`, `EMSGSIZE`, ...).
    pub error: Option<String>,
}

// ---------------------------------------------------------------------------
// Payload pattern

/// A deterministic 1 MiB pseudo-random buffer (xorshift64); the byte at
/// each offset differs, so a reordered or corrupted stream changes its CRC.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut buf = Vec::with_capacity(PATTERN_LEN);
        while buf.len() < PATTERN_LEN {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            buf.extend_from_slice(&state.to_le_bytes());
        }
        buf
    })
}

fn gbit_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1e9
    } else {
        0.0
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Connects to `dst`, retrying refused or unreachable attempts until
/// `deadline` (the server may still be starting).
fn connect_until(dst: SocketAddr, deadline: Instant) -> anyhow::Result<TcpStream> {
    loop {
        let left = remaining(deadline);
        let attempt = TcpStream::connect_timeout(
            &dst,
            left.clamp(Duration::from_millis(1), Duration::from_secs(2)),
        );
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() + Duration::from_millis(50) >= deadline => {
                return Err(e).with_context(|| format!("connecting to {dst}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

// ---------------------------------------------------------------------------
// Bulk TCP

/// The receiving end of a bulk transfer: bound and listening as soon as
/// [`TcpSink::bind`] returns, so a caller can report readiness before
/// [`TcpSink::run`] blocks.
#[derive(Debug)]
pub struct TcpSink {
    listener: TcpListener,
}

impl TcpSink {
    /// Binds and listens on `addr` (port 0 picks one).
    pub fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("tcp sink: listening on {addr}"))?;
        Ok(TcpSink { listener })
    }

    /// The address listened on.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Accepts one connection and reads it to EOF, all within `timeout`.
    pub fn run(self, timeout: Duration) -> anyhow::Result<TcpSinkReport> {
        let deadline = Instant::now() + timeout;
        self.listener.set_nonblocking(true)?;
        let (mut stream, peer) = loop {
            match self.listener.accept() {
                Ok(conn) => break conn,
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {
                    if Instant::now() >= deadline {
                        bail!("tcp sink: no connection within {timeout:?}");
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e).context("tcp sink: accept"),
            }
        };
        stream.set_nonblocking(false)?;
        let start = Instant::now();
        let mut hasher = crc32fast::Hasher::new();
        let mut bytes = 0u64;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let left = remaining(deadline);
            if left.is_zero() {
                bail!("tcp sink: timed out after {bytes} bytes from {peer}");
            }
            stream.set_read_timeout(Some(left))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    bytes += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => {
                    bail!("tcp sink: timed out after {bytes} bytes from {peer}")
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("tcp sink: reading from {peer} after {bytes} bytes")
                    })
                }
            }
        }
        let secs = start.elapsed().as_secs_f64();
        Ok(TcpSinkReport {
            bytes,
            crc32: hasher.finalize(),
            secs,
            gbit_per_s: gbit_per_s(bytes, secs),
        })
    }
}

/// Sends `bytes` of the pattern stream to a [`TcpSink`] at `dst` and waits
/// until the sink has read everything and closed. Connecting is retried
/// until the deadline; everything happens within `timeout`.
pub fn tcp_send(dst: SocketAddr, bytes: u64, timeout: Duration) -> anyhow::Result<TcpSendReport> {
    let deadline = Instant::now() + timeout;
    let stream = connect_until(dst, deadline)?;
    send_stream(stream, dst, SendUntil::Bytes(bytes), deadline)
}

/// Sends the pattern stream to a [`TcpSink`] at `dst` for `duration`
/// (measuring throughput), then waits for the sink to close. Connecting is
/// retried for up to `duration` as well.
pub fn tcp_stream_send(dst: SocketAddr, duration: Duration) -> anyhow::Result<TcpSendReport> {
    let stream = connect_until(dst, Instant::now() + duration)?;
    let stop = Instant::now() + duration;
    send_stream(stream, dst, SendUntil::Time(stop), stop + DRAIN_TIMEOUT)
}

/// When a bulk sender stops writing.
#[derive(Debug, Clone, Copy)]
enum SendUntil {
    /// After this many bytes (not reaching it in time is an error).
    Bytes(u64),
    /// At this instant, however much was written.
    Time(Instant),
}

fn send_stream(
    mut stream: TcpStream,
    dst: SocketAddr,
    until: SendUntil,
    deadline: Instant,
) -> anyhow::Result<TcpSendReport> {
    let start = Instant::now();
    let pattern = pattern();
    let mut hasher = crc32fast::Hasher::new();
    let mut sent = 0u64;
    let timed_out = |sent| anyhow!("tcp send to {dst}: timed out after {sent} bytes");
    loop {
        let (write_by, max_len) = match until {
            SendUntil::Bytes(total) if sent >= total => break,
            SendUntil::Bytes(total) => (deadline, total - sent),
            SendUntil::Time(stop) if Instant::now() >= stop => break,
            SendUntil::Time(stop) => (stop, u64::MAX),
        };
        let left = remaining(write_by);
        if left.is_zero() {
            match until {
                SendUntil::Bytes(_) => return Err(timed_out(sent)),
                SendUntil::Time(_) => break,
            }
        }
        // A blocked write never outlasts the run.
        stream.set_write_timeout(Some(left))?;
        let off = (sent % PATTERN_LEN as u64) as usize;
        let len = CHUNK
            .min(PATTERN_LEN - off)
            .min(usize::try_from(max_len).unwrap_or(usize::MAX));
        let chunk = &pattern[off..off + len];
        match stream.write(chunk) {
            Ok(0) => bail!("tcp send to {dst}: connection closed after {sent} bytes"),
            Ok(n) => {
                hasher.update(&chunk[..n]);
                sent += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => match until {
                SendUntil::Bytes(_) => return Err(timed_out(sent)),
                SendUntil::Time(_) => break,
            },
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("tcp send to {dst}: writing after {sent} bytes"))
            }
        }
    }
    stream
        .shutdown(Shutdown::Write)
        .with_context(|| format!("tcp send to {dst}: shutdown"))?;
    // The sink closes once it has read everything: then it was delivered.
    let mut buf = [0u8; 512];
    loop {
        let left = remaining(deadline);
        if left.is_zero() {
            bail!("tcp send to {dst}: sink did not close after {sent} bytes");
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => {
                bail!("tcp send to {dst}: sink did not close after {sent} bytes")
            }
            // A reset after our FIN still means the sink read to EOF.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                return Err(e).with_context(|| format!("tcp send to {dst}: waiting for close"))
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(TcpSendReport {
        bytes: sent,
        crc32: hasher.finalize(),
        secs,
        gbit_per_s: gbit_per_s(sent, secs),
    })
}

// ---------------------------------------------------------------------------
// UDP echo check

/// Most datagrams one [`udp_echo_check`] sends (a bounded run, and a
/// bounded table of which came back).
const MAX_UDP_CHECK_COUNT: u32 = 10_000_000;
/// Datagrams in flight at once.
const UDP_WINDOW: u64 = 32;
/// With the window full and no reply for this long, the outstanding
/// datagrams are written off as lost so sending can go on.
const UDP_IDLE_WRITE_OFF: Duration = Duration::from_millis(200);
/// After the last datagram is sent, how long to wait for stragglers.
const UDP_LINGER: Duration = Duration::from_secs(1);

/// The datagram numbered `seq`: the sequence number, then pattern bytes
/// from an offset that depends on it.
fn udp_datagram(seq: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seq.to_be_bytes());
    let body = size - 8;
    let span = PATTERN_LEN - body;
    let off = (seq.wrapping_mul(7919) as usize) % span.max(1);
    out.extend_from_slice(&pattern()[off..off + body]);
}

/// Sends `count` numbered datagrams of `size` bytes (8..=65507) to a UDP
/// echo at `dst` (at most 32 in flight, at most 10 million in all) and
/// checks every reply is an exact copy of a request. Stops when all came
/// back, at `timeout`, or one second after the last send with nothing more
/// arriving.
pub fn udp_echo_check(
    dst: SocketAddr,
    count: u32,
    size: usize,
    timeout: Duration,
) -> anyhow::Result<UdpEchoReport> {
    ensure!(
        (8..=MAX_DATAGRAM).contains(&size),
        "udp echo check: size {size} must be 8..={MAX_DATAGRAM} (8 bytes carry the sequence number)"
    );
    let deadline = Instant::now() + timeout;
    let sock = connected_udp(dst)?;
    ensure!(
        count <= MAX_UDP_CHECK_COUNT,
        "udp echo check: count {count} is more than {MAX_UDP_CHECK_COUNT}"
    );
    let count = u64::from(count);
    let mut seen = vec![false; count as usize];
    let (mut sent, mut received, mut mismatched, mut written_off) = (0u64, 0u64, 0u64, 0u64);
    let mut last_activity = Instant::now();
    let mut out = Vec::with_capacity(size);
    let mut expected = Vec::with_capacity(size);
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    while received < count && Instant::now() < deadline {
        let answered = received + mismatched;
        let in_flight = sent.saturating_sub(answered + written_off);
        if sent < count && in_flight < UDP_WINDOW {
            udp_datagram(sent, size, &mut out);
            match sock.send(&out) {
                Ok(_) => {
                    sent += 1;
                    last_activity = Instant::now();
                }
                // An ICMP error from an earlier datagram; this one was not
                // sent, try it again.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => {
                    return Err(e).with_context(|| format!("udp echo check: sending to {dst}"))
                }
            }
            continue;
        }
        if sent == count && last_activity.elapsed() >= UDP_LINGER {
            break;
        }
        let wait = remaining(deadline).min(Duration::from_millis(50));
        if wait.is_zero() {
            break;
        }
        sock.set_read_timeout(Some(wait))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                last_activity = Instant::now();
                let reply = &buf[..n];
                let seq = reply
                    .get(..8)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes);
                let ok = match seq {
                    Some(seq) if seq < sent && !seen[seq as usize] => {
                        udp_datagram(seq, size, &mut expected);
                        reply == expected.as_slice()
                    }
                    _ => false,
                };
                if ok {
                    if let Some(seq) = seq {
                        seen[seq as usize] = true;
                    }
                    received += 1;
                } else {
                    mismatched += 1;
                }
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::ConnectionRefused => {
                if in_flight >= UDP_WINDOW && last_activity.elapsed() >= UDP_IDLE_WRITE_OFF {
                    written_off = sent.saturating_sub(received + mismatched);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(e).with_context(|| format!("udp echo check: receiving from {dst}"))
            }
        }
    }
    Ok(UdpEchoReport {
        sent,
        received,
        mismatched,
    })
}

fn connected_udp(dst: SocketAddr) -> anyhow::Result<UdpSocket> {
    let local: SocketAddr = if dst.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).context("binding a UDP socket")?;
    sock.connect(dst)
        .with_context(|| format!("connecting UDP to {dst}"))?;
    Ok(sock)
}

// ---------------------------------------------------------------------------
// Request/response

/// A request/response echo server for [`rr_client`] and [`tcp_crr`],
/// listening as soon as [`RrServer::bind`] returns.
///
/// TCP messages are framed: a 4-byte big-endian length of the whole
/// message (8..=1 MiB, the prefix included), then the rest; the server
/// sends each message back unchanged. UDP datagrams are echoed.
#[derive(Debug)]
pub enum RrServer {
    /// TCP, one thread per connection.
    Tcp(TcpListener),
    /// UDP, one thread.
    Udp(UdpSocket),
}

impl RrServer {
    /// Binds `listen` for `proto` (TCP or UDP).
    pub fn bind(proto: Protocol, listen: SocketAddr) -> anyhow::Result<Self> {
        match proto {
            Protocol::Tcp => Ok(RrServer::Tcp(
                TcpListener::bind(listen)
                    .with_context(|| format!("rr server: listening on TCP {listen}"))?,
            )),
            Protocol::Udp => Ok(RrServer::Udp(
                UdpSocket::bind(listen)
                    .with_context(|| format!("rr server: binding UDP {listen}"))?,
            )),
            Protocol::Sctp => bail!("rr server: SCTP is not supported (use TCP or UDP)"),
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(match self {
            RrServer::Tcp(l) => l.local_addr()?,
            RrServer::Udp(s) => s.local_addr()?,
        })
    }

    /// Serves forever.
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            RrServer::Tcp(listener) => {
                let active = Arc::new(AtomicUsize::new(0));
                loop {
                    let (stream, peer) = match listener.accept() {
                        Ok(conn) => conn,
                        Err(e) => {
                            tracing::debug!(error = %e, "rr server: accept failed");
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                    };
                    if active.fetch_add(1, Ordering::AcqRel) >= MAX_RR_CONNECTIONS {
                        active.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(%peer, "rr server: too many connections, closing");
                        continue;
                    }
                    let active = Arc::clone(&active);
                    let spawned = std::thread::Builder::new().name("rr-conn".into()).spawn(
                        move || {
                            if let Err(e) = serve_rr_connection(stream) {
                                tracing::debug!(%peer, error = %e, "rr server: connection ended");
                            }
                            active.fetch_sub(1, Ordering::AcqRel);
                        },
                    );
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "rr server: cannot spawn a connection thread");
                    }
                }
            }
            RrServer::Udp(sock) => {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                loop {
                    match sock.recv_from(&mut buf) {
                        Ok((n, peer)) => {
                            let _ = sock.send_to(&buf[..n], peer);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "rr server: UDP receive failed");
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
            }
        }
    }
}

/// Binds an [`RrServer`] and serves forever.
pub fn rr_server(proto: Protocol, listen: SocketAddr) -> anyhow::Result<()> {
    RrServer::bind(proto, listen)?.run()
}

fn serve_rr_connection(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let mut prefix = [0u8; 4];
        // EOF at a message boundary is the client closing.
        match stream.read(&mut prefix[..1])? {
            0 => return Ok(()),
            _ => stream.read_exact(&mut prefix[1..])?,
        }
        let len = u32::from_be_bytes(prefix) as usize;
        if !(MIN_RR_SIZE..=MAX_RR_SIZE).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("message length {len} outside {MIN_RR_SIZE}..={MAX_RR_SIZE}"),
            ));
        }
        buf.clear();
        buf.extend_from_slice(&prefix);
        buf.resize(len, 0);
        stream.read_exact(&mut buf[4..])?;
        stream.write_all(&buf)?;
    }
}

/// A TCP request: length prefix, sequence number, pattern bytes.
fn rr_message(seq: u32, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(size as u32).to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&pattern()[..size - 8]);
}

fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    // 1 ns .. 60 s at 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| anyhow!("latency histogram: {e}"))
}

fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns.max(1));
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

/// Ping-pong with one outstanding request of `size` bytes (8..=1 MiB for
/// TCP, 8..=65507 for UDP) against an [`RrServer`] at `dst`, until
/// `duration` passes or `max_count` transactions are done. Connecting is
/// retried within `duration`. A UDP request without a reply within one
/// second (or the end of the run) counts as lost.
pub fn rr_client(
    proto: Protocol,
    dst: SocketAddr,
    size: usize,
    duration: Duration,
    max_count: u64,
) -> anyhow::Result<RrReport> {
    let max = match proto {
        Protocol::Tcp => MAX_RR_SIZE,
        Protocol::Udp => MAX_DATAGRAM,
        Protocol::Sctp => bail!("rr client: SCTP is not supported (use TCP or UDP)"),
    };
    ensure!(
        (MIN_RR_SIZE..=max).contains(&size),
        "rr client: size {size} must be {MIN_RR_SIZE}..={max} for {proto}"
    );
    let deadline = Instant::now() + duration;
    let mut hist = latency_histogram()?;
    let mut count = 0u64;
    let mut lost = 0u64;
    let mut req = Vec::with_capacity(size);
    let mut resp = vec![0u8; size.max(MAX_DATAGRAM + 1)];
    match proto {
        Protocol::Tcp => {
            let mut stream = connect_until(dst, deadline)?;
            stream.set_nodelay(true)?;
            while count < max_count && Instant::now() < deadline {
                rr_message(count as u32, size, &mut req);
                // Never block past the run by more than a grace period.
                let limit = Some(remaining(deadline).max(Duration::from_secs(1)));
                stream.set_read_timeout(limit)?;
                stream.set_write_timeout(limit)?;
                let t0 = Instant::now();
                stream
                    .write_all(&req)
                    .with_context(|| format!("rr client: sending request {count} to {dst}"))?;
                stream
                    .read_exact(&mut resp[..size])
                    .with_context(|| format!("rr client: reading response {count} from {dst}"))?;
                record(&mut hist, t0.elapsed());
                ensure!(
                    resp[..size] == req[..],
                    "rr client: response {count} from {dst} differs from the request"
                );
                count += 1;
            }
        }
        _ => {
            let sock = connected_udp(dst)?;
            let mut seq = 0u64;
            while count < max_count && Instant::now() < deadline {
                req.clear();
                req.extend_from_slice(&seq.to_be_bytes());
                req.extend_from_slice(&pattern()[..size - 8]);
                let t0 = Instant::now();
                // Every request gets the same second for its reply, the
                // last ones too (as the TCP variant's grace period): a
                // shorter window near the end of the run counted a reply
                // delayed by a busy machine as lost.
                let reply_by = t0 + Duration::from_secs(1);
                match sock.send(&req) {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("rr client: sending to {dst}"))
                    }
                }
                let got = loop {
                    let left = remaining(reply_by);
                    if left.is_zero() {
                        break false;
                    }
                    sock.set_read_timeout(Some(left))?;
                    match sock.recv(&mut resp) {
                        // A late reply to an earlier request: keep waiting.
                        Ok(n) if resp[..n] != req[..] => continue,
                        Ok(_) => break true,
                        Err(e) if is_timeout(&e) => break false,
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::ConnectionRefused | io::ErrorKind::Interrupted
                            ) =>
                        {
                            continue
                        }
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("rr client: receiving from {dst}"))
                        }
                    }
                };
                seq += 1;
                if got {
                    record(&mut hist, t0.elapsed());
                    count += 1;
                } else {
                    lost += 1;
                }
            }
        }
    }
    Ok(RrReport {
        count,
        lost,
        p50_us: us(hist.value_at_quantile(0.50)),
        p90_us: us(hist.value_at_quantile(0.90)),
        p99_us: us(hist.value_at_quantile(0.99)),
        p999_us: us(hist.value_at_quantile(0.999)),
        min_us: us(if count == 0 { 0 } else { hist.min() }),
        max_us: us(hist.max()),
        mean_us: hist.mean() / 1000.0,
    })
}

/// Connect, one 8-byte request, its response, close: repeated against a
/// TCP [`RrServer`] at `dst` until `duration` passes or `max_count`
/// transactions are done (like netperf's `TCP_CRR`). The first connection
/// is retried within `duration`; any later failure is an error naming the
/// transaction.
pub fn tcp_crr(dst: SocketAddr, duration: Duration, max_count: u64) -> anyhow::Result<CrrReport> {
    let start = Instant::now();
    let deadline = start + duration;
    let mut hist = latency_histogram()?;
    let mut count = 0u64;
    let mut req = Vec::with_capacity(MIN_RR_SIZE);
    let mut resp = [0u8; MIN_RR_SIZE];
    while count < max_count && Instant::now() < deadline {
        rr_message(count as u32, MIN_RR_SIZE, &mut req);
        let t0 = Instant::now();
        let mut stream = if count == 0 {
            connect_until(dst, deadline)?
        } else {
            TcpStream::connect_timeout(&dst, Duration::from_secs(2))
                .with_context(|| format!("tcp crr: connecting to {dst} (transaction {count})"))?
        };
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream
            .write_all(&req)
            .and_then(|()| stream.read_exact(&mut resp))
            .with_context(|| format!("tcp crr: transaction {count} with {dst}"))?;
        ensure!(
            resp[..] == req[..],
            "tcp crr: response {count} from {dst} differs from the request"
        );
        drop(stream);
        record(&mut hist, t0.elapsed());
        count += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(CrrReport {
        count,
        per_sec: if secs > 0.0 { count as f64 / secs } else { 0.0 },
        p50_us: us(hist.value_at_quantile(0.50)),
        p99_us: us(hist.value_at_quantile(0.99)),
    })
}

// ---------------------------------------------------------------------------
// Malformed frames

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
/// virtio_net_hdr flags and GSO types (include/uapi/linux/virtio_net.h).
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;

/// A `struct virtio_net_hdr` as the kernel reads it from a packet socket:
/// native-endian fields (legacy virtio, packet(7) `PACKET_VNET_HDR`).
#[derive(Debug, Clone, Copy, Default)]
struct VnetHdr {
    flags: u8,
    gso_type: u8,
    hdr_len: u16,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
}

impl VnetHdr {
    fn emit(&self, frame: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(VNET_HDR_LEN + frame.len());
        out.push(self.flags);
        out.push(self.gso_type);
        for v in [
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        ] {
            out.extend_from_slice(&v.to_ne_bytes());
        }
        out.extend_from_slice(frame);
        out
    }
}

/// RFC 791 header checksum over `header` (checksum field included as is).
fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Rewrites the IPv4 total length and recomputes the header checksum, so
/// that the length is the frame's only defect.
fn set_ipv4_total_len(frame: &mut [u8], total: u16) {
    frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&total.to_be_bytes());
    frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
    let c = ipv4_checksum(&frame[ETH_LEN..ETH_LEN + IPV4_LEN]);
    frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&c.to_be_bytes());
}

/// Well-formed frames the malformed ones are cut from.
struct FrameBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
}

impl FrameBuilder {
    fn udp(&self, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(self.src_ip.octets(), self.dst_ip.octets(), 64)
            .udp(40_000, 9)
            .write_to_vec(&mut out, payload)
            .map_err(|e| anyhow!("building a UDP frame: {e}"))?;
        Ok(out)
    }

    fn tcp(&self, payload: &[u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2(self.src_mac, self.dst_mac)
            .ipv4(self.src_ip.octets(), self.dst_ip.octets(), 64)
            .tcp(40_000, 80, 1, 64_240)
            .ack(1)
            .psh()
            .write_to_vec(&mut out, payload)
            .map_err(|e| anyhow!("building a TCP frame: {e}"))?;
        Ok(out)
    }

    fn arp(&self) -> anyhow::Result<Vec<u8>> {
        let arp = ArpPacket::new(
            ArpHardwareId::ETHERNET,
            EtherType::IPV4,
            ArpOperation::REQUEST,
            &self.src_mac,
            &self.src_ip.octets(),
            &[0; 6],
            &self.dst_ip.octets(),
        )
        .map_err(|e| anyhow!("building an ARP packet: {e}"))?;
        let mut out = Vec::new();
        PacketBuilder::ethernet2(self.src_mac, [0xff; 6])
            .arp(arp)
            .write_to_vec(&mut out)
            .map_err(|e| anyhow!("building an ARP frame: {e}"))?;
        Ok(out)
    }
}

/// Writes one frame of each malformed kind to `ifname` (in the calling
/// thread's network namespace) through an AF_PACKET socket, and records for
/// each whether the kernel accepted the write. Addresses are those of a
/// plausible flow (a pod's MAC and IP towards its gateway), so the frames
/// reach the switch's parser rather than being filtered by MAC.
///
/// Two well-formed control frames (`valid_ipv4_udp`, `vnet_valid_ipv4_udp`)
/// are written too, so a report with everything rejected is recognisable
/// as a broken socket rather than a strict kernel.
pub fn inject_malformed(
    ifname: &str,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
) -> anyhow::Result<InjectReport> {
    let b = FrameBuilder {
        src_mac,
        dst_mac,
        src_ip,
        dst_ip,
    };
    let plain = RawSocket::bind(ifname).with_context(|| format!("inject: opening {ifname}"))?;
    let vnet = RawSocket::bind_with_vnet_hdr(ifname)
        .with_context(|| format!("inject: opening {ifname} with PACKET_VNET_HDR"))?;
    let mtu = plain
        .mtu()
        .with_context(|| format!("inject: reading the MTU of {ifname}"))? as usize;

    let payload = b"podswitch malformed-frame probe";
    let udp = b.udp(payload)?;
    let tcp = b.tcp(payload)?;
    let arp = b.arp()?;
    let ip = ETH_LEN; // offset of the IPv4 header
    let mut frames: Vec<(&str, Vec<u8>)> = Vec::new();

    frames.push(("valid_ipv4_udp", udp.clone()));
    frames.push(("runt_frame", udp[..10].to_vec()));
    frames.push(("truncated_ipv4_header", udp[..ip + 12].to_vec()));
    let mut f = udp.clone();
    f[ip] = 0x43; // IHL 3: a header shorter than its fixed part
    frames.push(("ipv4_ihl_below_5", f));
    let mut f = udp.clone();
    f[ip] = 0x4f; // IHL 15: 60 bytes of header, more than the packet
    f.truncate(ip + 40);
    set_ipv4_total_len(&mut f, 40);
    f[ip] = 0x4f;
    frames.push(("ipv4_ihl_beyond_frame", f));
    let mut f = udp.clone();
    let total = (f.len() - ip) as u16;
    set_ipv4_total_len(&mut f, total + 100);
    frames.push(("ipv4_total_length_beyond_frame", f));
    let mut f = udp.clone();
    set_ipv4_total_len(&mut f, 12);
    frames.push(("ipv4_total_length_below_header", f));
    let mut f = udp.clone();
    f[ip + 10] ^= 0xff;
    frames.push(("ipv4_bad_header_checksum", f));
    let mut f = udp.clone();
    f[ip] = 0x65; // version 6 inside an IPv4 ethertype
    frames.push(("ipv4_version_mismatch", f));
    let mut f = tcp[..ip + IPV4_LEN + 10].to_vec();
    set_ipv4_total_len(&mut f, (IPV4_LEN + 10) as u16);
    frames.push(("truncated_tcp_header", f));
    let mut f = udp[..ip + IPV4_LEN + 4].to_vec();
    set_ipv4_total_len(&mut f, (IPV4_LEN + 4) as u16);
    frames.push(("truncated_udp_header", f));
    let mut f = udp.clone();
    let udp_len = (f.len() - ip - IPV4_LEN) as u16;
    f[ip + IPV4_LEN + 4..ip + IPV4_LEN + 6].copy_from_slice(&(udp_len + 200).to_be_bytes());
    frames.push(("udp_length_beyond_datagram", f));
    frames.push(("arp_truncated", arp[..ETH_LEN + 10].to_vec()));
    let mut f = arp.clone();
    f[ETH_LEN + 4] = 9; // hlen
    f[ETH_LEN + 5] = 7; // plen
    frames.push(("arp_bad_address_lengths", f));
    let mut f = arp.clone();
    f[ETH_LEN + 6..ETH_LEN + 8].copy_from_slice(&99u16.to_be_bytes());
    frames.push(("arp_unknown_opcode", f));
    let mut f = udp.clone();
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes()); // IEEE local experimental
    frames.push(("unknown_ethertype", f));
    let big = vec![0x5a; (mtu + 100).min(65_000)];
    let mut f = b.udp(&big)?;
    if f.len() - ip > usize::from(u16::MAX) {
        f.truncate(ip + usize::from(u16::MAX));
    }
    frames.push(("frame_over_mtu", f));

    let mut kinds: Vec<InjectOutcome> = frames
        .iter()
        .map(|(kind, frame)| outcome(kind, frame.len(), plain.send(frame)))
        .collect();

    // GSO nonsense through the virtio_net_hdr (the kernel validates it in
    // virtio_net_hdr_to_skb and may refuse the write).
    let tcp_csum = VnetHdr {
        flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
        csum_start: (ip + IPV4_LEN) as u16,
        csum_offset: 16,
        ..VnetHdr::default()
    };
    let hdr_len = (ip + IPV4_LEN + 20) as u16;
    let vnet_frames: [(&str, VnetHdr, &[u8]); 5] = [
        ("vnet_valid_ipv4_udp", VnetHdr::default(), &udp),
        (
            "vnet_gso_tcpv4_size_zero",
            VnetHdr {
                gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
                gso_size: 0,
                hdr_len,
                ..tcp_csum
            },
            &tcp,
        ),
        (
            "vnet_gso_size_beyond_frame",
            VnetHdr {
                gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
                gso_size: 9_000,
                hdr_len,
                ..tcp_csum
            },
            &tcp,
        ),
        (
            "vnet_csum_start_beyond_frame",
            VnetHdr {
                csum_start: (tcp.len() + 100) as u16,
                ..tcp_csum
            },
            &tcp,
        ),
        (
            "vnet_hdr_len_beyond_frame",
            VnetHdr {
                gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
                gso_size: 1_000,
                hdr_len: 60_000,
                ..tcp_csum
            },
            &tcp,
        ),
    ];
    for (kind, hdr, frame) in vnet_frames {
        kinds.push(outcome(kind, frame.len(), vnet.send(&hdr.emit(frame))));
    }
    Ok(InjectReport {
        ifname: ifname.to_owned(),
        kinds,
    })
}

fn outcome(kind: &str, len: usize, result: io::Result<usize>) -> InjectOutcome {
    // "EINVAL: Invalid argument": the name is what kernel sources use.
    let error = result.err().map(|e| match e.raw_os_error() {
        Some(code) => nix::errno::Errno::from_raw(code).to_string(),
        None => e.to_string(),
    });
    InjectOutcome {
        kind: kind.to_owned(),
        len,
        accepted: error.is_none(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    const LO: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn spawn<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        std::thread::spawn(f)
    }

    #[test]
    fn pattern_is_deterministic_and_varies() {
        let p = pattern();
        assert_eq!(p.len(), PATTERN_LEN);
        assert_ne!(p[..8], p[8..16]);
        assert_eq!(crc32fast::hash(p), crc32fast::hash(pattern()));
    }

    #[test]
    fn tcp_send_and_sink_agree() {
        let sink = TcpSink::bind((LO, 0).into()).unwrap();
        let addr = sink.local_addr().unwrap();
        let rx = spawn(move || sink.run(Duration::from_secs(20)));
        // Not a multiple of the chunk or pattern size, to cover the wrap.
        let bytes = 3 * PATTERN_LEN as u64 + 12_345;
        let tx = tcp_send(addr, bytes, Duration::from_secs(20)).unwrap();
        let rx = rx.join().unwrap().unwrap();
        assert_eq!(tx.bytes, bytes);
        assert_eq!(rx.bytes, bytes);
        assert_eq!(tx.crc32, rx.crc32);
        let mut h = crc32fast::Hasher::new();
        for _ in 0..3 {
            h.update(pattern());
        }
        h.update(&pattern()[..12_345]);
        assert_eq!(rx.crc32, h.finalize());
        assert!(tx.gbit_per_s > 0.0 && rx.secs > 0.0);
        let json = serde_json::to_string(&tx).unwrap();
        assert!(json.starts_with("{\"bytes\":"), "{json}");
    }

    #[test]
    fn tcp_send_retries_connect_until_the_sink_listens() {
        let port = TcpListener::bind((LO, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = (LO, port).into();
        let rx = spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            TcpSink::bind(addr).unwrap().run(Duration::from_secs(10))
        });
        let tx = tcp_send(addr, 1000, Duration::from_secs(10)).unwrap();
        assert_eq!(rx.join().unwrap().unwrap().crc32, tx.crc32);
    }

    #[test]
    fn tcp_send_gives_up_at_the_deadline() {
        let port = TcpListener::bind((LO, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t0 = Instant::now();
        let err = tcp_send((LO, port).into(), 10, Duration::from_millis(300)).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3));
        assert!(format!("{err:#}").contains("connecting to"), "{err:#}");
        let sink = TcpSink::bind((LO, 0).into()).unwrap();
        assert!(sink.run(Duration::from_millis(50)).is_err());
    }

    #[test]
    fn tcp_stream_send_for_a_duration() {
        let sink = TcpSink::bind((LO, 0).into()).unwrap();
        let addr = sink.local_addr().unwrap();
        let rx = spawn(move || sink.run(Duration::from_secs(20)));
        let tx = tcp_stream_send(addr, Duration::from_millis(300)).unwrap();
        let rx = rx.join().unwrap().unwrap();
        assert!(tx.bytes > 0);
        assert_eq!((tx.bytes, tx.crc32), (rx.bytes, rx.crc32));
    }

    #[test]
    fn udp_echo_check_against_the_workload_echo() {
        let w = crate::workload::EchoWorkload::start_on("p", &[LO], &[], &[0]).unwrap();
        let r = udp_echo_check(w.udp_addrs()[0], 200, 1200, Duration::from_secs(10)).unwrap();
        assert_eq!(
            r,
            UdpEchoReport {
                sent: 200,
                received: 200,
                mismatched: 0
            }
        );
        assert!(udp_echo_check(w.udp_addrs()[0], 1, 4, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn udp_echo_check_counts_corruption_and_loss() {
        // A broken echo: flips a byte in every other reply, drops every fifth.
        let server = UdpSocket::bind((LO, 0)).unwrap();
        let addr = server.local_addr().unwrap();
        spawn(move || {
            let mut buf = [0u8; 2048];
            for i in 0u32.. {
                let Ok((n, peer)) = server.recv_from(&mut buf) else {
                    return;
                };
                if i % 5 == 4 {
                    continue;
                }
                if i % 2 == 1 {
                    buf[n - 1] ^= 1;
                }
                let _ = server.send_to(&buf[..n], peer);
            }
        });
        let r = udp_echo_check(addr, 50, 100, Duration::from_secs(5)).unwrap();
        assert_eq!(r.sent, 50);
        assert_eq!(r.received + r.mismatched, 40);
        assert!(r.mismatched > 0 && r.received > 0, "{r:?}");
    }

    #[test]
    fn rr_tcp_and_udp_on_loopback() {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let server = RrServer::bind(proto, (LO, 0).into()).unwrap();
            let addr = server.local_addr().unwrap();
            spawn(move || server.run());
            let r = rr_client(proto, addr, 64, Duration::from_secs(5), 500).unwrap();
            assert_eq!(r.count, 500, "{proto}");
            assert_eq!(r.lost, 0);
            assert!(
                r.min_us > 0.0
                    && r.min_us <= r.p50_us
                    && r.p50_us <= r.p99_us
                    && r.p99_us <= r.max_us,
                "{r:?}"
            );
            let r = rr_client(proto, addr, 8, Duration::from_millis(100), u64::MAX).unwrap();
            assert!(r.count > 0);
        }
        assert!(RrServer::bind(Protocol::Sctp, (LO, 0).into()).is_err());
        assert!(rr_client(Protocol::Tcp, (LO, 9).into(), 4, Duration::from_secs(1), 1).is_err());
    }

    #[test]
    fn rr_server_rejects_bad_framing() {
        let server = RrServer::bind(Protocol::Tcp, (LO, 0).into()).unwrap();
        let addr = server.local_addr().unwrap();
        spawn(move || server.run());
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        let mut buf = [0u8; 16];
        // The server closes instead of allocating 4 GiB.
        assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    }

    #[test]
    fn tcp_crr_on_loopback() {
        let server = RrServer::bind(Protocol::Tcp, (LO, 0).into()).unwrap();
        let addr = server.local_addr().unwrap();
        spawn(move || server.run());
        let r = tcp_crr(addr, Duration::from_secs(5), 200).unwrap();
        assert_eq!(r.count, 200);
        assert!(
            r.per_sec > 0.0 && r.p50_us > 0.0 && r.p50_us <= r.p99_us,
            "{r:?}"
        );
    }

    #[test]
    fn malformed_frames_are_built_as_described() {
        let b = FrameBuilder {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: Ipv4Addr::new(10, 244, 1, 2),
            dst_ip: Ipv4Addr::new(10, 244, 1, 1),
        };
        let mut udp = b.udp(b"x").unwrap();
        // etherparse's checksum and ours agree on a valid header.
        assert_eq!(ipv4_checksum(&udp[ETH_LEN..ETH_LEN + IPV4_LEN]), 0);
        set_ipv4_total_len(&mut udp, 12);
        assert_eq!(ipv4_checksum(&udp[ETH_LEN..ETH_LEN + IPV4_LEN]), 0);
        let arp = b.arp().unwrap();
        assert_eq!(arp.len(), ETH_LEN + 28);
        assert_eq!(arp[12..14], [0x08, 0x06]);
        let hdr = VnetHdr {
            gso_type: VIRTIO_NET_HDR_GSO_TCPV4,
            gso_size: 1448,
            ..VnetHdr::default()
        }
        .emit(&arp);
        assert_eq!(hdr.len(), VNET_HDR_LEN + arp.len());
        assert_eq!(hdr[1], VIRTIO_NET_HDR_GSO_TCPV4);
        assert_eq!(u16::from_ne_bytes([hdr[4], hdr[5]]), 1448);
    }

    /// A namespace with a veth pair, removed on drop (root only).
    struct TestNetns(String);

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    #[test]
    fn inject_malformed_on_a_veth() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipping: needs root");
            return;
        }
        let ns = TestNetns(format!("pswt-{}-inject", std::process::id()));
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(ip(&["netns", "add", &ns.0]));
        assert!(ip(&[
            "-n", &ns.0, "link", "add", "name", "va", "type", "veth", "peer", "name", "vb"
        ]));
        assert!(ip(&["-n", &ns.0, "link", "set", "va", "up"]));
        assert!(ip(&["-n", &ns.0, "link", "set", "vb", "up"]));
        let path = format!("/run/netns/{}", ns.0);
        let report = std::thread::spawn(move || {
            let f = std::fs::File::open(path)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            inject_malformed(
                "va",
                [2, 0, 0, 0, 0, 1],
                [2, 0, 0, 0, 0, 2],
                Ipv4Addr::new(10, 244, 1, 2),
                Ipv4Addr::new(10, 244, 1, 1),
            )
        })
        .join()
        .unwrap()
        .unwrap();
        let by_kind = |k: &str| {
            report
                .kinds
                .iter()
                .find(|o| o.kind == k)
                .unwrap_or_else(|| panic!("{k} missing"))
        };
        assert!(by_kind("valid_ipv4_udp").accepted, "{report:?}");
        assert!(by_kind("vnet_valid_ipv4_udp").accepted, "{report:?}");
        assert!(by_kind("ipv4_bad_header_checksum").accepted, "{report:?}");
        let big = by_kind("frame_over_mtu");
        assert!(
            !big.accepted && big.error.as_deref().unwrap_or("").contains("EMSGSIZE"),
            "{big:?}"
        );
        assert_eq!(report.kinds.len(), 22);
        for o in &report.kinds {
            eprintln!(
                "{:32} len={:5} accepted={} {}",
                o.kind,
                o.len,
                o.accepted,
                o.error.as_deref().unwrap_or("")
            );
        }
    }
}
