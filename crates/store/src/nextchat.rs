//! [`NextChatStore`]: what the NextChat doors keep besides records: per-account door
//! settings, remembered entity versions, sealed secrets, kept uploads (snapshots) and staged
//! Upstash chunks.
//!
//! [`NextChatStore::apply_upload`] is [`crate::SyncStore::apply`] plus the upload's
//! bookkeeping in the same transaction: an upload's records, the versions it made known, its
//! secrets and its snapshot commit together or not at all.

use crate::StoreError;
use crate::sync::{Applied, ApplyError};
use async_trait::async_trait;
use nextsync_core::ids::{AppPasswordId, SnapshotId, UserId};
use nextsync_core::push::{Mutation, RecordKey};
use nextsync_core::sync::RawRecord;
use nextsync_core::time::Timestamp;
use std::collections::{HashMap, HashSet};

/// How many uploads an account keeps.
pub const SNAPSHOTS_KEPT: i64 = 20;
/// Staged Upstash chunks older than this are dropped (an upload that never committed;
/// NextChat sends its chunks one after another and then the count, within seconds).
pub const STAGING_TTL_MS: i64 = 60 * 60 * 1000;

/// What one account may have staged at once, across its backup names; checked before a
/// chunk is kept, so staging can never hold more than one upload's worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagingLimits {
    /// Plaintext bytes.
    pub bytes: i64,
    pub chunks: i64,
}

/// What became of a chunk given to [`NextChatStore::stage_chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    Kept,
    /// Keeping it would pass a [`StagingLimits`]; nothing was written.
    OverLimit,
}

/// A commit's staged chunks, still sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StagedChunks {
    /// Chunks `0..count` in order, `None` where one is missing.
    Chunks(Vec<Option<Vec<u8>>>),
    /// They hold more plaintext bytes than the commit may load; nothing was read.
    TooLarge { bytes: i64 },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NextChatAccount {
    pub sync_settings: bool,
    pub sync_secrets: bool,
    /// The WebDAV folder exists (MKCOL was sent, or something was uploaded).
    pub folder_created: bool,
}

/// A credential as kept: `path` is the JSON array of keys, `sealed` nonce ‖ ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub path: String,
    pub sealed: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    pub created_at: Timestamp,
    /// `webdav`, `upstash`, `import`.
    pub source: String,
    /// Size of the JSON (uncompressed).
    pub bytes: i64,
    pub sessions: i64,
    pub messages: i64,
    /// The app password whose upload this is (`None`: an import or a restore).
    pub app_password: Option<AppPasswordId>,
    /// That app password's label when listed (`None` once it is deleted).
    pub device: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewSnapshot {
    pub info: SnapshotInfo,
    /// Identifies the content: an upload identical to the newest kept one is not kept twice.
    pub digest: String,
    /// zstd-compressed JSON.
    pub body: Vec<u8>,
}

/// What an upload writes besides its records, in the same transaction.
#[derive(Debug, Clone, Default)]
pub struct UploadExtras {
    /// Entity versions to remember: (record, hash).
    pub versions: Vec<(RecordKey, String)>,
    /// Secrets to set (only for accounts that sync secrets).
    pub secrets: Vec<SealedSecret>,
    pub snapshot: Option<NewSnapshot>,
    /// The Upstash backup name whose staged chunks this upload committed.
    pub committed_staging: Option<String>,
}

#[async_trait]
pub trait NextChatStore {
    /// The account's door settings; defaults when it never used a door.
    async fn nextchat_account(&self, user: UserId) -> Result<NextChatAccount, StoreError>;

    /// Changes the given settings. Turning `sync_secrets` off deletes the kept secrets.
    async fn set_nextchat_settings(
        &self,
        user: UserId,
        sync_settings: Option<bool>,
        sync_secrets: Option<bool>,
        now: Timestamp,
    ) -> Result<NextChatAccount, StoreError>;

    /// Creates the WebDAV folder; false when it existed already.
    async fn create_folder(&self, user: UserId, now: Timestamp) -> Result<bool, StoreError>;

    /// Every record (deleted ones too) of the given collections, undecoded.
    async fn records_in(
        &self,
        user: UserId,
        collections: &[&str],
    ) -> Result<Vec<(RecordKey, RawRecord)>, StoreError>;

    /// Every remembered version hash, by record.
    async fn versions(&self, user: UserId) -> Result<HashMap<RecordKey, HashSet<String>>, StoreError>;

    async fn secrets(&self, user: UserId) -> Result<Vec<SealedSecret>, StoreError>;

