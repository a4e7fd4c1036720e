//! NextChat's UpStash sync (NEXTCHAT.md §3, §7.3), with nextsync as the "Proxy Endpoint":
//! `GET /api/upstash/get/<key>` and `POST /api/upstash/set/<key>`, answering like Upstash's
//! REST API (`{"result": …}`), authenticated by `Authorization: Bearer <app password>`.
//! (The client's doubled leading and trailing slashes are normalised before routing.)
//! Errors are plain text, never JSON: NextChat's client reads any JSON answer's `result`,
//! takes a missing one as "remote empty" and reports success (NEXTCHAT.md §7.6).
//!
//! NextChat writes `<name>-chunk-<i>` for each piece of its lossy chunker, then
//! `<name>-chunk-count`. Here chunk writes are staged and the count write commits: the chunks
//! are rejoined with a single space (exact, §3.3), parsed and merged; a commit whose text does
//! not parse is refused and changes nothing. Staged chunks are raw NextChat JSON, API keys
//! included, so they are sealed before they reach the store, capped per account (one
//! upload's worth, checked before anything is kept or loaded) and expire after an hour. Reads are one virtual chunk (count `"1"`,
//! chunk 0 the whole state), so no reader ever sees a torn state.

use super::downloads::DoorKey;
use super::seal::staging_place;
use super::{Source, download, merge_upload, parse_state, read_body, too_large};
use crate::auth::AppPasswordUser;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use nextsync_core::time::Timestamp;
use nextsync_store::nextchat::{Staged, StagedChunks, StagingLimits};
use serde_json::{Value, json};

/// Most chunks one commit may name (NextChat's are ~1 MB each).
const MAX_CHUNKS: i64 = 4096;
/// Longest key, in bytes (NextChat's are its "Backup Name" plus `-chunk-count`).
const MAX_KEY_BYTES: usize = 512;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/upstash/{action}/{*key}", any(upstash))
}

#[derive(Debug, PartialEq, Eq)]
enum Key {
    Count(String),
    Chunk(String, i64),
    /// `<name>` itself: only read, by NextChat's "Check".
    Other,
}

impl Key {
    fn parse(key: &str) -> Self {
        if let Some(name) = key.strip_suffix("-chunk-count") {
            return Self::Count(name.to_owned());
        }
        if let Some((name, index)) = key.rsplit_once("-chunk-")
            && !index.is_empty()
            && index.bytes().all(|b| b.is_ascii_digit())
            && let Ok(index) = index.parse()
        {
            return Self::Chunk(name.to_owned(), index);
        }
        Self::Other
    }
}

fn result(value: Value) -> Response {
    let body = serde_json::to_vec(&json!({ "result": value })).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Every answer of this door; its errors are plain text (see [`ApiError::into_plain_text`]):
/// Upstash's own JSON errors make NextChat report a failed sync as a success.
async fn upstash(state: State<AppState>, path: Path<(String, String)>, request: Request) -> Response {
    serve_upstash(state, path, request)
        .await
        .unwrap_or_else(ApiError::into_plain_text)
}

async fn serve_upstash(
    State(state): State<AppState>,
    Path((action, key)): Path<(String, String)>,
    request: Request,
) -> Result<Response, ApiError> {
    let method = request.method().clone();
    if method == Method::OPTIONS {
        let mut response = StatusCode::OK.into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("OPTIONS, GET, POST"));
        return Ok(response);
    }
    let (mut parts, body) = request.into_parts();
    let auth = AppPasswordUser::from_request_parts(&mut parts, &state).await?;
    if key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!("keys are at most {MAX_KEY_BYTES} bytes of text without control characters"),
        ));
    }
    let key = Key::parse(&key);
    match (action.as_str(), &method) {
        ("get", &Method::GET) => get(&state, auth, key).await,
        ("set", &Method::POST | &Method::PUT) => set(&state, auth, key, body).await,
        ("get" | "set", _) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "get takes GET, set takes POST",
        )),
        _ => Err(ApiError::bad_request(
            "unsupported_command",
            format!("only get and set are served here, not {action:?}"),
        )),
    }
}

