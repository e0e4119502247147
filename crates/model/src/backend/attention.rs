//! Causal grouped-query attention over the paged KV cache, split over key chunks
//! (flash-decoding).
//!
//! A query's keys are cut into chunks of [`KEY_CHUNK`] positions at fixed multiples of the
//! chunk size (`[c·C, (c+1)·C)`), so where a query's keys are split depends only on its own
//! position. For each chunk the query gets a partial result — the maximum score `m`, the sum
//! `l` of `e^(s − m)` and the weighted value sum `o` — and the partials are merged in chunk
//! order (`merge`). Every partial is computed by the same operations whoever computes it, and
//! the merge order is fixed, so a token's result is bit-identical in any batch, chunked
//! prefill or decode (batch invariance).
//!
//! Work is cut two ways, both giving the same bits:
//! - *loop*: one task per (block of up to [`QUERY_BLOCK`] consecutive query tokens, KV head)
//!   walks the chunks, merging as it goes (prefill: each K/V block is converted once for all
//!   the block's queries and all the query heads sharing the KV head);
//! - *split*: one task per (query block, KV head, chunk) writes its partial, and the task that
//!   finishes a (block, KV head) last merges them all in chunk order (decode: one sequence's
//!   keys spread over every thread); a block whose keys fit one chunk is finished by its one
//!   task.
//!
//! Each task reads a K/V block once for all the query heads sharing it (grouped-query
//! attention) and streams a head's blocks in position order.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::cpu::{Kernels, KvBlock};
use super::pool::{SyncPtr, ThreadPool};
use crate::kv::{KvCache, KV_BLOCK};

/// Where each token of the step sits: its sequence's block tables and its absolute position.
pub struct TokenPlace<'a> {
    pub block_table: &'a [u32],
    /// The sequence's window-pool blocks (for layers the cache keeps in a window pool; empty
    /// when it has none). Entries before the window are not read.
    pub window_table: &'a [u32],
    pub pos: usize,
}

pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Multiplies q·k (usually 1/√head_dim).
    pub scale: f32,
    /// Sliding window: a token at `pos` sees keys at `pos - window + 1 ..= pos`; 0 = all.
    pub window: usize,
    /// Scores soft-capped to `cap · tanh(s / cap)` before the softmax; 0 = none.
    pub softcap: f32,
}

impl AttnShape {
    /// Full causal attention scaled by 1/√head_dim.
    pub fn causal(n_heads: usize, n_kv_heads: usize, head_dim: usize) -> AttnShape {
        AttnShape {
            n_heads,
            n_kv_heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
            window: 0,
            softcap: 0.0,
        }
    }
}

/// Key positions per chunk (a multiple of [`KV_BLOCK`]): the flash-decoding split.
pub const KEY_CHUNK: usize = 256;

/// Most consecutive query tokens of one sequence a loop task serves.
pub const QUERY_BLOCK: usize = 32;

/// A task's buffers (grown on use, reused).
#[derive(Default, Clone)]
struct ThreadBuf {
    /// The task's query rows, `head_dim` floats each.
    q: Vec<f32>,
    /// K/V blocks converted to f32 by the kernels.
    conv: Vec<f32>,
    scores: Vec<f32>,
    /// One chunk's partial: `o` rows, then `m` and `l` per row.
    part: Vec<f32>,
    /// The running merge: `o` rows, then `m` and `l` per row.
    run: Vec<f32>,
}

/// Consecutive query tokens `t0..t1` of one sequence.
#[derive(Clone, Copy)]
struct QueryBlock {
    t0: usize,
    t1: usize,
    /// Chunks `first..first + chunks` hold the block's keys.
    first: usize,
    chunks: usize,
    /// Split into chunk tasks; their partials start at this offset of `partials`.
    split: Option<usize>,
    /// Its (block, KV head) countdowns of chunk tasks left start at this index of `pending`.
    pending: usize,
}

#[derive(Clone, Copy)]
enum Task {
    Loop {
        block: usize,
        head: usize,
    },
    Chunk {
        block: usize,
        head: usize,
        chunk: usize,
    },
}

/// Per-thread buffers, the step's query blocks, tasks and chunk partials, reused across calls.
#[derive(Default)]
pub struct AttnScratch {
    per_thread: Vec<ThreadBuf>,
    blocks: Vec<QueryBlock>,
    tasks: Vec<Task>,
    /// Chunk tasks left per split (block, KV head) of more than one chunk.
    pending: Vec<AtomicUsize>,
    partials: Vec<f32>,
}

impl AttnScratch {
    /// Makes room for a pool of `threads` threads.
    pub fn prepare(&mut self, threads: usize) {
        if self.per_thread.len() < threads {
            self.per_thread.resize(threads, ThreadBuf::default());
        }
    }
}

