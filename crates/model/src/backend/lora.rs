//! LoRA deltas over a step's rows, next to the base matmul (Punica's SGMV idea on the CPU):
//! the base matrix has already run once over every row; rows are grouped by the adapters
//! their sequence uses, and each group gets `y += s · α · Bᵀ(A·x)` per adapted matrix, on
//! the pool. A task is up to [`ROWS_PER_TASK`] rows of one group (consecutive tasks share an
//! adapter, so its factors stay in cache).
//!
//! Batch invariance: a row's delta is computed by one task, from its own `x` row only, with
//! its sequence's adapters in its sequence's order; each `h[r]` is one kernel dot product and
//! each output element a fixed chain of FMAs. Which other rows, adapters or groups share the
//! step changes neither.

use super::cpu::Kernels;
use super::pool::{SyncPtr, ThreadPool};
use crate::lora::{LoraAdapter, Proj, MAX_RANK};

/// Rows one task handles.
const ROWS_PER_TASK: usize = 4;

/// One sequence's use of an adapter in a step: the adapter and the user's scale (the
/// adapter's alpha scale is applied on top).
#[derive(Clone, Copy)]
pub struct LoraUse<'a> {
    pub adapter: &'a LoraAdapter,
    pub scale: f32,
}

/// Rows sharing one list of adapters.
struct Group<'a> {
    adapters: Vec<&'a LoraAdapter>,
}

/// Up to [`ROWS_PER_TASK`] rows of a group: `(row, index into the per-row scales)`.
struct Task {
    group: usize,
    rows: [(usize, usize); ROWS_PER_TASK],
    n: usize,
}

/// Which rows of a step get which adapters' deltas (built once per forward).
#[derive(Default)]
pub struct LoraPlan<'a> {
    groups: Vec<Group<'a>>,
    tasks: Vec<Task>,
    /// Per sequence with adapters: the user scales, aligned with its group's adapters.
    scales: Vec<Vec<f32>>,
}

impl<'a> LoraPlan<'a> {
    /// The plan of a step whose sequences use `uses` (one list per sequence, zero scales
    /// dropped) and cover the rows `rows[i]`.
    pub fn new(seqs: impl Iterator<Item = (&'a [LoraUse<'a>], std::ops::Range<usize>)>) -> Self {
        let mut plan = LoraPlan::default();
        let mut members: Vec<Vec<(std::ops::Range<usize>, usize)>> = Vec::new();
        for (uses, rows) in seqs {
            let live: Vec<&LoraUse<'a>> = uses.iter().filter(|u| u.scale != 0.0).collect();
            if live.is_empty() || rows.is_empty() {
                continue;
            }
            let same = |g: &Group<'a>| {
                g.adapters.len() == live.len()
                    && g.adapters
                        .iter()
                        .zip(&live)
                        .all(|(a, u)| std::ptr::eq(*a, u.adapter))
            };
            let g = match plan.groups.iter().position(same) {
                Some(g) => g,
                None => {
                    plan.groups.push(Group {
                        adapters: live.iter().map(|u| u.adapter).collect(),
                    });
                    members.push(Vec::new());
                    plan.groups.len() - 1
                }
            };
            plan.scales.push(live.iter().map(|u| u.scale).collect());
            members[g].push((rows, plan.scales.len() - 1));
        }
        for (g, runs) in members.into_iter().enumerate() {
            let mut task = Task {
                group: g,
                rows: [(0, 0); ROWS_PER_TASK],
                n: 0,
            };
            for (rows, s) in runs {
                for row in rows {
                    task.rows[task.n] = (row, s);
                    task.n += 1;
                    if task.n == ROWS_PER_TASK {
                        plan.tasks.push(std::mem::replace(
                            &mut task,
                            Task {
                                group: g,
                                rows: [(0, 0); ROWS_PER_TASK],
                                n: 0,
                            },
                        ));
                    }
                }
            }
            if task.n > 0 {
                plan.tasks.push(task);
            }
        }
        plan
    }

    /// Whether no row gets a delta (then the step runs exactly as without adapters).
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The distinct adapters of the step.
    pub fn adapters(&self) -> impl Iterator<Item = &'a LoraAdapter> + '_ {
        let mut seen: Vec<*const LoraAdapter> = Vec::new();
        self.groups
            .iter()
            .flat_map(|g| g.adapters.iter().copied())
            .filter(move |a| {
                let p = *a as *const LoraAdapter;
                let new = !seen.contains(&p);
                if new {
                    seen.push(p);
                }
                new
            })
    }

    /// Adds the deltas of `layer`'s matrices `outs` (which read the same input `x`, `t` rows
    /// of `n_in`) to their outputs, on the pool.
    pub fn apply(
        &self,
        pool: &ThreadPool,
        k: &dyn Kernels,
        layer: usize,
        x: &[f32],
        n_in: usize,
        outs: &mut [(Proj, &mut [f32])],
    ) {
        let touched = |p: Proj| {
            self.groups
                .iter()
                .any(|g| g.adapters.iter().any(|a| a.mat(layer, p).is_some()))
        };
        if self.is_empty() || !outs.iter().any(|(p, _)| touched(*p)) {
            return;
        }
        let outs: Vec<(Proj, SyncPtr<f32>, usize)> = outs
            .iter_mut()
            .map(|(p, y)| (*p, SyncPtr(y.as_mut_ptr()), y.len()))
            .collect();
        let run = |task: usize, _thread: usize| {
            let task = &self.tasks[task];
            let group = &self.groups[task.group];
            let mut h = [0.0f32; MAX_RANK];
            for &(proj, ref y, len) in &outs {
                for (ai, adapter) in group.adapters.iter().enumerate() {
                    let Some(m) = adapter.mat(layer, proj) else {
                        continue;
                    };
                    debug_assert_eq!(m.n_in, n_in);
                    let h = &mut h[..m.rank];
                    for &(row, s) in &task.rows[..task.n] {
                        assert!((row + 1) * m.n_out <= len && (row + 1) * n_in <= x.len());
                        k.lora_shrink(m.a.rows(), &x[row * n_in..(row + 1) * n_in], h);
                        let scale = self.scales[s][ai] * m.alpha_scale;
                        h.iter_mut().for_each(|v| *v *= scale);
                        // SAFETY: rows are in bounds (checked above) and each row belongs to
                        // exactly one task, so no other task touches these elements.
                        let y = unsafe {
                            std::slice::from_raw_parts_mut(y.get().add(row * m.n_out), m.n_out)
                        };
                        k.lora_expand(m.bt.rows(), h, y);
                    }
                }
            }
        };
        pool.run(self.tasks.len(), &run);
    }
}

