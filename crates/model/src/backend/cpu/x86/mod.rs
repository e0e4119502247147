//! x86-64 kernel tables: AVX2 (+FMA, F16C), and the VNNI levels built on it.
//! Each `unsafe` call below is sound because a table is only handed out by [`kernels`] for a
//! level that [`available`] confirmed on this CPU.
#![allow(unsafe_op_in_unsafe_fn)]

mod attn;
mod attn512;
pub mod avx2;
pub mod avx2_k;
pub mod avx2_ops;
mod lora;
mod packed;
mod simd;

use std::ops::Range;

use super::{Isa, Kernels, KvBlock, LoraRows, OutTile};
use crate::quant::repack::{PackSpec, Packed};
use crate::quant::{ActRow, GgmlType, QuantizedActs};

/// Whether this CPU runs `isa`.
pub fn available(isa: Isa) -> bool {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    match isa {
        Isa::Scalar => true,
        Isa::Avx2 => avx2,
        Isa::AvxVnni => avx2 && is_x86_feature_detected!("avxvnni"),
        Isa::Avx512Vnni => {
            avx2 && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512vnni")
        }
    }
}

/// The AVX-VNNI kernel with `vpdpbusd` emulated, for tests on CPUs without it.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; as [`Kernels::packed_matmul`].
#[cfg(test)]
pub unsafe fn emulated_avxvnni_matmul(
    w: &Packed,
    x: &QuantizedActs,
    rows: Range<usize>,
    out: &OutTile,
) {
    packed::matmul_emulated_avxvnni(w, x, rows, out)
}

/// The table of an available x86 level.
pub fn kernels(isa: Isa) -> &'static dyn Kernels {
    match isa {
        Isa::Avx2 => &AVX2,
        Isa::AvxVnni => &AVX_VNNI,
        Isa::Avx512Vnni => &AVX512_VNNI,
        Isa::Scalar => unreachable!("scalar has no x86 table"),
    }
}

/// An x86 level. The VNNI levels differ from AVX2 in the repacked matmul (their own layout and
/// kernel); AVX-512 VNNI also runs the attention primitives on its own registers
/// (`attn512.rs`, the kernels of `attn.rs` over 16 lanes); every other
/// operation is the AVX2 one, which they all run.
pub struct X86(Isa);
static AVX2: X86 = X86(Isa::Avx2);
static AVX_VNNI: X86 = X86(Isa::AvxVnni);
static AVX512_VNNI: X86 = X86(Isa::Avx512Vnni);

impl Kernels for X86 {
    fn isa(&self) -> Isa {
        self.0
    }

    fn pack(&self) -> Option<PackSpec> {
        Some(match self.0 {
            Isa::Avx512Vnni => PackSpec {
                rows: 16,
                unsigned_q8: true,
            },
            Isa::AvxVnni => PackSpec {
                rows: 8,
                unsigned_q8: true,
            },
            _ => PackSpec {
                rows: 8,
                unsigned_q8: false,
            },
        })
    }

    fn quantize_row(
        &self,
        x: &[f32],
        qs: &mut [i8],
        d: &mut [f32],
        s: &mut [f32],
        sums: &mut [i16],
    ) {
        // SAFETY: see the module docs.
        unsafe { avx2::quantize_row(x, qs, d, s, sums) }
    }

