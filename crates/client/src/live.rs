//! The live loop: keeps a replica in step with the server until stopped.
//!
//! Each round first catches up over plain HTTP (push the outbox, pull to the head), then
//! follows the feed: over the WebSocket when it can, else by long-polling `pull?wait=`. A
//! socket whose upgrade is refused (a proxy that blocks upgrades), or that drops three times
//! within a minute, is left alone for [`crate::Options::socket_retry`] while long-polls keep
//! delivery live; then the socket is tried again. Either way, a local write is pushed at
//! once, and the access token is renewed before it expires (an `auth` frame on the socket).
//!
//! Failures back off exponentially with full jitter (0.5 s doubling to 15 s). A device that
//! was signed out or removed ends the loop in [`Connection::SignedOut`]; nothing else does.
//! The feed's order guarantees come from the cursor, not from this loop: every page, from
//! whichever transport, is applied with the cursor it leaves the feed at.

use crate::drafts::Draft;
use crate::error::Error;
use crate::{Client, needs_resync, system_ms};
use futures::{SinkExt as _, StreamExt as _};
use nextsync_core::api::{ClientFrame, ServerFrame};
use serde::Serialize;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior, interval, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// What the live loop is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Connection {
    /// Not running.
    Idle,
    Connecting,
    /// Following the feed over the WebSocket.
    Live,
    /// Following the feed by long-polling (sockets are blocked or failing).
    Polling,
    /// The server cannot be reached; retrying.
    Offline,
    /// The device was signed out or removed: sign in again.
    SignedOut,
    /// The account is end-to-end encrypted and this device has not been unlocked: local
    /// writes wait, nothing is sent in clear; retrying.
    Locked,
}

const LONG_POLL: Duration = Duration::from_secs(25);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Another process may write to the same replica: look for its writes this often.
const OUTBOX_CHECK: Duration = Duration::from_secs(2);
/// A socket that lived shorter than this "dropped"; three drops within a minute mean the
/// socket is unusable here.
const SHORT_LIVED: Duration = Duration::from_secs(30);
const DROP_WINDOW: Duration = Duration::from_secs(60);
const DROPS_TO_FALL_BACK: usize = 3;

/// A running live loop.
#[derive(Debug)]
pub struct Live {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    client: Client,
}

impl Live {
    /// Stops the loop and waits for it (an in-flight request is abandoned, never half-applied:
    /// every page and answer is applied in one local transaction).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.client.set_connection(Connection::Idle);
    }

    /// True once the loop ended by itself (the device was signed out).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

pub(crate) fn start(client: Client) -> Live {
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(run(client.clone(), stopped));
    Live { stop, task, client }
}

/// How one attempt to follow the feed ended.
enum Outcome {
    Stopped,
    SignedOut,
    /// The server refused the upgrade: use long-polls for a while.
    SocketRefused(String),
    /// The socket closed or failed after this long.
    Dropped(Duration),
    /// Reconnect at once (a token or cursor to renew first).
    Again,
    /// Time to try the socket again.
    PollEnded,
    /// The server is unreachable.
    Offline(Error),
}

async fn run(client: Client, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::default();
    let mut socket_after = Instant::now();
    let mut drops: VecDeque<Instant> = VecDeque::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let caught_up = async {
            client.push_outbox().await?;
            client.pull_to_head().await
        };
        let caught_up = tokio::select! {
            result = caught_up => result,
            _ = stop.changed() => return,
        };
        if let Err(e) = caught_up {
            match e {
                Error::SignedOut(_) | Error::NotSignedIn => {
                    client.set_connection(Connection::SignedOut);
                    return;
                }
                Error::Locked => {
                    client.set_connection(Connection::Locked);
                    if wait(&mut stop, backoff.next()).await {
                        return;
                    }
                    continue;
                }
                e => {
                    tracing::debug!("catching up failed: {e}");
                    client.set_connection(Connection::Offline);
                    if wait(&mut stop, backoff.next()).await {
                        return;
                    }
                    continue;
                }
            }
        }

        // Caught up: the moment to check the replica against the server's digests, now and
        // then (a repair fetches only what differs; a failure waits for the next time).
        if client.verification_due().await {
            let checked = tokio::select! {
                result = client.verify(true) => result,
                _ = stop.changed() => return,
            };
            if let Err(e) = checked {
                tracing::debug!("checking the replica failed: {e}");
            }
        }

        let outcome = if Instant::now() >= socket_after {
            client.set_connection(Connection::Connecting);
            follow_socket(&client, &mut stop).await
        } else {
            client.set_connection(Connection::Polling);
            follow_polls(&client, &mut stop, socket_after).await
        };
        match outcome {
            Outcome::Stopped => return,
            Outcome::SignedOut => {
                client.set_connection(Connection::SignedOut);
                return;
            }
            Outcome::SocketRefused(why) => {
                tracing::info!("the server or a proxy refused the WebSocket ({why}); long-polling instead");
                socket_after = Instant::now() + client.options().socket_retry;
                backoff.reset();
            }
            Outcome::Dropped(lasted) => {
                if lasted >= SHORT_LIVED {
                    backoff.reset();
                    continue;
                }
                let now = Instant::now();
                drops.push_back(now);
                while drops.front().is_some_and(|t| now - *t > DROP_WINDOW) {
                    drops.pop_front();
                }
                if drops.len() >= DROPS_TO_FALL_BACK {
                    tracing::info!("the WebSocket keeps dropping; long-polling instead");
                    socket_after = now + client.options().socket_retry;
                    drops.clear();
                } else if wait(&mut stop, backoff.next()).await {
                    return;
                }
            }
            Outcome::Again | Outcome::PollEnded => {}
            Outcome::Offline(e) => {
                tracing::debug!("the server is unreachable: {e}");
                client.set_connection(Connection::Offline);
                if wait(&mut stop, backoff.next()).await {
                    return;
                }
            }
        }
    }
}

