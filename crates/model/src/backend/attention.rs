//! Causal attention over the paged f16 KV cache. One task per (token, KV head), where the query heads
//! that share a KV head (grouped-query attention) read its keys and values once. A token's
//! result depends only on its own query and the K/V of its sequence's positions `0..=pos`, so
//! prefill and decode, alone or batched, compute it the same way.

use super::cpu::{Kernels, KvRows};
use super::pool::{SyncPtr, ThreadPool};
use crate::kv::KvCache;

/// Where each token of the step sits: its sequence's block table and its absolute position.
pub struct TokenPlace<'a> {
    pub block_table: &'a [u32],
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

/// Query tokens of one sequence that one task serves when K/V rows are converted to f32 once
/// for all of them (prefill): each key and value row is then read once per block of tokens
/// instead of once per token (blocked causal attention).
const QUERY_BLOCK: usize = 16;

/// Per-thread score buffers and the step's query blocks, reused across calls (no allocation
/// per op once grown).
#[derive(Default)]
pub struct AttnScratch {
    per_thread: Vec<Vec<f32>>,
    blocks: Vec<(usize, usize)>,
}

impl AttnScratch {
    /// Makes room for a pool of `threads` threads.
    pub fn prepare(&mut self, threads: usize) {
        if self.per_thread.len() < threads {
            self.per_thread.resize(threads, Vec::new());
        }
    }
}

