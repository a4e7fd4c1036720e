//! [`HistoryStore`]: the trash and point-in-time restore, read from `record_history`.
//!
//! Every apply writes an undo entry for each record whose visible state it changed (see
//! [`crate::sync::run_apply`] and [`nextsync_core::history`]). Here those entries are read:
//!
//! - the **trash** is the deletions that no later entry of the same record follows (a record
//!   changes visibly again only through a new entry, so such a record is still deleted);
//! - a **rewind** reads the entries after a moment, newest first per record, together with
//!   the record as it is now, in one statement (one snapshot: the record is exactly the
//!   state those entries lead to);
//! - **pruning** drops entries by age. A deletion that is still the record's latest entry is
//!   the trash's copy and stays for the trash retention; everything else goes after the
//!   history retention. Oldest first, so an entry never outlives the one after it.
//!
//! Restoring is not here: a restore is a set of new writes through the one write path.

use crate::StoreError;
use async_trait::async_trait;
use nextsync_core::history::{ChangeKind, Undo, Visible};
use nextsync_core::ids::{Seq, UserId};
use nextsync_core::push::RecordKey;
use nextsync_core::sync::StoredRecord;
use nextsync_core::time::Timestamp;
use serde_json::{Map, Value};

/// Which records a trash or rewind query concerns: all, one collection, or one record.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope<'a> {
    pub collection: Option<&'a str>,
    /// Only with `collection`.
    pub id: Option<&'a str>,
}

/// A record in the trash.
#[derive(Debug, Clone, PartialEq)]
pub struct TrashEntry {
    pub key: RecordKey,
    /// Its visible fields when it was deleted.
    pub values: Map<String, Value>,
    pub deleted_at: Timestamp,
    /// The delete's seq.
    pub seq: Seq,
    /// The last seq of the apply that deleted it (shared by everything that apply deleted).
    pub batch: Seq,
}

/// A record with a change after some moment: as it is now, and as it was then.
#[derive(Debug, Clone)]
pub struct Rewound {
    pub key: RecordKey,
    pub current: StoredRecord,
    pub then: Visible,
}

#[async_trait]
pub trait HistoryStore {
    /// The trash in `scope`, most recently deleted first: deletions made at or after `since`
    /// (older ones have expired) with a seq below `before`, up to `limit`.
    async fn trash(
        &self,
        user: UserId,
        scope: Scope<'_>,
        since: Timestamp,
        before: Option<Seq>,
        limit: u32,
    ) -> Result<Vec<TrashEntry>, StoreError>;

    /// The records in the trash that one apply deleted (`batch`), at or after `since`.
    async fn trash_batch(
        &self,
        user: UserId,
        batch: Seq,
        since: Timestamp,
    ) -> Result<Vec<TrashEntry>, StoreError>;

