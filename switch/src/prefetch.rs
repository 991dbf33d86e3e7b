//! A cache prefetch hint for the batched lookups of the fast path.
//!
//! A flow-table lookup is two dependent cache misses (the chain head, then
//! the entry). The conntrack stage splits a batch's lookups into passes so
//! that these misses overlap (VPP's and DPDK's "prefetch, then process"),
//! and a plain load cannot do that job: a load that misses holds its place
//! in the reorder buffer until the line arrives, so a pass of loads keeps
//! only as many misses in flight as the buffer has room for iterations
//! (measured: the warm-up loads cost more than half of what they saved).
//! A prefetch instruction retires at once and leaves the fetch to the
//! cache, so all the batch's fetches run together.
//!
//! `PREFETCHT0` has no safe wrapper in std (`core::intrinsics::prefetch_*`
//! is unstable and `_mm_prefetch` is an `unsafe fn`), so this module
//! allows `unsafe_code`, denied everywhere else in the crate outside the
//! kernel-interface modules. Its one block is sound for any address: a
//! prefetch is a hint that never faults and has no architectural effect,
//! and the API takes a reference anyway.
#![allow(unsafe_code)]

/// Asks the CPU to bring the cache line holding `value` into L1, without
/// waiting for it. A no-op on architectures without the instruction.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: `_mm_prefetch` needs SSE, which every x86_64 CPU has
        // (it is in the target's baseline); the instruction never faults
        // and changes no architectural state, and the pointer comes from
        // a live reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(value).cast::<i8>()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = value;
    }
}
