//! [`SqliteStore`]: the embedded default, one file in the data dir.
//!
//! SQLite allows one writer at a time, so writes take turns on a pool of exactly one
//! connection (no `SQLITE_BUSY` races between our own writers; the apply writer thread
//! borrows that connection as its turn) while reads use a separate pool that WAL lets run
//! beside the writer. `synchronous = FULL`: a write is on disk before it is
//! acknowledged, so neither a crash nor a power cut loses an acknowledged write.
//!
//! Applies are group-committed by the writer thread ([`writer`]): it takes every apply
//! waiting at that moment (up to 64), runs each in a savepoint of one transaction, commits
//! once and only then answers them. A refused apply rolls back to its savepoint alone. Under
//! load many pushes share one fsync; alone, an apply commits at once.

mod writer;

use crate::sync::{
    Applied, ApplyError, Conflict, INSERT_HISTORY_COLUMNS, ON_HISTORY_CONFLICT, PlanWrites, SET_HEAD, SyncTx,
};
use crate::{Store, StoreError};
use async_trait::async_trait;
use nextsync_core::ids::{ConflictId, Seq, UserId};
use nextsync_core::push::{Mutation, RecordKey};
use nextsync_core::sync::StoredRecord;
use nextsync_core::time::Timestamp;
use serde_json::{Value, json};
use sqlx::Row as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqlSafeStr, SqlitePool};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use writer::ApplyJob;