    /// Forgets the records in the trash in `scope` for good: their whole history goes, so
    /// no restore brings them back. Returns how many records left the trash.
    async fn purge_trash(&self, user: UserId, scope: Scope<'_>) -> Result<u64, StoreError>;

    /// Every record in `scope` with a visible change after `after`, as it is now and as it
    /// was at `after`, in key order.
    async fn rewind(
        &self,
        user: UserId,
        after: Timestamp,
        scope: Scope<'_>,
    ) -> Result<Vec<Rewound>, StoreError>;

    /// Drops up to `limit` entries, oldest first: those older than `history_before`, except
    /// a deletion still in the trash, which goes once older than `trash_before` too. Returns
    /// how many rows went; the caller repeats while it gets `limit`.
    async fn prune_history(
        &self,
        history_before: Timestamp,
        trash_before: Timestamp,
        limit: u32,
    ) -> Result<u64, StoreError>;
}

/// A history entry `h` with no later entry for the same record.
const LATEST: &str = "NOT EXISTS (SELECT 1 FROM record_history n WHERE n.user_id = h.user_id \
     AND n.collection = h.collection AND n.record_id = h.record_id AND n.seq > h.seq)";

/// `$1` user; `$2`, `$3` the scope's collection and id (NULL: any).
fn trash_where() -> String {
    format!(
        "h.user_id = $1 AND h.kind = {deleted} AND (CAST($2 AS TEXT) IS NULL OR h.collection = $2) \
         AND (CAST($3 AS TEXT) IS NULL OR h.record_id = $3) AND {LATEST}",
        deleted = ChangeKind::Deleted.code()
    )
}

pub(crate) fn select_trash() -> String {
    format!(
        "SELECT h.collection, h.record_id, h.seq, h.batch, h.at, h.undo FROM record_history h \
         WHERE {} AND h.at >= $4 AND h.seq < $5 ORDER BY h.seq DESC LIMIT $6",
        trash_where()
    )
}

pub(crate) fn select_trash_batch() -> String {
    format!(
        "SELECT h.collection, h.record_id, h.seq, h.batch, h.at, h.undo FROM record_history h \
         WHERE h.user_id = $1 AND h.kind = {deleted} AND h.batch = $2 AND h.at >= $3 AND {LATEST} \
         ORDER BY h.seq",
        deleted = ChangeKind::Deleted.code()
    )
}

pub(crate) fn count_trash() -> String {
    format!("SELECT count(*) FROM record_history h WHERE {}", trash_where())
}

pub(crate) fn purge_trash() -> String {
    format!(
        "DELETE FROM record_history WHERE user_id = $1 AND (collection, record_id) IN \
         (SELECT h.collection, h.record_id FROM record_history h WHERE {})",
        trash_where()
    )
}

/// Entries after `$2` in scope (`$3`, `$4`), newest first per record; the first row of each
/// record carries the record as it is now.
pub(crate) const SELECT_REWIND: &str = "SELECT h.collection, h.record_id, h.nth, h.kind, h.undo, \
     r.fields, r.tombstone, r.tombstone_seq, r.seq \
     FROM (SELECT collection, record_id, seq, kind, undo, \
     row_number() OVER (PARTITION BY collection, record_id ORDER BY seq DESC) AS nth \
     FROM record_history WHERE user_id = $1 AND at > $2 \
     AND (CAST($3 AS TEXT) IS NULL OR collection = $3) AND (CAST($4 AS TEXT) IS NULL OR record_id = $4)) AS h \
     LEFT JOIN records r ON h.nth = 1 AND r.user_id = $1 AND r.collection = h.collection AND r.record_id = h.record_id \
     ORDER BY h.collection, h.record_id, h.seq DESC";

/// `$1` history cutoff, `$2` trash cutoff, `$3` limit.
pub(crate) fn prune_history() -> String {
    format!(
        "DELETE FROM record_history WHERE (user_id, collection, record_id, seq) IN \
         (SELECT h.user_id, h.collection, h.record_id, h.seq FROM record_history h WHERE h.at < $1 \
         AND (h.at < $2 OR h.kind <> {deleted} OR NOT ({LATEST})) ORDER BY h.at LIMIT $3)",
        deleted = ChangeKind::Deleted.code()
    )
}

pub(crate) fn decode_undo(kind: i16, body: &str) -> Result<Undo, StoreError> {
    let kind = ChangeKind::from_code(kind)
        .ok_or_else(|| StoreError::Corrupt(format!("history entry of unknown kind {kind}")))?;
    Undo::decode(kind, body).map_err(StoreError::Corrupt)
}

/// Implements [`HistoryStore`] for a store with `writer()`/`reader()` pools and a
/// `begin_write()` transaction that holds the user's writers off (`$lock` after the head
/// read: ` FOR UPDATE` on PostgreSQL; SQLite's write transaction is exclusive already).
macro_rules! impl_history_store {
    ($store:ty, $row:ty, $lock:expr) => {
        use futures::TryStreamExt as _;
        use nextsync_core::ids::{Seq, UserId};
        use nextsync_core::push::RecordKey;
        use nextsync_core::sync::StoredRecord;
        use nextsync_core::time::Timestamp;
        use sqlx::Row as _;
        use $crate::StoreError;
        use $crate::history::*;

        fn trash_row(row: &$row) -> Result<TrashEntry, StoreError> {
            let undo = decode_undo(
                nextsync_core::history::ChangeKind::Deleted.code(),
                row.try_get::<&str, _>("undo")?,
            )?;
            Ok(TrashEntry {
                key: RecordKey {
                    collection: row.try_get("collection")?,
                    id: row.try_get("record_id")?,
                },
                values: undo.values,
                deleted_at: Timestamp::from_millis(row.try_get("at")?),
                seq: Seq(row.try_get::<i64, _>("seq")? as u64),
                batch: Seq(row.try_get::<i64, _>("batch")? as u64),
            })
        }

        #[async_trait::async_trait]
        impl HistoryStore for $store {
            async fn trash(
                &self,
                user: UserId,
                scope: Scope<'_>,
                since: Timestamp,
                before: Option<Seq>,
                limit: u32,
            ) -> Result<Vec<TrashEntry>, StoreError> {
                let before = before.map_or(i64::MAX, |s| i64::try_from(s.0).unwrap_or(i64::MAX));
                let rows = sqlx::query(sqlx::AssertSqlSafe(select_trash()))
                    .bind(user.as_uuid())
                    .bind(scope.collection)
                    .bind(scope.id)
                    .bind(since.as_millis())
                    .bind(before)
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(trash_row).collect()
            }

            async fn trash_batch(
                &self,
                user: UserId,
                batch: Seq,
                since: Timestamp,
            ) -> Result<Vec<TrashEntry>, StoreError> {
                let rows = sqlx::query(sqlx::AssertSqlSafe(select_trash_batch()))
                    .bind(user.as_uuid())
                    .bind(batch.0 as i64)
                    .bind(since.as_millis())
                    .fetch_all(self.reader())
                    .await?;
                rows.iter().map(trash_row).collect()
            }

            async fn purge_trash(&self, user: UserId, scope: Scope<'_>) -> Result<u64, StoreError> {
                let mut tx = self.begin_write().await?;
                // The user's applies wait: a record revived meanwhile keeps its history.
                let lock = sqlx::AssertSqlSafe(format!(
                    "SELECT seq FROM feed_heads WHERE user_id = $1{}",
                    $lock
                ));
                sqlx::query(lock)
                    .bind(user.as_uuid())
                    .execute(&mut *tx.0)
                    .await?;
                let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count_trash()))
                    .bind(user.as_uuid())
                    .bind(scope.collection)
                    .bind(scope.id)
                    .fetch_one(&mut *tx.0)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(purge_trash()))
                    .bind(user.as_uuid())
                    .bind(scope.collection)
                    .bind(scope.id)
                    .execute(&mut *tx.0)
                    .await?;
                tx.0.commit().await?;
                Ok(count as u64)
            }

