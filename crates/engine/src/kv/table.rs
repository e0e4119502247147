//! BlockTable (one sequence's blocks) and BlockNeed (free blocks a step's writes will take).

use super::allocator::{BlockId, BlockPool};
use super::pools::{BlockAllocator, BlockCopies, Need, WindowBlocks};

/// A window table entry for a block the window has left (never read).
pub(crate) const NO_BLOCK: BlockId = crate::model::NO_BLOCK;

/// Number of blocks of `block_size` tokens needed to hold `tokens` tokens.
pub(crate) fn blocks_for(tokens: usize, block_size: usize) -> usize {
    tokens.div_ceil(block_size)
}

/// Not enough free blocks for a write. The scheduler counts needs with [`BlockNeed`] first, so
/// this only shows up if that count and [`BlockTable::prepare_write`] disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutOfBlocks;

/// The KV blocks of one sequence: block `i` holds positions `i*block_size..(i+1)*block_size`.
/// With a window pool, `window[i]` is that block's window-pool block, [`NO_BLOCK`] once the
/// window has passed it (entries `..window_start` are all released).
#[derive(Debug, Default)]
pub(crate) struct BlockTable {
    blocks: Vec<BlockId>,
    window: Vec<BlockId>,
    window_start: usize,
}

/// Makes entries `start / block_size..needed` of `ids` writable by this table alone in `pool`:
/// shared blocks are replaced by copies (`copies`), missing ones appended.
fn make_writable(
    ids: &mut Vec<BlockId>,
    (start, needed): (usize, usize),
    pool: &mut BlockPool,
    copies: &mut Vec<(BlockId, BlockId)>,
) -> Result<(), OutOfBlocks> {
    for idx in start..ids.len().min(needed) {
        let src = ids[idx];
        if src != NO_BLOCK && pool.ref_count(src) > 1 {
            let dst = pool.allocate().ok_or(OutOfBlocks)?;
            copies.push((src, dst));
            pool.release(src);
            ids[idx] = dst;
        }
    }
    while ids.len() < needed {
        ids.push(pool.allocate().ok_or(OutOfBlocks)?);
    }
    Ok(())
}

impl BlockTable {
    pub(crate) fn ids(&self) -> &[BlockId] {
        &self.blocks
    }

    /// Window-pool blocks by block index ([`NO_BLOCK`] before the window); empty without a
    /// window pool.
    pub(crate) fn window_ids(&self) -> &[BlockId] {
        &self.window
    }

    /// Makes positions `start..end` writable by this sequence alone: a block in that range that
    /// other sequences share is replaced by a fresh copy (copy-on-write; `(src, dst)` is pushed to
    /// `copies` for the model to copy before the step's forward), and missing blocks are
    /// appended, in each pool. Window blocks the token at `start` no longer sees are released
    /// first. Every position before `start` must already be covered.
    pub(crate) fn prepare_write(
        &mut self,
        (start, end): (usize, usize),
        block_size: usize,
        alloc: &mut BlockAllocator,
        copies: &mut BlockCopies,
    ) -> Result<(), OutOfBlocks> {
        debug_assert!(
            self.blocks.len() * block_size >= start,
            "gap before position {start}"
        );
        let needed = blocks_for(end, block_size);
        let first = start / block_size;
        make_writable(
            &mut self.blocks,
            (first, needed),
            alloc.main_mut(),
            &mut copies.main,
        )?;
        if let Some(w) = alloc.window_mut() {
            self.trim_window(start, block_size, w);
            if self.window.len() < first {
                self.window.resize(first, NO_BLOCK);
            }
            make_writable(
                &mut self.window,
                (first, needed),
                &mut w.pool,
                &mut copies.window,
            )?;
        }
        Ok(())
    }

    /// Releases the window blocks that a token at `pos` (and every later one) no longer sees.
    pub(crate) fn trim_window(&mut self, pos: usize, block_size: usize, w: &mut WindowBlocks) {
        let first = w.first_block(pos, block_size).min(self.window.len());
        for idx in self.window_start..first {
            let block = std::mem::replace(&mut self.window[idx], NO_BLOCK);
            if block != NO_BLOCK {
                w.pool.release(block);
            }
        }
        self.window_start = self.window_start.max(first);
    }

