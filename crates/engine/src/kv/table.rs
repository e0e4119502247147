//! BlockTable (one sequence's blocks) and BlockNeed (free blocks a step's writes will take).

use super::allocator::{BlockAllocator, BlockId};

/// Number of blocks of `block_size` tokens needed to hold `tokens` tokens.
pub(crate) fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

/// Not enough free blocks for a write. The scheduler counts needs with [`BlockNeed`] first, so
/// this only shows up if that count and [`BlockTable::prepare_write`] disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfBlocks;

/// The KV blocks of one sequence: block `i` holds positions `i*block_size..(i+1)*block_size`.
#[derive(Debug, Default)]
pub(crate) struct BlockTable {
    blocks: Vec<BlockId>,
}

impl BlockTable {
    pub(crate) fn ids(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Makes positions `start..end` writable by this sequence alone: a block in that range that
    /// other sequences share is replaced by a fresh copy (copy-on-write; `(src, dst)` is pushed to
    /// `copies` for the model to copy before the step's forward), and missing blocks are
    /// appended. Every position before `start` must already be covered.
    pub(crate) fn prepare_write(
        &mut self,
        (start, end): (usize, usize),
        block_size: usize,
        alloc: &mut BlockAllocator,
        copies: &mut Vec<(BlockId, BlockId)>,
    ) -> Result<(), OutOfBlocks> {
        debug_assert!(
            self.blocks.len() * block_size >= start,
            "gap before position {start}"
        );
        let needed = blocks_for(end, block_size);
        for idx in start / block_size..self.blocks.len().min(needed) {
            let src = self.blocks[idx];
            if alloc.ref_count(src) > 1 {
                let dst = alloc.allocate().ok_or(OutOfBlocks)?;
                copies.push((src, dst));
                alloc.release(src);
                self.blocks[idx] = dst;
            }
        }
        while self.blocks.len() < needed {
            self.blocks.push(alloc.allocate().ok_or(OutOfBlocks)?);
        }
        Ok(())
    }

    /// Appends a block whose user this table becomes (a cached prompt block the caller took
    /// with `BlockAllocator::acquire_cached`). The table must end on a block boundary, and the
    /// block must never be written through this table.
    pub(crate) fn push_acquired(&mut self, block: BlockId) {
        self.blocks.push(block);
    }

    /// A second table over the same blocks (each gains one user).
    pub(crate) fn fork(&self, alloc: &mut BlockAllocator) -> BlockTable {
        for &block in &self.blocks {
            alloc.share(block);
        }
        BlockTable {
            blocks: self.blocks.clone(),
        }
    }

    /// Gives every block back (one user fewer each) and leaves the table empty. Last block
    /// first: cached blocks enter the allocator's LRU tail first, so eviction takes a cached
    /// prefix's tail before its head (a head alone still gives hits; a tail alone cannot).
    pub(crate) fn release(&mut self, alloc: &mut BlockAllocator) {
        for block in self.blocks.drain(..).rev() {
            alloc.release(block);
        }
    }
}

/// Counts the free blocks that a series of [`BlockTable::prepare_write`] calls will take, in the
/// same order, without allocating: new blocks plus copies of shared blocks. When several forks
/// of one block write in the same step, all but the last holder copy it; the count follows that.
#[derive(Debug, Default)]
pub(crate) struct BlockNeed {
    /// Shared blocks already copied away from in this count, with the users they have left.
    users_left: Vec<(BlockId, u32)>,
    blocks: usize,
}

impl BlockNeed {
    /// Adds the blocks that writing positions `start..end` through `table` takes.
    pub(crate) fn add_write(
        &mut self,
        table: &BlockTable,
        (start, end): (usize, usize),
        block_size: usize,
        alloc: &BlockAllocator,
    ) {
        let needed = blocks_for(end, block_size);
        for idx in start / block_size..table.blocks.len().min(needed) {
            let block = table.blocks[idx];
            let entry = match self.users_left.iter_mut().find(|(b, _)| *b == block) {
                Some(entry) => entry,
                None => {
                    self.users_left.push((block, alloc.ref_count(block)));
                    self.users_left.last_mut().expect("just pushed")
                }
            };
            if entry.1 > 1 {
                entry.1 -= 1;
                self.blocks += 1;
            }
        }
        self.blocks += needed.saturating_sub(table.blocks.len());
    }

