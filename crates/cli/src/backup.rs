//! `nextsync admin backup <file>` and `nextsync admin restore <file>`: the embedded database,
//! copied while the server runs and put back while it is stopped. PostgreSQL is backed up with
//! its own tools (README).
//!
//! A backup is `VACUUM INTO`: one read transaction, so the copy is the database at one moment
//! (every write acknowledged before it started is in it), compacted, checked with
//! `integrity_check` before the command says it worked. A restore refuses while a server holds
//! the data dir's lock, moves the stale WAL aside with the old file (a WAL of another
//! database would be replayed into the restored one), and gives every account's feed a new
//! epoch: clients' cursors point past what the backup holds, and a new epoch makes them
//! resync instead of silently skipping the seqs that will be handed out again.

use anyhow::{Context, bail};
use nextsync_server::config::Config;
use rusqlite::{Connection, OpenFlags};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The lock a running server holds on its data dir (embedded store only).
pub fn lock_data_dir(data_dir: &Path) -> anyhow::Result<File> {
    let path = data_dir.join("nextsync.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another nextsync server is running on {}; stop it first",
            data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}

fn embedded_only(config: &Config, what: &str) -> anyhow::Result<PathBuf> {
    if config.database_url.is_some() {
        bail!(
            "this server stores in PostgreSQL: {what} it with PostgreSQL's tools (pg_dump / pg_restore; see README)"
        );
    }
    Ok(config.sqlite_path())
}

/// What a database holds, for the operator's confirmation.
fn describe(conn: &Connection) -> anyhow::Result<String> {
    let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if check != "ok" {
        bail!("the database fails SQLite's integrity check: {check}");
    }
    let users: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .context("not a nextsync database (no users table)")?;
    let records: i64 = conn
        .query_row("SELECT count(*) FROM records", [], |r| r.get(0))
        .context("not a nextsync database (no records table)")?;
    Ok(format!("{users} accounts, {records} records"))
}

pub fn backup(config: &Config, file: &Path) -> anyhow::Result<()> {
    let db = embedded_only(config, "back up")?;
    if !db.exists() {
        bail!("no database at {}", db.display());
    }
    if file.exists() {
        bail!("{} exists; a backup never overwrites a file", file.display());
    }
    let conn = Connection::open_with_flags(&db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {}", db.display()))?;
    conn.busy_timeout(Duration::from_secs(30))?;
    let target = file.to_str().context("the backup file's path must be UTF-8")?;
    conn.execute("VACUUM INTO ?1", [target])
        .with_context(|| format!("copying into {}", file.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
    }
    File::open(file)?.sync_all()?;
    let copy = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let summary = describe(&copy)?;
    println!("backed up {} to {} ({summary})", db.display(), file.display());
    println!(
        "keep the data dir's secrets (jwt_secret, secrets_key) with it: NextChat API keys sealed \
         in the backup need the same secrets_key"
    );
    Ok(())
}

pub fn restore(config: &Config, file: &Path, yes: bool) -> anyhow::Result<()> {
    let db = embedded_only(config, "restore")?;
    let summary = {
        let conn = Connection::open_with_flags(file, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .with_context(|| format!("opening {}", file.display()))?;
        describe(&conn).with_context(|| format!("{} is not a usable backup", file.display()))?
    };
    nextsync_server::secrets::ensure_data_dir(&config.data_dir)?;
    let _lock = lock_data_dir(&config.data_dir)?;
    if db.exists() && !yes {
        bail!(
            "this replaces {} with {} ({summary}); repeat with --yes",
            db.display(),
            file.display()
        );
    }
    let staged = db.with_extension("db.restoring");
    std::fs::copy(file, &staged).with_context(|| format!("copying to {}", staged.display()))?;
    {
        let conn = Connection::open(&staged)?;
        conn.execute("UPDATE feed_heads SET epoch = lower(hex(randomblob(16)))", [])?;
        conn.pragma_update(None, "journal_mode", "DELETE")?;
    }
    File::open(&staged)?.sync_all()?;
    // The old database goes aside whole, its WAL with it; the restored one takes its name.
    let stamp = nextsync_core::time::Timestamp::now().as_millis();
    for suffix in ["", "-wal", "-shm"] {
        let mut from = db.as_os_str().to_owned();
        from.push(suffix);
        let from = PathBuf::from(from);
        if from.exists() {
            let mut aside = db.as_os_str().to_owned();
            aside.push(format!(".before-restore-{stamp}{suffix}"));
            std::fs::rename(&from, PathBuf::from(aside))?;
        }
    }
    std::fs::rename(&staged, &db)?;
    File::open(&config.data_dir)?.sync_all()?;
    println!(
        "restored {} from {} ({summary}); the previous database is kept beside it as \
         nextsync.db.before-restore-{stamp}. Every client will resync.",
        db.display(),
        file.display()
    );
    Ok(())
}
