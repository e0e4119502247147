//! The bytes of the paged KV cache. Block accounting (which blocks a sequence owns) is the
//! engine's; this only stores K and V, f16, per layer, at `block * block_size + offset` slots.
//! Memory is allocated zeroed, so pages the cache never touches stay unresident.

use half::f16;

pub struct KvCache {
    pub block_size: usize,
    pub num_blocks: usize,
    pub n_layers: usize,
    /// Floats per slot per layer (n_kv_heads × head_dim).
    pub kv_dim: usize,
    k: Vec<Vec<u16>>,
    v: Vec<Vec<u16>>,
}

impl KvCache {
    pub fn new(n_layers: usize, kv_dim: usize, block_size: usize, num_blocks: usize) -> KvCache {
        let slots = block_size * num_blocks * kv_dim;
        KvCache {
            block_size,
            num_blocks,
            n_layers,
            kv_dim,
            k: (0..n_layers).map(|_| vec![0u16; slots]).collect(),
            v: (0..n_layers).map(|_| vec![0u16; slots]).collect(),
        }
    }

    /// Slot index of position `pos` of a sequence with `block_table`, or None if not covered.
    #[inline]
    pub fn slot(&self, block_table: &[u32], pos: usize) -> Option<usize> {
        let b = *block_table.get(pos / self.block_size)? as usize;
        (b < self.num_blocks).then(|| b * self.block_size + pos % self.block_size)
    }

    pub fn write(&mut self, layer: usize, slot: usize, k: &[f32], v: &[f32]) {
        let d = self.kv_dim;
        for (dst, src) in self.k[layer][slot * d..(slot + 1) * d].iter_mut().zip(k) {
            *dst = f16::from_f32(*src).to_bits();
        }
        for (dst, src) in self.v[layer][slot * d..(slot + 1) * d].iter_mut().zip(v) {
            *dst = f16::from_f32(*src).to_bits();
        }
    }

    #[inline]
    pub fn k_slot(&self, layer: usize, slot: usize) -> &[u16] {
        &self.k[layer][slot * self.kv_dim..(slot + 1) * self.kv_dim]
    }

    /// Keys of `count` consecutive slots from `slot` (one slice, for kernels that read rows
    /// of several positions).
    #[inline]
    pub fn k_slots(&self, layer: usize, slot: usize, count: usize) -> &[u16] {
        &self.k[layer][slot * self.kv_dim..(slot + count) * self.kv_dim]
    }

    /// Values of `count` consecutive slots from `slot`.
    #[inline]
    pub fn v_slots(&self, layer: usize, slot: usize, count: usize) -> &[u16] {
        &self.v[layer][slot * self.kv_dim..(slot + count) * self.kv_dim]
    }

    #[inline]
    pub fn v_slot(&self, layer: usize, slot: usize) -> &[u16] {
        &self.v[layer][slot * self.kv_dim..(slot + 1) * self.kv_dim]
    }

    /// Copies block `src` into block `dst` in every layer.
    pub fn copy_block(&mut self, src: u32, dst: u32) {
        let n = self.block_size * self.kv_dim;
        let (s, d) = (src as usize * n, dst as usize * n);
        if src == dst || src as usize >= self.num_blocks || dst as usize >= self.num_blocks {
            return;
        }
        for l in 0..self.n_layers {
            self.k[l].copy_within(s..s + n, d);
            self.v[l].copy_within(s..s + n, d);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paged_layout_and_copy() {
        let mut kv = KvCache::new(2, 4, 16, 8);
        let table = [5u32, 2, 7];
        assert_eq!(kv.slot(&table, 0), Some(80));
        assert_eq!(kv.slot(&table, 17), Some(33));
        assert_eq!(kv.slot(&table, 47), Some(127));
        assert_eq!(kv.slot(&table, 48), None, "past the table");
        assert_eq!(kv.slot(&[9], 0), None, "block out of range");
        kv.write(1, 33, &[1.0, 2.0, 3.0, 4.0], &[-1.0, -2.0, -3.0, 0.5]);
        kv.copy_block(2, 6);
        let s = 6 * 16 + 1;
        let back: Vec<f32> = kv
            .k_slot(1, s)
            .iter()
            .map(|b| f16::from_bits(*b).to_f32())
            .collect();
        assert_eq!(back, vec![1.0, 2.0, 3.0, 4.0]);
        let back: Vec<f32> = kv
            .v_slot(1, s)
            .iter()
            .map(|b| f16::from_bits(*b).to_f32())
            .collect();
        assert_eq!(back, vec![-1.0, -2.0, -3.0, 0.5]);
        assert!(
            kv.k_slot(0, s).iter().all(|&b| b == 0),
            "other layer untouched"
        );
    }
}
