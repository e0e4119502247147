//! Times loading the default model's tokenizer and encoding/decoding a few thousand tokens:
//! `cargo run --release -p cordial-tokenizer --example encode_bench`.

use std::time::Instant;

use cordial_model::gguf::GgufFile;
use cordial_tokenizer::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args().nth(1) {
        Some(p) => p.into(),
        None => cordial_model::fetch::ensure_default_model()?,
    };
    let gguf = GgufFile::open(&path)?;
    let start = Instant::now();
    let t = Tokenizer::from_gguf(&gguf)?;
    println!("load: {:?}", start.elapsed());

    let paragraph = "The quick brown fox jumps over the lazy dog. In 2024, 3.14159 people wrote \
                     `fn main() { println!(\"hi\"); }` and 日本語のテキスト 😀.\n<|im_start|>user\nhi<|im_end|>\n";
    let text = paragraph.repeat(60);
    for round in 0..5 {
        let start = Instant::now();
        let ids = t.encode(&text, false);
        let encode = start.elapsed();
        let start = Instant::now();
        let back = t.decode(&ids, false);
        let decode = start.elapsed();
        assert_eq!(back, text);
        let start = Instant::now();
        let mut d = t.incremental_decoder(true);
        let mut streamed = String::new();
        for &id in &ids {
            d.push_to(&t, id, &mut streamed);
        }
        let stream = start.elapsed();
        println!(
            "round {round}: encode {} tokens {encode:?}; decode {decode:?}; stream {stream:?}",
            ids.len()
        );
    }
    Ok(())
}
