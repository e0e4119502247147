//! Glue from `cordial-model` (pure compute over a paged KV cache) to the engine's
//! `ModelExecutor`, plus loading a GGUF file with its tokenizer. With LoRA serving on, the
//! runner resolves each step's adapter ids to their weights through the [`LoraRegistry`]
//! (resident, or read again) and hands them to the model per sequence.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use cordial_engine::{ModelError, ModelExecutor, SeqStep};
use cordial_model::gguf::GgufFile;
use cordial_model::{
    Batch, Compute, KvCache, KvDtype, LoraAdapter, LoraUse, Model, Scratch, SeqInput, ThreadPool,
};
use cordial_tokenizer::Tokenizer;

use crate::lora::{LoraRegistry, LoraSettings};

/// Tokens per KV block.
pub const BLOCK_SIZE: usize = cordial_model::KV_BLOCK;

/// How to load the model.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Compute threads (0 = number of cores).
    pub threads: usize,
    /// Total KV cache capacity in tokens (rounded up to whole blocks).
    pub kv_cache_tokens: usize,
    /// Cap on the context length (None = the model's). The KV cache caps it too: a sequence
    /// never outgrows the cache.
    pub max_model_len: Option<usize>,
    /// Kernel level and weight layout.
    pub compute: Compute,
    /// LoRA serving (`--enable-lora`): its settings and the base model's served names.
    pub lora: Option<(LoraSettings, Vec<String>)>,
    /// How K and V are stored (`--kv-cache-dtype`).
    pub kv_cache_dtype: KvDtype,
    /// Most sequences decoded together and prompt tokens per step: they size the window pool
    /// of a model with sliding-window layers (each sequence keeps only its window there).
    pub max_num_seqs: usize,
    pub max_prefill_tokens: usize,
    /// How far the compute threads' nice value (the engine thread's included) is raised over
    /// the server's own (`--compute-nice`).
    pub compute_nice: i32,
}

impl RunnerOptions {
    /// Defaults for a model at `compute` (the server's flags' defaults).
    pub fn new(compute: Compute) -> RunnerOptions {
        RunnerOptions {
            threads: 0,
            kv_cache_tokens: 32768,
            max_model_len: None,
            compute,
            kv_cache_dtype: KvDtype::F16,
            max_num_seqs: 64,
            max_prefill_tokens: 512,
            lora: None,
            compute_nice: 0,
        }
    }
}

/// What the KV cache holds, for the start-up log.
#[derive(Debug, Clone)]
pub struct KvSummary {
    pub dtype: KvDtype,
    /// Bytes per position in the main pool, its layers and its positions.
    pub bytes_per_token: usize,
    pub layers: usize,
    pub tokens: usize,
    /// The window pool: window, bytes per position, layers, positions.
    pub window: Option<(usize, usize, usize, usize)>,
}

impl std::fmt::Display for KvSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: usize| b as f64 / (1 << 20) as f64;
        write!(
            f,
            "KV cache {}: {} B/token over {} layers, {} tokens = {:.1} MiB",
            self.dtype,
            self.bytes_per_token,
            self.layers,
            self.tokens,
            mib(self.bytes_per_token * self.tokens)
        )?;
        if let Some((window, bytes, layers, tokens)) = self.window {
            write!(
                f,
                "; sliding-window layers ({layers}, window {window}) keep only their window: \
                 {bytes} B/token, {tokens} tokens = {:.1} MiB",
                mib(bytes * tokens)
            )?;
        }
        Ok(())
    }
}

/// What bounds the length of a sequence (prompt + output).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContextLimits {
    /// The model's context length (its metadata).
    pub model: usize,
    /// `--max-model-len`.
    pub flag: Option<usize>,
    /// What the whole KV cache holds (`--kv-cache-tokens`, rounded up to whole blocks).
    pub kv_tokens: usize,
}

impl ContextLimits {
    /// The longest sequence served: the least of the three.
    pub fn effective(&self) -> usize {
        self.model
            .min(self.flag.unwrap_or(usize::MAX))
            .min(self.kv_tokens)
    }

