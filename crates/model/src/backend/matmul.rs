//! Matrix × activations on the pool: `out[t][r] = W[r] · x[t]` for weight rows `r` and
//! activation rows `t`. Activations are quantized once per matmul input (shared by the
//! matrices that read it). This driver only splits the rows into tasks; the kernel table
//! computes them. Each output element is computed by one kernel call sequence that does not
//! depend on the batch, so results are batch invariant.

use super::cpu::{Compute, Kernels, OutTile};
use super::pool::{SyncPtr, ThreadPool};
use crate::quant::{self, repack::Packed, GgmlType, QuantizedActs};

/// Most matrices fused into one parallel region.
const MAX_JOBS: usize = 4;

/// Activation rows per tile on the GGUF-layout path (a multiple of 4, the kernels' group).
const T_TILE: usize = 16;

/// Fewest weight rows handed to one task (a multiple of every repacked group size).
const MIN_ROWS_PER_TASK: usize = 16;

/// Weight rows of a compute-bound task: several groups, so each tile of activation rows is
/// reused from L1/L2 across them (the kernels loop activation tiles outside, groups inside).
const ROWS_PER_COMPUTE_TASK: usize = 64;

/// Rows per task: small batches are memory-bound, so each thread gets a few long contiguous
/// runs of weights (good for the prefetcher); large batches are compute-bound, so tasks are a
/// few groups, small enough for balance.
fn rows_per_task(rows: usize, t: usize, threads: usize) -> usize {
    if t > 8 {
        return if rows >= ROWS_PER_COMPUTE_TASK * 8 * threads {
            ROWS_PER_COMPUTE_TASK
        } else {
            MIN_ROWS_PER_TASK
        };
    }
    let per = rows.div_ceil(threads * 4);
    per.div_ceil(MIN_ROWS_PER_TASK).max(1) * MIN_ROWS_PER_TASK
}

/// One matrix of a (possibly fused) matmul region.
pub struct MatJob<'a> {
    /// Raw tensor bytes, `rows` rows of `cols` elements of type `ty`.
    pub w: &'a [u8],
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    /// Output, `t` × `rows`, row-major.
    pub out: &'a mut [f32],
    /// The same weights repacked for the kernel level, when they are (then used instead).
    pub packed: Option<&'a Packed>,
}

/// The input of a matmul: f32 rows (for float weights) and their int8 quantization (for
/// quantized weights).
pub struct Acts<'a> {
    pub f: &'a [f32],
    pub q: &'a QuantizedActs,
    pub t: usize,
}

/// Quantizes `rows` rows of `x` into `q` with the level's kernel.
pub fn quantize_acts(k: &dyn Kernels, x: &[f32], rows: usize, q: &mut QuantizedActs) {
    let cols = x.len() / rows.max(1);
    q.prepare(rows, cols);
    let nb = cols / quant::QK;
    for r in 0..rows {
        k.quantize_row(
            &x[r * cols..(r + 1) * cols],
            &mut q.qs[r * cols..(r + 1) * cols],
            &mut q.d[r * nb..(r + 1) * nb],
            &mut q.s[r * nb..(r + 1) * nb],
            &mut q.sums[2 * r * nb..2 * (r + 1) * nb],
        );
    }
}

/// Activation rows quantized per pool task when there are many (each row alone, so the
/// result does not depend on how rows are split).
const QUANTIZE_ROWS_PER_TASK: usize = 8;

/// [`quantize_acts`] spread over the pool when there are enough rows to pay for a region.
pub fn quantize_acts_on(
    pool: &ThreadPool,
    k: &dyn Kernels,
    x: &[f32],
    rows: usize,
    q: &mut QuantizedActs,
) {
    if rows < 2 * QUANTIZE_ROWS_PER_TASK || pool.threads() == 1 {
        return quantize_acts(k, x, rows, q);
    }
    let cols = x.len() / rows;
    q.prepare(rows, cols);
    let nb = cols / quant::QK;
    let (qs, d, s, sums) = (
        SyncPtr(q.qs.as_mut_ptr()),
        SyncPtr(q.d.as_mut_ptr()),
        SyncPtr(q.s.as_mut_ptr()),
        SyncPtr(q.sums.as_mut_ptr()),
    );
    let task = |task: usize, _thread: usize| {
        let r0 = task * QUANTIZE_ROWS_PER_TASK;
        let n = QUANTIZE_ROWS_PER_TASK.min(rows - r0);
        // SAFETY: tasks cover disjoint row ranges of buffers sized by `prepare` for `rows`.
        let (qs, d, s, sums) = unsafe {
            (
                std::slice::from_raw_parts_mut(qs.get().add(r0 * cols), n * cols),
                std::slice::from_raw_parts_mut(d.get().add(r0 * nb), n * nb),
                std::slice::from_raw_parts_mut(s.get().add(r0 * nb), n * nb),
                std::slice::from_raw_parts_mut(sums.get().add(2 * r0 * nb), 2 * n * nb),
            )
        };
        for r in 0..n {
            k.quantize_row(
                &x[(r0 + r) * cols..(r0 + r + 1) * cols],
                &mut qs[r * cols..(r + 1) * cols],
                &mut d[r * nb..(r + 1) * nb],
                &mut s[r * nb..(r + 1) * nb],
                &mut sums[2 * r * nb..2 * (r + 1) * nb],
            );
        }
    };
    pool.run(rows.div_ceil(QUANTIZE_ROWS_PER_TASK), &task);
}

