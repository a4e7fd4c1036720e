//! The client commands as a person or a script runs them: real `nextsync` processes on their
//! own replicas against a real server, killed with SIGKILL mid-push.

use nextsync_client::{Client, Options};
use nextsync_testkit::{Api, PASSWORD, TestDb, TestServer, eventually};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_nextsync");

/// `nextsync` on the profiles in `home`, with no other NEXTSYNC_ variable inherited.
fn nextsync(home: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    for (key, _) in std::env::vars() {
        if key.starts_with("NEXTSYNC_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("NEXTSYNC_CLIENT_HOME", home);
    cmd
}

fn run(home: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = nextsync(home)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("output")
}

/// Runs a command that must succeed; returns its stdout.
fn ok(home: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let out = run(home, args, stdin);
    assert!(
        out.status.success(),
        "nextsync {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn login(home: &Path, server: &str, email: &str) {
    let password = format!("{PASSWORD}\n");
    ok(
        home,
        &["login", "--server", server, "--email", email, "--password-stdin"],
        Some(&password),
    );
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

struct Watcher {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Watcher {
    fn spawn(home: &Path) -> Self {
        let mut child = nextsync(home)
            .args(["watch", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { child, lines }
    }

    /// The next printed change of record `id`.
    fn change_of(&self, id: &str, within: Duration) -> Option<Value> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            let change = json_of(&line);
            if change["id"] == json!(id) {
                return Some(change);
            }
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_put_and_a_watch_in_another_process_sees_it() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("cli@example.org").await;
    let laptop = tempfile::tempdir().expect("tempdir");
    let phone = tempfile::tempdir().expect("tempdir");
    login(laptop.path(), &server.base_url, "cli@example.org");
    login(phone.path(), &server.base_url, "cli@example.org");

    let watcher = Watcher::spawn(phone.path());
    // The watch is live once the laptop's first write reaches it; retry that first one.
    let first = eventually(Duration::from_secs(15), || async {
        ok(
            laptop.path(),
            &["put", "sessions", "warmup", "--fields", r#"{"title":"w"}"#],
            None,
        );
        watcher.change_of("warmup", Duration::from_millis(500))
    })
    .await;
    assert!(first.is_some(), "the watch never printed a change");

    ok(
        laptop.path(),
        &["put", "sessions", "s1", "--fields", r#"{"title":"Trip plans"}"#],
        None,
    );
    let change = watcher
        .change_of("s1", Duration::from_secs(5))
        .expect("the watch prints the write");
    assert_eq!(change["collection"], "sessions");
    assert_eq!(change["fields"]["title"], "Trip plans");
    assert_eq!(change["origin"], "remote");

    ok(laptop.path(), &["delete", "sessions", "s1"], None);
    let change = watcher
        .change_of("s1", Duration::from_secs(5))
        .expect("the delete");
    assert_eq!(change["deleted"], json!(true));

    // The watching profile's replica has it too, for `get`.
    let got = run(phone.path(), &["get", "sessions", "warmup", "--json"], None);
    assert!(got.status.success());
    let record = json_of(&String::from_utf8_lossy(&got.stdout));
    assert_eq!(
        (record["collection"].clone(), record["id"].clone()),
        (json!("sessions"), json!("warmup"))
    );
    assert_eq!(record["fields"]["title"], "w");
    let missing = run(phone.path(), &["get", "sessions", "s1", "--json"], None);
    assert!(!missing.status.success(), "a deleted record is not found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_puts_queue_and_sync_says_when_the_server_is_unreachable() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("off@example.org").await;
    let home = tempfile::tempdir().expect("tempdir");
    login(home.path(), &server.base_url, "off@example.org");
    let addr = server.addr;
    server.stop().await.expect("stop");

    ok(
        home.path(),
        &["put", "notes", "n1", "--fields", r#"{"text":"offline"}"#],
        None,
    );
    ok(home.path(), &["delete", "notes", "gone"], None);
    let status = json_of(&ok(home.path(), &["status", "--json"], None));
    assert_eq!(status["outbox"], 2);
    assert_eq!(status["signed_in"], true);
    let got = json_of(&ok(home.path(), &["get", "notes", "n1", "--json"], None));
    assert_eq!(
        (got["fields"]["text"].clone(), got["pending"].clone()),
        (json!("offline"), json!(true))
    );
    let failed = run(home.path(), &["sync", "--json"], None);
    assert!(!failed.status.success(), "sync must fail without a server");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("cannot reach the server"));

    let mut config = db.config();
    config.bind = addr;
    let _server = TestServer::start(config).await;
    let report = json_of(&ok(home.path(), &["sync", "--json"], None));
    assert_eq!(
        (report["pushed"].clone(), report["outbox"].clone()),
        (json!(2), json!(0))
    );

    // Bad input is refused before anything is written.
    let bad = run(home.path(), &["put", "notes", "n2", "--fields", "[1,2]"], None);
    assert!(!bad.status.success());
    let bad = run(home.path(), &["put", "Bad Name", "n2", "--fields", "{}"], None);
    assert!(!bad.status.success());
    let status = json_of(&ok(home.path(), &["status", "--json"], None));
    assert_eq!(status["outbox"], 0);
}

/// The server's count of mutation ids it has applied (each id is stored once).
fn applied_mutations(db: &TestDb) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        db.config().sqlite_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open the server's database");
    conn.query_row("SELECT count(*) FROM applied_mutations", [], |r| r.get(0))
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_pushes_loses_nothing_and_sends_nothing_twice() {
    const WRITES: usize = 3000;
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("kill@example.org").await;
    let home = tempfile::tempdir().expect("tempdir");
    login(home.path(), &server.base_url, "kill@example.org");

    // A few thousand offline writes, straight into the profile's replica.
    let replica = home.path().join("default").join("replica.sqlite3");
    {
        let client = Client::open(&replica, Options::default()).expect("open");
        for n in 0..WRITES {
            let mut fields = serde_json::Map::new();
            fields.insert("n".into(), json!(n));
            fields.insert("text".into(), json!("x".repeat(200)));
            client
                .put("notes", &format!("n{n:05}"), fields)
                .await
                .expect("put");
        }
    }

    let mut kills = 0;
    let mut seed = std::process::id() as u64;
    for _ in 0..12 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(30 + (seed >> 33) % 400);
        let mut child = nextsync(home.path())
            .args(["sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sync");
        tokio::time::sleep(delay).await;
        if child.try_wait().expect("try_wait").is_none() {
            child.kill().expect("SIGKILL");
            kills += 1;
        }
        let _ = child.wait();
    }
    assert!(
        kills >= 3,
        "only {kills} syncs were killed mid-way; the test proved little"
    );
    ok(home.path(), &["sync"], None);

    let status = json_of(&ok(home.path(), &["status", "--json"], None));
    assert_eq!(
        (status["outbox"].clone(), status["unconfirmed"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(status["records"], json!(WRITES));
    assert_eq!(
        applied_mutations(&db),
        WRITES as i64,
        "every write applied exactly once, under its one mutation id"
    );
    // The replica equals the server, record for record.
    let client = Client::open(&replica, Options::default()).expect("open");
    let fresh = tempfile::tempdir().expect("tempdir");
    login(fresh.path(), &server.base_url, "kill@example.org");
    let other = Client::open(
        &fresh.path().join("default").join("replica.sqlite3"),
        Options::default(),
    )
    .expect("open");
    let all = |c: Client| async move {
        c.list(nextsync_client::Query::default())
            .await
            .expect("list")
            .into_iter()
            .map(|r| (r.id, r.fields))
            .collect::<Vec<_>>()
    };
    let (mine, servers) = (all(client).await, all(other).await);
    assert_eq!(mine.len(), WRITES);
    assert_eq!(mine, servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_another_account_gives_the_same_state() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    api.register("from@example.org").await;
    api.register("to@example.org").await;
    let (from, to) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    login(from.path(), &server.base_url, "from@example.org");
    login(to.path(), &server.base_url, "to@example.org");

    // A NextChat-shaped history (entities carry their own `id`, as NextChat's do): sessions,
    // their messages, a mask and a prompt.
    for s in 0..3 {
        let session = format!(
            r#"{{"id":"s{s}","topic":"Trip {s}","lastUpdate":{},"mask":{{"name":"Default"}}}}"#,
            1_700_000_000_000u64 + s
        );
        ok(
            from.path(),
            &["put", "sessions", &format!("s{s}"), "--fields", &session],
            None,
        );
        for m in 0..4 {
            let message = format!(
                r#"{{"id":"s{s}-m{m}","session_id":"s{s}","position":{m},"role":"user","content":"message {m} of {s}","date":"2026-11-30"}}"#
            );
            ok(
                from.path(),
                &["put", "messages", &format!("s{s}-m{m}"), "--fields", &message],
                None,
            );
        }
    }
    ok(
        from.path(),
        &[
            "put",
            "masks",
            "k1",
            "--fields",
            r#"{"name":"Translator","context":[]}"#,
        ],
        None,
    );
    ok(
        from.path(),
        &[
            "put",
            "prompts",
            "p1",
            "--fields",
            r#"{"title":"Summarize","content":"Summarize this"}"#,
        ],
        None,
    );

    let file = from.path().join("backup.json");
    let file = file.to_str().expect("utf-8 path");
    ok(from.path(), &["export", file], None);
    let exported = json_of(&std::fs::read_to_string(file).expect("read the export"));
    assert_eq!(
        exported["chat-next-web-store"]["sessions"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(file).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o077, 0, "the backup is owner-only");
    }
    ok(to.path(), &["import", file], None);

    let state = |home: &Path| {
        let listed = ok(home, &["list", "--json"], None);
        let mut records: Vec<(String, String, Value)> = listed
            .lines()
            .map(json_of)
            .filter(|r| r["collection"] != "config")
            .map(|r| {
                (
                    r["collection"].as_str().unwrap_or_default().to_owned(),
                    r["id"].as_str().unwrap_or_default().to_owned(),
                    r["fields"].clone(),
                )
            })
            .collect();
        records.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        records
    };
    let (mine, theirs) = (state(from.path()), state(to.path()));
    assert_eq!(mine.len(), 3 + 12 + 2);
    assert_eq!(mine, theirs);

    // A second import of the same file changes nothing.
    ok(to.path(), &["import", file], None);
    assert_eq!(state(to.path()), mine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trash_and_a_restore_to_a_moment_from_the_command_line() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("cli@example.org").await;
    let laptop = tempfile::tempdir().expect("tempdir");
    let phone = tempfile::tempdir().expect("tempdir");
    login(laptop.path(), &server.base_url, "cli@example.org");
    login(phone.path(), &server.base_url, "cli@example.org");
    ok(
        laptop.path(),
        &["put", "sessions", "s1", "--fields", r#"{"topic":"Trip plans"}"#],
        None,
    );
    ok(laptop.path(), &["delete", "sessions", "s1"], None);
    ok(laptop.path(), &["sync"], None);

    let listed = ok(phone.path(), &["trash", "--json"], None);
    let item = json_of(listed.lines().next().expect("one item"));
    assert_eq!(
        (item["collection"].clone(), item["id"].clone()),
        (json!("sessions"), json!("s1"))
    );
    assert_eq!(item["fields"]["topic"], "Trip plans");
    let restored = run(phone.path(), &["trash", "restore", "sessions", "s1"], None);
    assert!(restored.status.success());
    assert!(String::from_utf8_lossy(&restored.stderr).contains("restored 1 record on every device"));
    // Pulled at once: the phone's replica has it back.
    let got = json_of(&ok(phone.path(), &["get", "sessions", "s1", "--json"], None));
    assert_eq!(got["fields"]["topic"], "Trip plans");
    assert!(ok(phone.path(), &["trash", "--json"], None).trim().is_empty());

    tokio::time::sleep(Duration::from_millis(20)).await;
    let moment = nextsync_core::time::Timestamp::now().to_rfc3339();
    tokio::time::sleep(Duration::from_millis(20)).await;
    ok(
        laptop.path(),
        &["put", "sessions", "s1", "--fields", r#"{"topic":"Overwritten"}"#],
        None,
    );
    ok(
        laptop.path(),
        &["put", "prompts", "p1", "--fields", r#"{"title":"New"}"#],
        None,
    );
    let plan = json_of(&ok(
        phone.path(),
        &["restore", "--at", &moment, "--dry-run", "--json"],
        None,
    ));
    assert_eq!(
        (plan["reverted"].clone(), plan["trashed"].clone()),
        (json!(1), json!(1)),
        "{plan}"
    );
    let done = ok(phone.path(), &["restore", "--at", &moment], None);
    assert!(
        done.contains("did: 0 come back, 1 return to old values, 1 move to the trash"),
        "{done}"
    );
    ok(laptop.path(), &["sync"], None);
    let got = json_of(&ok(laptop.path(), &["get", "sessions", "s1", "--json"], None));
    assert_eq!(got["fields"]["topic"], "Trip plans");
    assert!(
        !run(laptop.path(), &["get", "prompts", "p1"], None)
            .status
            .success()
    );

    let refused = run(laptop.path(), &["trash", "empty"], None);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    let emptied = run(laptop.path(), &["trash", "empty", "--yes"], None);
    assert!(emptied.status.success());
    assert!(String::from_utf8_lossy(&emptied.stderr).contains("1 record deleted for good"));
    // The replica checks out against the server's digests.
    let health = json_of(&ok(laptop.path(), &["verify", "--json"], None));
    assert_eq!(health["ok"], true, "{health}");
    let text = ok(laptop.path(), &["verify"], None);
    assert!(
        text.contains("sessions\t1 records here, 1 on the server\tok"),
        "{text}"
    );
    let bad = run(laptop.path(), &["restore", "--at", "yesterday-ish"], None);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("neither an RFC 3339 time nor a duration"));
}