#[cfg(test)]
mod tests {
    use crate::backend::cpu::{Isa, LoraRows};

    fn vals(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 8e6 - 1.0
            })
            .collect()
    }

    /// Every level's shrink matches the scalar one to rounding, and its expand exactly (one
    /// FMA per rank row, in row order, everywhere); f16 factors too; any width.
    #[test]
    fn lora_kernels_agree_with_scalar() {
        let scalar = Isa::Scalar.kernels();
        for (rank, n_in, n_out) in [(4, 64, 48), (8, 576, 192), (3, 37, 13), (16, 1536, 576)] {
            let a = vals(rank * n_in, 1);
            let b = vals(rank * n_out, 2);
            let a16: Vec<u16> = a
                .iter()
                .map(|v| half::f16::from_f32(*v).to_bits())
                .collect();
            let b16: Vec<u16> = b
                .iter()
                .map(|v| half::f16::from_f32(*v).to_bits())
                .collect();
            let x = vals(n_in, 3);
            for isa in Isa::all_available() {
                let k = isa.kernels();
                for (fa, fb) in [
                    (LoraRows::F32(&a), LoraRows::F32(&b)),
                    (LoraRows::F16(&a16), LoraRows::F16(&b16)),
                ] {
                    let (mut h, mut h0) = (vec![0.0; rank], vec![0.0; rank]);
                    k.lora_shrink(fa, &x, &mut h);
                    scalar.lora_shrink(fa, &x, &mut h0);
                    for (u, v) in h.iter().zip(&h0) {
                        assert!((u - v).abs() <= 1e-4 * (1.0 + v.abs()), "{isa:?} {u} {v}");
                    }
                    let (mut y, mut y0) = (vals(n_out, 4), vals(n_out, 4));
                    k.lora_expand(fb, &h0, &mut y);
                    scalar.lora_expand(fb, &h0, &mut y0);
                    assert_eq!(y, y0, "{isa:?} expand {rank}x{n_out}");
                }
            }
        }
    }
}
