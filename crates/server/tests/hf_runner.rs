//! `--model DIR`: the runner loads a Hugging Face folder (config.json, tokenizer.json,
//! model.safetensors) with its tokenizer, and the executor computes on it. The folder is
//! written here: random f32 weights of a tiny llama, and the tiny `tokenizer.json` fixture.

use std::path::PathBuf;

use cordial_engine::SeqStep;
use cordial_server::runner::{self, RunnerOptions};
use cordial_testkit::gguf_writer::temp_path;
use serde_json::json;

const HIDDEN: usize = 32;
const FFN: usize = 64;
const VOCAB: usize = 268;

fn write_folder() -> PathBuf {
    let dir = temp_path("hf-runner");
    std::fs::create_dir_all(&dir).unwrap();
    let fixtures =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
            .join("../tokenizer/tests/fixtures/hf-tiny");
    std::fs::copy(fixtures.join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
    let config = json!({
        "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 2,
        "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 128, "bos_token_id": 0, "eos_token_id": 1,
        "tie_word_embeddings": true
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
    ];
    for l in 0..2 {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        tensors.extend([
            (p("input_layernorm"), vec![HIDDEN]),
            (p("post_attention_layernorm"), vec![HIDDEN]),
            (p("self_attn.q_proj"), vec![HIDDEN, HIDDEN]),
            (p("self_attn.k_proj"), vec![HIDDEN / 2, HIDDEN]),
            (p("self_attn.v_proj"), vec![HIDDEN / 2, HIDDEN]),
            (p("self_attn.o_proj"), vec![HIDDEN, HIDDEN]),
            (p("mlp.gate_proj"), vec![FFN, HIDDEN]),
            (p("mlp.up_proj"), vec![FFN, HIDDEN]),
            (p("mlp.down_proj"), vec![HIDDEN, FFN]),
        ]);
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let start = data.len();
        for _ in 0..n {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let r = (state >> 40) as f32 / (1u64 << 24) as f32;
            let v = if shape.len() == 1 {
                1.0
            } else {
                (r * 2.0 - 1.0) * 0.3
            };
            data.extend(v.to_le_bytes());
        }
        header.insert(
            name,
            json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(&header);
    file.extend(&data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    dir
}

#[test]
fn runner_serves_a_hugging_face_folder() {
    let dir = write_folder();
    let opts = RunnerOptions {
        threads: 1,
        kv_cache_tokens: 256,
        ..RunnerOptions::new(cordial_model::Compute::best())
    };
    let mut loaded = runner::load(&dir, &opts).expect("load HF folder");
    std::fs::remove_dir_all(&dir).ok();
    assert_eq!(loaded.architecture, "llama");
    assert_eq!(loaded.vocab_size, VOCAB);
    assert_eq!(loaded.hidden_size, HIDDEN);
    assert_eq!(loaded.max_context, 128);
    let tok = loaded.tokenizer.clone();
    assert!(tok.adds_bos() && tok.is_eog(1));
    let prompt = tok.encode("hello world", true);
    assert_eq!(prompt[0], 0);
    // Greedy decoding, twice: same tokens (deterministic), finite logits.
    let mut runs = Vec::new();
    for _ in 0..2 {
        let table: Vec<u32> = (0..4).collect();
        let mut seq = prompt.clone();
        let mut logits = Vec::new();
        let mut start = 0;
        for _ in 0..5 {
            let step = SeqStep {
                tokens: &seq[start..],
                start_pos: start,
                block_table: &table,
                window_table: &[],
                want_logits: true,
                all_logits: false,
                replace: &[],
                lora: &[],
            };
            loaded
                .executor
                .forward(&[step], &mut logits)
                .expect("forward");
            assert_eq!(logits.len(), VOCAB);
            assert!(logits.iter().all(|v| v.is_finite()));
            let next = (0..VOCAB)
                .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
                .unwrap();
            start = seq.len();
            seq.push(next as u32);
        }
        runs.push(seq);
    }
    assert_eq!(runs[0], runs[1]);
}

#[test]
fn a_folder_without_weights_fails_naming_it() {
    let dir = temp_path("hf-empty");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"model_type":"llama","hidden_size":32,"intermediate_size":64,"num_attention_heads":2,"num_hidden_layers":1,"vocab_size":10}"#,
    )
    .unwrap();
    let opts = RunnerOptions {
        threads: 1,
        kv_cache_tokens: 64,
        ..RunnerOptions::new(cordial_model::Compute::best())
    };
    let err = runner::load(&dir, &opts).err().expect("fails").to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(err.contains("safetensors"), "{err}");
}
