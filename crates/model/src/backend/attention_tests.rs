//! The attention primitives of every kernel level against the scalar ones, and the chunked
//! (flash-decoding) driver: split equals unsplit to rounding, and a query's result is
//! bit-identical whichever way its keys are cut into tasks or its tokens into blocks.

use super::*;
use crate::backend::cpu::{Isa, KvBlock};
use crate::kv::{KvDtype, WindowPool};

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % 20001) as f32 / 10000.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

/// A cache of `blocks` blocks with every position written with random K/V.
fn filled(dtype: KvDtype, heads: usize, hd: usize, blocks: usize, rng: &mut Rng) -> KvCache {
    let mut kv = KvCache::new(1, heads, hd, dtype, blocks).unwrap();
    for b in 0..blocks {
        for at in 0..KV_BLOCK {
            let (k, v) = (rng.vec(heads * hd, 2.0), rng.vec(heads * hd, 1.0));
            kv.write(0, b, at, &k, &v);
        }
    }
    kv
}

#[test]
fn conversions_are_exact_on_every_level() {
    let mut rng = Rng(5);
    for dtype in [KvDtype::F16, KvDtype::Q8_0] {
        for hd in [32usize, 64, 256] {
            let kv = filled(dtype, 2, hd, 2, &mut rng);
            let (kb, vb) = (kv.k_block(0, 1, 1), kv.v_block(0, 1, 1));
            let mut want_k = vec![0.0; hd * 16];
            let mut want_v = vec![0.0; hd * 16];
            for d in 0..hd {
                for j in 0..16 {
                    want_k[d * 16 + j] = crate::kv::key_at(kb, d, j);
                    want_v[j * hd + d] = crate::kv::value_at(vb, hd, j, d);
                }
            }
            assert!(want_k.iter().any(|&x| x != 0.0));
            for isa in Isa::all_available() {
                let k = isa.kernels();
                let (mut gk, mut gv) = (vec![0.0; hd * 16], vec![0.0; hd * 16]);
                k.kv_keys_f32(kb, hd, &mut gk);
                k.kv_values_f32(vb, hd, &mut gv);
                assert!(gk == want_k, "{isa} {dtype} hd {hd}: keys");
                assert!(gv == want_v, "{isa} {dtype} hd {hd}: values");
            }
        }
    }
    // A q8_0 view of the wrong size is refused.
    let q = [0i8; 16 * 16];
    let d = [0u16; 16];
    assert!(!KvBlock::Q8 { q: &q, d: &d }.fits(16));
}

#[test]
fn score_and_value_kernels_match_scalar_and_ignore_their_neighbours() {
    let mut rng = Rng(9);
    let scalar = &crate::backend::cpu::scalar::SCALAR;
    for dtype in [KvDtype::F16, KvDtype::Q8_0] {
        for hd in [8usize, 32, 64, 256] {
            if dtype == KvDtype::Q8_0 && hd % 32 != 0 {
                continue;
            }
            let kv = filled(dtype, 1, hd, 3, &mut rng);
            let keys: Vec<KvBlock<'_>> = (0..3).map(|b| kv.k_block(0, b, 0)).collect();
            let vals: Vec<KvBlock<'_>> = (0..3).map(|b| kv.v_block(0, b, 0)).collect();
            let mut buf = Vec::new();
            for isa in Isa::all_available() {
                let k = isa.kernels();
                for rows in [1usize, 3, 4, 13] {
                    let q = rng.vec(rows * hd, 1.0);
                    let ld = 3 * 16 + 5;
                    let mut got = vec![0.0; rows * ld];
                    let mut want = vec![0.0; rows * ld];
                    k.attn_scores(&keys, &q, rows, hd, 0.25, &mut got, ld, &mut buf);
                    scalar.attn_scores(&keys, &q, rows, hd, 0.25, &mut want, ld, &mut buf);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let ok = (g - w).abs() <= 1e-5 * (1.0 + w.abs());
                        assert!(ok, "{isa} {dtype} hd {hd} rows {rows}: score {i}");
                    }
                    // The last row alone, against the last block alone: the same bits
                    // (a decode-sized call against a prefill-sized one).
                    let mut one = vec![0.0; 16];
                    let last = &q[(rows - 1) * hd..];
                    k.attn_scores(&keys[2..], last, 1, hd, 0.25, &mut one, 16, &mut buf);
                    let row = &got[(rows - 1) * ld + 32..(rows - 1) * ld + 48];
                    assert!(
                        one[..] == *row,
                        "{isa} {dtype} hd {hd} rows {rows}: scores of a row"
                    );

                    let p = rng.vec(rows * ld, 1.0);
                    let init = rng.vec(rows * hd, 0.5);
                    let (mut got, mut want) = (init.clone(), init.clone());
                    k.attn_values(&vals, &p, ld, rows, hd, &mut got, &mut buf);
                    scalar.attn_values(&vals, &p, ld, rows, hd, &mut want, &mut buf);
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        let ok = (g - w).abs() <= 1e-4 * (1.0 + w.abs());
                        assert!(ok, "{isa} {dtype} hd {hd} rows {rows}: value {i}");
                    }
                    let mut one = init[(rows - 1) * hd..].to_vec();
                    k.attn_values(&vals, &p[(rows - 1) * ld..], ld, 1, hd, &mut one, &mut buf);
                    let row = &got[(rows - 1) * hd..];
                    assert!(
                        one[..] == *row,
                        "{isa} {dtype} hd {hd} rows {rows}: values of a row"
                    );
                }
            }
        }
    }
    for isa in Isa::all_available() {
        // exp_sum: trailing -inf entries add exact zeros.
        let k = isa.kernels();
        let x = rng.vec(37, 4.0);
        let mut a = x.clone();
        let mut b = x.clone();
        b.extend([f32::NEG_INFINITY; 27]);
        let (ma, sa) = k.exp_sum(&mut a);
        let (mb, sb) = k.exp_sum(&mut b);
        assert_eq!(
            (ma.to_bits(), sa.to_bits()),
            (mb.to_bits(), sb.to_bits()),
            "{isa}"
        );
        assert!(a[..] == b[..37] && b[37..].iter().all(|&v| v == 0.0));
        let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let want: f32 = x.iter().map(|v| (v - max).exp()).sum();
        assert!(
            ma == max && (sa - want).abs() < 1e-5 * want,
            "{isa}: {sa} vs {want}"
        );
    }
}

