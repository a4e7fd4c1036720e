//! Sync health: checking the replica against the server, and repairing only what differs.
//!
//! The server keeps a digest per collection (`nextsync_core::digest`); the replica computes
//! the same over its base (the server's state as it pulled it) at the same feed position.
//! Where a collection differs, both split it into buckets by id and compare those; only the
//! records of differing buckets are fetched again (deleted ones included) and replace the
//! base, and base rows the server does not have at all are dropped. The device's unsent
//! writes are untouched: they sit on top of the base and are still sent.

use crate::Client;
use crate::error::Error;
use nextsync_core::api::DigestResponse;
use nextsync_core::cursor::Cursor;
use nextsync_core::digest::{Digest, buckets_for, view_hash};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Buckets asked for in one records request.
const BUCKETS_PER_REQUEST: usize = 256;
/// Times the check reads the digests again when the feed moved while it pulled.
const ATTEMPTS: usize = 5;

/// What a check found (and, with repair, fixed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// When the check ran (RFC 3339).
    pub verified_at: String,
    /// The feed position both sides were compared at.
    pub cursor: String,
    pub collections: Vec<CollectionHealth>,
    /// Records whose copy here was replaced or dropped.
    pub repaired: Vec<Repaired>,
    /// Every collection matches (after the repair, when asked for).
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectionHealth {
    pub collection: String,
    pub server_records: u64,
    pub local_records: u64,
    pub matches: bool,
    /// Buckets that differed (0 when the collection matched).
    pub differing_buckets: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Repaired {
    pub collection: String,
    pub id: String,
    /// `replaced`: the server's copy replaced this one (or filled a gap); `dropped`: the
    /// server has no such record.
    pub action: String,
}

impl Client {
    /// Checks the replica against the server's digests; with `repair`, fixes what differs.
    /// Needs the server. The answer says what matched and what was fixed.
    pub async fn verify(&self, repair: bool) -> Result<Health, Error> {
        let server = self.digests_at_our_cursor().await?;
        let local = self.local(|r| r.base_digests()).await?;
        let names: BTreeSet<&String> = server
            .collections
            .iter()
            .map(|c| &c.collection)
            .chain(local.keys())
            .collect();
        let mut collections = Vec::new();
        let mut repaired = Vec::new();
        for name in names {
            let theirs = server
                .collections
                .iter()
                .find(|c| &c.collection == name)
                .map_or((Digest::EMPTY, 0), |c| (c.digest, c.records));
            let ours = local.get(name).copied().unwrap_or((Digest::EMPTY, 0));
            let mut health = CollectionHealth {
                collection: name.clone(),
                server_records: theirs.1,
                local_records: ours.1,
                matches: theirs == ours,
                differing_buckets: 0,
            };
            if !health.matches {
                let (buckets, fixed) = self.narrow_down(name, theirs.1.max(ours.1), repair).await?;
                health.differing_buckets = buckets;
                repaired.extend(fixed);
            }
            collections.push(health);
        }
        let mut ok = collections.iter().all(|c| c.matches);
        if repair && !ok {
            // Compared again at one cursor (reading the digests pulls first, so the local
            // side is read after it), whatever the feed brought meanwhile.
            let again = self.digests_at_our_cursor().await?;
            let after = self.local(|r| r.base_digests()).await?;
            ok = again
                .collections
                .iter()
                .all(|c| after.get(&c.collection).copied() == Some((c.digest, c.records)))
                && after
                    .keys()
                    .all(|name| again.collections.iter().any(|c| &c.collection == name));
        }
        let health = Health {
            verified_at: nextsync_core::time::Timestamp::now().to_rfc3339(),
            cursor: server.cursor,
            collections,
            repaired,
            ok,
        };
        let kept = serde_json::to_string(&health)?;
        self.local(move |r| r.set_meta(&[("last_health", Some(&kept))]))
            .await?;
        if !health.repaired.is_empty() {
            tracing::warn!(
                repaired = health.repaired.len(),
                "the replica differed from the server; the differing records were fetched again"
            );
        }
        Ok(health)
    }

    /// The last check's result, kept in the replica.
    pub async fn last_health(&self) -> Result<Option<Health>, Error> {
        let kept = self.local(|r| r.meta("last_health")).await?;
        Ok(kept.and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// Whether the live loop should check the replica now ([`crate::Options::verify_every`]):
    /// that long after the last attempt. The clock starts at the first catch-up (a replica
    /// that just pulled everything has nothing to check), except with a zero interval, which
    /// checks after every catch-up. An attempt counts whether or not it succeeded, so a
    /// server that cannot answer is not asked at every reconnect.
    pub(crate) async fn verification_due(&self) -> bool {
        let Some(every) = self.options().verify_every else {
            return false;
        };
        let now = crate::system_ms();
        let last = match self.local(|r| r.meta("last_verified_ms")).await {
            Ok(last) => last.and_then(|ms| ms.parse::<u64>().ok()),
            Err(_) => return false,
        };
        let due = match last {
            Some(ms) => now.saturating_sub(ms) >= u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
            None => every.is_zero(),
        };
        if due || last.is_none() {
            let at = now.to_string();
            let _ = self
                .local(move |r| r.set_meta(&[("last_verified_ms", Some(&at))]))
                .await;
        }
        due
    }

    /// Pulls to the head and reads the server's digests; again while the feed moved between
    /// the two, so both sides are compared at one position.
    async fn digests_at_our_cursor(&self) -> Result<DigestResponse, Error> {
        for _ in 0..ATTEMPTS {
            self.pull_to_head().await?;
            let server = self
                .authed(|http, token| async move { http.digest(&token).await })
                .await?;
            let ours = self.local(|r| r.cursor()).await?;
            let at = |text: Option<&str>| text.and_then(Cursor::decode).map(|c| (c.epoch, c.seq));
            let theirs = at(Some(&server.cursor));
            let same = match at(ours.as_deref()) {
                Some(ours) => Some(ours) == theirs,
                // Nothing pulled yet: only an empty feed matches.
                None => theirs.is_some_and(|(_, seq)| seq.0 == 0),
            };
            if same {
                return Ok(server);
            }
        }
        Err(Error::Protocol(
            "the account kept changing while it was checked; try again".into(),
        ))
    }

    /// Compares one collection bucket by bucket; with `repair`, replaces the records of the
    /// differing buckets with the server's. Returns the differing buckets and the repairs.
    async fn narrow_down(
        &self,
        collection: &str,
        records: u64,
        repair: bool,
    ) -> Result<(usize, Vec<Repaired>), Error> {
        let n = buckets_for(records);
        let theirs = self
            .authed(|http, token| async move { http.bucket_digests(&token, collection, n).await })
            .await?;
        let name = collection.to_owned();
        let (ours, hashes) = self.local(move |r| r.base_buckets(&name, n)).await?;
        let differing: Vec<u32> = (0..n)
            .filter(|&b| theirs.buckets.get(b as usize) != ours.get(b as usize))
            .collect();
        if !repair || differing.is_empty() {
            return Ok((differing.len(), Vec::new()));
        }
        let mut repaired = Vec::new();
        for chunk in differing.chunks(BUCKETS_PER_REQUEST) {
            let answer = self
                .authed(|http, token| async move { http.bucket_records(&token, collection, n, chunk).await })
                .await?;
            let wanted: BTreeSet<u32> = chunk.iter().copied().collect();
            let theirs: BTreeMap<&str, u128> = answer
                .records
                .iter()
                .map(|view| (view.id.as_str(), view_hash(view)))
                .collect();
            let mut replaced = Vec::new();
            for view in &answer.records {
                if hashes.get(&view.id).map_or(0, |(_, hash)| *hash) != view_hash(view) {
                    replaced.push((view.collection.clone(), view.id.clone()));
                }
            }
            let dropped: Vec<(String, String)> = hashes
                .iter()
                .filter(|(id, (bucket, _))| wanted.contains(bucket) && !theirs.contains_key(id.as_str()))
                .map(|(id, _)| (collection.to_owned(), id.clone()))
                .collect();
            let stale = replaced.clone();
            self.local(move |r| r.mark_stale(&stale)).await?;
            // Through the pull path: decrypted when the account is encrypted, views
            // recomputed over unsent writes, subscribers told.
            self.apply_pulled(answer.records, None, false).await?;
            let gone = dropped.clone();
            let changes = self.local(move |r| r.forget(&gone)).await?;
            self.emit(changes);
            repaired.extend(replaced.into_iter().map(|(collection, id)| Repaired {
                collection,
                id,
                action: "replaced".into(),
            }));
            repaired.extend(dropped.into_iter().map(|(collection, id)| Repaired {
                collection,
                id,
                action: "dropped".into(),
            }));
        }
        Ok((differing.len(), repaired))
    }
}
