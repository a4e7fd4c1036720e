//! `nextsync-bench realtime`: the live feed under load, against real `nextsync serve` processes
//! (the binary next to this one: build it with `cargo build --release -p nextsync-cli`).
//!
//! - push → other device's socket latency on one instance (SQLite) and across two instances
//!   (PostgreSQL + Redis);
//! - server memory per idle WebSocket with 10,000 sockets open;
//! - delivery latency with 10,000 sockets connected while 1,000 writes/s land.

use crate::median;
use futures::{SinkExt, StreamExt};
use nextsync_testkit::{Api, PASSWORD, Session, TestDb};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

type Socket = nextsync_testkit::ws::Socket;

/// A real `nextsync serve` process.
pub(crate) struct Server {
    child: Child,
    pub(crate) base_url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    pub(crate) fn spawn(args: &[String]) -> anyhow::Result<Self> {
        let binary: PathBuf = std::env::current_exe()?.with_file_name("nextsync");
        anyhow::ensure!(
            binary.exists(),
            "{} is missing: cargo build --release -p nextsync-cli",
            binary.display()
        );
        let mut child = Command::new(&binary)
            .arg("serve")
            .args(args)
            .env("NEXTSYNC_LOG", "warn,nextsync=info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stderr = child.stderr.take().ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let mut lines = BufReader::new(stderr).lines();
        let needle = "nextsync is listening on ";
        let base_url = loop {
            let line = lines.next().ok_or_else(|| anyhow::anyhow!("server exited"))??;
            if let Some(pos) = line.find(needle) {
                break line[pos + needle.len()..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
            }
        };
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { child, base_url })
    }

    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmRSS:")
    }

    /// The peak resident set since start or since [`Self::reset_peak`].
    pub(crate) fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_kib("VmHWM:")
    }

    /// Starts a new peak: writing 5 to `clear_refs` resets `VmHWM` (Linux ≥ 4.0).
    pub(crate) fn reset_peak(&self) -> anyhow::Result<()> {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")?;
        Ok(())
    }

    fn status_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no {field}"))
    }

    pub(crate) fn api(&self) -> Api {
        Api {
            http: nextsync_testkit::client(),
            base_url: self.base_url.clone(),
        }
    }
}

/// The `sent_us` stamps in a `changes` frame, by text search (values are digit strings).
fn sent_stamps(frame: &str) -> impl Iterator<Item = u128> + '_ {
    const KEY: &str = r#""sent_us":""#;
    frame.match_indices(KEY).filter_map(|(at, _)| {
        let digits = &frame[at + KEY.len()..];
        let end = digits.find('"')?;
        digits[..end].parse().ok()
    })
}

fn note(id: &str, n: u64, sent_us: u128) -> Value {
    let ms = nextsync_core::time::Timestamp::now().as_millis();
    json!({"mutation_id": id, "collection": "notes", "id": id, "op": "upsert",
        "fields": {"sent_us": sent_us.to_string()}, "hlc": format!("{ms:015}-{:05}-bench", n % 100_000)})
}

async fn open(base_url: &str, session: &Session) -> Socket {
    let mut socket = nextsync_testkit::ws::connect(base_url).await;
    nextsync_testkit::ws::hello(&mut socket, session, None).await;
    socket
}

/// Waits for the `changes` frame carrying record `id`.
async fn wait_for(socket: &mut Socket, id: &str) -> anyhow::Result<()> {
    loop {
        let frame = nextsync_testkit::ws::recv(socket, Duration::from_secs(10))
            .await
            .ok_or_else(|| anyhow::anyhow!("no frame"))?;
        if frame["changes"]
            .as_array()
            .is_some_and(|c| c.iter().any(|r| r["id"] == id))
        {
            return Ok(());
        }
    }
}

/// Sequential push → socket deliveries, in ms: the whole trip and, within it, the push's
/// own HTTP round trip (the socket's frame is usually already waiting when the answer comes).
struct Latency {
    delivery: Vec<f64>,
    push: Vec<f64>,
}

