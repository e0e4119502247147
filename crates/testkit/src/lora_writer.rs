//! Test LoRA adapters made offline from a fixed seed, in both file forms cordial reads: a
//! llama.cpp GGUF adapter and a PEFT folder (`adapter_config.json` +
//! `adapter_model.safetensors`), written from the SAME arrays. `scripts/make-lora-golden.py`
//! has llama.cpp read the GGUF form this writes and records [`LoraSpec::data_digest`] of it,
//! so the golden test can check its fixture was made from the same arrays.
//!
//! The values: a SplitMix64 stream from `seed`; value `k` is
//! `((next() >> 40) / 2^24 · 2 − 1)` (exact in f32) times `a_scale` for `A` and `b_scale` for
//! `B`. Order: per layer, per module of `modules` (Hugging Face names), `A` (rank × n_in,
//! row-major) then `B` (n_out × rank, row-major, Hugging Face row order). With `f16`, each
//! value is rounded to f16 (both forms store the same bits).
//!
//! The GGUF form is what llama.cpp's `convert_lora_to_gguf.py` makes of the PEFT form: tensors
//! `blk.N.<proj>.weight.lora_a` (ggml dims `[n_in, rank]`) / `.lora_b` (`[rank, n_out]`), and,
//! for a llama base, `B`'s rows of q and k permuted for NORM RoPE (within each head, row `2i`
//! takes row `i`, row `2i+1` row `i + head_dim/2`).

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::gguf_writer::{GgufWriter, Meta};

/// The shape of the base model and the adapter to draw.
#[derive(Debug, Clone)]
pub struct LoraSpec {
    pub arch: String,
    pub layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rank: usize,
    pub alpha: f32,
    pub seed: u64,
    pub a_scale: f32,
    pub b_scale: f32,
    pub f16: bool,
    /// Hugging Face module names, in drawing order (`q_proj`, ..., `down_proj`).
    pub modules: Vec<&'static str>,
}

/// Every module a llama-style layer has.
pub const ALL_MODULES: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// One adapted matrix.
#[derive(Debug, Clone)]
pub struct LoraTensor {
    pub layer: usize,
    pub module: &'static str,
    /// `model.layers.N.self_attn.q_proj` etc.
    pub hf_path: String,
    /// `blk.N.attn_q.weight` etc.
    pub gguf_name: String,
    pub n_out: usize,
    pub n_in: usize,
    /// rank × n_in.
    pub a: Vec<f32>,
    /// n_out × rank, Hugging Face row order.
    pub b: Vec<f32>,
}

fn f16_bits(v: f32) -> u16 {
    half::f16::from_f32(v).to_bits()
}

impl LoraSpec {
    /// A llama-shaped spec adapting every module, rank 8, alpha 16, f32.
    #[allow(clippy::too_many_arguments)]
    pub fn llama(
        layers: usize,
        hidden: usize,
        ffn: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        seed: u64,
    ) -> LoraSpec {
        LoraSpec {
            arch: "llama".into(),
            layers,
            hidden,
            ffn,
            heads,
            kv_heads,
            head_dim,
            rank: 8,
            alpha: 16.0,
            seed,
            a_scale: 0.05,
            b_scale: 0.05,
            f16: false,
            modules: ALL_MODULES.to_vec(),
        }
    }

    fn dims(&self, module: &str) -> (usize, usize, &'static str, &'static str) {
        let (q, kv) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        match module {
            "q_proj" => (q, self.hidden, "self_attn", "attn_q"),
            "k_proj" => (kv, self.hidden, "self_attn", "attn_k"),
            "v_proj" => (kv, self.hidden, "self_attn", "attn_v"),
            "o_proj" => (self.hidden, q, "self_attn", "attn_output"),
            "gate_proj" => (self.ffn, self.hidden, "mlp", "ffn_gate"),
            "up_proj" => (self.ffn, self.hidden, "mlp", "ffn_up"),
            "down_proj" => (self.hidden, self.ffn, "mlp", "ffn_down"),
            other => panic!("unknown module {other}"),
        }
    }

    /// The adapter's matrices, drawn in order (values already rounded to f16 with `f16`).
    pub fn tensors(&self) -> Vec<LoraTensor> {
        let mut s = crate::rng::SplitMix64(self.seed);
        let round = |v: f32| {
            if self.f16 {
                half::f16::from_f32(v).to_f32()
            } else {
                v
            }
        };
        let mut out = Vec::new();
        for layer in 0..self.layers {
            for &module in &self.modules {
                let (n_out, n_in, block, gguf) = self.dims(module);
                let a = (0..self.rank * n_in)
                    .map(|_| round(s.uniform() * self.a_scale))
                    .collect();
                let b = (0..n_out * self.rank)
                    .map(|_| round(s.uniform() * self.b_scale))
                    .collect();
                out.push(LoraTensor {
                    layer,
                    module,
                    hf_path: format!("model.layers.{layer}.{block}.{module}"),
                    gguf_name: format!("blk.{layer}.{gguf}.weight"),
                    n_out,
                    n_in,
                    a,
                    b,
                });
            }
        }
        out
    }

