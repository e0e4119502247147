//! The bytes of the paged KV cache. Block accounting (which blocks a sequence owns) is the
//! engine's; this only stores K and V, per layer, in blocks of [`KV_BLOCK`] positions.
//!
//! Two element types ([`KvDtype`]): f16, and q8_0 — int8 with one f16 scale per 32 elements of
//! a position's row, as llama.cpp's `-ctk q8_0 -ctv q8_0` — which halves the bytes. Both
//! dequantize to f32 exactly (an int8 times an f16 fits an f32's significand), so the attention
//! arithmetic after the load is the same for both.
//!
//! Layout: per layer, per KV head, per block, one region of keys and one of values
//! ([`KvBlock`]). Keys are stored transposed (`[head_dim][16]`: the 16 positions of a dimension
//! side by side) so that one vector load gives a dimension of 16 keys; values row by row
//! (`[16][head_dim]`). A head's blocks are consecutive, so a decode step streams them.
//!
//! Sliding-window layers can live in a second pool (`window`): blocks of their own, named by a
//! sequence's window block table, which only covers the positions the window still sees. The
//! global layers use the main pool. Without a window pool every layer uses the main pool.
//!
//! Memory is allocated zeroed, so pages the cache never touches stay unresident, and every
//! stored value is finite (f16 writes saturate): a masked position's zero attention weight then
//! contributes an exact zero.

use half::f16;

use crate::backend::cpu::KvBlock;

/// Positions per KV block (the attention kernels read 16 keys per vector pair).
pub const KV_BLOCK: usize = 16;

/// A block id that names no block: a window table's entries for positions the window has left.
pub const NO_BLOCK: u32 = u32::MAX;

/// Elements per q8_0 scale.
const Q8_GROUP: usize = 32;

/// How K and V are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvDtype {
    F16,
    /// int8 blocks of 32 elements with an f16 scale (llama.cpp's q8_0).
    Q8_0,
}

impl KvDtype {
    /// `--kv-cache-dtype` values: `auto` (= f16), `f16`, `q8_0`.
    pub fn parse(s: &str) -> Option<KvDtype> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" | "f16" | "fp16" | "float16" => Some(KvDtype::F16),
            "q8_0" => Some(KvDtype::Q8_0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F16 => "f16",
            KvDtype::Q8_0 => "q8_0",
        }
    }

    /// Bytes of one head's keys (or values) for one block of [`KV_BLOCK`] positions.
    pub fn head_block_bytes(self, head_dim: usize) -> usize {
        match self {
            KvDtype::F16 => KV_BLOCK * head_dim * 2,
            KvDtype::Q8_0 => KV_BLOCK * head_dim + KV_BLOCK * (head_dim / Q8_GROUP) * 2,
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A zeroed byte buffer in anonymous memory: page-aligned, and its pages stay unresident until
/// written, so a KV cache sized for many tokens costs memory only for the blocks in use. (The
/// global allocator's `alloc_zeroed` would write every byte for alignments above 16.)
struct Bytes {
    map: Option<memmap2::MmapMut>,
}

impl Bytes {
    fn zeroed(len: usize) -> Result<Bytes, KvError> {
        if len == 0 {
            return Ok(Bytes { map: None });
        }
        let map = memmap2::MmapMut::map_anon(len).map_err(|e| KvError::Memory {
            bytes: len,
            reason: e.to_string(),
        })?;
        Ok(Bytes { map: Some(map) })
    }

    fn get(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }

    fn get_mut(&mut self) -> &mut [u8] {
        self.map.as_deref_mut().unwrap_or(&mut [])
    }
}

/// `b` (even length, 2-aligned) as u16s.
fn as_u16(b: &[u8]) -> &[u16] {
    assert!(b.len().is_multiple_of(2) && (b.as_ptr() as usize).is_multiple_of(2));
    // SAFETY: length and alignment checked; every bit pattern is a valid u16.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const u16, b.len() / 2) }
}

fn as_i8(b: &[u8]) -> &[i8] {
    // SAFETY: same size and alignment; every bit pattern is a valid i8.
    unsafe { std::slice::from_raw_parts(b.as_ptr() as *const i8, b.len()) }
}

/// The window pool: which layers use it, how many blocks it has, the window it serves.
#[derive(Debug, Clone)]
pub struct WindowPool {
    /// Positions a windowed layer sees (its attention window).
    pub window: usize,
    pub num_blocks: usize,
    /// `layers[l]`: layer `l` is stored in the window pool.
    pub layers: Vec<bool>,
}

pub struct KvCache {
    /// Always [`KV_BLOCK`].
    pub block_size: usize,
    /// Blocks of the main pool.
    pub num_blocks: usize,
    pub n_layers: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Floats per position per layer (n_kv_heads × head_dim).
    pub kv_dim: usize,
    pub dtype: KvDtype,
    window: Option<WindowPool>,
    /// Bytes of one head's keys (= values) of one block.
    head_block: usize,
    k: Vec<Bytes>,
    v: Vec<Bytes>,
}

/// Why a KV cache cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error(
        "--kv-cache-dtype q8_0 needs a head size that is a multiple of 32 (this model's is {0})"
    )]
    Q8HeadDim(usize),
    #[error("the window pool names {got} layers, the model has {want}")]
    WindowLayers { got: usize, want: usize },
    #[error("cannot reserve {bytes} bytes of memory for the KV cache: {reason} (lower --kv-cache-tokens)")]
    Memory { bytes: usize, reason: String },
}

