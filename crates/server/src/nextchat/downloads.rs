//! Both GETs of one NextChat sync must see the same state (NEXTCHAT.md §7.4.2): the client
//! checks the first for emptiness and merges the second. A rendered state is therefore kept
//! for a few seconds per credential and door and served again; an upload through a
//! credential evicts that credential's entries, so its next sync sees its own write.
//!
//! Per process: behind a load balancer the two GETs may reach different instances, which is
//! harmless (the server merges every upload) but not the same snapshot.

use axum::body::Bytes;
use nextsync_core::ids::{AppPasswordId, UserId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a rendered state answers GETs.
pub const FRESH_FOR: Duration = Duration::from_secs(20);
/// Most states kept at once (each can be tens of MB).
const MAX_ENTRIES: usize = 32;

/// One door of one credential: which app password, and the door's name for the state
/// (`webdav`, or `upstash:<backup name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DoorKey {
    pub user: UserId,
    pub app_password: AppPasswordId,
    pub door: String,
}

#[derive(Debug, Default)]
pub struct Downloads {
    entries: Mutex<HashMap<DoorKey, (Instant, Option<Bytes>)>>,
}

impl Downloads {
    /// The state rendered for `key` moments ago: `Some(None)` means "empty".
    pub fn get(&self, key: &DoorKey) -> Option<Option<Bytes>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < FRESH_FOR)
            .map(|(_, bytes)| bytes.clone())
    }

    pub fn put(&self, key: DoorKey, bytes: Option<Bytes>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, (at, _)| at.elapsed() < FRESH_FOR);
        if entries.len() >= MAX_ENTRIES
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(key, (Instant::now(), bytes));
    }

    /// Drops the states kept for `user`'s credential `app_password` (after it uploaded), or
    /// for all of the account's credentials (after an import or a settings change). Another
    /// credential's upload leaves a sync in progress alone: its second GET still gets the
    /// state its first one saw.
    pub fn forget(&self, user: UserId, app_password: Option<AppPasswordId>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|key, _| key.user != user || app_password.is_some_and(|p| p != key.app_password));
    }
}
