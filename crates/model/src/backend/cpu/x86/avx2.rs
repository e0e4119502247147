//! AVX2 + FMA + F16C kernels. Each function must only be called when the CPU has those features
//! (`Isa::Avx2` is selected only then).
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::quant::{ActRow, GgmlType, QK};

#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps(v, 1);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// The f16 at byte offset `i` of `b`, converted with F16C (no call, no spill).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_at(b: &[u8], i: usize) -> f32 {
    let bits = (b.as_ptr().add(i) as *const u16).read_unaligned();
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// Quantizes a row of activations in blocks of 32 (see [`quantize_block_q8`]).
///
/// # Safety
/// CPU must support AVX2/FMA/F16C; `x.len()` is a multiple of 32; `qs` as long as `x`, `d`
/// and `s` one entry per block, `sums` two.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn quantize_row(
    x: &[f32],
    qs: &mut [i8],
    d: &mut [f32],
    s: &mut [f32],
    sums: &mut [i16],
) {
    let nb = x.len() / QK;
    assert!(qs.len() >= nb * QK && d.len() >= nb && s.len() >= nb && sums.len() >= 2 * nb);
    for b in 0..nb {
        let (db, sb, [lo, hi]) =
            quantize_block_q8(&x[b * QK..(b + 1) * QK], &mut qs[b * QK..(b + 1) * QK]);
        (d[b], s[b], sums[2 * b], sums[2 * b + 1]) = (db, sb, lo, hi);
    }
}

/// `v` rounded to f16 and back (round to nearest even, as `half::f16::from_f32`).
#[inline(always)]
unsafe fn round_f16(v: f32) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(
        _mm_set_ss(v),
    )))
}

/// Quantizes 32 floats to int8 with one scale: returns `(d, s)` as
/// [`crate::quant::scalar::quantize_block_q8`] does, and the integer sums of the two halves.
///
/// # Safety
/// CPU must support AVX2/FMA/F16C; `x` has ≥ 32 elements, `q` ≥ 32.
#[inline(always)]
pub unsafe fn quantize_block_q8(x: &[f32], q: &mut [i8]) -> (f32, f32, [i16; 2]) {
    let p = x.as_ptr();
    let v = [
        _mm256_loadu_ps(p),
        _mm256_loadu_ps(p.add(8)),
        _mm256_loadu_ps(p.add(16)),
        _mm256_loadu_ps(p.add(24)),
    ];
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_andnot_ps(sign, v[0]);
    for vi in &v[1..] {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, *vi));
    }
    let amax = super::avx2_ops::hmax(m);
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let idv = _mm256_set1_ps(id);
    let mut ints = [_mm256_setzero_si256(); 4];
    for i in 0..4 {
        let r = _mm256_round_ps(
            _mm256_mul_ps(v[i], idv),
            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
        );
        ints[i] = _mm256_cvtps_epi32(r);
    }
    let reduce = |v: __m256i| {
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s4 = _mm_hadd_epi32(s4, s4);
        let s4 = _mm_hadd_epi32(s4, s4);
        _mm_cvtsi128_si32(s4)
    };
    let lo = reduce(_mm256_add_epi32(ints[0], ints[1]));
    let hi = reduce(_mm256_add_epi32(ints[2], ints[3]));
    let sum = lo + hi;
    // Pack 32 i32 → 32 i8 (packs interleave lanes; fix with a permute).
    let a = _mm256_packs_epi32(ints[0], ints[1]);
    let b = _mm256_packs_epi32(ints[2], ints[3]);
    let c = _mm256_packs_epi16(a, b);
    let c = _mm256_permutevar8x32_epi32(c, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, c);
    // As `scalar::round_scales`: d and d·Σq stored as f16, like llama.cpp's Q8_1.
    (
        round_f16(d),
        round_f16(d * sum as f32),
        [lo as i16, hi as i16],
    )
}