impl KvCache {
    /// A cache of `num_blocks` blocks for every layer.
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        dtype: KvDtype,
        num_blocks: usize,
    ) -> Result<KvCache, KvError> {
        Self::with_window(n_layers, n_kv_heads, head_dim, dtype, num_blocks, None)
    }

    /// A cache whose `window.layers` live in a pool of `window.num_blocks` blocks of their own.
    pub fn with_window(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        dtype: KvDtype,
        num_blocks: usize,
        window: Option<WindowPool>,
    ) -> Result<KvCache, KvError> {
        if dtype == KvDtype::Q8_0 && !head_dim.is_multiple_of(Q8_GROUP) {
            return Err(KvError::Q8HeadDim(head_dim));
        }
        if let Some(w) = &window {
            if w.layers.len() != n_layers {
                return Err(KvError::WindowLayers {
                    got: w.layers.len(),
                    want: n_layers,
                });
            }
        }
        let head_block = dtype.head_block_bytes(head_dim);
        let blocks_of = |l: usize| match &window {
            Some(w) if w.layers[l] => w.num_blocks,
            _ => num_blocks,
        };
        let bytes = |l: usize| Bytes::zeroed(n_kv_heads * blocks_of(l) * head_block);
        Ok(KvCache {
            block_size: KV_BLOCK,
            num_blocks,
            n_layers,
            n_kv_heads,
            head_dim,
            kv_dim: n_kv_heads * head_dim,
            dtype,
            head_block,
            k: (0..n_layers).map(bytes).collect::<Result<_, _>>()?,
            v: (0..n_layers).map(bytes).collect::<Result<_, _>>()?,
            window,
        })
    }

    /// The window pool, if the cache has one.
    pub fn window(&self) -> Option<&WindowPool> {
        self.window.as_ref()
    }

    /// Whether layer `l` is stored in the window pool (its positions named by window tables).
    #[inline]
    pub fn in_window_pool(&self, layer: usize) -> bool {
        self.window.as_ref().is_some_and(|w| w.layers[layer])
    }

    /// Blocks of the pool layer `l` lives in.
    pub fn blocks_of_layer(&self, layer: usize) -> usize {
        match &self.window {
            Some(w) if w.layers[layer] => w.num_blocks,
            _ => self.num_blocks,
        }
    }

    /// Bytes one block of the main pool takes (all its layers, K and V).
    pub fn main_block_bytes(&self) -> usize {
        let layers = (0..self.n_layers)
            .filter(|&l| !self.in_window_pool(l))
            .count();
        layers * 2 * self.n_kv_heads * self.head_block
    }

    /// Bytes one block of the window pool takes (0 without one).
    pub fn window_block_bytes(&self) -> usize {
        let layers = (0..self.n_layers)
            .filter(|&l| self.in_window_pool(l))
            .count();
        layers * 2 * self.n_kv_heads * self.head_block
    }

    /// KV bytes per position of a layer (K and V, all heads).
    pub fn layer_bytes_per_token(&self) -> usize {
        2 * self.n_kv_heads * self.head_block / KV_BLOCK
    }

    /// Bytes allocated for the whole cache (both pools).
    pub fn total_bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|b| b.get().len()).sum()
    }

    /// Slot index of position `pos` of a sequence with `block_table`, or None if not covered.
    #[inline]
    pub fn slot(&self, block_table: &[u32], pos: usize) -> Option<usize> {
        let b = *block_table.get(pos / self.block_size)? as usize;
        (b < self.num_blocks).then(|| b * self.block_size + pos % self.block_size)
    }

    fn region(&self, layer: usize, block: usize, head: usize) -> usize {
        (head * self.blocks_of_layer(layer) + block) * self.head_block
    }

    /// Stores the K and V rows (`kv_dim` floats each) of one position, at offset `at` of
    /// `block`, in layer `layer`'s pool.
    pub fn write(&mut self, layer: usize, block: usize, at: usize, k: &[f32], v: &[f32]) {
        assert!(at < KV_BLOCK && block < self.blocks_of_layer(layer));
        let (hd, hb, dtype) = (self.head_dim, self.head_block, self.dtype);
        for g in 0..self.n_kv_heads {
            let r = self.region(layer, block, g);
            let (kh, vh) = (&k[g * hd..(g + 1) * hd], &v[g * hd..(g + 1) * hd]);
            write_keys(dtype, &mut self.k[layer].get_mut()[r..r + hb], at, kh);
            write_values(dtype, &mut self.v[layer].get_mut()[r..r + hb], at, vh);
        }
    }

    fn block_view<'a>(&self, bytes: &'a [u8]) -> KvBlock<'a> {
        match self.dtype {
            KvDtype::F16 => KvBlock::F16(as_u16(bytes)),
            KvDtype::Q8_0 => {
                let (q, d) = bytes.split_at(KV_BLOCK * self.head_dim);
                KvBlock::Q8 {
                    q: as_i8(q),
                    d: as_u16(d),
                }
            }
        }
    }

    /// Head `head`'s keys of `block` in layer `layer` (`[head_dim][16]`, see [`KvBlock`]).
    #[inline]
    pub fn k_block(&self, layer: usize, block: usize, head: usize) -> KvBlock<'_> {
        let r = self.region(layer, block, head);
        self.block_view(&self.k[layer].get()[r..r + self.head_block])
    }

    /// Head `head`'s values of `block` in layer `layer` (`[16][head_dim]`).
    #[inline]
    pub fn v_block(&self, layer: usize, block: usize, head: usize) -> KvBlock<'_> {
        let r = self.region(layer, block, head);
        self.block_view(&self.v[layer].get()[r..r + self.head_block])
    }

    /// The stored K and V of one position (dequantized), for tests and diagnostics.
    pub fn read(&self, layer: usize, block: usize, at: usize) -> (Vec<f32>, Vec<f32>) {
        let hd = self.head_dim;
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for g in 0..self.n_kv_heads {
            k.extend((0..hd).map(|d| key_at(self.k_block(layer, block, g), d, at)));
            v.extend((0..hd).map(|d| value_at(self.v_block(layer, block, g), hd, at, d)));
        }
        (k, v)
    }

    /// Copies main-pool block `src` into block `dst` in every main-pool layer.
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        self.copy_in(src, dst, false);
    }

    /// Copies window-pool block `src` into block `dst` in every windowed layer.
    pub fn copy_window_block(&mut self, src: u32, dst: u32) {
        self.copy_in(src, dst, true);
    }

    fn copy_in(&mut self, src: u32, dst: u32, window: bool) {
        for l in 0..self.n_layers {
            let n = self.blocks_of_layer(l);
            if self.in_window_pool(l) != window
                || src == dst
                || src as usize >= n
                || dst as usize >= n
            {
                continue;
            }
            for g in 0..self.n_kv_heads {
                let (s, d) = (
                    self.region(l, src as usize, g),
                    self.region(l, dst as usize, g),
                );
                let hb = self.head_block;
                self.k[l].get_mut().copy_within(s..s + hb, d);
                self.v[l].get_mut().copy_within(s..s + hb, d);
            }
        }
    }
}

