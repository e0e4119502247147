//! Weights repacked at load for the vector kernels: `R` rows (8 for 256-bit kernels, 16 for
//! 512-bit ones) interleaved in 4-byte chunks, so one vector load holds the same four elements
//! of all `R` rows and a broadcast of the activation's four bytes multiplies all of them (each
//! 32-bit lane keeps one row's sum: no horizontal adds). Every layout stores exactly the GGUF
//! file's bytes per weight (f16 scales, 6-bit K-quant scales, no offset where the format has
//! none), so a decode step streams no more than the file holds.
//!
//! A group of `R` rows is a run of units `[scales][bodies]` (see [`Layout`]), padded to 64
//! bytes: the f16 scales (`R` per block: `d`, then `m` for Q4_1 and Q5_1, `dmin` for Q4_K and
//! Q5_K) sit right before the quants they scale, so a pass over a group is one forward stream
//! (a separate scale stream halved single-row streaming speed). Bodies are multiples of 64 bytes
//! when `R = 16` (32 when `R = 8`) and scales fill whole lines, so vector loads stay aligned
//! (but for Q6_K's 16-row units, which start 32 bytes off every other super-block).
//!
//! Quants come in *lines*: `4R` bytes holding four consecutive elements of each row. A
//! 32-element block has eight, `W[0..8]`: `W[2j]` holds elements `4j..4j+4` and `W[2j+1]`
//! elements `16+4j..16+4j+4` (the GGUF nibble order: byte `i` of a row's 16 bytes holds
//! element `i` low and `i+16` high). So `W[2j]` meets activation bytes `4j..` and `W[2j+1]`
//! bytes `16+4j..`; the even lines are the block's first half, the odd ones its second.
//!
//! - Nibbles (Q4_0, Q4_1, Q4_K and the low 4 bits of Q5/Q6): line pair `(W[2j], W[2j+1])`
//!   shares `4R` bytes, low and high nibbles.
//! - A 1-bit plane (Q5_0, Q5_1, Q5_K): one `u32` per row, byte `k` bit `L` = bit 4 of the
//!   element of line `L` in byte lane `k`.
//! - A 2-bit plane (Q6_K): two `u32` per row; in the `h`-th, byte `k` bits `2s..2s+2` hold
//!   bits 4–5 of the element of line `4h + s` in byte lane `k`.
//! - Bytes (Q8_0): eight lines of `4R` bytes; signed, or `q + 128` for kernels that multiply
//!   unsigned weights by signed activations (`PackSpec::unsigned_q8`).
//!
//! Block bodies:
//! - Q4_0, Q4_1: nibbles (`16R` bytes). Q5_0, Q5_1: 1-bit plane (`4R`), nibbles.
//!   Q8_0: bytes (`32R`).
//! - Q4_K (per 256-element super-block): `A[8][R]` = `sc | (m >> 4) << 6`, `C[4][R]` = low 4
//!   bits of `m` of sub-blocks `2i` (low nibble) and `2i+1` (high), then 8 × nibbles.
//!   Q5_K: the same with 8 × (1-bit plane, nibbles).
//! - Q6_K (per super-block): `scales[16][R]` (i8, one per 16 elements), then 8 × (2-bit plane,
//!   nibbles); its unit's scales are `d`.
//!
//! Values are exactly the GGUF ones; [`Packed::dequantize_row`] decodes a row back (tests).

use half::f16;

use super::{blocks, GgmlType, QK, QK_K};

/// The repacked layout a kernel level reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackSpec {
    /// Weight rows per interleaved group (8 or 16).
    pub rows: usize,
    /// Q8_0 quants stored as `q + 128` (unsigned) rather than signed.
    pub unsigned_q8: bool,
}

/// How a repacked block stores its quants (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// Q4_0 (`min` false: offset −8·d) and Q4_1 (`min`: a stored offset).
    Q4 { min: bool },
    /// Q5_0 (offset −16·d) and Q5_1.
    Q5 { min: bool },
    /// Q8_0.
    Q8,
    /// Q4_K.
    K4,
    /// Q5_K.
    K5,
    /// Q6_K.
    K6,
}

