//! Outgoing mail (password reset links). The `log` mailer, the zero-setup default, writes each
//! mail as a file under `<data_dir>/outbox/` (mode 0600: it holds a live token) and logs only
//! that it did; the SMTP mailer sends through lettre.
//!
//! SMTP URLs: `smtps://user:pass@host:465` is implicit TLS; `smtp://user:pass@host:587`
//! requires STARTTLS (unlike lettre's own reading of a bare `smtp://`, which is plaintext);
//! `?tls=opportunistic` tries STARTTLS, and `?tls=none` sends in the clear, for a relay on
//! localhost only.

use crate::config::MailerConfig;
use anyhow::Context;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    /// May hold a token: never logged.
    pub body: String,
}

#[derive(Clone)]
pub enum Mailer {
    Log {
        outbox: PathBuf,
    },
    Smtp {
        transport: AsyncSmtpTransport<Tokio1Executor>,
        from: Mailbox,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mailer::Log { outbox } => f.debug_struct("Log").field("outbox", outbox).finish(),
            Mailer::Smtp { from, .. } => f.debug_struct("Smtp").field("from", &from.to_string()).finish(),
        }
    }
}

impl Mailer {
    pub fn from_config(config: &MailerConfig, outbox: PathBuf) -> anyhow::Result<Self> {
        Ok(match config {
            MailerConfig::Log => Mailer::Log { outbox },
            MailerConfig::Smtp { url, from } => Mailer::Smtp {
                transport: AsyncSmtpTransport::<Tokio1Executor>::from_url(&lettre_url(url.expose()))
                    .context("invalid --smtp-url")?
                    .build(),
                from: from.parse().context("invalid --smtp-from address")?,
            },
        })
    }

    pub async fn send(&self, mail: Mail) -> anyhow::Result<()> {
        match self {
            Mailer::Log { outbox } => {
                let outbox = outbox.clone();
                let to = mail.to.clone();
                let path = tokio::task::spawn_blocking(move || write_to_outbox(&outbox, &mail)).await??;
                tracing::info!(to = %to, path = %path.display(), "mail written to outbox (log mailer)");
                Ok(())
            }
            Mailer::Smtp { transport, from } => {
                let message = Message::builder()
                    .from(from.clone())
                    .to(mail.to.parse().context("invalid recipient")?)
                    .subject(mail.subject)
                    .header(ContentType::TEXT_PLAIN)
                    .body(mail.body)
                    .context("building mail")?;
                transport.send(message).await.context("sending mail over SMTP")?;
                tracing::info!(to = %mail.to, "mail sent");
                Ok(())
            }
        }
    }
}

/// Our URL convention in lettre's terms: a bare `smtp://` means STARTTLS required.
fn lettre_url(url: &str) -> String {
    if !url.starts_with("smtp://") {
        return url.to_owned();
    }
    if url.contains("tls=none") {
        let cleaned = url
            .replace("?tls=none&", "?")
            .replace("&tls=none", "")
            .replace("?tls=none", "");
        return cleaned;
    }
    if url.contains("tls=") {
        return url.to_owned();
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}tls=required")
}

fn write_to_outbox(outbox: &std::path::Path, mail: &Mail) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(outbox).with_context(|| format!("creating {}", outbox.display()))?;
    let name = format!(
        "{}-{}.eml",
        nextsync_core::time::Timestamp::now().as_millis(),
        uuid::Uuid::new_v4().simple()
    );
    let path = outbox.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    write!(
        file,
        "To: {}\nSubject: {}\n\n{}\n",
        mail.to, mail.subject, mail.body
    )?;
    file.sync_all()?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::lettre_url;

    #[test]
    fn a_bare_smtp_url_requires_starttls() {
        assert_eq!(
            lettre_url("smtp://u:p@mail:587"),
            "smtp://u:p@mail:587?tls=required"
        );
        assert_eq!(
            lettre_url("smtp://mail:587?tls=opportunistic"),
            "smtp://mail:587?tls=opportunistic"
        );
        assert_eq!(lettre_url("smtp://localhost:25?tls=none"), "smtp://localhost:25");
        assert_eq!(
            lettre_url("smtp://localhost:25?tls=none&x=1"),
            "smtp://localhost:25?x=1"
        );
        assert_eq!(lettre_url("smtps://u:p@mail:465"), "smtps://u:p@mail:465");
    }
}
