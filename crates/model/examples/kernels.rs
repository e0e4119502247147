//! Kernel micro-benchmark: one thread, minimum time over many repetitions (robust to other
//! load on the machine). Reports GMAC/s of the int8 dot kernels per weight type and row count.
//! Usage: cargo run --release -p cordial-model --example kernels

use std::time::Instant;

use cordial_model::backend::matmul::{matmul, Acts, MatJob};
use cordial_model::quant::{
    repack::Packed, scalar::quantize_row, Compute, GgmlType, Isa, QuantizedActs,
};
use cordial_model::ThreadPool;

fn main() {
    let pool = ThreadPool::new(1);
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1536);
    let cols = 576usize;
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4_0] {
        let wq = quantize_row(ty, &w);
        let packed = Packed::new(ty, rows, cols, &wq);
        let mut variants: Vec<(Isa, bool)> = Isa::all_available()
            .into_iter()
            .map(|i| (i, false))
            .collect();
        if Isa::best_available() == Isa::Avx2 {
            variants.push((Isa::Avx2, true));
        }
        for (isa, use_packed) in variants {
            for t in [1usize, 4, 16, 64] {
                let x: Vec<f32> = (0..t * cols)
                    .map(|i| ((i * 40503) % 997) as f32 / 997.0 - 0.5)
                    .collect();
                let mut q = QuantizedActs::default();
                q.quantize(isa, &x, t, cols);
                let mut out = vec![0.0f32; t * rows];
                let reps = (200 / t).max(5);
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let start = Instant::now();
                    let acts = Acts { f: &x, q: &q, t };
                    matmul(
                        &pool,
                        Compute::new(isa),
                        &acts,
                        &mut [MatJob {
                            packed: if use_packed { packed.as_ref() } else { None },
                            w: &wq,
                            ty,
                            rows,
                            cols,
                            out: &mut out,
                        }],
                    );
                    best = best.min(start.elapsed().as_secs_f64());
                }
                let gmacs = (rows * cols * t) as f64 / best / 1e9;
                println!(
                    "{ty:?} {isa:?} rows={t:>3}: {gmacs:6.2} GMAC/s ({:.1} µs)",
                    best * 1e6
                );
            }
        }
    }
}
