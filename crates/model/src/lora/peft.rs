//! PEFT LoRA folders: `adapter_config.json` + `adapter_model.safetensors` (tensors
//! `base_model.model.<module>.lora_A.weight`, rank × n_in, and `.lora_B.weight`,
//! n_out × rank, in F32, F16 or BF16). Target modules q/k/v/o/gate/up/down (and phi3's fused
//! qkv / gate_up) map to our tensor names as the Hugging Face loader maps the base's; llama's
//! Q/K row permutation is applied to `B` of q and k; `use_rslora` makes the scale
//! alpha / √r. DoRA (`use_dora`), `modules_to_save`, biases other than `none`,
//! `fan_in_fan_out` and `alpha_pattern` are refused with a message naming the key.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value as Json;

use super::{digest, err, AlphaRule, Factor, LoraAdapter, LoraBase, LoraError, RawPair};
use crate::safetensors::Tensor;

/// A factor with its (rows, cols).
type ShapedFactor = (Factor, (usize, usize));

/// Modules a PEFT adapter may target (Hugging Face names).
pub const TARGET_MODULES: [&str; 9] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
    "qkv_proj",
    "gate_up_proj",
];

pub(super) fn load(dir: &Path, base: &LoraBase, max_rank: usize) -> Result<LoraAdapter, LoraError> {
    let shown = dir.display();
    let config_path = dir.join("adapter_config.json");
    let weights_path = dir.join("adapter_model.safetensors");
    if !config_path.is_file() {
        return err(format!(
            "{shown}: no adapter_config.json (a LoRA folder is adapter_config.json + \
             adapter_model.safetensors)"
        ));
    }
    if !weights_path.is_file() {
        let why = if dir.join("adapter_model.bin").is_file() {
            "adapter_model.bin (pickle) is not read: save the adapter with safe_serialization"
        } else {
            "no adapter_model.safetensors"
        };
        return err(format!("{shown}: {why}"));
    }
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| LoraError(format!("cannot read {}: {e}", p.display())))
    };
    let config_bytes = read(&config_path)?;
    let weights = read(&weights_path)?;
    let config: Json = serde_json::from_slice(&config_bytes)
        .map_err(|e| LoraError(format!("{shown}/adapter_config.json: {e}")))?;
    let rule = check_config(&config)
        .map_err(|e| LoraError(format!("{shown}/adapter_config.json: {e}")))?;
    let rank_pattern = config
        .get("rank_pattern")
        .and_then(Json::as_object)
        .is_some_and(|m| !m.is_empty());
    let r = config.get("r").and_then(Json::as_u64).unwrap_or(0) as usize;
    let tensors = crate::safetensors::tensors(&weights)
        .map_err(|e| LoraError(format!("{shown}/adapter_model.safetensors: {e}")))?;
    let mut halves: BTreeMap<String, [Option<ShapedFactor>; 2]> = BTreeMap::new();
    for t in tensors {
        let hf = &t.name;
        let (module, half) = split_name(hf).ok_or_else(|| {
            LoraError(format!(
                "{shown}: tensor `{hf}` is not a LoRA A/B weight of a linear module"
            ))
        })?;
        let name = crate::hf::gguf_tensor_name(&format!("{module}.weight"), base.gemma)
            .filter(|n| {
                super::Proj::parse(n).is_some() || n == "output.weight" || n == "token_embd.weight"
            })
            .ok_or_else(|| {
                LoraError(format!(
                    "{shown}: tensor `{hf}`: module `{module}` is not a supported target \
                     (supported: {})",
                    TARGET_MODULES.join(", ")
                ))
            })?;
        let factor = factor(&t).map_err(|e| LoraError(format!("{shown}: tensor `{hf}`: {e}")))?;
        let shape = match t.shape.as_slice() {
            [rows, cols] => (*rows, *cols),
            s => {
                return err(format!(
                    "{shown}: tensor `{hf}` has shape {s:?}; LoRA weights are matrices"
                ))
            }
        };
        halves.entry(name).or_default()[half] = Some((factor, shape));
    }
    let mut pairs = Vec::with_capacity(halves.len());
    for (name, [a, b]) in halves {
        let (Some((a, a_shape)), Some((b, b_shape))) = (a, b) else {
            return err(format!(
                "{shown}: `{name}` has only one of lora_A and lora_B (they come in pairs)"
            ));
        };
        if !rank_pattern && a_shape.0 != r {
            return err(format!(
                "{shown}: `{name}` has rank {} but adapter_config.json says r = {r}",
                a_shape.0
            ));
        }
        let b = match (base.permute_qk, super::Proj::parse(&name)) {
            (Some((heads, _)), Some((_, super::Proj::Q))) => {
                b.permuted_rows(b_shape.0, b_shape.1, heads)
            }
            (Some((_, kv)), Some((_, super::Proj::K))) => b.permuted_rows(b_shape.0, b_shape.1, kv),
            _ => b,
        };
        pairs.push((
            name,
            RawPair {
                a,
                b,
                a_shape,
                b_shape,
            },
            rule,
        ));
    }
    LoraAdapter::assemble(
        digest(&[&config_bytes, &weights]),
        "peft",
        base,
        max_rank,
        pairs,
    )
    .map_err(|e| LoraError(format!("{shown}: {e}")))
}