/// 32 nibbles of 16 bytes as 32 unsigned bytes (low nibbles first, then high).
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn unpack_nibbles(p: *const u8) -> __m256i {
    let raw = _mm_loadu_si128(p as *const __m128i);
    let mask = _mm_set1_epi8(0x0F);
    let lo = _mm_and_si128(raw, mask);
    let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    _mm256_set_m128i(hi, lo)
}

/// Σ (u8 w_i) * (i8 x_i) over 32 lanes, as 8 f32 partial sums.
#[inline]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_u8_i8(w: __m256i, x: __m256i) -> __m256 {
    let p16 = _mm256_maddubs_epi16(w, x);
    let p32 = _mm256_madd_epi16(p16, _mm256_set1_epi16(1));
    _mm256_cvtepi32_ps(p32)
}

/// Type tags for the const-generic kernels (the ggml type ids), so each type gets its own
/// branch-free inner loop.
pub const T_Q4_0: u32 = 2;
pub const T_Q4_1: u32 = 3;
pub const T_Q8_0: u32 = 8;

/// The weight block at `blk`, unpacked once for all activation rows: 32 values as bytes
/// (unsigned nibbles for Q4_1, absolute values for Q4_0 (q − 8) and Q8_0), the signs of those
/// two, scale and offset.
#[inline(always)]
unsafe fn load_block<const TY: u32>(blk: *const u8) -> (__m256i, __m256i, f32, f32) {
    let h = |i: usize| {
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
            (blk.add(i) as *const u16).read_unaligned() as i32,
        )))
    };
    match TY {
        T_Q4_1 => (
            unpack_nibbles(blk.add(4)),
            _mm256_setzero_si256(),
            h(0),
            h(2),
        ),
        T_Q4_0 => {
            // q − 8 as signed bytes: the offset is exact, as in the scalar reference.
            let w = _mm256_sub_epi8(unpack_nibbles(blk.add(2)), _mm256_set1_epi8(8));
            (_mm256_sign_epi8(w, w), w, h(0), 0.0)
        }
        _ => {
            let w = _mm256_loadu_si256(blk.add(2) as *const __m256i);
            (_mm256_sign_epi8(w, w), w, h(0), 0.0)
        }
    }
}

/// Adds block `b` (unpacked as `w`, `sign`, scale `d`, offset `m`) times activation row `a`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block_dot<const TY: u32>(
    w: __m256i,
    sign: __m256i,
    d: f32,
    m: f32,
    a: &ActRow<'_>,
    b: usize,
    acc: &mut __m256,
    off: &mut f32,
) {
    let mut x = _mm256_loadu_si256(a.0.as_ptr().add(b * QK) as *const __m256i);
    if TY == T_Q8_0 || TY == T_Q4_0 {
        x = _mm256_sign_epi8(x, sign);
    }
    *acc = _mm256_fmadd_ps(
        _mm256_set1_ps(d * *a.1.get_unchecked(b)),
        dot_u8_i8(w, x),
        *acc,
    );
    if TY == T_Q4_1 {
        *off += m * *a.2.get_unchecked(b);
    }
}

/// Dot products of one quantized weight row with `N` activation rows: `out[i] = w · acts[i]`.
///
/// The weight block is unpacked once for all rows. Each row's result is computed by the same
/// sequence of operations whatever `N` is (even blocks into one accumulator, odd blocks into
/// another, then a fixed reduction), so results are bit-identical for any batch.
///
/// # Safety
/// CPU must support AVX2/FMA/F16C; `TY` is one of the `T_*` tags and `w` holds rows of that
/// type with the activation rows' block count.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q_rows<const TY: u32, const N: usize>(
    w: &[u8],
    acts: &[ActRow<'_>; N],
    out: &mut [f32; N],
) {
    let nb = acts[0].1.len();
    let bb = match TY {
        T_Q4_1 => 20,
        T_Q4_0 => 18,
        _ => 34,
    };
    debug_assert!(
        w.len() >= nb * bb && acts.iter().all(|a| a.1.len() == nb && a.0.len() >= nb * QK)
    );
    let mut acc = [[_mm256_setzero_ps(); 2]; N];
    let mut off = [[0.0f32; 2]; N];
    let wp = w.as_ptr();
    let mut b = 0;
    while b + 1 < nb {
        let (w0, s0, d0, m0) = load_block::<TY>(wp.add(b * bb));
        let (w1, s1, d1, m1) = load_block::<TY>(wp.add((b + 1) * bb));
        for i in 0..N {
            let [a0, a1] = &mut acc[i];
            let [o0, o1] = &mut off[i];
            block_dot::<TY>(w0, s0, d0, m0, &acts[i], b, a0, o0);
            block_dot::<TY>(w1, s1, d1, m1, &acts[i], b + 1, a1, o1);
        }
        b += 2;
    }
    if b < nb {
        let (w0, s0, d0, m0) = load_block::<TY>(wp.add(b * bb));
        for i in 0..N {
            block_dot::<TY>(w0, s0, d0, m0, &acts[i], b, &mut acc[i][0], &mut off[i][0]);
        }
    }
    for i in 0..N {
        out[i] = hsum(_mm256_add_ps(acc[i][0], acc[i][1])) + (off[i][0] + off[i][1]);
    }
}

