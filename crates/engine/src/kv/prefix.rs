//! Prefix caching: which KV blocks hold which full prompt blocks, and the LRU of those that no
//! sequence uses any more (kept until their memory is needed).
//!
//! A full block of a prompt is named by a hash chain ([`crate::block_hash`]: vLLM's
//! `sha256_cbor`): block `i`'s hash covers the hash of block `i - 1` (the seed's root hash for
//! block 0) and this block's token ids, so two prompts share block `i`'s key exactly when their
//! first `(i + 1) * block_size` tokens are equal, and a block found under a key holds exactly
//! the K/V that computing those tokens would write. The hashes mean the same in every process
//! started with the same seed, which is what lets the KV events name blocks to other machines.
//!
//! The key covers the token ids and nothing else, because a request is a plain token prompt:
//! K/V at a position depend only on the tokens up to it. If [`crate::EngineRequest`] ever
//! carries anything else that changes K/V for a position (embedding replacements, adapters, a
//! different RoPE scaling, ...), that must go into the hash (vLLM's `extra_keys`, see
//! [`crate::block_hash::hash_block_with`]; an adapter is `(lora_name,)`), or such blocks must
//! not be registered nor looked up at all.
//!
//! Keys are the full 32-byte SHA-256 hashes (as in vLLM); a collision is not a practical
//! concern.

use std::collections::{BTreeMap, HashMap};

use super::allocator::BlockId;
use crate::block_hash::{self, BlockHash};
use crate::model::TokenId;

/// The identity of a full prompt block's contents (see the module docs): its chain hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BlockKey(BlockHash);

impl BlockKey {
    /// The key of block `i`, given the chain hashes of the prompt's full blocks.
    pub(crate) fn of_block(chain: &[BlockHash], i: usize) -> Self {
        BlockKey(chain[i])
    }

    pub(crate) fn hash(&self) -> &BlockHash {
        &self.0
    }
}

/// The chain hashes of every full block of `prompt`, in order, from `root` (the seed's hash).
pub(crate) fn chain_hashes(
    prompt: &[TokenId],
    block_size: usize,
    root: &BlockHash,
) -> Vec<BlockHash> {
    block_hash::chain(prompt, block_size, root)
}

/// The cached blocks: key ↔ block for every registered block (in use or not), and the LRU of
/// registered blocks whose reference count is 0.
#[derive(Debug)]
pub(crate) struct PrefixIndex {
    by_key: HashMap<BlockKey, BlockId>,
    key_of: Vec<Option<BlockKey>>,
    /// Unused registered blocks by the tick at which they were parked (oldest first).
    lru: BTreeMap<u64, BlockId>,
    parked_at: Vec<Option<u64>>,
    tick: u64,
}

impl PrefixIndex {
    pub(crate) fn new(num_blocks: usize) -> PrefixIndex {
        PrefixIndex {
            by_key: HashMap::new(),
            key_of: vec![None; num_blocks],
            lru: BTreeMap::new(),
            parked_at: vec![None; num_blocks],
            tick: 0,
        }
    }

    /// The block registered under `key`, if any.
    pub(crate) fn lookup(&self, key: &BlockKey) -> Option<BlockId> {
        self.by_key.get(key).copied()
    }

    pub(crate) fn is_registered(&self, block: BlockId) -> bool {
        self.key_of[block as usize].is_some()
    }

    /// Registers `block` (in use, not registered) under `key`. False when the key already names
    /// another block (the same prefix was computed twice); the first one stays the cached one.
    pub(crate) fn register(&mut self, block: BlockId, key: BlockKey) -> bool {
        debug_assert!(!self.is_registered(block), "block {block} registered twice");
        if self.by_key.contains_key(&key) || self.is_registered(block) {
            return false;
        }
        self.by_key.insert(key, block);
        self.key_of[block as usize] = Some(key);
        true
    }

    /// A registered block lost its last user: it becomes the most recently used unused block.
    pub(crate) fn park(&mut self, block: BlockId) {
        debug_assert!(self.is_registered(block) && self.parked_at[block as usize].is_none());
        self.tick += 1;
        self.lru.insert(self.tick, block);
        self.parked_at[block as usize] = Some(self.tick);
    }

