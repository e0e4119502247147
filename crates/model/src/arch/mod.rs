//! Architectures: one decoder (`decoder.rs`) shaped by a spec per architecture (`spec.rs`,
//! with the registry), written against the backend's small interface (matmul on quantized
//! weights, RMSNorm, RoPE, paged attention, activations). This file holds what they share:
//! the configuration, weights in the mapped file, the batch, scratch buffers, embedding and
//! output head, and [`Model`].

pub mod decoder;
pub mod spec;

use std::sync::Arc;

use crate::backend::attention::{AttnScratch, TokenPlace};
use crate::backend::cpu::Compute;
use crate::backend::lora::LoraUse;
use crate::backend::matmul::{matmul, Acts, MatJob};
use crate::backend::ops::{rmsnorm, softcap};
use crate::backend::pool::ThreadPool;
use crate::gguf::{GgufError, GgufFile};
use crate::kv::{KvCache, KvDtype, WindowPool};
use crate::quant::repack::Packed;
use crate::quant::{dequantize_row, GgmlType, QuantizedActs};
use spec::ArchSpec;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture `{0}` (supported: {supported})", supported = spec::gguf_names().join(", "))]
    UnsupportedArchitecture(String),
    #[error("tensor `{name}` has shape {found:?}, expected [{cols}, {rows}]")]
    Shape {
        name: String,
        found: Vec<u64>,
        rows: usize,
        cols: usize,
    },
    #[error("invalid model: {0}")]
    Invalid(String),
    #[error("invalid batch: {0}")]
    Batch(String),
    #[error(transparent)]
    Kv(#[from] crate::kv::KvError),
}

/// Hyper-parameters read from GGUF metadata.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub arch: String,
    pub n_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
    pub eps: f32,
    pub rope_base: f32,
    pub rope_dims: usize,
}

impl ModelConfig {
    pub fn from_gguf(f: &GgufFile, arch: &str) -> Result<ModelConfig, ModelError> {
        let u = |k: &str| f.get_u64(&format!("{arch}.{k}")).map(|v| v as usize);
        let hidden = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let n_kv_heads = u("attention.head_count_kv").unwrap_or(n_heads);
        if n_heads == 0 || n_kv_heads == 0 || n_heads % n_kv_heads != 0 || hidden % n_heads != 0 {
            return Err(ModelError::Invalid(format!(
                "{n_heads} heads, {n_kv_heads} KV heads, width {hidden}"
            )));
        }
        let head_dim = u("attention.key_length").unwrap_or(hidden / n_heads);
        let vocab = match u("vocab_size") {
            Ok(v) => v,
            Err(_) => f.get_array("tokenizer.ggml.tokens")?.len(),
        };
        let cfg = ModelConfig {
            arch: arch.to_string(),
            n_layers: u("block_count")?,
            hidden,
            ffn: u("feed_forward_length")?,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab,
            context: u("context_length")?,
            eps: f.get_f32(&format!("{arch}.attention.layer_norm_rms_epsilon"))?,
            rope_base: f
                .get_f32(&format!("{arch}.rope.freq_base"))
                .unwrap_or(10000.0),
            rope_dims: u("rope.dimension_count").unwrap_or(head_dim),
        };
        if cfg.rope_dims != head_dim || head_dim % 2 != 0 {
            return Err(ModelError::Invalid(format!(
                "partial rotary ({} of {head_dim} dims) is not supported",
                cfg.rope_dims
            )));
        }
        Ok(cfg)
    }
}

/// A weight matrix in the mapped file: `rows` rows of `cols` elements.
#[derive(Debug, Clone)]
pub struct Weight {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    offset: usize,
    size: usize,
    /// The same weights repacked for the kernel level (`quant::repack`), when it reads a
    /// repacked layout.
    pub packed: Option<Arc<Packed>>,
}