fn grow(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Whether `b` is the token right after `a` in the same sequence (same block table).
fn follows(a: &TokenPlace<'_>, b: &TokenPlace<'_>) -> bool {
    std::ptr::eq(a.block_table, b.block_table) && b.pos == a.pos + 1
}

/// What every task of one call shares.
struct Ctx<'a> {
    kern: &'a dyn Kernels,
    kv: &'a KvCache,
    layer: usize,
    shape: &'a AttnShape,
    places: &'a [TokenPlace<'a>],
    q: &'a [f32],
    chunk: usize,
    group: usize,
}

impl Ctx<'_> {
    /// First key position token `t` sees.
    fn lo(&self, t: usize) -> usize {
        let end = self.places[t].pos + 1;
        if self.shape.window > 0 {
            end.saturating_sub(self.shape.window)
        } else {
            0
        }
    }

    fn table(&self, t: usize) -> &[u32] {
        if self.kv.in_window_pool(self.layer) {
            self.places[t].window_table
        } else {
            self.places[t].block_table
        }
    }

    fn rows(&self, b: &QueryBlock) -> usize {
        (b.t1 - b.t0) * self.group
    }

    /// Copies the block's query rows of KV head `g` (token-major, then head) into `dst`.
    fn load_q(&self, b: &QueryBlock, g: usize, dst: &mut Vec<f32>) {
        let (hd, qdim) = (
            self.shape.head_dim,
            self.shape.n_heads * self.shape.head_dim,
        );
        let w = self.group * hd;
        let dst = grow(dst, self.rows(b) * hd);
        for k in 0..b.t1 - b.t0 {
            let at = (b.t0 + k) * qdim + g * w;
            dst[k * w..(k + 1) * w].copy_from_slice(&self.q[at..at + w]);
        }
    }

    /// The partial of chunk `c` for the block's rows of KV head `g` (query rows in `tb.q`):
    /// `part` = `o` rows, `m` per row, `l` per row (`l = 0`: the row has no key in the chunk).
    fn chunk_partial(&self, b: &QueryBlock, g: usize, c: usize, tb: &mut ThreadBuf) {
        let (hd, bs) = (self.shape.head_dim, KV_BLOCK);
        let (cs, ce) = (c * self.chunk, (c + 1) * self.chunk);
        let rows = self.rows(b);
        let (b0, b1) = (
            self.lo(b.t0).max(cs) / bs,
            (self.places[b.t1 - 1].pos + 1).min(ce).div_ceil(bs),
        );
        let (lead, width) = (b0 * bs - cs, b1 * bs - cs);
        let table = &self.table(b.t0)[b0..b1];
        let (kern, kv, layer) = (self.kern, self.kv, self.layer);
        let mut on_stack = [KvBlock::F16(&[]); 16];
        let mut on_heap = Vec::new();
        let scores = grow(&mut tb.scores, rows * width);
        for r in 0..rows {
            scores[r * width..r * width + lead].fill(f32::NEG_INFINITY);
        }
        let q = &tb.q[..rows * hd];
        let keys = block_list(
            table,
            |blk| kv.k_block(layer, blk, g),
            &mut on_stack,
            &mut on_heap,
        );
        kern.attn_scores(
            keys,
            q,
            rows,
            hd,
            self.shape.scale,
            &mut scores[lead..],
            width,
            &mut tb.conv,
        );
        let part = grow(&mut tb.part, rows * (hd + 2));
        let (o, ml) = part.split_at_mut(rows * hd);
        let (m, l) = ml.split_at_mut(rows);
        for k in 0..b.t1 - b.t0 {
            let (lo, end) = (self.lo(b.t0 + k), self.places[b.t0 + k].pos + 1);
            let (s, e) = (lo.max(cs), end.min(ce));
            for h in 0..self.group {
                let r = k * self.group + h;
                let row = &mut scores[r * width..(r + 1) * width];
                if s >= e {
                    (m[r], l[r]) = (f32::NEG_INFINITY, 0.0);
                    row.fill(0.0);
                    continue;
                }
                if self.shape.softcap > 0.0 {
                    super::ops::softcap(&mut row[lead..], self.shape.softcap);
                }
                row[..s - cs].fill(f32::NEG_INFINITY);
                row[e - cs..].fill(f32::NEG_INFINITY);
                (m[r], l[r]) = kern.exp_sum(row);
            }
        }
        o.fill(0.0);
        let values = block_list(
            table,
            |blk| kv.v_block(layer, blk, g),
            &mut on_stack,
            &mut on_heap,
        );
        kern.attn_values(values, &scores[lead..], width, rows, hd, o, &mut tb.conv);
    }

    /// Writes the finished rows `run` (`o` rows, `m`, `l`) of KV head `g` to `out`.
    fn finish(&self, b: &QueryBlock, g: usize, run: &[f32], out: &SyncPtr<f32>) {
        let (hd, qdim) = (
            self.shape.head_dim,
            self.shape.n_heads * self.shape.head_dim,
        );
        let rows = self.rows(b);
        let l = &run[rows * hd + rows..rows * hd + 2 * rows];
        for k in 0..b.t1 - b.t0 {
            for h in 0..self.group {
                let r = k * self.group + h;
                let at = (b.t0 + k) * qdim + (g * self.group + h) * hd;
                // SAFETY: only the task of (block, KV head) writes these query heads' outputs
                // of the block's tokens; `out` has `tokens · qdim` floats.
                let dst = unsafe { std::slice::from_raw_parts_mut(out.get().add(at), hd) };
                for (d, x) in dst.iter_mut().zip(&run[r * hd..(r + 1) * hd]) {
                    *d = x / l[r];
                }
            }
        }
    }
}

