//! AVX2 + FMA + F16C attention primitives over the paged KV cache (`crate::kv`): exact
//! dequantization of a KV block to f32, score tiles (query rows × 16 keys), weighted value
//! sums, and the exponentials of a score row with their sum.
//!
//! Every output element is one chain of fused multiply-adds in a fixed order (over the head's
//! dimensions for a score, over the keys for a value sum), so a query row's results do not
//! depend on which other rows or blocks share the call: batch invariance.
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::avx2::hsum;
use super::avx2_ops::{exp8, hmax};
use crate::backend::cpu::KvBlock;

/// Query rows per score tile: 6 rows × 16 keys = 12 accumulators (+ 2 keys + 1 broadcast).
const ROWS: usize = 6;

/// Eight f16 at `p` as f32.
#[inline(always)]
unsafe fn cvt8(p: *const u16) -> __m256 {
    _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
}

/// Eight int8 at `p` as f32.
#[inline(always)]
unsafe fn i8x8(p: *const i8) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i)))
}

/// `n` f16 (a multiple of 8) at `src` into `dst` as f32.
///
/// # Safety
/// CPU must support AVX2/F16C; `n` elements are readable at `src` and writable at `dst`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_to_f32(src: *const u16, n: usize, dst: *mut f32) {
    for i in (0..n).step_by(8) {
        _mm256_storeu_ps(dst.add(i), cvt8(src.add(i)));
    }
}

/// q8_0 keys of one block (`q[d·16 + j]`, scales `s[(d/32)·16 + j]`) into `dst[d·16 + j]`.
///
/// # Safety
/// CPU must support AVX2/F16C; `hd·16` elements, `hd/2` scales and `hd·16` outputs fit.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_keys_to_f32(q: *const i8, s: *const u16, hd: usize, dst: *mut f32) {
    for g in 0..hd / 32 {
        let s0 = cvt8(s.add(g * 16));
        let s1 = cvt8(s.add(g * 16 + 8));
        for d in g * 32..(g + 1) * 32 {
            let row = q.add(d * 16);
            _mm256_storeu_ps(dst.add(d * 16), _mm256_mul_ps(i8x8(row), s0));
            _mm256_storeu_ps(dst.add(d * 16 + 8), _mm256_mul_ps(i8x8(row.add(8)), s1));
        }
    }
}

/// q8_0 values of one block (`q[j·hd + d]`, scales `s[j·hd/32 + d/32]`) into `dst[j·hd + d]`.
///
/// # Safety
/// As [`q8_keys_to_f32`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_values_to_f32(q: *const i8, s: *const u16, hd: usize, dst: *mut f32) {
    let groups = hd / 32;
    for j in 0..16 {
        for g in 0..groups {
            let bits = s.add(j * groups + g).read_unaligned();
            let sc = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))));
            let at = j * hd + g * 32;
            for i in (0..32).step_by(8) {
                _mm256_storeu_ps(dst.add(at + i), _mm256_mul_ps(i8x8(q.add(at + i)), sc));
            }
        }
    }
}

/// Scores of `R` rows × 16 keys of one block (`kt`: `[hd][16]`), stored scaled at
/// `out + r·ld`.
#[inline(always)]
unsafe fn scores_tile<const R: usize>(
    kt: *const f32,
    q: *const f32,
    hd: usize,
    scale: __m256,
    out: *mut f32,
    ld: usize,
) {
    let mut a0 = [_mm256_setzero_ps(); R];
    let mut a1 = [_mm256_setzero_ps(); R];
    for d in 0..hd {
        let k0 = _mm256_loadu_ps(kt.add(d * 16));
        let k1 = _mm256_loadu_ps(kt.add(d * 16 + 8));
        for r in 0..R {
            let qv = _mm256_broadcast_ss(&*q.add(r * hd + d));
            a0[r] = _mm256_fmadd_ps(qv, k0, a0[r]);
            a1[r] = _mm256_fmadd_ps(qv, k1, a1[r]);
        }
    }
    for r in 0..R {
        _mm256_storeu_ps(out.add(r * ld), _mm256_mul_ps(a0[r], scale));
        _mm256_storeu_ps(out.add(r * ld + 8), _mm256_mul_ps(a1[r], scale));
    }
}