    /// Appends a block whose user this table becomes (a cached prompt block the caller took
    /// with `BlockPool::acquire_cached`), and its window-pool block (also acquired, or
    /// [`NO_BLOCK`] before the window) when there is a window pool. The table must end on a
    /// block boundary, and the blocks must never be written through this table.
    pub(crate) fn push_acquired(&mut self, block: BlockId, window: Option<BlockId>) {
        self.blocks.push(block);
        if let Some(w) = window {
            if w == NO_BLOCK && self.window_start == self.window.len() {
                self.window_start += 1;
            }
            self.window.push(w);
        }
    }

    /// A second table over the same blocks (each gains one user).
    pub(crate) fn fork(&self, alloc: &mut BlockAllocator) -> BlockTable {
        for &block in &self.blocks {
            alloc.main_mut().share(block);
        }
        if let Some(w) = alloc.window_mut() {
            for &block in self.window.iter().filter(|&&b| b != NO_BLOCK) {
                w.pool.share(block);
            }
        }
        BlockTable {
            blocks: self.blocks.clone(),
            window: self.window.clone(),
            window_start: self.window_start,
        }
    }

    /// Gives every block back (one user fewer each) and leaves the table empty. Last block
    /// first: cached blocks enter the allocator's LRU tail first, so eviction takes a cached
    /// prefix's tail before its head (a head alone still gives hits; a tail alone cannot).
    pub(crate) fn release(&mut self, alloc: &mut BlockAllocator) {
        for block in self.blocks.drain(..).rev() {
            alloc.main_mut().release(block);
        }
        let window: Vec<BlockId> = self.window.drain(..).rev().collect();
        self.window_start = 0;
        if let Some(w) = alloc.window_mut() {
            for block in window.into_iter().filter(|&b| b != NO_BLOCK) {
                w.pool.release(block);
            }
        }
    }
}

/// Counts the free blocks that a series of [`BlockTable::prepare_write`] calls will take, in the
/// same order, without allocating: new blocks plus copies of shared blocks, per pool. When
/// several forks of one block write in the same step, all but the last holder copy it; the
/// count follows that. (Window blocks the writes release are not counted back.)
#[derive(Debug, Default)]
pub(crate) struct BlockNeed {
    /// Shared blocks already copied away from in this count, with the users they have left.
    users_left: Vec<(BlockId, u32)>,
    window_users_left: Vec<(BlockId, u32)>,
    need: Need,
}

