//! Kernel micro-benchmark: one thread, minimum time over many repetitions (robust to other
//! load on the machine). Reports GMAC/s of the int8 dot kernels per weight type and row count
//! (the same measurement as `cordial bench --kernels`).
//! Usage: cargo run --release -p cordial-model --example kernels  (ROWS=1536 by default)

fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1536);
    cordial_model::bench::kernels(rows, &mut std::io::stdout())
}
