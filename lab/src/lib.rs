//! The standalone lab: kubectl-shaped commands that build a cluster out of
//! network namespaces on one machine (../shared/TESTBED.md).
//!
//! A crate of its own (`podswitch-lab`): production code (the agent, the
//! switch, the CNI plugin) never links it; the bench builds on it.
#![forbid(unsafe_code)]
pub mod agents;
pub mod bridge;
pub mod cluster;
pub mod cpu;
pub mod demo;
/// Fuzz target bodies (`fuzz/`); not in release builds (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod kube_proxy;
/// Kubernetes manifests: the agent's (`podswitch_agent::manifest`), re-exported for
/// the lab's callers.
pub use podswitch_agent::manifest;
pub mod probe;
pub mod services;
pub mod svc_bench;
pub mod traffic;
pub mod view;
pub mod workload;
