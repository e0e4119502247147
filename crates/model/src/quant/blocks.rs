//! The Q5_0, Q5_1 and K-quant (Q4_K, Q5_K, Q6_K) block layouts, decoded one 32-element
//! activation block at a time: the reference definition of these formats, shared by the scalar
//! kernels and the dequantizer, and the layout the vector kernels are tested against.
//!
//! Layouts (ggml's, little-endian):
//! - Q5_0 (22 bytes / 32): `d` f16, `qh` u32 (5th bits), `qs[16]` nibbles (low nibbles are
//!   elements 0..16, high nibbles 16..32); value = d·(q − 16).
//! - Q5_1 (24 bytes / 32): `d` f16, `m` f16, `qh` u32, `qs[16]`; value = d·q + m.
//! - Q4_K (144 bytes / 256): `d`, `dmin` f16, `scales[12]` (8 six-bit scale/min pairs),
//!   `qs[128]`; 64-element chunk `j` reads `qs[32j..32j+32]`, low nibbles for sub-block `2j`,
//!   high for `2j+1`; value = d·sc·q − dmin·m.
//! - Q5_K (176 bytes / 256): as Q4_K with `qh[32]` before `qs`; sub-block `s` takes bit `s` of
//!   `qh[l]` as its 5th bit.
//! - Q6_K (210 bytes / 256): `ql[128]`, `qh[64]`, `scales[16]` i8 (one per 16 elements), `d`
//!   f16; value = d·sc·(q − 32) with 6-bit q.

use super::{f16_at, GgmlType, QK, QK_K};

/// One 32-element block of weights: `value[i] = d[i / 16] · q[i] + m`.
#[derive(Debug, Clone, Copy)]
pub struct Block32 {
    pub q: [i8; QK],
    /// Scale of each half (equal except for Q6_K, whose scales cover 16 elements).
    pub d: [f32; 2],
    /// Offset added to every value (0 for the symmetric formats Q5_0 and Q6_K).
    pub m: f32,
}

