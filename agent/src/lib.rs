//! podswitch agent: topology sources, translation to switch topology, the
//! CNI plugin and the standalone lab.
#![forbid(unsafe_code)]

pub mod bench;
/// Fuzz target bodies (`fuzz/`); not in release builds (feature `fuzzing`).
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod lab;
pub mod source;
pub mod translate;
