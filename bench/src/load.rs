//! The bench's own traffic generators, run on threads inside pod
//! namespaces, beside the lab's ([`podswitch_lab::traffic`], whose
//! request/response server and TCP_CRR client the bench reuses as they
//! are):
//!
//! - [`rr_histogram`]: request/response against a
//!   [`traffic::RrServer`](podswitch_lab::traffic::RrServer) like
//!   [`traffic::rr_client`](podswitch_lab::traffic::rr_client), but keeping
//!   the whole HDR histogram so the report can plot the latency CDF and
//!   merge rounds;
//! - [`StreamSink`] + [`stream_send`]: TCP throughput the way iperf3
//!   measures it (blocks of 128 KiB, bytes counted, not hashed, at the
//!   receiver, over a [`StreamWindow`] that leaves out a warm-up as
//!   `iperf3 --omit` does);
//! - [`UdpCounter`] + [`udp_flood`]: the small-packet rate, datagrams of a
//!   fixed size sent as fast as one socket can and counted where they
//!   arrive.
//!
//! Every generator is bounded by a count and a deadline (TESTBED.md).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use hdrhistogram::Histogram;

use super::stats::latency_histogram;
use podswitch_agent::manifest::Protocol;

/// Smallest request: the 4-byte length prefix of the TCP framing and a
/// 4-byte sequence number.
pub const MIN_RR_SIZE: usize = 8;
/// Largest request (one UDP datagram over IPv4).
pub const MAX_RR_SIZE: usize = 65_507;
/// Most datagrams one [`udp_flood`] sends.
pub const MAX_FLOOD_COUNT: u64 = 200_000_000;

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn record(h: &mut Histogram<u64>, elapsed: Duration) {
    let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    h.saturating_record(ns.max(1));
}

/// Connects to `dst`, retrying refusals until `deadline`.
fn connect_until(dst: SocketAddr, deadline: Instant) -> anyhow::Result<TcpStream> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&dst, left.max(Duration::from_millis(50))) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(%dst, error = %e, "connect failed, retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {dst}")),
        }
    }
}

/// Request `i` of `size` bytes: for TCP the 4-byte big-endian length of the
/// whole message (the framing [`RrServer`](podswitch_lab::traffic::RrServer)
/// expects), then the sequence number and filler.
fn request(proto: Protocol, seq: u32, size: usize, out: &mut Vec<u8>) {
    out.clear();
    if proto == Protocol::Tcp {
        out.extend_from_slice(&(size as u32).to_be_bytes());
    }
    out.extend_from_slice(&seq.to_be_bytes());
    out.resize(size, 0x5a);
}

/// Ping-pong with one outstanding request of `size` bytes (8..=65507)
/// against an rr server at `dst`, until `duration` passes or `max_count`
/// transactions are done; returns the round-trip times (ns) and the
/// number of UDP requests whose reply never came (within 200 ms).
///
/// # Errors
/// A size out of range, a TCP connection that cannot be made within
/// `duration` or breaks, or a reply that is not a copy of the request.
pub fn rr_histogram(
    proto: Protocol,
    dst: SocketAddr,
    size: usize,
    duration: Duration,
    max_count: u64,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    rr_histogram_in(
        proto,
        dst,
        size,
        duration,
        Duration::ZERO..duration,
        max_count,
    )
}

