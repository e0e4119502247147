//! Every architecture on a tiny random-weight model that the testkit writes as GGUF, against a
//! brute-force float64 forward pass written here from the architecture's defining equations
//! (so a wrong norm, rope mode, bias, window, scale or fused split shows up as a large error).
//! Architectures without a small real model in the tests (qwen2, qwen3, mistral, phi3, llama
//! with Llama 3 rope scaling) are proven this way; gemma3 also gets its sliding window checked
//! here (the real model's prompts are shorter than its window).

mod common;

use common::tiny::*;
use common::Harness;
use cordial_model::gguf::GgufFile;
use cordial_model::quant::GgmlType;
use cordial_model::Model;
use cordial_model::{Compute, Isa};
use cordial_testkit::gguf_writer::{temp_path, GgufWriter, Meta};
use std::sync::Arc;

/// The f32-activation mode matches float64 math (with the same f16 rounding of the KV cache)
/// to f32 precision; the int8 serving path (every ISA) stays within int8 noise (the same as
/// f32 mode when the matrices are F32, which take f32 activations).
fn check(spec: Spec) {
    let m = build(spec, 11);
    let exact = Compute::reference(Isa::best_available());
    let ((max, _), mut m) = errors(m, exact);
    eprintln!("{} f32 activations: max |Δ logprob| {max:.2e}", spec.arch);
    assert!(max < 1e-3, "{}: f32 mode vs float64 {max}", spec.arch);
    for isa in Isa::all_available() {
        let ((max, mean), back) = errors(m, Compute::new(isa));
        m = back;
        eprintln!(
            "{} int8 {isa:?}: |Δ logprob| max {max:.2e} mean {mean:.2e}",
            spec.arch
        );
        assert!(
            max < 0.5 && mean < 0.05,
            "{}: int8 {isa:?} vs float64: max {max} mean {mean}",
            spec.arch
        );
    }
}

#[test]
fn llama_matches_reference() {
    check(BASE);
}

#[test]
fn llama3_rope_scaling_matches_reference() {
    check(Spec {
        llama3_factors: true,
        tied: false,
        ..BASE
    });
}

#[test]
fn mistral_matches_reference() {
    check(Spec {
        arch: "mistral",
        tied: false,
        ..BASE
    });
}

#[test]
fn qwen2_bias_and_neox_rope_match_reference() {
    check(Spec {
        arch: "qwen2",
        rope: Rope::Neox,
        qkv_bias: true,
        ..BASE
    });
}

#[test]
fn qwen3_qk_norm_matches_reference() {
    check(Spec {
        arch: "qwen3",
        rope: Rope::Neox,
        qk_norm: true,
        head_dim: 32,
        wtype: GgmlType::Q8_0,
        ..BASE
    });
}

#[test]
fn phi3_fused_matrices_match_reference() {
    check(Spec {
        arch: "phi3",
        rope: Rope::Neox,
        fused: true,
        tied: false,
        ..BASE
    });
}

#[test]
fn gemma3_window_norms_and_softcaps_match_reference() {
    check(Spec {
        arch: "gemma3",
        rope: Rope::Neox,
        gemma: true,
        head_dim: 32,
        ..BASE
    });
}

#[test]
fn gemma3_logits_do_not_depend_on_batch_or_chunking() {
    let spec = Spec {
        arch: "gemma3",
        rope: Rope::Neox,
        gemma: true,
        head_dim: 32,
        ..BASE
    };
    for isa in Isa::all_available() {
        let toks = tokens();
        let mut alone = Harness::new(build(spec, 5).model, Compute::new(isa), 2, 64);
        let whole = alone.score(&toks);
        // In chunks of 5, alongside another sequence.
        let mut mixed = Harness::new(build(spec, 5).model, Compute::new(isa), 2, 64);
        let other = [3u32, 4, 5, 6, 7, 8, 9];
        let (mut start, mut other_start) = (0, 0);
        for chunk in toks.chunks(5) {
            let rows = mixed.step(&[(0, chunk, start), (1, &other[..2], other_start)]);
            start += chunk.len();
            other_start += 2;
            assert!(
                rows[0] == whole[start - 1],
                "{isa:?}: chunked/batched logits differ at {start}"
            );
        }
    }
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let g = GgufWriter::new().meta("general.architecture", Meta::Str("mamba".into()));
    let path = temp_path("mamba-tiny.gguf");
    g.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    std::fs::remove_file(&path).ok();
    let msg = Model::load(Arc::new(f)).err().expect("fails").to_string();
    for a in [
        "mamba", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma3",
    ] {
        assert!(msg.contains(a), "{msg}");
    }
}
