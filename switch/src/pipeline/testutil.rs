//! Packet fixtures for the pipeline's unit tests, built with etherparse.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;

use etherparse::PacketBuilder;

use crate::metrics::WorkerCounters;
use crate::tables::services::{NodeView, ServiceTable};
use crate::tables::{Gateway, Overlay, OverlayNode, PodPort, Tables};
use crate::wire::vnet_hdr::{self, VnetHdr};
use podswitch_api::{
    ClusterMode, EndpointSpec, Protocol, ServicePortSpec, ServiceSettings, ServiceSpec,
};

pub const VNET: usize = vnet_hdr::LEN;
pub const GW_MAC: [u8; 6] = [0xee; 6];
pub const GW: [u8; 4] = [10, 244, 1, 1];
pub const POD_A: [u8; 4] = [10, 244, 1, 2];
pub const POD_B: [u8; 4] = [10, 244, 1, 3];
pub const POD_C: [u8; 4] = [10, 244, 1, 4];

pub fn mac_of(ip: [u8; 4]) -> [u8; 6] {
    [0x0a, 0x58, ip[0], ip[1], ip[2], ip[3]]
}

/// One node, pod CIDR 10.244.1.0/24, pods A (port 0), B (port 1), C (port 2, MTU 1400).
pub fn tables() -> Tables {
    let port = |id: u32, ip: [u8; 4], mtu: u32| {
        Some(PodPort {
            id,
            pod: format!("default/pod-{id}"),
            ifname: "eth0".into(),
            netns: PathBuf::from("/run/netns/test"),
            mac: mac_of(ip),
            ipv4: Some(Ipv4Addr::from(ip)),
            ipv6: None,
            mtu,
            offloads: true,
            kind: crate::tables::PortKind::Pod,
        })
    };
    Tables::new(
        "node-1",
        Gateway {
            mac: GW_MAC,
            ipv4: Ipv4Addr::from(GW),
            ipv6: None,
        },
        vec!["10.244.1.0/24".parse().unwrap()],
        vec![
            port(0, POD_A, 1500),
            port(1, POD_B, 1500),
            port(2, POD_C, 1400),
        ],
    )
}

pub fn counters() -> Arc<WorkerCounters> {
    Arc::new(WorkerCounters::default())
}

fn with_vnet(frame: Vec<u8>) -> Vec<u8> {
    let mut v = vec![0u8; VNET];
    v.extend_from_slice(&frame);
    v
}

pub fn udp_frame(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac_of(src), GW_MAC)
        .ipv4(src, dst, 64)
        .udp(40000, 53);
    let mut out = Vec::new();
    b.write(&mut out, &vec![0xab; payload]).unwrap();
    with_vnet(out)
}

pub fn tcp_frame(src: [u8; 4], dst: [u8; 4], payload: usize) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac_of(src), GW_MAC)
        .ipv4(src, dst, 64)
        .tcp(40000, 80, 1, 65535);
    let mut out = Vec::new();
    b.write(&mut out, &vec![0xcd; payload]).unwrap();
    with_vnet(out)
}

pub fn icmp_echo_frame(src: [u8; 4], dst: [u8; 4], ttl: u8) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(mac_of(src), GW_MAC)
        .ipv4(src, dst, ttl)
        .icmpv4_echo_request(7, 1);
    let mut out = Vec::new();
    b.write(&mut out, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    with_vnet(out)
}

/// An ARP request from pod A's MAC with the given sender and target IPs.
pub fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac_of(POD_A));
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac_of(POD_A));
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    with_vnet(f)
}

pub fn set_vnet(
    f: &mut [u8],
    flags: u8,
    gso_type: u8,
    gso_size: u16,
    csum_start: u16,
    csum_offset: u16,
) {
    let mut h = VnetHdr::new_checked(&mut f[..VNET]).unwrap();
    h.set_flags(flags);
    h.set_gso_type(gso_type);
    h.set_gso_size(gso_size);
    h.set_csum_start(csum_start);
    h.set_csum_offset(csum_offset);
}

/// Overwrites the IPv4 source address and fixes the header checksum.
pub fn set_ipv4_src(f: &mut [u8], src: [u8; 4]) {
    f[VNET + 26..VNET + 30].copy_from_slice(&src);
    let len = u16::from_be_bytes([f[VNET + 16], f[VNET + 17]]);
    fix_ipv4(f, len);
}

/// Sets the IPv4 total length and recomputes the header checksum.
pub fn fix_ipv4(f: &mut [u8], total_len: u16) {
    let ip = &mut f[VNET + 14..VNET + 34];
    ip[2..4].copy_from_slice(&total_len.to_be_bytes());
    ip[10] = 0;
    ip[11] = 0;
    let c = crate::wire::checksum::checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

pub const VIP: [u8; 4] = [10, 96, 0, 10];

/// A node with one Service, `default/web` on VIP:8080/TCP, whose
/// endpoints (port 80, `true`: terminating) are `endpoints`.
pub fn svc_tables(endpoints: &[([u8; 4], bool)], affinity: Option<u32>) -> Tables {
    svc_tables_with(endpoints, affinity, &ServiceSettings::default())
}

/// [`svc_tables`] with the given service settings.
pub fn svc_tables_with(
    endpoints: &[([u8; 4], bool)],
    affinity: Option<u32>,
    settings: &ServiceSettings,
) -> Tables {
    let mut t = tables();
    let spec = ServiceSpec {
        name: "default/web".into(),
        cluster_ips: vec![VIP.into()],
        external_ips: vec![],
        ports: vec![ServicePortSpec {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 8080,
            node_port: None,
            endpoints: endpoints
                .iter()
                .map(|(ip, term)| EndpointSpec {
                    ip: (*ip).into(),
                    port: 80,
                    node: Some("n1".into()),
                    ready: !term,
                    terminating: *term,
                    serving: term.then_some(true),
                })
                .collect(),
        }],
        affinity_timeout_secs: affinity,
        external_traffic_local: false,
        internal_traffic_local: false,
    };
    let node = NodeView {
        name: "n1",
        node_ip: Some(Ipv4Addr::new(198, 18, 0, 1)),
        node_port_ips: &[Ipv4Addr::new(198, 18, 0, 1)],
        gateway_ip: t.gateway.ipv4,
        mode: ClusterMode::Native,
        maglev_size: 251,
    };
    t.services = Arc::new(ServiceTable::build([&spec], settings, &node).unwrap());
    t
}

/// A VXLAN overlay of node 198.18.0.1 with one remote node, `node-2`
/// (198.18.0.2, pods 10.244.2.0/24); decapsulated frames enter on port 9.
pub fn overlay() -> Overlay {
    Overlay {
        vni: 1,
        udp_port: 8472,
        local_ipv4: Ipv4Addr::new(198, 18, 0, 1),
        vtep_mac: [2, 0x56, 198, 18, 0, 1],
        port: 9,
        pod_mtu: 1450,
        nodes: vec![OverlayNode {
            name: "node-2".into(),
            underlay_ipv4: Ipv4Addr::new(198, 18, 0, 2),
            vtep_mac: [2, 0x56, 198, 18, 0, 2],
            pod_cidrs: vec!["10.244.2.0/24".parse().unwrap()],
        }],
    }
}
