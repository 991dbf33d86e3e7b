//! Packet rate of the sans-IO pipeline (`podswitch_switch::pipeline`) on
//! in-memory batches: no taps, no syscalls, just frames and tables in and
//! verdicts out, the way a worker runs it after a read.
//!
//! Topology (one node, everything in memory):
//!
//! ```text
//!   pod-0 10.244.1.2 (port 0) ──┐
//!   pod-1 10.244.1.3 (port 1) ──┤  gateway 10.244.1.1 / ee:ee:ee:ee:ee:ee
//!   ...                         ├─ pod CIDR 10.244.1.0/24, offloads on
//!   pod-249 10.244.1.251 ───────┘
//! ```
//!
//! Every case is one batch of [`BATCH`] frames from pod-0 (a batch comes
//! from one tap queue), reported as packets per second through
//! `Throughput::Elements`:
//!
//! | case                | stages          | frames                                      |
//! | ------------------- | --------------- | ------------------------------------------- |
//! | `parse_udp64`       | parse only      | UDP, 64-byte Ethernet frame                 |
//! | `route_udp64`       | full pipeline   | same, forwarded pod -> pod                  |
//! | `route_tcp1448`     | full pipeline   | TCP, 1448 B payload + timestamps (1500 MTU) |
//! | `route_tso64k`      | full pipeline   | TSO superframe, 45 x 1448 B, NEEDS_CSUM     |
//! | `gateway_arp`       | full pipeline   | ARP request for the gateway -> reply        |
//! | `gateway_icmp_echo` | full pipeline   | ICMP echo to the gateway -> reply           |
//! | `mixed_malformed`   | full pipeline   | 14 kinds of bad frame, one drop reason each |
//!
//! `route_table/lookup_v4_250pods` times longest-prefix match alone over a
//! table of one /24 and 250 host routes (256 lookups per iteration).
//!
//! In `mixed_malformed` three kinds owe their sender an ICMP error (TTL
//! expired, host and net unreachable); the worker's ICMP error rate limit
//! (1000/s, burst 200) is soon spent, so in steady state the bench measures
//! those as suppressed drops, which is what a flood of them costs.
//!
//! # Timing model
//!
//! The pipeline rewrites frames in place (TTL, MACs, replies), so each
//! iteration must start from pristine bytes. One [`Batch`] is allocated per
//! case and reused, as a worker reuses its pool; before each timed
//! `Pipeline::process` the untimed setup restores the first
//! [`RESTORE_WINDOW`] bytes of every frame and resets its length, metadata
//! and verdict. `iter_batched_ref` is not used because a `Batch` owns 64
//! buffers of 64 KiB (4 MiB), and criterion would keep many of them alive
//! at once. Only `process` is inside the clock; the two `Instant::now`
//! reads around it (~20-40 ns per 64-frame batch) are included.
//!
//! Before measuring, every case runs once and is checked: the verdicts are
//! the ones the case is about (a forwarding bench that silently measured
//! the drop path would be worse than none), and the restore really gives
//! back the pristine bytes (the pipeline wrote nothing beyond the window).
//!
//! Run: `cargo bench --bench pipeline` (a few seconds per case) or
//! `cargo bench --bench pipeline -- --quick` (well under a minute).
//!
//! # Instructions per packet
//!
//! `pipeline --instructions CASE` runs one case a fixed number of batches
//! with a frozen clock, for callgrind (`benches/instructions/mod.rs`);
//! `benches/tools/instructions.sh` counts `route_udp64` (pod to pod),
//! `gateway_arp` and `gateway_icmp_echo` that way on every `./run test`
//! (through the switch crate's `instructions` bench, which compiles this
//! file as a module) and fails when one grows more than 5 % over its
//! committed baseline.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use etherparse::{PacketBuilder, TcpOptionElement};
use podswitch_switch::conntrack::{ConnTrack, ConntrackConfig};
use podswitch_switch::metrics::WorkerCounters;
use podswitch_switch::pipeline::parse::ParseStage;
use podswitch_switch::pipeline::{Batch, Pipeline, Verdict};
use podswitch_switch::tables::{Gateway, PodPort, PortId, Tables};
use podswitch_switch::wire::checksum;
use podswitch_switch::wire::vnet_hdr::{self, VnetHdr};

