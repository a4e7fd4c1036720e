//! `TCP_NODELAY` on every accepted connection, plain and TLS, seen from a client the way a
//! browser or a Node client meets it.
//!
//! The client turns off its quick ACKs (`TCP_QUICKACK = 0`), as a busy peer's kernel does on
//! its own, so it acknowledges data only after its delayed-ACK timer (tens of ms). The server
//! writes two frames back to back after a hello: the welcome, then the backlog page. With
//! Nagle's algorithm on, the second small write waits for the ACK of the first: the client
//! sees the page ~20–40 ms after the welcome. With `TCP_NODELAY` both leave at once (well
//! under a millisecond here). Without the option set in `serve`, these tests fail.

use futures::{SinkExt, StreamExt};
use nextsync_server::config::TlsFiles;
use nextsync_testkit::{Api, Session, TestDb, TestServer, fixture};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Rounds per test; the median gap is judged, so one scheduling hiccup cannot decide.
const ROUNDS: usize = 5;
/// Far above a no-delay gap on loopback, far below a delayed ACK.
const NO_DELAY_BOUND: Duration = Duration::from_millis(10);

/// Registers an account through `api` and writes one record, so a hello has a backlog.
async fn account_with_backlog(api: &Api) -> Session {
    let session = api.register("ann@example.org").await;
    let ms = nextsync_core::time::Timestamp::now().as_millis();
    let (status, body) = api
        .post(
            "/v1/sync/push",
            session.token(),
            json!({"mutations": [{"mutation_id": "m1", "collection": "notes", "id": "n1",
                "op": "upsert", "fields": {"text": "hello"}, "hlc": format!("{ms:015}-00000-laptop")}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    session
}

/// A TCP connection to `server` whose ACKs are delayed.
async fn slow_acking_connection(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    stream.set_nodelay(true).expect("client nodelay");
    socket2::SockRef::from(&stream)
        .set_tcp_quickack(false)
        .expect("TCP_QUICKACK");
    stream
}

async fn next_text<S>(socket: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("a frame in time")
            .expect("open socket")
            .expect("frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON frame");
        }
    }
}

/// Time between the welcome frame and the backlog page that the server writes right after it.
async fn welcome_to_backlog<S>(stream: S, url: &str, session: &Session) -> Duration
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut socket, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("upgrade");
    socket
        .send(Message::text(
            json!({"type": "hello", "access_token": session.access}).to_string(),
        ))
        .await
        .expect("hello");
    let welcome = next_text(&mut socket).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    let welcomed = Instant::now();
    let page = next_text(&mut socket).await;
    assert_eq!(page["type"], "changes", "{page}");
    welcomed.elapsed()
}

fn median(mut gaps: Vec<Duration>) -> Duration {
    gaps.sort();
    gaps[gaps.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_connections_send_small_frames_without_waiting_for_acks() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.config()).await;
    let session = account_with_backlog(&Api::new(&server)).await;
    let url = format!("ws://{}/v1/sync/ws", server.addr);
    let mut gaps = Vec::new();
    for _ in 0..ROUNDS {
        let stream = slow_acking_connection(&server).await;
        gaps.push(welcome_to_backlog(stream, &url, &session).await);
    }
    let median = median(gaps.clone());
    assert!(
        median < NO_DELAY_BOUND,
        "the backlog page waited for the client's ACK of the welcome (Nagle): {gaps:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_send_small_frames_without_waiting_for_acks() {
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.tls = Some(TlsFiles {
        cert: fixture("server.pem"),
        key: fixture("server.key"),
    });
    let server = TestServer::start(config).await;
    // The account is made over HTTPS with the test CA.
    let ca_pem = std::fs::read(fixture("ca.pem")).expect("ca");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).expect("pem"))
        .build()
        .expect("client");
    let api = Api {
        http,
        base_url: server.base_url.clone(),
    };
    let session = account_with_backlog(&api).await;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        roots.add(cert.expect("CA certificate")).expect("add root");
    }
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let url = format!("wss://localhost:{}/v1/sync/ws", server.addr.port());
    let mut gaps = Vec::new();
    for _ in 0..ROUNDS {
        let tcp = slow_acking_connection(&server).await;
        let stream = tls
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .expect("TLS handshake");
        gaps.push(welcome_to_backlog(stream, &url, &session).await);
    }
    let median = median(gaps.clone());
    assert!(
        median < NO_DELAY_BOUND,
        "the backlog page waited for the client's ACK of the welcome (Nagle): {gaps:?}"
    );
}
