//! Attention primitives over the paged KV cache (`crate::kv`), written once over [`Simd`] and
//! compiled per x86 level by the entry points (AVX2 here, AVX-512 in `attn512.rs`): exact
//! dequantization of a KV block to f32, score tiles (query rows × a block's 16 keys), weighted
//! value sums, and (per level) the exponentials of a score row with their sum.
//!
//! Every output element is one chain of fused multiply-adds in a fixed order (over the head's
//! dimensions for a score, over the keys for a value sum), so a query row's results do not
//! depend on which other rows or blocks share the call, nor on how a level tiles them: batch
//! invariance. A block's 16 keys fill `16 / S::R` registers (two of 8 lanes, one of 16).
#![cfg(target_arch = "x86_64")]
#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::avx2::hsum;
use super::avx2_ops::{exp8, hmax};
use super::simd::{Simd, Ymm};
use crate::backend::cpu::KvBlock;

type Avx2 = Ymm<false>;

/// Query rows per value tile, and per score tile of the prefill path's remainder.
const ROWS: usize = 6;

/// Most blocks of a call read in place (a chunk's blocks).
const MAX_FUSED: usize = 64;

/// How a level tiles the work (registers differ: 16 of 8 lanes, 32 of 16).
pub(super) struct Tiles {
    /// Blocks in flight per decode score tile with one or two rows, and with three or four.
    pub blocks_few: usize,
    pub blocks_more: usize,
    /// Registers per decode value strip with one or two rows, and with three or four.
    pub value_regs_few: usize,
    pub value_regs_more: usize,
    /// Registers per prefill value strip.
    pub value_regs: usize,
}

/// The AVX2 level's tiles: prefill scores 6 rows × 16 keys = 12 accumulators (+ 2 keys + 1
/// broadcast), decode scores two blocks in flight for one or two rows.
const AVX2_TILES: Tiles = Tiles {
    blocks_few: 2,
    blocks_more: 1,
    value_regs_few: 4,
    value_regs_more: 2,
    value_regs: 2,
};

/// Registers holding one block's 16 keys.
#[inline(always)]
const fn per_block<S: Simd>() -> usize {
    16 / S::R
}

/// One f16 as f32.
#[inline(always)]
unsafe fn f16_scalar(bits: u16) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

/// `R` int8 at `p` as f32.
#[inline(always)]
unsafe fn i8f<S: Simd>(p: *const i8) -> S::F {
    S::cvt(S::sext8(p as *const u8))
}

/// `R` f16 at `p` as f32.
#[inline(always)]
unsafe fn f16f<S: Simd>(p: *const u16) -> S::F {
    S::load_f16(p as *const u8)
}

#[inline(always)]
unsafe fn f16_to_f32_g<S: Simd>(src: *const u16, n: usize, dst: *mut f32) {
    for i in (0..n).step_by(S::R) {
        S::store(f16f::<S>(src.add(i)), dst.add(i));
    }
}

#[inline(always)]
unsafe fn q8_keys_to_f32_g<S: Simd>(q: *const i8, s: *const u16, hd: usize, dst: *mut f32) {
    let h = per_block::<S>();
    for g in 0..hd / 32 {
        let mut sc = [S::fzero(); 2];
        for (i, v) in sc.iter_mut().enumerate().take(h) {
            *v = f16f::<S>(s.add(g * 16 + i * S::R));
        }
        for d in g * 32..(g + 1) * 32 {
            for (i, v) in sc.iter().enumerate().take(h) {
                let at = d * 16 + i * S::R;
                S::store(S::mul(i8f::<S>(q.add(at)), *v), dst.add(at));
            }
        }
    }
}

#[inline(always)]
unsafe fn q8_values_to_f32_g<S: Simd>(q: *const i8, s: *const u16, hd: usize, dst: *mut f32) {
    let groups = hd / 32;
    for j in 0..16 {
        for g in 0..groups {
            let sc = S::splat(f16_scalar(s.add(j * groups + g).read_unaligned()));
            let at = j * hd + g * 32;
            for i in (0..32).step_by(S::R) {
                S::store(S::mul(i8f::<S>(q.add(at + i)), sc), dst.add(at + i));
            }
        }
    }
}

