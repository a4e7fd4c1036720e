//! `nextsync-bench prefetch`: a new device joining an account with a long history, as the
//! client SDK does it: the 20 newest conversations with their messages first
//! (`GET /v1/sync/recent`), then the full pull. Measured through a byte-counting TCP proxy, so
//! the figures are what the network carried (compressed), next to the raw JSON of the same
//! answers.

use crate::median;
use anyhow::Context;
use nextsync_client::{Client, Options};
use nextsync_core::api::Secret;
use nextsync_testkit::{Api, PASSWORD, TestDb, TestServer};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

const FIRST: u32 = 20;

pub async fn bench_prefetch(sessions: usize, messages: usize, rounds: usize) -> anyhow::Result<()> {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let owner = api.register("history@example.org").await;
    let seeded = seed(&api, owner.token().context("token")?, sessions, messages).await?;
    let proxy = CountingProxy::start(server.addr).await?;
    let raw = raw_json_bytes(&api, owner.token().context("token")?).await?;

    println!(
        "## Recent-first prefetch: a new device joins {sessions} sessions × {messages} messages \
         ({seeded} records, {:.1} MB of JSON)\n",
        raw as f64 / 1e6
    );
    let (mut first, mut all, mut wire, mut baseline) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        baseline.push(pulls_alone(&api, owner.token().context("token")?).await?);
        let dir = tempfile::tempdir()?;
        let client = Client::open(&dir.path().join("replica.sqlite3"), Options::default())?;
        client
            .login(
                &format!("http://{}", proxy.addr),
                "history@example.org",
                Secret::new(PASSWORD),
            )
            .await?;
        proxy.reset();
        let start = Instant::now();
        let fetched = client.prefetch_recent(FIRST).await?;
        first.push(start.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            fetched == u64::from(FIRST) * (messages as u64 + 1),
            "the first page held {fetched} records"
        );
        let newest = client.sessions(Some(FIRST)).await?;
        for session in &newest {
            anyhow::ensure!(client.messages(&session.id).await?.len() == messages);
        }
        client.sync().await?;
        all.push(start.elapsed().as_secs_f64() * 1e3);
        wire.push(proxy.downstream() as f64);
        let status = client.status().await?;
        anyhow::ensure!(
            status.records == seeded as u64,
            "{} of {seeded} records",
            status.records
        );
    }
    println!("| measure | median of {rounds} | target |");
    println!("|---|---|---|");
    println!(
        "| {FIRST} newest sessions with all their messages usable locally | {:.0} ms | ≤ 150 ms |",
        median(&first)
    );
    println!(
        "| everything ({seeded} records) | {:.0} ms | ≤ 2,000 ms |",
        median(&all)
    );
    println!(
        "| baseline: the same pulls by a bare HTTP client (compressed, parsed, nothing stored) | {:.0} ms | |",
        median(&baseline)
    );
    println!(
        "| bytes on the wire (server → client) | {:.2} MB = {:.0} % of the raw JSON ({:.2} MB) | ≤ 35 % |",
        median(&wire) / 1e6,
        100.0 * median(&wire) / raw as f64,
        raw as f64 / 1e6
    );
    Ok(())
}