/// The blocks `f` gives for the ids of `table`, in a stack array when they fit.
fn block_list<'s, 'k>(
    table: &[u32],
    f: impl Fn(usize) -> KvBlock<'k>,
    stack: &'s mut [KvBlock<'k>; 16],
    heap: &'s mut Vec<KvBlock<'k>>,
) -> &'s [KvBlock<'k>] {
    if table.len() <= stack.len() {
        for (dst, &blk) in stack.iter_mut().zip(table) {
            *dst = f(blk as usize);
        }
        &stack[..table.len()]
    } else {
        heap.clear();
        heap.extend(table.iter().map(|&blk| f(blk as usize)));
        heap
    }
}

/// Starts a running merge of `rows` rows: `m = -inf`, `l = 0`, `o = 0`.
fn start_run(run: &mut Vec<f32>, rows: usize, hd: usize) -> &mut [f32] {
    let run = grow(run, rows * (hd + 2));
    run.fill(0.0);
    run[rows * hd..rows * hd + rows].fill(f32::NEG_INFINITY);
    run
}

/// Merges a chunk's partial rows into the running rows (both `o` rows, `m`, `l`): the
/// flash-attention rescaling, `m' = max(m, m_c)`, `l' = l·e^(m−m') + l_c·e^(m_c−m')`, the same
/// for `o`. Rows whose chunk partial has `l = 0` (no key in the chunk) are left alone.
fn merge(run: &mut [f32], part: &[f32], rows: usize, hd: usize) {
    let (ro, rml) = run.split_at_mut(rows * hd);
    let (po, pml) = part.split_at(rows * hd);
    for r in 0..rows {
        let (m, l) = (pml[r], pml[rows + r]);
        if l == 0.0 {
            continue;
        }
        let mn = rml[r].max(m);
        let (a, b) = ((rml[r] - mn).exp(), (m - mn).exp());
        rml[rows + r] = rml[rows + r] * a + l * b;
        rml[r] = mn;
        for (x, y) in ro[r * hd..(r + 1) * hd]
            .iter_mut()
            .zip(&po[r * hd..(r + 1) * hd])
        {
            *x = *x * a + *y * b;
        }
    }
}

/// `q`: T × (n_heads·head_dim) (roped); `out`: same shape.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    kern: &dyn Kernels,
    kv: &KvCache,
    layer: usize,
    shape: &AttnShape,
    places: &[TokenPlace<'_>],
    q: &[f32],
    out: &mut [f32],
    scratch: &mut AttnScratch,
) {
    attention_chunked(
        pool, kern, kv, layer, shape, places, q, out, scratch, KEY_CHUNK,
    )
}

