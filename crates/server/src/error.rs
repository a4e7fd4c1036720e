//! [`ApiError`]: the one error type of every handler. It renders as
//! `{"error":{"code":"snake_case","message":"…"}}` with the right status; 5xx causes are logged
//! with their source chain and never returned to the client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use nextsync_core::api::{ErrorBody, ErrorDetail};
use nextsync_store::StoreError;
use std::borrow::Cow;
use std::time::Duration;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: Cow<'static, str>,
    retry_after: Option<Duration>,
    /// An extra top-level member of the body beside `error` (a 412 carries `current`).
    extra: Option<(&'static str, serde_json::Value)>,
    /// Logged for 5xx, never shown.
    source: Option<anyhow::Error>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
            extra: None,
            source: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }

    pub fn forbidden(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn too_many_requests(retry_after: Duration) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry later",
            )
        }
    }

    /// A server-side failure: the client sees a generic message, the log sees `source`.
    pub fn internal(source: impl Into<anyhow::Error>) -> Self {
        Self {
            source: Some(source.into()),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal server error",
            )
        }
    }

    /// Adds `"<key>": value` to the body beside `error`.
    pub fn with_member(mut self, key: &'static str, value: serde_json::Value) -> Self {
        self.extra = Some((key, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Conflict { .. } => {
                ApiError::conflict("conflict", "the request conflicts with existing data")
            }
            StoreError::Unavailable(_) => Self {
                source: Some(err.into()),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "storage is unavailable; retry later",
                )
            },
            other => ApiError::internal(other),
        }
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(err: tokio::task::JoinError) -> Self {
        ApiError::internal(err)
    }
}

impl ApiError {
    /// The error as `text/plain` (`<code>: <message>`), for clients that would take any JSON
    /// body as data: NextChat's UpStash client reads a JSON error as "remote empty", uploads
    /// over it and shows "Sync Success"; a body that is not JSON makes it show "Sync Fail".
    pub fn into_plain_text(self) -> Response {
        self.log();
        let body = format!("{}: {}\n", self.code, self.message);
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response();
        Self::retry_after_header(self.retry_after, &mut response);
        response
    }

    fn log(&self) {
        if self.status.is_server_error() {
            match &self.source {
                Some(source) => {
                    tracing::error!(code = self.code, error = format!("{source:#}"), "request failed")
                }
                None => tracing::error!(code = self.code, "request failed"),
            }
        }
    }

    fn retry_after_header(retry_after: Option<Duration>, response: &mut Response) {
        if let Some(retry_after) = retry_after {
            // Round up: "retry after 0 seconds" would invite an immediate retry.
            let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let retry_after = self.retry_after;
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message.into_owned(),
            },
        };
        let mut response = match self.extra {
            None => (self.status, axum::Json(body)).into_response(),
            Some((key, value)) => {
                let mut body = serde_json::to_value(body).unwrap_or_default();
                body[key] = value;
                (self.status, axum::Json(body)).into_response()
            }
        };
        Self::retry_after_header(retry_after, &mut response);
        response
    }
}
