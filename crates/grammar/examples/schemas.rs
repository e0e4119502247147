//! Compiles JSON Schema files one by one on the default model's vocabulary, as `response_format`
//! would, and prints one line per file: `path <TAB> ok|err <TAB> milliseconds <TAB> message`.
//! The survey behind the size and time limits and the JSONSchemaBench acceptance figures.
//!
//! `cargo run --release -p cordial-grammar --example schemas -- FILE...` (or file names on
//! stdin, one a line, when no FILE is given). Each file is compiled by the same compiler (the
//! cache holds at most its usual 128 entries; every file here is new to it). `SCHEMAS_DUMP=1`
//! prints each prepared schema (what llguidance compiles) to stderr, `SCHEMAS_DUMP=time` the
//! time the preparation alone took.

use std::io::BufRead;
use std::sync::Arc;
use std::time::Instant;

use cordial_grammar::{GrammarCompiler, GrammarLimits, GrammarSpec};
use cordial_model::gguf::GgufFile;
use cordial_tokenizer::Tokenizer;
use serde_json::Value;

fn main() {
    let mut files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        files = std::io::stdin()
            .lock()
            .lines()
            .map_while(Result::ok)
            .filter(|l| !l.trim().is_empty())
            .collect();
    }
    let path = cordial_model::fetch::ensure_default_model().unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap());
    let compiler =
        GrammarCompiler::new(tok.clone(), tok.vocab_size(), GrammarLimits::default()).unwrap();
    let (mut ok, mut total) = (0, 0);
    for file in &files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                println!("{file}\terr\t0\tread: {e}");
                continue;
            }
        };
        let schema: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                println!("{file}\terr\t0\tjson: {e}");
                continue;
            }
        };
        total += 1;
        if let Ok(how) = std::env::var("SCHEMAS_DUMP") {
            let t = Instant::now();
            let prepared = cordial_grammar::prepared_schema(&schema);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            match prepared {
                Ok(v) if how != "time" => {
                    eprintln!("{}", serde_json::to_string_pretty(&v).unwrap())
                }
                Ok(_) => eprintln!("{file}: prepared in {ms:.1} ms"),
                Err(e) => eprintln!("{file}: prepare: {e}"),
            }
        }
        let t = Instant::now();
        let r = compiler.compile(&GrammarSpec::JsonSchema(schema));
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match r {
            Ok(_) => {
                ok += 1;
                println!("{file}\tok\t{ms:.1}\t");
            }
            Err(e) => println!("{file}\terr\t{ms:.1}\t{e}"),
        }
    }
    eprintln!("{ok}/{total} compiled");
}
