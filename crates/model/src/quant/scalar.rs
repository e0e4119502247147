//! Scalar reference kernels: the definition every SIMD kernel is tested against.

use half::f16;

use super::{blocks, f16_at, GgmlType, QK};

/// Quantize 32 floats to int8 with one scale. Returns (d, d * Σq).
pub fn quantize_block_q8(x: &[f32], q: &mut [i8]) -> (f32, f32) {
    let amax = x[..QK].iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for i in 0..QK {
        let v = (x[i] * id).round_ties_even() as i32;
        q[i] = v as i8;
        sum += v;
    }
    round_scales(d, sum)
}

/// Scales stored like llama.cpp's Q8_1 blocks (f16 `d` and `s`), so our int8 arithmetic
/// matches the reference implementation closely (this small model is sensitive to it).
#[inline]
pub fn round_scales(d: f32, sum: i32) -> (f32, f32) {
    (
        f16::from_f32(d).to_f32(),
        f16::from_f32(d * sum as f32).to_f32(),
    )
}

/// Σ over blocks of the weight row `w` (type `ty`) · activation row (qs, d, s).
pub fn dot_q(ty: GgmlType, w: &[u8], qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    if blocks::covers(ty) {
        return blocks::dot(ty, w, qs, d, s);
    }
    let nb = d.len();
    let bb = ty.block_bytes();
    let mut acc = 0.0f32;
    for b in 0..nb {
        let blk = &w[b * bb..(b + 1) * bb];
        let x = &qs[b * QK..(b + 1) * QK];
        acc += match ty {
            GgmlType::Q4_0 => {
                // value = d·(q − 8): the offset is subtracted exactly, in integers.
                let dw = f16_at(blk, 0);
                let sum: i32 = x.iter().map(|&v| v as i32).sum();
                let isum = nibble_dot(&blk[2..18], x) - 8 * sum;
                dw * d[b] * isum as f32
            }
            GgmlType::Q4_1 => {
                let dw = f16_at(blk, 0);
                let mw = f16_at(blk, 2);
                let isum = nibble_dot(&blk[4..20], x);
                dw * d[b] * isum as f32 + mw * s[b]
            }
            GgmlType::Q8_0 => {
                let dw = f16_at(blk, 0);
                let isum: i32 = (0..QK).map(|i| blk[2 + i] as i8 as i32 * x[i] as i32).sum();
                dw * d[b] * isum as f32
            }
            _ => unreachable!("{ty:?} weights are handled elsewhere"),
        };
    }
    acc
}

/// Σ q_i * x_i where q are the 32 unsigned nibbles of 16 bytes (low nibbles first).
fn nibble_dot(q: &[u8], x: &[i8]) -> i32 {
    let mut sum = 0i32;
    for j in 0..QK / 2 {
        sum += (q[j] & 0x0F) as i32 * x[j] as i32;
        sum += (q[j] >> 4) as i32 * x[j + QK / 2] as i32;
    }
    sum
}

pub fn dot_f(ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    match ty {
        GgmlType::F32 => (0..x.len())
            .map(|i| f32::from_le_bytes(w[4 * i..4 * i + 4].try_into().expect("4 bytes")) * x[i])
            .sum(),
        GgmlType::F16 => (0..x.len()).map(|i| f16_at(w, 2 * i) * x[i]).sum(),
        _ => unreachable!("quantized weights take quantized activations"),
    }
}

pub fn dequantize_row(ty: GgmlType, w: &[u8], out: &mut [f32]) {
    let n = out.len();
    match ty {
        _ if blocks::covers(ty) => blocks::dequantize(ty, w, out),
        GgmlType::F32 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f32::from_le_bytes(w[4 * i..4 * i + 4].try_into().expect("4 bytes"));
            }
        }
        GgmlType::F16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = f16_at(w, 2 * i);
            }
        }
        GgmlType::BF16 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = half::bf16::from_le_bytes([w[2 * i], w[2 * i + 1]]).to_f32();
            }
        }
        _ => {
            let bb = ty.block_bytes();
            for b in 0..n / QK {
                let blk = &w[b * bb..(b + 1) * bb];
                let o = &mut out[b * QK..(b + 1) * QK];
                let dw = f16_at(blk, 0);
                match ty {
                    GgmlType::Q4_0 => {
                        for j in 0..QK / 2 {
                            o[j] = dw * ((blk[2 + j] & 0x0F) as i32 - 8) as f32;
                            o[j + QK / 2] = dw * ((blk[2 + j] >> 4) as i32 - 8) as f32;
                        }
                    }
                    GgmlType::Q4_1 => {
                        let mw = f16_at(blk, 2);
                        for j in 0..QK / 2 {
                            o[j] = dw * (blk[4 + j] & 0x0F) as f32 + mw;
                            o[j + QK / 2] = dw * (blk[4 + j] >> 4) as f32 + mw;
                        }
                    }
                    _ => {
                        for j in 0..QK {
                            o[j] = dw * blk[2 + j] as i8 as f32;
                        }
                    }
                }
            }
        }
    }
}

/// Quantize a row of floats to a weight format (used by tests and the testkit's model writer).
pub fn quantize_row(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    if blocks::covers(ty) {
        return blocks::quantize(ty, x);
    }
    let mut out = Vec::with_capacity(x.len() / ty.block_elems() * ty.block_bytes());
    match ty {
        GgmlType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for blk in x.chunks(QK) {
                let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                blk.iter()
                    .for_each(|v| out.push((v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for blk in x.chunks(QK) {
                let max = blk
                    .iter()
                    .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                for j in 0..QK / 2 {
                    out.push(q(blk[j]) | (q(blk[j + QK / 2]) << 4));
                }
            }
        }
        _ => {
            assert_eq!(ty, GgmlType::Q4_1);
            for blk in x.chunks(QK) {
                let min = blk.iter().cloned().fold(f32::INFINITY, f32::min);
                let max = blk.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
                for j in 0..QK / 2 {
                    out.push(q(blk[j]) | (q(blk[j + QK / 2]) << 4));
                }
            }
        }
    }
    out
}
