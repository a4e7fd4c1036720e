//! The nextsync client SDK: what a desktop wrapper, the CLI or a future NextChat plugin links
//! to keep a person's records on the device and in step with the server.
//!
//! - [`replica`]: the local SQLite file: the server's state, the outbox of local writes, and
//!   the merged view every read comes from. Reads never wait for the network; a write is on
//!   disk before anything is sent.
//! - [`http`]: the `/v1` API calls.
//! - [`live`]: the background loop: the WebSocket feed, a long-poll fallback when sockets
//!   are blocked, pushes of the outbox, token refresh, back-off.
//! - [`drafts`]: records being written, shown live on the other devices, never stored.
//! - [`crypto`]: optional end-to-end encryption of field values (format: docs/E2EE.md).
//! - [`nextchat`]: typed helpers for NextChat's collections.
//! - [`verify`]: checking the replica against the server's digests, repairing what differs.
//! - [`trash`]: the account's trash and point-in-time restore (on the server).
//!
//! ```no_run
//! # async fn demo() -> Result<(), nextsync_client::Error> {
//! use nextsync_client::{Client, Options};
//! use nextsync_core::api::Secret;
//! let client = Client::open("replica.sqlite3".as_ref(), Options::default())?;
//! client.login("https://sync.example.org", "me@example.org", Secret::new("…")).await?;
//! let mut fields = serde_json::Map::new();
//! fields.insert("title".into(), "Trip plans".into());
//! client.put("sessions", "s1", fields).await?; // returns at once, even offline
//! let live = client.start(); // pushes, pulls and follows the feed until stopped
//! # live.stop().await; Ok(()) }
//! ```
//!
//! Convergence comes from the data, not from the transport: the view of a record is the
//! CRDT merge of the server's last known state with this device's unsent writes, so whatever
//! order answers arrive in, a replica whose outbox is empty and whose pull is at the head
//! equals the server.

pub mod crypto;
pub mod drafts;
pub mod error;
pub mod http;
pub mod live;
pub mod nextchat;
pub mod replica;
pub mod trash;
pub mod verify;

pub use crypto::KdfParams;
pub use drafts::Draft;
pub use error::Error;
pub use live::{Connection, Live};
pub use replica::{Change, Order, Origin, Query, Record, Rejected};
pub use verify::{CollectionHealth, Health, Repaired};

use crypto::{DataKey, KEYRING_ID, KEYS_COLLECTION};
use http::Http;
use nextsync_core::api::{
    Choice, ConflictView, MutationIn, RecordView, ResolveRequest, Secret, TokenResponse,
};
use nextsync_core::time::Timestamp;
use replica::{Op, Pending, Replica};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{Notify, broadcast, watch};

/// At most this many mutations per push (the server's limit).
pub const MAX_BATCH: usize = 1000;
/// About this many bytes per push body, well under the server's default 16 MiB.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Records per pulled page (the server's most; it also caps a page at 4 MiB).
const PULL_PAGE: u32 = 1000;
/// Sessions a new device fetches first (with their messages), before the full pull.
const RECENT_SESSIONS: u32 = 20;

/// The wall clock, in Unix milliseconds; replaceable to test a device with a wrong clock.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

pub struct Options {
    /// Shown in the server's device list.
    pub device_name: String,
    /// Stamps use this clock (the HLC keeps them ordered whatever it says).
    pub clock: WallClock,
    /// After the socket is found blocked, how long to long-poll before trying it again.
    pub socket_retry: Duration,
    /// An access token is renewed when it has less than this left (the server's tokens live
    /// 15 minutes).
    pub renew_before: Duration,
    /// The passphrase's Argon2id cost when this client enables encryption or changes the
    /// passphrase (unlocking uses the cost stored with the keyring).
    pub kdf: KdfParams,
    /// How often the live loop checks the replica against the server's digests after it
    /// caught up (and repairs what differs); `None`: only on demand ([`Client::verify`]);
    /// zero: after every catch-up.
    pub verify_every: Option<Duration>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            device_name: default_device_name(),
            clock: Arc::new(system_ms),
            socket_retry: Duration::from_secs(300),
            renew_before: Duration::from_secs(60),
            kdf: KdfParams::default(),
            verify_every: Some(Duration::from_secs(6 * 3600)),
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("device_name", &self.device_name)
            .field("socket_retry", &self.socket_retry)
            .finish_non_exhaustive()
    }
}

