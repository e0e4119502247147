//! Speed of the model alone and of the int8 kernels, for `cordial bench` and the `bench` /
//! `kernels` examples: prefill and decode like `llama-bench -p 512 -n 128`, batched decode, and
//! GMAC/s per weight type, ISA and activation row count. Best-of timings, so other load on the
//! machine shows as noise rather than bias; the figures go to `out`, one line each.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::matmul::{matmul, quantize_acts, Acts, MatJob};
use crate::gguf::GgufFile;
use crate::quant::{repack::Packed, scalar::quantize_row, GgmlType, QuantizedActs};
use crate::{Batch, Compute, Isa, KvCache, KvDtype, Model, Scratch, SeqInput, ThreadPool};

/// Tokens per KV block.
const BS: usize = 16;

/// What [`model`] measures.
#[derive(Debug, Clone)]
pub struct ModelBench {
    /// Pool threads (0 = all cores).
    pub threads: usize,
    /// Prompt tokens of the prefill measurement (best of 3); 0 skips it.
    pub prefill: usize,
    /// Tokens decoded one at a time after a 16-token prompt.
    pub decode: usize,
    /// Sequences decoded together (64 steps); 1 skips it.
    pub batch: usize,
    /// Long context: prompt tokens prefilled in chunks of 512 (as the server does), then
    /// 32 tokens decoded at that depth; 0 skips it.
    pub depth: usize,
    /// How the KV cache stores K and V.
    pub kv_dtype: KvDtype,
    /// Kernel level and layout.
    pub compute: Compute,
}

impl Default for ModelBench {
    fn default() -> ModelBench {
        ModelBench {
            threads: 0,
            prefill: 512,
            decode: 128,
            batch: 16,
            depth: 0,
            kv_dtype: KvDtype::F16,
            compute: Compute::best(),
        }
    }
}

struct Runner {
    model: Model,
    pool: ThreadPool,
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
                window_table: &[],
                want_logits: true,
                all_logits: false,
                replace: &[],
                lora: &[],
            })
            .collect();
        self.model.forward(
            &self.pool,
            &Batch { seqs },
            &mut self.kv,
            &mut self.scratch,
            &mut self.logits,
        )?;
        Ok(())
    }
}

/// Loads the GGUF file or Hugging Face folder at `path` and measures it (see [`ModelBench`]).
pub fn model(path: &Path, opts: &ModelBench, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(opts.batch >= 1, "the batch must be at least 1 sequence");
    let t_load = Instant::now();
    let model = if crate::hf::is_hf_dir(path) {
        Model::load_with(Arc::new(crate::hf::load_dir(path)?), opts.compute)?
    } else {
        Model::load_with(Arc::new(GgufFile::open(path)?), opts.compute)?
    };
    let load_ms = t_load.elapsed().as_secs_f64() * 1e3;
    let c = model.config().clone();
    // Room for the longest sequence: the prefill, the long context, or 16 + the decode (or
    // batch) tokens; the batch's other sequences need only the short room.
    let short = 16 + opts.decode.max(64);
    let longest = opts.prefill.max(short).max(opts.depth + 32);
    anyhow::ensure!(
        longest <= c.context,
        "{longest} positions do not fit the model's context of {}",
        c.context
    );
    let first = longest.div_ceil(BS);
    let others = short.div_ceil(BS);
    let kv = model.kv_cache(opts.kv_dtype, first + others * (opts.batch - 1), None)?;
    let tables = (0..opts.batch)
        .map(|s| {
            let (start, len) = if s == 0 {
                (0, first)
            } else {
                (first + (s - 1) * others, others)
            };
            (start..start + len).map(|b| b as u32).collect()
        })
        .collect();
    let mut r = Runner {
        model,
        pool: ThreadPool::new(opts.threads),
        kv,
        scratch: Scratch::default(),
        logits: Vec::new(),
        tables,
    };
    // Token ids spread over the vocabulary (not the specials at its start).
    let span = c.vocab.saturating_sub(100).max(1);
    let tokens: Vec<u32> = (0..longest + opts.batch)
        .map(|i| ((i * 7919) % span + 100.min(c.vocab - 1)) as u32)
        .collect();
    writeln!(
        out,
        "model {} ({}, {} threads, KV {}, kernels={}{}), loaded in {load_ms:.0} ms",
        path.display(),
        c.arch,
        r.pool.threads(),
        opts.kv_dtype,
        opts.compute.isa,
        if opts.compute.pack().is_some() {
            " repacked"
        } else {
            ""
        },
    )?;
    if opts.prefill > 0 {
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            r.step(&[(0, &tokens[..opts.prefill], 0)])?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        writeln!(
            out,
            "prefill {}: {:.1} tok/s",
            opts.prefill,
            opts.prefill as f64 / best
        )?;
    }
    if opts.decode > 0 {
        r.step(&[(0, &tokens[..16], 0)])?;
        let t = Instant::now();
        for i in 0..opts.decode {
            r.step(&[(0, &tokens[16 + i..17 + i], 16 + i)])?;
        }
        let rate = opts.decode as f64 / t.elapsed().as_secs_f64();
        let mb = r.model.weight_bytes_per_step() as f64 / 1e6;
        writeln!(
            out,
            "decode {}: {rate:.1} tok/s ({mb:.0} MB of weights per step: {:.1} GB/s)",
            opts.decode,
            rate * mb / 1e3
        )?;
    }
    if opts.depth > 0 {
        let t = Instant::now();
        for start in (0..opts.depth).step_by(512) {
            let end = (start + 512).min(opts.depth);
            r.step(&[(0, &tokens[start..end], start)])?;
        }
        let prefill = t.elapsed().as_secs_f64();
        let t = Instant::now();
        for i in 0..32 {
            let p = opts.depth + i;
            r.step(&[(0, &tokens[p..p + 1], p)])?;
        }
        writeln!(
            out,
            "depth {}: prefill {:.1} tok/s (chunks of 512), decode {:.1} tok/s (32 tokens)",
            opts.depth,
            opts.depth as f64 / prefill,
            32.0 / t.elapsed().as_secs_f64()
        )?;
    }
    if opts.batch > 1 {
        for s in 0..opts.batch {
            r.step(&[(s, &tokens[s..s + 16], 0)])?;
        }
        let t = Instant::now();
        for i in 0..64 {
            let items: Vec<(usize, &[u32], usize)> = (0..opts.batch)
                .map(|s| (s, &tokens[16 + s + i..17 + s + i], 16 + i))
                .collect();
            r.step(&items)?;
        }
        writeln!(
            out,
            "decode batch {}: {:.1} tok/s aggregate",
            opts.batch,
            (64 * opts.batch) as f64 / t.elapsed().as_secs_f64()
        )?;
    }
    writeln!(
        out,
        "pool switched to running alone {} times",
        r.pool.solo_switches()
    )?;
    Ok(())
}

