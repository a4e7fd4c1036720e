//! [`SyncStore`]: records, the per-user change feed, remembered mutation ids and conflicts.
//!
//! [`SyncStore::apply`] is the only way records are written. In one transaction it takes the
//! user's feed-head lock, reads the touched records and the already-seen mutation ids, runs
//! the pure [`plan`], and writes the plan, with an undo entry for each visible change
//! (`crate::history`) and the change to each collection's digest (`crate::health`), so
//! both are exactly as current as the records. Holding the head lock for the whole transaction
//! serializes one user's writers (PostgreSQL: `SELECT … FOR UPDATE`; SQLite: a single writer
//! with `BEGIN IMMEDIATE`), so seqs commit in order and a reader can never pass a seq that
//! becomes visible later.
//!
//! The backends differ only in how a batch reaches the database (arrays with `UNNEST` on
//! PostgreSQL; on SQLite, row by row through prepared statements on the writer thread, or a
//! `json_each` array for a NextChat upload's sqlx transaction); [`SyncTx`] hides that, and
//! [`run_apply`] is the one orchestration all share.

use crate::StoreError;
use async_trait::async_trait;
use nextsync_core::api::MutationResult;
use nextsync_core::digest::{Digest, stored_hash};
use nextsync_core::history::{ChangeKind, Undo};
use nextsync_core::hlc::HlcError;
use nextsync_core::ids::{ConflictId, Seq, UserId};
use nextsync_core::push::{Mutation, PlanError, RecordKey, plan};
use nextsync_core::sync::{Side, StoredRecord};
use nextsync_core::time::Timestamp;
use serde_json::{Map, Value};
use std::collections::HashMap;
use thiserror::Error;

/// The node name in stamps the server makes (records API writes, conflict resolutions).
pub const SERVER_NODE: &str = "server";

#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub id: ConflictId,
    pub key: RecordKey,
    pub field: String,
    pub kept: Side,
    pub lost: Side,
    pub created_at: Timestamp,
}

/// What an applied push did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub results: Vec<MutationResult>,
    pub conflicts: Vec<Conflict>,
    /// The user's feed head after the push.
    pub head: Seq,
    pub epoch: String,
    /// The records as stored after the push, for the ones it changed.
    pub changed: Vec<(RecordKey, StoredRecord)>,
}

#[derive(Debug, Error)]
pub enum ApplyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A precondition failed; nothing was written.
    #[error("precondition failed for {}/{}", key.collection, key.id)]
    PreconditionFailed {
        key: RecordKey,
        current: Option<Box<StoredRecord>>,
    },
    /// The conflict to resolve is unknown or already resolved; nothing was written.
    #[error("conflict already resolved or unknown")]
    ConflictGone,
    #[error("stamp overflow")]
    Clock(#[source] HlcError),
}

impl From<sqlx::Error> for ApplyError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(err.into())
    }
}

/// One page of a user's feed.
#[derive(Debug, Clone)]
pub struct Feed {
    pub epoch: String,
    /// In seq order.
    pub records: Vec<(RecordKey, StoredRecord)>,
    /// More records follow these (the page ended at its count or its byte budget).
    pub has_more: bool,
}

#[async_trait]
pub trait SyncStore {
    /// Applies `mutations` atomically (see the module doc). With `resolves`, also marks that
    /// conflict resolved in the same transaction, or fails with [`ApplyError::ConflictGone`].
    async fn apply(
        &self,
        user: UserId,
        mutations: Vec<Mutation>,
        now: Timestamp,
        resolves: Option<ConflictId>,
    ) -> Result<Applied, ApplyError>;

    /// Records with seq above `since`, in seq order, and the feed's epoch: up to `limit` of
    /// them, and no more than `max_bytes` of stored text, except that a page always holds at
    /// least one record (records reach tens of MiB; a page of 500 of them cost a server
    /// gigabytes). Rows are read one by one, so the budget also bounds what is decoded.
    async fn pull(&self, user: UserId, since: Seq, limit: u32, max_bytes: usize) -> Result<Feed, StoreError>;

    async fn record(&self, user: UserId, key: &RecordKey) -> Result<Option<StoredRecord>, StoreError>;

    /// A recent-first first page: the `limit` most recently changed live records of
    /// `collection`, newest first, then (with `children = (collection, field)`) the live
    /// records of that collection whose `field` holds one of their ids, in seq order. Not a
    /// feed page: a reader still pulls the feed from its cursor, which brings each of these
    /// again at its latest state.
    async fn recent(
        &self,
        user: UserId,
        collection: &str,
        limit: u32,
        children: Option<(&str, &str)>,
    ) -> Result<Vec<(RecordKey, StoredRecord)>, StoreError>;

