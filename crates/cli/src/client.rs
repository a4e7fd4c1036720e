//! The client commands: `login`, `logout`, `status`, `sync`, `watch`, `get`, `put`,
//! `delete`, `list`, `conflicts` (and `trash`, `restore` in [`crate::history`]), on top of
//! the SDK (`nextsync-client`).
//!
//! Each profile is one directory holding one replica (records, outbox, the device's tokens),
//! owner-only (0700): `$NEXTSYNC_CLIENT_HOME/<profile>/` when that is set, else the platform's
//! data directory (`~/.local/share/nextsync/profiles/<profile>/` on Linux). Output is for
//! people unless `--json`; errors go to stderr with a non-zero exit.

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use nextsync_client::{Change, Client, Connection, Encryption, Error, Options, Order, Query, Resolution};
use nextsync_core::api::Secret;
use serde_json::{Map, Value, json};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Where the client keeps its profiles.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// The account profile to act on (one replica and sign-in per profile).
    #[arg(long, global = true, env = "NEXTSYNC_PROFILE", default_value = "default")]
    profile: String,
    /// Keep every profile in this directory instead of the platform's data directory.
    #[arg(long, global = true, env = "NEXTSYNC_CLIENT_HOME", value_name = "DIR")]
    client_home: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Sign this profile in to a nextsync server.
    Login {
        /// The server's URL, e.g. https://sync.example.org
        #[arg(long)]
        server: String,
        #[arg(long)]
        email: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// Sign this device out (local records and unsent writes are kept).
    Logout {
        /// Also delete the profile's replica (refused while writes are unsent, unless --force).
        #[arg(long)]
        forget: bool,
        #[arg(long, requires = "forget")]
        force: bool,
    },
    /// The profile's account, connection, outbox and last sync.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Push unsent writes, then pull everything new. Fails when the server is unreachable.
    Sync {
        #[arg(long)]
        json: bool,
    },
    /// Follow changes live (WebSocket, or long-polls where sockets are blocked); one line
    /// per change. Survives server restarts; stops with Ctrl-C.
    Watch {
        #[arg(long)]
        json: bool,
    },
    /// Print a record from the local replica.
    Get {
        collection: String,
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Set fields of a record: saved locally at once (even offline), then sent.
    Put {
        collection: String,
        id: String,
        /// A JSON object of the fields to set; others stay as they are.
        #[arg(long, value_name = "JSON")]
        fields: String,
    },
    /// Delete a record: saved locally at once (even offline), then sent.
    Delete { collection: String, id: String },
    /// List records of the local replica.
    List {
        /// Only this collection.
        collection: Option<String>,
        /// Newest first.
        #[arg(long)]
        recent: bool,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Write a NextChat backup file (what NextChat's "Export" writes) of this account, from
    /// the local replica after a sync.
    Export {
        file: PathBuf,
        /// Do not sync first: export the replica as it stands.
        #[arg(long)]
        offline: bool,
    },
    /// Merge a NextChat backup file into this account (entities already there are not
    /// duplicated), then pull the result.
    Import { file: PathBuf },
    /// End-to-end encryption of this account's values (opt-in; the server then holds only
    /// ciphertext, and NextChat's own sync settings stop working for the account).
    Encryption {
        #[command(subcommand)]
        action: EncryptionAction,
    },
    /// Deleted records the server keeps (30 days by default): list them, bring one back
    /// on every device, or forget them for good.
    Trash {
        #[command(subcommand)]
        action: Option<crate::history::TrashAction>,
        /// Only this collection.
        #[arg(long, global = true)]
        collection: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Bring the account (or a collection, or one record) back to how it was at a moment:
    /// what was deleted since comes back, what changed gets its old values, what was
    /// created since goes to the trash. Try --dry-run first.
    Restore {
        /// An RFC 3339 time (2026-12-01T14:05:00Z) or how long ago (90m, 2h, 1d).
        #[arg(long, value_name = "TIME")]
        at: String,
        #[arg(long)]
        collection: Option<String>,
        #[arg(long, requires = "collection")]
        id: Option<String>,
        /// Only print what would change.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check this replica against the server's digests; with --repair, fetch again only
    /// the records that differ. Exits 1 when something differs (and was not repaired).
    Verify {
        #[arg(long)]
        repair: bool,
        #[arg(long)]
        json: bool,
    },
    /// List conflicts, or settle one.
    Conflicts {
        #[command(subcommand)]
        action: Option<ConflictAction>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum EncryptionAction {
    /// Encrypt the account under a new passphrase (every record is written again).
    Enable {
        /// Read the passphrase from the first line of standard input.
        #[arg(long)]
        passphrase_stdin: bool,
    },
    /// Give this device the account's key with the passphrase.
    Unlock {
        #[arg(long)]
        passphrase_stdin: bool,
    },
    /// Wrap the key under a new passphrase (stdin: the current one, then the new one).
    ChangePassphrase {
        #[arg(long)]
        passphrase_stdin: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConflictAction {
    /// Settle a conflict: keep the winner, take the lost value, or write a new one.
    Resolve {
        conflict_id: String,
        #[arg(long, group = "choice")]
        keep: bool,
        #[arg(long, group = "choice")]
        take_lost: bool,
        /// A JSON value to write instead of either side.
        #[arg(long, group = "choice", value_name = "JSON")]
        value: Option<String>,
    },
}

/// How long `put` and `delete` try to send before leaving the write queued.
const SEND_NOW: Duration = Duration::from_secs(3);

pub async fn run(args: ClientArgs, command: ClientCommand) -> anyhow::Result<()> {
    let dir = profile_dir(&args)?;
    let path = dir.join("replica.sqlite3");
    if let ClientCommand::Logout { forget: true, force } = command {
        return forget(&path, force).await;
    }
    let client = open(&path)?;
    match command {
        ClientCommand::Login {
            server,
            email,
            password_stdin,
        } => login(&client, &server, email, password_stdin).await,
        ClientCommand::Logout { .. } => {
            client.logout().await?;
            eprintln!("signed out; local records and unsent writes are kept");
            Ok(())
        }
        ClientCommand::Status { json } => status(&client, json).await,
        ClientCommand::Sync { json } => sync(&client, json).await,
        ClientCommand::Watch { json } => watch(&client, json).await,
        ClientCommand::Get { collection, id, json } => get(&client, &collection, &id, json).await,
        ClientCommand::Put {
            collection,
            id,
            fields,
        } => {
            let fields: Map<String, Value> =
                serde_json::from_str(&fields).context("--fields must be a JSON object")?;
            client.put(&collection, &id, fields).await?;
            send_now(&client).await
        }
        ClientCommand::Delete { collection, id } => {
            client.delete(&collection, &id).await?;
            send_now(&client).await
        }
        ClientCommand::List {
            collection,
            recent,
            limit,
            json,
        } => list(&client, collection, recent, limit, json).await,
        ClientCommand::Conflicts { action, json } => conflicts(&client, action, json).await,
        ClientCommand::Verify { repair, json } => verify(&client, repair, json).await,
        ClientCommand::Trash {
            action,
            collection,
            json,
        } => crate::history::trash(&client, action, collection, json)
            .await
            .map_err(explain_any),
        ClientCommand::Restore {
            at,
            collection,
            id,
            dry_run,
            json,
        } => crate::history::restore(&client, &at, collection.as_deref(), id.as_deref(), dry_run, json)
            .await
            .map_err(explain_any),
        ClientCommand::Encryption { action } => encryption(&client, action).await,
        ClientCommand::Export { file, offline } => export(&client, &file, offline).await,
        ClientCommand::Import { file } => import(&client, &file).await,
    }
}

fn spinner(message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner().with_message(message.to_owned());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

async fn export(client: &Client, file: &std::path::Path, offline: bool) -> anyhow::Result<()> {
    if !offline {
        let bar = spinner("syncing");
        let synced = client.sync().await;
        bar.finish_and_clear();
        match synced {
            Ok(_) => {}
            Err(e) if e.is_transient() => {
                eprintln!("not synced ({e}); exporting this replica as of its last sync");
            }
            Err(e) => return Err(explain(e)),
        }
    }
    let bar = spinner("rendering");
    let json = client.export_nextchat().await?;
    bar.finish_and_clear();
    // Written aside and renamed: a failed export never leaves half a file under the name.
    let mut partial = file.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    write_private(&partial, &json).with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, file).with_context(|| format!("writing {}", file.display()))?;
    let sessions = client.sessions(None).await?.len();
    eprintln!(
        "wrote {} ({sessions} sessions, {:.1} MB)",
        file.display(),
        json.len() as f64 / 1e6
    );
    Ok(())
}

/// A backup holds conversations: owner-only, like the replica.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut out = options.open(path)?;
    out.write_all(bytes)?;
    out.sync_all()
}

async fn import(client: &Client, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
        .with_context(|| format!("{} is not a JSON backup file", file.display()))?;
    let bar = indicatif::ProgressBar::new(bytes.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("uploading");
    let progress = bar.clone();
    let summary = client
        .import_nextchat(bytes, move |sent| progress.set_position(sent))
        .await;
    bar.finish_and_clear();
    let summary = summary.map_err(explain)?;
    eprintln!(
        "imported: {} new, {} edited, {} already there, {} deleted earlier and left deleted",
        summary.created, summary.edited, summary.stale, summary.deleted
    );
    Ok(())
}

async fn encryption(client: &Client, action: EncryptionAction) -> anyhow::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut secret = |from_stdin: bool, prompt: &str| -> anyhow::Result<String> {
        if from_stdin {
            let mut line = String::new();
            stdin.read_line(&mut line).context("reading the passphrase")?;
            Ok(line.trim_end_matches(['\r', '\n']).to_owned())
        } else {
            rpassword::prompt_password(prompt).context("reading the passphrase")
        }
    };
    match action {
        EncryptionAction::Enable { passphrase_stdin } => {
            let passphrase = secret(passphrase_stdin, "New passphrase: ")?;
            if !passphrase_stdin && secret(false, "Again: ")? != passphrase {
                bail!("the passphrases differ");
            }
            client.enable_encryption(&passphrase).await.map_err(explain)?;
            eprintln!(
                "end-to-end encryption is on: the server now holds ciphertext only. Keep the \
                 passphrase safe: without it no new device can read this account."
            );
        }
        EncryptionAction::Unlock { passphrase_stdin } => {
            let passphrase = secret(passphrase_stdin, "Passphrase: ")?;
            client.unlock(&passphrase).await.map_err(explain)?;
            let report = client.sync().await.map_err(explain)?;
            eprintln!("unlocked; pulled {} records", report.pulled);
        }
        EncryptionAction::ChangePassphrase { passphrase_stdin } => {
            let current = secret(passphrase_stdin, "Current passphrase: ")?;
            let new = secret(passphrase_stdin, "New passphrase: ")?;
            if !passphrase_stdin && secret(false, "Again: ")? != new {
                bail!("the passphrases differ");
            }
            client.change_passphrase(&current, &new).await.map_err(explain)?;
            eprintln!("passphrase changed; other devices keep working");
        }
    }
    Ok(())
}

fn profile_dir(args: &ClientArgs) -> anyhow::Result<PathBuf> {
    let valid = !args.profile.is_empty()
        && args.profile.len() <= 64
        && args
            .profile
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        bail!("a profile name is 1 to 64 letters, digits, '-' or '_'");
    }
    let home = match &args.client_home {
        Some(home) => home.clone(),
        None => dirs::data_dir()
            .context("no data directory on this platform; set NEXTSYNC_CLIENT_HOME")?
            .join("nextsync")
            .join("profiles"),
    };
    let dir = home.join(&args.profile);
    create_private_dir(&dir)?;
    Ok(dir)
}

#[cfg(unix)]
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // An existing directory keeps its mode through `create`: tighten it too.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))
}

#[cfg(not(unix))]
fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

fn open(path: &std::path::Path) -> anyhow::Result<Client> {
    let client =
        Client::open(path, Options::default()).with_context(|| format!("opening {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", path.display()))?;
    }
    Ok(client)
}

async fn login(
    client: &Client,
    server: &str,
    email: Option<String>,
    password_stdin: bool,
) -> anyhow::Result<()> {
    let email = match email {
        Some(email) => email,
        None if password_stdin => bail!("--password-stdin needs --email"),
        None => prompt_line("Email: ")?,
    };
    let password = if password_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password")?;
        line.trim_end_matches(['\r', '\n']).to_owned()
    } else {
        rpassword::prompt_password(format!("Password for {email}: ")).context("reading the password")?
    };
    if password.is_empty() {
        bail!("empty password");
    }
    client
        .login(server, &email, Secret::new(password))
        .await
        .map_err(explain)?;
    eprintln!("signed in to {server} as {email}");
    // A first pull, so the replica is useful at once; failing it is not failing the sign-in.
    match client.sync().await {
        Ok(report) => eprintln!("pulled {} records", report.pulled),
        Err(e) => eprintln!("not synced yet: {e}"),
    }
    Ok(())
}

fn prompt_line(prompt: &str) -> anyhow::Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

async fn forget(path: &std::path::Path, force: bool) -> anyhow::Result<()> {
    if path.exists() {
        let client = open(path)?;
        let status = client.status().await?;
        if status.outbox > 0 && !force {
            bail!(
                "{} writes were never sent; run `nextsync sync` first, or add --force to lose them",
                status.outbox
            );
        }
        let _ = client.logout().await;
        drop(client);
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", PathBuf::from(&file).display()));
                }
            }
        }
    }
    eprintln!("profile forgotten");
    Ok(())
}

/// Tries to send the outbox for a moment; a write that cannot go yet stays queued.
async fn send_now(client: &Client) -> anyhow::Result<()> {
    match tokio::time::timeout(SEND_NOW, client.sync()).await {
        Ok(Ok(_)) => eprintln!("saved and sent"),
        Ok(Err(e)) => eprintln!("saved; queued until the next sync ({e})"),
        Err(_) => eprintln!("saved; queued until the next sync (the server is slow to answer)"),
    }
    Ok(())
}

async fn status(client: &Client, json: bool) -> anyhow::Result<()> {
    let status = client.status().await?;
    if json {
        println!("{}", serde_json::to_string(&status)?);
        return Ok(());
    }
    match (&status.email, &status.server) {
        (Some(email), Some(server)) if status.signed_in => println!("signed in as {email} at {server}"),
        (Some(email), Some(server)) => println!("signed out ({email} at {server}); run `nextsync login`"),
        _ => println!("not signed in; run `nextsync login --server URL`"),
    }
    println!("records:  {}", status.records);
    println!(
        "outbox:   {} unsent, {} awaiting confirmation",
        status.outbox, status.unconfirmed
    );
    if status.rejected > 0 {
        println!("refused:  {} (see `nextsync status --json`)", status.rejected);
        for r in client.rejected().await? {
            println!("  {}/{}: {} ({})", r.collection, r.id, r.message, r.code);
        }
    }
    println!("last sync: {}", status.last_sync.as_deref().unwrap_or("never"));
    if let Some(at) = &status.last_verified {
        println!(
            "last verified against the server: {at} ({} records repaired)",
            status.last_repaired
        );
    }
    match status.encryption {
        Encryption::Off => {}
        Encryption::On => println!("end-to-end encryption: on"),
        Encryption::Locked => {
            println!("end-to-end encryption: locked; run `nextsync encryption unlock`")
        }
    }
    Ok(())
}

async fn sync(client: &Client, json: bool) -> anyhow::Result<()> {
    let report = client.sync().await.map_err(explain)?;
    let status = client.status().await?;
    if json {
        println!(
            "{}",
            json!({"pushed": report.pushed, "pulled": report.pulled, "outbox": status.outbox, "rejected": status.rejected})
        );
    } else {
        println!("pushed {}, pulled {}", report.pushed, report.pulled);
        if status.rejected > 0 {
            println!(
                "{} writes were refused by the server (see `nextsync status`)",
                status.rejected
            );
        }
    }
    Ok(())
}

async fn watch(client: &Client, json: bool) -> anyhow::Result<()> {
    let mut changes = client.subscribe();
    let mut connection = client.connection();
    let live = client.start();
    let mut shown = Connection::Idle;
    let mut stop = std::pin::pin!(nextsync_server::shutdown_signal());
    let result = loop {
        tokio::select! {
            () = &mut stop => break Ok(()),
            change = changes.recv() => match change {
                Ok(change) => print_change(&change, json)?,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("({n} changes were too quick to print; `nextsync list` shows the state)");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break Ok(()),
            },
            changed = connection.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                let state = *connection.borrow_and_update();
                if !json && state != shown {
                    eprintln!("[{}]", describe(state));
                    shown = state;
                }
                if state == Connection::SignedOut {
                    break Err(anyhow!("this device was signed out; run `nextsync login` again"));
                }
            }
        }
    };
    live.stop().await;
    result
}