/// [`dot_q_rows`] with the type chosen at run time.
///
/// # Safety
/// As for [`dot_q_rows`]; `ty` is Q4_0, Q4_1 or Q8_0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q_rows_dyn<const N: usize>(
    ty: GgmlType,
    w: &[u8],
    acts: &[ActRow<'_>; N],
    out: &mut [f32; N],
) {
    match ty {
        GgmlType::Q4_1 => dot_q_rows::<T_Q4_1, N>(w, acts, out),
        GgmlType::Q4_0 => dot_q_rows::<T_Q4_0, N>(w, acts, out),
        GgmlType::Q8_0 => dot_q_rows::<T_Q8_0, N>(w, acts, out),
        GgmlType::Q5_0 => super::avx2_k::dot_rows::<{ super::avx2_k::T_Q5_0 }, N>(w, acts, out),
        GgmlType::Q5_1 => super::avx2_k::dot_rows::<{ super::avx2_k::T_Q5_1 }, N>(w, acts, out),
        GgmlType::Q4_K => super::avx2_k::dot_rows::<{ super::avx2_k::T_Q4_K }, N>(w, acts, out),
        GgmlType::Q5_K => super::avx2_k::dot_rows::<{ super::avx2_k::T_Q5_K }, N>(w, acts, out),
        GgmlType::Q6_K => super::avx2_k::dot_rows::<{ super::avx2_k::T_Q6_K }, N>(w, acts, out),
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => {
            unreachable!("float weights take float activations")
        }
    }
}

/// # Safety
/// CPU must support AVX2/FMA/F16C; slices as for [`crate::quant::scalar::dot_q`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_q(ty: GgmlType, w: &[u8], qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    let mut out = [0.0f32];
    dot_q_rows_dyn::<1>(ty, w, &[(qs, d, s)], &mut out);
    out[0]
}

/// # Safety
/// CPU must support AVX2/FMA/F16C; `w` holds `x.len()` elements of type `ty`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_f(ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    let n = x.len();
    let n8 = n / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    let xp = x.as_ptr();
    match ty {
        GgmlType::F32 => {
            let wp = w.as_ptr() as *const f32;
            for i in (0..n8).step_by(8) {
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(i)), _mm256_loadu_ps(xp.add(i)), acc);
            }
            let mut t = hsum(acc);
            for i in n8..n {
                t += wp.add(i).read_unaligned() * x[i];
            }
            t
        }
        GgmlType::F16 => {
            let wp = w.as_ptr();
            for i in (0..n8).step_by(8) {
                let h = _mm_loadu_si128(wp.add(2 * i) as *const __m128i);
                acc = _mm256_fmadd_ps(_mm256_cvtph_ps(h), _mm256_loadu_ps(xp.add(i)), acc);
            }
            let mut t = hsum(acc);
            for i in n8..n {
                t += f16_at(w, 2 * i) * x[i];
            }
            t
        }
        _ => unreachable!("quantized weights take quantized activations"),
    }
}
