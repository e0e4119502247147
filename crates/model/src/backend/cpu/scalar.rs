//! The scalar kernel table: plain Rust on any CPU, the definition every vector level is tested
//! against. Quantized weights are read in their GGUF layout (no repacking).

use std::ops::Range;

use half::f16;

use super::{Isa, Kernels, KvBlock, LoraRows, OutTile};
use crate::quant::repack::{PackSpec, Packed};
use crate::quant::{scalar as reference, ActRow, GgmlType, QuantizedActs, QK};

/// The scalar level.
pub struct Scalar;

/// Its one instance.
pub static SCALAR: Scalar = Scalar;

/// The integer sums of the two halves of a quantized block of 32.
pub fn half_sums(q: &[i8]) -> [i16; 2] {
    let h = |r: &[i8]| r.iter().map(|&v| v as i16).sum::<i16>();
    [h(&q[..QK / 2]), h(&q[QK / 2..QK])]
}

/// Element `i` of LoRA rows as f32.
#[inline]
fn lora_at(rows: &LoraRows<'_>, i: usize) -> f32 {
    match *rows {
        LoraRows::F32(v) => v[i],
        LoraRows::F16(v) => f16::from_bits(v[i]).to_f32(),
    }
}

impl Kernels for Scalar {
    fn isa(&self) -> Isa {
        Isa::Scalar
    }

    fn pack(&self) -> Option<PackSpec> {
        None
    }

    fn quantize_row(
        &self,
        x: &[f32],
        qs: &mut [i8],
        d: &mut [f32],
        s: &mut [f32],
        sums: &mut [i16],
    ) {
        for b in 0..x.len() / QK {
            let q = &mut qs[b * QK..(b + 1) * QK];
            (d[b], s[b]) = reference::quantize_block_q8(&x[b * QK..(b + 1) * QK], q);
            let [lo, hi] = half_sums(q);
            (sums[2 * b], sums[2 * b + 1]) = (lo, hi);
        }
    }

    fn dot_rows(&self, ty: GgmlType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
        for (o, a) in out.iter_mut().zip(acts) {
            *o = reference::dot_q(ty, w, a.0, a.1, a.2);
        }
    }

    fn dot_f(&self, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
        reference::dot_f(ty, w, x)
    }

    fn packed_matmul(&self, w: &Packed, _x: &QuantizedActs, _rows: Range<usize>, _out: &OutTile) {
        unreachable!("the scalar level reads {:?} weights in place", w.ty)
    }

    fn sum_squares(&self, x: &[f32]) -> f32 {
        x.iter().map(|v| v * v).sum()
    }

    fn silu_mul(&self, g: &mut [f32], u: &[f32]) {
        for (a, b) in g.iter_mut().zip(u) {
            *a = *a / (1.0 + (-*a).exp()) * b;
        }
    }

    fn gelu_mul(&self, g: &mut [f32], u: &[f32]) {
        const SQRT_2_OVER_PI: f32 = 0.797_884_6;
        for (a, b) in g.iter_mut().zip(u) {
            let x = *a;
            let t = (SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)).tanh();
            *a = 0.5 * x * (1.0 + t) * b;
        }
    }

    fn softmax(&self, x: &mut [f32]) {
        let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in x.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        x.iter_mut().for_each(|v| *v *= inv);
    }

    fn kv_keys_f32(&self, k: KvBlock<'_>, head_dim: usize, dst: &mut [f32]) {
        assert!(k.fits(head_dim) && dst.len() >= head_dim * 16);
        for d in 0..head_dim {
            for j in 0..16 {
                dst[d * 16 + j] = crate::kv::key_at(k, d, j);
            }
        }
    }

    fn lora_shrink(&self, a: LoraRows<'_>, x: &[f32], h: &mut [f32]) {
        let n = x.len();
        assert!(a.len() >= h.len() * n);
        for (r, h) in h.iter_mut().enumerate() {
            let mut acc = 0.0f32;
            for (i, &xi) in x.iter().enumerate() {
                acc = lora_at(&a, r * n + i).mul_add(xi, acc);
            }
            *h = acc;
        }
    }

    fn lora_expand(&self, b: LoraRows<'_>, h: &[f32], y: &mut [f32]) {
        let n = y.len();
        assert!(b.len() >= h.len() * n);
        for (r, &c) in h.iter().enumerate() {
            for (i, y) in y.iter_mut().enumerate() {
                *y = c.mul_add(lora_at(&b, r * n + i), *y);
            }
        }
    }

    fn kv_values_f32(&self, v: KvBlock<'_>, head_dim: usize, dst: &mut [f32]) {
        assert!(v.fits(head_dim) && dst.len() >= head_dim * 16);
        for j in 0..16 {
            for d in 0..head_dim {
                dst[j * head_dim + d] = crate::kv::value_at(v, head_dim, j, d);
            }
        }
    }

    fn attn_scores(
        &self,
        keys: &[KvBlock<'_>],
        q: &[f32],
        rows: usize,
        head_dim: usize,
        scale: f32,
        out: &mut [f32],
        ld: usize,
        buf: &mut Vec<f32>,
    ) {
        assert!(q.len() >= rows * head_dim);
        assert!(rows == 0 || out.len() >= (rows - 1) * ld + keys.len() * 16);
        buf.resize(head_dim * 16, 0.0);
        let kt = buf.as_mut_slice();
        for (b, &kb) in keys.iter().enumerate() {
            self.kv_keys_f32(kb, head_dim, kt);
            for r in 0..rows {
                let qr = &q[r * head_dim..(r + 1) * head_dim];
                for j in 0..16 {
                    let mut acc = 0.0f32;
                    for d in 0..head_dim {
                        acc = qr[d].mul_add(kt[d * 16 + j], acc);
                    }
                    out[r * ld + b * 16 + j] = acc * scale;
                }
            }
        }
    }

    fn attn_values(
        &self,
        values: &[KvBlock<'_>],
        p: &[f32],
        ld: usize,
        rows: usize,
        head_dim: usize,
        out: &mut [f32],
        buf: &mut Vec<f32>,
    ) {
        assert!(out.len() >= rows * head_dim);
        assert!(rows == 0 || p.len() >= (rows - 1) * ld + values.len() * 16);
        buf.resize(head_dim * 16, 0.0);
        let v = buf.as_mut_slice();
        for (b, &vb) in values.iter().enumerate() {
            self.kv_values_f32(vb, head_dim, v);
            for r in 0..rows {
                let o = &mut out[r * head_dim..(r + 1) * head_dim];
                for j in 0..16 {
                    let w = p[r * ld + b * 16 + j];
                    for (c, x) in o.iter_mut().enumerate() {
                        *x = w.mul_add(v[j * head_dim + c], *x);
                    }
                }
            }
        }
    }

    fn exp_sum(&self, x: &mut [f32]) -> (f32, f32) {
        let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in x.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        (max, sum)
    }
}