/// `n` f16 (a multiple of 8) at `src` into `dst` as f32.
///
/// # Safety
/// CPU must support AVX2/F16C; `n` elements are readable at `src` and writable at `dst`.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn f16_to_f32(src: *const u16, n: usize, dst: *mut f32) {
    f16_to_f32_g::<Avx2>(src, n, dst)
}

/// q8_0 keys of one block (`q[d·16 + j]`, scales `s[(d/32)·16 + j]`) into `dst[d·16 + j]`.
///
/// # Safety
/// CPU must support AVX2/F16C; `hd·16` elements, `hd/2` scales and `hd·16` outputs fit.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_keys_to_f32(q: *const i8, s: *const u16, hd: usize, dst: *mut f32) {
    q8_keys_to_f32_g::<Avx2>(q, s, hd, dst)
}

/// q8_0 values of one block (`q[j·hd + d]`, scales `s[j·hd/32 + d/32]`) into `dst[j·hd + d]`.
///
/// # Safety
/// As [`q8_keys_to_f32`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn q8_values_to_f32(q: *const i8, s: *const u16, hd: usize, dst: *mut f32) {
    q8_values_to_f32_g::<Avx2>(q, s, hd, dst)
}

/// Scores of `R` rows × 16 keys of one block (`kt`: `[hd][16]`), stored scaled at
/// `out + r·ld`.
#[inline(always)]
unsafe fn scores_tile<S: Simd, const R: usize>(
    kt: *const f32,
    q: *const f32,
    hd: usize,
    scale: S::F,
    out: *mut f32,
    ld: usize,
) {
    let h = per_block::<S>();
    let mut acc = [[S::fzero(); 2]; R];
    for d in 0..hd {
        let mut k = [S::fzero(); 2];
        for (i, v) in k.iter_mut().enumerate().take(h) {
            *v = S::loadf(kt.add(d * 16 + i * S::R));
        }
        for (r, a) in acc.iter_mut().enumerate() {
            let qv = S::splat(*q.add(r * hd + d));
            for i in 0..h {
                a[i] = S::fma(qv, k[i], a[i]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (i, v) in a.iter().enumerate().take(h) {
            S::store(S::mul(*v, scale), out.add(r * ld + i * S::R));
        }
    }
}

/// Scores of `rows` rows against f32 keys of one block (`kt`: `[hd][16]`), in tiles of
/// `T` rows, then [`ROWS`], then the rest.
#[inline(always)]
unsafe fn scores_f32<S: Simd, const T: usize>(
    kt: *const f32,
    q: *const f32,
    rows: usize,
    hd: usize,
    s: S::F,
    out: *mut f32,
    ld: usize,
) {
    let mut r = 0;
    while r + T <= rows {
        scores_tile::<S, T>(kt, q.add(r * hd), hd, s, out.add(r * ld), ld);
        r += T;
    }
    while r + ROWS <= rows {
        scores_tile::<S, ROWS>(kt, q.add(r * hd), hd, s, out.add(r * ld), ld);
        r += ROWS;
    }
    let (qr, or) = (q.add(r * hd), out.add(r * ld));
    match rows - r {
        1 => scores_tile::<S, 1>(kt, qr, hd, s, or, ld),
        2 => scores_tile::<S, 2>(kt, qr, hd, s, or, ld),
        3 => scores_tile::<S, 3>(kt, qr, hd, s, or, ld),
        4 => scores_tile::<S, 4>(kt, qr, hd, s, or, ld),
        5 => scores_tile::<S, 5>(kt, qr, hd, s, or, ld),
        _ => {}
    }
}

/// Keys of one block read in place: the 16 keys' dimension `d` as `16 / R` vectors, the same
/// values the conversions give.
trait Keys<S: Simd>: Copy {
    /// Prepares the scales of the dimension group `g` (dimensions `32g..32g + 32`).
    unsafe fn group(self, g: usize) -> [S::F; 2];
    unsafe fn dim(self, d: usize, scales: [S::F; 2]) -> [S::F; 2];
}

/// An f16 KV block read in place (its keys `[hd][16]` or its values `[16][hd]`).
#[derive(Clone, Copy)]
struct F16Block(*const u16);
impl<S: Simd> Keys<S> for F16Block {
    #[inline(always)]
    unsafe fn group(self, _g: usize) -> [S::F; 2] {
        [S::fzero(); 2]
    }
    #[inline(always)]
    unsafe fn dim(self, d: usize, _s: [S::F; 2]) -> [S::F; 2] {
        let mut k = [S::fzero(); 2];
        for (i, v) in k.iter_mut().enumerate().take(per_block::<S>()) {
            *v = f16f::<S>(self.0.add(d * 16 + i * S::R));
        }
        k
    }
}

/// A q8_0 KV block read in place: its quants and f16 scales.
#[derive(Clone, Copy)]
struct Q8Block(*const i8, *const u16);
impl<S: Simd> Keys<S> for Q8Block {
    #[inline(always)]
    unsafe fn group(self, g: usize) -> [S::F; 2] {
        let mut sc = [S::fzero(); 2];
        for (i, v) in sc.iter_mut().enumerate().take(per_block::<S>()) {
            *v = f16f::<S>(self.1.add(g * 16 + i * S::R));
        }
        sc
    }
    #[inline(always)]
    unsafe fn dim(self, d: usize, s: [S::F; 2]) -> [S::F; 2] {
        let mut k = [S::fzero(); 2];
        for (i, v) in k.iter_mut().enumerate().take(per_block::<S>()) {
            *v = S::mul(i8f::<S>(self.0.add(d * 16 + i * S::R)), s[i]);
        }
        k
    }
}

/// Scores of `R` rows (few: decode) against `NB` blocks of keys read in place (no f32
/// copy); per score the same chain as [`scores_tile`].
#[inline(always)]
unsafe fn scores_fused<S: Simd, K: Keys<S>, const R: usize, const NB: usize>(
    keys: [K; NB],
    q: *const f32,
    hd: usize,
    scale: S::F,
    out: *mut f32,
    ld: usize,
) {
    let h = per_block::<S>();
    let mut acc = [[[S::fzero(); 2]; R]; NB];
    for g in 0..hd.div_ceil(32) {
        let sc: [[S::F; 2]; NB] = std::array::from_fn(|b| keys[b].group(g));
        for d in g * 32..hd.min(g * 32 + 32) {
            let qv: [S::F; R] = std::array::from_fn(|r| S::splat(*q.add(r * hd + d)));
            for b in 0..NB {
                let k = keys[b].dim(d, sc[b]);
                for i in 0..h {
                    for r in 0..R {
                        acc[b][r][i] = S::fma(qv[r], k[i], acc[b][r][i]);
                    }
                }
            }
        }
    }
    for (b, ab) in acc.iter().enumerate() {
        for (r, a) in ab.iter().enumerate() {
            for (i, v) in a.iter().enumerate().take(h) {
                S::store(S::mul(*v, scale), out.add(r * ld + b * 16 + i * S::R));
            }
        }
    }
}

/// Few rows: every block read in place, `nb` at a time (4, 2 or 1), then one at a time.
#[inline(always)]
unsafe fn scores_few<S: Simd, K: Keys<S>, const R: usize>(
    keys: &[K],
    nb: usize,
    q: *const f32,
    hd: usize,
    s: S::F,
    out: *mut f32,
    ld: usize,
) {
    let mut b = 0;
    if nb == 4 {
        while b + 4 <= keys.len() {
            let four = [keys[b], keys[b + 1], keys[b + 2], keys[b + 3]];
            scores_fused::<S, K, R, 4>(four, q, hd, s, out.add(b * 16), ld);
            b += 4;
        }
    }
    if nb == 2 {
        while b + 2 <= keys.len() {
            let two = [keys[b], keys[b + 1]];
            scores_fused::<S, K, R, 2>(two, q, hd, s, out.add(b * 16), ld);
            b += 2;
        }
    }
    while b < keys.len() {
        scores_fused::<S, K, R, 1>([keys[b]], q, hd, s, out.add(b * 16), ld);
        b += 1;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn few_rows<S: Simd, K: Keys<S>>(
    keys: &[K],
    t: &Tiles,
    q: *const f32,
    rows: usize,
    hd: usize,
    s: S::F,
    out: *mut f32,
    ld: usize,
) {
    let (few, more) = (t.blocks_few, t.blocks_more);
    match rows {
        1 => scores_few::<S, K, 1>(keys, few, q, hd, s, out, ld),
        2 => scores_few::<S, K, 2>(keys, few, q, hd, s, out, ld),
        3 => scores_few::<S, K, 3>(keys, more, q, hd, s, out, ld),
        _ => scores_few::<S, K, 4>(keys, more, q, hd, s, out, ld),
    }
}

/// The blocks of a call, all of one type, as the handles the in-place kernels read, keys and
/// values alike (`None`: no blocks, or more than [`MAX_FUSED`]).
// On the stack for one call (boxing would allocate at every call).
#[allow(clippy::large_enum_variant)]
enum InPlace {
    F16([F16Block; MAX_FUSED]),
    Q8([Q8Block; MAX_FUSED]),
}

fn in_place(blocks: &[KvBlock<'_>]) -> Option<InPlace> {
    if blocks.len() > MAX_FUSED {
        return None;
    }
    match blocks.first()? {
        KvBlock::F16(_) => {
            let mut ks = [F16Block(std::ptr::null()); MAX_FUSED];
            for (dst, k) in ks.iter_mut().zip(blocks) {
                let KvBlock::F16(h) = k else {
                    panic!("one call reads blocks of one type")
                };
                *dst = F16Block(h.as_ptr());
            }
            Some(InPlace::F16(ks))
        }
        KvBlock::Q8 { .. } => {
            let mut ks = [Q8Block(std::ptr::null(), std::ptr::null()); MAX_FUSED];
            for (dst, k) in ks.iter_mut().zip(blocks) {
                let KvBlock::Q8 { q, d } = k else {
                    panic!("one call reads blocks of one type")
                };
                *dst = Q8Block(q.as_ptr(), d.as_ptr());
            }
            Some(InPlace::Q8(ks))
        }
    }
}

/// See `Kernels::attn_scores`: few rows read the keys in place; more rows convert each block
/// once to f32 and share it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn scores_g<S: Simd, const T: usize>(
    t: &Tiles,
    keys: &[KvBlock<'_>],
    q: *const f32,
    rows: usize,
    hd: usize,
    scale: f32,
    out: *mut f32,
    ld: usize,
    buf: &mut Vec<f32>,
) {
    let s = S::splat(scale);
    if (1..=4).contains(&rows) {
        let n = keys.len();
        match in_place(keys) {
            Some(InPlace::F16(ks)) => {
                return few_rows::<S, _>(&ks[..n], t, q, rows, hd, s, out, ld)
            }
            Some(InPlace::Q8(ks)) => return few_rows::<S, _>(&ks[..n], t, q, rows, hd, s, out, ld),
            None if keys.is_empty() => return,
            None => {}
        }
    }
    if buf.len() < 16 * hd {
        buf.resize(16 * hd, 0.0);
    }
    let kt = buf.as_mut_ptr();
    for (b, k) in keys.iter().enumerate() {
        match *k {
            KvBlock::F16(h) => f16_to_f32_g::<S>(h.as_ptr(), hd * 16, kt),
            KvBlock::Q8 { q, d } => q8_keys_to_f32_g::<S>(q.as_ptr(), d.as_ptr(), hd, kt),
        }
        scores_f32::<S, T>(kt, q, rows, hd, s, out.add(b * 16), ld);
    }
}

/// See `Kernels::attn_scores`.
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
    scores_g::<Avx2, 6>(&AVX2_TILES, keys, q, rows, hd, scale, out, ld, buf)
}

/// `R` rows × `C` registers of columns of the weighted value sum (`v`: `[keys][hd]`),
/// accumulated in registers over the keys.
#[inline(always)]
unsafe fn values_tile<S: Simd, const R: usize, const C: usize>(
    v: *const f32,
    keys: usize,
    p: *const f32,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    let mut acc = [[S::fzero(); C]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        for (c, x) in a.iter_mut().enumerate() {
            *x = S::loadf(out.add(r * hd + S::R * c));
        }
    }
    for j in 0..keys {
        let vv: [S::F; C] = std::array::from_fn(|c| S::loadf(v.add(j * hd + S::R * c)));
        for (r, a) in acc.iter_mut().enumerate() {
            let w = S::splat(*p.add(r * ld + j));
            for c in 0..C {
                a[c] = S::fma(w, vv[c], a[c]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (c, x) in a.iter().enumerate() {
            S::store(*x, out.add(r * hd + S::R * c));
        }
    }
}

/// The rows of a column strip of `C` registers, in tiles of [`ROWS`].
#[inline(always)]
unsafe fn values_strip<S: Simd, const C: usize>(
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
        values_tile::<S, ROWS, C>(v, keys, p.add(r * ld), ld, hd, out.add(r * hd));
        r += ROWS;
    }
    let (pr, or) = (p.add(r * ld), out.add(r * hd));
    match rows - r {
        1 => values_tile::<S, 1, C>(v, keys, pr, ld, hd, or),
        2 => values_tile::<S, 2, C>(v, keys, pr, ld, hd, or),
        3 => values_tile::<S, 3, C>(v, keys, pr, ld, hd, or),
        4 => values_tile::<S, 4, C>(v, keys, pr, ld, hd, or),
        5 => values_tile::<S, 5, C>(v, keys, pr, ld, hd, or),
        _ => {}
    }
}

/// Value rows of one block read in place: `R` dimensions of a key's row as f32, the same
/// values the conversions give.
trait Vals<S: Simd>: Copy {
    /// The scale of key `j`'s dimension group `g` (rows of `hd` dimensions).
    unsafe fn scale(self, j: usize, g: usize, hd: usize) -> S::F;
    unsafe fn row(self, j: usize, c: usize, hd: usize, scale: S::F) -> S::F;
}

impl<S: Simd> Vals<S> for F16Block {
    #[inline(always)]
    unsafe fn scale(self, _j: usize, _g: usize, _hd: usize) -> S::F {
        S::fzero()
    }
    #[inline(always)]
    unsafe fn row(self, j: usize, c: usize, hd: usize, _s: S::F) -> S::F {
        f16f::<S>(self.0.add(j * hd + c))
    }
}

impl<S: Simd> Vals<S> for Q8Block {
    #[inline(always)]
    unsafe fn scale(self, j: usize, g: usize, hd: usize) -> S::F {
        S::splat(f16_scalar(self.1.add(j * (hd / 32) + g).read_unaligned()))
    }
    #[inline(always)]
    unsafe fn row(self, j: usize, c: usize, hd: usize, s: S::F) -> S::F {
        S::mul(i8f::<S>(self.0.add(j * hd + c)), s)
    }
}

/// `R` rows (few: decode) × `C` registers of columns from `c0`, over every key of `vals` read
/// in place; per element the same chain as [`values_tile`].
#[inline(always)]
unsafe fn values_fused<S: Simd, V: Vals<S>, const R: usize, const C: usize>(
    vals: &[V],
    p: *const f32,
    ld: usize,
    hd: usize,
    c0: usize,
    out: *mut f32,
) {
    let mut acc = [[S::fzero(); C]; R];
    for (r, a) in acc.iter_mut().enumerate() {
        for (c, x) in a.iter_mut().enumerate() {
            *x = S::loadf(out.add(r * hd + c0 + S::R * c));
        }
    }
    for (b, vb) in vals.iter().enumerate() {
        for j in 0..16 {
            let w: [S::F; R] = std::array::from_fn(|r| S::splat(*p.add(r * ld + b * 16 + j)));
            // One scale per 32-column group the strip touches.
            let mut group = usize::MAX;
            let mut sc = S::fzero();
            for c in 0..C {
                let col = c0 + S::R * c;
                if col / 32 != group {
                    group = col / 32;
                    sc = vb.scale(j, group, hd);
                }
                let v = vb.row(j, col, hd, sc);
                for r in 0..R {
                    acc[r][c] = S::fma(w[r], v, acc[r][c]);
                }
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        for (c, x) in a.iter().enumerate() {
            S::store(*x, out.add(r * hd + c0 + S::R * c));
        }
    }
}

/// Few rows: strips of `regs` registers (4 or 2), then 2, then 1, over all the keys.
#[inline(always)]
unsafe fn values_few<S: Simd, V: Vals<S>, const R: usize>(
    vals: &[V],
    regs: usize,
    p: *const f32,
    ld: usize,
    hd: usize,
    out: *mut f32,
) {
    let mut c = 0;
    if regs == 4 {
        while c + 4 * S::R <= hd {
            values_fused::<S, V, R, 4>(vals, p, ld, hd, c, out);
            c += 4 * S::R;
        }
    }
    while c + 2 * S::R <= hd {
        values_fused::<S, V, R, 2>(vals, p, ld, hd, c, out);
        c += 2 * S::R;
    }
    while c < hd {
        values_fused::<S, V, R, 1>(vals, p, ld, hd, c, out);
        c += S::R;
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn few_value_rows<S: Simd, V: Vals<S>>(
    vals: &[V],
    t: &Tiles,
    p: *const f32,
    ld: usize,
    rows: usize,
    hd: usize,
    out: *mut f32,
) {
    let (few, more) = (t.value_regs_few, t.value_regs_more);
    match rows {
        1 => values_few::<S, V, 1>(vals, few, p, ld, hd, out),
        2 => values_few::<S, V, 2>(vals, few, p, ld, hd, out),
        3 => values_few::<S, V, 3>(vals, more, p, ld, hd, out),
        _ => values_few::<S, V, 4>(vals, more, p, ld, hd, out),
    }
}

/// See `Kernels::attn_values`: few rows read the values in place; more rows convert each
/// block once to f32 and share it.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn values_g<S: Simd>(
    t: &Tiles,
    values: &[KvBlock<'_>],
    p: *const f32,
    ld: usize,
    rows: usize,
    hd: usize,
    out: *mut f32,
    buf: &mut Vec<f32>,
) {
    if (1..=4).contains(&rows) {
        let n = values.len();
        match in_place(values) {
            Some(InPlace::F16(vs)) => {
                return few_value_rows::<S, _>(&vs[..n], t, p, ld, rows, hd, out)
            }
            Some(InPlace::Q8(vs)) => {
                return few_value_rows::<S, _>(&vs[..n], t, p, ld, rows, hd, out)
            }
            None if values.is_empty() => return,
            None => {}
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
            KvBlock::F16(h) => f16_to_f32_g::<S>(h.as_ptr(), hd * 16, dst),
            KvBlock::Q8 { q, d } => q8_values_to_f32_g::<S>(q.as_ptr(), d.as_ptr(), hd, dst),
        }
    }
    let v = buf.as_ptr();
    let mut c = 0;
    if t.value_regs == 4 {
        while c + 4 * S::R <= hd {
            values_strip::<S, 4>(v.add(c), keys, p, ld, rows, hd, out.add(c));
            c += 4 * S::R;
        }
    }
    while c + 2 * S::R <= hd {
        values_strip::<S, 2>(v.add(c), keys, p, ld, rows, hd, out.add(c));
        c += 2 * S::R;
    }
    while c < hd {
        values_strip::<S, 1>(v.add(c), keys, p, ld, rows, hd, out.add(c));
        c += S::R;
    }
}

/// See `Kernels::attn_values`.
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
    values_g::<Avx2>(&AVX2_TILES, values, p, ld, rows, hd, out, buf)
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
