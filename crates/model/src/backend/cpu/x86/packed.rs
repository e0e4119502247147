//! The repacked matmul kernel (layouts in [`crate::quant::repack`]), written once over
//! [`Simd`] and compiled for each x86 level by the `#[target_feature]` entry points at the end.
//!
//! Per block of 32 and activation row, the eight weight lines meet broadcasts of the matching
//! four activation bytes: `W[2j]` adds into the row's first-half sum, `W[2j+1]` into its
//! second-half sum, each 32-bit lane one weight row. The integer sums then take the format's
//! integer offset exactly (Q4_0: −8·Σa, Q5_0: −16·Σa, unsigned Q8_0: −128·Σa, Q6_K: −32·Σa
//! per half, from the activation's exact half sums), are converted once, and one FMA per block
//! adds `d_w·d_a·sum` into the row's accumulator (plus `m·s_a` for the formats with a float
//! offset). An activation row's results come from the same operations whatever else is in the
//! call, so they are bit-identical for any batch.
#![allow(unsafe_op_in_unsafe_fn)]

use std::ops::Range;

use super::simd::{Simd, Ymm, Zmm};
use crate::backend::cpu::OutTile;
use crate::quant::repack::{Form, Layout, Packed};
use crate::quant::{QuantizedActs, QK};

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q5_0: u8 = 2;
const Q5_1: u8 = 3;
const Q8: u8 = 4;
const K4: u8 = 5;
const K5: u8 = 6;
const K6: u8 = 7;

/// Activation rows per tile kept in L1 while a task's weight groups pass over it.
const T_TILE: usize = 16;

/// How far ahead (bytes) the kernel prefetches the group it streams.
const PREFETCH: usize = 2048;

/// Prefetches the `len` bytes `PREFETCH` past `p` into L1.
#[inline(always)]
unsafe fn prefetch(p: *const u8, len: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for off in (0..len).step_by(64) {
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(PREFETCH + off) as *const i8);
    }
}

/// One quantized activation row.
#[derive(Clone, Copy)]
struct Act {
    qs: *const i8,
    d: *const f32,
    s: *const f32,
    sums: *const i16,
}

impl Act {
    #[inline(always)]
    fn of(x: &QuantizedActs, t: usize) -> Act {
        let nb = x.cols / QK;
        Act {
            qs: x.qs[t * x.cols..].as_ptr(),
            d: x.d[t * nb..].as_ptr(),
            s: x.s[t * nb..].as_ptr(),
            sums: x.sums[2 * t * nb..].as_ptr(),
        }
    }
}

/// A block's quants: its nibble (or byte) lines and its high-bit planes, loaded once.
struct Lines<S: Simd> {
    at: *const u8,
    planes: [S::I; 2],
}

/// Lines `W[2j]` and `W[2j+1]` as unsigned (or, for Q8_0, as stored) bytes.
#[inline(always)]
unsafe fn line_pair<S: Simd, const F: u8>(l: &Lines<S>, j: usize) -> (S::I, S::I) {
    let r4 = 4 * S::R;
    if F == Q8 {
        return (
            S::load(l.at.add(2 * j * r4)),
            S::load(l.at.add((2 * j + 1) * r4)),
        );
    }
    let (mut lo, mut hi) = S::nibbles(S::load(l.at.add(j * r4)));
    match F {
        Q5_0 | Q5_1 | K5 => {
            // Bit L of each byte of the plane is bit 4 of line L's quant.
            let bit4 = S::set1(0x1010_1010);
            let p = l.planes[0];
            lo = S::or(lo, S::and(S::shift(p, 4 - 2 * j as i32), bit4));
            hi = S::or(hi, S::and(S::shift(p, 3 - 2 * j as i32), bit4));
        }
        K6 => {
            // Bits 2s..2s+2 of plane word L/4 are bits 4–5 of line L's quant (s = L % 4).
            let bits45 = S::set1(0x3030_3030);
            let p = l.planes[j / 2];
            let s = 2 * (j % 2) as i32;
            lo = S::or(lo, S::and(S::shift(p, 4 - 2 * s), bits45));
            hi = S::or(hi, S::and(S::shift(p, 2 - 2 * s), bits45));
        }
        _ => {}
    }
    (lo, hi)
}

