//! The NextChat doors: an unmodified NextChat syncs through its WebDAV and UpStash settings
//! (NEXTCHAT.md §7), and the account's own endpoints around them.
//!
//! Every door is a thin adapter over two operations here:
//! - [`merge_upload`]: a whole state, parsed while it streams in, sanitized, its secrets taken
//!   out, decomposed ([`nextsync_core::nextchat`]) and merged through the one write path
//!   together with its bookkeeping (versions, sealed secrets, a snapshot);
//! - [`download`]: the whole state rendered from records, served to both GETs of one sync
//!   from a short-lived per-credential cache ([`downloads::Downloads`]).
//!
//! Routes: [`webdav`] (`/api/webdav/…` proxy mode, `/dav/…` plain target), [`upstash`]
//! (`/api/upstash/…`), and here `GET|PUT /v1/nextchat/settings`, `GET /v1/nextchat/snapshots`,
//! `POST /v1/nextchat/snapshots/{id}/restore`, `GET /v1/export?format=nextchat`,
//! `POST /v1/import`.

pub mod downloads;
pub mod seal;
mod upstash;
mod webdav;

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use crate::sync::apply_error;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use nextsync_core::api::{
    ErrorBody, MergeSummary, NextChatSettings, NextChatSettingsUpdate, SnapshotList, SnapshotView,
};
use nextsync_core::e2ee::{KEYRING_ID, KEYS_COLLECTION};
use nextsync_core::ids::{AppPasswordId, SnapshotId, UserId};
use nextsync_core::nextchat::{
    self, Backup, COLLECTIONS, Current, RenderOptions, Rendered, SecretPath, UploadOptions, plan_upload,
    take_secrets,
};
use nextsync_core::push::{Mutation, Precondition, RecordKey};
use nextsync_core::sync::Op;
use nextsync_core::time::Timestamp;
use nextsync_store::nextchat::{NewSnapshot, SealedSecret, SnapshotInfo, UploadExtras};
use nextsync_store::sync::ApplyError;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub use downloads::Downloads;
pub use seal::Sealer;

/// How often an upload re-reads and re-plans when another write to the same records
/// committed between its read and its write.
const MERGE_ATTEMPTS: usize = 8;
/// zstd level for kept uploads: fast, and NextChat JSON still shrinks several-fold.
const SNAPSHOT_ZSTD_LEVEL: i32 = 3;

/// The doors' shared parts, in [`AppState`].
#[derive(Debug, Clone)]
pub struct NextChat {
    pub sealer: Arc<Sealer>,
    pub downloads: Arc<Downloads>,
    uploads: Arc<UploadBudget>,
}

impl NextChat {
    /// `max_upload`: the largest upload accepted; twice that many body bytes may be parsed
    /// and merged at once in the process.
    pub fn new(sealer: Sealer, max_upload: usize) -> Self {
        Self {
            sealer: Arc::new(sealer),
            downloads: Arc::new(Downloads::default()),
            uploads: Arc::new(UploadBudget::new(max_upload.saturating_mul(2))),
        }
    }

    /// Waits for room to parse and merge `bytes` of `user`'s upload (see [`UploadBudget`]).
    pub(crate) async fn upload_turn(&self, user: UserId, bytes: usize) -> Result<UploadTurn, ApiError> {
        self.uploads.turn(user, bytes).await
    }
}

