//! The llama architecture: RMSNorm, RoPE, grouped-query attention over the paged KV cache,
//! SwiGLU, and tied embeddings when `output.weight` is absent. Llama 3's RoPE scaling comes as
//! per-dimension frequency factors (`rope_freqs.weight`, which llama.cpp's converter computes
//! from `rope_scaling`): θᵢ = pos · base^(−2i/d) / factorᵢ.
//!
//! The same graph, with a [`Flavor`], runs the architectures that differ from it only in
//! details (their files say which): QKV biases (qwen2), per-head RMSNorm of Q and K (qwen3),
//! NEOX-mode RoPE (qwen2, qwen3, phi3), and fused QKV / gate-up matrices (phi3).

use std::sync::Arc;

use super::{load_f32, Batch, ModelConfig, ModelError, Scratch, Weight};
use crate::backend::attention::{attention, AttnShape};
use crate::backend::matmul::{matmul, Acts, MatJob};
use crate::backend::ops::{
    add_rows, rmsnorm, rmsnorm_inplace, rope_neox, rope_norm, rope_table, rope_table_factors,
    silu_mul,
};
use crate::backend::pool::ThreadPool;
use crate::gguf::{GgufError, GgufFile};
use crate::kv::KvCache;
use crate::quant::{dequantize_row, Compute};

/// How RoPE pairs a head's elements (llama.cpp's rope types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeMode {
    /// Adjacent pairs (2i, 2i+1): llama GGUF files (their Q/K rows are permuted for it).
    Norm,
    /// Halves (i, i + d/2): qwen2, qwen3, phi3, gemma3, and Hugging Face llama weights.
    Neox,
}

/// What distinguishes an architecture run by this graph.
#[derive(Debug, Clone, Copy)]
pub struct Flavor {
    /// The GGUF metadata prefix (`general.architecture`).
    pub arch: &'static str,
    pub rope: RopeMode,
    /// `blk.N.attn_{q,k,v}.bias` are required (qwen2). They are used whenever present.
    pub qkv_bias: bool,
    /// `blk.N.attn_{q,k}_norm.weight` are required (qwen3).
    pub qk_norm: bool,
}

pub const LLAMA: Flavor = Flavor {
    arch: "llama",
    rope: RopeMode::Norm,
    qkv_bias: false,
    qk_norm: false,
};

/// The query, key and value projections: three matrices, or one fused `attn_qkv` (phi3).
enum Qkv {
    Split { wq: Weight, wk: Weight, wv: Weight },
    Fused(Weight),
}

/// The gate and up projections: two matrices, or one `ffn_up` holding gate then up (phi3).
enum GateUp {
    Split { gate: Weight, up: Weight },
    Fused(Weight),
}

struct Layer {
    attn_norm: Vec<f32>,
    qkv: Qkv,
    /// Biases of Q, K, V.
    bias: Option<[Vec<f32>; 3]>,
    /// Per-head RMSNorm weights of Q and K.
    qk_norm: Option<[Vec<f32>; 2]>,
    wo: Weight,
    ffn_norm: Vec<f32>,
    gate_up: GateUp,
    w_down: Weight,
}

pub struct Llama {
    file: Arc<GgufFile>,
    pub config: ModelConfig,
    flavor: Flavor,
    embed: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Weight,
    /// Llama 3 RoPE frequency factors (`rope_freqs.weight`), one per rotated pair.
    rope_factors: Option<Vec<f32>>,
}

