//! The SMTP mailer against a real SMTP server (Python's standard `smtpd` DebuggingServer,
//! which prints every message it receives).

use nextsync_core::secret::Secret;
use nextsync_server::config::MailerConfig;
use nextsync_testkit::{Api, TestDb, TestServer, eventually, is_ci};
use reqwest::StatusCode;
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct SmtpSink {
    child: Child,
    received: Arc<Mutex<String>>,
    port: u16,
}

impl SmtpSink {
    fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let spawned = Command::new("python3")
            .args([
                "-u",
                "-W",
                "ignore",
                "-m",
                "smtpd",
                "-n",
                "-c",
                "DebuggingServer",
                &format!("127.0.0.1:{port}"),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if is_ci() => panic!("CI=true but python3 cannot run an SMTP server: {e}"),
            Err(e) => {
                eprintln!("SKIPPED: no python3 for an SMTP server ({e})");
                return None;
            }
        };
        let received = Arc::new(Mutex::new(String::new()));
        let sink = received.clone();
        let stdout = child.stdout.take()?;
        std::thread::spawn(move || {
            // DebuggingServer prints each line as a Python bytes literal: b'…'.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let line = line
                    .strip_prefix("b'")
                    .and_then(|l| l.strip_suffix('\''))
                    .unwrap_or(&line)
                    .to_owned();
                if let Ok(mut text) = sink.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
        });
        // Wait until it accepts connections.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self {
                    child,
                    received,
                    port,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        if is_ci() {
            panic!("CI=true but the Python SMTP server did not start (is the smtpd module there?)");
        }
        eprintln!("SKIPPED: the Python SMTP server did not start");
        None
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn reset_mail_goes_out_over_smtp() {
    let Some(sink) = SmtpSink::start() else { return };
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.public_url = "https://sync.example.org".into();
    config.mailer = MailerConfig::Smtp {
        url: Secret::new(format!("smtp://127.0.0.1:{}?tls=none", sink.port)),
        from: "nextsync <sync@example.org>".into(),
    };
    let server = TestServer::start(config).await;
    let api = Api::new(&server);
    api.register("ann@example.org").await;
    let (status, _) = api
        .post(
            "/v1/auth/password/forgot",
            None,
            json!({"email": "ann@example.org"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mail = eventually(Duration::from_secs(10), || {
        let received = sink.received.clone();
        async move {
            let text = quoted_printable_decode(&received.lock().ok()?);
            text.contains("token=nsp_").then_some(text)
        }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no reset mail; the SMTP server got:\n{}",
            sink.received.lock().expect("lock")
        )
    });
    assert!(mail.contains("ann@example.org"));
    assert!(mail.contains("https://sync.example.org/reset-password?token=nsp_"));
    assert!(
        !db.data_dir().join("outbox").exists(),
        "SMTP mail is not written to the outbox"
    );
}

#[tokio::test]
async fn a_bare_smtp_url_refuses_a_server_without_starttls() {
    let Some(sink) = SmtpSink::start() else { return };
    let db = TestDb::sqlite();
    let mut config = db.config();
    config.mailer = MailerConfig::Smtp {
        url: Secret::new(format!("smtp://127.0.0.1:{}", sink.port)),
        from: "nextsync <sync@example.org>".into(),
    };
    let state = nextsync_server::AppState::open(config).await.expect("state");
    let sent = state
        .mailer
        .send(nextsync_server::mail::Mail {
            to: "ann@example.org".into(),
            subject: "x".into(),
            body: "secret".into(),
        })
        .await;
    assert!(sent.is_err(), "no plaintext fallback without ?tls=none");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!sink.received.lock().expect("lock").contains("secret"));
}

/// Enough of RFC 2045 quoted-printable for a plain-text mail: soft line breaks and `=XX`.
fn quoted_printable_decode(text: &str) -> String {
    let joined = text.replace("=\n", "");
    let mut out = Vec::with_capacity(joined.len());
    let bytes = joined.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'=', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