mod instructions;

/// Frames per batch, as a worker reads them.
const BATCH: usize = 64;
/// Pods on the benchmark node.
const PODS: u8 = 250;
/// Bytes restored per frame between iterations: every header the pipeline
/// rewrites (vnet, Ethernet, IPv4, L4, or a whole small reply) lies within.
const RESTORE_WINDOW: usize = 256;
/// The gateway's MAC (locally administered unicast).
const GW_MAC: [u8; 6] = [0xee; 6];
/// The gateway's address, the first of the pod CIDR.
const GW_IP: [u8; 4] = [10, 244, 1, 1];
/// TCP segment payload, with timestamps: 20 + 32 + 1448 = 1500.
const MSS: usize = 1448;
/// Segments in a TSO superframe: 45 x 1448 = 65160 B, the largest multiple
/// of the MSS under the 64 KiB IPv4 limit, as Linux builds them.
const TSO_SEGMENTS: usize = 45;
/// The ingress port of every case (pod-0).
const INGRESS: PortId = 0;
/// The flow table's hash seed (fixed: the same chains on every run).
const CONNTRACK_SEED: u64 = 0x5eed_c0ff_ee00_0001;

/// The address of pod `i`: 10.244.1.(i + 2).
fn pod_ip(i: u8) -> [u8; 4] {
    [10, 244, 1, i + 2]
}

/// The MAC of a pod, derived from its address as the CNI bridge plugin does.
fn mac_of(ip: [u8; 4]) -> [u8; 6] {
    [0x0a, 0x58, ip[0], ip[1], ip[2], ip[3]]
}

/// One node with pod CIDR 10.244.1.0/24 and [`PODS`] pods on ports with
/// offloads (vnet_hdr taps), MTU 1500.
fn tables() -> Tables {
    let ports = (0..PODS)
        .map(|i| {
            let ip = pod_ip(i);
            Some(PodPort {
                id: PortId::from(i),
                pod: format!("bench/pod-{i}"),
                ifname: "eth0".into(),
                netns: PathBuf::from(format!("/run/netns/bench-pod{i}")),
                mac: mac_of(ip),
                ipv4: Some(Ipv4Addr::from(ip)),
                ipv6: None,
                mtu: 1500,
                offloads: true,
                kind: podswitch_switch::tables::PortKind::Pod,
            })
        })
        .collect();
    Tables::new(
        "bench-node",
        Gateway {
            mac: GW_MAC,
            ipv4: Ipv4Addr::from(GW_IP),
            ipv6: None,
        },
        vec!["10.244.1.0/24".parse().expect("valid CIDR")],
        ports,
    )
}

/// Prefixes `frame` with an all-zero vnet header (a plain frame).
fn with_vnet(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; vnet_hdr::LEN];
    v.extend_from_slice(frame);
    v
}

/// A UDP frame from pod-0 to `dst`, `frame_len` bytes of Ethernet frame.
fn udp(dst: [u8; 4], frame_len: usize) -> Vec<u8> {
    let src = pod_ip(0);
    let mut out = Vec::with_capacity(frame_len);
    PacketBuilder::ethernet2(mac_of(src), GW_MAC)
        .ipv4(src, dst, 64)
        .udp(40000, 5201)
        .write(&mut out, &vec![0xab; frame_len - 14 - 20 - 8])
        .expect("fixture serialises");
    with_vnet(&out)
}