impl Latency {
    fn p50_p99(samples: &mut [f64]) -> (f64, f64) {
        samples.sort_by(f64::total_cmp);
        (median(samples), samples[samples.len() * 99 / 100])
    }
}

async fn latency(
    writer: &Api,
    laptop: &Session,
    socket: &mut Socket,
    n: u64,
    tag: &str,
) -> anyhow::Result<Latency> {
    let mut measured = Latency {
        delivery: Vec::with_capacity(n as usize),
        push: Vec::with_capacity(n as usize),
    };
    for i in 0..n {
        let id = format!("{tag}-{i}");
        let start = Instant::now();
        let (status, _) = writer
            .post(
                "/v1/sync/push",
                laptop.token(),
                json!({"mutations": [note(&id, i, 0)]}),
            )
            .await;
        anyhow::ensure!(status.is_success(), "push failed");
        measured.push.push(start.elapsed().as_secs_f64() * 1e3);
        wait_for(socket, &id).await?;
        measured.delivery.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(measured)
}

/// Draft relay (a reply streaming in on one device, shown on another): `n` drafts of a
/// growing reply sent on `writer` at the pace a client streams them (every 55 ms, within the
/// per-socket rate), each timed until `reader` has it. In ms.
async fn draft_latency(writer: &mut Socket, reader: &mut Socket, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    let mut reply = String::new();
    for i in 0..n {
        let paced = Instant::now() + Duration::from_millis(55);
        if reply.len() < 4000 {
            reply.push_str("more words ");
        }
        let start = Instant::now();
        nextsync_testkit::ws::send(
            writer,
            json!({"type": "draft", "collection": "messages", "id": format!("d{i}"),
                "fields": {"session_id": "s1", "role": "assistant", "content": reply}}),
        )
        .await;
        let wanted = format!("d{i}");
        loop {
            let frame = nextsync_testkit::ws::recv(reader, Duration::from_secs(5))
                .await
                .ok_or_else(|| anyhow::anyhow!("draft {i} never arrived"))?;
            if frame["type"] == "draft" && frame["id"] == wanted.as_str() {
                break;
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1e3);
        tokio::time::sleep_until(paced.into()).await;
    }
    Ok(samples)
}

/// p50 and p99 in ms of `n` sequential authenticated `GET /v1/me` round trips: the floor
/// under a push's own round trip (HTTP, the token and revocation check, one store read).
async fn me_round_trips(api: &Api, session: &Session, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let (status, _) = api.get("/v1/me", session.token()).await;
        anyhow::ensure!(status.is_success(), "GET /v1/me failed");
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Latency::p50_p99(&mut samples))
}

/// What `crates/bench/node/relay.mjs` measured.
#[derive(Debug, serde::Deserialize)]
struct NodeRelay {
    n: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
}

/// The push → socket latency a client outside the Rust stack sees (issue 16: our own client
/// hid a 24 ms Nagle tail): Node's fetch pushes, the `ws` package reads.
fn node_relay(
    base_url: &str,
    writer: &Session,
    reader: &Session,
    count: usize,
    interval_ms: u64,
) -> anyhow::Result<NodeRelay> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node");
    anyhow::ensure!(
        dir.join("node_modules/ws").exists(),
        "npm ci --prefix crates/bench/node first"
    );
    let output = Command::new("node")
        .arg(dir.join("relay.mjs"))
        .args([base_url, &writer.access, &reader.access])
        .arg(count.to_string())
        .arg(interval_ms.to_string())
        .stderr(Stdio::inherit())
        .output()?;
    anyhow::ensure!(output.status.success(), "relay.mjs failed");
    Ok(serde_json::from_slice(&output.stdout)?)
}

