//! Causal attention over the paged f16 KV cache. One task per (token, KV head), where the query heads
//! that share a KV head (grouped-query attention) read its keys and values once. A token's
//! result depends only on its own query and the K/V of its sequence's positions `0..=pos`, so
//! prefill and decode, alone or batched, compute it the same way.

use half::f16;

use super::pool::{SyncPtr, ThreadPool};
use crate::kv::KvCache;
#[cfg(target_arch = "x86_64")]
use crate::quant::avx2::KvElem;
use crate::quant::Isa;
/// Stand-in for the AVX2 element trait, so the signatures compile elsewhere.
#[cfg(not(target_arch = "x86_64"))]
pub trait KvElem {}
#[cfg(not(target_arch = "x86_64"))]
impl KvElem for u16 {}
#[cfg(not(target_arch = "x86_64"))]
impl KvElem for f32 {}

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

/// `q`: T × (n_heads·head_dim) (roped); `out`: same shape. `scratch`: one buffer per thread.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    isa: Isa,
    kv: &KvCache,
    layer: usize,
    shape: &AttnShape,
    places: &[TokenPlace<'_>],
    q: &[f32],
    out: &mut [f32],
    scratch: &mut [Vec<f32>],
) {
    let (nh, nkv, hd) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
    let group = nh / nkv;
    let qdim = nh * hd;
    let scale = shape.scale;
    let outp = SyncPtr(out.as_mut_ptr());
    assert!(
        scratch.len() >= pool.threads(),
        "one scratch buffer per thread"
    );
    let scr = SyncPtr(scratch.as_mut_ptr());
    // Few tokens (decode): one task per query head, so the threads stay balanced. Many tokens:
    // one task per KV head, whose query heads share each K/V read. Each head's arithmetic is
    // the same either way, so the results are identical.
    let split = places.len() * nkv < 4 * pool.threads();
    let hpt = if split { 1 } else { group };
    let tasks_per_token = nh / hpt;
    let task = |task: usize, thread: usize| {
        let (ti, first) = (task / tasks_per_token, task % tasks_per_token * hpt);
        let g = first / group;
        let place = &places[ti];
        // Keys lo..end; the window's start depends only on the query's own position.
        let end = place.pos + 1;
        let lo = if shape.window > 0 {
            end.saturating_sub(shape.window)
        } else {
            0
        };
        let n = end - lo;
        // SAFETY: one scratch buffer per thread; a thread runs one task at a time.
        let buf = unsafe { &mut *scr.get().add(thread) };
        // When query heads share a KV head, each K/V row is converted to f32 once for all of
        // them (exact, so the results are those of reading the f16 rows directly).
        let shared = hpt > 1 && isa == Isa::Avx2;
        let conv_len = if shared { kv.block_size.max(8) * hd } else { 0 };
        if buf.len() < hpt * n + conv_len {
            buf.resize(hpt * n + conv_len, 0.0);
        }
        let (scores, conv) = buf.split_at_mut(hpt * n);
        let qt = &q[ti * qdim..(ti + 1) * qdim];
        // Keys eight at a time where the kernel allows (eight positions from a multiple of 8
        // lie in one block), one at a time before and after. The split depends only on the
        // query's own position, so a query is computed the same way in any batch.
        let eight = isa == Isa::Avx2 && hd.is_multiple_of(8) && kv.block_size.is_multiple_of(8);
        let (a8, b8) = if eight {
            let a = lo.next_multiple_of(8).min(end);
            (a, a + (end - a) / 8 * 8)
        } else {
            (end, end)
        };
        let single = |j: usize, scores: &mut [f32]| {
            let slot = kv
                .slot(place.block_table, j)
                .expect("block table covers the sequence");
            let k = &kv.k_slot(layer, slot)[g * hd..(g + 1) * hd];
            for h in 0..hpt {
                let qh = &qt[(first + h) * hd..(first + h + 1) * hd];
                scores[h * n + j - lo] = dot_f16(isa, k, qh) * scale;
            }
        };
        for j in lo..a8 {
            single(j, scores);
        }
        for j0 in (a8..b8).step_by(8) {
            let slot = kv
                .slot(place.block_table, j0)
                .expect("block table covers the sequence");
            let k = kv.k_slots(layer, slot, 8)[g * hd..].as_ptr();
            if shared {
                f16_rows(k, kv.kv_dim, 8, hd, conv);
            }
            for h in 0..hpt {
                let qh = &qt[(first + h) * hd..(first + h + 1) * hd];
                let at = h * n + j0 - lo;
                let out = &mut scores[at..at + 8];
                if shared {
                    scores8(conv.as_ptr(), hd, qh, scale, out);
                } else {
                    scores8(k, kv.kv_dim, qh, scale, out);
                }
            }
        }
        for j in b8..end {
            single(j, scores);
        }
        for h in 0..hpt {
            let row = &mut scores[h * n..(h + 1) * n];
            if shape.softcap > 0.0 {
                super::ops::softcap(row, shape.softcap);
            }
            softmax(isa, row);
        }
        // SAFETY: this task alone writes heads first..first+hpt of token ti.
        let o = unsafe {
            std::slice::from_raw_parts_mut(outp.get().add(ti * qdim + first * hd), hpt * hd)
        };
        o.fill(0.0);
        if isa == Isa::Avx2 && hd.is_multiple_of(64) {
            // Values one KV block at a time (its slots are consecutive), accumulators in
            // registers, 64 or 128 lanes of the head at a time; the same additions in the same
            // order as the loop below.
            let bs = kv.block_size;
            let lanes = if hd.is_multiple_of(128) { 128 } else { 64 };
            let mut j0 = lo;
            while j0 < end {
                let count = ((j0 / bs + 1) * bs).min(end) - j0;
                let slot = kv
                    .slot(place.block_table, j0)
                    .expect("block table covers the sequence");
                let v = kv.v_slots(layer, slot, count);
                if shared {
                    f16_rows(v[g * hd..].as_ptr(), kv.kv_dim, count, hd, conv);
                }
                for h in 0..hpt {
                    let w = &scores[h * n + j0 - lo..h * n + j0 - lo + count];
                    for c in (0..hd).step_by(lanes) {
                        let out = &mut o[h * hd + c..h * hd + c + lanes];
                        if shared {
                            weighted_rows(conv[c..].as_ptr(), hd, w, out);
                        } else {
                            weighted_rows(v[g * hd + c..].as_ptr(), kv.kv_dim, w, out);
                        }
                    }
                }
                j0 += count;
            }
            return;
        }
        for j in lo..end {
            let slot = kv
                .slot(place.block_table, j)
                .expect("block table covers the sequence");
            let v = &kv.v_slot(layer, slot)[g * hd..(g + 1) * hd];
            for h in 0..hpt {
                axpy_f16(isa, scores[h * n + j - lo], v, &mut o[h * hd..(h + 1) * hd]);
            }
        }
    };
    pool.run(places.len() * tasks_per_token, &task);
}