/// [`rr_histogram`] that runs for `duration` but records only the
/// transactions that start within `window` (offsets from the start):
/// sockperf's window, which leaves out a warm-up and a cool-down
/// ([`SOCKPERF_WARMUP`](super::external::SOCKPERF_WARMUP),
/// [`SOCKPERF_COOLDOWN`](super::external::SOCKPERF_COOLDOWN)). `max_count` counts the
/// recorded transactions.
///
/// # Errors
/// As [`rr_histogram`].
pub fn rr_histogram_in(
    proto: Protocol,
    dst: SocketAddr,
    size: usize,
    duration: Duration,
    window: std::ops::Range<Duration>,
    max_count: u64,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    ensure!(
        (MIN_RR_SIZE..=MAX_RR_SIZE).contains(&size),
        "rr: size {size} must be {MIN_RR_SIZE}..={MAX_RR_SIZE}"
    );
    let start = Instant::now();
    let deadline = start + duration;
    let in_window = |t0: Instant| window.contains(&t0.duration_since(start));
    let mut hist = latency_histogram();
    let mut req = Vec::with_capacity(size);
    let mut resp = vec![0u8; MAX_RR_SIZE + 1];
    let mut count = 0u64;
    let mut lost = 0u64;
    match proto {
        Protocol::Tcp => {
            let mut s = connect_until(dst, deadline)?;
            s.set_nodelay(true)?;
            let limit = Some(Duration::from_secs(2));
            s.set_read_timeout(limit)?;
            s.set_write_timeout(limit)?;
            let mut seq = 0u32;
            while count < max_count && Instant::now() < deadline {
                request(proto, seq, size, &mut req);
                let t0 = Instant::now();
                s.write_all(&req)
                    .and_then(|()| s.read_exact(&mut resp[..size]))
                    .with_context(|| format!("rr: TCP transaction {seq} with {dst}"))?;
                let rtt = t0.elapsed();
                ensure!(
                    resp[..size] == req[..],
                    "rr: TCP response {seq} from {dst} differs from the request"
                );
                if in_window(t0) {
                    record(&mut hist, rtt);
                    count += 1;
                }
                seq = seq.wrapping_add(1);
            }
        }
        Protocol::Udp => {
            let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))
                .context("rr: binding a UDP socket")?;
            sock.connect(dst)
                .with_context(|| format!("rr: connecting UDP to {dst}"))?;
            let mut seq = 0u32;
            while count < max_count && Instant::now() < deadline {
                request(proto, seq, size, &mut req);
                seq = seq.wrapping_add(1);
                let t0 = Instant::now();
                let reply_by = t0 + Duration::from_millis(200);
                match sock.send(&req) {
                    Ok(_) => {}
                    // An ICMP error from an earlier datagram, or no
                    // server yet: try again.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(e) => return Err(e).with_context(|| format!("rr: sending to {dst}")),
                }
                let got = loop {
                    let left = reply_by.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break false;
                    }
                    sock.set_read_timeout(Some(left))?;
                    match sock.recv(&mut resp) {
                        // A late reply to an earlier request.
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
                            return Err(e).with_context(|| format!("rr: receiving from {dst}"))
                        }
                    }
                };
                match (got, in_window(t0)) {
                    (true, true) => {
                        record(&mut hist, t0.elapsed());
                        count += 1;
                    }
                    (false, true) => lost += 1,
                    (_, false) => {}
                }
            }
        }
        Protocol::Sctp => bail!("rr: SCTP is not supported"),
    }
    Ok((hist, lost))
}

/// The receiving end of [`udp_flood`]: bound as soon as
/// [`UdpCounter::bind`] returns.
#[derive(Debug)]
pub struct UdpCounter {
    sock: UdpSocket,
}

impl UdpCounter {
    /// Binds `addr`.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let sock = UdpSocket::bind(addr).with_context(|| format!("udp counter: binding {addr}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(UdpCounter { sock })
    }

    /// Counts datagrams until none arrived for `idle` after at least one
    /// did, or `deadline` passes.
    pub fn run(self, idle: Duration, deadline: Instant) -> anyhow::Result<u64> {
        let mut buf = vec![0u8; 2048];
        let mut count = 0u64;
        let mut last = None::<Instant>;
        while Instant::now() < deadline {
            match self.sock.recv(&mut buf) {
                Ok(_) => {
                    count += 1;
                    last = Some(Instant::now());
                }
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {
                    if last.is_some_and(|t| t.elapsed() >= idle) {
                        break;
                    }
                }
                Err(e) => return Err(e).context("udp counter: receiving"),
            }
        }
        Ok(count)
    }
}