/// f16 bits of `x`, saturated to the finite range (so no stored value is infinite).
#[inline]
fn f16_bits(x: f32) -> u16 {
    f16::from_f32(x.clamp(-65504.0, 65504.0)).to_bits()
}

/// llama.cpp's q8_0 for 32 values: `d = amax / 127`, `q = round(x / d)`; `d` stored as f16.
fn quantize_group(x: &[f32], q: &mut [i8]) -> u16 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (o, v) in q.iter_mut().zip(x) {
        *o = (v * id).round().clamp(-127.0, 127.0) as i8;
    }
    f16_bits(d)
}

/// Writes one position's key row (`head_dim` floats) into a head's key region.
fn write_keys(dtype: KvDtype, region: &mut [u8], at: usize, k: &[f32]) {
    let hd = k.len();
    match dtype {
        KvDtype::F16 => {
            for (d, x) in k.iter().enumerate() {
                let i = 2 * (d * KV_BLOCK + at);
                region[i..i + 2].copy_from_slice(&f16_bits(*x).to_le_bytes());
            }
        }
        KvDtype::Q8_0 => {
            let mut q = [0i8; Q8_GROUP];
            for c in 0..hd / Q8_GROUP {
                let scale = quantize_group(&k[c * Q8_GROUP..(c + 1) * Q8_GROUP], &mut q);
                for (i, v) in q.iter().enumerate() {
                    region[(c * Q8_GROUP + i) * KV_BLOCK + at] = *v as u8;
                }
                let s = KV_BLOCK * hd + 2 * (c * KV_BLOCK + at);
                region[s..s + 2].copy_from_slice(&scale.to_le_bytes());
            }
        }
    }
}

