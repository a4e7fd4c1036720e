//! What record history (the trash and point-in-time restore) costs: bytes on disk per write
//! and the store's apply rate, on SQLite, for NextChat-sized messages created, edited and
//! deleted.
//!
//! The bytes are measured, not estimated: after each phase the database is copied
//! (`VACUUM INTO`), the copy's history is deleted and vacuumed again, and the difference of
//! the two files is what the history holds on disk (rows and their indexes).

use crate::sync::{message_fields, stamp};
use nextsync_core::ids::UserId;
use nextsync_core::push::{Mutation, RecordKey};
use nextsync_core::sync::Op;
use nextsync_core::time::Timestamp;
use nextsync_testkit::{Api, TestDb, TestServer};
use serde_json::{Map, Value};
use sqlx::Connection as _;
use std::path::Path;
use std::time::{Duration, Instant};

const BATCH: usize = 100;

pub async fn bench_history(records: usize, edits: usize) -> anyhow::Result<()> {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let session = Api::new(&server).register("history@example.org").await;
    let user: UserId = session.user_id.parse()?;
    let path = db.config().sqlite_path();
    let mut n = 0u64;
    let key = |i: usize| RecordKey {
        collection: "messages".into(),
        id: format!("m{i:06}"),
    };
    let mut write = |i: usize, op: Op| {
        n += 1;
        Mutation {
            mutation_id: format!("h-{n}"),
            key: key(i),
            op,
            hlc: Some(stamp(n).parse().expect("stamp")),
            base_seq: None,
            precondition: None,
        }
    };

    println!("{records} messages (~1 KB each), {edits} edits of each, then every one deleted; SQLite");
    let mut writes = 0usize;

    // Creates.
    let creates: Vec<Vec<Mutation>> = (0..records)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&i| {
                    let fields = message_fields(i / 20, i % 20);
                    write(i, Op::Upsert(fields.as_object().cloned().unwrap_or_default()))
                })
                .collect()
        })
        .collect();
    let mut report = Vec::new();
    report.push(("create", apply_all(&server, user, creates).await?));
    // Edits: the content grows by a sentence each time (a reply rewritten, a typo fixed).
    for round in 0..edits {
        let batches: Vec<Vec<Mutation>> = (0..records)
            .collect::<Vec<_>>()
            .chunks(BATCH)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|&i| {
                        let mut fields = Map::new();
                        let base = message_fields(i / 20, i % 20)["content"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned();
                        let more = " And one more sentence, edited later.".repeat(round + 1);
                        fields.insert("content".into(), Value::String(base + &more));
                        write(i, Op::Upsert(fields))
                    })
                    .collect()
            })
            .collect();
        report.push(("edit", apply_all(&server, user, batches).await?));
    }
    let deletes: Vec<Vec<Mutation>> = (0..records)
        .collect::<Vec<_>>()
        .chunks(BATCH)
        .map(|chunk| chunk.iter().map(|&i| write(i, Op::Delete)).collect())
        .collect();
    report.push(("delete", apply_all(&server, user, deletes).await?));

    // The history's whole footprint from one copy; each kind's share from its rows.
    let sizes = measure(&path).await?;
    for (name, (count, elapsed)) in &report {
        writes += count;
        let rate = *count as f64 / elapsed.as_secs_f64();
        println!("{name:<7} {count:>7} writes, apply (batches of {BATCH}) {rate:>8.0} records/s");
    }
    println!(
        "history on disk: {} bytes for {writes} writes = {:.0} B per write; by kind (rows only): \
         create {:.0} B, edit {:.0} B, delete {:.0} B",
        sizes.history,
        sizes.history as f64 / writes as f64,
        sizes.per_kind[0],
        sizes.per_kind[1],
        sizes.per_kind[2],
    );
    println!(
        "records alone: {} bytes for {records} records = {:.0} B per record (the trash's copy of a \
         deleted record is its last visible values)",
        sizes.without_history,
        sizes.without_history as f64 / records as f64
    );
    Ok(())
}

async fn apply_all(
    server: &TestServer,
    user: UserId,
    batches: Vec<Vec<Mutation>>,
) -> anyhow::Result<(usize, Duration)> {
    let mut count = 0;
    let mut elapsed = Duration::ZERO;
    for batch in batches {
        count += batch.len();
        let start = Instant::now();
        server
            .state
            .store
            .apply(user, batch, Timestamp::now(), None)
            .await?;
        elapsed += start.elapsed();
    }
    Ok((count, elapsed))
}

struct Sizes {
    history: u64,
    without_history: u64,
    /// Mean stored bytes of a history row (its columns) per kind: create, edit, delete.
    per_kind: [f64; 3],
}

async fn measure(path: &Path) -> anyhow::Result<Sizes> {
    let dir = tempfile::tempdir()?;
    let copy = dir.path().join("copy.db");
    let url = format!("sqlite://{}", path.display());
    let mut source = sqlx::SqliteConnection::connect(&url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("VACUUM INTO '{}'", copy.display())))
        .execute(&mut source)
        .await?;
    let mut per_kind = [0.0; 3];
    for (kind, slot) in per_kind.iter_mut().enumerate() {
        let mean: Option<f64> = sqlx::query_scalar(
            "SELECT avg(length(collection) + length(record_id) + length(undo) + 8 * 5 + 16) \
             FROM record_history WHERE kind = $1",
        )
        .bind(kind as i64)
        .fetch_one(&mut source)
        .await?;
        *slot = mean.unwrap_or(0.0);
    }
    source.close().await?;
    let with_history = std::fs::metadata(&copy)?.len();
    let mut copied = sqlx::SqliteConnection::connect(&format!("sqlite://{}", copy.display())).await?;
    sqlx::query("DELETE FROM record_history")
        .execute(&mut copied)
        .await?;
    sqlx::query("VACUUM").execute(&mut copied).await?;
    copied.close().await?;
    let without_history = std::fs::metadata(&copy)?.len();
    Ok(Sizes {
        history: with_history.saturating_sub(without_history),
        without_history,
        per_kind,
    })
}
