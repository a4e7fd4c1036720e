//! Sync: the one write path and the endpoints around it.
//!
//! [`apply`] is how every door writes records: validated mutations go to
//! [`nextsync_store::SyncStore::apply`] (one transaction), then the bus hears the new head.
//! Reads come out of the feed (`pull`) or the records API, both scoped by the signed-in user.
//!
//! - `POST /v1/sync/push`, `GET /v1/sync/pull?since=&limit=&wait=` (`wait`: long-poll)
//! - `GET /v1/conflicts`, `POST /v1/conflicts/{id}/resolve`
//! - `GET|PUT|DELETE /v1/records/{collection}/{id}` with `ETag`/`If-Match` (optimistic locking)

use crate::auth::AuthUser;
use crate::bus::{LivePage, Notice};
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use nextsync_core::api::{
    Choice, ConflictList, ConflictView, ErrorBody, PullResponse, PushRequest, PushResponse, PutRecordRequest,
    RecentResponse, RecordView, ResolveRequest, ServerFrame,
};
use nextsync_core::cursor::Cursor;
use nextsync_core::ids::{ConflictId, Seq, UserId};
use nextsync_core::push::{
    Invalid, Mutation, Precondition, RecordKey, validate_collection, validate_fields, validate_record_id,
};
use nextsync_core::sync::{Op, StoredRecord};
use nextsync_core::time::Timestamp;
use nextsync_store::nextchat::UploadExtras;
use nextsync_store::sync::{Applied, ApplyError, Conflict};
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

pub const DEFAULT_PULL_LIMIT: u32 = 500;
pub const MAX_PULL_LIMIT: u32 = 1000;
/// Stored bytes per pull or WebSocket page, beside the record count: records reach tens of
/// MiB, and a page of 500 of them cost a server gigabytes (issue 14). A page always holds at
/// least one record, however large.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Longest a long-poll pull may wait.
pub const MAX_WAIT_SECS: u64 = 60;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sync/push", post(push_changes))
        .route("/v1/sync/pull", get(pull_changes))
        .route("/v1/sync/recent", get(recent_first))
        .route("/v1/conflicts", get(list_conflicts))
        .route("/v1/conflicts/{id}/resolve", post(resolve_conflict))
        .route(
            "/v1/records/{collection}/{id}",
            get(get_record).put(put_record).delete(delete_record),
        )
}

/// The one write path: applies `mutations` for `user` in one transaction, then announces the
/// new head on the bus.
pub async fn apply(
    state: &AppState,
    user: UserId,
    mutations: Vec<Mutation>,
    resolves: Option<ConflictId>,
) -> Result<Applied, ApiError> {
    let applied = state
        .store
        .apply(user, mutations, Timestamp::now(), resolves)
        .await
        .map_err(apply_error)?;
    announce(state, user, &applied);
    Ok(applied)
}

/// [`apply`] for a write planned against records as read earlier: `Ok(None)` when one of
/// them changed meanwhile (a failed precondition; nothing was written), for the caller to
/// plan again.
pub(crate) async fn apply_planned(
    state: &AppState,
    user: UserId,
    mutations: Vec<Mutation>,
) -> Result<Option<Applied>, ApiError> {
    match state.store.apply(user, mutations, Timestamp::now(), None).await {
        Ok(applied) => {
            announce(state, user, &applied);
            Ok(Some(applied))
        }
        Err(ApplyError::PreconditionFailed { .. }) => Ok(None),
        Err(e) => Err(apply_error(e)),
    }
}

/// Tells the bus about a commit, with its [`LivePage`] when someone here listens and it fits
/// one page (a bigger commit is read from the store, page by page).
fn announce(state: &AppState, user: UserId, applied: &Applied) {
    if applied.changed.is_empty() {
        return;
    }
    let page = (applied.changed.len() <= crate::ws::PAGE as usize && state.bus.is_listening(user))
        .then(|| live_page(applied))
        .flatten();
    state.bus.notify(Notice::Changed {
        user,
        head: applied.head,
        page,
    });
}

fn live_page(applied: &Applied) -> Option<Arc<LivePage>> {
    let from = Seq(applied.head.0.checked_sub(applied.changed.len() as u64)?);
    let cursor = Cursor {
        epoch: applied.epoch.clone(),
        seq: applied.head,
    };
    let frame = ServerFrame::Changes {
        changes: applied
            .changed
            .iter()
            .map(|(key, record)| record_view(key, record))
            .collect(),
        cursor: cursor.encode(),
    };
    let text = serde_json::to_string(&frame).ok()?;
    Some(Arc::new(LivePage {
        epoch: applied.epoch.clone(),
        from,
        head: applied.head,
        frame: text.into(),
    }))
}

