//! The local replica: one SQLite file per account and server, holding everything a client
//! reads and every write it has not yet seen come back from the server.
//!
//! Three layers, each a table:
//! - `base`: the server's state of each record as last pulled (values with their stamps, the
//!   tombstone, the record's seq), and the pull cursor in `meta`.
//! - `outbox`: local writes, each committed with its mutation id and stamp *before* anything
//!   is sent. A row stays after the server acknowledged it (`acked_seq`) until the pull has
//!   passed that seq: until then the base may not show it yet (read-your-writes).
//! - `records`: what reads see, the base merged with the outbox rows of the same record by
//!   the CRDT merge of `core`. It is recomputed for a record whenever either layer changes for
//!   it, so it equals the server's state once the outbox is empty and the pull is at the head:
//!   a write that lost to a newer stamp simply disappears with its outbox row.
//!
//! Writes run in `BEGIN IMMEDIATE` transactions with `synchronous = FULL`: a write that
//! returned survives a kill -9 or a power cut, and two processes on the same file (a `watch`
//! and a `put`) take turns. Storage format: the tables below are versioned by `user_version`;
//! migrations only ever add to them.

use crate::error::Error;
use nextsync_core::api::{ConflictView, MutationIn, MutationResult, OpName, RecordView};
use nextsync_core::cursor::Cursor;
use nextsync_core::digest::{Digest, bucket_of, record_hash};
use nextsync_core::e2ee::KEYS_COLLECTION;
use nextsync_core::hlc::{Hlc, HlcClock};
use nextsync_core::ids::Seq;
use nextsync_core::record::{Field, Record as Crdt};
use rusqlite::{Connection, OptionalExtension as _, Transaction, TransactionBehavior, params};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
CREATE TABLE base (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    fields TEXT NOT NULL,
    tombstone TEXT,
    seq INTEGER NOT NULL,
    stale INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (collection, id)
) STRICT, WITHOUT ROWID;
CREATE TABLE outbox (
    pos INTEGER PRIMARY KEY AUTOINCREMENT,
    mutation_id TEXT NOT NULL UNIQUE,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    op TEXT NOT NULL,
    fields TEXT,
    hlc TEXT NOT NULL,
    base_seq INTEGER,
    acked_seq INTEGER,
    created_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX outbox_by_record ON outbox (collection, id);
CREATE TABLE rejected (
    mutation_id TEXT PRIMARY KEY,
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    op TEXT NOT NULL,
    fields TEXT,
    hlc TEXT NOT NULL,
    code TEXT NOT NULL,
    message TEXT NOT NULL,
    rejected_ms INTEGER NOT NULL
) STRICT;
CREATE TABLE records (
    collection TEXT NOT NULL,
    id TEXT NOT NULL,
    fields TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    seq INTEGER,
    pending INTEGER NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (collection, id)
) STRICT, WITHOUT ROWID;
CREATE INDEX records_by_recency ON records (collection, updated);
CREATE TABLE conflicts (conflict_id TEXT PRIMARY KEY, body TEXT NOT NULL) STRICT;
";

const SCHEMA_VERSION: i64 = 1;

/// A record as the client sees it: the server's state with this device's unsent writes on top.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    pub collection: String,
    pub id: String,
    /// Visible fields (empty when deleted).
    pub fields: Map<String, Value>,
    pub deleted: bool,
    /// The seq of the server state underneath; `None` for a record the server has not seen.
    pub seq: Option<Seq>,
    /// True while a local write to it has not come back through the pull.
    pub pending: bool,
    /// The record's newest stamp (recency order).
    pub updated: String,
}

/// Where a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A write made on this device.
    Local,
    /// Pulled from the server, or the server's answer to a write of ours.
    Remote,
}

/// A record whose visible state changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub origin: Origin,
    #[serde(flatten)]
    pub record: Record,
}

/// A local write waiting in the outbox.
#[derive(Debug, Clone)]
pub struct Pending {
    pub mutation: MutationIn,
    /// Its size as sent, for batching under the server's body limit.
    pub bytes: usize,
}

/// A write the server refused (a 4xx naming it), kept aside so the queue moves on.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejected {
    pub mutation_id: String,
    pub collection: String,
    pub id: String,
    pub code: String,
    pub message: String,
}

/// Counts for [`crate::Status`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Writes not yet acknowledged by the server.
    pub unsent: u64,
    /// Acknowledged writes the pull has not yet passed.
    pub unconfirmed: u64,
    pub rejected: u64,
    pub records: u64,
}

/// Which records a listing returns, and in what order.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub collection: Option<String>,
    pub order: Order,
    pub include_deleted: bool,
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// By collection, then id.
    #[default]
    Id,
    /// Newest stamp first.
    RecentFirst,
}

/// A write as the caller asks for it.
#[derive(Debug, Clone)]
pub enum Op {
    Upsert(Map<String, Value>),
    Delete,
}

#[derive(Debug)]
pub struct Replica {
    conn: Mutex<Connection>,
}