    /// Unresolved conflicts, oldest first.
    async fn conflicts(&self, user: UserId) -> Result<Vec<Conflict>, StoreError>;

    async fn conflict(&self, user: UserId, id: ConflictId) -> Result<Option<Conflict>, StoreError>;
}

/// The steps of one apply transaction, per backend.
#[async_trait]
pub(crate) trait SyncTx: Send {
    /// Locks the user's feed head until commit; returns (seq, epoch).
    async fn lock_head(&mut self, user: UserId) -> Result<(Seq, String), StoreError>;
    async fn seen_mutations(
        &mut self,
        user: UserId,
        ids: &[&str],
    ) -> Result<HashMap<String, Seq>, StoreError>;
    async fn load_records(
        &mut self,
        user: UserId,
        keys: &[&RecordKey],
    ) -> Result<HashMap<RecordKey, StoredRecord>, StoreError>;
    /// Stores the plan's changed records, remembers the mutation ids it applied and moves the
    /// head: one step, so that PostgreSQL sends it as one statement.
    async fn write(&mut self, user: UserId, writes: PlanWrites<'_>) -> Result<(), StoreError>;
    async fn insert_conflicts(&mut self, user: UserId, conflicts: &[Conflict]) -> Result<(), StoreError>;
    /// False when the conflict is unknown or already resolved.
    async fn mark_resolved(
        &mut self,
        user: UserId,
        id: ConflictId,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
}

/// What an apply writes once its plan is made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlanWrites<'a> {
    pub records: &'a [(RecordKey, StoredRecord)],
    /// An undo entry for each record whose visible state changed; their batch is `head`.
    pub history: &'a [HistoryWrite<'a>],
    /// What the apply changed in each collection's digest (stored only for users whose
    /// digests exist; see `crate::health`).
    pub digests: &'a [DigestDelta<'a>],
    /// The device's mutation ids applied, each with the seq it was answered with.
    pub applied: &'a [(String, Seq)],
    pub now: Timestamp,
    /// The feed head after the apply, when it moved.
    pub head: Option<Seq>,
}

/// One row of `record_history` (see [`nextsync_core::history`]).
#[derive(Debug, Clone)]
pub(crate) struct HistoryWrite<'a> {
    pub key: &'a RecordKey,
    pub seq: Seq,
    pub kind: ChangeKind,
    /// [`Undo::encode_body`].
    pub undo: String,
}

/// A change to one collection's digest: XOR `lo`/`hi` in, add `records`.
#[derive(Debug, Clone)]
pub(crate) struct DigestDelta<'a> {
    pub collection: &'a str,
    pub lo: i64,
    pub hi: i64,
    pub records: i64,
}

impl PlanWrites<'_> {
    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.applied.is_empty() && self.head.is_none()
    }
}