/// Memory for whole-state uploads. A parsed upload is held as a value tree (~2× its text)
/// beside the rows it is compared with, so how many run at once is bounded by their sizes:
/// process-wide by a budget of body bytes, and per account one at a time. The turn is taken
/// once the body is read (its size known), never while a client trickles it in: two slow
/// clients must not stall every other upload.
#[derive(Debug)]
struct UploadBudget {
    /// Permits are KiB of body.
    kib: Arc<Semaphore>,
    total_kib: u32,
    accounts: std::sync::Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A granted upload turn; dropping it frees its share.
#[derive(Debug)]
pub(crate) struct UploadTurn {
    _kib: OwnedSemaphorePermit,
    _account: tokio::sync::OwnedMutexGuard<()>,
}

impl UploadBudget {
    fn new(total_bytes: usize) -> Self {
        let total_kib = u32::try_from(total_bytes / 1024).unwrap_or(u32::MAX).max(1);
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            accounts: std::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn turn(&self, user: UserId, bytes: usize) -> Result<UploadTurn, ApiError> {
        let account = {
            let mut accounts = self
                .accounts
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Accounts nobody holds or waits for are forgotten.
            accounts.retain(|_, lock| Arc::strong_count(lock) > 1);
            accounts.entry(user).or_default().clone()
        };
        let account = account.lock_owned().await;
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        let kib = self
            .kib
            .clone()
            .acquire_many_owned(kib)
            .await
            .map_err(ApiError::internal)?;
        Ok(UploadTurn {
            _kib: kib,
            _account: account,
        })
    }
}

/// The doors, which answer in their clients' dialects, uncompressed, with their own body
/// limit (see `router::app`).
pub fn doors() -> Router<AppState> {
    Router::new().merge(webdav::router()).merge(upstash::router())
}

/// The account's NextChat endpoints under `/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/nextchat/settings", get(get_settings).put(put_settings))
        .route("/v1/nextchat/snapshots", get(list_snapshots))
        .route("/v1/nextchat/snapshots/{id}/restore", post(restore_snapshot))
        .route("/v1/export", get(export))
        .route("/v1/import", post(import))
}

/// Where an upload came from, as kept with its snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    WebDav,
    Upstash,
    Import,
    /// A kept snapshot merged back: not kept again, and it brings back what was deleted.
    Restore,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::WebDav => "webdav",
            Source::Upstash => "upstash",
            Source::Import => "import",
            Source::Restore => "restore",
        }
    }
}

fn invalid_state(message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "invalid_nextchat_state",
        format!("not a NextChat state ({message}); nothing was changed"),
    )
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("a NextChat state may be at most {limit} bytes; nothing was changed"),
    )
}

/// A whole-state upload's body, read as it streams in (no `Content-Length` needed) and
/// refused past `limit` bytes: a refused body never costs more than the limit, and one that
/// announces more is refused before a byte is read.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody as _;
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_big = std::error::Error::source(&e)
            .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
        if too_big {
            too_large(limit)
        } else {
            ApiError::bad_request(
                "unreadable_body",
                format!("the request body could not be read: {e}"),
            )
        }
    })
}

/// Parses a read body as a JSON value, off the async runtime.
pub(crate) async fn parse_state(body: Bytes) -> Result<Value, ApiError> {
    tokio::task::spawn_blocking(move || serde_json::from_slice::<Value>(&body))
        .await?
        .map_err(invalid_state)
}

/// An upload made ready off the async runtime: parsed into entities, its secrets out, its
/// sanitized JSON compressed (kept as its snapshot, and re-read if it must be planned again).
struct Prepared {
    backup: Backup,
    secrets: Vec<(SecretPath, Value)>,
    compressed: Arc<Vec<u8>>,
    snapshot: Option<NewSnapshot>,
}

fn prepare(
    mut state: Value,
    source: Source,
    credential: Option<AppPasswordId>,
) -> Result<Prepared, ApiError> {
    nextchat::sanitize(&mut state);
    let secrets = take_secrets(&mut state);
    let json = serde_json::to_vec(&state).map_err(ApiError::internal)?;
    let compressed = zstd::bulk::compress(&json, SNAPSHOT_ZSTD_LEVEL).map_err(ApiError::internal)?;
    let digest: String = Sha256::digest(&json).iter().map(|b| format!("{b:02x}")).collect();
    let bytes = i64::try_from(json.len()).unwrap_or(i64::MAX);
    drop(json);
    let backup = Backup::from_sanitized(state).map_err(invalid_state)?;
    let snapshot = (source != Source::Restore).then(|| NewSnapshot {
        info: SnapshotInfo {
            id: SnapshotId::new(),
            created_at: Timestamp::now(),
            source: source.as_str().to_owned(),
            bytes,
            sessions: backup.sessions.len() as i64,
            messages: backup.message_count() as i64,
            app_password: credential,
            device: None,
        },
        digest,
        body: compressed.clone(),
    });
    Ok(Prepared {
        backup,
        secrets,
        compressed: Arc::new(compressed),
        snapshot,
    })
}

