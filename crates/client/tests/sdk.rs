//! The SDK against the real server over real TCP: offline writes, the live feed and its
//! long-poll fallback, restarts, revocation, refused writes, conflicts and resyncs.

use nextsync_client::{Change, Client, Connection, Error, Options, Origin, Query};
use nextsync_core::api::Secret;
use nextsync_core::cursor::Cursor;
use nextsync_core::ids::Seq;
use nextsync_testkit::{Api, PASSWORD, TestDb, TestServer, eventually};
use serde_json::{Map, Value, json};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::broadcast;

struct Device {
    client: Client,
    _dir: tempfile::TempDir,
}

impl Device {
    async fn login(server: &str, email: &str, name: &str) -> Self {
        Self::login_with(server, email, name, Options::default()).await
    }

    async fn login_with(server: &str, email: &str, name: &str, mut options: Options) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        options.device_name = name.to_owned();
        let client = Client::open(&dir.path().join("replica.sqlite3"), options).expect("open");
        client
            .login(server, email, Secret::new(PASSWORD))
            .await
            .expect("login");
        Self { client, _dir: dir }
    }
}

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().expect("object").clone()
}

async fn title(client: &Client, id: &str) -> Option<Value> {
    client
        .get("sessions", id)
        .await
        .expect("get")
        .filter(|r| !r.deleted)
        .and_then(|r| r.fields.get("title").cloned())
}

/// The next change from `changes` for record `id`, within `within`.
async fn change_of(changes: &mut broadcast::Receiver<Change>, id: &str, within: Duration) -> Option<Change> {
    tokio::time::timeout(within, async {
        loop {
            match changes.recv().await {
                Ok(change) if change.record.id == id => return change,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
            }
        }
    })
    .await
    .ok()
}

async fn wait_for_connection(client: &Client, wanted: Connection, within: Duration) -> bool {
    let mut state = client.connection();
    tokio::time::timeout(within, state.wait_for(|s| *s == wanted))
        .await
        .is_ok_and(|r| r.is_ok())
}

async fn restart(server: TestServer, db: &TestDb) -> TestServer {
    let addr = server.addr;
    server.stop().await.expect("stop");
    let mut config = db.config();
    config.bind = addr;
    TestServer::start(config).await
}

#[tokio::test]
async fn writes_made_offline_reach_the_server_and_the_other_device() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("ann@example.org").await;
    let laptop = Device::login(&server.base_url, "ann@example.org", "laptop").await;
    let phone = Device::login(&server.base_url, "ann@example.org", "phone").await;
    let server = {
        let addr = server.addr;
        server.stop().await.expect("stop");
        addr
    };

    laptop
        .client
        .put("sessions", "s1", fields(json!({"title": "written on a plane"})))
        .await
        .expect("a write works offline");
    assert_eq!(
        title(&laptop.client, "s1").await,
        Some(json!("written on a plane"))
    );
    let err = laptop.client.sync().await.expect_err("no server");
    assert!(matches!(err, Error::Unreachable(_)), "{err}");
    assert_eq!(laptop.client.status().await.expect("status").outbox, 1);

    let mut config = db.config();
    config.bind = server;
    let _server = TestServer::start(config).await;
    let report = laptop.client.sync().await.expect("sync");
    assert_eq!(report.pushed, 1);
    let status = laptop.client.status().await.expect("status");
    assert_eq!((status.outbox, status.unconfirmed), (0, 0));
    assert!(status.last_sync.is_some());
    phone.client.sync().await.expect("sync");
    assert_eq!(
        title(&phone.client, "s1").await,
        Some(json!("written on a plane"))
    );
}