impl Weight {
    pub fn load(f: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Weight, ModelError> {
        let info = f.tensor_info(name)?;
        let ok = match info.dims.as_slice() {
            [c] => rows == 1 && *c as usize == cols,
            [c, r] => *c as usize == cols && *r as usize == rows,
            _ => false,
        };
        if !ok {
            return Err(ModelError::Shape {
                name: name.into(),
                found: info.dims.clone(),
                rows,
                cols,
            });
        }
        if info.ty == GgmlType::BF16 && rows > 1 {
            return Err(ModelError::Invalid(format!(
                "tensor `{name}` is a BF16 matrix: convert the model to F16, F32 or a quantized type"
            )));
        }
        if !cols.is_multiple_of(info.ty.block_elems()) {
            return Err(ModelError::Invalid(format!(
                "tensor `{name}`: rows of {cols} are not whole blocks"
            )));
        }
        Ok(Weight {
            ty: info.ty,
            rows,
            cols,
            offset: info.offset as usize,
            size: info.size as usize,
            packed: None,
        })
    }
    pub fn data<'f>(&self, f: &'f GgufFile) -> &'f [u8] {
        let all = f.tensor_data_at(self.offset, self.size);
        debug_assert_eq!(all.len(), self.size);
        all
    }
    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }
    pub fn row<'f>(&self, f: &'f GgufFile, r: usize) -> &'f [u8] {
        let rb = self.row_bytes();
        &self.data(f)[r * rb..(r + 1) * rb]
    }
    /// Bytes a pass over the matrix reads: the repacked form's, or the file's.
    pub fn bytes(&self) -> usize {
        self.packed.as_ref().map_or(self.size, |p| p.bytes())
    }
    pub fn job<'a>(&'a self, f: &'a GgufFile, out: &'a mut [f32]) -> MatJob<'a> {
        MatJob {
            w: self.data(f),
            ty: self.ty,
            rows: self.rows,
            cols: self.cols,
            out,
            packed: self.packed.as_deref(),
        }
    }

    /// Repacks the weights into the layout of `cx`'s kernels when it has one and the type has
    /// a repacked form, then lets the kernel drop the mapped GGUF pages of the tensor from our
    /// resident memory (they stay in the page cache).
    pub fn repack(&mut self, f: &GgufFile, cx: Compute) {
        let Some(spec) = cx.pack() else {
            return;
        };
        if let Some(p) = Packed::new(spec, self.ty, self.rows, self.cols, self.data(f)) {
            self.packed = Some(Arc::new(p));
            f.release_range(self.offset, self.size);
        }
    }
}

/// One sequence's share of a step (see `cordial_engine::SeqStep`).
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub start_pos: usize,
    pub block_table: &'a [u32],
    /// Window-pool blocks by position block (`crate::kv::NO_BLOCK` for blocks the window has
    /// left), for the layers a cache with a window pool keeps there; empty otherwise.
    pub window_table: &'a [u32],
    pub want_logits: bool,
    /// Return a logits row for every token of `tokens` (prompt scoring, teacher forcing).
    pub all_logits: bool,
    /// Input embeddings replacing the token embedding at these absolute positions.
    pub replace: &'a [(usize, Vec<f32>)],
    /// LoRA adapters applied to this sequence's rows, in this order (empty: the base model;
    /// a zero scale is the base model too).
    pub lora: &'a [LoraUse<'a>],
}

pub struct Batch<'a> {
    pub seqs: Vec<SeqInput<'a>>,
}

impl<'a> Batch<'a> {
    /// Checks ids, positions, block coverage and replacement widths; returns each token's place.
    pub(crate) fn validate(
        &self,
        c: &ModelConfig,
        kv: &KvCache,
    ) -> Result<Vec<TokenPlace<'a>>, ModelError> {
        if kv.n_layers != c.n_layers || kv.kv_dim != c.n_kv_heads * c.head_dim {
            return Err(ModelError::Batch(format!(
                "the KV cache is shaped for {} layers × {} floats, the model has {} × {}",
                kv.n_layers,
                kv.kv_dim,
                c.n_layers,
                c.n_kv_heads * c.head_dim
            )));
        }
        let mut places = Vec::new();
        for (si, s) in self.seqs.iter().enumerate() {
            let end = s.start_pos + s.tokens.len();
            if end > c.context {
                return Err(ModelError::Batch(format!(
                    "sequence {si} reaches position {end}, past the context {}",
                    c.context
                )));
            }
            if end > s.block_table.len() * kv.block_size {
                return Err(ModelError::Batch(format!(
                    "sequence {si}: block table covers {} positions, needs {end}",
                    s.block_table.len() * kv.block_size
                )));
            }
            if let Some(b) = s.block_table.iter().find(|&&b| b as usize >= kv.num_blocks) {
                return Err(ModelError::Batch(format!(
                    "sequence {si}: block {b} out of range"
                )));
            }
            if let Some(w) = kv.window() {
                // The window table must hold every block the step's tokens see in a windowed
                // layer: from the first token's window start to the last token.
                let first = (s.start_pos + 1).saturating_sub(w.window) / kv.block_size;
                let need = end.div_ceil(kv.block_size);
                let ok = s.window_table.len() >= need
                    && s.window_table[first.min(need)..need]
                        .iter()
                        .all(|&b| (b as usize) < w.num_blocks);
                if !ok && !s.tokens.is_empty() {
                    return Err(ModelError::Batch(format!(
                        "sequence {si}: window block table does not cover positions {}..{end} \
                         and their window",
                        s.start_pos
                    )));
                }
            }
            if let Some(t) = s.tokens.iter().find(|&&t| t as usize >= c.vocab) {
                return Err(ModelError::Batch(format!(
                    "sequence {si}: token {t} outside the vocabulary of {}",
                    c.vocab
                )));
            }
            if s.replace.iter().any(|(_, e)| e.len() != c.hidden) {
                return Err(ModelError::Batch(format!(
                    "sequence {si}: replacement embeddings must have {} floats",
                    c.hidden
                )));
            }
            places.extend((s.start_pos..end).map(|pos| TokenPlace {
                block_table: s.block_table,
                window_table: s.window_table,
                pos,
            }));
        }
        Ok(places)
    }
}