    /// Free blocks needed so far.
    pub(crate) fn blocks(&self) -> usize {
        self.blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 4;

    fn table_with(tokens: usize, alloc: &mut BlockAllocator) -> BlockTable {
        let mut table = BlockTable::default();
        let mut copies = Vec::new();
        table
            .prepare_write((0, tokens), BS, alloc, &mut copies)
            .unwrap();
        assert!(copies.is_empty());
        table
    }

    #[test]
    fn grows_block_by_block() {
        let mut alloc = BlockAllocator::new(8);
        let mut table = table_with(5, &mut alloc);
        assert_eq!(table.ids(), &[0, 1]);
        let mut copies = Vec::new();
        table
            .prepare_write((5, 8), BS, &mut alloc, &mut copies)
            .unwrap();
        assert_eq!(table.ids(), &[0, 1]);
        table
            .prepare_write((8, 9), BS, &mut alloc, &mut copies)
            .unwrap();
        assert_eq!(table.ids(), &[0, 1, 2]);
        assert!(copies.is_empty());
        table.release(&mut alloc);
        assert!(table.ids().is_empty());
        assert_eq!(alloc.num_free(), 8);
    }

    #[test]
    fn fork_shares_and_writing_a_shared_partial_block_copies_it() {
        let mut alloc = BlockAllocator::new(8);
        let mut a = table_with(6, &mut alloc); // blocks 0 (full) and 1 (half)
        let mut b = a.fork(&mut alloc);
        assert_eq!(alloc.num_free(), 6);
        let mut copies = Vec::new();
        a.prepare_write((6, 7), BS, &mut alloc, &mut copies)
            .unwrap();
        assert_eq!(copies, vec![(1, 2)]);
        assert_eq!(a.ids(), &[0, 2]);
        // `b` is now the only user of block 1 and writes in place.
        b.prepare_write((6, 7), BS, &mut alloc, &mut copies)
            .unwrap();
        assert_eq!(copies.len(), 1);
        assert_eq!(b.ids(), &[0, 1]);
        assert_eq!(alloc.ref_count(0), 2);
        a.release(&mut alloc);
        b.release(&mut alloc);
        assert_eq!(alloc.num_free(), 8);
    }

    #[test]
    fn out_of_blocks_is_reported() {
        let mut alloc = BlockAllocator::new(1);
        let mut table = BlockTable::default();
        let err = table.prepare_write((0, 5), BS, &mut alloc, &mut Vec::new());
        assert_eq!(err, Err(OutOfBlocks));
    }

    #[test]
    fn need_matches_what_prepare_write_takes() {
        let mut alloc = BlockAllocator::new(16);
        let base = table_with(6, &mut alloc);
        let mut forks: Vec<BlockTable> = (0..3).map(|_| base.fork(&mut alloc)).collect();
        let mut base = base;
        // Four holders of block 1; all four write position 6, then one more block each.
        let mut need = BlockNeed::default();
        for t in std::iter::once(&base).chain(forks.iter()) {
            need.add_write(t, (6, 9), BS, &alloc);
        }
        assert_eq!(need.blocks(), 3 + 4);
        let before = alloc.num_free();
        let mut copies = Vec::new();
        for t in std::iter::once(&mut base).chain(forks.iter_mut()) {
            t.prepare_write((6, 9), BS, &mut alloc, &mut copies)
                .unwrap();
        }
        assert_eq!(before - alloc.num_free(), need.blocks());
        assert_eq!(copies.len(), 3);
    }

    #[test]
    fn need_counts_only_writers_present() {
        let mut alloc = BlockAllocator::new(16);
        let base = table_with(6, &mut alloc);
        let fork = base.fork(&mut alloc);
        // Only one of the two holders writes: it must copy.
        let mut need = BlockNeed::default();
        need.add_write(&fork, (6, 7), BS, &alloc);
        assert_eq!(need.blocks(), 1);
        assert_eq!(blocks_for(0, BS), 0);
        assert_eq!(blocks_for(9, BS), 3);
    }
}
