//! Model-alone speed: single-sequence decode and prefill, like `llama-bench -p 512 -n 128`
//! (the same measurement as `cordial bench`).
//! Usage: cargo run --release -p cordial-model --example bench -- [MODEL.gguf|HF_DIR|-] [threads] [batch]
//! (default: the default model, all cores; `batch` > 1 also measures batched decode).
//! `BENCH_DECODE_ONLY=1` skips prefill and decodes 512 tokens. `BENCH_DEPTH=N` prefills N tokens
//! in chunks of 512 and decodes 32 at that depth (nothing else); `BENCH_KV=q8_0` stores the KV
//! cache as q8_0.

use cordial_model::bench::{self, ModelBench};

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
    // BENCH_DEPTH=N: prefill N tokens in chunks of 512, then decode at that depth only.
    let depth: usize = std::env::var("BENCH_DEPTH")
        .ok()
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(0);
    let kv_dtype = match std::env::var("BENCH_KV") {
        Ok(s) => cordial_model::KvDtype::parse(&s)
            .ok_or_else(|| anyhow::anyhow!("BENCH_KV={s}: one of auto, f16, q8_0"))?,
        Err(_) => cordial_model::KvDtype::F16,
    };
    let short = decode_only || depth > 0;
    let opts = ModelBench {
        threads,
        prefill: if short { 0 } else { 512 },
        decode: if depth > 0 {
            0
        } else if decode_only {
            512
        } else {
            128
        },
        batch,
        depth,
        kv_dtype,
        compute: cordial_model::Compute::from_env()?,
    };
    bench::model(&path, &opts, &mut std::io::stdout())
}
