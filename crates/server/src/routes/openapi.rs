//! `GET /openapi.json`: an OpenAPI 3.1 document of every route, built once from the wire types
//! (`protocol/`, `utoipa::ToSchema`). The request enums that serde reads through `TryFrom<Value>`
//! get their `oneOf` schemas here.

use std::borrow::Cow;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    RefOr, ResponseBuilder, ResponsesBuilder, SecurityRequirement,
};
use utoipa::{PartialSchema, ToSchema};

use crate::auth::OPEN_PATHS;
use crate::protocol::{
    ChunkError, CompletionChunk, CompletionRequest, CompletionResponse, DetokenizeRequest,
    DetokenizeResponse, ErrorBody, HealthBody, LegacyComplete, LegacyError, LegacyTokenSampled,
    LogitBias, ModelList, Prompt, Seed, Stop, TokenInput, TokenizeRequest, TokenizeResponse,
    TopLogprobs,
};
use crate::state::AppState;

fn string() -> Schema {
    ObjectBuilder::new().schema_type(Type::String).into()
}

fn integer() -> Schema {
    ObjectBuilder::new().schema_type(Type::Integer).into()
}

fn array(items: Schema) -> Schema {
    ArrayBuilder::new().items(RefOr::T(items)).into()
}

fn one_of(items: Vec<Schema>, description: &str) -> RefOr<Schema> {
    let mut b = OneOfBuilder::new().description(Some(description));
    for item in items {
        b = b.item(item);
    }
    RefOr::T(Schema::OneOf(b.build()))
}

macro_rules! manual_schema {
    ($ty:ty, $name:literal, $body:expr) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $body
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

manual_schema!(
    Prompt,
    "Prompt",
    one_of(
        vec![
            string(),
            array(string()),
            array(integer()),
            array(array(integer()))
        ],
        "A string, a batch of strings, a list of token ids, or a batch of lists of token ids."
    )
);
manual_schema!(
    TokenInput,
    "TokenInput",
    one_of(
        vec![array(integer()), array(array(integer()))],
        "A list of token ids, or one list per input."
    )
);
manual_schema!(
    Stop,
    "Stop",
    one_of(
        vec![string(), array(string())],
        "One stop phrase or a list."
    )
);
manual_schema!(
    Seed,
    "Seed",
    one_of(
        vec![integer(), array(integer())],
        "One seed, or one per choice (each in 0..2^64)."
    )
);
manual_schema!(
    LogitBias,
    "LogitBias",
    one_of(
        vec![
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(ObjectBuilder::new().schema_type(Type::Number)))
                .into(),
            array(array(ObjectBuilder::new().into())),
        ],
        "OpenAI's {\"token id\": bias} or llama.cpp's [[id, bias], ...] (not supported yet)."
    )
);
manual_schema!(
    TopLogprobs,
    "TopLogprobs",
    RefOr::T(
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("{token text: logprob}, most likely first."))
            .additional_properties(Some(ObjectBuilder::new().schema_type(Type::Number)))
            .into()
    )
);

/// `T` and every schema it references, for the components section.
fn with_refs<T: ToSchema>(out: &mut Vec<(String, RefOr<Schema>)>) {
    out.push((T::name().into_owned(), T::schema()));
    T::schemas(out);
}

fn reference<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

fn json_content<T: ToSchema>() -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(reference::<T>())).build()
}

fn error(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", json_content::<ErrorBody>())
        .build()
}

fn completion_operation(path: &str) -> utoipa::openapi::path::Operation {
    let body = RequestBodyBuilder::new()
        .required(Some(utoipa::openapi::Required::True))
        .content("application/json", json_content::<CompletionRequest>())
        .build();
    let mut events = OneOfBuilder::new().description(Some(
        "Server-sent events, one JSON object per `data:` line: CompletionChunk ... (ChunkError), \
         then `[DONE]` (current dialect); or LegacyTokenSampled ... LegacyComplete | LegacyError \
         (legacy dialect, chosen by a legacy key or `X-Stream-Format: legacy`).",
    ));
    for name in [
        CompletionChunk::name(),
        ChunkError::name(),
        LegacyTokenSampled::name(),
        LegacyComplete::name(),
        LegacyError::name(),
    ] {
        events = events.item(Ref::from_schema_name(name));
    }
    let events = RefOr::T(Schema::OneOf(events.build()));
    let ok = ResponseBuilder::new()
        .description("The completion (JSON), or its stream when `stream` is true.")
        .content("application/json", json_content::<CompletionResponse>())
        .content(
            "text/event-stream",
            ContentBuilder::new().schema(Some(events)).build(),
        )
        .build();
    OperationBuilder::new()
        .operation_id(Some(format!("complete{}", path.replace('/', "_"))))
        .summary(Some("Text completion (Friendli and OpenAI dialects)"))
        .request_body(Some(body))
        .responses(with_errors(ok, true))
        .build()
}

