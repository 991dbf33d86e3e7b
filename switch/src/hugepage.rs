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
//! `madvise` has no safe wrapper (libc's and nix's are `unsafe fn`), and
//! no std collection allocates with a huge page's alignment, so this
//! module allows `unsafe_code`, denied elsewhere in the crate outside the
//! kernel-interface modules: the `madvise` call (the range lies inside
//! memory the caller owns, and `MADV_HUGEPAGE` changes neither its
//! contents nor its mapping, only how the kernel backs it) and
//! [`HugeSlice`], a `Box<[T]>` with a 2 MiB-aligned allocation (each
//! block says why it holds; its tests check values, alignment and drops,
//! also when filling it panics).
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

/// A slice of `len` values made by `make`, in memory aligned to a huge
/// page and advised for huge pages before the values are written, so that
/// every whole 2 MiB of it can be one huge page (a `Vec` of a few MiB
/// starts just past a page boundary, and its first and last huge-page
/// spans are left in small pages).
pub fn slice<T>(len: usize, make: impl FnMut(usize) -> T) -> HugeSlice<T> {
    HugeSlice::new(len, make)
}

/// An owned slice in huge-page-aligned memory (see [`slice`]).
pub struct HugeSlice<T> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: a HugeSlice owns its values as a Box<[T]> would: it is Send and
// Sync exactly when T is.
unsafe impl<T: Send> Send for HugeSlice<T> {}
// SAFETY: as above; shared access only hands out &T.
unsafe impl<T: Sync> Sync for HugeSlice<T> {}

impl<T> HugeSlice<T> {
    fn new(len: usize, mut make: impl FnMut(usize) -> T) -> Self {
        let bytes = std::mem::size_of::<T>()
            .checked_mul(len)
            .expect("a table that fits the address space");
        let align = if bytes >= HUGE_PAGE {
            HUGE_PAGE
        } else {
            std::mem::align_of::<T>()
        };
        let layout =
            std::alloc::Layout::from_size_align(bytes.max(1), align.max(std::mem::align_of::<T>()))
                .expect("a valid layout");
        // SAFETY: the layout has a non-zero size.
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = std::ptr::NonNull::new(raw.cast::<T>()) else {
            std::alloc::handle_alloc_error(layout);
        };
        // SAFETY: `raw` points at `bytes` bytes we own and have not
        // written, aligned for T; viewing them as uninitialised T is sound.
        let spare = unsafe { std::slice::from_raw_parts_mut(raw.cast::<MaybeUninit<T>>(), len) };
        advise(spare);
        let mut slice = HugeSlice {
            ptr,
            len: 0,
            layout,
        };
        for i in 0..len {
            let v = make(i);
            // SAFETY: i < len, inside the allocation; slot i is not yet
            // initialised, and `len` counts the initialised prefix, so a
            // panic in `make` drops exactly the values written.
            unsafe { slice.ptr.as_ptr().add(i).write(v) };
            slice.len = i + 1;
        }
        slice
    }
}

impl<T> std::ops::Deref for HugeSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: the first `len` values are initialised and owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for HugeSlice<T> {
    fn drop(&mut self) {
        // SAFETY: the first `len` values are initialised and dropped once
        // here; the memory was allocated with `self.layout`.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.len,
            ));
            std::alloc::dealloc(self.ptr.as_ptr().cast::<u8>(), self.layout);
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for HugeSlice<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugeSlice")
            .field("len", &self.len)
            .field("align", &self.layout.align())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_holds_the_values_whatever_the_kernel_says() {
        // Large enough to be advised (and aligned), a small one, none.
        for len in [3 << 20, 100, 0] {
            let s = slice(len, |i| (i % 251) as u8);
            assert_eq!(s.len(), len);
            assert!(s.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
            if len >= HUGE_PAGE {
                assert_eq!(s.as_ptr() as usize % HUGE_PAGE, 0, "aligned to a huge page");
            }
        }
    }

    #[test]
    fn values_are_dropped_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static DROPS: AtomicUsize = AtomicUsize::new(0);
        struct Counted;
        impl Drop for Counted {
            fn drop(&mut self) {
                DROPS.fetch_add(1, Ordering::Relaxed);
            }
        }
        drop(slice(1000, |_| Counted));
        assert_eq!(DROPS.load(Ordering::Relaxed), 1000);
        // A panic while filling drops what was made, nothing more.
        DROPS.store(0, Ordering::Relaxed);
        let r = std::panic::catch_unwind(|| {
            slice(10, |i| {
                assert!(i < 7, "make fails at 7");
                Counted
            })
        });
        assert!(r.is_err());
        assert_eq!(DROPS.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn small_buffers_are_not_advised() {
        let mut v: Vec<u64> = Vec::with_capacity(16);
        assert!(!advise(&mut v.spare_capacity_mut()[..16]));
    }
}