/// The integer sums of one block with each activation row: (first half, second half).
#[inline(always)]
unsafe fn block_sums<S: Simd, const F: u8, const N: usize>(
    l: &Lines<S>,
    acts: &[Act; N],
    b: usize,
) -> ([S::I; N], [S::I; N]) {
    let mut lo = [S::zero(); N];
    let mut hi = [S::zero(); N];
    // Without VNNI the pair sums add up in 16-bit lanes: four 4- or 5-bit lines stay below
    // 2¹⁵ (4·2·31·127 = 31,496), 6-bit ones are widened every two lines.
    let mut lo32 = [S::zero(); N];
    let mut hi32 = [S::zero(); N];
    for j in 0..4 {
        let (wl, wh) = line_pair::<S, F>(l, j);
        if F == Q8 && !S::VNNI {
            let (la, ha) = (S::abs8(wl), S::abs8(wh));
            for i in 0..N {
                let a = acts[i].qs.add(b * QK + 4 * j);
                lo[i] = S::dot_signed(lo[i], la, wl, S::bcast4(a));
                hi[i] = S::dot_signed(hi[i], ha, wh, S::bcast4(a.add(16)));
            }
            continue;
        }
        for i in 0..N {
            let a = acts[i].qs.add(b * QK + 4 * j);
            lo[i] = S::dot(lo[i], wl, S::bcast4(a));
            hi[i] = S::dot(hi[i], wh, S::bcast4(a.add(16)));
        }
        if !S::VNNI && F == K6 && j % 2 == 1 {
            for i in 0..N {
                lo32[i] = S::add(lo32[i], S::widen(lo[i]));
                hi32[i] = S::add(hi32[i], S::widen(hi[i]));
                lo[i] = S::zero();
                hi[i] = S::zero();
            }
        }
    }
    if !S::VNNI && F != Q8 {
        for i in 0..N {
            if F == K6 {
                (lo[i], hi[i]) = (lo32[i], hi32[i]);
            } else {
                (lo[i], hi[i]) = (S::widen(lo[i]), S::widen(hi[i]));
            }
        }
    }
    (lo, hi)
}

/// The exact integer sum of activation row `a`'s block `b` (both halves).
#[inline(always)]
unsafe fn act_sum(a: &Act, b: usize) -> i32 {
    *a.sums.add(2 * b) as i32 + *a.sums.add(2 * b + 1) as i32
}

/// One group of 32-element-block weights times `N` activation rows.
#[inline(always)]
unsafe fn group32<S: Simd, const F: u8, const N: usize>(
    g: *const u8,
    lay: &Layout,
    acts: &[Act; N],
) -> [S::F; N] {
    let r = S::R;
    let mut acc = [S::fzero(); N];
    // The integer offset of the stored quants, a multiple of each block's scale.
    let off = match F {
        Q4_0 => 8,
        Q5_0 => 16,
        Q8 if S::VNNI => 128,
        _ => 0,
    };
    for b in 0..lay.nb {
        let body = g.add(lay.body_at(b));
        if N > 1 {
            prefetch(body, lay.body);
        }
        let dv = S::load_f16(g.add(lay.d_at(b)));
        let l = match F {
            Q5_0 | Q5_1 => Lines {
                at: body.add(4 * r),
                planes: [S::load(body), S::zero()],
            },
            _ => Lines {
                at: body,
                planes: [S::zero(); 2],
            },
        };
        let (lo, hi) = block_sums::<S, F, N>(&l, acts, b);
        let mv = if F == Q4_1 || F == Q5_1 {
            S::load_f16(g.add(lay.m_at(b)))
        } else {
            S::fzero()
        };
        for i in 0..N {
            let a = &acts[i];
            let mut t = S::add(lo[i], hi[i]);
            if off != 0 {
                t = S::sub(t, S::set1(off * act_sum(a, b)));
            }
            acc[i] = S::fma(S::mul(dv, S::splat(*a.d.add(b))), S::cvt(t), acc[i]);
            if F == Q4_1 || F == Q5_1 {
                acc[i] = S::fma(mv, S::splat(*a.s.add(b)), acc[i]);
            }
        }
    }
    acc
}