/// Scores of `rows` rows against f32 keys of one block (`kt`: `[hd][16]`), in tiles of
/// [`ROWS`] rows.
#[inline(always)]
unsafe fn scores_f32(
    kt: *const f32,
    q: *const f32,
    rows: usize,
    hd: usize,
    s: __m256,
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
        _ => {}
    }
}

/// Keys of one block read in place: the 16 keys' dimension `d` as two vectors of f32, the
/// same values [`f16_to_f32`] / [`q8_keys_to_f32`] give.
trait Keys: Copy {
    /// Prepares the scales of the dimension group `g` (dimensions `32g..32g + 32`).
    unsafe fn group(self, g: usize) -> [__m256; 2];
    unsafe fn dim(self, d: usize, scales: [__m256; 2]) -> [__m256; 2];
}

#[derive(Clone, Copy)]
struct F16Keys(*const u16);
impl Keys for F16Keys {
    #[inline(always)]
    unsafe fn group(self, _g: usize) -> [__m256; 2] {
        [_mm256_setzero_ps(); 2]
    }
    #[inline(always)]
    unsafe fn dim(self, d: usize, _s: [__m256; 2]) -> [__m256; 2] {
        [cvt8(self.0.add(d * 16)), cvt8(self.0.add(d * 16 + 8))]
    }
}

#[derive(Clone, Copy)]
struct Q8Keys(*const i8, *const u16);
impl Keys for Q8Keys {
    #[inline(always)]
    unsafe fn group(self, g: usize) -> [__m256; 2] {
        [cvt8(self.1.add(g * 16)), cvt8(self.1.add(g * 16 + 8))]
    }
    #[inline(always)]
    unsafe fn dim(self, d: usize, s: [__m256; 2]) -> [__m256; 2] {
        let row = self.0.add(d * 16);
        [
            _mm256_mul_ps(i8x8(row), s[0]),
            _mm256_mul_ps(i8x8(row.add(8)), s[1]),
        ]
    }
}

/// Scores of `R` rows (few: decode) against `NB` blocks of keys read in place (no f32
/// copy), `2·NB·R` accumulators; per score the same chain as [`scores_tile`].
#[inline(always)]
unsafe fn scores_fused<K: Keys, const R: usize, const NB: usize>(
    keys: [K; NB],
    q: *const f32,
    hd: usize,
    scale: __m256,
    out: *mut f32,
    ld: usize,
) {
    let mut acc = [[[_mm256_setzero_ps(); 2]; R]; NB];
    let groups = hd.div_ceil(32);
    for g in 0..groups {
        let sc: [[__m256; 2]; NB] = std::array::from_fn(|b| keys[b].group(g));
        for d in g * 32..hd.min(g * 32 + 32) {
            let qv: [__m256; R] = std::array::from_fn(|r| _mm256_broadcast_ss(&*q.add(r * hd + d)));
            for b in 0..NB {
                let k = keys[b].dim(d, sc[b]);
                for h in 0..2 {
                    for r in 0..R {
                        acc[b][r][h] = _mm256_fmadd_ps(qv[r], k[h], acc[b][r][h]);
                    }
                }
            }
        }
    }
    for b in 0..NB {
        for r in 0..R {
            for h in 0..2 {
                _mm256_storeu_ps(
                    out.add(r * ld + b * 16 + 8 * h),
                    _mm256_mul_ps(acc[b][r][h], scale),
                );
            }
        }
    }
}

/// Few rows: every block read in place, two at a time where the registers allow.
#[inline(always)]
unsafe fn scores_few<K: Keys, const R: usize>(
    keys: &[K],
    q: *const f32,
    hd: usize,
    s: __m256,
    out: *mut f32,
    ld: usize,
) {
    let mut b = 0;
    if R <= 2 {
        while b + 2 <= keys.len() {
            scores_fused::<K, R, 2>([keys[b], keys[b + 1]], q, hd, s, out.add(b * 16), ld);
            b += 2;
        }
    }
    while b < keys.len() {
        scores_fused::<K, R, 1>([keys[b]], q, hd, s, out.add(b * 16), ld);
        b += 1;
    }
}

