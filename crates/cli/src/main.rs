//! `nextsync`: the server (`serve`), its schema (`migrate`), operator tasks (`admin`), and the
//! client (`login`, `sync`, `watch`, `get`, `put`, …).
//!
//! - [`settings`]: flags, `NEXTSYNC_…` variables and the TOML file, merged into one config.
//! - [`admin`]: `nextsync admin user …`, working on the same store as the server.
//! - [`client`]: the client commands, on the SDK's local replica.

mod admin;
mod backup;
mod client;
mod history;
mod settings;

use anyhow::Context;
use clap::{Parser, Subcommand};
use settings::{LogFormat, Settings};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "nextsync",
    version,
    about = "Self-hosted cross-device sync for AI chat clients"
)]
struct Cli {
    /// TOML config file; its keys are the flag names with `_` for `-`.
    #[arg(long, global = true, env = "NEXTSYNC_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format (default text; `log_format` in the config file works too).
    #[arg(long, global = true, env = "NEXTSYNC_LOG_FORMAT", value_name = "text|json")]
    log_format: Option<LogFormat>,
    #[command(flatten)]
    client: client::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (embedded SQLite in ./nextsync-data unless --database-url is given).
    Serve {
        #[command(flatten)]
        settings: Settings,
        /// Print the effective configuration (secrets redacted) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Bring the database schema up to date, then exit.
    Migrate {
        #[command(flatten)]
        settings: Settings,
    },
    /// Operator tasks on the same store the server uses.
    Admin {
        #[command(flatten)]
        settings: Settings,
        #[command(subcommand)]
        command: admin::AdminCommand,
    },
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn main() -> ExitCode {
    // One TLS crypto provider for the whole process (rustls, sqlx, lettre); must come first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // The file is read before logging starts: it may choose the log format.
    let result = match &cli.config {
        Some(path) => Settings::from_file(path),
        None => Ok(Settings::default()),
    }
    .and_then(|file| {
        init_logging(cli.log_format.or(file.log_format).unwrap_or_default());
        tokio::runtime::Runtime::new()
            .context("starting the async runtime")
            .and_then(|runtime| runtime.block_on(run(cli, file)))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line, for people; never a backtrace.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, file: Settings) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve {
            settings,
            print_config,
        } => {
            let config = settings.over(file).resolve()?;
            if print_config {
                print!(
                    "{}",
                    toml::to_string_pretty(&config).context("rendering the config")?
                );
                return Ok(());
            }
            let bind = config.bind;
            // One server per embedded database: `admin restore` must be able to tell.
            let _lock = match config.database_url {
                None => {
                    nextsync_server::secrets::ensure_data_dir(&config.data_dir)?;
                    Some(backup::lock_data_dir(&config.data_dir)?)
                }
                Some(_) => None,
            };
            let state = nextsync_server::AppState::open(config).await?;
            let listener = tokio::net::TcpListener::bind(bind)
                .await
                .with_context(|| format!("binding {bind}"))?;
            let scheme = if state.config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            tracing::info!(
                address = %listener.local_addr()?,
                store = state.store.backend(),
                "nextsync is listening on {scheme}://{}",
                listener.local_addr()?
            );
            let stop = async {
                nextsync_server::shutdown_signal().await;
                tracing::info!("shutdown requested; finishing in-flight requests");
            };
            nextsync_server::serve(listener, state, stop).await?;
            tracing::info!("stopped");
            Ok(())
        }
        Command::Migrate { settings } => {
            let config = settings.over(file).resolve()?;
            nextsync_server::secrets::ensure_data_dir(&config.data_dir)?;
            let store = nextsync_server::state::open_store(&config).await?;
            println!("{} schema is up to date", store.backend());
            Ok(())
        }
        Command::Admin { settings, command } => {
            let config = settings.over(file).resolve()?;
            admin::run(config, command).await
        }
        Command::Client(command) => client::run(cli.client, command).await,
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("NEXTSYNC_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
