//! [`HealthStore`]: sync health. Per-collection digests a client compares its replica with,
//! the bucket split that narrows a difference down, and the store's own invariant check
//! (`nextsync admin verify`).
//!
//! Digests are kept by the one write path (`run_apply` works out each apply's change to its
//! collections' digests) for users whose digests exist; the first read for a user computes
//! them from the records under that user's write lock and leaves the `''` marker row, after
//! which every apply keeps them current. Reading them is then one statement.

use crate::StoreError;
use async_trait::async_trait;
use nextsync_core::digest::Digest;
use nextsync_core::ids::{Seq, UserId};
use nextsync_core::push::RecordKey;
use nextsync_core::sync::StoredRecord;

/// A user's digests and the feed position they hold at.
#[derive(Debug, Clone, PartialEq)]
pub struct Digests {
    pub epoch: String,
    pub head: Seq,
    /// Collections with live records, by name.
    pub collections: Vec<(String, Digest, u64)>,
}

/// What the invariant check found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckReport {
    pub users: u64,
    pub records: u64,
    /// Users whose digests were compared with a recomputation.
    pub digests_checked: u64,
    /// One line per broken invariant, with counts; empty when all hold.
    pub problems: Vec<String>,
}

#[async_trait]
pub trait HealthStore {
    /// The user's digests (computed now if they never were).
    async fn digests(&self, user: UserId) -> Result<Digests, StoreError>;

    /// The digests of `collection`'s records split into `buckets` by id (see
    /// [`nextsync_core::digest::bucket_of`]), read in one snapshot with the feed position.
    async fn bucket_digests(
        &self,
        user: UserId,
        collection: &str,
        buckets: u32,
    ) -> Result<(String, Seq, Vec<Digest>), StoreError>;

    /// Every record (deleted ones too) of `collection` in the `wanted` buckets of `buckets`,
    /// in one snapshot with the feed position.
    async fn bucket_records(
        &self,
        user: UserId,
        collection: &str,
        buckets: u32,
        wanted: &[u32],
    ) -> Result<(String, Seq, Vec<(RecordKey, StoredRecord)>), StoreError>;

    /// Checks the store's invariants across every user, in one snapshot.
    async fn check(&self) -> Result<CheckReport, StoreError>;
}

/// The marker row's collection: no valid collection name is empty.
pub(crate) const MARKER: &str = "";

pub(crate) const SELECT_DIGESTS: &str = "SELECT h.epoch, h.seq, d.collection, d.lo, d.hi, d.records \
     FROM feed_heads h LEFT JOIN collection_digests d ON d.user_id = h.user_id WHERE h.user_id = $1";
pub(crate) const SELECT_USER_RECORDS: &str = "SELECT collection, record_id, fields, tombstone, tombstone_seq, seq \
     FROM records WHERE user_id = $1";
pub(crate) const SELECT_COLLECTION_RECORDS: &str = "SELECT collection, record_id, fields, tombstone, tombstone_seq, seq \
     FROM records WHERE user_id = $1 AND collection = $2";
pub(crate) const INSERT_DIGEST: &str = "INSERT INTO collection_digests (user_id, collection, lo, hi, records) \
     VALUES ($1, $2, $3, $4, $5)";

/// `(problem, query counting it)`: each must count 0.
pub(crate) const COUNTED_PROBLEMS: [(&str, &str); 6] = [
    (
        "records above their user's feed head (a reader at the head would never see them)",
        "SELECT count(*) FROM records r JOIN feed_heads h ON h.user_id = r.user_id WHERE r.seq > h.seq",
    ),
    (
        "seqs held by two records of one user (a page boundary could skip one)",
        "SELECT count(*) FROM (SELECT user_id, seq FROM records GROUP BY user_id, seq HAVING count(*) > 1) d",
    ),
    (
        "remembered mutation ids above the feed head",
        "SELECT count(*) FROM applied_mutations m JOIN feed_heads h ON h.user_id = m.user_id WHERE m.seq > h.seq",
    ),
    (
        "history entries above the feed head",
        "SELECT count(*) FROM record_history r JOIN feed_heads h ON h.user_id = r.user_id WHERE r.seq > h.seq",
    ),
    (
        "history entries of records that do not exist",
        "SELECT count(*) FROM record_history h WHERE NOT EXISTS (SELECT 1 FROM records r \
         WHERE r.user_id = h.user_id AND r.collection = h.collection AND r.record_id = h.record_id)",
    ),
    (
        "unresolved conflicts about records that do not exist",
        "SELECT count(*) FROM conflicts c WHERE c.resolved_at IS NULL AND NOT EXISTS (SELECT 1 FROM records r \
         WHERE r.user_id = c.user_id AND r.collection = c.collection AND r.record_id = c.record_id)",
    ),
];

