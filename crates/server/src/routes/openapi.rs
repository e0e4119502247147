//! `GET /openapi.json`: an OpenAPI 3.1 document of every route, built once from the wire types
//! (`protocol/`, `utoipa::ToSchema`, value ranges included). The request enums that serde reads
//! through `TryFrom<Value>` get their `oneOf` schemas here; the chat request is the completions
//! request less its `NotChat` fields, plus `ChatFields`.

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
    ChatChunk, ChatCompletionResponse, ChatFields, ChunkError, CompletionChunk, CompletionRequest,
    CompletionResponse, DetokenizeRequest, DetokenizeResponse, ErrorBody, HealthBody,
    LegacyComplete, LegacyError, LegacyTokenSampled, LogitBias, ModelList, Prompt, RenderedPrompt,
    Seed, Stop, Tag, TokenInput, TokenizeRequest, TokenizeResponse, TopLogprobs,
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

/// A generation route: `request` in, `response` (JSON) or `events` (SSE) out.
fn generation_operation(
    id: &str,
    summary: &str,
    request: RefOr<Schema>,
    response: RefOr<Schema>,
    events: &[Cow<'static, str>],
    events_description: &str,
) -> utoipa::openapi::path::Operation {
    let body = RequestBodyBuilder::new()
        .required(Some(utoipa::openapi::Required::True))
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(request)).build(),
        )
        .build();
    let mut one_of = OneOfBuilder::new().description(Some(events_description));
    for name in events {
        one_of = one_of.item(Ref::from_schema_name(name.clone()));
    }
    let ok = ResponseBuilder::new()
        .description("The answer (JSON), or its stream when `stream` is true.")
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(response)).build(),
        )
        .content(
            "text/event-stream",
            ContentBuilder::new()
                .schema(Some(RefOr::T(Schema::OneOf(one_of.build()))))
                .build(),
        )
        .build();
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .request_body(Some(body))
        .responses(with_errors(ok, true))
        .build()
}

fn completion_operation(path: &str) -> utoipa::openapi::path::Operation {
    generation_operation(
        &format!("complete{}", path.replace('/', "_")),
        "Text completion (Friendli and OpenAI dialects)",
        reference::<CompletionRequest>(),
        reference::<CompletionResponse>(),
        &[
            CompletionChunk::name(),
            ChunkError::name(),
            LegacyTokenSampled::name(),
            LegacyComplete::name(),
            LegacyError::name(),
        ],
        "Server-sent events, one JSON object per `data:` line: CompletionChunk ... (ChunkError), \
         then `[DONE]` (current dialect); or LegacyTokenSampled ... LegacyComplete | LegacyError \
         (legacy dialect, chosen by a legacy key or `X-Stream-Format: legacy`).",
    )
}

fn chat_operation() -> utoipa::openapi::path::Operation {
    generation_operation(
        "chat_completions",
        "Chat completion (OpenAI dialect): messages rendered with the model's chat template",
        RefOr::Ref(Ref::from_schema_name(CHAT_REQUEST)),
        reference::<ChatCompletionResponse>(),
        &[ChatChunk::name(), ChunkError::name()],
        "Server-sent events, one JSON object per `data:` line: a ChatChunk with the role per \
         choice, ChatChunks with content deltas, a finish ChatChunk per choice, a usage ChatChunk \
         with `stream_options.include_usage` (or a ChunkError), then `[DONE]`.",
    )
}

/// The chat request's schema name.
const CHAT_REQUEST: &str = "ChatCompletionRequest";

