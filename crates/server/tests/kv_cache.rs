//! The q8_0 KV cache and Gemma 3's window pool under the engine, on the real models: forks
//! (`n` choices, beams), preemption and the prefix cache give exactly the tokens each request
//! gets alone on an engine with room to spare and no prefix cache. Sequences run past Gemma 3's
//! 512-position window, so its windowed layers release blocks while the global ones keep all.
//! The KV bytes per token the start-up log and `/metrics` report are checked against the
//! layout's arithmetic.

use cordial_engine::{
    BeamKind, BeamParams, EngineConfig, EngineHandle, EngineRequest, Event, SamplingParams, TokenId,
};
use cordial_model::fetch::{ensure_default_model, ensure_model, GEMMA3_270M};
use cordial_model::{Compute, KvDtype};
use cordial_server::runner::{self, RunnerOptions};

/// A prompt of `len` ids spread over the vocabulary (no special tokens in the low ids).
fn prompt(len: usize, salt: u32) -> Vec<TokenId> {
    (0..len as u32)
        .map(|i| 300 + (i * 7919 + salt * 104_729) % 20_000)
        .collect()
}

fn request(prompt: Vec<TokenId>, max_new_tokens: usize, seeds: Vec<u64>) -> EngineRequest {
    EngineRequest {
        prompt,
        params: SamplingParams {
            temperature: 0.9,
            max_new_tokens,
            ..Default::default()
        },
        seeds,
        deadline: None,
        prompt_embeddings: Vec::new(),
        constraint: None,
        beam: None,
        lora: Vec::new(),
    }
}

fn beams(prompt: Vec<TokenId>, max_new_tokens: usize) -> EngineRequest {
    let mut r = request(prompt, max_new_tokens, vec![5]);
    r.beam = Some(BeamParams {
        num_beams: 3,
        kind: BeamKind::Deterministic,
        length_penalty: 1.0,
        early_stopping: false,
        pre_normalization: false,
        no_post_normalization: false,
    });
    r
}

/// The engine over `model` with a q8_0 cache of `kv_tokens` tokens.
fn engine(model: &std::path::Path, kv_tokens: usize, prefix_caching: bool) -> EngineHandle {
    let opts = RunnerOptions {
        threads: 2,
        kv_cache_tokens: kv_tokens,
        kv_cache_dtype: KvDtype::Q8_0,
        max_num_seqs: 8,
        max_prefill_tokens: 256,
        ..RunnerOptions::new(Compute::best())
    };
    let loaded = runner::load(model, &opts).expect("load");
    // What the start-up log says: q8_0 is 1 byte per element and an f16 scale per 32, for K
    // and V of every KV head; the windowed layers are counted apart when they have a pool.
    let kv = &loaded.kv;
    assert_eq!(kv.dtype, KvDtype::Q8_0);
    let (global, windowed, per_layer) = match loaded.architecture.as_str() {
        "gemma3" => (3, 15, 2 * (256 + 256 / 32 * 2)),
        _ => (30, 0, 2 * 3 * (64 + 64 / 32 * 2)),
    };
    assert_eq!(
        (kv.layers, kv.bytes_per_token),
        (global, global * per_layer)
    );
    assert_eq!(
        kv.window.map(|(w, bytes, layers, _)| (w, bytes, layers)),
        (windowed > 0).then_some((512, windowed * per_layer, windowed))
    );
    let line = kv.to_string();
    assert!(
        line.starts_with(&format!("KV cache q8_0: {} B/token", global * per_layer)),
        "{line}"
    );
    let window_bytes = kv.window.map_or(0, |w| w.1);
    let bytes_per_token = kv.bytes_per_token;
    let config = EngineConfig {
        max_num_seqs: 8,
        max_prefill_tokens: 256,
        enable_prefix_caching: prefix_caching,
        ..EngineConfig::default()
    };
    let h = EngineHandle::spawn(loaded.executor, config);
    // `/metrics` reads the same figures from the engine's stats.
    let s = h.stats();
    assert_eq!(
        (s.kv_bytes_per_token, s.kv_window_bytes_per_token),
        (bytes_per_token, window_bytes)
    );
    h
}

/// Every choice's tokens.
async fn run(h: &EngineHandle, req: EngineRequest) -> Vec<Vec<TokenId>> {
    let n = if req.beam.is_some() {
        1
    } else {
        req.seeds.len()
    };
    let mut stream = h.submit(req).expect("submit");
    let mut out = vec![Vec::new(); n];
    while let Some(ev) = stream.recv().await {
        match ev {
            Event::Token { choice, token, .. } => out[choice].push(token),
            Event::Finished { .. } => return out,
            Event::Error(e) => panic!("request failed: {e:?}"),
            _ => {}
        }
    }
    panic!("the stream ended without Finished");
}

async fn forks_preemption_and_prefix_hits(model: std::path::PathBuf, windowed: bool) {
    // Two requests of 4 choices and a beam search: prompts past the window, 100 new tokens.
    let reqs = vec![
        request(prompt(530, 1), 100, vec![1, 2, 3, 4]),
        request(prompt(520, 2), 100, vec![7, 8, 9, 10]),
        beams(prompt(500, 3), 40),
    ];
    let roomy = engine(&model, 16_384, false);
    let mut want = Vec::new();
    for r in &reqs {
        want.push(run(&roomy, r.clone()).await);
    }
    let s = roomy.stats();
    assert_eq!(s.preemptions, 0);
    assert_eq!(s.total_window_blocks > 0, windowed, "{s:?}");
    if windowed {
        // The window pool is sized by windows (8 sequences' and a chunk), not by the context.
        assert!(s.total_window_blocks < s.total_blocks / 3, "{s:?}");
    }
    roomy.shutdown();

    // 112 main blocks: each request fits alone (4 choices: 34 prompt blocks + 4 × 7), the
    // three together do not, so the newest are preempted and recomputed.
    let tight = engine(&model, 112 * 16, true);
    // A prompt run twice: the second time its cached blocks (in both pools) are reused.
    assert_eq!(run(&tight, reqs[0].clone()).await, want[0]);
    assert_eq!(tight.stats().prefix_cache_hit_tokens, 0);
    assert_eq!(run(&tight, reqs[0].clone()).await, want[0]);
    let s = tight.stats();
    assert!(s.prefix_cache_hit_tokens >= 512, "{s:?}");
    let hits = s.prefix_cache_hit_tokens;
    let handles: Vec<_> = reqs.iter().map(|r| run(&tight, r.clone())).collect();
    let got = futures::future::join_all(handles).await;
    assert_eq!(got, want);
    let s = tight.stats();
    assert!(s.preemptions > 0, "the cache must run short: {s:?}");
    // A preempted group's recompute starts from its cached prompt blocks.
    assert!(s.prefix_cache_hit_tokens > hits, "{s:?}");
    // Every block comes back (the stats are published after the step that sent `Finished`).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = tight.stats();
        if s.free_blocks == s.total_blocks && s.free_window_blocks == s.total_window_blocks {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blocks still held: {s:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tight.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q8_0_kv_on_the_default_model_forks_preempts_and_reuses_prefixes() {
    let model = ensure_default_model().expect("default model");
    forks_preemption_and_prefix_hits(model, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q8_0_kv_with_gemma3_window_pool_forks_preempts_and_reuses_prefixes() {
    let model = ensure_model(&GEMMA3_270M).expect("gemma3 model");
    forks_preemption_and_prefix_hits(model, true).await;
}