/// [`attention`] with key chunks of `chunk` positions (a multiple of [`KV_BLOCK`]); a chunk
/// longer than every sequence computes each query's softmax in one piece (tests compare the
/// two).
#[allow(clippy::too_many_arguments)]
pub fn attention_chunked(
    pool: &ThreadPool,
    kern: &dyn Kernels,
    kv: &KvCache,
    layer: usize,
    shape: &AttnShape,
    places: &[TokenPlace<'_>],
    q: &[f32],
    out: &mut [f32],
    scratch: &mut AttnScratch,
    chunk: usize,
) {
    assert!(chunk > 0 && chunk.is_multiple_of(KV_BLOCK));
    assert!(
        scratch.per_thread.len() >= pool.threads(),
        "one scratch buffer per thread"
    );
    let (nkv, hd) = (shape.n_kv_heads, shape.head_dim);
    let cx = Ctx {
        kern,
        kv,
        layer,
        shape,
        places,
        q,
        chunk,
        group: shape.n_heads / nkv,
    };
    // Query blocks: runs of consecutive tokens of one sequence.
    scratch.blocks.clear();
    let mut t0 = 0;
    while t0 < places.len() {
        let mut t1 = t0 + 1;
        while t1 < places.len() && t1 - t0 < QUERY_BLOCK && follows(&places[t1 - 1], &places[t1]) {
            t1 += 1;
        }
        let first = cx.lo(t0) / chunk;
        let last = places[t1 - 1].pos / chunk;
        scratch.blocks.push(QueryBlock {
            t0,
            t1,
            first,
            chunks: last + 1 - first,
            split: None,
            pending: 0,
        });
        t0 = t1;
    }
    // Split single tokens (decode), and everything when there are too few loop tasks to keep
    // the threads busy. Loop tasks go first, latest (longest) block first.
    let few = scratch.blocks.len() * nkv < 4 * pool.threads();
    let mut at = 0;
    scratch.tasks.clear();
    scratch.pending.clear();
    for (i, b) in scratch.blocks.iter_mut().enumerate().rev() {
        if few || b.t1 - b.t0 == 1 {
            b.split = Some(at);
            if b.chunks > 1 {
                at += nkv * b.chunks * (b.t1 - b.t0) * cx.group * (hd + 2);
            }
        } else {
            scratch
                .tasks
                .extend((0..nkv).map(|head| Task::Loop { block: i, head }));
        }
    }
    for (i, b) in scratch.blocks.iter_mut().enumerate() {
        if b.split.is_some() {
            b.pending = scratch.pending.len();
            for head in 0..nkv {
                if b.chunks > 1 {
                    scratch.pending.push(AtomicUsize::new(b.chunks));
                }
                scratch.tasks.extend((0..b.chunks).map(|c| Task::Chunk {
                    block: i,
                    head,
                    chunk: c,
                }));
            }
        }
    }
    grow(&mut scratch.partials, at);
    let outp = SyncPtr(out.as_mut_ptr());
    let partp = SyncPtr(scratch.partials.as_mut_ptr());
    let bufs = SyncPtr(scratch.per_thread.as_mut_ptr());
    let (blocks, tasks, pending) = (&scratch.blocks, &scratch.tasks, &scratch.pending);
    pool.run(tasks.len(), &|task, thread| {
        // SAFETY: one buffer per thread; a thread runs one task at a time.
        let tb = unsafe { &mut *bufs.get().add(thread) };
        match tasks[task] {
            Task::Loop { block, head } => {
                let b = &blocks[block];
                let rows = cx.rows(b);
                cx.load_q(b, head, &mut tb.q);
                start_run(&mut tb.run, rows, hd);
                for c in b.first..b.first + b.chunks {
                    cx.chunk_partial(b, head, c, tb);
                    merge(&mut tb.run, &tb.part, rows, hd);
                }
                cx.finish(b, head, &tb.run, &outp);
            }
            Task::Chunk { block, head, chunk } => {
                let b = &blocks[block];
                let n = cx.rows(b) * (hd + 2);
                cx.load_q(b, head, &mut tb.q);
                cx.chunk_partial(b, head, b.first + chunk, tb);
                if b.chunks == 1 {
                    // One chunk: merging it into the empty run gives its own `o` and `l`
                    // exactly (0·0 + o·1; `o` is never -0), so it is finished here.
                    cx.finish(b, head, &tb.part, &outp);
                    return;
                }
                let base = b.split.expect("split block") + head * b.chunks * n;
                // SAFETY: each (block, head, chunk) owns its `n` floats of `partials`.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(partp.get().add(base + chunk * n), n) };
                dst.copy_from_slice(&tb.part[..n]);
                // The last chunk task of (block, head) to finish merges them all, in chunk
                // order (whichever thread it is, the same operations).
                if pending[b.pending + head].fetch_sub(1, Ordering::AcqRel) != 1 {
                    return;
                }
                // SAFETY: every chunk task of (block, head) has written its partial (the
                // countdown's acquire sees their releases); none writes them any more.
                let parts = unsafe {
                    std::slice::from_raw_parts(partp.get().add(base) as *const f32, b.chunks * n)
                };
                let rows = cx.rows(b);
                let run = start_run(&mut tb.run, rows, hd);
                for c in 0..b.chunks {
                    merge(run, &parts[c * n..(c + 1) * n], rows, hd);
                }
                cx.finish(b, head, run, &outp);
            }
        }
    });
}

#[cfg(test)]
#[path = "attention_tests.rs"]
mod tests;
