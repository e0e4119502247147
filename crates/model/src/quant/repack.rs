//! Weights repacked at load for the AVX2 kernels: four weight rows interleaved block by block,
//! with scales (and offsets) as f32. For block `b` of a group of 4 rows the kernel loads the
//! four scales as one vector, unpacks the four rows' quants once for all activation rows, and
//! sums each row's products with horizontal adds so one conversion and one FMA serve four
//! rows. That is about half the instructions per multiply-add of the one-row kernel.
//!
//! Layout, per group of 4 rows (the last group zero-padded), per block `b`:
//! - Q4_0 / Q4_1: `d[4]` f32, `m[4]` f32 (Q4_0: m = -8·d), then 4 × 16 bytes of nibbles
//!   (GGUF order: low nibbles are elements 0..16, high nibbles 16..32).
//! - Q8_0: `d[4]` f32, then 4 × 32 signed bytes.
//!
//! The values are exactly the GGUF ones.

use half::f16;

use super::{GgmlType, QK};

/// Weight rows per interleaved group.
pub const R: usize = 4;

/// Bytes of one block of a 4-row group, or 0 when `ty` has no repacked form.
pub const fn block_bytes(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => R * 8 + R * QK / 2,
        GgmlType::Q8_0 => R * 4 + R * QK,
        _ => 0,
    }
}

/// A repacked weight matrix.
#[derive(Debug)]
pub struct Packed {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    data: Vec<u8>,
}

fn f16_le(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

impl Packed {
    /// Repacks GGUF-layout rows (`rows` × `cols` of `ty`); None if `ty` has no repacked form.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, src: &[u8]) -> Option<Packed> {
        let gbb = block_bytes(ty);
        if gbb == 0 || !cols.is_multiple_of(QK) {
            return None;
        }
        let nb = cols / QK;
        let bb = ty.block_bytes();
        assert!(src.len() >= rows * nb * bb, "source too short");
        let groups = rows.div_ceil(R);
        let mut data = vec![0u8; groups * nb * gbb];
        for r in 0..rows {
            let (g, k) = (r / R, r % R);
            for b in 0..nb {
                let blk = &src[(r * nb + b) * bb..(r * nb + b + 1) * bb];
                let dst = &mut data[(g * nb + b) * gbb..(g * nb + b + 1) * gbb];
                let d = f16_le(&blk[0..2]);
                dst[4 * k..4 * k + 4].copy_from_slice(&d.to_le_bytes());
                match ty {
                    GgmlType::Q4_1 | GgmlType::Q4_0 => {
                        let (m, qs) = if ty == GgmlType::Q4_1 {
                            (f16_le(&blk[2..4]), &blk[4..20])
                        } else {
                            (-8.0 * d, &blk[2..18])
                        };
                        dst[16 + 4 * k..16 + 4 * k + 4].copy_from_slice(&m.to_le_bytes());
                        dst[32 + 16 * k..32 + 16 * (k + 1)].copy_from_slice(qs);
                    }
                    _ => dst[16 + QK * k..16 + QK * (k + 1)].copy_from_slice(&blk[2..34]),
                }
            }
        }
        Some(Packed {
            ty,
            rows,
            cols,
            data,
        })
    }

    /// Bytes of one 4-row group.
    pub fn group_bytes(&self) -> usize {
        self.cols / QK * block_bytes(self.ty)
    }

    /// The group holding rows `4g..4g+4`.
    #[inline]
    pub fn group(&self, g: usize) -> &[u8] {
        let gb = self.group_bytes();
        &self.data[g * gb..(g + 1) * gb]
    }
}
