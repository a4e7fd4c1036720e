//! The edge: what every request and answer passes outside every other layer.
//!
//! - **Request bodies.** An answer given without reading the request's body (a 401 before
//!   the JSON extractor, a GET or DELETE that ignores a body) made hyper close the connection
//!   without saying so, and the client's next pipelined request failed. Small bodies (a known
//!   length up to [`DRAIN_BYTES`]) are read in full before routing, so the connection stays
//!   usable whatever the handler does; a larger body the handler left unread gets
//!   `Connection: close` on its answer.
//! - **Errors made by layers**, not handlers (the request timeout, an unsupported
//!   `Content-Encoding`) come with an empty body; they get the error shape, like every other
//!   error (plain text on the UpStash door, whose client must not take an error for data).
//!   An empty answer a handler means (WebDAV's "nothing uploaded yet" 404) carries
//!   [`EmptyOnPurpose`] and is left alone.

use crate::error::ApiError;
use crate::state::AppState;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

/// Bodies up to this size are read before routing.
pub const DRAIN_BYTES: u64 = 64 * 1024;

/// Marks an answer whose empty body is its meaning (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct EmptyOnPurpose;

/// An empty answer with `status`, meant that way.
pub fn empty_on_purpose(status: StatusCode) -> Response {
    let mut response = status.into_response();
    response.extensions_mut().insert(EmptyOnPurpose);
    response
}

pub async fn edge(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let upstash = request.uri().path().contains("/api/upstash/");
    let (parts, body) = request.into_parts();
    let length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let read = Arc::new(AtomicBool::new(body.is_end_stream()));
    let body = match length {
        Some(n) if n > 0 && n <= DRAIN_BYTES => {
            // The request timeout is an inner layer: without this deadline a client announcing
            // a small body and never sending it would hold its connection for good.
            let deadline = state.config.body_read_timeout;
            match tokio::time::timeout(deadline, axum::body::to_bytes(body, DRAIN_BYTES as usize)).await {
                Ok(Ok(bytes)) => {
                    read.store(true, Ordering::Relaxed);
                    Body::from(bytes)
                }
                Ok(Err(_)) => {
                    return ApiError::bad_request("incomplete_body", "the request body ended early")
                        .into_response();
                }
                Err(_) => {
                    let mut response = ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request body did not arrive in time",
                    )
                    .into_response();
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    return response;
                }
            }
        }
        _ => Body::new(Tracked {
            inner: body,
            read: read.clone(),
        }),
    };
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if needs_error_shape(&response) {
        let error = layer_error(response.status());
        let headers = std::mem::take(response.headers_mut());
        response = if upstash {
            error.into_plain_text()
        } else {
            error.into_response()
        };
        // Keep what the layer said besides its body (e.g. `Accept-Encoding` on a 415).
        for (name, value) in &headers {
            if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
                response.headers_mut().insert(name.clone(), value.clone());
            }
        }
    }
    if !read.load(Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn needs_error_shape(response: &Response) -> bool {
    let status = response.status();
    (status.is_client_error() || status.is_server_error())
        && !response.headers().contains_key(header::CONTENT_TYPE)
        && response.extensions().get::<EmptyOnPurpose>().is_none()
}

/// The error a layer's bare status stands for.
fn layer_error(status: StatusCode) -> ApiError {
    match status {
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::new(
            status,
            "unsupported_encoding",
            "this Content-Encoding is not supported; send identity, gzip or zstd",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "payload_too_large",
            "request body is larger than the server accepts",
        ),
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "the server did not finish this request in time; retry later",
        ),
        other => ApiError::new(
            other,
            "http_error",
            other.canonical_reason().unwrap_or("HTTP error").to_owned(),
        ),
    }
}

/// A request body that notes whether it was read to its end.
struct Tracked {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.read.store(true, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