/// A TCP segment from pod-0 to `dst` with timestamps and `payload` bytes,
/// DF set as Linux sends it.
fn tcp(dst: [u8; 4], payload: usize) -> Vec<u8> {
    let src = pod_ip(0);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac_of(src), GW_MAC)
        .ipv4(src, dst, 64)
        .tcp(40000, 5201, 1, 65535)
        .ack(1)
        .options(&[
            TcpOptionElement::Noop,
            TcpOptionElement::Noop,
            TcpOptionElement::Timestamp(1, 2),
        ])
        .expect("TCP options fit")
        .write(&mut out, &vec![0xcd; payload])
        .expect("fixture serialises");
    let mut f = with_vnet(&out);
    set_df(&mut f);
    f
}

/// Offset of the IPv4 header in a vnet-prefixed frame.
const IP: usize = vnet_hdr::LEN + 14;

/// Recomputes the IPv4 header checksum of a vnet-prefixed frame.
fn fix_ipv4_checksum(f: &mut [u8]) {
    let ip = &mut f[IP..IP + 20];
    ip[10..12].fill(0);
    let c = checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Sets Don't Fragment (Linux TCP always does, for PMTU discovery).
fn set_df(f: &mut [u8]) {
    f[IP + 6] |= 0x40;
    fix_ipv4_checksum(f);
}

/// A TSO superframe as a tap hands it over from a pod's TCP stack:
/// vnet header with `gso_type` TCPV4, `gso_size` = MSS and NEEDS_CSUM, TCP
/// checksum field holding the pseudo-header sum only (CHECKSUM_PARTIAL).
fn tso(dst: [u8; 4]) -> Vec<u8> {
    let mut f = tcp(dst, MSS * TSO_SEGMENTS);
    let l4 = IP + 20;
    let tcp_hdr_len = usize::from(f[l4 + 12] >> 4) * 4;
    let l4_len = f.len() - l4;
    // RFC 793 pseudo-header: src, dst, zero, protocol, TCP length.
    let mut pseudo = [0u8; 12];
    pseudo[..8].copy_from_slice(&f[IP + 12..IP + 20]);
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(
        &u16::try_from(l4_len)
            .expect("superframe under 64 KiB")
            .to_be_bytes(),
    );
    let partial = checksum::sum(&pseudo, 0) as u16;
    f[l4 + 16..l4 + 18].copy_from_slice(&partial.to_be_bytes());
    let mut h = VnetHdr::new_checked(&mut f[..vnet_hdr::LEN]).expect("vnet header present");
    h.set_flags(vnet_hdr::FLAG_NEEDS_CSUM);
    h.set_gso_type(vnet_hdr::gso::TCPV4);
    h.set_gso_size(MSS as u16);
    h.set_hdr_len((14 + 20 + tcp_hdr_len) as u16);
    h.set_csum_start((14 + 20) as u16);
    h.set_csum_offset(16);
    f
}

/// An ARP request from pod-0 for the gateway's address (broadcast).
fn arp_request_for_gateway() -> Vec<u8> {
    let (ip, mac) = (pod_ip(0), mac_of(pod_ip(0)));
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    // EtherType ARP; htype Ethernet, ptype IPv4, hlen 6, plen 4, op request.
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&GW_IP);
    with_vnet(&f)
}

/// An ICMP echo request from pod-0 to the gateway, 56 bytes of data (ping).
fn icmp_echo_to_gateway() -> Vec<u8> {
    let src = pod_ip(0);
    let mut out = Vec::new();
    PacketBuilder::ethernet2(mac_of(src), GW_MAC)
        .ipv4(src, GW_IP, 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut out, &[0x5a; 56])
        .expect("fixture serialises");
    with_vnet(&out)
}

