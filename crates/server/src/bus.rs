//! The change bus: "user U is now at seq N", published after every commit, and "user U signed
//! a device out". Readers read the store from their own cursor (and a socket re-checks its
//! device in the store), so a lost or duplicated notice can delay a feed or a disconnect but
//! never corrupt anything. One shortcut: a local commit's notice carries its [`LivePage`], the
//! frame a reader exactly at the commit's starting seq would read, so the sockets of one
//! account share one serialization instead of each reading the store. [`LocalBus`] serves one
//! process; [`RedisBus`] several.

use futures::StreamExt;
use nextsync_core::ids::{Seq, UserId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `user`'s feed reached `head`; with the commit's page when it was made here.
    Changed {
        user: UserId,
        head: Seq,
        page: Option<Arc<LivePage>>,
    },
    /// Some device of `user` may have been signed out (logout, removal, password change or
    /// reset, refresh-token theft, account deletion): open sockets re-check theirs.
    SignedOut { user: UserId },
    /// Notices may have been missed (the fan-out link was down): every reader re-reads the
    /// store. Local only; never published.
    Resync,
    /// A draft frame for `user`'s sockets, except the one that sent it (`from`, a
    /// [`socket_id`] of this instance; 0 when it came from another instance).
    Draft {
        user: UserId,
        from: u64,
        frame: axum::extract::ws::Utf8Bytes,
    },
}

/// A number naming one socket of this process (never 0), for [`Notice::Draft`].
pub fn socket_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// What one commit appended to a user's feed, as the `changes` frame a socket whose cursor is
/// exactly `from` sends next (records `from+1 ..= head`; a commit's seqs are contiguous).
/// Built once per commit while someone listens; local only, never published.
#[derive(Debug)]
pub struct LivePage {
    pub epoch: String,
    pub from: Seq,
    pub head: Seq,
    /// The serialized frame.
    pub frame: axum::extract::ws::Utf8Bytes,
}

impl PartialEq for LivePage {
    fn eq(&self, other: &Self) -> bool {
        (&self.epoch, self.from, self.head) == (&other.epoch, other.from, other.head)
    }
}

impl Eq for LivePage {}

pub trait Bus: std::fmt::Debug + Send + Sync {
    /// Tells every subscriber that `user`'s feed reached `head`. Never blocks.
    fn notify(&self, notice: Notice);
    /// `user`'s notices (and every `Resync`) from now on. Only that user's readers wake for
    /// them. A slow subscriber loses old notices (and should re-read the store).
    fn subscribe(&self, user: UserId) -> broadcast::Receiver<Notice>;
    /// False while notices from other instances cannot arrive: readers then check the store
    /// every few seconds instead of waiting for a notice.
    fn is_healthy(&self) -> bool {
        true
    }
    /// Whether anyone here reads `user`'s notices (worth building a [`LivePage`] for).
    fn is_listening(&self, user: UserId) -> bool;
}

/// Routes notices to the readers of their user: with 10,000 sockets open, a write wakes the
/// handful that belong to its account, not all of them (measured: one shared channel capped
/// delivery at ~50 writes/s with 10,000 sockets).
#[derive(Debug, Default)]
pub struct Hub {
    users: Mutex<HashMap<UserId, broadcast::Sender<Notice>>>,
}

/// Notices a single user's readers may fall behind by before they re-read the store.
const PER_USER_BACKLOG: usize = 64;

impl Hub {
    pub fn subscribe(&self, user: UserId) -> broadcast::Receiver<Notice> {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users
            .entry(user)
            .or_insert_with(|| broadcast::channel(PER_USER_BACKLOG).0)
            .subscribe()
    }

    pub fn deliver(&self, notice: Notice) {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        match notice {
            Notice::Changed { user, .. } | Notice::SignedOut { user } | Notice::Draft { user, .. } => {
                // Nobody listening any more: forget the user.
                if users.get(&user).is_some_and(|tx| tx.send(notice).is_err()) {
                    users.remove(&user);
                }
            }
            Notice::Resync => users.retain(|_, tx| tx.send(Notice::Resync).is_ok()),
        }
    }

    pub fn is_listening(&self, user: UserId) -> bool {
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        users.get(&user).is_some_and(|tx| tx.receiver_count() > 0)
    }
}

#[derive(Debug, Clone, Default)]
pub struct LocalBus {
    hub: Arc<Hub>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Bus for LocalBus {
    fn notify(&self, notice: Notice) {
        self.hub.deliver(notice);
    }

    fn subscribe(&self, user: UserId) -> broadcast::Receiver<Notice> {
        self.hub.subscribe(user)
    }

    fn is_listening(&self, user: UserId) -> bool {
        self.hub.is_listening(user)
    }
}

/// Redis pub/sub fan-out between instances. Every notice is delivered locally at once and
/// published on [`CHANNEL`]; notices from other instances arrive through a dedicated pub/sub
/// connection. When Redis is unreachable the bus reports itself unhealthy (readers fall back
/// to checking the store) and keeps reconnecting; when the subscription is back it sends a
/// local [`Notice::Resync`], so whatever was published meanwhile is picked up from the store.
#[derive(Debug, Clone)]
pub struct RedisBus {
    local: Arc<Hub>,
    outgoing: mpsc::Sender<Notice>,
    healthy: Arc<AtomicBool>,
}

/// The pub/sub channel; messages are `"<instance> changed <user> <head>"`,
/// `"<instance> signed_out <user>"` or `"<instance> draft <user> <frame JSON>"`. A wire
/// format between versions of nextsync: extend, do not change (older instances ignore kinds
/// they do not know).
pub const CHANNEL: &str = "nextsync:bus";

impl RedisBus {
    /// Starts the publisher and subscriber tasks. Never fails on an unreachable Redis: the
    /// instance serves in degraded mode until it is reachable.
    pub fn start(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))?;
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let local = Arc::new(Hub::default());
        let (outgoing, queue) = mpsc::channel(4096);
        let healthy = Arc::new(AtomicBool::new(false));
        tokio::spawn(publish(client.clone(), queue, instance.clone()));
        tokio::spawn(listen(client, local.clone(), healthy.clone(), instance));
        Ok(Self {
            local,
            outgoing,
            healthy,
        })
    }
}