/// The answers every API route may give besides 200.
fn with_errors(ok: utoipa::openapi::Response, validates: bool) -> utoipa::openapi::Responses {
    let mut b = ResponsesBuilder::new()
        .response("200", ok)
        .response(
            "401",
            error("Missing or unknown API key (only when keys are configured)."),
        )
        .response(
            "403",
            error("The key belongs to another team than X-Friendli-Team."),
        )
        .response(
            "503",
            error("Loading, overloaded (Retry-After) or shutting down."),
        );
    if validates {
        b = b
            .response("400", error("Malformed JSON, a body that is not an object, or an OpenAI-style request's invalid field."))
            .response("404", error("Unknown `model`."))
            .response("408", error("The body did not arrive within the read timeout."))
            .response("413", error("The body is over the size limit."))
            .response("422", error("An invalid or unsupported field (named in `param`)."))
            .response("429", error("`timeout_microseconds` (or the server's default timeout) passed."));
    }
    b.build()
}

fn json_post<Req: ToSchema, Resp: ToSchema>(
    id: &str,
    summary: &str,
) -> utoipa::openapi::path::Operation {
    let body = RequestBodyBuilder::new()
        .required(Some(utoipa::openapi::Required::True))
        .content("application/json", json_content::<Req>())
        .build();
    let ok = ResponseBuilder::new()
        .description(summary)
        .content("application/json", json_content::<Resp>())
        .build();
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .request_body(Some(body))
        .responses(with_errors(ok, true))
        .build()
}

fn get_op(
    id: &str,
    summary: &str,
    ok: utoipa::openapi::Response,
) -> utoipa::openapi::path::Operation {
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .responses(with_errors(ok, false))
        .build()
}

fn text_response(description: &str, content_type: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            content_type,
            ContentBuilder::new().schema(Some(string())).build(),
        )
        .build()
}

