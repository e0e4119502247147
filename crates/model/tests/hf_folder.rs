//! Hugging Face folders (`config.json` + `*.safetensors` in f32/f16/bf16): the tiny models of
//! `common/tiny.rs` written as Hugging Face checkpoints (HF tensor names, un-permuted llama
//! Q/K rows, gemma norms stored as `w - 1`), loaded by `cordial_model::hf`, must compute what
//! the float64 reference computes on the same (dtype-rounded) weights.

mod common;

use std::sync::Arc;

use common::tiny::*;
use common::{log_softmax, Harness};
use cordial_model::{hf, Compute, Isa, Model};
use cordial_testkit::gguf_writer::temp_path;
use serde_json::json;

#[derive(Clone, Copy, Debug)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
        }
    }
    fn round(self, v: f32) -> f32 {
        match self {
            Dtype::F32 => v,
            Dtype::F16 => half::f16::from_f32(v).to_f32(),
            Dtype::Bf16 => half::bf16::from_f32(v).to_f32(),
        }
    }
    fn bytes(self, v: f32) -> Vec<u8> {
        match self {
            Dtype::F32 => v.to_le_bytes().to_vec(),
            Dtype::F16 => half::f16::from_f32(v).to_le_bytes().to_vec(),
            Dtype::Bf16 => half::bf16::from_f32(v).to_le_bytes().to_vec(),
        }
    }
}

/// The Hugging Face name of a GGUF tensor.
fn hf_name(spec: Spec, gguf: &str) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.").expect("layer tensor");
    let (layer, what) = rest.split_once('.').unwrap();
    let (stem, kind) = what.rsplit_once('.').unwrap();
    let hf = match stem {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_qkv" => "self_attn.qkv_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_norm" if spec.gemma => "pre_feedforward_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "post_attention_norm" => "post_attention_layernorm",
        "post_ffw_norm" => "post_feedforward_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" if spec.fused => "mlp.gate_up_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        other => panic!("no HF name for {other}"),
    };
    format!("model.layers.{layer}.{hf}.{kind}")
}

/// Writes the tiny model `t` as a Hugging Face folder in `dtype`; returns the folder and the
/// tensors the loader must end up with (the HF values rounded to `dtype`, mapped back).
fn write_folder(
    spec: Spec,
    t: &Mats,
    dtype: Dtype,
    model_type: &str,
) -> (std::path::PathBuf, Mats) {
    let dir = temp_path(&format!("hf-{model_type}-{}", dtype.name()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    let mut expected = Mats::new();
    let mut names: Vec<&String> = t.keys().collect();
    names.sort();
    for name in names {
        if name == "rope_freqs.weight" {
            continue;
        }
        let m = &t[name];
        let hd = spec.head_dim;
        let heads = if name.ends_with("attn_q.weight") {
            Some(HEADS)
        } else if name.ends_with("attn_k.weight") {
            Some(KV_HEADS)
        } else {
            None
        };
        // GGUF row r of head h holds HF row perm(r): 2i ← i, 2i+1 ← i + hd/2.
        let hf_row = |r: usize| -> usize {
            match (spec.arch, heads) {
                ("llama", Some(_)) => {
                    let (h, i) = (r / hd, r % hd);
                    h * hd + if i % 2 == 0 { i / 2 } else { i / 2 + hd / 2 }
                }
                _ => r,
            }
        };
        let is_norm = name.contains("norm");
        let mut hf_vals = vec![0.0f32; m.rows * m.cols];
        for r in 0..m.rows {
            for c in 0..m.cols {
                let mut v = m.w[r * m.cols + c] as f32;
                if spec.gemma && is_norm {
                    v -= 1.0;
                }
                hf_vals[hf_row(r) * m.cols + c] = dtype.round(v);
            }
        }
        let mut back = vec![0.0f64; m.rows * m.cols];
        for r in 0..m.rows {
            for c in 0..m.cols {
                let mut v = hf_vals[hf_row(r) * m.cols + c];
                if spec.gemma && is_norm {
                    v += 1.0;
                }
                back[r * m.cols + c] = v as f64;
            }
        }
        expected.insert(
            name.clone(),
            Mat {
                rows: m.rows,
                cols: m.cols,
                w: back,
            },
        );
        let shape = if m.rows == 1 {
            vec![m.cols]
        } else {
            vec![m.rows, m.cols]
        };
        let start = data.len();
        hf_vals.iter().for_each(|&v| data.extend(dtype.bytes(v)));
        header.insert(
            hf_name(spec, name),
            json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend(&header);
    file.extend(&data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    let mut config = json!({
        "model_type": model_type,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": spec.head_dim,
        "num_hidden_layers": LAYERS,
        "vocab_size": VOCAB,
        "rms_norm_eps": EPS,
        "rope_theta": if spec.gemma { GLOBAL_BASE } else { ROPE_BASE },
        "max_position_embeddings": 256,
        "tie_word_embeddings": spec.tied,
    });
    if spec.gemma {
        let c = config.as_object_mut().unwrap();
        c.insert("sliding_window".into(), json!(WINDOW));
        c.insert("sliding_window_pattern".into(), json!(PATTERN));
        c.insert("rope_local_base_freq".into(), json!(ROPE_BASE));
        c.insert("final_logit_softcapping".into(), json!(FINAL_CAP));
        c.insert("attn_logit_softcapping".into(), json!(ATTN_CAP));
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    (dir, expected)
}

fn check(spec: Spec, model_type: &str) {
    let tiny = build(spec, 21);
    for dtype in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
        let (dir, expected) = write_folder(spec, &tiny.t, dtype, model_type);
        assert!(hf::is_hf_dir(&dir));
        let file = hf::load_dir(&dir).expect("load HF folder");
        std::fs::remove_dir_all(&dir).ok();
        let model = Model::load(Arc::new(file)).expect("model from HF folder");
        let cx = Compute::reference(Isa::best_available());
        let toks = tokens();
        let want = reference(spec, &expected, &toks);
        let mut h = Harness::new(model, cx, 1, 64);
        let got = h.score(&toks);
        let mut err = 0.0f64;
        for (g, w) in got.iter().zip(&want) {
            for (a, b) in log_softmax(g).iter().zip(w) {
                err = err.max((*a as f64 - b).abs());
            }
        }
        eprintln!("{model_type} {dtype:?}: max |Δ logprob| {err:.2e}");
        assert!(err < 2e-3, "{model_type} {dtype:?}: {err}");
    }
}

#[test]
fn llama_folder_matches_reference() {
    check(
        Spec {
            tied: false,
            ..BASE
        },
        "llama",
    );
}

#[test]
fn qwen2_folder_matches_reference() {
    check(
        Spec {
            arch: "qwen2",
            rope: Rope::Neox,
            qkv_bias: true,
            ..BASE
        },
        "qwen2",
    );
}

#[test]
fn phi3_folder_matches_reference() {
    check(
        Spec {
            arch: "phi3",
            rope: Rope::Neox,
            fused: true,
            tied: false,
            ..BASE
        },
        "phi3",
    );
}

#[test]
fn gemma3_folder_matches_reference() {
    check(
        Spec {
            arch: "gemma3",
            rope: Rope::Neox,
            gemma: true,
            head_dim: 32,
            ..BASE
        },
        "gemma3_text",
    );
}

#[test]
fn unsupported_model_type_is_named() {
    let dir = temp_path("hf-mamba");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let err = hf::load_dir(&dir).err().expect("fails").to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        err.contains("mamba") && err.contains("qwen2") && err.contains("gemma3"),
        "{err}"
    );
}
