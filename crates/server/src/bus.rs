//! The change bus: "user U is now at seq N", published after every commit. It carries no data:
//! every reader reads the store from its own cursor, so a lost or duplicated notice can delay a
//! feed but never corrupt it. [`LocalBus`] serves one process; the realtime issue adds Redis.

use nextsync_core::ids::{Seq, UserId};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Notice {
    pub user: UserId,
    pub head: Seq,
}

pub trait Bus: std::fmt::Debug + Send + Sync {
    /// Tells every subscriber that `user`'s feed reached `head`. Never blocks.
    fn notify(&self, notice: Notice);
    /// Notices from now on. A slow subscriber loses old notices (and should re-read the store).
    fn subscribe(&self) -> broadcast::Receiver<Notice>;
}

#[derive(Debug, Clone)]
pub struct LocalBus {
    tx: broadcast::Sender<Notice>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self {
            tx: broadcast::channel(1024).0,
        }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl Bus for LocalBus {
    fn notify(&self, notice: Notice) {
        // No subscriber is not an error.
        let _ = self.tx.send(notice);
    }

    fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.tx.subscribe()
    }
}
