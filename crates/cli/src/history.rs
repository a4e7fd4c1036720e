//! `nextsync trash …` and `nextsync restore`: the account's trash and point-in-time restore,
//! through the SDK. Both act on the server (they need it); what they bring back reaches the
//! profile's replica through the feed, pulled at once.

use crate::settings::DurationArg;
use anyhow::{Context, bail};
use clap::Subcommand;
use nextsync_client::Client;
use nextsync_core::api::{RestoreAction, RestoreResponse};
use nextsync_core::time::Timestamp;
use serde_json::Value;
use std::io::Write;

#[derive(Debug, Subcommand)]
pub enum TrashAction {
    /// Bring a record back on every device, with what was deleted together with it.
    Restore {
        collection: String,
        id: String,
        /// Only this record, not what the same write deleted.
        #[arg(long)]
        alone: bool,
    },
    /// Forget one record in the trash for good.
    Purge { collection: String, id: String },
    /// Forget everything in the trash (of --collection) for good.
    Empty {
        /// Confirms: nothing emptied can be restored.
        #[arg(long)]
        yes: bool,
    },
}

pub async fn trash(
    client: &Client,
    action: Option<TrashAction>,
    collection: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    match action {
        None => list(client, collection.as_deref(), json).await,
        Some(TrashAction::Restore {
            collection,
            id,
            alone,
        }) => {
            let n = client.restore_from_trash(&collection, &id, !alone).await?;
            eprintln!("restored {n} record{} on every device", plural(n));
            Ok(())
        }
        Some(TrashAction::Purge { collection, id }) => {
            client.purge_from_trash(&collection, &id).await?;
            eprintln!("{collection}/{id} deleted for good");
            Ok(())
        }
        Some(TrashAction::Empty { yes }) => {
            if !yes {
                bail!("emptying the trash cannot be undone; add --yes to go ahead");
            }
            let n = client.empty_trash(collection.as_deref()).await?;
            eprintln!("{n} record{} deleted for good", plural(n as usize));
            Ok(())
        }
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

async fn list(client: &Client, collection: Option<&str>, json: bool) -> anyhow::Result<()> {
    let items = client.trash(collection).await?;
    let mut out = std::io::stdout().lock();
    if !json && items.is_empty() {
        eprintln!("the trash is empty");
    }
    for item in items {
        if json {
            serde_json::to_writer(&mut out, &item)?;
            writeln!(out)?;
        } else {
            let summary = ["title", "topic", "name", "content"]
                .iter()
                .find_map(|f| item.fields.get(*f).and_then(Value::as_str))
                .unwrap_or("");
            let summary: String = summary.chars().take(60).collect();
            writeln!(
                out,
                "{}/{}\tdeleted {}\t{summary}",
                item.collection, item.id, item.deleted_at
            )?;
        }
    }
    Ok(())
}

/// `--at`: an RFC 3339 time, or how long ago (`90m`, `2h`, `1d`).
fn moment(text: &str) -> anyhow::Result<Timestamp> {
    if let Some(at) = Timestamp::parse_rfc3339(text) {
        return Ok(at);
    }
    let ago: DurationArg = text
        .parse()
        .map_err(|e: String| anyhow::anyhow!(e))
        .with_context(|| format!("--at {text:?} is neither an RFC 3339 time nor a duration ago"))?;
    Ok(Timestamp::now().minus_secs(i64::try_from(ago.0.as_secs()).unwrap_or(i64::MAX)))
}

pub async fn restore(
    client: &Client,
    at: &str,
    collection: Option<&str>,
    id: Option<&str>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<()> {
    let at = moment(at)?;
    let answer = client.restore_to(at, collection, id, dry_run).await?;
    if json {
        println!("{}", serde_json::to_string(&answer)?);
        return Ok(());
    }
    print_plan(&answer)?;
    Ok(())
}

fn print_plan(answer: &RestoreResponse) -> anyhow::Result<()> {
    let total = answer.restored + answer.reverted + answer.trashed;
    let mut out = std::io::stdout().lock();
    if total == 0 {
        writeln!(out, "nothing changed since {}", answer.at)?;
        return Ok(());
    }
    for change in &answer.changes {
        let action = match change.action {
            RestoreAction::Restore => "comes back",
            RestoreAction::Revert => "old values",
            RestoreAction::Trash => "to the trash",
        };
        writeln!(out, "{}/{}\t{action}", change.collection, change.id)?;
    }
    if answer.truncated {
        writeln!(out, "… and {} more", total as usize - answer.changes.len())?;
    }
    let verb = if answer.dry_run { "would" } else { "did" };
    writeln!(
        out,
        "{verb}: {} come back, {} return to old values, {} move to the trash (as of {})",
        answer.restored, answer.reverted, answer.trashed, answer.at
    )?;
    Ok(())
}
