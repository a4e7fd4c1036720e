//! The trash and point-in-time restore, over the store's record history.
//!
//! - `GET /v1/trash?collection=&before=&limit=`: deleted records, most recent first.
//! - `POST /v1/trash/{collection}/{id}/restore[?together=true]`: the record (and, with
//!   `together`, everything the same write deleted) comes back.
//! - `DELETE /v1/trash/{collection}/{id}`, `DELETE /v1/trash[?collection=]`: forget for good.
//! - `POST /v1/restore {"at", "collection"?, "id"?, "dry_run"?}`: the account (or a part of
//!   it) back to how it was at a moment.
//!
//! Every restore is a set of new server-stamped writes through the one write path, so every
//! device gets it through its feed like any other change. Each write carries the seq of the
//! record it was planned against ([`Precondition::Unchanged`]): a device writing meanwhile
//! is never overwritten by a stale plan; the plan is made again instead.

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use crate::sync::{apply_planned, record_key, record_view, server_mutation};
use axum::Router;
use axum::extract::State;
use axum::routing::{delete, get, post};
use nextsync_core::api::{
    ErrorBody, RestoreAction, RestoreChange, RestoreRequest, RestoreResponse, TrashItem, TrashPage,
    TrashPurged, TrashRestored,
};
use nextsync_core::e2ee::KEYS_COLLECTION;
use nextsync_core::history::Revert;
use nextsync_core::ids::{Seq, UserId};
use nextsync_core::push::{Mutation, Precondition, RecordKey, validate_collection};
use nextsync_core::sync::Op;
use nextsync_core::time::Timestamp;
use nextsync_store::history::{Rewound, Scope, TrashEntry};
use serde::Deserialize;
use std::time::Duration;

pub const DEFAULT_TRASH_LIMIT: u32 = 100;
pub const MAX_TRASH_LIMIT: u32 = 500;
/// Most records one restore answer lists (the counts are always whole).
const LISTED_CHANGES: usize = 1000;
/// Mutations per apply when a restore writes many records.
const RESTORE_CHUNK: usize = 500;
/// Times a restore re-plans after a device wrote to one of its records meanwhile.
const RESTORE_ATTEMPTS: usize = 5;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/trash", get(list_trash).delete(purge_trash))
        .route("/v1/trash/{collection}/{id}", delete(purge_one))
        .route("/v1/trash/{collection}/{id}/restore", post(restore_from_trash))
        .route("/v1/restore", post(restore_to_moment))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// The oldest deletion still in the trash.
fn trash_since(state: &AppState) -> Timestamp {
    Timestamp::now().minus_secs(secs(state.config.trash_retention))
}

fn trash_item(state: &AppState, entry: TrashEntry) -> TrashItem {
    TrashItem {
        expires_at: entry.deleted_at.plus_secs(secs(state.config.trash_retention)),
        collection: entry.key.collection,
        id: entry.key.id,
        fields: entry.values,
        deleted_at: entry.deleted_at,
        seq: entry.seq,
        batch: entry.batch,
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TrashParams {
    /// Only this collection.
    collection: Option<String>,
    /// Deleted before this seq (`next` of the previous page).
    before: Option<u64>,
    /// Items per page (default 100, at most 500).
    limit: Option<u32>,
}

#[utoipa::path(get, path = "/v1/trash", tag = "trash", security(("bearer" = [])), params(TrashParams),
    responses((status = 200, description = "deleted records, most recently deleted first", body = TrashPage)))]