/// [`apply`] for a NextChat upload: the same write path plus the upload's bookkeeping in the
/// same transaction. Preconditions that failed come back as they are, for the caller to
/// re-plan.
pub async fn apply_upload(
    state: &AppState,
    user: UserId,
    mutations: Vec<Mutation>,
    extras: UploadExtras,
) -> Result<Applied, ApplyError> {
    let applied = state
        .store
        .apply_upload(user, mutations, Timestamp::now(), extras)
        .await?;
    announce(state, user, &applied);
    Ok(applied)
}

pub(crate) fn apply_error(err: ApplyError) -> ApiError {
    match err {
        ApplyError::Store(e) => e.into(),
        ApplyError::PreconditionFailed { key, current } => {
            let current = current.map(|r| serde_json::to_value(record_view(&key, &r)).unwrap_or_default());
            ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                "the record has changed; re-read it",
            )
            .with_member("current", current.unwrap_or(Value::Null))
        }
        ApplyError::ConflictGone => ApiError::not_found("no such unresolved conflict"),
        ApplyError::Clock(e) => ApiError::internal(e),
    }
}

pub fn record_view(key: &RecordKey, stored: &StoredRecord) -> RecordView {
    let (fields, stamps) = stored.visible();
    RecordView {
        collection: key.collection.clone(),
        id: key.id.clone(),
        fields,
        deleted: stored.record.is_deleted(),
        seq: stored.seq,
        stamps,
        tombstone: stored.record.tombstone.clone(),
    }
}

/// Resolves once the bus says `user`'s feed moved past `seq`, or that notices were lost, or
/// (every couple of seconds) while it cannot hear other instances: the caller re-reads.
async fn changed_after(
    bus: &dyn crate::bus::Bus,
    notices: &mut broadcast::Receiver<Notice>,
    user: UserId,
    seq: Seq,
) {
    let mut degraded_check = tokio::time::interval(Duration::from_secs(2));
    degraded_check.tick().await;
    loop {
        tokio::select! {
            notice = notices.recv() => match notice {
                Ok(Notice::Changed { user: u, head, .. }) if u == user && head > seq => return,
                Ok(Notice::Resync) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                Ok(_) => {}
                // The bus is gone (shutdown): let the deadline answer.
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            },
            _ = degraded_check.tick() => if !bus.is_healthy() {
                return;
            },
        }
    }
}

fn conflict_view(c: &Conflict) -> ConflictView {
    ConflictView {
        conflict_id: c.id.to_string(),
        collection: c.key.collection.clone(),
        id: c.key.id.clone(),
        field: c.field.clone(),
        kept: c.kept.clone(),
        lost: c.lost.clone(),
        created_at: c.created_at,
    }
}

/// A broken rule: 413 when it is a size limit, else 400.
impl From<Invalid> for ApiError {
    fn from(e: Invalid) -> Self {
        let status = if e.too_large {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, e.code, e.message)
    }
}

/// The same, naming the offending mutation of a push.
fn invalid_mutation(index: usize, mutation_id: &str, e: Invalid) -> ApiError {
    Invalid {
        message: format!("mutation {index} ({mutation_id:?}): {}", e.message),
        ..e
    }
    .into()
}

#[utoipa::path(post, path = "/v1/sync/push", tag = "sync", security(("bearer" = [])), request_body = PushRequest,
    responses(
        (status = 200, description = "every mutation applied or recognised as a duplicate", body = PushResponse),
        (status = 400, description = "a mutation is invalid (named in the message); nothing was written", body = ErrorBody),
        (status = 413, description = "too many mutations, or a field over the size limit; nothing was written", body = ErrorBody),
    ))]
pub async fn push_changes(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(req): Json<PushRequest>,
) -> Result<Json<PushResponse>, ApiError> {
    apply_push(&state, auth, req.mutations).await.map(Json)
}

