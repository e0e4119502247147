//! `response_format` (`text`, `json_object` with or without a schema, `json_schema`, `regex`)
//! → a grammar constraint for the engine.
//!
//! `text`: none. `json_object`: `schema` is a JSON Schema as a string, or absent for any JSON
//! object. `json_schema` (OpenAI): `json_schema.schema` is the schema itself. `regex`: `schema`
//! is the pattern; the whole output matches it. Compiling happens here, at validation time (the
//! route runs such requests off the async workers; the compile itself runs on a thread of the
//! grammar crate, and the request waits at most its time limit); any compile error is a 422
//! naming `response_format` with the reason, which names the schema keyword (and where it is)
//! when one cannot be enforced. What JSON Schema is accepted, and how: `docs/structured-output.md`.

use cordial_engine::SharedConstraint;
use cordial_grammar::{GrammarCompiler, GrammarSpec};
use serde_json::Value;

use crate::error::ValidationError;
use crate::protocol::ResponseFormat;

const PARAM: &str = "response_format";

fn invalid(message: String) -> ValidationError {
    ValidationError::new(PARAM, message)
}

/// The grammar spec of a format (`None` for `text`). The type itself was checked by the rules.
pub(crate) fn spec(f: &ResponseFormat) -> Result<Option<GrammarSpec>, ValidationError> {
    Ok(match f.kind.as_str() {
        "json_object" => Some(GrammarSpec::JsonSchema(match &f.schema {
            None => serde_json::json!({"type": "object"}),
            Some(s) => serde_json::from_str::<Value>(s)
                .map_err(|e| invalid(format!("`response_format.schema` is not valid JSON: {e}")))?,
        })),
        "json_schema" => {
            let schema = f.json_schema.as_ref().and_then(|j| j.get("schema"));
            match schema {
                // OpenAI clients may send the schema as a JSON string too.
                Some(Value::String(s)) => Some(GrammarSpec::JsonSchema(
                    serde_json::from_str(s).map_err(|e| {
                        invalid(format!(
                            "`response_format.json_schema.schema` is not valid JSON: {e}"
                        ))
                    })?,
                )),
                Some(v) => Some(GrammarSpec::JsonSchema(v.clone())),
                None => return Err(invalid("`json_schema.schema` is required".into())),
            }
        }
        "regex" => Some(GrammarSpec::Regex(f.schema.clone().unwrap_or_default())),
        _ => None,
    })
}

/// The request's constraint, compiled (or from the compiler's cache).
pub(crate) fn constraint(
    format: Option<&ResponseFormat>,
    compiler: Option<&GrammarCompiler>,
) -> Result<Option<SharedConstraint>, ValidationError> {
    let Some(spec) = format.map(spec).transpose()?.flatten() else {
        return Ok(None);
    };
    let compiler = compiler
        .ok_or_else(|| invalid("structured output is not available for this model".into()))?;
    let what = match spec {
        GrammarSpec::JsonSchema(_) => "JSON schema",
        GrammarSpec::Regex(_) => "regex",
    };
    let grammar = compiler.compile(&spec).map_err(|e| {
        invalid(format!(
            "the {what} of `response_format` cannot be used: {e}"
        ))
    })?;
    Ok(Some(grammar))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(kind: &str, schema: Option<&str>, json_schema: Option<Value>) -> ResponseFormat {
        ResponseFormat {
            kind: kind.into(),
            schema: schema.map(Into::into),
            json_schema,
        }
    }

    #[test]
    fn specs_of_each_kind() {
        assert_eq!(spec(&fmt("text", None, None)).unwrap(), None);
        assert_eq!(
            spec(&fmt("json_object", None, None)).unwrap(),
            Some(GrammarSpec::JsonSchema(
                serde_json::json!({"type": "object"})
            ))
        );
        assert_eq!(
            spec(&fmt("json_object", Some(r#"{"type":"array"}"#), None)).unwrap(),
            Some(GrammarSpec::JsonSchema(
                serde_json::json!({"type": "array"})
            ))
        );
        let openai = serde_json::json!({"name": "x", "schema": {"type": "integer"}});
        assert_eq!(
            spec(&fmt("json_schema", None, Some(openai))).unwrap(),
            Some(GrammarSpec::JsonSchema(
                serde_json::json!({"type": "integer"})
            ))
        );
        assert_eq!(
            spec(&fmt("regex", Some("[a-z]+"), None)).unwrap(),
            Some(GrammarSpec::Regex("[a-z]+".into()))
        );
        let e = spec(&fmt("json_object", Some("{not json"), None)).unwrap_err();
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
    }

    #[test]
    fn without_a_compiler_structured_output_is_refused() {
        let e = constraint(Some(&fmt("regex", Some("a"), None)), None).unwrap_err();
        assert_eq!(e.param.as_deref(), Some(PARAM));
        assert!(constraint(Some(&fmt("text", None, None)), None)
            .unwrap()
            .is_none());
    }
}
