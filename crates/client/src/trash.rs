//! The account's trash and point-in-time restore, as the SDK offers them. Both live on the
//! server (the replica keeps no history): every call here needs it. A restore is a set of
//! new writes on the server, so it reaches this replica, like every other device, through
//! the feed; the calls pull it at once.

use crate::Client;
use crate::error::Error;
use nextsync_core::api::{RestoreRequest, RestoreResponse, TrashItem};
use nextsync_core::time::Timestamp;

impl Client {
    /// Everything in the trash (of `collection`), most recently deleted first. Values are
    /// decrypted when the account is end-to-end encrypted and this device holds the key.
    pub async fn trash(&self, collection: Option<&str>) -> Result<Vec<TrashItem>, Error> {
        let mut items = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .authed(|http, token| {
                    let collection = collection.map(str::to_owned);
                    async move { http.trash(&token, collection.as_deref(), before).await }
                })
                .await?;
            items.extend(page.items);
            match page.next {
                Some(next) => before = Some(next),
                None => break,
            }
        }
        self.open_trash(items).await
    }

    async fn open_trash(&self, mut items: Vec<TrashItem>) -> Result<Vec<TrashItem>, Error> {
        let sealed = items
            .iter()
            .any(|item| item.fields.values().any(crate::crypto::is_encrypted));
        if !sealed {
            return Ok(items);
        }
        let key = self.key().ok_or(Error::Locked)?;
        tokio::task::spawn_blocking(move || {
            for item in &mut items {
                key.decrypt_fields(&item.collection, &item.id, &mut item.fields)?;
            }
            Ok(items)
        })
        .await
        .map_err(|e| Error::Crypto(format!("decrypting task failed: {e}")))?
    }

    /// Brings a record back from the trash on every device (with `together`, also what the
    /// same write deleted, such as a conversation's messages); returns how many came back.
    pub async fn restore_from_trash(
        &self,
        collection: &str,
        id: &str,
        together: bool,
    ) -> Result<usize, Error> {
        let restored = self
            .authed(|http, token| {
                let (collection, id) = (collection.to_owned(), id.to_owned());
                async move { http.restore_from_trash(&token, &collection, &id, together).await }
            })
            .await?;
        self.pull_after_restore().await?;
        Ok(restored.restored.len())
    }

    /// Forgets one record in the trash for good.
    pub async fn purge_from_trash(&self, collection: &str, id: &str) -> Result<(), Error> {
        self.authed(|http, token| {
            let (collection, id) = (collection.to_owned(), id.to_owned());
            async move { http.purge_trash(&token, Some((&collection, &id)), None).await }
        })
        .await
        .map(drop)
    }

    /// Empties the trash (of `collection`) for good; returns how many records went.
    pub async fn empty_trash(&self, collection: Option<&str>) -> Result<u64, Error> {
        self.authed(|http, token| {
            let collection = collection.map(str::to_owned);
            async move { http.purge_trash(&token, None, collection.as_deref()).await }
        })
        .await
        .map(|purged| purged.purged)
    }

    /// Brings the account (or a collection, or one record) back to how it was at `at`: with
    /// `dry_run`, only says what would change.
    pub async fn restore_to(
        &self,
        at: Timestamp,
        collection: Option<&str>,
        id: Option<&str>,
        dry_run: bool,
    ) -> Result<RestoreResponse, Error> {
        let body = RestoreRequest {
            at,
            collection: collection.map(str::to_owned),
            id: id.map(str::to_owned),
            dry_run,
        };
        let answer = self
            .authed(|http, token| {
                let body = body.clone();
                async move { http.restore_to(&token, &body).await }
            })
            .await?;
        if !dry_run {
            self.pull_after_restore().await?;
        }
        Ok(answer)
    }

    /// Pulls a restore's writes. The restore itself is done on the server: an unreachable
    /// server now only means the feed brings them later.
    async fn pull_after_restore(&self) -> Result<(), Error> {
        match self.pull_to_head().await {
            Err(e) if !e.is_transient() => Err(e),
            _ => Ok(()),
        }
    }
}
