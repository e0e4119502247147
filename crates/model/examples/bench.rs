//! Model-alone speed: single-sequence decode and prefill, like `llama-bench -p 512 -n 128`.
//! Usage: cargo run --release -p cordial-model --example bench -- [MODEL.gguf|HF_DIR|-] [threads] [batch]
//! (default: the default model, all cores; `batch` > 1 also measures batched decode).
//! `BENCH_DECODE_ONLY=1` skips prefill and decodes 512 tokens.

use std::sync::Arc;
use std::time::Instant;

use cordial_model::gguf::GgufFile;
use cordial_model::{Batch, Compute, KvCache, Model, Scratch, SeqInput, ThreadPool};

/// Tokens per KV block, and KV blocks per sequence slot.
const BS: usize = 16;
const BLOCKS_PER_SEQ: usize = (1024 + 256) / BS;

struct Runner {
    model: Model,
    pool: ThreadPool,
    cx: Compute,
    kv: KvCache,
    scratch: Scratch,
    logits: Vec<f32>,
    tables: Vec<Vec<u32>>,
}

impl Runner {
    /// One forward step: (sequence slot, tokens, start position) each.
    fn step(&mut self, items: &[(usize, &[u32], usize)]) -> anyhow::Result<()> {
        let seqs = items
            .iter()
            .map(|&(s, tokens, start_pos)| SeqInput {
                tokens,
                start_pos,
                block_table: &self.tables[s],
                want_logits: true,
                all_logits: false,
                replace: &[],
            })
            .collect();
        let batch = Batch { seqs };
        self.model.forward(
            &self.pool,
            self.cx,
            &batch,
            &mut self.kv,
            &mut self.scratch,
            &mut self.logits,
        )?;
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.first() {
        Some(p) if p != "-" => p.into(),
        _ => cordial_model::fetch::ensure_default_model()?,
    };
    let threads: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let batch: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1)
        .max(1);
    let decode_only = std::env::var_os("BENCH_DECODE_ONLY").is_some();
    let t_load = Instant::now();
    let model = if cordial_model::hf::is_hf_dir(&path) {
        Model::load(Arc::new(cordial_model::hf::load_dir(&path)?))?
    } else {
        Model::load(Arc::new(GgufFile::open(&path)?))?
    };
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let c = model.config().clone();
    let kv = KvCache::new(
        c.n_layers,
        c.n_kv_heads * c.head_dim,
        BS,
        BLOCKS_PER_SEQ * batch,
    );
    let tables = (0..batch)
        .map(|s| {
            (0..BLOCKS_PER_SEQ)
                .map(|b| (s * BLOCKS_PER_SEQ + b) as u32)
                .collect()
        })
        .collect();
    let mut r = Runner {
        model,
        pool: ThreadPool::new(threads),
        cx: Compute::detect(),
        kv,
        scratch: Scratch::default(),
        logits: Vec::new(),
        tables,
    };
    let prompt: Vec<u32> = (0..512).map(|i| (i * 7919 % 40000 + 100) as u32).collect();
    println!(
        "model {} ({}, {} threads, {:?}), loaded in {load_ms:.0} ms",
        path.display(),
        c.arch,
        r.pool.threads(),
        r.cx.isa
    );
    if !decode_only {
        // Prefill 512 (best of 3).
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            r.step(&[(0, &prompt, 0)])?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        println!("prefill 512: {:.1} tok/s", 512.0 / best);
    }
    // Decode after a 16-token prompt.
    let n_decode = if decode_only { 512 } else { 128 };
    r.step(&[(0, &prompt[..16], 0)])?;
    let t = Instant::now();
    for i in 0..n_decode {
        r.step(&[(0, &[prompt[(16 + i) % 512]], 16 + i)])?;
    }
    println!(
        "decode {n_decode}: {:.1} tok/s",
        n_decode as f64 / t.elapsed().as_secs_f64()
    );
    if batch > 1 {
        for s in 0..batch {
            r.step(&[(s, &prompt[s..s + 16], 0)])?;
        }
        let t = Instant::now();
        for i in 0..64 {
            let toks: Vec<[u32; 1]> = (0..batch).map(|s| [prompt[100 + s + i]]).collect();
            let items: Vec<(usize, &[u32], usize)> =
                (0..batch).map(|s| (s, &toks[s][..], 16 + i)).collect();
            r.step(&items)?;
        }
        println!(
            "decode batch {batch}: {:.1} tok/s aggregate",
            (64 * batch) as f64 / t.elapsed().as_secs_f64()
        );
    }
    println!(
        "pool switched to running alone {} times",
        r.pool.solo_switches()
    );
    Ok(())
}
