//! The nextsync server: an axum application over a [`nextsync_store::Store`].
//!
//! - [`serve`]: runs the app on a bound listener until a shutdown future resolves (tests bind
//!   port 0 and run the real server).
//! - [`config`]: resolved settings; [`state`]: the shared [`AppState`]; [`router`]: layers.
//! - [`auth`]: accounts, tokens, rate limits, the `AuthUser`/`AppPasswordUser` extractors.
//! - [`account`]: `/v1/me`, devices, app passwords.
//! - [`sync`]: the one write path (`sync::apply`), push, pull, conflicts, records API;
//!   [`bus`]: "user U is at seq N" notices after every commit; [`ws`]: the WebSocket feed.
//! - [`history`]: the trash and point-in-time restore; [`health`]: digests for verifying replicas.
//! - [`nextchat`]: the NextChat doors (WebDAV, Upstash), settings, snapshots, export/import.
//! - [`ops`]: health, readiness, metrics, OpenAPI; [`metrics`]: the Prometheus recorder.
//! - [`mail`]: the log and SMTP mailers; [`secrets`]: keys generated into the data dir.
//! - [`web`]: the web app at `/` (embedded ES modules and CSS).
//! - [`error`]: [`ApiError`]; [`extract`]: JSON, query, path and client-address extractors;
//!   [`edge`]: request bodies drained or announced, and layers' bare errors in the error shape.

pub mod account;
pub mod auth;
pub mod bus;
pub mod config;
pub mod edge;
pub mod error;
pub mod extract;
pub mod health;
pub mod history;
pub mod mail;
pub mod metrics;
pub mod nextchat;
pub mod ops;
pub mod router;
pub mod secrets;
pub mod state;
pub mod sync;
pub mod web;
pub mod ws;

pub use config::Config;
pub use error::ApiError;
pub use state::AppState;

use anyhow::Context;
use axum::serve::ListenerExt;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use nextsync_core::time::Timestamp;
use nextsync_store::nextchat::STAGING_TTL_MS;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

/// How long in-flight requests may finish after shutdown is requested.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves the app on `listener` (HTTPS when the config names a certificate) until `shutdown`
/// resolves, then lets in-flight requests finish.
///
/// Every accepted connection gets `TCP_NODELAY`: a live-feed frame or a small answer written
/// while the previous one is unacknowledged would otherwise wait for the peer's delayed ACK
/// (a 24 ms p99 seen by a Node client, issue 16).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let housekeeping = spawn_housekeeping(&state);
    let tls = state.config.tls.clone();
    let stopping = state.stopping.clone();
    let shutdown = async move {
        shutdown.await;
        stopping.cancel();
    };
    let app = router::app(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = serve_app(listener, app, tls, shutdown).await;
    housekeeping.abort();
    served
}

async fn serve_app(
    listener: TcpListener,
    app: axum::extract::connect_info::IntoMakeServiceWithConnectInfo<axum::Router, SocketAddr>,
    tls: Option<config::TlsFiles>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    match tls {
        None => {
            let listener = listener.tap_io(|stream| {
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
                }
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await?
        }
        Some(files) => {
            let rustls = RustlsConfig::from_pem_file(&files.cert, &files.key)
                .await
                .with_context(|| {
                    format!(
                        "loading TLS certificate {} and key {}",
                        files.cert.display(),
                        files.key.display()
                    )
                })?;
            let handle = axum_server::Handle::new();
            let on_shutdown = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                on_shutdown.graceful_shutdown(Some(DRAIN));
            });
            let acceptor = RustlsAcceptor::new(rustls).acceptor(NoDelayAcceptor::new());
            axum_server::from_tcp(listener.into_std()?)?
                .acceptor(acceptor)
                .handle(handle)
                .serve(app)
                .await?;
        }
    }
    Ok(())
}

/// Periodic upkeep while the server runs: forgets idle rate-limit keys, prunes record
/// history past its retention and drops Upstash chunks staged by uploads that never
/// committed.
fn spawn_housekeeping(state: &AppState) -> tokio::task::JoinHandle<()> {
    let limits = state.limits.clone();
    let store = state.store.clone();
    let retention = (state.config.history_retention, state.config.trash_retention);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            limits.forget_idle();
            prune_history(&store, &retention).await;
            let before = Timestamp::now().minus_secs(STAGING_TTL_MS / 1000);
            match store.expire_staging(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(chunks = n, "expired abandoned Upstash staging"),
                Err(e) => tracing::warn!(error = %e, "cannot expire Upstash staging"),
            }
        }
    })
}

/// Drops record history past its retention (`(history, trash)`), a bounded batch at a time
/// so the writes of users wait behind none of it for long.
async fn prune_history(store: &std::sync::Arc<dyn nextsync_store::Store>, retention: &(Duration, Duration)) {
    const BATCH: u32 = 1000;
    let now = Timestamp::now();
    let cutoff = |d: Duration| now.minus_secs(i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let mut total = 0;
    loop {
        match store
            .prune_history(cutoff(retention.0), cutoff(retention.1), BATCH)
            .await
        {
            Ok(n) => {
                total += n;
                if n < u64::from(BATCH) {
                    break;
                }
                tokio::task::yield_now().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot prune record history");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(entries = total, "pruned record history past its retention");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