async fn get(state: &AppState, auth: AppPasswordUser, key: Key) -> Result<Response, ApiError> {
    let (name, chunk) = match key {
        Key::Count(name) => (name, None),
        Key::Chunk(name, index) => (name, Some(index)),
        Key::Other => return Ok(result(Value::Null)),
    };
    let door = DoorKey {
        user: auth.user,
        app_password: auth.app_password,
        door: format!("upstash:{name}"),
    };
    let state_json = download(state, auth.user, door).await?;
    Ok(match (state_json, chunk) {
        (None, _) => result(Value::Null),
        (Some(_), None) => result(Value::String("1".to_owned())),
        (Some(json), Some(0)) => {
            // The state as one JSON string, escaped straight from the rendered bytes.
            let text = std::str::from_utf8(&json).map_err(ApiError::internal)?;
            let mut body = Vec::with_capacity(json.len() + json.len() / 8 + 16);
            body.extend_from_slice(br#"{"result":"#);
            serde_json::to_writer(&mut body, text).map_err(ApiError::internal)?;
            body.push(b'}');
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        (Some(_), Some(_)) => result(Value::Null),
    })
}

async fn set(state: &AppState, auth: AppPasswordUser, key: Key, body: Body) -> Result<Response, ApiError> {
    let limit = state.config.nextchat_max_upload_bytes;
    let bytes = read_body(body, limit).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::bad_request("invalid_value", "values are UTF-8 text"))?;
    match key {
        Key::Chunk(name, index) => {
            let sealed = state
                .nextchat
                .sealer
                .seal_bytes(auth.user, &staging_place(&name, index), text.as_bytes())
                .map_err(ApiError::internal)?;
            let limits = StagingLimits {
                bytes: i64::try_from(limit).unwrap_or(i64::MAX),
                chunks: MAX_CHUNKS,
            };
            let bytes = i64::try_from(text.len()).unwrap_or(i64::MAX);
            let staged = state
                .store
                .stage_chunk(auth.user, &name, index, &sealed, bytes, Timestamp::now(), limits)
                .await?;
            match staged {
                Staged::Kept => Ok(result(Value::String("OK".to_owned()))),
                Staged::OverLimit => Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!(
                        "staged chunks may hold at most {limit} bytes in {MAX_CHUNKS} chunks per \
                         account; this one was not kept"
                    ),
                )),
            }
        }
        Key::Count(name) => {
            let count: i64 = text
                .trim()
                .trim_matches('"')
                .parse()
                .ok()
                .filter(|n| (1..=MAX_CHUNKS).contains(n))
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_count",
                        format!("the chunk count is a number from 1 to {MAX_CHUNKS}"),
                    )
                })?;
            // Staging holds at most one upload's worth per account, checked as it came in.
            let _turn = state.nextchat.upload_turn(auth.user, limit).await?;
            let max_bytes = i64::try_from(limit).unwrap_or(i64::MAX);
            let chunks = match state
                .store
                .staged_chunks(auth.user, &name, count, max_bytes)
                .await?
            {
                StagedChunks::Chunks(chunks) => chunks,
                StagedChunks::TooLarge { .. } => return Err(too_large(limit)),
            };
            let mut joined = Vec::new();
            for (index, chunk) in (0..).zip(chunks) {
                let sealed = chunk.ok_or_else(|| {
                    ApiError::bad_request(
                        "missing_chunk",
                        format!("chunk {index} of {name:?} was never written; nothing was changed"),
                    )
                })?;
                let chunk = state
                    .nextchat
                    .sealer
                    .open_bytes(auth.user, &staging_place(&name, index), &sealed)
                    .map_err(ApiError::internal)?;
                // NextChat's chunker drops exactly one space at every split (§3.3).
                if index > 0 {
                    joined.push(b' ');
                }
                joined.extend_from_slice(&chunk);
                if joined.len() > limit {
                    return Err(too_large(limit));
                }
            }
            let upload = parse_state(Bytes::from(joined)).await?;
            merge_upload(
                state,
                auth.user,
                upload,
                Source::Upstash,
                Some(auth.app_password),
                Some(name),
            )
            .await?;
            Ok(result(Value::String("OK".to_owned())))
        }
        Key::Other => Err(ApiError::bad_request(
            "unsupported_key",
            "only <name>-chunk-<i> and <name>-chunk-count are written here",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_the_way_nextchat_writes_them() {
        assert_eq!(
            Key::parse("chatgpt-next-web-chunk-count"),
            Key::Count("chatgpt-next-web".into())
        );
        assert_eq!(
            Key::parse("chatgpt-next-web-chunk-12"),
            Key::Chunk("chatgpt-next-web".into(), 12)
        );
        assert_eq!(Key::parse("a-chunk-x-chunk-3"), Key::Chunk("a-chunk-x".into(), 3));
        assert_eq!(Key::parse("chatgpt-next-web"), Key::Other);
        assert_eq!(Key::parse("name-chunk-"), Key::Other);
        assert_eq!(Key::parse("name-chunk--1"), Key::Other);
    }
}
