//! The bounded ring between the workers (producers) and the control
//! thread (consumer) of one capture.
//!
//! Two lock-free `ArrayQueue`s of the same capacity hold the slots: `free`
//! the empty buffers, allocated once when the capture is armed, and
//! `filled` the captured frames in the order they were pushed. A worker
//! pops a free buffer, copies the frame into it (within its capacity, so
//! no allocation) and pushes it to `filled`; the reader pops from `filled`
//! and gives the buffer back to `free`. When no free buffer is left the
//! worker drops the frame and counts it — it never waits, like a kernel
//! capture buffer that overflows ("packets dropped by kernel").

use crossbeam_queue::ArrayQueue;

pub use podswitch_api::capture::Direction;

/// One captured frame.
#[derive(Debug)]
pub struct CapturedFrame {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The frame's length before `snaplen` cut it.
    pub orig_len: u32,
    pub direction: Direction,
    /// The first `min(orig_len, snaplen)` bytes.
    pub data: Vec<u8>,
}

/// Why a frame was not put in the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingFull {
    /// Every buffer holds a frame the reader has not taken yet.
    NoFreeBuffer,
}

/// A bounded ring of preallocated frame buffers.
#[derive(Debug)]
pub struct FrameRing {
    free: ArrayQueue<Vec<u8>>,
    filled: ArrayQueue<CapturedFrame>,
    buf_capacity: usize,
}

impl FrameRing {
    /// A ring of `slots` buffers of `buf_capacity` bytes each (the memory
    /// is reserved now; pages are touched when first written).
    pub fn new(slots: usize, buf_capacity: usize) -> Self {
        let slots = slots.max(1);
        let free = ArrayQueue::new(slots);
        for _ in 0..slots {
            // Cannot fail: exactly `slots` pushes into a queue of `slots`.
            let _ = free.push(Vec::with_capacity(buf_capacity));
        }
        FrameRing {
            free,
            filled: ArrayQueue::new(slots),
            buf_capacity,
        }
    }

    /// The number of slots.
    pub fn slots(&self) -> usize {
        self.free.capacity()
    }

    /// The most bytes a slot holds.
    pub fn buf_capacity(&self) -> usize {
        self.buf_capacity
    }

    /// Copies `parts` (concatenated, cut at `limit` bytes and at the
    /// slot's capacity) into a free slot and queues it for the reader.
    /// Never blocks and never allocates.
    #[inline]
    pub fn push(
        &self,
        ts_ns: u64,
        orig_len: u32,
        direction: Direction,
        parts: &[&[u8]],
        limit: usize,
    ) -> Result<(), RingFull> {
        let Some(mut data) = self.free.pop() else {
            return Err(RingFull::NoFreeBuffer);
        };
        data.clear();
        let mut room = limit.min(data.capacity());
        for part in parts {
            let n = part.len().min(room);
            data.extend_from_slice(&part[..n]);
            room -= n;
        }
        self.filled
            .push(CapturedFrame {
                ts_ns,
                orig_len,
                direction,
                data,
            })
            // Unreachable: a frame holds a buffer taken from `free`, and
            // both queues have the same capacity. Keep the buffer lost
            // rather than panic on the fast path.
            .map_err(|_| RingFull::NoFreeBuffer)
    }

    /// Takes the oldest captured frame; give its buffer back with
    /// [`FrameRing::recycle`].
    pub fn pop(&self) -> Option<CapturedFrame> {
        self.filled.pop()
    }

    /// Returns a buffer to the free list.
    pub fn recycle(&self, data: Vec<u8>) {
        let _ = self.free.push(data);
    }

    /// Frames waiting for the reader.
    pub fn len(&self) -> usize {
        self.filled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.filled.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_ring_refuses_at_once_and_recovers_when_read() {
        let ring = FrameRing::new(4, 64);
        for i in 0..4 {
            ring.push(i, 3, Direction::Ingress, &[&[1, 2, 3]], 64)
                .unwrap();
        }
        // Full: refused immediately (a worker never waits).
        let t = std::time::Instant::now();
        for _ in 0..1000 {
            assert_eq!(
                ring.push(9, 3, Direction::Ingress, &[&[1, 2, 3]], 64),
                Err(RingFull::NoFreeBuffer)
            );
        }
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(ring.len(), 4);
        let first = ring.pop().unwrap();
        assert_eq!((first.ts_ns, &first.data[..]), (0, &[1u8, 2, 3][..]));
        ring.recycle(first.data);
        ring.push(10, 1, Direction::Egress, &[&[7]], 64).unwrap();
        let order: Vec<u64> = std::iter::from_fn(|| ring.pop()).map(|f| f.ts_ns).collect();
        assert_eq!(order, [1, 2, 3, 10]);
    }

    #[test]
    fn copies_are_cut_at_the_limit_and_the_slot_size_without_growing() {
        let ring = FrameRing::new(2, 8);
        ring.push(0, 12, Direction::Egress, &[&[1; 6], &[2; 6]], 10)
            .unwrap();
        let f = ring.pop().unwrap();
        assert_eq!(f.data, [1, 1, 1, 1, 1, 1, 2, 2]);
        assert_eq!(f.data.capacity(), 8, "the buffer never grows");
        assert_eq!(f.orig_len, 12);
        ring.recycle(f.data);
        ring.push(0, 12, Direction::Egress, &[&[1; 6], &[2; 6]], 7)
            .unwrap();
        assert_eq!(ring.pop().unwrap().data.len(), 7);
    }

    #[test]
    fn many_producers_never_exceed_the_bound() {
        let ring = std::sync::Arc::new(FrameRing::new(16, 32));
        let dropped = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for i in 0..1000u64 {
                        if ring.push(i, 4, Direction::Ingress, &[&[0; 4]], 32).is_err() {
                            dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(ring.len(), 16);
        assert_eq!(dropped.into_inner(), 4000 - 16);
    }
}
