//! Typed helpers for NextChat's collections (the mapping is `core::nextchat`'s contract):
//! sessions newest first, a session's messages in order, and writes that keep a message tied
//! to its session. Everything else goes through the generic records.

use crate::replica::{Order, Query, Record};
use crate::{Client, Error};
use nextsync_core::api::MergeSummary;
use nextsync_core::ids::Seq;
use nextsync_core::nextchat::{
    COLLECTIONS, CONFIG, MASKS, MESSAGES, POSITION, PROMPTS, RenderOptions, SESSION_ID, SESSIONS, render,
};
use nextsync_core::push::RecordKey;
use nextsync_core::sync::RawRecord;
use serde_json::{Map, Value, json};

/// A session with its messages, in the order NextChat shows them.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub session: Record,
    pub messages: Vec<Record>,
}

impl Client {
    /// Conversations, most recently changed first.
    pub async fn sessions(&self, limit: Option<u32>) -> Result<Vec<Record>, Error> {
        self.list(Query {
            collection: Some(SESSIONS.into()),
            order: Order::RecentFirst,
            include_deleted: false,
            limit,
        })
        .await
    }

    /// One session's messages by `position` (then stamp, for messages written without one).
    pub async fn messages(&self, session_id: &str) -> Result<Vec<Record>, Error> {
        let session_id = session_id.to_owned();
        let mut messages = self
            .local(move |r| r.list_by_field(MESSAGES, SESSION_ID, &Value::String(session_id)))
            .await?;
        messages.sort_by(|a, b| {
            let position = |r: &Record| r.fields.get(POSITION).and_then(Value::as_f64).unwrap_or(f64::MAX);
            position(a)
                .total_cmp(&position(b))
                .then_with(|| a.updated.cmp(&b.updated))
        });
        Ok(messages)
    }

    pub async fn conversation(&self, session_id: &str) -> Result<Option<Conversation>, Error> {
        let Some(session) = self.get(SESSIONS, session_id).await?.filter(|s| !s.deleted) else {
            return Ok(None);
        };
        let messages = self.messages(session_id).await?;
        Ok(Some(Conversation { session, messages }))
    }

    /// Adds or edits a message of `session_id` at `position`; `fields` carries the rest
    /// (`role`, `content`, `date`, …).
    pub async fn put_message(
        &self,
        session_id: &str,
        message_id: &str,
        position: u32,
        mut fields: Map<String, Value>,
    ) -> Result<(), Error> {
        fields.insert(SESSION_ID.into(), json!(session_id));
        fields.insert(POSITION.into(), json!(position));
        self.put(MESSAGES, message_id, fields).await
    }

    /// Deletes a session and every message of it this replica knows.
    pub async fn delete_session(&self, session_id: &str) -> Result<(), Error> {
        for message in self.messages(session_id).await? {
            self.delete(MESSAGES, &message.id).await?;
        }
        self.delete(SESSIONS, session_id).await
    }

    pub async fn masks(&self) -> Result<Vec<Record>, Error> {
        self.list(Query {
            collection: Some(MASKS.into()),
            ..Query::default()
        })
        .await
    }

    pub async fn prompts(&self) -> Result<Vec<Record>, Error> {
        self.list(Query {
            collection: Some(PROMPTS.into()),
            ..Query::default()
        })
        .await
    }

    /// A NextChat backup file (the five stores NextChat's "Export" writes) of this replica's
    /// state, rendered locally: it works offline and, for an end-to-end encrypted account, is
    /// the only way to one (the server holds ciphertext). Secrets never reach the replica, so
    /// none are in the file.
    pub async fn export_nextchat(&self) -> Result<Vec<u8>, Error> {
        let mut records = Vec::new();
        for collection in COLLECTIONS {
            for record in self
                .list(Query {
                    collection: Some(collection.into()),
                    ..Query::default()
                })
                .await?
            {
                // The renderer reads stored records: visible values with a stamp each.
                let fields: Map<String, Value> = record
                    .fields
                    .into_iter()
                    .map(|(name, value)| (name, json!({ "v": value, "h": record.updated })))
                    .collect();
                let raw = RawRecord {
                    fields: Value::Object(fields).to_string(),
                    tombstone: None,
                    tombstone_seq: None,
                    seq: record.seq.unwrap_or(Seq(u64::MAX)),
                };
                records.push((
                    RecordKey {
                        collection: record.collection,
                        id: record.id,
                    },
                    raw,
                ));
            }
        }
        let rendered = tokio::task::spawn_blocking(move || {
            render(&records, RenderOptions { sync_settings: true }, Vec::new())
        })
        .await
        .map_err(|e| Error::Replica(format!("render task failed: {e}")))?
        .map_err(|e| Error::Replica(format!("a record cannot be rendered: {e:?}")))?;
        Ok(rendered.json)
    }

    /// Merges a NextChat backup file into the account on the server (the server's merge:
    /// entities it has seen are not duplicated, deletions made through nextsync stay), then
    /// pulls the result. `sent` hears the upload's progress in bytes.
    pub async fn import_nextchat(
        &self,
        file: Vec<u8>,
        sent: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<MergeSummary, Error> {
        if self.encryption() != crate::Encryption::Off {
            return Err(Error::Crypto(
                "importing into an end-to-end encrypted account is not supported yet (the server's \
                 merge cannot read its records)"
                    .into(),
            ));
        }
        let body = bytes::Bytes::from(file);
        let sent: std::sync::Arc<dyn Fn(u64) + Send + Sync> = std::sync::Arc::new(sent);
        let summary = self
            .authed(|http, token| {
                let (body, sent) = (body.clone(), sent.clone());
                async move { http.import(&token, body, sent).await }
            })
            .await?;
        self.pull_to_head().await?;
        Ok(summary)
    }

    /// One of NextChat's settings stores (`app-config`, `access-control`).
    pub async fn config(&self, store: &str) -> Result<Option<Record>, Error> {
        self.get(CONFIG, store).await
    }
}