/// Sends datagrams of `size` bytes to `dst` as fast as one blocking socket
/// can, for `duration` or [`MAX_FLOOD_COUNT`] datagrams; returns how many
/// were handed to the kernel. Transient send errors (a full queue, an ICMP
/// error from an earlier datagram) are skipped.
pub fn udp_flood(dst: SocketAddr, size: usize, duration: Duration) -> anyhow::Result<u64> {
    let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))
        .context("udp flood: binding a UDP socket")?;
    sock.connect(dst)
        .with_context(|| format!("udp flood: connecting to {dst}"))?;
    sock.set_write_timeout(Some(Duration::from_millis(100)))?;
    let payload = vec![0xa5u8; size];
    let deadline = Instant::now() + duration;
    let mut sent = 0u64;
    // Checking the clock every datagram costs more than a send on a fast
    // path; every 64 keeps the overrun below a millisecond.
    'outer: while sent < MAX_FLOOD_COUNT {
        for _ in 0..64 {
            match sock.send(&payload) {
                Ok(_) => sent += 1,
                Err(e)
                    if is_timeout(&e)
                        || matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionRefused | io::ErrorKind::Interrupted
                        )
                        || e.raw_os_error() == Some(nix::libc::ENOBUFS) => {}
                Err(e) => return Err(e).with_context(|| format!("udp flood: sending to {dst}")),
            }
        }
        if Instant::now() >= deadline {
            break 'outer;
        }
    }
    Ok(sent)
}

/// Bytes per write of [`stream_send`] and per read of [`StreamSink`]
/// (iperf3's default block for TCP).
const STREAM_BLOCK: usize = 128 << 10;

/// When a throughput stream is measured: what `iperf3 -t S --omit W`
/// measures at its receiver.
///
/// The sender writes until `stop` (connect + W + S); the sink counts the
/// bytes it reads from `warmup` after the first byte until `stop`.
/// Left out: connection set-up, slow start and receive-buffer
/// autotuning (the warm-up, iperf3's omitted seconds), and what is still
/// in flight at `stop` (iperf3's server stops counting when the client's
/// TEST_END arrives, right after the client stops writing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamWindow {
    /// Left out after the first byte arrives.
    pub warmup: Duration,
    /// When the sender stops writing and the window closes.
    pub stop: Instant,
}

impl StreamWindow {
    /// A window of `secs` after `warmup`, from now (when the sender
    /// starts).
    pub fn from_now(warmup: Duration, secs: Duration) -> Self {
        StreamWindow {
            warmup,
            stop: Instant::now() + warmup + secs,
        }
    }
}

/// What one throughput stream moved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamReport {
    /// Every byte of the stream (warm-up and tail included), to check
    /// that what was sent arrived.
    pub bytes: u64,
    /// Bytes in the measurement window.
    pub window_bytes: u64,
    /// Seconds of the measurement window.
    pub window_secs: f64,
}

impl StreamReport {
    /// Gbit/s in the window.
    pub fn gbit_per_s(&self) -> f64 {
        if self.window_secs > 0.0 {
            self.window_bytes as f64 * 8.0 / self.window_secs / 1e9
        } else {
            0.0
        }
    }
}

/// The receiving end of a throughput stream: counts bytes, like iperf3's
/// server, without looking at them (the lab's CRC-checking
/// [`TcpSink`](podswitch_lab::traffic::TcpSink) costs a hash per byte, which
/// on a small machine competes with the path being measured and made the
/// built-in numbers 20 % lower than iperf3's).
#[derive(Debug)]
pub struct StreamSink {
    listener: std::net::TcpListener,
}

