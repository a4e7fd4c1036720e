//! Persistence for nextsync: one [`Store`] trait, split by role, with an embedded SQLite
//! implementation ([`SqliteStore`], the zero-setup default) and a PostgreSQL one ([`PgStore`]).
//!
//! - [`accounts`]: users, devices, refresh-token families, password resets, app passwords.
//! - [`sync`]: records, the per-user change feed, mutation ids, conflicts; the one write path.
//! - [`health`]: digests for verifying replicas, and the store's own invariant check.
//! - [`history`]: the trash and point-in-time restore, read from each record's undo entries.
//! - [`nextchat`]: what the NextChat doors keep besides records (settings, versions,
//!   secrets, snapshots, staged Upstash chunks).
//! - [`sqlite`], [`postgres`]: connection set-up and migrations of each backend.
//! - [`error`]: [`StoreError`], which tells "conflict" from "database down" from a bug.
//!
//! Every method is one transaction. Both backends run the same SQL text where the dialects
//! agree (sqlx binds `$1` on SQLite too), generated once by the `impl_*` macros, so the two
//! implementations cannot drift; a contract test suite (`tests/contract.rs`) runs on both.

pub mod accounts;
pub mod error;
pub mod health;
pub mod history;
pub mod nextchat;
pub mod postgres;
pub mod sqlite;
pub mod sync;

pub use accounts::AccountStore;
pub use error::StoreError;
pub use health::HealthStore;
pub use history::HistoryStore;
pub use nextchat::NextChatStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use sync::SyncStore;

use async_trait::async_trait;
use std::path::Path;
use std::sync::Arc;

/// Everything the server needs from persistence.
#[async_trait]
pub trait Store:
    AccountStore
    + SyncStore
    + HistoryStore
    + HealthStore
    + NextChatStore
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    /// Cheap round trip that proves the database answers (`/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// `sqlite` or `postgres`, for logs and metrics.
    fn backend(&self) -> &'static str;
}

/// Where the data lives: the SQLite file in the data dir unless a PostgreSQL URL is given.
#[derive(Debug, Clone, Copy)]
pub enum StoreLocation<'a> {
    Sqlite { path: &'a Path },
    Postgres { url: &'a str },
}

/// Opens the store and brings its schema up to date.
pub async fn open(location: StoreLocation<'_>) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite { path } => Arc::new(SqliteStore::open(path).await?),
        StoreLocation::Postgres { url } => Arc::new(PgStore::connect(url).await?),
    })
}
