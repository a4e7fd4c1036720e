//! A real SMTP server for tests, on a free loopback port: it speaks enough of RFC 5321
//! (EHLO/HELO, MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT) for lettre to deliver
//! to it, and keeps every message it receives. It offers no STARTTLS, so a client that
//! insists on TLS must refuse it.
//!
//! It replaces Python's `smtpd` DebuggingServer, which Python 3.12 removed.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The sink; stops listening when dropped.
#[derive(Debug)]
pub struct SmtpSink {
    pub port: u16,
    messages: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind SMTP sink");
        let port = listener.local_addr().expect("addr").port();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let kept = messages.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(session(stream, kept.clone()));
            }
        });
        Self { port, messages, task }
    }

    /// Every message received so far (the DATA part, lines joined with `\n`).
    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn session(stream: TcpStream, messages: Arc<Mutex<Vec<String>>>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut reply = async |text: &str| write.write_all(format!("{text}\r\n").as_bytes()).await;
    if reply("220 sink ESMTP test").await.is_err() {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let verb = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
        let answered = match verb.as_str() {
            "EHLO" => reply("250-sink\r\n250-8BITMIME\r\n250 SMTPUTF8").await,
            "HELO" | "MAIL" | "RCPT" | "RSET" | "NOOP" => reply("250 OK").await,
            "DATA" => {
                if reply("354 end with <CRLF>.<CRLF>").await.is_err() {
                    return;
                }
                let mut message = String::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line == "." {
                        break;
                    }
                    message.push_str(line.strip_prefix('.').unwrap_or(&line));
                    message.push('\n');
                }
                if let Ok(mut kept) = messages.lock() {
                    kept.push(message);
                }
                reply("250 OK: queued").await
            }
            "QUIT" => {
                let _ = reply("221 bye").await;
                return;
            }
            _ => reply("502 command not implemented").await,
        };
        if answered.is_err() {
            return;
        }
    }
}