    /// [`crate::SyncStore::apply`] plus `extras`, in one transaction. Also marks the WebDAV
    /// folder created (an upload creates it implicitly).
    async fn apply_upload(
        &self,
        user: UserId,
        mutations: Vec<Mutation>,
        now: Timestamp,
        extras: UploadExtras,
    ) -> Result<Applied, ApplyError>;

    /// Kept uploads, newest first.
    async fn snapshots(&self, user: UserId) -> Result<Vec<SnapshotInfo>, StoreError>;

    /// A kept upload's compressed body.
    async fn snapshot_body(&self, user: UserId, id: SnapshotId) -> Result<Option<Vec<u8>>, StoreError>;

    /// Stages chunk `index` of the Upstash backup `name`, already sealed by the caller
    /// (`bytes` is its plaintext length), replacing an earlier one. Chunk 0 starts a new
    /// upload of `name`: the name's other staged chunks go. Refused, writing nothing, when
    /// the account's staging would pass `limits`.
    #[allow(clippy::too_many_arguments)]
    async fn stage_chunk(
        &self,
        user: UserId,
        name: &str,
        index: i64,
        sealed: &[u8],
        bytes: i64,
        now: Timestamp,
        limits: StagingLimits,
    ) -> Result<Staged, StoreError>;

    /// Staged chunks `0..count` of `name`, unless together they hold more than `max_bytes`
    /// plaintext bytes (checked before any chunk is read).
    async fn staged_chunks(
        &self,
        user: UserId,
        name: &str,
        count: i64,
        max_bytes: i64,
    ) -> Result<StagedChunks, StoreError>;

    /// Drops every account's chunks staged before `before` (uploads that never committed);
    /// returns how many went.
    async fn expire_staging(&self, before: Timestamp) -> Result<u64, StoreError>;
}

/// The one statement per backend that differs: many version rows at once.
#[async_trait]
pub(crate) trait VersionsTx: Send {
    async fn insert_versions(
        &mut self,
        user: UserId,
        versions: &[(RecordKey, String)],
    ) -> Result<(), StoreError>;
}

pub(crate) const SELECT_ACCOUNT: &str =
    "SELECT sync_settings, sync_secrets, folder_created_at FROM nextchat_accounts WHERE user_id = $1";
pub(crate) const UPSERT_SETTINGS: &str = "INSERT INTO nextchat_accounts (user_id, sync_settings, sync_secrets, updated_at) \
     VALUES ($1, COALESCE($2, FALSE), COALESCE($3, FALSE), $4) \
     ON CONFLICT (user_id) DO UPDATE SET sync_settings = COALESCE($2, nextchat_accounts.sync_settings), \
     sync_secrets = COALESCE($3, nextchat_accounts.sync_secrets), updated_at = $4";
pub(crate) const CREATE_FOLDER: &str = "INSERT INTO nextchat_accounts (user_id, folder_created_at, updated_at) \
     VALUES ($1, $2, $2) ON CONFLICT (user_id) DO UPDATE SET folder_created_at = $2, updated_at = $2 \
     WHERE nextchat_accounts.folder_created_at IS NULL";
pub(crate) const DELETE_SECRETS: &str = "DELETE FROM nextchat_secrets WHERE user_id = $1";
pub(crate) const SELECT_COLLECTION: &str = "SELECT collection, record_id, fields, tombstone, tombstone_seq, seq \
     FROM records WHERE user_id = $1 AND collection = $2";
pub(crate) const SELECT_VERSIONS: &str =
    "SELECT collection, record_id, hash FROM nextchat_versions WHERE user_id = $1";
pub(crate) const SELECT_SECRETS: &str =
    "SELECT path, sealed FROM nextchat_secrets WHERE user_id = $1 ORDER BY path";
pub(crate) const UPSERT_SECRET: &str = "INSERT INTO nextchat_secrets (user_id, path, sealed, updated_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, path) DO UPDATE SET sealed = $3, updated_at = $4";
pub(crate) const NEWEST_DIGEST: &str = "SELECT digest FROM nextchat_snapshots WHERE user_id = $1 \
     ORDER BY snapshot_id DESC LIMIT 1";
pub(crate) const INSERT_SNAPSHOT: &str = "INSERT INTO nextchat_snapshots \
     (user_id, snapshot_id, created_at, source, bytes, sessions, messages, digest, body, app_password_id) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
pub(crate) const PRUNE_SNAPSHOTS: &str = "DELETE FROM nextchat_snapshots WHERE user_id = $1 AND snapshot_id NOT IN \
     (SELECT snapshot_id FROM nextchat_snapshots WHERE user_id = $1 ORDER BY snapshot_id DESC LIMIT $2)";