    /// True when the KV cache, not the model or the flag, sets the effective length.
    pub fn kv_bound(&self) -> bool {
        self.kv_tokens < self.model.min(self.flag.unwrap_or(usize::MAX))
    }
}

/// A loaded model, ready to hand to the engine.
pub struct LoadedModel {
    pub executor: Box<dyn ModelExecutor>,
    pub tokenizer: Arc<Tokenizer>,
    /// Longest prompt + output: `limits.effective()`.
    pub max_context: usize,
    pub limits: ContextLimits,
    pub vocab_size: usize,
    /// Width of an input embedding (for `embedding_to_replace`).
    pub hidden_size: usize,
    /// Architecture name from the GGUF (`llama`, `gemma3`).
    pub architecture: String,
    /// The adapters this model serves (empty at load; registered by the caller), when LoRA
    /// serving is on.
    pub lora: Option<Arc<LoraRegistry>>,
    pub kv: KvSummary,
}

/// Loads a GGUF model file, or a Hugging Face folder (`config.json`, `tokenizer.json`,
/// `*.safetensors`), and its tokenizer.
pub fn load(path: &Path, opts: &RunnerOptions) -> anyhow::Result<LoadedModel> {
    let (file, tokenizer) = if cordial_model::hf::is_hf_dir(path) {
        let file = Arc::new(cordial_model::hf::load_dir(path)?);
        let tokenizer = Tokenizer::from_hf_dir(path).context("building the tokenizer")?;
        (file, tokenizer)
    } else {
        let file = Arc::new(GgufFile::open(path)?);
        let tokenizer = Tokenizer::from_gguf(&file).context("building the tokenizer")?;
        (file, tokenizer)
    };
    let model = Model::load_with(file.clone(), opts.compute)?;
    let cfg = model.config().clone();
    if tokenizer.vocab_size() > cfg.vocab {
        bail!(
            "the tokenizer has {} tokens but the model only {} logits",
            tokenizer.vocab_size(),
            cfg.vocab
        );
    }
    if opts.max_model_len == Some(0) {
        bail!("--max-model-len must be at least 1");
    }
    let num_blocks = opts.kv_cache_tokens.div_ceil(BLOCK_SIZE).max(1);
    let limits = ContextLimits {
        model: cfg.context,
        flag: opts.max_model_len,
        kv_tokens: num_blocks * BLOCK_SIZE,
    };
    let max_context = limits.effective();
    if max_context == 0 {
        bail!("the model's context length is 0");
    }
    // Sliding-window layers get a pool of their own holding each sequence's window (and a
    // prefill chunk): at most the main pool's size, which never runs short of it.
    let window = model.window();
    let window_blocks = (window > 0).then(|| {
        let per_seq = window.saturating_sub(1).div_ceil(BLOCK_SIZE) + 3;
        let chunk = opts.max_prefill_tokens.div_ceil(BLOCK_SIZE) + 1;
        (opts.max_num_seqs.max(1) * per_seq + chunk).min(num_blocks)
    });
    let kv = model
        .kv_cache(opts.kv_cache_dtype, num_blocks, window_blocks)
        .context("making the KV cache")?;
    let per_layer = kv.layer_bytes_per_token();
    let windowed = model.local_layers().len();
    let summary = KvSummary {
        dtype: opts.kv_cache_dtype,
        bytes_per_token: kv.main_block_bytes() / BLOCK_SIZE,
        layers: cfg.n_layers - if kv.window().is_some() { windowed } else { 0 },
        tokens: num_blocks * BLOCK_SIZE,
        window: kv.window().map(|w| {
            (
                w.window,
                per_layer * windowed,
                windowed,
                w.num_blocks * BLOCK_SIZE,
            )
        }),
    };
    tracing::info!("{summary}");
    let lora = opts.lora.clone().map(|(settings, names)| {
        Arc::new(LoraRegistry::new(
            model.lora_base().clone(),
            names,
            settings,
        ))
    });
    let executor = ModelRunner {
        model,
        kv,
        pool: ThreadPool::with_nice(opts.threads, opts.compute_nice),
        compute_nice: opts.compute_nice,
        scratch: Scratch::default(),
        max_context,
        lora: lora.clone(),
    };
    Ok(LoadedModel {
        executor: Box::new(executor),
        tokenizer: Arc::new(tokenizer),
        max_context,
        limits,
        vocab_size: cfg.vocab,
        hidden_size: cfg.hidden,
        architecture: cfg.arch.clone(),
        lora,
        kv: summary,
    })
}

