//! LoRA adapters: small low-rank deltas on the base model's projection matrices, kept NEXT to
//! the (repacked) base weights, never merged into them. After an adapted projection
//! `y = W·x`, the rows of a sequence that uses adapter `a` at scale `s` get
//! `y += s · α · B(A·x)` (`A`: rank × n_in, `B`: n_out × rank, `α` the adapter's alpha / rank),
//! computed by the kernel table's `lora_shrink` / `lora_expand` (`backend/lora.rs` runs them
//! over a step's rows, grouped by adapter).
//!
//! Two file forms load into the same [`LoraAdapter`]:
//! - llama.cpp GGUF adapters (`gguf.rs`): `general.type = "adapter"`, `adapter.type = "lora"`,
//!   `adapter.lora.alpha`, tensors `<base tensor>.lora_a` / `.lora_b`;
//! - PEFT folders (`peft.rs`): `adapter_config.json` + `adapter_model.safetensors`, with the
//!   Hugging Face names mapped to ours and llama's Q/K row permutation applied to `B`.
//!
//! An adapter is checked against a [`LoraBase`] (the base model's architecture and the shapes
//! of its adaptable matrices) when it is loaded; every malformed case is a [`LoraError`] naming
//! the tensor or key. Factors stay at their file precision where the kernels read it (f32,
//! f16); bf16 and Q8_0 are widened to f32 (exactly).

mod gguf;
mod peft;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;

use crate::backend::cpu::LoraRows;
use crate::gguf::GgufFile;

/// The largest rank any adapter may have (the kernels' per-task buffer; `--max-lora-rank` is
/// checked below it).
pub const MAX_RANK: usize = 512;

/// A malformed or incompatible adapter; the message names the file, tensor or key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct LoraError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, LoraError> {
    Err(LoraError(msg.into()))
}

/// The projections an adapter may change, by their GGUF names (`blk.N.<name>.weight`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    /// Fused Q/K/V (phi3).
    Qkv,
    O,
    Gate,
    /// Up, or fused gate+up (phi3).
    Up,
    Down,
}

impl Proj {
    pub const ALL: [Proj; 8] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::Qkv,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];

    /// The GGUF tensor name's middle part.
    pub fn gguf(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::Qkv => "attn_qkv",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    /// `(layer, projection)` of a GGUF matrix name `blk.N.<proj>.weight`.
    pub fn parse(name: &str) -> Option<(usize, Proj)> {
        let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
        let (layer, proj) = rest.split_once('.')?;
        let proj = Proj::ALL.into_iter().find(|p| p.gguf() == proj)?;
        Some((layer.parse().ok()?, proj))
    }
}

/// What adapters are checked against: the base model's architecture, its adaptable matrices
/// (`blk.N.<proj>.weight` → `(n_out, n_in)`), and how Hugging Face rows map to ours.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraBase {
    /// `general.architecture` of the base (a GGUF adapter must name the same).
    pub arch: String,
    pub n_layers: usize,
    shapes: BTreeMap<String, (usize, usize)>,
    /// Other matrices of the base (embedding, output head): named in the error when an
    /// adapter targets them.
    others: Vec<String>,
    /// Llama's Q/K row permutation for NORM RoPE, `(heads, kv_heads)`: applied to a PEFT
    /// adapter's `B` of `q_proj` / `k_proj` (llama.cpp's converter does the same).
    permute_qk: Option<(usize, usize)>,
    /// Gemma's norm names (for the Hugging Face name map).
    gemma: bool,
}

impl LoraBase {
    /// The base of a model file: every 2-D `blk.N.<proj>.weight` it has. `permute_qk` as for
    /// the file's architecture (llama: `(heads, kv_heads)`).
    pub fn of_file(
        f: &GgufFile,
        arch: &str,
        n_layers: usize,
        permute_qk: Option<(usize, usize)>,
    ) -> LoraBase {
        let mut shapes = BTreeMap::new();
        let mut others = Vec::new();
        for t in &f.tensors {
            match (Proj::parse(&t.name), t.dims.as_slice()) {
                (Some(_), [cols, rows]) => {
                    shapes.insert(t.name.clone(), (*rows as usize, *cols as usize));
                }
                (None, [_, _]) => others.push(t.name.clone()),
                _ => {}
            }
        }
        if !others.iter().any(|n| n == "output.weight") {
            others.push("output.weight".into());
        }
        LoraBase {
            arch: arch.to_string(),
            n_layers,
            shapes,
            others,
            permute_qk,
            gemma: arch == "gemma3",
        }
    }