    fn dot_rows(&self, ty: GgmlType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
        // SAFETY: see the module docs.
        unsafe {
            if let (Ok(a4), Ok(o4)) = (
                <&[ActRow<'_>; 4]>::try_from(acts),
                <&mut [f32; 4]>::try_from(&mut *out),
            ) {
                return avx2::dot_q_rows_dyn::<4>(ty, w, a4, o4);
            }
            for (o, a) in out.iter_mut().zip(acts) {
                let mut one = [0.0f32];
                avx2::dot_q_rows_dyn::<1>(ty, w, &[*a], &mut one);
                *o = one[0];
            }
        }
    }

    fn dot_f(&self, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
        // SAFETY: see the module docs.
        unsafe { avx2::dot_f(ty, w, x) }
    }

    fn packed_matmul(&self, w: &Packed, x: &QuantizedActs, rows: Range<usize>, out: &OutTile) {
        // SAFETY: see the module docs; activations come from `quantize_row`.
        unsafe {
            match self.0 {
                Isa::Avx512Vnni => packed::matmul_avx512vnni(w, x, rows, out),
                Isa::AvxVnni => packed::matmul_avxvnni(w, x, rows, out),
                _ => packed::matmul_avx2(w, x, rows, out),
            }
        }
    }

    fn sum_squares(&self, x: &[f32]) -> f32 {
        // SAFETY: see the module docs.
        unsafe { avx2_ops::sum_squares(x) }
    }

    fn silu_mul(&self, g: &mut [f32], u: &[f32]) {
        // SAFETY: see the module docs.
        unsafe { avx2_ops::silu_mul(g, u) }
    }

    fn gelu_mul(&self, g: &mut [f32], u: &[f32]) {
        // SAFETY: see the module docs.
        unsafe { avx2_ops::gelu_mul(g, u) }
    }

    fn softmax(&self, x: &mut [f32]) {
        // SAFETY: see the module docs.
        unsafe { avx2_ops::softmax(x) }
    }

    fn kv_keys_f32(&self, k: KvBlock<'_>, head_dim: usize, dst: &mut [f32]) {
        let n = head_dim * 16;
        assert!(k.fits(head_dim) && dst.len() >= n);
        // SAFETY: see the module docs; sizes checked above (q8_0 implies head_dim % 32 == 0).
        unsafe {
            match k {
                KvBlock::F16(h) => attn::f16_to_f32(h.as_ptr(), n, dst.as_mut_ptr()),
                KvBlock::Q8 { q, d } => {
                    attn::q8_keys_to_f32(q.as_ptr(), d.as_ptr(), head_dim, dst.as_mut_ptr())
                }
            }
        }
    }

    fn lora_shrink(&self, a: LoraRows<'_>, x: &[f32], h: &mut [f32]) {
        assert!(a.len() >= h.len() * x.len());
        // SAFETY: see the module docs; `a` holds the rows (checked).
        unsafe {
            match a {
                LoraRows::F32(a) => lora::shrink(a, x, h),
                LoraRows::F16(a) => lora::shrink(a, x, h),
            }
        }
    }

    fn lora_expand(&self, b: LoraRows<'_>, h: &[f32], y: &mut [f32]) {
        assert!(b.len() >= h.len() * y.len());
        // SAFETY: see the module docs; `b` holds the rows (checked).
        unsafe {
            match b {
                LoraRows::F32(b) => lora::expand(b, h, y),
                LoraRows::F16(b) => lora::expand(b, h, y),
            }
        }
    }

    fn kv_values_f32(&self, v: KvBlock<'_>, head_dim: usize, dst: &mut [f32]) {
        let n = head_dim * 16;
        assert!(v.fits(head_dim) && dst.len() >= n);
        if !head_dim.is_multiple_of(8) {
            return super::scalar::SCALAR.kv_values_f32(v, head_dim, dst);
        }
        // SAFETY: see the module docs; sizes checked above.
        unsafe {
            match v {
                KvBlock::F16(h) => attn::f16_to_f32(h.as_ptr(), n, dst.as_mut_ptr()),
                KvBlock::Q8 { q, d } => {
                    attn::q8_values_to_f32(q.as_ptr(), d.as_ptr(), head_dim, dst.as_mut_ptr())
                }
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
        assert!(q.len() >= rows * head_dim && keys.iter().all(|k| k.fits(head_dim)));
        assert!(rows == 0 || keys.is_empty() || out.len() >= (rows - 1) * ld + keys.len() * 16);
        // SAFETY: see the module docs; sizes checked above.
        unsafe {
            if self.0 == Isa::Avx512Vnni {
                return attn512::scores(
                    keys,
                    q.as_ptr(),
                    rows,
                    head_dim,
                    scale,
                    out.as_mut_ptr(),
                    ld,
                    buf,
                );
            }
            attn::scores(
                keys,
                q.as_ptr(),
                rows,
                head_dim,
                scale,
                out.as_mut_ptr(),
                ld,
                buf,
            )
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
        if !head_dim.is_multiple_of(8) {
            return super::scalar::SCALAR.attn_values(values, p, ld, rows, head_dim, out, buf);
        }
        assert!(out.len() >= rows * head_dim && values.iter().all(|v| v.fits(head_dim)));
        assert!(rows == 0 || values.is_empty() || p.len() >= (rows - 1) * ld + values.len() * 16);
        // SAFETY: see the module docs; sizes checked above.
        unsafe {
            if self.0 == Isa::Avx512Vnni && head_dim.is_multiple_of(16) {
                let (pp, op) = (p.as_ptr(), out.as_mut_ptr());
                return attn512::values(values, pp, ld, rows, head_dim, op, buf);
            }
            attn::values(
                values,
                p.as_ptr(),
                ld,
                rows,
                head_dim,
                out.as_mut_ptr(),
                buf,
            )
        }
    }

    fn exp_sum(&self, x: &mut [f32]) -> (f32, f32) {
        // SAFETY: see the module docs.
        unsafe {
            if self.0 == Isa::Avx512Vnni {
                return attn512::exp_sum(x);
            }
            attn::exp_sum(x)
        }
    }
}
