//! The LoRA delta's two float kernels (AVX2, FMA, F16C): shrink (`h = A·x`, one dot product
//! per rank row) and expand (`y += Bᵀh`, per element one FMA per rank row, in row order).
//! Factors are f32 or f16; activations and results f32.

use std::arch::x86_64::*;

use super::avx2::hsum;

/// A factor element type the kernels read eight at a time.
pub trait Elem: Copy {
    /// Eight elements at `p` as f32.
    ///
    /// # Safety
    /// CPU must support AVX2/F16C; eight elements are readable at `p`.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Elem for u16 {
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

/// `Σ a[i]·x[i]` over `x.len()` elements: four 8-lane accumulators over blocks of 32, one
/// over the remaining blocks of 8, then the scalar tail; the order depends only on the length.
///
/// # Safety
/// CPU must support AVX2/FMA/F16C; `a` points to `x.len()` readable elements.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot<E: Elem + Into32>(a: *const E, x: &[f32]) -> f32 {
    let n = x.len();
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    while i + 32 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            let j = i + 8 * k;
            *acc = _mm256_fmadd_ps(E::load8(a.add(j)), _mm256_loadu_ps(xp.add(j)), *acc);
        }
        i += 32;
    }
    let mut tail = _mm256_setzero_ps();
    while i + 8 <= n {
        tail = _mm256_fmadd_ps(E::load8(a.add(i)), _mm256_loadu_ps(xp.add(i)), tail);
        i += 8;
    }
    let sum = _mm256_add_ps(
        _mm256_add_ps(acc[0], acc[1]),
        _mm256_add_ps(_mm256_add_ps(acc[2], acc[3]), tail),
    );
    let mut s = hsum(sum);
    while i < n {
        s = (*a.add(i)).to_f32().mul_add(x[i], s);
        i += 1;
    }
    s
}

/// An element of a LoRA factor, one at a time.
pub trait Into32: Copy {
    fn to_f32(self) -> f32;
}

impl Into32 for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Into32 for u16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        half::f16::from_bits(self).to_f32()
    }
}

/// `h[r] = a_r · x` for the rows `a_r` of `a` (row-major, `x.len()` wide).
///
/// # Safety
/// CPU must support AVX2/FMA/F16C; `a` holds at least `h.len() · x.len()` elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn shrink<E: Elem + Into32>(a: &[E], x: &[f32], h: &mut [f32]) {
    let n = x.len();
    debug_assert!(a.len() >= h.len() * n);
    for (r, h) in h.iter_mut().enumerate() {
        *h = dot(a.as_ptr().add(r * n), x);
    }
}

/// `y += Σ_r h[r] · b_r` over the rows `b_r` of `b` (row-major, `y.len()` wide): eight
/// elements of `y` stay in a register while the rows pass over them, one FMA per row in row
/// order (the scalar tail does the same with `mul_add`).
///
/// # Safety
/// CPU must support AVX2/FMA/F16C; `b` holds at least `h.len() · y.len()` elements.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn expand<E: Elem + Into32>(b: &[E], h: &[f32], y: &mut [f32]) {
    let n = y.len();
    debug_assert!(b.len() >= h.len() * n);
    let bp = b.as_ptr();
    let yp = y.as_mut_ptr();
    let n8 = n / 8 * 8;
    let mut j = 0;
    while j < n8 {
        let mut acc = _mm256_loadu_ps(yp.add(j));
        for (r, &c) in h.iter().enumerate() {
            acc = _mm256_fmadd_ps(_mm256_set1_ps(c), E::load8(bp.add(r * n + j)), acc);
        }
        _mm256_storeu_ps(yp.add(j), acc);
        j += 8;
    }
    for j in n8..n {
        let mut v = y[j];
        for (r, &c) in h.iter().enumerate() {
            v = c.mul_add((*bp.add(r * n + j)).to_f32(), v);
        }
        y[j] = v;
    }
}
