//! BlockAllocator: the engine's KV blocks, in one or two pools.
//!
//! The main pool holds every layer's K/V — or, when the model keeps its sliding-window layers
//! apart (`ModelExecutor::window_pool`), the other layers'. The window pool then holds the
//! windowed layers' K/V, and a sequence keeps window blocks only for the positions its next
//! token still sees (the last `window` positions): [`super::BlockTable`] releases the older
//! ones. Each pool has its own free list, reference counts and prefix cache; both name a
//! prompt block by the same chain hash. KV events describe the main pool only: a block the
//! gateway hears of is a main-pool block, and a hit also needs the window blocks the first
//! computed token reads (`seq/prefix.rs`), which may have been evicted apart from it.

use super::allocator::BlockPool;
use crate::api::KvEvent;
use crate::block_hash::BlockHash;
use crate::model::TokenId;

/// The window pool and the window it serves.
#[derive(Debug)]
pub(crate) struct WindowBlocks {
    pub(crate) pool: BlockPool,
    /// Positions a windowed layer sees: a token at `p` reads keys `p + 1 - window ..= p`.
    pub(crate) window: usize,
}

impl WindowBlocks {
    /// The first block a token at `pos` reads in a windowed layer.
    pub(crate) fn first_block(&self, pos: usize, block_size: usize) -> usize {
        (pos + 1).saturating_sub(self.window) / block_size
    }
}

/// Free blocks a step's writes take from each pool (see [`super::BlockNeed`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Need {
    pub(crate) main: usize,
    pub(crate) window: usize,
}

/// Block copies (copy-on-write) to make before a forward, per pool, in order.
#[derive(Debug, Default)]
pub(crate) struct BlockCopies {
    pub(crate) main: Vec<(u32, u32)>,
    pub(crate) window: Vec<(u32, u32)>,
}

/// The main pool and, for models with sliding-window layers kept apart, the window pool.
#[derive(Debug)]
pub(crate) struct BlockAllocator {
    main: BlockPool,
    window: Option<WindowBlocks>,
}

impl BlockAllocator {
    /// One pool of `num_blocks` blocks, prefix caching on.
    #[cfg(test)]
    pub(crate) fn new(num_blocks: usize) -> BlockAllocator {
        BlockAllocator::with_prefix_caching(num_blocks, true)
    }

    /// One pool of `num_blocks` blocks.
    #[cfg(test)]
    pub(crate) fn with_prefix_caching(num_blocks: usize, prefix_caching: bool) -> BlockAllocator {
        BlockAllocator::with_window(num_blocks, prefix_caching, None)
    }

    /// The main pool, and a window pool of `(window positions, blocks)` when given.
    pub(crate) fn with_window(
        num_blocks: usize,
        prefix_caching: bool,
        window: Option<(usize, usize)>,
    ) -> BlockAllocator {
        BlockAllocator {
            main: BlockPool::with_prefix_caching(num_blocks, prefix_caching),
            window: window.map(|(window, blocks)| WindowBlocks {
                pool: BlockPool::with_prefix_caching(blocks, prefix_caching),
                window: window.max(1),
            }),
        }
    }

    /// Block hashes chained from `seed`'s hash, in both pools (see [`crate::block_hash`]).
    pub(crate) fn with_hash_seed(mut self, seed: &str) -> BlockAllocator {
        self.main = self.main.with_hash_seed(seed);
        if let Some(w) = self.window.take() {
            self.window = Some(WindowBlocks {
                pool: w.pool.with_hash_seed(seed),
                window: w.window,
            });
        }
        self
    }

    /// Records the main pool's prefix-cache changes as [`KvEvent`]s.
    pub(crate) fn recording_events(mut self) -> BlockAllocator {
        self.main = self.main.recording_events();
        self
    }

    /// The parent hash of every prompt's first block.
    pub(crate) fn root_hash(&self) -> &BlockHash {
        self.main.root_hash()
    }

    /// The main pool's events recorded since the last call.
    pub(crate) fn take_events(&mut self) -> Vec<KvEvent> {
        self.main.take_events()
    }

    /// Records that main-pool prompt blocks `hashes` were registered (see
    /// [`BlockPool::record_stored`]).
    pub(crate) fn record_stored(
        &mut self,
        hashes: &[BlockHash],
        parent: Option<&BlockHash>,
        tokens: &[TokenId],
        block_size: usize,
        lora: Option<(u32, &str)>,
    ) {
        self.main
            .record_stored(hashes, parent, tokens, block_size, lora);
    }

    /// The same pools, every block free, nothing cached.
    pub(crate) fn fresh(&self) -> BlockAllocator {
        BlockAllocator {
            main: self.main.fresh(),
            window: self.window.as_ref().map(|w| WindowBlocks {
                pool: w.pool.fresh(),
                window: w.window,
            }),
        }
    }

    pub(crate) fn main(&self) -> &BlockPool {
        &self.main
    }

    pub(crate) fn main_mut(&mut self) -> &mut BlockPool {
        &mut self.main
    }

    pub(crate) fn window(&self) -> Option<&WindowBlocks> {
        self.window.as_ref()
    }

    pub(crate) fn window_mut(&mut self) -> Option<&mut WindowBlocks> {
        self.window.as_mut()
    }

    /// Blocks of the main pool.
    pub(crate) fn total(&self) -> usize {
        self.main.total()
    }

    /// Free blocks of the main pool (cached-free included).
    pub(crate) fn num_free(&self) -> usize {
        self.main.num_free()
    }

    pub(crate) fn num_cached_free(&self) -> usize {
        self.main.num_cached_free()
    }

    pub(crate) fn prefix_caching(&self) -> bool {
        self.main.prefix_caching()
    }

    /// Whether `need` fits the free blocks with `reserve` blocks left over in each pool.
    pub(crate) fn fits(&self, need: Need, reserve: usize) -> bool {
        self.main.num_free() >= need.main + reserve
            && self
                .window
                .as_ref()
                .is_none_or(|w| w.pool.num_free() >= need.window + reserve)
    }
}