pub async fn list_trash(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(params): Query<TrashParams>,
) -> Result<Json<TrashPage>, ApiError> {
    if let Some(collection) = &params.collection {
        validate_collection(collection)?;
    }
    let limit = params
        .limit
        .unwrap_or(DEFAULT_TRASH_LIMIT)
        .clamp(1, MAX_TRASH_LIMIT);
    let scope = Scope {
        collection: params.collection.as_deref(),
        id: None,
    };
    let entries = state
        .store
        .trash(
            auth.user,
            scope,
            trash_since(&state),
            params.before.map(Seq),
            limit,
        )
        .await?;
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(TrashPage {
        items: entries.into_iter().map(|e| trash_item(&state, e)).collect(),
        next,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RestoreParams {
    /// Also restore every record the same write deleted.
    #[serde(default)]
    together: bool,
}

#[utoipa::path(post, path = "/v1/trash/{collection}/{id}/restore", tag = "trash", security(("bearer" = [])),
    params(("collection" = String, Path), ("id" = String, Path), RestoreParams),
    responses(
        (status = 200, description = "back on every device, as new writes", body = TrashRestored),
        (status = 404, description = "not in the trash", body = ErrorBody),
    ))]
pub async fn restore_from_trash(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((collection, id)): Path<(String, String)>,
    Query(params): Query<RestoreParams>,
) -> Result<Json<TrashRestored>, ApiError> {
    let key = record_key(collection, id)?;
    let since = trash_since(&state);
    for _ in 0..RESTORE_ATTEMPTS {
        let scope = Scope {
            collection: Some(&key.collection),
            id: Some(&key.id),
        };
        let entry = state
            .store
            .trash(auth.user, scope, since, None, 1)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::not_found("no such record in the trash"))?;
        let entries = if params.together {
            state.store.trash_batch(auth.user, entry.batch, since).await?
        } else {
            vec![entry]
        };
        let mut mutations = Vec::with_capacity(entries.len());
        for entry in entries {
            // Still deleted (it is in the trash), at this seq: a write meanwhile re-plans.
            let Some(current) = state.store.record(auth.user, &entry.key).await? else {
                continue;
            };
            if entry.values.is_empty() || !current.record.is_deleted() {
                continue;
            }
            mutations.push(server_mutation(
                entry.key,
                Op::Upsert(entry.values),
                Some(Precondition::Unchanged(current.seq)),
            ));
        }
        if let Some(applied) = apply_planned(&state, auth.user, mutations).await? {
            let restored = applied.changed.iter().map(|(k, r)| record_view(k, r)).collect();
            return Ok(Json(TrashRestored { restored }));
        }
    }
    Err(busy())
}

fn busy() -> ApiError {
    ApiError::conflict(
        "busy",
        "the records kept changing while the restore was planned; try again",
    )
}

#[utoipa::path(delete, path = "/v1/trash/{collection}/{id}", tag = "trash", security(("bearer" = [])),
    params(("collection" = String, Path), ("id" = String, Path)),
    responses(
        (status = 200, description = "forgotten for good, its history too", body = TrashPurged),
        (status = 404, description = "not in the trash", body = ErrorBody),
    ))]
pub async fn purge_one(
    State(state): State<AppState>,
    auth: AuthUser,
    Path((collection, id)): Path<(String, String)>,
) -> Result<Json<TrashPurged>, ApiError> {
    let key = record_key(collection, id)?;
    let scope = Scope {
        collection: Some(&key.collection),
        id: Some(&key.id),
    };
    match state.store.purge_trash(auth.user, scope).await? {
        0 => Err(ApiError::not_found("no such record in the trash")),
        purged => Ok(Json(TrashPurged { purged })),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PurgeParams {
    /// Only this collection.
    collection: Option<String>,
}

#[utoipa::path(delete, path = "/v1/trash", tag = "trash", security(("bearer" = [])), params(PurgeParams),
    responses((status = 200, description = "the trash (of one collection) emptied for good", body = TrashPurged)))]
pub async fn purge_trash(
    State(state): State<AppState>,
    auth: AuthUser,
    Query(params): Query<PurgeParams>,
) -> Result<Json<TrashPurged>, ApiError> {
    if let Some(collection) = &params.collection {
        validate_collection(collection)?;
    }
    let scope = Scope {
        collection: params.collection.as_deref(),
        id: None,
    };
    let purged = state.store.purge_trash(auth.user, scope).await?;
    Ok(Json(TrashPurged { purged }))
}

/// One record's part of a restore.
struct Step {
    key: RecordKey,
    action: RestoreAction,
    mutations: Vec<Mutation>,
}

