//! AVX2 kernels for Q5_0, Q5_1, Q4_K, Q5_K and Q6_K weights (layouts in [`crate::quant::blocks`]),
//! against int8 activations in blocks of 32. Each 32-element weight block is unpacked once to
//! 32 bytes (unsigned 0..31 with an offset for Q5_1/Q4_K/Q5_K, signed for Q5_0/Q6_K) and
//! reused for all activation rows. Straightforward versions: the fast repacked forms are left
//! to the performance work.
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::avx2::{hsum, unpack_nibbles};
use crate::quant::blocks::scale_min_k4;
use crate::quant::{ActRow, QK, QK_K};

pub const T_Q5_0: u32 = 6;
pub const T_Q5_1: u32 = 7;
pub const T_Q4_K: u32 = 12;
pub const T_Q5_K: u32 = 13;
pub const T_Q6_K: u32 = 14;

const fn block_bytes(ty: u32) -> usize {
    match ty {
        T_Q5_0 => 22,
        T_Q5_1 => 24,
        T_Q4_K => 144,
        T_Q5_K => 176,
        _ => 210,
    }
}

#[inline(always)]
unsafe fn f16_at(p: *const u8) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
        (p as *const u16).read_unaligned() as i32,
    )))
}

/// Byte `i` = 0xFF where bit `i` of `bits` is set.
#[inline(always)]
unsafe fn bits_to_bytes(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let pick = _mm256_setr_epi8(
        0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3,
        3, 3,
    );
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let sel = _mm256_and_si256(_mm256_shuffle_epi8(v, pick), mask);
    _mm256_cmpeq_epi8(sel, mask)
}

/// `(v >> shift) & mask` per byte (shift < 8).
#[inline(always)]
unsafe fn shr_bytes(v: __m256i, shift: u32, mask: i8) -> __m256i {
    _mm256_and_si256(
        _mm256_srl_epi16(v, _mm_cvtsi32_si128(shift as i32)),
        _mm256_set1_epi8(mask),
    )
}

/// Weight block `b` of a row, unpacked: 32 quants, per-half integer scales (Q6_K, as i16
/// lanes for `madd`), float scale and offset. Same values as [`crate::quant::blocks::block32`].
struct Unpacked {
    q: __m256i,
    /// Q6_K: the two sub-block scales, eight i16 lanes each (one per pair of elements).
    sc: __m256i,
    d: f32,
    m: f32,
}

#[inline(always)]
unsafe fn unpack<const TY: u32>(row: *const u8, b: usize) -> Unpacked {
    let zero = _mm256_setzero_si256();
    match TY {
        T_Q5_0 | T_Q5_1 => {
            let blk = row.add(b * block_bytes(TY));
            let hq = if TY == T_Q5_1 { 4 } else { 2 };
            let qh = (blk.add(hq) as *const u32).read_unaligned();
            let high = _mm256_and_si256(bits_to_bytes(qh), _mm256_set1_epi8(0x10));
            let mut q = _mm256_or_si256(unpack_nibbles(blk.add(hq + 4)), high);
            let d = f16_at(blk);
            let m = if TY == T_Q5_1 {
                f16_at(blk.add(2))
            } else {
                q = _mm256_sub_epi8(q, _mm256_set1_epi8(16));
                0.0
            };
            Unpacked { q, sc: zero, d, m }
        }
        T_Q4_K | T_Q5_K => {
            let (sb, s) = (b / (QK_K / QK), b % (QK_K / QK));
            let blk = row.add(sb * block_bytes(TY));
            let scales = std::slice::from_raw_parts(blk.add(4), 12);
            let (sc, mn) = scale_min_k4(s, scales);
            let qs_off = if TY == T_Q5_K { 48 } else { 16 };
            let ql = _mm256_loadu_si256(blk.add(qs_off + 32 * (s / 2)) as *const __m256i);
            let mut q = shr_bytes(ql, 4 * (s as u32 % 2), 0x0F);
            if TY == T_Q5_K {
                let qh = _mm256_loadu_si256(blk.add(16) as *const __m256i);
                q = _mm256_or_si256(q, _mm256_slli_epi16(shr_bytes(qh, s as u32, 1), 4));
            }
            Unpacked {
                q,
                sc: zero,
                d: f16_at(blk) * sc as f32,
                m: -(f16_at(blk.add(2)) * mn as f32),
            }
        }
        _ => {
            let (sb, s) = (b / (QK_K / QK), b % (QK_K / QK));
            let blk = row.add(sb * block_bytes(TY));
            let (n, g) = (s / 4, s % 4);
            let ql = _mm256_loadu_si256(blk.add(64 * n + 32 * (g % 2)) as *const __m256i);
            let qh = _mm256_loadu_si256(blk.add(128 + 32 * n) as *const __m256i);
            let lo = shr_bytes(ql, 4 * (g as u32 / 2), 0x0F);
            let hi = _mm256_slli_epi16(shr_bytes(qh, 2 * g as u32, 3), 4);
            let q = _mm256_sub_epi8(_mm256_or_si256(lo, hi), _mm256_set1_epi8(32));
            let sc0 = *blk.add(192 + 8 * n + 2 * g) as i8 as i16;
            let sc1 = *blk.add(192 + 8 * n + 2 * g + 1) as i8 as i16;
            Unpacked {
                q,
                sc: _mm256_set_m128i(_mm_set1_epi16(sc1), _mm_set1_epi16(sc0)),
                d: f16_at(blk.add(208)),
                m: 0.0,
            }
        }
    }
}

/// Dot products of one weight row with `N` activation rows: `out[i] = w · acts[i]`. Each
/// row's result is computed by the same operations whatever `N` is (batch invariance).
///
/// # Safety
/// CPU must support AVX2/FMA/F16C; `TY` is one of the `T_*` tags of this module and `w` holds
/// a row of that type covering the activation rows' blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot_rows<const TY: u32, const N: usize>(
    w: &[u8],
    acts: &[ActRow<'_>; N],
    out: &mut [f32; N],
) {
    let nb = acts[0].1.len();
    let per = if TY == T_Q5_0 || TY == T_Q5_1 {
        1
    } else {
        QK_K / QK
    };
    assert!(
        w.len() >= nb.div_ceil(per) * block_bytes(TY)
            && acts.iter().all(|a| a.1.len() == nb && a.0.len() >= nb * QK),
        "row sizes"
    );
    let signed = TY == T_Q5_0 || TY == T_Q6_K;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); N];
    let mut off = [0.0f32; N];
    for b in 0..nb {
        let u = unpack::<TY>(w.as_ptr(), b);
        let wabs = if signed {
            _mm256_sign_epi8(u.q, u.q)
        } else {
            u.q
        };
        for i in 0..N {
            let mut x = _mm256_loadu_si256(acts[i].0.as_ptr().add(b * QK) as *const __m256i);
            if signed {
                x = _mm256_sign_epi8(x, u.q);
            }
            let p16 = _mm256_maddubs_epi16(wabs, x);
            let p32 = if TY == T_Q6_K {
                _mm256_madd_epi16(p16, u.sc)
            } else {
                _mm256_madd_epi16(p16, ones)
            };
            let da = *acts[i].1.get_unchecked(b);
            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(u.d * da), _mm256_cvtepi32_ps(p32), acc[i]);
            if !signed {
                off[i] += u.m * *acts[i].2.get_unchecked(b);
            }
        }
    }
    for i in 0..N {
        out[i] = hsum(acc[i]) + off[i];
    }
}