fn describe(state: Connection) -> &'static str {
    match state {
        Connection::Idle => "stopped",
        Connection::Connecting => "connecting",
        Connection::Live => "live",
        Connection::Polling => "live (long-polling: the WebSocket is blocked)",
        Connection::Offline => "offline, retrying",
        Connection::SignedOut => "signed out",
        Connection::Locked => "locked: the account is end-to-end encrypted; run `nextsync encryption unlock`",
    }
}

fn print_change(change: &Change, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, change)?;
        writeln!(out)?;
    } else {
        let r = &change.record;
        let what = if r.deleted {
            "deleted".to_owned()
        } else {
            Value::Object(r.fields.clone()).to_string()
        };
        writeln!(out, "{}/{} {what}", r.collection, r.id)?;
    }
    // One line per change as it arrives, also into a pipe.
    out.flush()?;
    Ok(())
}

async fn get(client: &Client, collection: &str, id: &str, json: bool) -> anyhow::Result<()> {
    let Some(record) = client.get(collection, id).await?.filter(|r| !r.deleted) else {
        bail!("no record {collection}/{id} in the local replica (run `nextsync sync` to pull)");
    };
    if json {
        println!("{}", serde_json::to_string(&record)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&record.fields)?);
        if record.pending {
            eprintln!("(a local change is not yet confirmed by the server)");
        }
    }
    Ok(())
}

