//! The SQLite apply writer: one OS thread owns a rusqlite connection and group-commits every
//! apply (see the parent module's doc for group commit).
//!
//! Why not sqlx here: sqlx runs each SQLite statement on its connection's worker thread, so an
//! apply's ten statements were ten round trips between threads (57 context switches for a
//! one-record apply, measured), and on this VM those cost more than the commit's fsync. Here a
//! whole group runs on one thread: the callers' jobs come in over a channel and their answers
//! go back after the commit, two hops per apply whatever it holds.
//!
//! The thread borrows the sqlx writer pool's one connection for each group, so the group and
//! the store's other writes (accounts, NextChat uploads) take turns in the pool's queue
//! instead of racing for SQLite's write lock, where the losing side would sleep and retry.
//! Another process writing the same file (`nextsync admin`) is met by the busy timeout.

use crate::StoreError;
use crate::sync::{Applied, ApplyError, Conflict, PlanWrites, SyncTx, encode_side, run_apply};
use crate::sync::{INSERT_CONFLICT, MARK_RESOLVED, SELECT_HEAD, SELECT_RECORD, SET_HEAD, SQLITE_MOVE_DIGEST};
use async_trait::async_trait;
use nextsync_core::ids::{ConflictId, Seq, UserId};
use nextsync_core::push::{Mutation, RecordKey};
use nextsync_core::sync::StoredRecord;
use nextsync_core::time::Timestamp;
use rusqlite::{Connection, OpenFlags, OptionalExtension as _, named_params, params};
use sqlx::SqlitePool;
use std::collections::HashMap;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Most applies one group commit takes.
const GROUP_MAX: usize = 64;

pub(super) struct ApplyJob {
    pub(super) user: UserId,
    pub(super) mutations: Vec<Mutation>,
    pub(super) now: Timestamp,
    pub(super) resolves: Option<ConflictId>,
    pub(super) done: oneshot::Sender<Result<Applied, ApplyError>>,
}

impl std::fmt::Debug for ApplyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApplyJob")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Opens the writer's connection (after migrations) and starts its thread; the thread ends
/// when the last sender of `queue` is dropped.
pub(super) fn spawn(
    path: &Path,
    gate: SqlitePool,
    queue: mpsc::Receiver<ApplyJob>,
) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // The same settings as the sqlx connections (journal_mode and page_size live in the file).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "cache_size", -65536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("sqlite-writer".into())
        .spawn(move || group_commits(conn, &runtime, &gate, queue))
        .map_err(|e| StoreError::Unavailable(e.into()))?;
    Ok(())
}

fn group_commits(
    mut conn: Connection,
    runtime: &tokio::runtime::Handle,
    gate: &SqlitePool,
    mut queue: mpsc::Receiver<ApplyJob>,
) {
    // Returning the borrowed pool connection spawns a task: that needs the runtime's context.
    let _context = runtime.enter();
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let turn = match runtime.block_on(gate.acquire()) {
            Ok(turn) => turn,
            Err(e) => {
                fail_all(group.into_iter().map(|job| job.done), &e.to_string());
                continue;
            }
        };
        // A panic in one group (a bug) fails its applies (their answers are dropped), not
        // every later one.
        let committed =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit_group(&mut conn, group)));
        if committed.is_err() {
            tracing::error!("a group commit panicked; its applies failed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
        drop(turn);
    }
}

