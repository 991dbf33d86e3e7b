//! Helpers for tests that need root (namespaces, taps), shared by every
//! crate of the workspace so the rule is written once: without root such a
//! test skips with a message, unless `PODSWITCH_REQUIRE_ROOT=1` (CI), where
//! it fails, so a green run never hides a skipped datapath test.

/// The variable that turns a missing-privilege skip into a failure.
pub const REQUIRE_ROOT_VAR: &str = "PODSWITCH_REQUIRE_ROOT";

/// Whether the root-only test `test` may run (see the module docs).
///
/// # Panics
/// Without root when `PODSWITCH_REQUIRE_ROOT=1`.
pub fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var(REQUIRE_ROOT_VAR).as_deref() != Ok("1"),
        "{test} needs root and {REQUIRE_ROOT_VAR}=1 forbids skipping it"
    );
    eprintln!("skipping {test}: needs root (set {REQUIRE_ROOT_VAR}=1 to make this fail)");
    false
}