/// Sleeps `delay` unless stopped first; true when stopped.
async fn wait(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        () = sleep(delay) => *stop.borrow(),
        _ = stop.changed() => true,
    }
}

/// What an error in the middle of following means for the loop.
async fn outcome_of(client: &Client, e: Error) -> Outcome {
    match e {
        Error::SignedOut(_) | Error::NotSignedIn => Outcome::SignedOut,
        e if needs_resync(&e) => match client.local(|r| r.start_resync()).await {
            Ok(()) => Outcome::Again,
            Err(e) => Outcome::Offline(e),
        },
        e => Outcome::Offline(e),
    }
}

async fn follow_socket(client: &Client, stop: &mut watch::Receiver<bool>) -> Outcome {
    let (token, expires_ms) = match client.access_token().await {
        Ok(token) => token,
        Err(e) => return outcome_of(client, e).await,
    };
    let url = match client.socket_url() {
        Ok(url) => url,
        Err(e) => return outcome_of(client, e).await,
    };
    let mut request = match url.as_str().into_client_request() {
        Ok(request) => request,
        Err(e) => return Outcome::SocketRefused(format!("bad socket URL: {e}")),
    };
    match HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
        Ok(value) => {
            request.headers_mut().insert("authorization", value);
        }
        Err(_) => return Outcome::SocketRefused("unusable token".into()),
    }
    let connected = timeout(CONNECT_TIMEOUT, tokio_tungstenite::connect_async(request)).await;
    let mut socket = match connected {
        Err(_) => return Outcome::Offline(Error::Unreachable("the socket did not open in time".into())),
        Ok(Ok((socket, _))) => socket,
        Ok(Err(tokio_tungstenite::tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            if status == 401 {
                return match client.renew(Some(token)).await {
                    Ok(_) => Outcome::Again,
                    Err(e) => outcome_of(client, e).await,
                };
            }
            return Outcome::SocketRefused(format!("HTTP {status} to the upgrade"));
        }
        Ok(Err(tokio_tungstenite::tungstenite::Error::Io(e))) => {
            return Outcome::Offline(Error::Unreachable(e.to_string()));
        }
        Ok(Err(e)) => return Outcome::SocketRefused(e.to_string()),
    };
    let opened = Instant::now();
    let cursor = match client.local(|r| r.cursor()).await {
        Ok(cursor) => cursor,
        Err(e) => return Outcome::Offline(e),
    };
    let hello = ClientFrame::Hello {
        access_token: None,
        cursor,
    };
    if send(&mut socket, &hello).await.is_err() {
        return Outcome::Dropped(opened.elapsed());
    }

    // Drafts go out on this socket while it lives.
    let mut drafts = client.inner.drafts.queue.lock().await;
    let mut renew_at = renew_instant(expires_ms, client.renew_before_ms());
    let mut outbox_check = interval(OUTBOX_CHECK);
    outbox_check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = timeout(Duration::from_secs(1), socket.close(None)).await;
                return Outcome::Stopped;
            }
            message = socket.next() => {
                let text = match message {
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Outcome::Dropped(opened.elapsed()),
                    Some(Ok(_)) => continue, // pings are answered by the library
                };
                let frame: ServerFrame = match serde_json::from_str(&text) {
                    Ok(frame) => frame,
                    Err(e) => {
                        tracing::warn!("unreadable frame from the server: {e}");
                        continue;
                    }
                };
                match frame {
                    ServerFrame::Welcome { .. } => client.set_connection(Connection::Live),
                    ServerFrame::Changes { changes, cursor } => {
                        if let Err(e) = client.apply_pulled(changes, Some(cursor), false).await {
                            return outcome_of(client, e).await;
                        }
                    }
                    ServerFrame::Error { code, message } => {
                        tracing::debug!(code, "the server says: {message}");
                        return match code.as_str() {
                            "token_expired" => Outcome::Again,
                            "token_revoked" | "invalid_token" | "wrong_device" => {
                                match client.renew(Some(token)).await {
                                    Ok(_) => Outcome::Again,
                                    Err(e) => outcome_of(client, e).await,
                                }
                            }
                            "resync_required" | "invalid_cursor" => {
                                outcome_of(client, Error::Server { status: 409, code, message }).await
                            }
                            // Not about the connection (a refused draft), or about it and
                            // then the close follows: either way, read on.
                            _ => continue,
                        };
                    }
                    ServerFrame::Draft { collection, id, fields, device_id, device_name, .. } => {
                        client.receive_draft(Draft { collection, id, fields, device_id, device_name });
                    }
                    ServerFrame::PushResult(_) | ServerFrame::AuthOk { .. } | ServerFrame::Pong => {}
                }
            }
            Some(frame) = drafts.recv() => {
                if send(&mut socket, &frame).await.is_err() {
                    return Outcome::Dropped(opened.elapsed());
                }
            }
            () = client.outbox_ready().notified() => {
                if let Err(e) = client.push_outbox().await {
                    return outcome_of(client, e).await;
                }
            }
            _ = outbox_check.tick() => {
                if let Err(e) = push_if_unsent(client).await {
                    return outcome_of(client, e).await;
                }
            }
            () = sleep_until(renew_at) => {
                match client.renew(None).await {
                    Ok((fresh, expires_ms)) => {
                        let frame = ClientFrame::Auth { access_token: fresh };
                        if send(&mut socket, &frame).await.is_err() {
                            return Outcome::Dropped(opened.elapsed());
                        }
                        renew_at = renew_instant(expires_ms, client.renew_before_ms());
                    }
                    Err(e) => return outcome_of(client, e).await,
                }
            }
        }
    }
}

