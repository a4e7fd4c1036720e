//! The WebSocket feed over real TCP and real WebSockets, on SQLite and PostgreSQL.

use nextsync_testkit::ws::{self, Socket, hello, recv, send};
use nextsync_testkit::{Api, PASSWORD, Session, TestDb, TestServer, both_backends, start};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn ws_url(server: &TestServer) -> String {
    ws::url(&server.base_url)
}

async fn connect(server: &TestServer) -> Socket {
    ws::connect(&server.base_url).await
}

async fn changes(socket: &mut Socket, n: usize) -> (Vec<String>, String) {
    ws::changes(socket, n, Duration::from_secs(5)).await
}

fn upsert(mid: &str, id: &str, counter: u32) -> Value {
    let ms = nextsync_core::time::Timestamp::now().as_millis();
    json!({"mutation_id": mid, "collection": "notes", "id": id, "op": "upsert",
        "fields": {"text": format!("note {id}")}, "hlc": format!("{ms:015}-{counter:05}-laptop")})
}

async fn push(api: &Api, session: &Session, mutations: Vec<Value>) {
    let (status, body) = api
        .post(
            "/v1/sync/push",
            session.token(),
            json!({ "mutations": mutations }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

both_backends!(
    backlog_then_live_then_resume_with_no_gap_and_no_duplicate,
    a_signed_out_device_loses_its_socket_at_once,
);

async fn backlog_then_live_then_resume_with_no_gap_and_no_duplicate(db: TestDb) {
    let (server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", PASSWORD).await;
    push(
        &api,
        &laptop,
        vec![upsert("a", "r1", 0), upsert("b", "r2", 1), upsert("c", "r3", 2)],
    )
    .await;

    let mut socket = connect(&server).await;
    let welcome = hello(&mut socket, &phone, None).await;
    assert_eq!(welcome["protocol"], 1);
    assert!(
        welcome["capabilities"]
            .as_array()
            .expect("capabilities")
            .contains(&json!("push"))
    );
    let (backlog, _) = changes(&mut socket, 3).await;
    assert_eq!(backlog, ["r1", "r2", "r3"]);

    // Live: a write through HTTP by another device arrives as a frame.
    push(&api, &laptop, vec![upsert("d", "r4", 3)]).await;
    let (live, _) = changes(&mut socket, 1).await;
    assert_eq!(live, ["r4"]);

    // A push over the socket is answered like HTTP, and its change comes through the feed.
    send(
        &mut socket,
        json!({"type": "push", "mutations": [upsert("e", "r5", 4)]}),
    )
    .await;
    let mut got_result = false;
    let mut got_change = false;
    let mut cursor = String::new();
    while !(got_result && got_change) {
        let frame = recv(&mut socket, Duration::from_secs(5)).await.expect("frame");
        match frame["type"].as_str() {
            Some("push_result") => {
                assert_eq!(frame["results"][0]["status"], "applied");
                got_result = true;
            }
            Some("changes") => {
                assert_eq!(frame["changes"][0]["id"], "r5");
                cursor = frame["cursor"].as_str().expect("cursor").to_owned();
                got_change = true;
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(
        recv(&mut socket, Duration::from_secs(5)).await.expect("pong")["type"],
        "pong"
    );
    socket.close(None).await.expect("close");

    // Written while away: a reconnect from the cursor gets exactly these, then nothing more.
    push(&api, &laptop, vec![upsert("f", "r6", 5), upsert("g", "r7", 6)]).await;
    let mut socket = connect(&server).await;
    hello(&mut socket, &phone, Some(&cursor)).await;
    let (resumed, _) = changes(&mut socket, 2).await;
    assert_eq!(resumed, ["r6", "r7"]);
    assert!(
        recv(&mut socket, Duration::from_millis(300)).await.is_none(),
        "no duplicate follows"
    );
}

async fn a_signed_out_device_loses_its_socket_at_once(db: TestDb) {
    let (server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", PASSWORD).await;
    let mut socket = connect(&server).await;
    hello(&mut socket, &phone, None).await;

    let started = std::time::Instant::now();
    let (status, _) = api
        .delete(&format!("/v1/devices/{}", phone.device_id), laptop.token(), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let frame = recv(&mut socket, Duration::from_secs(2))
        .await
        .expect("an error frame");
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("token_revoked"))
    );
    assert!(
        recv(&mut socket, Duration::from_secs(2)).await.is_none(),
        "then the socket closes"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed within a second: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_expiring_token_closes_the_socket_unless_renewed() {
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.access_token_ttl = Duration::from_secs(2);
    let server = TestServer::start(config).await;
    let api = Api::new(&server);
    let session = api.register("ann@example.org").await;
    let mut socket = connect(&server).await;
    hello(&mut socket, &session, None).await;

    // Renew halfway: the socket outlives the first token.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, refreshed) = api
        .post(
            "/v1/auth/refresh",
            None,
            json!({"refresh_token": session.refresh}),
        )
        .await;
    let renewed = Session::from_json(&refreshed);
    send(
        &mut socket,
        json!({"type": "auth", "access_token": renewed.access}),
    )
    .await;
    assert_eq!(
        recv(&mut socket, Duration::from_secs(2)).await.expect("auth_ok")["type"],
        "auth_ok"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(
        recv(&mut socket, Duration::from_secs(1))
            .await
            .expect("still open")["type"],
        "pong"
    );

    // Not renewed again: closed with token_expired.
    let frame = recv(&mut socket, Duration::from_secs(4))
        .await
        .expect("an error frame");
    assert_eq!(frame["code"], "token_expired", "{frame}");
    assert!(recv(&mut socket, Duration::from_secs(2)).await.is_none());
}

#[tokio::test]
async fn a_bad_hello_is_refused() {
    let db = TestDb::sqlite();
    let (server, api) = start(&db).await;
    let session = api.register("ann@example.org").await;

    let mut socket = connect(&server).await;
    send(
        &mut socket,
        json!({"type": "hello", "access_token": "not-a-token", "cursor": null}),
    )
    .await;
    let frame = recv(&mut socket, Duration::from_secs(5)).await.expect("error");
    assert_eq!(
        (frame["type"].as_str(), frame["code"].as_str()),
        (Some("error"), Some("invalid_token"))
    );
    assert!(recv(&mut socket, Duration::from_secs(2)).await.is_none());

    let mut socket = connect(&server).await;
    send(&mut socket, json!({"type": "ping"})).await;
    let frame = recv(&mut socket, Duration::from_secs(5)).await.expect("error");
    assert_eq!(frame["code"], "bad_hello");

    let mut request = ws_url(&server).into_client_request().expect("request");
    request
        .headers_mut()
        .insert("authorization", "Bearer nope".parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED.as_u16());
        }
        other => panic!("expected a 401, got {:?}", other.map(|_| ())),
    }

    // A good Bearer header on the upgrade stands in for the token in hello.
    let mut request = ws_url(&server).into_client_request().expect("request");
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", session.access).parse().expect("header"),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.expect("upgrade");
    send(&mut socket, json!({"type": "hello", "cursor": null})).await;
    assert_eq!(
        recv(&mut socket, Duration::from_secs(5)).await.expect("welcome")["type"],
        "welcome"
    );
}

/// A client that stops reading is closed once a frame has waited the send timeout, instead
/// of holding its queue (and the socket's task, pings included) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.ws_send_timeout = Duration::from_secs(2);
    let server = TestServer::start(config).await;
    let api = Api::new(&server);
    let session = api.register("ann@example.org").await;
    // 24 MiB of backlog: far more than the socket buffers between server and client hold.
    let mib = "x".repeat(1024 * 1024 - 64);
    for batch in 0..3u32 {
        let mutations = (0..8u32)
            .map(|i| {
                let n = batch * 8 + i;
                let mut m = upsert(&format!("m{n}"), &format!("r{n}"), n);
                m["fields"] = json!({ "text": mib });
                m
            })
            .collect();
        push(&api, &session, mutations).await;
    }
    // A small receive buffer, and then no reading at all.
    let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
    tcp.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = tcp.connect(server.addr).await.expect("connect");
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (mut socket, _) = tokio_tungstenite::client_async(ws_url(&server), stream)
        .await
        .expect("upgrade");
    hello(&mut socket, &session, None).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    // Reading again drains what was in flight, then the connection ends.
    let mut records = 0;
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(message)) = socket.next().await {
            match message {
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(text.as_str()).expect("JSON");
                    records += frame["changes"].as_array().map_or(0, Vec::len);
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server kept a socket that stopped reading");
    assert!(
        records < 24,
        "everything arrived ({records}): the client was never slow"
    );
}

/// A frame over the limit gets close code 1009 (message too big), not a dropped connection.
#[tokio::test]
async fn a_frame_over_the_limit_is_closed_with_1009() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.max_body_bytes = 4096;
    let server = TestServer::start(config).await;
    let api = Api::new(&server);
    let session = api.register("ann@example.org").await;
    let mut socket = connect(&server).await;
    hello(&mut socket, &session, None).await;
    send(&mut socket, json!({"type": "ping", "padding": "x".repeat(8192)})).await;
    let mut close_code = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(5), socket.next()).await {
        if let Message::Close(frame) = message {
            close_code = frame.map(|f| f.code);
            break;
        }
    }
    assert_eq!(close_code, Some(CloseCode::Size));
}

/// A stopping server says goodbye to its sockets (close 1001, `shutting_down`) and answers
/// long-polls at once, so neither holds up a graceful stop or lingers after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_closes_sockets_and_answers_long_polls() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let db = TestDb::sqlite();
    let (server, api) = start(&db).await;
    let session = api.register("ann@example.org").await;
    let mut socket = connect(&server).await;
    let welcome = hello(&mut socket, &session, None).await;
    let cursor = welcome["cursor"].as_str().expect("cursor").to_owned();
    let poll = {
        let api = api.clone();
        let token = session.access.clone();
        tokio::spawn(async move {
            api.get(&format!("/v1/sync/pull?since={cursor}&wait=60"), Some(&token))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    server.stop().await.expect("graceful stop");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stop waited {:?}",
        started.elapsed()
    );
    let (status, body) = poll.await.expect("join");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["changes"], json!([]));
    let mut close_code = None;
    while let Ok(Some(Ok(message))) = tokio::time::timeout(Duration::from_secs(2), socket.next()).await {
        if let Message::Close(frame) = message {
            close_code = frame.map(|f| f.code);
            break;
        }
    }
    assert_eq!(close_code, Some(CloseCode::Away));
}

/// The next frame of `kind`, skipping others; `None` when none comes within `within`.
async fn frame_of(socket: &mut Socket, kind: &str, within: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = recv(socket, left).await?;
        if frame["type"] == kind {
            return Some(frame);
        }
    }
}

#[tokio::test]
async fn drafts_reach_the_accounts_other_sockets_and_are_never_stored() {
    let db = TestDb::sqlite();
    let (server, api) = start(&db).await;
    let laptop = api.register("ann@example.org").await;
    let phone = api.login("ann@example.org", PASSWORD).await;
    let bo = api.register("bo@example.org").await;
    let mut sockets = Vec::new();
    for session in [&laptop, &phone, &bo] {
        let mut socket = connect(&server).await;
        let welcome = hello(&mut socket, session, None).await;
        assert!(
            welcome["capabilities"]
                .as_array()
                .expect("capabilities")
                .contains(&json!("draft"))
        );
        sockets.push(socket);
    }
    let [mut writer, mut reader, mut stranger] = <[Socket; 3]>::try_from(sockets).expect("three");
    let draft = |content: Option<&str>| {
        json!({"type": "draft", "collection": "messages", "id": "m1", "seq_hint": 0,
            "fields": content.map(|c| json!({"session_id": "s1", "content": c}))})
    };

    send(&mut writer, draft(Some("The answer"))).await;
    let relayed = frame_of(&mut reader, "draft", Duration::from_secs(2))
        .await
        .expect("the other socket hears the draft");
    assert_eq!(relayed["fields"]["content"], "The answer");
    assert_eq!(
        (
            relayed["collection"].clone(),
            relayed["id"].clone(),
            relayed["seq_hint"].clone()
        ),
        (json!("messages"), json!("m1"), json!(0))
    );
    assert_eq!(relayed["device_name"], "laptop");
    assert_eq!(relayed["device_id"], json!(laptop.device_id));
    assert!(
        frame_of(&mut writer, "draft", Duration::from_millis(300))
            .await
            .is_none(),
        "not echoed to its sender"
    );
    assert!(
        frame_of(&mut stranger, "draft", Duration::from_millis(300))
            .await
            .is_none(),
        "never to another account"
    );
    // Ending a draft without a write.
    send(&mut writer, draft(None)).await;
    let ended = frame_of(&mut reader, "draft", Duration::from_secs(2))
        .await
        .expect("end");
    assert_eq!(ended["fields"], Value::Null);
    // Nothing was written.
    let (_, pulled) = api.get("/v1/sync/pull", laptop.token()).await;
    assert_eq!(pulled["changes"], json!([]), "{pulled}");

    // A bad draft is answered; the socket stays.
    send(
        &mut writer,
        json!({"type": "draft", "collection": "", "id": "m1", "fields": {}}),
    )
    .await;
    let refused = frame_of(&mut writer, "error", Duration::from_secs(2))
        .await
        .expect("error");
    assert_eq!(refused["code"], "invalid_collection", "{refused}");

    // Over the rate: a burst is relayed, the rest dropped, and the sender hears it once.
    for n in 0..40 {
        send(&mut writer, draft(Some(&format!("word {n}")))).await;
    }
    send(&mut writer, json!({"type": "ping"})).await;
    let mut warnings = 0;
    loop {
        let frame = recv(&mut writer, Duration::from_secs(2)).await.expect("frames");
        match frame["type"].as_str() {
            Some("error") => {
                assert_eq!(frame["code"], "draft_rate_limited");
                warnings += 1;
            }
            Some("pong") => break,
            _ => {}
        }
    }
    assert_eq!(warnings, 1);
    let mut relayed = 0;
    while frame_of(&mut reader, "draft", Duration::from_millis(300))
        .await
        .is_some()
    {
        relayed += 1;
    }
    assert!((8..40).contains(&relayed), "{relayed} of 40 relayed");
    // A positive control for the silences above: a write does reach every socket of Ann's.
    push(&api, &phone, vec![upsert("p1", "n1", 1)]).await;
    changes(&mut writer, 1).await;
}
