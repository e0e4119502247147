//! Model-alone speed: single-sequence decode and prefill, like `llama-bench -p 512 -n 128`
//! (the same measurement as `cordial bench`).
//! Usage: cargo run --release -p cordial-model --example bench -- [MODEL.gguf|HF_DIR|-] [threads] [batch]
//! (default: the default model, all cores; `batch` > 1 also measures batched decode).
//! `BENCH_DECODE_ONLY=1` skips prefill and decodes 512 tokens.

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
    let opts = ModelBench {
        threads,
        prefill: if decode_only { 0 } else { 512 },
        decode: if decode_only { 512 } else { 128 },
        batch,
        compute: cordial_model::Compute::from_env()?,
    };
    bench::model(&path, &opts, &mut std::io::stdout())
}
