//! What sync health costs: keeping digests on the write path (the same binary, a user with
//! digests beside one without), reading them, and checking and repairing a replica through
//! the SDK, on SQLite.

use crate::sync::{message_fields, stamp};
use nextsync_client::{Client, Options};
use nextsync_core::api::Secret;
use nextsync_core::ids::UserId;
use nextsync_core::push::{Mutation, RecordKey};
use nextsync_core::sync::Op;
use nextsync_core::time::Timestamp;
use nextsync_testkit::{Api, PASSWORD, TestDb, TestServer};
use std::time::{Duration, Instant};

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn messages(from: usize, count: usize, n: &mut u64) -> Vec<Mutation> {
    (from..from + count)
        .map(|i| {
            *n += 1;
            let fields = message_fields(i / 20, i % 20);
            Mutation {
                mutation_id: format!("h-{n}"),
                key: RecordKey {
                    collection: "messages".into(),
                    id: format!("m{i:07}"),
                },
                op: Op::Upsert(fields.as_object().cloned().unwrap_or_default()),
                hlc: Some(stamp(*n).parse().expect("stamp")),
                base_seq: None,
                precondition: None,
            }
        })
        .collect()
}

/// Records/s of `rounds` interleaved runs of batches of `size` for two users.
async fn apply_rates(
    server: &TestServer,
    users: [UserId; 2],
    size: usize,
    rounds: usize,
    n: &mut u64,
    next: &mut [usize; 2],
) -> anyhow::Result<[f64; 2]> {
    let mut rates = [Vec::new(), Vec::new()];
    for _ in 0..rounds {
        for (u, user) in users.iter().enumerate() {
            let start = Instant::now();
            let mut written = 0;
            while start.elapsed() < Duration::from_millis(1500) {
                let batch = messages(next[u], size, n);
                next[u] += size;
                server
                    .state
                    .store
                    .apply(*user, batch, Timestamp::now(), None)
                    .await?;
                written += size;
            }
            rates[u].push(written as f64 / start.elapsed().as_secs_f64());
        }
    }
    Ok([median(&mut rates[0]), median(&mut rates[1])])
}

pub async fn bench_health(records: usize) -> anyhow::Result<()> {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let plain = api.register("plain@example.org").await;
    let kept = api.register("kept@example.org").await;
    let users: [UserId; 2] = [plain.user_id.parse()?, kept.user_id.parse()?];
    let mut n = 0u64;
    let mut next = [0usize; 2];
    // The second user has digests from the start: every apply keeps them.
    server.state.store.digests(users[1]).await?;
    println!("| writes (SQLite store, same binary) | without digests | with digests | ratio |");
    println!("| --- | ---: | ---: | ---: |");
    for size in [1, 100, 1000] {
        let [without, with] = apply_rates(&server, users, size, 5, &mut n, &mut next).await?;
        println!(
            "| {size} per apply, median of 5 × 1.5 s | {without:.0} records/s | {with:.0} records/s | {:.2} |",
            with / without
        );
    }

    // A replica of `records` messages.
    let owner = api.register("health@example.org").await;
    let user: UserId = owner.user_id.parse()?;
    for from in (0..records).step_by(1000) {
        let batch = messages(from, 1000.min(records - from), &mut n);
        server
            .state
            .store
            .apply(user, batch, Timestamp::now(), None)
            .await?;
    }
    let first = Instant::now();
    server.state.store.digests(user).await?;
    let computed = first.elapsed().as_secs_f64() * 1e3;
    let mut reads = Vec::new();
    for _ in 0..50 {
        let start = Instant::now();
        let (status, _) = api.get("/v1/sync/digest", owner.token()).await;
        anyhow::ensure!(status.is_success(), "digest read failed");
        reads.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let dir = tempfile::tempdir()?;
    let options = Options {
        verify_every: None,
        ..Options::default()
    };
    let client = Client::open(&dir.path().join("replica.sqlite3"), options)?;
    client
        .login(&server.base_url, "health@example.org", Secret::new(PASSWORD))
        .await?;
    client.sync().await?;
    let mut checks = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let health = client.verify(false).await?;
        anyhow::ensure!(health.ok, "a fresh replica must match");
        checks.push(start.elapsed().as_secs_f64() * 1e3);
    }
    // Damage 1 % of the replica's copy of the server state, then repair.
    let damaged = records / 100;
    {
        let conn = rusqlite::Connection::open(dir.path().join("replica.sqlite3"))?;
        conn.execute(
            "DELETE FROM base WHERE id IN (SELECT id FROM base ORDER BY id LIMIT ?1)",
            [damaged as i64],
        )?;
    }
    let start = Instant::now();
    let repaired = client.verify(true).await?;
    let repair_ms = start.elapsed().as_secs_f64() * 1e3;
    anyhow::ensure!(repaired.ok, "the repair must leave the replica matching");
    println!();
    println!("| sync health, {records} messages on one account | time |");
    println!("| --- | ---: |");
    println!("| first digest read (computes them from every record) | {computed:.1} ms |");
    println!(
        "| `GET /v1/sync/digest` afterwards, median of 50 | {:.2} ms |",
        median(&mut reads)
    );
    println!(
        "| SDK `verify()` of a matching replica (pull check, digest read, local digests), median of 5 | {:.1} ms |",
        median(&mut checks)
    );
    println!(
        "| SDK `verify(repair)` with {damaged} records missing from the replica: {} repaired | {repair_ms:.1} ms |",
        repaired.repaired.len()
    );
    Ok(())
}