pub(crate) const SELECT_SNAPSHOTS: &str = "SELECT s.snapshot_id, s.created_at, s.source, s.bytes, s.sessions, \
     s.messages, s.app_password_id, a.label FROM nextchat_snapshots s LEFT JOIN app_passwords a \
     ON a.user_id = s.user_id AND a.app_password_id = s.app_password_id \
     WHERE s.user_id = $1 ORDER BY s.snapshot_id DESC";
pub(crate) const SELECT_SNAPSHOT_BODY: &str =
    "SELECT body FROM nextchat_snapshots WHERE user_id = $1 AND snapshot_id = $2";
pub(crate) const STAGE_CHUNK: &str = "INSERT INTO nextchat_staging (user_id, name, chunk, bytes, sealed, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6) \
     ON CONFLICT (user_id, name, chunk) DO UPDATE SET bytes = $4, sealed = $5, updated_at = $6";
pub(crate) const PRUNE_STAGING: &str = "DELETE FROM nextchat_staging WHERE user_id = $1 AND updated_at < $2";
pub(crate) const EXPIRE_STAGING: &str = "DELETE FROM nextchat_staging WHERE updated_at < $1";
/// What the account has staged besides the chunk about to be (re)placed.
pub(crate) const STAGED_ELSEWHERE: &str = "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT), COUNT(*) \
     FROM nextchat_staging WHERE user_id = $1 AND NOT (name = $2 AND chunk = $3)";
pub(crate) const STAGED_BYTES: &str = "SELECT CAST(COALESCE(SUM(bytes), 0) AS BIGINT) FROM nextchat_staging \
     WHERE user_id = $1 AND name = $2 AND chunk >= 0 AND chunk < $3";
pub(crate) const SELECT_STAGED: &str = "SELECT chunk, sealed FROM nextchat_staging \
     WHERE user_id = $1 AND name = $2 AND chunk >= 0 AND chunk < $3";
pub(crate) const CLEAR_STAGING: &str = "DELETE FROM nextchat_staging WHERE user_id = $1 AND name = $2";