/// One group of K-quant weights times `N` activation rows.
#[inline(always)]
unsafe fn group_k<S: Simd, const F: u8, const N: usize>(
    g: *const u8,
    lay: &Layout,
    acts: &[Act; N],
) -> [S::F; N] {
    let r = S::R;
    let mut acc = [S::fzero(); N];
    for u in 0..lay.nb / 8 {
        let body = g.add(lay.body_at(u));
        if N > 1 {
            prefetch(body, lay.body);
        }
        let d = S::load_f16(g.add(lay.d_at(u)));
        let neg_dmin = if F == K6 {
            S::fzero()
        } else {
            S::mul(S::load_f16(g.add(lay.m_at(u))), S::splat(-1.0))
        };
        for s in 0..8 {
            let b = 8 * u + s;
            if F == K6 {
                let blk = body.add(16 * r + s * 24 * r);
                let l = Lines::<S> {
                    at: blk.add(8 * r),
                    planes: [S::load(blk), S::load(blk.add(4 * r))],
                };
                let sc_lo = S::sext8(body.add(2 * s * r));
                let sc_hi = S::sext8(body.add((2 * s + 1) * r));
                let (lo, hi) = block_sums::<S, F, N>(&l, acts, b);
                for i in 0..N {
                    let a = &acts[i];
                    let tl = S::sub(lo[i], S::set1(32 * *a.sums.add(2 * b) as i32));
                    let th = S::sub(hi[i], S::set1(32 * *a.sums.add(2 * b + 1) as i32));
                    let t = S::add(S::mullo(sc_lo, tl), S::mullo(sc_hi, th));
                    acc[i] = S::fma(S::mul(d, S::splat(*a.d.add(b))), S::cvt(t), acc[i]);
                }
                continue;
            }
            // 6-bit scale and min of sub-block s (see the layout).
            let sa = S::zext8(body.add(s * r));
            let sc = S::and(sa, S::set1(63));
            let m_hi = S::and(S::shift(sa, -2), S::set1(0x30));
            let m_lo = S::and(
                S::shift(S::zext8(body.add(8 * r + (s / 2) * r)), -4 * (s % 2) as i32),
                S::set1(15),
            );
            let dsc = S::mul(d, S::cvt(sc));
            let dm = S::mul(neg_dmin, S::cvt(S::or(m_hi, m_lo)));
            let l = if F == K5 {
                let blk = body.add(12 * r + s * 20 * r);
                Lines::<S> {
                    at: blk.add(4 * r),
                    planes: [S::load(blk), S::zero()],
                }
            } else {
                Lines::<S> {
                    at: body.add(12 * r + s * 16 * r),
                    planes: [S::zero(); 2],
                }
            };
            let (lo, hi) = block_sums::<S, F, N>(&l, acts, b);
            for i in 0..N {
                let a = &acts[i];
                let t = S::add(lo[i], hi[i]);
                acc[i] = S::fma(S::mul(dsc, S::splat(*a.d.add(b))), S::cvt(t), acc[i]);
                acc[i] = S::fma(dm, S::splat(*a.s.add(b)), acc[i]);
            }
        }
    }
    acc
}

/// Group `g` times the activation rows `acts` (rows `t..t + N`), stored into `out`.
#[inline(always)]
unsafe fn group_into<S: Simd, const F: u8, const N: usize>(
    w: &Packed,
    acts: &[Act; N],
    g: usize,
    t: usize,
    out: &OutTile,
) {
    let gp = w.group(g).as_ptr();
    let acc = if F >= K4 {
        group_k::<S, F, N>(gp, &w.layout, acts)
    } else {
        group32::<S, F, N>(gp, &w.layout, acts)
    };
    for (i, v) in acc.iter().enumerate() {
        match out.dst(t + i, g * S::R, S::R) {
            Some(p) => S::store(*v, p),
            None => {
                // The matrix's last group: its padding rows are dropped.
                let mut buf = [0.0f32; 16];
                S::store(*v, buf.as_mut_ptr());
                out.store(t + i, g * S::R, &buf[..S::R]);
            }
        }
    }
}