/// The upload again, for another planning attempt (the first one consumed it).
fn reparse(compressed: &[u8]) -> Result<Backup, ApiError> {
    let json = zstd::stream::decode_all(compressed).map_err(ApiError::internal)?;
    let state: Value = serde_json::from_slice(&json).map_err(ApiError::internal)?;
    Backup::from_sanitized(state).map_err(invalid_state)
}

/// Merges a whole NextChat state into `user`'s records (NEXTCHAT.md §7.4): union by id,
/// stale versions ignored, deletions kept, settings and secrets per the account's choice.
/// Retries when a concurrent write moved a record it planned against; nothing is written
/// unless everything is.
pub(crate) async fn merge_upload(
    state: &AppState,
    user: UserId,
    upload: Value,
    source: Source,
    credential: Option<AppPasswordId>,
    committed_staging: Option<String>,
) -> Result<MergeSummary, ApiError> {
    refuse_encrypted(state, user).await?;
    let Prepared {
        backup,
        secrets: taken,
        compressed,
        snapshot,
    } = tokio::task::spawn_blocking(move || prepare(upload, source, credential)).await??;
    let mut backup = Some(backup);
    let account = state.store.nextchat_account(user).await?;
    let secrets = if account.sync_secrets {
        taken
            .iter()
            .map(|(path, value)| {
                let path = serde_json::to_string(path).unwrap_or_default();
                let sealed = state
                    .nextchat
                    .sealer
                    .seal(user, &path, value)
                    .map_err(ApiError::internal)?;
                Ok(SealedSecret { path, sealed })
            })
            .collect::<Result<Vec<_>, ApiError>>()?
    } else {
        Vec::new()
    };
    for _ in 0..MERGE_ATTEMPTS {
        let records = state.store.records_in(user, &COLLECTIONS).await?;
        let versions = state.store.versions(user).await?;
        let first = backup.take();
        let again = compressed.clone();
        let plan = tokio::task::spawn_blocking(move || {
            let backup = match first {
                Some(backup) => backup,
                None => reparse(&again)?,
            };
            let current = Current {
                records: records.into_iter().collect(),
                versions,
            };
            let options = UploadOptions {
                sync_settings: account.sync_settings,
                revive_deleted: source == Source::Restore,
            };
            plan_upload(backup, &current, options).map_err(ApiError::internal)
        })
        .await??;
        let mutations = plan
            .writes
            .into_iter()
            .map(|w| Mutation {
                mutation_id: format!("nextchat:{}", uuid::Uuid::new_v4().simple()),
                key: w.key,
                op: Op::Upsert(w.fields),
                hlc: None,
                base_seq: None,
                precondition: w.expect.map(Precondition::Seq),
            })
            .collect();
        let extras = UploadExtras {
            versions: plan.versions,
            secrets: secrets.clone(),
            snapshot: snapshot.clone(),
            committed_staging: committed_staging.clone(),
        };
        match crate::sync::apply_upload(state, user, mutations, extras).await {
            Ok(_) => {
                state.nextchat.downloads.forget(user, credential);
                return Ok(plan.stats);
            }
            Err(ApplyError::PreconditionFailed { .. }) => continue,
            Err(e) => return Err(apply_error(e)),
        }
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "other writes kept changing this account's records; retry",
    ))
}