/// The whole document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for path in [
        "/v1/completions",
        "/serverless/v1/completions",
        "/dedicated/v1/completions",
    ] {
        paths = paths.path(
            path,
            PathItem::new(HttpMethod::Post, completion_operation(path)),
        );
    }
    paths = paths
        .path(
            "/v1/tokenize",
            PathItem::new(
                HttpMethod::Post,
                json_post::<TokenizeRequest, TokenizeResponse>(
                    "tokenize",
                    "Tokenize a prompt as a completion would.",
                ),
            ),
        )
        .path(
            "/v1/detokenize",
            PathItem::new(
                HttpMethod::Post,
                json_post::<DetokenizeRequest, DetokenizeResponse>(
                    "detokenize",
                    "Token ids to text.",
                ),
            ),
        )
        .path(
            "/v1/models",
            PathItem::new(
                HttpMethod::Get,
                get_op(
                    "models",
                    "The served model names.",
                    ResponseBuilder::new()
                        .description("The served names")
                        .content("application/json", json_content::<ModelList>())
                        .build(),
                ),
            ),
        )
        .path(
            "/health",
            PathItem::new(
                HttpMethod::Get,
                get_op(
                    "health",
                    "200 once the model is loaded, 503 before.",
                    ResponseBuilder::new()
                        .description("Serving")
                        .content("application/json", json_content::<HealthBody>())
                        .build(),
                ),
            ),
        )
        .path(
            "/metrics",
            PathItem::new(
                HttpMethod::Get,
                get_op(
                    "metrics",
                    "Prometheus metrics (text format 0.0.4).",
                    text_response("Metrics", "text/plain"),
                ),
            ),
        )
        .path(
            "/openapi.json",
            PathItem::new(
                HttpMethod::Get,
                get_op(
                    "openapi",
                    "This document.",
                    text_response("OpenAPI 3.1", "application/json"),
                ),
            ),
        );
    let mut schemas = Vec::new();
    with_refs::<CompletionRequest>(&mut schemas);
    with_refs::<CompletionResponse>(&mut schemas);
    with_refs::<ErrorBody>(&mut schemas);
    with_refs::<TokenizeRequest>(&mut schemas);
    with_refs::<TokenizeResponse>(&mut schemas);
    with_refs::<DetokenizeRequest>(&mut schemas);
    with_refs::<DetokenizeResponse>(&mut schemas);
    with_refs::<ModelList>(&mut schemas);
    with_refs::<HealthBody>(&mut schemas);
    with_refs::<CompletionChunk>(&mut schemas);
    with_refs::<ChunkError>(&mut schemas);
    with_refs::<LegacyTokenSampled>(&mut schemas);
    with_refs::<LegacyComplete>(&mut schemas);
    with_refs::<LegacyError>(&mut schemas);
    let components = ComponentsBuilder::new()
        .schemas_from_iter(schemas)
        .security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        )
        .build();
    let mut doc = OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("cordial")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some("Friendli/OpenAI text completions. With API keys configured, every route but /health, /metrics and /openapi.json needs `Authorization: Bearer <key>`."))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build();
    // Keys (when configured) are required everywhere but the open paths.
    for (path, item) in doc.paths.paths.iter_mut() {
        if OPEN_PATHS.contains(&path.as_str()) {
            continue;
        }
        for op in [&mut item.get, &mut item.post].into_iter().flatten() {
            op.security = Some(vec![SecurityRequirement::new(
                "bearer",
                Vec::<String>::new(),
            )]);
        }
    }
    doc
}

/// Single-field value ranges that `validate/rules.rs` enforces, as JSON-schema bounds:
/// (field, minimum, maximum, whether the minimum is exclusive). A unit test checks each bound
/// against the rules, so the two cannot drift apart.
const RANGES: &[(&str, Option<f64>, Option<f64>, bool)] = &[
    ("max_tokens", Some(1.0), None, false),
    ("max_total_tokens", Some(1.0), None, false),
    ("min_tokens", Some(0.0), None, false),
    ("min_total_tokens", Some(0.0), None, false),
    ("timeout_microseconds", Some(0.0), None, true),
    ("n", Some(1.0), Some(crate::validate::MAX_N as f64), false),
    ("temperature", Some(0.0), None, false),
    ("top_k", Some(0.0), None, false),
    ("top_p", Some(0.0), Some(1.0), true),
    ("min_p", Some(0.0), Some(1.0), false),
    ("frequency_penalty", Some(-2.0), Some(2.0), false),
    ("presence_penalty", Some(-2.0), Some(2.0), false),
    ("repetition_penalty", Some(1.0), None, false),
    ("no_repeat_ngram", Some(1.0), None, false),
    ("logprobs", Some(0.0), Some(20.0), false),
];

/// The document for a server: `model` lists the served names (any other is 404); exactly one
/// of `prompt` and `tokens`; the value ranges of [`RANGES`].
pub fn served_document(served: &[String]) -> serde_json::Value {
    let mut doc = serde_json::to_value(document()).unwrap_or_default();
    let mut names: Vec<serde_json::Value> = served.iter().map(|n| n.as_str().into()).collect();
    names.push(serde_json::Value::Null);
    for schema in ["CompletionRequest", "TokenizeRequest", "DetokenizeRequest"] {
        if let Some(model) = doc
            .pointer_mut(&format!("/components/schemas/{schema}/properties/model"))
            .and_then(serde_json::Value::as_object_mut)
        {
            model.insert("enum".into(), names.clone().into());
            model.insert(
                "description".into(),
                "A served name (GET /v1/models); absent or null: the primary one.".into(),
            );
        }
    }
    // Exactly one input: `prompt` or `tokens`, not null.
    if let Some(req) = doc
        .pointer_mut("/components/schemas/CompletionRequest")
        .and_then(serde_json::Value::as_object_mut)
    {
        let branch = |field: &str, schema: &str| {
            serde_json::json!({
                "required": [field],
                "properties": {field: {"$ref": format!("#/components/schemas/{schema}")}}
            })
        };
        let one_of = vec![branch("prompt", "Prompt"), branch("tokens", "TokenInput")];
        req.insert("oneOf".into(), one_of.into());
    }
    add_chat(&mut doc);
    for (field, min, max, exclusive) in RANGES {
        let path = format!("/components/schemas/CompletionRequest/properties/{field}");
        let Some(prop) = doc
            .pointer_mut(&path)
            .and_then(serde_json::Value::as_object_mut)
        else {
            continue;
        };
        if let Some(min) = min {
            let key = if *exclusive {
                "exclusiveMinimum"
            } else {
                "minimum"
            };
            prop.insert(key.into(), (*min).into());
        }
        if let Some(max) = max {
            prop.insert("maximum".into(), (*max).into());
        }
    }
    doc
}