/// The repacked form of `ty`, if it has one.
pub const fn form(ty: GgmlType) -> Option<Form> {
    match ty {
        GgmlType::Q4_0 => Some(Form::Q4 { min: false }),
        GgmlType::Q4_1 => Some(Form::Q4 { min: true }),
        GgmlType::Q5_0 => Some(Form::Q5 { min: false }),
        GgmlType::Q5_1 => Some(Form::Q5 { min: true }),
        GgmlType::Q8_0 => Some(Form::Q8),
        GgmlType::Q4_K => Some(Form::K4),
        GgmlType::Q5_K => Some(Form::K5),
        GgmlType::Q6_K => Some(Form::K6),
        GgmlType::F32 | GgmlType::F16 => None,
    }
}

impl Form {
    /// Super-block forms: scales per 256 elements.
    pub const fn is_k(self) -> bool {
        matches!(self, Form::K4 | Form::K5 | Form::K6)
    }
    /// A second f16 per block (or super-block) in the header: `m` or `dmin`.
    pub const fn has_min(self) -> bool {
        matches!(
            self,
            Form::Q4 { min: true } | Form::Q5 { min: true } | Form::K4 | Form::K5
        )
    }
    /// A 1-bit plane before each block's nibbles.
    pub const fn has_bit_plane(self) -> bool {
        matches!(self, Form::Q5 { .. } | Form::K5)
    }
}

/// Byte offsets of one group's parts, for `R` rows and `cols` columns.
///
/// A group is a run of *units*, each `[scales][bodies]`: a unit of the 32-element forms holds
/// `32 / R` blocks (so its `d` array is one 64-byte line: 2 blocks of 16 rows, or 4 of 8),
/// then their `m` line where the form has one; a unit of the K forms is one super-block with its
/// `d` (and `dmin`). Scales sit right before the quants they scale, so a pass over the group is
/// one forward stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Rows per group.
    pub r: usize,
    /// 32-element blocks per row.
    pub nb: usize,
    /// Blocks (32-element forms) or super-blocks (K forms) per unit.
    pub per_unit: usize,
    /// Bytes of a unit's scales (`d`, then `m`/`dmin`), of one block or super-block body, and
    /// of a unit.
    pub scales: usize,
    pub body: usize,
    pub unit: usize,
    /// Bytes of a group, padded to 64.
    pub group: usize,
}

impl Layout {
    pub fn new(form: Form, r: usize, cols: usize) -> Layout {
        let nb = cols / QK;
        let (per_unit, units) = if form.is_k() {
            (1, cols / QK_K)
        } else {
            let k = (32 / r).max(1);
            (k, nb.div_ceil(k))
        };
        let scales = 2 * r * per_unit * if form.has_min() { 2 } else { 1 };
        let quants = |bits: usize| match bits {
            4 => 16 * r,
            5 => 20 * r,
            _ => 24 * r,
        };
        let body = match form {
            Form::Q4 { .. } => quants(4),
            Form::Q5 { .. } => quants(5),
            Form::Q8 => 32 * r,
            Form::K4 => 12 * r + 8 * quants(4),
            Form::K5 => 12 * r + 8 * quants(5),
            Form::K6 => 16 * r + 8 * quants(6),
        };
        let unit = scales + per_unit * body;
        Layout {
            r,
            nb,
            per_unit,
            scales,
            body,
            unit,
            group: (units * unit).next_multiple_of(64),
        }
    }
    /// Offset of the `R` f16 scales `d` of block (K forms: super-block) `u`.
    pub fn d_at(&self, u: usize) -> usize {
        (u / self.per_unit) * self.unit + (u % self.per_unit) * 2 * self.r
    }
    /// Offset of the `R` f16 offsets `m` (Q4_1, Q5_1) or `dmin` (Q4_K, Q5_K) of `u`.
    pub fn m_at(&self, u: usize) -> usize {
        self.d_at(u) + self.scales / 2
    }
    /// Offset of the quants of `u`.
    pub fn body_at(&self, u: usize) -> usize {
        (u / self.per_unit) * self.unit + self.scales + (u % self.per_unit) * self.body
    }
}

