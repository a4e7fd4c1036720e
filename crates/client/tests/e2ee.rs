//! End-to-end encryption between SDK clients through the real server: values round-trip
//! between devices that know the passphrase, a wrong passphrase is refused, a locked device
//! sends nothing in clear, the server's files never hold the plaintext, and NextChat's doors
//! answer an error NextChat shows as "Sync Fail".

use nextsync_client::{Client, Encryption, Error, KdfParams, Options};
use nextsync_core::api::Secret;
use nextsync_testkit::{Api, PASSWORD, TestDb, TestServer};
use serde_json::{Map, Value, json};

/// Cheap Argon2 for tests (the format, not the cost, is under test).
const FAST: KdfParams = KdfParams {
    memory_kib: 256,
    passes: 1,
    lanes: 1,
};

async fn device(server: &str, email: &str, dir: &tempfile::TempDir) -> Client {
    let options = Options {
        kdf: FAST,
        ..Options::default()
    };
    let client = Client::open(&dir.path().join("replica.sqlite3"), options).expect("open");
    client
        .login(server, email, Secret::new(PASSWORD))
        .await
        .expect("login");
    client
}

fn fields(value: Value) -> Map<String, Value> {
    value.as_object().expect("object").clone()
}

async fn field(client: &Client, collection: &str, id: &str, name: &str) -> Option<Value> {
    client
        .get(collection, id)
        .await
        .expect("get")
        .and_then(|r| r.fields.get(name).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_values_round_trip_and_the_server_holds_only_ciphertext() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let owner = api.register("enc@example.org").await;
    let (d1, d2, d3) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let laptop = device(&server.base_url, "enc@example.org", &d1).await;

    laptop
        .put("sessions", "s1", fields(json!({"topic": "written before"})))
        .await
        .expect("put");
    laptop
        .enable_encryption("a long passphrase")
        .await
        .expect("enable");
    assert_eq!(laptop.encryption(), Encryption::On);
    let marker = "MARKER-e2ee-7f3a9c";
    laptop
        .put(
            "messages",
            "m1",
            fields(json!({"content": format!("{marker} from the laptop"), "session_id": "s1"})),
        )
        .await
        .expect("put");
    laptop.sync().await.expect("sync");

    // The server relays ciphertext: its records API shows the sealed form.
    let (status, record) = api.get("/v1/records/messages/m1", owner.token()).await;
    assert_eq!(status, 200);
    let stored = record["fields"]["content"].as_str().expect("a string");
    assert!(stored.starts_with("nse1:"), "{stored}");
    let (_, session) = api.get("/v1/records/sessions/s1", owner.token()).await;
    assert!(
        session["fields"]["topic"]
            .as_str()
            .expect("topic")
            .starts_with("nse1:"),
        "existing records were sealed too"
    );

    // A new device is locked until it has the passphrase, and sends nothing in clear.
    let phone = device(&server.base_url, "enc@example.org", &d2).await;
    assert!(matches!(phone.sync().await, Err(Error::Locked)));
    assert_eq!(phone.encryption(), Encryption::Locked);
    phone
        .put(
            "notes",
            "n1",
            fields(json!({"text": format!("{marker} typed while locked")})),
        )
        .await
        .expect("a local write works");
    assert!(matches!(phone.sync().await, Err(Error::Locked)));
    let (status, _) = api.get("/v1/records/notes/n1", owner.token()).await;
    assert_eq!(status, 404, "nothing left the locked device");
    assert!(matches!(
        phone.unlock("not the passphrase").await,
        Err(Error::WrongPassphrase)
    ));
    phone.unlock("a long passphrase").await.expect("unlock");
    phone.sync().await.expect("sync");
    assert_eq!(
        field(&phone, "messages", "m1", "content").await,
        Some(json!(format!("{marker} from the laptop")))
    );
    assert_eq!(
        field(&phone, "sessions", "s1", "topic").await,
        Some(json!("written before"))
    );

    // Back the other way, including the write made while locked.
    laptop.sync().await.expect("sync");
    assert_eq!(
        field(&laptop, "notes", "n1", "text").await,
        Some(json!(format!("{marker} typed while locked")))
    );

    // A new passphrase re-wraps the key: the phone keeps working, a third device needs the new one.
    laptop
        .change_passphrase("a long passphrase", "another long passphrase")
        .await
        .expect("change");
    phone
        .put("notes", "n2", fields(json!({"text": "after the change"})))
        .await
        .expect("put");
    phone.sync().await.expect("the phone's key is unchanged");
    let tablet = device(&server.base_url, "enc@example.org", &d3).await;
    assert!(matches!(
        tablet.unlock("a long passphrase").await,
        Err(Error::WrongPassphrase)
    ));
    tablet.unlock("another long passphrase").await.expect("unlock");
    tablet.sync().await.expect("sync");
    assert_eq!(
        field(&tablet, "notes", "n2", "text").await,
        Some(json!("after the change"))
    );

    // A backup file comes from the replica, in clear, though the server cannot render one.
    let backup = String::from_utf8(phone.export_nextchat().await.expect("export")).expect("utf-8");
    assert!(backup.contains(&format!("{marker} from the laptop")), "{backup}");

    // Nothing typed after encryption was enabled is in the server's files, WAL included.
    let found = db.files_containing(marker.as_bytes()).await;
    assert!(found.is_empty(), "plaintext in {found:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextchat_doors_refuse_an_encrypted_account_with_an_error_nextchat_shows() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    let owner = api.register("door@example.org").await;
    let (status, created) = api
        .post("/v1/app-passwords", owner.token(), json!({"label": "NextChat"}))
        .await;
    assert_eq!(status, 201, "{created}");
    let app_password = created["password"].as_str().expect("password").to_owned();
    let backup = |api: &Api| {
        api.http
            .get(format!("{}/dav/chatgpt-next-web/backup.json", api.base_url))
            .basic_auth("door@example.org", Some(&app_password))
            .send()
    };
    assert_eq!(
        backup(&api).await.expect("get").status(),
        404,
        "empty before: NextChat uploads"
    );

    let dir = tempfile::tempdir().expect("dir");
    let laptop = device(&server.base_url, "door@example.org", &dir).await;
    laptop
        .enable_encryption("a long passphrase")
        .await
        .expect("enable");
    let response = backup(&api).await.expect("get");
    assert_eq!(response.status(), 409);
    let body = response.text().await.expect("body");
    assert!(
        !body.is_empty(),
        "a non-empty body: NextChat shows Sync Fail, never uploads over it"
    );
    assert!(body.contains("end_to_end_encrypted"), "{body}");
    // An upload is refused too.
    let put = api
        .http
        .put(format!("{}/dav/chatgpt-next-web/backup.json", api.base_url))
        .basic_auth("door@example.org", Some(&app_password))
        .body(r#"{"chat-next-web-store":{"sessions":[]}}"#)
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drafts_reach_the_other_device_and_the_server_relays_only_ciphertext() {
    use nextsync_client::Connection;
    use nextsync_testkit::ws;
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let api = Api::new(&server);
    api.register("draft@example.org").await;
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let laptop = device(&server.base_url, "draft@example.org", &d1).await;
    let phone = device(&server.base_url, "draft@example.org", &d2).await;
    laptop
        .enable_encryption("a long passphrase")
        .await
        .expect("enable");
    phone.sync().await.ok();
    phone.unlock("a long passphrase").await.expect("unlock");
    // Not live yet: nothing can go.
    let early = laptop
        .send_draft("messages", "m1", Some(fields(json!({"content": "x"}))))
        .await
        .expect("draft");
    assert!(!early, "a draft needs the live socket");

    // What the server relays, seen by a third socket of the account.
    let observer = api.login("draft@example.org", PASSWORD).await;
    let mut socket = ws::connect(&server.base_url).await;
    ws::hello(&mut socket, &observer, None).await;
    let mut drafts = phone.subscribe_drafts();
    let (laptop_live, phone_live) = (laptop.start(), phone.start());
    for client in [&laptop, &phone] {
        let mut state = client.connection();
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            state.wait_for(|s| *s == Connection::Live),
        )
        .await
        .expect("live in time")
        .expect("live");
    }
    let marker = "MARKER-draft-51c2";
    let text = format!("{marker}: the reply so far");
    let sent = laptop
        .send_draft(
            "messages",
            "m1",
            Some(fields(json!({"session_id": "s1", "content": text}))),
        )
        .await
        .expect("draft");
    assert!(sent);
    let draft = tokio::time::timeout(std::time::Duration::from_secs(5), drafts.recv())
        .await
        .expect("in time")
        .expect("a draft");
    assert_eq!((draft.collection.as_str(), draft.id.as_str()), ("messages", "m1"));
    assert_eq!(draft.fields.as_ref().expect("fields")["content"], json!(text));
    let relayed = loop {
        let frame = ws::recv(&mut socket, std::time::Duration::from_secs(5))
            .await
            .expect("a frame");
        if frame["type"] == "draft" {
            break frame;
        }
    };
    let on_the_wire = relayed["fields"]["content"].as_str().expect("a string");
    assert!(on_the_wire.starts_with("nse1:"), "{on_the_wire}");
    assert!(!relayed.to_string().contains(marker));
    // The replica holds plaintext, the server ciphertext: digests hash stamps, so they agree.
    laptop
        .put(
            "messages",
            "m2",
            fields(json!({"content": "sealed on the server"})),
        )
        .await
        .expect("put");
    laptop.sync().await.expect("sync");
    let health = phone.verify(false).await.expect("verify");
    assert!(health.ok, "{health:?}");
    assert!(
        health
            .collections
            .iter()
            .any(|c| c.collection == "messages" && c.server_records == 1)
    );
    laptop_live.stop().await;
    phone_live.stop().await;
}