fn default_device_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty());
    match host {
        Some(host) => format!("nextsync CLI on {host}"),
        None => "nextsync CLI".to_owned(),
    }
}

pub(crate) fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Who this replica belongs to, and the tokens to act as its device. Kept in the replica's
/// `meta` (the file is the user's alone), so every process on the replica shares one device.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    server: String,
    email: String,
    user_id: String,
    device_id: String,
    /// Absent once the device was signed out: the replica and its outbox stay.
    #[serde(default)]
    access_token: Option<Secret>,
    #[serde(default)]
    access_expires_ms: u64,
    #[serde(default)]
    refresh_token: Option<Secret>,
}

/// What [`Client::status`] reports.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub signed_in: bool,
    pub server: Option<String>,
    pub email: Option<String>,
    pub device_id: Option<String>,
    pub connection: Connection,
    /// Local writes the server has not acknowledged yet.
    pub outbox: u64,
    /// Acknowledged writes the pull has not brought back yet.
    pub unconfirmed: u64,
    /// Writes the server refused, kept aside ([`Client::rejected`]).
    pub rejected: u64,
    /// Visible records in the replica.
    pub records: u64,
    /// When a push and pull last both completed (RFC 3339).
    pub last_sync: Option<String>,
    /// When the replica was last checked against the server's digests (RFC 3339), and how
    /// many records that check repaired.
    pub last_verified: Option<String>,
    pub last_repaired: u64,
    pub encryption: Encryption,
}

/// End-to-end encryption, as this replica knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Encryption {
    Off,
    /// The account is encrypted and this device has not been given the passphrase.
    Locked,
    On,
}

/// What one [`Client::sync`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    pub pushed: u64,
    pub pulled: u64,
}

/// How to settle a conflict.
#[derive(Debug, Clone)]
pub enum Resolution {
    Keep,
    TakeLost,
    Value(Value),
}