/// `POST /v1/chat/completions`: its request is the completions request without the
/// completions-only keys, with `messages` and the chat fields; described here from the
/// completions schema so the two cannot drift apart.
fn add_chat(doc: &mut serde_json::Value) {
    use crate::protocol::chat::NOT_CHAT_KEYS;
    use serde_json::json;
    let Some(mut props) = doc
        .pointer("/components/schemas/CompletionRequest/properties")
        .and_then(serde_json::Value::as_object)
        .cloned()
    else {
        return;
    };
    for key in NOT_CHAT_KEYS {
        props.remove(*key);
    }
    let text = json!({"type": "string"});
    props.insert("messages".into(), json!({
        "type": "array", "minItems": 1,
        "description": "The conversation, rendered with the model's chat template.",
        "items": {"type": "object", "required": ["role"], "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
            "content": {"oneOf": [text, {"type": "array", "items": {"type": "object", "properties": {
                "type": {"const": "text"}, "text": {"type": "string"}}}}, {"type": "null"}]},
            "name": {"type": "string"}}}}));
    props.insert("logprobs".into(), json!({"type": ["boolean", "null"]}));
    props.insert(
        "top_logprobs".into(),
        json!({"type": ["integer", "null"], "minimum": 0, "maximum": 20}),
    );
    props.insert(
        "max_completion_tokens".into(),
        json!({"type": ["integer", "null"], "minimum": 1}),
    );
    props.insert(
        "add_generation_prompt".into(),
        json!({"type": ["boolean", "null"]}),
    );
    props.insert(
        "chat_template_kwargs".into(),
        json!({"type": ["object", "null"]}),
    );
    let request = json!({"type": "object", "required": ["messages"], "properties": props});
    let choice = json!({"type": "object", "properties": {
        "index": {"type": "integer"},
        "message": {"type": "object", "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}},
        "logprobs": {"type": ["object", "null"]},
        "finish_reason": {"type": ["string", "null"]}}});
    let response = json!({"type": "object", "properties": {
        "id": {"type": "string"}, "object": {"const": "chat.completion"},
        "created": {"type": "integer"}, "model": {"type": "string"},
        "choices": {"type": "array", "items": choice},
        "usage": {"$ref": "#/components/schemas/Usage"}}});
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    {
        schemas.insert("ChatCompletionRequest".into(), request);
        schemas.insert("ChatCompletionResponse".into(), response);
    }
    let op = json!({"post": {
        "operationId": "chat_completions",
        "summary": "Chat completion (OpenAI dialect); `stream: true` gives chat.completion.chunk events then [DONE].",
        "security": [{"bearer": []}],
        "requestBody": {"required": true, "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}}},
        "responses": {
            "200": {"description": "The completion, or its stream", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionResponse"}},
                "text/event-stream": {"schema": {"type": "string"}}}},
            "400": {"description": "Invalid request", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorBody"}}}},
            "401": {"description": "Missing or wrong API key"},
            "404": {"description": "Unknown model"},
            "503": {"description": "Loading, overloaded or shutting down"}}}});
    if let Some(paths) = doc
        .pointer_mut("/paths")
        .and_then(serde_json::Value::as_object_mut)
    {
        paths.insert("/v1/chat/completions".into(), op);
    }
}

pub async fn openapi(State(state): State<AppState>) -> Response {
    let body = state
        .openapi_json()
        .get_or_init(|| served_document(state.served_names()).to_string());
    ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::KNOWN_FIELDS;

    /// Each bound of `RANGES` is exactly where the rules start refusing.
    #[test]
    fn documented_ranges_match_the_rules() {
        use crate::validate::{check_rules, Limits};
        let limits = Limits {
            vocab_size: 1000,
            max_context: 256,
            hidden_size: 8,
            kv: cordial_engine::KvCapacity {
                block_size: 16,
                blocks: 1024,
            },
        };
        const FLOATS: [&str; 6] = [
            "temperature",
            "top_p",
            "min_p",
            "frequency_penalty",
            "presence_penalty",
            "repetition_penalty",
        ];
        let check = |field: &str, v: f64| {
            let value = if FLOATS.contains(&field) {
                serde_json::json!(v)
            } else {
                serde_json::json!(v as i64)
            };
            let body = serde_json::json!({"prompt": "x", field: value});
            let req: crate::protocol::CompletionRequest = serde_json::from_value(body).unwrap();
            check_rules(&req, &limits).map_err(|e| e.param)
        };
        let step = |field: &str| if FLOATS.contains(&field) { 0.01 } else { 1.0 };
        for (field, min, max, exclusive) in RANGES {
            let d = step(field);
            if let Some(min) = min {
                let inside = if *exclusive { min + d } else { *min };
                let outside = if *exclusive { *min } else { min - d };
                assert!(check(field, inside).is_ok(), "{field}={inside}");
                assert_eq!(
                    check(field, outside),
                    Err(Some(field.to_string())),
                    "{field}={outside}"
                );
            }
            if let Some(max) = max {
                assert!(check(field, *max).is_ok(), "{field}={max}");
                assert_eq!(
                    check(field, max + d),
                    Err(Some(field.to_string())),
                    "{field}={}",
                    max + d
                );
            }
        }
        let doc = served_document(&["m".to_owned()]);
        let one_of = &doc["components"]["schemas"]["CompletionRequest"]["oneOf"];
        assert_eq!(one_of[0]["required"], serde_json::json!(["prompt"]));
        assert_eq!(one_of[1]["required"], serde_json::json!(["tokens"]));
        let n = &doc["components"]["schemas"]["CompletionRequest"]["properties"]["n"];
        assert_eq!(n["minimum"], 1.0);
        assert_eq!(n["maximum"], crate::validate::MAX_N as f64);
    }

    #[test]
    fn every_request_field_and_route_is_described() {
        let doc = serde_json::to_value(document()).unwrap();
        std::fs::write(
            "/tmp/openapi8.json",
            serde_json::to_string_pretty(&doc).unwrap(),
        )
        .unwrap();
        let props = &doc["components"]["schemas"]["CompletionRequest"]["properties"];
        for field in KNOWN_FIELDS {
            assert!(
                props.get(*field).is_some(),
                "{field} missing from the schema"
            );
        }
        for path in [
            "/v1/completions",
            "/serverless/v1/completions",
            "/dedicated/v1/completions",
            "/v1/tokenize",
            "/v1/detokenize",
            "/v1/models",
            "/health",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path}");
        }
        // Every reference resolves.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling {name}"
            );
        }
        let served = served_document(&["a".to_owned(), "b".to_owned()]);
        let chat = &served["components"]["schemas"]["ChatCompletionRequest"];
        assert!(
            chat["properties"]["messages"].is_object() && chat["properties"]["prompt"].is_null()
        );
        assert!(served["paths"]["/v1/chat/completions"]["post"].is_object());
        assert!(served["components"]["schemas"]["Usage"].is_object());
        let model = &served["components"]["schemas"]["TokenizeRequest"]["properties"]["model"];
        assert_eq!(
            model["enum"],
            serde_json::json!(["a", "b", null]),
            "{model}"
        );
        let prompt = &doc["components"]["schemas"]["Prompt"]["oneOf"];
        assert_eq!(prompt.as_array().map(Vec::len), Some(4), "{prompt}");
    }
}
