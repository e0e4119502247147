//! GGUF reader on files the testkit writes: metadata types, tensor data, and every error case.

use cordial_model::gguf::{GgufError, GgufFile, Value};
use cordial_model::quant::{scalar::quantize_row, GgmlType};
use cordial_testkit::gguf_writer::{temp_path, GgufWriter, Meta};

fn sample() -> GgufWriter {
    let w: Vec<f32> = (0..64).map(|i| i as f32 / 10.0 - 3.0).collect();
    GgufWriter::new()
        .meta("general.architecture", Meta::Str("llama".into()))
        .meta("llama.block_count", Meta::U32(2))
        .meta("llama.rope.freq_base", Meta::F32(10000.0))
        .meta("tokenizer.ggml.add_bos_token", Meta::Bool(false))
        .meta(
            "tokenizer.ggml.tokens",
            Meta::StrArray(vec!["a".into(), "b".into()]),
        )
        .meta("tokenizer.ggml.token_type", Meta::I32Array(vec![1, 3]))
        .meta("big", Meta::U64(1 << 40))
        .tensor(
            "w.q4_1",
            &[32, 2],
            GgmlType::Q4_1.id(),
            quantize_row(GgmlType::Q4_1, &w),
        )
        .tensor(
            "w.f32",
            &[3],
            GgmlType::F32.id(),
            quantize_row(GgmlType::F32, &[1.0, 2.0, 3.0]),
        )
}

fn open_bytes(bytes: &[u8], name: &str) -> Result<GgufFile, GgufError> {
    let p = temp_path(name);
    std::fs::write(&p, bytes).unwrap();
    let r = GgufFile::open(&p);
    std::fs::remove_file(&p).ok();
    r
}

#[test]
fn reads_metadata_and_tensors() {
    let f = open_bytes(&sample().to_bytes(), "ok.gguf").expect("valid file");
    assert_eq!(f.version, 3);
    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(f.get_u64("big").unwrap(), 1 << 40);
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 10000.0);
    assert!(!f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap(),
        vec!["a", "b"]
    );
    assert_eq!(
        f.get_i64_array("tokenizer.ggml.token_type").unwrap(),
        vec![1, 3]
    );
    assert!(matches!(
        f.get("llama.rope.freq_base").unwrap(),
        Value::F32(_)
    ));
    let t = f.tensor_info("w.f32").unwrap();
    assert_eq!(
        (t.ty, t.dims.clone(), t.offset % 32),
        (GgmlType::F32, vec![3], 0)
    );
    let data = f.tensor_data(t);
    assert_eq!(f32::from_le_bytes(data[8..12].try_into().unwrap()), 3.0);
    let q = f.tensor_info("w.q4_1").unwrap();
    assert_eq!(q.size, 2 * 20);
    assert!(matches!(
        f.get_str("llama.block_count"),
        Err(GgufError::KeyType { .. })
    ));
    assert!(matches!(
        f.get("missing"),
        Err(GgufError::MissingKey { .. })
    ));
    assert!(matches!(
        f.tensor_info("nope"),
        Err(GgufError::MissingTensor { .. })
    ));
}

#[test]
fn missing_file() {
    let e = GgufFile::open("/nonexistent/model.gguf").err().unwrap();
    assert!(matches!(e, GgufError::NotFound { .. }));
    assert!(e.to_string().contains("/nonexistent/model.gguf"));
}

#[test]
fn not_gguf() {
    let e = open_bytes(b"PK\x03\x04 this is a zip", "zip.gguf")
        .err()
        .unwrap();
    assert!(matches!(e, GgufError::NotGguf { .. }), "{e}");
    assert!(matches!(
        open_bytes(b"GG", "tiny.gguf").err().unwrap(),
        GgufError::NotGguf { .. }
    ));
    assert!(matches!(
        open_bytes(b"", "empty.gguf").err().unwrap(),
        GgufError::NotGguf { .. }
    ));
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample().to_bytes();
    for len in (4..bytes.len()).step_by(7) {
        match open_bytes(&bytes[..len], "cut.gguf") {
            Err(GgufError::Truncated { .. }) => {}
            other => panic!("cut at {len}: {:?}", other.map(|_| "opened")),
        }
    }
}

#[test]
fn unsupported_tensor_type_is_named() {
    let bytes = GgufWriter::new()
        .tensor("blk.0.ffn_down.weight", &[256], 11, vec![0; 110])
        .to_bytes();
    let e = open_bytes(&bytes, "q3k.gguf").err().unwrap();
    let msg = e.to_string();
    assert!(
        msg.contains("Q3_K") && msg.contains("blk.0.ffn_down.weight"),
        "{msg}"
    );
}

#[test]
fn wrong_version_and_garbage_counts() {
    let mut bytes = sample().to_bytes();
    bytes[4] = 9;
    assert!(matches!(
        open_bytes(&bytes, "v9.gguf").err().unwrap(),
        GgufError::Version { version: 9, .. }
    ));
    let mut bytes = sample().to_bytes();
    bytes[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        open_bytes(&bytes, "count.gguf").err().unwrap(),
        GgufError::Truncated { .. }
    ));
}

#[test]
fn unsupported_architecture_is_named() {
    let bytes = GgufWriter::new()
        .meta("general.architecture", Meta::Str("mamba".into()))
        .to_bytes();
    let p = temp_path("mamba.gguf");
    std::fs::write(&p, bytes).unwrap();
    let f = std::sync::Arc::new(GgufFile::open(&p).unwrap());
    std::fs::remove_file(&p).ok();
    let msg = cordial_model::Model::load(f).err().unwrap().to_string();
    assert!(msg.contains("mamba") && msg.contains("llama"), "{msg}");
}
