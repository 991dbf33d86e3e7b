//! Whole TCP connections through the pipeline, in memory and without root:
//! two smoltcp hosts sit on pod ports of one node and talk through a
//! ClusterIP, as quinn-proto tests its connections without sockets.
//!
//! ```text
//!  pod A 10.244.1.2 (port 0)                     pod B 10.244.1.3 (port 1)
//!  smoltcp client ──> Pipeline (ARP, DNAT to B, route) ──> smoltcp server :80
//!        <── reverse NAT (source back to 10.96.0.10:8080) <──
//! ```
//!
//! Every frame a host sends goes through `Pipeline::process` as a batch of
//! one from its port; `Forward` hands it to the host on the destination
//! port, `Reply` back to the sender, a drop is recorded. Time is virtual:
//! each step advances both hosts' clocks and the pipeline's by 10 ms.
//! smoltcp verifies every checksum it receives, so a NAT rewrite with a
//! wrong checksum shows as a stalled connection.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant as StdInstant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};

use super::testutil::{counters, mac_of, svc_tables, GW, POD_A, POD_B, POD_C, VIP};
use super::{Batch, DropReason, Pipeline, Verdict};
use crate::conntrack::state::FlowState;
use crate::tables::{PortId, Tables};
use crate::wire::vnet_hdr;

/// A host's end of its tap: frames it sent, frames waiting for it.
struct Wire {
    to_host: VecDeque<Vec<u8>>,
    from_host: VecDeque<Vec<u8>>,
    /// The host's largest frame (its MTU plus the Ethernet header).
    max_frame: usize,
}

impl Default for Wire {
    fn default() -> Self {
        Wire {
            to_host: VecDeque::new(),
            from_host: VecDeque::new(),
            max_frame: 1514,
        }
    }
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0u8; len];
        let r = f(&mut frame);
        self.0.push_back(frame);
        r
    }
}

impl Device for Wire {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: Instant) -> Option<(Rx, Tx<'_>)> {
        let frame = self.to_host.pop_front()?;
        Some((Rx(frame), Tx(&mut self.from_host)))
    }

    fn transmit(&mut self, _: Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.from_host))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.max_frame;
        caps
    }
}

/// A pod: a smoltcp interface on pod port `port` with one TCP socket.
struct Host {
    port: PortId,
    iface: Interface,
    wire: Wire,
    sockets: SocketSet<'static>,
    tcp: SocketHandle,
}

impl Host {
    fn new(port: PortId, ip: [u8; 4], now: Instant) -> Self {
        Host::with_mtu(port, ip, 1500, now)
    }

    /// A host whose interface has `mtu` (its TCP announces MSS `mtu - 40`).
    fn with_mtu(port: PortId, ip: [u8; 4], mtu: usize, now: Instant) -> Self {
        let mut wire = Wire {
            max_frame: mtu + 14,
            ..Wire::default()
        };
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac_of(ip))));
        config.random_seed = u64::from(port) + 1;
        let mut iface = Interface::new(config, &mut wire, now);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::from(ip)), 24))
                .expect("one address");
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Address::from(GW))
            .expect("one route");
        let mut sockets = SocketSet::new(Vec::new());
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        let tcp = sockets.add(socket);
        Host {
            port,
            iface,
            wire,
            sockets,
            tcp,
        }
    }

    fn poll(&mut self, now: Instant) {
        self.iface.poll(now, &mut self.wire, &mut self.sockets);
    }

    fn socket(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(self.tcp)
    }
}

/// The client, its servers, the pipeline between them, virtual time, and
/// every drop.
struct Net {
    /// The client (pod A, port 0) first, then one server per endpoint.
    hosts: Vec<Host>,
    pipeline: Pipeline,
    tables: Tables,
    start: StdInstant,
    ms: u64,
    drops: Vec<DropReason>,
    /// Lose the n-th frame (counting from 1) the client sends, on the wire
    /// before the switch, as a lossy link would.
    lose_client_frame: Option<usize>,
    client_frames: usize,
    /// Frames the pipeline delivered to the client, as it got them.
    to_client: Vec<Vec<u8>>,
}

