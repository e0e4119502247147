//! The CPU kernel table: one [`Kernels`] implementation per instruction-set level, chosen once
//! when a model is loaded ([`Compute`]), and the only place that names an ISA.
//!
//! Leaves: `scalar.rs` (the reference, any CPU) and `x86/` (AVX2, AVX-VNNI, AVX-512 VNNI).
//! Everything above this module — matmul and attention drivers, row ops, architectures —
//! calls the table and never branches on the ISA. A new ISA (NEON, a GPU) is a new leaf and a
//! row in [`Isa`]; see ARCHITECTURE.md.

pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

use std::ops::Range;

use crate::quant::repack::{PackSpec, Packed};
use crate::quant::{ActRow, GgmlType, QuantizedActs};

/// Instruction-set level of the kernels. `CORDIAL_ISA` spells them as [`Isa::name`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable reference kernels.
    Scalar,
    /// AVX2 + FMA + F16C (Haswell, Zen 1 and later).
    Avx2,
    /// AVX2 plus the 256-bit VEX form of VNNI (`avx_vnni`: Alder Lake, Sapphire Rapids, Zen 5).
    AvxVnni,
    /// AVX-512 F/BW/VL with VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later).
    Avx512Vnni,
}

impl Isa {
    /// Every level, slowest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni];

    /// The name used by `CORDIAL_ISA`, `cordial bench` and the start-up log.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512Vnni => "avx512vnni",
        }
    }

    /// The level named `s` (as [`Isa::name`] spells it, any case).
    pub fn parse(s: &str) -> Option<Isa> {
        Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether this CPU runs the level.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            _ => x86::available(self),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest level this CPU runs.
    pub fn best_available() -> Isa {
        *Isa::all_available().last().expect("scalar always runs")
    }

    /// Every level this CPU runs, slowest first (tests run each).
    pub fn all_available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The kernel table of this level.
    ///
    /// # Panics
    /// If the CPU does not run the level ([`Compute::from_env`] and the tests check first).
    pub fn kernels(self) -> &'static dyn Kernels {
        assert!(
            self.is_available(),
            "kernel level {} is not supported by this CPU",
            self.name()
        );
        match self {
            Isa::Scalar => &scalar::SCALAR,
            #[cfg(target_arch = "x86_64")]
            _ => x86::kernels(self),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("only scalar is available here"),
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A backend setting that cannot be honoured (a bad or unavailable `CORDIAL_ISA`).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("CORDIAL_ISA={0}: unknown kernel level (one of scalar, avx2, avxvnni, avx512vnni)")]
    UnknownIsa(String),
    #[error(
        "CORDIAL_ISA={0}: this CPU does not support that kernel level (available: {avail})",
        avail = Isa::all_available().iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
    )]
    UnavailableIsa(String),
}

/// How a model computes: the kernel level, whether weights are repacked for it, and the
/// activation precision. Chosen once, before the model is loaded (its weights are repacked
/// for this level), and fixed for the model's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compute {
    pub isa: Isa,
    /// Repack quantized matrices into the level's interleaved layout at load (`false`: the
    /// kernels read the GGUF bytes in place; slower, for checking).
    pub repack: bool,
    /// `false` (serving): activations quantized to int8 per matmul, as llama.cpp does.
    /// `true` (reference): weights dequantized to f32 and multiplied with f32 activations;
    /// slow, used to check the model's math against an exact reference.
    pub f32_activations: bool,
}

impl Compute {
    /// `isa` with repacked weights and int8 activations.
    pub fn new(isa: Isa) -> Compute {
        Compute {
            isa,
            repack: true,
            f32_activations: false,
        }
    }

    /// The slow reference mode on `isa`: dequantized weights times f32 activations.
    pub fn reference(isa: Isa) -> Compute {
        Compute {
            isa,
            repack: false,
            f32_activations: true,
        }
    }

    /// The fastest level of this CPU.
    pub fn best() -> Compute {
        Compute::new(Isa::best_available())
    }

    /// The settings of the environment, read once by the binary at start-up:
    /// `CORDIAL_ISA` forces a level (an unknown or unavailable one is an error naming it),
    /// `CORDIAL_REPACK=0` keeps the GGUF layout.
    pub fn from_env() -> Result<Compute, BackendError> {
        Self::from_settings(
            std::env::var("CORDIAL_ISA").ok().as_deref(),
            std::env::var("CORDIAL_REPACK").ok().as_deref(),
        )
    }

    /// [`Compute::from_env`] on given values (`None` = unset).
    pub fn from_settings(isa: Option<&str>, repack: Option<&str>) -> Result<Compute, BackendError> {
        let isa = match isa.map(str::trim).filter(|s| !s.is_empty()) {
            None => Isa::best_available(),
            Some(name) => {
                let isa = Isa::parse(name).ok_or_else(|| BackendError::UnknownIsa(name.into()))?;
                if !isa.is_available() {
                    return Err(BackendError::UnavailableIsa(name.into()));
                }
                isa
            }
        };
        Ok(Compute {
            isa,
            repack: repack.map(str::trim) != Some("0"),
            f32_activations: false,
        })
    }

