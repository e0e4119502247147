//! The safetensors container (Hugging Face folders, PEFT adapters): a little-endian u64 header
//! length, a JSON header naming each tensor's dtype, shape and byte range, then the data.

use serde_json::Value as Json;

/// One tensor of the file: its bytes as stored (the caller checks them against the dtype).
pub struct Tensor<'a> {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// The tensors of a safetensors file's `bytes`, in the header's order; errors say what is
/// malformed (the caller adds which file).
pub fn tensors(bytes: &[u8]) -> Result<Vec<Tensor<'_>>, String> {
    if bytes.len() < 8 {
        return Err("too short for a safetensors header".into());
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = bytes
        .get(8..8usize.saturating_add(n))
        .ok_or_else(|| format!("header of {n} bytes runs past the file"))?;
    let header: serde_json::Map<String, Json> =
        serde_json::from_slice(header).map_err(|e| format!("header: {e}"))?;
    let data = &bytes[8 + n..];
    let numbers = |v: &Json| -> Vec<usize> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Json::as_u64)
                    .map(|v| v as usize)
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let off = numbers(&info["data_offsets"]);
        let data = match off.as_slice() {
            [b, e] if b <= e && *e <= data.len() => &data[*b..*e],
            _ => return Err(format!("tensor `{name}`: bad data_offsets {off:?}")),
        };
        out.push(Tensor {
            dtype: info["dtype"].as_str().unwrap_or("").to_string(),
            shape: numbers(&info["shape"]),
            data,
            name,
        });
    }
    Ok(out)
}
