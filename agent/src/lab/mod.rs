//! The standalone lab: kubectl-shaped commands that build a cluster out of
//! network namespaces on one machine (../shared/TESTBED.md).
pub mod agents;
pub mod bridge;
pub mod cluster;
pub mod demo;
pub mod kube_proxy;
/// Kubernetes manifests: the agent's (`crate::manifest`), re-exported for
/// the lab's callers.
pub use crate::manifest;
pub mod probe;
pub mod services;
pub mod svc_bench;
pub mod traffic;
pub mod view;
pub mod workload;