/// Pushes the history, oldest session first, with messages of varied chat-like text.
async fn seed(api: &Api, token: &str, sessions: usize, messages: usize) -> anyhow::Result<usize> {
    const WORDS: [&str; 24] = [
        "the", "model", "answer", "code", "function", "returns", "a", "list", "of", "tokens", "when", "you",
        "ask", "about", "rust", "async", "sqlite", "sync", "server", "with", "clear", "errors", "and",
        "tests",
    ];
    let mut batch = Vec::new();
    let mut count = 0;
    let mut seed = 7u64;
    for s in 0..sessions {
        let stamp = |n: usize| format!("{:015}-{:05}-seed", 1_700_000_000_000u64 + s as u64, n);
        batch.push(json!({"mutation_id": format!("s{s}"), "collection": "sessions", "id": format!("session-{s}"),
            "op": "upsert", "hlc": stamp(0),
            "fields": {"topic": format!("Conversation {s}"), "lastUpdate": 1_700_000_000_000u64 + s as u64,
                       "mask": {"name": "Default", "modelConfig": {"model": "gpt-4o-mini", "temperature": 0.5}}}}));
        for m in 0..messages {
            let length = 40 + (m * 37 + s * 11) % 120;
            let content: Vec<&str> = (0..length)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    WORDS[(seed >> 33) as usize % WORDS.len()]
                })
                .collect();
            batch.push(
                json!({"mutation_id": format!("s{s}m{m}"), "collection": "messages",
                "id": format!("message-{s}-{m}"), "op": "upsert", "hlc": stamp(m + 1),
                "fields": {"session_id": format!("session-{s}"), "position": m,
                           "role": if m % 2 == 0 { "user" } else { "assistant" },
                           "content": content.join(" "), "date": "2026-11-30T12:00:00.000Z",
                           "model": "gpt-4o-mini"}}),
            );
        }
        if batch.len() >= 900 || s + 1 == sessions {
            count += batch.len();
            let body = json!({ "mutations": std::mem::take(&mut batch) });
            let (status, answer) = api.post("/v1/sync/push", Some(token), body).await;
            anyhow::ensure!(status == 200, "seeding: {status} {answer}");
        }
    }
    Ok(count)
}

/// Milliseconds for the full pull by a bare HTTP client: the server's and the network's
/// share of a new device's sync.
async fn pulls_alone(api: &Api, token: &str) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut since = String::new();
    loop {
        let response = api
            .http
            .get(format!("{}/v1/sync/pull?limit=1000&since={since}", api.base_url))
            .bearer_auth(token)
            .send()
            .await?;
        let page: nextsync_core::api::PullResponse = response.json().await?;
        since = page.cursor;
        if !page.has_more {
            return Ok(start.elapsed().as_secs_f64() * 1e3);
        }
    }
}

/// The uncompressed size of the same answers: the first page and every pull page.
async fn raw_json_bytes(api: &Api, token: &str) -> anyhow::Result<usize> {
    let plain = reqwest::Client::builder().no_gzip().no_zstd().build()?;
    let get = |path: String| {
        let request = plain
            .get(format!("{}{path}", api.base_url))
            .bearer_auth(token)
            .header("accept-encoding", "identity");
        async move { anyhow::Ok(request.send().await?.bytes().await?) }
    };
    let mut total = get(format!(
        "/v1/sync/recent?collection=sessions&limit={FIRST}&children=messages&link=session_id"
    ))
    .await?
    .len();
    let mut since = String::new();
    loop {
        let body = get(format!("/v1/sync/pull?limit=1000&since={since}")).await?;
        total += body.len();
        let page: Value = serde_json::from_slice(&body)?;
        since = page["cursor"].as_str().context("cursor")?.to_owned();
        if page["has_more"] != json!(true) {
            return Ok(total);
        }
    }
}

/// A TCP proxy counting what the server sends to the client.
struct CountingProxy {
    addr: SocketAddr,
    down: Arc<AtomicU64>,
}

impl CountingProxy {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let down = Arc::new(AtomicU64::new(0));
        let counter = down.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = outbound.set_nodelay(true);
                    let (mut in_read, mut in_write) = inbound.into_split();
                    let (mut out_read, mut out_write) = outbound.into_split();
                    let up = tokio::io::copy(&mut in_read, &mut out_write);
                    let down = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                            let n = out_read.read(&mut buf).await?;
                            if n == 0 {
                                return in_write.shutdown().await;
                            }
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                            in_write.write_all(&buf[..n]).await?;
                        }
                    };
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Ok(Self { addr, down })
    }

    fn reset(&self) {
        self.down.store(0, Ordering::Relaxed);
    }

    fn downstream(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}
