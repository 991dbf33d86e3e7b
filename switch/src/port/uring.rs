//! Batched tap I/O through io_uring: one `io_uring_enter` reads a burst
//! from every ready queue, one writes a whole batch.
//!
//! A tap takes one frame per `read`/`write`, and on the VMs this switch
//! is measured on a system call costs about a microsecond, so the
//! read/write path spends two system calls (plus the read that finds
//! EAGAIN) per frame. io_uring queues the same reads and writes in a ring
//! shared with the kernel and enters it once per batch. Every operation
//! carries `RWF_NOWAIT`, so the kernel issues it inline and answers
//! `-EAGAIN` for an empty queue: without it io_uring ignores the queue's
//! `O_NONBLOCK` and arms a poll (a read would wait for the next frame,
//! and the whole batch with it). The semantics are those of non-blocking
//! read/write.
//!
//! Reads of one queue are hard-linked (`IOSQE_IO_HARDLINK`) so they run in
//! order and a frame never overtakes the one before it; a plain link would
//! break at the first read, as every tap read is "short" (a frame is
//! smaller than the buffer).
//!
//! This module holds `unsafe` for one reason: the kernel writes into and
//! reads from buffers whose addresses it is given in submission entries.
//! Both calls below borrow those buffers for the whole call and return only
//! after every entry has completed, so no buffer is released or moved while
//! the kernel may touch it. Where that cannot be guaranteed (the ring itself
//! fails with entries in flight), the process aborts rather than risk
//! memory corruption.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

/// Submission entries of a worker's ring: a batch of reads or writes.
pub const RING_ENTRIES: u32 = 128;

/// A worker's io_uring, for its tap queues.
pub struct TapRing {
    ring: IoUring,
}

impl std::fmt::Debug for TapRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TapRing").finish_non_exhaustive()
    }
}

/// One read: a queue and the buffer its next frame goes to.
pub struct ReadOp<'a> {
    pub fd: RawFd,
    pub buf: &'a mut [u8],
    /// The next read is of the same queue and must follow this one.
    pub then_same_queue: bool,
}

impl TapRing {
    /// Sets up a ring, or says why the kernel refuses (no io_uring, or a
    /// seccomp profile that blocks it: then the read/write path serves).
    pub fn new() -> io::Result<Self> {
        let ring = IoUring::builder().build(RING_ENTRIES)?;
        Ok(TapRing { ring })
    }

    /// Reads into every buffer `ops` yields (at most [`RING_ENTRIES`]);
    /// `results[i]` gets the i-th frame's length or the negated errno
    /// (`-EAGAIN`: the queue had no more frames). Returns how many reads
    /// were made.
    pub fn read<'a>(
        &mut self,
        ops: impl Iterator<Item = ReadOp<'a>>,
        results: &mut [i32],
    ) -> io::Result<usize> {
        let mut n = 0;
        {
            let mut sq = self.ring.submission();
            for op in ops.take(RING_ENTRIES as usize).take(results.len()) {
                let len = u32::try_from(op.buf.len()).unwrap_or(u32::MAX);
                let mut e = opcode::Read::new(types::Fd(op.fd), op.buf.as_mut_ptr(), len)
                    .rw_flags(libc::RWF_NOWAIT)
                    .build()
                    .user_data(n as u64);
                if op.then_same_queue {
                    e = e.flags(squeue::Flags::IO_HARDLINK);
                }
                // SAFETY: the buffer is borrowed mutably for 'a, which
                // outlives this call, and `complete` below returns only
                // after the kernel has completed every entry: the kernel
                // writes only into live memory that nothing else accesses
                // meanwhile. The queue has room: it is empty between calls
                // and at most RING_ENTRIES are pushed.
                if unsafe { sq.push(&e) }.is_err() {
                    unreachable!("the submission queue holds a batch");
                }
                n += 1;
            }
        }
        self.complete(n, results)?;
        Ok(n)
    }

    /// Writes every frame `frames` yields (at most [`RING_ENTRIES`]);
    /// `results[i]` gets the bytes written or the negated errno. Returns
    /// how many writes were made.
    pub fn write<'a>(
        &mut self,
        frames: impl Iterator<Item = (RawFd, &'a [u8])>,
        results: &mut [i32],
    ) -> io::Result<usize> {
        let mut n = 0;
        {
            let mut sq = self.ring.submission();
            for (fd, frame) in frames.take(RING_ENTRIES as usize).take(results.len()) {
                let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
                let e = opcode::Write::new(types::Fd(fd), frame.as_ptr(), len)
                    .rw_flags(libc::RWF_NOWAIT)
                    .build()
                    .user_data(n as u64);
                // SAFETY: as in `read`: the frames are borrowed for 'a,
                // beyond this call, which returns after every entry
                // completed.
                if unsafe { sq.push(&e) }.is_err() {
                    unreachable!("the submission queue holds a batch");
                }
                n += 1;
            }
        }
        self.complete(n, results)?;
        Ok(n)
    }

    /// Submits what is queued and reaps `n` completions into `results`.
    /// `io_uring_enter` fails only for a ring that is broken (a bad fd, a
    /// bad address) or busy for a moment (retried).
    fn complete(&mut self, n: usize, results: &mut [i32]) -> io::Result<()> {
        let mut done = 0;
        while done < n {
            match self.ring.submit_and_wait(n - done) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EAGAIN) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => {
                    // Entries are in flight on buffers this call would
                    // release: never let that happen.
                    tracing::error!(error = %e, "io_uring failed with operations in flight");
                    std::process::abort();
                }
            }
            for cqe in self.ring.completion() {
                if let Some(r) = results.get_mut(cqe.user_data() as usize) {
                    *r = cqe.result();
                }
                done += 1;
            }
        }
        Ok(())
    }
}
