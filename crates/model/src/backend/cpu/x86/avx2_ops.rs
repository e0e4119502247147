//! AVX2 + FMA forms of the row-wise float ops (`exp`, SiLU × up, softmax, RMSNorm's sum of
//! squares), so they do not run as scalar `libm` calls on the engine thread. Each function
//! treats an element the same way wherever it sits in a row (tails go through the same vector
//! code, padded), so results do not depend on the batch.
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

/// `e^x` lane-wise: `x = n·ln2 + r` with `|r| ≤ ln2/2`, `e^r` by its degree-6 Taylor polynomial
/// (relative error below 2⁻²²), `2^n` built in the exponent bits. Inputs below -87.3 give 0,
/// above 88.7 give +inf, NaN stays NaN.
///
/// # Safety
/// CPU must support AVX2/FMA.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn exp8(x: __m256) -> __m256 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let lo = _mm256_set1_ps(-87.3);
    let hi = _mm256_set1_ps(88.7);
    let xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
    let n = _mm256_round_ps(
        _mm256_mul_ps(xc, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), xc);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    ));
    let y = _mm256_mul_ps(p, pow2);
    // Below the range: 0; above: +inf; NaN (unordered) passes through.
    let y = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), y);
    let y = _mm256_blendv_ps(
        y,
        _mm256_set1_ps(f32::INFINITY),
        _mm256_cmp_ps(x, hi, _CMP_GT_OQ),
    );
    _mm256_blendv_ps(y, x, _mm256_cmp_ps(x, x, _CMP_UNORD_Q))
}

/// Applies `f` to `x` eight lanes at a time; a tail of fewer than 8 is padded with `pad`.
#[inline(always)]
unsafe fn map8(x: &mut [f32], pad: f32, mut f: impl FnMut(__m256, usize) -> __m256) {
    let n8 = x.len() / 8 * 8;
    for i in (0..n8).step_by(8) {
        let p = x.as_mut_ptr().add(i);
        _mm256_storeu_ps(p, f(_mm256_loadu_ps(p), i));
    }
    if n8 < x.len() {
        let mut tail = [pad; 8];
        tail[..x.len() - n8].copy_from_slice(&x[n8..]);
        let v = f(_mm256_loadu_ps(tail.as_ptr()), n8);
        _mm256_storeu_ps(tail.as_mut_ptr(), v);
        let len = x.len() - n8;
        x[n8..].copy_from_slice(&tail[..len]);
    }
}

/// `g[i] = f(g[i]) · u[i]`, eight lanes at a time (tails padded with 0, as in [`map8`]).
#[inline(always)]
unsafe fn map8_times(g: &mut [f32], u: &[f32], mut f: impl FnMut(__m256) -> __m256) {
    assert!(u.len() >= g.len());
    let n = g.len();
    map8(g, 0.0, |x, i| {
        let uv = if i + 8 <= n {
            _mm256_loadu_ps(u.as_ptr().add(i))
        } else {
            let mut t = [0.0f32; 8];
            t[..n - i].copy_from_slice(&u[i..n]);
            _mm256_loadu_ps(t.as_ptr())
        };
        _mm256_mul_ps(f(x), uv)
    });
}

/// `g = silu(g) · u = g / (1 + e^-g) · u`.
///
/// # Safety
/// CPU must support AVX2/FMA; `u.len() >= g.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
    let one = _mm256_set1_ps(1.0);
    let sign = _mm256_set1_ps(-0.0);
    map8_times(g, u, |v| {
        let e = exp8(_mm256_xor_ps(v, sign));
        _mm256_div_ps(v, _mm256_add_ps(one, e))
    });
}

/// `g = gelu(g) · u` with GELU's tanh form, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`,
/// `tanh(z) = 1 − 2 / (e^{2z} + 1)` (exact at both ends: `e^{2z}` is `+inf` or 0 there).
///
/// # Safety
/// CPU must support AVX2/FMA; `u.len() >= g.len()`.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn gelu_mul(g: &mut [f32], u: &[f32]) {
    let (one, two, half) = (
        _mm256_set1_ps(1.0),
        _mm256_set1_ps(2.0),
        _mm256_set1_ps(0.5),
    );
    let (c, k) = (_mm256_set1_ps(0.797_884_6), _mm256_set1_ps(0.044715));
    map8_times(g, u, |x| {
        let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
        let z = _mm256_mul_ps(c, _mm256_fmadd_ps(k, x3, x));
        let e = exp8(_mm256_mul_ps(two, z));
        let t = _mm256_sub_ps(one, _mm256_div_ps(two, _mm256_add_ps(e, one)));
        _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, t))
    });
}

