//! Golden tests of the forward pass, teacher-forced (method: tests/fixtures/README.md).
//!
//! Two references, because one cannot pin down both things at once on this model:
//! - exact math: a float64 numpy forward pass over the dequantized weights (fixture made by
//!   scripts/make-exact-reference.py). Our f32-activation reference mode must match it tightly:
//!   this proves the model's math (norms, rope, attention, MLP, tied output).
//! - llama.cpp (tests/fixtures/smollm2-135m-instruct-q4_1). Both llama.cpp and our serving path quantize activations
//!   to int8 per matmul; on this 135M model that noise alone moves top-8 log-probabilities by
//!   0.1–0.4 nats (llama.cpp's own output differs from exact math by up to ~0.4 nats, measured
//!   below from the fixtures alone). So two int8 implementations cannot agree to 0.05 nats
//!   everywhere; we bound the disagreement statistically, tight enough that any real bug
//!   (wrong rope mode: 1–6 nats per prompt) fails, and require our int8 noise to be no larger
//!   than llama.cpp's own.

mod common;
use common::*;
use cordial_model::{Compute, Isa, KvDtype};

const NEAR_TIE: f32 = 0.05;

#[derive(Default, Debug)]
struct Agreement {
    steps: usize,
    argmax_mismatches_beyond_tie: usize,
    sum_abs: f64,
    n_abs: usize,
    max_abs: f32,
}

impl Agreement {
    /// Compares our logits row against a reference top list (sorted, best first).
    fn add(&mut self, row: &[f32], top: &[(u32, f32)]) {
        let lp = log_softmax(row);
        self.steps += 1;
        if top[0].1 - top[1].1 > NEAR_TIE && argmax(row) != top[0].0 {
            self.argmax_mismatches_beyond_tie += 1;
        }
        for &(id, want) in top {
            let d = (lp[id as usize] - want).abs();
            self.sum_abs += d as f64;
            self.n_abs += 1;
            self.max_abs = self.max_abs.max(d);
        }
    }
    fn mean(&self) -> f64 {
        self.sum_abs / self.n_abs.max(1) as f64
    }
}

fn reference_tops(case: &Greedy) -> Vec<Vec<(u32, f32)>> {
    case.steps.iter().map(|s| s.top.clone()).collect()
}

#[test]
fn exact_math_matches_float64_reference() {
    let cases = greedy_cases();
    let exact = exact_cases();
    assert_eq!(cases.len(), exact.len());
    let cx = Compute::reference(Isa::best_available());
    let mut h = Harness::new(load_default(), cx, 1, 128);
    let mut a = Agreement::default();
    for (case, ex) in cases.iter().zip(&exact).take(8) {
        assert_eq!(case.prompt, ex.prompt);
        for (row, top) in teacher_forced(&mut h, case).iter().zip(&ex.steps) {
            a.add(row, top);
        }
    }
    eprintln!("exact mode vs float64: {a:?}, mean {:.5}", a.mean());
    assert_eq!(a.argmax_mismatches_beyond_tie, 0);
    assert!(a.max_abs < 0.02, "max |Δ logprob| {} nats", a.max_abs);
}

fn int8_against_llamacpp(
    cx: Compute,
    n_cases: usize,
    kv: KvDtype,
) -> (Agreement, Agreement, Agreement) {
    let cases = greedy_cases();
    let exact = exact_cases();
    let mut h = Harness::with_kv(load_default(), cx, 1, 128, kv);
    let (mut vs_ref, mut vs_exact, mut ref_vs_exact) = (
        Agreement::default(),
        Agreement::default(),
        Agreement::default(),
    );
    for (case, ex) in cases.iter().zip(&exact).take(n_cases) {
        let rows = teacher_forced(&mut h, case);
        assert_eq!(rows.len(), case.steps.len());
        for ((row, top), ex_top) in rows.iter().zip(reference_tops(case)).zip(&ex.steps) {
            vs_ref.add(row, &top);
            vs_exact.add(row, ex_top);
            // llama.cpp against exact math, from the two fixtures alone (ids in both lists).
            for &(id, want) in ex_top {
                if let Some((_, got)) = top.iter().find(|(i, _)| *i == id) {
                    ref_vs_exact.sum_abs += (got - want).abs() as f64;
                    ref_vs_exact.n_abs += 1;
                }
            }
            ref_vs_exact.steps += 1;
        }
    }
    (vs_ref, vs_exact, ref_vs_exact)
}

