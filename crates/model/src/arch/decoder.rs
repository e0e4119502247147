//! The one decoder every architecture runs, shaped by its [`ArchSpec`]:
//!
//! embed (× √hidden) → per layer: RMSNorm → Q/K/V (fused or not, + biases) → QK-norm → RoPE
//! (the layer's table) → K/V into the paged cache → attention (the layer's window, soft-cap)
//! → output (→ post-norm) → residual; RMSNorm → gate/up (fused or not) → SiLU or GELU-tanh ×
//! up → down (→ post-norm) → residual; then the final RMSNorm and output head for the rows
//! that want logits (→ soft-cap).

use std::sync::Arc;

use super::spec::{Activation, ArchSpec, RopeMode};
use super::{embed, load_f32, output_logits, Batch, ModelConfig, ModelError, Scratch, Weight};
use crate::backend::attention::{attention, AttnShape};
use crate::backend::cpu::Compute;
use crate::backend::lora::LoraPlan;
use crate::backend::matmul::{matmul, Acts};
use crate::backend::ops::{
    add_rows, rmsnorm, rmsnorm_inplace, rope_neox, rope_norm, rope_table_factors, rope_table_scaled,
};
use crate::backend::pool::ThreadPool;
use crate::gguf::{GgufError, GgufFile};
use crate::kv::KvCache;
use crate::lora::{LoraBase, Proj};

/// The query, key and value projections: three matrices, or one fused `attn_qkv` (Q rows,
/// then K, then V).
enum Qkv {
    Split { wq: Weight, wk: Weight, wv: Weight },
    Fused(Weight),
}

/// The gate and up projections: two matrices, or one `ffn_up` holding gate then up rows.
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
    post_attn_norm: Option<Vec<f32>>,
    ffn_norm: Vec<f32>,
    gate_up: GateUp,
    w_down: Weight,
    post_ffn_norm: Option<Vec<f32>>,
    /// Sliding-window (local) layer: sees the last `window` positions, uses the local RoPE.
    local: bool,
}

impl Layer {
    fn weights(&self) -> Vec<&Weight> {
        let mut ws: Vec<&Weight> = vec![&self.wo, &self.w_down];
        match &self.qkv {
            Qkv::Split { wq, wk, wv } => ws.extend([wq, wk, wv]),
            Qkv::Fused(w) => ws.push(w),
        }
        match &self.gate_up {
            GateUp::Split { gate, up } => ws.extend([gate, up]),
            GateUp::Fused(w) => ws.push(w),
        }
        ws
    }

    fn weights_mut(&mut self) -> Vec<&mut Weight> {
        let mut ws: Vec<&mut Weight> = vec![&mut self.wo, &mut self.w_down];
        match &mut self.qkv {
            Qkv::Split { wq, wk, wv } => ws.extend([wq, wk, wv]),
            Qkv::Fused(w) => ws.push(w),
        }
        match &mut self.gate_up {
            GateUp::Split { gate, up } => ws.extend([gate, up]),
            GateUp::Fused(w) => ws.push(w),
        }
        ws
    }
}

/// RoPE of the global layers, and of the windowed ones.
struct Rope {
    base: f32,
    /// Linear position scale (1/factor).
    scale: f32,
    /// Llama 3 per-dimension frequency factors (`rope_freqs.weight`), one per rotated pair.
    factors: Option<Vec<f32>>,
    local_base: f32,
}

/// A loaded decoder of any registered architecture.
pub struct Decoder {
    file: Arc<GgufFile>,
    pub config: ModelConfig,
    spec: &'static ArchSpec,
    embed: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Weight,
    rope: Rope,
    /// Positions a windowed layer sees.
    window: usize,
    attn_scale: f32,
    attn_softcap: f32,
    final_softcap: f32,
    /// What LoRA adapters are checked against.
    lora_base: LoraBase,
}

