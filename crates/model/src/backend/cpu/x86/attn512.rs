//! AVX-512 entry points of the attention primitives (the AVX-512 VNNI level's table): the
//! kernels of `attn.rs` over 16-lane registers (one block's 16 keys in one register) and 32 of
//! them, so decode tiles keep four blocks in flight and prefill tiles twelve query rows without
//! spilling; and the exponentials of a score row.
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::attn::{scores_g, values_g, Tiles};
use super::simd::Zmm;
use crate::backend::cpu::KvBlock;

const TILES: Tiles = Tiles {
    blocks_few: 4,
    blocks_more: 4,
    value_regs_few: 4,
    value_regs_more: 4,
    value_regs: 4,
};

/// See `Kernels::attn_scores` (and `attn::scores`).
///
/// # Safety
/// CPU must support AVX-512 F/BW/VL, FMA, F16C; as `attn::scores`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c,avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn scores(
    keys: &[KvBlock<'_>],
    q: *const f32,
    rows: usize,
    hd: usize,
    scale: f32,
    out: *mut f32,
    ld: usize,
    buf: &mut Vec<f32>,
) {
    scores_g::<Zmm, 12>(&TILES, keys, q, rows, hd, scale, out, ld, buf)
}

/// See `Kernels::attn_values` (and `attn::values`).
///
/// # Safety
/// CPU must support AVX-512 F/BW/VL, FMA, F16C; `hd` is a multiple of 16; as `attn::values`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c,avx2")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn values(
    values: &[KvBlock<'_>],
    p: *const f32,
    ld: usize,
    rows: usize,
    hd: usize,
    out: *mut f32,
    buf: &mut Vec<f32>,
) {
    values_g::<Zmm>(&TILES, values, p, ld, rows, hd, out, buf)
}

/// `e^x` for `x ≤ 0` (and `-inf`, which gives an exact 0), sixteen lanes: the same range
/// reduction and degree-6 polynomial as `avx2_ops::exp8`, the power of two by `vscalefps`.
#[inline(always)]
unsafe fn exp16_nonpos(x: __m512) -> __m512 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let lo = _mm512_set1_ps(-87.3);
    let keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
    let xc = _mm512_max_ps(x, lo);
    let n = _mm512_roundscale_ps(
        _mm512_mul_ps(xc, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), xc);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n))
}

/// See `Kernels::exp_sum`: sixteen partial sums from `x[0]` (a tail padded with `-inf`), then
/// one fixed reduction.
///
/// # Safety
/// CPU must support AVX-512 F.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,avx2")]
pub unsafe fn exp_sum(x: &mut [f32]) -> (f32, f32) {
    let n16 = x.len() / 16 * 16;
    let tail = (x.len() - n16) as u32;
    let tmask: __mmask16 = ((1u32 << tail) - 1) as __mmask16;
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut mv = _mm512_mask_loadu_ps(ninf, tmask, x.as_ptr().add(n16));
    for i in (0..n16).step_by(16) {
        mv = _mm512_max_ps(mv, _mm512_loadu_ps(x.as_ptr().add(i)));
    }
    let max = _mm512_reduce_max_ps(mv);
    let m = _mm512_set1_ps(max);
    let mut sum = _mm512_setzero_ps();
    for i in (0..n16).step_by(16) {
        let p = x.as_mut_ptr().add(i);
        let e = exp16_nonpos(_mm512_sub_ps(_mm512_loadu_ps(p), m));
        sum = _mm512_add_ps(sum, e);
        _mm512_storeu_ps(p, e);
    }
    if tail > 0 {
        let p = x.as_mut_ptr().add(n16);
        let e = exp16_nonpos(_mm512_sub_ps(_mm512_mask_loadu_ps(ninf, tmask, p), m));
        sum = _mm512_add_ps(sum, e);
        _mm512_mask_storeu_ps(p, tmask, e);
    }
    // A fixed reduction: halves added pairwise.
    let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(sum)));
    let s8 = _mm256_add_ps(_mm512_castps512_ps256(sum), hi);
    (max, super::avx2::hsum(s8))
}
