//! Recycled buffers for segment-sized frames.
//!
//! A child moves every bulk TSO segment (up to 64 KiB) through an owned buffer twice: out of
//! its guest's TX queue and out of a ring into the egress scheduler. Allocating those buffers
//! fresh cost more than copying into them: glibc returns freed 64 KiB chunks at the top of the
//! heap to the kernel, so the next allocation page-faulted and zeroed its pages again (about a
//! sixth of a child's CPU time under bulk TCP, measured with `perf`). Large frames therefore
//! live in buffers of one fixed capacity, [`BIG`], that go back to a small free list when the
//! frame is delivered or forwarded. Small frames keep exact-size allocations, so the
//! scheduler's memory accounting (capacity, like `skb->truesize`) stays close to their size.

#![forbid(unsafe_code)]

use crate::frame::MAX_GSO_FRAME;

/// Capacity of every pooled buffer: the largest frame a guest may hand over.
pub const BIG: usize = MAX_GSO_FRAME;

/// Frames at least this long go into pooled buffers; shorter ones are copied into an
/// exact-size allocation. At this threshold a pooled buffer is at most about twice the frame,
/// so memory accounting by capacity overstates a frame by at most that factor.
pub const POOL_MIN: usize = BIG / 2;

/// Buffers kept for reuse at most (2 MiB per child; more are freed).
const KEEP: usize = 32;

/// A free list of [`BIG`]-capacity buffers.
#[derive(Debug, Default)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
}

impl BufPool {
    /// An empty buffer with capacity [`BIG`]: a recycled one when there is one.
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| Vec::with_capacity(BIG))
    }

    /// Takes a frame's buffer back once its bytes are no longer needed. Only [`BIG`]
    /// buffers are kept, at most [`KEEP`] of them; anything else is freed.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == BIG && self.free.len() < KEEP {
            buf.clear();
            self.free.push(buf);
        }
    }

    /// The frame in `scratch`, as an owned buffer: a long frame takes `scratch` itself (which
    /// gets a pooled buffer in its place), a short one is copied into an exact-size vector
    /// (and `scratch` keeps its capacity for the next frame).
    pub fn detach(&mut self, scratch: &mut Vec<u8>) -> Vec<u8> {
        if scratch.len() >= POOL_MIN && scratch.capacity() == BIG {
            std::mem::replace(scratch, self.take())
        } else {
            scratch.as_slice().to_vec()
        }
    }

    /// Buffers on the free list.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether the free list is empty.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_only_big_ones_are_kept() {
        let mut pool = BufPool::default();
        let mut a = pool.take();
        assert_eq!(a.capacity(), BIG);
        a.extend_from_slice(&[7; 100]);
        let ptr = a.as_ptr();
        pool.give(a);
        let b = pool.take();
        assert_eq!(b.as_ptr(), ptr, "the freed buffer is handed out again");
        assert!(b.is_empty(), "a recycled buffer comes back empty");
        pool.give(Vec::with_capacity(100));
        pool.give(Vec::with_capacity(BIG + 1));
        assert!(
            pool.is_empty(),
            "buffers of another capacity are freed, not kept"
        );
        for _ in 0..KEEP + 5 {
            pool.give(Vec::with_capacity(BIG));
        }
        assert_eq!(pool.len(), KEEP, "the free list is bounded");
    }

    #[test]
    fn detach_moves_long_frames_and_copies_short_ones() {
        let mut pool = BufPool::default();
        let mut scratch = pool.take();
        scratch.extend_from_slice(&[1; 60]);
        let small = pool.detach(&mut scratch);
        assert_eq!(small, vec![1; 60]);
        assert_eq!(
            small.capacity(),
            60,
            "a short frame gets an exact-size allocation"
        );
        assert_eq!(scratch.capacity(), BIG, "scratch keeps its buffer");

        scratch.clear();
        scratch.extend_from_slice(&vec![2; POOL_MIN]);
        let ptr = scratch.as_ptr();
        let big = pool.detach(&mut scratch);
        assert_eq!(
            big.as_ptr(),
            ptr,
            "a long frame takes the buffer without a copy"
        );
        assert_eq!(big.len(), POOL_MIN);
        assert_eq!(scratch.capacity(), BIG);
        assert!(scratch.is_empty());
        assert_ne!(scratch.as_ptr(), ptr);
    }
}