/// A tensor that may be absent.
fn optional<T>(r: Result<T, ModelError>) -> Result<Option<T>, ModelError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ModelError::Gguf(GgufError::MissingTensor { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Llama {
    pub fn load(file: Arc<GgufFile>) -> Result<Llama, ModelError> {
        Self::load_flavor(file, LLAMA)
    }

    pub fn load_flavor(file: Arc<GgufFile>, flavor: Flavor) -> Result<Llama, ModelError> {
        let config = ModelConfig::from_gguf(&file, flavor.arch)?;
        let c = &config;
        let (d, qd, kvd) = (c.hidden, c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        let f = &*file;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            let b = |s: &str| format!("blk.{i}.{s}.bias");
            let qkv = match optional(Weight::load(f, &n("attn_qkv"), qd + 2 * kvd, d))? {
                Some(w) => Qkv::Fused(w),
                None => Qkv::Split {
                    wq: Weight::load(f, &n("attn_q"), qd, d)?,
                    wk: Weight::load(f, &n("attn_k"), kvd, d)?,
                    wv: Weight::load(f, &n("attn_v"), kvd, d)?,
                },
            };
            let bias = match optional(load_f32(f, &b("attn_q"), qd))? {
                Some(bq) => Some([
                    bq,
                    load_f32(f, &b("attn_k"), kvd)?,
                    load_f32(f, &b("attn_v"), kvd)?,
                ]),
                None if flavor.qkv_bias => {
                    return Err(ModelError::Invalid(format!(
                        "{}: `{}` is missing",
                        flavor.arch,
                        b("attn_q")
                    )))
                }
                None => None,
            };
            let qk_norm = if flavor.qk_norm {
                Some([
                    load_f32(f, &n("attn_q_norm"), c.head_dim)?,
                    load_f32(f, &n("attn_k_norm"), c.head_dim)?,
                ])
            } else {
                None
            };
            let gate_up = match optional(Weight::load(f, &n("ffn_gate"), c.ffn, d))? {
                Some(gate) => GateUp::Split {
                    gate,
                    up: Weight::load(f, &n("ffn_up"), c.ffn, d)?,
                },
                None => GateUp::Fused(Weight::load(f, &n("ffn_up"), 2 * c.ffn, d)?),
            };
            layers.push(Layer {
                attn_norm: load_f32(f, &n("attn_norm"), d)?,
                qkv,
                bias,
                qk_norm,
                wo: Weight::load(f, &n("attn_output"), d, qd)?,
                ffn_norm: load_f32(f, &n("ffn_norm"), d)?,
                gate_up,
                w_down: Weight::load(f, &n("ffn_down"), d, c.ffn)?,
            });
        }
        let embed = Weight::load(f, "token_embd.weight", c.vocab, d)?;
        let output = match f.tensor_info("output.weight") {
            Ok(_) => Weight::load(f, "output.weight", c.vocab, d)?,
            Err(GgufError::MissingTensor { .. }) => embed.clone(),
            Err(e) => return Err(e.into()),
        };
        let out_norm = load_f32(f, "output_norm.weight", d)?;
        let rope_factors = optional(load_f32(f, "rope_freqs.weight", c.rope_dims / 2))?;
        let mut output = output;
        output.repack(f);
        for l in &mut layers {
            let mut ws: Vec<&mut Weight> = vec![&mut l.wo, &mut l.w_down];
            match &mut l.qkv {
                Qkv::Split { wq, wk, wv } => ws.extend([wq, wk, wv]),
                Qkv::Fused(w) => ws.push(w),
            }
            match &mut l.gate_up {
                GateUp::Split { gate, up } => ws.extend([gate, up]),
                GateUp::Fused(w) => ws.push(w),
            }
            for w in ws {
                w.repack(f);
            }
        }
        Ok(Llama {
            file,
            config,
            flavor,
            embed,
            layers,
            out_norm,
            output,
            rope_factors,
        })
    }

    /// One forward step over the batch; appends a logits row per sequence that wants one.
    pub fn forward(
        &self,
        pool: &ThreadPool,
        cx: Compute,
        batch: &Batch<'_>,
        kv: &mut KvCache,
        s: &mut Scratch,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        let c = &self.config;
        let f = &*self.file;
        let places = batch.validate(c, kv)?;
        let t = places.len();
        let (d, hd) = (c.hidden, c.head_dim);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        s.prepare(t, c, pool.threads());
        // Embeddings (or caller-provided replacements).
        let mut ti = 0;
        for seq in &batch.seqs {
            for (i, &tok) in seq.tokens.iter().enumerate() {
                let row = &mut s.x[ti * d..(ti + 1) * d];
                let pos = seq.start_pos + i;
                match seq.replace.iter().find(|(p, _)| *p == pos) {
                    Some((_, e)) => row.copy_from_slice(e),
                    None => dequantize_row(self.embed.ty, self.embed.row(f, tok as usize), row),
                }
                ti += 1;
            }
        }
        for (ti, p) in places.iter().enumerate() {
            let (cs, sn) = (
                &mut s.cos[ti * hd / 2..(ti + 1) * hd / 2],
                &mut s.sin[ti * hd / 2..(ti + 1) * hd / 2],
            );
            match &self.rope_factors {
                None => rope_table(p.pos, c.rope_dims, c.rope_base, cs, sn),
                Some(fa) => rope_table_factors(p.pos, c.rope_dims, c.rope_base, fa, cs, sn),
            }
        }
        let shape = AttnShape::causal(c.n_heads, c.n_kv_heads, hd);
        for (l, layer) in self.layers.iter().enumerate() {
            rmsnorm(
                cx.isa,
                &s.x[..t * d],
                &layer.attn_norm,
                c.eps,
                &mut s.xn[..t * d],
            );
            {
                let x = Acts::quantized(cx.isa, &s.xn[..t * d], &mut s.xq, t);
                match &layer.qkv {
                    Qkv::Split { wq, wk, wv } => {
                        let mut jobs = [
                            wq.job(f, &mut s.q[..t * qd]),
                            wk.job(f, &mut s.k[..t * kvd]),
                            wv.job(f, &mut s.v[..t * kvd]),
                        ];
                        matmul(pool, cx, &x, &mut jobs);
                    }
                    Qkv::Fused(w) => {
                        let n = qd + 2 * kvd;
                        grow(&mut s.fused, t * n);
                        matmul(pool, cx, &x, &mut [w.job(f, &mut s.fused[..t * n])]);
                        for ti in 0..t {
                            let row = &s.fused[ti * n..(ti + 1) * n];
                            s.q[ti * qd..(ti + 1) * qd].copy_from_slice(&row[..qd]);
                            s.k[ti * kvd..(ti + 1) * kvd].copy_from_slice(&row[qd..qd + kvd]);
                            s.v[ti * kvd..(ti + 1) * kvd].copy_from_slice(&row[qd + kvd..]);
                        }
                    }
                }
            }
            if let Some([bq, bk, bv]) = &layer.bias {
                add_rows(&mut s.q[..t * qd], bq);
                add_rows(&mut s.k[..t * kvd], bk);
                add_rows(&mut s.v[..t * kvd], bv);
            }
            if let Some([nq, nk]) = &layer.qk_norm {
                rmsnorm_inplace(cx.isa, &mut s.q[..t * qd], nq, c.eps);
                rmsnorm_inplace(cx.isa, &mut s.k[..t * kvd], nk, c.eps);
            }
            for (ti, p) in places.iter().enumerate() {
                let (cs, sn) = (
                    &s.cos[ti * hd / 2..(ti + 1) * hd / 2],
                    &s.sin[ti * hd / 2..(ti + 1) * hd / 2],
                );
                let rope = match self.flavor.rope {
                    RopeMode::Norm => rope_norm,
                    RopeMode::Neox => rope_neox,
                };
                rope(&mut s.q[ti * qd..(ti + 1) * qd], hd, cs, sn);
                rope(&mut s.k[ti * kvd..(ti + 1) * kvd], hd, cs, sn);
                let slot = kv.slot(p.block_table, p.pos).expect("validated");
                kv.write(
                    l,
                    slot,
                    &s.k[ti * kvd..(ti + 1) * kvd],
                    &s.v[ti * kvd..(ti + 1) * kvd],
                );
            }
            attention(
                pool,
                cx.isa,
                kv,
                l,
                &shape,
                &places,
                &s.q[..t * qd],
                &mut s.attn[..t * qd],
                &mut s.attn_scratch,
            );
            {
                let x = Acts::quantized(cx.isa, &s.attn[..t * qd], &mut s.xq, t);
                matmul(pool, cx, &x, &mut [layer.wo.job(f, &mut s.xn[..t * d])]);
            }
            add_rows(&mut s.x[..t * d], &s.xn[..t * d]);
            rmsnorm(
                cx.isa,
                &s.x[..t * d],
                &layer.ffn_norm,
                c.eps,
                &mut s.xn[..t * d],
            );
            {
                let x = Acts::quantized(cx.isa, &s.xn[..t * d], &mut s.xq, t);
                match &layer.gate_up {
                    GateUp::Split { gate, up } => {
                        let mut jobs: [MatJob<'_>; 2] = [
                            gate.job(f, &mut s.gate[..t * c.ffn]),
                            up.job(f, &mut s.up[..t * c.ffn]),
                        ];
                        matmul(pool, cx, &x, &mut jobs);
                    }
                    GateUp::Fused(w) => {
                        let n = 2 * c.ffn;
                        grow(&mut s.fused, t * n);
                        matmul(pool, cx, &x, &mut [w.job(f, &mut s.fused[..t * n])]);
                        for ti in 0..t {
                            let row = &s.fused[ti * n..(ti + 1) * n];
                            s.gate[ti * c.ffn..(ti + 1) * c.ffn].copy_from_slice(&row[..c.ffn]);
                            s.up[ti * c.ffn..(ti + 1) * c.ffn].copy_from_slice(&row[c.ffn..]);
                        }
                    }
                }
            }
            silu_mul(cx.isa, &mut s.gate[..t * c.ffn], &s.up[..t * c.ffn]);
            {
                let x = Acts::quantized(cx.isa, &s.gate[..t * c.ffn], &mut s.xq, t);
                matmul(pool, cx, &x, &mut [layer.w_down.job(f, &mut s.xn[..t * d])]);
            }
            add_rows(&mut s.x[..t * d], &s.xn[..t * d]);
        }
        super::output_logits(
            pool,
            cx,
            f,
            batch,
            s,
            &self.out_norm,
            c.eps,
            &self.output,
            0.0,
            logits,
        );
        Ok(())
    }
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}