/// Most blocks of a call read in place (a chunk's blocks).
const MAX_FUSED: usize = 64;

/// See `Kernels::attn_scores`: few rows read the keys in place; more rows convert each block
/// once to f32 and share it.
///
/// # Safety
/// CPU must support AVX2/FMA/F16C; every block holds `hd·16` elements (q8_0: `hd % 32 == 0`),
/// `q` `rows·hd` floats, `out` rows `ld` apart of `16·keys.len()`; `buf` is scratch.
#[target_feature(enable = "avx2,fma,f16c")]
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
    let s = _mm256_set1_ps(scale);
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
    let kt = buf.as_mut_slice();
    for (b, k) in keys.iter().enumerate() {
        match *k {
            KvBlock::F16(h) => f16_to_f32(h.as_ptr(), hd * 16, kt.as_mut_ptr()),
            KvBlock::Q8 { q, d } => q8_keys_to_f32(q.as_ptr(), d.as_ptr(), hd, kt.as_mut_ptr()),
        }
        scores_f32(kt.as_ptr(), q, rows, hd, s, out.add(b * 16), ld);
    }
}

#[inline(always)]
unsafe fn few_rows<K: Keys>(
    keys: &[K],
    q: *const f32,
    rows: usize,
    hd: usize,
    s: __m256,
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

/// `R` rows × `8·C` columns of the weighted value sum, accumulated in registers over the keys.
#[inline(always)]
unsafe fn values_tile<const R: usize, const C: usize>(
    v: *const f32,
    keys: usize,
    p: *const f32,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for r in 0..R {
        for c in 0..C {
            acc[r][c] = _mm256_loadu_ps(out.add(r * hd + 8 * c));
        }
    }
    for j in 0..keys {
        let mut vv = [_mm256_setzero_ps(); C];
        for c in 0..C {
            vv[c] = _mm256_loadu_ps(v.add(j * hd + 8 * c));
        }
        for r in 0..R {
            let w = _mm256_broadcast_ss(&*p.add(r * ld + j));
            for c in 0..C {
                acc[r][c] = _mm256_fmadd_ps(w, vv[c], acc[r][c]);
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            _mm256_storeu_ps(out.add(r * hd + 8 * c), acc[r][c]);
        }
    }
}

/// The rows of a column strip of `8·C` columns, in tiles of [`ROWS`].
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
    while r + ROWS <= rows {
        values_tile::<ROWS, C>(v, keys, p.add(r * ld), ld, hd, out.add(r * hd));
        r += ROWS;
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

/// Value rows of one block read in place: eight dimensions of a key's row as f32, the same
/// values [`f16_to_f32`] / [`q8_values_to_f32`] give.
trait Vals: Copy {
    /// The scale of key `j`'s dimension group `g`.
    unsafe fn scale(self, j: usize, g: usize) -> __m256;
    unsafe fn row8(self, j: usize, c: usize, scale: __m256) -> __m256;
}

#[derive(Clone, Copy)]
struct F16Vals(*const u16, usize);
impl Vals for F16Vals {
    #[inline(always)]
    unsafe fn scale(self, _j: usize, _g: usize) -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn row8(self, j: usize, c: usize, _s: __m256) -> __m256 {
        cvt8(self.0.add(j * self.1 + c))
    }
}

#[derive(Clone, Copy)]
struct Q8Vals(*const i8, *const u16, usize);
impl Vals for Q8Vals {
    #[inline(always)]
    unsafe fn scale(self, j: usize, g: usize) -> __m256 {
        let bits = self.1.add(j * (self.2 / 32) + g).read_unaligned();
        _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32))))
    }
    #[inline(always)]
    unsafe fn row8(self, j: usize, c: usize, s: __m256) -> __m256 {
        _mm256_mul_ps(i8x8(self.0.add(j * self.2 + c)), s)
    }
}

