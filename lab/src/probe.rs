//! Small probes the lab's report and tests use from inside a pod's
//! namespace: ICMP echo (with a chosen TTL) over a raw socket, and an
//! HTTP/1.1 GET.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// An ICMP error received in answer to a probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpError {
    pub from: Ipv4Addr,
    #[serde(rename = "type")]
    pub icmp_type: u8,
    pub code: u8,
}

/// What [`icmp_probe`] saw.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProbeReport {
    pub sent: u32,
    pub echo_replies: u32,
    pub errors: Vec<IcmpError>,
    pub rtt_us: Vec<f64>,
}

fn icmp_checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sends `count` ICMP echo requests to `dst` with IP TTL `ttl`, one at a
/// time, waiting up to `timeout` for each answer (an echo reply or an ICMP
/// error quoting our request).
pub fn icmp_probe(
    dst: Ipv4Addr,
    count: u32,
    ttl: u32,
    timeout: Duration,
) -> anyhow::Result<ProbeReport> {
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
        .context("raw ICMP socket (needs CAP_NET_RAW)")?;
    sock.set_ttl_v4(ttl).context("setting IP TTL")?;
    let ident = (std::process::id() & 0xffff) as u16;
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    let mut report = ProbeReport::default();
    for seq in 0..count as u16 {
        let mut req = [0u8; 64];
        req[0] = 8;
        req[4..6].copy_from_slice(&ident.to_be_bytes());
        req[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in req[8..].iter_mut().enumerate() {
            *b = i as u8;
        }
        let c = icmp_checksum(&req);
        req[2..4].copy_from_slice(&c.to_be_bytes());
        let start = Instant::now();
        sock.send_to(&req, &to).context("sending ICMP echo")?;
        report.sent += 1;
        let deadline = start + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))
                .context("socket timeout")?;
            let mut buf = [0u8; 1500];
            // A raw socket hands over the whole datagram, IP header first;
            // the sender's address is in that header.
            let n = match (&sock).read(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e).context("receiving ICMP"),
            };
            let pkt = &buf[..n];
            if pkt.len() < 20 {
                continue;
            }
            let from = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
            let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
            let Some(icmp) = pkt.get(ihl..) else { continue };
            if icmp.len() < 8 {
                continue;
            }
            match icmp[0] {
                0 if icmp[4..6] == ident.to_be_bytes() && icmp[6..8] == seq.to_be_bytes() => {
                    report.echo_replies += 1;
                    report.rtt_us.push(start.elapsed().as_secs_f64() * 1e6);
                    break;
                }
                3 | 11 | 12 => {
                    // The quoted datagram: IP header then our ICMP header.
                    let q = &icmp[8..];
                    let qihl = usize::from(q.first().copied().unwrap_or(0) & 0x0f) * 4;
                    if let Some(qicmp) = q.get(qihl..qihl + 8) {
                        if qicmp[0] == 8
                            && qicmp[4..6] == ident.to_be_bytes()
                            && qicmp[6..8] == seq.to_be_bytes()
                        {
                            report.errors.push(IcmpError {
                                from,
                                icmp_type: icmp[0],
                                code: icmp[1],
                            });
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(report)
}

/// One HTTP/1.1 GET; returns the status code and body.
pub fn http_get(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: podswitch-probe\r\n\r\n").context("sending request")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .with_context(|| format!("reading response from {addr}"))?;
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP response from {addr}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in response from {addr}"))?;
    Ok((status, body.to_string()))
}
