//! podswitch datapath: a userspace L3 virtual switch for Kubernetes pods.
//!
//! The packet path, in the order a frame meets it:
//! `port` (tap queues, read until EAGAIN) -> `pipeline` (parse -> gateway ->
//! route -> output, each a stage with its own drop counters) -> `port` again.
//! `tables` holds the immutable topology snapshots the pipeline reads;
//! `control` is the Unix-socket API that replaces them; `daemon` ties it all
//! together into `podswitch switch run`. `capture` copies frames at a
//! port's ingress or egress, or on the underlay, for `ctl capture`.
//!
//! `unsafe` is denied crate-wide and allowed only in `port::tap` and
//! `port::raw`, the two modules that speak to the kernel through ioctls and
//! raw sockets that no safe crate wraps, in `port::uring`, which hands
//! buffer addresses to io_uring, and in `prefetch`, one cache prefetch hint
//! that std has no safe form of.
#![deny(unsafe_code)]

pub mod capture;
pub mod conntrack;
pub mod control;
pub mod daemon;
pub mod drop_reason;
pub mod exporter;
/// Fuzz target bodies (`fuzz/`) and their corpus replay; not in release
/// builds of the switch (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod hugepage;
pub mod metrics;
pub mod pipeline;
pub mod port;
pub mod prefetch;
pub mod tables;
pub mod testing;
pub mod wire;
pub mod worker;
