//! Teacher-forced golden test of gemma3 on a real model, Gemma 3 270M Q4_K_M (fetched from
//! PyPI), against llama.cpp's llama-server on the same file (`tests/fixtures/gemma3-270m-q4_k_m`,
//! made with llama-server; method in tests/fixtures/README.md).
//!
//! Two references, as in `golden.rs` for SmolLM2:
//! - exact math: a float64 numpy forward pass of the gemma3 graph over the dequantized weights
//!   (`tests/fixtures/exact-gemma3.jsonl`, made by scripts/make-exact-reference.py). Our
//!   f32-activation reference mode must match it tightly: this proves the architecture's math
//!   (embedding scale, QK-norm, NEOX rope with two bases, post-norms, GELU, tied output);
//! - llama.cpp, within the same statistical bounds as SmolLM2's: both implementations quantize
//!   activations (llama.cpp to Q8_K blocks of 256 for the K-quant matrices, we to blocks of
//!   32), so log-probabilities cannot agree to 0.05 nats everywhere; a wrong norm, rope mode,
//!   window or scale costs whole nats. Our int8 noise must also stay within 1.5× llama.cpp's
//!   own deviation from exact math.

mod common;
use common::*;
use cordial_model::{Compute, Isa, KvDtype};

const NEAR_TIE: f32 = 0.05;
/// Our f32-activation mode against float64 math (it keeps an f16 KV cache, as llama.cpp does).
const EXACT_MAX: f32 = 0.03;

#[derive(Default, Debug)]
struct Agreement {
    steps: usize,
    argmax_mismatches_beyond_tie: usize,
    sum_abs: f64,
    n_abs: usize,
    max_abs: f32,
}

impl Agreement {
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

/// (ours vs llama.cpp, ours vs exact math, llama.cpp vs exact math).
fn compare(cx: Compute, n_cases: usize) -> (Agreement, Agreement, Agreement) {
    compare_kv(cx, n_cases, KvDtype::F16)
}

fn compare_kv(cx: Compute, n_cases: usize, kv: KvDtype) -> (Agreement, Agreement, Agreement) {
    let cases = greedy_cases_in(&gemma3_dir());
    let exact = exact_cases_in("exact-gemma3.jsonl");
    assert!(cases.len() >= 20, "fixture has {} cases", cases.len());
    assert_eq!(cases.len(), exact.len());
    let mut h = Harness::with_kv(load_gemma3(), cx, 1, 160, kv);
    let (mut vs_ref, mut vs_exact, mut ref_vs_exact) = (
        Agreement::default(),
        Agreement::default(),
        Agreement::default(),
    );
    for (case, ex) in cases.iter().zip(&exact).take(n_cases) {
        assert_eq!(case.prompt, ex.prompt);
        assert_eq!(case.prompt_ids[0], 2, "gemma prompts start with <bos>");
        let rows = teacher_forced(&mut h, case);
        assert_eq!(rows.len(), case.steps.len());
        for ((row, step), ex_top) in rows.iter().zip(&case.steps).zip(&ex.steps) {
            vs_ref.add(row, &step.top);
            vs_exact.add(row, ex_top);
            for &(id, want) in ex_top {
                if let Some((_, got)) = step.top.iter().find(|(i, _)| *i == id) {
                    ref_vs_exact.sum_abs += (got - want).abs() as f64;
                    ref_vs_exact.n_abs += 1;
                    ref_vs_exact.max_abs = ref_vs_exact.max_abs.max((got - want).abs());
                }
            }
            ref_vs_exact.steps += 1;
        }
    }
    eprintln!(
        "{:?} f32_activations={} {kv} KV: vs llama.cpp {vs_ref:?} mean {:.4}; vs exact \
         {vs_exact:?} mean {:.4}; llama.cpp vs exact mean {:.4} max {:.4}",
        cx.isa,
        cx.f32_activations,
        vs_ref.mean(),
        vs_exact.mean(),
        ref_vs_exact.mean(),
        ref_vs_exact.max_abs
    );
    (vs_ref, vs_exact, ref_vs_exact)
}

fn check_int8(cx: Compute, n_cases: usize) {
    check_int8_kv(cx, n_cases, KvDtype::F16)
}

fn check_int8_kv(cx: Compute, n_cases: usize, kv: KvDtype) {
    let (vs_ref, vs_exact, ref_vs_exact) = compare_kv(cx, n_cases, kv);
    // One entry of llama.cpp's own output lies 2.25 nats from exact math (its int8 noise on
    // this model), so the largest difference to llama.cpp is bounded by that plus ours (the
    // triangle inequality); ours against exact math is held to 1 nat with the f16 KV cache,
    // and with the q8_0 cache (whose rounding adds to the activations': measured 1.40) to
    // llama.cpp's own largest deviation.
    check(&vs_ref, 2.0f32.max(ref_vs_exact.max_abs + 1.0));
    let max_vs_exact = match kv {
        KvDtype::F16 => 1.0,
        KvDtype::Q8_0 => ref_vs_exact.max_abs,
    };
    assert!(
        vs_exact.max_abs < max_vs_exact,
        "max |Δ logprob| vs exact math {}",
        vs_exact.max_abs
    );
    assert!((vs_exact.argmax_mismatches_beyond_tie as f64) <= 0.04 * vs_exact.steps as f64);
    assert!(
        vs_exact.mean() <= 1.5 * ref_vs_exact.mean(),
        "our int8 noise ({}) exceeds 1.5× llama.cpp's own deviation from exact math ({})",
        vs_exact.mean(),
        ref_vs_exact.mean()
    );
}

fn check(a: &Agreement, max_abs: f32) {
    assert!(
        (a.argmax_mismatches_beyond_tie as f64) <= 0.04 * a.steps as f64,
        "argmax differs from llama.cpp too often: {a:?}"
    );
    assert!(
        a.mean() < 0.15,
        "mean |Δ logprob| vs llama.cpp {}",
        a.mean()
    );
    assert!(
        a.max_abs < max_abs,
        "max |Δ logprob| vs llama.cpp {}",
        a.max_abs
    );
}

#[test]
fn gemma3_exact_math_matches_float64_reference() {
    let cx = Compute::reference(Isa::best_available());
    let (_, vs_exact, _) = compare(cx, 6);
    assert_eq!(vs_exact.argmax_mismatches_beyond_tie, 0, "{vs_exact:?}");
    assert!(
        vs_exact.max_abs < EXACT_MAX,
        "max |Δ logprob| vs float64 {} nats",
        vs_exact.max_abs
    );
}

#[test]
fn gemma3_int8_serving_path_agrees_with_llamacpp() {
    check_int8(Compute::new(Isa::best_available()), usize::MAX);
}

#[test]
fn gemma3_scalar_kernels_agree_with_llamacpp() {
    // The scalar kernels are slow on a 262k-token output matrix: three prompts prove them.
    check_int8(Compute::new(Isa::Scalar), 3);
}

#[test]
fn gemma3_q8_0_kv_cache_stays_within_the_int8_bounds() {
    check_int8_kv(
        Compute::new(Isa::best_available()),
        usize::MAX,
        KvDtype::Q8_0,
    );
}
