//! [`PgStore`]: PostgreSQL, for larger installations and for several server instances sharing
//! one database.

use crate::sync::{Conflict, PlanWrites, SyncTx};
use crate::{Store, StoreError};
use async_trait::async_trait;
use nextsync_core::ids::{ConflictId, Seq, UserId};
use nextsync_core::push::RecordKey;
use nextsync_core::sync::StoredRecord;
use nextsync_core::time::Timestamp;
use sqlx::Row as _;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, SqlSafeStr};
use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

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
            include_str!("../migrations/postgres/0001_accounts.sql"),
        ),
        migration(2, "sync", include_str!("../migrations/postgres/0002_sync.sql")),
        migration(
            3,
            "nextchat",
            include_str!("../migrations/postgres/0003_nextchat.sql"),
        ),
        migration(
            4,
            "binary_keys",
            include_str!("../migrations/postgres/0004_binary_keys.sql"),
        ),
        migration(
            5,
            "sealed_staging",
            include_str!("../migrations/postgres/0005_sealed_staging.sql"),
        ),
        migration(
            6,
            "app_password_device",
            include_str!("../migrations/postgres/0006_app_password_device.sql"),
        ),
        migration(
            7,
            "device_kind",
            include_str!("../migrations/postgres/0007_device_kind.sql"),
        ),
        migration(
            8,
            "snapshot_device",
            include_str!("../migrations/postgres/0008_snapshot_device.sql"),
        ),
        migration(
            9,
            "history",
            include_str!("../migrations/postgres/0009_history.sql"),
        ),
        migration(
            10,
            "digests",
            include_str!("../migrations/postgres/0010_digests.sql"),
        ),
    ])
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects with a `postgres://` URL and runs pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Unavailable(e.into()))?;
        Self::connect_with(options, 16).await
    }

    /// Connects with explicit options (tests use this to pin a fresh `search_path`).
    pub async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        migrator().run(&pool).await?;
        Ok(Self { pool })
    }

    pub(crate) fn writer(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn reader(&self) -> &PgPool {
        &self.pool
    }

    async fn begin_write(&self) -> Result<PgTx, StoreError> {
        Ok(PgTx(self.pool.begin().await?))
    }

    /// One apply, one transaction: PostgreSQL overlaps the commits of concurrent
    /// transactions itself.
    async fn commit_apply(
        &self,
        user: UserId,
        mutations: Vec<nextsync_core::push::Mutation>,
        now: Timestamp,
        resolves: Option<ConflictId>,
    ) -> Result<crate::sync::Applied, crate::sync::ApplyError> {
        let mut tx = self.begin_write().await?;
        let applied = crate::sync::run_apply(&mut tx, user, mutations, now, resolves).await?;
        tx.0.commit().await?;
        Ok(applied)
    }
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}

mod accounts {
    crate::accounts::impl_account_store!(super::PgStore, sqlx::postgres::PgRow);
}

/// Children of a recent-first page: the field's stored value among a JSON array of ids.
const SELECT_CHILDREN: &str = "SELECT collection, record_id, fields, tombstone, tombstone_seq, seq \
     FROM records WHERE user_id = $1 AND collection = $2 \
     AND (fields::jsonb -> $3 ->> 'v') IN (SELECT jsonb_array_elements_text($4::jsonb)) ORDER BY seq";

/// The field's key in the stored JSON.
fn link_argument(field: &str) -> String {
    field.to_owned()
}

mod shared_sync {
    crate::sync::impl_shared_sync!(
        sqlx::Transaction<'static, sqlx::Postgres>,
        super::PgStore,
        sqlx::postgres::PgRow
    );
}

mod health {
    crate::health::impl_health_store!(
        super::PgStore,
        sqlx::postgres::PgRow,
        " FOR UPDATE",
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    );
}

mod history {
    crate::history::impl_history_store!(super::PgStore, sqlx::postgres::PgRow, " FOR UPDATE");
}

mod nextchat {
    crate::nextchat::impl_nextchat_store!(super::PgStore, sqlx::postgres::PgRow);
}

