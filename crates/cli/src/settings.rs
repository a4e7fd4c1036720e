//! Settings as the operator writes them: one struct that is both the command-line flags (each
//! with a `NEXTSYNC_…` environment twin) and the TOML config file, so the three can never
//! disagree on a name. Precedence: flag > environment > file > default.

use anyhow::{Context, bail};
use clap::Args;
use nextsync_core::secret::Secret;
use nextsync_server::config::{
    Config, JwtAlgorithm, MailerConfig, RateLimits, Registration, TlsFiles, validate_database_url,
    validate_redis_url,
};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Directory for the SQLite database, generated secrets and the mail outbox.
    #[arg(long, env = "NEXTSYNC_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, env = "NEXTSYNC_BIND", value_name = "ADDR")]
    pub bind: Option<SocketAddr>,
    /// PostgreSQL URL (postgres://…); unset means the embedded SQLite store.
    #[arg(
        long,
        env = "NEXTSYNC_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<Secret>,
    /// Redis URL for fan-out between several instances.
    #[arg(long, env = "NEXTSYNC_REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<Secret>,
    /// Whether anyone may create an account (`open`) or only the operator (`closed`).
    #[arg(long, env = "NEXTSYNC_REGISTRATION", value_name = "open|closed")]
    pub registration: Option<RegistrationArg>,
    /// PEM certificate chain: serve HTTPS (needs --tls-key).
    #[arg(long, env = "NEXTSYNC_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "NEXTSYNC_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// URL under which users reach this server (used in reset links).
    #[arg(long, env = "NEXTSYNC_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// How mail is delivered: `log` (files in <data-dir>/outbox) or `smtp`.
    #[arg(long, env = "NEXTSYNC_MAILER", value_name = "log|smtp")]
    pub mailer: Option<MailerArg>,
    /// smtp://user:pass@host:587 (STARTTLS required), smtps://…:465 (TLS), or
    /// smtp://localhost:25?tls=none (plaintext, local relays only); implies --mailer smtp.
    #[arg(long, env = "NEXTSYNC_SMTP_URL", value_name = "URL", hide_env_values = true)]
    pub smtp_url: Option<Secret>,
    /// Sender address of outgoing mail.
    #[arg(long, env = "NEXTSYNC_SMTP_FROM", value_name = "ADDRESS")]
    pub smtp_from: Option<String>,
    /// Access-token signing key (≥ 32 characters); shared by every instance of one service.
    /// Unset: generated into the data dir on first start.
    #[arg(long, env = "NEXTSYNC_JWT_SECRET", value_name = "KEY", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// HS256, HS384 or HS512.
    #[arg(long, env = "NEXTSYNC_JWT_ALGORITHM", value_name = "ALG")]
    pub jwt_algorithm: Option<AlgorithmArg>,
    /// Lifetime of access tokens (e.g. 900, 15m, 1h).
    #[arg(long, env = "NEXTSYNC_ACCESS_TOKEN_TTL", value_name = "DURATION")]
    pub access_token_ttl: Option<DurationArg>,
    /// Lifetime of a refresh token (each refresh issues a new one).
    #[arg(long, env = "NEXTSYNC_REFRESH_TOKEN_TTL", value_name = "DURATION")]
    pub refresh_token_ttl: Option<DurationArg>,
    /// How long a password reset link works.
    #[arg(long, env = "NEXTSYNC_RESET_TOKEN_TTL", value_name = "DURATION")]
    pub reset_token_ttl: Option<DurationArg>,
    /// Requests a minute per client address on login/register/forgot/reset.
    #[arg(long, env = "NEXTSYNC_RATE_LIMIT_IP_PER_MINUTE", value_name = "N")]
    pub rate_limit_ip_per_minute: Option<u32>,
    /// Requests a client address may make at once before the per-minute rate applies.
    #[arg(long, env = "NEXTSYNC_RATE_LIMIT_IP_BURST", value_name = "N")]
    pub rate_limit_ip_burst: Option<u32>,
    /// Failed logins (and register/forgot/reset requests) per account per window.
    #[arg(long, env = "NEXTSYNC_RATE_LIMIT_ACCOUNT_ATTEMPTS", value_name = "N")]
    pub rate_limit_account_attempts: Option<u32>,
    /// The per-account window.
    #[arg(long, env = "NEXTSYNC_RATE_LIMIT_ACCOUNT_WINDOW", value_name = "DURATION")]
    pub rate_limit_account_window: Option<DurationArg>,
    /// Take client addresses from X-Forwarded-For (only behind your own reverse proxy).
    #[arg(long, env = "NEXTSYNC_TRUST_PROXY_HEADERS", value_name = "BOOL")]
    pub trust_proxy_headers: Option<bool>,
    /// Largest accepted request body in bytes.
    #[arg(long, env = "NEXTSYNC_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Largest NextChat upload in bytes (WebDAV PUT, Upstash state, import).
    #[arg(long, env = "NEXTSYNC_NEXTCHAT_MAX_UPLOAD_BYTES", value_name = "BYTES")]
    pub nextchat_max_upload_bytes: Option<usize>,
    /// Key sealing the NextChat API keys of accounts that sync them (≥ 32 characters);
    /// shared by every instance. Unset: generated into the data dir on first start.
    #[arg(
        long,
        env = "NEXTSYNC_SECRETS_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub secrets_key: Option<Secret>,
    /// Most mutations one push may carry.
    #[arg(long, env = "NEXTSYNC_MAX_MUTATIONS_PER_PUSH", value_name = "N")]
    pub max_mutations_per_push: Option<usize>,
    /// Largest field value in bytes (serialized JSON).
    #[arg(long, env = "NEXTSYNC_MAX_FIELD_BYTES", value_name = "BYTES")]
    pub max_field_bytes: Option<usize>,
    /// How far ahead of the server's clock a write's stamp may be.
    #[arg(long, env = "NEXTSYNC_MAX_CLOCK_SKEW", value_name = "DURATION")]
    pub max_clock_skew: Option<DurationArg>,
    /// How long a deleted record stays in the trash (e.g. 30d).
    #[arg(long, env = "NEXTSYNC_TRASH_RETENTION", value_name = "DURATION")]
    pub trash_retention: Option<DurationArg>,
    /// How far back a point-in-time restore reaches (e.g. 7d); per-record history is kept
    /// this long. 0 keeps none.
    #[arg(long, env = "NEXTSYNC_HISTORY_RETENTION", value_name = "DURATION")]
    pub history_retention: Option<DurationArg>,
    /// `text` or `json`: the file's twin of the global `--log-format` flag (which wins).
    #[arg(skip)]
    #[serde(default)]
    pub log_format: Option<LogFormat>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

