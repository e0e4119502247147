//! Phase 1 of validation: body bytes → typed wire request, with the request's flavor (400 or
//! 422 for validation errors), stream dialect (legacy or current) and served model name decided
//! from the raw JSON object.
//!
//! The body is parsed into a `serde_json::Value` first (never with axum's `Json` extractor), so
//! that malformed JSON is a 400 and a field of the wrong type is a 422/400 naming that field.

use axum::http::HeaderMap;
use serde_json::{Map, Value};

use super::build::LengthDefault;
use crate::error::{ApiError, Flavor, ValidationError};
use crate::protocol::{CompletionRequest, Tag};

/// The streaming dialect of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `token_sampled` … `complete`, no `[DONE]`.
    Legacy,
    /// OpenAI-shaped chunks with `token`, a finish chunk, optional usage chunk, `[DONE]`.
    Current,
}

/// A request that parsed, names a served model and has fields of the right types.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    pub req: CompletionRequest,
    pub flavor: Flavor,
    pub dialect: Dialect,
    /// The `max_tokens` of a request that sets no length.
    pub length_default: LengthDefault,
    /// The name to report in responses: the one requested, or the primary served name.
    pub model: String,
}

/// The header that overrides dialect detection (`legacy` or `current`).
pub const STREAM_FORMAT_HEADER: &str = "x-stream-format";

/// Parses and types a request body. `served` lists the accepted model names, primary first.
pub fn parse_request(
    body: &[u8],
    headers: &HeaderMap,
    served: &[String],
) -> Result<ParsedRequest, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::BadRequest(
            "the request body must be a JSON object".into(),
        ));
    };
    let flavor = detect_flavor(&obj, headers);
    let model = check_model(&obj, served, flavor)?;
    let dialect = detect_dialect(&obj, headers, flavor)?;
    let req = decode_fields(obj, flavor)?;
    Ok(ParsedRequest {
        req,
        flavor,
        dialect,
        length_default: LengthDefault::of(flavor),
        model,
    })
}

/// OpenAI-flavoured (validation errors are 400): `User-Agent: OpenAI/…`, a non-null key tagged
/// `OpenAi`, `prompt` as an array, or `stop` as a bare string. Otherwise Friendli (422).
pub fn detect_flavor(obj: &Map<String, Value>, headers: &HeaderMap) -> Flavor {
    let ua = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let non_null = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let openai = ua.starts_with("OpenAI/")
        || CompletionRequest::tagged(Tag::OpenAi).any(non_null)
        || obj.get("prompt").is_some_and(Value::is_array)
        || obj.get("stop").is_some_and(Value::is_string);
    if openai {
        Flavor::OpenAi
    } else {
        Flavor::Friendli
    }
}

/// The `X-Stream-Format` header wins; then any key tagged `Legacy`, even `null`, means legacy;
/// otherwise current.
pub fn detect_dialect(
    obj: &Map<String, Value>,
    headers: &HeaderMap,
    flavor: Flavor,
) -> Result<Dialect, ApiError> {
    if let Some(v) = headers.get(STREAM_FORMAT_HEADER) {
        return match v.to_str().map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            Ok("legacy") => Ok(Dialect::Legacy),
            Ok("current") => Ok(Dialect::Current),
            _ => Err(ApiError::Invalid(
                ValidationError::new(
                    "X-Stream-Format",
                    "the X-Stream-Format header must be `legacy` or `current`",
                ),
                flavor,
            )),
        };
    }
    if CompletionRequest::tagged(Tag::Legacy).any(|k| obj.contains_key(k)) {
        Ok(Dialect::Legacy)
    } else {
        Ok(Dialect::Current)
    }
}

/// Decision 4: absent or null = the primary served name; a served name or alias is accepted;
/// anything else is 404 `model_not_found` (checked before the other fields).
pub(crate) fn check_model(
    obj: &Map<String, Value>,
    served: &[String],
    flavor: Flavor,
) -> Result<String, ApiError> {
    let primary = || served.first().cloned().unwrap_or_default();
    match obj.get("model") {
        None | Some(Value::Null) => Ok(primary()),
        Some(Value::String(name)) if served.iter().any(|s| s == name) => Ok(name.clone()),
        Some(Value::String(name)) => Err(ApiError::ModelNotFound(name.clone())),
        Some(_) => Err(ApiError::Invalid(
            ValidationError::new("model", "`model` must be a string"),
            flavor,
        )),
    }
}