/// A handle on one replica; cheap to clone, every clone is the same client.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    replica: Replica,
    lock_path: PathBuf,
    options: Options,
    session: Mutex<Option<Session>>,
    http: Mutex<Option<Http>>,
    /// The account's data key, once enabled or unlocked here.
    key: Mutex<Option<DataKey>>,
    /// The account is known to be end-to-end encrypted (mirrors `meta.e2ee`, so the hot paths
    /// need no query).
    encrypted: AtomicBool,
    changes: broadcast::Sender<Change>,
    connection: watch::Sender<Connection>,
    /// Poked by every local write, so the live loop pushes at once.
    outbox_ready: Notify,
    /// One push at a time per process (another process on the file may push too; the
    /// server answers a repeated mutation id `duplicate`).
    push_turn: tokio::sync::Mutex<()>,
    refresh_turn: tokio::sync::Mutex<()>,
    drafts: drafts::Drafts,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("lock_path", &self.lock_path)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Opens (or creates) the replica at `path`. It is signed in if it holds a session.
    pub fn open(path: &Path, options: Options) -> Result<Self, Error> {
        let replica = Replica::open(path)?;
        let session: Option<Session> = replica
            .meta("session")?
            .map(|text| serde_json::from_str(&text))
            .transpose()?;
        let http = session.as_ref().map(|s| Http::new(&s.server)).transpose()?;
        let key = replica
            .meta("e2ee_key")?
            .map(|k| DataKey::import(&k))
            .transpose()?;
        let encrypted = replica.meta("e2ee")?.is_some();
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push(".lock");
        let (changes, _) = broadcast::channel(1024);
        let connection = if session.as_ref().is_some_and(|s| s.refresh_token.is_some()) {
            Connection::Idle
        } else {
            Connection::SignedOut
        };
        Ok(Self {
            inner: Arc::new(Inner {
                replica,
                lock_path: lock_path.into(),
                options,
                session: Mutex::new(session),
                http: Mutex::new(http),
                key: Mutex::new(key),
                encrypted: AtomicBool::new(encrypted),
                changes,
                connection: watch::channel(connection).0,
                outbox_ready: Notify::new(),
                push_turn: tokio::sync::Mutex::new(()),
                refresh_turn: tokio::sync::Mutex::new(()),
                drafts: drafts::Drafts::new(),
            }),
        })
    }

    /// Signs this replica's device in. A replica belongs to one account on one server: signing
    /// in to another is refused (use another replica file).
    pub async fn login(&self, server: &str, email: &str, password: Secret) -> Result<(), Error> {
        let http = Http::new(server)?;
        let previous = self.session();
        if let Some(previous) = &previous
            && previous.server.trim_end_matches('/') != http.base()
        {
            return Err(Error::Replica(format!(
                "this replica belongs to {} at {}; use another one for {server}",
                previous.email, previous.server
            )));
        }
        let tokens = http
            .login(email, password, &self.inner.options.device_name)
            .await?;
        if let Some(previous) = &previous
            && previous.user_id != tokens.user_id.to_string()
        {
            let _ = http.logout(&tokens.access_token).await;
            return Err(Error::Replica(format!(
                "this replica belongs to {}; use another one for {email}",
                previous.email
            )));
        }
        let session = session_of(http.base(), email, &tokens);
        self.save_session(&session).await?;
        *lock(&self.inner.http) = Some(http);
        self.inner.connection.send_replace(Connection::Idle);
        Ok(())
    }

    /// Signs the device out on the server (when reachable) and forgets its tokens. The
    /// replica keeps its records and unsent writes for the next sign-in to the same account.
    pub async fn logout(&self) -> Result<(), Error> {
        let Some(mut session) = self.session() else {
            return Ok(());
        };
        if let (Some(token), Ok(http)) = (&session.access_token, self.http()) {
            match http.logout(token).await {
                Ok(()) | Err(Error::Server { status: 401, .. }) => {}
                Err(e) => tracing::warn!("could not sign out on the server: {e}"),
            }
        }
        session.access_token = None;
        session.refresh_token = None;
        self.save_session(&session).await?;
        self.inner.connection.send_replace(Connection::SignedOut);
        Ok(())
    }

    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<Record>, Error> {
        let (collection, id) = (collection.to_owned(), id.to_owned());
        self.local(move |r| r.get(&collection, &id)).await
    }

    pub async fn list(&self, query: Query) -> Result<Vec<Record>, Error> {
        self.local(move |r| r.list(&query)).await
    }

    /// Sets `fields` of a record (others stay as they are). Returns once the write is on disk;
    /// the live loop or the next [`Client::sync`] sends it.
    pub async fn put(&self, collection: &str, id: &str, fields: Map<String, Value>) -> Result<(), Error> {
        if fields.is_empty() {
            return Err(Error::Replica("a write needs at least one field".into()));
        }
        refuse_reserved(collection)?;
        self.write(collection, id, Op::Upsert(fields)).await
    }

    pub async fn delete(&self, collection: &str, id: &str) -> Result<(), Error> {
        refuse_reserved(collection)?;
        self.write(collection, id, Op::Delete).await
    }

    async fn write(&self, collection: &str, id: &str, op: Op) -> Result<(), Error> {
        validate_key(collection, id)?;
        let node = self.session().ok_or(Error::NotSignedIn)?.device_id;
        let now = (self.inner.options.clock)();
        let (collection, id) = (collection.to_owned(), id.to_owned());
        let change = self
            .local(move |r| r.write(&collection, &id, op, &node, now))
            .await?;
        self.emit(change);
        self.inner.outbox_ready.notify_one();
        Ok(())
    }

    /// Every change to the replica's visible state, local and remote, as it is committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// The live loop's state, as it changes.
    pub fn connection(&self) -> watch::Receiver<Connection> {
        self.inner.connection.subscribe()
    }

    pub async fn status(&self) -> Result<Status, Error> {
        let counts = self.local(|r| r.counts()).await?;
        let last_sync = self.local(|r| r.meta("last_sync")).await?;
        let last_health = self.last_health().await?;
        let session = self.session();
        Ok(Status {
            signed_in: session.as_ref().is_some_and(|s| s.refresh_token.is_some()),
            server: session.as_ref().map(|s| s.server.clone()),
            email: session.as_ref().map(|s| s.email.clone()),
            device_id: session.map(|s| s.device_id),
            connection: *self.inner.connection.borrow(),
            outbox: counts.unsent,
            unconfirmed: counts.unconfirmed,
            rejected: counts.rejected,
            records: counts.records,
            last_sync: last_sync
                .and_then(|ms| ms.parse::<i64>().ok())
                .map(|ms| Timestamp::from_millis(ms).to_rfc3339()),
            last_verified: last_health.as_ref().map(|h| h.verified_at.clone()),
            last_repaired: last_health.map_or(0, |h| h.repaired.len() as u64),
            encryption: self.encryption(),
        })
    }

    /// Writes the server refused, with its reasons.
    pub async fn rejected(&self) -> Result<Vec<Rejected>, Error> {
        self.local(|r| r.rejected()).await
    }

    /// One round: pushes the whole outbox, then pulls to the head (conflicts the pushes made
    /// are kept as they come; [`Client::conflicts`] asks for the full list). Fails when the server cannot be reached (the local state is untouched).
    pub async fn sync(&self) -> Result<SyncReport, Error> {
        let pushed = self.push_outbox().await?;
        // A new device (nothing pulled, nothing local yet) starts with the newest sessions.
        if self.local(|r| r.is_new()).await? {
            self.prefetch_recent(RECENT_SESSIONS).await?;
        }
        let pulled = self.pull_to_head().await?;
        let now = system_ms().to_string();
        self.local(move |r| r.set_meta(&[("last_sync", Some(&now))]))
            .await?;
        Ok(SyncReport { pushed, pulled })
    }

    /// A new device's first page: the `sessions` most recently changed NextChat sessions
    /// with all their messages, stored before the full pull (which brings them again). A
    /// server without `/v1/sync/recent` is no error: the pull brings everything anyway.
    pub async fn prefetch_recent(&self, sessions: u32) -> Result<u64, Error> {
        use nextsync_core::nextchat::{MESSAGES, SESSION_ID, SESSIONS};
        let page = self
            .authed(|http, token| async move {
                http.recent(&token, SESSIONS, sessions, Some((MESSAGES, SESSION_ID)))
                    .await
            })
            .await;
        let records = match page {
            Ok(page) => page.records,
            Err(Error::Server {
                status: 404 | 405, ..
            }) => return Ok(0),
            Err(e) => return Err(e),
        };
        let count = records.len() as u64;
        self.apply_pulled(records, None, false).await?;
        Ok(count)
    }

    /// Conflicts to settle: the server's list when it can be reached, else the last one seen.
    pub async fn conflicts(&self) -> Result<Vec<ConflictView>, Error> {
        match self
            .authed(|http, token| async move { http.conflicts(&token).await })
            .await
        {
            Ok(list) => {
                let kept = list.conflicts.clone();
                self.local(move |r| r.replace_conflicts(&kept)).await?;
                Ok(list.conflicts)
            }
            Err(e) if e.is_transient() => self.local(|r| r.conflicts()).await,
            Err(e) => Err(e),
        }
    }

    /// Settles a conflict on the server (needs the server), then pulls the result.
    pub async fn resolve(&self, conflict_id: &str, resolution: Resolution) -> Result<(), Error> {
        let body = match resolution {
            Resolution::Keep => ResolveRequest {
                choose: Some(Choice::Kept),
                value: None,
            },
            Resolution::TakeLost => ResolveRequest {
                choose: Some(Choice::Lost),
                value: None,
            },
            Resolution::Value(value) => ResolveRequest {
                choose: None,
                value: Some(value),
            },
        };
        let id = conflict_id.to_owned();
        self.authed(|http, token| {
            let (id, body) = (id.clone(), body.clone());
            async move { http.resolve(&token, &id, &body).await }
        })
        .await?;
        self.pull_to_head().await?;
        let _ = self.conflicts().await;
        Ok(())
    }

    /// Starts the live loop (socket, long-poll fallback, pushes) in the background.
    pub fn start(&self) -> Live {
        live::start(self.clone())
    }

    // ---- end-to-end encryption ----

    /// Whether this account's values are encrypted, and whether this device can read them.
    pub fn encryption(&self) -> Encryption {
        match (self.key(), self.is_encrypted()) {
            (Some(_), _) => Encryption::On,
            (None, true) => Encryption::Locked,
            (None, false) => Encryption::Off,
        }
    }

    pub(crate) fn is_encrypted(&self) -> bool {
        self.inner.encrypted.load(Ordering::Acquire)
    }

    /// Remembers that the account is encrypted, and which key this device holds (`None`: it
    /// holds none, or the one it held is no longer the account's).
    async fn keep_encryption(&self, key: Option<&DataKey>) -> Result<(), Error> {
        let exported = key.map(DataKey::export);
        self.local(move |r| r.set_meta(&[("e2ee_key", exported.as_deref()), ("e2ee", Some("on"))]))
            .await?;
        *lock(&self.inner.key) = key.cloned();
        self.inner.encrypted.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn key(&self) -> Option<DataKey> {
        lock(&self.inner.key).clone()
    }

    /// Turns on end-to-end encryption for the account: makes a data key, stores it wrapped
    /// under `passphrase` in the keyring record, and writes every record again so the server
    /// keeps only ciphertext. Needs the server (to be sure no other device enabled it first).
    pub async fn enable_encryption(&self, passphrase: &str) -> Result<(), Error> {
        check_passphrase(passphrase)?;
        self.sync().await?;
        if self.server_keyring().await?.is_some() {
            return Err(Error::Crypto(
                "encryption is already on for this account; unlock it with the passphrase".into(),
            ));
        }
        let key = DataKey::generate()?;
        let keyring = self.wrap(&key, passphrase).await?;
        self.keep_encryption(Some(&key)).await?;
        self.write(KEYS_COLLECTION, KEYRING_ID, Op::Upsert(keyring))
            .await?;
        // Every record again, through the outbox: each goes out encrypted.
        let records = self
            .list(Query {
                include_deleted: false,
                ..Query::default()
            })
            .await?;
        for record in records.into_iter().filter(|r| r.collection != KEYS_COLLECTION) {
            self.write(&record.collection, &record.id, Op::Upsert(record.fields))
                .await?;
        }
        self.sync().await?;
        Ok(())
    }

    /// Gives this device the account's key: the passphrase unwraps it from the keyring.
    pub async fn unlock(&self, passphrase: &str) -> Result<(), Error> {
        let keyring = self
            .server_keyring()
            .await?
            .ok_or_else(|| Error::Crypto("this account does not use end-to-end encryption".into()))?;
        let passphrase = passphrase.to_owned();
        let key = tokio::task::spawn_blocking(move || DataKey::unwrap(&keyring, &passphrase))
            .await
            .map_err(|e| Error::Crypto(format!("key task failed: {e}")))??;
        self.keep_encryption(Some(&key)).await?;
        Ok(())
    }

    /// Wraps the same data key under a new passphrase (nothing is re-encrypted). The current
    /// passphrase must unwrap the keyring as the server holds it.
    pub async fn change_passphrase(&self, current: &str, new: &str) -> Result<(), Error> {
        check_passphrase(new)?;
        let keyring = self
            .server_keyring()
            .await?
            .ok_or_else(|| Error::Crypto("this account does not use end-to-end encryption".into()))?;
        let current = current.to_owned();
        let key = tokio::task::spawn_blocking(move || DataKey::unwrap(&keyring, &current))
            .await
            .map_err(|e| Error::Crypto(format!("key task failed: {e}")))??;
        let keyring = self.wrap(&key, new).await?;
        self.keep_encryption(Some(&key)).await?;
        self.write(KEYS_COLLECTION, KEYRING_ID, Op::Upsert(keyring))
            .await?;
        self.push_outbox().await?;
        Ok(())
    }

    async fn wrap(&self, key: &DataKey, passphrase: &str) -> Result<Map<String, Value>, Error> {
        let (key, passphrase, params) = (key.clone(), passphrase.to_owned(), self.inner.options.kdf);
        tokio::task::spawn_blocking(move || key.wrap(&passphrase, params))
            .await
            .map_err(|e| Error::Crypto(format!("key task failed: {e}")))?
    }

    /// The keyring as the server holds it (read past the replica, which a locked device
    /// cannot fill).
    async fn server_keyring(&self) -> Result<Option<Map<String, Value>>, Error> {
        let found = self
            .authed(|http, token| async move { http.record(&token, KEYS_COLLECTION, KEYRING_ID).await })
            .await;
        match found {
            Ok(record) if !record.deleted => Ok(Some(record.fields)),
            Ok(_) | Err(Error::Server { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Encrypts the values of outgoing writes when the account is encrypted; refuses to send
    /// anything in clear from a device that is locked out of an encrypted account.
    async fn seal_mutations(&self, mut mutations: Vec<MutationIn>) -> Result<Vec<MutationIn>, Error> {
        let key = match (self.key(), self.is_encrypted()) {
            (Some(key), _) => key,
            (None, true) => return Err(Error::Locked),
            (None, false) => return Ok(mutations),
        };
        // A batch is up to 1,000 values to seal: CPU work, off the async threads.
        tokio::task::spawn_blocking(move || {
            for m in mutations.iter_mut().filter(|m| m.collection != KEYS_COLLECTION) {
                if let Some(fields) = &mut m.fields {
                    key.encrypt_fields(&m.collection, &m.id, fields)?;
                }
            }
            Ok(mutations)
        })
        .await
        .map_err(|e| Error::Crypto(format!("sealing task failed: {e}")))?
    }

    /// Decrypts a pulled page and stores it (one local transaction), then tells subscribers.
    /// A page from an encrypted account that this device cannot read is not applied: the
    /// cursor stays, and the pull resumes there once unlocked.
    pub(crate) async fn apply_pulled(
        &self,
        mut changes: Vec<RecordView>,
        cursor: Option<String>,
        complete: bool,
    ) -> Result<(), Error> {
        let keyring = changes
            .iter()
            .find(|r| r.collection == KEYS_COLLECTION && r.id == KEYRING_ID && !r.deleted);
        if let Some(keyring) = keyring {
            let key_id = keyring
                .fields
                .get("key_id")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match self.key() {
                Some(key) if key.id() == key_id => {}
                // No key, or one the account no longer uses (someone made a new key).
                _ => {
                    self.keep_encryption(None).await?;
                    return Err(Error::Locked);
                }
            }
        }
        let sealed = changes
            .iter()
            .any(|r| r.collection != KEYS_COLLECTION && r.fields.values().any(crypto::is_encrypted));
        let key = self.key();
        if sealed && key.is_none() {
            // Sealed-looking values before the keyring was seen (a prefetch, which does not
            // carry it): the server's keyring decides.
            if self.is_encrypted() || self.server_keyring().await?.is_some() {
                self.keep_encryption(None).await?;
                return Err(Error::Locked);
            }
        }
        let changes = self
            .local(move |r| {
                // Opening up to 1,000 values is CPU work: here, off the async threads.
                if let Some(key) = key.filter(|_| sealed) {
                    for view in changes.iter_mut().filter(|r| r.collection != KEYS_COLLECTION) {
                        key.decrypt_fields(&view.collection, &view.id, &mut view.fields)?;
                    }
                }
                r.apply_page(&changes, cursor.as_deref(), complete)
            })
            .await?;
        self.emit(changes);
        Ok(())
    }

    // ---- the parts the live loop shares ----

    pub(crate) async fn local<T: Send + 'static>(
        &self,
        job: impl FnOnce(&Replica) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        // A write waits for its fsync: keep that off the async threads.
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || job(&inner.replica))
            .await
            .map_err(|e| Error::Replica(format!("local task failed: {e}")))?
    }

    pub(crate) fn emit(&self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            let _ = self.inner.changes.send(change);
        }
    }

    fn session(&self) -> Option<Session> {
        lock(&self.inner.session).clone()
    }

    async fn save_session(&self, session: &Session) -> Result<(), Error> {
        let text = serde_json::to_string(session)?;
        self.local(move |r| r.set_meta(&[("session", Some(&text))]))
            .await?;
        *lock(&self.inner.session) = Some(session.clone());
        Ok(())
    }

    fn http(&self) -> Result<Http, Error> {
        lock(&self.inner.http).clone().ok_or(Error::NotSignedIn)
    }

    pub(crate) fn set_connection(&self, state: Connection) {
        self.inner.connection.send_if_modified(|current| {
            // Signed out stays signed out until a new sign-in.
            let changed = *current != state && *current != Connection::SignedOut;
            if changed {
                *current = state;
            }
            changed
        });
    }

    pub(crate) fn renew_before_ms(&self) -> u64 {
        self.inner.options.renew_before.as_millis() as u64
    }

    pub(crate) fn outbox_ready(&self) -> &Notify {
        &self.inner.outbox_ready
    }

    pub(crate) fn options(&self) -> &Options {
        &self.inner.options
    }

    pub(crate) fn socket_url(&self) -> Result<String, Error> {
        Ok(self.http()?.socket_url())
    }

    /// A valid access token, renewed when it is about to expire.
    pub(crate) async fn access_token(&self) -> Result<(Secret, u64), Error> {
        let session = self.session().ok_or(Error::NotSignedIn)?;
        match session.access_token {
            Some(token) if session.access_expires_ms > system_ms() + self.renew_before_ms() => {
                Ok((token, session.access_expires_ms))
            }
            Some(_) => self.renew(session.access_token).await,
            None => Err(self.signed_out("this device is signed out; sign in again")),
        }
    }

    /// Renews the access token with the refresh token. `stale` is the token that stopped
    /// working (or is expiring): if another task or process already replaced it, that newer
    /// one is used. Refresh tokens are single-use and a reused one signs the device out, so
    /// renewals take turns across processes under a lock file.
    pub(crate) async fn renew(&self, stale: Option<Secret>) -> Result<(Secret, u64), Error> {
        let _turn = self.inner.refresh_turn.lock().await;
        let lock_path = self.inner.lock_path.clone();
        let _file_lock = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&lock_path)?;
            file.lock()?;
            Ok(file)
        })
        .await
        .map_err(|e| Error::Replica(format!("lock task failed: {e}")))?
        .map_err(|e| Error::Replica(format!("locking {}: {e}", self.inner.lock_path.display())))?;

        let stored: Option<Session> = self
            .local(|r| r.meta("session"))
            .await?
            .map(|text| serde_json::from_str(&text))
            .transpose()?;
        let mut session = stored.ok_or(Error::NotSignedIn)?;
        if let Some(token) = &session.access_token
            && session.access_token != stale
            && session.access_expires_ms > system_ms() + self.renew_before_ms()
        {
            *lock(&self.inner.session) = Some(session.clone());
            return Ok((token.clone(), session.access_expires_ms));
        }
        let Some(refresh) = session.refresh_token.clone() else {
            *lock(&self.inner.session) = Some(session);
            return Err(self.signed_out("this device is signed out; sign in again"));
        };
        match self.http()?.refresh(refresh).await {
            Ok(tokens) => {
                session.access_token = Some(tokens.access_token.clone());
                session.access_expires_ms = expiry_ms(&tokens);
                session.refresh_token = tokens.refresh_token;
                self.save_session(&session).await?;
                Ok((tokens.access_token, session.access_expires_ms))
            }
            Err(Error::Server {
                status: 401, message, ..
            }) => {
                session.access_token = None;
                session.refresh_token = None;
                self.save_session(&session).await?;
                Err(self.signed_out(&message))
            }
            Err(e) => Err(e),
        }
    }

    fn signed_out(&self, why: &str) -> Error {
        self.inner.connection.send_replace(Connection::SignedOut);
        Error::SignedOut(why.to_owned())
    }

    /// Runs `call` with a valid token; on a 401 renews the token once and tries again.
    pub(crate) async fn authed<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: Fn(Http, Secret) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let http = self.http()?;
        let (token, _) = self.access_token().await?;
        match call(http.clone(), token.clone()).await {
            Err(Error::Server { status: 401, .. }) => {
                let (token, _) = self.renew(Some(token)).await?;
                call(http, token).await
            }
            other => other,
        }
    }

    /// Pushes every unsent write, in batches under the server's limits. A write the server
    /// refuses (4xx) is moved aside with its reason, found by halving the batch, so one bad
    /// write never blocks the ones behind it.
    pub(crate) async fn push_outbox(&self) -> Result<u64, Error> {
        let _turn = self.inner.push_turn.lock().await;
        let mut pushed = 0;
        let mut previous_head = None;
        loop {
            let batch = self.local(|r| r.unsent(MAX_BATCH, MAX_BATCH_BYTES)).await?;
            let Some(head) = batch.first().map(|p| p.mutation.mutation_id.clone()) else {
                return Ok(pushed);
            };
            // Every push answer acknowledges or sets aside its batch's first write; meeting
            // it again means the answer named other writes: stop rather than loop forever.
            if previous_head.as_ref() == Some(&head) {
                return Err(Error::Protocol(format!(
                    "the server's answer did not acknowledge write {head}"
                )));
            }
            previous_head = Some(head);
            pushed += self.push_batch(batch).await?;
        }
    }

    fn push_batch(&self, batch: Vec<Pending>) -> futures::future::BoxFuture<'_, Result<u64, Error>> {
        Box::pin(async move {
            let mutations = batch.iter().map(|p| p.mutation.clone()).collect();
            let mutations = self.seal_mutations(mutations).await?;
            let answer = self
                .authed(|http, token| {
                    let mutations = mutations.clone();
                    async move { http.push(&token, mutations).await }
                })
                .await;
            match answer {
                Ok(response) => {
                    let changes = self
                        .local(move |r| r.acknowledge(&response.results, &response.conflicts))
                        .await?;
                    self.emit(changes);
                    Ok(batch.len() as u64)
                }
                Err(Error::Server {
                    status,
                    code,
                    message,
                }) if refused(status) => {
                    if let [single] = batch.as_slice() {
                        let id = single.mutation.mutation_id.clone();
                        tracing::warn!(mutation = %id, code, "the server refused a write: {message}");
                        let now = system_ms();
                        let changes = self.local(move |r| r.reject(&id, &code, &message, now)).await?;
                        self.emit(changes);
                        return Ok(0);
                    }
                    let mut first = batch;
                    let second = first.split_off(first.len() / 2);
                    Ok(self.push_batch(first).await? + self.push_batch(second).await?)
                }
                Err(e) => Err(e),
            }
        })
    }

    /// Pulls pages until the head. A cursor the server no longer knows (`resync_required`,
    /// after a restore) starts a full pull that keeps the outbox. The next page is fetched
    /// while the current one is stored (pages are still applied one by one, in order): the
    /// server's work and the local disk's overlap.
    pub(crate) async fn pull_to_head(&self) -> Result<u64, Error> {
        let mut pulled = 0;
        let mut fetched = None;
        loop {
            let page = match fetched.take() {
                Some(page) => page,
                None => {
                    let since = self.local(|r| r.cursor()).await?;
                    self.fetch_page(since).await
                }
            };
            let page = match page {
                Ok(page) => page,
                Err(e) if needs_resync(&e) => {
                    tracing::info!("the server asked for a full resync: {e}");
                    self.local(|r| r.start_resync()).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            pulled += page.changes.len() as u64;
            if !page.has_more {
                self.apply_pulled(page.changes, Some(page.cursor), true).await?;
                return Ok(pulled);
            }
            let next = Some(page.cursor.clone());
            let (stored, next) = tokio::join!(
                self.apply_pulled(page.changes, Some(page.cursor), false),
                self.fetch_page(next)
            );
            stored?;
            fetched = Some(next);
        }
    }

    async fn fetch_page(&self, since: Option<String>) -> Result<nextsync_core::api::PullResponse, Error> {
        self.authed(|http, token| {
            let since = since.clone();
            async move { http.pull(&token, since.as_deref(), PULL_PAGE, None).await }
        })
        .await
    }
}

/// The keyring's collection is written only by the encryption calls.
fn refuse_reserved(collection: &str) -> Result<(), Error> {
    if collection == KEYS_COLLECTION {
        return Err(Error::Replica(format!(
            "{KEYS_COLLECTION} is reserved for the encryption keyring"
        )));
    }
    Ok(())
}

fn check_passphrase(passphrase: &str) -> Result<(), Error> {
    if passphrase.chars().count() < 8 {
        return Err(Error::Crypto("a passphrase needs at least 8 characters".into()));
    }
    Ok(())
}

/// A 4xx that names something wrong with what was sent (not auth, not "slow down").
fn refused(status: u16) -> bool {
    (400..500).contains(&status) && ![401, 408, 429].contains(&status)
}

pub(crate) fn needs_resync(e: &Error) -> bool {
    matches!(e.code(), Some("resync_required" | "invalid_cursor"))
}

fn session_of(server: &str, email: &str, tokens: &TokenResponse) -> Session {
    Session {
        server: server.to_owned(),
        email: email.to_owned(),
        user_id: tokens.user_id.to_string(),
        device_id: tokens.device_id.to_string(),
        access_token: Some(tokens.access_token.clone()),
        access_expires_ms: expiry_ms(tokens),
        refresh_token: tokens.refresh_token.clone(),
    }
}

fn expiry_ms(tokens: &TokenResponse) -> u64 {
    system_ms() + tokens.expires_in * 1000
}

fn validate_key(collection: &str, id: &str) -> Result<(), Error> {
    nextsync_core::push::validate_collection(collection)
        .and_then(|()| nextsync_core::push::validate_record_id(id))
        .map_err(|e| Error::Replica(e.message))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
