//! The gemma3 architecture (llama.cpp's `gemma3` graph):
//! - token embeddings scaled by √hidden (replacement embeddings are not scaled);
//! - per layer: RMSNorm → Q/K/V → per-head RMSNorm of Q and K (QK-norm) → RoPE in NEOX mode →
//!   attention scaled by 1/√head_dim (1/√(hidden/heads) for the 62-layer 27B) → output →
//!   RMSNorm (post-attention norm) → residual; RMSNorm → GELU-tanh(gate)·up → down → RMSNorm
//!   (post-FFN norm) → residual;
//! - sliding-window layers (every layer but each `pattern`-th, default 6) see the last
//!   `attention.sliding_window` positions and use RoPE base 10000; the global layers use
//!   `rope.freq_base` and the linear `rope.scaling.factor` when present;
//! - final RMSNorm, the output matrix (tied to the embeddings when absent) and, when the file
//!   sets them, final-logit and attention-logit soft-capping.
//!
//! Norm weights are used as stored: the GGUF converter already folded gemma's `1 + w`.

use std::sync::Arc;

use super::{embed, load_f32, output_logits, Batch, ModelConfig, ModelError, Scratch, Weight};
use crate::backend::attention::{attention, AttnShape};
use crate::backend::matmul::{matmul, Acts};
use crate::backend::ops::{
    add_rows, gelu_mul, rmsnorm, rmsnorm_inplace, rope_neox, rope_table_scaled,
};
use crate::backend::pool::ThreadPool;
use crate::gguf::{GgufError, GgufFile};
use crate::kv::KvCache;
use crate::quant::Compute;

/// RoPE base of the sliding-window layers (llama.cpp's `rope_freq_base_train_swa`) unless
/// `rope.freq_base_swa` says otherwise.
const SWA_ROPE_BASE: f32 = 10000.0;
/// Every this-many-th layer is global (llama.cpp's `set_swa_pattern(6)`).
const DEFAULT_PATTERN: usize = 6;

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    q_norm: Vec<f32>,
    k_norm: Vec<f32>,
    wo: Weight,
    post_attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
    post_ffn_norm: Vec<f32>,
    /// Sliding-window (local) layer.
    local: bool,
}

pub struct Gemma3 {
    file: Arc<GgufFile>,
    pub config: ModelConfig,
    embed: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Weight,
    window: usize,
    rope_scale: f32,
    swa_base: f32,
    attn_scale: f32,
    attn_softcap: f32,
    final_softcap: f32,
}