/// Anonymous memory for a repacked matrix: 2 MiB-aligned and advised as transparent huge
/// pages on Linux, so a decode step streams the weights without a TLB miss (and a prefetcher
/// restart) every 4 KiB. Untouched pages of the over-allocation stay unresident.
struct Storage {
    map: memmap2::MmapMut,
    off: usize,
    len: usize,
}

const HUGE: usize = 2 << 20;

impl Storage {
    fn zeroed(len: usize) -> Storage {
        let map = memmap2::MmapMut::map_anon(len + HUGE).expect("anonymous memory for weights");
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let off = (map.as_ptr() as usize).next_multiple_of(HUGE) - map.as_ptr() as usize;
        Storage { map, off, len }
    }
    fn bytes(&self) -> &[u8] {
        &self.map[self.off..self.off + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.off..self.off + self.len]
    }
}

/// A repacked weight matrix.
pub struct Packed {
    /// The GGUF type the weights came from.
    pub ty: GgmlType,
    pub form: Form,
    pub spec: PackSpec,
    pub rows: usize,
    pub cols: usize,
    pub layout: Layout,
    data: Storage,
}

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Packed({:?} {}x{}, {} rows per group)",
            self.ty, self.rows, self.cols, self.spec.rows
        )
    }
}

/// Writes the four bytes `v` at row `k`'s place of `line`.
fn put4(line: &mut [u8], k: usize, v: [u8; 4]) {
    line[4 * k..4 * k + 4].copy_from_slice(&v);
}

/// Writes the nibble lines of a block's 32 quants (low 4 bits) for row `k`.
fn put_nibbles(dst: &mut [u8], r: usize, k: usize, q: &[i32; QK]) {
    for j in 0..4 {
        let b = |i: usize| ((q[i] & 15) | (q[i + 16] & 15) << 4) as u8;
        let line = &mut dst[j * 4 * r..(j + 1) * 4 * r];
        put4(
            line,
            k,
            [b(4 * j), b(4 * j + 1), b(4 * j + 2), b(4 * j + 3)],
        );
    }
}

/// The element of line `l` in byte lane `c` (see the module docs).
fn line_elem(l: usize, c: usize) -> usize {
    if l.is_multiple_of(2) {
        4 * (l / 2) + c
    } else {
        16 + 4 * (l / 2) + c
    }
}

/// Writes the 1-bit plane (bit 4 of each quant) for row `k`.
fn put_bit_plane(dst: &mut [u8], k: usize, q: &[i32; QK]) {
    let mut v = [0u8; 4];
    for (c, byte) in v.iter_mut().enumerate() {
        for l in 0..8 {
            *byte |= (((q[line_elem(l, c)] >> 4) & 1) as u8) << l;
        }
    }
    put4(dst, k, v);
}

/// Writes the 2-bit plane (bits 4–5 of each quant) for row `k`: two words `r` rows apart.
fn put_two_bit_plane(dst: &mut [u8], r: usize, k: usize, q: &[i32; QK]) {
    for h in 0..2 {
        let mut v = [0u8; 4];
        for (c, byte) in v.iter_mut().enumerate() {
            for s in 0..4 {
                *byte |= (((q[line_elem(4 * h + s, c)] >> 4) & 3) as u8) << (2 * s);
            }
        }
        put4(&mut dst[h * 4 * r..], k, v);
    }
}