macro_rules! layer {
    ($top:expr, $bottom:expr, [$($field:ident),* $(,)?]) => {
        Settings { $($field: $top.$field.or($bottom.$field),)* }
    };
}

impl Settings {
    /// Reads a TOML config file whose keys are the flag names with `_` for `-`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }

    /// Fields set in `self` win; the rest come from `lower`.
    pub fn over(self, lower: Settings) -> Settings {
        layer!(
            self,
            lower,
            [
                data_dir,
                bind,
                database_url,
                redis_url,
                registration,
                tls_cert,
                tls_key,
                public_url,
                mailer,
                smtp_url,
                smtp_from,
                jwt_secret,
                jwt_algorithm,
                access_token_ttl,
                refresh_token_ttl,
                reset_token_ttl,
                rate_limit_ip_per_minute,
                rate_limit_ip_burst,
                rate_limit_account_attempts,
                rate_limit_account_window,
                trust_proxy_headers,
                max_body_bytes,
                nextchat_max_upload_bytes,
                secrets_key,
                max_mutations_per_push,
                max_field_bytes,
                max_clock_skew,
                trash_retention,
                history_retention,
                log_format,
            ]
        )
    }

    /// Applies defaults and checks the combination.
    pub fn resolve(self) -> anyhow::Result<Config> {
        let mut config =
            Config::with_data_dir(self.data_dir.unwrap_or_else(|| PathBuf::from("nextsync-data")));
        if let Some(bind) = self.bind {
            config.bind = bind;
        }
        if let Some(url) = self.database_url {
            validate_database_url(url.expose())?;
            config.database_url = Some(url);
        }
        if let Some(url) = self.redis_url {
            validate_redis_url(url.expose())?;
            config.redis_url = Some(url);
        }
        if let Some(RegistrationArg(registration)) = self.registration {
            config.registration = registration;
        }
        config.tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key must be given together"),
        };
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        config.public_url = self
            .public_url
            .unwrap_or_else(|| format!("{scheme}://{}", config.bind));
        config.mailer = match (self.mailer, self.smtp_url) {
            (None | Some(MailerArg::Log), None) => MailerConfig::Log,
            (Some(MailerArg::Log), Some(_)) => bail!("--smtp-url given with --mailer log"),
            (Some(MailerArg::Smtp), None) => bail!("--mailer smtp needs --smtp-url"),
            (_, Some(url)) => MailerConfig::Smtp {
                url,
                from: self
                    .smtp_from
                    .unwrap_or_else(|| "nextsync <nextsync@localhost>".to_owned()),
            },
        };
        config.jwt_secret = self.jwt_secret;
        if let Some(key) = &config.jwt_secret {
            anyhow::ensure!(
                key.expose().len() >= 32,
                "--jwt-secret must be at least 32 characters"
            );
        }
        if let Some(AlgorithmArg(alg)) = self.jwt_algorithm {
            config.jwt_algorithm = alg;
        }
        let positive = |d: Option<DurationArg>, name: &str, default: Duration| -> anyhow::Result<Duration> {
            let d = d.map_or(default, |DurationArg(d)| d);
            anyhow::ensure!(!d.is_zero(), "--{name} must be longer than zero");
            Ok(d)
        };
        config.access_token_ttl =
            positive(self.access_token_ttl, "access-token-ttl", config.access_token_ttl)?;
        config.refresh_token_ttl = positive(
            self.refresh_token_ttl,
            "refresh-token-ttl",
            config.refresh_token_ttl,
        )?;
        config.reset_token_ttl = positive(self.reset_token_ttl, "reset-token-ttl", config.reset_token_ttl)?;
        let defaults = RateLimits::default();
        config.rate_limits = RateLimits {
            ip_per_minute: self.rate_limit_ip_per_minute.unwrap_or(defaults.ip_per_minute),
            ip_burst: self.rate_limit_ip_burst.unwrap_or(defaults.ip_burst),
            account_attempts: self
                .rate_limit_account_attempts
                .unwrap_or(defaults.account_attempts),
            account_window: positive(
                self.rate_limit_account_window,
                "rate-limit-account-window",
                defaults.account_window,
            )?,
        };
        anyhow::ensure!(
            config.rate_limits.ip_per_minute > 0
                && config.rate_limits.ip_burst > 0
                && config.rate_limits.account_attempts > 0,
            "rate limits must be at least 1"
        );
        config.trust_proxy_headers = self.trust_proxy_headers.unwrap_or(false);
        if let Some(bytes) = self.max_body_bytes {
            anyhow::ensure!(bytes >= 1024, "--max-body-bytes must be at least 1024");
            config.max_body_bytes = bytes;
        }
        if let Some(bytes) = self.nextchat_max_upload_bytes {
            anyhow::ensure!(bytes >= 1024, "--nextchat-max-upload-bytes must be at least 1024");
            config.nextchat_max_upload_bytes = bytes;
        }
        if let Some(key) = &self.secrets_key {
            anyhow::ensure!(
                key.expose().len() >= 32,
                "--secrets-key must be at least 32 characters"
            );
        }
        config.secrets_key = self.secrets_key;
        let limits = &mut config.sync_limits;
        if let Some(n) = self.max_mutations_per_push {
            anyhow::ensure!(n >= 1, "--max-mutations-per-push must be at least 1");
            limits.max_mutations = n;
        }
        if let Some(bytes) = self.max_field_bytes {
            anyhow::ensure!(bytes >= 64, "--max-field-bytes must be at least 64");
            limits.max_field_bytes = bytes;
        }
        if let Some(DurationArg(d)) = self.history_retention {
            config.history_retention = d;
        }
        config.trash_retention = positive(self.trash_retention, "trash-retention", config.trash_retention)?;
        if let Some(DurationArg(skew)) = self.max_clock_skew {
            limits.max_clock_skew_ms = u64::try_from(skew.as_millis()).unwrap_or(u64::MAX);
        }
        Ok(config)
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct RegistrationArg(Registration);

impl FromStr for RegistrationArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Self(Registration::Open)),
            "closed" => Ok(Self(Registration::Closed)),
            other => Err(format!("expected open or closed, got {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum MailerArg {
    Log,
    Smtp,
}

impl FromStr for MailerArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "log" => Ok(Self::Log),
            "smtp" => Ok(Self::Smtp),
            other => Err(format!("expected log or smtp, got {other:?}")),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(try_from = "String")]
