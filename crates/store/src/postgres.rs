//! [`PgStore`]: PostgreSQL, for larger installations and for several server instances sharing
//! one database.

use crate::{Store, StoreError};
use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, SqlSafeStr};
use std::str::FromStr;
use std::time::Duration;

/// Migrations, embedded in the binary. Never edit one that has landed: add the next.
fn migrator() -> Migrator {
    Migrator::with_migrations(vec![Migration::new(
        1,
        "accounts".into(),
        MigrationType::Simple,
        include_str!("../migrations/postgres/0001_accounts.sql").into_sql_str(),
        false,
    )])
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects with a `postgres://` URL and runs pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(StoreError::Unavailable)?;
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
