//! Tiny random-weight models written as GGUF by the testkit, and a brute-force float64 forward
//! pass written from each architecture's defining equations (shared by tiny_archs.rs and
//! hf_folder.rs).

use std::sync::Arc;

use super::{log_softmax, Harness};
use cordial_model::gguf::GgufFile;
use cordial_model::quant::{dequantize_row, scalar::quantize_row, GgmlType};
use cordial_model::{Compute, Model};
use cordial_testkit::gguf_writer::{temp_path, GgufWriter, Meta};

pub const HIDDEN: usize = 64;
pub const FFN: usize = 96;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const VOCAB: usize = 48;
pub const LAYERS: usize = 4;
pub const EPS: f32 = 1e-5;

#[derive(Clone, Copy, PartialEq)]
pub enum Rope {
    Norm,
    Neox,
}

#[derive(Clone, Copy)]
pub struct Spec {
    pub arch: &'static str,
    pub rope: Rope,
    pub head_dim: usize,
    pub qkv_bias: bool,
    pub qk_norm: bool,
    pub fused: bool,
    pub llama3_factors: bool,
    pub gemma: bool,
    pub tied: bool,
    /// Weight type of the projection matrices (the reference uses their dequantized values).
    pub wtype: GgmlType,
}

pub const BASE: Spec = Spec {
    arch: "llama",
    rope: Rope::Norm,
    head_dim: HIDDEN / HEADS,
    qkv_bias: false,
    qk_norm: false,
    fused: false,
    llama3_factors: false,
    gemma: false,
    tied: true,
    wtype: GgmlType::F32,
};

/// Gemma3 settings of the tiny model: window 3, every 2nd layer global, soft-capping on.
pub const WINDOW: usize = 3;
pub const PATTERN: usize = 2;
pub const ROPE_BASE: f64 = 10000.0;
pub const GLOBAL_BASE: f64 = 1_000_000.0;
pub const FINAL_CAP: f64 = 3.0;
pub const ATTN_CAP: f64 = 5.0;

pub struct Rng(pub u64);
impl Rng {
    pub fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

/// A matrix as the model will see it: rows × cols, stored in `ty` and read back.
#[derive(Clone)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub w: Vec<f64>,
}

impl Mat {
    pub fn mul(&self, x: &[f64]) -> Vec<f64> {
        (0..self.rows)
            .map(|r| {
                (0..self.cols)
                    .map(|c| self.w[r * self.cols + c] * x[c])
                    .sum()
            })
            .collect()
    }
}

/// The model's tensors, in f64, and the GGUF file holding them.
/// Tensors by GGUF name.
pub type Mats = std::collections::HashMap<String, Mat>;

pub struct Tiny {
    pub spec: Spec,
    pub t: Mats,
    pub model: Model,
}

