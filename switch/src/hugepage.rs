//! Transparent huge pages for the large tables the fast path reads at
//! random: the flow table's slots and chain heads.
//!
//! A lookup in a table of a few megabytes or more touches a different
//! 4 KiB page almost every time, so besides its cache misses it misses the
//! TLB (a few thousand entries cover only a few megabytes) and pays a page
//! walk. Backed by 2 MiB pages, the same table needs a few dozen TLB
//! entries. DPDK and VPP put their tables in huge pages for this reason.
//!
//! Kernels commonly run transparent huge pages in `madvise` mode
//! (`/sys/kernel/mm/transparent_hugepage/enabled`), where only memory
//! marked with `MADV_HUGEPAGE` gets them; [`advise`] marks a buffer's
//! memory before it is first written, so its pages are faulted in huge
//! where the kernel can. It is a hint: with THP `never`, or when no huge
//! page is free, the memory stays in small pages and works the same.
//!
//! `madvise` has no safe wrapper (libc's and nix's are `unsafe fn`), so
//! this module allows `unsafe_code`, denied elsewhere in the crate outside
//! the kernel-interface modules. Its one block is sound: the range lies
//! inside memory the caller owns, and `MADV_HUGEPAGE` changes neither its
//! contents nor its mapping, only how the kernel backs it.
#![allow(unsafe_code)]

use std::mem::MaybeUninit;

/// The size below which a buffer is left alone (it holds no whole huge
/// page).
const HUGE_PAGE: usize = 2 << 20;

/// Asks the kernel to back the memory of `buf` (typically a `Vec`'s spare
/// capacity, before it is filled) with transparent huge pages. Returns
/// whether the kernel took the advice (it is only a hint either way).
pub fn advise<T>(buf: &mut [MaybeUninit<T>]) -> bool {
    let bytes = std::mem::size_of_val(buf);
    if bytes < HUGE_PAGE {
        return false;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = buf.as_mut_ptr() as usize;
        // madvise wants a page-aligned start; only whole pages inside the
        // buffer are advised.
        let first = start.next_multiple_of(PAGE);
        let end = (start + bytes) & !(PAGE - 1);
        if end <= first {
            return false;
        }
        // SAFETY: [first, end) is a page-aligned range inside `buf`, which
        // the caller borrows mutably for the call; MADV_HUGEPAGE neither
        // reads nor writes the memory, nor unmaps or moves it (madvise(2)).
        let rc =
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
        rc == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// A boxed slice of `len` values made by `make`, its memory advised for
/// huge pages before the values are written.
pub fn boxed_slice<T>(len: usize, make: impl FnMut(usize) -> T) -> Box<[T]> {
    let mut v = Vec::with_capacity(len);
    advise(&mut v.spare_capacity_mut()[..len]);
    v.extend((0..len).map(make));
    v.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_slice_holds_the_values_whatever_the_kernel_says() {
        // Large enough to be advised, and a small one that is not.
        for len in [3 << 20, 100] {
            let s = boxed_slice(len, |i| (i % 251) as u8);
            assert_eq!(s.len(), len);
            assert!(s.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        }
    }

    #[test]
    fn small_buffers_are_not_advised() {
        let mut v: Vec<u64> = Vec::with_capacity(16);
        assert!(!advise(&mut v.spare_capacity_mut()[..16]));
    }
}