/// Migrations, embedded in the binary. Never edit one that has landed: add the next.
fn migrator() -> Migrator {
    let migration = |version, name: &'static str, sql: &'static str| {
        Migration::new(
            version,
            name.into(),
            MigrationType::Simple,
            sql.into_sql_str(),
            false,
        )
    };
    Migrator::with_migrations(vec![
        migration(
            1,
            "accounts",
            include_str!("../migrations/sqlite/0001_accounts.sql"),
        ),
        migration(2, "sync", include_str!("../migrations/sqlite/0002_sync.sql")),
        migration(
            3,
            "nextchat",
            include_str!("../migrations/sqlite/0003_nextchat.sql"),
        ),
        migration(
            5,
            "sealed_staging",
            include_str!("../migrations/sqlite/0005_sealed_staging.sql"),
        ),
        migration(
            6,
            "app_password_device",
            include_str!("../migrations/sqlite/0006_app_password_device.sql"),
        ),
        migration(
            7,
            "device_kind",
            include_str!("../migrations/sqlite/0007_device_kind.sql"),
        ),
        migration(
            8,
            "snapshot_device",
            include_str!("../migrations/sqlite/0008_snapshot_device.sql"),
        ),
        migration(
            9,
            "history",
            include_str!("../migrations/sqlite/0009_history.sql"),
        ),
        migration(
            10,
            "digests",
            include_str!("../migrations/sqlite/0010_digests.sql"),
        ),
    ])
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The writer thread's queue; it stops when the last handle is dropped.
    applies: mpsc::Sender<ApplyJob>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // Records are ~1 KiB rows: 16 KiB pages (for new databases) split far less than
            // 4 KiB ones (measured: 30k -> 50k records/s for 1,000-record pushes). A push touches
            // a few MiB of pages, more than SQLite's 2 MiB default cache; statement journals
            // (UPSERT) stay in RAM.
            .page_size(16384)
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory");
        // The one connection is never tested on acquire: a local file cannot drop it, and the
        // writer thread borrows it for every group commit.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        migrator().run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let (applies, queue) = mpsc::channel(1024);
        writer::spawn(path, writer.clone(), queue)?;
        Ok(Self {
            writer,
            reader,
            applies,
        })
    }

    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// A write transaction that holds SQLite's write lock from its first statement, so it can
    /// never fail half-way to upgrade a read lock (another process, like `nextsync admin`,
    /// may be writing the same file).
    async fn begin_write(&self) -> Result<SqliteTx, StoreError> {
        Ok(SqliteTx(self.writer.begin_with("BEGIN IMMEDIATE").await?))
    }

    /// Hands the apply to the writer thread and waits for its commit.
    async fn commit_apply(
        &self,
        user: UserId,
        mutations: Vec<Mutation>,
        now: Timestamp,
        resolves: Option<ConflictId>,
    ) -> Result<Applied, ApplyError> {
        let (done, answer) = oneshot::channel();
        let job = ApplyJob {
            user,
            mutations,
            now,
            resolves,
            done,
        };
        let gone = || ApplyError::Store(StoreError::Database(sqlx::Error::PoolClosed));
        self.applies.send(job).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

mod accounts {
    crate::accounts::impl_account_store!(super::SqliteStore, sqlx::sqlite::SqliteRow);
}

/// Children of a recent-first page: `fields ->> '$."field".v'` among a JSON array of ids.
const SELECT_CHILDREN: &str = "SELECT collection, record_id, fields, tombstone, tombstone_seq, seq \
     FROM records WHERE user_id = $1 AND collection = $2 \
     AND (fields ->> $3) IN (SELECT value FROM json_each($4)) ORDER BY seq";

/// The JSON path of a field's stored value (`{"field":{"v":…}}`).
fn link_argument(field: &str) -> String {
    format!("$.{}.v", serde_json::Value::String(field.to_owned()))
}

mod shared_sync {
    crate::sync::impl_shared_sync!(
        sqlx::Transaction<'static, sqlx::Sqlite>,
        super::SqliteStore,
        sqlx::sqlite::SqliteRow
    );
}

mod health {
    crate::health::impl_health_store!(super::SqliteStore, sqlx::sqlite::SqliteRow, "", "BEGIN");
}

mod history {
    crate::history::impl_history_store!(super::SqliteStore, sqlx::sqlite::SqliteRow, "");
}

mod nextchat {
    crate::nextchat::impl_nextchat_store!(super::SqliteStore, sqlx::sqlite::SqliteRow);
}

#[async_trait]
impl crate::nextchat::VersionsTx for SqliteTx {
    async fn insert_versions(
        &mut self,
        user: UserId,
        versions: &[(RecordKey, String)],
    ) -> Result<(), StoreError> {
        for chunk in versions.chunks(INSERT_CHUNK) {
            let mut sql =
                String::from("INSERT INTO nextchat_versions (user_id, collection, record_id, hash) VALUES ");
            for row in 0..chunk.len() {
                if row > 0 {
                    sql.push(',');
                }
                sql.push_str("(?, ?, ?, ?)");
            }
            sql.push_str(" ON CONFLICT DO NOTHING");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (key, hash) in chunk {
                query = query
                    .bind(user.as_uuid())
                    .bind(&key.collection)
                    .bind(&key.id)
                    .bind(hash);
            }
            query.execute(&mut *self.0).await?;
        }
        Ok(())
    }
}

/// A write transaction; batches cross into SQLite as one JSON array walked with `json_each`.
pub(crate) struct SqliteTx(sqlx::Transaction<'static, sqlx::Sqlite>);

const SEEN_MUTATIONS: &str = "SELECT mutation_id, seq FROM applied_mutations \
     WHERE user_id = $1 AND mutation_id IN (SELECT value FROM json_each($2))";
const LOAD_RECORDS: &str = "SELECT r.collection, r.record_id, r.fields, r.tombstone, r.tombstone_seq, r.seq \
     FROM json_each($2) AS k CROSS JOIN records AS r ON r.user_id = $1 \
     AND r.collection = json_extract(k.value, '$[0]') AND r.record_id = json_extract(k.value, '$[1]')";
/// Rows per multi-row INSERT: 7 bound values a row stays far below SQLite's 32,766 limit.
const INSERT_CHUNK: usize = 500;

/// `INSERT … VALUES (?, ?, …), (?, ?, …) …` for `rows` records. Values are bound, not wrapped
/// in a JSON batch: the fields column is JSON text already, and escaping it into another JSON
/// document for `json_each` to unescape cost more than the insert. The placeholders are
/// anonymous on purpose: SQLite looks named ones (`$n`) up by a linear scan per bind, which
/// made a 500-row statement quadratic (measured: 38 % of the apply time).
fn store_records_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO records (user_id, collection, record_id, fields, tombstone, tombstone_seq, seq) VALUES ",
    );
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?)");
    }
    sql.push_str(
        " ON CONFLICT (user_id, collection, record_id) DO UPDATE SET fields = excluded.fields, \
         tombstone = excluded.tombstone, tombstone_seq = excluded.tombstone_seq, seq = excluded.seq",
    );
    sql
}

/// `INSERT INTO record_history … VALUES (?, …), …` for `rows` entries (anonymous
/// placeholders, as for records).
fn store_history_sql(rows: usize) -> String {
    let mut sql = String::from(INSERT_HISTORY_COLUMNS);
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, ?, ?, ?, ?, ?)");
    }
    sql.push_str(ON_HISTORY_CONFLICT);
    sql
}