pub fn build(spec: Spec, seed: u64) -> Tiny {
    let mut rng = Rng(seed);
    let hd = spec.head_dim;
    let (qd, kvd) = (HEADS * hd, KV_HEADS * hd);
    let a = spec.arch;
    let mut g = GgufWriter::new()
        .meta("general.architecture", Meta::Str(a.into()))
        .meta(&format!("{a}.block_count"), Meta::U32(LAYERS as u32))
        .meta(&format!("{a}.context_length"), Meta::U32(256))
        .meta(&format!("{a}.embedding_length"), Meta::U32(HIDDEN as u32))
        .meta(&format!("{a}.feed_forward_length"), Meta::U32(FFN as u32))
        .meta(
            &format!("{a}.attention.head_count"),
            Meta::U32(HEADS as u32),
        )
        .meta(
            &format!("{a}.attention.head_count_kv"),
            Meta::U32(KV_HEADS as u32),
        )
        .meta(&format!("{a}.attention.key_length"), Meta::U32(hd as u32))
        .meta(
            &format!("{a}.attention.layer_norm_rms_epsilon"),
            Meta::F32(EPS),
        )
        .meta(&format!("{a}.vocab_size"), Meta::U32(VOCAB as u32));
    let base = if spec.gemma { GLOBAL_BASE } else { ROPE_BASE };
    g = g.meta(&format!("{a}.rope.freq_base"), Meta::F32(base as f32));
    if spec.gemma {
        g = g
            .meta(
                &format!("{a}.attention.sliding_window"),
                Meta::U32(WINDOW as u32),
            )
            .meta(
                &format!("{a}.attention.sliding_window_pattern"),
                Meta::U32(PATTERN as u32),
            )
            .meta(
                &format!("{a}.final_logit_softcapping"),
                Meta::F32(FINAL_CAP as f32),
            )
            .meta(
                &format!("{a}.attn_logit_softcapping"),
                Meta::F32(ATTN_CAP as f32),
            );
    }
    let mut t = std::collections::HashMap::new();
    let mut add =
        |g: GgufWriter, name: String, rows: usize, cols: usize, ty: GgmlType, v: Vec<f32>| {
            let bytes = quantize_row(ty, &v);
            let mut back = vec![0.0f32; rows * cols];
            dequantize_row(ty, &bytes, &mut back);
            let dims: Vec<u64> = if rows == 1 {
                vec![cols as u64]
            } else {
                vec![cols as u64, rows as u64]
            };
            t.insert(
                name.clone(),
                Mat {
                    rows,
                    cols,
                    w: back.iter().map(|&x| x as f64).collect(),
                },
            );
            g.tensor(&name, &dims, ty.id(), bytes)
        };
    let norm =
        |rng: &mut Rng, n: usize| -> Vec<f32> { (0..n).map(|_| 1.0 + 0.3 * rng.f()).collect() };
    let wt = spec.wtype;
    g = add(
        g,
        "token_embd.weight".into(),
        VOCAB,
        HIDDEN,
        GgmlType::F32,
        rng.vec(VOCAB * HIDDEN, 0.3),
    );
    if !spec.tied {
        g = add(
            g,
            "output.weight".into(),
            VOCAB,
            HIDDEN,
            wt,
            rng.vec(VOCAB * HIDDEN, 0.5),
        );
    }
    g = add(
        g,
        "output_norm.weight".into(),
        1,
        HIDDEN,
        GgmlType::F32,
        norm(&mut rng, HIDDEN),
    );
    if spec.llama3_factors {
        let f: Vec<f32> = (0..hd / 2).map(|i| 1.0 + (i % 4) as f32 * 2.0).collect();
        g = add(g, "rope_freqs.weight".into(), 1, hd / 2, GgmlType::F32, f);
    }
    for l in 0..LAYERS {
        let n = |s: &str| format!("blk.{l}.{s}.weight");
        g = add(
            g,
            n("attn_norm"),
            1,
            HIDDEN,
            GgmlType::F32,
            norm(&mut rng, HIDDEN),
        );
        g = add(
            g,
            n("ffn_norm"),
            1,
            HIDDEN,
            GgmlType::F32,
            norm(&mut rng, HIDDEN),
        );
        let s = 1.0 / (HIDDEN as f32).sqrt() * 2.0;
        if spec.fused {
            g = add(
                g,
                n("attn_qkv"),
                qd + 2 * kvd,
                HIDDEN,
                wt,
                rng.vec((qd + 2 * kvd) * HIDDEN, s),
            );
            g = add(
                g,
                n("ffn_up"),
                2 * FFN,
                HIDDEN,
                wt,
                rng.vec(2 * FFN * HIDDEN, s),
            );
        } else {
            g = add(g, n("attn_q"), qd, HIDDEN, wt, rng.vec(qd * HIDDEN, s));
            g = add(g, n("attn_k"), kvd, HIDDEN, wt, rng.vec(kvd * HIDDEN, s));
            g = add(g, n("attn_v"), kvd, HIDDEN, wt, rng.vec(kvd * HIDDEN, s));
            g = add(g, n("ffn_gate"), FFN, HIDDEN, wt, rng.vec(FFN * HIDDEN, s));
            g = add(g, n("ffn_up"), FFN, HIDDEN, wt, rng.vec(FFN * HIDDEN, s));
        }
        g = add(
            g,
            n("attn_output"),
            HIDDEN,
            qd,
            wt,
            rng.vec(HIDDEN * qd, 1.0 / (qd as f32).sqrt()),
        );
        g = add(
            g,
            n("ffn_down"),
            HIDDEN,
            FFN,
            wt,
            rng.vec(HIDDEN * FFN, 1.0 / (FFN as f32).sqrt()),
        );
        if spec.qkv_bias {
            let b = |s: &str| format!("blk.{l}.{s}.bias");
            g = add(g, b("attn_q"), 1, qd, GgmlType::F32, rng.vec(qd, 0.5));
            g = add(g, b("attn_k"), 1, kvd, GgmlType::F32, rng.vec(kvd, 0.5));
            g = add(g, b("attn_v"), 1, kvd, GgmlType::F32, rng.vec(kvd, 0.5));
        }
        if spec.qk_norm || spec.gemma {
            g = add(
                g,
                n("attn_q_norm"),
                1,
                hd,
                GgmlType::F32,
                norm(&mut rng, hd),
            );
            g = add(
                g,
                n("attn_k_norm"),
                1,
                hd,
                GgmlType::F32,
                norm(&mut rng, hd),
            );
        }
        if spec.gemma {
            g = add(
                g,
                n("post_attention_norm"),
                1,
                HIDDEN,
                GgmlType::F32,
                norm(&mut rng, HIDDEN),
            );
            g = add(
                g,
                n("post_ffw_norm"),
                1,
                HIDDEN,
                GgmlType::F32,
                norm(&mut rng, HIDDEN),
            );
        }
    }
    let path = temp_path(&format!("tiny-{a}-{seed}.gguf"));
    g.write(&path).expect("write gguf");
    let file = GgufFile::open(&path).expect("open tiny gguf");
    std::fs::remove_file(&path).ok();
    let model = Model::load(Arc::new(file)).expect("load tiny model");
    Tiny { spec, t, model }
}