    /// `(n_out, n_in)` of an adaptable matrix, or why it cannot be adapted.
    fn shape(&self, name: &str) -> Result<(usize, usize), LoraError> {
        if let Some(&s) = self.shapes.get(name) {
            return Ok(s);
        }
        if self.others.iter().any(|n| n == name) {
            return err(format!(
                "LoRA on `{name}` is not supported (only the layers' attention and \
                 feed-forward projections are adapted)"
            ));
        }
        err(format!(
            "`{name}` does not exist in the base model ({} layers)",
            self.n_layers
        ))
    }

    /// A fingerprint of everything an adapter is checked against.
    fn key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.arch.hash(&mut h);
        self.n_layers.hash(&mut h);
        self.shapes.hash(&mut h);
        h.finish()
    }
}

/// One factor in memory: f32, or f16 as raw bits.
#[derive(Debug, Clone, PartialEq)]
pub enum Factor {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

impl Factor {
    pub fn rows(&self) -> LoraRows<'_> {
        match self {
            Factor::F32(v) => LoraRows::F32(v),
            Factor::F16(v) => LoraRows::F16(v),
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Factor::F32(v) => 4 * v.len(),
            Factor::F16(v) => 2 * v.len(),
        }
    }

    /// Element `i` as f32.
    fn at(&self, i: usize) -> f32 {
        match self {
            Factor::F32(v) => v[i],
            Factor::F16(v) => half::f16::from_bits(v[i]).to_f32(),
        }
    }

    /// The `rows` × `cols` matrix transposed (`cols` × `rows`).
    fn transposed(&self, rows: usize, cols: usize) -> Factor {
        fn t<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
            (0..cols)
                .flat_map(|c| (0..rows).map(move |r| v[r * cols + c]))
                .collect()
        }
        match self {
            Factor::F32(v) => Factor::F32(t(v, rows, cols)),
            Factor::F16(v) => Factor::F16(t(v, rows, cols)),
        }
    }

    /// Llama's permutation of the `rows` rows (each `width` wide) within each of `heads` heads:
    /// row `2i` takes row `i` and row `2i+1` takes row `i + head_dim/2`.
    fn permuted_rows(&self, rows: usize, width: usize, heads: usize) -> Factor {
        fn p<T: Copy>(v: &[T], rows: usize, width: usize, heads: usize) -> Vec<T> {
            let hd = rows / heads.max(1);
            let src_row = |d: usize| {
                let (h, i) = (d / hd, d % hd);
                h * hd + if i % 2 == 0 { i / 2 } else { i / 2 + hd / 2 }
            };
            (0..rows)
                .flat_map(|d| {
                    let s = src_row(d);
                    v[s * width..(s + 1) * width].iter().copied()
                })
                .collect()
        }
        match self {
            Factor::F32(v) => Factor::F32(p(v, rows, width, heads)),
            Factor::F16(v) => Factor::F16(p(v, rows, width, heads)),
        }
    }
}

/// The delta of one matrix: `y += s · alpha_scale · Bᵀ(A·x)` with `A` rank × n_in and `bt`
/// (`B` transposed) rank × n_out.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraMat {
    pub rank: usize,
    pub n_in: usize,
    pub n_out: usize,
    pub a: Factor,
    pub bt: Factor,
    /// alpha / rank (GGUF with alpha 0: 1; PEFT with `use_rslora`: alpha / √rank).
    pub alpha_scale: f32,
}

/// A loaded adapter (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraAdapter {
    /// SHA-256 of the adapter's files (its content, not its name).
    pub digest: [u8; 32],
    /// "gguf" or "peft".
    pub format: &'static str,
    base_key: u64,
    /// Per layer, per [`Proj`] (in `Proj::ALL` order).
    layers: Vec<[Option<LoraMat>; 8]>,
}

/// A matrix's two factors as read from a file, before the checks: `A` (rank × n_in) and `B`
/// (n_out × rank, in the base's row order).
struct RawPair {
    a: Factor,
    b: Factor,
    a_shape: (usize, usize),
    b_shape: (usize, usize),
}

impl LoraAdapter {
    /// Loads a PEFT folder (a directory) or a llama.cpp GGUF adapter (a file), checked against
    /// `base`, refusing ranks above `max_rank`.
    pub fn load(path: &Path, base: &LoraBase, max_rank: usize) -> Result<LoraAdapter, LoraError> {
        if path.is_dir() {
            peft::load(path, base, max_rank)
        } else if path.exists() {
            gguf::load(path, base, max_rank)
        } else {
            err(format!("{} does not exist", path.display()))
        }
    }