async fn list(
    client: &Client,
    collection: Option<String>,
    recent: bool,
    limit: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    let records = client
        .list(Query {
            collection,
            order: if recent { Order::RecentFirst } else { Order::Id },
            include_deleted: false,
            limit,
        })
        .await?;
    let mut out = std::io::stdout().lock();
    for record in records {
        if json {
            serde_json::to_writer(&mut out, &record)?;
            writeln!(out)?;
        } else {
            let summary = ["title", "topic", "name", "content"]
                .iter()
                .find_map(|f| record.fields.get(*f).and_then(Value::as_str))
                .unwrap_or("");
            let summary: String = summary.chars().take(60).collect();
            writeln!(out, "{}/{}\t{summary}", record.collection, record.id)?;
        }
    }
    Ok(())
}

async fn conflicts(client: &Client, action: Option<ConflictAction>, json: bool) -> anyhow::Result<()> {
    match action {
        None => {
            let conflicts = client.conflicts().await?;
            if json {
                println!("{}", serde_json::to_string(&json!({ "conflicts": conflicts }))?);
            } else if conflicts.is_empty() {
                println!("no conflicts");
            } else {
                for c in conflicts {
                    println!(
                        "{}  {}/{} field {:?}: kept {} — lost {}",
                        c.conflict_id, c.collection, c.id, c.field, c.kept.value, c.lost.value
                    );
                }
                println!("settle one with `nextsync conflicts resolve ID --keep|--take-lost|--value JSON`");
            }
            Ok(())
        }
        Some(ConflictAction::Resolve {
            conflict_id,
            keep,
            take_lost,
            value,
        }) => {
            let resolution = match (keep, take_lost, value) {
                (true, _, _) => Resolution::Keep,
                (_, true, _) => Resolution::TakeLost,
                (_, _, Some(value)) => {
                    Resolution::Value(serde_json::from_str(&value).context("--value must be JSON")?)
                }
                _ => bail!("say how: --keep, --take-lost or --value JSON"),
            };
            client.resolve(&conflict_id, resolution).await.map_err(explain)?;
            eprintln!("resolved");
            Ok(())
        }
    }
}

