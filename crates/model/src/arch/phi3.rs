//! phi3 (Phi-3 / Phi-3.5 mini): the llama graph with one fused QKV matrix (`attn_qkv`: Q rows,
//! then K, then V), one fused gate-up matrix (`ffn_up`: gate rows, then up; SwiGLU), RoPE in
//! NEOX mode and an untied output. Its `attention.sliding_window` is not applied (llama.cpp
//! disables it for phi3 too). The long-context variants' per-dimension RoPE factors
//! (`rope_factors_long/short`) are not supported: loading them fails, naming the tensor.

use super::llama::{Flavor, RopeMode};

pub const FLAVOR: Flavor = Flavor {
    arch: "phi3",
    rope: RopeMode::Neox,
    qkv_bias: false,
    qk_norm: false,
};
