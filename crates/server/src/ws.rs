//! `GET /v1/sync/ws`: the live feed over a WebSocket.
//!
//! Poke, then pull: the socket subscribes to the bus before it reads anything, sends the
//! backlog after the client's cursor, then re-reads the store from its own cursor whenever the
//! bus says its user moved on. Frames therefore come in seq order with no gap and no
//! duplicate, across reconnects; a lost or repeated notice only delays a frame.
//!
//! The connection lives as long as its access token: the client renews it with an `auth`
//! frame, or the server closes with `token_expired`. A sign-out notice for the user makes the
//! socket re-check its device, and every [`RECHECK`] it re-checks (and re-reads) regardless,
//! in case a notice was lost. A socket that stops answering pings is closed. Sends are
//! awaited one at a time, so a slow client slows only itself and never buffers more than one
//! page.

use crate::auth::AuthUser;
use crate::auth::extract::{authenticate, bearer_token, ensure_signed_in};
use crate::bus::{Notice, socket_id};
use crate::error::ApiError;
use crate::state::AppState;
use crate::sync::{apply_push, pull_page};
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use nextsync_core::api::{ClientFrame, ServerFrame, WS_PROTOCOL};
use nextsync_core::cursor::Cursor;
use nextsync_core::push::{validate_collection, validate_fields, validate_record_id};
use nextsync_core::time::Timestamp;
use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::{Instant, interval, sleep_until, timeout};

/// How long a client may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Ping interval; a peer silent for [`DEAD_AFTER`] is gone.
const PING_EVERY: Duration = Duration::from_secs(20);
const DEAD_AFTER: Duration = Duration::from_secs(60);
/// Store re-check interval, for notices that never arrived.
const RECHECK: Duration = Duration::from_secs(30);
/// Re-check interval while the bus cannot hear other instances (Redis down).
const DEGRADED_RECHECK: Duration = Duration::from_secs(2);
/// How long the goodbye frames may take to a peer that is already failing.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Records per `changes` frame.
pub(crate) const PAGE: u32 = 500;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/sync/ws", get(open_socket))
}

