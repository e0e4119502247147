//! JSON serialization with every non-ASCII character escaped as `\uXXXX` (UTF-16, surrogate
//! pairs above U+FFFF). SSE lines must not contain U+0085, U+2028 or U+2029: friendli-client
//! splits lines on them (httpx's `iter_lines`); escaping all non-ASCII is the simple, safe rule.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;

/// Compact output (the trait's defaults) with non-ASCII characters in strings escaped.
struct AsciiFormatter;

impl Formatter for AsciiFormatter {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            if ch.is_ascii() {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Serializes `value` as one line of compact JSON with non-ASCII escaped.
pub fn to_ascii_json<T: Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, AsciiFormatter);
    value
        .serialize(&mut ser)
        .expect("wire types always serialize");
    String::from_utf8(out).expect("the output is ASCII")
}

/// One SSE event: `data: <json>\n\n`.
pub fn sse_event<T: Serialize + ?Sized>(value: &T) -> String {
    format!("data: {}\n\n", to_ascii_json(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_non_ascii_and_line_separators() {
        let v = json!({"n": [1, 2], "t": "é\u{2028}x\u{85}😀"});
        let s = to_ascii_json(&v);
        assert_eq!(s, r#"{"n":[1,2],"t":"\u00e9\u2028x\u0085\ud83d\ude00"}"#);
        assert!(s.is_ascii());
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn control_characters_and_quotes_stay_escaped() {
        assert_eq!(to_ascii_json("a\n\"b\"\t"), r#""a\n\"b\"\t""#);
        assert_eq!(sse_event(&json!({"a": 1})), "data: {\"a\":1}\n\n");
    }
}