/// Frames the switch must drop (or answer with a rate-limited ICMP error),
/// one per drop reason a pod can provoke; the batch cycles through them.
fn malformed_kinds() -> Vec<(&'static str, Vec<u8>)> {
    let src = pod_ip(0);
    let peer = pod_ip(1);
    let ok = || udp(peer, 64);
    let mut kinds = Vec::new();

    kinds.push(("frame_too_short", vec![0u8; vnet_hdr::LEN + 6]));

    let mut f = ok();
    f[1] = 0x7f; // gso_type nobody defines
    kinds.push(("vnet_hdr_invalid", f));

    // UDP under a TCPV4 GSO header.
    let mut f = ok();
    let mut h = VnetHdr::new_checked(&mut f[..vnet_hdr::LEN]).expect("vnet header present");
    h.set_flags(vnet_hdr::FLAG_NEEDS_CSUM);
    h.set_gso_type(vnet_hdr::gso::TCPV4);
    h.set_gso_size(MSS as u16);
    h.set_csum_start((14 + 20) as u16);
    h.set_csum_offset(6);
    kinds.push(("gso_mismatch", f));

    let mut f = ok();
    f[vnet_hdr::LEN + 11] ^= 0x01; // source MAC is not pod-0's
    kinds.push(("source_mac_spoofed", f));

    let mut f = ok();
    f[IP + 12..IP + 16].copy_from_slice(&peer);
    fix_ipv4_checksum(&mut f);
    kinds.push(("source_ip_spoofed", f));

    let mut f = ok();
    f[IP + 10] ^= 0xff;
    kinds.push(("ipv4_checksum_invalid", f));

    let mut f = ok();
    f[IP] = 0x44; // IHL 4: shorter than an IPv4 header
    fix_ipv4_checksum(&mut f);
    kinds.push(("ipv4_header_invalid", f));

    // A TCP header cut to 10 bytes, IPv4 lengths consistent with the cut.
    let mut f = tcp(peer, 0);
    f.truncate(IP + 20 + 10);
    f[IP + 2..IP + 4].copy_from_slice(&30u16.to_be_bytes());
    fix_ipv4_checksum(&mut f);
    kinds.push(("l4_header_invalid", f));

    let mut f = ok();
    f[vnet_hdr::LEN..vnet_hdr::LEN + 6].copy_from_slice(&mac_of(peer));
    kinds.push(("dst_mac_not_gateway", f));

    let mut f = ok();
    f[vnet_hdr::LEN + 12..vnet_hdr::LEN + 14].copy_from_slice(&0x88b5u16.to_be_bytes());
    kinds.push(("unsupported_ethertype", f));

    let mut v6 = Vec::new();
    PacketBuilder::ethernet2(mac_of(src), GW_MAC)
        .ipv6(
            [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2],
            [0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3],
            64,
        )
        .udp(40000, 5201)
        .write(&mut v6, &[0; 16])
        .expect("fixture serialises");
    kinds.push(("ipv6_not_routed", with_vnet(&v6)));

    let mut f = ok();
    f[IP + 8] = 1;
    fix_ipv4_checksum(&mut f);
    kinds.push(("ttl_expired", f));

    kinds.push(("host_unreachable", udp([10, 244, 1, 254], 64)));
    // TEST-NET-3 (TESTBED.md's "outside"); only bytes in memory here.
    kinds.push(("no_route", udp([203, 0, 113, 9], 64)));
    kinds
}

/// Drop reasons for which the route stage answers with an ICMP error
/// (while its rate limit allows) instead of dropping silently.
const ICMP_ERROR_REASONS: &[&str] = &["ttl_expired", "host_unreachable", "no_route"];

/// What a case's verdicts must be for the case to mean what it says.
#[derive(Clone, Debug)]
enum Expect {
    /// Parse only: every frame parsed and left for the next stage.
    Parsed,
    /// Every frame forwarded to a pod port.
    Forwarded,
    /// Every frame turned into a reply by the gateway.
    Replied,
    /// Frame `i` dropped for reason `reasons[i]` (the `DropReason` metric
    /// name), or answered with an ICMP error where that reason owes one.
    Dropped(Vec<&'static str>),
}

/// One benchmark case: pristine frames and the stages to run.
struct Case {
    name: &'static str,
    frames: Vec<Vec<u8>>,
    parse_only: bool,
    expect: Expect,
}

impl Case {
    fn full(name: &'static str, frames: Vec<Vec<u8>>, expect: Expect) -> Self {
        Case {
            name,
            frames,
            parse_only: false,
            expect,
        }
    }
}

/// Pod-to-pod frames: pod-0 to pods 1..=64, one flow per destination.
fn to_pods(frame: impl Fn([u8; 4]) -> Vec<u8>) -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|i| frame(pod_ip(1 + (i % usize::from(PODS - 1)) as u8)))
        .collect()
}

