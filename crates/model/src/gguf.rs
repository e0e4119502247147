//! GGUF v2/v3 reader: metadata, tensor infos, and memory-mapped aligned tensor data.
//!
//! The file is mapped once; tensors are borrowed slices of the map. Every malformed input is an
//! error naming what is wrong (never a panic): missing file, wrong magic, truncated header or
//! data, unsupported tensor type.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::quant::GgmlType;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Sanity bounds so a corrupt header cannot make us allocate without limit.
const MAX_STRING_LEN: u64 = 1 << 30;
const MAX_ARRAY_LEN: u64 = 1 << 28;
const MAX_DIMS: u32 = 4;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("model file {path} not found")]
    NotFound { path: PathBuf },
    #[error("cannot read model file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a GGUF file (magic {magic:?}, expected \"GGUF\")")]
    NotGguf { path: PathBuf, magic: Vec<u8> },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    Version { path: PathBuf, version: u32 },
    #[error("{path}: file is truncated or corrupt: {what}")]
    Truncated { path: PathBuf, what: String },
    #[error("{path}: tensor `{tensor}` has unsupported type {ty}")]
    UnsupportedTensorType {
        path: PathBuf,
        tensor: String,
        ty: String,
    },
    #[error("metadata key `{key}` is missing")]
    MissingKey { key: String },
    #[error("metadata key `{key}` has type {found}, expected {expected}")]
    KeyType {
        key: String,
        found: &'static str,
        expected: &'static str,
    },
    #[error("tensor `{name}` is missing")]
    MissingTensor { name: String },
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "u8",
            Value::I8(_) => "i8",
            Value::U16(_) => "u16",
            Value::I16(_) => "i16",
            Value::U32(_) => "u32",
            Value::I32(_) => "i32",
            Value::F32(_) => "f32",
            Value::Bool(_) => "bool",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::U64(_) => "u64",
            Value::I64(_) => "i64",
            Value::F64(_) => "f64",
        }
    }

    /// Any integer type, as i64 (u64 above i64::MAX is None).
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::U8(v) => v as i64,
            Value::I8(v) => v as i64,
            Value::U16(v) => v as i64,
            Value::I16(v) => v as i64,
            Value::U32(v) => v as i64,
            Value::I32(v) => v as i64,
            Value::U64(v) => i64::try_from(v).ok()?,
            Value::I64(v) => v,
            Value::Bool(b) => b as i64,
            _ => return None,
        })
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }
}

/// One tensor's header entry. `dims[0]` is the innermost (contiguous) dimension, as in ggml.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset in the file.
    pub offset: u64,
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    mmap: Mmap,
    /// The map is anonymous memory (built by [`GgufFile::from_parts`]), not the file's pages:
    /// its pages must never be released.
    owned: bool,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn truncated(&self, what: impl Into<String>) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            what: what.into(),
        }
    }
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let end = (self.pos as u64)
            .checked_add(n)
            .filter(|&e| e <= self.buf.len() as u64);
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end as usize];
                self.pos = end as usize;
                Ok(s)
            }
            None => Err(self.truncated(format!("{what} at byte {} runs past the end", self.pos))),
        }
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("length checked"))
    }
    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        if len > MAX_STRING_LEN {
            return Err(self.truncated(format!("{what}: string length {len} is implausible")));
        }
        let bytes = self.take(len, what)?;
        // Token strings are not always valid UTF-8 in the wild; keep what we can.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
    fn value(&mut self, ty: u32, what: &str, depth: u32) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(what)?[0]),
            1 => Value::I8(self.arr::<1>(what)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(what)?)),
            4 => Value::U32(self.u32(what)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(what)?)),
            7 => Value::Bool(self.arr::<1>(what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 2 {
                    return Err(self.truncated(format!("{what}: arrays nested too deep")));
                }
                let elem_ty = self.u32(what)?;
                let len = self.u64(what)?;
                if len > MAX_ARRAY_LEN || len > (self.buf.len() - self.pos) as u64 {
                    return Err(
                        self.truncated(format!("{what}: array length {len} is implausible"))
                    );
                }
                let mut v = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    v.push(self.value(elem_ty, what, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(what)?)),
            other => return Err(self.truncated(format!("{what}: unknown metadata type {other}"))),
        })
    }
}

