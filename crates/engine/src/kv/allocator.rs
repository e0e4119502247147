//! BlockPool: a free list plus a reference count per KV block of one pool, and the prefix
//! cache ([`PrefixIndex`]) of its full prompt blocks that can be reused.

use super::prefix::{BlockKey, PrefixIndex};
use crate::api::KvEvent;
use crate::block_hash::{self, BlockHash};
use crate::model::TokenId;

/// Index of a KV block in one pool of the model's cache.
pub(crate) type BlockId = u32;

/// Hands out KV blocks and counts their users. A block is in use exactly when its count is > 0.
///
/// An unused block is either plain free, or *cached-free*: it holds a registered full prompt
/// block (see [`super::prefix`]) that a later prompt with the same prefix may take back with
/// [`Self::acquire_cached`]. Both kinds count as free ([`Self::num_free`]): `allocate` takes a
/// plain free block first and only when none is left evicts the least recently used
/// cached-free block.
///
/// Plain free blocks are reused last-in first-out, so a use-after-free bug in the engine shows
/// up as corrupted output quickly in tests rather than hiding in a rarely reused block.
#[derive(Debug)]
pub(crate) struct BlockPool {
    ref_counts: Vec<u32>,
    free: Vec<BlockId>,
    prefix: PrefixIndex,
    prefix_caching: bool,
    /// The hash of the seed: the parent of every prompt's first block.
    root: BlockHash,
    seed: String,
    /// Prefix-cache changes since the last [`Self::take_events`], when recording.
    events: Option<Vec<KvEvent>>,
}

impl BlockPool {
    /// An allocator over blocks `0..num_blocks`, all free, with prefix caching on.
    #[cfg(test)]
    pub(crate) fn new(num_blocks: usize) -> BlockPool {
        BlockPool::with_prefix_caching(num_blocks, true)
    }

    /// An allocator over blocks `0..num_blocks`, all free; `prefix_caching` off makes
    /// [`Self::register`] a no-op, so nothing is ever found by [`Self::lookup`].
    pub(crate) fn with_prefix_caching(num_blocks: usize, prefix_caching: bool) -> BlockPool {
        let top = BlockId::try_from(num_blocks).unwrap_or(BlockId::MAX);
        // Reversed so that the first allocations return 0, 1, 2, ...
        let free = (0..top).rev().collect::<Vec<_>>();
        BlockPool {
            ref_counts: vec![0; free.len()],
            prefix: PrefixIndex::new(free.len()),
            free,
            prefix_caching,
            root: block_hash::root_hash(block_hash::DEFAULT_HASH_SEED),
            seed: block_hash::DEFAULT_HASH_SEED.to_owned(),
            events: None,
        }
    }

    /// Block hashes chained from `seed`'s hash (see [`crate::block_hash`]).
    pub(crate) fn with_hash_seed(mut self, seed: &str) -> BlockPool {
        self.root = block_hash::root_hash(seed);
        self.seed = seed.to_owned();
        self
    }

    /// Records the prefix cache's changes as [`KvEvent`]s (see [`Self::take_events`]).
    pub(crate) fn recording_events(mut self) -> BlockPool {
        self.events = Some(Vec::new());
        self
    }

    /// The same allocator state as a fresh one (every block free, nothing cached); when
    /// recording, its first event is `AllBlocksCleared`.
    pub(crate) fn fresh(&self) -> BlockPool {
        let mut fresh = BlockPool::with_prefix_caching(self.total(), self.prefix_caching)
            .with_hash_seed(&self.seed);
        if self.events.is_some() {
            fresh.events = Some(vec![KvEvent::AllBlocksCleared]);
        }
        fresh
    }

    /// The parent hash of every prompt's first block.
    pub(crate) fn root_hash(&self) -> &BlockHash {
        &self.root
    }