pub struct AlgorithmArg(JwtAlgorithm);

impl FromStr for AlgorithmArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "HS256" => Ok(Self(JwtAlgorithm::HS256)),
            "HS384" => Ok(Self(JwtAlgorithm::HS384)),
            "HS512" => Ok(Self(JwtAlgorithm::HS512)),
            other => Err(format!("expected HS256, HS384 or HS512, got {other:?}")),
        }
    }
}

/// A duration written as seconds (`900`) or with a unit (`90s`, `15m`, `1h`, `30d`). In TOML
/// either a string or an integer number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DurationRepr")]
pub struct DurationArg(pub Duration);

#[derive(Deserialize)]
#[serde(untagged)]
enum DurationRepr {
    Secs(u64),
    Text(String),
}

impl TryFrom<DurationRepr> for DurationArg {
    type Error = String;
    fn try_from(repr: DurationRepr) -> Result<Self, Self::Error> {
        match repr {
            DurationRepr::Secs(s) => Ok(Self(Duration::from_secs(s))),
            DurationRepr::Text(t) => t.parse(),
        }
    }
}

impl FromStr for DurationArg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("expected a duration like 900, 15m or 1h, got {s:?}"))?;
        let factor = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(format!("unknown duration unit {unit:?} (use s, m, h or d)")),
        };
        n.checked_mul(factor)
            .map(|secs| Self(Duration::from_secs(secs)))
            .ok_or_else(|| format!("duration {s:?} is too long"))
    }
}

