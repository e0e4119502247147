//! Paged KV block accounting. The model owns the bytes of blocks `0..num_blocks`; the engine owns
//! which sequence uses which block:
//!
//! - [`BlockAllocator`]: the main pool and, for models that keep their sliding-window layers
//!   apart, the window pool (`pools.rs`); each pool (`allocator.rs`) has a free list, a
//!   reference count per block and its prefix cache.
//! - [`BlockTable`]: one sequence's blocks in position order (and its window-pool blocks for the
//!   positions its window still sees), with copy-on-write of shared blocks.
//! - [`BlockNeed`]: how many free blocks a set of writes will take, counted before allocating so a
//!   group is either scheduled whole or not at all.
//! - `prefix` ([`BlockKey`], [`chain_hashes`], [`chain_seed`]): full prompt blocks named by a
//!   hash chain (vLLM's `sha256_cbor`, [`crate::block_hash`]; LoRA adapters enter through
//!   [`chain_seed`]), so a new prompt that starts like an earlier one
//!   reuses its blocks instead of recomputing them. When asked, the allocator records the
//!   changes (stored, evicted, cleared) as [`crate::KvEvent`]s.

mod allocator;
mod pools;
mod prefix;
mod table;

pub(crate) use pools::{BlockAllocator, BlockCopies, Need};
pub(crate) use prefix::{chain_hashes, chain_seed, BlockKey, ChainSeed};
pub(crate) use table::{BlockNeed, BlockTable, NO_BLOCK};
