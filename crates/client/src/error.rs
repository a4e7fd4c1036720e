//! The SDK's one error type. Callers mostly need three questions answered: is the server
//! unreachable (try later, the write is safe locally), is this device signed out (sign in
//! again), or did the server refuse something (its code and message say what).

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("local replica: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("local replica: {0}")]
    Replica(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// No answer from the server (connection refused, timed out, DNS, TLS, 5xx from a proxy
    /// that is not nextsync's). Local reads and writes go on; the outbox waits.
    #[error("cannot reach the server: {0}")]
    Unreachable(String),
    /// The server answered with an error (`{"error":{"code","message"}}`).
    #[error("the server refused ({status} {code}): {message}")]
    Server {
        status: u16,
        code: String,
        message: String,
    },
    /// The device was signed out or removed, or its sign-in expired: sign in again. Local
    /// data and unsent writes are kept.
    #[error("signed out: {0}")]
    SignedOut(String),
    #[error("not signed in; run `nextsync login` first")]
    NotSignedIn,
    /// The server said something this client does not understand.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The account is end-to-end encrypted and this device does not hold its key yet.
    #[error(
        "this account is end-to-end encrypted; unlock it with the passphrase (`nextsync encryption unlock`)"
    )]
    Locked,
    #[error("wrong passphrase")]
    WrongPassphrase,
    #[error("encryption: {0}")]
    Crypto(String),
}

impl Error {
    /// True when trying again later may succeed: the network or the server is down or busy.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::Server { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    /// The server's error code, when the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}