/// The 6-bit (scale, min) pair `j` (0..8) of a Q4_K/Q5_K super-block.
#[inline]
pub fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Block `b` (the `b`-th group of 32 elements) of a row of type `ty` (one of the formats this
/// module covers).
pub fn block32(ty: GgmlType, row: &[u8], b: usize) -> Block32 {
    let mut q = [0i8; QK];
    match ty {
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let bb = ty.block_bytes();
            let blk = &row[b * bb..(b + 1) * bb];
            let d = f16_at(blk, 0);
            let (m, hq) = if ty == GgmlType::Q5_1 {
                (f16_at(blk, 2), 4)
            } else {
                (0.0, 2)
            };
            let qh = u32::from_le_bytes(blk[hq..hq + 4].try_into().expect("4 bytes"));
            let qs = &blk[hq + 4..hq + 20];
            let bias = if ty == GgmlType::Q5_0 { 16 } else { 0 };
            for j in 0..QK / 2 {
                let lo = (qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
                let hi = (qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
                q[j] = lo as i8 - bias;
                q[j + QK / 2] = hi as i8 - bias;
            }
            Block32 { q, d: [d; 2], m }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let bb = ty.block_bytes();
            let sb = b / (QK_K / QK);
            let s = b % (QK_K / QK);
            let blk = &row[sb * bb..(sb + 1) * bb];
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            let (sc, mn) = scale_min_k4(s, &blk[4..16]);
            let qs_off = if ty == GgmlType::Q5_K { 48 } else { 16 };
            let ql = &blk[qs_off + 32 * (s / 2)..qs_off + 32 * (s / 2) + 32];
            let shift = 4 * (s % 2);
            for l in 0..QK {
                let mut v = (ql[l] >> shift) & 0x0F;
                if ty == GgmlType::Q5_K {
                    v |= ((blk[16 + l] >> s) & 1) << 4;
                }
                q[l] = v as i8;
            }
            Block32 {
                q,
                d: [d * sc as f32; 2],
                m: -(dmin * mn as f32),
            }
        }
        GgmlType::Q6_K => {
            let bb = ty.block_bytes();
            let sb = b / (QK_K / QK);
            let s = b % (QK_K / QK);
            let blk = &row[sb * bb..(sb + 1) * bb];
            let (n, g) = (s / 4, s % 4);
            let ql = &blk[64 * n + 32 * (g % 2)..64 * n + 32 * (g % 2) + 32];
            let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
            let nshift = 4 * (g / 2);
            for l in 0..QK {
                let v = ((ql[l] >> nshift) & 0x0F) | (((qh[l] >> (2 * g)) & 3) << 4);
                q[l] = v as i8 - 32;
            }
            let d = f16_at(blk, 208);
            let sc = |i: usize| blk[192 + 8 * n + 2 * g + i] as i8 as f32;
            Block32 {
                q,
                d: [d * sc(0), d * sc(1)],
                m: 0.0,
            }
        }
        _ => unreachable!("{ty:?} is not decoded by blocks.rs"),
    }
}

/// Whether `ty` is one of the formats decoded here.
pub fn covers(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K
    )
}

/// Scalar dot product of a row of one of these formats with an int8 activation row.
/// Per block: `Σ_h d[h]·dA·Σ q·x (over the half) + m·sA`.
pub fn dot(ty: GgmlType, w: &[u8], qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    let mut acc = 0.0f32;
    for b in 0..d.len() {
        let blk = block32(ty, w, b);
        let x = &qs[b * QK..(b + 1) * QK];
        let half = |h: usize| -> i32 {
            (16 * h..16 * h + 16)
                .map(|i| blk.q[i] as i32 * x[i] as i32)
                .sum()
        };
        let v = if blk.d[0] == blk.d[1] {
            blk.d[0] * d[b] * (half(0) + half(1)) as f32
        } else {
            d[b] * (blk.d[0] * half(0) as f32 + blk.d[1] * half(1) as f32)
        };
        acc += v + blk.m * s[b];
    }
    acc
}

/// Dequantizes a row of one of these formats.
pub fn dequantize(ty: GgmlType, w: &[u8], out: &mut [f32]) {
    for (b, o) in out.chunks_exact_mut(QK).enumerate() {
        let blk = block32(ty, w, b);
        for (i, o) in o.iter_mut().enumerate() {
            *o = blk.d[i / 16] * blk.q[i] as f32 + blk.m;
        }
    }
}

/// Quantizes a row to one of these formats (a plain round-to-nearest quantizer, for tests and
/// the testkit's model writer; not llama.cpp's optimizing one).
pub fn quantize(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / ty.block_elems() * ty.block_bytes());
    let h = |v: f32| half::f16::from_f32(v).to_le_bytes();
    let hf = |v: f32| half::f16::from_f32(v).to_f32();
    match ty {
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            for blk in x.chunks(QK) {
                let q: Vec<u8> = if ty == GgmlType::Q5_0 {
                    let max = blk
                        .iter()
                        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let d = hf(max / -16.0);
                    out.extend_from_slice(&h(d));
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    blk.iter()
                        .map(|v| ((v * id).round() as i32 + 16).clamp(0, 31) as u8)
                        .collect()
                } else {
                    let min = blk.iter().cloned().fold(f32::INFINITY, f32::min);
                    let max = blk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let d = hf((max - min) / 31.0);
                    let m = hf(min);
                    out.extend_from_slice(&h(d));
                    out.extend_from_slice(&h(m));
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    blk.iter()
                        .map(|v| (((v - m) * id).round() as i32).clamp(0, 31) as u8)
                        .collect()
                };
                let qh = (0..QK).fold(0u32, |a, i| a | (((q[i] >> 4) as u32 & 1) << i));
                out.extend_from_slice(&qh.to_le_bytes());
                for j in 0..QK / 2 {
                    out.push((q[j] & 0x0F) | ((q[j + QK / 2] & 0x0F) << 4));
                }
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let levels = if ty == GgmlType::Q4_K { 15.0 } else { 31.0 };
            for sbk in x.chunks(QK_K) {
                let mut scale = [0.0f32; 8];
                let mut mins = [0.0f32; 8];
                for (s, sub) in sbk.chunks(QK).enumerate() {
                    let lo = sub.iter().cloned().fold(0.0f32, f32::min);
                    let hi = sub.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    scale[s] = (hi - lo) / levels;
                    mins[s] = -lo;
                }
                let d = hf(scale.iter().cloned().fold(0.0, f32::max) / 63.0);
                let dmin = hf(mins.iter().cloned().fold(0.0, f32::max) / 63.0);
                let q6 = |v: f32, u: f32| {
                    if u > 0.0 {
                        ((v / u).round() as i32).clamp(0, 63) as u8
                    } else {
                        0
                    }
                };
                let sc: Vec<u8> = scale.iter().map(|&v| q6(v, d)).collect();
                let mn: Vec<u8> = mins.iter().map(|&v| q6(v, dmin)).collect();
                let mut packed = [0u8; 12];
                for j in 0..8 {
                    if j < 4 {
                        packed[j] |= sc[j] & 63;
                        packed[j + 4] |= mn[j] & 63;
                    } else {
                        packed[j + 4] = (sc[j] & 0x0F) | ((mn[j] & 0x0F) << 4);
                        packed[j - 4] |= (sc[j] >> 4) << 6;
                        packed[j] |= (mn[j] >> 4) << 6;
                    }
                }
                let mut q = [0u8; QK_K];
                for (i, v) in sbk.iter().enumerate() {
                    let s = i / QK;
                    let step = d * sc[s] as f32;
                    let off = dmin * mn[s] as f32;
                    q[i] = if step > 0.0 {
                        (((v + off) / step).round() as i32).clamp(0, levels as i32) as u8
                    } else {
                        0
                    };
                }
                out.extend_from_slice(&h(d));
                out.extend_from_slice(&h(dmin));
                out.extend_from_slice(&packed);
                if ty == GgmlType::Q5_K {
                    let mut qh = [0u8; 32];
                    for (i, &v) in q.iter().enumerate() {
                        qh[i % QK] |= ((v >> 4) & 1) << (i / QK);
                    }
                    out.extend_from_slice(&qh);
                }
                for j in 0..4 {
                    for l in 0..QK {
                        let lo = q[64 * j + l] & 0x0F;
                        let hi = q[64 * j + 32 + l] & 0x0F;
                        out.push(lo | (hi << 4));
                    }
                }
            }
        }
        GgmlType::Q6_K => {
            for sbk in x.chunks(QK_K) {
                let mut scale = [0.0f32; 16];
                for (s, sub) in sbk.chunks(16).enumerate() {
                    let max = sub
                        .iter()
                        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    scale[s] = max / -32.0;
                }
                let amax = scale.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = hf(amax / 127.0);
                let sc: Vec<i8> = scale
                    .iter()
                    .map(|&v| {
                        if d > 0.0 {
                            ((v / d).round() as i32).clamp(-127, 127) as i8
                        } else {
                            0
                        }
                    })
                    .collect();
                let mut ql = [0u8; 128];
                let mut qh = [0u8; 64];
                for (i, v) in sbk.iter().enumerate() {
                    let step = d * sc[i / 16] as f32;
                    let q = if step != 0.0 {
                        ((v / step).round() as i32).clamp(-32, 31) + 32
                    } else {
                        32
                    } as u8;
                    let (n, e) = (i / 128, i % 128);
                    let (g, l) = (e / 32, e % 32);
                    ql[64 * n + 32 * (g % 2) + l] |= (q & 0x0F) << (4 * (g / 2));
                    qh[32 * n + l] |= (q >> 4) << (2 * g);
                }
                out.extend_from_slice(&ql);
                out.extend_from_slice(&qh);
                out.extend(sc.iter().map(|&s| s as u8));
                out.extend_from_slice(&h(d));
            }
        }
        _ => unreachable!("{ty:?} is not quantized by blocks.rs"),
    }
    out
}