/// Runs attention over sequences given as `(first block, positions computed this step)`,
/// every sequence of `len` positions in consecutive blocks.
struct Setup {
    kv: KvCache,
    shape: AttnShape,
    tables: Vec<Vec<u32>>,
    q: Vec<f32>,
}

impl Setup {
    fn new(
        dtype: KvDtype,
        n_heads: usize,
        nkv: usize,
        hd: usize,
        seqs: &[usize],
        rng: &mut Rng,
    ) -> Setup {
        let per: Vec<usize> = seqs.iter().map(|l| l.div_ceil(KV_BLOCK)).collect();
        let kv = filled(dtype, nkv, hd, per.iter().sum(), rng);
        let mut tables = Vec::new();
        let mut next = 0u32;
        for n in per {
            tables.push((next..next + n as u32).collect());
            next += n as u32;
        }
        let longest = *seqs.iter().max().unwrap();
        Setup {
            kv,
            shape: AttnShape::causal(n_heads, nkv, hd),
            tables,
            q: rng.vec(longest * seqs.len() * n_heads * hd, 1.0),
        }
    }

    /// Output rows of the query tokens `(seq, pos)`, computed in one call; a token's query is
    /// a function of (seq, pos) only.
    fn run(
        &self,
        pool: &ThreadPool,
        isa: Isa,
        tokens: &[(usize, usize)],
        chunk: usize,
    ) -> Vec<Vec<f32>> {
        let qd = self.shape.n_heads * self.shape.head_dim;
        let longest = self.q.len() / qd / self.tables.len();
        let places: Vec<TokenPlace<'_>> = tokens
            .iter()
            .map(|&(s, pos)| TokenPlace {
                block_table: &self.tables[s],
                window_table: &[],
                pos,
            })
            .collect();
        let mut q = Vec::new();
        for &(s, pos) in tokens {
            let at = (s * longest + pos) * qd;
            q.extend_from_slice(&self.q[at..at + qd]);
        }
        let mut out = vec![0.0; tokens.len() * qd];
        let mut scratch = AttnScratch::default();
        scratch.prepare(pool.threads());
        let k = isa.kernels();
        attention_chunked(
            pool,
            k,
            &self.kv,
            0,
            &self.shape,
            &places,
            &q,
            &mut out,
            &mut scratch,
            chunk,
        );
        out.chunks(qd).map(|r| r.to_vec()).collect()
    }
}

