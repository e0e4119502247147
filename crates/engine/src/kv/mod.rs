//! Paged KV block accounting. The model owns the bytes of blocks `0..num_blocks`; the engine owns
//! which sequence uses which block:
//!
//! - [`BlockAllocator`]: the free list and a reference count per block, plus the prefix cache.
//! - [`BlockTable`]: one sequence's blocks in position order, with copy-on-write of shared blocks.
//! - [`BlockNeed`]: how many free blocks a set of writes will take, counted before allocating so a
//!   group is either scheduled whole or not at all.
//! - `prefix` ([`BlockKey`], [`chain_hashes`], [`chain_seed`]): full prompt blocks named by a
//!   hash chain (vLLM's `sha256_cbor`, [`crate::block_hash`]; LoRA adapters enter through
//!   [`chain_seed`]), so a new prompt that starts like an earlier one
//!   reuses its blocks instead of recomputing them. When asked, the allocator records the
//!   changes (stored, evicted, cleared) as [`crate::KvEvent`]s.

mod allocator;
mod prefix;
mod table;

pub(crate) use allocator::{BlockAllocator, BlockId};
pub(crate) use prefix::{chain_hashes, chain_seed, BlockKey, ChainSeed};
pub(crate) use table::{BlockNeed, BlockTable};