const INSERT_VERSIONS: &str = "INSERT INTO nextchat_versions (user_id, collection, record_id, hash) \
     SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[]) ON CONFLICT DO NOTHING";

#[async_trait]
impl crate::nextchat::VersionsTx for PgTx {
    async fn insert_versions(
        &mut self,
        user: UserId,
        versions: &[(RecordKey, String)],
    ) -> Result<(), StoreError> {
        if versions.is_empty() {
            return Ok(());
        }
        let collections: Vec<&str> = versions.iter().map(|(k, _)| k.collection.as_str()).collect();
        let ids: Vec<&str> = versions.iter().map(|(k, _)| k.id.as_str()).collect();
        let hashes: Vec<&str> = versions.iter().map(|(_, h)| h.as_str()).collect();
        sqlx::query(INSERT_VERSIONS)
            .bind(user.as_uuid())
            .bind(collections)
            .bind(ids)
            .bind(hashes)
            .execute(&mut *self.0)
            .await?;
        Ok(())
    }
}

/// A write transaction; batches cross into PostgreSQL as arrays expanded with `UNNEST`.
pub(crate) struct PgTx(sqlx::Transaction<'static, sqlx::Postgres>);

// Both lookups probe the primary key once per requested key: `LATERAL (… LIMIT 1)` keeps the
// planner from turning a 1,000-key batch into a hash join over the user's whole partition
// (measured: that, or `= ANY($2)`, costs tens of milliseconds and grows with the feed).
const SEEN_MUTATIONS: &str = "SELECT a.mutation_id, a.seq FROM UNNEST($2::text[]) AS k (mutation_id) \
     CROSS JOIN LATERAL (SELECT mutation_id, seq FROM applied_mutations \
     WHERE user_id = $1 AND mutation_id = k.mutation_id LIMIT 1) AS a";
const LOAD_RECORDS: &str = "SELECT r.collection, r.record_id, r.fields, r.tombstone, r.tombstone_seq, r.seq \
     FROM UNNEST($2::text[], $3::text[]) AS k (collection, record_id) \
     CROSS JOIN LATERAL (SELECT collection, record_id, fields, tombstone, tombstone_seq, seq FROM records \
     WHERE user_id = $1 AND collection = k.collection AND record_id = k.record_id LIMIT 1) AS r";
/// An apply's writes in one statement (one round trip): the changed records, the applied
/// mutation ids, their history entries (whose batch is the new head), the collections'
/// digests (for users who have them), and the head when it moved (`$11` NULL when it did not; then there are no history entries either). Data-modifying
/// CTEs all run, on tables no other part of the statement reads.
const WRITE_PLAN: &str = "WITH stored AS (\
     INSERT INTO records (user_id, collection, record_id, fields, tombstone, tombstone_seq, seq) \
     SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[], $5::text[], $6::int8[], $7::int8[]) \
     ON CONFLICT (user_id, collection, record_id) DO UPDATE SET fields = excluded.fields, \
     tombstone = excluded.tombstone, tombstone_seq = excluded.tombstone_seq, seq = excluded.seq\
     ), remembered AS (\
     INSERT INTO applied_mutations (user_id, mutation_id, seq, created_at) \
     SELECT $1, *, $10 FROM UNNEST($8::text[], $9::int8[])\
     ), history AS (\
     INSERT INTO record_history (user_id, collection, record_id, seq, batch, at, kind, undo) \
     SELECT $1, c, r, s, $11, $10, k, u FROM UNNEST($12::text[], $13::text[], $14::int8[], $15::int2[], $16::text[]) \
     AS h (c, r, s, k, u) \
     ON CONFLICT (user_id, collection, record_id, seq) DO UPDATE SET \
     batch = excluded.batch, at = excluded.at, kind = excluded.kind, undo = excluded.undo\
     ), digests AS (\
     INSERT INTO collection_digests (user_id, collection, lo, hi, records) \
     SELECT $1, c, l, h, n FROM UNNEST($17::text[], $18::int8[], $19::int8[], $20::int8[]) AS d (c, l, h, n) \
     WHERE EXISTS (SELECT 1 FROM collection_digests WHERE user_id = $1 AND collection = '') \
     ON CONFLICT (user_id, collection) DO UPDATE SET lo = collection_digests.lo # excluded.lo, \
     hi = collection_digests.hi # excluded.hi, records = collection_digests.records + excluded.records\
     ) UPDATE feed_heads SET seq = $11 WHERE user_id = $1 AND $11::int8 IS NOT NULL";

#[async_trait]
impl SyncTx for PgTx {
    async fn lock_head(&mut self, user: UserId) -> Result<(Seq, String), StoreError> {
        // The row lock serializes this user's writers until commit: seqs commit in order.
        shared_sync::head(&mut self.0, user, " FOR UPDATE").await
    }

    async fn seen_mutations(
        &mut self,
        user: UserId,
        ids: &[&str],
    ) -> Result<HashMap<String, Seq>, StoreError> {
        let rows = sqlx::query(SEEN_MUTATIONS)
            .bind(user.as_uuid())
            .bind(ids)
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
        let collections: Vec<&str> = keys.iter().map(|k| k.collection.as_str()).collect();
        let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        let rows = sqlx::query(LOAD_RECORDS)
            .bind(user.as_uuid())
            .bind(collections)
            .bind(ids)
            .fetch_all(&mut *self.0)
            .await?;
        rows.iter().map(shared_sync::record_row).collect()
    }

    async fn write(&mut self, user: UserId, writes: PlanWrites<'_>) -> Result<(), StoreError> {
        let records = writes.records;
        let mut collections = Vec::with_capacity(records.len());
        let mut ids = Vec::with_capacity(records.len());
        let mut fields = Vec::with_capacity(records.len());
        let mut tombstones = Vec::with_capacity(records.len());
        let mut tombstone_seqs = Vec::with_capacity(records.len());
        let mut seqs = Vec::with_capacity(records.len());
        for (key, r) in records {
            collections.push(key.collection.as_str());
            ids.push(key.id.as_str());
            fields.push(r.encode_fields());
            tombstones.push(r.record.tombstone.as_ref().map(ToString::to_string));
            tombstone_seqs.push(r.tombstone_seq.map(|s| s.0 as i64));
            seqs.push(r.seq.0 as i64);
        }
        // History needs the batch (the new head); without one nothing visible changed.
        let history = if writes.head.is_some() {
            writes.history
        } else {
            &[]
        };
        let mutation_ids: Vec<&str> = writes.applied.iter().map(|(id, _)| id.as_str()).collect();
        let mutation_seqs: Vec<i64> = writes.applied.iter().map(|(_, seq)| seq.0 as i64).collect();
        sqlx::query(WRITE_PLAN)
            .bind(user.as_uuid())
            .bind(collections)
            .bind(ids)
            .bind(fields)
            .bind(tombstones)
            .bind(tombstone_seqs)
            .bind(seqs)
            .bind(mutation_ids)
            .bind(mutation_seqs)
            .bind(writes.now.as_millis())
            .bind(writes.head.map(|seq| seq.0 as i64))
            .bind(
                history
                    .iter()
                    .map(|h| h.key.collection.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(history.iter().map(|h| h.key.id.as_str()).collect::<Vec<_>>())
            .bind(history.iter().map(|h| h.seq.0 as i64).collect::<Vec<_>>())
            .bind(history.iter().map(|h| h.kind.code()).collect::<Vec<_>>())
            .bind(history.iter().map(|h| h.undo.as_str()).collect::<Vec<_>>())
            .bind(writes.digests.iter().map(|d| d.collection).collect::<Vec<_>>())
            .bind(writes.digests.iter().map(|d| d.lo).collect::<Vec<_>>())
            .bind(writes.digests.iter().map(|d| d.hi).collect::<Vec<_>>())
            .bind(writes.digests.iter().map(|d| d.records).collect::<Vec<_>>())
            .execute(&mut *self.0)
            .await?;
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