    /// A parked block is used again (a prefix hit): it leaves the LRU, keeping its key.
    pub(crate) fn unpark(&mut self, block: BlockId) {
        if let Some(tick) = self.parked_at[block as usize].take() {
            self.lru.remove(&tick);
        }
    }

    /// Takes the least recently used parked block and forgets its key: its memory is reused.
    /// Returns the block and the key it held.
    pub(crate) fn evict_oldest(&mut self) -> Option<(BlockId, BlockKey)> {
        let (_, block) = self.lru.pop_first()?;
        self.parked_at[block as usize] = None;
        let key = self.key_of[block as usize].take()?;
        self.by_key.remove(&key);
        Some((block, key))
    }

    /// Registered blocks nobody uses (free, but still holding a cached prefix block).
    pub(crate) fn num_parked(&self) -> usize {
        self.lru.len()
    }

    /// Registered blocks, in use or parked.
    #[cfg(test)]
    pub(crate) fn num_registered(&self) -> usize {
        self.by_key.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 4;

    fn key(prompt: &[TokenId], i: usize) -> BlockKey {
        let root = block_hash::root_hash(block_hash::DEFAULT_HASH_SEED);
        BlockKey::of_block(&chain_hashes(prompt, BS, &root), i)
    }

    #[test]
    fn keys_depend_on_every_earlier_token() {
        let a: Vec<TokenId> = (1..=10).collect();
        // Same second block, different first block: block 1's keys differ.
        let mut b = a.clone();
        b[0] = 99;
        assert_eq!(a[4..8], b[4..8]);
        assert_ne!(key(&a, 1), key(&b, 1));
        // A different suffix after the full blocks changes nothing.
        let mut c = a.clone();
        c[9] = 42;
        assert_eq!(key(&a, 1), key(&c, 1));
        // Same tokens at another block index are another key (the parent differs).
        let d: Vec<TokenId> = [5, 6, 7, 8, 5, 6, 7, 8].to_vec();
        assert_ne!(key(&d, 0), key(&d, 1));
    }

    #[test]
    fn register_lookup_and_duplicates() {
        let p: Vec<TokenId> = (1..=8).collect();
        let mut idx = PrefixIndex::new(4);
        assert!(idx.register(2, key(&p, 0)));
        assert_eq!(idx.lookup(&key(&p, 0)), Some(2));
        assert_eq!(idx.lookup(&key(&p, 1)), None);
        // The same prefix computed again in another block: the first stays cached.
        assert!(!idx.register(3, key(&p, 0)));
        assert!(!idx.is_registered(3));
        assert_eq!(idx.lookup(&key(&p, 0)), Some(2));
        assert_eq!(idx.num_registered(), 1);
    }

    #[test]
    fn lru_evicts_the_least_recently_parked_and_forgets_its_key() {
        let p: Vec<TokenId> = (1..=12).collect();
        let mut idx = PrefixIndex::new(4);
        for (block, i) in [(0, 0), (1, 1), (2, 2)] {
            assert!(idx.register(block, key(&p, i)));
        }
        idx.park(1);
        idx.park(0);
        idx.park(2);
        assert_eq!(idx.num_parked(), 3);
        // Block 0 is used again, then parked again: now the most recent.
        idx.unpark(0);
        assert_eq!(idx.num_parked(), 2);
        idx.park(0);
        assert_eq!(idx.evict_oldest(), Some((1, key(&p, 1))));
        assert_eq!(idx.lookup(&key(&p, 1)), None);
        assert!(!idx.is_registered(1));
        assert_eq!(idx.evict_oldest().map(|e| e.0), Some(2));
        assert_eq!(idx.evict_oldest().map(|e| e.0), Some(0));
        assert_eq!(idx.evict_oldest(), None);
        assert_eq!(idx.num_registered(), 0);
        // An evicted block can be registered under a new key.
        assert!(idx.register(1, key(&p, 2)));
    }
}
