//! Weights repacked at load for the AVX2 kernels: Q4_1 blocks with their scale and offset
//! converted to f32 once at load (`[d f32][m f32][16 bytes of nibbles]`, 24 bytes per block
//! instead of 20), so the kernel's inner loop does no f16 conversion. Measured with the kernel
//! micro-benchmark (`examples/kernels.rs`), this is what the many-row (prefill, batched
//! decode) kernel was waiting on; the values are exactly the GGUF ones.

use half::f16;

use super::{GgmlType, QK};

/// Bytes of a repacked Q4_1 block.
pub const Q4_1F_BLOCK: usize = 24;

/// A repacked weight matrix.
#[derive(Debug)]
pub struct Packed {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    data: Vec<u8>,
}

impl Packed {
    /// Repacks GGUF-layout rows (`rows` × `cols` of `ty`); None if `ty` has no repacked form.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, src: &[u8]) -> Option<Packed> {
        if ty != GgmlType::Q4_1 || !cols.is_multiple_of(QK) {
            return None;
        }
        let nblocks = rows * cols / QK;
        assert!(src.len() >= nblocks * 20, "source too short");
        let mut data = vec![0u8; nblocks * Q4_1F_BLOCK];
        for (dst, blk) in data.chunks_exact_mut(Q4_1F_BLOCK).zip(src.chunks_exact(20)) {
            let d = f16::from_le_bytes([blk[0], blk[1]]).to_f32();
            let m = f16::from_le_bytes([blk[2], blk[3]]).to_f32();
            dst[0..4].copy_from_slice(&d.to_le_bytes());
            dst[4..8].copy_from_slice(&m.to_le_bytes());
            dst[8..24].copy_from_slice(&blk[4..20]);
        }
        Some(Packed {
            ty,
            rows,
            cols,
            data,
        })
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / QK * Q4_1F_BLOCK
    }

    #[inline]
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}
