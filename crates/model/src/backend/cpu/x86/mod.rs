//! x86-64 kernel tables: AVX2 (+FMA, F16C), and the VNNI levels built on it.
//! Each `unsafe` call below is sound because a table is only handed out by [`kernels`] for a
//! level that [`available`] confirmed on this CPU.
#![allow(unsafe_op_in_unsafe_fn)]

pub mod avx2;
pub mod avx2_k;
pub mod avx2_ops;
mod lora;
mod packed;
mod simd;

use std::ops::Range;

use super::{Isa, Kernels, KvRows, LoraRows, OutTile};
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

/// An x86 level. The VNNI levels differ from AVX2 only in the repacked matmul (their own
/// layout and kernel); every other operation is the AVX2 one, which they all run.
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

    fn dot_f16(&self, k: &[u16], q: &[f32]) -> f32 {
        if !q.len().is_multiple_of(8) {
            return super::scalar::SCALAR.dot_f16(k, q);
        }
        assert!(k.len() >= q.len());
        // SAFETY: see the module docs.
        unsafe { avx2::dot_f16_f32(k, q) }
    }

    fn axpy_f16(&self, a: f32, v: &[u16], out: &mut [f32]) {
        if !out.len().is_multiple_of(8) {
            return super::scalar::SCALAR.axpy_f16(a, v, out);
        }
        assert!(v.len() >= out.len());
        // SAFETY: see the module docs.
        unsafe { avx2::axpy_f16(a, v, out) }
    }

    fn scores8(&self, k: KvRows<'_>, q: &[f32], scale: f32, out: &mut [f32]) {
        assert!(k.covers(8, q.len()) && q.len().is_multiple_of(8) && out.len() >= 8);
        // SAFETY: see the module docs; the 8 rows lie inside `k` (checked).
        unsafe {
            let s = match k {
                KvRows::F16 { data, stride } => avx2::dot8(data.as_ptr(), stride, q),
                KvRows::F32 { data, stride } => avx2::dot8(data.as_ptr(), stride, q),
            };
            avx2::scale_store8(s, scale, out);
        }
    }

    fn weighted_rows(&self, v: KvRows<'_>, w: &[f32], out: &mut [f32]) {
        assert!(v.covers(w.len(), out.len()) && matches!(out.len(), 64 | 128));
        // SAFETY: see the module docs; the rows lie inside `v` (checked).
        unsafe {
            match (v, out.len()) {
                (KvRows::F16 { data, stride }, 64) => {
                    avx2::weighted_rows::<u16, 8>(data.as_ptr(), stride, w, out)
                }
                (KvRows::F16 { data, stride }, _) => {
                    avx2::weighted_rows::<u16, 16>(data.as_ptr(), stride, w, out)
                }
                (KvRows::F32 { data, stride }, 64) => {
                    avx2::weighted_rows::<f32, 8>(data.as_ptr(), stride, w, out)
                }
                (KvRows::F32 { data, stride }, _) => {
                    avx2::weighted_rows::<f32, 16>(data.as_ptr(), stride, w, out)
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

    fn f16_to_f32_rows(
        &self,
        src: &[u16],
        stride: usize,
        rows: usize,
        width: usize,
        dst: &mut [f32],
    ) {
        let src_rows = KvRows::F16 { data: src, stride };
        assert!(
            src_rows.covers(rows, width) && width.is_multiple_of(8) && dst.len() >= rows * width
        );
        // SAFETY: see the module docs; the rows lie inside `src` (checked).
        unsafe { avx2::f16_rows_to_f32(src.as_ptr(), stride, rows, width, dst) }
    }
}