fn check_int8(cx: Compute, n_cases: usize, kv: KvDtype) {
    let (vs_ref, vs_exact, ref_vs_exact) = int8_against_llamacpp(cx, n_cases, kv);
    eprintln!(
        "{:?} int8, {kv} KV vs llama.cpp: {vs_ref:?} mean {:.4}",
        cx.isa,
        vs_ref.mean()
    );
    eprintln!(
        "{:?} int8, {kv} KV vs exact: {vs_exact:?} mean {:.4}",
        cx.isa,
        vs_exact.mean()
    );
    eprintln!(
        "llama.cpp vs exact (shared top ids): mean {:.4}",
        ref_vs_exact.mean()
    );
    let steps = vs_ref.steps as f64;
    assert!(
        (vs_ref.argmax_mismatches_beyond_tie as f64) <= 0.04 * steps,
        "argmax differs from llama.cpp too often"
    );
    assert!(
        vs_ref.mean() < 0.15,
        "mean |Δ logprob| vs llama.cpp {}",
        vs_ref.mean()
    );
    assert!(
        vs_ref.max_abs < 2.0,
        "max |Δ logprob| vs llama.cpp {}",
        vs_ref.max_abs
    );
    assert!((vs_exact.argmax_mismatches_beyond_tie as f64) <= 0.04 * steps);
    assert!(
        vs_exact.mean() <= 1.5 * ref_vs_exact.mean(),
        "our int8 noise ({}) exceeds 1.5× llama.cpp's own deviation from exact math ({})",
        vs_exact.mean(),
        ref_vs_exact.mean()
    );
}

#[test]
fn int8_serving_path_agrees_with_llamacpp() {
    check_int8(
        Compute::new(Isa::best_available()),
        usize::MAX,
        KvDtype::F16,
    );
}

#[test]
fn int8_scalar_reference_kernels_agree_with_llamacpp() {
    // The scalar kernels are slow: a few prompts prove them.
    check_int8(Compute::new(Isa::Scalar), 4, KvDtype::F16);
}

/// The q8_0 KV cache keeps the int8 path within the same bounds against llama.cpp and exact
/// math, and its difference from the f16 cache (every teacher-forced row's log-probabilities
/// of the f16 row's top 8 tokens) stays within the bounds the int8 path is held to against
/// llama.cpp (measured: mean 0.11, max 1.6 nats, 12 argmax flips in 960 rows).
#[test]
fn q8_0_kv_cache_stays_within_the_int8_bounds() {
    let cx = Compute::new(Isa::best_available());
    check_int8(cx, usize::MAX, KvDtype::Q8_0);
    let model = load_default();
    let mut f16 = Harness::with_kv(model, cx, 1, 128, KvDtype::F16);
    let mut q8 = Harness::with_kv(load_default(), cx, 1, 128, KvDtype::Q8_0);
    let (mut sum, mut n, mut max, mut flips) = (0.0f64, 0usize, 0.0f32, 0usize);
    let cases = greedy_cases();
    for case in &cases {
        let (a, b) = (
            teacher_forced(&mut f16, case),
            teacher_forced(&mut q8, case),
        );
        for (ra, rb) in a.iter().zip(&b) {
            let (la, lb) = (log_softmax(ra), log_softmax(rb));
            let mut ids: Vec<usize> = (0..la.len()).collect();
            ids.sort_by(|&x, &y| la[y].total_cmp(&la[x]));
            for &i in &ids[..8] {
                let d = (la[i] - lb[i]).abs();
                sum += d as f64;
                n += 1;
                max = max.max(d);
            }
            if argmax(ra) != argmax(rb) && la[ids[0]] - la[ids[1]] > 0.05 {
                flips += 1;
            }
        }
    }
    let mean = sum / n as f64;
    eprintln!(
        "q8_0 vs f16 KV: mean |Δ logprob| {mean:.4}, max {max:.4}, argmax flips beyond a tie \
         {flips} of {} rows",
        n / 8
    );
    let rows = n / 8;
    assert!(
        mean < 0.15,
        "q8_0 KV moves log-probabilities by {mean} on average"
    );
    assert!(max < 2.0, "q8_0 KV moves a log-probability by {max}");
    assert!(
        flips as f64 <= 0.04 * rows as f64,
        "{flips} argmax flips in {rows} rows"
    );
}
