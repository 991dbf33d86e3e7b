//! The standalone lab: kubectl-shaped commands that build a cluster out of
//! network namespaces on one machine (../shared/TESTBED.md).
pub mod manifest;
pub mod traffic;
pub mod workload;