/// What bringing `rewound` back to its `then` takes. The end-to-end encryption keyring is
/// left alone unless asked for by name: rewinding it past a passphrase change or the switch
/// to encryption would lock the account out of its own data.
fn plan(rewound: Vec<Rewound>, scope: &Scope<'_>) -> Vec<Step> {
    rewound
        .into_iter()
        .filter(|r| r.key.collection != KEYS_COLLECTION || scope.collection == Some(KEYS_COLLECTION))
        .filter_map(|r| {
            let unchanged = Some(Precondition::Unchanged(r.current.seq));
            let (action, mutations) = match Revert::between(&r.current.visible_state(), &r.then) {
                Revert::Same => return None,
                Revert::Delete => (
                    RestoreAction::Trash,
                    vec![server_mutation(r.key.clone(), Op::Delete, unchanged)],
                ),
                Revert::Write {
                    values,
                    clear_first,
                    revive,
                } => {
                    let action = if revive {
                        RestoreAction::Restore
                    } else {
                        RestoreAction::Revert
                    };
                    let mut mutations = Vec::with_capacity(2);
                    let upsert_precondition = if clear_first {
                        // A field cannot be unset; a delete first hides every field, then
                        // the old values come back above it.
                        mutations.push(server_mutation(r.key.clone(), Op::Delete, unchanged));
                        None
                    } else {
                        unchanged
                    };
                    mutations.push(server_mutation(
                        r.key.clone(),
                        Op::Upsert(values),
                        upsert_precondition,
                    ));
                    (action, mutations)
                }
            };
            Some(Step {
                key: r.key,
                action,
                mutations,
            })
        })
        .collect()
}

async fn rewind_plan(
    state: &AppState,
    user: UserId,
    at: Timestamp,
    scope: &Scope<'_>,
) -> Result<Vec<Step>, ApiError> {
    Ok(plan(state.store.rewind(user, at, *scope).await?, scope))
}

#[utoipa::path(post, path = "/v1/restore", tag = "trash", security(("bearer" = [])), request_body = RestoreRequest,
    responses(
        (status = 200, description = "what changed (or, with dry_run, what would)", body = RestoreResponse),
        (status = 400, description = "the moment is in the future or beyond the history kept (`earliest`)", body = ErrorBody),
        (status = 409, description = "the records kept changing meanwhile", body = ErrorBody),
    ))]
pub async fn restore_to_moment(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(req): Json<RestoreRequest>,
) -> Result<Json<RestoreResponse>, ApiError> {
    let now = Timestamp::now();
    let earliest = now.minus_secs(secs(state.config.history_retention));
    if req.at > now {
        return Err(ApiError::bad_request("restore_in_future", "at is in the future"));
    }
    if req.at < earliest {
        return Err(ApiError::bad_request(
            "beyond_retention",
            format!("history reaches back to {earliest}; at is earlier"),
        )
        .with_member("earliest", serde_json::json!(earliest)));
    }
    if let Some(collection) = &req.collection {
        validate_collection(collection)?;
    }
    if req.id.is_some() && req.collection.is_none() {
        return Err(ApiError::bad_request("invalid_scope", "id needs collection"));
    }
    let scope = Scope {
        collection: req.collection.as_deref(),
        id: req.id.as_deref(),
    };
    let steps = rewind_plan(&state, auth.user, req.at, &scope).await?;
    let count = |action| steps.iter().filter(|s| s.action == action).count() as u64;
    let response = RestoreResponse {
        at: req.at,
        dry_run: req.dry_run,
        restored: count(RestoreAction::Restore),
        reverted: count(RestoreAction::Revert),
        trashed: count(RestoreAction::Trash),
        changes: steps
            .iter()
            .take(LISTED_CHANGES)
            .map(|s| RestoreChange {
                collection: s.key.collection.clone(),
                id: s.key.id.clone(),
                action: s.action,
            })
            .collect(),
        truncated: steps.len() > LISTED_CHANGES,
        earliest,
    };
    if !req.dry_run {
        write_steps(&state, auth.user, req.at, &scope, steps).await?;
    }
    Ok(Json(response))
}

/// Applies a restore plan in chunks. A chunk refused because a device wrote to one of its
/// records meanwhile makes a new plan from the history as it is now (the chunks already
/// written are part of it, so they plan to nothing).
async fn write_steps(
    state: &AppState,
    user: UserId,
    at: Timestamp,
    scope: &Scope<'_>,
    mut steps: Vec<Step>,
) -> Result<(), ApiError> {
    for _ in 0..RESTORE_ATTEMPTS {
        let mut refused = false;
        let mut pending = steps.into_iter().peekable();
        while pending.peek().is_some() {
            let mut chunk = Vec::new();
            while chunk.len() < RESTORE_CHUNK
                && let Some(step) = pending.next()
            {
                chunk.extend(step.mutations);
            }
            if apply_planned(state, user, chunk).await?.is_none() {
                refused = true;
                break;
            }
        }
        if !refused {
            return Ok(());
        }
        steps = rewind_plan(state, user, at, scope).await?;
    }
    Err(busy())
}