impl Bus for RedisBus {
    fn notify(&self, notice: Notice) {
        // A full queue means Redis is slow or gone: the notice is a hint, readers recheck.
        let _ = self.outgoing.try_send(notice.clone());
        self.local.deliver(notice);
    }

    fn subscribe(&self, user: UserId) -> broadcast::Receiver<Notice> {
        self.local.subscribe(user)
    }

    fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    fn is_listening(&self, user: UserId) -> bool {
        self.local.is_listening(user)
    }
}

const RETRY: Duration = Duration::from_secs(1);

/// The wire form of a notice (see [`CHANNEL`]); `None` for the local-only `Resync`.
fn encode(notice: &Notice, instance: &str) -> Option<String> {
    match notice {
        Notice::Changed { user, head, .. } => Some(format!("{instance} changed {user} {head}")),
        Notice::SignedOut { user } => Some(format!("{instance} signed_out {user}")),
        Notice::Draft { user, frame, .. } => Some(format!("{instance} draft {user} {}", frame.as_str())),
        Notice::Resync => None,
    }
}

/// Publishes one notice to every instance of a service from outside it (`nextsync admin`
/// signing a user out), returning once Redis took it.
pub async fn publish_once(url: &str, notice: &Notice) -> anyhow::Result<()> {
    let message = encode(notice, "admin").ok_or_else(|| anyhow::anyhow!("a local-only notice"))?;
    let client = redis::Client::open(url).map_err(|e| anyhow::anyhow!("invalid Redis URL: {e}"))?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    redis::cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(message)
        .query_async::<()>(&mut connection)
        .await?;
    Ok(())
}

async fn publish(client: redis::Client, mut queue: mpsc::Receiver<Notice>, instance: String) {
    let mut connection = None;
    while let Some(notice) = queue.recv().await {
        let Some(message) = encode(&notice, &instance) else {
            continue;
        };
        if connection.is_none() {
            connection = client.get_connection_manager().await.ok();
        }
        let Some(conn) = connection.as_mut() else { continue };
        let sent: redis::RedisResult<()> = redis::cmd("PUBLISH")
            .arg(CHANNEL)
            .arg(message)
            .query_async(conn)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %e, "could not publish a bus notice");
        }
    }
}

async fn listen(client: redis::Client, local: Arc<Hub>, healthy: Arc<AtomicBool>, instance: String) {
    let mut warned = false;
    loop {
        match subscribe(&client).await {
            Ok(pubsub) => {
                healthy.store(true, Ordering::Relaxed);
                if warned {
                    tracing::info!("Redis is back: live delivery across instances resumes");
                    warned = false;
                }
                // Anything published while we were away is in the store: re-read it.
                local.deliver(Notice::Resync);
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Ok(text) = message.get_payload::<String>() else {
                        continue;
                    };
                    if let Some(notice) = decode(&text, &instance) {
                        local.deliver(notice);
                    }
                }
                healthy.store(false, Ordering::Relaxed);
            }
            Err(e) if !warned => {
                tracing::warn!(error = %e, "Redis is unreachable: serving without live fan-out between instances");
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(RETRY).await;
    }
}

async fn subscribe(client: &redis::Client) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    Ok(pubsub)
}

/// A notice from another instance; `None` for our own (already delivered) or garbage.
fn decode(text: &str, instance: &str) -> Option<Notice> {
    // A draft's frame is JSON with spaces of its own: it is everything after the user.
    let mut parts = text.splitn(4, ' ');
    let (sender, kind, user) = (parts.next()?, parts.next()?, parts.next()?);
    if sender == instance {
        return None;
    }
    let user: UserId = user.parse().ok()?;
    match (kind, parts.next()) {
        ("changed", Some(head)) => Some(Notice::Changed {
            user,
            head: Seq(head.parse().ok()?),
            page: None,
        }),
        ("signed_out", None) => Some(Notice::SignedOut { user }),
        ("draft", Some(frame)) => Some(Notice::Draft {
            user,
            from: 0,
            frame: frame.to_owned().into(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_from_other_instances_decode_and_ours_are_skipped() {
        let user = UserId::new();
        assert_eq!(
            decode(&format!("b changed {user} 42"), "a"),
            Some(Notice::Changed {
                user,
                head: Seq(42),
                page: None
            })
        );
        assert_eq!(
            decode(&format!("b signed_out {user}"), "a"),
            Some(Notice::SignedOut { user })
        );
        let frame = r#"{"type":"draft","collection":"messages","id":"m 1","fields":{"content":"a b"}}"#;
        assert_eq!(
            decode(&format!("b draft {user} {frame}"), "a"),
            Some(Notice::Draft {
                user,
                from: 0,
                frame: frame.to_owned().into()
            })
        );
        assert_eq!(
            encode(
                &Notice::Draft {
                    user,
                    from: 7,
                    frame: frame.to_owned().into()
                },
                "b"
            ),
            Some(format!("b draft {user} {frame}"))
        );
        assert_eq!(decode(&format!("a draft {user} {frame}"), "a"), None);
        assert_eq!(decode(&format!("a changed {user} 42"), "a"), None);
        assert_eq!(decode("b changed nobody 1", "a"), None);
        assert_eq!(decode("garbage", "a"), None);
    }
}
