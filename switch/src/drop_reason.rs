//! The one list of reasons a packet is dropped, shared by the datapath, the
//! metrics and the CLI (Cilium's `drop_reasons.h` idea).
//!
//! Discriminants are stable and never reused: a retired reason keeps its
//! number. The `///` line of each variant is its help text everywhere.

use serde::Serialize;

/// The stage that decides a drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Parse,
    Gateway,
    Conntrack,
    Route,
    Output,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Parse => "parse",
            Stage::Gateway => "gateway",
            Stage::Conntrack => "conntrack",
            Stage::Route => "route",
            Stage::Output => "output",
        }
    }
}

macro_rules! drop_reasons {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $stage:ident, $slug:literal; )*) => {
        /// Why a packet was dropped.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[repr(u8)]
        pub enum DropReason {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl DropReason {
            /// Every reason, in discriminant order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            /// One past the largest discriminant: the size of counter arrays.
            pub const COUNT: usize = { let mut m = 0; $( if $num > m { m = $num; } )* m + 1 };

            /// The stage that decides this drop.
            pub fn stage(self) -> Stage {
                match self { $(DropReason::$name => Stage::$stage,)* }
            }

            /// Stable snake_case name, used as the metric label and in the CLI.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$name => $slug,)* }
            }

            /// The help text (the variant's doc line).
            pub fn description(self) -> &'static str {
                match self { $(DropReason::$name => concat!($($doc),*).trim_ascii(),)* }
            }
        }
    };
}

drop_reasons! {
    /// Frame shorter than the vnet header plus an Ethernet header.
    FrameTooShort = 1, Parse, "frame_too_short";
    /// virtio_net_hdr with nonsense fields (unknown GSO type, zero gso_size, a partial checksum outside the frame or anywhere but the TCP/UDP checksum field).
    VnetHdrInvalid = 2, Parse, "vnet_hdr_invalid";
    /// Ethertype the switch does not route (not IPv4, IPv6 or ARP).
    UnsupportedEthertype = 3, Parse, "unsupported_ethertype";
    /// IPv4 header malformed: version, IHL or lengths inconsistent with the frame.
    Ipv4HeaderInvalid = 4, Parse, "ipv4_header_invalid";
    /// IPv4 header checksum wrong.
    Ipv4ChecksumInvalid = 5, Parse, "ipv4_checksum_invalid";
    /// TCP, UDP or ICMP header truncated or inconsistent.
    L4HeaderInvalid = 6, Parse, "l4_header_invalid";
    /// Non-GSO frame larger than the ingress port's MTU.
    FrameOverMtu = 7, Parse, "frame_over_mtu";
    /// GSO type does not match the packet's protocol.
    GsoMismatch = 8, Parse, "gso_mismatch";
    /// Frame from a port that is not (or no longer) in the topology.
    UnknownIngressPort = 9, Parse, "unknown_ingress_port";
    /// Source MAC is not the pod's own.
    SourceMacSpoofed = 10, Parse, "source_mac_spoofed";
    /// Source IP is not the pod's own.
    SourceIpSpoofed = 11, Parse, "source_ip_spoofed";
    /// Destination MAC neither the gateway's nor broadcast.
    DestinationMacNotGateway = 12, Parse, "dst_mac_not_gateway";
    /// IPv6 is not routed yet.
    Ipv6NotRouted = 13, Parse, "ipv6_not_routed";
    /// VXLAN datagram too short or without the I flag (RFC 7348 §5).
    VxlanInvalid = 14, Parse, "vxlan_invalid";
    /// VXLAN datagram with a VNI other than the configured one.
    VxlanWrongVni = 15, Parse, "vxlan_wrong_vni";
    /// Overlay or native packet from an address that is not a known node.
    UnknownNode = 16, Parse, "unknown_node";
    /// Decapsulated TCP/UDP with a checksum that is neither valid nor partial (corrupted).
    InnerChecksumInvalid = 17, Parse, "inner_checksum_invalid";
    /// Decapsulated packet from a known node whose source address is in a pod CIDR that is not that node's.
    OverlaySourceSpoofed = 18, Parse, "overlay_source_spoofed";
    /// ARP packet malformed (lengths, hardware or protocol type).
    ArpInvalid = 20, Gateway, "arp_invalid";
    /// ARP that needs no answer (reply, gratuitous ARP, probe, unknown opcode).
    ArpNotAnswered = 21, Gateway, "arp_not_answered";
    /// Packet to the gateway address other than an ICMP echo request.
    GatewayNotServed = 22, Gateway, "gateway_not_served";
    /// Broadcast or multicast IP destination (not routed).
    NonUnicastDestination = 23, Gateway, "non_unicast_destination";
    /// TTL expired in transit (ICMP time exceeded sent).
    TtlExpired = 30, Route, "ttl_expired";
    /// The conntrack table is at its cap: a new flow was refused.
    ConntrackFull = 50, Conntrack, "conntrack_full";
    /// No free source port for a masqueraded or source-translated flow.
    NatPortsExhausted = 51, Conntrack, "nat_ports_exhausted";
    /// A service with no ready endpoints (answered with ICMP port unreachable).
    ServiceNoEndpoints = 52, Conntrack, "service_no_endpoints";
    /// A TCP segment to a service that opens no flow and belongs to none (answered with a RST).
    ServiceNoFlow = 53, Conntrack, "service_no_flow";
    /// A new flow to a Service address (ClusterIP, external or load-balancer IP) on a port no Service serves (TCP answered with a RST, anything else with ICMP port unreachable), as kube-proxy's nftables mode rejects it.
    ServicePortUnserved = 54, Conntrack, "service_port_unserved";
    /// An untranslated packet to a Service address or into the service ranges (an unallocated ClusterIP): dropped, never routed to the node, which would route it back (kube-proxy's nftables mode drops it too).
    ServiceAddressNotRouted = 35, Route, "service_address_not_routed";
    /// No route to the destination (ICMP net unreachable sent).
    NoRoute = 31, Route, "no_route";
    /// Address in a local pod CIDR without a pod (ICMP host unreachable sent).
    HostUnreachable = 32, Route, "host_unreachable";
    /// An ICMP error was due but suppressed by the rate limit or RFC 1812 rules.
    IcmpErrorSuppressed = 33, Route, "icmp_error_suppressed";
    /// Destination port cannot take this offload (GSO to a port without TSO).
    OffloadUnsupported = 34, Output, "offload_unsupported";
    /// The destination port has no queue for this worker (being removed).
    PortGone = 40, Output, "port_gone";
    /// A frame could not be segmented for the overlay (malformed offload state).
    SegmentationFailed = 43, Output, "segmentation_failed";
    /// Sending on the underlay socket failed.
    UnderlayTxError = 44, Output, "underlay_tx_error";
    /// The destination queue is full (write would block).
    TxQueueFull = 41, Output, "tx_queue_full";
    /// Write to the destination port failed.
    TxError = 42, Output, "tx_error";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unique_and_descriptions_present() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::ALL.len());
        for r in DropReason::ALL {
            assert!(!r.description().is_empty(), "{r:?}");
            assert!((*r as usize) < DropReason::COUNT);
        }
        assert_eq!(DropReason::TtlExpired as u8, 30);
    }
}
