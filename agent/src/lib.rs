//! podswitch agent, the Kubernetes side: manifests, topology sources and
//! the translation of Kubernetes objects to a node's switch topology. The
//! CNI plugin (`podswitch-cni`), the lab (`podswitch-lab`) and the bench
//! (`podswitch-bench`) are crates of their own.
//!
//! Layers, each importing only those above it: `manifest` (reading
//! Kubernetes objects) and `translate`; `source` (the agent's topology
//! sources).
#![forbid(unsafe_code)]

/// Fuzz target bodies (`fuzz/`); not in release builds (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod manifest;
pub mod source;
pub mod translate;
