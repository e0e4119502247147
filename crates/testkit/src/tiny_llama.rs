//! A tiny llama model as a complete GGUF file, for tests of the whole server (runner, CLI,
//! limits) that need a real model that loads at once: random f32 weights (2 layers, hidden 32),
//! a SentencePiece vocabulary of `<unk>`, `<s>`, `</s>`, `▁` and the 256 byte tokens (any text
//! encodes through byte fallback), a context length of the caller's choice in the metadata,
//! and optionally a chat template.

use crate::gguf_writer::{GgufWriter, Meta};

pub const HIDDEN: usize = 32;
pub const FFN: usize = 64;
pub const LAYERS: usize = 2;
/// `<unk>`, `<s>`, `</s>`, `▁`, then `<0x00>`..`<0xFF>`.
pub const VOCAB: usize = 4 + 256;
pub const BOS: u32 = 1;
pub const EOS: u32 = 2;

/// ggml type id of f32 tensors.
const F32: u32 = 0;

/// The model with `context_length` in its metadata and `chat_template` (if any).
pub fn tiny_llama(context_length: u32, chat_template: Option<&str>) -> GgufWriter {
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>", "▁"].map(String::from).to_vec();
    tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
    let mut types = vec![2, 3, 3, 1];
    types.extend([6; 256]);
    let mut g = GgufWriter::new()
        .meta("general.architecture", Meta::Str("llama".into()))
        .meta("llama.block_count", Meta::U32(LAYERS as u32))
        .meta("llama.context_length", Meta::U32(context_length))
        .meta("llama.embedding_length", Meta::U32(HIDDEN as u32))
        .meta("llama.feed_forward_length", Meta::U32(FFN as u32))
        .meta("llama.attention.head_count", Meta::U32(2))
        .meta("llama.attention.head_count_kv", Meta::U32(1))
        .meta("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-5))
        .meta("llama.rope.freq_base", Meta::F32(10000.0))
        .meta("llama.vocab_size", Meta::U32(VOCAB as u32))
        .meta("tokenizer.ggml.model", Meta::Str("llama".into()))
        .meta("tokenizer.ggml.tokens", Meta::StrArray(tokens))
        .meta("tokenizer.ggml.token_type", Meta::I32Array(types))
        .meta("tokenizer.ggml.scores", Meta::I32Array(vec![0; VOCAB]))
        .meta("tokenizer.ggml.bos_token_id", Meta::U32(BOS))
        .meta("tokenizer.ggml.eos_token_id", Meta::U32(EOS))
        .meta("tokenizer.ggml.unknown_token_id", Meta::U32(0))
        .meta("tokenizer.ggml.add_bos_token", Meta::Bool(true));
    if let Some(t) = chat_template {
        g = g.meta("tokenizer.chat_template", Meta::Str(t.into()));
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut tensor = |g: GgufWriter, name: String, rows: usize, cols: usize| {
        let data: Vec<u8> = (0..rows * cols)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let r = (state >> 40) as f32 / (1u64 << 24) as f32;
                let v = if rows == 1 {
                    1.0
                } else {
                    (r * 2.0 - 1.0) * 0.3
                };
                v.to_le_bytes()
            })
            .collect();
        let dims: Vec<u64> = if rows == 1 {
            vec![cols as u64]
        } else {
            vec![cols as u64, rows as u64]
        };
        g.tensor(&name, &dims, F32, data)
    };
    let head = HIDDEN / 2;
    g = tensor(g, "token_embd.weight".into(), VOCAB, HIDDEN);
    g = tensor(g, "output_norm.weight".into(), 1, HIDDEN);
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        g = tensor(g, n("attn_norm"), 1, HIDDEN);
        g = tensor(g, n("ffn_norm"), 1, HIDDEN);
        g = tensor(g, n("attn_q"), HIDDEN, HIDDEN);
        g = tensor(g, n("attn_k"), head, HIDDEN);
        g = tensor(g, n("attn_v"), head, HIDDEN);
        g = tensor(g, n("attn_output"), HIDDEN, HIDDEN);
        g = tensor(g, n("ffn_gate"), FFN, HIDDEN);
        g = tensor(g, n("ffn_up"), FFN, HIDDEN);
        g = tensor(g, n("ffn_down"), HIDDEN, FFN);
    }
    g
}