/// A push from any transport (HTTP or WebSocket): validated whole, then applied.
pub async fn apply_push(
    state: &AppState,
    auth: AuthUser,
    mutations: Vec<nextsync_core::api::MutationIn>,
) -> Result<PushResponse, ApiError> {
    let limits = state.config.sync_limits;
    if mutations.len() > limits.max_mutations {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_mutations",
            format!(
                "{} mutations in one push; the limit is {}",
                mutations.len(),
                limits.max_mutations
            ),
        ));
    }
    let now_ms = u64::try_from(Timestamp::now().as_millis()).unwrap_or(0);
    let mutations = mutations
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let id = m.mutation_id.clone();
            Mutation::validate(m, &limits, now_ms).map_err(|e| invalid_mutation(i, &id, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let applied = apply(state, auth.user, mutations, None).await?;
    let written = applied.results.iter().map(|r| r.seq).max().unwrap_or(Seq(0));
    Ok(PushResponse {
        conflicts: applied.conflicts.iter().map(conflict_view).collect(),
        cursor: Cursor {
            epoch: applied.epoch,
            seq: written,
        }
        .encode(),
        results: applied.results,
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PullParams {
    /// A cursor from an earlier pull; absent: from the beginning.
    pub since: Option<String>,
    /// At most this many records (default 500, at most 1000).
    pub limit: Option<u32>,
    /// Long-poll: with no changes after `since`, wait up to this many seconds (at most 60)
    /// for one, then answer (empty at the deadline).
    pub wait: Option<u64>,
}

#[utoipa::path(get, path = "/v1/sync/pull", tag = "sync", security(("bearer" = [])), params(PullParams),
    responses(
        (status = 200, description = "changes after the cursor, in seq order", body = PullResponse),
        (status = 400, description = "invalid_cursor, or invalid_wait (wait over 60 seconds)", body = ErrorBody),
        (status = 409, description = "resync_required: the cursor belongs to another epoch or account", body = ErrorBody),
    ))]
pub async fn pull_changes(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(params): Query<PullParams>,
) -> Result<Json<PullResponse>, ApiError> {
    let since = match params.since.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(text) => Some(
            Cursor::decode(text)
                .ok_or_else(|| ApiError::bad_request("invalid_cursor", "since is not a cursor"))?,
        ),
    };
    let limit = params
        .limit
        .unwrap_or(DEFAULT_PULL_LIMIT)
        .clamp(1, MAX_PULL_LIMIT);
    let from = since.as_ref().map_or(Seq(0), |c| c.seq);
    let deadline = match params.wait {
        Some(secs) if secs > MAX_WAIT_SECS => {
            return Err(ApiError::bad_request(
                "invalid_wait",
                format!("wait is at most {MAX_WAIT_SECS} seconds"),
            ));
        }
        Some(secs) if secs > 0 => Some(tokio::time::Instant::now() + Duration::from_secs(secs)),
        _ => None,
    };
    // Subscribed before the first read, so a commit landing between the read and the wait
    // still wakes this request.
    let mut notices = deadline.map(|_| state.bus.subscribe(auth.user));
    let page = loop {
        let page = pull_page(&state, auth.user, since.as_ref(), limit).await?;
        let (Some(deadline), Some(notices)) = (deadline, notices.as_mut()) else {
            break page;
        };
        if !page.changes.is_empty() || state.stopping.is_cancelled() {
            break page;
        }
        // Woken by a commit for this account (read again), or answered as it stands at the
        // deadline or when the server begins to stop.
        let woken = tokio::select! {
            woken = tokio::time::timeout_at(deadline, changed_after(&*state.bus, notices, auth.user, from)) => woken.is_ok(),
            () = state.stopping.cancelled() => false,
        };
        if !woken {
            break page;
        }
    };
    Ok(Json(PullResponse {
        changes: page.changes,
        cursor: page.cursor.encode(),
        has_more: page.has_more,
    }))
}

/// Most parent records one recent-first page may ask for.
const MAX_RECENT: u32 = 200;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RecentParams {
    /// The collection whose newest records come first (NextChat: `sessions`).
    pub collection: String,
    /// How many of them (default 20, at most 200).
    pub limit: Option<u32>,
    /// A collection of children to bring along (NextChat: `messages`) …
    pub children: Option<String>,
    /// … those whose field of this name holds a parent's id (NextChat: `session_id`).
    pub link: Option<String>,
}

#[utoipa::path(get, path = "/v1/sync/recent", tag = "sync", security(("bearer" = [])), params(RecentParams),
    responses(
        (status = 200, description = "the newest live records of the collection, then their children", body = RecentResponse),
        (status = 400, description = "invalid_collection, or children without link", body = ErrorBody),
    ))]