/// Writes one position's value row into a head's value region.
fn write_values(dtype: KvDtype, region: &mut [u8], at: usize, v: &[f32]) {
    let hd = v.len();
    match dtype {
        KvDtype::F16 => {
            for (d, x) in v.iter().enumerate() {
                let i = 2 * (at * hd + d);
                region[i..i + 2].copy_from_slice(&f16_bits(*x).to_le_bytes());
            }
        }
        KvDtype::Q8_0 => {
            let groups = hd / Q8_GROUP;
            let mut q = [0i8; Q8_GROUP];
            for c in 0..groups {
                let scale = quantize_group(&v[c * Q8_GROUP..(c + 1) * Q8_GROUP], &mut q);
                let row = at * hd + c * Q8_GROUP;
                for (i, x) in q.iter().enumerate() {
                    region[row + i] = *x as u8;
                }
                let s = KV_BLOCK * hd + 2 * (at * groups + c);
                region[s..s + 2].copy_from_slice(&scale.to_le_bytes());
            }
        }
    }
}

/// Dimension `d` of the key at offset `j` of a key block, as f32 (the reference the kernels'
/// conversions are tested against).
pub fn key_at(b: KvBlock<'_>, d: usize, j: usize) -> f32 {
    match b {
        KvBlock::F16(h) => f16::from_bits(h[d * KV_BLOCK + j]).to_f32(),
        KvBlock::Q8 { q, d: s } => {
            f16::from_bits(s[(d / Q8_GROUP) * KV_BLOCK + j]).to_f32() * q[d * KV_BLOCK + j] as f32
        }
    }
}

/// Dimension `d` of the value at offset `j` of a value block, as f32.
pub fn value_at(b: KvBlock<'_>, head_dim: usize, j: usize, d: usize) -> f32 {
    match b {
        KvBlock::F16(h) => f16::from_bits(h[j * head_dim + d]).to_f32(),
        KvBlock::Q8 { q, d: s } => {
            f16::from_bits(s[j * (head_dim / Q8_GROUP) + d / Q8_GROUP]).to_f32()
                * q[j * head_dim + d] as f32
        }
    }
}

