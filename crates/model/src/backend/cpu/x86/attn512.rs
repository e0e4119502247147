//! AVX-512 forms of the attention primitives (the AVX-512 VNNI level's table): the same
//! contract as `attn.rs` — every score one chain of fused multiply-adds over the dimensions in
//! order, every value element one chain over the keys in order — with 16-lane registers (one
//! block's 16 keys in one register) and 32 of them, so decode tiles keep four blocks in flight
//! and prefill tiles twelve query rows without spilling.
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::attn::{q8_keys_to_f32, q8_values_to_f32};
use crate::backend::cpu::KvBlock;

/// Query rows per prefill score tile (12 accumulators of 16 keys).
const ROWS: usize = 12;
/// Query rows per prefill value tile (6 rows × 64 columns = 24 accumulators).
const VROWS: usize = 6;
/// Most blocks of a call read in place.
const MAX_FUSED: usize = 64;

#[inline(always)]
unsafe fn cvt16(p: *const u16) -> __m512 {
    _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
}

#[inline(always)]
unsafe fn i8x16(p: *const i8) -> __m512 {
    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i)))
}

/// `n` f16 (a multiple of 16) as f32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,fma,f16c")]
unsafe fn f16_to_f32(src: *const u16, n: usize, dst: *mut f32) {
    for i in (0..n).step_by(16) {
        _mm512_storeu_ps(dst.add(i), cvt16(src.add(i)));
    }
}

/// One block's keys read in place: dimension `d` of its 16 keys.
trait Keys: Copy {
    unsafe fn group(self, g: usize) -> __m512;
    unsafe fn dim(self, d: usize, scale: __m512) -> __m512;
}

#[derive(Clone, Copy)]
struct F16Keys(*const u16);
impl Keys for F16Keys {
    #[inline(always)]
    unsafe fn group(self, _g: usize) -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn dim(self, d: usize, _s: __m512) -> __m512 {
        cvt16(self.0.add(d * 16))
    }
}

#[derive(Clone, Copy)]
struct Q8Keys(*const i8, *const u16);
impl Keys for Q8Keys {
    #[inline(always)]
    unsafe fn group(self, g: usize) -> __m512 {
        cvt16(self.1.add(g * 16))
    }
    #[inline(always)]
    unsafe fn dim(self, d: usize, s: __m512) -> __m512 {
        _mm512_mul_ps(i8x16(self.0.add(d * 16)), s)
    }
}

/// Scores of `R` rows against `NB` blocks read in place.
#[inline(always)]
unsafe fn scores_fused<K: Keys, const R: usize, const NB: usize>(
    keys: [K; NB],
    q: *const f32,
    hd: usize,
    scale: __m512,
    out: *mut f32,
    ld: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); R]; NB];
    for g in 0..hd.div_ceil(32) {
        let sc: [__m512; NB] = std::array::from_fn(|b| keys[b].group(g));
        for d in g * 32..hd.min(g * 32 + 32) {
            for b in 0..NB {
                let k = keys[b].dim(d, sc[b]);
                for r in 0..R {
                    acc[b][r] = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(r * hd + d)), k, acc[b][r]);
                }
            }
        }
    }
    for b in 0..NB {
        for r in 0..R {
            _mm512_storeu_ps(out.add(r * ld + b * 16), _mm512_mul_ps(acc[b][r], scale));
        }
    }
}

#[inline(always)]
unsafe fn scores_few<K: Keys, const R: usize>(
    keys: &[K],
    q: *const f32,
    hd: usize,
    s: __m512,
    out: *mut f32,
    ld: usize,
) {
    let mut b = 0;
    while b + 4 <= keys.len() {
        let four = [keys[b], keys[b + 1], keys[b + 2], keys[b + 3]];
        scores_fused::<K, R, 4>(four, q, hd, s, out.add(b * 16), ld);
        b += 4;
    }
    while b < keys.len() {
        scores_fused::<K, R, 1>([keys[b]], q, hd, s, out.add(b * 16), ld);
        b += 1;
    }
}

#[inline(always)]
unsafe fn few_rows<K: Keys>(
    keys: &[K],
    q: *const f32,
    rows: usize,
    hd: usize,
    s: __m512,
    out: *mut f32,
    ld: usize,
) {
    match rows {
        1 => scores_few::<K, 1>(keys, q, hd, s, out, ld),
        2 => scores_few::<K, 2>(keys, q, hd, s, out, ld),
        3 => scores_few::<K, 3>(keys, q, hd, s, out, ld),
        _ => scores_few::<K, 4>(keys, q, hd, s, out, ld),
    }
}

/// `R` rows × the 16 converted keys of one block (`kt`: `[hd][16]`).
#[inline(always)]
unsafe fn scores_tile<const R: usize>(
    kt: *const f32,
    q: *const f32,
    hd: usize,
    scale: __m512,
    out: *mut f32,
    ld: usize,
) {
    let mut acc = [_mm512_setzero_ps(); R];
    for d in 0..hd {
        let k = _mm512_loadu_ps(kt.add(d * 16));
        for r in 0..R {
            acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(r * hd + d)), k, acc[r]);
        }
    }
    for r in 0..R {
        _mm512_storeu_ps(out.add(r * ld), _mm512_mul_ps(acc[r], scale));
    }
}