impl Net {
    /// Pod A (client, port 0) and pod B (server on :80, port 1) on the
    /// node of `svc_tables` with B as the Service's endpoint.
    fn new() -> Self {
        Net::with(&[(1, POD_B)], None)
    }

    /// Pod A (client, port 0) and a server on :80 per endpoint (its port
    /// and address: port 1 is B, port 2 is C, whose MTU is 1400), with
    /// session affinity if given.
    fn with(endpoints: &[(PortId, [u8; 4])], affinity: Option<u32>) -> Self {
        let now = Instant::from_millis(0);
        let mut hosts = vec![Host::new(0, POD_A, now)];
        for &(port, ip) in endpoints {
            let mut server = Host::new(port, ip, now);
            server.socket().listen(80).expect("listen");
            hosts.push(server);
        }
        let eps: Vec<([u8; 4], bool)> = endpoints.iter().map(|&(_, ip)| (ip, false)).collect();
        Net {
            hosts,
            pipeline: Pipeline::new(counters()),
            tables: svc_tables(&eps, affinity),
            start: StdInstant::now(),
            ms: 0,
            drops: Vec::new(),
            lose_client_frame: None,
            client_frames: 0,
            to_client: Vec::new(),
        }
    }

    fn client(&mut self) -> &mut tcp::Socket<'static> {
        self.hosts[0].socket()
    }

    fn server(&mut self) -> &mut tcp::Socket<'static> {
        self.hosts[1].socket()
    }

    /// The server host that holds the client's connection, by address.
    fn serving(&mut self) -> Option<[u8; 4]> {
        self.hosts[1..].iter_mut().find_map(|h| {
            let socket = h.socket();
            if socket.state() != tcp::State::Established {
                return None;
            }
            match socket.local_endpoint()?.addr {
                IpAddress::Ipv4(a) => Some(a.octets()),
                #[allow(unreachable_patterns)]
                _ => None,
            }
        })
    }

    /// One step: both hosts poll, and what they sent crosses the pipeline.
    fn step(&mut self) {
        self.ms += 10;
        let now = Instant::from_millis(self.ms as i64);
        let pipeline_now = self.start + Duration::from_millis(self.ms);
        for h in &mut self.hosts {
            h.poll(now);
        }
        for from in 0..self.hosts.len() {
            while let Some(frame) = self.hosts[from].wire.from_host.pop_front() {
                if from == 0 {
                    self.client_frames += 1;
                    if self.lose_client_frame == Some(self.client_frames) {
                        continue;
                    }
                }
                let mut batch = Batch::new(1);
                let mut bytes = vec![0u8; vnet_hdr::LEN];
                bytes.extend_from_slice(&frame);
                assert!(batch.push_bytes(self.hosts[from].port, &bytes));
                self.pipeline
                    .process(&mut batch, &self.tables, pipeline_now);
                let p = &batch.packets()[0];
                let to = match p.verdict {
                    Verdict::Forward { port } => port,
                    Verdict::Reply => self.hosts[from].port,
                    Verdict::Drop(reason) => {
                        self.drops.push(reason);
                        continue;
                    }
                    other => panic!("unexpected verdict {other:?}"),
                };
                if to == 0 {
                    self.to_client.push(p.frame().to_vec());
                }
                let host = self
                    .hosts
                    .iter_mut()
                    .find(|h| h.port == to)
                    .expect("a host on the destination port");
                host.wire.to_host.push_back(p.frame().to_vec());
            }
        }
    }

    /// Steps until `done` holds, at most `steps` times.
    fn run_until(&mut self, steps: usize, mut done: impl FnMut(&mut Net) -> bool) -> bool {
        for _ in 0..steps {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// The service flow's state in the table (keyed by the client's side).
    fn flow_state(&self) -> Option<FlowState> {
        let flows = self.pipeline.conntrack.table().list(16, |f| {
            f.orig.dst == Ipv4Addr::from(VIP) && f.state != FlowState::Affinity
        });
        flows.first().map(|f| f.state)
    }
}

fn connect(net: &mut Net) {
    connect_from(net, 49152);
}

/// Connects the client from `local_port` to the ClusterIP, until both ends
/// are established.
fn connect_from(net: &mut Net, local_port: u16) {
    let client = &mut net.hosts[0];
    let cx = client.iface.context();
    let socket = client.sockets.get_mut::<tcp::Socket>(client.tcp);
    socket
        .connect(
            cx,
            (IpAddress::Ipv4(Ipv4Address::from(VIP)), 8080),
            local_port,
        )
        .expect("connect");
    assert!(
        net.run_until(100, |n| n.client().state() == tcp::State::Established
            && n.serving().is_some()),
        "no handshake through the ClusterIP; drops {:?}",
        net.drops
    );
}

#[test]
fn a_connection_through_a_cluster_ip_carries_data_both_ways_and_closes() {
    let mut net = Net::new();
    connect(&mut net);
    assert_eq!(net.flow_state(), Some(FlowState::Established));
    // The server sees the client's own address (ClusterIP keeps it), the
    // client only the ClusterIP.
    let remote = net.server().remote_endpoint().expect("connected");
    assert_eq!(remote.addr, IpAddress::Ipv4(Ipv4Address::from(POD_A)));
    let remote = net.client().remote_endpoint().expect("connected");
    assert_eq!(remote.addr, IpAddress::Ipv4(Ipv4Address::from(VIP)));
    // 200 KB up, 200 KB down: many segments, windows, ACKs, all NATed.
    let up: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = up.iter().rev().copied().collect();
    let (mut sent_up, mut sent_down) = (0, 0);
    let (mut got_up, mut got_down) = (Vec::new(), Vec::new());
    let done = net.run_until(2000, |n| {
        sent_up += n.client().send_slice(&up[sent_up..]).unwrap_or(0);
        sent_down += n.server().send_slice(&down[sent_down..]).unwrap_or(0);
        let mut buf = [0u8; 8192];
        while let Ok(k @ 1..) = n.server().recv_slice(&mut buf) {
            got_up.extend_from_slice(&buf[..k]);
        }
        while let Ok(k @ 1..) = n.client().recv_slice(&mut buf) {
            got_down.extend_from_slice(&buf[..k]);
        }
        got_up.len() == up.len() && got_down.len() == down.len()
    });
    assert!(
        done,
        "transfer stalled at {} / {} bytes; drops {:?}",
        got_up.len(),
        got_down.len(),
        net.drops
    );
    assert_eq!(
        (got_up == up, got_down == down),
        (true, true),
        "data changed on the way"
    );
    // The client closes first; both FINs cross; the flow follows.
    net.client().close();
    assert!(net.run_until(100, |n| n.server().state() == tcp::State::CloseWait));
    assert_eq!(net.flow_state(), Some(FlowState::CloseWait));
    net.server().close();
    assert!(
        net.run_until(200, |n| n.client().state() == tcp::State::TimeWait
            && n.server().state() == tcp::State::Closed),
        "client {:?}, server {:?}",
        net.client().state(),
        net.server().state()
    );
    assert_eq!(net.flow_state(), Some(FlowState::TimeWait));
    assert!(net.drops.is_empty(), "drops: {:?}", net.drops);
}

#[test]
fn a_removed_endpoint_resets_the_client_at_its_next_segment() {
    let mut net = Net::new();
    connect(&mut net);
    // The endpoint goes away: the daemon publishes the table without it
    // and removes the flows it strands (`flow_is_stale`).
    net.tables = svc_tables(&[], None);
    let services = std::sync::Arc::clone(&net.tables.services);
    let removed = net
        .pipeline
        .conntrack
        .table()
        .remove_where(|f| services.flow_is_stale(f));
    assert_eq!(removed, 1);
    net.client()
        .send_slice(b"anyone there?")
        .expect("room to send");
    assert!(
        net.run_until(100, |n| n.client().state() == tcp::State::Closed),
        "the client was not reset: {:?}, drops {:?}",
        net.client().state(),
        net.drops
    );
    let c = net.pipeline.counters();
    assert_eq!(
        c.stages.tcp_resets_sent.get(),
        1,
        "one RST, from the switch"
    );
    // The server never heard of it: its side stays open until it times out.
    assert_eq!(net.server().state(), tcp::State::Established);
}

/// Sends `data` from the client until the server holding the connection
/// has it all; the bytes it got.
fn send_up(net: &mut Net, data: &[u8], steps: usize) -> Vec<u8> {
    let mut sent = 0;
    let mut got = Vec::new();
    net.run_until(steps, |n| {
        sent += n.client().send_slice(&data[sent..]).unwrap_or(0);
        let mut buf = [0u8; 8192];
        for h in n.hosts[1..].iter_mut() {
            while let Ok(k @ 1..) = h.socket().recv_slice(&mut buf) {
                got.extend_from_slice(&buf[..k]);
            }
        }
        got.len() == data.len()
    });
    got
}

/// ```text
///  pod A ──x (3rd frame lost on the wire) ──> VIP:8080 ──> B:80
/// ```
/// A segment lost before the switch is retransmitted by the client and
/// crosses the same NAT mapping: the server gets every byte once, in
/// order, and the switch dropped nothing.
#[test]
fn a_segment_lost_on_the_wire_is_retransmitted_through_the_same_mapping() {
    let mut net = Net::new();
    connect(&mut net);
    // The handshake's ACK was frame 2: lose the first data segment.
    net.lose_client_frame = Some(net.client_frames + 1);
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    let got = send_up(&mut net, &data, 3000);
    assert!(
        net.client_frames > net.lose_client_frame.unwrap(),
        "nothing was sent after the loss"
    );
    assert_eq!(got.len(), data.len(), "stalled; drops {:?}", net.drops);
    assert!(got == data, "data changed or reordered on the way");
    assert!(net.drops.is_empty(), "drops: {:?}", net.drops);
    assert_eq!(net.flow_state(), Some(FlowState::Established));
    // One flow: the retransmission found the mapping the lost segment's
    // flow set up at the handshake.
    let flows = net
        .pipeline
        .conntrack
        .table()
        .list(16, |f| f.orig.dst == Ipv4Addr::from(VIP));
    assert_eq!(flows.len(), 1, "{flows:?}");
}

/// ```text
///  pod A ──> VIP:8080 ──> {B:80, C:80}, ClientIP affinity
/// ```
/// With session affinity every new connection of the client, from any
/// source port, goes to the endpoint its first one went to, and the
/// switch keeps an affinity record for the client.
#[test]
fn session_affinity_pins_every_connection_of_a_client_to_one_endpoint() {
    let mut net = Net::with(&[(1, POD_B), (2, POD_C)], Some(10_800));
    let mut backends = Vec::new();
    for i in 0..6u16 {
        connect_from(&mut net, 49152 + i * 7);
        backends.push(net.serving().expect("a server holds the connection"));
        // Close both ends and let the servers listen again.
        net.client().abort();
        net.step();
        for h in net.hosts[1..].iter_mut() {
            if h.socket().state() != tcp::State::Listen {
                h.socket().abort();
                h.poll(Instant::from_millis(net.ms as i64));
                h.socket().listen(80).expect("listen again");
            }
        }
        net.step();
    }
    assert!(
        backends.iter().all(|b| *b == backends[0]),
        "connections spread over {backends:?}"
    );
    let records = net
        .pipeline
        .conntrack
        .table()
        .list(16, |f| f.state == FlowState::Affinity);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].orig.src, Ipv4Addr::from(POD_A));
}

