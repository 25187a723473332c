//! Errors as OpenAI sends them: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), kind, param: None, code: None, retry_after: None }
    }

    /// 400: the request is wrong; `param` names the field.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self { param: param.map(String::from), ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message) }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self { code: Some("invalid_api_key"), ..Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message) }
    }

    pub fn model_not_found(model: &str) -> Self {
        let shown: String = model.chars().take(128).collect();
        Self {
            param: Some("model".into()),
            code: Some("model_not_found"),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{shown}` does not exist; GET /v1/models lists the models served here."),
            )
        }
    }

    pub fn busy(retry_after: u64) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "The server's queue is full; retry after the time in the Retry-After header.",
            )
        }
    }

    pub fn loading() -> Self {
        Self { retry_after: Some(5), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "The model is still loading.") }
    }

    pub fn timeout(secs: u64) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "server_error", format!("The request did not finish within the server's limit of {secs} s."))
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// Any status, for errors raised outside the handlers (unknown route, wrong method, body
    /// too large, body too slow).
    pub fn from_status(status: StatusCode) -> Self {
        let (kind, msg) = match status {
            StatusCode::NOT_FOUND => (
                "invalid_request_error",
                "Unknown URL; the API lives under /v1 (GET /v1/models, POST /v1/chat/completions, POST /v1/completions).",
            ),
            StatusCode::METHOD_NOT_ALLOWED => ("invalid_request_error", "This URL does not take that method."),
            StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", "The request body is larger than the server accepts."),
            StatusCode::REQUEST_TIMEOUT => ("invalid_request_error", "The request body did not arrive in time."),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("invalid_request_error", "The request body must be JSON."),
            s if s.is_server_error() => ("server_error", "The server failed to handle the request."),
            _ => ("invalid_request_error", "The request was refused."),
        };
        Self::new(status, kind, msg)
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}
