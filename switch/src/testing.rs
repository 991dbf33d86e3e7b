//! Helpers for tests that need root (namespaces, taps), shared by every
//! crate of the workspace: they live in `podswitch-netns` (the namespace
//! crate the CNI plugin also uses) and are re-exported here.

pub use podswitch_netns::testing::*;