/// The completions request's fields that mean something in a chat (all but those tagged
/// `NotChat`), then `ChatFields` (whose `logprobs` replaces the completions one).
fn chat_request_schema() -> RefOr<Schema> {
    let (RefOr::T(Schema::Object(mut request)), RefOr::T(Schema::Object(chat))) =
        (CompletionRequest::schema(), ChatFields::schema())
    else {
        unreachable!("both derive object schemas")
    };
    for key in CompletionRequest::tagged(Tag::NotChat) {
        request.properties.remove(key);
    }
    request.properties.extend(chat.properties);
    request.required = vec!["messages".to_owned()];
    request.description =
        Some("A chat request: `messages`, the chat fields and the completions sampling and control fields.".into());
    RefOr::T(Schema::Object(request))
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

/// A render endpoint: the generation route's body, `RenderedPrompt` (or a list of them) back.
fn render_operation(
    id: &str,
    summary: &str,
    request: RefOr<Schema>,
    list: bool,
) -> utoipa::openapi::path::Operation {
    let body = RequestBodyBuilder::new()
        .required(Some(utoipa::openapi::Required::True))
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(request)).build(),
        )
        .build();
    let one = reference::<RenderedPrompt>();
    let schema = if list {
        RefOr::T(Schema::Array(utoipa::openapi::schema::Array::new(one)))
    } else {
        one
    };
    let ok = ResponseBuilder::new()
        .description(summary)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        )
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
    for path in super::COMPLETIONS_PATHS {
        paths = paths.path(
            path,
            PathItem::new(HttpMethod::Post, completion_operation(path)),
        );
    }
    paths = paths
        .path(
            super::CHAT_PATH,
            PathItem::new(HttpMethod::Post, chat_operation()),
        )
        .path(
            super::COMPLETIONS_RENDER_PATH,
            PathItem::new(
                HttpMethod::Post,
                render_operation(
                    "render_completions",
                    "The token ids each input's completion would be given (vLLM's render), \
                     validated as a completion: one entry per input.",
                    reference::<CompletionRequest>(),
                    true,
                ),
            ),
        )
        .path(
            super::CHAT_RENDER_PATH,
            PathItem::new(
                HttpMethod::Post,
                render_operation(
                    "render_chat_completions",
                    "The rendered conversation and its token ids (vLLM's render), validated as \
                     a chat completion.",
                    RefOr::Ref(Ref::from_schema_name(CHAT_REQUEST)),
                    false,
                ),
            ),
        )
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
    with_refs::<RenderedPrompt>(&mut schemas);
    with_refs::<ModelList>(&mut schemas);
    with_refs::<HealthBody>(&mut schemas);
    with_refs::<CompletionChunk>(&mut schemas);
    with_refs::<ChunkError>(&mut schemas);
    with_refs::<LegacyTokenSampled>(&mut schemas);
    with_refs::<LegacyComplete>(&mut schemas);
    with_refs::<LegacyError>(&mut schemas);
    with_refs::<ChatCompletionResponse>(&mut schemas);
    with_refs::<ChatChunk>(&mut schemas);
    schemas.push((CHAT_REQUEST.to_owned(), chat_request_schema()));
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

