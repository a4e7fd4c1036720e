//! Drafts: a record being written (an AI reply streaming in), shown live on the account's
//! other devices and never stored. They travel over the live socket only: without one
//! (long-polling, offline) a draft is not sent, and the final write still arrives through
//! the feed like any write, replacing the draft on every device.
//!
//! On an end-to-end encrypted account a draft's values are sealed like a write's: the server
//! relays ciphertext.

use crate::Client;
use crate::crypto::is_encrypted;
use crate::error::Error;
use crate::live::Connection;
use nextsync_core::api::ClientFrame;
use serde::Serialize;
use serde_json::{Map, Value};
use tokio::sync::{broadcast, mpsc};

/// Drafts waiting for the socket; more are dropped (the next draft carries everything so
/// far anyway).
const OUTGOING: usize = 16;

/// Another device's draft.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Draft {
    pub collection: String,
    pub id: String,
    /// The fields so far; `None`: the draft ended without a write.
    pub fields: Option<Map<String, Value>>,
    pub device_id: String,
    /// The writing device's name, for "being written on …".
    pub device_name: String,
}

pub(crate) struct Drafts {
    incoming: broadcast::Sender<Draft>,
    outgoing: mpsc::Sender<ClientFrame>,
    /// The live loop takes it while it follows the socket.
    pub(crate) queue: tokio::sync::Mutex<mpsc::Receiver<ClientFrame>>,
}

impl Drafts {
    pub(crate) fn new() -> Self {
        let (outgoing, queue) = mpsc::channel(OUTGOING);
        Self {
            incoming: broadcast::channel(256).0,
            outgoing,
            queue: tokio::sync::Mutex::new(queue),
        }
    }
}

impl Client {
    /// Shows `fields` (the record as it will be written, so far) on the account's other
    /// devices; `None` ends the draft without a write. Returns false when it could not go
    /// now (no live socket, or drafts are coming faster than they leave). Send the record
    /// with [`Client::put`] when it is done.
    pub async fn send_draft(
        &self,
        collection: &str,
        id: &str,
        fields: Option<Map<String, Value>>,
    ) -> Result<bool, Error> {
        if *self.connection().borrow() != Connection::Live {
            return Ok(false);
        }
        let fields = match fields {
            Some(mut fields) => {
                match (self.key(), self.is_encrypted()) {
                    (Some(key), _) => key.encrypt_fields(collection, id, &mut fields)?,
                    (None, true) => return Err(Error::Locked),
                    (None, false) => {}
                }
                Some(fields)
            }
            None => None,
        };
        let frame = ClientFrame::Draft {
            collection: collection.to_owned(),
            id: id.to_owned(),
            fields,
            seq_hint: None,
        };
        Ok(self.inner.drafts.outgoing.try_send(frame).is_ok())
    }

    /// Other devices' drafts as they arrive (decrypted when this device holds the key).
    pub fn subscribe_drafts(&self) -> broadcast::Receiver<Draft> {
        self.inner.drafts.incoming.subscribe()
    }

    /// A draft frame from the socket.
    pub(crate) fn receive_draft(&self, mut draft: Draft) {
        if let Some(fields) = &mut draft.fields
            && fields.values().any(is_encrypted)
        {
            // Unreadable here (locked) or altered: not shown.
            let Some(key) = self.key() else { return };
            if key.decrypt_fields(&draft.collection, &draft.id, fields).is_err() {
                return;
            }
        }
        let _ = self.inner.drafts.incoming.send(draft);
    }
}