fn cases() -> Vec<Case> {
    let kinds = malformed_kinds();
    let (reasons, malformed) = (0..BATCH).map(|i| kinds[i % kinds.len()].clone()).unzip();
    vec![
        Case {
            name: "parse_udp64",
            frames: to_pods(|d| udp(d, 64)),
            parse_only: true,
            expect: Expect::Parsed,
        },
        Case::full("route_udp64", to_pods(|d| udp(d, 64)), Expect::Forwarded),
        Case::full("route_tcp1448", to_pods(|d| tcp(d, MSS)), Expect::Forwarded),
        Case::full("route_tso64k", to_pods(tso), Expect::Forwarded),
        Case::full(
            "gateway_arp",
            vec![arp_request_for_gateway(); BATCH],
            Expect::Replied,
        ),
        Case::full(
            "gateway_icmp_echo",
            vec![icmp_echo_to_gateway(); BATCH],
            Expect::Replied,
        ),
        Case::full("mixed_malformed", malformed, Expect::Dropped(reasons)),
    ]
}

/// The stages a case runs, owning the worker state that persists between
/// batches (counters, the ICMP error rate limiter).
struct Runner {
    pipeline: Pipeline,
    parse: ParseStage,
    counters: Arc<WorkerCounters>,
    parse_only: bool,
}

impl Runner {
    fn new(parse_only: bool) -> Self {
        let counters = Arc::new(WorkerCounters::default());
        let ct = ConnTrack::with_seed(ConntrackConfig::default(), 1, CONNTRACK_SEED);
        Runner {
            pipeline: Pipeline::with_conntrack(Arc::clone(&counters), Arc::new(ct), 0, 1),
            parse: ParseStage,
            counters,
            parse_only,
        }
    }

    #[inline]
    fn run(&mut self, batch: &mut Batch, tables: &Tables, now: Instant) {
        if self.parse_only {
            self.parse.process(batch, tables, &self.counters);
        } else {
            self.pipeline.process(batch, tables, now);
        }
    }
}

/// Loads the pristine frames into a fresh batch.
fn load(frames: &[Vec<u8>]) -> Batch {
    let mut batch = Batch::new(frames.len());
    for f in frames {
        assert!(batch.push_bytes(INGRESS, f), "batch holds every frame");
    }
    batch
}

/// Puts the batch back to its pristine state: the first [`RESTORE_WINDOW`]
/// bytes of each frame, its length, metadata and verdict.
#[inline]
fn restore(batch: &mut Batch, frames: &[Vec<u8>]) {
    for (p, f) in batch.packets_mut().iter_mut().zip(frames) {
        let n = f.len().min(RESTORE_WINDOW);
        p.read_area()[..n].copy_from_slice(&f[..n]);
        p.filled(INGRESS, f.len());
    }
}

/// Runs a case once and checks its verdicts and that [`restore`] gives
/// back the pristine bytes; panics with the offending frame otherwise.
fn check(case: &Case, tables: &Tables) {
    let mut batch = load(&case.frames);
    let mut runner = Runner::new(case.parse_only);
    runner.run(&mut batch, tables, Instant::now());
    check_verdicts(case, &batch);
    restore(&mut batch, &case.frames);
    for (i, (p, f)) in batch.packets().iter().zip(&case.frames).enumerate() {
        assert!(
            p.data() == f.as_slice(),
            "case {}: frame {i} differs from its pristine bytes after restore; \
             the pipeline wrote beyond RESTORE_WINDOW ({RESTORE_WINDOW} B)",
            case.name
        );
    }
}