/// The document for a server: `model` lists the served names (any other is 404); exactly one
/// of `prompt` and `tokens`.
pub fn served_document(served: &[String]) -> serde_json::Value {
    let mut doc = serde_json::to_value(document()).unwrap_or_default();
    let mut names: Vec<serde_json::Value> = served.iter().map(|n| n.as_str().into()).collect();
    names.push(serde_json::Value::Null);
    for schema in [
        "CompletionRequest",
        CHAT_REQUEST,
        "TokenizeRequest",
        "DetokenizeRequest",
    ] {
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
    doc
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

    /// Each bound stated in the schema (the `schema` attributes on `CompletionRequest`) is
    /// exactly where the rules start refusing.
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
        let doc = served_document(&["m".to_owned()]);
        let props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
            .as_object()
            .unwrap();
        let mut bounded = 0;
        for (field, prop) in props {
            let float = prop["type"].to_string().contains("number");
            let check = |v: f64| {
                let value = if float {
                    serde_json::json!(v)
                } else {
                    serde_json::json!(v as i64)
                };
                let body = serde_json::json!({"prompt": "x", field.as_str(): value});
                let req: CompletionRequest = serde_json::from_value(body).unwrap();
                check_rules(&req, &limits).map_err(|e| e.param)
            };
            let d = if float { 0.01 } else { 1.0 };
            let refused = Err(Some(field.clone()));
            let bound = |key: &str| prop.get(key).and_then(serde_json::Value::as_f64);
            if let Some(min) = bound("minimum") {
                assert!(check(min).is_ok(), "{field}={min}");
                assert_eq!(check(min - d), refused, "{field}={}", min - d);
            }
            if let Some(min) = bound("exclusiveMinimum") {
                assert!(check(min + d).is_ok(), "{field}={}", min + d);
                assert_eq!(check(min), refused, "{field}={min}");
            }
            if let Some(max) = bound("maximum") {
                assert!(check(max).is_ok(), "{field}={max}");
                assert_eq!(check(max + d), refused, "{field}={}", max + d);
            }
            bounded += usize::from(
                ["minimum", "exclusiveMinimum", "maximum"]
                    .iter()
                    .any(|k| prop.get(*k).is_some()),
            );
        }
        assert!(bounded >= 16, "only {bounded} bounded fields");
        let n = &props["n"];
        assert_eq!(n["maximum"], crate::validate::MAX_N as f64);
        let one_of = &doc["components"]["schemas"]["CompletionRequest"]["oneOf"];
        assert_eq!(one_of[0]["required"], serde_json::json!(["prompt"]));
        assert_eq!(one_of[1]["required"], serde_json::json!(["tokens"]));
    }

    #[test]
    fn every_request_field_and_route_is_described() {
        let doc = serde_json::to_value(document()).unwrap();
        // The field list written with the struct is exactly what serde and the schema see.
        let props = doc["components"]["schemas"]["CompletionRequest"]["properties"]
            .as_object()
            .unwrap();
        let mut described: Vec<&str> = props.keys().map(String::as_str).collect();
        let mut fields: Vec<&str> = CompletionRequest::field_names().collect();
        described.sort_unstable();
        fields.sort_unstable();
        assert_eq!(described, fields);
        let mut paths: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        paths.sort_unstable();
        let mut served = super::super::PATHS.to_vec();
        served.sort_unstable();
        assert_eq!(paths, served);
        // Every reference resolves.
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').unwrap()];
            assert!(
                doc["components"]["schemas"].get(name).is_some(),
                "dangling {name}"
            );
        }
        let prompt = &doc["components"]["schemas"]["Prompt"]["oneOf"];
        assert_eq!(prompt.as_array().map(Vec::len), Some(4), "{prompt}");
        let served = served_document(&["a".to_owned(), "b".to_owned()]);
        let model = &served["components"]["schemas"]["TokenizeRequest"]["properties"]["model"];
        assert_eq!(
            model["enum"],
            serde_json::json!(["a", "b", null]),
            "{model}"
        );
    }

    /// The chat request, response and chunks are described from their types.
    #[test]
    fn chat_is_described_from_its_types() {
        let doc = served_document(&["m".to_owned()]);
        let schemas = &doc["components"]["schemas"];
        let chat = &schemas[CHAT_REQUEST]["properties"];
        for key in ChatFields::field_names() {
            assert!(chat.get(key).is_some(), "{key}");
        }
        for key in CompletionRequest::tagged(Tag::NotChat) {
            assert!(chat.get(key).is_none(), "{key}");
        }
        assert!(chat["temperature"].is_object() && chat["seed"].is_object());
        assert_eq!(
            chat["logprobs"]["type"],
            serde_json::json!(["boolean", "null"])
        );
        assert_eq!(chat["top_logprobs"]["maximum"], 20);
        assert_eq!(chat["model"]["enum"], serde_json::json!(["m", null]));
        let roles = &chat["messages"]["items"]["properties"]["role"]["enum"];
        assert_eq!(roles, &serde_json::json!(crate::protocol::ROLES));
        let op = &doc["paths"]["/v1/chat/completions"]["post"];
        let ok = &op["responses"]["200"]["content"];
        assert_eq!(
            ok["application/json"]["schema"]["$ref"],
            "#/components/schemas/ChatCompletionResponse"
        );
        let events = ok["text/event-stream"]["schema"]["oneOf"].to_string();
        assert!(
            events.contains("ChatChunk") && events.contains("ChunkError"),
            "{events}"
        );
        let choice = &schemas["ChatChoice"]["properties"];
        assert!(
            choice["message"].is_object() && choice["finish_reason"].is_object(),
            "{choice}"
        );
        assert!(schemas["ChatDelta"]["properties"]["content"].is_object());
        assert_eq!(op["security"], serde_json::json!([{"bearer": []}]));
    }
}