macro_rules! string_try_from {
    ($($ty:ty),*) => {$(
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                s.parse()
            }
        }
    )*};
}
string_try_from!(RegistrationArg, MailerArg, AlgorithmArg);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        assert_eq!(
            "900".parse::<DurationArg>(),
            Ok(DurationArg(Duration::from_secs(900)))
        );
        assert_eq!(
            "15m".parse::<DurationArg>(),
            Ok(DurationArg(Duration::from_secs(900)))
        );
        assert_eq!(
            "2d".parse::<DurationArg>(),
            Ok(DurationArg(Duration::from_secs(172_800)))
        );
        assert!("15x".parse::<DurationArg>().is_err());
        assert!("m".parse::<DurationArg>().is_err());
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let file: Settings = toml::from_str(
            "bind = \"127.0.0.1:9000\"\nregistration = \"closed\"\naccess_token_ttl = 60\nreset_token_ttl = \"1h\"\n",
        )
        .expect("parse");
        let flags = Settings {
            bind: Some("127.0.0.1:9100".parse().expect("addr")),
            ..Settings::default()
        };
        let config = flags.over(file).resolve().expect("resolve");
        assert_eq!(config.bind.port(), 9100);
        assert_eq!(config.registration, Registration::Closed);
        assert_eq!(config.access_token_ttl, Duration::from_secs(60));
        assert_eq!(config.reset_token_ttl, Duration::from_secs(3600));
        assert_eq!(config.refresh_token_ttl, Duration::from_secs(60 * 24 * 3600));
        assert_eq!(config.public_url, "http://127.0.0.1:9100");
    }

    #[test]
    fn secrets_never_reach_debug_output() {
        let settings: Settings = toml::from_str(
            "database_url = \"postgres://app:db-pass@db/x\"\njwt_secret = \"jwt-secret-value-0123456789abcdef\"\n\
             smtp_url = \"smtp://u:smtp-pass@mail\"\nredis_url = \"redis://:redis-pass@cache\"\n",
        )
        .expect("parse");
        let printed = format!("{settings:?}");
        for secret in ["db-pass", "jwt-secret-value", "smtp-pass", "redis-pass"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
        let printed = format!("{:?}", settings.resolve().expect("resolve"));
        for secret in ["db-pass", "jwt-secret-value", "smtp-pass", "redis-pass"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }

    #[test]
    fn unknown_file_keys_and_bad_combinations_are_refused() {
        assert!(toml::from_str::<Settings>("bnd = \"x\"").is_err());
        let half_tls = Settings {
            tls_cert: Some("c.pem".into()),
            ..Settings::default()
        };
        assert!(half_tls.resolve().is_err());
        let mysql = Settings {
            database_url: Some(Secret::new("mysql://x")),
            ..Settings::default()
        };
        assert!(mysql.resolve().is_err());
        let bad_redis = Settings {
            redis_url: Some(Secret::new("http://nope")),
            ..Settings::default()
        };
        assert!(bad_redis.resolve().is_err());
    }
}
