//! The change bus: "user U is now at seq N", published after every commit, and "user U signed
//! a device out". It carries no data: every reader reads the store from its own cursor (and a
//! socket re-checks its device in the store), so a lost or duplicated notice can delay a feed
//! or a disconnect but never corrupt anything. [`LocalBus`] serves one process; the realtime
//! issue adds Redis.

use nextsync_core::ids::{Seq, UserId};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// `user`'s feed reached `head`.
    Changed { user: UserId, head: Seq },
    /// Some device of `user` may have been signed out (logout, removal, password change or
    /// reset, refresh-token theft, account deletion): open sockets re-check theirs.
    SignedOut { user: UserId },
}

impl Notice {
    pub fn user(&self) -> UserId {
        match self {
            Notice::Changed { user, .. } | Notice::SignedOut { user } => *user,
        }
    }
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
