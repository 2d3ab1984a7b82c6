//! The API's errors: one JSON shape with a stable code for every failure,
//! whether a handler refused the request, an extractor rejected it, the
//! router found no route, a layer limited the body, or a handler panicked.

use super::types::{ErrorBody, ErrorDetail};
use crate::control::ControlError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// A failed request: the status, the stable code and what to tell the
/// client. Messages never carry a token, a key or a database URL.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{status} {}: {}", detail.code, detail.message)]
pub struct ApiError {
    pub status: StatusCode,
    /// Boxed: handlers return `Result<_, ApiError>` everywhere, and the
    /// common case should stay small.
    pub detail: Box<ErrorDetail>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            detail: Box::new(ErrorDetail {
                code: code.to_string(),
                message: message.into(),
                problem: None,
                public_key_hex: None,
                dkg_id: None,
                missing: None,
            }),
        }
    }

    pub fn code(&self) -> &str {
        &self.detail.code
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid operator token is required: Authorization: Bearer <token>",
        )
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn invalid_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    /// A PSBT the node will not take, with what is wrong with it.
    pub fn invalid_psbt(problem: &str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_psbt", message);
        e.detail.problem = Some(problem.to_string());
        e
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("the body exceeds {limit} bytes"))
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// The error for a status that came without one of ours (the router's
    /// 404 and 405, a layer's 413, an extractor's plain-text rejection),
    /// keeping the original text as the message when there is one.
    pub fn from_status(status: StatusCode, text: Option<String>) -> ApiError {
        let (code, default) = match status {
            StatusCode::BAD_REQUEST => ("invalid_request", "the request is malformed"),
            StatusCode::UNAUTHORIZED => ("unauthorized", "a valid operator token is required"),
            StatusCode::NOT_FOUND => ("not_found", "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "this route does not take that method"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the body is too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ("unsupported_media_type", "unsupported content type"),
            StatusCode::UNPROCESSABLE_ENTITY => ("invalid_request", "the request body does not fit the schema"),
            StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => ("timeout", "timed out"),
            StatusCode::SERVICE_UNAVAILABLE => ("unavailable", "the node is unavailable"),
            s if s.is_client_error() => ("invalid_request", "the request was refused"),
            _ => ("internal", "the node could not handle the request"),
        };
        ApiError::new(status, code, text.unwrap_or_else(|| default.to_string()))
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::Busy => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", e.to_string()),
            ControlError::Unavailable => ApiError::unavailable(e.to_string()),
            ControlError::Timeout => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", e.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let busy = self.detail.code == "busy";
        let unauthorized = status == StatusCode::UNAUTHORIZED;
        let mut response = (status, Json(ErrorBody { error: *self.detail })).into_response();
        if busy {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if unauthorized {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"mpc-custody\""));
        }
        response
    }
}
