//! Attention alone over a synthetic paged KV cache, SmolLM2's shape by default (9 query heads,
//! 3 KV heads, head size 64): a 512-token prefill chunk and a decode token at a given depth,
//! with the multiply-add rate and the K/V read rate.
//! Usage: cargo run --release -p cordial-model --example attention -- [depth] [threads] [f16|q8_0]
//! `ATTN_SHAPE=heads,kv_heads,head_dim` changes the shape (Gemma 3 270M: 4,1,256);
//! `ATTN_CHUNK` the key chunk; `ATTN_ISA` the kernel level (default: the best); `ATTN_DECODE_ONLY=1` skips the prefill measurement.

use std::time::Instant;

use cordial_model::backend::attention::{
    attention_chunked, AttnScratch, AttnShape, TokenPlace, KEY_CHUNK,
};
use cordial_model::{Isa, KvCache, KvDtype, ThreadPool, KV_BLOCK};

/// Nanoseconds this thread has run on a CPU (Linux), so that other processes' load on the
/// machine does not count; `None` elsewhere.
fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let depth: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(7264);
    let threads: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let dtype = match args.get(2) {
        Some(s) => KvDtype::parse(s).ok_or_else(|| anyhow::anyhow!("{s}: f16 or q8_0"))?,
        None => KvDtype::F16,
    };
    let shape: Vec<usize> = std::env::var("ATTN_SHAPE")
        .unwrap_or_else(|_| "9,3,64".into())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let (nh, nkv, hd) = (shape[0], shape[1], shape[2]);
    let blocks = (depth + 1).div_ceil(KV_BLOCK);
    let mut kv = KvCache::new(1, nkv, hd, dtype, blocks)?;
    let mut seed = 1u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 2001) as f32 / 1000.0 - 1.0
    };
    for b in 0..blocks {
        for at in 0..KV_BLOCK {
            let k: Vec<f32> = (0..nkv * hd).map(|_| rnd()).collect();
            let v: Vec<f32> = (0..nkv * hd).map(|_| rnd()).collect();
            kv.write(0, b, at, &k, &v);
        }
    }
    let table: Vec<u32> = (0..blocks as u32).collect();
    let pool = ThreadPool::new(threads);
    let isa = match std::env::var("ATTN_ISA") {
        Ok(s) => Isa::parse(&s)
            .filter(|i| i.is_available())
            .ok_or_else(|| anyhow::anyhow!("ATTN_ISA={s}: not a level of this CPU"))?,
        Err(_) => Isa::best_available(),
    };
    let kern = isa.kernels();
    let sh = AttnShape::causal(nh, nkv, hd);
    let mut scratch = AttnScratch::default();
    scratch.prepare(pool.threads());
    let qd = nh * hd;
    // ATTN_CHUNK: key positions per chunk (default the library's).
    let chunk: usize = std::env::var("ATTN_CHUNK")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(KEY_CHUNK);
    let run = |positions: std::ops::Range<usize>, reps: usize, scratch: &mut AttnScratch| {
        let places: Vec<TokenPlace<'_>> = positions
            .clone()
            .map(|pos| TokenPlace {
                block_table: &table,
                window_table: &[],
                pos,
            })
            .collect();
        let q: Vec<f32> = (0..places.len() * qd)
            .map(|i| (i % 7) as f32 * 0.1)
            .collect();
        let mut out = vec![0.0; q.len()];
        let mut best = f64::MAX;
        for _ in 0..5 {
            let (t, c) = (Instant::now(), cpu_ns());
            for _ in 0..reps {
                let (k, o) = (&kv, &mut out);
                attention_chunked(&pool, kern, k, 0, &sh, &places, &q, o, scratch, chunk);
            }
            // One thread: its CPU time, not the wall time other processes stretch.
            let secs = match (c, cpu_ns(), pool.threads()) {
                (Some(a), Some(b), 1) => (b - a) as f64 * 1e-9,
                _ => t.elapsed().as_secs_f64(),
            };
            best = best.min(secs / reps as f64);
        }
        let pairs: usize = positions.map(|p| p + 1).sum();
        (best, pairs)
    };
    let decode_only = std::env::var_os("ATTN_DECODE_ONLY").is_some();
    let (t, pairs) = if decode_only {
        (f64::NAN, 0)
    } else {
        run(depth.saturating_sub(512)..depth, 1, &mut scratch)
    };
    let macs = (pairs * nh * hd * 2) as f64;
    println!(
        "prefill 512 at depth {depth} ({nh}/{nkv}x{hd}, {dtype}, {} threads, {}): {:.2} ms, {:.1} GMAC/s",
        pool.threads(),
        kern.isa(),
        t * 1e3,
        macs / t / 1e9
    );
    let (t, pairs) = run(
        depth..depth + 1,
        if decode_only { 2000 } else { 100 },
        &mut scratch,
    );
    let bytes = (pairs * kv.layer_bytes_per_token()) as f64;
    println!(
        "decode at depth {depth}: {:.1} µs per layer, {:.1} GB/s of K/V, {:.1} GMAC/s",
        t * 1e6,
        bytes / t / 1e9,
        (pairs * nh * hd * 2) as f64 / t / 1e9
    );
    Ok(())
}