pub async fn bench_realtime(
    sockets: usize,
    writes_per_sec: u64,
    seconds: u64,
    postgres: bool,
) -> anyhow::Result<()> {
    println!("### Live feed\n");
    let dir = tempfile::tempdir()?;
    let mut args: Vec<String> = vec![
        "--data-dir".into(),
        dir.path().display().to_string(),
        "--bind".into(),
        "127.0.0.1:0".into(),
        "--rate-limit-ip-burst".into(),
        "100000".into(),
        "--rate-limit-ip-per-minute".into(),
        "100000".into(),
    ];
    // With --postgres the single instance (and its load test) runs on PostgreSQL.
    let main_db = if postgres {
        TestDb::postgres_if_reachable().await.ok()
    } else {
        None
    };
    if let Some(db) = &main_db {
        args.extend([
            "--database-url".into(),
            db.database_url().unwrap_or_default().into(),
        ]);
    }
    let store_name = if main_db.is_some() { "PostgreSQL" } else { "SQLite" };
    let server = Server::spawn(&args)?;
    let api = server.api();
    let laptop = api.register("live@example.org").await;
    let phone = api.login("live@example.org", PASSWORD).await;
    let mut socket = open(&server.base_url, &phone).await;
    let (me50, me99) = me_round_trips(&api, &laptop, 1000).await?;
    let mut one = latency(&api, &laptop, &mut socket, 1000, "one").await?;
    let (push50, push99) = Latency::p50_p99(&mut one.push);
    let (p50, p99) = Latency::p50_p99(&mut one.delivery);
    println!("| what | p50 | p99 |");
    println!("| --- | ---: | ---: |");
    println!("| baseline: GET /v1/me round trip, 1,000 sequential | {me50:.2} ms | {me99:.2} ms |");
    println!(
        "| push round trip (answer received), one instance ({store_name}) | {push50:.2} ms | {push99:.2} ms |"
    );
    println!(
        "| push → other device's socket, one instance ({store_name}), 1,000 sequential writes | {p50:.2} ms | {p99:.2} ms |"
    );
    let mut writer = open(&server.base_url, &laptop).await;
    let mut drafts = draft_latency(&mut writer, &mut socket, 200).await?;
    let (d50, d99) = Latency::p50_p99(&mut drafts);
    println!(
        "| draft (a reply streaming in, up to 4 KB) → other device's socket, one instance, 200 drafts every 55 ms | {d50:.2} ms | {d99:.2} ms |"
    );
    drop(writer);
    match node_relay(&server.base_url, &laptop, &phone, 1000, 20) {
        Ok(node) => println!(
            "| push → other device's socket, one instance ({store_name}), Node client (fetch + `ws`), a write every 20 ms, {} writes | {:.2} ms (p90 {:.2}) | {:.2} ms |",
            node.n, node.p50_ms, node.p90_ms, node.p99_ms
        ),
        Err(e) => println!("| Node client | not run: {e} | |"),
    }

    match TestDb::postgres_if_reachable().await.ok() {
        Some(db) => {
            let secret = "realtime-bench-secret-0123456789abcdefghij".to_owned();
            let args = |d: &tempfile::TempDir| -> Vec<String> {
                vec![
                    "--data-dir".into(),
                    d.path().display().to_string(),
                    "--bind".into(),
                    "127.0.0.1:0".into(),
                    "--database-url".into(),
                    db.database_url().unwrap_or_default().into(),
                    "--jwt-secret".into(),
                    secret.clone(),
                    "--redis-url".into(),
                    std::env::var("NEXTSYNC_TEST_REDIS_URL")
                        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
                ]
            };
            let (da, dbb) = (tempfile::tempdir()?, tempfile::tempdir()?);
            let (a, b) = (Server::spawn(&args(&da))?, Server::spawn(&args(&dbb))?);
            let laptop = a.api().register("cross@example.org").await;
            let phone = b.api().login("cross@example.org", PASSWORD).await;
            let mut socket = open(&b.base_url, &phone).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let mut cross = latency(&a.api(), &laptop, &mut socket, 1000, "cross").await?;
            let (p50, p99) = Latency::p50_p99(&mut cross.delivery);
            println!(
                "| push on A → socket on B (PostgreSQL + Redis), 1,000 sequential writes | {p50:.2} ms | {p99:.2} ms |"
            );
            let mut writer = open(&a.base_url, &laptop).await;
            let mut drafts = draft_latency(&mut writer, &mut socket, 200).await?;
            let (d50, d99) = Latency::p50_p99(&mut drafts);
            println!(
                "| draft on A → socket on B (Redis), 200 drafts every 55 ms | {d50:.2} ms | {d99:.2} ms |"
            );
        }
        None => println!("| across two instances | skipped: no PostgreSQL | |"),
    }

    // Idle sockets: many users with ten sockets each (ten tabs or devices of one account
    // share its feed). Accounts are made eight at a time: each costs an Argon2 hash.
    let devices_per_user = 10;
    let users = sockets.div_ceil(devices_per_user);
    let before = server.rss_kib()?;
    let mut sessions: Vec<Session> = Vec::new();
    for chunk in (0..users).collect::<Vec<_>>().chunks(8) {
        let made = futures::future::join_all(chunk.iter().map(|u| {
            let api = api.clone();
            async move { api.register(&format!("idle{u}@example.org")).await }
        }))
        .await;
        sessions.extend(made);
    }
    let signed_up = server.rss_kib()?;
    // The Argon2 threads give their memory back after 5 s without work; the sockets' share
    // is measured from there (else the freed blocks hide it).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let registered = server.rss_kib()?;
    let received: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let epoch = Instant::now();
    let mut readers = Vec::new();
    for session in sessions
        .iter()
        .flat_map(|s| std::iter::repeat_n(s, devices_per_user))
        .take(sockets)
    {
        let mut socket = open(&server.base_url, session).await;
        let received = received.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = socket.next().await {
                if let Message::Text(text) = message {
                    // The generator shares the server's two cores: it finds the stamps in the
                    // frame's text instead of parsing 10,000 frames a second.
                    let now = epoch.elapsed().as_micros();
                    let latencies: Vec<f64> = sent_stamps(text.as_str())
                        .map(|sent| now.saturating_sub(sent) as f64 / 1e3)
                        .collect();
                    if !latencies.is_empty() {
                        received.lock().await.extend(latencies);
                    }
                } else if let Message::Ping(p) = message {
                    let _ = socket.send(Message::Pong(p)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let open_rss = server.rss_kib()?;
    let per_socket = (open_rss.saturating_sub(registered)) as f64 * 1024.0 / readers.len() as f64;
    println!(
        "| server memory per idle WebSocket ({} open; RSS {before} → {signed_up} KiB after sign-ups → {registered} KiB 7 s later → {open_rss} KiB) | {:.1} KB | |",
        readers.len(),
        per_socket / 1000.0
    );

    // Load: `writes_per_sec` single-record pushes spread over the users, each delivered to that
    // user's sockets; latency is stamped into the record and read at every socket.
    // Enough concurrent writers that one slow commit does not hold the rate back.
    let writers = 64u64;
    let per_writer = Duration::from_secs_f64(writers as f64 / writes_per_sec as f64);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (api, owners) = (api.clone(), sessions.clone());
        tasks.push(tokio::spawn(async move {
            let mut next = Instant::now();
            let mut n = 0u64;
            let mut sent = 0u64;
            while Instant::now() < deadline {
                let owner = &owners[((w + n * writers) as usize) % owners.len()];
                let id = format!("load-{w}-{n}");
                let body = json!({"mutations": [note(&id, n, epoch.elapsed().as_micros())]});
                let (status, _) = api.post("/v1/sync/push", owner.token(), body).await;
                if status.is_success() {
                    sent += 1;
                }
                n += 1;
                next += per_writer;
                tokio::time::sleep_until(next.into()).await;
            }
            sent
        }));
    }
    let mut writes = 0;
    for task in tasks {
        writes += task.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut samples = received.lock().await.clone();
    samples.sort_by(f64::total_cmp);
    let expected = writes * devices_per_user as u64;
    let (p50, p99) = if samples.is_empty() {
        (0.0, 0.0)
    } else {
        (median(&samples), samples[samples.len() * 99 / 100])
    };
    println!(
        "| delivery ({store_name}) with {} sockets open and {:.0} writes/s for {seconds} s ({writes} writes, {}/{expected} deliveries) | {p50:.2} ms | {p99:.2} ms |",
        readers.len(),
        writes as f64 / seconds as f64,
        samples.len()
    );
    for reader in readers {
        reader.abort();
    }
    Ok(())
}