/// Whether `b` is the token right after `a` in the same sequence (same block table).
fn follows(a: &TokenPlace<'_>, b: &TokenPlace<'_>) -> bool {
    std::ptr::eq(a.block_table, b.block_table) && b.pos == a.pos + 1
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
    let (nh, nkv, hd) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
    let group = nh / nkv;
    let qdim = nh * hd;
    let scale = shape.scale;
    let outp = SyncPtr(out.as_mut_ptr());
    assert!(
        scratch.per_thread.len() >= pool.threads(),
        "one scratch buffer per thread"
    );
    // Few tokens (decode): one task per query head, so the threads stay balanced. Many tokens:
    // one task per KV head, whose query heads share each K/V read. Each head's arithmetic is
    // the same either way, so the results are identical.
    let split = places.len() * nkv < 4 * pool.threads();
    let hpt = if split { 1 } else { group };
    let tasks_per_block = nh / hpt;
    // Keys eight at a time where the shapes allow (eight positions from a multiple of 8 lie in
    // one block); values a KV block at a time with register accumulators.
    let eight = hd.is_multiple_of(8) && kv.block_size.is_multiple_of(8);
    let reg_values = hd.is_multiple_of(64);
    let convert = eight && reg_values;
    let qb = if convert && !split { QUERY_BLOCK } else { 1 };
    scratch.blocks.clear();
    let mut t0 = 0;
    while t0 < places.len() {
        let mut t1 = t0 + 1;
        while t1 < places.len() && t1 - t0 < qb && follows(&places[t1 - 1], &places[t1]) {
            t1 += 1;
        }
        scratch.blocks.push((t0, t1));
        t0 = t1;
    }
    let scr = SyncPtr(scratch.per_thread.as_mut_ptr());
    let blocks = &scratch.blocks;
    let task = |task: usize, thread: usize| {
        let (t0, t1) = blocks[task / tasks_per_block];
        let first = task % tasks_per_block * hpt;
        let g = first / group;
        let nt = t1 - t0;
        let bt = places[t0].block_table;
        let slot = |j: usize| kv.slot(bt, j).expect("block table covers the sequence");
        // Token k sees keys lo[k]..end[k] (the window's start depends only on its position);
        // its scores for head h sit at base[k] + h·n[k]. Aligned 8-key chunks a8..b8.
        let mut lo = [0usize; QUERY_BLOCK];
        let mut end = [0usize; QUERY_BLOCK];
        let mut base = [0usize; QUERY_BLOCK + 1];
        let (mut a8, mut b8) = ([0usize; QUERY_BLOCK], [0usize; QUERY_BLOCK]);
        for k in 0..nt {
            end[k] = places[t0 + k].pos + 1;
            lo[k] = if shape.window > 0 {
                end[k].saturating_sub(shape.window)
            } else {
                0
            };
            (a8[k], b8[k]) = if eight {
                let a = lo[k].next_multiple_of(8).min(end[k]);
                (a, a + (end[k] - a) / 8 * 8)
            } else {
                (end[k], end[k])
            };
            base[k + 1] = base[k] + hpt * (end[k] - lo[k]);
        }
        // Rows are converted once when more than one query reads them.
        let share = convert && hpt * nt > 1;
        let conv_len = if share { kv.block_size.max(8) * hd } else { 0 };
        // SAFETY: one scratch buffer per thread; a thread runs one task at a time.
        let buf = unsafe { &mut *scr.get().add(thread) };
        if buf.len() < base[nt] + conv_len {
            buf.resize(base[nt] + conv_len, 0.0);
        }
        let (scores, conv) = buf.split_at_mut(base[nt]);
        let q_head = |k: usize, h: usize| {
            let at = (t0 + k) * qdim + (first + h) * hd;
            &q[at..at + hd]
        };
        // Scores: one key at a time outside the aligned chunks, eight at a time inside. The
        // split depends only on the query's own position, so a query is computed the same way
        // in any batch and any block.
        for k in 0..nt {
            let n = end[k] - lo[k];
            for j in (lo[k]..a8[k]).chain(b8[k]..end[k]) {
                let key = &kv.k_slot(layer, slot(j))[g * hd..(g + 1) * hd];
                for h in 0..hpt {
                    scores[base[k] + h * n + j - lo[k]] = kern.dot_f16(key, q_head(k, h)) * scale;
                }
            }
        }
        let (first_chunk, last_chunk) = (a8[..nt].iter().min(), b8[..nt].iter().max());
        if let (Some(&c0), Some(&c1)) = (first_chunk, last_chunk) {
            for j0 in (c0..c1).step_by(8) {
                let keys = &kv.k_slots(layer, slot(j0), 8)[g * hd..];
                if share {
                    kern.f16_to_f32_rows(keys, kv.kv_dim, 8, hd, conv);
                }
                for k in (0..nt).filter(|&k| a8[k] <= j0 && j0 + 8 <= b8[k]) {
                    let n = end[k] - lo[k];
                    for h in 0..hpt {
                        let at = base[k] + h * n + j0 - lo[k];
                        let out = &mut scores[at..at + 8];
                        let rows = if share {
                            KvRows::F32 {
                                data: conv,
                                stride: hd,
                            }
                        } else {
                            KvRows::F16 {
                                data: keys,
                                stride: kv.kv_dim,
                            }
                        };
                        kern.scores8(rows, q_head(k, h), scale, out);
                    }
                }
            }
        }
        for k in 0..nt {
            let n = end[k] - lo[k];
            for h in 0..hpt {
                let row = &mut scores[base[k] + h * n..base[k] + (h + 1) * n];
                if shape.softcap > 0.0 {
                    super::ops::softcap(row, shape.softcap);
                }
                kern.softmax(row);
            }
        }
        let out_of = |k: usize| {
            // SAFETY: this task alone writes heads first..first+hpt of the tokens t0..t1.
            unsafe {
                std::slice::from_raw_parts_mut(
                    outp.get().add((t0 + k) * qdim + first * hd),
                    hpt * hd,
                )
            }
        };
        for k in 0..nt {
            out_of(k).fill(0.0);
        }
        if reg_values {
            // Values one KV block at a time (its slots are consecutive), accumulators in
            // registers, 64 or 128 lanes of the head at a time; per token the same additions
            // in the same order as the loop below, whatever the block boundaries.
            let bs = kv.block_size;
            let lanes = if hd.is_multiple_of(128) { 128 } else { 64 };
            let (from, to) = (lo[..nt].iter().min(), end[..nt].iter().max());
            let (Some(&from), Some(&to)) = (from, to) else {
                return;
            };
            let mut j0 = from;
            while j0 < to {
                let count = ((j0 / bs + 1) * bs).min(to) - j0;
                let v = kv.v_slots(layer, slot(j0), count);
                if share {
                    kern.f16_to_f32_rows(&v[g * hd..], kv.kv_dim, count, hd, conv);
                }
                for k in 0..nt {
                    let (s, e) = (j0.max(lo[k]), (j0 + count).min(end[k]));
                    if s >= e {
                        continue;
                    }
                    let n = end[k] - lo[k];
                    let o = out_of(k);
                    for h in 0..hpt {
                        let w = &scores[base[k] + h * n + s - lo[k]..base[k] + h * n + e - lo[k]];
                        for c in (0..hd).step_by(lanes) {
                            let out = &mut o[h * hd + c..h * hd + c + lanes];
                            let rows = if share {
                                KvRows::F32 {
                                    data: &conv[(s - j0) * hd + c..],
                                    stride: hd,
                                }
                            } else {
                                KvRows::F16 {
                                    data: &v[(s - j0) * kv.kv_dim + g * hd + c..],
                                    stride: kv.kv_dim,
                                }
                            };
                            kern.weighted_rows(rows, w, out);
                        }
                    }
                }
                j0 += count;
            }
            return;
        }
        for k in 0..nt {
            let n = end[k] - lo[k];
            let o = out_of(k);
            for j in lo[k]..end[k] {
                let v = &kv.v_slot(layer, slot(j))[g * hd..(g + 1) * hd];
                for h in 0..hpt {
                    let w = scores[base[k] + h * n + j - lo[k]];
                    kern.axpy_f16(w, v, &mut o[h * hd..(h + 1) * hd]);
                }
            }
        }
    };
    pool.run(blocks.len() * tasks_per_block, &task);
}