/// Checks that the verdicts of a processed batch are the ones the case is
/// about; panics with the offending frame otherwise.
fn check_verdicts(case: &Case, batch: &Batch) {
    for (i, p) in batch.packets().iter().enumerate() {
        let ok = match &case.expect {
            Expect::Parsed => p.verdict == Verdict::Pending,
            Expect::Forwarded => matches!(p.verdict, Verdict::Forward { .. }),
            Expect::Replied => p.verdict == Verdict::Reply,
            Expect::Dropped(reasons) => match p.verdict {
                Verdict::Drop(r) => r.name() == reasons[i],
                Verdict::Reply => ICMP_ERROR_REASONS.contains(&reasons[i]),
                _ => false,
            },
        };
        assert!(
            ok,
            "case {}: frame {i} ({} bytes with vnet header) got {:?}, expected {:?}",
            case.name,
            case.frames[i].len(),
            p.verdict,
            match &case.expect {
                Expect::Dropped(reasons) => format!("Drop({})", reasons[i]),
                other => format!("{other:?}"),
            }
        );
    }
}

fn bench_pipeline(c: &mut Criterion) {
    let tables = tables();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(BATCH as u64));
    for case in cases() {
        check(&case, &tables);
        let mut batch = load(&case.frames);
        let mut runner = Runner::new(case.parse_only);
        group.bench_function(case.name, |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    restore(&mut batch, &case.frames);
                    let start = Instant::now();
                    runner.run(black_box(&mut batch), &tables, start);
                    timed += start.elapsed();
                }
                black_box(batch.packets().first().map(|p| p.verdict));
                timed
            });
        });
    }
    group.finish();
}

fn bench_route_lookup(c: &mut Criterion) {
    let tables = tables();
    // Every address of the /24: network, gateway, 250 pods, unassigned,
    // broadcast; one in ten outside the CIDR (no route).
    let addrs: Vec<IpAddr> = (0..=255u8)
        .map(|host| {
            if host % 10 == 9 {
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, host))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 244, 1, host))
            }
        })
        .collect();
    let mut group = c.benchmark_group("route_table");
    group.throughput(Throughput::Elements(addrs.len() as u64));
    group.bench_function("lookup_v4_250pods", |b| {
        b.iter(|| {
            for &a in black_box(&addrs) {
                black_box(tables.routes.lookup(a));
            }
        });
    });
    group.finish();
}

fn config() -> Criterion {
    // TESTBED.md: a few seconds per case; `--quick` stops earlier still.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

/// A case in the instruction-count mode: the criterion iteration's
/// restore (untimed) and `process` (counted), with a frozen clock.
struct Counted<'a> {
    case: &'a Case,
    tables: &'a Tables,
    batch: Batch,
    runner: Runner,
    now: Instant,
}

impl instructions::Counted for Counted<'_> {
    fn next_batch(&mut self) -> usize {
        restore(&mut self.batch, &self.case.frames);
        self.batch.len()
    }

    fn run(&mut self) {
        self.runner.run(&mut self.batch, self.tables, self.now);
    }

    fn check(&self) {
        check_verdicts(self.case, &self.batch);
    }
}

/// `--instructions CASE`: one case, a fixed number of batches (also
/// called by `switch/benches/instructions.rs`).
pub(crate) fn count_instructions(name: &str) {
    let tables = tables();
    let cases = cases();
    let Some(case) = cases.iter().find(|c| c.name == name) else {
        let known: Vec<&str> = cases.iter().map(|c| c.name).collect();
        instructions::unknown(name, &known)
    };
    check(case, &tables);
    // One instant for every batch, read before the flow table is made.
    let now = Instant::now();
    instructions::count(
        name,
        &mut Counted {
            case,
            tables: &tables,
            batch: load(&case.frames),
            runner: Runner::new(case.parse_only),
            now,
        },
    );
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_pipeline, bench_route_lookup
}

// criterion_main!, with the instruction-count mode in front.
fn main() {
    if let Some(case) = instructions::requested() {
        count_instructions(&case);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
