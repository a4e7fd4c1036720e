//! [`AppState`]: cheap-clone handles to everything a request may need, built once at start.

use crate::auth::limits::Limits;
use crate::auth::password::Passwords;
use crate::auth::tokens::AccessTokens;
use crate::bus::{Bus, LocalBus, RedisBus};
use crate::config::Config;
use crate::mail::Mailer;
use crate::metrics::Metrics;
use crate::nextchat::{NextChat, Sealer};
use crate::secrets;
use anyhow::Context;
use nextsync_store::{Store, StoreLocation};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub tokens: Arc<AccessTokens>,
    pub passwords: Passwords,
    pub limits: Limits,
    pub mailer: Arc<Mailer>,
    pub metrics: Metrics,
    pub bus: Arc<dyn Bus>,
    pub nextchat: NextChat,
    /// Cancelled when the server begins to stop: open sockets close ("going away") and
    /// long-polls answer at once, so a graceful stop does not wait on them.
    pub stopping: CancellationToken,
}

impl AppState {
    /// Opens the configured store (running migrations) and builds the state around it.
    pub async fn open(config: Config) -> anyhow::Result<Self> {
        secrets::ensure_data_dir(&config.data_dir)?;
        let store = open_store(&config).await?;
        let mut state = Self::new(config, store)?;
        if let Some(url) = &state.config.redis_url {
            state.bus = Arc::new(RedisBus::start(url.expose())?);
        }
        Ok(state)
    }

    /// Builds the state around an already opened store.
    pub fn new(config: Config, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        secrets::ensure_data_dir(&config.data_dir)?;
        let jwt_key = match &config.jwt_secret {
            Some(key) => key.clone(),
            None => secrets::load_or_generate(&config.data_dir, secrets::JWT_KEY_FILE, 64)?,
        };
        anyhow::ensure!(
            jwt_key.expose().len() >= 32,
            "the JWT secret must be at least 32 characters"
        );
        let tokens = AccessTokens::new(&jwt_key, config.jwt_algorithm, config.access_token_ttl);
        let mailer = Mailer::from_config(&config.mailer, config.outbox_dir())?;
        let secrets_key = match &config.secrets_key {
            Some(key) => key.clone(),
            None => secrets::load_or_generate(&config.data_dir, secrets::NEXTCHAT_KEY_FILE, 32)?,
        };
        Ok(Self {
            limits: Limits::new(&config.rate_limits),
            passwords: Passwords::new()?,
            tokens: Arc::new(tokens),
            mailer: Arc::new(mailer),
            metrics: Metrics::install()?,
            bus: Arc::new(LocalBus::new()),
            nextchat: NextChat::new(Sealer::new(&secrets_key), config.nextchat_max_upload_bytes),
            stopping: CancellationToken::new(),
            store,
            config: Arc::new(config),
        })
    }
}

/// Opens the store the config names: PostgreSQL with a URL, else SQLite in the data dir.
pub async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let sqlite_path = config.sqlite_path();
    let location = match &config.database_url {
        Some(url) => StoreLocation::Postgres { url: url.expose() },
        None => StoreLocation::Sqlite { path: &sqlite_path },
    };
    nextsync_store::open(location).await.context("opening the store")
}