/// The real model behind the engine (any architecture of [`Model`]): weights, KV bytes,
/// scratch buffers and the compute pool.
struct ModelRunner {
    model: Model,
    kv: KvCache,
    pool: ThreadPool,
    /// How far the pool's threads' nice value is raised; the engine thread's too.
    compute_nice: i32,
    scratch: Scratch,
    max_context: usize,
    lora: Option<Arc<LoraRegistry>>,
}

impl ModelRunner {
    /// The weights of every adapter the step uses, by id.
    fn step_adapters(
        &self,
        seqs: &[SeqStep<'_>],
    ) -> Result<Vec<(u32, Arc<LoraAdapter>)>, ModelError> {
        let mut out: Vec<(u32, Arc<LoraAdapter>)> = Vec::new();
        for l in seqs.iter().flat_map(|s| s.lora) {
            if out.iter().any(|(id, _)| *id == l.id) {
                continue;
            }
            let registry = self.lora.as_ref().ok_or_else(|| {
                ModelError("a request uses a LoRA adapter but LoRA serving is off".into())
            })?;
            out.push((l.id, registry.weights(l.id).map_err(ModelError)?));
        }
        Ok(out)
    }
}

impl ModelExecutor for ModelRunner {
    fn vocab_size(&self) -> usize {
        self.model.config().vocab
    }
    fn max_context(&self) -> usize {
        self.max_context
    }
    fn block_size(&self) -> usize {
        self.kv.block_size
    }
    fn num_blocks(&self) -> usize {
        self.kv.num_blocks
    }
    fn on_engine_thread(&mut self) {
        if self.compute_nice != 0 {
            if let Err(err) = cordial_model::raise_thread_nice(self.compute_nice) {
                tracing::warn!(%err, "the engine thread keeps its priority");
            }
        }
    }
    fn forward(&mut self, seqs: &[SeqStep<'_>], logits: &mut Vec<f32>) -> Result<(), ModelError> {
        let adapters = self.step_adapters(seqs)?;
        let weights = |id: u32| {
            adapters
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, w)| &**w)
                .ok_or_else(|| ModelError(format!("LoRA adapter {id} was not resolved")))
        };
        let uses: Vec<Vec<LoraUse<'_>>> = seqs
            .iter()
            .map(|s| {
                s.lora
                    .iter()
                    .map(|l| {
                        Ok(LoraUse {
                            adapter: weights(l.id)?,
                            scale: l.scale,
                        })
                    })
                    .collect::<Result<_, ModelError>>()
            })
            .collect::<Result<_, ModelError>>()?;
        let batch = Batch {
            seqs: seqs
                .iter()
                .zip(&uses)
                .map(|(s, lora)| SeqInput {
                    tokens: s.tokens,
                    start_pos: s.start_pos,
                    block_table: s.block_table,
                    window_table: s.window_table,
                    want_logits: s.want_logits,
                    all_logits: s.all_logits,
                    replace: s.replace,
                    lora,
                })
                .collect(),
        };
        self.model
            .forward(&self.pool, &batch, &mut self.kv, &mut self.scratch, logits)
            .map_err(|e| ModelError(e.to_string()))
    }
    fn copy_block(&mut self, src: u32, dst: u32) {
        self.kv.copy_block(src, dst);
    }
    fn window_pool(&self) -> Option<(usize, usize)> {
        self.kv.window().map(|w| (w.window, w.num_blocks))
    }
    fn copy_window_block(&mut self, src: u32, dst: u32) {
        self.kv.copy_window_block(src, dst);
    }
    fn kv_bytes_per_token(&self) -> (usize, usize) {
        let bs = self.kv.block_size;
        (
            self.kv.main_block_bytes() / bs,
            self.kv.window_block_bytes() / bs,
        )
    }
}
