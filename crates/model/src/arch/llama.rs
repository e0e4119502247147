//! The llama architecture: RMSNorm, RoPE (NORM mode), grouped-query attention over the paged
//! KV cache, SwiGLU, and tied embeddings when `output.weight` is absent.

use std::sync::Arc;

use super::{Batch, ModelConfig, ModelError, Scratch, Weight};
use crate::backend::attention::{attention, AttnShape};
use crate::backend::matmul::{matmul, Acts};
use crate::backend::ops::{rmsnorm, rope_norm, rope_table, silu_mul};
use crate::backend::pool::ThreadPool;
use crate::gguf::{GgufError, GgufFile};
use crate::kv::KvCache;
use crate::quant::{dequantize_row, Compute};

struct Layer {
    attn_norm: Vec<f32>,
    wq: Weight,
    wk: Weight,
    wv: Weight,
    wo: Weight,
    ffn_norm: Vec<f32>,
    w_gate: Weight,
    w_up: Weight,
    w_down: Weight,
}

pub struct Llama {
    file: Arc<GgufFile>,
    pub config: ModelConfig,
    embed: Weight,
    layers: Vec<Layer>,
    out_norm: Vec<f32>,
    output: Weight,
}

fn load_f32(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let w = Weight::load(file, name, 1, len)?;
    let mut v = vec![0.0; len];
    dequantize_row(w.ty, w.data(file), &mut v);
    Ok(v)
}

impl Llama {
    pub fn load(file: Arc<GgufFile>) -> Result<Llama, ModelError> {
        let config = ModelConfig::from_gguf(&file, "llama")?;
        let c = &config;
        let (d, kvd) = (c.hidden, c.n_kv_heads * c.head_dim);
        let f = &*file;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n = |s: &str| format!("blk.{i}.{s}.weight");
            layers.push(Layer {
                attn_norm: load_f32(f, &n("attn_norm"), d)?,
                wq: Weight::load(f, &n("attn_q"), c.n_heads * c.head_dim, d)?,
                wk: Weight::load(f, &n("attn_k"), kvd, d)?,
                wv: Weight::load(f, &n("attn_v"), kvd, d)?,
                wo: Weight::load(f, &n("attn_output"), d, c.n_heads * c.head_dim)?,
                ffn_norm: load_f32(f, &n("ffn_norm"), d)?,
                w_gate: Weight::load(f, &n("ffn_gate"), c.ffn, d)?,
                w_up: Weight::load(f, &n("ffn_up"), c.ffn, d)?,
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
        let mut output = output;
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
        Ok(Llama {
            file,
            config,
            embed,
            layers,
            out_norm,
            output,
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
            rope_table(
                p.pos,
                c.rope_dims,
                c.rope_base,
                &mut s.cos[ti * hd / 2..(ti + 1) * hd / 2],
                &mut s.sin[ti * hd / 2..(ti + 1) * hd / 2],
            );
        }
        let shape = AttnShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: hd,
        };
        for (l, layer) in self.layers.iter().enumerate() {
            rmsnorm(&s.x[..t * d], &layer.attn_norm, c.eps, &mut s.xn[..t * d]);
            s.xq.quantize(cx.isa, &s.xn[..t * d], t, d);
            {
                let x = Acts {
                    f: &s.xn[..t * d],
                    q: &s.xq,
                    t,
                };
                let mut jobs = [
                    layer.wq.job(f, &mut s.q[..t * qd]),
                    layer.wk.job(f, &mut s.k[..t * kvd]),
                    layer.wv.job(f, &mut s.v[..t * kvd]),
                ];
                matmul(pool, cx, &x, &mut jobs);
            }
            for (ti, p) in places.iter().enumerate() {
                let (cs, sn) = (
                    &s.cos[ti * hd / 2..(ti + 1) * hd / 2],
                    &s.sin[ti * hd / 2..(ti + 1) * hd / 2],
                );
                rope_norm(&mut s.q[ti * qd..(ti + 1) * qd], hd, cs, sn);
                rope_norm(&mut s.k[ti * kvd..(ti + 1) * kvd], hd, cs, sn);
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
                &mut s.thread_scratch,
            );
            s.xq.quantize(cx.isa, &s.attn[..t * qd], t, qd);
            {
                let x = Acts {
                    f: &s.attn[..t * qd],
                    q: &s.xq,
                    t,
                };
                matmul(pool, cx, &x, &mut [layer.wo.job(f, &mut s.xn[..t * d])]);
            }
            s.x[..t * d]
                .iter_mut()
                .zip(&s.xn[..t * d])
                .for_each(|(a, b)| *a += b);
            rmsnorm(&s.x[..t * d], &layer.ffn_norm, c.eps, &mut s.xn[..t * d]);
            s.xq.quantize(cx.isa, &s.xn[..t * d], t, d);
            {
                let x = Acts {
                    f: &s.xn[..t * d],
                    q: &s.xq,
                    t,
                };
                let mut jobs = [
                    layer.w_gate.job(f, &mut s.gate[..t * c.ffn]),
                    layer.w_up.job(f, &mut s.up[..t * c.ffn]),
                ];
                matmul(pool, cx, &x, &mut jobs);
            }
            silu_mul(&mut s.gate[..t * c.ffn], &s.up[..t * c.ffn]);
            s.xq.quantize(cx.isa, &s.gate[..t * c.ffn], t, c.ffn);
            {
                let x = Acts {
                    f: &s.gate[..t * c.ffn],
                    q: &s.xq,
                    t,
                };
                matmul(pool, cx, &x, &mut [layer.w_down.job(f, &mut s.xn[..t * d])]);
            }
            s.x[..t * d]
                .iter_mut()
                .zip(&s.xn[..t * d])
                .for_each(|(a, b)| *a += b);
        }
        // Logits for the last token of the sequences that want them (every token with
        // `all_logits`).
        let mut rows = 0;
        let mut ti = 0;
        for seq in &batch.seqs {
            let n = seq.tokens.len();
            let first = if seq.all_logits {
                ti
            } else if seq.want_logits {
                ti + n - 1
            } else {
                ti + n
            };
            for src in first..ti + n {
                let (x, xn) = (&s.x, &mut s.xn);
                rmsnorm(
                    &x[src * d..(src + 1) * d],
                    &self.out_norm,
                    c.eps,
                    &mut xn[rows * d..(rows + 1) * d],
                );
                rows += 1;
            }
            ti += n;
        }
        if rows == 0 {
            logits.clear();
            return Ok(());
        }
        s.xq.quantize(cx.isa, &s.xn[..rows * d], rows, d);
        logits.clear();
        logits.resize(rows * c.vocab, 0.0);
        let x = Acts {
            f: &s.xn[..rows * d],
            q: &s.xq,
            t: rows,
        };
        matmul(pool, cx, &x, &mut [self.output.job(f, logits)]);
        Ok(())
    }
}
