//! `POST /v1/tokenize` and `POST /v1/detokenize`: same errors as completions
//! (400 unparsable or not an object, 404 unknown model, 422 naming the field, 503 loading).

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cordial_tokenizer::TokenId;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{ApiError, Flavor, ValidationError};
use crate::protocol::{DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse};
use crate::state::AppState;

/// Bodies up to this size are tokenized on the async worker itself.
const INLINE_BYTES: usize = 64 * 1024;

fn invalid(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::Invalid(ValidationError::new(param, message), Flavor::Friendli)
}

/// JSON object → typed request, each field checked on its own so the error names it.
fn parse<T: DeserializeOwned>(body: &[u8], state: &AppState) -> Result<T, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::BadRequest(
            "the body must be a JSON object".into(),
        ));
    };
    match obj.get("model") {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) if state.served_names().contains(name) => {}
        Some(Value::String(name)) => return Err(ApiError::ModelNotFound(name.clone())),
        Some(_) => return Err(invalid("model", "`model` must be a string")),
    }
    for (key, value) in &obj {
        let mut one = Map::new();
        one.insert(key.clone(), value.clone());
        if let Err(e) = serde_json::from_value::<T>(Value::Object(one)) {
            return Err(invalid(key, format!("`{key}` has the wrong type: {e}")));
        }
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| ApiError::BadRequest(e.to_string()))
}

fn tokenize_body(state: &AppState, body: &[u8]) -> Result<TokenizeResponse, ApiError> {
    let req: TokenizeRequest = parse(body, state)?;
    let prompt = req
        .prompt
        .ok_or_else(|| invalid("prompt", "`prompt` is required (a string)"))?;
    let serving = state.serving().ok_or(ApiError::NotReady)?;
    Ok(TokenizeResponse {
        tokens: serving.tokenizer.encode(&prompt, true),
    })
}

fn detokenize_body(state: &AppState, body: &[u8]) -> Result<DetokenizeResponse, ApiError> {
    let req: DetokenizeRequest = parse(body, state)?;
    let tokens = req
        .tokens
        .ok_or_else(|| invalid("tokens", "`tokens` is required (a list of token ids)"))?;
    let serving = state.serving().ok_or(ApiError::NotReady)?;
    let vocab = serving.vocab_size.min(serving.tokenizer.vocab_size());
    let ids = tokens
        .iter()
        .map(|&t| {
            usize::try_from(t)
                .ok()
                .filter(|&t| t < vocab)
                .map(|t| t as TokenId)
                .ok_or_else(|| {
                    invalid(
                        "tokens",
                        format!("token id {t} is outside the vocabulary [0, {vocab})"),
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(DetokenizeResponse {
        text: serving.tokenizer.decode(&ids, true),
    })
}

/// Runs `f` inline for small bodies, on the blocking pool for big ones.
async fn run<R: Send + 'static>(
    state: AppState,
    body: Bytes,
    f: fn(&AppState, &[u8]) -> Result<R, ApiError>,
) -> Result<R, ApiError> {
    if body.len() <= INLINE_BYTES {
        return f(&state, &body);
    }
    tokio::task::spawn_blocking(move || f(&state, &body))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))?
}

pub async fn tokenize(State(state): State<AppState>, body: Bytes) -> Response {
    match run(state, body, tokenize_body).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

pub async fn detokenize(State(state): State<AppState>, body: Bytes) -> Response {
    match run(state, body, detokenize_body).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}