#[tokio::test]
async fn a_write_reaches_the_other_devices_socket_live() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("bo@example.org").await;
    let laptop = Device::login(&server.base_url, "bo@example.org", "laptop").await;
    let phone = Device::login(&server.base_url, "bo@example.org", "phone").await;
    let laptop_live = laptop.client.start();
    let phone_live = phone.client.start();
    assert!(wait_for_connection(&phone.client, Connection::Live, Duration::from_secs(10)).await);
    assert!(wait_for_connection(&laptop.client, Connection::Live, Duration::from_secs(10)).await);

    let mut changes = phone.client.subscribe();
    laptop
        .client
        .put("sessions", "s1", fields(json!({"title": "live"})))
        .await
        .expect("put");
    let change = change_of(&mut changes, "s1", Duration::from_secs(5))
        .await
        .expect("the phone hears of it");
    assert_eq!(
        (change.origin, change.record.fields["title"].clone()),
        (Origin::Remote, json!("live"))
    );
    // The laptop's own write settles: nothing left to send or confirm.
    let settled = eventually(Duration::from_secs(5), || async {
        let s = laptop.client.status().await.expect("status");
        (s.outbox == 0 && s.unconfirmed == 0).then_some(())
    })
    .await;
    assert!(settled.is_some());
    laptop_live.stop().await;
    phone_live.stop().await;
}

/// A TCP proxy that refuses every WebSocket upgrade (like a proxy configured without them)
/// and passes everything else through.
async fn upgrade_blocking_proxy(upstream: SocketAddr) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = vec![0u8; 8192];
                let n = inbound.read(&mut head).await.unwrap_or(0);
                let text = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
                if text.contains("upgrade: websocket") {
                    let _ = inbound
                        .write_all(
                            b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                    return;
                }
                let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                if outbound.write_all(&head[..n]).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn with_sockets_blocked_long_polls_keep_delivery_live() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("cy@example.org").await;
    let proxy = upgrade_blocking_proxy(server.addr).await;
    let laptop = Device::login(&server.base_url, "cy@example.org", "laptop").await;
    let phone = Device::login(&format!("http://{proxy}"), "cy@example.org", "phone").await;
    let phone_live = phone.client.start();
    assert!(
        wait_for_connection(&phone.client, Connection::Polling, Duration::from_secs(10)).await,
        "now {:?}",
        *phone.client.connection().borrow()
    );

    let mut changes = phone.client.subscribe();
    for n in 0..3 {
        let id = format!("s{n}");
        laptop
            .client
            .put("sessions", &id, fields(json!({ "title": n })))
            .await
            .expect("put");
        laptop.client.sync().await.expect("sync");
        let change = change_of(&mut changes, &id, Duration::from_secs(5)).await;
        assert!(change.is_some(), "write {n} reached the polling phone");
    }
    // And the phone's own writes go out through the same proxy.
    phone
        .client
        .put("sessions", "from-phone", fields(json!({"title": "hi"})))
        .await
        .expect("put");
    let arrived = eventually(Duration::from_secs(5), || async {
        laptop.client.sync().await.ok()?;
        title(&laptop.client, "from-phone").await
    })
    .await;
    assert_eq!(arrived, Some(json!("hi")));
    phone_live.stop().await;
}

#[tokio::test]
async fn a_server_restart_mid_session_resumes_with_no_gap_and_no_duplicate() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let writer = api.register("di@example.org").await;
    let phone = Device::login(&server.base_url, "di@example.org", "phone").await;
    let live = phone.client.start();
    assert!(wait_for_connection(&phone.client, Connection::Live, Duration::from_secs(10)).await);
    let mut changes = phone.client.subscribe();

    let push = |api: &Api, n: u32| {
        let body = json!({"mutations": [{
            "mutation_id": format!("m{n}"), "collection": "notes", "id": format!("n{n}"),
            "op": "upsert", "fields": {"n": n}, "hlc": format!("{:015}-00000-writer", 1_000 + u64::from(n)),
        }]});
        let token = writer.access.clone();
        let api = Api {
            http: api.http.clone(),
            base_url: api.base_url.clone(),
        };
        async move {
            let (status, body) = api.post("/v1/sync/push", Some(&token), body).await;
            assert_eq!(status, 200, "{body}");
        }
    };
    for n in 0..5 {
        push(&api, n).await;
    }
    let server = restart(server, &db).await;
    let api = Api::new(&server);
    for n in 5..10 {
        push(&api, n).await;
    }

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 10 {
        let change = tokio::time::timeout_at(deadline, changes.recv())
            .await
            .unwrap_or_else(|_| panic!("only {seen:?} arrived"))
            .expect("change");
        seen.push(change.record.id);
    }
    let expected: Vec<String> = (0..10).map(|n| format!("n{n}")).collect();
    assert_eq!(seen, expected, "every change once, in order");
    // Nothing more arrives: no duplicate after the reconnect.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), changes.recv())
            .await
            .is_err()
    );
    live.stop().await;
}

