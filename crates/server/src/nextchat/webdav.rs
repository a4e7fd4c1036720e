//! NextChat's WebDAV sync (NEXTCHAT.md §2, §7.1, §7.2), in both of its shapes:
//!
//! - `/api/webdav/chatgpt-next-web[/backup.json]`: nextsync *is* NextChat's "Proxy Endpoint";
//!   the effective method is `proxy_method` from the query when present (a Next.js route
//!   cannot receive `MKCOL`), `endpoint` is ignored;
//! - `/dav/chatgpt-next-web[/backup.json]`: nextsync is the WebDAV server behind a NextChat
//!   deployment's own proxy (`WHITE_WEBDAV_ENDPOINTS`), real methods only.
//!
//! The account comes from the Basic credentials (email + app password) on every request:
//! every NextChat user writes the same path. `MKCOL` answers 201 or 405 (exists); `PUT`
//! creates the folder implicitly (NextChat's sync never sends `MKCOL`) and merges; `GET`
//! answers the rendered state, or 404 with an empty body when there is none, which NextChat
//! reads as "remote empty". Never 404 or an empty body for anything else: errors are JSON.

use super::downloads::DoorKey;
use super::{Source, download, merge_upload, parse_state, read_body};
use crate::auth::AppPasswordUser;
use crate::edge::empty_on_purpose;
use crate::error::ApiError;
use crate::state::AppState;
use axum::Router;
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use nextsync_core::time::Timestamp;

pub const FOLDER: &str = "chatgpt-next-web";
pub const FILE: &str = "chatgpt-next-web/backup.json";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/webdav/{*path}", any(proxy_door))
        .route("/dav/{*path}", any(plain_door))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Folder,
    File,
}

impl Target {
    fn parse(path: &str) -> Result<Self, ApiError> {
        match path {
            FOLDER => Ok(Self::Folder),
            FILE => Ok(Self::File),
            _ => Err(ApiError::forbidden(
                "forbidden_path",
                format!("only {FOLDER} and {FILE} are served here"),
            )),
        }
    }

    fn allow(self) -> &'static str {
        match self {
            Self::Folder => "OPTIONS, MKCOL",
            Self::File => "OPTIONS, GET, HEAD, PUT",
        }
    }
}

async fn proxy_door(
    State(state): State<AppState>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Response, ApiError> {
    let proxy_method = query.as_deref().and_then(|q| {
        serde_urlencoded::from_str::<Vec<(String, String)>>(q)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == "proxy_method")
            .map(|(_, v)| v)
    });
    let method = match proxy_method {
        Some(m) => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| ApiError::bad_request("invalid_proxy_method", "proxy_method is not a method"))?,
        None => request.method().clone(),
    };
    door(state, &path, method, request).await
}

async fn plain_door(
    State(state): State<AppState>,
    Path(path): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let method = request.method().clone();
    door(state, &path, method, request).await
}

async fn door(state: AppState, path: &str, method: Method, request: Request) -> Result<Response, ApiError> {
    let target = Target::parse(path)?;
    if method == Method::OPTIONS {
        let mut response = StatusCode::OK.into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(target.allow()));
        response
            .headers_mut()
            .insert("dav", HeaderValue::from_static("1"));
        return Ok(response);
    }
    let (mut parts, body) = request.into_parts();
    let auth = AppPasswordUser::from_request_parts(&mut parts, &state).await?;
    let door = DoorKey {
        user: auth.user,
        app_password: auth.app_password,
        door: "webdav".to_owned(),
    };
    match (target, method.as_str()) {
        (Target::Folder, "MKCOL") => {
            let created = state.store.create_folder(auth.user, Timestamp::now()).await?;
            Ok(if created {
                StatusCode::CREATED.into_response()
            } else {
                // RFC 4918: MKCOL on an existing collection. NextChat counts it as success.
                let mut response = empty_on_purpose(StatusCode::METHOD_NOT_ALLOWED);
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(target.allow()));
                response
            })
        }
        (Target::File, "GET" | "HEAD") => Ok(match download(&state, auth.user, door).await? {
            Some(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            // The one empty 404: "nothing uploaded yet".
            None => empty_on_purpose(StatusCode::NOT_FOUND),
        }),
        (Target::File, "PUT") => {
            let body = read_body(body, state.config.nextchat_max_upload_bytes).await?;
            let _turn = state.nextchat.upload_turn(auth.user, body.len()).await?;
            let upload = parse_state(body).await?;
            merge_upload(
                &state,
                auth.user,
                upload,
                Source::WebDav,
                Some(auth.app_password),
                None,
            )
            .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        _ => {
            let mut error = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {path}; allowed: {}", target.allow()),
            )
            .into_response();
            error
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(target.allow()));
            Ok(error)
        }
    }
}