/// Softmax of `x` in place (`x` has at least one finite entry).
///
/// # Safety
/// CPU must support AVX2/FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn softmax(x: &mut [f32]) {
    let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
    map8(x, f32::NEG_INFINITY, |v, _| {
        mv = _mm256_max_ps(mv, v);
        v
    });
    let max = _mm256_set1_ps(hmax(mv));
    let mut sv = _mm256_setzero_ps();
    map8(x, f32::NEG_INFINITY, |v, _| {
        let e = exp8(_mm256_sub_ps(v, max));
        sv = _mm256_add_ps(sv, e);
        e
    });
    let inv = _mm256_set1_ps(1.0 / super::avx2::hsum(sv));
    map8(x, 0.0, |v, _| _mm256_mul_ps(v, inv));
}

/// `Σ x²` (eight partial sums, then a fixed reduction).
///
/// # Safety
/// CPU must support AVX2/FMA.
#[target_feature(enable = "avx2,fma")]
pub unsafe fn sum_squares(x: &[f32]) -> f32 {
    let n8 = x.len() / 8 * 8;
    let mut acc = _mm256_setzero_ps();
    for i in (0..n8).step_by(8) {
        let v = _mm256_loadu_ps(x.as_ptr().add(i));
        acc = _mm256_fmadd_ps(v, v, acc);
    }
    let mut s = super::avx2::hsum(acc);
    for v in &x[n8..] {
        s += v * v;
    }
    s
}

/// The largest of the eight lanes.
///
/// # Safety
/// CPU must support AVX2.
#[inline]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn hmax(v: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Isa;

    fn avx2() -> bool {
        Isa::Avx2.is_available()
    }

    #[test]
    fn exp8_matches_libm_over_the_range_and_at_the_edges() {
        if !avx2() {
            return;
        }
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let xs = [x, x + 0.013, x + 0.5, x + 0.77, -x, x * 0.01, 0.0, -0.0];
            let mut out = [0.0f32; 8];
            // SAFETY: AVX2 checked above.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(xs.as_ptr()))) };
            for (a, b) in xs.iter().zip(out) {
                let want = f64::from(*a).exp();
                if want.is_finite() && want > 1e-37 && want < 1e38 {
                    worst = worst.max(((f64::from(b) - want) / want).abs());
                }
            }
            x += 0.37;
        }
        assert!(worst < 1e-6, "relative error {worst}");
        let xs = [
            f32::NEG_INFINITY,
            -1000.0,
            -87.5,
            89.0,
            f32::INFINITY,
            f32::NAN,
            1.0,
            -1.0,
        ];
        let mut out = [0.0f32; 8];
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), exp8(_mm256_loadu_ps(xs.as_ptr()))) };
        assert_eq!(&out[..3], &[0.0, 0.0, 0.0]);
        assert!(out[3].is_infinite() && out[4].is_infinite() && out[5].is_nan());
        assert!((out[6] - std::f32::consts::E).abs() < 1e-6);
    }

    #[test]
    fn row_ops_match_the_scalar_forms_with_tails() {
        if !avx2() {
            return;
        }
        for n in [1usize, 7, 8, 13, 64, 1536] {
            let g: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 9.0).collect();
            let u: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let mut a = g.clone();
            // SAFETY: AVX2 checked above.
            unsafe { silu_mul(&mut a, &u) };
            let mut ge = g.clone();
            // SAFETY: as above.
            unsafe { gelu_mul(&mut ge, &u) };
            for i in 0..n {
                let x = g[i];
                let t = (0.797_884_6f32 * (x + 0.044715 * x * x * x)).tanh();
                let want = 0.5 * x * (1.0 + t) * u[i];
                assert!(
                    (ge[i] - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "gelu {n} {i}: {} vs {want}",
                    ge[i]
                );
            }
            for i in 0..n {
                let want = g[i] / (1.0 + (-g[i]).exp()) * u[i];
                assert!(
                    (a[i] - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "silu {n} {i}"
                );
            }
            let mut s = g.clone();
            // SAFETY: as above.
            unsafe { softmax(&mut s) };
            let max = g.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let total: f32 = g.iter().map(|v| (v - max).exp()).sum();
            for i in 0..n {
                let want = (g[i] - max).exp() / total;
                assert!((s[i] - want).abs() <= 1e-6 + 1e-5 * want, "softmax {n} {i}");
            }
            // SAFETY: as above.
            let ss = unsafe { sum_squares(&g) };
            let want: f32 = g.iter().map(|v| v * v).sum();
            assert!(
                (ss - want).abs() <= 1e-5 * want.max(1.0),
                "sum of squares {n}"
            );
        }
    }
}