/// A tensor that may be absent.
fn optional<T>(r: Result<T, ModelError>) -> Result<Option<T>, ModelError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(ModelError::Gguf(GgufError::MissingTensor { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}

impl Decoder {
    /// Loads the tensors `spec` names from `file`, repacking the matrices for `cx`.
    pub fn load(
        file: Arc<GgufFile>,
        spec: &'static ArchSpec,
        cx: Compute,
    ) -> Result<Decoder, ModelError> {
        (spec.check)(&file)?;
        let arch = spec.gguf;
        let config = ModelConfig::from_gguf(&file, arch)?;
        let c = &config;
        let f = &*file;
        let opt_f32 = |k: &str| f.get_f32(&format!("{arch}.{k}")).ok();
        let (d, hd) = (c.hidden, c.head_dim);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let (window, pattern, local_base) = match spec.sliding_window {
            Some(sw) => {
                let window = f.get_u64(&format!("{arch}.attention.sliding_window"))? as usize;
                let pattern = f
                    .get_u64(&format!("{arch}.attention.sliding_window_pattern"))
                    .map(|v| v as usize)
                    .unwrap_or(sw.default_pattern);
                if pattern == 0 {
                    return Err(ModelError::Invalid(format!(
                        "{arch}.attention.sliding_window_pattern is 0"
                    )));
                }
                let base = opt_f32("rope.freq_base_swa").unwrap_or(sw.default_rope_base);
                (window, pattern, base)
            }
            None => (0, 1, c.rope_base),
        };
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
                None if spec.qkv_bias => {
                    return Err(ModelError::Invalid(format!(
                        "{arch}: `{}` is missing",
                        b("attn_q")
                    )))
                }
                None => None,
            };
            let qk_norm = if spec.qk_norm {
                Some([
                    load_f32(f, &n("attn_q_norm"), hd)?,
                    load_f32(f, &n("attn_k_norm"), hd)?,
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
            let post = |name: &str| -> Result<Option<Vec<f32>>, ModelError> {
                spec.post_norms
                    .then(|| load_f32(f, &n(name), d))
                    .transpose()
            };
            layers.push(Layer {
                attn_norm: load_f32(f, &n("attn_norm"), d)?,
                qkv,
                bias,
                qk_norm,
                wo: Weight::load(f, &n("attn_output"), d, qd)?,
                post_attn_norm: post("post_attention_norm")?,
                ffn_norm: load_f32(f, &n("ffn_norm"), d)?,
                gate_up,
                w_down: Weight::load(f, &n("ffn_down"), d, c.ffn)?,
                post_ffn_norm: post("post_ffw_norm")?,
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
        let factors = optional(load_f32(f, "rope_freqs.weight", c.rope_dims / 2))?;
        let scale = match opt_f32("rope.scaling.factor") {
            Some(factor) if spec.linear_rope_scaling && factor > 0.0 => 1.0 / factor,
            _ => 1.0,
        };
        let attn_scale = if spec.gemma_attn_scale && c.n_layers == 62 {
            1.0 / ((c.hidden / c.n_heads) as f32).sqrt()
        } else {
            1.0 / (hd as f32).sqrt()
        };
        let softcap = |k: &str| {
            if spec.softcaps {
                opt_f32(k).unwrap_or(0.0)
            } else {
                0.0
            }
        };
        let permute_qk =
            (spec.rope == RopeMode::Norm && arch == "llama").then_some((c.n_heads, c.n_kv_heads));
        let lora_base = LoraBase::of_file(f, arch, c.n_layers, permute_qk);
        output.repack(f, cx);
        for l in &mut layers {
            for w in l.weights_mut() {
                w.repack(f, cx);
            }
        }
        Ok(Decoder {
            attn_softcap: softcap("attn_logit_softcapping"),
            final_softcap: softcap("final_logit_softcapping"),
            rope: Rope {
                base: c.rope_base,
                scale,
                factors,
                local_base,
            },
            file,
            config,
            spec,
            embed,
            layers,
            out_norm,
            output,
            window,
            attn_scale,
            lora_base,
        })
    }

    /// What LoRA adapters are checked against.
    pub fn lora_base(&self) -> &LoraBase {
        &self.lora_base
    }

    /// The architecture.
    pub fn spec(&self) -> &'static ArchSpec {
        self.spec
    }

    /// The file the weights live in.
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Positions a windowed layer sees.
    pub fn window(&self) -> usize {
        self.window
    }

    /// Weight bytes one decode step reads (layer matrices and the output head).
    pub fn weight_bytes_per_step(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .flat_map(|l| l.weights())
            .map(|w| w.bytes())
            .sum();
        layers + self.output.bytes()
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
        let k = cx.kernels();
        let places = batch.validate(c, kv)?;
        if let Some(w) = kv.window() {
            let ok = w.window >= self.window
                && (0..self.layers.len()).all(|l| w.layers[l] == self.layers[l].local);
            if !ok {
                return Err(ModelError::Batch(
                    "the KV cache's window pool does not match the model's windowed layers".into(),
                ));
            }
        }
        let t = places.len();
        let lora = self.lora_plan(batch)?;
        let (d, hd, ffn) = (c.hidden, c.head_dim, c.ffn);
        let (qd, kvd) = (c.n_heads * hd, c.n_kv_heads * hd);
        let h2 = hd / 2;
        s.prepare(t, c, pool.threads());
        let escale = if self.spec.embed_scale_sqrt_hidden {
            (d as f32).sqrt()
        } else {
            1.0
        };
        embed(f, &self.embed, batch, escale, &mut s.x[..t * d]);
        let any_local = self.layers.iter().any(|l| l.local);
        for (ti, p) in places.iter().enumerate() {
            let r = ti * h2..(ti + 1) * h2;
            let (cs, sn) = (&mut s.cos[r.clone()], &mut s.sin[r.clone()]);
            match &self.rope.factors {
                None => rope_table_scaled(p.pos, c.rope_dims, c.rope_base, self.rope.scale, cs, sn),
                Some(fa) => rope_table_factors(p.pos, c.rope_dims, self.rope.base, fa, cs, sn),
            }
            if any_local {
                let (cs, sn) = (&mut s.cos2[r.clone()], &mut s.sin2[r]);
                rope_table_scaled(p.pos, c.rope_dims, self.rope.local_base, 1.0, cs, sn);
            }
        }
        let rope = match self.spec.rope {
            RopeMode::Norm => rope_norm,
            RopeMode::Neox => rope_neox,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            rmsnorm(
                k,
                &s.x[..t * d],
                &layer.attn_norm,
                c.eps,
                &mut s.xn[..t * d],
            );
            {
                let x = Acts::quantized(pool, cx, &s.xn[..t * d], &mut s.xq, t);
                match &layer.qkv {
                    Qkv::Split { wq, wk, wv } => {
                        let mut jobs = [
                            wq.job(f, &mut s.q[..t * qd]),
                            wk.job(f, &mut s.k[..t * kvd]),
                            wv.job(f, &mut s.v[..t * kvd]),
                        ];
                        matmul(pool, cx, &x, &mut jobs);
                        lora.apply(
                            pool,
                            k,
                            l,
                            &s.xn[..t * d],
                            d,
                            &mut [
                                (Proj::Q, &mut s.q[..t * qd]),
                                (Proj::K, &mut s.k[..t * kvd]),
                                (Proj::V, &mut s.v[..t * kvd]),
                            ],
                        );
                    }
                    Qkv::Fused(w) => {
                        let n = qd + 2 * kvd;
                        grow(&mut s.fused, t * n);
                        matmul(pool, cx, &x, &mut [w.job(f, &mut s.fused[..t * n])]);
                        let fused = &mut s.fused[..t * n];
                        lora.apply(pool, k, l, &s.xn[..t * d], d, &mut [(Proj::Qkv, fused)]);
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
                rmsnorm_inplace(k, &mut s.q[..t * qd], nq, c.eps);
                rmsnorm_inplace(k, &mut s.k[..t * kvd], nk, c.eps);
            }
            let (cos, sin) = if layer.local {
                (&s.cos2, &s.sin2)
            } else {
                (&s.cos, &s.sin)
            };
            for (ti, p) in places.iter().enumerate() {
                let (cs, sn) = (&cos[ti * h2..(ti + 1) * h2], &sin[ti * h2..(ti + 1) * h2]);
                rope(&mut s.q[ti * qd..(ti + 1) * qd], hd, cs, sn);
                rope(&mut s.k[ti * kvd..(ti + 1) * kvd], hd, cs, sn);
                let table = if kv.in_window_pool(l) {
                    p.window_table
                } else {
                    p.block_table
                };
                let block = table[p.pos / kv.block_size] as usize;
                kv.write(
                    l,
                    block,
                    p.pos % kv.block_size,
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
                k,
                kv,
                l,
                &shape,
                &places,
                &s.q[..t * qd],
                &mut s.attn[..t * qd],
                &mut s.attn_scratch,
            );
            {
                let x = Acts::quantized(pool, cx, &s.attn[..t * qd], &mut s.xq, t);
                matmul(pool, cx, &x, &mut [layer.wo.job(f, &mut s.xn[..t * d])]);
                let o = &mut s.xn[..t * d];
                lora.apply(pool, k, l, &s.attn[..t * qd], qd, &mut [(Proj::O, o)]);
            }
            if let Some(w) = &layer.post_attn_norm {
                rmsnorm_inplace(k, &mut s.xn[..t * d], w, c.eps);
            }
            add_rows(&mut s.x[..t * d], &s.xn[..t * d]);
            rmsnorm(k, &s.x[..t * d], &layer.ffn_norm, c.eps, &mut s.xn[..t * d]);
            {
                let x = Acts::quantized(pool, cx, &s.xn[..t * d], &mut s.xq, t);
                match &layer.gate_up {
                    GateUp::Split { gate, up } => {
                        let mut jobs = [
                            gate.job(f, &mut s.gate[..t * ffn]),
                            up.job(f, &mut s.up[..t * ffn]),
                        ];
                        matmul(pool, cx, &x, &mut jobs);
                        lora.apply(
                            pool,
                            k,
                            l,
                            &s.xn[..t * d],
                            d,
                            &mut [
                                (Proj::Gate, &mut s.gate[..t * ffn]),
                                (Proj::Up, &mut s.up[..t * ffn]),
                            ],
                        );
                    }
                    GateUp::Fused(w) => {
                        let n = 2 * ffn;
                        grow(&mut s.fused, t * n);
                        matmul(pool, cx, &x, &mut [w.job(f, &mut s.fused[..t * n])]);
                        let fused = &mut s.fused[..t * n];
                        lora.apply(pool, k, l, &s.xn[..t * d], d, &mut [(Proj::Up, fused)]);
                        for ti in 0..t {
                            let row = &s.fused[ti * n..(ti + 1) * n];
                            s.gate[ti * ffn..(ti + 1) * ffn].copy_from_slice(&row[..ffn]);
                            s.up[ti * ffn..(ti + 1) * ffn].copy_from_slice(&row[ffn..]);
                        }
                    }
                }
            }
            match self.spec.activation {
                Activation::Silu => k.silu_mul(&mut s.gate[..t * ffn], &s.up[..t * ffn]),
                Activation::GeluTanh => k.gelu_mul(&mut s.gate[..t * ffn], &s.up[..t * ffn]),
            }
            {
                let x = Acts::quantized(pool, cx, &s.gate[..t * ffn], &mut s.xq, t);
                matmul(pool, cx, &x, &mut [layer.w_down.job(f, &mut s.xn[..t * d])]);
                let down = &mut s.xn[..t * d];
                lora.apply(
                    pool,
                    k,
                    l,
                    &s.gate[..t * ffn],
                    ffn,
                    &mut [(Proj::Down, down)],
                );
            }
            if let Some(w) = &layer.post_ffn_norm {
                rmsnorm_inplace(k, &mut s.xn[..t * d], w, c.eps);
            }
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

impl Decoder {
    /// The step's LoRA plan; an adapter loaded for another model or a non-finite scale is a
    /// batch error.
    fn lora_plan<'a>(&self, batch: &'a Batch<'a>) -> Result<LoraPlan<'a>, ModelError> {
        let mut row = 0;
        let mut seqs = Vec::with_capacity(batch.seqs.len());
        for (si, seq) in batch.seqs.iter().enumerate() {
            for u in seq.lora {
                if !u.scale.is_finite() {
                    return Err(ModelError::Batch(format!(
                        "sequence {si}: LoRA scale {} is not finite",
                        u.scale
                    )));
                }
                if !u.adapter.fits(&self.lora_base) {
                    return Err(ModelError::Batch(format!(
                        "sequence {si}: the LoRA adapter was loaded for another model"
                    )));
                }
            }
            seqs.push((seq.lora, row..row + seq.tokens.len()));
            row += seq.tokens.len();
        }
        Ok(LoraPlan::new(seqs.into_iter()))
    }
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}