/// Pushes when a write waits: another process on the same replica may have made it.
async fn push_if_unsent(client: &Client) -> Result<(), Error> {
    if client.local(|r| r.has_unsent()).await? {
        client.push_outbox().await?;
    }
    Ok(())
}

async fn send<S>(socket: &mut S, frame: &ClientFrame) -> Result<(), ()>
where
    S: futures::Sink<Message> + Unpin,
{
    let text = serde_json::to_string(frame).map_err(drop)?;
    socket.send(Message::text(text)).await.map_err(drop)
}

/// `before_ms` before the token expires (at once if that has passed).
fn renew_instant(expires_ms: u64, before_ms: u64) -> Instant {
    let left = expires_ms.saturating_sub(system_ms() + before_ms);
    Instant::now() + Duration::from_millis(left)
}

async fn follow_polls(client: &Client, stop: &mut watch::Receiver<bool>, until: Instant) -> Outcome {
    loop {
        let since = match client.local(|r| r.cursor()).await {
            Ok(since) => since,
            Err(e) => return Outcome::Offline(e),
        };
        let poll = client.authed(|http, token| {
            let since = since.clone();
            async move { http.pull(&token, since.as_deref(), 500, Some(LONG_POLL)).await }
        });
        tokio::select! {
            _ = stop.changed() => return Outcome::Stopped,
            () = sleep_until(until) => return Outcome::PollEnded,
            () = client.outbox_ready().notified() => {
                // The poll is abandoned (nothing of it was applied) and asked again after.
                if let Err(e) = client.push_outbox().await {
                    return outcome_of(client, e).await;
                }
            }
            page = poll => match page {
                Ok(page) => {
                    client.set_connection(Connection::Polling);
                    if let Err(e) = client.apply_pulled(page.changes, Some(page.cursor), !page.has_more).await {
                        return outcome_of(client, e).await;
                    }
                    if let Err(e) = push_if_unsent(client).await {
                        return outcome_of(client, e).await;
                    }
                }
                Err(e) => return outcome_of(client, e).await,
            },
        }
    }
}

/// Exponential back-off with full jitter.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE_MS: u64 = 500;
    const MAX_MS: u64 = 15_000;

    fn next(&mut self) -> Duration {
        let ceiling = (Self::BASE_MS << self.attempt.min(10)).min(Self::MAX_MS);
        self.attempt += 1;
        let jitter = getrandom::u64().unwrap_or(ceiling / 2) % ceiling.max(1);
        Duration::from_millis(jitter.max(50))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_grows_to_its_ceiling_and_resets() {
        let mut backoff = Backoff::default();
        for _ in 0..20 {
            assert!(backoff.next() <= Duration::from_millis(Backoff::MAX_MS));
        }
        assert_eq!(backoff.attempt, 20);
        backoff.reset();
        assert!(backoff.next() <= Duration::from_millis(Backoff::BASE_MS));
    }
}