/// ```text
///  pod A (MTU 1500) ──> VIP:8080 ──> C:80 (port MTU 1400)
/// ```
/// A full-sized segment with DF set does not fit the endpoint's port: the
/// switch answers "fragmentation needed" with the port's MTU (RFC 1191),
/// and its quoted header is translated back, so the client's stack can
/// match it to its connection to the ClusterIP (as the kernel's NAT does
/// for ICMP errors, RFC 5508 §4.2).
#[test]
fn a_segment_too_big_for_the_endpoint_gets_frag_needed_naming_the_cluster_ip() {
    use etherparse::{Icmpv4Type, TransportSlice};
    let mut net = Net::with(&[(2, POD_C)], None);
    connect(&mut net);
    let data = vec![7u8; 3000];
    let mut sent = 0;
    let frag_needed = |frame: &[u8]| -> Option<(u16, Vec<u8>)> {
        let p = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
        let Some(TransportSlice::Icmpv4(icmp)) = &p.transport else {
            return None;
        };
        match icmp.icmp_type() {
            Icmpv4Type::DestinationUnreachable(
                etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
            ) => Some((next_hop_mtu, icmp.payload().to_vec())),
            _ => None,
        }
    };
    let found = net.run_until(200, |n| {
        sent += n.client().send_slice(&data[sent..]).unwrap_or(0);
        n.to_client.iter().any(|f| frag_needed(f).is_some())
    });
    assert!(
        found,
        "no fragmentation-needed reached the client; drops {:?}",
        net.drops
    );
    let (mtu, quoted) = net
        .to_client
        .iter()
        .find_map(|f| frag_needed(f))
        .expect("found above");
    assert_eq!(mtu, 1400, "the endpoint port's MTU");
    // The quoted datagram is the client's, as the client sent it: to the
    // ClusterIP, from the client's port.
    let h = etherparse::Ipv4HeaderSlice::from_slice(&quoted).expect("quoted IPv4 header");
    assert_eq!(h.source_addr(), Ipv4Addr::from(POD_A));
    assert_eq!(h.destination_addr(), Ipv4Addr::from(VIP));
    let l4 = &quoted[h.slice().len()..];
    assert_eq!(
        u16::from_be_bytes([l4[2], l4[3]]),
        8080,
        "quoted destination port"
    );
    assert_eq!(
        u16::from_be_bytes([l4[0], l4[1]]),
        49152,
        "quoted source port"
    );
}

/// ```text
///  pod A (MTU 1500) ──> VIP:8080 ──> C:80 (MTU 1400, MSS 1360)
/// ```
/// The server's MSS option crosses the NAT intact: the client never sends
/// a segment the endpoint's port cannot take, so the transfer needs no
/// path MTU discovery at all.
#[test]
fn the_endpoints_mss_crosses_the_nat_and_the_client_keeps_to_it() {
    let now = Instant::from_millis(0);
    let mut net = Net::with(&[(2, POD_C)], None);
    let mut server = Host::with_mtu(2, POD_C, 1400, now);
    server.socket().listen(80).expect("listen");
    net.hosts[1] = server;
    connect(&mut net);
    let data: Vec<u8> = (0..30_000u32).map(|i| (i % 241) as u8).collect();
    let got = send_up(&mut net, &data, 3000);
    assert_eq!(got.len(), data.len(), "stalled; drops {:?}", net.drops);
    assert!(got == data, "data changed on the way");
    assert!(net.drops.is_empty(), "drops: {:?}", net.drops);
    assert_eq!(
        net.pipeline.counters().stages.icmp_errors_sent.get(),
        0,
        "the switch had to send an ICMP error"
    );
}
