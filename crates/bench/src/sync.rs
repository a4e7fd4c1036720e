//! `nextsync-bench sync`: push and pull throughput on SQLite and PostgreSQL, and the bytes on
//! the wire for syncing one new message, beside NextChat's whole-state sync.

use crate::median;
use nextsync_testkit::{Api, Backend, Session, TestDb, TestServer};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER_TURN: usize = 300;
const ASSISTANT_TURN: usize = 1500;

fn text(len: usize, seed: usize) -> String {
    let words = [
        "sync",
        "device",
        "conversation",
        "message",
        "merge",
        "laptop",
        "phone",
        "clock",
    ];
    let mut out = String::with_capacity(len + 16);
    let mut i = seed;
    while out.len() < len {
        out.push_str(words[i % words.len()]);
        out.push(' ');
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    out.truncate(len);
    out
}

pub(crate) fn stamp(n: u64) -> String {
    let ms = nextsync_core::time::Timestamp::now().as_millis() as u64;
    format!("{ms:015}-{:05}-bench", n % 100_000)
}

/// A NextChat-sized message record (one user or assistant turn).
pub(crate) fn message_fields(session: usize, position: usize) -> Value {
    let user = position.is_multiple_of(2);
    json!({
        "session_id": format!("session-{session:05}"),
        "position": position,
        "role": if user { "user" } else { "assistant" },
        "content": text(if user { USER_TURN } else { ASSISTANT_TURN }, session * 100 + position),
        "date": "11/26/2026, 8:31:28 PM",
        "model": if user { Value::Null } else { json!("gpt-4o-mini") },
    })
}

fn session_fields(session: usize) -> Value {
    json!({
        "topic": format!("Conversation {session}"),
        "memoryPrompt": "",
        "lastUpdate": 1_795_725_088_000u64 + session as u64,
        "stat": {"tokenCount": 0, "wordCount": 0, "charCount": 0},
        "lastSummarizeIndex": 0,
        "mask": {"id": "default", "avatar": "gpt-bot", "name": "New Conversation", "context": [], "syncGlobalConfig": true,
            "modelConfig": {"model": "gpt-4o-mini", "providerName": "OpenAI", "temperature": 0.5, "top_p": 1, "max_tokens": 4000,
                "presence_penalty": 0, "frequency_penalty": 0, "sendMemory": true, "historyMessageCount": 4,
                "compressMessageLengthThreshold": 1000, "compressModel": "", "compressProviderName": "",
                "enableInjectSystemPrompts": true, "template": "{{input}}", "size": "1024x1024", "quality": "standard", "style": "vivid"},
            "lang": "en", "builtin": false, "plugin": [], "enableArtifacts": true, "enableCodeFold": true},
    })
}

fn mutation(collection: &str, id: &str, n: u64, fields: Value) -> Value {
    json!({"mutation_id": format!("bench-{id}-{n}"), "collection": collection, "id": id, "op": "upsert", "fields": fields, "hlc": stamp(n)})
}

/// NextChat's synced state (NEXTCHAT.md §4) for `sessions` × `messages`, as its client
/// serialises it: the whole thing travels on every sync.
pub fn nextchat_state(sessions: usize, messages: usize) -> Value {
    let sessions: Vec<Value> = (0..sessions)
        .map(|s| {
            let mut session = session_fields(s);
            session["id"] = json!(format!("session-{s:05}"));
            session["messages"] = Value::Array(
                (0..messages)
                    .map(|p| {
                        let mut m = message_fields(s, p);
                        let o = m.as_object_mut().expect("object");
                        o.remove("session_id");
                        o.remove("position");
                        o.insert("id".into(), json!(format!("msg-{s:05}-{p:03}")));
                        o.insert("streaming".into(), json!(false));
                        m
                    })
                    .collect(),
            );
            session
        })
        .collect();
    // The fixed part is ~30 KB, mostly app-config.models (164 entries).
    let models: Vec<Value> = (0..164)
        .map(|i| {
            json!({"name": format!("model-{i}"), "available": true, "sorted": i,
            "provider": {"id": "openai", "providerName": "OpenAI", "providerType": "openai", "sorted": 1}})
        })
        .collect();
    json!({
        "chat-next-web-store": {"sessions": sessions, "currentSessionIndex": 0, "lastInput": "", "lastUpdateTime": 0, "_hasHydrated": true},
        "access-control": {"provider": "OpenAI", "useCustomConfig": false, "openaiUrl": "/api/openai", "lastUpdateTime": 0, "_hasHydrated": true},
        "app-config": {"models": models, "theme": "auto", "fontSize": 14, "lastUpdateTime": 0, "_hasHydrated": true},
        "mask-store": {"masks": {}, "lastUpdateTime": 0, "_hasHydrated": true},
        "prompt-store": {"counter": 0, "prompts": {}, "lastUpdateTime": 0, "_hasHydrated": true},
    })
}

async fn push(api: &Api, session: &Session, mutations: Vec<Value>) -> anyhow::Result<()> {
    let (status, body) = api
        .post(
            "/v1/sync/push",
            session.token(),
            json!({ "mutations": mutations }),
        )
        .await;
    anyhow::ensure!(status.is_success(), "push failed: {status} {body}");
    Ok(())
}

/// Records per second of sequential pushes of `size` new records for `duration`. Only the
/// requests count (sent → answer read and checked): each body is built and serialized before
/// its request starts, as a client's batch is ready before it syncs, so the figure is the
/// server's and not this generator's, which shares the machine's cores.
async fn push_rate(
    api: &Api,
    session: &Session,
    size: usize,
    duration: Duration,
    counter: &mut u64,
) -> anyhow::Result<f64> {
    let url = format!("{}/v1/sync/push", api.base_url);
    let token = session.token().unwrap_or_default();
    let start = Instant::now();
    let mut in_requests = Duration::ZERO;
    let mut written = 0usize;
    while start.elapsed() < duration {
        let batch: Vec<Value> = (0..size)
            .map(|_| {
                *counter += 1;
                let n = *counter;
                mutation(
                    "messages",
                    &format!("m{n}"),
                    n,
                    message_fields((n / 20) as usize, (n % 20) as usize),
                )
            })
            .collect();
        let body = serde_json::to_vec(&json!({ "mutations": batch }))?;
        let sending = Instant::now();
        let response = api
            .http
            .post(&url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let answer: Value = serde_json::from_slice(&response.bytes().await?)?;
        anyhow::ensure!(status.is_success(), "push failed: {status} {answer}");
        anyhow::ensure!(
            answer["results"].as_array().map(Vec::len) == Some(size),
            "push answered {answer}"
        );
        in_requests += sending.elapsed();
        written += size;
    }
    Ok(written as f64 / in_requests.as_secs_f64())
}

/// Records per second of `SyncStore::apply` alone (no HTTP, no JSON): batches of `size`.
async fn store_rate(
    server: &TestServer,
    session: &Session,
    size: usize,
    duration: Duration,
    counter: &mut u64,
) -> anyhow::Result<f64> {
    use nextsync_core::push::{Mutation, RecordKey};
    use nextsync_core::sync::Op;
    let user: nextsync_core::ids::UserId = session.user_id.parse()?;
    let start = Instant::now();
    let mut in_store = Duration::ZERO;
    let mut written = 0usize;
    while start.elapsed() < duration {
        let batch: Vec<Mutation> = (0..size)
            .map(|_| {
                *counter += 1;
                let n = *counter;
                let fields = message_fields((n / 20) as usize, (n % 20) as usize);
                Mutation {
                    mutation_id: format!("store-{n}"),
                    key: RecordKey {
                        collection: "messages".into(),
                        id: format!("s{n}"),
                    },
                    op: Op::Upsert(fields.as_object().cloned().unwrap_or_default()),
                    hlc: Some(stamp(n).parse().expect("stamp")),
                    base_seq: None,
                    precondition: None,
                }
            })
            .collect();
        // Only the store's time counts: building the batch is the caller's work.
        let applying = Instant::now();
        server
            .state
            .store
            .apply(user, batch, nextsync_core::time::Timestamp::now(), None)
            .await?;
        in_store += applying.elapsed();
        written += size;
    }
    Ok(written as f64 / in_store.as_secs_f64())
}

/// Records per second (wall clock, batch building included) of `users` accounts each applying
/// batches of `size` through `SyncStore::apply` at the same time: commits of different users
/// overlap, as they do on a server with many users.
async fn store_rate_concurrent(
    server: &TestServer,
    users: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    use nextsync_core::push::{Mutation, RecordKey};
    use nextsync_core::sync::Op;
    let api = Api::new(server);
    let mut ids = Vec::new();
    for u in 0..users {
        let session = api
            .register(&format!(
                "concurrent{u}-{}@example.org",
                stamp(0).replace('-', "")
            ))
            .await;
        ids.push(session.user_id.parse::<nextsync_core::ids::UserId>()?);
    }
    let start = Instant::now();
    let tasks: Vec<_> = ids
        .into_iter()
        .enumerate()
        .map(|(u, user)| {
            let store = server.state.store.clone();
            tokio::spawn(async move {
                let mut written = 0usize;
                let mut n = 0u64;
                while start.elapsed() < duration {
                    let batch: Vec<Mutation> = (0..size)
                        .map(|_| {
                            n += 1;
                            Mutation {
                                mutation_id: format!("c{u}-{n}"),
                                key: RecordKey {
                                    collection: "messages".into(),
                                    id: format!("c{n}"),
                                },
                                op: Op::Upsert(
                                    message_fields((n / 20) as usize, (n % 20) as usize)
                                        .as_object()
                                        .cloned()
                                        .unwrap_or_default(),
                                ),
                                hlc: Some(stamp(n).parse().expect("stamp")),
                                base_seq: None,
                                precondition: None,
                            }
                        })
                        .collect();
                    store
                        .apply(user, batch, nextsync_core::time::Timestamp::now(), None)
                        .await?;
                    written += size;
                }
                anyhow::Ok(written)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Records per second of pulling the whole feed in pages of 1000.
async fn pull_rate(api: &Api, session: &Session) -> anyhow::Result<(f64, usize)> {
    let start = Instant::now();
    let mut cursor: Option<String> = None;
    let mut total = 0usize;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/sync/pull?limit=1000&since={c}"),
            None => "/v1/sync/pull?limit=1000".to_owned(),
        };
        let (status, body) = api.get(&path, session.token()).await;
        anyhow::ensure!(status.is_success(), "pull failed: {status}");
        total += body["changes"].as_array().map_or(0, Vec::len);
        cursor = body["cursor"].as_str().map(str::to_owned);
        if body["has_more"] != true {
            return Ok((total as f64 / start.elapsed().as_secs_f64(), total));
        }
    }
}

pub async fn bench_sync(duration: Duration, rounds: usize) -> anyhow::Result<()> {
    println!("### Push and pull throughput\n");
    println!(
        "Sequential pushes of new message-sized records (~{USER_TURN}–{ASSISTANT_TURN} B of text each) by one client, \
         {rounds} interleaved rounds × {}s per batch size; medians in records/s.\n",
        duration.as_secs()
    );
    println!(
        "| store | 1 / push | 100 / push | 1000 / push | store only, 1000 / apply | store only, 4 users at once | pull (pages of 1000) |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = match backend {
            Backend::Sqlite => TestDb::sqlite(),
            Backend::Postgres => match TestDb::postgres_if_reachable().await {
                Ok(db) => db,
                Err(_) => {
                    println!("| postgres | skipped: no PostgreSQL | | | | | |");
                    continue;
                }
            },
        };
        let server = TestServer::start(db.config()).await;
        let api = Api::new(&server);
        let session = api.register("bench@example.org").await;
        let mut counter = 0u64;
        let sizes = [1usize, 100, 1000];
        let mut rates = vec![Vec::new(); sizes.len()];
        let mut pulls = Vec::new();
        let mut store_only = Vec::new();
        let mut concurrent = Vec::new();
        for round in 0..rounds {
            for (i, size) in sizes.iter().enumerate() {
                rates[i].push(push_rate(&api, &session, *size, duration, &mut counter).await?);
            }
            store_only.push(store_rate(&server, &session, 1000, duration, &mut counter).await?);
            concurrent.push(store_rate_concurrent(&server, 4, 1000, duration).await?);
            let (rate, total) = pull_rate(&api, &session).await?;
            pulls.push(rate);
            eprintln!(
                "{backend:?}: round {}/{rounds} done ({total} records in the feed)",
                round + 1
            );
        }
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            match backend {
                Backend::Sqlite => "SQLite (WAL, synchronous=FULL)",
                Backend::Postgres => "PostgreSQL 15 (local, fsync on)",
            },
            median(&rates[0]),
            median(&rates[1]),
            median(&rates[2]),
            median(&store_only),
            median(&concurrent),
            median(&pulls)
        );
    }
    wire_bytes().await
}

/// Bytes both ways through a counting TCP proxy for: device A pushes one new message, device B
/// pulls it, in a 200 × 20 history. Beside it, NextChat's whole-state sync of the same history.
async fn wire_bytes() -> anyhow::Result<()> {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let laptop = api.register("wire@example.org").await;
    let phone = api.login("wire@example.org", nextsync_testkit::PASSWORD).await;
    let mut n = 0u64;
    for chunk in 0..20 {
        let mut batch = Vec::new();
        for s in chunk * 10..(chunk + 1) * 10 {
            n += 1;
            batch.push(mutation(
                "sessions",
                &format!("session-{s:05}"),
                n,
                session_fields(s),
            ));
            for p in 0..20 {
                n += 1;
                batch.push(mutation(
                    "messages",
                    &format!("msg-{s:05}-{p:03}"),
                    n,
                    message_fields(s, p),
                ));
            }
        }
        push(&api, &laptop, batch).await?;
    }
    let (_, cursor) = {
        let mut cursor = String::new();
        loop {
            let path = if cursor.is_empty() {
                "/v1/sync/pull?limit=1000".to_owned()
            } else {
                format!("/v1/sync/pull?limit=1000&since={cursor}")
            };
            let (_, body) = api.get(&path, phone.token()).await;
            cursor = body["cursor"].as_str().unwrap_or_default().to_owned();
            if body["has_more"] != true {
                break ((), cursor);
            }
        }
    };

    let (proxy, up, down) = counting_proxy(server.addr).await?;
    let counted = Api {
        http: nextsync_testkit::client(),
        base_url: format!("http://{proxy}"),
    };
    let new_message = mutation("messages", "msg-00007-020", n + 1, message_fields(7, 20));
    push(&counted, &laptop, vec![new_message]).await?;
    let push_bytes = (up.swap(0, Ordering::SeqCst), down.swap(0, Ordering::SeqCst));
    let (status, body) = counted
        .get(&format!("/v1/sync/pull?since={cursor}"), phone.token())
        .await;
    anyhow::ensure!(
        status.is_success() && body["changes"].as_array().map_or(0, Vec::len) == 1,
        "pull: {body}"
    );
    let pull_bytes = (up.load(Ordering::SeqCst), down.load(Ordering::SeqCst));

    let state = serde_json::to_vec(&nextchat_state(200, 20))?;
    let whole = state.len() as u64;
    let ours = push_bytes.0 + push_bytes.1 + pull_bytes.0 + pull_bytes.1;
    println!("\n### Syncing one new message into 200 conversations × 20 messages\n");
    println!(
        "Counted by a TCP proxy in front of the server: HTTP/1.1 request and response bytes, headers included.\n"
    );
    println!("| what | bytes on the wire |");
    println!("| --- | ---: |");
    println!(
        "| nextsync: device A pushes the message (request {} + response {}) | {} |",
        push_bytes.0,
        push_bytes.1,
        push_bytes.0 + push_bytes.1
    );
    println!(
        "| nextsync: device B pulls it (request {} + response {}) | {} |",
        pull_bytes.0,
        pull_bytes.1,
        pull_bytes.0 + pull_bytes.1
    );
    println!("| nextsync: both devices, total | {ours} |");
    println!(
        "| NextChat whole-state sync: state of {whole} B, downloaded twice and uploaded once (bodies only) | {} |",
        whole * 3
    );
    println!(
        "\nnextsync moves {:.0}× fewer bytes for this change.",
        (whole * 3) as f64 / ours as f64
    );
    Ok(())
}

/// A loopback TCP proxy to `target` counting bytes client→server (`up`) and back (`down`).
async fn counting_proxy(target: SocketAddr) -> anyhow::Result<(SocketAddr, Arc<AtomicU64>, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (up2, down2) = (up.clone(), down.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (mut client_r, mut client_w) = client.into_split();
            let (mut server_r, mut server_w) = server.into_split();
            let (up, down) = (up2.clone(), down2.clone());
            tokio::spawn(async move { pipe(&mut client_r, &mut server_w, &up).await });
            tokio::spawn(async move { pipe(&mut server_r, &mut client_w, &down).await });
        }
    });
    Ok((addr, up, down))
}

async fn pipe(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown().await;
}

/// Only `SyncStore::apply` with batches of `size`, for profiling.
pub async fn bench_store(postgres: bool, size: usize, duration: Duration) -> anyhow::Result<()> {
    let db = if postgres {
        TestDb::postgres_if_reachable()
            .await
            .map_err(|e| anyhow::anyhow!(e))?
    } else {
        TestDb::sqlite()
    };
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let session = api.register("store@example.org").await;
    let mut counter = 0;
    let rate = store_rate(&server, &session, size, duration, &mut counter).await?;
    println!(
        "{} store only, {size} / apply: {rate:.0} records/s",
        if postgres { "PostgreSQL" } else { "SQLite" }
    );
    Ok(())
}
