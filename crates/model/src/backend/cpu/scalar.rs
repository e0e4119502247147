//! The scalar kernel table: plain Rust on any CPU, the definition every vector level is tested
//! against. Quantized weights are read in their GGUF layout (no repacking).

use std::ops::Range;

use half::f16;

use super::{Isa, Kernels, KvRows, LoraRows, OutTile};
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

/// Element `i` of a KV row set as f32.
#[inline]
fn kv_at(rows: &KvRows<'_>, p: usize, i: usize) -> f32 {
    match *rows {
        KvRows::F16 { data, stride } => f16::from_bits(data[p * stride + i]).to_f32(),
        KvRows::F32 { data, stride } => data[p * stride + i],
    }
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

    fn dot_f16(&self, k: &[u16], q: &[f32]) -> f32 {
        k.iter()
            .zip(q)
            .map(|(a, b)| f16::from_bits(*a).to_f32() * b)
            .sum()
    }

    fn axpy_f16(&self, a: f32, v: &[u16], out: &mut [f32]) {
        out.iter_mut()
            .zip(v)
            .for_each(|(o, x)| *o += a * f16::from_bits(*x).to_f32());
    }

    fn scores8(&self, k: KvRows<'_>, q: &[f32], scale: f32, out: &mut [f32]) {
        assert!(k.covers(8, q.len()) && out.len() >= 8);
        for (p, o) in out[..8].iter_mut().enumerate() {
            *o = (0..q.len()).map(|i| kv_at(&k, p, i) * q[i]).sum::<f32>() * scale;
        }
    }

    fn weighted_rows(&self, v: KvRows<'_>, w: &[f32], out: &mut [f32]) {
        assert!(v.covers(w.len(), out.len()));
        for (p, &wp) in w.iter().enumerate() {
            for (i, o) in out.iter_mut().enumerate() {
                *o += wp * kv_at(&v, p, i);
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

    fn f16_to_f32_rows(
        &self,
        src: &[u16],
        stride: usize,
        rows: usize,
        width: usize,
        dst: &mut [f32],
    ) {
        for p in 0..rows {
            for i in 0..width {
                dst[p * width + i] = f16::from_bits(src[p * stride + i]).to_f32();
            }
        }
    }
}
