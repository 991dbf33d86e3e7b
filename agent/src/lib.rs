//! podswitch agent: Kubernetes manifests, topology sources, translation to
//! switch topology, the standalone lab and the bench (the CNI plugin is its
//! own crate, `podswitch-cni`).
//!
//! Layers, each importing only those above it: `manifest` (reading
//! Kubernetes objects) and `translate`; `source` (the agent's topology
//! sources); `cpu` (CPU accounting); `lab`; `bench`.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cpu;
/// Fuzz target bodies (`fuzz/`); not in release builds (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod lab;
pub mod manifest;
pub mod source;
pub mod translate;