impl GgufFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => GgufError::NotFound { path: path.clone() },
            _ => GgufError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        // SAFETY: the map is read-only; a file truncated underneath us is the usual mmap caveat.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::Io {
            path: path.clone(),
            source: e,
        })?;
        Self::parse(path, mmap)
    }

    fn parse(path: PathBuf, mmap: Mmap) -> Result<Self, GgufError> {
        let mut c = Cursor {
            buf: &mmap[..],
            pos: 0,
            path: &path,
        };
        let magic = c.take(4, "magic").map_err(|_| GgufError::NotGguf {
            path: path.clone(),
            magic: mmap[..mmap.len().min(4)].to_vec(),
        })?;
        if magic != MAGIC {
            return Err(GgufError::NotGguf {
                path: path.clone(),
                magic: magic.to_vec(),
            });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version {
                path: path.clone(),
                version,
            });
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_tensors > MAX_ARRAY_LEN || n_kv > MAX_ARRAY_LEN {
            return Err(c.truncated(format!(
                "implausible counts: {n_tensors} tensors, {n_kv} keys"
            )));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            metadata.insert(key, value);
        }
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name #{i}"))?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.truncated(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let raw_ty = c.u32(&name)?;
            let offset = c.u64(&name)?;
            infos.push((name, dims, raw_ty, offset));
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v
                .as_i64()
                .filter(|&a| a > 0 && (a & (a - 1)) == 0)
                .ok_or_else(|| {
                    c.truncated(format!("general.alignment {v:?} is not a power of two"))
                })? as u64,
            None => DEFAULT_ALIGNMENT,
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let file_len = mmap.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, raw_ty, rel) in infos {
            let ty =
                GgmlType::from_u32(raw_ty).ok_or_else(|| GgufError::UnsupportedTensorType {
                    path: path.clone(),
                    tensor: name.clone(),
                    ty: crate::quant::ggml_type_name(raw_ty),
                })?;
            let n: u64 = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| c.truncated(format!("tensor `{name}` dimensions overflow")))?;
            if !n.is_multiple_of(ty.block_elems() as u64) {
                return Err(c.truncated(format!(
                    "tensor `{name}` has {n} elements, not a multiple of the {} block size {}",
                    ty.name(),
                    ty.block_elems()
                )));
            }
            let size = n / ty.block_elems() as u64 * ty.block_bytes() as u64;
            let offset = data_start.checked_add(rel).filter(|o| o % alignment == 0);
            match offset.and_then(|o| o.checked_add(size)).filter(|&e| e <= file_len) {
                Some(_) => {}
                None => {
                    return Err(c.truncated(format!(
                        "tensor `{name}` ({size} bytes at data offset {rel}) lies outside the {file_len}-byte file or is misaligned"
                    )))
                }
            }
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset: offset.expect("checked"),
                size,
            });
        }
        Ok(GgufFile {
            path,
            version,
            metadata,
            tensors,
            mmap,
            owned: false,
        })
    }

    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| GgufError::MissingTensor {
                name: name.to_string(),
            })
    }

    /// The raw bytes of a tensor (borrowed from the map).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset as usize..(info.offset + info.size) as usize]
    }

    pub fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey {
            key: key.to_string(),
        })
    }

    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        match self.get(key)? {
            Value::String(s) => Ok(s),
            v => Err(GgufError::KeyType {
                key: key.into(),
                found: v.type_name(),
                expected: "string",
            }),
        }
    }

    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.get(key)?;
        v.as_i64()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| GgufError::KeyType {
                key: key.into(),
                found: v.type_name(),
                expected: "unsigned integer",
            })
    }

    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.get(key)?;
        v.as_f64()
            .map(|f| f as f32)
            .ok_or_else(|| GgufError::KeyType {
                key: key.into(),
                found: v.type_name(),
                expected: "number",
            })
    }

    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        match self.get(key)? {
            Value::Bool(b) => Ok(*b),
            v => Err(GgufError::KeyType {
                key: key.into(),
                found: v.type_name(),
                expected: "bool",
            }),
        }
    }

    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        match self.get(key)? {
            Value::Array(a) => Ok(a),
            v => Err(GgufError::KeyType {
                key: key.into(),
                found: v.type_name(),
                expected: "array",
            }),
        }
    }

    /// A string array (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<String>, GgufError> {
        self.get_array(key)?
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                v => Err(GgufError::KeyType {
                    key: key.into(),
                    found: v.type_name(),
                    expected: "string array",
                }),
            })
            .collect()
    }

    /// An integer array (e.g. `tokenizer.ggml.token_type`).
    pub fn get_i64_array(&self, key: &str) -> Result<Vec<i64>, GgufError> {
        self.get_array(key)?
            .iter()
            .map(|v| {
                v.as_i64().ok_or_else(|| GgufError::KeyType {
                    key: key.into(),
                    found: v.type_name(),
                    expected: "integer array",
                })
            })
            .collect()
    }
}

