//! Zero-copy views and builders for the headers podswitch owns.
//!
//! Ethernet, ARP, IPv4/IPv6, TCP, UDP and ICMP come from etherparse; what
//! etherparse does not have lives here: the virtio_net_hdr that prefixes
//! every tap frame, and the incremental checksum patching (RFC 1624) that
//! rewrites (TTL, later NAT) need because etherparse slices are read-only.
pub mod checksum;
pub mod segment;
pub mod vnet_hdr;
pub mod vxlan;