/// Implements [`HealthStore`] for a store with `writer()`/`reader()` pools and a
/// `begin_write()` transaction; `$lock` follows the head read that holds the user's writers
/// off, `$snapshot` begins a read transaction that sees one snapshot throughout.
macro_rules! impl_health_store {
    ($store:ty, $row:ty, $lock:expr, $snapshot:expr) => {
        use futures::TryStreamExt as _;
        use nextsync_core::digest::{Digest, bucket_of, stored_hash};
        use nextsync_core::ids::{Seq, UserId};
        use nextsync_core::push::RecordKey;
        use nextsync_core::sync::StoredRecord;
        use sqlx::Row as _;
        use std::collections::{BTreeMap, HashMap};
        use $crate::StoreError;
        use $crate::health::*;

        fn record_of(row: &$row) -> Result<(RecordKey, StoredRecord), StoreError> {
            let key = RecordKey {
                collection: row.try_get("collection")?,
                id: row.try_get("record_id")?,
            };
            let record = StoredRecord::decode(
                row.try_get("fields")?,
                row.try_get::<Option<&str>, _>("tombstone")?,
                row.try_get::<Option<i64>, _>("tombstone_seq")?.map(|s| Seq(s as u64)),
                Seq(row.try_get::<i64, _>("seq")? as u64),
            )
            .map_err(|e| StoreError::Corrupt(format!("{}/{}: {e}", key.collection, key.id)))?;
            Ok((key, record))
        }

        /// Per collection: digest and live count of `rows`.
        fn fold(into: &mut BTreeMap<String, (Digest, u64)>, key: &RecordKey, record: &StoredRecord) {
            let hash = stored_hash(&key.collection, &key.id, record);
            if hash != 0 {
                let entry = into.entry(key.collection.clone()).or_default();
                entry.0.toggle(hash);
                entry.1 += 1;
            }
        }

        async fn head_in<'c, E>(executor: E, user: UserId) -> Result<(String, Seq), StoreError>
        where
            E: sqlx::Executor<'c, Database = <$row as sqlx::Row>::Database>,
        {
            let row = sqlx::query("SELECT epoch, seq FROM feed_heads WHERE user_id = $1")
                .bind(user.as_uuid())
                .fetch_optional(executor)
                .await?
                .ok_or_else(|| StoreError::Corrupt(format!("user {user} has no feed head")))?;
            Ok((row.try_get("epoch")?, Seq(row.try_get::<i64, _>("seq")? as u64)))
        }

        impl $store {
            /// Computes a user's digests from the records and leaves the marker, unless
            /// another reader did meanwhile.
            async fn compute_digests(&self, user: UserId) -> Result<(), StoreError> {
                let mut tx = self.begin_write().await?;
                let lock = sqlx::AssertSqlSafe(format!(
                    "SELECT seq FROM feed_heads WHERE user_id = $1{}",
                    $lock
                ));
                sqlx::query(lock).bind(user.as_uuid()).execute(&mut *tx.0).await?;
                let marked: Option<i64> = sqlx::query_scalar(
                    "SELECT records FROM collection_digests WHERE user_id = $1 AND collection = ''",
                )
                .bind(user.as_uuid())
                .fetch_optional(&mut *tx.0)
                .await?;
                if marked.is_some() {
                    return Ok(());
                }
                let mut digests = BTreeMap::new();
                {
                    let mut rows = sqlx::query(SELECT_USER_RECORDS)
                        .bind(user.as_uuid())
                        .fetch(&mut *tx.0);
                    while let Some(row) = rows.try_next().await? {
                        let (key, record) = record_of(&row)?;
                        fold(&mut digests, &key, &record);
                    }
                }
                digests.insert(MARKER.to_owned(), (Digest::EMPTY, 0));
                for (collection, (digest, records)) in digests {
                    let (lo, hi) = digest.to_halves();
                    sqlx::query(INSERT_DIGEST)
                        .bind(user.as_uuid())
                        .bind(collection)
                        .bind(lo)
                        .bind(hi)
                        .bind(records as i64)
                        .execute(&mut *tx.0)
                        .await?;
                }
                tx.0.commit().await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl HealthStore for $store {
            async fn digests(&self, user: UserId) -> Result<Digests, StoreError> {
                for _ in 0..2 {
                    let rows = sqlx::query(SELECT_DIGESTS)
                        .bind(user.as_uuid())
                        .fetch_all(self.reader())
                        .await?;
                    let first = rows
                        .first()
                        .ok_or_else(|| StoreError::Corrupt(format!("user {user} has no feed head")))?;
                    let mut marked = false;
                    let mut collections = Vec::new();
                    for row in &rows {
                        let Some(collection) = row.try_get::<Option<String>, _>("collection")? else {
                            continue;
                        };
                        if collection == MARKER {
                            marked = true;
                            continue;
                        }
                        let records = row.try_get::<i64, _>("records")? as u64;
                        if records > 0 {
                            let digest = Digest::from_halves(row.try_get("lo")?, row.try_get("hi")?);
                            collections.push((collection, digest, records));
                        }
                    }
                    if marked {
                        collections.sort_by(|a, b| a.0.cmp(&b.0));
                        return Ok(Digests {
                            epoch: first.try_get("epoch")?,
                            head: Seq(first.try_get::<i64, _>("seq")? as u64),
                            collections,
                        });
                    }
                    self.compute_digests(user).await?;
                }
                Err(StoreError::Corrupt(format!("user {user}'s digests did not appear")))
            }

            async fn bucket_digests(
                &self,
                user: UserId,
                collection: &str,
                buckets: u32,
            ) -> Result<(String, Seq, Vec<Digest>), StoreError> {
                let mut tx = self.reader().begin_with($snapshot).await?;
                let (epoch, head) = head_in(&mut *tx, user).await?;
                let mut out = vec![Digest::EMPTY; buckets.max(1) as usize];
                {
                    let mut rows = sqlx::query(SELECT_COLLECTION_RECORDS)
                        .bind(user.as_uuid())
                        .bind(collection)
                        .fetch(&mut *tx);
                    while let Some(row) = rows.try_next().await? {
                        let (key, record) = record_of(&row)?;
                        let hash = stored_hash(&key.collection, &key.id, &record);
                        out[bucket_of(&key.collection, &key.id, buckets) as usize].toggle(hash);
                    }
                }
                tx.commit().await?;
                Ok((epoch, head, out))
            }

            async fn bucket_records(
                &self,
                user: UserId,
                collection: &str,
                buckets: u32,
                wanted: &[u32],
            ) -> Result<(String, Seq, Vec<(RecordKey, StoredRecord)>), StoreError> {
                let mut tx = self.reader().begin_with($snapshot).await?;
                let (epoch, head) = head_in(&mut *tx, user).await?;
                let mut out = Vec::new();
                {
                    let mut rows = sqlx::query(SELECT_COLLECTION_RECORDS)
                        .bind(user.as_uuid())
                        .bind(collection)
                        .fetch(&mut *tx);
                    while let Some(row) = rows.try_next().await? {
                        let id: &str = row.try_get("record_id")?;
                        if wanted.contains(&bucket_of(collection, id, buckets)) {
                            out.push(record_of(&row)?);
                        }
                    }
                }
                tx.commit().await?;
                Ok((epoch, head, out))
            }

            async fn check(&self) -> Result<CheckReport, StoreError> {
                let mut tx = self.reader().begin_with($snapshot).await?;
                let mut report = CheckReport::default();
                report.users = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM users")
                    .fetch_one(&mut *tx)
                    .await? as u64;
                for (problem, query) in COUNTED_PROBLEMS {
                    let n: i64 = sqlx::query_scalar(query).fetch_one(&mut *tx).await?;
                    if n > 0 {
                        report.problems.push(format!("{n} {problem}"));
                    }
                }
                // Stored digests of users that have them, against a recomputation.
                let mut stored: HashMap<uuid::Uuid, BTreeMap<String, (Digest, u64)>> = HashMap::new();
                {
                    let mut rows =
                        sqlx::query("SELECT user_id, collection, lo, hi, records FROM collection_digests")
                            .fetch(&mut *tx);
                    while let Some(row) = rows.try_next().await? {
                        let digest = Digest::from_halves(row.try_get("lo")?, row.try_get("hi")?);
                        let records = row.try_get::<i64, _>("records")? as u64;
                        stored
                            .entry(row.try_get("user_id")?)
                            .or_default()
                            .insert(row.try_get("collection")?, (digest, records));
                    }
                }
                let mut computed: HashMap<uuid::Uuid, BTreeMap<String, (Digest, u64)>> = HashMap::new();
                let mut undecodable = 0u64;
                {
                    let mut rows = sqlx::query(
                        "SELECT user_id, collection, record_id, fields, tombstone, tombstone_seq, seq FROM records",
                    )
                    .fetch(&mut *tx);
                    while let Some(row) = rows.try_next().await? {
                        report.records += 1;
                        let user: uuid::Uuid = row.try_get("user_id")?;
                        match record_of(&row) {
                            Ok((key, record)) => {
                                if stored.contains_key(&user) {
                                    fold(computed.entry(user).or_default(), &key, &record);
                                }
                            }
                            Err(_) => undecodable += 1,
                        }
                    }
                }
                tx.commit().await?;
                if undecodable > 0 {
                    report
                        .problems
                        .push(format!("{undecodable} records whose stored fields do not decode"));
                }
                let mut wrong = 0u64;
                for (user, mut kept) in stored {
                    kept.remove(MARKER);
                    kept.retain(|_, (digest, records)| *records > 0 || *digest != Digest::EMPTY);
                    let fresh = computed.remove(&user).unwrap_or_default();
                    report.digests_checked += 1;
                    if kept != fresh {
                        wrong += 1;
                    }
                }
                if wrong > 0 {
                    report
                        .problems
                        .push(format!("{wrong} users whose digests differ from their records"));
                }
                Ok(report)
            }
        }
    };
}

pub(crate) use impl_health_store;