impl GgufFile {
    /// Bytes at an absolute offset (validated ranges come from [`TensorInfo`]).
    /// A model assembled in memory (a Hugging Face folder converted at load): metadata, and
    /// tensors as (name, dims innermost first, type, bytes), copied into one anonymous map.
    pub fn from_parts(
        path: PathBuf,
        metadata: BTreeMap<String, Value>,
        parts: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
    ) -> Result<GgufFile, GgufError> {
        let align = DEFAULT_ALIGNMENT as usize;
        let total: usize = parts
            .iter()
            .map(|p| p.3.len().div_ceil(align) * align)
            .sum::<usize>()
            .max(1);
        let io = |e| GgufError::Io {
            path: path.clone(),
            source: e,
        };
        let mut map = memmap2::MmapMut::map_anon(total).map_err(io)?;
        let mut tensors = Vec::with_capacity(parts.len());
        let mut at = 0usize;
        for (name, dims, ty, data) in parts {
            let n: u64 = dims.iter().product();
            let size = n / ty.block_elems() as u64 * ty.block_bytes() as u64;
            if size != data.len() as u64 {
                return Err(GgufError::Truncated {
                    path: path.clone(),
                    what: format!(
                        "tensor `{name}`: {} bytes for {n} {ty:?} elements",
                        data.len()
                    ),
                });
            }
            map[at..at + data.len()].copy_from_slice(&data);
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset: at as u64,
                size,
            });
            at += data.len().div_ceil(align) * align;
        }
        let mmap = map.make_read_only().map_err(io)?;
        Ok(GgufFile {
            path,
            version: 3,
            metadata,
            tensors,
            mmap,
            owned: true,
        })
    }

    pub fn tensor_data_at(&self, offset: usize, size: usize) -> &[u8] {
        &self.mmap[offset..offset + size]
    }

    /// Drops the mapped pages of a byte range from this process's resident memory (a later
    /// read faults them back in from the page cache). Only whole pages inside the range.
    pub fn release_range(&self, offset: usize, size: usize) {
        const PAGE: usize = 4096;
        if self.owned {
            return;
        }
        let start = offset.div_ceil(PAGE) * PAGE;
        let end = (offset + size) / PAGE * PAGE;
        if end > start {
            // SAFETY: the map is read-only and file-backed: dropping pages only means they are
            // read from the file again if touched; no content changes.
            let _ = unsafe {
                self.mmap.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }
}
