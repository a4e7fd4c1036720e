//! [`Config`]: the server's fully resolved settings, built once in `main` (from flags,
//! `NEXTSYNC_…` environment variables and the TOML file) and shared read-only.

use nextsync_core::push::SyncLimits;
use nextsync_core::secret::Secret;
use serde::Serialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub data_dir: PathBuf,
    pub bind: SocketAddr,
    /// `None`: the embedded SQLite file `<data_dir>/nextsync.db`.
    #[serde(serialize_with = "redact::url")]
    pub database_url: Option<Secret>,
    #[serde(serialize_with = "redact::url")]
    pub redis_url: Option<Secret>,
    pub registration: Registration,
    pub tls: Option<TlsFiles>,
    /// Base URL used in mails (reset links). Defaults to the bind address.
    pub public_url: String,
    pub mailer: MailerConfig,
    /// HMAC key for access tokens. `None`: generated into the data dir on first start.
    /// Several instances behind one load balancer must share it.
    #[serde(serialize_with = "redact::secret")]
    pub jwt_secret: Option<Secret>,
    pub jwt_algorithm: JwtAlgorithm,
    #[serde(with = "secs")]
    pub access_token_ttl: Duration,
    #[serde(with = "secs")]
    pub refresh_token_ttl: Duration,
    #[serde(with = "secs")]
    pub reset_token_ttl: Duration,
    pub rate_limits: RateLimits,
    /// Take the client address from `X-Forwarded-For` (only behind a reverse proxy you run).
    pub trust_proxy_headers: bool,
    pub max_body_bytes: usize,
    /// Largest NextChat upload (WebDAV PUT, Upstash state, import), after decompression.
    pub nextchat_max_upload_bytes: usize,
    /// Key sealing the NextChat secrets of accounts that sync them. `None`: generated into
    /// the data dir on first start. Several instances must share it.
    #[serde(serialize_with = "redact::secret")]
    pub secrets_key: Option<Secret>,
    #[serde(with = "limits")]
    pub sync_limits: SyncLimits,
    /// How long a deleted record stays in the trash.
    #[serde(with = "secs")]
    pub trash_retention: Duration,
    /// How far back a point-in-time restore reaches (per-record history is kept this long).
    #[serde(with = "secs")]
    pub history_retention: Duration,
    /// How long one WebSocket frame may take to leave: a client that stops reading is closed
    /// (1008 `slow_reader`) instead of holding its queue and the socket's task forever.
    /// Not a setting (tests shorten it).
    #[serde(skip)]
    pub ws_send_timeout: Duration,
    /// How long a small request body (read before routing, see `edge`) may take to arrive.
    /// Not a setting (tests shorten it).
    #[serde(skip)]
    pub body_read_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Open,
    Closed,
}

#[derive(Debug, Clone, Serialize)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MailerConfig {
    /// Writes each mail to `<data_dir>/outbox/` and logs that it did (never the token).
    Log,
    /// `smtp://user:pass@host:587` (STARTTLS) or `smtps://…` (implicit TLS).
    Smtp {
        #[serde(serialize_with = "redact::url")]
        url: Secret,
        from: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JwtAlgorithm {
    HS256,
    HS384,
    HS512,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateLimits {
    /// Sustained requests a minute per client address on login, register, forgot and reset.
    pub ip_per_minute: u32,
    /// Requests a client address may make at once before the per-minute rate applies.
    pub ip_burst: u32,
    /// Failed logins (and register/forgot/reset requests) per account per window.
    pub account_attempts: u32,
    #[serde(with = "secs")]
    pub account_window: Duration,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            ip_per_minute: 60,
            ip_burst: 20,
            account_attempts: 10,
            account_window: Duration::from_secs(15 * 60),
        }
    }
}

impl Config {
    /// Defaults for everything: what `nextsync serve` with no flags runs with.
    pub fn with_data_dir(data_dir: PathBuf) -> Self {
        let bind: SocketAddr = ([127, 0, 0, 1], 8787).into();
        Self {
            data_dir,
            bind,
            database_url: None,
            redis_url: None,
            registration: Registration::Open,
            tls: None,
            public_url: format!("http://{bind}"),
            mailer: MailerConfig::Log,
            jwt_secret: None,
            jwt_algorithm: JwtAlgorithm::HS256,
            access_token_ttl: Duration::from_secs(15 * 60),
            refresh_token_ttl: Duration::from_secs(60 * 24 * 3600),
            reset_token_ttl: Duration::from_secs(30 * 60),
            rate_limits: RateLimits::default(),
            trust_proxy_headers: false,
            max_body_bytes: 16 * 1024 * 1024,
            nextchat_max_upload_bytes: 64 * 1024 * 1024,
            secrets_key: None,
            sync_limits: SyncLimits::default(),
            trash_retention: Duration::from_secs(30 * 24 * 3600),
            history_retention: Duration::from_secs(7 * 24 * 3600),
            ws_send_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
        }
    }