/// The SDK's error, with what to do about it.
async fn verify(client: &Client, repair: bool, json: bool) -> anyhow::Result<()> {
    let health = client.verify(repair).await.map_err(explain)?;
    if json {
        println!("{}", serde_json::to_string(&health)?);
    } else {
        for c in &health.collections {
            let state = if c.matches {
                "ok".to_owned()
            } else {
                format!("DIFFERS in {} bucket(s)", c.differing_buckets)
            };
            println!(
                "{}\t{} records here, {} on the server\t{state}",
                c.collection, c.local_records, c.server_records
            );
        }
        for r in &health.repaired {
            println!("repaired {}/{}: {}", r.collection, r.id, r.action);
        }
        if health.collections.is_empty() {
            println!("no records on either side");
        }
    }
    if !health.ok {
        bail!(if repair {
            "the replica still differs from the server after the repair"
        } else {
            "the replica differs from the server; run `nextsync verify --repair`"
        });
    }
    Ok(())
}

/// [`explain`] for an SDK error inside an `anyhow` one.
fn explain_any(e: anyhow::Error) -> anyhow::Error {
    match e.downcast::<Error>() {
        Ok(e) => explain(e),
        Err(e) => e,
    }
}

fn explain(e: Error) -> anyhow::Error {
    match e {
        Error::Unreachable(why) => {
            anyhow!("cannot reach the server ({why}); local writes are kept and sent later")
        }
        Error::NotSignedIn | Error::SignedOut(_) => {
            anyhow!("{e}; run `nextsync login --server URL --email EMAIL`")
        }
        e => anyhow!(e),
    }
}
