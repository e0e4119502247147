//! JSON text as Python's `json.dumps(value, ensure_ascii=False, indent=indent)` writes it,
//! which is what chat templates' `tojson` produces under `transformers`: `", "` and `": "`
//! separators (`","` at line ends when indented), keys in their given order, no HTML escaping.

use serde_json::Value;

/// `json.dumps(value, ensure_ascii=False, indent=indent)`.
pub fn dumps(value: &Value, indent: Option<usize>) -> String {
    let mut out = String::new();
    write(value, indent, 0, &mut out);
    out
}

fn newline(indent: Option<usize>, depth: usize, out: &mut String) {
    if let Some(n) = indent {
        out.push('\n');
        out.push_str(&" ".repeat(n * depth));
    }
}

fn write(value: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let sep = if indent.is_some() { "," } else { ", " };
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(indent, depth + 1, out);
                write(item, indent, depth + 1, out);
            }
            newline(indent, depth, out);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                newline(indent, depth + 1, out);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write(v, indent, depth + 1, out);
            }
            newline(indent, depth, out);
            out.push('}');
        }
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(0.0);
            if f.fract() == 0.0 && f.abs() < 1e16 {
                out.push_str(&format!("{f:.1}"));
            } else {
                out.push_str(&n.to_string());
            }
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn matches_python_json_dumps() {
        let v = json!({"a": [1, 2.0, "é<"], "b": {}, "c": [], "d": null, "e": true});
        assert_eq!(
            dumps(&v, None),
            r#"{"a": [1, 2.0, "é<"], "b": {}, "c": [], "d": null, "e": true}"#
        );
        assert_eq!(
            dumps(&json!({"a": [1, {"b": 2}]}), Some(2)),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": 2\n    }\n  ]\n}"
        );
    }
}
