//! Test harness shared by the store's contract tests and the server's end-to-end tests.
//!
//! - [`TestDb`]: a fresh database per test: SQLite in a temp dir, or a fresh schema in the
//!   PostgreSQL named by `NEXTSYNC_TEST_DATABASE_URL` (default the local `test` database).
//!   PostgreSQL tests are `#[ignore]`d, so a plain `cargo test` lists them as not run; with
//!   `--include-ignored` they run and fail without a reachable PostgreSQL.
//! - [`TestServer`]: the real server on 127.0.0.1 port 0, stopped on drop.
//! - [`both_backends!`]: runs one async test body on SQLite and on PostgreSQL.
//! - [`ws`]: a WebSocket client for the live feed.
//! - [`smtp`]: a real SMTP server that keeps what it receives.
//! - [`fuzz`]: seeded hostile requests and socket frames, with what must hold.

pub mod fuzz;
pub mod smtp;

use nextsync_server::config::RateLimits;
use nextsync_server::{AppState, Config};
use nextsync_store::Store;
use sqlx::Connection;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempDir;

pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database and data dir, removed when dropped.
#[derive(Debug)]
pub struct TestDb {
    pub backend: Backend,
    dir: TempDir,
    pg: Option<PgSchema>,
}

#[derive(Debug)]
struct PgSchema {
    admin_url: String,
    schema: String,
    url: String,
}

impl TestDb {
    pub fn sqlite() -> Self {
        Self {
            backend: Backend::Sqlite,
            dir: temp_dir(),
            pg: None,
        }
    }

    /// A fresh schema in the test PostgreSQL; panics when there is none. Tests that need it
    /// are `#[ignore]`d (see [`both_backends!`]), so a run that includes them has asked for
    /// PostgreSQL and a missing server is a failure, never a silent pass.
    pub async fn postgres() -> Self {
        match Self::postgres_if_reachable().await {
            Ok(db) => db,
            Err(e) => panic!("{e}"),
        }
    }

    /// A fresh schema in the test PostgreSQL, or why there is none (for the bench, which
    /// reports a missing PostgreSQL in its own output).
    pub async fn postgres_if_reachable() -> Result<Self, String> {
        let admin_url = std::env::var("NEXTSYNC_TEST_DATABASE_URL")
            .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
        let mut conn = sqlx::PgConnection::connect(&admin_url).await.map_err(|e| {
            format!(
                "PostgreSQL at {admin_url} is unreachable ({e}); start it or set \
                 NEXTSYNC_TEST_DATABASE_URL (README: Running the tests)"
            )
        })?;
        let schema = format!("nextsync_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut conn)
            .await
            .expect("create test schema");
        let separator = if admin_url.contains('?') { '&' } else { '?' };
        let url = format!("{admin_url}{separator}options[search_path]={schema}");
        Ok(Self {
            backend: Backend::Postgres,
            dir: temp_dir(),
            pg: Some(PgSchema {
                admin_url,
                schema,
                url,
            }),
        })
    }

    /// The data dir (SQLite file, secrets, outbox).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// `--database-url` for this database (PostgreSQL only).
    pub fn database_url(&self) -> Option<&str> {
        self.pg.as_ref().map(|pg| pg.url.as_str())
    }

    /// Server defaults pointed at this database, with rate limits high enough that only tests
    /// about rate limits meet them.
    pub fn config(&self) -> Config {
        let mut config = Config::with_data_dir(self.data_dir());
        config.bind = ([127, 0, 0, 1], 0).into();
        config.database_url = self.database_url().map(nextsync_core::secret::Secret::new);
        config.rate_limits = RateLimits {
            ip_per_minute: 10_000,
            ip_burst: 10_000,
            ..RateLimits::default()
        };
        config
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        nextsync_server::state::open_store(&self.config())
            .await
            .expect("open store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(pg) = self.pg.take() else { return };
        // Drop runs inside a test's runtime; clean up on a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&pg.admin_url).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {} CASCADE", pg.schema)))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        });
        let _ = cleanup.join();
    }
}

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("nextsync-test-")
        .tempdir()
        .expect("temp dir")
}

/// Runs `$body(db: TestDb)` once on SQLite and once on PostgreSQL, as two tests named
/// `<name>::sqlite` and `<name>::postgres`. The PostgreSQL one is `#[ignore]`d: `cargo test`
/// counts it as ignored (not run) in its summary, and `cargo test -- --include-ignored`
/// (what `.ci/run` does) runs it and fails when PostgreSQL is unreachable.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::TestDb::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs PostgreSQL; run with --include-ignored"]
            async fn postgres() {
                super::$name($crate::TestDb::postgres().await).await;
            }
        }
    )*};
}