/// Blocks that making entries `first..needed` of `ids` writable takes from `pool`.
fn count_write(
    ids: &[BlockId],
    (first, needed): (usize, usize),
    pool: &BlockPool,
    users_left: &mut Vec<(BlockId, u32)>,
) -> usize {
    let mut n = 0;
    for &block in &ids[first.min(ids.len())..ids.len().min(needed)] {
        if block == NO_BLOCK {
            continue;
        }
        let entry = match users_left.iter_mut().find(|(b, _)| *b == block) {
            Some(entry) => entry,
            None => {
                users_left.push((block, pool.ref_count(block)));
                users_left.last_mut().expect("just pushed")
            }
        };
        if entry.1 > 1 {
            entry.1 -= 1;
            n += 1;
        }
    }
    n + needed.saturating_sub(ids.len().max(first))
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
        let range = (start / block_size, blocks_for(end, block_size));
        self.need.main += count_write(&table.blocks, range, alloc.main(), &mut self.users_left);
        if let Some(w) = alloc.window() {
            self.need.window +=
                count_write(&table.window, range, &w.pool, &mut self.window_users_left);
        }
    }

    /// Free blocks needed so far, per pool.
    pub(crate) fn need(&self) -> Need {
        self.need
    }

    /// Free blocks of the main pool needed so far.
    #[cfg(test)]
    pub(crate) fn blocks(&self) -> usize {
        self.need.main
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 4;

    fn table_with(tokens: usize, alloc: &mut BlockAllocator) -> BlockTable {
        let mut table = BlockTable::default();
        let mut copies = BlockCopies::default();
        table
            .prepare_write((0, tokens), BS, alloc, &mut copies)
            .unwrap();
        assert!(copies.main.is_empty());
        table
    }

    #[test]
    fn grows_block_by_block() {
        let mut alloc = BlockAllocator::new(8);
        let mut table = table_with(5, &mut alloc);
        assert_eq!(table.ids(), &[0, 1]);
        let mut copies = BlockCopies::default();
        table
            .prepare_write((5, 8), BS, &mut alloc, &mut copies)
            .unwrap();
        assert_eq!(table.ids(), &[0, 1]);
        table
            .prepare_write((8, 9), BS, &mut alloc, &mut copies)
            .unwrap();
        assert_eq!(table.ids(), &[0, 1, 2]);
        assert!(copies.main.is_empty());
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
        let mut copies = BlockCopies::default();
        a.prepare_write((6, 7), BS, &mut alloc, &mut copies)
            .unwrap();
        assert_eq!(copies.main, vec![(1, 2)]);
        assert_eq!(a.ids(), &[0, 2]);
        // `b` is now the only user of block 1 and writes in place.
        b.prepare_write((6, 7), BS, &mut alloc, &mut copies)
            .unwrap();
        assert_eq!(copies.main.len(), 1);
        assert_eq!(b.ids(), &[0, 1]);
        assert_eq!(alloc.main().ref_count(0), 2);
        a.release(&mut alloc);
        b.release(&mut alloc);
        assert_eq!(alloc.num_free(), 8);
    }

    #[test]
    fn out_of_blocks_is_reported() {
        let mut alloc = BlockAllocator::new(1);
        let mut table = BlockTable::default();
        let err = table.prepare_write((0, 5), BS, &mut alloc, &mut BlockCopies::default());
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
        let mut copies = BlockCopies::default();
        for t in std::iter::once(&mut base).chain(forks.iter_mut()) {
            t.prepare_write((6, 9), BS, &mut alloc, &mut copies)
                .unwrap();
        }
        assert_eq!(before - alloc.num_free(), need.blocks());
        assert_eq!(copies.main.len(), 3);
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

    #[test]
    fn window_entries_cover_only_the_window_and_are_counted_per_pool() {
        // Window of 6 positions, blocks of 4: a token at 13 reads 8..=13, blocks 2 and 3.
        let mut alloc = BlockAllocator::with_window(16, true, Some((6, 8)));
        let mut t = BlockTable::default();
        let mut copies = BlockCopies::default();
        t.prepare_write((0, 13), BS, &mut alloc, &mut copies)
            .unwrap();
        assert_eq!((t.ids().len(), t.window_ids().len()), (4, 4));
        let w = alloc.window_mut().unwrap();
        t.trim_window(13, BS, w);
        assert_eq!(t.window_ids()[..2], [NO_BLOCK, NO_BLOCK]);
        assert_eq!(alloc.window().unwrap().pool.num_free(), 6);
        // A fork shares the live window blocks; the fork's write copies the shared last one
        // in both pools.
        let mut f = t.fork(&mut alloc);
        let mut need = BlockNeed::default();
        need.add_write(&f, (13, 14), BS, &alloc);
        assert_eq!(need.need(), Need { main: 1, window: 1 });
        f.prepare_write((13, 14), BS, &mut alloc, &mut copies)
            .unwrap();
        assert_eq!((copies.main.len(), copies.window.len()), (1, 1));
        // Writing 14..20 (next token at 14 reads from 9: block 2 on): two new blocks each.
        let mut need = BlockNeed::default();
        need.add_write(&t, (13, 20), BS, &alloc);
        assert_eq!(need.need(), Need { main: 1, window: 1 });
        t.release(&mut alloc);
        f.release(&mut alloc);
        assert_eq!(alloc.num_free(), 16);
        assert_eq!(alloc.window().unwrap().pool.num_free(), 8);
    }
}
