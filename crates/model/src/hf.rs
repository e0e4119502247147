//! Hugging Face model folders (`config.json` + `*.safetensors`, f32/f16/bf16), converted at
//! load into the same in-memory form as a GGUF file ([`GgufFile::from_parts`]), the way
//! llama.cpp's converter would write it, so every architecture loads them unchanged:
//! - `config.json` becomes `{arch}.*` metadata (`model_type`: llama, mistral, qwen2, qwen3, phi3,
//!   gemma3 / gemma3_text; anything else is an error naming it and the supported list);
//! - tensors are renamed to GGUF names (`model.layers.N.self_attn.q_proj.weight` →
//!   `blk.N.attn_q.weight`, …); unknown tensors (vision towers, rotary caches) are skipped;
//! - llama/mistral Q and K rows are permuted for NORM-mode RoPE (llama.cpp's `permute`);
//! - gemma norms are stored as `w` meaning `1 + w`: 1 is added;
//! - Llama 3 `rope_scaling` becomes per-dimension factors (`rope_freqs.weight`);
//! - bf16 is widened to f32 (exact); f32 and f16 stay as they are; norms and biases are f32.
//!
//! The weights are copied into memory (bf16 doubled): meant for small models.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::arch::ModelError;
use crate::gguf::{GgufFile, Value};
use crate::quant::GgmlType;

/// Whether `path` is a Hugging Face model folder (a directory with `config.json`).
pub fn is_hf_dir(path: &Path) -> bool {
    path.is_dir() && path.join("config.json").is_file()
}

fn invalid(msg: impl Into<String>) -> ModelError {
    ModelError::Invalid(msg.into())
}

fn read_json(path: &Path) -> Result<Json, ModelError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| invalid(format!("{}: {e}", path.display())))
}

/// Loads a Hugging Face folder as an in-memory GGUF model.
pub fn load_dir(dir: &Path) -> Result<GgufFile, ModelError> {
    let mut config = read_json(&dir.join("config.json"))?;
    let mut model_type = config["model_type"].as_str().unwrap_or("").to_string();
    if model_type == "gemma3" && config.get("text_config").is_some() {
        config = config["text_config"].clone();
        model_type = "gemma3_text".into();
    }
    let arch = match crate::arch::spec::by_hf_model_type(&model_type) {
        Some(spec) => spec.gguf,
        None => {
            return Err(ModelError::UnsupportedArchitecture(format!(
                "{model_type} (Hugging Face model_type; supported: {})",
                crate::arch::spec::hf_model_types().join(", ")
            )))
        }
    };
    let c = Config(&config);
    let hidden = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    let kv_heads = c.opt_usize("num_key_value_heads").unwrap_or(heads);
    let head_dim = c.opt_usize("head_dim").unwrap_or(hidden / heads.max(1));
    let layers = c.usize("num_hidden_layers")?;
    let mut meta = BTreeMap::new();
    let mut put = |k: &str, v: Value| {
        meta.insert(format!("{arch}.{k}"), v);
    };
    put("block_count", Value::U64(layers as u64));
    put("embedding_length", Value::U64(hidden as u64));
    put(
        "feed_forward_length",
        Value::U64(c.usize("intermediate_size")? as u64),
    );
    put("attention.head_count", Value::U64(heads as u64));
    put("attention.head_count_kv", Value::U64(kv_heads as u64));
    put("attention.key_length", Value::U64(head_dim as u64));
    put("vocab_size", Value::U64(c.usize("vocab_size")? as u64));
    put(
        "context_length",
        Value::U64(c.opt_usize("max_position_embeddings").unwrap_or(4096) as u64),
    );
    put(
        "attention.layer_norm_rms_epsilon",
        Value::F32(c.opt_f64("rms_norm_eps").unwrap_or(1e-6) as f32),
    );
    let theta = c.opt_f64("rope_theta").unwrap_or(10000.0);
    put("rope.freq_base", Value::F32(theta as f32));
    let scaling = config.get("rope_scaling").filter(|v| !v.is_null());
    let mut rope_factors = None;
    if let Some(s) = scaling {
        let kind = s["rope_type"].as_str().or(s["type"].as_str()).unwrap_or("");
        let factor = s["factor"].as_f64().unwrap_or(1.0);
        match (arch, kind) {
            ("llama", "llama3") => {
                rope_factors = Some(llama3_factors(s, theta, head_dim, factor)?);
            }
            ("gemma3", "linear") => put("rope.scaling.factor", Value::F32(factor as f32)),
            _ => {
                return Err(invalid(format!(
                    "{model_type}: rope_scaling type `{kind}` is not supported"
                )))
            }
        }
    }
    if arch == "gemma3" {
        put(
            "attention.sliding_window",
            Value::U64(c.opt_usize("sliding_window").unwrap_or(0) as u64),
        );
        put(
            "attention.sliding_window_pattern",
            Value::U64(gemma_pattern(&config) as u64),
        );
        put(
            "rope.freq_base_swa",
            Value::F32(c.opt_f64("rope_local_base_freq").unwrap_or(10000.0) as f32),
        );
        for key in ["final_logit_softcapping", "attn_logit_softcapping"] {
            if let Some(v) = c.opt_f64(key) {
                put(key, Value::F32(v as f32));
            }
        }
    }
    meta.insert("general.architecture".into(), Value::String(arch.into()));
    meta.insert(
        "general.name".into(),
        Value::String(
            dir.file_name()
                .map_or("model".into(), |n| n.to_string_lossy().into_owned()),
        ),
    );

    let conv = Convert {
        heads,
        kv_heads,
        permute: arch == "llama",
        gemma: arch == "gemma3",
    };
    let mut parts = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| invalid(format!("cannot list {}: {e}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(invalid(format!(
            "{} has no *.safetensors weights",
            dir.display()
        )));
    }
    for f in &files {
        read_safetensors(f, &conv, &mut parts)?;
    }
    if let Some(fa) = rope_factors {
        let bytes = fa.iter().flat_map(|v| v.to_le_bytes()).collect();
        parts.push((
            "rope_freqs.weight".into(),
            vec![fa.len() as u64],
            GgmlType::F32,
            bytes,
        ));
    }
    GgufFile::from_parts(dir.to_path_buf(), meta, parts).map_err(ModelError::from)
}