impl StreamSink {
    /// Binds and listens on `addr`.
    pub fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("stream sink: listening on {addr}"))?;
        listener.set_nonblocking(true)?;
        Ok(StreamSink { listener })
    }

    /// The bound address.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// Accepts one connection and reads it to EOF, all before `deadline`;
    /// the rate is the bytes read within `window` over its length (see
    /// [`StreamWindow`]).
    ///
    /// # Errors
    /// No connection or EOF before `deadline`, a read error, or no byte
    /// read within the window (a warm-up as long as the stream).
    pub fn run(self, window: StreamWindow, deadline: Instant) -> anyhow::Result<StreamReport> {
        let mut stream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {
                    if Instant::now() >= deadline {
                        bail!("stream sink: no connection before the deadline");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(e).context("stream sink: accept"),
            }
        };
        stream.set_nonblocking(false)?;
        let mut buf = vec![0u8; STREAM_BLOCK];
        let mut bytes = 0u64;
        // When the window opened: the first read at least `warmup` after
        // the first byte, and the bytes read up to and including it.
        let mut first = None::<Instant>;
        let mut opened = None::<(Instant, u64)>;
        let mut at_stop = 0u64;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("stream sink: timed out after {bytes} bytes");
            }
            stream.set_read_timeout(Some(left))?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let now = Instant::now();
                    bytes += n as u64;
                    let t0 = *first.get_or_insert(now);
                    if opened.is_none() && now.duration_since(t0) >= window.warmup {
                        opened = Some((now, bytes));
                    }
                    if now <= window.stop {
                        at_stop = bytes;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => bail!("stream sink: timed out after {bytes} bytes"),
                Err(e) => return Err(e).context("stream sink: reading"),
            }
        }
        let (window_bytes, window_secs) = match opened {
            Some((t, b)) if t < window.stop && at_stop > b => (
                at_stop - b,
                window.stop.duration_since(t).as_secs_f64(),
            ),
            _ => bail!(
                "stream sink: no byte in the measurement window ({bytes} bytes in all, {:?} warm-up)",
                window.warmup
            ),
        };
        Ok(StreamReport {
            bytes,
            window_bytes,
            window_secs,
        })
    }
}

