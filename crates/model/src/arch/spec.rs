//! Architectures as data: what distinguishes each decoder from the common one in
//! [`super::decoder`], and the registry that maps a GGUF `general.architecture` or a Hugging
//! Face `model_type` to it. Adding an architecture that fits the decoder is a spec here and a
//! row in [`REGISTRY`].
//!
//! - llama: RMSNorm, NORM-mode RoPE (llama.cpp's converter permutes Q/K rows for it), SwiGLU,
//!   tied output when `output.weight` is absent, Llama 3 `rope_freqs` factors when present.
//! - mistral: llama's graph (llama.cpp writes most Mistral files as `llama`). The v0.1 sliding
//!   window (4096) is not applied, as in llama.cpp.
//! - qwen2 (2 / 2.5): Q/K/V biases (required), NEOX RoPE.
//! - qwen3 (dense): per-head RMSNorm of Q and K before RoPE, NEOX RoPE, its own head width.
//! - phi3 (3 / 3.5 mini): fused `attn_qkv` and gate-up `ffn_up`, NEOX RoPE; its sliding window
//!   is not applied (as llama.cpp); long-context RoPE factors are refused.
//! - gemma3: embeddings × √hidden, QK-norm, NEOX RoPE, post-attention and post-FFN norms,
//!   GELU-tanh, sliding-window layers (all but every `pattern`-th) with their own RoPE base,
//!   linear RoPE scaling on the global layers, attention scale 1/√head_dim (1/√(hidden/heads)
//!   for the 62-layer 27B), optional attention and final soft-caps. Norm weights are used as
//!   stored (the converter folded gemma's `1 + w`).
//!
//! Fused QKV and gate-up matrices are recognized by tensor name for every architecture.

use super::ModelError;
use crate::gguf::GgufFile;

/// How RoPE pairs a head's elements (llama.cpp's rope types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs (2i, 2i+1): llama GGUF files (their Q/K rows are permuted for it).
    Norm,
    /// Halves (i, i + d/2): qwen2, qwen3, phi3, gemma3, and Hugging Face llama weights.
    Neox,
}

/// The FFN's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate) · up`.
    Silu,
    /// GeGLU with the tanh approximation: `gelu(gate) · up`.
    GeluTanh,
}

/// Sliding-window layers (gemma3): every layer but each `pattern`-th sees only the last
/// `{arch}.attention.sliding_window` positions and uses its own RoPE base.
#[derive(Debug, Clone, Copy)]
pub struct SlidingWindow {
    /// Layers per global layer when `{arch}.attention.sliding_window_pattern` is absent.
    pub default_pattern: usize,
    /// RoPE base of the windowed layers when `{arch}.rope.freq_base_swa` is absent.
    pub default_rope_base: f32,
}

/// What distinguishes an architecture run by the common decoder.
#[derive(Debug, Clone, Copy)]
pub struct ArchSpec {
    /// `general.architecture` in GGUF files, and their metadata prefix.
    pub gguf: &'static str,
    /// Hugging Face `config.json` `model_type`s converted to this architecture.
    pub hf_model_types: &'static [&'static str],
    pub rope: RopeMode,
    /// `blk.N.attn_{q,k,v}.bias` are required (they are used whenever present).
    pub qkv_bias: bool,
    /// Per-head RMSNorm of Q and K (`attn_{q,k}_norm`) before RoPE.
    pub qk_norm: bool,
    /// RMSNorm of the attention and FFN outputs (`post_attention_norm`, `post_ffw_norm`)
    /// before each residual add.
    pub post_norms: bool,
    pub activation: Activation,
    /// Token embeddings multiplied by √hidden (replacement embeddings are not).
    pub embed_scale_sqrt_hidden: bool,
    pub sliding_window: Option<SlidingWindow>,
    /// `{arch}.rope.scaling.factor` as linear position scaling (global layers).
    pub linear_rope_scaling: bool,
    /// `{arch}.attn_logit_softcapping` and `{arch}.final_logit_softcapping` when set.
    pub softcaps: bool,
    /// Attention scale 1/√(hidden/heads) instead of 1/√head_dim for the 62-layer model
    /// (Gemma 3 27B's `query_pre_attn_scalar`).
    pub gemma_attn_scale: bool,
    /// Checks on the file beyond what the decoder reads.
    pub check: fn(&GgufFile) -> Result<(), ModelError>,
}