/// Renders `user`'s whole state (with the secrets the account syncs, unless `for_export`).
/// An end-to-end encrypted account's values are ciphertext: the doors can neither merge an
/// upload into them nor render a download from them. The answer is an error NextChat shows
/// as "Sync Fail" (never a 404, which it would take as an empty remote and upload over).
pub(crate) async fn refuse_encrypted(state: &AppState, user: UserId) -> Result<(), ApiError> {
    let key = RecordKey {
        collection: KEYS_COLLECTION.to_owned(),
        id: KEYRING_ID.to_owned(),
    };
    let keyring = state.store.record(user, &key).await?;
    if keyring.is_some_and(|k| !k.record.is_deleted()) {
        return Err(ApiError::conflict(
            "end_to_end_encrypted",
            "this account is end-to-end encrypted: NextChat's sync cannot read it; use a \
             nextsync client with the passphrase",
        ));
    }
    Ok(())
}

pub(crate) async fn render(state: &AppState, user: UserId, for_export: bool) -> Result<Rendered, ApiError> {
    refuse_encrypted(state, user).await?;
    let account = state.store.nextchat_account(user).await?;
    let records = state.store.records_in(user, &COLLECTIONS).await?;
    let mut secrets = Vec::new();
    if account.sync_secrets && !for_export {
        for sealed in state.store.secrets(user).await? {
            let Ok(path) = serde_json::from_str::<SecretPath>(&sealed.path) else {
                continue;
            };
            match state.nextchat.sealer.open(user, &sealed.path, &sealed.sealed) {
                Ok(value) => secrets.push((path, value)),
                // A changed secrets key: the value is lost, the rest of the state is not.
                Err(e) => tracing::warn!(%user, error = %e, "skipping a NextChat secret"),
            }
        }
    }
    let options = RenderOptions {
        sync_settings: account.sync_settings,
    };
    tokio::task::spawn_blocking(move || nextchat::render(&records, options, secrets))
        .await?
        .map_err(ApiError::internal)
}

/// The state for a door's GET: `None` when the account holds nothing. Both GETs of one sync
/// (same credential and door within a few seconds) get the same bytes.
pub(crate) async fn download(
    state: &AppState,
    user: UserId,
    door: downloads::DoorKey,
) -> Result<Option<Bytes>, ApiError> {
    // Before the cache: a state rendered just before encryption was enabled is not served.
    refuse_encrypted(state, user).await?;
    if let Some(cached) = state.nextchat.downloads.get(&door) {
        return Ok(cached);
    }
    let rendered = render(state, user, false).await?;
    let bytes = (!rendered.is_empty).then(|| Bytes::from(rendered.json));
    state.nextchat.downloads.put(door, bytes.clone());
    Ok(bytes)
}

fn settings_view(account: nextsync_store::nextchat::NextChatAccount) -> NextChatSettings {
    NextChatSettings {
        sync_settings: account.sync_settings,
        sync_secrets: account.sync_secrets,
    }
}

#[utoipa::path(get, path = "/v1/nextchat/settings", tag = "nextchat", security(("bearer" = [])),
    responses((status = 200, body = NextChatSettings)))]
pub async fn get_settings(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<NextChatSettings>, ApiError> {
    Ok(Json(settings_view(
        state.store.nextchat_account(auth.user).await?,
    )))
}

#[utoipa::path(put, path = "/v1/nextchat/settings", tag = "nextchat", security(("bearer" = [])),
    request_body = NextChatSettingsUpdate,
    responses((status = 200, description = "the settings now", body = NextChatSettings)))]
pub async fn put_settings(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(update): Json<NextChatSettingsUpdate>,
) -> Result<Json<NextChatSettings>, ApiError> {
    let account = state
        .store
        .set_nextchat_settings(
            auth.user,
            update.sync_settings,
            update.sync_secrets,
            Timestamp::now(),
        )
        .await?;
    state.nextchat.downloads.forget(auth.user, None);
    Ok(Json(settings_view(account)))
}

#[utoipa::path(get, path = "/v1/nextchat/snapshots", tag = "nextchat", security(("bearer" = [])),
    responses((status = 200, description = "the kept uploads, newest first", body = SnapshotList)))]
