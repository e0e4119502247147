//! Weights repacked at load for the AVX2 kernels: eight weight rows interleaved block by block,
//! in 4-byte chunks, with scales (and offsets) as f32. For block `b` of a group of 8 rows, one
//! 256-bit load gives the same four elements of all eight rows, so the kernel multiplies them
//! by a broadcast of the activation's four bytes and each lane holds one row's products (see
//! [`super::avx2::dot_x8_rows`]): no horizontal adds, one conversion and one FMA per block for
//! eight rows.
//!
//! Two forms, per group of 8 rows (the last group zero-padded), per block `b` of 32 elements:
//! - [`Form::Nibbles`] (Q4_0, Q4_1, Q4_K): `d[8]` f32, `m[8]` f32 (value = d·q + m with
//!   q in 0..16; Q4_0: m = -8·d; Q4_K: d = d·sc and m = -dmin·min of the block's sub-block),
//!   then for `j` in 0..4 the bytes `4j..4j+4` of each row's 16 bytes of nibbles, rows 0..8 side
//!   by side (32 bytes). GGUF order is kept inside a byte: the low nibbles of chunk `j` are
//!   elements `4j..4j+4`, the high nibbles elements `16+4j..16+4j+4`.
//! - [`Form::Bytes`] (Q8_0, Q5_0): `d[8]` f32 (value = d·q with signed q; Q5_0: q − 16), then
//!   for `c` in 0..8 the bytes `4c..4c+4` of each row, side by side.
//! - [`Form::BytesOffset`] (Q5_1, Q5_K): `d[8]`, `m[8]` f32 (value = d·q + m, q in 0..32;
//!   Q5_K: d = d·sc, m = -dmin·min), then the bytes as in [`Form::Bytes`].
//!
//! The values are exactly the GGUF ones: f16 scales times 6-bit integers are exact in f32.

use half::f16;

use super::{blocks, GgmlType, QK};

/// Weight rows per interleaved group.
pub const R: usize = 8;

/// The repacked layout a kernel level reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackSpec {
    /// Weight rows per interleaved group.
    pub rows: usize,
}

/// How a repacked block stores its quants (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Unsigned 4-bit quants with a scale and an offset per row.
    Nibbles,
    /// Signed 8-bit quants with a scale per row.
    Bytes,
    /// 8-bit quants with a scale and an offset per row.
    BytesOffset,
}

/// The repacked form of `ty`, if it has one.
pub const fn form(ty: GgmlType) -> Option<Form> {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => Some(Form::Nibbles),
        GgmlType::Q8_0 | GgmlType::Q5_0 => Some(Form::Bytes),
        GgmlType::Q5_1 | GgmlType::Q5_K => Some(Form::BytesOffset),
        GgmlType::F32 | GgmlType::F16 | GgmlType::Q6_K => None,
    }
}

/// Bytes of one block of an 8-row group in `form`.
pub const fn block_bytes(form: Form) -> usize {
    match form {
        Form::Nibbles => R * 8 + R * QK / 2,
        Form::Bytes => R * 4 + R * QK,
        Form::BytesOffset => R * 8 + R * QK,
    }
}

/// A repacked weight matrix.
#[derive(Debug)]
pub struct Packed {
    /// The GGUF type the weights came from.
    pub ty: GgmlType,
    pub form: Form,
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

/// Block `b` of a GGUF row of type `ty` as (scale, offset, 32 quants in GGUF element order).
fn decode(ty: GgmlType, row: &[u8], b: usize) -> (f32, f32, [i8; QK]) {
    let mut q = [0i8; QK];
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0 => {
            let bb = ty.block_bytes();
            let blk = &row[b * bb..(b + 1) * bb];
            let d = f16_le(&blk[0..2]);
            if ty == GgmlType::Q8_0 {
                for (q, &v) in q.iter_mut().zip(&blk[2..34]) {
                    *q = v as i8;
                }
                return (d, 0.0, q);
            }
            let (m, qs) = if ty == GgmlType::Q4_1 {
                (f16_le(&blk[2..4]), &blk[4..20])
            } else {
                (-8.0 * d, &blk[2..18])
            };
            for (j, &v) in qs.iter().enumerate() {
                q[j] = (v & 0x0F) as i8;
                q[j + QK / 2] = (v >> 4) as i8;
            }
            (d, m, q)
        }
        _ => {
            let blk = blocks::block32(ty, row, b);
            debug_assert_eq!(blk.d[0], blk.d[1], "one scale per 32 elements");
            (blk.d[0], blk.m, blk.q)
        }
    }
}

impl Packed {
    /// Repacks GGUF-layout rows (`rows` × `cols` of `ty`); None if `ty` has no repacked form.
    pub fn new(
        spec: PackSpec,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        src: &[u8],
    ) -> Option<Packed> {
        assert_eq!(spec.rows, R, "one group size so far");
        let form = form(ty)?;
        if !cols.is_multiple_of(ty.block_elems()) || !cols.is_multiple_of(QK) {
            return None;
        }
        let gbb = block_bytes(form);
        let nb = cols / QK;
        let row_bytes = cols / ty.block_elems() * ty.block_bytes();
        assert!(src.len() >= rows * row_bytes, "source too short");
        let groups = rows.div_ceil(R);
        let mut data = vec![0u8; groups * nb * gbb];
        for r in 0..rows {
            let (g, k) = (r / R, r % R);
            let row = &src[r * row_bytes..(r + 1) * row_bytes];
            for b in 0..nb {
                let dst = &mut data[(g * nb + b) * gbb..(g * nb + b + 1) * gbb];
                let (d, m, q) = decode(ty, row, b);
                dst[4 * k..4 * k + 4].copy_from_slice(&d.to_le_bytes());
                match form {
                    Form::Nibbles => {
                        let mo = 4 * R + 4 * k;
                        dst[mo..mo + 4].copy_from_slice(&m.to_le_bytes());
                        let mut qs = [0u8; QK / 2];
                        for (j, v) in qs.iter_mut().enumerate() {
                            debug_assert!((0..16).contains(&q[j]) && (0..16).contains(&q[j + 16]));
                            *v = q[j] as u8 | (q[j + QK / 2] as u8) << 4;
                        }
                        scatter_chunks(&qs, k, &mut dst[8 * R..]);
                    }
                    Form::Bytes => {
                        debug_assert_eq!(m, 0.0, "the byte form has no offset");
                        scatter_chunks(&q.map(|v| v as u8), k, &mut dst[4 * R..]);
                    }
                    Form::BytesOffset => {
                        let mo = 4 * R + 4 * k;
                        dst[mo..mo + 4].copy_from_slice(&m.to_le_bytes());
                        scatter_chunks(&q.map(|v| v as u8), k, &mut dst[8 * R..]);
                    }
                }
            }
        }
        Some(Packed {
            ty,
            form,
            rows,
            cols,
            data,
        })
    }

    /// Bytes of one 8-row group.
    pub fn group_bytes(&self) -> usize {
        self.cols / QK * block_bytes(self.form)
    }

    /// The group holding rows `8g..8g+8`.
    #[inline]
    pub fn group(&self, g: usize) -> &[u8] {
        let gb = self.group_bytes();
        &self.data[g * gb..(g + 1) * gb]
    }
}