fn no_check(_: &GgufFile) -> Result<(), ModelError> {
    Ok(())
}

fn phi3_check(f: &GgufFile) -> Result<(), ModelError> {
    for name in ["rope_factors_long.weight", "rope_factors_short.weight"] {
        if f.tensor_info(name).is_ok() {
            return Err(ModelError::Invalid(format!(
                "phi3 with `{name}` (long-context RoPE scaling) is not supported"
            )));
        }
    }
    Ok(())
}

pub const LLAMA: ArchSpec = ArchSpec {
    gguf: "llama",
    hf_model_types: &["llama", "mistral"],
    rope: RopeMode::Norm,
    qkv_bias: false,
    qk_norm: false,
    post_norms: false,
    activation: Activation::Silu,
    embed_scale_sqrt_hidden: false,
    sliding_window: None,
    linear_rope_scaling: false,
    softcaps: false,
    gemma_attn_scale: false,
    check: no_check,
};

pub const MISTRAL: ArchSpec = ArchSpec {
    gguf: "mistral",
    hf_model_types: &[],
    ..LLAMA
};

pub const QWEN2: ArchSpec = ArchSpec {
    gguf: "qwen2",
    hf_model_types: &["qwen2"],
    rope: RopeMode::Neox,
    qkv_bias: true,
    ..LLAMA
};

pub const QWEN3: ArchSpec = ArchSpec {
    gguf: "qwen3",
    hf_model_types: &["qwen3"],
    rope: RopeMode::Neox,
    qk_norm: true,
    ..LLAMA
};

pub const PHI3: ArchSpec = ArchSpec {
    gguf: "phi3",
    hf_model_types: &["phi3"],
    rope: RopeMode::Neox,
    check: phi3_check,
    ..LLAMA
};

pub const GEMMA3: ArchSpec = ArchSpec {
    gguf: "gemma3",
    hf_model_types: &["gemma3", "gemma3_text"],
    rope: RopeMode::Neox,
    qkv_bias: false,
    qk_norm: true,
    post_norms: true,
    activation: Activation::GeluTanh,
    embed_scale_sqrt_hidden: true,
    sliding_window: Some(SlidingWindow {
        default_pattern: 6,
        default_rope_base: 10000.0,
    }),
    linear_rope_scaling: true,
    softcaps: true,
    gemma_attn_scale: true,
    check: no_check,
};

/// Every architecture this build runs.
pub static REGISTRY: &[ArchSpec] = &[LLAMA, MISTRAL, QWEN2, QWEN3, PHI3, GEMMA3];

/// The spec of a GGUF `general.architecture`.
pub fn by_gguf(name: &str) -> Option<&'static ArchSpec> {
    REGISTRY.iter().find(|s| s.gguf == name)
}

/// The spec a Hugging Face `model_type` converts to.
pub fn by_hf_model_type(model_type: &str) -> Option<&'static ArchSpec> {
    REGISTRY
        .iter()
        .find(|s| s.hf_model_types.contains(&model_type))
}

/// The GGUF architecture names, for messages.
pub fn gguf_names() -> Vec<&'static str> {
    REGISTRY.iter().map(|s| s.gguf).collect()
}

/// The Hugging Face `model_type`s, for messages.
pub fn hf_model_types() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .flat_map(|s| s.hf_model_types.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_rows_are_unique_and_found() {
        for s in REGISTRY {
            assert_eq!(by_gguf(s.gguf).unwrap().gguf, s.gguf);
            for t in s.hf_model_types {
                assert_eq!(by_hf_model_type(t).unwrap().gguf, s.gguf, "{t}");
            }
        }
        let names = gguf_names();
        let mut dedup = names.clone();
        dedup.dedup();
        assert_eq!(names, dedup);
        assert!(by_gguf("gpt2").is_none() && by_hf_model_type("bert").is_none());
        assert_eq!(by_hf_model_type("mistral").unwrap().gguf, "llama");
    }
}