/// A new device's first page: what a person looks at first (the newest conversations with
/// their messages) before the full pull, which still runs from the start and brings these
/// records again. The feed's no-gap guarantee is untouched: this is not a feed page and
/// moves no cursor.
pub async fn recent_first(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(params): Query<RecentParams>,
) -> Result<Json<RecentResponse>, ApiError> {
    validate_collection(&params.collection)?;
    let children = match (params.children.as_deref(), params.link.as_deref()) {
        (None, None) => None,
        (Some(children), Some(link)) if !link.is_empty() && !link.chars().any(char::is_control) => {
            validate_collection(children)?;
            Some((children, link))
        }
        _ => {
            return Err(ApiError::bad_request(
                "invalid_link",
                "children and link come together; link is a field name",
            ));
        }
    };
    let limit = params.limit.unwrap_or(20).clamp(1, MAX_RECENT);
    let records = state
        .store
        .recent(auth.user, &params.collection, limit, children)
        .await?;
    Ok(Json(RecentResponse {
        records: records
            .iter()
            .map(|(key, stored)| record_view(key, stored))
            .collect(),
    }))
}

/// One page of a user's feed after `since` (from the beginning when `None`).
#[derive(Debug)]
pub struct Page {
    pub changes: Vec<RecordView>,
    /// Where this page leaves the feed (`since` itself when the page is empty).
    pub cursor: Cursor,
    pub has_more: bool,
}

/// Reads one page of the feed; a cursor of another epoch is 409 `resync_required`.
pub async fn pull_page(
    state: &AppState,
    user: UserId,
    since: Option<&Cursor>,
    limit: u32,
) -> Result<Page, ApiError> {
    let from = since.map_or(Seq(0), |c| c.seq);
    let feed = state.store.pull(user, from, limit, PAGE_BYTES).await?;
    if since.is_some_and(|c| c.epoch != feed.epoch) {
        return Err(ApiError::conflict(
            "resync_required",
            "this cursor is from another epoch of the feed; pull again from the beginning",
        ));
    }
    let has_more = feed.has_more;
    let last = feed.records.last().map_or(from, |(_, r)| r.seq);
    Ok(Page {
        changes: feed
            .records
            .iter()
            .map(|(key, record)| record_view(key, record))
            .collect(),
        cursor: Cursor {
            epoch: feed.epoch,
            seq: last,
        },
        has_more,
    })
}

#[utoipa::path(get, path = "/v1/conflicts", tag = "sync", security(("bearer" = [])),
    responses((status = 200, description = "unresolved conflicts, oldest first", body = ConflictList)))]
pub async fn list_conflicts(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<ConflictList>, ApiError> {
    let conflicts = state.store.conflicts(auth.user).await?;
    Ok(Json(ConflictList {
        conflicts: conflicts.iter().map(conflict_view).collect(),
    }))
}

#[utoipa::path(post, path = "/v1/conflicts/{id}/resolve", tag = "sync", security(("bearer" = [])),
    params(("id" = String, Path, description = "conflict id")), request_body = ResolveRequest,
    responses(
        (status = 200, description = "resolved; the chosen value is a new change on every device", body = RecordView),
        (status = 400, description = "invalid_resolution", body = ErrorBody),
        (status = 404, description = "no such unresolved conflict", body = ErrorBody),
    ))]
pub async fn resolve_conflict(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
    Json(req): Json<ResolveRequest>,
) -> Result<Json<RecordView>, ApiError> {
    let not_found = || ApiError::not_found("no such unresolved conflict");
    let choice = match (req.choose, req.value) {
        (Some(choice), None) => Ok(choice),
        (None, Some(value)) => Err(value),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_resolution",
                r#"send either {"choose":"kept"|"lost"} or {"value": …}"#,
            ));
        }
    };
    let id: ConflictId = id.parse().map_err(|_| not_found())?;
    let conflict = state.store.conflict(auth.user, id).await?.ok_or_else(not_found)?;
    // `None`: keep a deletion, which every device already has; nothing to write.
    let chosen = match choice {
        Ok(Choice::Kept) => (!conflict.kept.deleted).then(|| conflict.kept.value.clone()),
        Ok(Choice::Lost) => (!conflict.lost.deleted).then(|| conflict.lost.value.clone()),
        Err(value) => Some(value),
    };
    let mutations = match chosen {
        None => Vec::new(),
        Some(value) => {
            let mut fields = serde_json::Map::new();
            fields.insert(conflict.field.clone(), value);
            validate_fields(&fields, &state.config.sync_limits)?;
            vec![server_mutation(conflict.key.clone(), Op::Upsert(fields), None)]
        }
    };
    apply(&state, auth.user, mutations, Some(id)).await?;
    let record = state
        .store
        .record(auth.user, &conflict.key)
        .await?
        .ok_or_else(not_found)?;
    Ok(Json(record_view(&conflict.key, &record)))
}

