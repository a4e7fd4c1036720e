//! [`StoreError`]: what a caller can act on. A unique-key clash is a [`StoreError::Conflict`]
//! (the request was wrong), an unreachable database is [`StoreError::Unavailable`] (retry
//! later), anything else is a server bug or a broken database.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    /// A unique key already exists (for example an email address taken by another account).
    #[error("conflicting row: {constraint}")]
    Conflict { constraint: String },
    /// The database cannot be reached or the pool is exhausted.
    #[error("database unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Schema migration failed.
    #[error("database migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that cannot be turned back into a value: a bug or a hand-edited database.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// An error of the SQLite apply writer, which talks to SQLite without sqlx.
    #[error("database error")]
    Sqlite(#[source] rusqlite::Error),
}

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        match err.sqlite_error_code() {
            // Another process (`nextsync admin`) held the file past the busy timeout.
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                StoreError::Unavailable(err.into())
            }
            _ => StoreError::Sqlite(err),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict {
                constraint: db.constraint().unwrap_or_else(|| db.message()).to_owned(),
            },
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => StoreError::Unavailable(err.into()),
            _ => StoreError::Database(err),
        }
    }
}