async fn open_socket(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // A token on the upgrade request is checked before upgrading: a bad one is a plain 401.
    let pre_auth = match bearer_token(&headers) {
        Some(token) => match authenticate(&state, token).await {
            Ok((auth, claims)) => Some((auth, claims.exp)),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    upgrade
        .max_message_size(state.config.max_body_bytes)
        // Idle sockets are the common case: keep their buffers small (they grow on demand).
        .read_buffer_size(4 * 1024)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| async move {
            let mut conn = Connection {
                socket,
                state,
                id: socket_id(),
                drafts: DraftBudget::new(),
                device_name: None,
            };
            if let Err(close) = conn.run(pre_auth).await {
                conn.close(close).await;
            }
        })
}

/// Why the server ends a connection: sent as an `error` frame, then a close frame.
struct Close {
    code: String,
    message: String,
}

impl From<ApiError> for Close {
    fn from(e: ApiError) -> Self {
        Close {
            code: e.code().to_owned(),
            message: e.message().to_owned(),
        }
    }
}

fn close(code: &str, message: &str) -> Close {
    Close {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

struct Connection {
    socket: WebSocket,
    state: AppState,
    /// This socket's name on the bus, so its own drafts are not echoed back to it.
    id: u64,
    drafts: DraftBudget,
    /// The signed-in device's name, looked up at the first draft (receivers show it).
    device_name: Option<String>,
}

/// Drafts one socket may relay: a burst of [`DRAFT_BURST`], then one every
/// [`DRAFT_INTERVAL`]. Beyond that they are dropped (the next one carries everything so
/// far, and the final write replaces them all), and the sender hears it once.
struct DraftBudget {
    tokens: f64,
    refilled: Instant,
    warned: bool,
}

const DRAFT_BURST: f64 = 10.0;
const DRAFT_INTERVAL: Duration = Duration::from_millis(50);

impl DraftBudget {
    fn new() -> Self {
        Self {
            tokens: DRAFT_BURST,
            refilled: Instant::now(),
            warned: false,
        }
    }

    /// Takes one draft's turn; false when over the rate.
    fn take(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() / DRAFT_INTERVAL.as_secs_f64();
        self.tokens = (self.tokens + earned).min(DRAFT_BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.warned = false;
            true
        } else {
            false
        }
    }
}

impl Connection {
    async fn send(&mut self, frame: &ServerFrame) -> Result<(), Close> {
        let text = serde_json::to_string(frame).map_err(|_| close("internal", "cannot encode a frame"))?;
        self.send_text(Utf8Bytes::from(text)).await
    }

    async fn send_text(&mut self, text: Utf8Bytes) -> Result<(), Close> {
        self.send_message(Message::Text(text)).await
    }

    /// Every frame leaves within the send timeout, or the peer is a slow reader: while one
    /// send waits, nothing else of this socket runs (not even its ping timer).
    async fn send_message(&mut self, message: Message) -> Result<(), Close> {
        match timeout(self.state.config.ws_send_timeout, self.socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(close("gone", "the peer went away")),
            Err(_) => Err(close(
                "slow_reader",
                "the client stopped reading its frames; reconnect and resume from the cursor",
            )),
        }
    }

    async fn close(&mut self, reason: Close) {
        // Said briefly: a peer that does not read cannot be waited for again.
        let frame = ServerFrame::Error {
            code: reason.code.clone(),
            message: reason.message,
        };
        if let Ok(text) = serde_json::to_string(&frame) {
            let _ = timeout(CLOSE_TIMEOUT, self.socket.send(Message::Text(text.into()))).await;
        }
        let code = match reason.code.as_str() {
            "internal" => 1011,
            "shutting_down" => 1001,
            "message_too_big" => 1009,
            _ => 1008,
        };
        let close_frame = Message::Close(Some(CloseFrame {
            code,
            reason: Utf8Bytes::from(reason.code),
        }));
        let _ = timeout(CLOSE_TIMEOUT, self.socket.send(close_frame)).await;
    }

    async fn run(&mut self, pre_auth: Option<(AuthUser, i64)>) -> Result<(), Close> {
        let (auth, mut expires_at, cursor) = self.hello(pre_auth).await?;
        // Subscribe before the first read: a commit between the read and the subscription
        // would otherwise go unnoticed.
        let mut notices = self.state.bus.subscribe(auth.user);
        let mut cursor = self.catch_up(auth, cursor, true).await?;
        let mut ping = interval(PING_EVERY);
        let mut recheck = interval(DEGRADED_RECHECK);
        let mut last_recheck = Instant::now();
        let mut last_heard = Instant::now();
        loop {
            tokio::select! {
                () = self.state.stopping.cancelled() => return Err(close("shutting_down", "the server is stopping; reconnect and resume from your cursor")),
                () = sleep_until(expires_at) => return Err(close("token_expired", "the access token expired; reconnect with a fresh one")),
                notice = notices.recv() => match notice {
                    Ok(Notice::Changed { user, head, page }) if user == auth.user && head > cursor.seq => {
                        cursor = match page {
                            // Exactly what reading the store from here would send.
                            Some(page) if page.from == cursor.seq && page.epoch == cursor.epoch => {
                                self.send_text(page.frame.clone()).await?;
                                Cursor { epoch: cursor.epoch, seq: page.head }
                            }
                            _ => self.catch_up(auth, Some(cursor), false).await?,
                        };
                    }
                    Ok(Notice::SignedOut { user }) if user == auth.user => ensure_signed_in(&self.state, auth).await?,
                    Ok(Notice::Draft { user, from, frame }) if user == auth.user && from != self.id => {
                        self.send_text(frame).await?;
                    }
                    Ok(Notice::Resync) | Err(RecvError::Lagged(_)) => {
                        ensure_signed_in(&self.state, auth).await?;
                        cursor = self.catch_up(auth, Some(cursor), false).await?;
                    }
                    Ok(_) => {}
                    Err(RecvError::Closed) => return Err(close("shutting_down", "the server is stopping")),
                },
                _ = recheck.tick() => {
                    // Every few seconds while other instances' notices cannot arrive, else
                    // every RECHECK in case one was lost.
                    if !self.state.bus.is_healthy() || last_recheck.elapsed() >= RECHECK {
                        last_recheck = Instant::now();
                        ensure_signed_in(&self.state, auth).await?;
                        cursor = self.catch_up(auth, Some(cursor), false).await?;
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > DEAD_AFTER {
                        return Err(close("timeout", "no answer to pings"));
                    }
                    self.send_message(Message::Ping(Default::default())).await?;
                }
                message = self.socket.recv() => {
                    last_heard = Instant::now();
                    match message {
                        Some(Err(e)) if is_too_big(&e) => {
                            return Err(close("message_too_big", "a frame is over the server's body limit"));
                        }
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                        Some(Ok(Message::Text(text))) => {
                            if let Some(new_expiry) = self.handle(auth, text.as_str()).await? {
                                expires_at = new_expiry;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => return Err(close("bad_frame", "frames are JSON text")),
                        Some(Ok(_)) => {} // pings and pongs
                    }
                }
            }
        }
    }

    /// Reads and checks the `hello` frame; answers `welcome`.
    async fn hello(
        &mut self,
        pre_auth: Option<(AuthUser, i64)>,
    ) -> Result<(AuthUser, Instant, Option<Cursor>), Close> {
        let first = timeout(HELLO_TIMEOUT, self.socket.recv())
            .await
            .map_err(|_| close("bad_hello", "say hello first"))?;
        let Some(Ok(Message::Text(text))) = first else {
            return Err(close("bad_hello", "the first frame must be a JSON hello"));
        };
        let Ok(ClientFrame::Hello { access_token, cursor }) = serde_json::from_str(text.as_str()) else {
            return Err(close(
                "bad_hello",
                r#"the first frame must be {"type":"hello","access_token","cursor"}"#,
            ));
        };
        let (auth, exp) = match (access_token, pre_auth) {
            (Some(token), _) => {
                let (auth, claims) = authenticate(&self.state, token.expose()).await?;
                (auth, claims.exp)
            }
            (None, Some(pre)) => pre,
            (None, None) => {
                return Err(close(
                    "missing_token",
                    "send access_token in hello or as a Bearer header",
                ));
            }
        };
        let cursor = match cursor.as_deref().filter(|c| !c.is_empty()) {
            None => None,
            Some(text) => {
                Some(Cursor::decode(text).ok_or_else(|| close("invalid_cursor", "cursor is not a cursor"))?)
            }
        };
        Ok((auth, deadline_of(exp), cursor))
    }

    /// Sends everything after `cursor` (all of it when `None`), page by page; with `welcome`,
    /// announces the connection first. Returns the new cursor.
    async fn catch_up(
        &mut self,
        auth: AuthUser,
        cursor: Option<Cursor>,
        welcome: bool,
    ) -> Result<Cursor, Close> {
        let mut page = pull_page(&self.state, auth.user, cursor.as_ref(), PAGE).await?;
        if welcome {
            let start = cursor.clone().unwrap_or(Cursor {
                epoch: page.cursor.epoch.clone(),
                seq: Default::default(),
            });
            self.send(&ServerFrame::Welcome {
                cursor: start.encode(),
                protocol: WS_PROTOCOL,
                capabilities: vec!["push".into(), "auth".into(), "ping".into(), "draft".into()],
            })
            .await?;
        }
        loop {
            let next = page.cursor.clone();
            if !page.changes.is_empty() {
                self.send(&ServerFrame::Changes {
                    changes: page.changes,
                    cursor: next.encode(),
                })
                .await?;
            }
            if !page.has_more {
                return Ok(next);
            }
            page = pull_page(&self.state, auth.user, Some(&next), PAGE).await?;
        }
    }

    /// Answers one client frame; returns a new token deadline after a successful `auth`.
    async fn handle(&mut self, auth: AuthUser, text: &str) -> Result<Option<Instant>, Close> {
        let frame: ClientFrame = match serde_json::from_str(text) {
            Ok(frame) => frame,
            Err(e) => {
                let error = ServerFrame::Error {
                    code: "bad_frame".into(),
                    message: e.to_string(),
                };
                self.send(&error).await?;
                return Ok(None);
            }
        };
        match frame {
            ClientFrame::Push { mutations } => {
                let reply = match apply_push(&self.state, auth, mutations).await {
                    Ok(response) => ServerFrame::PushResult(response),
                    // A refused push is answered, not fatal: the connection is fine.
                    Err(e) => ServerFrame::Error {
                        code: e.code().to_owned(),
                        message: e.message().to_owned(),
                    },
                };
                self.send(&reply).await?;
                Ok(None)
            }
            ClientFrame::Auth { access_token } => {
                let (renewed, claims) = authenticate(&self.state, access_token.expose()).await?;
                if renewed != auth {
                    return Err(close("wrong_device", "a socket keeps the device it opened with"));
                }
                let expires_in = u64::try_from(claims.exp - Timestamp::now().as_secs()).unwrap_or(0);
                self.send(&ServerFrame::AuthOk { expires_in }).await?;
                Ok(Some(deadline_of(claims.exp)))
            }
            ClientFrame::Ping => {
                self.send(&ServerFrame::Pong).await?;
                Ok(None)
            }
            ClientFrame::Draft {
                collection,
                id,
                fields,
                seq_hint,
            } => {
                self.relay_draft(auth, collection, id, fields, seq_hint).await?;
                Ok(None)
            }
            ClientFrame::Hello { .. } => {
                let error = ServerFrame::Error {
                    code: "bad_frame".into(),
                    message: "hello only once".into(),
                };
                self.send(&error).await?;
                Ok(None)
            }
        }
    }
}

impl Connection {
    /// Hands a draft to the account's other sockets, here and on other instances. Nothing is
    /// stored. A refused draft is answered with an `error` frame; the socket stays open.
    async fn relay_draft(
        &mut self,
        auth: AuthUser,
        collection: String,
        id: String,
        fields: Option<serde_json::Map<String, serde_json::Value>>,
        seq_hint: Option<nextsync_core::ids::Seq>,
    ) -> Result<(), Close> {
        let valid = validate_collection(&collection)
            .and_then(|()| validate_record_id(&id))
            .and_then(|()| match &fields {
                Some(fields) => validate_fields(fields, &self.state.config.sync_limits),
                None => Ok(()),
            });
        if let Err(e) = valid {
            let e = ApiError::from(e);
            let error = ServerFrame::Error {
                code: e.code().to_owned(),
                message: e.message().to_owned(),
            };
            return self.send(&error).await;
        }
        if !self.drafts.take() {
            if !std::mem::replace(&mut self.drafts.warned, true) {
                let error = ServerFrame::Error {
                    code: "draft_rate_limited".into(),
                    message: format!(
                        "drafts are relayed at most every {} ms per socket; the rest are dropped",
                        DRAFT_INTERVAL.as_millis()
                    ),
                };
                self.send(&error).await?;
            }
            return Ok(());
        }
        let device_name = match &self.device_name {
            Some(name) => name.clone(),
            None => {
                let devices = self
                    .state
                    .store
                    .list_devices(auth.user)
                    .await
                    .map_err(|e| Close::from(ApiError::from(e)))?;
                let name = devices
                    .into_iter()
                    .find(|d| d.device_id == auth.device)
                    .map_or_else(|| "another device".to_owned(), |d| d.name);
                self.device_name.insert(name).clone()
            }
        };
        let frame = ServerFrame::Draft {
            collection,
            id,
            fields,
            seq_hint,
            device_id: auth.device.to_string(),
            device_name,
        };
        let text = serde_json::to_string(&frame).map_err(|_| close("internal", "cannot encode a frame"))?;
        self.state.bus.notify(Notice::Draft {
            user: auth.user,
            from: self.id,
            frame: text.into(),
        });
        Ok(())
    }
}

/// A frame over `max_message_size`: answered with close code 1009, not a dropped connection.
fn is_too_big(error: &axum::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<tungstenite::Error>())
        .is_some_and(|e| matches!(e, tungstenite::Error::Capacity(_)))
}

/// The instant a token with `exp` (Unix seconds) expires.
fn deadline_of(exp: i64) -> Instant {
    let left = exp.saturating_sub(Timestamp::now().as_secs()).max(0);
    Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0))
}
