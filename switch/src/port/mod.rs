//! Ports: where frames enter and leave the switch.
//!
//! - `tap`: pod ports, multi-queue TAP devices with virtio_net_hdr (the only
//!   home of TUN ioctls).
//! - `netns` and `netlink`: creating namespaces and configuring links,
//!   addresses and routes through netlink (no `ip` commands).
//! - `raw`: AF_PACKET sockets, for test tools that write arbitrary frames.
//! - `uring`: batched tap reads and writes through io_uring (one system
//!   call per batch instead of one per frame).
pub mod netlink;
/// Network namespaces: their own small crate (`podswitch-netns`), shared
/// with the CNI plugin and the lab.
pub use podswitch_netns as netns;
pub mod pod;
pub mod raw;
pub mod steer;
pub mod tap;
pub mod underlay;
pub mod uring;