#[tokio::test]
async fn a_removed_device_stops_and_says_it_is_signed_out() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let owner = api.register("ed@example.org").await;
    let stolen = Device::login(&server.base_url, "ed@example.org", "stolen laptop").await;
    let live = stolen.client.start();
    assert!(wait_for_connection(&stolen.client, Connection::Live, Duration::from_secs(10)).await);
    let device_id = stolen
        .client
        .status()
        .await
        .expect("status")
        .device_id
        .expect("device");

    let (status, body) = api
        .delete(&format!("/v1/devices/{device_id}"), owner.token(), None)
        .await;
    assert_eq!(status, 204, "{body}");
    assert!(
        wait_for_connection(&stolen.client, Connection::SignedOut, Duration::from_secs(10)).await,
        "now {:?}",
        *stolen.client.connection().borrow()
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            live.is_finished().then_some(())
        })
        .await
        .is_some()
    );
    let status = stolen.client.status().await.expect("status");
    assert!(!status.signed_in);
    // Local data stays readable and writable; a sync says why it cannot go out.
    stolen
        .client
        .put("sessions", "s1", fields(json!({"title": "kept locally"})))
        .await
        .expect("put");
    assert!(matches!(stolen.client.sync().await, Err(Error::SignedOut(_))));
}

#[tokio::test]
async fn a_refused_write_is_set_aside_and_the_rest_go_through() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("fa@example.org").await;
    let laptop = Device::login(&server.base_url, "fa@example.org", "laptop").await;
    let phone = Device::login(&server.base_url, "fa@example.org", "phone").await;
    for n in 0..5 {
        laptop
            .client
            .put("notes", &format!("n{n}"), fields(json!({ "n": n })))
            .await
            .expect("put");
    }
    // Over the server's 1 MiB field limit: refused with 413, whatever batch it rides in.
    laptop
        .client
        .put("notes", "huge", fields(json!({ "text": "x".repeat(1_100_000) })))
        .await
        .expect("put");
    for n in 5..10 {
        laptop
            .client
            .put("notes", &format!("n{n}"), fields(json!({ "n": n })))
            .await
            .expect("put");
    }
    laptop.client.sync().await.expect("sync");
    let rejected = laptop.client.rejected().await.expect("rejected");
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        (rejected[0].id.as_str(), rejected[0].code.as_str()),
        ("huge", "field_too_large")
    );
    assert!(
        laptop.client.get("notes", "huge").await.expect("get").is_none(),
        "the refused write is undone locally"
    );
    let status = laptop.client.status().await.expect("status");
    assert_eq!((status.outbox, status.rejected), (0, 1));

    phone.client.sync().await.expect("sync");
    let notes = phone
        .client
        .list(Query {
            collection: Some("notes".into()),
            ..Query::default()
        })
        .await
        .expect("list");
    assert_eq!(notes.len(), 10);
}

#[tokio::test]
async fn two_devices_editing_offline_converge_and_the_loser_is_a_conflict() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("gu@example.org").await;
    let laptop = Device::login(&server.base_url, "gu@example.org", "laptop").await;
    let phone = Device::login(&server.base_url, "gu@example.org", "phone").await;
    laptop
        .client
        .put("sessions", "s1", fields(json!({"title": "draft", "topic": "x"})))
        .await
        .expect("put");
    laptop.client.sync().await.expect("sync");
    phone.client.sync().await.expect("sync");

    laptop
        .client
        .put("sessions", "s1", fields(json!({"title": "laptop's title"})))
        .await
        .expect("put");
    phone
        .client
        .put("sessions", "s1", fields(json!({"title": "phone's title"})))
        .await
        .expect("put");
    laptop.client.sync().await.expect("sync");
    phone.client.sync().await.expect("sync");
    laptop.client.sync().await.expect("sync");

    let on_laptop = laptop
        .client
        .get("sessions", "s1")
        .await
        .expect("get")
        .expect("some");
    let on_phone = phone
        .client
        .get("sessions", "s1")
        .await
        .expect("get")
        .expect("some");
    assert_eq!(on_laptop.fields, on_phone.fields);
    assert_eq!(
        on_phone.fields["title"],
        json!("phone's title"),
        "the later stamp wins"
    );
    let conflicts = laptop.client.conflicts().await.expect("conflicts");
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].lost.value, json!("laptop's title"));

    laptop
        .client
        .resolve(&conflicts[0].conflict_id, nextsync_client::Resolution::TakeLost)
        .await
        .expect("resolve");
    assert_eq!(title(&laptop.client, "s1").await, Some(json!("laptop's title")));
    assert!(laptop.client.conflicts().await.expect("conflicts").is_empty());
    phone.client.sync().await.expect("sync");
    assert_eq!(title(&phone.client, "s1").await, Some(json!("laptop's title")));
}

