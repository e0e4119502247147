//! Prefix caching: which KV blocks hold which full prompt blocks, and the LRU of those that no
//! sequence uses any more (kept until their memory is needed).
//!
//! A full block of a prompt is named by a hash chain: [`BlockKey`] = the chain hash of the block
//! before it (for the first block: the chain's seed) + this block's token ids. Two prompts share
//! block `i`'s key exactly when they have the same seed and their first `(i + 1) * block_size`
//! tokens are equal, so a block found under a key holds exactly the K/V that computing those
//! tokens would write.
//!
//! Besides the tokens, only LoRA adapters change K/V for a position here, and they enter
//! through the chain's seed, chosen in ONE place: [`chain_seed`]. The base model's chain is
//! unsalted (`None`); a request with adapters seeds it with a hash of their content digests and
//! scales (not their names or ids: an adapter reloaded under the same name with other weights
//! never hits the old blocks). Embedding replacements are not keyed: such prompts are never
//! registered nor looked up. Anything else that would change K/V (a different RoPE scaling,
//! ...) must go into [`chain_seed`] too.
//!
//! Equal keys are compared in full (parent hash or seed, and every token), so only a 64-bit
//! collision of the parent chain (or of a seed with a chain hash) could match a wrong block.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use super::allocator::BlockId;
use crate::api::LoraRef;
use crate::model::TokenId;

/// The identity of a full prompt block's contents (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BlockKey {
    parent: Option<u64>,
    tokens: Box<[TokenId]>,
}

/// The seed of a prompt's hash chain: the parent of its first block. THE place where what
/// changes K/V besides the tokens enters the prefix cache's keys: `None` for the base model
/// (unsalted, so base prompts keep their keys), else a hash of the LoRA adapters' content
/// digests and scales, in order.
pub(crate) fn chain_seed(lora: &[LoraRef]) -> Option<u64> {
    if lora.is_empty() {
        return None;
    }
    let mut h = DefaultHasher::new();
    "cordial-lora".hash(&mut h);
    for l in lora {
        l.digest.hash(&mut h);
        l.scale.to_bits().hash(&mut h);
    }
    Some(h.finish())
}

impl BlockKey {
    /// The key of block `i` of `prompt`, given the chain's seed and the chain hashes of the
    /// blocks before it. `chain` must hold at least `i` hashes (from [`chain_hashes`] with the
    /// same seed) and the block must be full.
    pub(crate) fn of_block(
        prompt: &[TokenId],
        block_size: usize,
        seed: Option<u64>,
        chain: &[u64],
        i: usize,
    ) -> Self {
        BlockKey {
            parent: match i {
                0 => seed,
                _ => Some(chain[i - 1]),
            },
            tokens: prompt[i * block_size..(i + 1) * block_size].into(),
        }
    }

    /// The chain hash of this block: what the next block's key names as its parent.
    /// `DefaultHasher::new()` has fixed keys, so this is stable within the process.
    fn chain_hash(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

/// The chain hashes of every full block of `prompt` from `seed` ([`chain_seed`]), in order.
pub(crate) fn chain_hashes(prompt: &[TokenId], block_size: usize, seed: Option<u64>) -> Vec<u64> {
    let full = prompt.len() / block_size.max(1);
    let mut chain = Vec::with_capacity(full);
    for i in 0..full {
        let hash = BlockKey::of_block(prompt, block_size, seed, &chain, i).chain_hash();
        chain.push(hash);
    }
    chain
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
        self.by_key.insert(key.clone(), block);
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
    pub(crate) fn evict_oldest(&mut self) -> Option<BlockId> {
        let (_, block) = self.lru.pop_first()?;
        self.parked_at[block as usize] = None;
        if let Some(key) = self.key_of[block as usize].take() {
            self.by_key.remove(&key);
        }
        Some(block)
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
        BlockKey::of_block(prompt, BS, None, &chain_hashes(prompt, BS, None), i)
    }

    #[test]
    fn chain_hashes_cover_full_blocks_only_and_depend_on_every_earlier_token() {
        let a: Vec<TokenId> = (1..=10).collect();
        assert_eq!(chain_hashes(&a, BS, None).len(), 2);
        assert!(chain_hashes(&a[..3], BS, None).is_empty());
        // Same second block, different first block: block 1's keys and hashes differ.
        let mut b = a.clone();
        b[0] = 99;
        assert_eq!(a[4..8], b[4..8]);
        assert_ne!(key(&a, 1), key(&b, 1));
        assert_ne!(chain_hashes(&a, BS, None)[1], chain_hashes(&b, BS, None)[1]);
        // A different suffix after the full blocks changes nothing.
        let mut c = a.clone();
        c[9] = 42;
        assert_eq!(chain_hashes(&a, BS, None), chain_hashes(&c, BS, None));
        assert_eq!(key(&a, 1), key(&c, 1));
        // Same tokens at another block index are another key (the parent differs).
        let d: Vec<TokenId> = [5, 6, 7, 8, 5, 6, 7, 8].to_vec();
        assert_ne!(key(&d, 0), key(&d, 1));
    }

    #[test]
    fn the_seed_names_the_adapters_content_and_scale_and_leaves_the_base_unsalted() {
        let lora = |digest: u8, scale: f32| LoraRef {
            id: 7,
            scale,
            digest: [digest; 32],
        };
        assert_eq!(chain_seed(&[]), None);
        let a = chain_seed(&[lora(1, 1.0)]);
        assert!(a.is_some());
        // The id does not matter (a reload under another id hits); content and scale do.
        assert_eq!(
            a,
            chain_seed(&[LoraRef {
                id: 9,
                ..lora(1, 1.0)
            }])
        );
        assert_ne!(a, chain_seed(&[lora(2, 1.0)]));
        assert_ne!(a, chain_seed(&[lora(1, 0.5)]));
        assert_ne!(
            chain_seed(&[lora(1, 1.0), lora(2, 1.0)]),
            chain_seed(&[lora(2, 1.0), lora(1, 1.0)])
        );
        // Every block of a salted chain differs from the base's, the first one included.
        let p: Vec<TokenId> = (1..=8).collect();
        let (base, salted) = (chain_hashes(&p, BS, None), chain_hashes(&p, BS, a));
        for i in 0..2 {
            assert_ne!(base[i], salted[i]);
            assert_ne!(
                BlockKey::of_block(&p, BS, None, &base, i),
                BlockKey::of_block(&p, BS, a, &salted, i)
            );
        }
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
        assert_eq!(idx.evict_oldest(), Some(1));
        assert_eq!(idx.lookup(&key(&p, 1)), None);
        assert!(!idx.is_registered(1));
        assert_eq!(idx.evict_oldest(), Some(2));
        assert_eq!(idx.evict_oldest(), Some(0));
        assert_eq!(idx.evict_oldest(), None);
        assert_eq!(idx.num_registered(), 0);
        // An evicted block can be registered under a new key.
        assert!(idx.register(1, key(&p, 2)));
    }
}
