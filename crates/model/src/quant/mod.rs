//! Block formats: the ggml tensor types we read, their reference semantics (`scalar.rs`,
//! `blocks.rs`), our repacked weight layouts (`repack.rs`) and the int8 activation format.
//! No ISA code lives here: the kernels that compute with these formats are the backend's
//! (`crate::backend::cpu`), each tested against the references here.

pub mod blocks;
pub mod repack;
pub mod scalar;

use half::f16;

/// Elements per quantization block (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and our activation format).
pub const QK: usize = 32;

/// Elements per K-quant super-block (Q4_K, Q5_K, Q6_K): 8 sub-blocks of 32 (Q6_K: 16 of 16).
pub const QK_K: usize = 256;

/// ggml tensor types this build can compute with (ggml spells the K-quants `Q4_K`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4_K,
    Q5_K,
    Q6_K,
    /// bfloat16: read where a float vector is widened (norms, LoRA adapters); matrices of it
    /// are refused at load (`Weight::load`).
    BF16,
}

/// The supported types, as listed in error messages.
pub const SUPPORTED_TYPES: &str = "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K";

/// Name of any ggml type id, including the ones we do not support (for error messages).
pub fn ggml_type_name(id: u32) -> String {
    const NAMES: &[(u32, &str)] = &[
        (0, "F32"),
        (1, "F16"),
        (2, "Q4_0"),
        (3, "Q4_1"),
        (6, "Q5_0"),
        (7, "Q5_1"),
        (8, "Q8_0"),
        (9, "Q8_1"),
        (10, "Q2_K"),
        (11, "Q3_K"),
        (12, "Q4_K"),
        (13, "Q5_K"),
        (14, "Q6_K"),
        (15, "Q8_K"),
        (16, "IQ2_XXS"),
        (17, "IQ2_XS"),
        (18, "IQ3_XXS"),
        (19, "IQ1_S"),
        (20, "IQ4_NL"),
        (21, "IQ3_S"),
        (22, "IQ2_S"),
        (23, "IQ4_XS"),
        (24, "I8"),
        (25, "I16"),
        (26, "I32"),
        (27, "I64"),
        (28, "F64"),
        (29, "IQ1_M"),
        (30, "BF16"),
        (34, "TQ1_0"),
        (35, "TQ2_0"),
        (39, "MXFP4"),
    ];
    match NAMES.iter().find(|(i, _)| *i == id) {
        Some((_, n)) => format!("{n} (ggml type {id}; supported: {SUPPORTED_TYPES})"),
        None => format!("unknown ggml type {id}"),
    }
}

impl GgmlType {
    pub fn from_u32(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            13 => GgmlType::Q5_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::BF16 => 30,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::BF16 => "BF16",
        }
    }
    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QK_K,
            _ => QK,
        }
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
        }
    }
    /// Quantized types take int8-quantized activations; float types take f32 activations.
    pub fn is_quantized(self) -> bool {
        !matches!(self, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)
    }
}

/// Activations of `rows` rows of `cols` elements, quantized to int8 in blocks of 32:
/// value ≈ d[b] · qs[i]; `s[b] = d[b] · Σ qs` of the block rounded to f16 (like llama.cpp's
/// Q8_1, for the weight formats with a float offset); `sums[2b]`, `sums[2b + 1]` the exact
/// integer sums of the block's two halves of 16 (for the formats whose offset is an integer
/// multiple of the scale, so the kernels can subtract it exactly).
#[derive(Default, Clone)]
pub struct QuantizedActs {
    pub rows: usize,
    pub cols: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
    pub sums: Vec<i16>,
}

/// One quantized activation row: (int8 values, per-block scales d, per-block d·Σq).
pub type ActRow<'a> = (&'a [i8], &'a [f32], &'a [f32]);

impl QuantizedActs {
    /// Row `r`: (qs, d, s).
    #[inline]
    pub fn row(&self, r: usize) -> ActRow<'_> {
        let nb = self.cols / QK;
        (
            &self.qs[r * self.cols..(r + 1) * self.cols],
            &self.d[r * nb..(r + 1) * nb],
            &self.s[r * nb..(r + 1) * nb],
        )
    }
    /// The half-block sums of row `r` (two per block).
    #[inline]
    pub fn row_sums(&self, r: usize) -> &[i16] {
        let nh = 2 * self.cols / QK;
        &self.sums[r * nh..(r + 1) * nh]
    }
    /// Sizes the buffers for `rows` × `cols` (no allocation once grown).
    pub fn prepare(&mut self, rows: usize, cols: usize) {
        assert_eq!(
            cols % QK,
            0,
            "activation width {cols} is not a multiple of {QK}"
        );
        self.rows = rows;
        self.cols = cols;
        let nb = rows * cols / QK;
        self.qs.resize(rows * cols, 0);
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        self.sums.resize(2 * nb, 0);
    }
}

/// Dequantize `n` elements of a row of type `ty` into `out`.
pub fn dequantize_row(ty: GgmlType, w: &[u8], out: &mut [f32]) {
    scalar::dequantize_row(ty, w, out)
}

#[inline(always)]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

#[cfg(test)]
mod tests;
