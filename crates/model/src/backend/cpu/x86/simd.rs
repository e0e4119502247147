//! The vector operations the repacked kernels need, for each x86 level: 256-bit registers
//! without VNNI (AVX2: `maddubs` into 16-bit lanes, widened by `madd`), 256-bit with the VEX
//! VNNI (`vpdpbusd` into 32-bit lanes), and 512-bit with AVX-512 VNNI. One lane holds one
//! weight row, so a register covers [`Simd::R`] rows.
//!
//! Every method is `#[inline(always)]` and compiled into a caller that enables the level's
//! target features (see `packed.rs`); none may be called elsewhere.
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

/// The operations of one level. `I` holds `R` 32-bit lanes (`4R` bytes), `F` `R` floats.
pub trait Simd {
    /// Rows per register (and per repacked group).
    const R: usize;
    /// Whether [`Simd::dot`] adds into 32-bit lanes directly (VNNI). Otherwise it adds
    /// 16-bit pair sums, which [`Simd::widen`] turns into 32-bit ones; the kernel widens
    /// before they can overflow.
    const VNNI: bool;
    type I: Copy;
    type F: Copy;

    unsafe fn zero() -> Self::I;
    unsafe fn fzero() -> Self::F;
    /// `4R` bytes.
    unsafe fn load(p: *const u8) -> Self::I;
    /// The 4 bytes at `p` in every lane.
    unsafe fn bcast4(p: *const i8) -> Self::I;
    unsafe fn set1(v: i32) -> Self::I;
    unsafe fn and(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn or(a: Self::I, b: Self::I) -> Self::I;
    /// Each 32-bit lane shifted left (`n > 0`) or right (`n < 0`), logically.
    unsafe fn shift(a: Self::I, n: i32) -> Self::I;
    /// Low and high nibble of every byte.
    unsafe fn nibbles(v: Self::I) -> (Self::I, Self::I);
    /// `acc + Σ` of the four products of unsigned bytes of `w` and signed bytes of `a`, per
    /// 32-bit lane (VNNI); without VNNI, per 16-bit lane of byte pairs.
    unsafe fn dot(acc: Self::I, w: Self::I, a: Self::I) -> Self::I;
    /// [`Simd::dot`]'s accumulator as 32-bit lane sums.
    unsafe fn widen(acc: Self::I) -> Self::I;
    /// `acc + Σ w·a` of signed bytes, into 32-bit lanes (`wabs` = |w|), for levels without
    /// VNNI (signed Q8_0).
    unsafe fn dot_signed(acc: Self::I, wabs: Self::I, w: Self::I, a: Self::I) -> Self::I;
    unsafe fn abs8(w: Self::I) -> Self::I;
    unsafe fn add(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn sub(a: Self::I, b: Self::I) -> Self::I;
    unsafe fn mullo(a: Self::I, b: Self::I) -> Self::I;
    /// `R` bytes zero- or sign-extended to the lanes.
    unsafe fn zext8(p: *const u8) -> Self::I;
    unsafe fn sext8(p: *const u8) -> Self::I;
    unsafe fn cvt(a: Self::I) -> Self::F;
    /// `R` f16 values.
    unsafe fn load_f16(p: *const u8) -> Self::F;
    unsafe fn splat(v: f32) -> Self::F;
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a·b + c`.
    unsafe fn fma(a: Self::F, b: Self::F, c: Self::F) -> Self::F;
    unsafe fn store(v: Self::F, out: *mut f32);
    /// `R` floats.
    unsafe fn loadf(p: *const f32) -> Self::F;
}

/// 256-bit registers, eight rows; `VNNI` selects `vpdpbusd` (AVX-VNNI).
pub struct Ymm<const VNNI: bool>;

impl<const VNNI: bool> Simd for Ymm<VNNI> {
    const R: usize = 8;
    const VNNI: bool = VNNI;
    type I = __m256i;
    type F = __m256;

    #[inline(always)]
    unsafe fn zero() -> __m256i {
        _mm256_setzero_si256()
    }
    #[inline(always)]
    unsafe fn fzero() -> __m256 {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn bcast4(p: *const i8) -> __m256i {
        _mm256_set1_epi32((p as *const i32).read_unaligned())
    }
    #[inline(always)]
    unsafe fn set1(v: i32) -> __m256i {
        _mm256_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn and(a: __m256i, b: __m256i) -> __m256i {
        _mm256_and_si256(a, b)
    }
    #[inline(always)]
    unsafe fn or(a: __m256i, b: __m256i) -> __m256i {
        _mm256_or_si256(a, b)
    }
    #[inline(always)]
    unsafe fn shift(a: __m256i, n: i32) -> __m256i {
        if n >= 0 {
            _mm256_sll_epi32(a, _mm_cvtsi32_si128(n))
        } else {
            _mm256_srl_epi32(a, _mm_cvtsi32_si128(-n))
        }
    }
    #[inline(always)]
    unsafe fn nibbles(v: __m256i) -> (__m256i, __m256i) {
        let m = _mm256_set1_epi8(0x0F);
        (
            _mm256_and_si256(v, m),
            _mm256_and_si256(_mm256_srli_epi16(v, 4), m),
        )
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        if VNNI {
            _mm256_dpbusd_avx_epi32(acc, w, a)
        } else {
            _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, a))
        }
    }
    #[inline(always)]
    unsafe fn widen(acc: __m256i) -> __m256i {
        if VNNI {
            acc
        } else {
            _mm256_madd_epi16(acc, _mm256_set1_epi16(1))
        }
    }
    #[inline(always)]
    unsafe fn dot_signed(acc: __m256i, wabs: __m256i, w: __m256i, a: __m256i) -> __m256i {
        let p = _mm256_maddubs_epi16(wabs, _mm256_sign_epi8(a, w));
        _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
    }
    #[inline(always)]
    unsafe fn abs8(w: __m256i) -> __m256i {
        _mm256_sign_epi8(w, w)
    }
    #[inline(always)]
    unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
        _mm256_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256i, b: __m256i) -> __m256i {
        _mm256_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn mullo(a: __m256i, b: __m256i) -> __m256i {
        _mm256_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn zext8(p: *const u8) -> __m256i {
        _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn sext8(p: *const u8) -> __m256i {
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn cvt(a: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        _mm256_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(v: __m256, out: *mut f32) {
        _mm256_storeu_ps(out, v)
    }
    #[inline(always)]
    unsafe fn loadf(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

/// 512-bit registers, sixteen rows, AVX-512 VNNI.
pub struct Zmm;

impl Simd for Zmm {
    const R: usize = 16;
    const VNNI: bool = true;
    type I = __m512i;
    type F = __m512;

    #[inline(always)]
    unsafe fn zero() -> __m512i {
        _mm512_setzero_si512()
    }
    #[inline(always)]
    unsafe fn fzero() -> __m512 {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m512i {
        _mm512_loadu_si512(p as *const __m512i)
    }
    #[inline(always)]
    unsafe fn bcast4(p: *const i8) -> __m512i {
        _mm512_set1_epi32((p as *const i32).read_unaligned())
    }
    #[inline(always)]
    unsafe fn set1(v: i32) -> __m512i {
        _mm512_set1_epi32(v)
    }
    #[inline(always)]
    unsafe fn and(a: __m512i, b: __m512i) -> __m512i {
        _mm512_and_si512(a, b)
    }
    #[inline(always)]
    unsafe fn or(a: __m512i, b: __m512i) -> __m512i {
        _mm512_or_si512(a, b)
    }
    #[inline(always)]
    unsafe fn shift(a: __m512i, n: i32) -> __m512i {
        if n >= 0 {
            _mm512_sll_epi32(a, _mm_cvtsi32_si128(n))
        } else {
            _mm512_srl_epi32(a, _mm_cvtsi32_si128(-n))
        }
    }
    #[inline(always)]
    unsafe fn nibbles(v: __m512i) -> (__m512i, __m512i) {
        let m = _mm512_set1_epi8(0x0F);
        (
            _mm512_and_si512(v, m),
            _mm512_and_si512(_mm512_srli_epi16(v, 4), m),
        )
    }
    #[inline(always)]
    unsafe fn dot(acc: __m512i, w: __m512i, a: __m512i) -> __m512i {
        _mm512_dpbusd_epi32(acc, w, a)
    }
    #[inline(always)]
    unsafe fn widen(acc: __m512i) -> __m512i {
        acc
    }
    #[inline(always)]
    unsafe fn dot_signed(acc: __m512i, wabs: __m512i, w: __m512i, a: __m512i) -> __m512i {
        // Not used: VNNI levels store Q8_0 unsigned. Kept correct for completeness.
        let neg = _mm512_movepi8_mask(w);
        let a = _mm512_mask_sub_epi8(a, neg, _mm512_setzero_si512(), a);
        _mm512_dpbusd_epi32(acc, wabs, a)
    }
    #[inline(always)]
    unsafe fn abs8(w: __m512i) -> __m512i {
        _mm512_abs_epi8(w)
    }
    #[inline(always)]
    unsafe fn add(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m512i, b: __m512i) -> __m512i {
        _mm512_sub_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn mullo(a: __m512i, b: __m512i) -> __m512i {
        _mm512_mullo_epi32(a, b)
    }
    #[inline(always)]
    unsafe fn zext8(p: *const u8) -> __m512i {
        _mm512_cvtepu8_epi32(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn sext8(p: *const u8) -> __m512i {
        _mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i))
    }
    #[inline(always)]
    unsafe fn cvt(a: __m512i) -> __m512 {
        _mm512_cvtepi32_ps(a)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m512 {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        _mm512_mul_ps(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(v: __m512, out: *mut f32) {
        _mm512_storeu_ps(out, v)
    }
    #[inline(always)]
    unsafe fn loadf(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
}

/// AVX-VNNI's `vpdpbusd` emulated with AVX2 (lane by lane, exactly), so the AVX-VNNI
/// instantiation of the kernel — 8 rows, unsigned Q8_0, no 16-bit lanes — is tested on CPUs
/// without the instruction. Everything else is [`Ymm`]'s.
#[cfg(test)]
pub struct YmmEmulatedVnni;

#[cfg(test)]
impl Simd for YmmEmulatedVnni {
    const R: usize = 8;
    const VNNI: bool = true;
    type I = __m256i;
    type F = __m256;

    #[inline(always)]
    unsafe fn dot(acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
        let (mut wb, mut ab, mut cb) = ([0u8; 32], [0i8; 32], [0i32; 8]);
        _mm256_storeu_si256(wb.as_mut_ptr() as *mut __m256i, w);
        _mm256_storeu_si256(ab.as_mut_ptr() as *mut __m256i, a);
        _mm256_storeu_si256(cb.as_mut_ptr() as *mut __m256i, acc);
        for (l, c) in cb.iter_mut().enumerate() {
            for k in 4 * l..4 * l + 4 {
                *c = c.wrapping_add(wb[k] as i32 * ab[k] as i32);
            }
        }
        _mm256_loadu_si256(cb.as_ptr() as *const __m256i)
    }
    #[inline(always)]
    unsafe fn widen(acc: __m256i) -> __m256i {
        acc
    }
    #[inline(always)]
    unsafe fn zero() -> __m256i {
        Ymm::<true>::zero()
    }
    #[inline(always)]
    unsafe fn fzero() -> __m256 {
        Ymm::<true>::fzero()
    }
    #[inline(always)]
    unsafe fn load(p: *const u8) -> __m256i {
        Ymm::<true>::load(p)
    }
    #[inline(always)]
    unsafe fn bcast4(p: *const i8) -> __m256i {
        Ymm::<true>::bcast4(p)
    }
    #[inline(always)]
    unsafe fn set1(v: i32) -> __m256i {
        Ymm::<true>::set1(v)
    }
    #[inline(always)]
    unsafe fn and(a: __m256i, b: __m256i) -> __m256i {
        Ymm::<true>::and(a, b)
    }
    #[inline(always)]
    unsafe fn or(a: __m256i, b: __m256i) -> __m256i {
        Ymm::<true>::or(a, b)
    }
    #[inline(always)]
    unsafe fn shift(a: __m256i, n: i32) -> __m256i {
        Ymm::<true>::shift(a, n)
    }
    #[inline(always)]
    unsafe fn nibbles(v: __m256i) -> (__m256i, __m256i) {
        Ymm::<true>::nibbles(v)
    }
    #[inline(always)]
    unsafe fn dot_signed(acc: __m256i, wabs: __m256i, w: __m256i, a: __m256i) -> __m256i {
        Ymm::<true>::dot_signed(acc, wabs, w, a)
    }
    #[inline(always)]
    unsafe fn abs8(w: __m256i) -> __m256i {
        Ymm::<true>::abs8(w)
    }
    #[inline(always)]
    unsafe fn add(a: __m256i, b: __m256i) -> __m256i {
        Ymm::<true>::add(a, b)
    }
    #[inline(always)]
    unsafe fn sub(a: __m256i, b: __m256i) -> __m256i {
        Ymm::<true>::sub(a, b)
    }
    #[inline(always)]
    unsafe fn mullo(a: __m256i, b: __m256i) -> __m256i {
        Ymm::<true>::mullo(a, b)
    }
    #[inline(always)]
    unsafe fn zext8(p: *const u8) -> __m256i {
        Ymm::<true>::zext8(p)
    }
    #[inline(always)]
    unsafe fn sext8(p: *const u8) -> __m256i {
        Ymm::<true>::sext8(p)
    }
    #[inline(always)]
    unsafe fn cvt(a: __m256i) -> __m256 {
        Ymm::<true>::cvt(a)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> __m256 {
        Ymm::<true>::load_f16(p)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        Ymm::<true>::splat(v)
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        Ymm::<true>::mul(a, b)
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        Ymm::<true>::fma(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(v: __m256, out: *mut f32) {
        Ymm::<true>::store(v, out)
    }
    #[inline(always)]
    unsafe fn loadf(p: *const f32) -> __m256 {
        Ymm::<true>::loadf(p)
    }
}