    /// `B` in GGUF row order (llama: q and k rows permuted within each head).
    fn gguf_b(&self, t: &LoraTensor) -> Vec<f32> {
        let heads = match (self.arch.as_str(), t.module) {
            ("llama", "q_proj") => self.heads,
            ("llama", "k_proj") => self.kv_heads,
            _ => return t.b.clone(),
        };
        let hd = t.n_out / heads;
        let r = self.rank;
        (0..t.n_out)
            .flat_map(|d| {
                let (h, i) = (d / hd, d % hd);
                let src = h * hd + if i % 2 == 0 { i / 2 } else { i / 2 + hd / 2 };
                t.b[src * r..(src + 1) * r].iter().copied()
            })
            .collect()
    }

    fn bytes(&self, v: &[f32]) -> Vec<u8> {
        if self.f16 {
            v.iter().flat_map(|x| f16_bits(*x).to_le_bytes()).collect()
        } else {
            v.iter().flat_map(|x| x.to_le_bytes()).collect()
        }
    }

    /// The GGUF tensors: (name, ggml dims, data), in file order.
    fn gguf_tensors(&self) -> Vec<(String, Vec<u64>, Vec<u8>)> {
        let mut out = Vec::new();
        for t in self.tensors() {
            let r = self.rank as u64;
            out.push((
                format!("{}.lora_a", t.gguf_name),
                vec![t.n_in as u64, r],
                self.bytes(&t.a),
            ));
            out.push((
                format!("{}.lora_b", t.gguf_name),
                vec![r, t.n_out as u64],
                self.bytes(&self.gguf_b(&t)),
            ));
        }
        out
    }

    /// The llama.cpp GGUF adapter.
    pub fn gguf_writer(&self) -> GgufWriter {
        let ty = if self.f16 { 1 } else { 0 };
        let mut w = GgufWriter::new()
            .meta("general.architecture", Meta::Str(self.arch.clone()))
            .meta("general.type", Meta::Str("adapter".into()))
            .meta("adapter.type", Meta::Str("lora".into()))
            .meta("adapter.lora.alpha", Meta::F32(self.alpha));
        for (name, dims, data) in self.gguf_tensors() {
            w = w.tensor(&name, &dims, ty, data);
        }
        w
    }

    pub fn write_gguf(&self, path: &Path) -> std::io::Result<()> {
        self.gguf_writer().write(path)
    }

    /// SHA-256 (hex) over the GGUF tensors in file order: each name's bytes, then its data.
    /// `scripts/make-lora-golden.py` records the same digest of the file llama.cpp read.
    pub fn data_digest(&self) -> String {
        let mut h = Sha256::new();
        for (name, _, data) in self.gguf_tensors() {
            h.update(name.as_bytes());
            h.update(&data);
        }
        h.finalize().iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// `adapter_config.json` of the PEFT form (with `extra` keys merged in as raw JSON
    /// members, e.g. `"use_dora": true`).
    pub fn peft_config(&self, extra: &str) -> String {
        let mods: Vec<String> = self.modules.iter().map(|m| format!("\"{m}\"")).collect();
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!(", {extra}")
        };
        format!(
            "{{\"peft_type\": \"LORA\", \"task_type\": \"CAUSAL_LM\", \"r\": {}, \
             \"lora_alpha\": {}, \"target_modules\": [{}], \"bias\": \"none\", \
             \"lora_dropout\": 0.0, \"fan_in_fan_out\": false, \"use_rslora\": false, \
             \"use_dora\": false, \"modules_to_save\": null, \"rank_pattern\": {{}}, \
             \"alpha_pattern\": {{}}, \"base_model_name_or_path\": \"test-base\"{extra}}}",
            self.rank,
            self.alpha,
            mods.join(", ")
        )
    }

    /// The PEFT `adapter_model.safetensors` bytes.
    pub fn safetensors(&self) -> Vec<u8> {
        let dtype = if self.f16 { "F16" } else { "F32" };
        let mut header = String::from("{\"__metadata__\": {\"format\": \"pt\"}");
        let mut data = Vec::new();
        for t in self.tensors() {
            let r = self.rank;
            for (half, shape, values) in [("A", [r, t.n_in], &t.a), ("B", [t.n_out, r], &t.b)] {
                let bytes = self.bytes(values);
                let _ = write!(
                    header,
                    ", \"base_model.model.{}.lora_{half}.weight\": {{\"dtype\": \"{dtype}\", \
                     \"shape\": [{}, {}], \"data_offsets\": [{}, {}]}}",
                    t.hf_path,
                    shape[0],
                    shape[1],
                    data.len(),
                    data.len() + bytes.len()
                );
                data.extend_from_slice(&bytes);
            }
        }
        header.push('}');
        while !header.len().is_multiple_of(8) {
            header.push(' ');
        }
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&data);
        out
    }

    /// Writes the PEFT folder `dir` (created).
    pub fn write_peft(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("adapter_config.json"), self.peft_config(""))?;
        std::fs::write(dir.join("adapter_model.safetensors"), self.safetensors())
    }
}