    /// The kernel table.
    pub fn kernels(&self) -> &'static dyn Kernels {
        self.isa.kernels()
    }

    /// The repacked layout weights are loaded into, if any.
    pub fn pack(&self) -> Option<PackSpec> {
        if self.repack && !self.f32_activations {
            self.kernels().pack()
        } else {
            None
        }
    }
}

/// One KV head's keys or values for one block of 16 positions, as the cache stores them
/// (`crate::kv`). Keys are transposed, `[head_dim][16]` (the 16 positions of one dimension side
/// by side); values are rows, `[16][head_dim]`.
#[derive(Clone, Copy)]
pub enum KvBlock<'a> {
    /// f16 bits.
    F16(&'a [u16]),
    /// q8_0: int8 elements in the layout above, and one f16 scale per 32 elements of a
    /// position's row: for keys `d[(dim / 32) · 16 + position]`, for values
    /// `d[position · head_dim / 32 + dim / 32]`.
    Q8 { q: &'a [i8], d: &'a [u16] },
}

impl KvBlock<'_> {
    /// Whether the block holds `head_dim × 16` elements (and their scales).
    pub fn fits(&self, head_dim: usize) -> bool {
        let n = head_dim * 16;
        match *self {
            KvBlock::F16(h) => h.len() >= n,
            KvBlock::Q8 { q, d } => {
                head_dim.is_multiple_of(32) && q.len() >= n && d.len() >= n / 32
            }
        }
    }
}

/// Rows of a LoRA factor (`A`, or `B` transposed) as a kernel reads them: `rows` rows of
/// `width` floats, f32 or f16 (raw bits), row after row.
#[derive(Clone, Copy)]
pub enum LoraRows<'a> {
    F32(&'a [f32]),
    F16(&'a [u16]),
}

impl LoraRows<'_> {
    /// Elements held.
    pub fn len(&self) -> usize {
        match self {
            LoraRows::F32(v) => v.len(),
            LoraRows::F16(v) => v.len(),
        }
    }

    /// Whether no element is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A task's part of a matmul output: rows `t` (`ld` floats apart) × columns `cols`, which no
/// other task writes while it runs.
pub struct OutTile {
    ptr: *mut f32,
    ld: usize,
    rows: usize,
    cols: Range<usize>,
}

impl OutTile {
    /// # Safety
    /// `ptr` points to `rows · ld` floats, and no one else reads or writes columns `cols` of
    /// them while the tile is used.
    pub unsafe fn new(ptr: *mut f32, ld: usize, rows: usize, cols: Range<usize>) -> OutTile {
        assert!(cols.end <= ld);
        OutTile {
            ptr,
            ld,
            rows,
            cols,
        }
    }
    /// The columns this tile may write.
    pub fn cols(&self) -> Range<usize> {
        self.cols.clone()
    }
    /// Where `n` results of row `t` from column `c` go, when all of them lie inside the tile
    /// (a kernel then stores them directly); `None` when the tile ends before `c + n`.
    #[inline]
    pub fn dst(&self, t: usize, c: usize, n: usize) -> Option<*mut f32> {
        assert!(t < self.rows && c >= self.cols.start);
        // SAFETY: in bounds (row t < rows, c + n <= cols.end <= ld), as `new` promised.
        (c + n <= self.cols.end).then(|| unsafe { self.ptr.add(t * self.ld + c) })
    }
    /// Stores `v` at row `t`, columns `c..c + v.len()` (clipped to the tile's columns: the
    /// padding rows of a weight group are dropped).
    #[inline]
    pub fn store(&self, t: usize, c: usize, v: &[f32]) {
        assert!(t < self.rows && c >= self.cols.start);
        let n = v.len().min(self.cols.end.saturating_sub(c));
        // SAFETY: row t < rows and columns c..c + n lie inside this tile's columns (new's
        // contract makes them ours alone).
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), self.ptr.add(t * self.ld + c), n) }
    }
}

// SAFETY: a tile is a window of memory that only its task writes (see `new`).
unsafe impl Send for OutTile {}
unsafe impl Sync for OutTile {}

/// The kernels of one ISA level. Every method computes each row (and each element of a row)
/// by the same sequence of operations whatever else is in the call, so results are batch
/// invariant; each is tested against [`scalar`].
pub trait Kernels: Send + Sync {
    /// The level this table implements.
    fn isa(&self) -> Isa;

    /// The repacked layout [`Kernels::packed_matmul`] reads, or `None` (GGUF bytes in place).
    fn pack(&self) -> Option<PackSpec>;

    /// Quantizes one activation row to int8 blocks of 32 (`qs`, `d`, `s`, `sums` as in
    /// [`QuantizedActs`]).
    fn quantize_row(
        &self,
        x: &[f32],
        qs: &mut [i8],
        d: &mut [f32],
        s: &mut [f32],
        sums: &mut [i16],
    );