#[inline(always)]
unsafe fn scores_f32(
    kt: *const f32,
    q: *const f32,
    rows: usize,
    hd: usize,
    s: __m512,
    out: *mut f32,
    ld: usize,
) {
    let mut r = 0;
    while r + ROWS <= rows {
        scores_tile::<ROWS>(kt, q.add(r * hd), hd, s, out.add(r * ld), ld);
        r += ROWS;
    }
    let (qr, or) = (q.add(r * hd), out.add(r * ld));
    match rows - r {
        1 => scores_tile::<1>(kt, qr, hd, s, or, ld),
        2 => scores_tile::<2>(kt, qr, hd, s, or, ld),
        3 => scores_tile::<3>(kt, qr, hd, s, or, ld),
        4 => scores_tile::<4>(kt, qr, hd, s, or, ld),
        5 => scores_tile::<5>(kt, qr, hd, s, or, ld),
        6 => scores_tile::<6>(kt, qr, hd, s, or, ld),
        7 => scores_tile::<7>(kt, qr, hd, s, or, ld),
        8 => scores_tile::<8>(kt, qr, hd, s, or, ld),
        9 => scores_tile::<9>(kt, qr, hd, s, or, ld),
        10 => scores_tile::<10>(kt, qr, hd, s, or, ld),
        11 => scores_tile::<11>(kt, qr, hd, s, or, ld),
        _ => {}
    }
}

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
    let s = _mm512_set1_ps(scale);
    if (1..=4).contains(&rows) && keys.len() <= MAX_FUSED {
        match keys.first() {
            Some(KvBlock::F16(_)) => {
                let mut ks = [F16Keys(std::ptr::null()); MAX_FUSED];
                for (dst, k) in ks.iter_mut().zip(keys) {
                    let KvBlock::F16(h) = k else {
                        panic!("one call reads blocks of one type")
                    };
                    *dst = F16Keys(h.as_ptr());
                }
                return few_rows(&ks[..keys.len()], q, rows, hd, s, out, ld);
            }
            Some(KvBlock::Q8 { .. }) => {
                let mut ks = [Q8Keys(std::ptr::null(), std::ptr::null()); MAX_FUSED];
                for (dst, k) in ks.iter_mut().zip(keys) {
                    let KvBlock::Q8 { q, d } = k else {
                        panic!("one call reads blocks of one type")
                    };
                    *dst = Q8Keys(q.as_ptr(), d.as_ptr());
                }
                return few_rows(&ks[..keys.len()], q, rows, hd, s, out, ld);
            }
            None => return,
        }
    }
    if buf.len() < 16 * hd {
        buf.resize(16 * hd, 0.0);
    }
    let kt = buf.as_mut_ptr();
    for (b, k) in keys.iter().enumerate() {
        match *k {
            KvBlock::F16(h) => f16_to_f32(h.as_ptr(), hd * 16, kt),
            KvBlock::Q8 { q, d } => q8_keys_to_f32(q.as_ptr(), d.as_ptr(), hd, kt),
        }
        scores_f32(kt, q, rows, hd, s, out.add(b * 16), ld);
    }
}

/// One block's value rows read in place: 16 dimensions of a key's row.
trait Vals: Copy {
    unsafe fn scale(self, j: usize, g: usize) -> __m512;
    unsafe fn row16(self, j: usize, c: usize, scale: __m512) -> __m512;
}

#[derive(Clone, Copy)]
struct F16Vals(*const u16, usize);
impl Vals for F16Vals {
    #[inline(always)]
    unsafe fn scale(self, _j: usize, _g: usize) -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn row16(self, j: usize, c: usize, _s: __m512) -> __m512 {
        cvt16(self.0.add(j * self.1 + c))
    }
}

#[derive(Clone, Copy)]
struct Q8Vals(*const i8, *const u16, usize);
impl Vals for Q8Vals {
    #[inline(always)]
    unsafe fn scale(self, j: usize, g: usize) -> __m512 {
        let bits = self.1.add(j * (self.2 / 32) + g).read_unaligned();
        _mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))))
    }
    #[inline(always)]
    unsafe fn row16(self, j: usize, c: usize, s: __m512) -> __m512 {
        _mm512_mul_ps(i8x16(self.0.add(j * self.2 + c)), s)
    }
}