struct Config<'a>(&'a Json);

impl Config<'_> {
    fn opt_usize(&self, k: &str) -> Option<usize> {
        self.0.get(k).and_then(Json::as_u64).map(|v| v as usize)
    }
    fn usize(&self, k: &str) -> Result<usize, ModelError> {
        self.opt_usize(k)
            .ok_or_else(|| invalid(format!("config.json: `{k}` is missing or not an integer")))
    }
    fn opt_f64(&self, k: &str) -> Option<f64> {
        self.0.get(k).and_then(Json::as_f64)
    }
}

/// Every `pattern`-th layer is global: from `sliding_window_pattern`, or the period of
/// `layer_types` (the first `full_attention` layer's index + 1); 6 otherwise.
fn gemma_pattern(config: &Json) -> usize {
    if let Some(p) = config["sliding_window_pattern"].as_u64() {
        return p as usize;
    }
    if let Some(types) = config["layer_types"].as_array() {
        if let Some(i) = types.iter().position(|t| t == "full_attention") {
            return i + 1;
        }
    }
    6
}

/// Llama 3 rope scaling as per-dimension factors (what llama.cpp's converter stores).
fn llama3_factors(
    s: &Json,
    theta: f64,
    head_dim: usize,
    factor: f64,
) -> Result<Vec<f32>, ModelError> {
    let low = s["low_freq_factor"].as_f64().unwrap_or(1.0);
    let high = s["high_freq_factor"].as_f64().unwrap_or(4.0);
    let old = s["original_max_position_embeddings"]
        .as_f64()
        .unwrap_or(8192.0);
    if high <= low {
        return Err(invalid(
            "rope_scaling: high_freq_factor must exceed low_freq_factor",
        ));
    }
    let (low_wl, high_wl) = (old / low, old / high);
    Ok((0..head_dim / 2)
        .map(|i| {
            let freq = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
            let wl = 2.0 * std::f64::consts::PI / freq;
            let f = if wl < high_wl {
                1.0
            } else if wl > low_wl {
                factor
            } else {
                let smooth = (old / wl - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect())
}

struct Convert {
    heads: usize,
    kv_heads: usize,
    permute: bool,
    gemma: bool,
}

impl Convert {
    /// The GGUF name of a Hugging Face tensor, or None to skip it.
    fn name(&self, hf: &str) -> Option<String> {
        gguf_tensor_name(hf, self.gemma)
    }
}

/// The GGUF name of a Hugging Face tensor (`model.layers.3.self_attn.q_proj.weight` →
/// `blk.3.attn_q.weight`), or None for tensors the models do not use. `gemma`: the norm names
/// of gemma's sandwich layers. (Also names the targets of PEFT LoRA adapters.)
pub(crate) fn gguf_tensor_name(hf: &str, gemma: bool) -> Option<String> {
    let hf = hf.strip_prefix("language_model.").unwrap_or(hf);
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "lm_head.weight" => Some("output.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, what) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (stem, kind) = what.rsplit_once('.')?;
    let gguf = match stem {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.qkv_proj" => "attn_qkv",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" if gemma => "post_attention_norm",
        "post_attention_layernorm" => "ffn_norm",
        "pre_feedforward_layernorm" => "ffn_norm",
        "post_feedforward_layernorm" => "post_ffw_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" | "mlp.gate_up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

/// Reads one safetensors file's tensors into `parts` (converted, renamed).
fn read_safetensors(
    path: &Path,
    conv: &Convert,
    parts: &mut Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
) -> Result<(), ModelError> {
    let bad = |why: String| invalid(format!("{}: {why}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let tensors = crate::safetensors::tensors(&bytes).map_err(bad)?;
    for t in &tensors {
        let hf_name = &t.name;
        let Some(name) = conv.name(hf_name) else {
            continue;
        };
        t.check()
            .map_err(|e| bad(format!("tensor `{hf_name}`: {e}")))?;
        let dtype = t.dtype.as_str();
        let shape: Vec<u64> = t.shape.iter().map(|&v| v as u64).collect();
        let raw = t.data;
        let is_vector = shape.len() == 1;
        let norm = name.contains("norm");
        let mut f32s: Option<Vec<f32>> = None;
        if is_vector || dtype == "BF16" {
            let mut v = t.to_f32();
            if norm && conv.gemma {
                v.iter_mut().for_each(|x| *x += 1.0);
            }
            f32s = Some(v);
        }
        let mut dims: Vec<u64> = shape.iter().rev().copied().collect();
        if dims.is_empty() {
            dims.push(1);
        }
        let (ty, mut data) = match f32s {
            Some(v) => (
                GgmlType::F32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
            ),
            None if dtype == "F16" => (GgmlType::F16, raw.to_vec()),
            None => (GgmlType::F32, raw.to_vec()),
        };
        if conv.permute && shape.len() == 2 {
            let heads = if name.ends_with("attn_q.weight") {
                Some(conv.heads)
            } else if name.ends_with("attn_k.weight") {
                Some(conv.kv_heads)
            } else {
                None
            };
            if let Some(h) = heads {
                data = permute_rows(
                    &data,
                    shape[0] as usize,
                    h,
                    ty.block_bytes() * shape[1] as usize,
                );
            }
        }
        parts.push((name, dims, ty, data));
    }
    Ok(())
}

/// llama.cpp's `permute` of Q/K rows for NORM-mode RoPE: within each head, row `2i` takes
/// row `i` and row `2i+1` takes row `i + head_dim/2`.
fn permute_rows(data: &[u8], rows: usize, heads: usize, row_bytes: usize) -> Vec<u8> {
    let hd = rows / heads.max(1);
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for i in 0..hd / 2 {
            for (dst, src) in [(2 * i, i), (2 * i + 1, i + hd / 2)] {
                let (d, s) = (h * hd + dst, h * hd + src);
                out[d * row_bytes..(d + 1) * row_bytes]
                    .copy_from_slice(&data[s * row_bytes..(s + 1) * row_bytes]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama3_factors_follow_the_three_bands() {
        // Llama 3.1's settings: factor 8, low 1, high 4, original context 8192, θ 500000.
        let s = serde_json::json!({"factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let f = llama3_factors(&s, 500000.0, 128, 8.0).unwrap();
        assert_eq!(f.len(), 64);
        // High frequencies (wavelength < 8192/4) keep 1, low ones (> 8192) get the factor,
        // and the band between is smooth and monotonic.
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        let mid: Vec<f32> = f.iter().copied().filter(|&x| x > 1.0 && x < 8.0).collect();
        assert!(!mid.is_empty());
    }

    #[test]
    fn permutation_interleaves_head_halves() {
        // 2 heads of 4 rows, one byte per row.
        let rows: Vec<u8> = (0..8).collect();
        assert_eq!(permute_rows(&rows, 8, 2, 1), [0, 2, 1, 3, 4, 6, 5, 7]);
    }
}