#[test]
fn split_keys_equal_unsplit_to_rounding() {
    let pool = ThreadPool::new(3);
    let mut rng = Rng(77);
    for dtype in [KvDtype::F16, KvDtype::Q8_0] {
        for (nh, nkv, hd) in [(9, 3, 64), (4, 1, 256)] {
            let setup = Setup::new(dtype, nh, nkv, hd, &[700, 301], &mut rng);
            for isa in Isa::all_available() {
                // Decode-like steps (one token of each sequence) and a prefill run.
                let tokens: Vec<(usize, usize)> = vec![(0, 699), (1, 300), (0, 17)];
                let mut prefill: Vec<(usize, usize)> = (260..301).map(|p| (1, p)).collect();
                prefill.push((0, 640));
                for toks in [&tokens, &prefill] {
                    let whole = setup.run(&pool, isa, toks, 1 << 20);
                    for chunk in [16, KEY_CHUNK, 256] {
                        let split = setup.run(&pool, isa, toks, chunk);
                        for (t, (a, b)) in whole.iter().zip(&split).enumerate() {
                            let worst = a
                                .iter()
                                .zip(b)
                                .map(|(x, y)| (x - y).abs())
                                .fold(0.0f32, f32::max);
                            let size = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                            assert!(
                                worst <= 1e-5 * size.max(1e-3),
                                "{isa} {dtype} {nh}/{nkv}x{hd} chunk {chunk} token {t}: {worst} (of {size})"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a_querys_result_does_not_depend_on_how_the_work_is_cut() {
    // Token (0, 600) alone (split over chunks), inside a 16-token prefill block (loop task),
    // next to other sequences' tokens (which changes the split decision), with a window and
    // soft-capping: the same bits.
    let pool = ThreadPool::new(2);
    let mut rng = Rng(3);
    for dtype in [KvDtype::F16, KvDtype::Q8_0] {
        let mut setup = Setup::new(dtype, 6, 2, 64, &[620, 200, 50], &mut rng);
        for (window, cap) in [(0, 0.0), (300, 0.0), (130, 20.0)] {
            setup.shape.window = window;
            setup.shape.softcap = cap;
            for (isa, chunk) in Isa::all_available()
                .into_iter()
                .flat_map(|i| [(i, 64), (i, KEY_CHUNK)])
            {
                let alone = setup.run(&pool, isa, &[(0, 600)], chunk).remove(0);
                let block: Vec<(usize, usize)> = (590..606).map(|p| (0, p)).collect();
                let in_block = setup.run(&pool, isa, &block, chunk)[10].clone();
                let mut busy: Vec<(usize, usize)> = (100..180).map(|p| (1, p)).collect();
                busy.extend((596..601).map(|p| (0, p)));
                busy.extend((0..50).map(|p| (2, p)));
                let in_batch = setup.run(&pool, isa, &busy, chunk)[84].clone();
                let what = format!("{isa} {dtype} window {window} chunk {chunk}");
                assert!(alone == in_block, "{what}: prefill block");
                assert!(alone == in_batch, "{what}: batch");
            }
        }
    }
}

#[test]
fn window_pool_tables_are_read_only_inside_the_window() {
    // The same attention over a window pool whose table names no block before the window.
    let pool = ThreadPool::new(2);
    let mut rng = Rng(11);
    let (nkv, hd, window) = (1, 32, 40);
    let main = filled(KvDtype::F16, nkv, hd, 8, &mut rng);
    let pool_spec = WindowPool {
        window,
        num_blocks: 8,
        layers: vec![true],
    };
    let mut win = KvCache::with_window(1, nkv, hd, KvDtype::F16, 1, Some(pool_spec)).unwrap();
    for b in 0..8 {
        for at in 0..KV_BLOCK {
            let (k, v) = main.read(0, b, at);
            win.write(0, 7 - b, at, &k, &v);
        }
    }
    let table: Vec<u32> = (0..8).collect();
    let mut wtable: Vec<u32> = (0..8).map(|b| 7 - b).collect();
    let shape = AttnShape {
        window,
        ..AttnShape::causal(2, nkv, hd)
    };
    let q = rng.vec(3 * 2 * hd, 1.0);
    let positions = [100usize, 101, 127];
    // Blocks wholly before the first token's window are never read.
    for b in 0..(positions[0] + 1 - window) / KV_BLOCK {
        wtable[b] = crate::kv::NO_BLOCK;
    }
    let run = |kv: &KvCache, t: &[u32], wt: &[u32]| {
        let places: Vec<TokenPlace<'_>> = positions
            .iter()
            .map(|&pos| TokenPlace {
                block_table: t,
                window_table: wt,
                pos,
            })
            .collect();
        let mut out = vec![0.0; q.len()];
        let mut scratch = AttnScratch::default();
        scratch.prepare(pool.threads());
        attention(
            &pool,
            Isa::best_available().kernels(),
            kv,
            0,
            &shape,
            &places,
            &q,
            &mut out,
            &mut scratch,
        );
        out
    };
    assert!(run(&main, &table, &[]) == run(&win, &[], &wtable));
}