/// The one apply orchestration; the caller begins and commits the transaction.
pub(crate) async fn run_apply<T: SyncTx>(
    tx: &mut T,
    user: UserId,
    mutations: Vec<Mutation>,
    now: Timestamp,
    resolves: Option<ConflictId>,
) -> Result<Applied, ApplyError> {
    let (head, epoch) = tx.lock_head(user).await?;
    if let Some(id) = resolves
        && !tx.mark_resolved(user, id, now).await?
    {
        return Err(ApplyError::ConflictGone);
    }
    // Only device writes are remembered (server-made ids are random): look only those up.
    let ids: Vec<&str> = mutations
        .iter()
        .filter(|m| m.hlc.is_some())
        .map(|m| m.mutation_id.as_str())
        .collect();
    let seen = tx.seen_mutations(user, &ids).await?;
    let mut keys: Vec<&RecordKey> = mutations.iter().map(|m| &m.key).collect();
    keys.sort();
    keys.dedup();
    let mut records = tx.load_records(user, &keys).await?;
    // What readers saw before: each visible change leaves an undo entry in the history, and
    // moves its collection's digest by the old hash and the new.
    let mut before: HashMap<RecordKey, Map<String, Value>> = records
        .iter()
        .filter_map(|(key, record)| Some((key.clone(), record.visible_state()?)))
        .collect();
    let hashed_before: HashMap<RecordKey, u128> = records
        .iter()
        .map(|(key, record)| (key.clone(), stored_hash(&key.collection, &key.id, record)))
        .collect();
    let now_ms = u64::try_from(now.as_millis()).unwrap_or(0);
    let plan = plan(head, mutations, &mut records, &seen, now_ms, SERVER_NODE).map_err(|e| match e {
        PlanError::PreconditionFailed { key, current } => ApplyError::PreconditionFailed { key, current },
        PlanError::Clock(e) => ApplyError::Clock(e),
    })?;
    let conflicts: Vec<Conflict> = plan
        .conflicts
        .into_iter()
        .map(|(key, draft)| Conflict {
            id: ConflictId::new(),
            key,
            field: draft.field,
            kept: draft.kept,
            lost: draft.lost,
            created_at: now,
        })
        .collect();
    let history: Vec<HistoryWrite<'_>> = plan
        .changed
        .iter()
        .filter_map(|(key, record)| {
            let undo = match before.remove(key) {
                // A new (or revived) record needs no values to undo: skip building them.
                None => Undo::of(None, &(!record.record.is_deleted()).then(Map::new))?,
                before => Undo::of(before, &record.visible_state())?,
            };
            Some(HistoryWrite {
                key,
                seq: record.seq,
                kind: undo.kind,
                undo: undo.encode_body(),
            })
        })
        .collect();
    let mut moved: std::collections::BTreeMap<&str, (Digest, i64)> = std::collections::BTreeMap::new();
    for (key, record) in &plan.changed {
        let old = hashed_before.get(key).copied().unwrap_or(0);
        let new = stored_hash(&key.collection, &key.id, record);
        if old != new {
            let entry = moved.entry(key.collection.as_str()).or_default();
            entry.0.toggle(old ^ new);
            entry.1 += i64::from(new != 0) - i64::from(old != 0);
        }
    }
    let digests: Vec<DigestDelta<'_>> = moved
        .into_iter()
        .map(|(collection, (digest, records))| {
            let (lo, hi) = digest.to_halves();
            DigestDelta {
                collection,
                lo,
                hi,
                records,
            }
        })
        .collect();
    let writes = PlanWrites {
        records: &plan.changed,
        history: &history,
        digests: &digests,
        applied: &plan.applied,
        now,
        head: (plan.head != head).then_some(plan.head),
    };
    if !writes.is_empty() {
        tx.write(user, writes).await?;
    }
    tx.insert_conflicts(user, &conflicts).await?;
    Ok(Applied {
        results: plan.results,
        conflicts,
        head: plan.head,
        epoch,
        changed: plan.changed,
    })
}

// SQL both backends share.
pub(crate) const INSERT_HISTORY_COLUMNS: &str =
    "INSERT INTO record_history (user_id, collection, record_id, seq, batch, at, kind, undo) VALUES ";
pub(crate) const ON_HISTORY_CONFLICT: &str = " ON CONFLICT (user_id, collection, record_id, seq) DO UPDATE SET \
     batch = excluded.batch, at = excluded.at, kind = excluded.kind, undo = excluded.undo";
/// SQLite's digest update (`$1` user, `$2` collection, `$3`/`$4` halves, `$5` records):
/// only for users whose digests exist (the `''` marker row). SQLite has no XOR operator:
/// `a ^ b` is `(a | b) & ~(a & b)`.
pub(crate) const SQLITE_MOVE_DIGEST: &str = "INSERT INTO collection_digests (user_id, collection, lo, hi, records) \
     SELECT $1, $2, $3, $4, $5 WHERE EXISTS \
     (SELECT 1 FROM collection_digests WHERE user_id = $1 AND collection = '') \
     ON CONFLICT (user_id, collection) DO UPDATE SET lo = (lo | excluded.lo) & ~(lo & excluded.lo), \
     hi = (hi | excluded.hi) & ~(hi & excluded.hi), records = records + excluded.records";
pub(crate) const SET_HEAD: &str = "UPDATE feed_heads SET seq = $2 WHERE user_id = $1";
pub(crate) const SELECT_HEAD: &str = "SELECT seq, epoch FROM feed_heads WHERE user_id = $1";
pub(crate) const MARK_RESOLVED: &str =
    "UPDATE conflicts SET resolved_at = $3 WHERE user_id = $1 AND conflict_id = $2 AND resolved_at IS NULL";
pub(crate) const INSERT_CONFLICT: &str = "INSERT INTO conflicts \
     (user_id, conflict_id, collection, record_id, field, kept, lost, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
pub(crate) const SELECT_FEED: &str = "SELECT collection, record_id, fields, tombstone, tombstone_seq, seq \
     FROM records WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";
pub(crate) const SELECT_RECORD: &str = "SELECT collection, record_id, fields, tombstone, tombstone_seq, seq \
     FROM records WHERE user_id = $1 AND collection = $2 AND record_id = $3";
