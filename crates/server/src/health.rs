//! Sync health: what a client needs to check its replica against the server and repair
//! only what differs (see `nextsync_core::digest`).
//!
//! - `GET /v1/sync/digest`: per-collection digests and the cursor they hold at (one row each,
//!   kept current by every write).
//! - `GET /v1/sync/digest/{collection}?buckets=N`: that collection's digest per bucket.
//! - `GET /v1/sync/digest/{collection}/records?buckets=N&bucket=i,j,…`: the records (deleted
//!   ones too) of those buckets, as the feed shows them.

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::extract::{Json, Path, Query};
use crate::state::AppState;
use crate::sync::record_view;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use nextsync_core::api::{BucketDigests, BucketRecords, CollectionDigest, DigestResponse, ErrorBody};
use nextsync_core::cursor::Cursor;
use nextsync_core::digest::MAX_BUCKETS;
use nextsync_core::ids::Seq;
use nextsync_core::push::validate_collection;
use serde::Deserialize;

/// Most buckets one records request may ask for.
const MAX_WANTED: usize = 256;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/sync/digest", get(digests))
        .route("/v1/sync/digest/{collection}", get(bucket_digests))
        .route("/v1/sync/digest/{collection}/records", get(bucket_records))
}

fn cursor(epoch: String, seq: Seq) -> String {
    Cursor { epoch, seq }.encode()
}

#[utoipa::path(get, path = "/v1/sync/digest", tag = "sync", security(("bearer" = [])),
    responses((status = 200, description = "digests of the live records per collection, and the cursor they hold at", body = DigestResponse)))]
pub async fn digests(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<DigestResponse>, ApiError> {
    let digests = state.store.digests(auth.user).await?;
    Ok(Json(DigestResponse {
        cursor: cursor(digests.epoch, digests.head),
        collections: digests
            .collections
            .into_iter()
            .map(|(collection, digest, records)| CollectionDigest {
                collection,
                digest,
                records,
            })
            .collect(),
    }))
}

/// `buckets`: a power of two up to 4,096.
fn buckets(n: u32) -> Result<u32, ApiError> {
    if n == 0 || n > MAX_BUCKETS || !n.is_power_of_two() {
        return Err(ApiError::bad_request(
            "invalid_buckets",
            format!("buckets must be a power of two from 1 to {MAX_BUCKETS}"),
        ));
    }
    Ok(n)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct BucketParams {
    /// How many buckets (a power of two, at most 4,096).
    buckets: u32,
}

#[utoipa::path(get, path = "/v1/sync/digest/{collection}", tag = "sync", security(("bearer" = [])),
    params(("collection" = String, Path), BucketParams),
    responses(
        (status = 200, description = "the collection's digest per bucket", body = BucketDigests),
        (status = 400, description = "invalid_buckets", body = ErrorBody),
    ))]
pub async fn bucket_digests(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(collection): Path<String>,
    Query(params): Query<BucketParams>,
) -> Result<Json<BucketDigests>, ApiError> {
    validate_collection(&collection)?;
    let n = buckets(params.buckets)?;
    let (epoch, head, digests) = state.store.bucket_digests(auth.user, &collection, n).await?;
    Ok(Json(BucketDigests {
        collection,
        cursor: cursor(epoch, head),
        buckets: digests,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct RecordsParams {
    /// How many buckets the collection is split into.
    buckets: u32,
    /// The wanted buckets, comma-separated (at most 256).
    bucket: String,
}

#[utoipa::path(get, path = "/v1/sync/digest/{collection}/records", tag = "sync", security(("bearer" = [])),
    params(("collection" = String, Path), RecordsParams),
    responses(
        (status = 200, description = "every record of those buckets, deleted ones too", body = BucketRecords),
        (status = 400, description = "invalid_buckets", body = ErrorBody),
    ))]
pub async fn bucket_records(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(collection): Path<String>,
    Query(params): Query<RecordsParams>,
) -> Result<Json<BucketRecords>, ApiError> {
    validate_collection(&collection)?;
    let n = buckets(params.buckets)?;
    let wanted: Vec<u32> = params
        .bucket
        .split(',')
        .map(|b| b.trim().parse::<u32>().ok().filter(|b| *b < n))
        .collect::<Option<_>>()
        .filter(|w: &Vec<u32>| !w.is_empty() && w.len() <= MAX_WANTED)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_buckets",
                format!("bucket must list 1 to {MAX_WANTED} bucket numbers below buckets"),
            )
        })?;
    let (epoch, head, records) = state
        .store
        .bucket_records(auth.user, &collection, n, &wanted)
        .await?;
    Ok(Json(BucketRecords {
        cursor: cursor(epoch, head),
        records: records
            .iter()
            .map(|(key, record)| record_view(key, record))
            .collect(),
    }))
}