/// GMAC/s of one thread's matmul over a `rows` × 2048 weight matrix of each quantized type,
/// for 1, 4, 16 and 64 activation rows, on every kernel level of this CPU (repacked where the
/// level repacks, and in the GGUF layout).
pub fn kernels(rows: usize, out: &mut dyn Write) -> anyhow::Result<()> {
    anyhow::ensure!(rows >= 1, "the matrix needs at least one row");
    let pool = ThreadPool::new(1);
    let cols = 2048usize;
    let w: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 2654435761usize) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q5_0,
    ] {
        let wq = quantize_row(ty, &w);
        // Every level's repacked kernel; the GGUF-layout kernels once each (the VNNI levels
        // run AVX2's), the scalar one only on small matrices (it is ~50x slower).
        let mut variants: Vec<Compute> = Vec::new();
        for isa in Isa::all_available() {
            let cx = Compute::new(isa);
            if cx.pack().is_some() {
                variants.push(cx);
            }
            if isa <= Isa::Avx2 && (isa > Isa::Scalar || rows <= 4096) {
                variants.push(Compute {
                    repack: false,
                    ..cx
                });
            }
        }
        for cx in variants {
            let packed = cx
                .pack()
                .and_then(|spec| Packed::new(spec, ty, rows, cols, &wq));
            for t in [1usize, 4, 16, 64] {
                let x: Vec<f32> = (0..t * cols)
                    .map(|i| ((i * 40503) % 997) as f32 / 997.0 - 0.5)
                    .collect();
                let mut q = QuantizedActs::default();
                quantize_acts(cx.kernels(), &x, t, &mut q);
                let mut res = vec![0.0f32; t * rows];
                let reps = (200 / t).max(5);
                let mut best = f64::MAX;
                for _ in 0..reps {
                    let start = Instant::now();
                    let acts = Acts { f: &x, q: &q, t };
                    matmul(
                        &pool,
                        cx,
                        &acts,
                        &mut [MatJob {
                            packed: packed.as_ref(),
                            w: &wq,
                            ty,
                            rows,
                            cols,
                            out: &mut res,
                        }],
                    );
                    best = best.min(start.elapsed().as_secs_f64());
                }
                let gmacs = (rows * cols * t) as f64 / best / 1e9;
                let form = if packed.is_some() { "repacked" } else { "gguf" };
                writeln!(
                    out,
                    "{ty:?} {} {form} rows={t:>3}: {gmacs:6.2} GMAC/s ({:.1} µs)",
                    cx.isa,
                    best * 1e6
                )?;
            }
        }
    }
    Ok(())
}