    /// The events recorded since the last call (none when not recording).
    pub(crate) fn take_events(&mut self) -> Vec<KvEvent> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Records that the consecutive prompt blocks `hashes` (holding `tokens`) were registered,
    /// after the block hashed `parent`.
    pub(crate) fn record_stored(
        &mut self,
        hashes: &[BlockHash],
        parent: Option<&BlockHash>,
        tokens: &[TokenId],
        block_size: usize,
        lora: Option<(u32, &str)>,
    ) {
        if let Some(events) = &mut self.events {
            if hashes.is_empty() {
                return;
            }
            events.push(KvEvent::BlockStored {
                block_hashes: hashes.iter().map(block_hash::external).collect(),
                parent_block_hash: parent.map(block_hash::external),
                token_ids: tokens.to_vec(),
                block_size,
                lora_id: lora.map(|l| u64::from(l.0)),
                lora_name: lora.map(|l| l.1.to_owned()),
            });
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.ref_counts.len()
    }

    /// Blocks [`Self::allocate`] can hand out: plain free plus cached-free.
    pub(crate) fn num_free(&self) -> usize {
        self.free.len() + self.prefix.num_parked()
    }

    /// Unused blocks still holding a cached prompt block (part of [`Self::num_free`]).
    pub(crate) fn num_cached_free(&self) -> usize {
        self.prefix.num_parked()
    }

    pub(crate) fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// A free block with reference count 1, or `None` when every block is in use. Evicts the
    /// least recently used cached-free block when no plain free block is left.
    pub(crate) fn allocate(&mut self) -> Option<BlockId> {
        let block = match self.free.pop() {
            Some(block) => block,
            None => {
                let (block, key) = self.prefix.evict_oldest()?;
                if let Some(events) = &mut self.events {
                    events.push(KvEvent::BlockRemoved {
                        block_hashes: vec![block_hash::external(key.hash())],
                    });
                }
                block
            }
        };
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

    /// One user fewer; when none is left the block becomes free, or cached-free when it is
    /// registered.
    pub(crate) fn release(&mut self, block: BlockId) {
        let count = &mut self.ref_counts[block as usize];
        debug_assert!(*count > 0, "releasing free block {block}");
        if *count == 0 {
            return;
        }
        *count -= 1;
        if *count == 0 {
            if self.prefix.is_registered(block) {
                self.prefix.park(block);
            } else {
                self.free.push(block);
            }
        }
    }

    /// Number of users of `block` (0 = free or cached-free).
    pub(crate) fn ref_count(&self, block: BlockId) -> u32 {
        self.ref_counts[block as usize]
    }

    /// The block caching the prompt block `key`, in use or cached-free.
    pub(crate) fn lookup(&self, key: &BlockKey) -> Option<BlockId> {
        self.prefix.lookup(key)
    }

    /// Takes one more user of a block found by [`Self::lookup`] (out of the LRU if unused).
    pub(crate) fn acquire_cached(&mut self, block: BlockId) {
        debug_assert!(self.prefix.is_registered(block), "block {block} not cached");
        if self.ref_counts[block as usize] == 0 {
            self.prefix.unpark(block);
        }
        self.ref_counts[block as usize] += 1;
    }

    /// Records that in-use `block` holds exactly the full prompt block `key`; it must never be
    /// written again. False when caching is off or the key is already cached in another block.
    pub(crate) fn register(&mut self, block: BlockId, key: BlockKey) -> bool {
        debug_assert!(
            self.ref_counts[block as usize] > 0,
            "registering free block"
        );
        self.prefix_caching && !self.prefix.is_registered(block) && self.prefix.register(block, key)
    }

    #[cfg(test)]
    pub(crate) fn is_cached(&self, block: BlockId) -> bool {
        self.prefix.is_registered(block)
    }
}

#[cfg(test)]
mod tests {
    use super::super::prefix::chain_hashes;
    use super::*;

    #[test]
    fn allocates_every_block_once_then_runs_out() {
        let mut alloc = BlockPool::new(3);
        assert_eq!((alloc.total(), alloc.num_free()), (3, 3));
        let got: Vec<_> = (0..3).map(|_| alloc.allocate().unwrap()).collect();
        assert_eq!(got, vec![0, 1, 2]);
        assert_eq!(alloc.allocate(), None);
        assert_eq!(alloc.num_free(), 0);
        assert!(got.iter().all(|&b| alloc.ref_count(b) == 1));
    }

    #[test]
    fn shared_block_is_freed_after_its_last_release() {
        let mut alloc = BlockPool::new(2);
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
        let mut alloc = BlockPool::new(4);
        let a = alloc.allocate().unwrap();
        let b = alloc.allocate().unwrap();
        alloc.release(a);
        alloc.release(b);
        assert_eq!(alloc.allocate(), Some(b));
        assert_eq!(alloc.allocate(), Some(a));
    }

    #[test]
    fn empty_allocator_has_nothing_to_give() {
        let mut alloc = BlockPool::new(0);
        assert_eq!(alloc.allocate(), None);
        assert_eq!(alloc.total(), 0);
    }

    fn keys(prompt: &[u32], bs: usize) -> Vec<BlockKey> {
        let root = block_hash::root_hash(block_hash::DEFAULT_HASH_SEED);
        let seed = super::super::prefix::ChainSeed::default();
        let chain = chain_hashes(prompt, bs, &root, &seed);
        (0..chain.len())
            .map(|i| BlockKey::of_block(&chain, &seed, i))
            .collect()
    }

    #[test]
    fn a_released_cached_block_stays_findable_and_counts_as_free() {
        let mut alloc = BlockPool::new(3);
        let k = keys(&[1, 2, 3, 4, 5, 6, 7, 8], 4);
        let (a, b) = (alloc.allocate().unwrap(), alloc.allocate().unwrap());
        assert!(alloc.register(a, k[0]));
        assert!(!alloc.register(b, k[0]), "a key names one block");
        alloc.release(a);
        alloc.release(b);
        assert_eq!((alloc.num_free(), alloc.num_cached_free()), (3, 1));
        assert_eq!(alloc.lookup(&k[0]), Some(a));
        // A hit takes it back out of the LRU with one user; sharing it while in use adds one.
        alloc.acquire_cached(a);
        alloc.acquire_cached(a);
        assert_eq!((alloc.ref_count(a), alloc.num_free()), (2, 2));
        alloc.release(a);
        alloc.release(a);
        assert_eq!(alloc.num_cached_free(), 1);
        // Plain free blocks go first; the cached one is evicted last and forgets its key.
        assert_eq!(alloc.allocate(), Some(b));
        assert_ne!(alloc.allocate(), Some(a));
        assert_eq!(alloc.allocate(), Some(a));
        assert_eq!(alloc.lookup(&k[0]), None);
        assert!(!alloc.is_cached(a));
        assert_eq!(alloc.allocate(), None);
    }

    #[test]
    fn eviction_takes_the_least_recently_released_cached_block() {
        let mut alloc = BlockPool::new(3);
        let k = keys(&(1..=12).collect::<Vec<_>>(), 4);
        let blocks: Vec<_> = (0..3).map(|_| alloc.allocate().unwrap()).collect();
        for (i, &b) in blocks.iter().enumerate() {
            assert!(alloc.register(b, k[i]));
        }
        for &i in &[2, 0, 1] {
            alloc.release(blocks[i]);
        }
        // Block 2 is hit and released again: now the most recently used.
        alloc.acquire_cached(blocks[2]);
        alloc.release(blocks[2]);
        assert_eq!(alloc.allocate(), Some(blocks[0]));
        assert_eq!(alloc.lookup(&k[0]), None);
        assert_eq!(alloc.lookup(&k[1]), Some(blocks[1]));
        assert_eq!(alloc.allocate(), Some(blocks[1]));
        assert_eq!(alloc.allocate(), Some(blocks[2]));
        assert_eq!((alloc.num_free(), alloc.num_cached_free()), (0, 0));
    }

    #[test]
    fn with_caching_off_nothing_is_registered() {
        let mut alloc = BlockPool::with_prefix_caching(2, false);
        let k = keys(&[1, 2, 3, 4], 4);
        let a = alloc.allocate().unwrap();
        assert!(!alloc.register(a, k[0]));
        alloc.release(a);
        assert_eq!((alloc.lookup(&k[0]), alloc.num_cached_free()), (None, 0));
        assert!(!alloc.fresh().prefix_caching());
    }
}