/// `INSERT INTO applied_mutations … VALUES (?, ?, ?, ?), …` for `rows` ids (anonymous
/// placeholders, as for records).
fn remember_mutations_sql(rows: usize) -> String {
    let mut sql =
        String::from("INSERT INTO applied_mutations (user_id, mutation_id, seq, created_at) VALUES ");
    for row in 0..rows {
        if row > 0 {
            sql.push(',');
        }
        sql.push_str("(?, ?, ?, ?)");
    }
    sql
}

#[async_trait]
impl SyncTx for SqliteTx {
    async fn lock_head(&mut self, user: UserId) -> Result<(Seq, String), StoreError> {
        // BEGIN IMMEDIATE already holds the database's write lock.
        shared_sync::head(&mut self.0, user, "").await
    }

    async fn seen_mutations(
        &mut self,
        user: UserId,
        ids: &[&str],
    ) -> Result<HashMap<String, Seq>, StoreError> {
        let rows = sqlx::query(SEEN_MUTATIONS)
            .bind(user.as_uuid())
            .bind(Value::from(ids.to_vec()).to_string())
            .fetch_all(&mut *self.0)
            .await?;
        rows.iter()
            .map(|row| {
                Ok((
                    row.try_get("mutation_id")?,
                    Seq(row.try_get::<i64, _>("seq")? as u64),
                ))
            })
            .collect()
    }

    async fn load_records(
        &mut self,
        user: UserId,
        keys: &[&RecordKey],
    ) -> Result<HashMap<RecordKey, StoredRecord>, StoreError> {
        let keys: Vec<Value> = keys.iter().map(|k| json!([k.collection, k.id])).collect();
        let rows = sqlx::query(LOAD_RECORDS)
            .bind(user.as_uuid())
            .bind(Value::from(keys).to_string())
            .fetch_all(&mut *self.0)
            .await?;
        rows.iter().map(shared_sync::record_row).collect()
    }

    async fn write(&mut self, user: UserId, writes: PlanWrites<'_>) -> Result<(), StoreError> {
        for chunk in writes.records.chunks(INSERT_CHUNK) {
            let sql = store_records_sql(chunk.len());
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (key, r) in chunk {
                query = query
                    .bind(user.as_uuid())
                    .bind(&key.collection)
                    .bind(&key.id)
                    .bind(r.encode_fields())
                    .bind(r.record.tombstone.as_ref().map(ToString::to_string))
                    .bind(r.tombstone_seq.map(|s| s.0 as i64))
                    .bind(r.seq.0 as i64);
            }
            query.execute(&mut *self.0).await?;
        }
        if let Some(batch) = writes.head {
            for chunk in writes.history.chunks(INSERT_CHUNK) {
                let mut query = sqlx::query(sqlx::AssertSqlSafe(store_history_sql(chunk.len())));
                for h in chunk {
                    query = query
                        .bind(user.as_uuid())
                        .bind(&h.key.collection)
                        .bind(&h.key.id)
                        .bind(h.seq.0 as i64)
                        .bind(batch.0 as i64)
                        .bind(writes.now.as_millis())
                        .bind(h.kind.code())
                        .bind(&h.undo);
                }
                query.execute(&mut *self.0).await?;
            }
        }
        for d in writes.digests {
            sqlx::query(crate::sync::SQLITE_MOVE_DIGEST)
                .bind(user.as_uuid())
                .bind(d.collection)
                .bind(d.lo)
                .bind(d.hi)
                .bind(d.records)
                .execute(&mut *self.0)
                .await?;
        }
        for chunk in writes.applied.chunks(INSERT_CHUNK) {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(remember_mutations_sql(chunk.len())));
            for (id, seq) in chunk {
                query = query
                    .bind(user.as_uuid())
                    .bind(id)
                    .bind(seq.0 as i64)
                    .bind(writes.now.as_millis());
            }
            query.execute(&mut *self.0).await?;
        }
        if let Some(head) = writes.head {
            sqlx::query(SET_HEAD)
                .bind(user.as_uuid())
                .bind(head.0 as i64)
                .execute(&mut *self.0)
                .await?;
        }
        Ok(())
    }

    async fn insert_conflicts(&mut self, user: UserId, conflicts: &[Conflict]) -> Result<(), StoreError> {
        shared_sync::insert_conflicts(&mut self.0, user, conflicts).await
    }

    async fn mark_resolved(
        &mut self,
        user: UserId,
        id: ConflictId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        shared_sync::mark_resolved(&mut self.0, user, id, now).await
    }
}