            async fn rewind(
                &self,
                user: UserId,
                after: Timestamp,
                scope: Scope<'_>,
            ) -> Result<Vec<Rewound>, StoreError> {
                let mut rows = sqlx::query(SELECT_REWIND)
                    .bind(user.as_uuid())
                    .bind(after.as_millis())
                    .bind(scope.collection)
                    .bind(scope.id)
                    .fetch(self.reader());
                let mut out: Vec<Rewound> = Vec::new();
                // The record being rewound: its key, as it is now, and its state so far.
                let mut open: Option<(RecordKey, StoredRecord, nextsync_core::history::Visible)> = None;
                while let Some(row) = rows.try_next().await? {
                    let undo = decode_undo(row.try_get("kind")?, row.try_get::<&str, _>("undo")?)?;
                    if row.try_get::<i64, _>("nth")? == 1 {
                        // The first (newest) entry of the next record.
                        let fields: Option<String> = row.try_get("fields")?;
                        let fields = fields.ok_or_else(|| {
                            StoreError::Corrupt("a history entry without its record".into())
                        })?;
                        if let Some((key, current, then)) = open.take() {
                            out.push(Rewound { key, current, then });
                        }
                        let key = RecordKey {
                            collection: row.try_get("collection")?,
                            id: row.try_get("record_id")?,
                        };
                        let current = StoredRecord::decode(
                            &fields,
                            row.try_get::<Option<String>, _>("tombstone")?.as_deref(),
                            row.try_get::<Option<i64>, _>("tombstone_seq")?
                                .map(|s| Seq(s as u64)),
                            Seq(row.try_get::<i64, _>("seq")? as u64),
                        )
                        .map_err(StoreError::Corrupt)?;
                        let state = current.visible_state();
                        open = Some((key, current, state));
                    }
                    match &mut open {
                        Some((_, _, then)) => *then = undo.undo(then.take()),
                        None => {
                            return Err(StoreError::Corrupt(
                                "a history entry without its record".into(),
                            ));
                        }
                    }
                }
                if let Some((key, current, then)) = open.take() {
                    out.push(Rewound { key, current, then });
                }
                Ok(out)
            }

            async fn prune_history(
                &self,
                history_before: Timestamp,
                trash_before: Timestamp,
                limit: u32,
            ) -> Result<u64, StoreError> {
                let done = sqlx::query(sqlx::AssertSqlSafe(prune_history()))
                    .bind(history_before.as_millis())
                    .bind(trash_before.as_millis())
                    .bind(i64::from(limit))
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected())
            }
        }
    };
}

pub(crate) use impl_history_store;