    /// The path of `public_url` without its trailing slash (`""` at the root): a reverse
    /// proxy that serves nextsync under a sub-path may pass it on, and the router strips it.
    pub fn path_prefix(&self) -> &str {
        let after_scheme = self
            .public_url
            .split_once("://")
            .map_or(self.public_url.as_str(), |(_, rest)| rest);
        after_scheme
            .find('/')
            .map_or("", |slash| {
                after_scheme[slash..].split(['?', '#']).next().unwrap_or("")
            })
            .trim_end_matches('/')
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("nextsync.db")
    }

    pub fn outbox_dir(&self) -> PathBuf {
        self.data_dir.join("outbox")
    }
}

/// `Config`'s `Serialize` exists for `--print-config`, so secret fields serialize redacted:
/// a URL keeps everything but its password, a key shows only that it is set.
mod redact {
    use nextsync_core::secret::Secret;
    use serde::Serializer;

    pub const REDACTED: &str = "[redacted]";

    pub fn secret<S: Serializer>(value: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(_) => s.serialize_str(REDACTED),
            None => s.serialize_none(),
        }
    }

    pub fn url<S: Serializer, V: AsOptSecret>(value: &V, s: S) -> Result<S::Ok, S::Error> {
        match value.as_opt() {
            Some(url) => s.serialize_str(&redact_password(url.expose())),
            None => s.serialize_none(),
        }
    }

    pub trait AsOptSecret {
        fn as_opt(&self) -> Option<&Secret>;
    }

    impl AsOptSecret for Secret {
        fn as_opt(&self) -> Option<&Secret> {
            Some(self)
        }
    }

    impl AsOptSecret for Option<Secret> {
        fn as_opt(&self) -> Option<&Secret> {
            self.as_ref()
        }
    }

    /// `scheme://user:pass@host/…` → `scheme://user:[redacted]@host/…`; also drops a
    /// `password=` query parameter's value.
    pub fn redact_password(url: &str) -> String {
        let mut out = url.to_owned();
        if let Some(scheme_end) = out.find("://") {
            let rest = &out[scheme_end + 3..];
            let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            if let Some(at) = rest[..authority_end].rfind('@')
                && let Some(colon) = rest[..at].find(':')
            {
                let start = scheme_end + 3 + colon + 1;
                let end = scheme_end + 3 + at;
                out.replace_range(start..end, REDACTED);
            }
        }
        if let Some(pos) = out.find("password=") {
            let start = pos + "password=".len();
            let end = out[start..].find('&').map_or(out.len(), |e| start + e);
            out.replace_range(start..end, REDACTED);
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::redact_password;

        #[test]
        fn url_passwords_are_redacted_and_the_rest_kept() {
            assert_eq!(
                redact_password("postgres://app:s3cret@db:5432/nextsync"),
                "postgres://app:[redacted]@db:5432/nextsync"
            );
            assert_eq!(
                redact_password("redis://127.0.0.1:6379"),
                "redis://127.0.0.1:6379"
            );
            assert_eq!(
                redact_password("postgres://db/x?user=a&password=b&sslmode=require"),
                "postgres://db/x?user=a&password=[redacted]&sslmode=require"
            );
        }
    }
}

/// Sync limits, as the printed config shows them.
mod limits {
    use nextsync_core::push::SyncLimits;
    use serde::Serializer;
    use serde::ser::SerializeStruct;

    pub fn serialize<S: Serializer>(l: &SyncLimits, s: S) -> Result<S::Ok, S::Error> {
        let mut out = s.serialize_struct("SyncLimits", 3)?;
        out.serialize_field("max_mutations_per_push", &l.max_mutations)?;
        out.serialize_field("max_field_bytes", &l.max_field_bytes)?;
        out.serialize_field("max_clock_skew", &(l.max_clock_skew_ms / 1000))?;
        out.end()
    }
}

/// Durations are written as whole seconds in the printed config.
mod secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

/// Checks that `url` is a Redis URL the client accepts (it is not connected to here).
pub fn validate_redis_url(url: &str) -> anyhow::Result<()> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))
}

/// Checks that `url` names PostgreSQL, the one server database nextsync supports.
pub fn validate_database_url(url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        url.starts_with("postgres://") || url.starts_with("postgresql://"),
        "--database-url must be a postgres:// URL (leave it unset for the embedded SQLite store)"
    );
    Ok(())
}
