//! `nextsync admin user create|list|disable|enable|delete|set-password`: account chores for
//! operators, straight on the store (the server may be running; both see the same rows).

use anyhow::{Context, bail};
use clap::Subcommand;
use nextsync_core::account::{Email, check_new_password};
use nextsync_core::ids::UserId;
use nextsync_core::secret::Secret;
use nextsync_core::time::Timestamp;
use nextsync_server::auth::password::Passwords;
use nextsync_server::config::Config;
use nextsync_store::accounts::NewUser;
use nextsync_store::{Store, StoreError};
use std::io::BufRead;

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Copy the embedded database to FILE while the server runs (consistent at one moment).
    Backup { file: std::path::PathBuf },
    /// Put a backup in place of the embedded database; the server must be stopped.
    Restore {
        file: std::path::PathBuf,
        /// Confirm replacing the current database (kept beside it).
        #[arg(long)]
        yes: bool,
    },
    /// Check the store's invariants (feed heads, seqs, history, conflicts, digests) in one
    /// snapshot and print a report; exits 1 when one is broken. Safe while the server runs.
    Verify {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create an account. Without --password-stdin a strong password is generated and printed.
    Create {
        email: String,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List accounts.
    List,
    /// Disable an account: its devices stop working at once and it cannot sign in.
    Disable { email: String },
    /// Enable a disabled account again.
    Enable { email: String },
    /// Delete an account and all of its data.
    Delete {
        email: String,
        /// Confirm the deletion.
        #[arg(long)]
        yes: bool,
    },
    /// Set a new password and sign out every device of the account.
    SetPassword {
        email: String,
        #[arg(long)]
        password_stdin: bool,
    },
}

pub async fn run(config: Config, command: AdminCommand) -> anyhow::Result<()> {
    let command = match command {
        AdminCommand::User(command) => command,
        AdminCommand::Backup { file } => {
            return tokio::task::spawn_blocking(move || crate::backup::backup(&config, &file)).await?;
        }
        AdminCommand::Restore { file, yes } => {
            return tokio::task::spawn_blocking(move || crate::backup::restore(&config, &file, yes)).await?;
        }
        AdminCommand::Verify { json } => return verify(&config, json).await,
    };
    nextsync_server::secrets::ensure_data_dir(&config.data_dir)?;
    let store = nextsync_server::state::open_store(&config).await?;
    match command {
        UserCommand::Create {
            email,
            password_stdin,
        } => {
            let email = Email::parse(&email)?;
            let (password, generated) = new_password(password_stdin, &email)?;
            let password_hash = hash(&password).await?;
            let user = NewUser {
                id: UserId::new(),
                email,
                password_hash,
                created_at: Timestamp::now(),
            };
            match store.create_user(&user, None).await {
                Err(StoreError::Conflict { .. }) => {
                    bail!("an account with email {} already exists", user.email)
                }
                other => other?,
            }
            println!("created {} ({})", user.email, user.id);
            if generated {
                println!("password: {}", password.expose());
            }
        }
        UserCommand::List => {
            println!(
                "{:<36}  {:<32}  {:<24}  {:<8}  devices",
                "user_id", "email", "created_at", "status"
            );
            for user in store.list_users().await? {
                let status = if user.disabled_at.is_some() {
                    "disabled"
                } else {
                    "active"
                };
                println!(
                    "{:<36}  {:<32}  {:<24}  {:<8}  {}",
                    user.id, user.email, user.created_at, status, user.active_devices
                );
            }
        }
        UserCommand::Disable { email } => {
            let user = find(&*store, &email).await?;
            store.set_user_disabled(user, Some(Timestamp::now())).await?;
            signed_out(&config, user).await;
            println!("disabled {email}");
        }
        UserCommand::Enable { email } => {
            let user = find(&*store, &email).await?;
            store.set_user_disabled(user, None).await?;
            println!("enabled {email}");
        }
        UserCommand::Delete { email, yes } => {
            let user = find(&*store, &email).await?;
            if !yes {
                bail!("this deletes {email} and all of its data; repeat with --yes to confirm");
            }
            store.delete_user(user).await?;
            signed_out(&config, user).await;
            println!("deleted {email}");
        }
        UserCommand::SetPassword {
            email,
            password_stdin,
        } => {
            let parsed = Email::parse(&email)?;
            let user = find(&*store, &email).await?;
            let (password, generated) = new_password(password_stdin, &parsed)?;
            let password_hash = hash(&password).await?;
            store
                .set_password(user, &password_hash, None, Timestamp::now())
                .await?;
            signed_out(&config, user).await;
            println!("password of {email} changed; every device signed out");
            if generated {
                println!("password: {}", password.expose());
            }
        }
    }
    Ok(())
}

/// Tells running instances that `user`'s devices were signed out, so open sockets close at
/// once. Only through Redis (`--redis-url`): without it sockets notice at their next store
/// re-check (30 s).
async fn signed_out(config: &Config, user: UserId) {
    let Some(url) = &config.redis_url else {
        return;
    };
    let notice = nextsync_server::bus::Notice::SignedOut { user };
    let published = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        nextsync_server::bus::publish_once(url.expose(), &notice),
    )
    .await;
    if !matches!(published, Ok(Ok(()))) {
        eprintln!("warning: Redis did not take the sign-out notice; open sockets close within 30 s");
    }
}

async fn find(store: &dyn Store, email: &str) -> anyhow::Result<UserId> {
    let email = Email::parse(email)?;
    match store.user_by_email(&email).await? {
        Some(user) => Ok(user.id),
        None => bail!("no account with email {email}"),
    }
}

async fn hash(password: &Secret) -> anyhow::Result<Secret> {
    let passwords = Passwords::new()?;
    passwords
        .hash(password)
        .await
        .map_err(|e| anyhow::anyhow!("hashing the password: {e:?}"))
}

/// The password from stdin (checked against the policy), or a generated one.
fn new_password(from_stdin: bool, email: &Email) -> anyhow::Result<(Secret, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from stdin")?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        check_new_password(&password, Some(email))?;
        return Ok((Secret::new(password), false));
    }
    let mut random = [0u8; 15];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    use base64::Engine;
    Ok((
        Secret::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)),
        true,
    ))
}

/// `admin verify`: the store's invariant check, as a report.
async fn verify(config: &Config, json: bool) -> anyhow::Result<()> {
    let store = nextsync_server::state::open_store(config).await?;
    let report = store.check().await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "users": report.users,
                "records": report.records,
                "digests_checked": report.digests_checked,
                "problems": report.problems,
            })
        );
    } else {
        println!(
            "{} users, {} records, digests of {} users recomputed",
            report.users, report.records, report.digests_checked
        );
        if report.problems.is_empty() {
            println!("every invariant holds");
        }
        for problem in &report.problems {
            println!("PROBLEM: {problem}");
        }
    }
    if !report.problems.is_empty() {
        bail!("{} invariants do not hold", report.problems.len());
    }
    Ok(())
}
