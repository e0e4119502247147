//! qwen2 (Qwen 2 / 2.5): the llama graph with biases on the Q, K and V projections and RoPE in
//! NEOX mode (llama.cpp's `qwen2` graph). Output tied to the embeddings when `output.weight`
//! is absent (the small models).

use super::llama::{Flavor, RopeMode};

pub const FLAVOR: Flavor = Flavor {
    arch: "qwen2",
    rope: RopeMode::Neox,
    qkv_bias: true,
    qk_norm: false,
};