fn softmax(isa: Isa, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 {
        // SAFETY: Avx2 is only selected when the CPU has AVX2/FMA/F16C.
        return unsafe { crate::quant::avx2_ops::softmax(x) };
    }
    let _ = isa;
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Scaled scores of `q` against the 8 keys at `k`, `k + stride`, … (AVX2 only).
#[inline]
fn scores8<T: KvElem>(k: *const T, stride: usize, q: &[f32], scale: f32, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only called on the AVX2 path; the 8 key rows lie in one KV block (or in the
    // converted copy of one).
    unsafe {
        let s = crate::quant::avx2::dot8(k, stride, q);
        crate::quant::avx2::scale_store8(s, scale, out);
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "8-wide scores on a CPU without AVX2 ({k:?}, {stride}, {}, {scale}, {})",
        q.len(),
        out.len()
    )
}

/// `out += Σ w[p] · v[p]` over rows `v + p·stride`, `out.len()` 64 or 128 (AVX2 only).
#[inline]
fn weighted_rows<T: KvElem>(v: *const T, stride: usize, w: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only called on the AVX2 path; the rows lie in one KV block (or its copy).
    unsafe {
        match out.len() {
            64 => crate::quant::avx2::weighted_rows::<T, 8>(v, stride, w, out),
            _ => crate::quant::avx2::weighted_rows::<T, 16>(v, stride, w, out),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "register accumulation on a CPU without AVX2 ({v:?}, {stride}, {}, {})",
        w.len(),
        out.len()
    )
}

/// `rows` f16 rows of `width` at `src + p·stride` as f32 into `dst` (AVX2 only).
#[inline]
fn f16_rows(src: *const u16, stride: usize, rows: usize, width: usize, dst: &mut [f32]) {
    assert!(dst.len() >= rows * width && width.is_multiple_of(8));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: only called on the AVX2 path; the rows lie in one KV block.
    unsafe {
        crate::quant::avx2::f16_rows_to_f32(src, stride, rows, width, dst)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("f16 conversion on a CPU without AVX2 ({src:?}, {stride})")
}

#[inline]
fn dot_f16(isa: Isa, k: &[u16], q: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && q.len().is_multiple_of(8) {
        // SAFETY: Avx2 is only selected when the CPU has AVX2/FMA/F16C.
        return unsafe { crate::quant::avx2::dot_f16_f32(k, q) };
    }
    let _ = isa;
    k.iter()
        .zip(q)
        .map(|(a, b)| f16::from_bits(*a).to_f32() * b)
        .sum()
}

#[inline]
fn axpy_f16(isa: Isa, a: f32, v: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa == Isa::Avx2 && out.len().is_multiple_of(8) {
        // SAFETY: as above.
        return unsafe { crate::quant::avx2::axpy_f16(a, v, out) };
    }
    let _ = isa;
    out.iter_mut()
        .zip(v)
        .for_each(|(o, x)| *o += a * f16::from_bits(*x).to_f32());
}