pub async fn list_snapshots(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<SnapshotList>, ApiError> {
    let snapshots = state
        .store
        .snapshots(auth.user)
        .await?
        .into_iter()
        .map(|s| SnapshotView {
            snapshot_id: s.id,
            created_at: s.created_at,
            source: s.source,
            device: s.device,
            bytes: s.bytes,
            sessions: s.sessions,
            messages: s.messages,
        })
        .collect();
    Ok(Json(SnapshotList { snapshots }))
}

#[utoipa::path(post, path = "/v1/nextchat/snapshots/{id}/restore", tag = "nextchat", security(("bearer" = [])),
    params(("id" = String, Path)),
    responses(
        (status = 200, description = "merged back like an upload", body = MergeSummary),
        (status = 404, description = "no such snapshot", body = ErrorBody),
    ))]
pub async fn restore_snapshot(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<Json<MergeSummary>, ApiError> {
    let not_found = || ApiError::not_found("no such snapshot");
    let id: SnapshotId = id.parse().map_err(|_| not_found())?;
    let body = state
        .store
        .snapshot_body(auth.user, id)
        .await?
        .ok_or_else(not_found)?;
    // The kept JSON is several times its compressed size; the snapshot's listing knows it.
    let bytes = state
        .store
        .snapshots(auth.user)
        .await?
        .into_iter()
        .find(|s| s.id == id)
        .map_or(body.len(), |s| usize::try_from(s.bytes).unwrap_or(usize::MAX));
    let _turn = state.nextchat.upload_turn(auth.user, bytes).await?;
    let snapshot = tokio::task::spawn_blocking(move || {
        let json = zstd::stream::decode_all(&body[..])?;
        serde_json::from_slice::<Value>(&json).map_err(std::io::Error::other)
    })
    .await?
    .map_err(ApiError::internal)?;
    Ok(Json(
        merge_upload(&state, auth.user, snapshot, Source::Restore, None, None).await?,
    ))
}

#[derive(Debug, Deserialize)]
pub struct FormatQuery {
    format: Option<String>,
}

fn check_format(query: &FormatQuery) -> Result<(), ApiError> {
    match query.format.as_deref() {
        None | Some("nextchat") => Ok(()),
        Some(other) => Err(ApiError::bad_request(
            "unsupported_format",
            format!("format {other:?} is not supported; use nextchat"),
        )),
    }
}

#[utoipa::path(get, path = "/v1/export", tag = "nextchat", security(("bearer" = [])),
    params(("format" = Option<String>, Query, description = "`nextchat` (the default)")),
    responses((status = 200, description = "a NextChat backup file (Settings → Import in NextChat); never holds secrets")))]
pub async fn export(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(query): Query<FormatQuery>,
) -> Result<Response, ApiError> {
    check_format(&query)?;
    let rendered = render(&state, auth.user, true).await?;
    let mut response = rendered.json.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"nextsync-nextchat-backup.json\""),
    );
    Ok(response)
}

#[utoipa::path(post, path = "/v1/import", tag = "nextchat", security(("bearer" = [])),
    params(("format" = Option<String>, Query, description = "`nextchat` (the default)")),
    request_body(content = String, description = "a NextChat backup file (its Export)", content_type = "application/json"),
    responses(
        (status = 200, description = "merged like an upload", body = MergeSummary),
        (status = 400, description = "not a NextChat state; nothing changed", body = ErrorBody),
        (status = 413, description = "larger than the upload limit; nothing changed", body = ErrorBody),
    ))]
pub async fn import(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(query): Query<FormatQuery>,
    body: Body,
) -> Result<Json<MergeSummary>, ApiError> {
    check_format(&query)?;
    let body = read_body(body, state.config.nextchat_max_upload_bytes).await?;
    let _turn = state.nextchat.upload_turn(auth.user, body.len()).await?;
    let upload = parse_state(body).await?;
    Ok(Json(
        merge_upload(&state, auth.user, upload, Source::Import, None, None).await?,
    ))
}