/// The real server on a free loopback port; stopped (gracefully) on [`TestServer::stop`] or drop.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub base_url: String,
    pub state: AppState,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start(config: Config) -> Self {
        install_crypto_provider();
        let state = AppState::open(config).await.expect("open app state");
        Self::start_with_state(state).await
    }

    pub async fn start_with_state(state: AppState) -> Self {
        let listener = tokio::net::TcpListener::bind(state.config.bind)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let scheme = if state.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(nextsync_server::serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        Self {
            addr,
            base_url: format!("{scheme}://{addr}"),
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Graceful shutdown; returns what `serve` returned.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.task.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(15), task).await??,
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// rustls needs one process-wide crypto provider before any client or server is built.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A plain HTTP client (no cookies, no redirects, JSON-friendly).
pub fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// Path of a file in `crates/testkit/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

impl TestDb {
    /// Rows holding `user` in every table that has a `user_id` column, found from the schema
    /// itself, so tables added later are covered without touching the tests.
    pub async fn rows_of_user(&self, user: uuid::Uuid) -> i64 {
        let tables: Vec<String>;
        match &self.pg {
            None => {
                let path = self.config().sqlite_path();
                let url = format!("sqlite://{}", path.display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open sqlite");
                tables = sqlx::query_scalar(
                    "SELECT m.name FROM sqlite_master m JOIN pragma_table_info(m.name) c \
                     WHERE m.type = 'table' AND c.name = 'user_id'",
                )
                .fetch_all(&mut conn)
                .await
                .expect("list tables");
                sqlx::query_scalar(count_rows_sql(&tables))
                    .bind(user)
                    .fetch_one(&mut conn)
                    .await
            }
            Some(pg) => {
                let mut conn = sqlx::PgConnection::connect(&pg.url).await.expect("connect");
                tables = sqlx::query_scalar(
                    "SELECT table_name::text FROM information_schema.columns \
                     WHERE table_schema = $1 AND column_name = 'user_id'",
                )
                .bind(&pg.schema)
                .fetch_all(&mut conn)
                .await
                .expect("list tables");
                sqlx::query_scalar(count_rows_sql(&tables))
                    .bind(user)
                    .fetch_one(&mut conn)
                    .await
            }
        }
        .unwrap_or_else(|e| panic!("counting rows in {tables:?}: {e}"))
    }
}

impl TestDb {
    /// Runs raw SQL on the test database, behind the store's back (tests plant corruption
    /// with it, to show a check finds it). Returns the rows changed.
    pub async fn execute(&self, sql: &str) -> u64 {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match &self.pg {
            None => {
                let url = format!("sqlite://{}", self.config().sqlite_path().display());
                let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("open sqlite");
                sqlx::query(sql)
                    .execute(&mut conn)
                    .await
                    .map(|r| r.rows_affected())
            }
            Some(pg) => {
                let mut conn = sqlx::PgConnection::connect(&pg.url).await.expect("connect");
                sqlx::query(sql)
                    .execute(&mut conn)
                    .await
                    .map(|r| r.rows_affected())
            }
        }
        .unwrap_or_else(|e| panic!("raw SQL failed: {e}"))
    }

    /// The database's files on disk that contain `needle`: on SQLite every file in the data
    /// dir (the database, its WAL); on PostgreSQL, after a checkpoint, every table, index and
    /// TOAST file of this test's schema and the newest WAL segments, read through
    /// `pg_read_binary_file` (the test role is a superuser), so deleted rows that still sit
    /// in a page or in the log are found too.
    pub async fn files_containing(&self, needle: &[u8]) -> Vec<String> {
        let contains = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        let mut found = Vec::new();
        match &self.pg {
            None => {
                for entry in std::fs::read_dir(self.data_dir()).expect("data dir") {
                    let path = entry.expect("entry").path();
                    if path.is_file() && contains(&std::fs::read(&path).expect("read")) {
                        found.push(path.display().to_string());
                    }
                }
            }
            Some(pg) => {
                let mut conn = sqlx::PgConnection::connect(&pg.admin_url).await.expect("connect");
                sqlx::query("CHECKPOINT")
                    .execute(&mut conn)
                    .await
                    .expect("checkpoint");
                let files: Vec<String> = sqlx::query_scalar(
                    "SELECT pg_relation_filepath(c.oid) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND pg_relation_filepath(c.oid) IS NOT NULL \
                     UNION SELECT pg_relation_filepath(c.reltoastrelid) FROM pg_class c \
                     JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.reltoastrelid <> 0 \
                     UNION SELECT * FROM (SELECT 'pg_wal/' || name FROM pg_ls_waldir() \
                     WHERE name ~ '^[0-9A-F]{24}$' ORDER BY modification DESC LIMIT 3) newest",
                )
                .bind(&pg.schema)
                .fetch_all(&mut conn)
                .await
                .expect("list files");
                for file in files {
                    let bytes: Option<Vec<u8>> =
                        sqlx::query_scalar("SELECT pg_read_binary_file($1, 0, 268435456, true)")
                            .bind(&file)
                            .fetch_one(&mut conn)
                            .await
                            .expect("read file");
                    if bytes.is_some_and(|b| contains(&b)) {
                        found.push(file);
                    }
                }
            }
        }
        found
    }
}

/// `SELECT (SELECT COUNT(*) FROM a WHERE user_id = $1) + … ` over `tables`.
fn count_rows_sql(tables: &[String]) -> sqlx::AssertSqlSafe<String> {
    assert!(!tables.is_empty(), "no table has a user_id column");
    let sum: Vec<String> = tables
        .iter()
        .map(|t| format!("(SELECT COUNT(*) FROM {t} WHERE user_id = $1)"))
        .collect();
    sqlx::AssertSqlSafe(format!("SELECT {}", sum.join(" + ")))
}

/// A JSON client for one server: every call returns the status and the parsed body
/// (`Value::Null` when the body is empty).
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base_url: String,
}

pub const PASSWORD: &str = "correct horse battery staple";

impl Api {
    pub fn new(server: &TestServer) -> Self {
        Self {
            http: client(),
            base_url: server.base_url.clone(),
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let bytes = response.bytes().await.expect("body");
        let value = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{path}: non-JSON body ({e}): {bytes:?}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(reqwest::Method::GET, path, token, None).await
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: serde_json::Value,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(reqwest::Method::POST, path, token, Some(body)).await
    }

    pub async fn delete(
        &self,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.send(reqwest::Method::DELETE, path, token, body).await
    }

    /// Registers `email` with [`PASSWORD`] and returns the token response.
    pub async fn register(&self, email: &str) -> Session {
        let (status, body) = self
            .post(
                "/v1/auth/register",
                None,
                serde_json::json!({ "email": email, "password": PASSWORD, "device_name": "laptop" }),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
        Session::from_json(&body)
    }

    /// Signs in `email` with `password` as a new device.
    pub async fn login(&self, email: &str, password: &str) -> Session {
        let (status, body) = self
            .post(
                "/v1/auth/login",
                None,
                serde_json::json!({ "email": email, "password": password, "device_name": "phone" }),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
        Session::from_json(&body)
    }
}

/// A user made straight in `store` (no Argon2, no HTTP), for store-level tests.
pub async fn store_user(store: &dyn Store, email: &str) -> nextsync_core::ids::UserId {
    let user = nextsync_store::accounts::NewUser {
        id: nextsync_core::ids::UserId::new(),
        email: nextsync_core::account::Email::parse(email).expect("email"),
        password_hash: nextsync_core::secret::Secret::new("$argon2id$fake"),
        created_at: nextsync_core::time::Timestamp::now(),
    };
    store.create_user(&user, None).await.expect("create user");
    user.id
}

impl Api {
    /// `POST /v1/sync/push` of `mutations` (JSON values) that must be accepted.
    pub async fn push(&self, session: &Session, mutations: Vec<serde_json::Value>) {
        let (status, body) = self
            .post(
                "/v1/sync/push",
                session.token(),
                serde_json::json!({ "mutations": mutations }),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    }
}

/// The useful part of a token response.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub device_id: String,
    pub access: String,
    pub refresh: String,
}

impl Session {
    pub fn from_json(body: &serde_json::Value) -> Self {
        let field = |name: &str| {
            body[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} in {body}"))
                .to_owned()
        };
        Self {
            user_id: field("user_id"),
            device_id: field("device_id"),
            access: field("access_token"),
            refresh: field("refresh_token"),
        }
    }

    pub fn token(&self) -> Option<&str> {
        Some(&self.access)
    }
}

/// Polls `check` every 20 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The real server on `db`'s defaults, and a client for it.
pub async fn start(db: &TestDb) -> (TestServer, Api) {
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    (server, api)
}

/// The `error.code` of an error body; panics (naming the body) when it is not the error shape.
pub fn error_code(body: &serde_json::Value) -> &str {
    body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error shape in {body}"))
}

/// A WebSocket client for `GET /v1/sync/ws`, frames as JSON values.
pub mod ws {
    use super::Session;
    use futures::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use std::time::Duration;
    use tokio_tungstenite::tungstenite::Message;

    pub type Socket =
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

    /// `ws://<base>/v1/sync/ws` for an `http://<base>` server URL.
    pub fn url(base_url: &str) -> String {
        format!("{}/v1/sync/ws", base_url.replacen("http", "ws", 1))
    }

    pub async fn connect(base_url: &str) -> Socket {
        tokio_tungstenite::connect_async(url(base_url))
            .await
            .expect("connect")
            .0
    }

    pub async fn send(socket: &mut Socket, frame: Value) {
        socket.send(Message::text(frame.to_string())).await.expect("send");
    }

    /// The next JSON frame (pings skipped); `None` when the socket closed or nothing came in time.
    pub async fn recv(socket: &mut Socket, within: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let message = tokio::time::timeout_at(deadline, socket.next())
                .await
                .ok()??
                .ok()?;
            match message {
                Message::Text(text) => return Some(serde_json::from_str(text.as_str()).expect("JSON frame")),
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// Says hello with `session`'s token from `cursor`; returns the welcome frame.
    pub async fn hello(socket: &mut Socket, session: &Session, cursor: Option<&str>) -> Value {
        send(
            socket,
            json!({"type": "hello", "access_token": session.access, "cursor": cursor}),
        )
        .await;
        let welcome = recv(socket, Duration::from_secs(5)).await.expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        welcome
    }

    /// Collects `changes` frames until `n` records came within `within`; returns their ids and
    /// the last cursor.
    pub async fn changes(socket: &mut Socket, n: usize, within: Duration) -> (Vec<String>, String) {
        let deadline = tokio::time::Instant::now() + within;
        let mut ids = Vec::new();
        let mut cursor = String::new();
        while ids.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = recv(socket, left)
                .await
                .unwrap_or_else(|| panic!("only {ids:?} arrived in {within:?}"));
            if frame["type"] != "changes" {
                continue;
            }
            for change in frame["changes"].as_array().expect("changes") {
                ids.push(change["id"].as_str().expect("id").to_owned());
            }
            cursor = frame["cursor"].as_str().expect("cursor").to_owned();
        }
        (ids, cursor)
    }
}