pub(crate) const SELECT_NEWEST: &str = "SELECT collection, record_id, fields, tombstone, tombstone_seq, seq \
     FROM records WHERE user_id = $1 AND collection = $2 ORDER BY seq DESC";
pub(crate) const SELECT_CONFLICTS: &str = "SELECT conflict_id, collection, record_id, field, kept, lost, created_at \
     FROM conflicts WHERE user_id = $1 AND resolved_at IS NULL ORDER BY created_at, conflict_id";
pub(crate) const SELECT_CONFLICT: &str = "SELECT conflict_id, collection, record_id, field, kept, lost, created_at \
     FROM conflicts WHERE user_id = $1 AND conflict_id = $2 AND resolved_at IS NULL";

pub(crate) fn encode_side(side: &Side) -> String {
    serde_json::to_string(side).unwrap_or_else(|_| "null".to_owned())
}

pub(crate) fn decode_side(text: &str) -> Result<Side, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(format!("conflict side: {e}")))
}

/// Implements the parts of [`SyncTx`] and [`SyncStore`] whose SQL both backends share, for a
/// store with `writer()`/`reader()` pools. Invoke inside a module of its own.
macro_rules! impl_shared_sync {
    ($tx:ty, $store:ty, $row:ty) => {
        use nextsync_core::ids::{ConflictId, Seq, UserId};
        use nextsync_core::push::RecordKey;
        use nextsync_core::sync::StoredRecord;
        use nextsync_core::time::Timestamp;
        use sqlx::Row as _;
        use $crate::StoreError;
        use $crate::sync::*;

        pub(crate) fn record_row(row: &$row) -> Result<(RecordKey, StoredRecord), StoreError> {
            let key = RecordKey {
                collection: row.try_get("collection")?,
                id: row.try_get("record_id")?,
            };
            let fields: String = row.try_get("fields")?;
            let tombstone: Option<String> = row.try_get("tombstone")?;
            let tombstone_seq: Option<i64> = row.try_get("tombstone_seq")?;
            let seq: i64 = row.try_get("seq")?;
            let record = StoredRecord::decode(
                &fields,
                tombstone.as_deref(),
                tombstone_seq.map(|s| Seq(s as u64)),
                Seq(seq as u64),
            )
            .map_err(StoreError::Corrupt)?;
            Ok((key, record))
        }

        /// Stored text of a feed row: what a page's byte budget counts.
        fn row_bytes(row: &$row) -> Result<usize, StoreError> {
            let fields: &str = row.try_get("fields")?;
            let tombstone: Option<&str> = row.try_get("tombstone")?;
            Ok(fields.len() + tombstone.map_or(0, str::len))
        }

        fn conflict_row(row: &$row) -> Result<Conflict, StoreError> {
            Ok(Conflict {
                id: ConflictId::from_uuid(row.try_get("conflict_id")?),
                key: RecordKey {
                    collection: row.try_get("collection")?,
                    id: row.try_get("record_id")?,
                },
                field: row.try_get("field")?,
                kept: decode_side(&row.try_get::<String, _>("kept")?)?,
                lost: decode_side(&row.try_get::<String, _>("lost")?)?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
            })
        }

        pub(crate) async fn insert_conflicts(
            tx: &mut $tx,
            user: UserId,
            conflicts: &[Conflict],
        ) -> Result<(), StoreError> {
            for c in conflicts {
                sqlx::query(INSERT_CONFLICT)
                    .bind(user.as_uuid())
                    .bind(c.id.as_uuid())
                    .bind(&c.key.collection)
                    .bind(&c.key.id)
                    .bind(&c.field)
                    .bind(encode_side(&c.kept))
                    .bind(encode_side(&c.lost))
                    .bind(c.created_at.as_millis())
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(())
        }

        pub(crate) async fn mark_resolved(
            tx: &mut $tx,
            user: UserId,
            id: ConflictId,
            now: Timestamp,
        ) -> Result<bool, StoreError> {
            let done = sqlx::query(MARK_RESOLVED)
                .bind(user.as_uuid())
                .bind(id.as_uuid())
                .bind(now.as_millis())
                .execute(&mut **tx)
                .await?;
            Ok(done.rows_affected() == 1)
        }

        pub(crate) async fn head(
            tx: &mut $tx,
            user: UserId,
            lock: &'static str,
        ) -> Result<(Seq, String), StoreError> {
            let sql = sqlx::AssertSqlSafe(format!("{SELECT_HEAD}{lock}"));
            let row = sqlx::query(sql)
                .bind(user.as_uuid())
                .fetch_optional(&mut **tx)
                .await?;
            let row = row.ok_or_else(|| StoreError::Corrupt(format!("user {user} has no feed head")))?;
            Ok((
                Seq(row.try_get::<i64, _>("seq")? as u64),
                row.try_get("epoch")?,
            ))
        }

        #[async_trait::async_trait]
        impl SyncStore for $store {
            async fn apply(
                &self,
                user: UserId,
                mutations: Vec<nextsync_core::push::Mutation>,
                now: Timestamp,
                resolves: Option<ConflictId>,
            ) -> Result<Applied, ApplyError> {
                // Per backend: one transaction per apply (PostgreSQL), or group commit (SQLite).
                self.commit_apply(user, mutations, now, resolves).await
            }

            async fn pull(
                &self,
                user: UserId,
                since: Seq,
                limit: u32,
                max_bytes: usize,
            ) -> Result<Feed, StoreError> {
                use futures::TryStreamExt as _;
                // Read the epoch first: a head written after this read only adds records.
                let epoch: String = sqlx::query_scalar("SELECT epoch FROM feed_heads WHERE user_id = $1")
                    .bind(user.as_uuid())
                    .fetch_optional(self.reader())
                    .await?
                    .ok_or_else(|| StoreError::Corrupt(format!("user {user} has no feed head")))?;
                // One row more than asked tells whether there is more.
                let mut rows = sqlx::query(SELECT_FEED)
                    .bind(user.as_uuid())
                    .bind(i64::try_from(since.0).unwrap_or(i64::MAX))
                    .bind(i64::from(limit) + 1)
                    .fetch(self.reader());
                let mut records = Vec::new();
                let mut bytes = 0usize;
                let mut has_more = false;
                while let Some(row) = rows.try_next().await? {
                    let size = row_bytes(&row)?;
                    if records.len() == limit as usize
                        || (!records.is_empty() && bytes.saturating_add(size) > max_bytes)
                    {
                        has_more = true;
                        break;
                    }
                    bytes = bytes.saturating_add(size);
                    records.push(record_row(&row)?);
                }
                Ok(Feed {
                    epoch,
                    records,
                    has_more,
                })
            }

            async fn record(
                &self,
                user: UserId,
                key: &RecordKey,
            ) -> Result<Option<StoredRecord>, StoreError> {
                let row = sqlx::query(SELECT_RECORD)
                    .bind(user.as_uuid())
                    .bind(&key.collection)
                    .bind(&key.id)
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref()
                    .map(record_row)
                    .transpose()
                    .map(|r| r.map(|(_, record)| record))
            }

            async fn recent(
                &self,
                user: UserId,
                collection: &str,
                limit: u32,
                children: Option<(&str, &str)>,
            ) -> Result<Vec<(RecordKey, StoredRecord)>, StoreError> {
                use futures::TryStreamExt as _;
                let mut records = Vec::new();
                {
                    // Newest first, skipping deleted records, until `limit` live ones.
                    let mut rows = sqlx::query(SELECT_NEWEST)
                        .bind(user.as_uuid())
                        .bind(collection)
                        .fetch(self.reader());
                    while records.len() < limit as usize
                        && let Some(row) = rows.try_next().await?
                    {
                        let (key, record) = record_row(&row)?;
                        if !record.record.is_deleted() {
                            records.push((key, record));
                        }
                    }
                }
                if let Some((child, field)) = children
                    && !records.is_empty()
                {
                    let ids: Vec<&str> = records.iter().map(|(k, _)| k.id.as_str()).collect();
                    let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    // Per backend: the stored value of `field` (JSON path or key) among `ids`.
                    let rows = sqlx::query(super::SELECT_CHILDREN)
                        .bind(user.as_uuid())
                        .bind(child)
                        .bind(super::link_argument(field))
                        .bind(ids)
                        .fetch_all(self.reader())
                        .await?;
                    for row in &rows {
                        let (key, record) = record_row(row)?;
                        if !record.record.is_deleted() {
                            records.push((key, record));
                        }
                    }
                }
                Ok(records)
            }

            async fn conflicts(&self, user: UserId) -> Result<Vec<Conflict>, StoreError> {
                let rows = sqlx::query(SELECT_CONFLICTS)
                    .bind(user.as_uuid())
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(conflict_row).collect()
            }

            async fn conflict(&self, user: UserId, id: ConflictId) -> Result<Option<Conflict>, StoreError> {
                let row = sqlx::query(SELECT_CONFLICT)
                    .bind(user.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_optional(self.reader())
                    .await?;
                row.as_ref().map(conflict_row).transpose()
            }
        }
    };
}

pub(crate) use impl_shared_sync;