#[cfg(test)]
mod tests {
    /// Resident memory of this process, in bytes (Linux).
    #[cfg(target_os = "linux")]
    fn rss() -> usize {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb: usize = s
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    /// A cache sized for many tokens costs memory only for what is written: making a 1 GiB
    /// cache and writing one block leaves the process's resident memory far below 1 GiB more (other
    /// tests of this binary may run meanwhile, hence the margin).
    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_cache_is_resident_only_where_written() {
        let before = rss();
        // 4 layers × 8 KV heads × 64 dims, f16: 8 KiB per position; 131,072 positions = 1 GiB.
        let mut kv = KvCache::new(4, 8, 64, KvDtype::F16, 8192).unwrap();
        let row = vec![0.5f32; 8 * 64];
        kv.write(0, 3, 0, &row, &row);
        let grown = rss().saturating_sub(before);
        assert!(
            grown < 256 << 20,
            "a 1 GiB KV cache made {} MiB resident",
            grown >> 20
        );
        drop(kv);
    }

    use super::*;

    #[test]
    fn paged_layout_and_copy() {
        let mut kv = KvCache::new(2, 2, 32, KvDtype::F16, 8).unwrap();
        let table = [5u32, 2, 7];
        assert_eq!(kv.slot(&table, 0), Some(80));
        assert_eq!(kv.slot(&table, 17), Some(33));
        assert_eq!(kv.slot(&table, 47), Some(127));
        assert_eq!(kv.slot(&table, 48), None, "past the table");
        assert_eq!(kv.slot(&[9], 0), None, "block out of range");
        let k: Vec<f32> = (0..64).map(|i| i as f32 - 20.5).collect();
        let v: Vec<f32> = (0..64).map(|i| 0.25 * i as f32).collect();
        kv.write(1, 2, 1, &k, &v);
        kv.copy_block(2, 6);
        assert_eq!(kv.read(1, 6, 1), (k.clone(), v.clone()));
        let (k0, v0) = kv.read(0, 6, 1);
        assert!(
            k0.iter().chain(&v0).all(|&x| x == 0.0),
            "other layer untouched"
        );
        let (k2, _) = kv.read(1, 6, 2);
        assert!(k2.iter().all(|&x| x == 0.0), "other position untouched");
        assert_eq!(kv.layer_bytes_per_token(), 2 * 2 * 32 * 2);
        assert_eq!(kv.main_block_bytes(), 2 * 16 * kv.layer_bytes_per_token());
    }

    #[test]
    fn f16_writes_saturate() {
        let mut kv = KvCache::new(1, 1, 32, KvDtype::F16, 1).unwrap();
        let k = vec![1e9f32; 32];
        let v = vec![-1e9f32; 32];
        kv.write(0, 0, 3, &k, &v);
        let (k, v) = kv.read(0, 0, 3);
        assert!(k.iter().all(|&x| x == 65504.0) && v.iter().all(|&x| x == -65504.0));
    }

    #[test]
    fn q8_0_round_trips_within_half_a_step_and_halves_the_bytes() {
        let (hd, heads) = (64, 3);
        let mut kv = KvCache::new(1, heads, hd, KvDtype::Q8_0, 2).unwrap();
        let f16kv = KvCache::new(1, heads, hd, KvDtype::F16, 2).unwrap();
        assert_eq!(f16kv.layer_bytes_per_token(), 2 * heads * hd * 2);
        assert_eq!(kv.layer_bytes_per_token(), 2 * heads * (hd + hd / 32 * 2));
        let k: Vec<f32> = (0..heads * hd)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.01)
            .collect();
        let v: Vec<f32> = (0..heads * hd)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) * 0.3)
            .collect();
        kv.write(0, 1, 15, &k, &v);
        let (kb, vb) = kv.read(0, 1, 15);
        for (x, y) in [(&k, &kb), (&v, &vb)] {
            for g in 0..heads * hd / 32 {
                let amax = x[g * 32..(g + 1) * 32]
                    .iter()
                    .fold(0.0f32, |m, v| m.max(v.abs()));
                for i in g * 32..(g + 1) * 32 {
                    assert!(
                        (x[i] - y[i]).abs() <= amax / 127.0 * 0.51,
                        "{i}: {} vs {}",
                        x[i],
                        y[i]
                    );
                }
            }
        }
        assert!(matches!(
            KvCache::new(1, 1, 16, KvDtype::Q8_0, 1),
            Err(KvError::Q8HeadDim(16))
        ));
        assert_eq!(KvDtype::parse("auto"), Some(KvDtype::F16));
        assert_eq!(KvDtype::parse("Q8_0"), Some(KvDtype::Q8_0));
        assert_eq!(KvDtype::parse("q4_0"), None);
    }

    #[test]
    fn window_pool_holds_its_layers_in_blocks_of_its_own() {
        let w = WindowPool {
            window: 32,
            num_blocks: 3,
            layers: vec![true, false, true],
        };
        let mut kv = KvCache::with_window(3, 1, 32, KvDtype::F16, 10, Some(w)).unwrap();
        assert_eq!((kv.blocks_of_layer(0), kv.blocks_of_layer(1)), (3, 10));
        assert_eq!(kv.main_block_bytes(), kv.layer_bytes_per_token() * 16);
        assert_eq!(kv.window_block_bytes(), 2 * kv.layer_bytes_per_token() * 16);
        let x = vec![1.5f32; 32];
        kv.write(0, 2, 0, &x, &x);
        kv.copy_window_block(2, 0);
        kv.copy_block(2, 0);
        assert_eq!(kv.read(0, 0, 0).0, x);
        assert!(kv.read(1, 0, 0).0.iter().all(|&v| v == 0.0));
        assert_eq!(
            kv.total_bytes(),
            3 * kv.layer_bytes_per_token() * 16 * 2 + 10 * kv.layer_bytes_per_token() * 16
        );
    }
}