    /// Builds an adapter from checked pairs (`(gguf matrix name, pair, alpha_scale)`).
    fn assemble(
        digest: [u8; 32],
        format: &'static str,
        base: &LoraBase,
        max_rank: usize,
        pairs: Vec<(String, RawPair, AlphaRule)>,
    ) -> Result<LoraAdapter, LoraError> {
        if pairs.is_empty() {
            return err("the adapter has no LoRA tensors");
        }
        let mut layers: Vec<[Option<LoraMat>; 8]> =
            (0..base.n_layers).map(|_| Default::default()).collect();
        for (name, p, alpha) in pairs {
            let (n_out, n_in) = base.shape(&name)?;
            let (layer, proj) = Proj::parse(&name).expect("adaptable names parse");
            let (rank, a_in) = p.a_shape;
            let (b_out, b_rank) = p.b_shape;
            if a_in != n_in || b_out != n_out {
                return err(format!(
                    "`{name}`: LoRA A is {rank}×{a_in} and B {b_out}×{b_rank}, but the base \
                     matrix is {n_out}×{n_in} (hint: maybe LoRA A/B are transposed)"
                ));
            }
            if rank != b_rank || rank == 0 {
                return err(format!(
                    "`{name}`: LoRA A has rank {rank} but B has rank {b_rank}"
                ));
            }
            if rank > max_rank.min(MAX_RANK) {
                return err(format!(
                    "`{name}` has rank {rank}, above the maximum LoRA rank {} (--max-lora-rank)",
                    max_rank.min(MAX_RANK)
                ));
            }
            let alpha_scale = alpha
                .scale(rank)
                .map_err(|e| LoraError(format!("`{name}`: {e}")))?;
            for (which, f) in [("A", &p.a), ("B", &p.b)] {
                if let Some(i) = (0..rank * if which == "A" { n_in } else { n_out })
                    .find(|&i| !f.at(i).is_finite())
                {
                    return err(format!(
                        "`{name}`: LoRA {which} has a non-finite value at element {i}"
                    ));
                }
            }
            let slot = &mut layers[layer][proj as usize];
            if slot.is_some() {
                return err(format!("`{name}` is adapted twice"));
            }
            *slot = Some(LoraMat {
                rank,
                n_in,
                n_out,
                a: p.a,
                bt: p.b.transposed(n_out, rank),
                alpha_scale,
            });
        }
        Ok(LoraAdapter {
            digest,
            format,
            base_key: base.key(),
            layers,
        })
    }

    /// The delta of `proj` in `layer`, if the adapter changes it.
    pub fn mat(&self, layer: usize, proj: Proj) -> Option<&LoraMat> {
        self.layers.get(layer)?[proj as usize].as_ref()
    }

    /// Whether it was loaded for (a model with the same shapes as) `base`.
    pub fn fits(&self, base: &LoraBase) -> bool {
        self.base_key == base.key()
    }

    /// The largest rank of its matrices.
    pub fn rank(&self) -> usize {
        self.mats().map(|m| m.rank).max().unwrap_or(0)
    }

    /// Bytes its factors take in memory.
    pub fn bytes(&self) -> usize {
        self.mats().map(|m| m.a.bytes() + m.bt.bytes()).sum()
    }

    /// Matrices it adapts.
    pub fn num_mats(&self) -> usize {
        self.mats().count()
    }

    fn mats(&self) -> impl Iterator<Item = &LoraMat> {
        self.layers.iter().flatten().flatten()
    }

    /// The digest as lowercase hex.
    pub fn digest_hex(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How a matrix's alpha scale follows from its rank.
#[derive(Debug, Clone, Copy)]
enum AlphaRule {
    /// llama.cpp: alpha / rank, or 1 when alpha is 0.
    Gguf(f32),
    /// PEFT: alpha / rank, or alpha / √rank with `use_rslora`.
    Peft { alpha: f32, rslora: bool },
}

impl AlphaRule {
    fn scale(self, rank: usize) -> Result<f32, String> {
        let s = match self {
            AlphaRule::Gguf(0.0) => 1.0,
            AlphaRule::Gguf(a) => a / rank as f32,
            AlphaRule::Peft {
                alpha,
                rslora: false,
            } => alpha / rank as f32,
            AlphaRule::Peft {
                alpha,
                rslora: true,
            } => alpha / (rank as f32).sqrt(),
        };
        if s.is_finite() {
            Ok(s)
        } else {
            Err(format!("the alpha scale {s} is not finite"))
        }
    }
}

/// SHA-256 of byte strings, each prefixed by its length (so file boundaries count).
fn digest(parts: &[&[u8]]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests;