/// Converts the object into the typed request. On a type error, finds the offending field by
/// decoding each field alone, so that the error names it.
pub(crate) fn decode_fields(
    obj: Map<String, Value>,
    flavor: Flavor,
) -> Result<CompletionRequest, ApiError> {
    let whole = Value::Object(obj);
    match serde_json::from_value::<CompletionRequest>(whole.clone()) {
        Ok(req) => Ok(req),
        Err(err) => {
            let Value::Object(obj) = whole else {
                unreachable!("built from an object")
            };
            let culprit = obj.into_iter().find_map(|(k, v)| {
                let single = Value::Object(Map::from_iter([(k.clone(), v)]));
                serde_json::from_value::<CompletionRequest>(single)
                    .err()
                    .map(|e| (k, e))
            });
            let v = match culprit {
                Some((field, e)) => {
                    ValidationError::new(&field, format!("`{field}` has the wrong type: {e}"))
                }
                None => ValidationError {
                    param: None,
                    message: err.to_string(),
                    code: None,
                },
            };
            Err(ApiError::Invalid(v, flavor))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Prompt, Seed, Stop, TokenInput};

    fn served() -> Vec<String> {
        vec!["main".to_owned(), "alias".to_owned()]
    }

    fn parse(body: &str) -> Result<ParsedRequest, ApiError> {
        parse_request(body.as_bytes(), &HeaderMap::new(), &served())
    }

    #[test]
    fn malformed_and_non_object_bodies_are_400() {
        for body in ["{", "[1]", "\"x\"", "", "null"] {
            let err = parse(body).unwrap_err();
            assert_eq!(err.status(), 400, "{body}");
        }
    }

    #[test]
    fn model_resolution() {
        assert_eq!(parse(r#"{"prompt":"x"}"#).unwrap().model, "main");
        assert_eq!(
            parse(r#"{"model":null,"prompt":"x"}"#).unwrap().model,
            "main"
        );
        assert_eq!(
            parse(r#"{"model":"alias","prompt":"x"}"#).unwrap().model,
            "alias"
        );
        let err = parse(r#"{"model":"other","stream":"yes"}"#).unwrap_err();
        assert_eq!(
            err.status(),
            404,
            "model is checked before the other fields"
        );
        let err = parse(r#"{"model":3}"#).unwrap_err();
        assert_eq!(err.detail().param.as_deref(), Some("model"));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let cases = [
            (r#"{"prompt":"x","stream":"yes"}"#, "stream"),
            (r#"{"prompt":5}"#, "prompt"),
            (r#"{"prompt":"x","max_tokens":1.5}"#, "max_tokens"),
            (r#"{"prompt":"x","seed":"1"}"#, "seed"),
            (r#"{"prompt":"x","stop_tokens":[{"t":[1]}]}"#, "stop_tokens"),
            (r#"{"tokens":[1,"a"]}"#, "tokens"),
            (
                r#"{"prompt":"x","response_format":{"schema":"{}"}}"#,
                "response_format",
            ),
        ];
        for (body, field) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.status(), 422, "{body}");
            assert_eq!(err.detail().param.as_deref(), Some(field), "{body}");
            assert!(err.to_string().contains(field), "{err}");
        }
        let err = parse(r#"{"prompt":["a"],"n":"2"}"#).unwrap_err();
        assert_eq!(
            err.status(),
            400,
            "a prompt array makes the request OpenAI-flavoured"
        );
    }

    #[test]
    fn nulls_are_absent_and_unknown_keys_ignored() {
        let p = parse(r#"{"prompt":"x","n":null,"seed":null,"whatever":{"a":1}}"#).unwrap();
        assert_eq!(p.req.n, None);
        assert_eq!(p.req.seed, None);
        assert_eq!(p.req.prompt, Some(Prompt::Text("x".into())));
    }

    #[test]
    fn union_fields_decode() {
        let p = parse(r#"{"prompt":[[1,2],[3]],"stop":"a","seed":-1}"#).unwrap();
        assert_eq!(
            p.req.prompt,
            Some(Prompt::TokenBatch(vec![vec![1, 2], vec![3]]))
        );
        assert_eq!(p.req.stop, Some(Stop::One("a".into())));
        assert_eq!(p.req.seed, Some(Seed::One(u64::MAX)));
        let p = parse(r#"{"tokens":[[1],[2]],"seed":[18446744073709551615, 0]}"#).unwrap();
        assert_eq!(
            p.req.tokens,
            Some(TokenInput::Batch(vec![vec![1], vec![2]]))
        );
        assert_eq!(p.req.seed, Some(Seed::Many(vec![u64::MAX, 0])));
    }

    #[test]
    fn flavor_detection() {
        let flavor = |body: &str| parse(body).unwrap().flavor;
        assert_eq!(flavor(r#"{"prompt":"x"}"#), Flavor::Friendli);
        assert_eq!(
            flavor(r#"{"prompt":"x","user":null,"echo":null}"#),
            Flavor::Friendli
        );
        assert_eq!(flavor(r#"{"prompt":"x","user":"u"}"#), Flavor::OpenAi);
        assert_eq!(flavor(r#"{"prompt":["x"]}"#), Flavor::OpenAi);
        assert_eq!(flavor(r#"{"prompt":"x","stop":"y"}"#), Flavor::OpenAi);
        assert_eq!(flavor(r#"{"prompt":"x","stop":["y"]}"#), Flavor::Friendli);
        let mut h = HeaderMap::new();
        h.insert("user-agent", "OpenAI/Python 3.57.0".parse().unwrap());
        let p = parse_request(br#"{"prompt":"x"}"#, &h, &served()).unwrap();
        assert_eq!(p.flavor, Flavor::OpenAi);
    }

    #[test]
    fn dialect_detection() {
        let dialect = |body: &str| parse(body).unwrap().dialect;
        assert_eq!(dialect(r#"{"prompt":"x","stream":true}"#), Dialect::Current);
        for key in CompletionRequest::tagged(Tag::Legacy) {
            let body = format!(r#"{{"prompt":"x","stream":true,"{key}":null}}"#);
            assert_eq!(dialect(&body), Dialect::Legacy, "{key}");
        }
        let mut h = HeaderMap::new();
        h.insert(STREAM_FORMAT_HEADER, "legacy".parse().unwrap());
        let p = parse_request(br#"{"prompt":"x"}"#, &h, &served()).unwrap();
        assert_eq!(p.dialect, Dialect::Legacy);
        h.insert(STREAM_FORMAT_HEADER, "Current".parse().unwrap());
        let p = parse_request(br#"{"prompt":"x","num_beams":null}"#, &h, &served()).unwrap();
        assert_eq!(
            p.dialect,
            Dialect::Current,
            "the header overrides detection"
        );
        h.insert(STREAM_FORMAT_HEADER, "sse".parse().unwrap());
        assert_eq!(
            parse_request(br#"{"prompt":"x"}"#, &h, &served())
                .unwrap_err()
                .status(),
            422
        );
    }
}
