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
//! Besides the tokens, only LoRA adapters change K/V for a position here, and they enter the
//! key in ONE place, [`chain_seed`]:
//! - their names are vLLM's `extra_keys` of every block hash (`(lora_name,)`, see
//!   [`crate::block_hash::hash_block_with`]), so the hashes the KV events carry are the ones
//!   vLLM computes for the same adapter;
//! - their content digests and scales are the key's salt, next to the hash: an adapter
//!   reloaded under the same name with other weights (same hashes) never hits the old blocks.
//!
//! The base model's chain has neither (extra keys `None`, no salt), so base prompts keep
//! vLLM's plain hashes. Embedding replacements are not keyed: such prompts are never
//! registered nor looked up. Anything else that would change K/V (a different RoPE scaling,
//! ...) must go into [`chain_seed`] too.
//!
//! Keys are the full 32-byte SHA-256 hashes (as in vLLM); a collision is not a practical
//! concern.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

use super::allocator::BlockId;
use crate::api::LoraRef;
use crate::block_hash::{self, BlockHash};
use crate::model::TokenId;

/// The identity of a full prompt block's contents (see the module docs): its chain hash and
/// the salt of its chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct BlockKey {
    hash: BlockHash,
    salt: Option<u64>,
}

/// What keys a prompt's blocks besides its tokens (see the module docs).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ChainSeed {
    /// vLLM's `extra_keys` of every block hash: the adapters' names (`None`: the base model).
    extra_keys: Option<Vec<String>>,
    /// A hash of the adapters' content digests and scales, in order (`None`: the base model).
    salt: Option<u64>,
}

/// THE place where what changes K/V besides the tokens enters the prefix cache's keys: nothing
/// for the base model, else the adapters' names (hash extra keys) and a salt of their content
/// digests and scales.
pub(crate) fn chain_seed(lora: &[LoraRef]) -> ChainSeed {
    if lora.is_empty() {
        return ChainSeed::default();
    }
    let mut h = DefaultHasher::new();
    "cordial-lora".hash(&mut h);
    for l in lora {
        l.digest.hash(&mut h);
        l.scale.to_bits().hash(&mut h);
    }
    ChainSeed {
        extra_keys: Some(lora.iter().map(|l| l.name.to_string()).collect()),
        salt: Some(h.finish()),
    }
}

impl BlockKey {
    /// The key of block `i`, given the chain hashes of the prompt's full blocks (from
    /// [`chain_hashes`] with the same `seed`).
    pub(crate) fn of_block(chain: &[BlockHash], seed: &ChainSeed, i: usize) -> Self {
        BlockKey {
            hash: chain[i],
            salt: seed.salt,
        }
    }

    pub(crate) fn hash(&self) -> &BlockHash {
        &self.hash
    }
}

/// The chain hashes of every full block of `prompt`, in order, from `root` (the hash seed's
/// hash), with `seed`'s extra keys in every block.
pub(crate) fn chain_hashes(
    prompt: &[TokenId],
    block_size: usize,
    root: &BlockHash,
    seed: &ChainSeed,
) -> Vec<BlockHash> {
    let extra: Option<Vec<&str>> = seed
        .extra_keys
        .as_ref()
        .map(|k| k.iter().map(String::as_str).collect());
    block_hash::chain_with(prompt, block_size, root, extra.as_deref())
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
        let seed = ChainSeed::default();
        BlockKey::of_block(&chain_hashes(prompt, BS, &root, &seed), &seed, i)
    }

    #[test]
    fn the_seed_names_the_adapters_content_and_scale_and_leaves_the_base_unsalted() {
        let lora = |name: &str, digest: u8, scale: f32| LoraRef {
            id: 7,
            name: name.into(),
            scale,
            digest: [digest; 32],
        };
        let root = block_hash::root_hash(block_hash::DEFAULT_HASH_SEED);
        let p: Vec<TokenId> = (1..=8).collect();
        let keys = |seed: &ChainSeed| -> Vec<BlockKey> {
            let chain = chain_hashes(&p, BS, &root, seed);
            (0..chain.len())
                .map(|i| BlockKey::of_block(&chain, seed, i))
                .collect()
        };
        // The base: vLLM's plain hashes, no salt.
        let base = chain_seed(&[]);
        assert_eq!(base, ChainSeed::default());
        assert_eq!(
            chain_hashes(&p, BS, &root, &base),
            block_hash::chain(&p, BS, &root)
        );
        // An adapter: vLLM's hashes with extra keys (lora_name,) in every block.
        let a = chain_seed(&[lora("a", 1, 1.0)]);
        let chain_a = chain_hashes(&p, BS, &root, &a);
        assert_eq!(
            chain_a[0],
            block_hash::hash_block_with(&root, &p[..4], Some(&["a"]))
        );
        assert_eq!(
            chain_a[1],
            block_hash::hash_block_with(&chain_a[0], &p[4..], Some(&["a"]))
        );
        // The id does not matter; content, scale, name and order do.
        let same = chain_seed(&[LoraRef {
            id: 9,
            ..lora("a", 1, 1.0)
        }]);
        assert_eq!(keys(&a), keys(&same));
        for other in [
            chain_seed(&[lora("a", 2, 1.0)]), // reloaded under the same name, other content
            chain_seed(&[lora("a", 1, 0.5)]),
            chain_seed(&[lora("b", 1, 1.0)]),
        ] {
            let (ka, ko) = (keys(&a), keys(&other));
            assert!(ka.iter().zip(&ko).all(|(x, y)| x != y));
        }
        assert_ne!(
            keys(&chain_seed(&[lora("a", 1, 1.0), lora("b", 2, 1.0)])),
            keys(&chain_seed(&[lora("b", 2, 1.0), lora("a", 1, 1.0)]))
        );
        // Every block of an adapter's chain differs from the base's, the first one included.
        let (kb, ka) = (keys(&base), keys(&a));
        assert!(kb.iter().zip(&ka).all(|(x, y)| x != y));
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