/// Writes blocks to a [`StreamSink`] at `dst` until `stop` (connecting is
/// retried until then), then closes and waits, at most `drain`, for the
/// sink to close: returns the bytes written and, as the window, all of
/// them over the time spent writing (the sender's view, for the
/// loss check).
pub fn stream_send(
    dst: SocketAddr,
    stop: Instant,
    drain: Duration,
) -> anyhow::Result<StreamReport> {
    let mut s = connect_until(dst, stop)?;
    let block = vec![0x5au8; STREAM_BLOCK];
    let start = Instant::now();
    let mut bytes = 0u64;
    while Instant::now() < stop {
        s.set_write_timeout(Some(
            stop.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ))?;
        match s.write(&block) {
            Ok(0) => bail!("stream to {dst}: closed after {bytes} bytes"),
            Ok(n) => bytes += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted || is_timeout(&e) => {}
            Err(e) => return Err(e).with_context(|| format!("stream to {dst}: writing")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    s.shutdown(std::net::Shutdown::Write)
        .with_context(|| format!("stream to {dst}: shutdown"))?;
    s.set_read_timeout(Some(drain.max(Duration::from_millis(1))))?;
    let mut b = [0u8; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                return Err(e).with_context(|| format!("stream to {dst}: sink did not close"))
            }
        }
    }
    Ok(StreamReport {
        bytes,
        window_bytes: bytes,
        window_secs: secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use podswitch_lab::traffic::RrServer;

    fn serve(proto: Protocol) -> SocketAddr {
        let server = RrServer::bind(proto, "127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || server.run());
        addr
    }

    #[test]
    fn tcp_and_udp_rr_on_loopback_fill_the_histogram() {
        for proto in [Protocol::Tcp, Protocol::Udp] {
            let addr = serve(proto);
            let (h, lost) =
                rr_histogram(proto, addr, 1024, Duration::from_millis(200), 500).unwrap();
            assert_eq!(h.len(), 500, "{proto}");
            assert!(lost <= 5, "{proto}: {lost} lost on loopback");
            assert!(h.min() > 0);
        }
    }

    #[test]
    fn rr_size_is_checked() {
        let addr = "127.0.0.1:9".parse().unwrap();
        assert!(rr_histogram(Protocol::Udp, addr, 4, Duration::ZERO, 1).is_err());
        assert!(rr_histogram(Protocol::Udp, addr, 70_000, Duration::ZERO, 1).is_err());
    }

    #[test]
    fn rr_records_only_within_its_window() {
        let addr = serve(Protocol::Udp);
        let d = Duration::from_millis(200);
        let (none, _) = rr_histogram_in(
            Protocol::Udp,
            addr,
            64,
            d,
            Duration::ZERO..Duration::ZERO,
            1000,
        )
        .unwrap();
        assert!(none.is_empty());
        // A window after the run's end records nothing.
        let late = Duration::from_millis(250)..Duration::from_millis(300);
        let (none, _) = rr_histogram_in(Protocol::Udp, addr, 64, d, late, 1_000_000).unwrap();
        assert!(none.is_empty());
        // 10 ms of 200: a twentieth of a whole run's exchanges, give or
        // take; compared with a separate whole run, so only with a margin
        // a loaded 2-core CI machine cannot erase (it once made two 50 ms
        // and 200 ms runs come out within 0.2 % of each other).
        let window = Duration::from_millis(100)..Duration::from_millis(110);
        let (some, _) = rr_histogram_in(Protocol::Udp, addr, 64, d, window, 1_000_000).unwrap();
        let (all, _) = rr_histogram(Protocol::Udp, addr, 64, d, 1_000_000).unwrap();
        assert!(
            !some.is_empty() && some.len() < all.len(),
            "{} of {}",
            some.len(),
            all.len()
        );
    }

    #[test]
    fn stream_bytes_arrive_and_are_counted_in_the_window() {
        let sink = StreamSink::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = sink.local_addr().unwrap();
        let window = StreamWindow::from_now(Duration::from_millis(50), Duration::from_millis(100));
        let t =
            std::thread::spawn(move || sink.run(window, Instant::now() + Duration::from_secs(10)));
        let sent = stream_send(addr, window.stop, Duration::from_secs(5)).unwrap();
        let got = t.join().unwrap().unwrap();
        assert_eq!(sent.bytes, got.bytes);
        // The warm-up and the tail are left out of the rate's bytes.
        assert!(got.window_bytes > 0 && got.window_bytes < got.bytes);
        assert!(
            got.window_secs > 0.0 && got.window_secs <= 0.1 + 1e-9,
            "{got:?}"
        );
        assert!(got.gbit_per_s() > 0.0 && sent.gbit_per_s() > 0.0);
    }

    #[test]
    fn a_warmup_longer_than_the_stream_is_an_error() {
        let sink = StreamSink::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = sink.local_addr().unwrap();
        let window = StreamWindow {
            warmup: Duration::from_secs(5),
            stop: Instant::now() + Duration::from_millis(50),
        };
        let t =
            std::thread::spawn(move || sink.run(window, Instant::now() + Duration::from_secs(10)));
        stream_send(addr, window.stop, Duration::from_secs(5)).unwrap();
        let e = t.join().unwrap().unwrap_err();
        assert!(
            format!("{e:#}").contains("no byte in the measurement window"),
            "{e:#}"
        );
    }

    #[test]
    fn flood_is_counted_and_bounded() {
        let counter = UdpCounter::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = counter.sock.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            counter.run(
                Duration::from_millis(200),
                Instant::now() + Duration::from_secs(5),
            )
        });
        let start = Instant::now();
        let sent = udp_flood(addr, 64, Duration::from_millis(100)).unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        let got = t.join().unwrap().unwrap();
        assert!(sent > 0 && got > 0 && got <= sent, "sent {sent} got {got}");
    }
}