/// Implements [`NextChatStore`] for a store with `writer()`/`reader()`/`begin_write()`,
/// whose transaction wrapper implements `SyncTx` and [`VersionsTx`]. Invoke inside a module
/// of its own.
macro_rules! impl_nextchat_store {
    ($store:ty, $row:ty) => {
        use nextsync_core::ids::{Seq, SnapshotId, UserId};
        use nextsync_core::push::{Mutation, RecordKey};
        use nextsync_core::sync::RawRecord;
        use nextsync_core::time::Timestamp;
        use sqlx::Row as _;
        use std::collections::{HashMap, HashSet};
        use $crate::StoreError;
        use $crate::nextchat::*;
        use $crate::sync::{Applied, ApplyError, run_apply};

        fn account_row(row: Option<&$row>) -> Result<NextChatAccount, StoreError> {
            let Some(row) = row else {
                return Ok(NextChatAccount::default());
            };
            Ok(NextChatAccount {
                sync_settings: row.try_get("sync_settings")?,
                sync_secrets: row.try_get("sync_secrets")?,
                folder_created: row
                    .try_get::<Option<i64>, _>("folder_created_at")?
                    .is_some(),
            })
        }

        #[async_trait::async_trait]
        impl NextChatStore for $store {
            async fn nextchat_account(&self, user: UserId) -> Result<NextChatAccount, StoreError> {
                let row = sqlx::query(SELECT_ACCOUNT)
                    .bind(user.as_uuid())
                    .fetch_optional(self.reader())
                    .await?;
                account_row(row.as_ref())
            }

            async fn set_nextchat_settings(
                &self,
                user: UserId,
                sync_settings: Option<bool>,
                sync_secrets: Option<bool>,
                now: Timestamp,
            ) -> Result<NextChatAccount, StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query(UPSERT_SETTINGS)
                    .bind(user.as_uuid())
                    .bind(sync_settings)
                    .bind(sync_secrets)
                    .bind(now.as_millis())
                    .execute(&mut *tx.0)
                    .await?;
                if sync_secrets == Some(false) {
                    sqlx::query(DELETE_SECRETS)
                        .bind(user.as_uuid())
                        .execute(&mut *tx.0)
                        .await?;
                }
                let row = sqlx::query(SELECT_ACCOUNT)
                    .bind(user.as_uuid())
                    .fetch_optional(&mut *tx.0)
                    .await?;
                let account = account_row(row.as_ref())?;
                tx.0.commit().await?;
                Ok(account)
            }

            async fn create_folder(&self, user: UserId, now: Timestamp) -> Result<bool, StoreError> {
                let done = sqlx::query(CREATE_FOLDER)
                    .bind(user.as_uuid())
                    .bind(now.as_millis())
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn records_in(
                &self,
                user: UserId,
                collections: &[&str],
            ) -> Result<Vec<(RecordKey, RawRecord)>, StoreError> {
                use futures::TryStreamExt as _;
                let mut records = Vec::new();
                for collection in collections {
                    // Row by row: a whole NextChat state is tens of MB.
                    let mut rows = sqlx::query(SELECT_COLLECTION)
                        .bind(user.as_uuid())
                        .bind(*collection)
                        .fetch(self.reader());
                    while let Some(row) = rows.try_next().await? {
                        let key = RecordKey {
                            collection: row.try_get("collection")?,
                            id: row.try_get("record_id")?,
                        };
                        let raw = RawRecord {
                            fields: row.try_get("fields")?,
                            tombstone: row.try_get("tombstone")?,
                            tombstone_seq: row
                                .try_get::<Option<i64>, _>("tombstone_seq")?
                                .map(|s| Seq(s as u64)),
                            seq: Seq(row.try_get::<i64, _>("seq")? as u64),
                        };
                        records.push((key, raw));
                    }
                }
                Ok(records)
            }

            async fn versions(
                &self,
                user: UserId,
            ) -> Result<HashMap<RecordKey, HashSet<String>>, StoreError> {
                let rows = sqlx::query(SELECT_VERSIONS)
                    .bind(user.as_uuid())
                    .fetch_all(self.reader())
                    .await?;
                let mut versions: HashMap<RecordKey, HashSet<String>> = HashMap::new();
                for row in &rows {
                    let key = RecordKey {
                        collection: row.try_get("collection")?,
                        id: row.try_get("record_id")?,
                    };
                    versions
                        .entry(key)
                        .or_default()
                        .insert(row.try_get("hash")?);
                }
                Ok(versions)
            }

            async fn secrets(&self, user: UserId) -> Result<Vec<SealedSecret>, StoreError> {
                let rows = sqlx::query(SELECT_SECRETS)
                    .bind(user.as_uuid())
                    .fetch_all(self.reader())
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(SealedSecret {
                            path: row.try_get("path")?,
                            sealed: row.try_get("sealed")?,
                        })
                    })
                    .collect()
            }

            async fn apply_upload(
                &self,
                user: UserId,
                mutations: Vec<Mutation>,
                now: Timestamp,
                extras: UploadExtras,
            ) -> Result<Applied, ApplyError> {
                let mut tx = self.begin_write().await?;
                let applied = run_apply(&mut tx, user, mutations, now, None).await?;
                VersionsTx::insert_versions(&mut tx, user, &extras.versions).await?;
                for secret in &extras.secrets {
                    sqlx::query(UPSERT_SECRET)
                        .bind(user.as_uuid())
                        .bind(&secret.path)
                        .bind(&secret.sealed)
                        .bind(now.as_millis())
                        .execute(&mut *tx.0)
                        .await?;
                }
                if let Some(snapshot) = &extras.snapshot {
                    let newest: Option<String> = sqlx::query_scalar(NEWEST_DIGEST)
                        .bind(user.as_uuid())
                        .fetch_optional(&mut *tx.0)
                        .await?;
                    if newest.as_deref() != Some(snapshot.digest.as_str()) {
                        let info = &snapshot.info;
                        sqlx::query(INSERT_SNAPSHOT)
                            .bind(user.as_uuid())
                            .bind(info.id.as_uuid())
                            .bind(info.created_at.as_millis())
                            .bind(&info.source)
                            .bind(info.bytes)
                            .bind(info.sessions)
                            .bind(info.messages)
                            .bind(&snapshot.digest)
                            .bind(&snapshot.body)
                            .bind(info.app_password.map(|id| *id.as_uuid()))
                            .execute(&mut *tx.0)
                            .await?;
                        sqlx::query(PRUNE_SNAPSHOTS)
                            .bind(user.as_uuid())
                            .bind(SNAPSHOTS_KEPT)
                            .execute(&mut *tx.0)
                            .await?;
                    }
                }
                if let Some(name) = &extras.committed_staging {
                    sqlx::query(CLEAR_STAGING)
                        .bind(user.as_uuid())
                        .bind(name)
                        .execute(&mut *tx.0)
                        .await?;
                }
                sqlx::query(CREATE_FOLDER)
                    .bind(user.as_uuid())
                    .bind(now.as_millis())
                    .execute(&mut *tx.0)
                    .await?;
                tx.0.commit().await?;
                Ok(applied)
            }

            async fn snapshots(&self, user: UserId) -> Result<Vec<SnapshotInfo>, StoreError> {
                let rows = sqlx::query(SELECT_SNAPSHOTS)
                    .bind(user.as_uuid())
                    .fetch_all(self.reader())
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok(SnapshotInfo {
                            id: SnapshotId::from_uuid(row.try_get("snapshot_id")?),
                            created_at: Timestamp::from_millis(row.try_get("created_at")?),
                            source: row.try_get("source")?,
                            bytes: row.try_get("bytes")?,
                            sessions: row.try_get("sessions")?,
                            messages: row.try_get("messages")?,
                            app_password: row
                                .try_get::<Option<uuid::Uuid>, _>("app_password_id")?
                                .map(nextsync_core::ids::AppPasswordId::from_uuid),
                            device: row.try_get("label")?,
                        })
                    })
                    .collect()
            }

            async fn snapshot_body(
                &self,
                user: UserId,
                id: SnapshotId,
            ) -> Result<Option<Vec<u8>>, StoreError> {
                Ok(sqlx::query_scalar(SELECT_SNAPSHOT_BODY)
                    .bind(user.as_uuid())
                    .bind(id.as_uuid())
                    .fetch_optional(self.reader())
                    .await?)
            }

            async fn stage_chunk(
                &self,
                user: UserId,
                name: &str,
                index: i64,
                sealed: &[u8],
                bytes: i64,
                now: Timestamp,
                limits: StagingLimits,
            ) -> Result<Staged, StoreError> {
                let mut tx = self.begin_write().await?;
                sqlx::query(PRUNE_STAGING)
                    .bind(user.as_uuid())
                    .bind(now.as_millis() - STAGING_TTL_MS)
                    .execute(&mut *tx.0)
                    .await?;
                if index == 0 {
                    sqlx::query(CLEAR_STAGING)
                        .bind(user.as_uuid())
                        .bind(name)
                        .execute(&mut *tx.0)
                        .await?;
                }
                let (staged_bytes, staged_chunks): (i64, i64) = sqlx::query_as(STAGED_ELSEWHERE)
                    .bind(user.as_uuid())
                    .bind(name)
                    .bind(index)
                    .fetch_one(&mut *tx.0)
                    .await?;
                if staged_bytes.saturating_add(bytes) > limits.bytes || staged_chunks >= limits.chunks {
                    return Ok(Staged::OverLimit);
                }
                sqlx::query(STAGE_CHUNK)
                    .bind(user.as_uuid())
                    .bind(name)
                    .bind(index)
                    .bind(bytes)
                    .bind(sealed)
                    .bind(now.as_millis())
                    .execute(&mut *tx.0)
                    .await?;
                tx.0.commit().await?;
                Ok(Staged::Kept)
            }

            async fn staged_chunks(
                &self,
                user: UserId,
                name: &str,
                count: i64,
                max_bytes: i64,
            ) -> Result<StagedChunks, StoreError> {
                let bytes: i64 = sqlx::query_scalar(STAGED_BYTES)
                    .bind(user.as_uuid())
                    .bind(name)
                    .bind(count)
                    .fetch_one(self.reader())
                    .await?;
                if bytes > max_bytes {
                    return Ok(StagedChunks::TooLarge { bytes });
                }
                let rows = sqlx::query(SELECT_STAGED)
                    .bind(user.as_uuid())
                    .bind(name)
                    .bind(count)
                    .fetch_all(self.reader())
                    .await?;
                let mut chunks = vec![None; usize::try_from(count).unwrap_or(0)];
                for row in &rows {
                    let index: i64 = row.try_get("chunk")?;
                    if let Some(slot) = usize::try_from(index).ok().and_then(|i| chunks.get_mut(i)) {
                        *slot = Some(row.try_get("sealed")?);
                    }
                }
                Ok(StagedChunks::Chunks(chunks))
            }

            async fn expire_staging(&self, before: Timestamp) -> Result<u64, StoreError> {
                Ok(sqlx::query(EXPIRE_STAGING)
                    .bind(before.as_millis())
                    .execute(self.writer())
                    .await?
                    .rows_affected())
            }
        }
    };
}

pub(crate) use impl_nextchat_store;
