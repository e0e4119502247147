//! llama.cpp GGUF adapters (what `convert_lora_to_gguf.py` writes): `general.type =
//! "adapter"`, `adapter.type = "lora"`, `adapter.lora.alpha` (absent or 0: the user's scale
//! as is), `general.architecture` equal to the base's; tensors `<base tensor>.lora_a`
//! (ggml dims `[n_in, rank]`) and `.lora_b` (`[rank, n_out]`) in F32, F16, BF16 or Q8_0.
//! Norm vectors (`*_norm.weight`) are skipped as llama.cpp skips them; any other tensor is an
//! error naming it.

use std::collections::BTreeMap;
use std::path::Path;

use super::{digest, err, AlphaRule, Factor, LoraAdapter, LoraBase, LoraError, RawPair};
use crate::gguf::{GgufFile, TensorInfo, Value};
use crate::quant::{dequantize_row, GgmlType};

pub(super) fn load(
    path: &Path,
    base: &LoraBase,
    max_rank: usize,
) -> Result<LoraAdapter, LoraError> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| LoraError(format!("cannot read {shown}: {e}")))?;
    let f = GgufFile::open(path).map_err(|e| LoraError(e.to_string()))?;
    let text = |key: &str| -> Result<String, LoraError> {
        match f.metadata.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => err(format!(
                "{shown}: `{key}` is a {}, not a string",
                v.type_name()
            )),
            None => err(format!(
                "{shown}: `{key}` is missing (not a llama.cpp LoRA adapter file)"
            )),
        }
    };
    let ty = text("general.type")?;
    if ty != "adapter" {
        return err(format!(
            "{shown}: `general.type` is \"{ty}\", expected \"adapter\" (is this a model file?)"
        ));
    }
    let kind = text("adapter.type")?;
    if kind != "lora" {
        return err(format!(
            "{shown}: `adapter.type` is \"{kind}\"; only \"lora\" adapters are supported"
        ));
    }
    let arch = text("general.architecture")?;
    if arch != base.arch {
        return err(format!(
            "{shown}: the adapter is for architecture `{arch}` but the base model is `{}`",
            base.arch
        ));
    }
    let alpha = match f.metadata.get("adapter.lora.alpha") {
        None => 0.0,
        Some(v) => match v.as_f64() {
            Some(a) if a.is_finite() => a as f32,
            _ => {
                return err(format!(
                    "{shown}: `adapter.lora.alpha` is not a finite number: {v:?}"
                ))
            }
        },
    };
    // Pair up `<name>.lora_a` / `<name>.lora_b`.
    let mut halves: BTreeMap<String, [Option<&TensorInfo>; 2]> = BTreeMap::new();
    for t in &f.tensors {
        if let Some(name) = t.name.strip_suffix(".lora_a") {
            halves.entry(name.to_string()).or_default()[0] = Some(t);
        } else if let Some(name) = t.name.strip_suffix(".lora_b") {
            halves.entry(name.to_string()).or_default()[1] = Some(t);
        } else if t.name.ends_with("_norm.weight") {
            continue; // llama.cpp does not adapt norms either
        } else {
            return err(format!(
                "{shown}: tensor `{}` is neither `.lora_a` nor `.lora_b`",
                t.name
            ));
        }
    }
    let mut pairs = Vec::with_capacity(halves.len());
    for (name, [a, b]) in halves {
        let (Some(a), Some(b)) = (a, b) else {
            let missing = if a.is_none() { "lora_a" } else { "lora_b" };
            return err(format!(
                "{shown}: `{name}.{missing}` is missing (LoRA tensors come in pairs)"
            ));
        };
        let pair = RawPair {
            a_shape: matrix(a)?,
            b_shape: matrix(b)?,
            a: factor(&f, a)?,
            b: factor(&f, b)?,
        };
        pairs.push((name, pair, AlphaRule::Gguf(alpha)));
    }
    LoraAdapter::assemble(digest(&[&bytes]), "gguf", base, max_rank, pairs)
        .map_err(|e| LoraError(format!("{shown}: {e}")))
}

/// `(rows, cols)` of a 2-D tensor (ggml dims are `[cols, rows]`).
fn matrix(t: &TensorInfo) -> Result<(usize, usize), LoraError> {
    match t.dims.as_slice() {
        [cols, rows] => Ok((*rows as usize, *cols as usize)),
        dims => err(format!(
            "`{}` has dimensions {dims:?}; LoRA tensors are matrices",
            t.name
        )),
    }
}

/// A tensor's values at the precision the kernels read: f32 and f16 as stored, BF16 and Q8_0
/// widened to f32.
fn factor(f: &GgufFile, t: &TensorInfo) -> Result<Factor, LoraError> {
    let data = f.tensor_data(t);
    let n = t.n_elements() as usize;
    Ok(match t.ty {
        GgmlType::F16 => Factor::F16(
            data.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        GgmlType::F32 | GgmlType::BF16 | GgmlType::Q8_0 => {
            let mut v = vec![0.0f32; n];
            dequantize_row(t.ty, data, &mut v);
            Factor::F32(v)
        }
        other => {
            return err(format!(
                "`{}` has type {}; LoRA tensors must be F32, F16, BF16 or Q8_0",
                t.name,
                other.name()
            ))
        }
    })
}