/// A write the server stamps (above everything in the record) on the user's behalf.
pub(crate) fn server_mutation(key: RecordKey, op: Op, precondition: Option<Precondition>) -> Mutation {
    Mutation {
        mutation_id: format!("server:{}", uuid::Uuid::new_v4().simple()),
        key,
        op,
        hlc: None,
        base_seq: None,
        precondition,
    }
}

pub(crate) fn record_key(collection: String, id: String) -> Result<RecordKey, ApiError> {
    validate_collection(&collection)?;
    validate_record_id(&id)?;
    Ok(RecordKey { collection, id })
}

/// `If-Match: "<seq>"` or `*`.
fn if_match(headers: &HeaderMap) -> Result<Option<Precondition>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or_default().trim();
    if text == "*" {
        return Ok(Some(Precondition::Exists));
    }
    text.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .and_then(|t| t.parse::<u64>().ok())
        .map(|seq| Some(Precondition::Seq(Seq(seq))))
        .ok_or_else(|| {
            ApiError::bad_request("invalid_if_match", r#"If-Match must be "<seq>" (an ETag) or *"#)
        })
}

fn with_etag(record: RecordView) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", record.seq)).ok();
    let mut response = Json(record).into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

#[utoipa::path(get, path = "/v1/records/{collection}/{id}", tag = "records", security(("bearer" = [])),
    params(("collection" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, description = "the record, with ETag: \"<seq>\"", body = RecordView),
        (status = 404, description = "no such record", body = ErrorBody),
    ))]
pub async fn get_record(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = record_key(collection, id)?;
    let record = state
        .store
        .record(auth.user, &key)
        .await?
        .ok_or_else(|| ApiError::not_found("no such record"))?;
    Ok(with_etag(record_view(&key, &record)))
}

#[utoipa::path(put, path = "/v1/records/{collection}/{id}", tag = "records", security(("bearer" = [])),
    params(("collection" = String, Path), ("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "\"<seq>\" from the ETag, or *")),
    request_body = PutRecordRequest,
    responses(
        (status = 200, description = "the fields are set (others stay); new ETag", body = RecordView),
        (status = 412, description = "If-Match is stale; `current` holds the record", body = ErrorBody),
    ))]
pub async fn put_record(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
    Json(req): Json<PutRecordRequest>,
) -> Result<Response, ApiError> {
    let key = record_key(collection, id)?;
    if req.fields.is_empty() {
        return Err(ApiError::bad_request("invalid_op", "fields must not be empty"));
    }
    validate_fields(&req.fields, &state.config.sync_limits)?;
    let mutation = server_mutation(key.clone(), Op::Upsert(req.fields), if_match(&headers)?);
    written_record(&state, auth.user, key, mutation).await
}

#[utoipa::path(delete, path = "/v1/records/{collection}/{id}", tag = "records", security(("bearer" = [])),
    params(("collection" = String, Path), ("id" = String, Path),
        ("If-Match" = Option<String>, Header, description = "\"<seq>\" from the ETag, or *")),
    responses(
        (status = 200, description = "deleted on every device; new ETag", body = RecordView),
        (status = 404, description = "no such record", body = ErrorBody),
        (status = 412, description = "If-Match is stale; `current` holds the record", body = ErrorBody),
    ))]
pub async fn delete_record(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((collection, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = record_key(collection, id)?;
    let precondition = match if_match(&headers)? {
        Some(p) => p,
        None => {
            let exists = state
                .store
                .record(auth.user, &key)
                .await?
                .is_some_and(|r| !r.record.is_deleted());
            if !exists {
                return Err(ApiError::not_found("no such record"));
            }
            Precondition::Exists
        }
    };
    let mutation = server_mutation(key.clone(), Op::Delete, Some(precondition));
    written_record(&state, auth.user, key, mutation).await
}

async fn written_record(
    state: &AppState,
    user: UserId,
    key: RecordKey,
    mutation: Mutation,
) -> Result<Response, ApiError> {
    let applied = apply(state, user, vec![mutation], None).await?;
    let record = match applied.changed.into_iter().find(|(k, _)| *k == key) {
        Some((_, record)) => record,
        None => state
            .store
            .record(user, &key)
            .await?
            .ok_or_else(|| ApiError::not_found("no such record"))?,
    };
    Ok(with_etag(record_view(&key, &record)))
}
