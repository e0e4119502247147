//! Mistral 7B-style models: the llama graph (llama.cpp converts them as `llama`; a file that
//! says `mistral` gets the same treatment). Their sliding window (4096, v0.1 only) is not
//! applied, as in llama.cpp.

use super::llama::{Flavor, RopeMode};

pub const FLAVOR: Flavor = Flavor {
    arch: "mistral",
    rope: RopeMode::Norm,
    qkv_bias: false,
    qk_norm: false,
};