/// `N` activation rows from `tile[at..]`.
#[inline(always)]
fn pick<const N: usize>(tile: &[Act; T_TILE], at: usize) -> &[Act; N] {
    tile[at..at + N].try_into().expect("N rows of the tile")
}

/// Rows `rows` of `w` times every activation row, `NMAX` activation rows per kernel call.
/// Activation tiles are the outer loop and the task's groups the inner one, so a tile stays in
/// L1 across the groups.
#[inline(always)]
unsafe fn tiles<S: Simd, const F: u8, const NMAX: usize>(
    w: &Packed,
    x: &QuantizedActs,
    rows: Range<usize>,
    out: &OutTile,
) {
    let r = S::R;
    for t0 in (0..x.rows).step_by(T_TILE) {
        let t1 = (t0 + T_TILE).min(x.rows);
        let tile: [Act; T_TILE] = std::array::from_fn(|i| Act::of(x, (t0 + i).min(t1 - 1)));
        for g in rows.start / r..rows.end.div_ceil(r) {
            let mut t = t0;
            while t + NMAX <= t1 {
                group_into::<S, F, NMAX>(w, pick(&tile, t - t0), g, t, out);
                t += NMAX;
            }
            if NMAX > 4 {
                while t + 4 <= t1 {
                    group_into::<S, F, 4>(w, pick(&tile, t - t0), g, t, out);
                    t += 4;
                }
            }
            while t < t1 {
                group_into::<S, F, 1>(w, pick(&tile, t - t0), g, t, out);
                t += 1;
            }
        }
    }
}

#[inline(always)]
unsafe fn matmul<S: Simd, const NMAX: usize>(
    w: &Packed,
    x: &QuantizedActs,
    rows: Range<usize>,
    out: &OutTile,
) {
    assert!(
        w.spec.rows == S::R
            && w.spec.unsigned_q8 == S::VNNI
            && rows.start.is_multiple_of(S::R)
            && rows.end <= w.rows
            && x.cols == w.cols,
        "repacked layout {:?} for a {}-row kernel",
        w.spec,
        S::R
    );
    match w.form {
        Form::Q4 { min: false } => tiles::<S, Q4_0, NMAX>(w, x, rows, out),
        Form::Q4 { min: true } => tiles::<S, Q4_1, NMAX>(w, x, rows, out),
        Form::Q5 { min: false } => tiles::<S, Q5_0, NMAX>(w, x, rows, out),
        Form::Q5 { min: true } => tiles::<S, Q5_1, NMAX>(w, x, rows, out),
        Form::Q8 => tiles::<S, Q8, NMAX>(w, x, rows, out),
        Form::K4 => tiles::<S, K4, NMAX>(w, x, rows, out),
        Form::K5 => tiles::<S, K5, NMAX>(w, x, rows, out),
        Form::K6 => tiles::<S, K6, NMAX>(w, x, rows, out),
    }
}

/// # Safety
/// The CPU supports AVX2, FMA and F16C; activations come from `quantize_row` (-127..=127).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_avx2(w: &Packed, x: &QuantizedActs, rows: Range<usize>, out: &OutTile) {
    matmul::<Ymm<false>, 4>(w, x, rows, out)
}

/// # Safety
/// As [`matmul_avx2`], and the CPU supports AVX-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avxvnni")]
pub unsafe fn matmul_avxvnni(w: &Packed, x: &QuantizedActs, rows: Range<usize>, out: &OutTile) {
    matmul::<Ymm<true>, 4>(w, x, rows, out)
}

/// # Safety
/// As [`matmul_avx2`], and the CPU supports AVX-512 F, BW, VL and VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn matmul_avx512vnni(w: &Packed, x: &QuantizedActs, rows: Range<usize>, out: &OutTile) {
    matmul::<Zmm, 8>(w, x, rows, out)
}

/// The AVX-VNNI instantiation with `vpdpbusd` emulated (see `simd::YmmEmulatedVnni`).
///
/// # Safety
/// As [`matmul_avx2`].
#[cfg(test)]
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn matmul_emulated_avxvnni(
    w: &Packed,
    x: &QuantizedActs,
    rows: Range<usize>,
    out: &OutTile,
) {
    matmul::<super::simd::YmmEmulatedVnni, 4>(w, x, rows, out)
}