pub fn rms(x: &[f64], w: &[f64]) -> Vec<f64> {
    let ss = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
    let s = 1.0 / (ss + EPS as f64).sqrt();
    x.iter().zip(w).map(|(a, b)| a * s * b).collect()
}

pub fn rope(x: &mut [f64], pos: usize, mode: Rope, base: f64, factors: Option<&[f64]>) {
    let hd = x.len();
    for i in 0..hd / 2 {
        let mut theta = pos as f64 * base.powf(-2.0 * i as f64 / hd as f64);
        if let Some(f) = factors {
            theta /= f[i];
        }
        let (c, s) = (theta.cos(), theta.sin());
        let (ia, ib) = match mode {
            Rope::Norm => (2 * i, 2 * i + 1),
            Rope::Neox => (i, i + hd / 2),
        };
        let (a, b) = (x[ia], x[ib]);
        x[ia] = a * c - b * s;
        x[ib] = a * s + b * c;
    }
}

/// Float64 forward pass over the whole sequence; log-probabilities per position.
pub fn reference(sp: Spec, t: &Mats, tokens: &[u32]) -> Vec<Vec<f64>> {
    let hd = sp.head_dim;
    let (qd, kvd) = (HEADS * hd, KV_HEADS * hd);
    let w = |n: &str| &t[n].w;
    let mat = |n: &str| &t[n];
    let n = tokens.len();
    let emb = w("token_embd.weight");
    let scale = if sp.gemma {
        (HIDDEN as f32).sqrt() as f64
    } else {
        1.0
    };
    let mut x: Vec<Vec<f64>> = tokens
        .iter()
        .map(|&t| {
            emb[t as usize * HIDDEN..(t as usize + 1) * HIDDEN]
                .iter()
                .map(|v| v * scale)
                .collect()
        })
        .collect();
    let factors = sp.llama3_factors.then(|| w("rope_freqs.weight").clone());
    for l in 0..LAYERS {
        let nm = |s: &str| format!("blk.{l}.{s}.weight");
        let local = sp.gemma && l % PATTERN < PATTERN - 1;
        let base = if sp.gemma && !local {
            GLOBAL_BASE
        } else {
            ROPE_BASE
        };
        let (mut qs, mut ks, mut vs) = (vec![], vec![], vec![]);
        for (p, xi) in x.iter().enumerate() {
            let h = rms(xi, w(&nm("attn_norm")));
            let (mut q, mut k, mut v) = if sp.fused {
                let o = mat(&nm("attn_qkv")).mul(&h);
                (
                    o[..qd].to_vec(),
                    o[qd..qd + kvd].to_vec(),
                    o[qd + kvd..].to_vec(),
                )
            } else {
                (
                    mat(&nm("attn_q")).mul(&h),
                    mat(&nm("attn_k")).mul(&h),
                    mat(&nm("attn_v")).mul(&h),
                )
            };
            if sp.qkv_bias {
                let b = |s: &str| w(&format!("blk.{l}.{s}.bias"));
                q.iter_mut().zip(b("attn_q")).for_each(|(a, b)| *a += b);
                k.iter_mut().zip(b("attn_k")).for_each(|(a, b)| *a += b);
                v.iter_mut().zip(b("attn_v")).for_each(|(a, b)| *a += b);
            }
            for (vecs, norm) in [(&mut q, "attn_q_norm"), (&mut k, "attn_k_norm")] {
                for head in vecs.chunks_mut(hd) {
                    if sp.qk_norm || sp.gemma {
                        let r = rms(head, w(&nm(norm)));
                        head.copy_from_slice(&r);
                    }
                    rope(head, p, sp.rope, base, factors.as_deref());
                }
            }
            // The KV cache stores K and V as f16: the reference rounds them the same way, so
            // what is left to compare is the model's math.
            let f16 = |x: &mut Vec<f64>| {
                x.iter_mut()
                    .for_each(|v| *v = half::f16::from_f64(*v).to_f64())
            };
            f16(&mut k);
            f16(&mut v);
            qs.push(q);
            ks.push(k);
            vs.push(v);
        }
        for p in 0..n {
            let mut att = vec![0.0f64; qd];
            for h in 0..HEADS {
                let g = h / (HEADS / KV_HEADS);
                let lo = if local {
                    (p + 1).saturating_sub(WINDOW)
                } else {
                    0
                };
                let mut sc: Vec<f64> = (lo..=p)
                    .map(|j| {
                        let s = (0..hd)
                            .map(|c| qs[p][h * hd + c] * ks[j][g * hd + c])
                            .sum::<f64>()
                            / (hd as f64).sqrt();
                        if sp.gemma {
                            ATTN_CAP * (s / ATTN_CAP).tanh()
                        } else {
                            s
                        }
                    })
                    .collect();
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                sc.iter_mut().for_each(|s| *s = (*s - mx).exp());
                let sum: f64 = sc.iter().sum();
                for (j, s) in (lo..=p).zip(&sc) {
                    for c in 0..hd {
                        att[h * hd + c] += s / sum * vs[j][g * hd + c];
                    }
                }
            }
            let mut o = mat(&nm("attn_output")).mul(&att);
            if sp.gemma {
                o = rms(&o, w(&nm("post_attention_norm")));
            }
            x[p].iter_mut().zip(&o).for_each(|(a, b)| *a += b);
            let h = rms(&x[p], w(&nm("ffn_norm")));
            let (gate, up) = if sp.fused {
                let o = mat(&nm("ffn_up")).mul(&h);
                (o[..FFN].to_vec(), o[FFN..].to_vec())
            } else {
                (mat(&nm("ffn_gate")).mul(&h), mat(&nm("ffn_up")).mul(&h))
            };
            let act: Vec<f64> = gate
                .iter()
                .zip(&up)
                .map(|(&g, &u)| {
                    if sp.gemma {
                        0.5 * g
                            * (1.0
                                + ((2.0 / std::f64::consts::PI).sqrt()
                                    * (g + 0.044715 * g * g * g))
                                    .tanh())
                            * u
                    } else {
                        g / (1.0 + (-g).exp()) * u
                    }
                })
                .collect();
            let mut y = mat(&nm("ffn_down")).mul(&act);
            if sp.gemma {
                y = rms(&y, w(&nm("post_ffw_norm")));
            }
            x[p].iter_mut().zip(&y).for_each(|(a, b)| *a += b);
        }
    }
    let out = if sp.tied {
        "token_embd.weight"
    } else {
        "output.weight"
    };
    x.iter()
        .map(|xi| {
            let h = rms(xi, w("output_norm.weight"));
            let mut lg = mat(out).mul(&h);
            if sp.gemma {
                lg.iter_mut()
                    .for_each(|v| *v = FINAL_CAP * (*v / FINAL_CAP).tanh());
            }
            let mx = lg.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = mx + lg.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            lg.iter().map(|v| v - lse).collect()
        })
        .collect()
}

pub fn tokens() -> Vec<u32> {
    vec![1, 7, 19, 3, 44, 12, 7, 30, 2, 25, 41, 9, 16]
}

/// (max, mean) |Δ log-probability| of the model (one prefill, every position) against the
/// reference.
pub fn errors(m: Tiny, cx: Compute) -> ((f64, f64), Tiny) {
    let toks = tokens();
    let want = reference(m.spec, &m.t, &toks);
    let mut h = Harness::new(m.model, cx, 1, 64);
    let got = h.score(&toks);
    let (mut max, mut sum, mut n) = (0.0f64, 0.0f64, 0usize);
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in log_softmax(g).iter().zip(w) {
            let d = (*a as f64 - b).abs();
            max = max.max(d);
            sum += d;
            n += 1;
        }
    }
    let m = Tiny {
        spec: m.spec,
        t: m.t,
        model: h.model,
    };
    ((max, sum / n as f64), m)
}