impl<'a> Acts<'a> {
    /// `t` rows of `f` as a matmul input, quantized into the reused buffer `q` (once for all
    /// the matrices that read this input).
    pub fn quantized(
        pool: &ThreadPool,
        cx: Compute,
        f: &'a [f32],
        q: &'a mut QuantizedActs,
        t: usize,
    ) -> Acts<'a> {
        quantize_acts_on(pool, cx.kernels(), f, t, q);
        Acts { f, q, t }
    }
}

/// Runs all `jobs` (which share the input `x`) as one parallel region.
pub fn matmul(pool: &ThreadPool, cx: Compute, x: &Acts<'_>, jobs: &mut [MatJob<'_>]) {
    let k = cx.kernels();
    struct Part<'w> {
        w: &'w [u8],
        ty: GgmlType,
        rows: usize,
        cols: usize,
        out: SyncPtr<f32>,
        packed: Option<&'w Packed>,
        first_task: usize,
        per_task: usize,
    }
    // At most a few fused matrices: parts live on the stack (no allocation per matmul).
    let mut parts: [Option<Part<'_>>; MAX_JOBS] = [const { None }; MAX_JOBS];
    assert!(jobs.len() <= MAX_JOBS, "at most {MAX_JOBS} fused matrices");
    let mut tasks = 0;
    for (slot, j) in parts.iter_mut().zip(jobs.iter_mut()) {
        assert_eq!(
            j.w.len(),
            j.rows * j.cols / j.ty.block_elems() * j.ty.block_bytes(),
            "weight size"
        );
        assert!(j.out.len() >= x.t * j.rows, "output size");
        let per_task = rows_per_task(j.rows, x.t, pool.threads());
        *slot = Some(Part {
            w: j.w,
            ty: j.ty,
            rows: j.rows,
            cols: j.cols,
            out: SyncPtr(j.out.as_mut_ptr()),
            packed: j.packed.filter(|_| !cx.f32_activations),
            first_task: tasks,
            per_task,
        });
        tasks += j.rows.div_ceil(per_task);
    }
    let parts = &parts;
    let run = |task: usize, _thread: usize| {
        let p = parts
            .iter()
            .rev()
            .flatten()
            .find(|p| p.first_task <= task)
            .expect("task belongs to a part");
        let r0 = (task - p.first_task) * p.per_task;
        let r1 = (r0 + p.per_task).min(p.rows);
        // SAFETY: tasks cover disjoint row ranges of each output; `out` holds t × rows floats.
        let tile = unsafe { OutTile::new(p.out.get(), p.rows, x.t, r0..r1) };
        match p.packed {
            Some(pk) => k.packed_matmul(pk, x.q, r0..r1, &tile),
            None if cx.f32_activations && p.ty.is_quantized() => {
                reference_rows(k, p.w, p.ty, p.cols, x, &tile)
            }
            None => gguf_rows(k, p.w, p.ty, p.cols, x, &tile),
        }
    };
    pool.run(tasks, &run);
}

/// Rows of GGUF-layout weights: activation rows in tiles that stay in L1 while the task's
/// weight rows pass over them, four at a time through the kernel.
fn gguf_rows(k: &dyn Kernels, w: &[u8], ty: GgmlType, cols: usize, x: &Acts<'_>, out: &OutTile) {
    let row_bytes = cols / ty.block_elems() * ty.block_bytes();
    for t0 in (0..x.t).step_by(T_TILE) {
        let t1 = (t0 + T_TILE).min(x.t);
        for r in out.cols() {
            let wr = &w[r * row_bytes..(r + 1) * row_bytes];
            if !ty.is_quantized() {
                for ti in t0..t1 {
                    let v = k.dot_f(ty, wr, &x.f[ti * cols..(ti + 1) * cols]);
                    out.store(ti, r, &[v]);
                }
                continue;
            }
            let mut ti = t0;
            while ti < t1 {
                let n = (t1 - ti).min(4);
                let acts: [_; 4] = std::array::from_fn(|i| x.q.row(ti + i.min(n - 1)));
                let mut v = [0.0f32; 4];
                k.dot_rows(ty, wr, &acts[..n], &mut v[..n]);
                for (i, v) in v[..n].iter().enumerate() {
                    out.store(ti + i, r, &[*v]);
                }
                ti += n;
            }
        }
    }
}

/// The reference mode: each weight row dequantized, times the f32 activations.
fn reference_rows(
    k: &dyn Kernels,
    w: &[u8],
    ty: GgmlType,
    cols: usize,
    x: &Acts<'_>,
    out: &OutTile,
) {
    let row_bytes = cols / ty.block_elems() * ty.block_bytes();
    let mut deq = vec![0.0f32; cols];
    for r in out.cols() {
        quant::dequantize_row(ty, &w[r * row_bytes..(r + 1) * row_bytes], &mut deq);
        let deq_bytes: &[u8] = bytes_of(&deq);
        for ti in 0..x.t {
            let v = k.dot_f(GgmlType::F32, deq_bytes, &x.f[ti * cols..(ti + 1) * cols]);
            out.store(ti, r, &[v]);
        }
    }
}

fn bytes_of(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns as bytes; alignment of u8 is 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}