impl Gemma3 {
    pub fn load(file: Arc<GgufFile>) -> Result<Gemma3, ModelError> {
        let config = ModelConfig::from_gguf(&file, "gemma3")?;
        let c = &config;
        let f = &*file;
        let opt_f32 = |k: &str| f.get_f32(&format!("gemma3.{k}")).ok();
        let window = f.get_u64("gemma3.attention.sliding_window")? as usize;
        let pattern = f
            .get_u64("gemma3.attention.sliding_window_pattern")
            .map(|v| v as usize)
            .unwrap_or(DEFAULT_PATTERN);
        if pattern == 0 {
            return Err(ModelError::Invalid(
                "gemma3.attention.sliding_window_pattern is 0".into(),
            ));
        }
        let rope_scale = match opt_f32("rope.scaling.factor") {
            Some(factor) if factor > 0.0 => 1.0 / factor,
            _ => 1.0,
        };
        let attn_scale = if c.n_layers == 62 {
            1.0 / ((c.hidden / c.n_heads) as f32).sqrt()
        } else {
            1.0 / (c.head_dim as f32).sqrt()
        };
        let (d, hd) = (c.hidden, c.head_dim);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: load_f32(f, &n("attn_norm"), d)?,
                wq: Weight::load(f, &n("attn_q"), qd, d)?,
                wk: Weight::load(f, &n("attn_k"), kvd, d)?,
                wv: Weight::load(f, &n("attn_v"), kvd, d)?,
                q_norm: load_f32(f, &n("attn_q_norm"), hd)?,
                k_norm: load_f32(f, &n("attn_k_norm"), hd)?,
                wo: Weight::load(f, &n("attn_output"), d, qd)?,
                post_attn_norm: load_f32(f, &n("post_attention_norm"), d)?,
                ffn_norm: load_f32(f, &n("ffn_norm"), d)?,
                w_gate: Weight::load(f, &n("ffn_gate"), c.ffn, d)?,
                w_up: Weight::load(f, &n("ffn_up"), c.ffn, d)?,
                w_down: Weight::load(f, &n("ffn_down"), d, c.ffn)?,
                post_ffn_norm: load_f32(f, &n("post_ffw_norm"), d)?,
                local: window > 0 && i % pattern < pattern - 1,
            });
        }
        let embed = Weight::load(f, "token_embd.weight", c.vocab, d)?;
        let mut output = match f.tensor_info("output.weight") {
            Ok(_) => Weight::load(f, "output.weight", c.vocab, d)?,
            Err(GgufError::MissingTensor { .. }) => embed.clone(),
            Err(e) => return Err(e.into()),
        };
        let out_norm = load_f32(f, "output_norm.weight", d)?;
        output.repack(f);
        for l in &mut layers {
            for w in [
                &mut l.wq,
                &mut l.wk,
                &mut l.wv,
                &mut l.wo,
                &mut l.w_gate,
                &mut l.w_up,
                &mut l.w_down,
            ] {
                w.repack(f);
            }
        }
        let swa_base = opt_f32("rope.freq_base_swa").unwrap_or(SWA_ROPE_BASE);
        Ok(Gemma3 {
            swa_base,
            attn_softcap: opt_f32("attn_logit_softcapping").unwrap_or(0.0),
            final_softcap: opt_f32("final_logit_softcapping").unwrap_or(0.0),
            file,
            config,
            embed,
            layers,
            out_norm,
            output,
            window,
            rope_scale,
            attn_scale,
        })
    }

    /// Layers with a sliding window (for tests and diagnostics).
    pub fn local_layers(&self) -> Vec<usize> {
        (0..self.layers.len())
            .filter(|&i| self.layers[i].local)
            .collect()
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
        let h2 = hd / 2;
        s.prepare(t, c, pool.threads());
        embed(f, &self.embed, batch, (d as f32).sqrt(), &mut s.x[..t * d]);
        for (ti, p) in places.iter().enumerate() {
            let r = ti * h2..(ti + 1) * h2;
            rope_table_scaled(
                p.pos,
                c.rope_dims,
                c.rope_base,
                self.rope_scale,
                &mut s.cos[r.clone()],
                &mut s.sin[r.clone()],
            );
            rope_table_scaled(
                p.pos,
                c.rope_dims,
                self.swa_base,
                1.0,
                &mut s.cos2[r.clone()],
                &mut s.sin2[r],
            );
        }
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
                let mut jobs = [
                    layer.wq.job(f, &mut s.q[..t * qd]),
                    layer.wk.job(f, &mut s.k[..t * kvd]),
                    layer.wv.job(f, &mut s.v[..t * kvd]),
                ];
                matmul(pool, cx, &x, &mut jobs);
            }
            rmsnorm_inplace(cx.isa, &mut s.q[..t * qd], &layer.q_norm, c.eps);
            rmsnorm_inplace(cx.isa, &mut s.k[..t * kvd], &layer.k_norm, c.eps);
            let (cos, sin) = if layer.local {
                (&s.cos2, &s.sin2)
            } else {
                (&s.cos, &s.sin)
            };
            for (ti, p) in places.iter().enumerate() {
                let (cs, sn) = (&cos[ti * h2..(ti + 1) * h2], &sin[ti * h2..(ti + 1) * h2]);
                rope_neox(&mut s.q[ti * qd..(ti + 1) * qd], hd, cs, sn);
                rope_neox(&mut s.k[ti * kvd..(ti + 1) * kvd], hd, cs, sn);
                let slot = kv.slot(p.block_table, p.pos).expect("validated");
                kv.write(
                    l,
                    slot,
                    &s.k[ti * kvd..(ti + 1) * kvd],
                    &s.v[ti * kvd..(ti + 1) * kvd],
                );
            }
            let shape = AttnShape {
                n_heads: c.n_heads,
                n_kv_heads: c.n_kv_heads,
                head_dim: hd,
                scale: self.attn_scale,
                window: if layer.local { self.window } else { 0 },
                softcap: self.attn_softcap,
            };
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
            rmsnorm_inplace(cx.isa, &mut s.xn[..t * d], &layer.post_attn_norm, c.eps);
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
                let mut jobs = [
                    layer.w_gate.job(f, &mut s.gate[..t * c.ffn]),
                    layer.w_up.job(f, &mut s.up[..t * c.ffn]),
                ];
                matmul(pool, cx, &x, &mut jobs);
            }
            gelu_mul(&mut s.gate[..t * c.ffn], &s.up[..t * c.ffn]);
            {
                let x = Acts::quantized(cx.isa, &s.gate[..t * c.ffn], &mut s.xq, t);
                matmul(pool, cx, &x, &mut [layer.w_down.job(f, &mut s.xn[..t * d])]);
            }
            rmsnorm_inplace(cx.isa, &mut s.xn[..t * d], &layer.post_ffn_norm, c.eps);
            add_rows(&mut s.x[..t * d], &s.xn[..t * d]);
        }
        output_logits(
            pool,
            cx,
            f,
            batch,
            s,
            &self.out_norm,
            c.eps,
            &self.output,
            self.final_softcap,
            logits,
        );
        Ok(())
    }
}