/// Buffers reused every step (grown, never shrunk): no allocation per op.
#[derive(Default)]
pub struct Scratch {
    pub x: Vec<f32>,
    pub xn: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub attn: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// Output of a fused matrix (phi3's QKV and gate-up) before it is split (grown on use).
    pub fused: Vec<f32>,
    /// A second rope table (gemma3's sliding-window layers use another base).
    pub cos2: Vec<f32>,
    pub sin2: Vec<f32>,
    pub xq: QuantizedActs,
    pub attn_scratch: AttnScratch,
}

impl Scratch {
    pub fn prepare(&mut self, t: usize, c: &ModelConfig, threads: usize) {
        let grow = |v: &mut Vec<f32>, n: usize| {
            if v.len() < n {
                v.resize(n, 0.0)
            }
        };
        let (qd, kvd) = (c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim);
        grow(&mut self.x, t * c.hidden);
        grow(&mut self.xn, t * c.hidden.max(qd));
        grow(&mut self.q, t * qd);
        grow(&mut self.k, t * kvd);
        grow(&mut self.v, t * kvd);
        grow(&mut self.attn, t * qd);
        grow(&mut self.gate, t * c.ffn);
        grow(&mut self.up, t * c.ffn);
        grow(&mut self.cos, t * c.head_dim / 2);
        grow(&mut self.sin, t * c.head_dim / 2);
        grow(&mut self.cos2, t * c.head_dim / 2);
        grow(&mut self.sin2, t * c.head_dim / 2);
        self.attn_scratch.prepare(threads);
    }
}

/// A norm weight vector, dequantized.
pub(crate) fn load_f32(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, ModelError> {
    let w = Weight::load(file, name, 1, len)?;
    let mut v = vec![0.0; len];
    dequantize_row(w.ty, w.data(file), &mut v);
    Ok(v)
}

/// The batch's token embeddings into `x` (`t` × `d`), multiplied by `scale`; caller-provided
/// replacement embeddings are taken as they are (llama.cpp scales only token embeddings).
pub(crate) fn embed(f: &GgufFile, table: &Weight, batch: &Batch<'_>, scale: f32, x: &mut [f32]) {
    let d = table.cols;
    let mut ti = 0;
    for seq in &batch.seqs {
        for (i, &tok) in seq.tokens.iter().enumerate() {
            let row = &mut x[ti * d..(ti + 1) * d];
            let pos = seq.start_pos + i;
            match seq.replace.iter().find(|(p, _)| *p == pos) {
                Some((_, e)) => row.copy_from_slice(e),
                None => {
                    dequantize_row(table.ty, table.row(f, tok as usize), row);
                    if scale != 1.0 {
                        row.iter_mut().for_each(|v| *v *= scale);
                    }
                }
            }
            ti += 1;
        }
    }
}

/// The output head: final RMSNorm and the output matrix for the last token of each sequence
/// that wants logits (every token with `all_logits`), then soft-capping when `cap > 0`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn output_logits(
    pool: &ThreadPool,
    cx: Compute,
    f: &GgufFile,
    batch: &Batch<'_>,
    s: &mut Scratch,
    out_norm: &[f32],
    eps: f32,
    output: &Weight,
    cap: f32,
    logits: &mut Vec<f32>,
) {
    let d = output.cols;
    let mut rows = 0;
    let mut ti = 0;
    for seq in &batch.seqs {
        let n = seq.tokens.len();
        let first = if seq.all_logits {
            ti
        } else if seq.want_logits {
            ti + n - 1
        } else {
            ti + n
        };
        for src in first..ti + n {
            let (x, xn) = (&s.x, &mut s.xn);
            rmsnorm(
                cx.kernels(),
                &x[src * d..(src + 1) * d],
                out_norm,
                eps,
                &mut xn[rows * d..(rows + 1) * d],
            );
            rows += 1;
        }
        ti += n;
    }
    logits.clear();
    if rows == 0 {
        return;
    }
    logits.resize(rows * output.rows, 0.0);
    let x = Acts::quantized(pool, cx, &s.xn[..rows * d], &mut s.xq, rows);
    matmul(pool, cx, &x, &mut [output.job(f, logits)]);
    if cap > 0.0 {
        softcap(logits, cap);
    }
}

