//! The ONE place where errors become HTTP statuses and `{"error":{message,type,param,code}}`
//! bodies (the status table of docs/api.md), before the response starts or as a mid-stream
//! event.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cordial_engine::{EngineError, SubmitError};

use crate::protocol::{ErrorBody, ErrorDetail};

/// A request-validation failure: which field, why, and an optional machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub param: Option<String>,
    pub message: String,
    pub code: Option<&'static str>,
}

impl ValidationError {
    pub fn new(param: &str, message: impl Into<String>) -> ValidationError {
        ValidationError {
            param: Some(param.to_owned()),
            message: message.into(),
            code: None,
        }
    }
    pub fn with_code(mut self, code: &'static str) -> ValidationError {
        self.code = Some(code);
        self
    }
}

/// Which convention a request follows (`validate::parse::detect_flavor`): decides 400 vs 422
/// for validation errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Friendli,
    OpenAi,
}

/// Every error the API can answer with.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// Unparsable JSON, a body that is not an object, an unreadable body: 400.
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Missing or unknown API key: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// A key used for another team: 403.
    #[error("{0}")]
    Forbidden(String),
    /// The body did not arrive within the read timeout: 408.
    #[error("the request body was not received within {secs} seconds")]
    RequestTimeout { secs: u64 },
    #[error("the model `{0}` does not exist; see GET /v1/models")]
    ModelNotFound(String),
    /// 422, or 400 for an OpenAI-flavoured request.
    #[error("{0}")]
    Invalid(ValidationError, Flavor),
    #[error("the model is still loading; retry shortly")]
    NotReady,
    #[error("{0}")]
    Overloaded(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// `timeout_microseconds` passed before the request finished: 429.
    #[error("the request did not finish within `timeout_microseconds`")]
    Timeout,
    #[error("internal error: {0}")]
    Internal(String),
}

/// `x-should-retry`: honoured by the `openai` and `friendli` SDKs, which otherwise retry every
/// 429 (`friendli` for up to an hour).
pub const SHOULD_RETRY: &str = "x-should-retry";

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_OVERLOADED: u32 = 1;
const RETRY_AFTER_LOADING: u32 = 5;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ApiError::ModelNotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Invalid(_, Flavor::OpenAi) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_, Flavor::Friendli) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotReady | ApiError::Overloaded(_) | ApiError::ShuttingDown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Timeout => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// False for answers a retry cannot change although their status invites one: a request
    /// that ran out of its time limit (429) would run out of it again.
    fn worth_retrying(&self) -> bool {
        !matches!(self, ApiError::Timeout)
    }

    fn retry_after(&self) -> Option<u32> {
        match self {
            ApiError::NotReady => Some(RETRY_AFTER_LOADING),
            ApiError::Overloaded(_) | ApiError::ShuttingDown => Some(RETRY_AFTER_OVERLOADED),
            _ => None,
        }
    }

    /// The inner object of the error body.
    pub fn detail(&self) -> ErrorDetail {
        let (param, code) = match self {
            ApiError::Invalid(v, _) => (v.param.clone(), v.code),
            ApiError::ModelNotFound(_) => (Some("model".to_owned()), Some("model_not_found")),
            ApiError::Timeout => (Some("timeout_microseconds".to_owned()), Some("timeout")),
            _ => (None, None),
        };
        let kind = match self {
            ApiError::Unauthorized(_) => "authentication_error",
            ApiError::Forbidden(_) => "permission_error",
            _ if self.status() == StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            _ if self.status().is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        ErrorDetail {
            message: self.to_string(),
            kind,
            param,
            code,
        }
    }

    /// A refusal by `EngineHandle::submit`.
    pub fn from_submit(err: SubmitError, flavor: Flavor) -> ApiError {
        match err {
            SubmitError::QueueFull { .. } => ApiError::Overloaded(err.to_string()),
            SubmitError::NotRunning => ApiError::ShuttingDown,
            SubmitError::Invalid(msg) => ApiError::Invalid(ValidationError::new_anon(msg), flavor),
        }
    }

    /// A request that failed inside the engine.
    pub fn from_engine(err: EngineError, flavor: Flavor) -> ApiError {
        match err {
            EngineError::TooLarge { .. } => {
                let v = ValidationError::new("max_tokens", format!("{err}; lower max_tokens or n"))
                    .with_code("context_length_exceeded");
                ApiError::Invalid(v, flavor)
            }
            EngineError::ShuttingDown => ApiError::ShuttingDown,
            EngineError::Timeout => ApiError::Timeout,
            EngineError::Model(_) | EngineError::Constraint(_) => {
                ApiError::Internal(err.to_string())
            }
        }
    }
}

impl ValidationError {
    fn new_anon(message: String) -> ValidationError {
        ValidationError {
            param: None,
            message,
            code: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.detail(),
        };
        let mut resp = (self.status(), axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after() {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if !self.worth_retrying() {
            resp.headers_mut()
                .insert(SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_status_follows_flavor() {
        let v = ValidationError::new("top_p", "bad");
        assert_eq!(ApiError::Invalid(v.clone(), Flavor::Friendli).status(), 422);
        assert_eq!(ApiError::Invalid(v, Flavor::OpenAi).status(), 400);
    }

    #[test]
    fn queue_full_is_503_with_retry_after() {
        let e = ApiError::from_submit(SubmitError::QueueFull { waiting: 3 }, Flavor::Friendli);
        let resp = e.into_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn model_not_found_names_the_param_and_code() {
        let d = ApiError::ModelNotFound("x".into()).detail();
        assert_eq!(d.param.as_deref(), Some("model"));
        assert_eq!(d.code, Some("model_not_found"));
        assert_eq!(d.kind, "invalid_request_error");
        assert_eq!(ApiError::NotReady.detail().kind, "server_error");
    }

    #[test]
    fn timeout_is_429_naming_the_field() {
        let e = ApiError::from_engine(EngineError::Timeout, Flavor::Friendli);
        assert_eq!(e.status(), 429);
        let d = e.detail();
        assert_eq!(d.param.as_deref(), Some("timeout_microseconds"));
        assert_eq!(d.kind, "rate_limit_error");
        let resp = e.into_response();
        assert_eq!(resp.headers()[SHOULD_RETRY], "false");
        assert!(!ApiError::NotReady
            .into_response()
            .headers()
            .contains_key(SHOULD_RETRY));
    }

    #[test]
    fn auth_errors_have_their_types() {
        let resp = ApiError::Unauthorized("no key".into()).into_response();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(
            ApiError::Unauthorized(String::new()).detail().kind,
            "authentication_error"
        );
        assert_eq!(ApiError::Forbidden(String::new()).status(), 403);
        assert_eq!(
            ApiError::Forbidden(String::new()).detail().kind,
            "permission_error"
        );
        assert_eq!(ApiError::RequestTimeout { secs: 1 }.status(), 408);
    }

    #[test]
    fn engine_too_large_is_a_context_length_error() {
        let e = ApiError::from_engine(
            EngineError::TooLarge {
                needed: 9,
                total: 4,
            },
            Flavor::OpenAi,
        );
        assert_eq!(e.status(), 400);
        assert_eq!(e.detail().code, Some("context_length_exceeded"));
    }
}
