//! Small row-wise ops: RMSNorm, rotary embedding, activations, soft-capping. Each row is
//! computed on its own. Where an op needs a vector kernel it takes the kernel table.

use super::cpu::Kernels;

/// Adds `b` to every row of `x` (rows of `b.len()`): biases, and residuals (one row as long
/// as `x`).
pub fn add_rows(x: &mut [f32], b: &[f32]) {
    for row in x.chunks_exact_mut(b.len()) {
        row.iter_mut().zip(b).for_each(|(a, b)| *a += b);
    }
}

/// out = x / rms(x) * w, per row of width `w.len()`.
pub fn rmsnorm(k: &dyn Kernels, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let n = w.len();
    for (xr, or) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let ss = k.sum_squares(xr) / n as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for i in 0..n {
            or[i] = xr[i] * scale * w[i];
        }
    }
}

/// RMSNorm in place, per row of width `w.len()` (per head for QK-norm): the same arithmetic as
/// [`rmsnorm`].
pub fn rmsnorm_inplace(k: &dyn Kernels, x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    for xr in x.chunks_exact_mut(n) {
        let ss = k.sum_squares(xr) / n as f32;
        let scale = 1.0 / (ss + eps).sqrt();
        for i in 0..n {
            xr[i] = xr[i] * scale * w[i];
        }
    }
}

/// Rotary embedding, llama.cpp's NEOX mode (element `i` paired with `i + head_dim/2`), in place
/// on one token's heads.
pub fn rope_neox(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    let half = head_dim / 2;
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            head[i] = a * cos[i] - b * sin[i];
            head[i + half] = a * sin[i] + b * cos[i];
        }
    }
}

/// Rotary embedding, llama.cpp's NORM mode (adjacent pairs), in place on one token's heads.
/// `cos`/`sin` hold `head_dim / 2` entries for this token's position.
pub fn rope_norm(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    for head in x.chunks_exact_mut(head_dim) {
        for i in 0..head_dim / 2 {
            let (a, b) = (head[2 * i], head[2 * i + 1]);
            head[2 * i] = a * cos[i] - b * sin[i];
            head[2 * i + 1] = a * sin[i] + b * cos[i];
        }
    }
}

/// cos/sin of `pos * base^(-2i/d)` for i in 0..d/2.
pub fn rope_table(pos: usize, dims: usize, base: f32, cos: &mut [f32], sin: &mut [f32]) {
    rope_table_scaled(pos, dims, base, 1.0, cos, sin)
}

/// cos/sin of `pos * base^(-2i/d) / factors[i]` (Llama 3's per-dimension frequency factors).
pub fn rope_table_factors(
    pos: usize,
    dims: usize,
    base: f32,
    factors: &[f32],
    cos: &mut [f32],
    sin: &mut [f32],
) {
    for i in 0..dims / 2 {
        let theta = pos as f32 * base.powf(-2.0 * i as f32 / dims as f32) / factors[i];
        cos[i] = theta.cos();
        sin[i] = theta.sin();
    }
}

/// cos/sin of `pos * scale * base^(-2i/d)` (linear position scaling: `scale` = 1/factor).
pub fn rope_table_scaled(
    pos: usize,
    dims: usize,
    base: f32,
    scale: f32,
    cos: &mut [f32],
    sin: &mut [f32],
) {
    for i in 0..dims / 2 {
        let theta = pos as f32 * scale * base.powf(-2.0 * i as f32 / dims as f32);
        cos[i] = theta.cos();
        sin[i] = theta.sin();
    }
}

/// x = cap · tanh(x / cap) (logit soft-capping).
pub fn softcap(x: &mut [f32], cap: f32) {
    for v in x {
        *v = cap * (*v / cap).tanh();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::Isa;

    #[test]
    fn rmsnorm_unit_rows() {
        let x = [3.0, 4.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0];
        let mut o = [0.0; 8];
        for isa in Isa::all_available() {
            rmsnorm(isa.kernels(), &x, &[1.0, 2.0, 1.0, 1.0], 0.0, &mut o);
            let r = (25.0f32 / 4.0).sqrt();
            assert!((o[0] - 3.0 / r).abs() < 1e-6 && (o[1] - 8.0 / r).abs() < 1e-6);
            assert!((o[4] - 1.0).abs() < 1e-6 && (o[5] - 2.0).abs() < 1e-6);
        }
    }

    #[test]
    fn rope_rotates_pairs_and_keeps_norm() {
        let mut c = [0.0; 2];
        let mut s = [0.0; 2];
        rope_table(3, 4, 10000.0, &mut c, &mut s);
        assert!((c[0] - 3f32.cos()).abs() < 1e-6 && (s[1] - (3.0f32 * 0.01).sin()).abs() < 1e-6);
        let mut x = [1.0, 0.0, 0.5, 0.5];
        rope_norm(&mut x, 4, &c, &s);
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[1] - 3f32.sin()).abs() < 1e-6);
        assert!(((x[2] * x[2] + x[3] * x[3]) - 0.5).abs() < 1e-6);
        rope_table(0, 4, 10000.0, &mut c, &mut s);
        let mut y = [1.0, 2.0, 3.0, 4.0];
        rope_norm(&mut y, 4, &c, &s);
        assert_eq!(y, [1.0, 2.0, 3.0, 4.0], "position 0 is the identity");
    }

    #[test]
    fn neox_pairs_halves_and_gelu_values() {
        let mut c = [0.0; 2];
        let mut s = [0.0; 2];
        rope_table_scaled(2, 4, 100.0, 0.5, &mut c, &mut s);
        assert!((c[0] - 1f32.cos()).abs() < 1e-6 && (s[1] - 0.1f32.sin()).abs() < 1e-6);
        let mut x = [1.0, 0.0, 0.0, 1.0];
        rope_neox(&mut x, 4, &c, &s);
        // Pairs (0, 2) and (1, 3).
        assert!((x[0] - 1f32.cos()).abs() < 1e-6 && (x[2] - 1f32.sin()).abs() < 1e-6);
        assert!((x[1] + 0.1f32.sin()).abs() < 1e-6 && (x[3] - 0.1f32.cos()).abs() < 1e-6);
        for isa in Isa::all_available() {
            let mut g = [0.0, 1.0, -3.0, 30.0, -30.0];
            isa.kernels().gelu_mul(&mut g, &[1.0, 2.0, 1.0, 1.0, 1.0]);
            assert_eq!(g[0], 0.0);
            assert!((g[1] - 2.0 * 0.841_192).abs() < 1e-5, "{isa} {}", g[1]);
            assert!((g[2] + 0.003_637_4).abs() < 1e-5, "{isa} {}", g[2]);
            assert!(g[3] == 30.0 && g[4].abs() < 1e-6, "{isa} saturation {g:?}");
        }
        let mut v = [0.0, 100.0, -1.0];
        softcap(&mut v, 30.0);
        assert!(v[0] == 0.0 && v[1] < 30.0 && v[1] > 29.9 && (v[2] + 0.999_63).abs() < 1e-4);
    }

    #[test]
    fn silu_mul_values() {
        for isa in Isa::all_available() {
            let mut g = [0.0, 1.0, -2.0];
            isa.kernels().silu_mul(&mut g, &[5.0, 2.0, 1.0]);
            assert_eq!(g[0], 0.0);
            assert!((g[1] - 2.0 / (1.0 + (-1f32).exp())).abs() < 1e-6);
            assert!((g[2] - (-2.0 / (1.0 + 2f32.exp()))).abs() < 1e-6);
        }
    }
}
