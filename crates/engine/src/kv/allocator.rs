//! BlockAllocator: a free list plus a reference count per KV block.

/// Index of a KV block in the model's cache.
pub(crate) type BlockId = u32;

/// Hands out KV blocks and counts their users. A block is free exactly when its count is 0.
///
/// Freed blocks are reused last-in first-out, so a use-after-free bug in the engine shows up as
/// corrupted output quickly in tests rather than hiding in a rarely reused block.
#[derive(Debug)]
pub(crate) struct BlockAllocator {
    ref_counts: Vec<u32>,
    free: Vec<BlockId>,
}

impl BlockAllocator {
    /// An allocator over blocks `0..num_blocks`, all free.
    pub(crate) fn new(num_blocks: usize) -> BlockAllocator {
        let top = BlockId::try_from(num_blocks).unwrap_or(BlockId::MAX);
        // Reversed so that the first allocations return 0, 1, 2, ...
        let free = (0..top).rev().collect::<Vec<_>>();
        BlockAllocator {
            ref_counts: vec![0; free.len()],
            free,
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.ref_counts.len()
    }

    pub(crate) fn num_free(&self) -> usize {
        self.free.len()
    }

    /// A free block with reference count 1, or `None` when every block is in use.
    pub(crate) fn allocate(&mut self) -> Option<BlockId> {
        let block = self.free.pop()?;
        debug_assert_eq!(self.ref_counts[block as usize], 0);
        self.ref_counts[block as usize] = 1;
        Some(block)
    }

    /// One more user of an allocated block (a forked sequence sharing it).
    pub(crate) fn share(&mut self, block: BlockId) {
        let count = &mut self.ref_counts[block as usize];
        debug_assert!(*count > 0, "sharing free block {block}");
        *count += 1;
    }

    /// One user fewer; the block returns to the free list when none is left.
    pub(crate) fn release(&mut self, block: BlockId) {
        let count = &mut self.ref_counts[block as usize];
        debug_assert!(*count > 0, "releasing free block {block}");
        if *count == 0 {
            return;
        }
        *count -= 1;
        if *count == 0 {
            self.free.push(block);
        }
    }

    /// Number of users of `block` (0 = free).
    pub(crate) fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_block_once_then_runs_out() {
        let mut alloc = BlockAllocator::new(3);
        assert_eq!((alloc.total(), alloc.num_free()), (3, 3));
        let got: Vec<_> = (0..3).map(|_| alloc.allocate().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(alloc.allocate(), None);
        assert_eq!(alloc.num_free(), 0);
        assert!(got.iter().all(|&b| alloc.ref_count(b) == 1));
    }

    #[test]
    fn shared_block_is_freed_after_its_last_release() {
        let mut alloc = BlockAllocator::new(2);
        let b = alloc.allocate().unwrap();
        alloc.share(b);
        alloc.share(b);
        assert_eq!(alloc.ref_count(b), 3);
        alloc.release(b);
        alloc.release(b);
        assert_eq!(alloc.num_free(), 1);
        alloc.release(b);
        assert_eq!(alloc.ref_count(b), 0);
        assert_eq!(alloc.num_free(), 2);
    }

    #[test]
    fn freed_blocks_are_reused_last_in_first_out() {
        let mut alloc = BlockAllocator::new(4);
        let a = alloc.allocate().unwrap();
        let b = alloc.allocate().unwrap();
        alloc.release(a);
        alloc.release(b);
        assert_eq!(alloc.allocate(), Some(b));
        assert_eq!(alloc.allocate(), Some(a));
    }

    #[test]
    fn empty_allocator_has_nothing_to_give() {
        let mut alloc = BlockAllocator::new(0);
        assert_eq!(alloc.allocate(), None);
        assert_eq!(alloc.total(), 0);
    }
}