/// `R` rows (few: decode) × `8·C` columns from `c0`, over every key of `vals` read in place;
/// per element the same chain as [`values_tile`].
#[inline(always)]
unsafe fn values_fused<V: Vals, const R: usize, const C: usize>(
    vals: &[V],
    p: *const f32,
    ld: usize,
    hd: usize,
    c0: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); C]; R];
    for r in 0..R {
        for c in 0..C {
            acc[r][c] = _mm256_loadu_ps(out.add(r * hd + c0 + 8 * c));
        }
    }
    for (b, vb) in vals.iter().enumerate() {
        for j in 0..16 {
            let sc = vb.scale(j, c0 / 32);
            let w: [__m256; R] =
                std::array::from_fn(|r| _mm256_broadcast_ss(&*p.add(r * ld + b * 16 + j)));
            for c in 0..C {
                let v = vb.row8(j, c0 + 8 * c, sc);
                for r in 0..R {
                    acc[r][c] = _mm256_fmadd_ps(w[r], v, acc[r][c]);
                }
            }
        }
    }
    for r in 0..R {
        for c in 0..C {
            _mm256_storeu_ps(out.add(r * hd + c0 + 8 * c), acc[r][c]);
        }
    }
}

/// Few rows: strips of 32 columns (16 with four rows, then 8) over all the keys.
#[inline(always)]
unsafe fn values_few<V: Vals, const R: usize>(
    vals: &[V],
    p: *const f32,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    let mut c = 0;
    if R <= 2 {
        while c + 32 <= hd {
            values_fused::<V, R, 4>(vals, p, ld, hd, c, out);
            c += 32;
        }
    }
    while c + 16 <= hd {
        values_fused::<V, R, 2>(vals, p, ld, hd, c, out);
        c += 16;
    }
    if c < hd {
        values_fused::<V, R, 1>(vals, p, ld, hd, c, out);
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

/// See `Kernels::attn_values`: few rows read the values in place; more rows convert each
/// block once to f32 and share it.
///
/// # Safety
/// CPU must support AVX2/FMA/F16C; `hd` is a multiple of 8; every block holds `16·hd`
/// elements (q8_0: `hd % 32 == 0`), `p` rows `ld` apart of `16·values.len()`, `out`
/// `rows·hd`; `buf` is scratch.
#[target_feature(enable = "avx2,fma,f16c")]
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
    // All the blocks' rows converted once, then every row tile runs over all the keys with
    // its accumulators in registers.
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
    while c + 16 <= hd {
        values_strip::<2>(v.add(c), keys, p, ld, rows, hd, out.add(c));
        c += 16;
    }
    if c < hd {
        values_strip::<1>(v.add(c), keys, p, ld, rows, hd, out.add(c));
    }
}

/// See `Kernels::exp_sum`: eight partial sums over `x` from its start (a tail padded with
/// `-inf`, i.e. zeros), then one fixed horizontal reduction.
///
/// # Safety
/// CPU must support AVX2/FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp_sum(x: &mut [f32]) -> (f32, f32) {
    let n8 = x.len() / 8 * 8;
    let mut tail = [f32::NEG_INFINITY; 8];
    tail[..x.len() - n8].copy_from_slice(&x[n8..]);
    let mut mv = _mm256_loadu_ps(tail.as_ptr());
    for i in (0..n8).step_by(8) {
        mv = _mm256_max_ps(mv, _mm256_loadu_ps(x.as_ptr().add(i)));
    }
    let max = hmax(mv);
    let m = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    for i in (0..n8).step_by(8) {
        let p = x.as_mut_ptr().add(i);
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), m));
        sum = _mm256_add_ps(sum, e);
        _mm256_storeu_ps(p, e);
    }
    if n8 < x.len() {
        let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), m));
        sum = _mm256_add_ps(sum, e);
        _mm256_storeu_ps(tail.as_mut_ptr(), e);
        let len = x.len() - n8;
        x[n8..].copy_from_slice(&tail[..len]);
    }
    (max, hsum(sum))
}