fn commit_group(conn: &mut Connection, group: Vec<ApplyJob>) {
    // IMMEDIATE: the write lock from the first statement, so a read lock never has to be
    // upgraded half-way (another process may be writing the same file).
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        return fail_all(group.into_iter().map(|job| job.done), &e.to_string());
    }
    let mut answers = Vec::with_capacity(group.len());
    for job in group {
        let result = match conn.execute_batch("SAVEPOINT apply") {
            Ok(()) => finish(run_apply(
                &mut WriterTx(conn),
                job.user,
                job.mutations,
                job.now,
                job.resolves,
            )),
            Err(e) => Err(StoreError::from(e).into()),
        };
        let end = if result.is_ok() {
            "RELEASE apply"
        } else {
            "ROLLBACK TO apply; RELEASE apply"
        };
        answers.push((job.done, result));
        if let Err(e) = conn.execute_batch(end) {
            // The transaction is unusable: nothing of the group is committed.
            let _ = conn.execute_batch("ROLLBACK");
            return fail_all(answers.into_iter().map(|(done, _)| done), &e.to_string());
        }
    }
    match conn.execute_batch("COMMIT") {
        // Answered only now: an acknowledged apply is on disk.
        Ok(()) => {
            for (done, result) in answers {
                let _ = done.send(result);
            }
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            fail_all(answers.into_iter().map(|(done, _)| done), &e.to_string());
        }
    }
}

/// Answers every apply of a group that did not commit: nothing of it was written, so the
/// callers may retry (their mutation ids make a retry safe), hence "unavailable".
fn fail_all(waiting: impl Iterator<Item = oneshot::Sender<Result<Applied, ApplyError>>>, cause: &str) {
    let message = format!("group commit failed: {cause}");
    for done in waiting {
        let error = StoreError::Unavailable(message.clone().into());
        let _ = done.send(Err(error.into()));
    }
}

/// Runs a future whose steps never wait (every [`WriterTx`] step is a synchronous SQLite
/// call) to its end on this thread.
fn finish<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("a rusqlite step never waits"),
    }
}

/// The apply steps on the writer's connection, inside the group's transaction. Statements
/// are prepared once and kept (`prepare_cached`); batches are bound row by row, which costs
/// SQLite no parsing and no thread hop.
struct WriterTx<'a>(&'a mut Connection);

const SEEN_MUTATION: &str = "SELECT seq FROM applied_mutations WHERE user_id = ?1 AND mutation_id = ?2";
const UPSERT_RECORD: &str = "INSERT INTO records \
     (user_id, collection, record_id, fields, tombstone, tombstone_seq, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
     ON CONFLICT (user_id, collection, record_id) DO UPDATE SET fields = excluded.fields, \
     tombstone = excluded.tombstone, tombstone_seq = excluded.tombstone_seq, seq = excluded.seq";
const INSERT_HISTORY: &str = "INSERT INTO record_history \
     (user_id, collection, record_id, seq, batch, at, kind, undo) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (user_id, collection, record_id, seq) DO UPDATE SET \
     batch = excluded.batch, at = excluded.at, kind = excluded.kind, undo = excluded.undo";
const REMEMBER_MUTATION: &str =
    "INSERT INTO applied_mutations (user_id, mutation_id, seq, created_at) VALUES (?1, ?2, ?3, ?4)";

fn seq_of(value: i64) -> Seq {
    Seq(value as u64)
}

