//! The SMTP mailer against a real SMTP server (the test kit's sink, which keeps every
//! message it receives).

use nextsync_core::secret::Secret;
use nextsync_server::config::MailerConfig;
use nextsync_testkit::smtp::SmtpSink;
use nextsync_testkit::{Api, TestDb, TestServer, eventually};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn reset_mail_goes_out_over_smtp() {
    let sink = SmtpSink::start().await;
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
        let text = quoted_printable_decode(&sink.messages().concat());
        async move { text.contains("token=nsp_").then_some(text) }
    })
    .await
    .unwrap_or_else(|| panic!("no reset mail; the SMTP server got:\n{:?}", sink.messages()));
    assert!(mail.contains("ann@example.org"));
    assert!(mail.contains("https://sync.example.org/reset-password?token=nsp_"));
    assert!(
        !db.data_dir().join("outbox").exists(),
        "SMTP mail is not written to the outbox"
    );
}

#[tokio::test]
async fn a_bare_smtp_url_refuses_a_server_without_starttls() {
    let sink = SmtpSink::start().await;
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
    assert!(sink.messages().is_empty(), "{:?}", sink.messages());
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