    /// GGUF-layout quantized weights: `out[i] = w · acts[i]` for 1 to 4 activation rows.
    fn dot_rows(&self, ty: GgmlType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]);

    /// Float weights (F32 or F16 bytes) · an f32 activation row.
    fn dot_f(&self, ty: GgmlType, w: &[u8], x: &[f32]) -> f32;

    /// Repacked weights ([`Kernels::pack`]'s layout): rows `rows` (whole groups but for the
    /// matrix's end) times every activation row of `x`, into `out`.
    fn packed_matmul(&self, w: &Packed, x: &QuantizedActs, rows: Range<usize>, out: &OutTile);

    /// `Σ x²`.
    fn sum_squares(&self, x: &[f32]) -> f32;

    /// `g = silu(g) · u`.
    fn silu_mul(&self, g: &mut [f32], u: &[f32]);

    /// `g = gelu(g) · u`, GELU in its tanh approximation (what gemma's `gelu_pytorch_tanh`
    /// and ggml's `gelu` compute).
    fn gelu_mul(&self, g: &mut [f32], u: &[f32]);

    /// Softmax in place (at least one finite entry).
    fn softmax(&self, x: &mut [f32]);

    /// The keys of one KV block as f32, in the same `[head_dim][16]` layout, into
    /// `dst[..head_dim · 16]`. Exact (f16 and int8 × f16 scale both fit an f32), so every level
    /// gives the same values.
    fn kv_keys_f32(&self, k: KvBlock<'_>, head_dim: usize, dst: &mut [f32]);

    /// The values of one KV block as f32, `[16][head_dim]`, into `dst[..16 · head_dim]`. Exact.
    fn kv_values_f32(&self, v: KvBlock<'_>, head_dim: usize, dst: &mut [f32]);

    /// LoRA shrink: `h[r] = a_r · x` for the `h.len()` rows `a_r` of `a` (each `x.len()`
    /// wide). Each dot product is summed in an order that depends only on `x.len()`.
    fn lora_shrink(&self, a: LoraRows<'_>, x: &[f32], h: &mut [f32]);

    /// LoRA expand: `y += Σ_r h[r] · b_r` over the `h.len()` rows `b_r` of `b` (`B`
    /// transposed, each `y.len()` wide); per element the terms are added in row order, one
    /// fused multiply-add each where the level has them.
    fn lora_expand(&self, b: LoraRows<'_>, h: &[f32], y: &mut [f32]);

    /// Attention scores of `rows` query rows (`q`, `head_dim` floats each) against the 16 keys
    /// of each block of `keys`: `out[r · ld + 16 · b + j] = scale · Σ_d q[r][d] · k_b[d][j]`,
    /// with the keys as [`Kernels::kv_keys_f32`] gives them. Each score is one chain of
    /// multiply-adds over `d` in order, whatever `rows`, the blocks and its place in them.
    /// `buf` is scratch for converted keys.
    #[allow(clippy::too_many_arguments)]
    fn attn_scores(
        &self,
        keys: &[KvBlock<'_>],
        q: &[f32],
        rows: usize,
        head_dim: usize,
        scale: f32,
        out: &mut [f32],
        ld: usize,
        buf: &mut Vec<f32>,
    );

    /// Weighted sums of the value rows of `values` (16 per block, in order): `out[r · head_dim
    /// + c] += Σ_j p[r · ld + j] · v_j[c]`, one multiply-add per key in key order, whatever
    /// `rows`. `buf` is scratch for converted values.
    #[allow(clippy::too_many_arguments)]
    fn attn_values(
        &self,
        values: &[KvBlock<'_>],
        p: &[f32],
        ld: usize,
        rows: usize,
        head_dim: usize,
        out: &mut [f32],
        buf: &mut Vec<f32>,
    );

    /// `x[i] = e^(x[i] − max)` in place; returns `(max, Σ x[i])` with the sum taken in a fixed
    /// order from `x[0]` (so trailing `-inf` entries, which become exact zeros, change
    /// nothing). At least one entry is finite.
    fn exp_sum(&self, x: &mut [f32]) -> (f32, f32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_name_levels_and_refuse_unknown_or_unavailable_ones() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
            assert_eq!(Isa::parse(&isa.name().to_uppercase()), Some(isa));
        }
        assert_eq!(Compute::from_settings(None, None).unwrap(), Compute::best());
        let c = Compute::from_settings(Some("scalar"), Some("0")).unwrap();
        assert_eq!((c.isa, c.repack), (Isa::Scalar, false));
        let e = Compute::from_settings(Some("sse9"), None).unwrap_err();
        assert!(e.to_string().contains("CORDIAL_ISA=sse9"), "{e}");
        for isa in Isa::ALL.into_iter().filter(|i| !i.is_available()) {
            let e = Compute::from_settings(Some(isa.name()), None).unwrap_err();
            assert!(e.to_string().contains("does not support"), "{e}");
        }
        assert_eq!(Isa::best_available().kernels().isa(), Isa::best_available());
        println!(
            "kernel levels on this CPU: {:?}",
            Isa::all_available()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
        );
    }
}