#[async_trait]
impl SyncTx for WriterTx<'_> {
    async fn lock_head(&mut self, user: UserId) -> Result<(Seq, String), StoreError> {
        // BEGIN IMMEDIATE already holds the database's write lock.
        self.0
            .prepare_cached(SELECT_HEAD)?
            .query_row(named_params! {"$1": user.as_uuid().as_bytes()}, |row| {
                Ok((seq_of(row.get(0)?), row.get(1)?))
            })
            .optional()?
            .ok_or_else(|| StoreError::Corrupt(format!("user {user} has no feed head")))
    }

    async fn seen_mutations(
        &mut self,
        user: UserId,
        ids: &[&str],
    ) -> Result<HashMap<String, Seq>, StoreError> {
        let mut seen = HashMap::new();
        let mut probe = self.0.prepare_cached(SEEN_MUTATION)?;
        for id in ids {
            let seq = probe
                .query_row(params![user.as_uuid().as_bytes(), id], |row| row.get(0))
                .optional()?;
            if let Some(seq) = seq {
                seen.insert((*id).to_owned(), seq_of(seq));
            }
        }
        Ok(seen)
    }

    async fn load_records(
        &mut self,
        user: UserId,
        keys: &[&RecordKey],
    ) -> Result<HashMap<RecordKey, StoredRecord>, StoreError> {
        let mut records = HashMap::with_capacity(keys.len());
        let mut probe = self.0.prepare_cached(SELECT_RECORD)?;
        for key in keys {
            let row = probe
                .query_row(
                    named_params! {"$1": user.as_uuid().as_bytes(), "$2": key.collection, "$3": key.id},
                    |row| {
                        // collection, record_id, fields, tombstone, tombstone_seq, seq
                        Ok((
                            row.get::<_, String>(2)?,
                            row.get::<_, Option<String>>(3)?,
                            row.get::<_, Option<i64>>(4)?,
                            row.get::<_, i64>(5)?,
                        ))
                    },
                )
                .optional()?;
            if let Some((fields, tombstone, tombstone_seq, seq)) = row {
                let record = StoredRecord::decode(
                    &fields,
                    tombstone.as_deref(),
                    tombstone_seq.map(seq_of),
                    seq_of(seq),
                )
                .map_err(StoreError::Corrupt)?;
                records.insert((*key).clone(), record);
            }
        }
        Ok(records)
    }

    async fn write(&mut self, user: UserId, writes: PlanWrites<'_>) -> Result<(), StoreError> {
        let user = user.as_uuid().as_bytes();
        let mut upsert = self.0.prepare_cached(UPSERT_RECORD)?;
        for (key, r) in writes.records {
            upsert.execute(params![
                user,
                key.collection,
                key.id,
                r.encode_fields(),
                r.record.tombstone.as_ref().map(ToString::to_string),
                r.tombstone_seq.map(|s| s.0 as i64),
                r.seq.0 as i64,
            ])?;
        }
        if let Some(batch) = writes.head {
            let mut insert = self.0.prepare_cached(INSERT_HISTORY)?;
            for h in writes.history {
                insert.execute(params![
                    user,
                    h.key.collection,
                    h.key.id,
                    h.seq.0 as i64,
                    batch.0 as i64,
                    writes.now.as_millis(),
                    h.kind.code(),
                    h.undo,
                ])?;
            }
        }
        let mut digest = self.0.prepare_cached(SQLITE_MOVE_DIGEST)?;
        for d in writes.digests {
            digest.execute(named_params! {
                "$1": user,
                "$2": d.collection,
                "$3": d.lo,
                "$4": d.hi,
                "$5": d.records,
            })?;
        }
        let mut remember = self.0.prepare_cached(REMEMBER_MUTATION)?;
        for (id, seq) in writes.applied {
            remember.execute(params![user, id, seq.0 as i64, writes.now.as_millis()])?;
        }
        if let Some(head) = writes.head {
            self.0.prepare_cached(SET_HEAD)?.execute(named_params! {
                "$1": user,
                "$2": head.0 as i64,
            })?;
        }
        Ok(())
    }

    async fn insert_conflicts(&mut self, user: UserId, conflicts: &[Conflict]) -> Result<(), StoreError> {
        let mut insert = self.0.prepare_cached(INSERT_CONFLICT)?;
        for c in conflicts {
            insert.execute(named_params! {
                "$1": user.as_uuid().as_bytes(),
                "$2": c.id.as_uuid().as_bytes(),
                "$3": c.key.collection,
                "$4": c.key.id,
                "$5": c.field,
                "$6": encode_side(&c.kept),
                "$7": encode_side(&c.lost),
                "$8": c.created_at.as_millis(),
            })?;
        }
        Ok(())
    }

    async fn mark_resolved(
        &mut self,
        user: UserId,
        id: ConflictId,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let changed = self.0.prepare_cached(MARK_RESOLVED)?.execute(named_params! {
            "$1": user.as_uuid().as_bytes(),
            "$2": id.as_uuid().as_bytes(),
            "$3": now.as_millis(),
        })?;
        Ok(changed == 1)
    }
}