/// A loaded model of any registered architecture, with the weights laid out for the kernel
/// level it was loaded for.
pub struct Model {
    decoder: decoder::Decoder,
    cx: Compute,
}

impl Model {
    /// Loads the architecture that `general.architecture` names, for the fastest kernels of
    /// this CPU.
    pub fn load(file: Arc<GgufFile>) -> Result<Model, ModelError> {
        Self::load_with(file, Compute::best())
    }

    /// Loads for the kernels of `cx` (weights repacked for them when they read a repacked
    /// layout).
    pub fn load_with(file: Arc<GgufFile>, cx: Compute) -> Result<Model, ModelError> {
        let arch = file.get_str("general.architecture")?.to_string();
        let spec = spec::by_gguf(&arch).ok_or(ModelError::UnsupportedArchitecture(arch))?;
        Ok(Model {
            decoder: decoder::Decoder::load(file, spec, cx)?,
            cx,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.decoder.config
    }

    /// The same model loaded again from its file for other kernels (tests compare levels).
    pub fn reload(&self, cx: Compute) -> Result<Model, ModelError> {
        Model::load_with(self.decoder.file().clone(), cx)
    }

    /// The architecture.
    pub fn spec(&self) -> &'static ArchSpec {
        self.decoder.spec()
    }

    /// How this model computes (fixed at load).
    pub fn compute(&self) -> Compute {
        self.cx
    }

    /// Layers with a sliding window (for tests and diagnostics).
    pub fn local_layers(&self) -> Vec<usize> {
        self.decoder.local_layers()
    }

    /// What LoRA adapters for this model are checked against (architecture, matrix shapes).
    pub fn lora_base(&self) -> &crate::lora::LoraBase {
        self.decoder.lora_base()
    }

    /// Positions a sliding-window layer sees; 0 when the model has none.
    pub fn window(&self) -> usize {
        if self.local_layers().is_empty() {
            0
        } else {
            self.decoder.window()
        }
    }

    /// A KV cache shaped for this model: `num_blocks` blocks of `dtype` for every layer, or,
    /// with `window_blocks` and sliding-window layers, those layers in a pool of
    /// `window_blocks` blocks of their own (named by the sequences' window tables) and the
    /// others in the `num_blocks` main blocks.
    pub fn kv_cache(
        &self,
        dtype: KvDtype,
        num_blocks: usize,
        window_blocks: Option<usize>,
    ) -> Result<KvCache, ModelError> {
        let c = self.config();
        let local = self.local_layers();
        let window = match window_blocks {
            Some(n) if !local.is_empty() => Some(WindowPool {
                window: self.window(),
                num_blocks: n,
                layers: (0..c.n_layers).map(|l| local.contains(&l)).collect(),
            }),
            _ => None,
        };
        Ok(KvCache::with_window(
            c.n_layers,
            c.n_kv_heads,
            c.head_dim,
            dtype,
            num_blocks,
            window,
        )?)
    }

    /// Weight bytes one decode step reads: every layer matrix and the output head (not the
    /// embedding table, of which a step reads one row per token).
    pub fn weight_bytes_per_step(&self) -> usize {
        self.decoder.weight_bytes_per_step()
    }

    /// One forward step over the batch; appends a logits row per sequence that wants one.
    pub fn forward(
        &self,
        pool: &ThreadPool,
        batch: &Batch<'_>,
        kv: &mut KvCache,
        scratch: &mut Scratch,
        logits: &mut Vec<f32>,
    ) -> Result<(), ModelError> {
        self.decoder
            .forward(pool, self.cx, batch, kv, scratch, logits)
    }
}
