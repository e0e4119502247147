//! Block formats of ggml tensors, activation quantization, and the int8 dot-product kernels.
//!
//! Every kernel has a scalar reference (`scalar.rs`) and, where the CPU has it, an AVX2 version
//! (`avx2.rs`), chosen at run time by [`Isa::detect`] and forceable for tests.
//! A dot product of one weight row with one quantized activation row is always computed by the
//! same sequence of operations, whatever the batch: that is what makes logits batch invariant.

pub mod avx2;
pub mod avx2_k;
pub mod avx2_ops;
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
}

/// The supported types, as listed in error messages.
pub const SUPPORTED_TYPES: &str = "F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K";

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
        }
    }
    /// Elements per block.
    pub fn block_elems(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 => 1,
            GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K => QK_K,
            _ => QK,
        }
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 => 2,
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
        !matches!(self, GgmlType::F32 | GgmlType::F16)
    }
}

/// Instruction-set level of the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
}

impl Isa {
    /// The best level this CPU supports. `CORDIAL_ISA=scalar` forces the reference kernels.
    pub fn detect() -> Isa {
        if std::env::var("CORDIAL_ISA")
            .map(|v| v.eq_ignore_ascii_case("scalar"))
            .unwrap_or(false)
        {
            return Isa::Scalar;
        }
        Self::best_available()
    }
    pub fn best_available() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Isa::Avx2;
            }
        }
        Isa::Scalar
    }
    /// All levels this CPU can run (for tests that force each one).
    pub fn all_available() -> Vec<Isa> {
        let mut v = vec![Isa::Scalar];
        if Self::best_available() >= Isa::Avx2 {
            v.push(Isa::Avx2);
        }
        v
    }
}

/// How a forward pass computes: which kernels, and at what activation precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    pub isa: Isa,
    /// `false` (serving): activations quantized to int8 per matmul, as llama.cpp does.
    /// `true` (reference): weights dequantized to f32 and multiplied with f32 activations;
    /// slow, used to check the model's math against an exact reference.
    pub f32_activations: bool,
}

impl Compute {
    pub fn new(isa: Isa) -> Compute {
        Compute {
            isa,
            f32_activations: false,
        }
    }
    /// The best ISA of this CPU (or `CORDIAL_ISA=scalar`), int8 activations.
    pub fn detect() -> Compute {
        Compute::new(Isa::detect())
    }
}

/// Activations of `rows` rows of `cols` elements, quantized to int8 in blocks of 32:
/// value ≈ d[b] * qs[i]; `s[b] = d[b] * Σ qs` of the block (for the weight formats with an offset).
#[derive(Default, Clone)]
pub struct QuantizedActs {
    pub rows: usize,
    pub cols: usize,
    pub qs: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
}

impl QuantizedActs {
    /// Row `r`: (qs, d, s).
    #[inline]
    pub fn row(&self, r: usize) -> (&[i8], &[f32], &[f32]) {
        let nb = self.cols / QK;
        (
            &self.qs[r * self.cols..(r + 1) * self.cols],
            &self.d[r * nb..(r + 1) * nb],
            &self.s[r * nb..(r + 1) * nb],
        )
    }
    /// Quantize `x` (`rows` × `cols`, row-major). Reuses the buffers (no allocation once grown).
    pub fn quantize(&mut self, isa: Isa, x: &[f32], rows: usize, cols: usize) {
        assert_eq!(
            cols % QK,
            0,
            "activation width {cols} is not a multiple of {QK}"
        );
        assert!(x.len() >= rows * cols);
        self.rows = rows;
        self.cols = cols;
        let nb = rows * cols / QK;
        self.qs.resize(rows * cols, 0);
        self.d.resize(nb, 0.0);
        self.s.resize(nb, 0.0);
        for b in 0..nb {
            let src = &x[b * QK..(b + 1) * QK];
            let dst = &mut self.qs[b * QK..(b + 1) * QK];
            let (d, s) = match isa {
                Isa::Scalar => scalar::quantize_block_q8(src, dst),
                #[cfg(target_arch = "x86_64")]
                // SAFETY: Avx2 is only selected when the CPU has AVX2/FMA/F16C.
                Isa::Avx2 => unsafe { avx2::quantize_block_q8(src, dst) },
                #[cfg(not(target_arch = "x86_64"))]
                Isa::Avx2 => scalar::quantize_block_q8(src, dst),
            };
            self.d[b] = d;
            self.s[b] = s;
        }
    }
}

/// Dot product of one quantized weight row (raw block bytes, `cols` elements) with one quantized
/// activation row.
#[inline]
pub fn dot_q(isa: Isa, ty: GgmlType, w: &[u8], qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    match isa {
        Isa::Scalar => scalar::dot_q(ty, w, qs, d, s),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only selected when the CPU has AVX2/FMA/F16C.
        Isa::Avx2 => unsafe { avx2::dot_q(ty, w, qs, d, s) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => scalar::dot_q(ty, w, qs, d, s),
    }
}

/// Dot products of one quantized weight row with 4 activation rows at once (the weight block
/// is unpacked once). Bit-identical to four [`dot_q`] calls.
#[inline]
pub fn dot_q4(
    isa: Isa,
    ty: GgmlType,
    w: &[u8],
    rows: &[(&[i8], &[f32], &[f32]); 4],
    out: &mut [f32; 4],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only selected when the CPU has AVX2/FMA/F16C.
        Isa::Avx2 => unsafe { avx2::dot_q_rows_dyn::<4>(ty, w, rows, out) },
        _ => {
            for (o, r) in out.iter_mut().zip(rows) {
                *o = dot_q(isa, ty, w, r.0, r.1, r.2);
            }
        }
    }
}

/// Dot products of one interleaved group of 8 repacked weight rows ([`repack::Packed`]) with
/// `N` activation rows: `out[i][r] = w_r · rows[i]`. Repacked weights exist only where AVX2
/// runs, so this is AVX2 code.
#[inline]
pub fn dot_packed<const N: usize>(
    form: repack::Form,
    w8: &[u8],
    rows: &[(&[i8], &[f32], &[f32]); N],
    out: &mut [[f32; repack::R]; N],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: weights are repacked only when the CPU has AVX2/FMA/F16C (see `Isa::detect`),
    // and activation rows come from `QuantizedActs` (values in -127..=127).
    unsafe {
        avx2::dot_x8_rows_dyn::<N>(form, w8, rows, out)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!(
        "repacked {form:?} weights on a CPU without AVX2 ({} bytes, {} rows, {})",
        w8.len(),
        rows.len(),
        out.len()
    )
}

/// Dot product of one float weight row (F32 or F16 raw bytes) with an f32 activation row.
#[inline]
pub fn dot_f(isa: Isa, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    match isa {
        Isa::Scalar => scalar::dot_f(ty, w, x),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { avx2::dot_f(ty, w, x) },
        #[cfg(not(target_arch = "x86_64"))]
        Isa::Avx2 => scalar::dot_f(ty, w, x),
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
