//! qwen3 (Qwen 3 dense): the llama graph with RMSNorm of each Q and K head
//! (`attn_q_norm`/`attn_k_norm`, before RoPE), RoPE in NEOX mode, no biases, and a head width
//! of its own (`attention.key_length`, not hidden / heads).

use super::llama::{Flavor, RopeMode};

pub const FLAVOR: Flavor = Flavor {
    arch: "qwen3",
    rope: RopeMode::Neox,
    qkv_bias: false,
    qk_norm: true,
};
