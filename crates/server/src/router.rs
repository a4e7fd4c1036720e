//! The whole HTTP application: merges every feature's router and adds the shared layers.

use crate::error::ApiError;
use crate::state::AppState;
use crate::{account, auth, edge, health, history, metrics, nextchat, ops, sync, web, ws};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::Request;
use axum::extract::State;
use axum::http::header::{
    AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, COOKIE, ETAG, HeaderName, IF_MATCH, RETRY_AFTER,
    SET_COOKIE,
};
use axum::http::{Method, StatusCode, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tower_http::compression::CompressionLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::cors::{Any, CorsLayer};
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveHeadersLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Longest a request may take; leaves room for a 60-second long-poll.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);

pub fn app(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let prefix: Arc<str> = state.config.path_prefix().into();
    let edge_state = state.clone();
    let api = Router::new()
        .merge(auth::router())
        .merge(account::router())
        .merge(sync::router())
        .merge(history::router())
        .merge(health::router())
        .merge(nextchat::router())
        .merge(ws::router())
        .merge(ops::router())
        .merge(web::router())
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CompressionLayer::new().compress_when(worth_compressing()));
    // NextChat's doors answer uncompressed: a fetch-passthrough proxy in front of `/dav`
    // would decode a compressed body and pass the `Content-Encoding` on (NEXTCHAT.md §7.1).
    // Their uploads stream through a parser bounded by the NextChat upload limit instead.
    let doors = nextchat::doors().layer(DefaultBodyLimit::disable());
    let routed = Router::new()
        .merge(api)
        .merge(doors)
        .route_layer(middleware::from_fn(metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(cors())
        .layer(RequestDecompressionLayer::new())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_TIMEOUT,
        ))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(SetSensitiveHeadersLayer::new([AUTHORIZATION, COOKIE, SET_COOKIE]))
        .with_state(state);
    // A layer on a router without routes runs before the inner one routes: paths are
    // normalised first.
    Router::new()
        .fallback_service(routed)
        .layer(middleware::map_request(move |request| {
            std::future::ready(normalize_path(&prefix, request))
        }))
        .layer(middleware::from_fn_with_state(edge_state, edge::edge))
}

/// Responses under 512 B go out as they are: a compressor's context costs more to set up
/// than it saves on a push answer (~200 B; zstd's setup was ~3 % of the server's profile
/// under 1,000 writes/s), while a one-change pull page (~900 B) still shrinks by half.
/// Otherwise tower-http's defaults (no images, gRPC or event streams).
fn worth_compressing() -> impl Predicate {
    SizeAbove::new(512)
        .and(NotForContentType::GRPC)
        .and(NotForContentType::IMAGES)
        .and(NotForContentType::SSE)
}

/// CORS for every route (NEXTCHAT.md §7.2): any origin (clients authenticate with headers,
/// never cookies), `Authorization` named explicitly (a `*` does not cover it), on errors
/// too, and preflights answered here.
fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
            Method::from_bytes(b"MKCOL").expect("MKCOL is a valid method"),
        ])
        .allow_headers([
            AUTHORIZATION,
            CONTENT_TYPE,
            CONTENT_ENCODING,
            IF_MATCH,
            HeaderName::from_static("x-request-id"),
        ])
        .expose_headers([ETAG, RETRY_AFTER, HeaderName::from_static("x-request-id")])
        .max_age(Duration::from_secs(24 * 3600))
        .allow_private_network(true)
        // Nothing above depends on the request's Origin or preflight headers, so responses
        // need no `Vary` on them (it cost ~90 B on every response, a tenth of a one-change
        // pull).
        .vary(Vec::<HeaderName>::new())
}

/// Collapses repeated slashes and drops a trailing one: NextChat's Upstash client asks for
/// `//api/upstash/get/<key>/` when its proxy URL is absolute (NEXTCHAT.md §3.2). Then drops
/// the public URL's path `prefix` (`/nextsync` for `https://host/nextsync`), so a reverse
/// proxy under a sub-path may pass it on or strip it: both reach the same routes.
fn normalize_path(prefix: &str, mut request: Request) -> Request {
    let path = request.uri().path();
    let collapse = path.len() > 1 && (path.ends_with('/') || path.contains("//"));
    let unprefixed = strip_prefix(prefix, path);
    if collapse || unprefixed.is_some() {
        let path = unprefixed.unwrap_or(path);
        let mut normalized = String::with_capacity(path.len());
        for segment in path.split('/').filter(|s| !s.is_empty()) {
            normalized.push('/');
            normalized.push_str(segment);
        }
        if normalized.is_empty() {
            normalized.push('/');
        }
        if let Some(query) = request.uri().query() {
            normalized.push('?');
            normalized.push_str(query);
        }
        let mut parts = request.uri().clone().into_parts();
        if let Ok(path_and_query) = normalized.parse() {
            parts.path_and_query = Some(path_and_query);
            if let Ok(uri) = Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
    }
    request
}

/// `path` without `prefix` when it starts with it at a segment boundary.
fn strip_prefix<'a>(prefix: &str, path: &'a str) -> Option<&'a str> {
    if prefix.is_empty() {
        return None;
    }
    let rest = path
        .trim_start_matches('/')
        .strip_prefix(prefix.trim_start_matches('/'))?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// Unknown routes are 404 in the error shape, except paths NextChat's sync would use under
/// a wrong "Proxy Endpoint" or "WebDAV Endpoint": NextChat reads a 404 as "remote empty",
/// uploads into it and reports success with nothing stored. Those get a 400 whose body is
/// not JSON, which both of its sync clients report as "Sync Fail" (NEXTCHAT.md §2.5, §7.6).
async fn not_found(State(state): State<AppState>, uri: Uri) -> Response {
    let path = uri.path();
    let nextchat = ["/api/webdav/", "/api/upstash/", "/chatgpt-next-web"]
        .iter()
        .any(|door| path.contains(door));
    if !nextchat {
        return ApiError::not_found("no such endpoint").into_response();
    }
    let base = state.config.public_url.trim_end_matches('/');
    ApiError::bad_request(
        "misdirected_sync",
        format!(
            "nextsync has no NextChat door at {path}. In NextChat's Cloud Sync settings, set \
             Proxy Endpoint to {base} (WebDAV or UpStash), or WebDAV Endpoint to {base}/dav/ \
             behind your own NextChat deployment."
        ),
    )
    .into_plain_text()
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed here"),
    )
}