/// `R` rows × `16·C` columns from `c0` (within one 32-column scale group when `C ≤ 2`) over
/// every key of `vals`, read in place.
#[inline(always)]
unsafe fn values_fused<V: Vals, const R: usize, const C: usize>(
    vals: &[V],
    p: *const f32,
    ld: usize,
    hd: usize,
    c0: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for r in 0..R {
        for c in 0..C {
            acc[r][c] = _mm512_loadu_ps(out.add(r * hd + c0 + 16 * c));
        }
    }
    for (b, vb) in vals.iter().enumerate() {
        for j in 0..16 {
            for c in 0..C {
                let col = c0 + 16 * c;
                let v = vb.row16(j, col, vb.scale(j, col / 32));
                for r in 0..R {
                    let w = _mm512_set1_ps(*p.add(r * ld + b * 16 + j));
                    acc[r][c] = _mm512_fmadd_ps(w, v, acc[r][c]);
                }
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            _mm512_storeu_ps(out.add(r * hd + c0 + 16 * c), acc[r][c]);
        }
    }
}

#[inline(always)]
unsafe fn values_few<V: Vals, const R: usize>(
    vals: &[V],
    p: *const f32,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    let mut c = 0;
    while c + 64 <= hd {
        values_fused::<V, R, 4>(vals, p, ld, hd, c, out);
        c += 64;
    }
    while c < hd {
        values_fused::<V, R, 1>(vals, p, ld, hd, c, out);
        c += 16;
    }
}

#[inline(always)]
unsafe fn few_value_rows<V: Vals>(
    vals: &[V],
    p: *const f32,
    ld: usize,
    rows: usize,
    hd: usize,
    out: *mut f32,
) {
    match rows {
        1 => values_few::<V, 1>(vals, p, ld, hd, out),
        2 => values_few::<V, 2>(vals, p, ld, hd, out),
        3 => values_few::<V, 3>(vals, p, ld, hd, out),
        _ => values_few::<V, 4>(vals, p, ld, hd, out),
    }
}

/// `R` rows × `16·C` columns of converted value rows (`v`: `[keys][hd]`).
#[inline(always)]
unsafe fn values_tile<const R: usize, const C: usize>(
    v: *const f32,
    keys: usize,
    p: *const f32,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); C]; R];
    for r in 0..R {
        for c in 0..C {
            acc[r][c] = _mm512_loadu_ps(out.add(r * hd + 16 * c));
        }
    }
    for j in 0..keys {
        let vv: [__m512; C] = std::array::from_fn(|c| _mm512_loadu_ps(v.add(j * hd + 16 * c)));
        for r in 0..R {
            let w = _mm512_set1_ps(*p.add(r * ld + j));
            for c in 0..C {
                acc[r][c] = _mm512_fmadd_ps(w, vv[c], acc[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            _mm512_storeu_ps(out.add(r * hd + 16 * c), acc[r][c]);
        }
    }
}

#[inline(always)]
unsafe fn values_strip<const C: usize>(
    v: *const f32,
    keys: usize,
    p: *const f32,
    ld: usize,
    rows: usize,
    hd: usize,
    out: *mut f32,
) {
    let mut r = 0;
    while r + VROWS <= rows {
        values_tile::<VROWS, C>(v, keys, p.add(r * ld), ld, hd, out.add(r * hd));
        r += VROWS;
    }
    let (pr, or) = (p.add(r * ld), out.add(r * hd));
    match rows - r {
        1 => values_tile::<1, C>(v, keys, pr, ld, hd, or),
        2 => values_tile::<2, C>(v, keys, pr, ld, hd, or),
        3 => values_tile::<3, C>(v, keys, pr, ld, hd, or),
        4 => values_tile::<4, C>(v, keys, pr, ld, hd, or),
        5 => values_tile::<5, C>(v, keys, pr, ld, hd, or),
        _ => {}
    }
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
    if (1..=4).contains(&rows) && values.len() <= MAX_FUSED {
        match values.first() {
            Some(KvBlock::F16(_)) => {
                let mut vs = [F16Vals(std::ptr::null(), hd); MAX_FUSED];
                for (dst, v) in vs.iter_mut().zip(values) {
                    let KvBlock::F16(h) = v else {
                        panic!("one call reads blocks of one type")
                    };
                    *dst = F16Vals(h.as_ptr(), hd);
                }
                return few_value_rows(&vs[..values.len()], p, ld, rows, hd, out);
            }
            Some(KvBlock::Q8 { .. }) => {
                let mut vs = [Q8Vals(std::ptr::null(), std::ptr::null(), hd); MAX_FUSED];
                for (dst, v) in vs.iter_mut().zip(values) {
                    let KvBlock::Q8 { q, d } = v else {
                        panic!("one call reads blocks of one type")
                    };
                    *dst = Q8Vals(q.as_ptr(), d.as_ptr(), hd);
                }
                return few_value_rows(&vs[..values.len()], p, ld, rows, hd, out);
            }
            None => return,
        }
    }
    let keys = 16 * values.len();
    if buf.len() < keys * hd {
        buf.resize(keys * hd, 0.0);
    }
    for (b, v) in values.iter().enumerate() {
        let dst = buf.as_mut_ptr().add(b * 16 * hd);
        match *v {
            KvBlock::F16(h) => f16_to_f32(h.as_ptr(), hd * 16, dst),
            KvBlock::Q8 { q, d } => q8_values_to_f32(q.as_ptr(), d.as_ptr(), hd, dst),
        }
    }
    let v = buf.as_ptr();
    let mut c = 0;
    while c + 64 <= hd {
        values_strip::<4>(v.add(c), keys, p, ld, rows, hd, out.add(c));
        c += 64;
    }
    while c < hd {
        values_strip::<1>(v.add(c), keys, p, ld, rows, hd, out.add(c));
        c += 16;
    }
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
