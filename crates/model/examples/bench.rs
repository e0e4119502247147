//! Model-alone speed: single-sequence decode and prefill, like `llama-bench -p 512 -n 128`.
//! Usage: cargo run --release -p cordial-model --example bench -- [MODEL.gguf] [threads] [batch]
//! (default: the default model, all cores; `batch` > 1 also measures batched decode).

use std::sync::Arc;
use std::time::Instant;

use cordial_model::gguf::GgufFile;
use cordial_model::{Batch, Compute, KvCache, Model, Scratch, SeqInput, ThreadPool};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = match args.first() {
        Some(p) if p != "-" => p.into(),
        _ => cordial_model::fetch::ensure_default_model()?,
    };
    let threads: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(0);
    let batch: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let model = Model::load(Arc::new(GgufFile::open(&path)?))?;
    let c = model.config().clone();
    let pool = ThreadPool::new(threads);
    let cx = Compute::detect();
    let bs = 16;
    let per_seq = (1024 + 256) / bs;
    let mut kv = KvCache::new(
        c.n_layers,
        c.n_kv_heads * c.head_dim,
        bs,
        per_seq * batch.max(1),
    );
    let mut scratch = Scratch::default();
    let mut logits = Vec::new();
    let table = |s: usize| {
        (0..per_seq)
            .map(|b| (s * per_seq + b) as u32)
            .collect::<Vec<u32>>()
    };
    let prompt: Vec<u32> = (0..512).map(|i| (i * 7919 % 40000 + 100) as u32).collect();
    println!(
        "model {} ({} threads, {:?})",
        path.display(),
        pool.threads(),
        cx.isa
    );
    // Prefill 512 (best of 3).
    let t0 = table(0);
    let mut best = f64::MAX;
    let prefill_reps = if std::env::var_os("BENCH_DECODE_ONLY").is_some() {
        0
    } else {
        3
    };
    for _ in 0..prefill_reps {
        let seqs = vec![SeqInput {
            tokens: &prompt,
            start_pos: 0,
            block_table: &t0,
            want_logits: true,
            all_logits: false,
            replace: &[],
        }];
        let t = Instant::now();
        model.forward(
            &pool,
            cx,
            &Batch { seqs },
            &mut kv,
            &mut scratch,
            &mut logits,
        )?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    println!("prefill 512: {:.1} tok/s", 512.0 / best);
    // Decode 128 after a 16-token prompt.
    let seqs = vec![SeqInput {
        tokens: &prompt[..16],
        start_pos: 0,
        block_table: &t0,
        want_logits: true,
        all_logits: false,
        replace: &[],
    }];
    model.forward(
        &pool,
        cx,
        &Batch { seqs },
        &mut kv,
        &mut scratch,
        &mut logits,
    )?;
    let t = Instant::now();
    let n_decode = if std::env::var_os("BENCH_DECODE_ONLY").is_some() {
        512
    } else {
        128
    };
    for i in 0..n_decode {
        let tok = [prompt[(16 + i) % 512]];
        let seqs = vec![SeqInput {
            tokens: &tok,
            start_pos: 16 + i,
            block_table: &t0,
            want_logits: true,
            all_logits: false,
            replace: &[],
        }];
        model.forward(
            &pool,
            cx,
            &Batch { seqs },
            &mut kv,
            &mut scratch,
            &mut logits,
        )?;
    }
    println!(
        "decode {n_decode}: {:.1} tok/s",
        n_decode as f64 / t.elapsed().as_secs_f64()
    );
    if batch > 1 {
        let tables: Vec<Vec<u32>> = (0..batch).map(table).collect();
        for (s, tb) in tables.iter().enumerate() {
            let seqs = vec![SeqInput {
                tokens: &prompt[s..s + 16],
                start_pos: 0,
                block_table: tb,
                want_logits: true,
                all_logits: false,
                replace: &[],
            }];
            model.forward(
                &pool,
                cx,
                &Batch { seqs },
                &mut kv,
                &mut scratch,
                &mut logits,
            )?;
        }
        let t = Instant::now();
        for i in 0..64 {
            let toks: Vec<[u32; 1]> = (0..batch).map(|s| [prompt[100 + s + i]]).collect();
            let seqs = (0..batch)
                .map(|s| SeqInput {
                    tokens: &toks[s],
                    start_pos: 16 + i,
                    block_table: &tables[s],
                    want_logits: true,
                    all_logits: false,
                    replace: &[],
                })
                .collect();
            model.forward(
                &pool,
                cx,
                &Batch { seqs },
                &mut kv,
                &mut scratch,
                &mut logits,
            )?;
        }
        println!(
            "decode batch {batch}: {:.1} tok/s aggregate",
            (64 * batch) as f64 / t.elapsed().as_secs_f64()
        );
    }
    println!(
        "pool switched to running alone {} times",
        pool.solo_switches()
    );
    Ok(())
}