impl Replica {
    /// Opens (creating if needed) the replica file at `path`.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 0 {
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))?;
        } else if version > SCHEMA_VERSION {
            return Err(Error::Replica(format!(
                "{} was written by a newer nextsync (format {version}); upgrade this client",
                path.display()
            )));
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves no half-done transaction behind (it rolls
        // back on drop), so the connection is still good.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(self
            .lock()
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Sets (or with `None` removes) several meta keys in one transaction.
    pub fn set_meta(&self, entries: &[(&str, Option<&str>)]) -> Result<(), Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for (key, value) in entries {
            put_meta(&tx, key, *value)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Commits a local write to the outbox and the view; returns the change it makes.
    pub fn write(
        &self,
        collection: &str,
        id: &str,
        op: Op,
        node: &str,
        now_ms: u64,
    ) -> Result<Option<Change>, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The clock is read inside the write lock: another process writing the same replica
        // gets the next stamp, never the same one.
        let mut clock = HlcClock::new(node).map_err(|e| Error::Replica(e.to_string()))?;
        if let Some(last) = get_meta(&tx, "clock")? {
            clock.observe(&parse_hlc(&last)?);
        }
        let hlc = clock.tick(now_ms).map_err(|e| Error::Replica(e.to_string()))?;
        // What this device had seen when it wrote: nothing yet is seq 0, never "absent",
        // which the server reads as "saw everything" (no conflict would be kept).
        let base_seq = Some(cursor_seq(&tx)?.unwrap_or(Seq(0)));
        let (op_name, fields) = match &op {
            Op::Upsert(fields) => ("upsert", Some(serde_json::to_string(fields)?)),
            Op::Delete => ("delete", None),
        };
        tx.execute(
            "INSERT INTO outbox (mutation_id, collection, id, op, fields, hlc, base_seq, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                uuid::Uuid::now_v7().to_string(),
                collection,
                id,
                op_name,
                fields,
                hlc.to_string(),
                base_seq.map(|s| s.0 as i64),
                now_ms as i64
            ],
        )?;
        put_meta(&tx, "clock", Some(&hlc.to_string()))?;
        let change = recompute(&tx, collection, id, Origin::Local)?;
        tx.commit()?;
        Ok(change)
    }

    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Record>, Error> {
        let conn = self.lock();
        read_view(&conn, collection, id)
    }

    pub fn list(&self, query: &Query) -> Result<Vec<Record>, Error> {
        let conn = self.lock();
        let order = match query.order {
            Order::Id => "collection, id",
            Order::RecentFirst => "updated DESC, collection, id",
        };
        let sql = format!(
            "SELECT collection, id, fields, deleted, seq, pending, updated FROM records
             WHERE (?1 IS NULL AND collection <> ?4 OR collection = ?1)
               AND (?2 OR deleted = 0)
             ORDER BY {order} LIMIT ?3"
        );
        let mut stmt = conn.prepare(&sql)?;
        let limit = query.limit.map_or(-1, i64::from);
        // The keyring is the SDK's business, not one of the user's records.
        let params = params![query.collection, query.include_deleted, limit, KEYS_COLLECTION];
        let rows = stmt.query_map(params, view_row)?;
        rows.map(|row| row?.into_record()).collect()
    }

    /// Visible records of `collection` whose `field` equals `value`.
    pub fn list_by_field(&self, collection: &str, field: &str, value: &Value) -> Result<Vec<Record>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT collection, id, fields, deleted, seq, pending, updated FROM records
             WHERE collection = ?1 AND deleted = 0 AND fields ->> ?2 = ?3",
        )?;
        let path = format!("$.{}", serde_json::to_string(field)?);
        let value = match value {
            Value::String(text) => rusqlite::types::Value::Text(text.clone()),
            other => rusqlite::types::Value::Text(other.to_string()),
        };
        let rows = stmt.query_map(params![collection, path, value], view_row)?;
        rows.map(|row| row?.into_record()).collect()
    }

    /// The oldest unsent writes, at most `max` of them and about `max_bytes` (always at least
    /// one).
    pub fn unsent(&self, max: usize, max_bytes: usize) -> Result<Vec<Pending>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT mutation_id, collection, id, op, fields, hlc, base_seq FROM outbox
             WHERE acked_seq IS NULL ORDER BY pos LIMIT ?1",
        )?;
        let mut rows = stmt.query([max as i64])?;
        let mut batch = Vec::new();
        let mut total = 0;
        while let Some(row) = rows.next()? {
            let fields: Option<String> = row.get(4)?;
            let mutation = MutationIn {
                mutation_id: row.get(0)?,
                collection: row.get(1)?,
                id: row.get(2)?,
                op: if row.get::<_, String>(3)? == "delete" {
                    OpName::Delete
                } else {
                    OpName::Upsert
                },
                fields: fields.as_deref().map(serde_json::from_str).transpose()?,
                hlc: row.get(5)?,
                base_seq: row.get::<_, Option<i64>>(6)?.map(|s| Seq(s as u64)),
            };
            let bytes = serde_json::to_vec(&mutation)?.len() + 1;
            if !batch.is_empty() && total + bytes > max_bytes {
                break;
            }
            total += bytes;
            batch.push(Pending { mutation, bytes });
        }
        Ok(batch)
    }

    /// Records the server's answer to a push: each write's seq, and the conflicts it made.
    pub fn acknowledge(
        &self,
        results: &[MutationResult],
        conflicts: &[ConflictView],
    ) -> Result<Vec<Change>, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for result in results {
            tx.execute(
                "UPDATE outbox SET acked_seq = ?2 WHERE mutation_id = ?1",
                params![result.mutation_id, result.seq.0 as i64],
            )?;
        }
        for conflict in conflicts {
            tx.execute(
                "INSERT OR REPLACE INTO conflicts (conflict_id, body) VALUES (?1, ?2)",
                params![conflict.conflict_id, serde_json::to_string(conflict)?],
            )?;
        }
        let changes = settle(&tx, BTreeSet::new())?;
        tx.commit()?;
        Ok(changes)
    }

    /// Moves a write the server refused out of the outbox, with the server's reason.
    pub fn reject(
        &self,
        mutation_id: &str,
        code: &str,
        message: &str,
        now_ms: u64,
    ) -> Result<Vec<Change>, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let key: Option<(String, String)> = tx
            .query_row(
                "SELECT collection, id FROM outbox WHERE mutation_id = ?1",
                [mutation_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((collection, id)) = key else {
            return Ok(Vec::new());
        };
        tx.execute(
            "INSERT OR REPLACE INTO rejected (mutation_id, collection, id, op, fields, hlc, code, message, rejected_ms)
             SELECT mutation_id, collection, id, op, fields, hlc, ?2, ?3, ?4 FROM outbox WHERE mutation_id = ?1",
            params![mutation_id, code, message, now_ms as i64],
        )?;
        tx.execute("DELETE FROM outbox WHERE mutation_id = ?1", [mutation_id])?;
        let change = recompute(&tx, &collection, &id, Origin::Remote)?;
        tx.commit()?;
        Ok(change.into_iter().collect())
    }

    pub fn rejected(&self) -> Result<Vec<Rejected>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT mutation_id, collection, id, code, message FROM rejected ORDER BY rejected_ms",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Rejected {
                mutation_id: r.get(0)?,
                collection: r.get(1)?,
                id: r.get(2)?,
                code: r.get(3)?,
                message: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The pull cursor, if anything was pulled in this epoch.
    pub fn cursor(&self) -> Result<Option<String>, Error> {
        self.meta("cursor")
    }

    /// Stores one pulled page and moves the cursor past it, in one transaction. With
    /// `complete` (the page reached the head) an unfinished resync is finished: records the
    /// server no longer has are dropped.
    ///
    /// Without a cursor the page is a prefetch (a recent-first page): its records are stored
    /// but the cursor stays, so the feed still brings everything, these included.
    pub fn apply_page(
        &self,
        page: &[RecordView],
        cursor: Option<&str>,
        complete: bool,
    ) -> Result<Vec<Change>, Error> {
        let mut conn = self.lock();
        // A pulled page commits without waiting for the disk: its records and its cursor move
        // are one transaction, so a power cut loses both together and the page is pulled
        // again. (WAL mode: never corruption, and the next FULL commit syncs it anyway.)
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let result = Self::store_page(&mut conn, page, cursor, complete);
        conn.pragma_update(None, "synchronous", "FULL")?;
        result
    }

    fn store_page(
        conn: &mut Connection,
        page: &[RecordView],
        cursor: Option<&str>,
        complete: bool,
    ) -> Result<Vec<Change>, Error> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut touched = BTreeSet::new();
        let mut stored = Vec::with_capacity(page.len());
        let mut newest: Option<Hlc> = None;
        for view in page {
            let (fields, max) = base_fields(view)?;
            let changed = tx
                .prepare_cached(
                    "INSERT INTO base (collection, id, fields, tombstone, seq, stale) VALUES (?1, ?2, ?3, ?4, ?5, 0)
                     ON CONFLICT (collection, id) DO UPDATE SET
                       fields = excluded.fields, tombstone = excluded.tombstone, seq = excluded.seq, stale = 0
                     WHERE excluded.seq >= base.seq OR base.stale = 1",
                )?
                .execute(params![
                    view.collection,
                    view.id,
                    fields,
                    view.tombstone.as_ref().map(ToString::to_string),
                    view.seq.0 as i64
                ])?;
            let updated = max.as_ref().map(ToString::to_string).unwrap_or_default();
            newest = newest.max(max);
            if changed > 0 {
                stored.push((view, updated));
            } else {
                // The base already held a newer state (a prefetch raced a page).
                touched.insert((view.collection.clone(), view.id.clone()));
            }
        }
        // The receive rule: the next local stamp is above everything seen.
        if let Some(seen) = newest {
            let last = get_meta(&tx, "clock")?.map(|t| parse_hlc(&t)).transpose()?;
            if last.is_none_or(|last| seen > last) {
                put_meta(&tx, "clock", Some(&seen.to_string()))?;
            }
        }
        if let Some(cursor) = cursor {
            put_meta(&tx, "cursor", Some(cursor))?;
        }
        if cursor.is_some() && complete && get_meta(&tx, "resync")?.is_some() {
            let mut stmt = tx.prepare("DELETE FROM base WHERE stale = 1 RETURNING collection, id")?;
            let gone = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            for key in gone {
                touched.insert(key?);
            }
            drop(stmt);
            put_meta(&tx, "resync", None)?;
        }
        touched.extend(settle_acked(&tx)?);
        let mut changes = Vec::new();
        for (view, updated) in stored {
            let key = (view.collection.clone(), view.id.clone());
            touched.remove(&key);
            changes.extend(show_pulled(&tx, view, updated)?);
        }
        for (collection, id) in touched {
            changes.extend(recompute(&tx, &collection, &id, Origin::Remote)?);
        }
        tx.commit()?;
        Ok(changes)
    }

    /// The server answered `resync_required` (a restore, or another account): pull from the
    /// start again. The base stays readable until the full pull replaces it, and every write
    /// is sent again (a duplicate is harmless; a restored server may have lost it).
    pub fn start_resync(&self) -> Result<(), Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("UPDATE base SET stale = 1", [])?;
        tx.execute("UPDATE outbox SET acked_seq = NULL", [])?;
        put_meta(&tx, "cursor", None)?;
        put_meta(&tx, "resync", Some("1"))?;
        tx.commit()?;
        Ok(())
    }

    // ---- sync health (see `crate::verify`) ----

    /// Per collection, the digest and live count of the base: the server's state as pulled.
    pub fn base_digests(&self) -> Result<BTreeMap<String, (Digest, u64)>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT collection, id, fields, tombstone FROM base WHERE stale = 0")?;
        let mut rows = stmt.query([])?;
        let mut out: BTreeMap<String, (Digest, u64)> = BTreeMap::new();
        while let Some(row) = rows.next()? {
            let collection: String = row.get(0)?;
            let hash = base_hash(
                &collection,
                &row.get::<_, String>(1)?,
                &row.get::<_, String>(2)?,
                row.get(3)?,
            )?;
            if hash != 0 {
                let entry = out.entry(collection).or_default();
                entry.0.toggle(hash);
                entry.1 += 1;
            }
        }
        Ok(out)
    }

    /// One collection's base split into `buckets` (see `nextsync_core::digest::bucket_of`),
    /// and each base row's bucket and hash by id.
    pub fn base_buckets(&self, collection: &str, buckets: u32) -> Result<(Vec<Digest>, BaseHashes), Error> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT id, fields, tombstone FROM base WHERE collection = ?1 AND stale = 0")?;
        let mut rows = stmt.query([collection])?;
        let mut digests = vec![Digest::EMPTY; buckets.max(1) as usize];
        let mut hashes = BTreeMap::new();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let hash = base_hash(collection, &id, &row.get::<_, String>(1)?, row.get(2)?)?;
            let bucket = bucket_of(collection, &id, buckets);
            digests[bucket as usize].toggle(hash);
            hashes.insert(id, (bucket, hash));
        }
        Ok((digests, hashes))
    }

    /// Marks base rows so that the next page holding them replaces them whatever their seq
    /// (a repair trusts the server's copy).
    pub fn mark_stale(&self, keys: &[(String, String)]) -> Result<(), Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut stmt =
                tx.prepare_cached("UPDATE base SET stale = 1 WHERE collection = ?1 AND id = ?2")?;
            for (collection, id) in keys {
                stmt.execute([collection, id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops base rows the server does not have at all, and shows what remains of them (the
    /// device's own unsent writes, or nothing).
    pub fn forget(&self, keys: &[(String, String)]) -> Result<Vec<Change>, Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut touched = BTreeSet::new();
        {
            let mut stmt = tx.prepare_cached("DELETE FROM base WHERE collection = ?1 AND id = ?2")?;
            for (collection, id) in keys {
                stmt.execute([collection, id])?;
                touched.insert((collection.clone(), id.clone()));
            }
        }
        let changes = settle(&tx, touched)?;
        tx.commit()?;
        Ok(changes)
    }

    /// True when a write waits to be sent (cheap: the live loop asks every few seconds).
    pub fn has_unsent(&self) -> Result<bool, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE acked_seq IS NULL)")?;
        Ok(stmt.query_row([], |r| r.get(0))?)
    }

    /// True before anything was pulled or written here (a new device).
    pub fn is_new(&self) -> Result<bool, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT NOT EXISTS (SELECT 1 FROM records) AND NOT EXISTS (SELECT 1 FROM meta WHERE key = 'cursor')",
        )?;
        Ok(stmt.query_row([], |r| r.get(0))?)
    }

    pub fn counts(&self) -> Result<Counts, Error> {
        let conn = self.lock();
        conn.query_row(
            "SELECT (SELECT count(*) FROM outbox WHERE acked_seq IS NULL),
                    (SELECT count(*) FROM outbox WHERE acked_seq IS NOT NULL),
                    (SELECT count(*) FROM rejected),
                    (SELECT count(*) FROM records WHERE deleted = 0 AND collection <> ?1)",
            [KEYS_COLLECTION],
            |r| {
                Ok(Counts {
                    unsent: r.get::<_, i64>(0)? as u64,
                    unconfirmed: r.get::<_, i64>(1)? as u64,
                    rejected: r.get::<_, i64>(2)? as u64,
                    records: r.get::<_, i64>(3)? as u64,
                })
            },
        )
        .map_err(Into::into)
    }

    /// Conflicts as last heard from the server (push answers and listings).
    pub fn conflicts(&self) -> Result<Vec<ConflictView>, Error> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT body FROM conflicts ORDER BY conflict_id")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|body| Ok(serde_json::from_str(&body?)?)).collect()
    }

    /// Replaces the kept conflicts with the server's full list.
    pub fn replace_conflicts(&self, conflicts: &[ConflictView]) -> Result<(), Error> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM conflicts", [])?;
        for conflict in conflicts {
            tx.execute(
                "INSERT INTO conflicts (conflict_id, body) VALUES (?1, ?2)",
                params![conflict.conflict_id, serde_json::to_string(conflict)?],
            )?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn get_meta(tx: &Transaction<'_>, key: &str) -> Result<Option<String>, Error> {
    Ok(tx
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()?)
}

fn put_meta(tx: &Transaction<'_>, key: &str, value: Option<&str>) -> Result<(), Error> {
    match value {
        Some(value) => tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?,
        None => tx.execute("DELETE FROM meta WHERE key = ?1", [key])?,
    };
    Ok(())
}

fn cursor_seq(tx: &Transaction<'_>) -> Result<Option<Seq>, Error> {
    Ok(get_meta(tx, "cursor")?
        .and_then(|text| Cursor::decode(&text))
        .map(|c| c.seq))
}

fn parse_hlc(text: &str) -> Result<Hlc, Error> {
    text.parse()
        .map_err(|e| Error::Replica(format!("stamp {text:?}: {e}")))
}

/// Drops acknowledged writes the pull has passed (the base now holds them, or what beat
/// them), then recomputes the view of every record touched.
fn settle(tx: &Transaction<'_>, mut touched: BTreeSet<(String, String)>) -> Result<Vec<Change>, Error> {
    touched.extend(settle_acked(tx)?);
    let mut changes = Vec::new();
    for (collection, id) in touched {
        changes.extend(recompute(tx, &collection, &id, Origin::Remote)?);
    }
    Ok(changes)
}

/// Deletes the acknowledged writes the cursor has passed; returns their records.
fn settle_acked(tx: &Transaction<'_>) -> Result<BTreeSet<(String, String)>, Error> {
    let mut keys = BTreeSet::new();
    if let Some(seq) = cursor_seq(tx)? {
        let mut stmt =
            tx.prepare_cached("DELETE FROM outbox WHERE acked_seq <= ?1 RETURNING collection, id")?;
        let done = stmt.query_map([seq.0 as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        for key in done {
            keys.insert(key?);
        }
    }
    Ok(keys)
}

/// The view of a record just pulled into the base. With no local write pending on it (the
/// common case), the server's visible state is the view as it came: no merge, no re-read.
fn show_pulled(tx: &Transaction<'_>, view: &RecordView, updated: String) -> Result<Option<Change>, Error> {
    let pending: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE collection = ?1 AND id = ?2)")?
        .query_row([&view.collection, &view.id], |r| r.get(0))?;
    if pending {
        return recompute(tx, &view.collection, &view.id, Origin::Remote);
    }
    let fields = serde_json::to_string(&view.fields)?;
    let before: Option<(String, bool)> = tx
        .prepare_cached("SELECT fields, deleted FROM records WHERE collection = ?1 AND id = ?2")?
        .query_row([&view.collection, &view.id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    tx.prepare_cached(UPSERT_VIEW)?.execute(params![
        view.collection,
        view.id,
        fields,
        view.deleted,
        view.seq.0 as i64,
        false,
        updated
    ])?;
    // Field maps serialize in name order, so equal text is an equal state.
    let visible_change = before.is_none_or(|(f, d)| f != fields || d != view.deleted);
    Ok(visible_change.then(|| Change {
        origin: Origin::Remote,
        record: Record {
            collection: view.collection.clone(),
            id: view.id.clone(),
            fields: view.fields.clone(),
            deleted: view.deleted,
            seq: Some(view.seq),
            pending: false,
            updated,
        },
    }))
}

const UPSERT_VIEW: &str = "INSERT INTO records (collection, id, fields, deleted, seq, pending, updated)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (collection, id) DO UPDATE SET fields = excluded.fields,
       deleted = excluded.deleted, seq = excluded.seq, pending = excluded.pending,
       updated = excluded.updated";

/// The stored form of a pulled record's values: `{"name":{"v":value,"h":"stamp"}}`, and its
/// newest stamp.
fn base_fields(view: &RecordView) -> Result<(String, Option<Hlc>), Error> {
    /// One stored field, borrowed from the pulled view (this runs for every pulled record).
    #[derive(Serialize)]
    struct Stored<'a> {
        v: &'a Value,
        h: &'a str,
    }
    let mut out = BTreeMap::new();
    let mut newest = view.tombstone.clone();
    for (name, value) in &view.fields {
        let stamp = view.stamps.get(name).and_then(Value::as_str).ok_or_else(|| {
            Error::Protocol(format!(
                "field {name:?} of {}/{} has no stamp",
                view.collection, view.id
            ))
        })?;
        let hlc = parse_hlc(stamp)?;
        newest = newest.max(Some(hlc));
        out.insert(name.as_str(), Stored { v: value, h: stamp });
    }
    Ok((serde_json::to_string(&out)?, newest))
}

/// A collection's base rows by id: `(bucket, hash)`.
pub type BaseHashes = BTreeMap<String, (u32, u128)>;

/// The digest hash of a base row (0 when it is a deletion): what the server's digest counts
/// for the same record, from the stamps the base keeps.
fn base_hash(collection: &str, id: &str, fields: &str, tombstone: Option<String>) -> Result<u128, Error> {
    let parsed: Map<String, Value> = serde_json::from_str(fields)?;
    if parsed.is_empty() && tombstone.is_some() {
        return Ok(0);
    }
    let stamps: Vec<(&str, &str)> = parsed
        .iter()
        .map(|(name, entry)| (name.as_str(), entry["h"].as_str().unwrap_or_default()))
        .collect();
    Ok(record_hash(collection, id, stamps, tombstone.as_deref()))
}

fn decode_base(fields: &str, tombstone: Option<&str>) -> Result<Crdt, Error> {
    let parsed: Map<String, Value> = serde_json::from_str(fields)?;
    let mut record = Crdt::default();
    for (name, entry) in parsed {
        let hlc = parse_hlc(entry["h"].as_str().unwrap_or_default())?;
        let value = entry.get("v").cloned().unwrap_or(Value::Null);
        record.fields.insert(name, Field { value, hlc });
    }
    record.tombstone = tombstone.map(parse_hlc).transpose()?;
    Ok(record)
}

struct ViewRow {
    collection: String,
    id: String,
    fields: String,
    deleted: bool,
    seq: Option<i64>,
    pending: bool,
    updated: String,
}

impl ViewRow {
    fn into_record(self) -> Result<Record, Error> {
        Ok(Record {
            collection: self.collection,
            id: self.id,
            fields: serde_json::from_str(&self.fields)?,
            deleted: self.deleted,
            seq: self.seq.map(|s| Seq(s as u64)),
            pending: self.pending,
            updated: self.updated,
        })
    }
}

fn view_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ViewRow> {
    Ok(ViewRow {
        collection: r.get(0)?,
        id: r.get(1)?,
        fields: r.get(2)?,
        deleted: r.get(3)?,
        seq: r.get(4)?,
        pending: r.get(5)?,
        updated: r.get(6)?,
    })
}

fn read_view(conn: &Connection, collection: &str, id: &str) -> Result<Option<Record>, Error> {
    conn.query_row(
        "SELECT collection, id, fields, deleted, seq, pending, updated FROM records
         WHERE collection = ?1 AND id = ?2",
        [collection, id],
        view_row,
    )
    .optional()?
    .map(ViewRow::into_record)
    .transpose()
}

/// Rebuilds one record's view from its base and outbox rows; returns the change when what a
/// reader sees (fields, deletion) changed.
fn recompute(
    tx: &Transaction<'_>,
    collection: &str,
    id: &str,
    origin: Origin,
) -> Result<Option<Change>, Error> {
    let base: Option<(String, Option<String>, i64)> = tx
        .query_row(
            "SELECT fields, tombstone, seq FROM base WHERE collection = ?1 AND id = ?2",
            [collection, id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let mut record = match &base {
        Some((fields, tombstone, _)) => decode_base(fields, tombstone.as_deref())?,
        None => Crdt::default(),
    };
    let mut stmt = tx.prepare_cached(
        "SELECT op, fields, hlc FROM outbox WHERE collection = ?1 AND id = ?2 ORDER BY pos",
    )?;
    let mut rows = stmt.query([collection, id])?;
    let mut pending = false;
    while let Some(row) = rows.next()? {
        pending = true;
        let hlc = parse_hlc(&row.get::<_, String>(2)?)?;
        let is_upsert = row.get::<_, String>(0)? == "upsert";
        let write = match row.get::<_, Option<String>>(1)? {
            Some(fields) if is_upsert => {
                let fields: Map<String, Value> = serde_json::from_str(&fields)?;
                Crdt {
                    fields: fields
                        .into_iter()
                        .map(|(name, value)| {
                            (
                                name,
                                Field {
                                    value,
                                    hlc: hlc.clone(),
                                },
                            )
                        })
                        .collect::<BTreeMap<_, _>>(),
                    tombstone: None,
                }
            }
            _ => Crdt {
                fields: BTreeMap::new(),
                tombstone: Some(hlc),
            },
        };
        record.merge(&write);
    }
    drop(rows);
    drop(stmt);

    let before = read_view(tx, collection, id)?;
    if base.is_none() && !pending {
        tx.execute(
            "DELETE FROM records WHERE collection = ?1 AND id = ?2",
            [collection, id],
        )?;
        // A write only this device had, refused: the record is gone again.
        return Ok(before.filter(|b| !b.deleted).map(|mut gone| {
            gone.fields.clear();
            gone.deleted = true;
            gone.pending = false;
            Change { origin, record: gone }
        }));
    }
    let fields: Map<String, Value> = record
        .visible_fields()
        .map(|(name, field)| (name.clone(), field.value.clone()))
        .collect();
    let after = Record {
        collection: collection.to_owned(),
        id: id.to_owned(),
        deleted: record.is_deleted(),
        fields,
        seq: base.as_ref().map(|b| Seq(b.2 as u64)),
        pending,
        updated: record.max_hlc().map(ToString::to_string).unwrap_or_default(),
    };
    tx.prepare_cached(UPSERT_VIEW)?.execute(params![
        collection,
        id,
        serde_json::to_string(&after.fields)?,
        after.deleted,
        after.seq.map(|s| s.0 as i64),
        after.pending,
        after.updated
    ])?;
    let visible_change = before
        .as_ref()
        .is_none_or(|b| b.fields != after.fields || b.deleted != after.deleted);
    Ok(visible_change.then_some(Change {
        origin,
        record: after,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn replica() -> (tempfile::TempDir, Replica) {
        let dir = tempfile::tempdir().expect("tempdir");
        let replica = Replica::open(&dir.path().join("replica.sqlite3")).expect("open");
        (dir, replica)
    }

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    fn view(id: &str, title: &str, stamp: &str, seq: u64) -> RecordView {
        RecordView {
            collection: "sessions".into(),
            id: id.into(),
            fields: fields(json!({ "title": title })),
            deleted: false,
            seq: Seq(seq),
            stamps: fields(json!({ "title": stamp })),
            tombstone: None,
        }
    }

    /// Writes `title` to sessions/`id` at `ms`; returns the write's mutation id.
    fn write_title(r: &Replica, id: &str, title: &str, ms: u64) -> String {
        r.write(
            "sessions",
            id,
            Op::Upsert(fields(json!({ "title": title }))),
            "dev",
            ms,
        )
        .expect("write");
        let unsent = r.unsent(1000, 1 << 20).expect("unsent");
        unsent.last().expect("a write").mutation.mutation_id.clone()
    }

    fn cursor(seq: u64) -> String {
        Cursor {
            epoch: "e1".into(),
            seq: Seq(seq),
        }
        .encode()
    }

    #[test]
    fn a_local_write_is_readable_at_once_and_waits_in_the_outbox() {
        let (_dir, r) = replica();
        let change = r
            .write(
                "sessions",
                "s1",
                Op::Upsert(fields(json!({"title": "a"}))),
                "dev",
                1_000,
            )
            .expect("write")
            .expect("a change");
        assert_eq!((change.origin, change.record.pending), (Origin::Local, true));
        assert_eq!(
            r.get("sessions", "s1").expect("get").expect("some").fields["title"],
            "a"
        );
        let batch = r.unsent(1000, 1 << 20).expect("unsent");
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].mutation.hlc, "000000000001000-00000-dev");
        assert_eq!(r.counts().expect("counts").unsent, 1);
    }

    #[test]
    fn an_acknowledged_write_stays_visible_until_the_pull_passes_it() {
        let (_dir, r) = replica();
        let id = write_title(&r, "s1", "mine", 1_000);
        let ack = MutationResult {
            mutation_id: id,
            status: nextsync_core::api::MutationStatus::Applied,
            seq: Seq(5),
        };
        r.acknowledge(&[ack], &[]).expect("ack");
        assert_eq!(r.counts().expect("counts").unconfirmed, 1);
        assert_eq!(
            r.get("sessions", "s1").expect("get").expect("some").fields["title"],
            "mine"
        );
        // A page below the write's seq leaves it in place.
        r.apply_page(
            &[view("other", "x", "000000000000500-00000-b", 3)],
            Some(&cursor(3)),
            true,
        )
        .expect("page");
        assert_eq!(r.counts().expect("counts").unconfirmed, 1);
        // Passing it settles the write: the server's state shows through.
        let changes = r
            .apply_page(
                &[view("s1", "mine", "000000000001000-00000-dev", 5)],
                Some(&cursor(5)),
                true,
            )
            .expect("page");
        assert!(changes.is_empty(), "the same value is no change: {changes:?}");
        let s1 = r.get("sessions", "s1").expect("get").expect("some");
        assert_eq!((s1.pending, s1.seq), (false, Some(Seq(5))));
        assert_eq!(
            r.counts().expect("counts"),
            Counts {
                unsent: 0,
                unconfirmed: 0,
                rejected: 0,
                records: 2
            }
        );
    }

    #[test]
    fn a_write_that_lost_to_a_newer_stamp_gives_way_to_the_server_state() {
        let (_dir, r) = replica();
        let id = write_title(&r, "s1", "old", 1_000);
        // The server already held a newer title at seq 7, which this device has pulled.
        r.apply_page(
            &[view("s1", "newer", "000000000002000-00000-b", 7)],
            Some(&cursor(7)),
            true,
        )
        .expect("page");
        let ack = MutationResult {
            mutation_id: id,
            status: nextsync_core::api::MutationStatus::Applied,
            seq: Seq(7),
        };
        r.acknowledge(&[ack], &[]).expect("ack");
        let s1 = r.get("sessions", "s1").expect("get").expect("some");
        assert_eq!((s1.fields["title"].clone(), s1.pending), (json!("newer"), false));
    }

    #[test]
    fn pulled_stamps_move_the_clock_past_them() {
        let (_dir, r) = replica();
        r.apply_page(
            &[view("s1", "remote", "000000000009000-00004-b", 1)],
            Some(&cursor(1)),
            true,
        )
        .expect("page");
        r.write(
            "sessions",
            "s1",
            Op::Upsert(fields(json!({"title": "after"}))),
            "dev",
            1_000,
        )
        .expect("write");
        assert_eq!(
            r.unsent(10, 1 << 20).expect("unsent")[0].mutation.hlc,
            "000000000009000-00005-dev"
        );
        assert_eq!(
            r.get("sessions", "s1").expect("get").expect("some").fields["title"],
            "after"
        );
    }

    #[test]
    fn a_refused_write_moves_aside_and_its_record_reverts() {
        let (_dir, r) = replica();
        let id = write_title(&r, "s1", "x", 1_000);
        let changes = r
            .reject(&id, "field_too_large", "too big", 2_000)
            .expect("reject");
        assert!(changes[0].record.deleted);
        assert!(r.get("sessions", "s1").expect("get").is_none());
        assert_eq!(r.rejected().expect("rejected")[0].code, "field_too_large");
        assert_eq!(r.counts().expect("counts").unsent, 0);
    }

    #[test]
    fn a_resync_keeps_the_outbox_and_drops_what_the_server_lost() {
        let (_dir, r) = replica();
        r.apply_page(
            &[
                view("kept", "k", "000000000000100-00000-b", 1),
                view("lost", "l", "000000000000200-00000-b", 2),
            ],
            Some(&cursor(2)),
            true,
        )
        .expect("page");
        r.write(
            "sessions",
            "mine",
            Op::Upsert(fields(json!({"title": "m"}))),
            "dev",
            1_000,
        )
        .expect("write");
        r.start_resync().expect("resync");
        assert!(
            r.get("sessions", "lost").expect("get").is_some(),
            "readable until the pull ends"
        );
        r.apply_page(
            &[view("kept", "k", "000000000000100-00000-b", 1)],
            Some(&cursor(1)),
            true,
        )
        .expect("page");
        assert!(r.get("sessions", "lost").expect("get").is_none());
        assert!(r.get("sessions", "kept").expect("get").is_some());
        assert_eq!(r.unsent(10, 1 << 20).expect("unsent").len(), 1);
    }

    #[test]
    fn batches_respect_the_byte_budget_but_always_carry_one() {
        let (_dir, r) = replica();
        for i in 0..5 {
            r.write(
                "notes",
                &format!("n{i}"),
                Op::Upsert(fields(json!({"text": "x".repeat(100)}))),
                "dev",
                1_000,
            )
            .expect("write");
        }
        let one = r.unsent(1000, 10).expect("unsent");
        assert_eq!(one.len(), 1);
        assert_eq!(r.unsent(1000, 2 * one[0].bytes + 1).expect("unsent").len(), 2);
        assert_eq!(r.unsent(3, 1 << 20).expect("unsent").len(), 3);
    }

    #[test]
    fn recent_first_lists_the_newest_stamp_first() {
        let (_dir, r) = replica();
        r.apply_page(
            &[
                view("a", "a", "000000000000100-00000-b", 1),
                view("b", "b", "000000000000300-00000-b", 2),
            ],
            Some(&cursor(2)),
            true,
        )
        .expect("page");
        r.write(
            "sessions",
            "c",
            Op::Upsert(fields(json!({"title": "c"}))),
            "dev",
            200,
        )
        .expect("write");
        let ids: Vec<String> = r
            .list(&Query {
                collection: Some("sessions".into()),
                order: Order::RecentFirst,
                ..Query::default()
            })
            .expect("list")
            .into_iter()
            .map(|r| r.id)
            .collect();
        // The local write's stamp is above the pulled 300 (receive rule), so it is newest.
        assert_eq!(ids, ["c", "b", "a"]);
    }
}