/// The refusals and the scale rule of `adapter_config.json`.
fn check_config(c: &Json) -> Result<AlphaRule, String> {
    if let Some(t) = c.get("peft_type").and_then(Json::as_str) {
        if t != "LORA" {
            return Err(format!(
                "`peft_type` is {t}; only LORA adapters are supported"
            ));
        }
    }
    if c.get("use_dora").and_then(Json::as_bool) == Some(true) {
        return Err("`use_dora`: DoRA adapters are not supported".into());
    }
    match c.get("modules_to_save") {
        None | Some(Json::Null) => {}
        Some(Json::Array(a)) if a.is_empty() => {}
        Some(m) => {
            return Err(format!(
                "`modules_to_save` ({m}): adapters that carry fully trained modules are not \
                 supported"
            ))
        }
    }
    match c.get("bias").and_then(Json::as_str) {
        None | Some("none") => {}
        Some(b) => return Err(format!("`bias` is \"{b}\"; only \"none\" is supported")),
    }
    if c.get("fan_in_fan_out").and_then(Json::as_bool) == Some(true) {
        return Err("`fan_in_fan_out`: transposed (Conv1D) weights are not supported".into());
    }
    if c.get("alpha_pattern")
        .and_then(Json::as_object)
        .is_some_and(|m| !m.is_empty())
    {
        return Err("`alpha_pattern`: per-module alphas are not supported".into());
    }
    if let Some(Json::Array(mods)) = c.get("target_modules") {
        for m in mods {
            let m = m.as_str().unwrap_or("");
            if !TARGET_MODULES.contains(&m) {
                return Err(format!(
                    "target module `{m}` is not supported (supported: {})",
                    TARGET_MODULES.join(", ")
                ));
            }
        }
    }
    match c.get("r").and_then(Json::as_u64) {
        Some(r) if r > 0 => {}
        _ => return Err("`r` must be a positive integer".into()),
    }
    let alpha = match c.get("lora_alpha") {
        None | Some(Json::Null) => 8.0, // PEFT's default
        Some(v) => match v.as_f64() {
            Some(a) if a.is_finite() => a as f32,
            _ => return Err(format!("`lora_alpha` must be a finite number, not {v}")),
        },
    };
    let rslora = c.get("use_rslora").and_then(Json::as_bool) == Some(true);
    Ok(AlphaRule::Peft { alpha, rslora })
}

/// `base_model.model.<module>.lora_A.weight` → (`<module>`, 0); `lora_B` → 1.
fn split_name(hf: &str) -> Option<(&str, usize)> {
    let rest = hf.strip_prefix("base_model.model.").unwrap_or(hf);
    if let Some(m) = rest.strip_suffix(".lora_A.weight") {
        return Some((m, 0));
    }
    rest.strip_suffix(".lora_B.weight").map(|m| (m, 1))
}

/// A LoRA factor from a tensor: f16 kept as bits, f32 and bf16 as f32.
fn factor(t: &Tensor<'_>) -> Result<Factor, String> {
    t.check()?;
    Ok(if t.dtype == "F16" {
        Factor::F16(
            t.data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect(),
        )
    } else {
        Factor::F32(t.to_f32())
    })
}
