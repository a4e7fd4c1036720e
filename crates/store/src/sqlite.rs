//! [`SqliteStore`]: the embedded default, one file in the data dir.
//!
//! SQLite allows one writer at a time, so writes go through a pool of exactly one connection
//! (no `SQLITE_BUSY` races between our own writers) while reads use a separate pool that WAL
//! lets run beside the writer. `synchronous = FULL`: a write is on disk before it is
//! acknowledged, so neither a crash nor a power cut loses an acknowledged write.

use crate::{Store, StoreError};
use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{SqlSafeStr, SqlitePool};
use std::path::Path;
use std::time::Duration;

/// Migrations, embedded in the binary. Never edit one that has landed: add the next.
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "accounts".into(),
        MigrationType::Simple,
        include_str!("../migrations/sqlite/0001_accounts.sql").into_sql_str(),
        false,
    )])
}

#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
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
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        migrator().run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, reader })
    }

    pub(crate) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub(crate) fn reader(&self) -> &SqlitePool {
        &self.reader
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