#[tokio::test]
async fn a_cursor_the_server_does_not_know_rebuilds_the_replica_and_keeps_the_outbox() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("ha@example.org").await;
    let laptop = Device::login(&server.base_url, "ha@example.org", "laptop").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("replica.sqlite3");
    let phone = Client::open(&path, Options::default()).expect("open");
    phone
        .login(&server.base_url, "ha@example.org", Secret::new(PASSWORD))
        .await
        .expect("login");
    laptop
        .client
        .put("sessions", "on-server", fields(json!({"title": "a"})))
        .await
        .expect("put");
    laptop.client.sync().await.expect("sync");
    phone.sync().await.expect("sync");
    phone
        .put("sessions", "unsent", fields(json!({"title": "b"})))
        .await
        .expect("put");
    drop(phone);

    // As if the server had been restored from a backup: the phone's cursor is of another epoch.
    assert!(move_cursor_to_an_unknown_epoch(&path), "cursor rewritten");
    let phone = Client::open(&path, Options::default()).expect("reopen");
    phone.sync().await.expect("a resync, not an error");
    assert_eq!(title(&phone, "on-server").await, Some(json!("a")));
    assert_eq!(phone.status().await.expect("status").outbox, 0);
    laptop.client.sync().await.expect("sync");
    assert_eq!(title(&laptop.client, "unsent").await, Some(json!("b")));
}

/// Points the replica's cursor at an epoch the server never had.
fn move_cursor_to_an_unknown_epoch(path: &std::path::Path) -> bool {
    let replica = nextsync_client::replica::Replica::open(path).expect("open");
    let cursor = Cursor {
        epoch: "restored-elsewhere".into(),
        seq: Seq(3),
    }
    .encode();
    replica.set_meta(&[("cursor", Some(&cursor))]).is_ok()
}

#[tokio::test]
async fn a_new_device_gets_the_newest_conversations_first_then_everything_once() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let owner = api.register("io@example.org").await;
    // 60 sessions of 5 messages, pushed oldest first; then an old one is edited (newest now).
    let mut mutations = Vec::new();
    for s in 0..60u64 {
        let hlc = |n: u64| format!("{:015}-{n:05}-seed", 1_000 + s);
        mutations.push(
            json!({"mutation_id": format!("s{s}"), "collection": "sessions", "id": format!("s{s}"),
            "op": "upsert", "fields": {"topic": format!("session {s}")}, "hlc": hlc(0)}),
        );
        for m in 0..5u64 {
            mutations.push(json!({"mutation_id": format!("s{s}m{m}"), "collection": "messages", "id": format!("s{s}m{m}"),
                "op": "upsert", "fields": {"session_id": format!("s{s}"), "position": m, "content": "…"}, "hlc": hlc(m + 1)}));
        }
    }
    let (status, body) = api
        .post("/v1/sync/push", owner.token(), json!({ "mutations": mutations }))
        .await;
    assert_eq!(status, 200, "{body}");
    let edit = json!({"mutation_id": "edit", "collection": "sessions", "id": "s3", "op": "upsert",
        "fields": {"topic": "edited last"}, "hlc": format!("{:015}-00000-seed", 5_000)});
    let (status, body) = api
        .post("/v1/sync/push", owner.token(), json!({ "mutations": [edit] }))
        .await;
    assert_eq!(status, 200, "{body}");

    let phone = Device::login(&server.base_url, "io@example.org", "phone").await;
    let fetched = phone.client.prefetch_recent(20).await.expect("prefetch");
    assert_eq!(fetched, 20 + 20 * 5);
    let sessions = phone.client.sessions(None).await.expect("sessions");
    assert_eq!(sessions.len(), 20);
    assert_eq!(sessions[0].id, "s3", "the session edited last comes first");
    assert_eq!(sessions[1].id, "s59");
    let conversation = phone
        .client
        .conversation("s3")
        .await
        .expect("conversation")
        .expect("s3");
    let positions: Vec<_> = conversation
        .messages
        .iter()
        .map(|m| m.fields["position"].clone())
        .collect();
    assert_eq!(positions, [json!(0), json!(1), json!(2), json!(3), json!(4)]);
    assert!(
        phone.client.get("sessions", "s10").await.expect("get").is_none(),
        "older ones come with the pull"
    );

    let report = phone.client.sync().await.expect("sync");
    assert_eq!(report.pulled, 60 * 6);
    let all = phone.client.list(Query::default()).await.expect("list");
    assert_eq!(all.len(), 60 * 6, "every record once");
    assert_eq!(title_of(&phone.client, "s3").await, Some(json!("edited last")));

    // The endpoint's own rules.
    let (status, body) = api
        .get(
            "/v1/sync/recent?collection=sessions&children=messages",
            owner.token(),
        )
        .await;
    assert_eq!(
        (status, nextsync_testkit::error_code(&body)),
        (reqwest::StatusCode::BAD_REQUEST, "invalid_link")
    );
    let (status, _) = api
        .get("/v1/sync/recent?collection=Bad%20Name", owner.token())
        .await;
    assert_eq!(status, 400);
}

