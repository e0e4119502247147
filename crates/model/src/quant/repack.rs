//! Weights repacked at load for the AVX2 kernels: eight weight rows interleaved block by block,
//! in 4-byte chunks, with scales (and offsets) as f32. For block `b` of a group of 8 rows, one
//! 256-bit load gives the same four elements of all eight rows, so the kernel multiplies them
//! by a broadcast of the activation's four bytes and each lane holds one row's products (see
//! [`super::avx2::dot_x8_rows`]): no horizontal adds, one conversion and one FMA per block for
//! eight rows.
//!
//! Layout, per group of 8 rows (the last group zero-padded), per block `b`:
//! - Q4_0 / Q4_1: `d[8]` f32, `m[8]` f32 (Q4_0: m = -8·d), then for `j` in 0..4 the bytes
//!   `4j..4j+4` of each row's 16 bytes of nibbles, rows 0..8 side by side (32 bytes). GGUF order
//!   is kept inside a byte: the low nibbles of chunk `j` are elements `4j..4j+4`, the high
//!   nibbles elements `16+4j..16+4j+4`.
//! - Q8_0: `d[8]` f32, then for `c` in 0..8 the bytes `4c..4c+4` of each row, side by side.
//!
//! The values are exactly the GGUF ones.

use half::f16;

use super::{GgmlType, QK};

/// Weight rows per interleaved group.
pub const R: usize = 8;

/// Bytes of one block of an 8-row group, or 0 when `ty` has no repacked form.
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

/// Copies `qs` (one row's quant bytes of a block) into `dst` as 4-byte chunks at the row's
/// place `k` of each 32-byte chunk line.
fn scatter_chunks(qs: &[u8], k: usize, dst: &mut [u8]) {
    for (c, chunk) in qs.chunks_exact(4).enumerate() {
        let at = c * 4 * R + 4 * k;
        dst[at..at + 4].copy_from_slice(chunk);
    }
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
                        let mo = 4 * R + 4 * k;
                        dst[mo..mo + 4].copy_from_slice(&m.to_le_bytes());
                        scatter_chunks(qs, k, &mut dst[8 * R..]);
                    }
                    _ => scatter_chunks(&blk[2..34], k, &mut dst[4 * R..]),
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

    /// Bytes of one 8-row group.
    pub fn group_bytes(&self) -> usize {
        self.cols / QK * block_bytes(self.ty)
    }

    /// The group holding rows `8g..8g+8`.
    #[inline]
    pub fn group(&self, g: usize) -> &[u8] {
        let gb = self.group_bytes();
        &self.data[g * gb..(g + 1) * gb]
    }
}
