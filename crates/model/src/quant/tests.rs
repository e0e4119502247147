//! Every kernel against its scalar reference, and the scalar reference against plain f32
//! arithmetic on dequantized values, on random blocks with odd sizes.

use super::scalar::quantize_row;
use super::*;
use crate::backend::cpu::{Compute, Isa, OutTile};
use crate::backend::matmul::quantize_acts;

/// `x` (`rows` × `cols`) quantized by `isa`'s kernel.
fn quantize(isa: Isa, x: &[f32], rows: usize) -> QuantizedActs {
    let mut a = QuantizedActs::default();
    quantize_acts(isa.kernels(), x, rows, &mut a);
    a
}

fn dot_q(isa: Isa, ty: GgmlType, w: &[u8], qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    let mut o = [0.0f32];
    isa.kernels().dot_rows(ty, w, &[(qs, d, s)], &mut o);
    o[0]
}

fn dot_q4(isa: Isa, ty: GgmlType, w: &[u8], rows: &[ActRow<'_>; 4], out: &mut [f32; 4]) {
    isa.kernels().dot_rows(ty, w, rows, out)
}

fn dot_f(isa: Isa, ty: GgmlType, w: &[u8], x: &[f32]) -> f32 {
    isa.kernels().dot_f(ty, w, x)
}

/// The levels that read repacked weights, with their layouts.
fn packing_levels() -> Vec<(Isa, repack::PackSpec)> {
    Isa::all_available()
        .into_iter()
        .filter_map(|isa| Compute::new(isa).pack().map(|p| (isa, p)))
        .collect()
}

/// `packed` (all rows) times every row of `a` through `isa`'s repacked kernel: `t` × rows.
fn packed_matmul(isa: Isa, packed: &repack::Packed, a: &QuantizedActs) -> Vec<f32> {
    let mut out = vec![f32::NAN; a.rows * packed.rows];
    // SAFETY: `out` holds rows × t floats and this call alone writes it.
    let tile = unsafe { OutTile::new(out.as_mut_ptr(), packed.rows, a.rows, 0..packed.rows) };
    isa.kernels()
        .packed_matmul(packed, a, 0..packed.rows, &tile);
    out
}

/// xorshift: deterministic test data without a dependency.
struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

const TYPES: [GgmlType; 10] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::F16,
    GgmlType::F32,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// The quantized types whose kernels take int8 activations.
const QTYPES: [GgmlType; 8] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q8_0,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

#[test]
fn activation_quantization_matches_scalar_and_roundtrips() {
    let mut rng = Rng(7);
    for isa in Isa::all_available() {
        for blocks in [1usize, 3, 18, 48] {
            let x = rng.vec(blocks * QK, 3.0);
            let a = quantize(isa, &x, 1);
            let r = quantize(Isa::Scalar, &x, 1);
            assert_eq!(a.qs, r.qs, "{isa:?} ints");
            assert_eq!(a.d, r.d, "{isa:?} scales");
            assert_eq!(a.sums, r.sums, "{isa:?} half sums");
            for b in 0..blocks {
                let sum: i32 = a.qs[b * QK..(b + 1) * QK].iter().map(|&q| q as i32).sum();
                let lo: i32 = a.qs[b * QK..b * QK + 16].iter().map(|&q| q as i32).sum();
                assert_eq!(
                    (a.sums[2 * b] as i32, a.sums[2 * b + 1] as i32),
                    (lo, sum - lo)
                );
                // d and s are stored as f16, like llama.cpp's Q8_1 blocks.
                assert!((a.s[b] - a.d[b] * sum as f32).abs() <= 2e-3 * a.s[b].abs().max(a.d[b]));
                for i in 0..QK {
                    let back = a.d[b] * a.qs[b * QK + i] as f32;
                    assert!(
                        (back - x[b * QK + i]).abs() <= a.d[b] * (0.5 + 127.0 / 2048.0) + 1e-6,
                        "f16-rounded scale"
                    );
                }
            }
        }
    }
}

#[test]
fn zero_block_quantizes_to_zero() {
    for isa in Isa::all_available() {
        let a = quantize(isa, &[0.0; 64], 2);
        assert!(a.qs.iter().all(|&q| q == 0) && a.d.iter().all(|&d| d == 0.0));
    }
}

#[test]
fn dot_kernels_match_reference() {
    let mut rng = Rng(42);
    for ty in TYPES {
        for cols in [32usize, 96, 256, 576, 768, 1536] {
            if !cols.is_multiple_of(ty.block_elems()) {
                continue;
            }
            let w = rng.vec(cols, 0.5);
            let x = rng.vec(cols, 2.0);
            let wq = quantize_row(ty, &w);
            assert_eq!(wq.len(), cols / ty.block_elems() * ty.block_bytes());
            let mut wd = vec![0.0; cols];
            dequantize_row(ty, &wq, &mut wd);
            let xa = quantize(Isa::Scalar, &x, 1);
            let (qs, d, s) = xa.row(0);
            let xd: Vec<f32> = (0..cols).map(|i| d[i / QK] * qs[i] as f32).collect();
            // Exact math on what the kernel sees: dequantized weights · dequantized activations.
            let exact: f64 = if ty.is_quantized() {
                wd.iter().zip(&xd).map(|(a, b)| *a as f64 * *b as f64).sum()
            } else {
                wd.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum()
            };
            let scale: f64 = wd
                .iter()
                .zip(&x)
                .map(|(a, b)| (*a as f64 * *b as f64).abs())
                .sum::<f64>()
                .max(1e-3);
            let reference = if ty.is_quantized() {
                dot_q(Isa::Scalar, ty, &wq, qs, d, s)
            } else {
                dot_f(Isa::Scalar, ty, &wq, &x)
            };
            // The reference kernel is exact up to f32 rounding and the f16 storage of `s`.
            let err = (reference as f64 - exact).abs() / scale;
            assert!(
                err < 2e-3,
                "{ty:?} {cols} scalar: {reference} vs {exact} (rel {err:e})"
            );
            for isa in Isa::all_available() {
                let got = if ty.is_quantized() {
                    dot_q(isa, ty, &wq, qs, d, s)
                } else {
                    dot_f(isa, ty, &wq, &x)
                };
                let err = (got as f64 - reference as f64).abs() / scale;
                assert!(
                    err < 1e-5,
                    "{ty:?} {cols} {isa:?}: {got} vs scalar {reference} (rel {err:e})"
                );
            }
        }
    }
}

#[test]
fn float_dots_handle_tails() {
    let mut rng = Rng(3);
    for ty in [GgmlType::F16, GgmlType::F32] {
        for cols in [1usize, 7, 9, 33] {
            let w = rng.vec(cols, 1.0);
            let x = rng.vec(cols, 1.0);
            let wq = quantize_row(ty, &w);
            let r = dot_f(Isa::Scalar, ty, &wq, &x);
            for isa in Isa::all_available() {
                assert!(
                    (dot_f(isa, ty, &wq, &x) - r).abs() < 1e-5,
                    "{ty:?} {cols} {isa:?}"
                );
            }
        }
    }
}

#[test]
fn quantized_weights_roundtrip_closely() {
    let mut rng = Rng(11);
    for ty in QTYPES {
        let w = rng.vec(512, 1.0);
        let mut back = vec![0.0; 512];
        dequantize_row(ty, &quantize_row(ty, &w), &mut back);
        let tol = match ty {
            GgmlType::Q8_0 => 0.01,
            GgmlType::Q6_K => 0.04,
            GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.07,
            _ => 0.15,
        };
        for (a, b) in w.iter().zip(&back) {
            assert!((a - b).abs() < tol, "{ty:?}: {a} vs {b}");
        }
    }
}

#[test]
fn four_row_kernel_is_bit_identical_to_single_rows() {
    let mut rng = Rng(99);
    for ty in QTYPES {
        for cols in [32usize, 64, 96, 256, 576, 1536] {
            if !cols.is_multiple_of(ty.block_elems()) {
                continue;
            }
            let wq = quantize_row(ty, &rng.vec(cols, 0.7));
            let x = rng.vec(4 * cols, 3.0);
            for isa in Isa::all_available() {
                let a = quantize(isa, &x, 4);
                let rows = [a.row(0), a.row(1), a.row(2), a.row(3)];
                let mut four = [0.0f32; 4];
                dot_q4(isa, ty, &wq, &rows, &mut four);
                for (i, r) in rows.iter().enumerate() {
                    let one = dot_q(isa, ty, &wq, r.0, r.1, r.2);
                    assert_eq!(
                        one.to_bits(),
                        four[i].to_bits(),
                        "{ty:?} {cols} {isa:?} row {i}"
                    );
                }
            }
        }
    }
}

#[test]
fn repacked_kernels_match_reference_and_are_batch_invariant() {
    let mut rng = Rng(5);
    let levels = packing_levels();
    println!(
        "repacked kernels tested on: {:?}",
        levels.iter().map(|l| l.0.name()).collect::<Vec<_>>()
    );
    for (isa, spec) in levels {
        for ty in QTYPES.into_iter().filter(|&t| repack::form(t).is_some()) {
            let shapes: &[(usize, usize)] = if ty.block_elems() == 256 {
                &[(3, 256), (8, 512), (13, 768), (17, 256)]
            } else {
                &[
                    (4, 32),
                    (5, 64),
                    (7, 576),
                    (8, 1536),
                    (13, 96),
                    (24, 576),
                    (33, 64),
                ]
            };
            for &(rows, cols) in shapes {
                let w = quantize_row(ty, &rng.vec(rows * cols, 0.6));
                let packed = repack::Packed::new(spec, ty, rows, cols, &w).expect("repacks");
                let x = rng.vec(5 * cols, 2.0);
                let a = quantize(isa, &x, 5);
                let all = packed_matmul(isa, &packed, &a);
                let rb = w.len() / rows;
                for i in 0..5 {
                    let one = quantize(isa, &x[i * cols..(i + 1) * cols], 1);
                    let alone = packed_matmul(isa, &packed, &one);
                    let act = a.row(i);
                    for r in 0..rows {
                        assert_eq!(
                            alone[r].to_bits(),
                            all[i * rows + r].to_bits(),
                            "{isa} {ty:?} {rows}x{cols}: batch changed row {r} of input {i}"
                        );
                        let want = dot_q(
                            Isa::Scalar,
                            ty,
                            &w[r * rb..(r + 1) * rb],
                            act.0,
                            act.1,
                            act.2,
                        );
                        let scale: f32 =
                            act.1.iter().map(|d| d.abs()).sum::<f32>() * 127.0 * 16.0 + 1.0;
                        assert!(
                            (all[i * rows + r] - want).abs() <= 1e-5 * scale,
                            "{isa} {ty:?} {cols} row {r}: {} vs {want}",
                            all[i * rows + r]
                        );
                    }
                }
            }
        }
    }
}

/// The AVX-VNNI layout and kernel (8 rows, unsigned Q8_0, 32-bit sums) on CPUs without the
/// instruction: the same kernel with `vpdpbusd` emulated exactly.
#[cfg(target_arch = "x86_64")]
#[test]
fn emulated_avx_vnni_kernel_matches_reference_and_is_batch_invariant() {
    if !Isa::Avx2.is_available() {
        return;
    }
    let spec = repack::PackSpec {
        rows: 8,
        unsigned_q8: true,
    };
    let mut rng = Rng(55);
    let run = |packed: &repack::Packed, a: &QuantizedActs| {
        let mut out = vec![f32::NAN; a.rows * packed.rows];
        // SAFETY: AVX2 checked above; `out` holds t × rows floats, written by this call only.
        unsafe {
            let tile = OutTile::new(out.as_mut_ptr(), packed.rows, a.rows, 0..packed.rows);
            crate::backend::cpu::x86::emulated_avxvnni_matmul(packed, a, 0..packed.rows, &tile);
        }
        out
    };
    for ty in QTYPES {
        let cols = if ty.block_elems() == 256 { 512 } else { 96 };
        let rows = 13;
        let w = quantize_row(ty, &rng.vec(rows * cols, 0.6));
        let packed = repack::Packed::new(spec, ty, rows, cols, &w).expect("repacks");
        let x = rng.vec(5 * cols, 2.0);
        let a = quantize(Isa::Avx2, &x, 5);
        let all = run(&packed, &a);
        let rb = w.len() / rows;
        for i in 0..5 {
            let alone = run(
                &packed,
                &quantize(Isa::Avx2, &x[i * cols..(i + 1) * cols], 1),
            );
            let act = a.row(i);
            let scale: f32 = act.1.iter().map(|d| d.abs()).sum::<f32>() * 127.0 * 16.0 + 1.0;
            for r in 0..rows {
                assert_eq!(
                    alone[r].to_bits(),
                    all[i * rows + r].to_bits(),
                    "{ty:?} row {r}"
                );
                let want = dot_q(
                    Isa::Scalar,
                    ty,
                    &w[r * rb..(r + 1) * rb],
                    act.0,
                    act.1,
                    act.2,
                );
                assert!(
                    (all[i * rows + r] - want).abs() <= 1e-5 * scale,
                    "{ty:?} row {r}: {} vs {want}",
                    all[i * rows + r]
                );
            }
        }
    }
}

#[test]
fn repacked_kernel_does_not_saturate_at_extreme_values() {
    // Every weight at the largest quant of its format against activations at ±127: the
    // largest sums the narrow integer lanes of the kernels ever hold.
    let cols = 256;
    for (isa, spec) in packing_levels() {
        for ty in QTYPES.into_iter().filter(|&t| repack::form(t).is_some()) {
            for sign in [1.0f32, -1.0] {
                // One zero per block sets the Q4_1 minimum; every other weight is the maximum.
                let w: Vec<f32> = (0..8 * cols)
                    .map(|i| if i % QK == 5 { 0.0 } else { 1.0 })
                    .collect();
                let wq = quantize_row(ty, &w);
                let packed = repack::Packed::new(spec, ty, 8, cols, &wq).expect("repacks");
                let x = vec![sign; cols];
                let a = quantize(isa, &x, 1);
                let got = packed_matmul(isa, &packed, &a);
                let rb = wq.len() / 8;
                for (r, got) in got.iter().enumerate() {
                    let want = dot_q(
                        Isa::Scalar,
                        ty,
                        &wq[r * rb..(r + 1) * rb],
                        a.row(0).0,
                        a.row(0).1,
                        a.row(0).2,
                    );
                    assert!(
                        (got - want).abs() <= 1e-4 * want.abs(),
                        "{isa} {ty:?} {sign} row {r}: {got} vs {want}"
                    );
                }
            }
        }
    }
}

/// Our block decoding against ggml's own (gguf-py's `quants.dequantize`, run on random block
/// bytes with sane f16 scales: `testdata/ggml-blocks.json`), so a layout mistake shared by our
/// quantizer and dequantizer cannot hide.
#[test]
fn block_layouts_match_ggml_dequantization() {
    let text = include_str!("testdata/ggml-blocks.json");
    let all: serde_json::Value = serde_json::from_str(text).expect("fixture");
    for ty in [
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
    ] {
        let case = &all[ty.name()];
        let hex = case["hex"].as_str().expect("hex");
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("hex byte"))
            .collect();
        let want: Vec<f32> = case["values"]
            .as_array()
            .expect("values")
            .iter()
            .map(|v| v.as_f64().expect("number") as f32)
            .collect();
        assert_eq!(
            bytes.len() / ty.block_bytes() * ty.block_elems(),
            want.len()
        );
        let mut got = vec![0.0f32; want.len()];
        dequantize_row(ty, &bytes, &mut got);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{ty:?} element {i}: {g} vs ggml {w}"
            );
        }
        // And the kernels on these bytes against the dequantized values.
        let mut rng = Rng(23);
        let x = rng.vec(want.len(), 2.0);
        let xa = quantize(Isa::Scalar, &x, 1);
        let (qs, d, s) = xa.row(0);
        let exact: f64 = (0..want.len())
            .map(|i| want[i] as f64 * (d[i / QK] * qs[i] as f32) as f64)
            .sum();
        let scale: f64 = (0..want.len())
            .map(|i| (want[i] as f64 * x[i] as f64).abs())
            .sum();
        for isa in Isa::all_available() {
            let got = dot_q(isa, ty, &bytes, qs, d, s) as f64;
            assert!(
                (got - exact).abs() <= 2e-3 * scale,
                "{ty:?} {isa:?}: {got} vs {exact}"
            );
        }
    }
}
