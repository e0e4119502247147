//! Matrix × activations on the pool: `out[t][r] = W[r] · x[t]` for weight rows `r` and
//! activation rows `t`. Activations are quantized once per matmul (by the caller, shared by the
//! matrices that read the same input). Each output element is computed by one call of the same
//! kernel whatever the batch, so results are batch invariant.

use super::pool::{SyncPtr, ThreadPool};
use crate::quant::{
    self,
    repack::{self, Packed},
    Compute, GgmlType, Isa, QuantizedActs,
};

/// Most matrices fused into one parallel region.
const MAX_JOBS: usize = 4;

/// Activation rows per tile (a multiple of 4, the kernel's activation group).
const T_TILE: usize = 16;

/// Fewest weight rows handed to one task.
const MIN_ROWS_PER_TASK: usize = 16;

/// Rows per task: small batches are memory-bound, so each thread gets a few long contiguous
/// runs of weights (good for the prefetcher); large batches are compute-bound, so tasks are
/// small for balance.
fn rows_per_task(rows: usize, t: usize, threads: usize) -> usize {
    if t > 8 {
        return MIN_ROWS_PER_TASK;
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
    /// The same weights repacked for the AVX2 kernels, when available (used on that path).
    pub packed: Option<&'a Packed>,
}

/// The input of a matmul: f32 rows (for float weights) and their int8 quantization (for
/// quantized weights).
pub struct Acts<'a> {
    pub f: &'a [f32],
    pub q: &'a QuantizedActs,
    pub t: usize,
}

impl<'a> Acts<'a> {
    /// `t` rows of `f` as a matmul input, quantized into the reused buffer `q` (once for all
    /// the matrices that read this input).
    pub fn quantized(isa: Isa, f: &'a [f32], q: &'a mut QuantizedActs, t: usize) -> Acts<'a> {
        q.quantize(isa, f, t, f.len() / t);
        Acts { f, q, t }
    }
}

/// Runs all `jobs` (which share the input `x`) as one parallel region.
pub fn matmul(pool: &ThreadPool, cx: Compute, x: &Acts<'_>, jobs: &mut [MatJob<'_>]) {
    let isa = cx.isa;
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
            packed: j
                .packed
                .filter(|_| cx.isa == Isa::Avx2 && !cx.f32_activations),
            first_task: tasks,
            per_task,
        });
        tasks += j.rows.div_ceil(per_task);
    }
    let parts = &parts;
    let t = x.t;
    let run = |task: usize, _thread: usize| {
        let p = parts
            .iter()
            .rev()
            .flatten()
            .find(|p| p.first_task <= task)
            .expect("task belongs to a part");
        let w = p.w;
        let row_bytes = p.cols / p.ty.block_elems() * p.ty.block_bytes();
        let r0 = (task - p.first_task) * p.per_task;
        let r1 = (r0 + p.per_task).min(p.rows);
        if let Some(pk) = p.packed {
            packed_task(pk, x, r0, r1, p.out);
            return;
        }
        let mut deq = if cx.f32_activations && p.ty.is_quantized() {
            vec![0.0f32; p.cols]
        } else {
            Vec::new()
        };
        // Activation rows in tiles that stay in L1 while the task's weight rows pass over them.
        for t0 in (0..t).step_by(T_TILE) {
            let t1 = (t0 + T_TILE).min(t);
            for r in r0..r1 {
                let wr = &w[r * row_bytes..(r + 1) * row_bytes];
                if !deq.is_empty() {
                    quant::dequantize_row(p.ty, wr, &mut deq);
                    let deq_bytes: &[u8] = bytes_of(&deq);
                    for ti in t0..t1 {
                        let v = quant::dot_f(
                            isa,
                            GgmlType::F32,
                            deq_bytes,
                            &x.f[ti * p.cols..(ti + 1) * p.cols],
                        );
                        // SAFETY: each (ti, r) is written by exactly one task.
                        unsafe { *p.out.get().add(ti * p.rows + r) = v };
                    }
                    continue;
                }
                if p.ty.is_quantized() {
                    let mut ti = t0;
                    while ti + 4 <= t1 {
                        let rows = [
                            x.q.row(ti),
                            x.q.row(ti + 1),
                            x.q.row(ti + 2),
                            x.q.row(ti + 3),
                        ];
                        let mut v = [0.0f32; 4];
                        quant::dot_q4(isa, p.ty, wr, &rows, &mut v);
                        for (k, v) in v.iter().enumerate() {
                            // SAFETY: each (ti, r) is written by exactly one task.
                            unsafe { *p.out.get().add((ti + k) * p.rows + r) = *v };
                        }
                        ti += 4;
                    }
                    for ti in ti..t1 {
                        let row = x.q.row(ti);
                        let v = quant::dot_q(isa, p.ty, wr, row.0, row.1, row.2);
                        // SAFETY: as above.
                        unsafe { *p.out.get().add(ti * p.rows + r) = v };
                    }
                } else {
                    for ti in t0..t1 {
                        let v = quant::dot_f(isa, p.ty, wr, &x.f[ti * p.cols..(ti + 1) * p.cols]);
                        // SAFETY: as above.
                        unsafe { *p.out.get().add(ti * p.rows + r) = v };
                    }
                }
            }
        }
    };
    pool.run(tasks, &run);
}

/// Rows `r0..r1` (`r0` a multiple of [`repack::R`]) of a repacked matrix times every
/// activation row.
fn packed_task(pk: &Packed, x: &Acts<'_>, r0: usize, r1: usize, out: SyncPtr<f32>) {
    let rows = pk.rows;
    let write = |ti: usize, g: usize, v: &[f32; repack::R]| {
        let r0 = repack::R * g;
        let n = repack::R.min(r1 - r0);
        let dst = out.get().wrapping_add(ti * rows + r0);
        // SAFETY: each (ti, r) is written by exactly one task; r0 + n <= r1 <= rows. A whole
        // group is a fixed-size copy (two vector stores, no call).
        unsafe {
            if n == repack::R {
                std::ptr::copy_nonoverlapping(v.as_ptr(), dst, repack::R);
            } else {
                std::ptr::copy_nonoverlapping(v.as_ptr(), dst, n);
            }
        }
    };
    for t0 in (0..x.t).step_by(T_TILE) {
        let t1 = (t0 + T_TILE).min(x.t);
        for g in r0 / repack::R..r1.div_ceil(repack::R) {
            let w8 = pk.group(g);
            let mut ti = t0;
            while ti + 4 <= t1 {
                let acts = [
                    x.q.row(ti),
                    x.q.row(ti + 1),
                    x.q.row(ti + 2),
                    x.q.row(ti + 3),
                ];
                let mut v = [[0.0f32; repack::R]; 4];
                quant::dot_packed::<4>(pk.form, w8, &acts, &mut v);
                for (k, v) in v.iter().enumerate() {
                    write(ti + k, g, v);
                }
                ti += 4;
            }
            for ti in ti..t1 {
                let mut v = [[0.0f32; repack::R]; 1];
                quant::dot_packed::<1>(pk.form, w8, &[x.q.row(ti)], &mut v);
                write(ti, g, &v[0]);
            }
        }
    }
}

fn bytes_of(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns as bytes; alignment of u8 is 1.
    unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) }
}
