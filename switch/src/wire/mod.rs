//! Zero-copy views and builders for the headers the datapath reads.
//!
//! One file per header, each a smoltcp-style view (`Packet<T: AsRef<[u8]>>`
//! with field offsets in `mod field` and a `new_checked` after which no
//! accessor panics): the virtio_net_hdr that prefixes every tap frame,
//! Ethernet, IPv4, IPv6, TCP, UDP and VXLAN. The parse stage and the fast
//! path read packets through these views only, so there is one parser.
//! Rewrites patch bytes in place with incremental checksums (RFC 1624,
//! [`checksum`]); building whole packets (ARP and ICMP replies, tests) is
//! left to etherparse.
pub mod checksum;
pub mod ethernet;
pub mod ipv4;
pub mod ipv6;
pub mod segment;
pub mod tcp;
pub mod udp;
pub mod vnet_hdr;
pub mod vxlan;