async fn title_of(client: &Client, id: &str) -> Option<Value> {
    client
        .get("sessions", id)
        .await
        .expect("get")
        .and_then(|r| r.fields.get("topic").cloned())
}

#[tokio::test]
async fn the_access_token_is_renewed_on_the_open_socket_before_it_expires() {
    let db = TestDb::sqlite();
    let mut config = db.config();
    // Tokens of 4 s, renewed with 2 s left: without the `auth` frame the server would close
    // the socket with token_expired at 4 s and the client would reconnect.
    config.access_token_ttl = Duration::from_secs(4);
    let server = TestServer::start(config).await;
    Api::new(&server).register("jo@example.org").await;
    let laptop = Device::login(&server.base_url, "jo@example.org", "laptop").await;
    let options = Options {
        renew_before: Duration::from_secs(2),
        ..Options::default()
    };
    let phone = Device::login_with(&server.base_url, "jo@example.org", "phone", options).await;
    let token = || {
        let path = phone._dir.path().join("replica.sqlite3");
        let replica = nextsync_client::replica::Replica::open(&path).expect("open");
        let session: Value =
            serde_json::from_str(&replica.meta("session").expect("meta").expect("session")).expect("json");
        session["access_token"].clone()
    };
    let first = token();
    let live = phone.client.start();
    assert!(wait_for_connection(&phone.client, Connection::Live, Duration::from_secs(10)).await);
    let mut states = phone.client.connection();
    states.borrow_and_update();

    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_ne!(token(), first, "renewed");
    assert!(
        !states.has_changed().expect("watch"),
        "the socket never dropped: now {:?}",
        *states.borrow()
    );
    let mut changes = phone.client.subscribe();
    laptop
        .client
        .put(
            "sessions",
            "after-renewal",
            fields(json!({"title": "still live"})),
        )
        .await
        .expect("put");
    laptop.client.sync().await.expect("sync");
    assert!(
        change_of(&mut changes, "after-renewal", Duration::from_secs(5))
            .await
            .is_some()
    );
    live.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_finds_a_damaged_replica_and_repair_fetches_only_what_differs() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("health@example.org").await;
    let laptop = Device::login(&server.base_url, "health@example.org", "laptop").await;
    let phone = Device::login(&server.base_url, "health@example.org", "phone").await;
    for i in 0..40 {
        laptop
            .client
            .put(
                "sessions",
                &format!("s{i}"),
                fields(json!({"title": format!("Trip {i}")})),
            )
            .await
            .expect("put");
    }
    laptop
        .client
        .put("messages", "m1", fields(json!({"content": "hello"})))
        .await
        .expect("put");
    laptop.client.delete("sessions", "s39").await.expect("delete");
    laptop.client.sync().await.expect("sync");
    let healthy = phone.client.verify(false).await.expect("verify");
    assert!(healthy.ok, "{healthy:?}");
    assert_eq!(healthy.collections.len(), 2);
    assert_eq!(healthy.collections[1].server_records, 39);

    // Damage behind the SDK's back: a record gone, one with an old version, one the server
    // never had.
    let path = phone._dir.path().join("replica.sqlite3");
    let damage = rusqlite::Connection::open(&path).expect("open replica");
    damage
        .execute_batch(
            "DELETE FROM base WHERE collection = 'sessions' AND id = 's1';
             UPDATE base SET fields = '{\"title\":{\"v\":\"wrong\",\"h\":\"000000000000001-00000-evil\"}}'
               WHERE collection = 'sessions' AND id = 's2';
             UPDATE records SET fields = '{\"title\":\"wrong\"}' WHERE collection = 'sessions' AND id = 's2';
             INSERT INTO base (collection, id, fields, tombstone, seq, stale)
               VALUES ('messages', 'ghost', '{\"content\":{\"v\":\"boo\",\"h\":\"000000000000001-00000-evil\"}}', NULL, 1, 0);",
        )
        .expect("damage");
    drop(damage);
    let found = phone.client.verify(false).await.expect("verify");
    assert!(!found.ok);
    assert!(found.repaired.is_empty(), "a check alone repairs nothing");
    let differing: Vec<&str> = found
        .collections
        .iter()
        .filter(|c| !c.matches)
        .map(|c| c.collection.as_str())
        .collect();
    assert_eq!(differing, ["messages", "sessions"]);
    assert_eq!(found.collections[1].local_records, 38);

    let mut changes = phone.client.subscribe();
    let fixed = phone.client.verify(true).await.expect("repair");
    assert!(fixed.ok, "{fixed:?}");
    let mut repaired: Vec<String> = fixed
        .repaired
        .iter()
        .map(|r| format!("{}/{} {}", r.collection, r.id, r.action))
        .collect();
    repaired.sort();
    assert_eq!(
        repaired,
        [
            "messages/ghost dropped",
            "sessions/s1 replaced",
            "sessions/s2 replaced"
        ]
    );
    assert_eq!(title(&phone.client, "s2").await, Some(json!("Trip 2")));
    assert_eq!(title(&phone.client, "s1").await, Some(json!("Trip 1")));
    assert!(
        phone
            .client
            .get("messages", "ghost")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        change_of(&mut changes, "s2", Duration::from_secs(2))
            .await
            .is_some(),
        "subscribers hear the repair"
    );
    assert!(phone.client.verify(false).await.expect("verify").ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_loop_checks_and_repairs_the_replica_after_catching_up() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    Api::new(&server).register("auto@example.org").await;
    let laptop = Device::login(&server.base_url, "auto@example.org", "laptop").await;
    laptop
        .client
        .put("sessions", "s1", fields(json!({"title": "Kept"})))
        .await
        .expect("put");
    laptop.client.sync().await.expect("sync");
    let options = Options {
        verify_every: Some(Duration::ZERO),
        ..Options::default()
    };
    let phone = Device::login_with(&server.base_url, "auto@example.org", "phone", options).await;
    phone.client.sync().await.expect("sync");
    assert_eq!(phone.client.status().await.expect("status").last_verified, None);
    // The phone loses s1 from its copy of the server's state (a bug, a bad disk).
    let damage = rusqlite::Connection::open(phone._dir.path().join("replica.sqlite3")).expect("open");
    damage
        .execute("DELETE FROM base WHERE collection = 'sessions' AND id = 's1'", [])
        .expect("damage");
    drop(damage);
    let live = phone.client.start();
    let repaired = eventually(Duration::from_secs(10), || async {
        let status = phone.client.status().await.expect("status");
        (status.last_verified.is_some()).then_some(status.last_repaired)
    })
    .await
    .expect("the live loop checked the replica");
    assert_eq!(repaired, 1);
    let health = phone.client.last_health().await.expect("health").expect("kept");
    assert!(health.ok);
    assert_eq!(health.repaired[0].id, "s1");
    live.stop().await;
}
