//! Chat templates rendered by cordial (minijinja) equal Python jinja2's rendering under the
//! environment `transformers` uses: `fixtures/chat-templates.json`, written by
//! `scripts/make-chat-template-reference.py`. The first template is the default model's own,
//! and this test also checks that the fixture holds exactly what the model's GGUF carries.

use std::collections::BTreeMap;

use cordial_model::gguf::GgufFile;
use cordial_server::chat::ChatTemplate;
use cordial_tokenizer::Tokenizer;
use serde_json::{Map, Value};

fn fixture() -> Value {
    // Read when the test runs, not baked in: a test binary built from another checkout that
    // shares the target dir still reads this checkout's fixtures.
    let path = std::path::PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo test"),
    )
    .join("tests/fixtures/chat-templates.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture JSON")
}

fn compiled(doc: &Value) -> BTreeMap<String, ChatTemplate> {
    doc["templates"]
        .as_object()
        .expect("templates")
        .iter()
        .map(|(name, t)| {
            let s = |k: &str| t[k].as_str().expect(k).to_owned();
            let tpl = ChatTemplate::new(&s("source"), &s("bos"), &s("eos"))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            (name.clone(), tpl)
        })
        .collect()
}

#[test]
fn rendering_equals_python_jinja2() {
    let doc = fixture();
    let templates = compiled(&doc);
    let cases = doc["cases"].as_array().expect("cases");
    assert!(cases.len() >= 20, "the fixture lost its cases");
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let name = case["template"].as_str().unwrap();
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let kwargs: Map<String, Value> = case["kwargs"].as_object().cloned().unwrap_or_default();
        let got = templates[name].render(&case["messages"], agp, &kwargs);
        let ok = match (&case["expected"], &got) {
            (Value::String(want), Ok(got)) => want == got,
            (Value::Object(err), Err(e)) => e.0.contains(err["error"].as_str().unwrap()),
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "case {i} ({name}, add_generation_prompt={agp}):\n  want {:?}\n  got  {:?}",
                case["expected"], got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn fixture_holds_the_default_models_template() {
    let path = cordial_model::fetch::ensure_default_model().expect("default model");
    let file = GgufFile::open(&path).expect("gguf");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let doc = fixture();
    let t = &doc["templates"]["default-model"];
    assert_eq!(tok.chat_template(), t["source"].as_str());
    assert_eq!(tok.bos_text(), t["bos"].as_str());
    assert_eq!(tok.eos_text(), t["eos"].as_str());
    // The end of the assistant's turn ends generation.
    let im_end = tok.token_id("<|im_end|>").expect("<|im_end|>");
    assert!(tok.is_eog(im_end));
}
