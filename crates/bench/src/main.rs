//! `nextsync-bench`: measurements for docs/BENCHMARKS.md. Everything runs on loopback against
//! an in-process server on a fresh SQLite data dir, bounded in time. The machine is noisy, so
//! every scenario is measured in several interleaved rounds and reported as a median, next to
//! a baseline measured in the same run.

mod health;
mod history;
mod hostile;
mod nextchat;
mod prefetch;
mod realtime;
mod sync;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use clap::{Parser, Subcommand};
use nextsync_core::time::Timestamp;
use nextsync_server::auth::AuthUser;
use nextsync_server::{AppState, Config};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "nextsync benchmarks (loopback, bounded)")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The live feed: push → socket latency on one and two instances, memory per idle socket,
    /// delivery under load. Needs the release `nextsync` binary beside this one.
    Realtime {
        #[arg(long, default_value_t = 10_000)]
        sockets: usize,
        #[arg(long, default_value_t = 1000)]
        writes_per_sec: u64,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Run the single instance (and its load test) on PostgreSQL instead of SQLite.
        #[arg(long)]
        postgres: bool,
    },
    /// NextChat's WebDAV sync of whole states (default 200×20 and 1000×30): time and the
    /// server's peak memory per upload and download. Needs the release `nextsync` binary.
    Nextchat {
        /// Sessions×messages, comma-separated.
        #[arg(long, default_value = "200x20,1000x30")]
        shapes: String,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// `SyncStore::apply` alone in a loop (for profiling the store path).
    Store {
        #[arg(long)]
        postgres: bool,
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Push records/s for batches of 1, 100 and 1000 and pull throughput, on SQLite and
    /// PostgreSQL (skipped without one; `NEXTSYNC_TEST_DATABASE_URL`), and the bytes on the wire
    /// for syncing one new message beside NextChat's whole-state sync.
    Sync {
        /// Seconds per batch size per round.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// A new device joining a long history through the client SDK: the newest sessions
    /// first (recent-first page), then everything; time and bytes on the wire.
    Prefetch {
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        #[arg(long, default_value_t = 30)]
        messages: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Hostile input (issue 14) for longer than the test suite runs it, against the release
    /// `nextsync` binary: no answer ≥ 500, refused writes write nothing, and the server's
    /// memory back within 20 % of its baseline afterwards.
    Fuzz {
        #[arg(long, default_value_t = 20_000)]
        requests: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// What sync health costs: digests on the write path (a user with them beside one
    /// without), reading them, and an SDK check and repair of a replica (SQLite).
    Health {
        #[arg(long, default_value_t = 20_000)]
        records: usize,
    },
    /// What record history (trash, point-in-time restore) costs on disk per write, and the
    /// apply rate with it, for messages created, edited and deleted (SQLite).
    History {
        #[arg(long, default_value_t = 10_000)]
        records: usize,
        #[arg(long, default_value_t = 3)]
        edits: usize,
    },
    /// Requests/s of an authenticated GET /v1/me and the cost of the per-request revocation
    /// check, against unauthenticated and JWT-only baselines.
    Auth {
        /// Seconds per scenario per round.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Interleaved rounds; the median is reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match cli.command {
            Bench::Realtime {
                sockets,
                writes_per_sec,
                seconds,
                postgres,
            } => {
                realtime::bench_realtime(
                    sockets.clamp(1, 12_000),
                    writes_per_sec.clamp(1, 5000),
                    seconds.clamp(1, 60),
                    postgres,
                )
                .await
            }
            Bench::Fuzz { requests, seed } => {
                hostile::bench_fuzz(requests.clamp(100, 10_000_000), seed).await
            }
            Bench::Health { records } => health::bench_health(records.clamp(1000, 500_000)).await,
            Bench::History { records, edits } => {
                history::bench_history(records.clamp(100, 200_000), edits.clamp(0, 20)).await
            }
            Bench::Store {
                postgres,
                batch,
                seconds,
            } => {
                sync::bench_store(
                    postgres,
                    batch.clamp(1, 10_000),
                    Duration::from_secs(seconds.clamp(1, 60)),
                )
                .await
            }
            Bench::Nextchat { shapes, rounds } => {
                let shapes = shapes
                    .split(',')
                    .map(|shape| {
                        let (s, m) = shape
                            .trim()
                            .split_once('x')
                            .context("a shape is <sessions>x<messages>")?;
                        Ok((
                            s.parse::<usize>()?.clamp(1, 5000),
                            m.parse::<usize>()?.clamp(1, 200),
                        ))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                nextchat::bench_nextchat(&shapes, rounds.clamp(1, 10)).await
            }
            Bench::Sync { seconds, rounds } => {
                sync::bench_sync(Duration::from_secs(seconds.clamp(1, 60)), rounds.clamp(1, 20)).await
            }
            Bench::Prefetch {
                sessions,
                messages,
                rounds,
            } => {
                prefetch::bench_prefetch(
                    sessions.clamp(20, 10_000),
                    messages.clamp(1, 200),
                    rounds.clamp(1, 20),
                )
                .await
            }
            Bench::Auth {
                seconds,
                rounds,
                concurrency,
            } => {
                bench_auth(
                    Duration::from_secs(seconds.clamp(1, 60)),
                    rounds.clamp(1, 20),
                    concurrency.clamp(1, 256),
                )
                .await
            }
        }
    })
}

async fn bench_auth(duration: Duration, rounds: usize, concurrency: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::with_data_dir(dir.path().to_path_buf());
    config.bind = ([127, 0, 0, 1], 0).into();
    let state = AppState::open(config).await?;
    let app = Router::new()
        .route("/bench/jwt-only", get(jwt_only))
        .route("/bench/jwt-and-revocation", get(jwt_and_revocation))
        .with_state(state.clone())
        .merge(nextsync_server::router::app(state.clone()));
    let listener = tokio::net::TcpListener::bind(state.config.bind).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
    });
    let base = format!("http://{addr}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let registered: serde_json::Value = http
        .post(format!("{base}/v1/auth/register"))
        .json(&serde_json::json!({"email": "bench@example.org", "password": "benchmark passphrase"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = registered["access_token"]
        .as_str()
        .context("no access token")?
        .to_owned();

    let scenarios = [
        ("GET /healthz (no auth; baseline)", "/healthz", false),
        ("JWT verify only", "/bench/jwt-only", true),
        (
            "JWT + revocation check (AuthUser)",
            "/bench/jwt-and-revocation",
            true,
        ),
        ("GET /v1/me (AuthUser + user read)", "/v1/me", true),
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); scenarios.len()];
    for round in 0..rounds {
        for (i, (_, path, auth)) in scenarios.iter().enumerate() {
            let rps = load(
                &http,
                &format!("{base}{path}"),
                auth.then_some(token.as_str()),
                concurrency,
                duration,
            )
            .await?;
            results[i].push(rps);
        }
        eprintln!("round {}/{rounds} done", round + 1);
    }

    let (verify, device_status) = micro_auth(&state, &token).await?;

    println!("### GET /v1/me and the revocation check\n");
    println!(
        "{rounds} interleaved rounds × {}s per scenario, {concurrency} keep-alive connections, client and server on the same {} cores.\n",
        duration.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| scenario | median req/s | min | max | vs baseline |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    let medians: Vec<f64> = results.iter().map(|r| median(r)).collect();
    for ((name, _, _), runs) in scenarios.iter().zip(&results) {
        let (min, max) = runs
            .iter()
            .fold((f64::MAX, 0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        println!(
            "| {name} | {:.0} | {min:.0} | {max:.0} | {:.2}× |",
            median(runs),
            median(runs) / medians[0]
        );
    }
    let per_request_us = |rps: f64| 1e6 / rps;
    println!(
        "\nRevocation check, from the loaded runs: {:.1} µs of server+client time per request \
         ({:.0}% of a /v1/me request).",
        per_request_us(medians[2]) - per_request_us(medians[1]),
        100.0 * (per_request_us(medians[2]) - per_request_us(medians[1])) / per_request_us(medians[3])
    );
    println!(
        "In isolation (median of 20,000 sequential calls): JWT verify {:.1} µs, \
         revocation check (`device_status`, one indexed SQLite read) {:.1} µs.",
        verify, device_status
    );
    Ok(())
}

async fn jwt_only(State(state): State<AppState>, headers: HeaderMap) -> StatusCode {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token.map(|t| state.tokens.verify(t)) {
        Some(Ok(_)) => StatusCode::NO_CONTENT,
        _ => StatusCode::UNAUTHORIZED,
    }
}

async fn jwt_and_revocation(_auth: AuthUser) -> StatusCode {
    StatusCode::NO_CONTENT
}

/// Completed requests per second of `concurrency` workers hammering `url` for `duration`.
async fn load(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    concurrency: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (http, url, done) = (http.clone(), url.to_owned(), done.clone());
            let token = token.map(str::to_owned);
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let mut request = http.get(&url);
                    if let Some(token) = &token {
                        request = request.bearer_auth(token);
                    }
                    let response = request.send().await?;
                    anyhow::ensure!(response.status().is_success(), "{url}: {}", response.status());
                    response.bytes().await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Median µs of a JWT verification and of the store's device check, called back to back.
async fn micro_auth(state: &AppState, token: &str) -> anyhow::Result<(f64, f64)> {
    const N: usize = 20_000;
    let claims = state.tokens.verify(token).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut verify = Vec::with_capacity(N);
    let mut status = Vec::with_capacity(N);
    for _ in 0..N {
        let start = Instant::now();
        let _ = std::hint::black_box(state.tokens.verify(token));
        verify.push(start.elapsed().as_secs_f64() * 1e6);
        let start = Instant::now();
        let found = state.store.device_status(claims.sub, claims.did).await?;
        status.push(start.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(found.is_some_and(|s| s.is_active() && s.last_seen_at <= Timestamp::now()));
    }
    Ok((median(&verify), median(&status)))
}

pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}
