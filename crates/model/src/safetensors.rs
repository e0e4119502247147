//! The safetensors container (Hugging Face folders, PEFT adapters): a little-endian u64 header
//! length, a JSON header naming each tensor's dtype, shape and byte range, then the data.

use serde_json::Value as Json;

/// One tensor of the file: its bytes as stored (the caller checks them against the dtype).
#[derive(Debug)]
pub struct Tensor<'a> {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

impl Tensor<'_> {
    /// Checks that the dtype is one the loaders read (F32, F16, BF16) and that the bytes fill
    /// the shape exactly.
    pub fn check(&self) -> Result<(), String> {
        let width = match self.dtype.as_str() {
            "F32" => 4,
            "F16" | "BF16" => 2,
            d => return Err(format!("dtype {d} (supported: F32, F16, BF16)")),
        };
        let n: usize = self.shape.iter().product();
        if self.data.len() != n.saturating_mul(width) {
            return Err(format!(
                "{} bytes for shape {:?} of {}",
                self.data.len(),
                self.shape,
                self.dtype
            ));
        }
        Ok(())
    }

    /// The values widened to f32 (of a tensor that passed [`Self::check`]).
    pub fn to_f32(&self) -> Vec<f32> {
        match self.dtype.as_str() {
            "F32" => self
                .data
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            "F16" => self
                .data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            _ => self
                .data
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file with `tensors` (`name, dtype, shape, bytes`) laid out one after another.
    fn file(tensors: &[(&str, &str, &[usize], &[u8])]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let (b, e) = (data.len(), data.len() + bytes.len());
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [b, e]}),
            );
            data.extend_from_slice(bytes);
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(data);
        out
    }

    #[test]
    fn tensors_are_checked_and_widened_to_f32() {
        let f32s: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let f16s: Vec<u8> = [half::f16::from_f32(0.25), half::f16::from_f32(-3.0)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let bf16s: Vec<u8> = [half::bf16::from_f32(4.0), half::bf16::from_f32(0.5)]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let bytes = file(&[
            ("a", "F32", &[2], &f32s),
            ("b", "F16", &[1, 2], &f16s),
            ("c", "BF16", &[2, 1], &bf16s),
            ("short", "F32", &[3], &f32s),
            ("int", "I8", &[2], &[1, 2]),
        ]);
        let t = tensors(&bytes).unwrap();
        let by = |n: &str| t.iter().find(|t| t.name == n).unwrap();
        for (name, want) in [("a", [1.5, -2.0]), ("b", [0.25, -3.0]), ("c", [4.0, 0.5])] {
            assert_eq!(by(name).check(), Ok(()));
            assert_eq!(by(name).to_f32(), want);
        }
        assert_eq!(
            by("short").check(),
            Err("8 bytes for shape [3] of F32".to_string())
        );
        assert_eq!(
            by("int").check(),
            Err("dtype I8 (supported: F32, F16, BF16)".to_string())
        );
    }

    #[test]
    fn a_malformed_file_is_refused() {
        assert!(tensors(&[1, 2, 3]).unwrap_err().contains("too short"));
        let mut bytes = file(&[("a", "F32", &[1], &[0; 4])]);
        bytes.truncate(bytes.len() - 1);
        assert!(tensors(&bytes).unwrap_err().contains("bad data_offsets"));
    }
}