fn put_f16(dst: &mut [u8], at: usize, v: f16) {
    dst[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn f16_le(b: &[u8]) -> f16 {
    f16::from_le_bytes([b[0], b[1]])
}

/// Block `b` of a GGUF row of a 32-element type: (d, m, quants as stored: unsigned, Q8_0
/// signed).
fn block32(ty: GgmlType, row: &[u8], b: usize) -> (f16, f16, [i32; QK]) {
    let bb = ty.block_bytes();
    let blk = &row[b * bb..(b + 1) * bb];
    let d = f16_le(blk);
    let mut q = [0i32; QK];
    let m = match ty {
        GgmlType::Q8_0 => {
            for (q, &v) in q.iter_mut().zip(&blk[2..34]) {
                *q = v as i8 as i32;
            }
            f16::ZERO
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (m, qs) = if ty == GgmlType::Q4_1 {
                (f16_le(&blk[2..]), &blk[4..20])
            } else {
                (f16::ZERO, &blk[2..18])
            };
            for (j, &v) in qs.iter().enumerate() {
                q[j] = (v & 15) as i32;
                q[j + 16] = (v >> 4) as i32;
            }
            m
        }
        _ => {
            // Q5_0 / Q5_1: the shared decoder gives q − 16 for Q5_0.
            let dec = blocks::block32(ty, row, b);
            let bias = if ty == GgmlType::Q5_0 { 16 } else { 0 };
            for (q, &v) in q.iter_mut().zip(&dec.q) {
                *q = v as i32 + bias;
            }
            if ty == GgmlType::Q5_1 {
                f16_le(&blk[2..])
            } else {
                f16::ZERO
            }
        }
    };
    (d, m, q)
}

impl Packed {
    /// Repacks GGUF-layout rows (`rows` × `cols` of `ty`) into `spec`'s layout; None if `ty`
    /// has no repacked form or the rows are not whole blocks of it.
    pub fn new(
        spec: PackSpec,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        src: &[u8],
    ) -> Option<Packed> {
        let form = form(ty)?;
        if !cols.is_multiple_of(ty.block_elems()) || !cols.is_multiple_of(QK) || cols == 0 {
            return None;
        }
        let r = spec.rows;
        let lay = Layout::new(form, r, cols);
        let row_bytes = cols / ty.block_elems() * ty.block_bytes();
        assert!(src.len() >= rows * row_bytes, "source too short");
        let groups = rows.div_ceil(r);
        let mut data = Storage::zeroed(groups * lay.group);
        let bytes = data.bytes_mut();
        for row in 0..rows {
            let (g, k) = (row / r, row % r);
            let gdst = &mut bytes[g * lay.group..(g + 1) * lay.group];
            let src_row = &src[row * row_bytes..(row + 1) * row_bytes];
            if form.is_k() {
                pack_k_row(form, &lay, src_row, k, gdst);
            } else {
                pack_row(form, spec, &lay, ty, src_row, k, gdst);
            }
        }
        Some(Packed {
            ty,
            form,
            spec,
            rows,
            cols,
            layout: lay,
            data,
        })
    }

    /// The group holding rows `R·g..R·g + R` (64-byte aligned).
    #[inline]
    pub fn group(&self, g: usize) -> &[u8] {
        let gb = self.layout.group;
        &self.data.bytes()[g * gb..(g + 1) * gb]
    }

    /// Bytes held (what a pass over the matrix reads).
    pub fn bytes(&self) -> usize {
        self.data.len
    }

    /// Row `row` decoded back to floats, as [`super::dequantize_row`] decodes the GGUF row.
    pub fn dequantize_row(&self, row: usize, out: &mut [f32]) {
        let (lay, r) = (&self.layout, self.spec.rows);
        let g = self.group(row / r);
        let k = row % r;
        let h = |at: usize| f16_le(&g[at..]).to_f32();
        for b in 0..lay.nb {
            let (u, s) = if self.form.is_k() {
                (b / 8, b % 8)
            } else {
                (b, 0)
            };
            let body = &g[lay.body_at(u)..];
            let lines_at = match self.form {
                Form::Q4 { .. } | Form::Q8 => 0,
                Form::Q5 { .. } => 4 * r,
                Form::K4 => 12 * r + s * 16 * r,
                Form::K5 => 12 * r + s * 20 * r + 4 * r,
                Form::K6 => 16 * r + s * 24 * r + 8 * r,
            };
            let lines = &body[lines_at..];
            let mut q = [0i32; QK];
            for l in 0..8 {
                for c in 0..4 {
                    let e = line_elem(l, c);
                    q[e] = if self.form == Form::Q8 {
                        let v = lines[l * 4 * r + 4 * k + c];
                        if self.spec.unsigned_q8 {
                            v as i32 - 128
                        } else {
                            v as i8 as i32
                        }
                    } else {
                        let v = lines[(l / 2) * 4 * r + 4 * k + c];
                        (if l % 2 == 0 { v & 15 } else { v >> 4 }) as i32
                    };
                    let plane = |off: usize| body[off + 4 * k + c] as i32;
                    q[e] |= match self.form {
                        Form::Q5 { .. } => ((plane(0) >> l) & 1) << 4,
                        Form::K5 => ((plane(12 * r + s * 20 * r) >> l) & 1) << 4,
                        Form::K6 => {
                            ((plane(16 * r + s * 24 * r + (l / 4) * 4 * r) >> (2 * (l % 4))) & 3)
                                << 4
                        }
                        _ => 0,
                    };
                }
            }
            let o = &mut out[b * QK..(b + 1) * QK];
            match self.form {
                Form::Q4 { min } | Form::Q5 { min } => {
                    let d = h(lay.d_at(b) + 2 * k);
                    let off = if matches!(self.form, Form::Q4 { .. }) {
                        8
                    } else {
                        16
                    };
                    for i in 0..QK {
                        o[i] = if min {
                            d * q[i] as f32 + h(lay.m_at(b) + 2 * k)
                        } else {
                            d * (q[i] - off) as f32
                        };
                    }
                }
                Form::Q8 => {
                    let d = h(lay.d_at(b) + 2 * k);
                    for i in 0..QK {
                        o[i] = d * q[i] as f32;
                    }
                }
                Form::K4 | Form::K5 => {
                    let d = h(lay.d_at(u) + 2 * k);
                    let dmin = h(lay.m_at(u) + 2 * k);
                    let a = body[s * r + k] as i32;
                    let c = body[8 * r + (s / 2) * r + k] as i32;
                    let sc = a & 63;
                    let m = (a >> 6) << 4 | ((c >> (4 * (s % 2))) & 15);
                    for i in 0..QK {
                        o[i] = d * sc as f32 * q[i] as f32 + -(dmin * m as f32);
                    }
                }
                Form::K6 => {
                    let d = h(lay.d_at(u) + 2 * k);
                    for i in 0..QK {
                        let sc = body[(2 * s + i / 16) * r + k] as i8 as f32;
                        o[i] = d * sc * (q[i] - 32) as f32;
                    }
                }
            }
        }
    }
}

/// Packs one row of a 32-element-block type into its group.
fn pack_row(
    form: Form,
    spec: PackSpec,
    lay: &Layout,
    ty: GgmlType,
    src: &[u8],
    k: usize,
    g: &mut [u8],
) {
    let r = lay.r;
    for b in 0..lay.nb {
        let (d, m, q) = block32(ty, src, b);
        put_f16(g, lay.d_at(b) + 2 * k, d);
        if form.has_min() {
            put_f16(g, lay.m_at(b) + 2 * k, m);
        }
        let at = lay.body_at(b);
        let body = &mut g[at..at + lay.body];
        match form {
            Form::Q4 { .. } => put_nibbles(body, r, k, &q),
            Form::Q5 { .. } => {
                put_bit_plane(body, k, &q);
                put_nibbles(&mut body[4 * r..], r, k, &q);
            }
            _ => {
                for l in 0..8 {
                    let v: [u8; 4] = std::array::from_fn(|c| {
                        let v = q[line_elem(l, c)];
                        if spec.unsigned_q8 {
                            (v + 128) as u8
                        } else {
                            v as i8 as u8
                        }
                    });
                    put4(&mut body[l * 4 * r..], k, v);
                }
            }
        }
    }
}

/// Packs one row of a K-quant type into its group.
fn pack_k_row(form: Form, lay: &Layout, src: &[u8], k: usize, g: &mut [u8]) {
    let r = lay.r;
    let ty = match form {
        Form::K4 => GgmlType::Q4_K,
        Form::K5 => GgmlType::Q5_K,
        _ => GgmlType::Q6_K,
    };
    let bb = ty.block_bytes();
    for u in 0..lay.nb / 8 {
        let blk = &src[u * bb..(u + 1) * bb];
        let body_at = lay.body_at(u);
        let mut q = [[0i32; QK]; 8];
        for (s, q) in q.iter_mut().enumerate() {
            let dec = blocks::block32(ty, src, 8 * u + s);
            let bias = if form == Form::K6 { 32 } else { 0 };
            for (q, &v) in q.iter_mut().zip(&dec.q) {
                *q = v as i32 + bias;
            }
        }
        if form == Form::K6 {
            put_f16(g, lay.d_at(u) + 2 * k, f16_le(&blk[208..]));
            for i in 0..16 {
                g[body_at + i * r + k] = blk[192 + i];
            }
            for (s, q) in q.iter().enumerate() {
                let at = body_at + 16 * r + s * 24 * r;
                put_two_bit_plane(&mut g[at..], r, k, q);
                put_nibbles(&mut g[at + 8 * r..], r, k, q);
            }
            continue;
        }
        put_f16(g, lay.d_at(u) + 2 * k, f16_le(blk));
        put_f16(g, lay.m_at(u) + 2 * k, f16_le(&blk[2..]));
        for s in 0..8 {
            let (sc, m) = blocks::scale_min_k4(s, &blk[4..16]);
            g[body_at + s * r + k] = sc | (m >> 4) << 6;
            g[body_at + 8 * r + (s / 2) * r + k] |= (m & 15) << (4 * (s % 2));
        }
        let per = if form == Form::K5 { 20 * r } else { 16 * r };
        for (s, q) in q.iter().enumerate() {
            let at = body_at + 12 * r + s * per;
            if form == Form::K5 {
                put_bit_plane(&mut g[at..], k, q);
                put_nibbles(&mut g[at + 4 * r..], r, k, q);
            } else {
                put_nibbles(&mut g[at..], r, k, q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::scalar::quantize_row;
    use crate::quant::{dequantize_row, QK_K};

    #[test]
    fn every_layout_decodes_to_the_gguf_values_at_the_file_density() {
        let mut seed = 7u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ((seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        };
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            for spec in [
                PackSpec {
                    rows: 8,
                    unsigned_q8: false,
                },
                PackSpec {
                    rows: 16,
                    unsigned_q8: true,
                },
            ] {
                let (rows, cols) = (spec.rows * 2 + 3, 2 * QK_K);
                let w: Vec<f32> = (0..rows * cols).map(|_| next()).collect();
                let src = quantize_row(ty, &w);
                let p = Packed::new(spec, ty, rows, cols, &src).expect("packs");
                let row_bytes = src.len() / rows;
                let groups = rows.div_ceil(spec.rows);
                // Density: the bytes of the file's rows (padding only up to 64 per group).
                assert!(
                    p.bytes()
                        <= groups * (spec.rows * row_bytes).next_multiple_of(64) + 64 * groups,
                    "{ty:?}: {} bytes for {} in the file",
                    p.bytes(),
                    groups * spec.rows * row_bytes
                );
                let (mut want, mut got) = (vec![0.0; cols], vec![0.0; cols]);
                for row in 0..rows {
                    dequantize_row(ty, &src[row * row_bytes..(row + 1) * row_bytes], &mut want);
                    p.dequantize_row(row, &mut got);
                    assert_eq!(want, got, "{ty:?} R={} row {row}", spec.rows);
                }
            }
        }
    }
}
