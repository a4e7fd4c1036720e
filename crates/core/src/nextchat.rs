//! NextChat's synced state (`backup.json`, NEXTCHAT.md §4) taken apart into records and put
//! back together. Pure: the server's doors parse, call [`plan_upload`] with what the store
//! holds, write the plan through the one write path, and [`render`] downloads.
//!
//! The mapping is a contract other clients and the web page rely on:
//!
//! | collection | record id | fields |
//! |---|---|---|
//! | `sessions` | the session id | every session field but `messages` |
//! | `messages` | the message id | every message field, plus `session_id` and `position` |
//! | `masks` | the key in `mask-store.masks` | the mask |
//! | `prompts` | the key in `prompt-store.prompts` | the prompt |
//! | `config` | `app-config` / `access-control` | the store's top-level keys, secrets removed |
//!
//! Unknown fields are kept verbatim. What an upload may change (NEXTCHAT.md §7.4):
//! - every accepted version of an entity is remembered by hash; an upload of a version seen
//!   before (a stale copy another device keeps re-uploading) changes nothing, a novel one is
//!   an edit and wins by arrival;
//! - a `streaming: true` copy of a message never replaces a finished one;
//! - a record deleted through nextsync stays deleted, and so do the messages of a deleted
//!   session;
//! - config is written only when the account syncs settings, field by field (each field's
//!   versions remembered like an entity's), and never with secrets in it: see
//!   [`take_secrets`].

use crate::api::MergeSummary;
use crate::ids::Seq;
use crate::push::{RecordKey, validate_record_id};
use crate::sync::RawRecord;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use thiserror::Error;

pub const SESSIONS: &str = "sessions";
pub const MESSAGES: &str = "messages";
pub const MASKS: &str = "masks";
pub const PROMPTS: &str = "prompts";
pub const CONFIG: &str = "config";
/// Every collection the mapping writes.
pub const COLLECTIONS: [&str; 5] = [SESSIONS, MESSAGES, MASKS, PROMPTS, CONFIG];

pub const CHAT_STORE: &str = "chat-next-web-store";
pub const ACCESS_CONTROL: &str = "access-control";
pub const APP_CONFIG: &str = "app-config";
pub const MASK_STORE: &str = "mask-store";
pub const PROMPT_STORE: &str = "prompt-store";

/// A message's session, on its record.
pub const SESSION_ID: &str = "session_id";
/// A message's index in its session's `messages` as last uploaded; orders the download.
pub const POSITION: &str = "position";

/// Keys a JavaScript deep merge turns into prototype pollution (NEXTCHAT.md §5.1).
const POISONED_KEYS: [&str; 3] = ["__proto__", "constructor", "prototype"];

/// Name endings (lower-cased) of the fields that hold credentials: `accessCode`, every
/// provider's `…ApiKey`, `baiduSecretKey`, `tencentSecretId`, `iflytekApiSecret`,
/// `realtimeConfig.apiKey`, …  Deliberately endings, not substrings: `max_tokens`,
/// `submitKey` and `tokenCount` are not secrets.
const SECRET_ENDINGS: [&str; 7] = [
    "apikey",
    "apisecret",
    "secretkey",
    "secretid",
    "accesscode",
    "password",
    "token",
];

/// NextChat's `Store.DefaultTopic` in every locale it ships (app/locales/*.ts): the topic
/// of a session nobody has written to yet.
const DEFAULT_TOPICS: [&str; 19] = [
    "New Conversation",
    "新的聊天",
    "新的對話",
    "新しいチャット",
    "새 채팅",
    "دردشة جديدة",
    "নতুন চ্যাট",
    "Nový chat",
    "Ny samtale",
    "Neuer Chat",
    "Nuevo chat",
    "Nouvelle discussion",
    "Obrolan Baru",
    "Nuova chat",
    "Nova Conversa",
    "Новый чат",
    "Nová konverzácia",
    "Yeni Sohbet",
    "Trò chuyện mới",
];

/// A session as NextChat's `createEmptySession` makes it and nobody touched since: no
/// messages (the caller checks), the default topic, no memory, no mask context. Every
/// device makes one and uploads it; nobody wants them synced. `field` reads a session field.
fn is_untouched_new_session(field: impl Fn(&str) -> Option<Value>) -> bool {
    let topic_is_default = field("topic")
        .as_ref()
        .and_then(Value::as_str)
        .is_some_and(|topic| DEFAULT_TOPICS.contains(&topic));
    let no_memory = field("memoryPrompt").is_none_or(|memory| memory == "" || memory.is_null());
    let no_context = field("mask").is_none_or(|mask| {
        mask.get("context")
            .is_none_or(|context| context.as_array().is_some_and(Vec::is_empty))
    });
    topic_is_default && no_memory && no_context
}

/// Collapses repeated entries of `app-config.models`: NextChat appends its built-in models on
/// every page load (~24 KB each time). It reads the list into a table keyed by
/// `<name>@<provider id>`, later entries overriding earlier ones in the first one's place;
/// this keeps exactly that table, in that order.
pub fn collapse_models(app_config: &mut Map<String, Value>) {
    let Some(Value::Array(models)) = app_config.get_mut("models") else {
        return;
    };
    let model_key = |model: &Value| {
        let name = model.get("name").map(Value::to_string).unwrap_or_default();
        let provider = model
            .get("provider")
            .and_then(|p| p.get("id"))
            .map(Value::to_string)
            .unwrap_or_default();
        format!("{name}@{provider}")
    };
    let mut place: HashMap<String, usize> = HashMap::new();
    let mut kept: Vec<Value> = Vec::with_capacity(models.len());
    for model in models.drain(..) {
        match place.entry(model_key(&model)) {
            std::collections::hash_map::Entry::Occupied(at) => kept[*at.get()] = model,
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(kept.len());
                kept.push(model);
            }
        }
    }
    *models = kept;
}

/// Drops [`POISONED_KEYS`] from every object in `value`.
pub fn sanitize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|key, _| !POISONED_KEYS.contains(&key.as_str()));
            map.values_mut().for_each(sanitize);
        }
        Value::Array(items) => items.iter_mut().for_each(sanitize),
        _ => {}
    }
}

pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_ENDINGS.iter().any(|ending| lower.ends_with(ending))
}

/// A secret's place in the state: the store key, then the object keys down to it. Stored
/// as its JSON text (`["access-control","openaiApiKey"]`), which never needs escaping rules
/// of its own.
pub type SecretPath = Vec<String>;

/// Removes every secret-named field from the `access-control` and `app-config` stores of a
/// whole state (at any depth), returning the non-empty ones. Empty values are dropped and
/// never returned: served back, an empty key would wipe a device's real one (§5.1).
pub fn take_secrets(state: &mut Value) -> Vec<(SecretPath, Value)> {
    let mut found = Vec::new();
    for store in [ACCESS_CONTROL, APP_CONFIG] {
        if let Some(Value::Object(map)) = state.get_mut(store) {
            let mut path = vec![store.to_owned()];
            take_from(map, &mut path, &mut found);
        }
    }
    found
}

fn take_from(map: &mut Map<String, Value>, path: &mut SecretPath, found: &mut Vec<(SecretPath, Value)>) {
    let names: Vec<String> = map.keys().filter(|k| is_secret_name(k)).cloned().collect();
    for name in names {
        if let Some(value) = map.remove(&name)
            && !is_empty_secret(&value)
        {
            let mut at = path.clone();
            at.push(name);
            found.push((at, value));
        }
    }
    for (name, value) in map.iter_mut() {
        if let Value::Object(inner) = value {
            path.push(name.clone());
            take_from(inner, path, found);
            path.pop();
        }
    }
}

fn is_empty_secret(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// Puts a secret back at `path` in a rendered state, creating the objects on the way.
pub fn put_secret(state: &mut Map<String, Value>, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut at = state;
    for name in parents {
        let slot = at
            .entry(name.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        let Value::Object(inner) = slot else { return };
        at = inner;
    }
    at.insert(last.clone(), value);
}

/// The hash that identifies one version of an entity: 128 bits of SHA-256 over its JSON
/// (object keys sorted, so the order a client wrote them in does not matter), as hex.
pub fn version_hash(value: &Value) -> String {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    hex16(&Sha256::digest(&bytes))
}

fn object_hash(map: &Map<String, Value>) -> String {
    let mut hasher = Sha256::new();
    // `Map` serializes like the `Value::Object` holding it; no clone needed.
    let _ = serde_json::to_writer(HashWriter(&mut hasher), map);
    hex16(&hasher.finalize())
}

fn field_hash(name: &str, value: &Value) -> String {
    version_hash(&json!([name, value]))
}

fn hex16(digest: &[u8]) -> String {
    digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum BackupError {
    #[error("a NextChat state is a JSON object")]
    NotAnObject,
    #[error("the state has no {0:?} store; a NextChat state always carries all five")]
    MissingStore(&'static str),
    #[error("{0}")]
    Invalid(String),
}

/// A JSON object: an entity's fields.
pub type Object = Map<String, Value>;

/// A parsed, sanitized upload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Backup {
    pub sessions: Vec<SessionIn>,
    pub masks: Vec<(String, Object)>,
    pub prompts: Vec<(String, Object)>,
    pub app_config: Map<String, Value>,
    pub access_control: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionIn {
    pub id: String,
    /// Every field but `messages`.
    pub fields: Map<String, Value>,
    pub messages: Vec<Map<String, Value>>,
}

impl Backup {
    /// Takes a whole state apart. Sanitizes first; secrets are the caller's to take out
    /// ([`take_secrets`]) before, so they never reach a record.
    pub fn from_value(mut state: Value) -> Result<Self, BackupError> {
        sanitize(&mut state);
        Self::from_sanitized(state)
    }

    /// [`Backup::from_value`] for a state [`sanitize`]d already (the server sanitizes before
    /// it takes secrets out and keeps the snapshot, and walks a 31 MB state only once).
    pub fn from_sanitized(state: Value) -> Result<Self, BackupError> {
        let Value::Object(mut stores) = state else {
            return Err(BackupError::NotAnObject);
        };
        let mut store = |name: &'static str| match stores.remove(name) {
            Some(Value::Object(map)) => Ok(map),
            Some(_) => Err(BackupError::Invalid(format!("{name:?} must be an object"))),
            None => Err(BackupError::MissingStore(name)),
        };
        let mut chat = store(CHAT_STORE)?;
        let access_control = store(ACCESS_CONTROL)?;
        let mut app_config = store(APP_CONFIG)?;
        collapse_models(&mut app_config);
        let mut mask_store = store(MASK_STORE)?;
        let mut prompt_store = store(PROMPT_STORE)?;

        let sessions = match chat.remove("sessions") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| session_in(i, item))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("chat-next-web-store.sessions must be an array")),
        };
        Ok(Self {
            sessions,
            masks: keyed(mask_store.remove("masks"), "mask-store.masks")?,
            prompts: keyed(prompt_store.remove("prompts"), "prompt-store.prompts")?,
            app_config,
            access_control,
        })
    }

    pub fn message_count(&self) -> usize {
        self.sessions.iter().map(|s| s.messages.len()).sum()
    }
}

fn invalid(message: impl Into<String>) -> BackupError {
    BackupError::Invalid(message.into())
}

/// An id as NextChat writes it: a string (nanoid), or a number in old or built-in data.
fn entity_id(value: Option<&Value>) -> Option<String> {
    let id = match value? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    validate_record_id(&id).is_ok().then_some(id)
}

fn session_in(index: usize, item: Value) -> Result<SessionIn, BackupError> {
    let Value::Object(mut fields) = item else {
        return Err(invalid(format!("session #{index} is not an object")));
    };
    let id = entity_id(fields.get("id"))
        .ok_or_else(|| invalid(format!("session #{index} has no usable id (1 to 128 characters)")))?;
    let messages = match fields.remove("messages") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, m)| match m {
                Value::Object(m) if entity_id(m.get("id")).is_some() => Ok(m),
                _ => Err(invalid(format!(
                    "message #{i} of session {id:?} is not an object with a usable id"
                ))),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid(format!("messages of session {id:?} must be an array"))),
    };
    Ok(SessionIn { id, fields, messages })
}

fn keyed(value: Option<Value>, what: &str) -> Result<Vec<(String, Object)>, BackupError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Object(map)) => map
            .into_iter()
            .map(|(key, item)| match item {
                Value::Object(item) if validate_record_id(&key).is_ok() => Ok((key, item)),
                _ => Err(invalid(format!(
                    "{what}[{key:?}] must be an object under a key of 1 to 128 characters"
                ))),
            })
            .collect(),
        Some(_) => Err(invalid(format!("{what} must be an object"))),
    }
}

/// One record write an upload needs: set `fields` on `key`, provided the record is still at
/// `expect` (its seq when read; `None`: it did not exist).
#[derive(Debug, Clone, PartialEq)]
pub struct EntityWrite {
    pub key: RecordKey,
    pub fields: Map<String, Value>,
    pub expect: Option<Seq>,
}

/// What an upload changes, decided against the records and versions it was read with.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UploadPlan {
    pub writes: Vec<EntityWrite>,
    /// Versions to remember (record, hash), accepted ones only.
    pub versions: Vec<(RecordKey, String)>,
    pub stats: MergeSummary,
}

/// The records an upload is planned against.
#[derive(Debug, Default)]
pub struct Current {
    /// As stored; each is decoded only when the upload touches it.
    pub records: HashMap<RecordKey, RawRecord>,
    /// Every remembered version hash per record.
    pub versions: HashMap<RecordKey, HashSet<String>>,
}

/// A stored record that does not decode.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("record {collection}/{id} is corrupt: {reason}")]
pub struct CorruptRecord {
    pub collection: String,
    pub id: String,
    pub reason: String,
}

/// What an upload needs of one stored record.
struct Stored {
    deleted: bool,
    visible: Object,
    seq: Seq,
}

impl Current {
    fn stored(&self, key: &RecordKey) -> Result<Option<Stored>, CorruptRecord> {
        let Some(raw) = self.records.get(key) else {
            return Ok(None);
        };
        let record = raw.decode().map_err(|reason| CorruptRecord {
            collection: key.collection.clone(),
            id: key.id.clone(),
            reason,
        })?;
        Ok(Some(Stored {
            deleted: record.record.is_deleted(),
            visible: record.visible().0,
            seq: record.seq,
        }))
    }

    fn seen(&self, key: &RecordKey, hash: &str) -> bool {
        self.versions.get(key).is_some_and(|v| v.contains(hash))
    }
}

fn key(collection: &str, id: &str) -> RecordKey {
    RecordKey {
        collection: collection.to_owned(),
        id: id.to_owned(),
    }
}

fn is_streaming(fields: &Object) -> bool {
    fields.get("streaming") == Some(&Value::Bool(true))
}

/// How an upload is merged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UploadOptions {
    /// Write `config` (the account syncs settings).
    pub sync_settings: bool,
    /// Bring back entities deleted through nextsync (restoring a kept upload); a device's
    /// upload never does.
    pub revive_deleted: bool,
}

/// Decides an upload: see the module doc for the rules. Takes the upload by value: the
/// fields it writes move into the plan rather than being copied (a first upload writes
/// everything).
pub fn plan_upload(
    backup: Backup,
    current: &Current,
    options: UploadOptions,
) -> Result<UploadPlan, CorruptRecord> {
    let mut planner = Planner {
        current,
        revive: options.revive_deleted,
        plan: UploadPlan::default(),
        planned: HashSet::new(),
    };
    // Message ids are nanoids, unique in practice; one reused in a second session gets a
    // record of its own rather than moving (its `id` field keeps the original).
    let mut message_owner: HashMap<String, String> = HashMap::new();
    for session in backup.sessions {
        let session_key = key(SESSIONS, &session.id);
        if session.messages.is_empty()
            && !current.records.contains_key(&session_key)
            && is_untouched_new_session(|name| session.fields.get(name).cloned())
        {
            continue;
        }
        let session_deleted = current.stored(&session_key)?.is_some_and(|s| s.deleted);
        if session_deleted && !options.revive_deleted {
            planner.plan.stats.deleted += 1 + session.messages.len() as u32;
            continue;
        }
        planner.entity(session_key, session.fields, None)?;
        for (position, message) in session.messages.into_iter().enumerate() {
            let Some(message_id) = entity_id(message.get("id")) else {
                continue;
            };
            let owner = message_owner
                .entry(message_id.clone())
                .or_insert_with(|| session.id.clone());
            let record_id = if *owner == session.id {
                message_id
            } else {
                format!("{}:{message_id}", session.id)
            };
            if validate_record_id(&record_id).is_err() {
                continue;
            }
            let mut placement = Map::new();
            placement.insert(SESSION_ID.to_owned(), Value::String(session.id.clone()));
            placement.insert(POSITION.to_owned(), Value::from(position as u64));
            planner.entity(key(MESSAGES, &record_id), message, Some(placement))?;
        }
    }
    for (id, mask) in backup.masks {
        planner.entity(key(MASKS, &id), mask, None)?;
    }
    for (id, prompt) in backup.prompts {
        planner.entity(key(PROMPTS, &id), prompt, None)?;
    }
    if options.sync_settings {
        planner.config(APP_CONFIG, backup.app_config)?;
        planner.config(ACCESS_CONTROL, backup.access_control)?;
    }
    Ok(planner.plan)
}

struct Planner<'a> {
    current: &'a Current,
    revive: bool,
    plan: UploadPlan,
    /// Keys written once already: the first copy in an upload wins.
    planned: HashSet<RecordKey>,
}

impl Planner<'_> {
    /// The record's state for a write: `(deleted, visible, expected seq)`. A deleted record
    /// shows nothing and is written unconditionally when revived (a precondition on a seq
    /// needs a live record; a revival racing a write is a merge).
    fn target(&self, key: &RecordKey) -> Result<(bool, Object, Option<Seq>), CorruptRecord> {
        Ok(match self.current.stored(key)? {
            None => (false, Map::new(), None),
            Some(s) if s.deleted => (true, Map::new(), None),
            Some(s) => (false, s.visible, Some(s.seq)),
        })
    }

    fn entity(
        &mut self,
        key: RecordKey,
        value: Object,
        placement: Option<Object>,
    ) -> Result<(), CorruptRecord> {
        let hash = object_hash(&value);
        if self.current.seen(&key, &hash)
            && let Some(raw) = self.current.records.get(&key)
        {
            return self.known(key, raw, &value, placement);
        }
        let (deleted, visible, seq) = self.target(&key)?;
        if deleted && !self.revive {
            self.plan.stats.deleted += 1;
            return Ok(());
        }
        if !self.planned.insert(key.clone()) {
            return Ok(());
        }
        if seq.is_some() && is_streaming(&value) && !is_streaming(&visible) {
            // A stale device's partial reply: neither its content nor its placement is taken.
            self.plan.stats.stale += 1;
            return Ok(());
        }
        let mut fields = Map::new();
        if self.current.seen(&key, &hash) && !deleted {
            self.plan.stats.stale += 1;
        } else {
            if seq.is_some() {
                self.plan.stats.edited += 1;
            } else {
                self.plan.stats.created += 1;
            }
            fields.extend(value.into_iter().filter(|(name, v)| visible.get(name) != Some(v)));
            self.plan.versions.push((key.clone(), hash));
        }
        for (name, v) in placement.into_iter().flatten() {
            if visible.get(&name) != Some(&v) {
                fields.insert(name, v);
            }
        }
        if !fields.is_empty() {
            self.plan.writes.push(EntityWrite {
                key,
                fields,
                expect: seq,
            });
        }
        Ok(())
    }

    /// A version seen before, of a stored record: what every later sync re-uploads. Only its
    /// placement can change, so the record is read as stored JSON text, not decoded.
    fn known(
        &mut self,
        key: RecordKey,
        raw: &RawRecord,
        value: &Object,
        placement: Option<Object>,
    ) -> Result<(), CorruptRecord> {
        let stored = raw.visible_raw().map_err(|reason| CorruptRecord {
            collection: key.collection.clone(),
            id: key.id.clone(),
            reason,
        })?;
        if stored.is_empty() {
            // Deleted: nothing of it is taken (unless revived, which needs the full path).
            if self.revive {
                return self.revive_known(key, value.clone(), placement);
            }
            self.plan.stats.deleted += 1;
            return Ok(());
        }
        if !self.planned.insert(key.clone()) {
            return Ok(());
        }
        self.plan.stats.stale += 1;
        let stored_text = |name: &str| stored.iter().find(|(n, _)| n == name).map(|(_, v)| v.get());
        if is_streaming(value) && stored_text("streaming") != Some("true") {
            return Ok(());
        }
        let mut fields = Map::new();
        for (name, v) in placement.into_iter().flatten() {
            let text = serde_json::to_string(&v).unwrap_or_default();
            if stored_text(&name) != Some(text.as_str()) {
                fields.insert(name, v);
            }
        }
        if !fields.is_empty() {
            self.plan.writes.push(EntityWrite {
                key,
                fields,
                expect: Some(raw.seq),
            });
        }
        Ok(())
    }

    /// Revives a deleted record from a version seen before: every field, unconditionally.
    fn revive_known(
        &mut self,
        key: RecordKey,
        value: Object,
        placement: Option<Object>,
    ) -> Result<(), CorruptRecord> {
        if !self.planned.insert(key.clone()) {
            return Ok(());
        }
        self.plan.stats.created += 1;
        let mut fields = value;
        fields.extend(placement.into_iter().flatten());
        self.plan.writes.push(EntityWrite {
            key,
            fields,
            expect: None,
        });
        Ok(())
    }

    /// Config is merged field by field: each field's versions are remembered like an
    /// entity's, so a device re-uploading an old value does not undo a newer one.
    fn config(&mut self, id: &str, store: Object) -> Result<(), CorruptRecord> {
        let key = key(CONFIG, id);
        let (deleted, visible, seq) = self.target(&key)?;
        if store.is_empty() || (deleted && !self.revive) {
            return Ok(());
        }
        let mut fields = Map::new();
        for (name, value) in store {
            let hash = field_hash(&name, &value);
            if self.current.seen(&key, &hash) && !deleted {
                continue;
            }
            self.plan.versions.push((key.clone(), hash));
            if visible.get(&name) != Some(&value) {
                fields.insert(name, value);
            }
        }
        if !fields.is_empty() {
            if seq.is_some() {
                self.plan.stats.edited += 1;
            } else {
                self.plan.stats.created += 1;
            }
            self.plan.writes.push(EntityWrite {
                key,
                fields,
                expect: seq,
            });
        }
        Ok(())
    }
}

/// What a download shows besides the records.
#[derive(Debug, Clone, Copy, Default)]
pub struct RenderOptions {
    /// Render `app-config` and `access-control` from the `config` records (else `{}`).
    pub sync_settings: bool,
}

/// A rendered state: its JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// Always holds all five stores.
    pub json: Vec<u8>,
    /// Nothing at all to show: a WebDAV GET answers 404 then, an Upstash count `null`.
    pub is_empty: bool,
}

/// One entity's visible fields as stored JSON text, borrowed from its record.
type RawFields<'a> = Vec<(std::borrow::Cow<'a, str>, &'a RawValue)>;

/// Renders the whole state from records of the five collections (any order; deleted ones
/// are skipped), with `secrets` put back where they were taken from. Values are copied from
/// the stored JSON text as they are: a download builds no value tree of the state.
pub fn render(
    records: &[(RecordKey, RawRecord)],
    options: RenderOptions,
    secrets: Vec<(SecretPath, Value)>,
) -> Result<Rendered, CorruptRecord> {
    let mut sessions: Vec<(f64, &str, RawFields<'_>)> = Vec::new();
    // Per session: (position, seq, record id, fields).
    let mut messages: HashMap<String, Vec<(f64, Seq, &str, RawFields<'_>)>> = HashMap::new();
    let mut masks: Vec<(&str, RawFields<'_>)> = Vec::new();
    let mut prompts: Vec<(&str, RawFields<'_>)> = Vec::new();
    let mut app_config = Map::new();
    let mut access_control = Map::new();
    for (key, raw) in records {
        let corrupt = |reason: String| CorruptRecord {
            collection: key.collection.clone(),
            id: key.id.clone(),
            reason,
        };
        let mut fields = raw.visible_raw().map_err(corrupt)?;
        if fields.is_empty() {
            continue;
        }
        let number = |raw: &RawValue| serde_json::from_str::<f64>(raw.get()).ok();
        match key.collection.as_str() {
            SESSIONS => {
                let last_update = fields
                    .iter()
                    .find(|(name, _)| name == "lastUpdate")
                    .and_then(|(_, v)| number(v))
                    .unwrap_or(0.0);
                sessions.push((last_update, &key.id, fields));
            }
            MESSAGES => {
                let mut session = None;
                let mut position = f64::MAX;
                fields.retain(|(name, v)| match name.as_ref() {
                    SESSION_ID => {
                        session = serde_json::from_str::<String>(v.get()).ok();
                        false
                    }
                    POSITION => {
                        position = number(v).unwrap_or(f64::MAX);
                        false
                    }
                    _ => true,
                });
                if let Some(session) = session {
                    messages
                        .entry(session)
                        .or_default()
                        .push((position, raw.seq, &key.id, fields));
                }
            }
            MASKS => masks.push((&key.id, fields)),
            PROMPTS => prompts.push((&key.id, fields)),
            CONFIG if options.sync_settings && (key.id == APP_CONFIG || key.id == ACCESS_CONTROL) => {
                let decoded = fields
                    .into_iter()
                    .map(|(name, v)| Ok((name.into_owned(), serde_json::from_str(v.get())?)))
                    .collect::<Result<Object, serde_json::Error>>()
                    .map_err(|e| corrupt(e.to_string()))?;
                if key.id == APP_CONFIG {
                    app_config = decoded;
                    collapse_models(&mut app_config);
                } else {
                    access_control = decoded;
                }
            }
            _ => {}
        }
    }
    // A new device's empty "New Conversation" stored before uploads skipped them is not
    // served either: the device that made it keeps its own copy.
    sessions.retain(|(_, id, fields)| {
        messages.contains_key(*id)
            || !is_untouched_new_session(|name| {
                fields
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, v)| serde_json::from_str(v.get()).ok())
            })
    });
    let mut stores = Map::new();
    stores.insert(ACCESS_CONTROL.to_owned(), Value::Object(access_control));
    stores.insert(APP_CONFIG.to_owned(), Value::Object(app_config));
    let has_secrets = !secrets.is_empty();
    for (path, value) in secrets {
        put_secret(&mut stores, &path, value);
    }
    let is_empty = sessions.is_empty()
        && masks.is_empty()
        && prompts.is_empty()
        && stores
            .values()
            .all(|store| store.as_object().is_some_and(Map::is_empty))
        && !has_secrets;

    // Newest first, as NextChat sorts them after every merge.
    sessions.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
    masks.sort_by(|a, b| a.0.cmp(b.0));
    prompts.sort_by(|a, b| a.0.cmp(b.0));
    let size = records.iter().map(|(_, r)| r.fields.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size + 64 * 1024);
    out.extend_from_slice(br#"{"access-control":"#);
    write_json(&mut out, &stores[ACCESS_CONTROL]);
    out.extend_from_slice(br#","app-config":"#);
    write_json(&mut out, &stores[APP_CONFIG]);
    out.extend_from_slice(br#","chat-next-web-store":{"sessions":["#);
    for (i, (_, id, fields)) in sessions.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        // A session written through the API may lack NextChat's `id` field: its record id is.
        if !fields.iter().any(|(name, _)| name == "id") {
            out.extend_from_slice(br#""id":"#);
            write_json(&mut out, id);
            if !fields.is_empty() {
                out.push(b',');
            }
        }
        write_fields(&mut out, fields);
        out.extend_from_slice(br#","messages":["#);
        let mut list = messages.remove(*id).unwrap_or_default();
        list.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        for (j, (_, _, message_id, message)) in list.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            if message.iter().any(|(name, _)| name == "id") {
                write_object(&mut out, message);
            } else {
                out.extend_from_slice(br#"{"id":"#);
                write_json(&mut out, message_id);
                if !message.is_empty() {
                    out.push(b',');
                }
                write_fields(&mut out, message);
                out.push(b'}');
            }
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(
        br#"],"currentSessionIndex":0,"lastInput":"","lastUpdateTime":0,"_hasHydrated":true}"#,
    );
    out.extend_from_slice(br#","mask-store":{"masks":"#);
    write_keyed(&mut out, &masks);
    out.extend_from_slice(br#","lastUpdateTime":0,"_hasHydrated":true}"#);
    out.extend_from_slice(br#","prompt-store":{"counter":0,"prompts":"#);
    write_keyed(&mut out, &prompts);
    out.extend_from_slice(br#","lastUpdateTime":0,"_hasHydrated":true}}"#);
    Ok(Rendered { json: out, is_empty })
}

fn write_json(out: &mut Vec<u8>, value: &impl serde::Serialize) {
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// `"name":value,…` without the braces.
fn write_fields(out: &mut Vec<u8>, fields: &RawFields<'_>) {
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(out, name);
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
}

fn write_object(out: &mut Vec<u8>, fields: &RawFields<'_>) {
    out.push(b'{');
    write_fields(out, fields);
    out.push(b'}');
}

fn write_keyed(out: &mut Vec<u8>, entries: &[(&str, RawFields<'_>)]) {
    out.push(b'{');
    for (i, (id, fields)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json(out, id);
        out.push(b':');
        write_object(out, fields);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Hlc;
    use crate::sync::{Op, StoredRecord, Write};

    fn message(id: &str, content: &str) -> Value {
        json!({"id": id, "role": "user", "content": content, "date": "5/13/2024, 3:04:05 PM"})
    }

    fn state(sessions: Value) -> Value {
        json!({
            "chat-next-web-store": {"sessions": sessions, "currentSessionIndex": 0, "lastInput": "",
                                    "lastUpdateTime": 0, "_hasHydrated": true},
            "access-control": {"openaiApiKey": "", "accessCode": "", "provider": "OpenAI"},
            "app-config": {"theme": "dark", "submitKey": "Enter", "modelConfig": {"max_tokens": 4000}},
            "mask-store": {"masks": {"m1": {"id": "m1", "name": "Mask"}}},
            "prompt-store": {"prompts": {"p1": {"id": "p1", "title": "T", "content": "C"}}},
        })
    }

    fn session(id: &str, last_update: u64, messages: Value) -> Value {
        json!({"id": id, "topic": "Topic", "lastUpdate": last_update, "messages": messages,
               "mask": {"id": 100000, "name": "Default"}})
    }

    fn decoded(current: &Current, key: &RecordKey) -> StoredRecord {
        current
            .records
            .get(key)
            .map(|raw| raw.decode().expect("decodes"))
            .unwrap_or_default()
    }

    /// Applies a plan the way the store does: server-stamped writes and remembered versions.
    fn apply(current: &mut Current, plan: &UploadPlan, now: &mut u64) {
        for write in &plan.writes {
            let mut record = decoded(current, &write.key);
            assert_eq!(
                write.expect,
                (record.seq > Seq(0) && !record.record.is_deleted()).then_some(record.seq),
                "a write expects the seq it was planned against"
            );
            *now += 1;
            let hlc = Hlc::new(*now, 0, "server").expect("stamp");
            record.apply(
                Write {
                    op: Op::Upsert(write.fields.clone()),
                    hlc: &hlc,
                    base_seq: None,
                },
                Seq(*now),
                &mut Vec::new(),
            );
            current
                .records
                .insert(write.key.clone(), RawRecord::from(&record));
        }
        for (key, hash) in &plan.versions {
            current
                .versions
                .entry(key.clone())
                .or_default()
                .insert(hash.clone());
        }
    }

    fn upload(current: &mut Current, value: Value, now: &mut u64) -> UploadPlan {
        let backup = Backup::from_value(value).expect("a valid state");
        let plan = plan_upload(backup, current, UploadOptions::default()).expect("plans");
        apply(current, &plan, now);
        plan
    }

    struct Out {
        state: Value,
        is_empty: bool,
    }

    fn rendered(current: &Current, options: RenderOptions) -> Out {
        let records: Vec<_> = current.records.clone().into_iter().collect();
        let out = render(&records, options, Vec::new()).expect("renders");
        Out {
            state: serde_json::from_slice(&out.json).expect("valid JSON"),
            is_empty: out.is_empty,
        }
    }

    fn contents(current: &Current) -> Vec<String> {
        let state = rendered(current, RenderOptions::default()).state;
        state[CHAT_STORE]["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .flat_map(|s| s["messages"].as_array().expect("messages").clone())
            .map(|m| m["content"].as_str().expect("content").to_owned())
            .collect()
    }

    #[test]
    fn poisoned_keys_are_dropped_everywhere() {
        let mut value: Value = serde_json::from_str(
            r#"{"a":{"__proto__":{"x":1},"b":[{"constructor":{"y":2},"c":3}],"prototype":4}}"#,
        )
        .expect("json");
        sanitize(&mut value);
        assert_eq!(value, json!({"a": {"b": [{"c": 3}]}}));
    }

    #[test]
    fn secrets_are_found_by_name_at_any_depth_and_empty_ones_dropped() {
        let mut value = json!({
            "access-control": {"openaiApiKey": "sk-1", "accessCode": "code", "tencentSecretId": "id",
                               "iflytekApiSecret": "s", "googleApiKey": "", "openaiUrl": "https://x"},
            "app-config": {"realtimeConfig": {"apiKey": "rt", "voice": "alloy"}, "submitKey": "Enter",
                           "modelConfig": {"max_tokens": 4000}},
            "chat-next-web-store": {"apiKey": "not a store that holds secrets"},
        });
        let mut found = take_secrets(&mut value);
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let paths: Vec<String> = found.iter().map(|(p, _)| p.join("/")).collect();
        assert_eq!(
            paths,
            [
                "access-control/accessCode",
                "access-control/iflytekApiSecret",
                "access-control/openaiApiKey",
                "access-control/tencentSecretId",
                "app-config/realtimeConfig/apiKey",
            ]
        );
        assert_eq!(value["access-control"], json!({"openaiUrl": "https://x"}));
        assert_eq!(
            value["app-config"],
            json!({"realtimeConfig": {"voice": "alloy"}, "submitKey": "Enter", "modelConfig": {"max_tokens": 4000}})
        );
        let mut state = Map::new();
        for (path, v) in found {
            put_secret(&mut state, &path, v);
        }
        assert_eq!(state["app-config"]["realtimeConfig"]["apiKey"], "rt");
    }

    #[test]
    fn a_state_without_its_stores_or_ids_is_refused() {
        assert_eq!(Backup::from_value(json!([1])), Err(BackupError::NotAnObject));
        assert_eq!(
            Backup::from_value(json!({"error": true, "msg": "Invalid endpoint"})),
            Err(BackupError::MissingStore(CHAT_STORE))
        );
        let no_id = state(json!([{"topic": "x", "messages": []}]));
        assert!(matches!(Backup::from_value(no_id), Err(BackupError::Invalid(_))));
        let bad_message = state(json!([session("s1", 1, json!([{"content": "no id"}]))]));
        assert!(matches!(
            Backup::from_value(bad_message),
            Err(BackupError::Invalid(_))
        ));
    }

    #[test]
    fn an_upload_creates_once_and_a_repeat_changes_nothing() {
        let (mut current, mut now) = (Current::default(), 0);
        let value = state(json!([session(
            "s1",
            5,
            json!([message("a", "hi"), message("b", "ho")])
        )]));
        let first = upload(&mut current, value.clone(), &mut now);
        assert_eq!(
            first.stats.created, 5,
            "a session, two messages, a mask, a prompt"
        );
        let again = upload(&mut current, value, &mut now);
        assert!(again.writes.is_empty(), "{:?}", again.writes);
        assert_eq!(again.stats.stale, 5);
        let messages = &decoded(&current, &key(MESSAGES, "b")).visible().0;
        assert_eq!(messages[SESSION_ID], "s1");
        assert_eq!(messages[POSITION], 1);
    }

    #[test]
    fn a_novel_version_wins_and_a_superseded_one_is_ignored() {
        let (mut current, mut now) = (Current::default(), 0);
        let v1 = state(json!([session("s1", 5, json!([message("a", "draft")]))]));
        let v2 = state(json!([session("s1", 5, json!([message("a", "edited")]))]));
        upload(&mut current, v1.clone(), &mut now);
        let edit = upload(&mut current, v2, &mut now);
        assert_eq!(edit.stats.edited, 1);
        assert_eq!(edit.writes.len(), 1, "only the changed field is written");
        assert_eq!(
            edit.writes[0].fields,
            *json!({"content": "edited"}).as_object().expect("object")
        );
        // Another device still holds v1 and uploads it again: nothing flips back.
        let stale = upload(&mut current, v1, &mut now);
        assert!(stale.writes.is_empty());
        assert_eq!(contents(&current), ["edited"]);
    }

    #[test]
    fn a_partial_reply_never_replaces_a_finished_one() {
        let (mut current, mut now) = (Current::default(), 0);
        let finished =
            json!({"id": "r", "role": "assistant", "content": "the whole answer", "streaming": false});
        let partial = json!({"id": "r", "role": "assistant", "content": "the wh", "streaming": true});
        upload(
            &mut current,
            state(json!([session("s1", 5, json!([finished]))])),
            &mut now,
        );
        let plan = upload(
            &mut current,
            state(json!([session("s1", 5, json!([partial.clone()]))])),
            &mut now,
        );
        assert!(plan.writes.is_empty());
        assert_eq!(contents(&current), ["the whole answer"]);
        // The other way round, the finished reply replaces the partial one.
        let (mut current, mut now) = (Current::default(), 0);
        upload(
            &mut current,
            state(json!([session("s1", 5, json!([partial]))])),
            &mut now,
        );
        let finished =
            json!({"id": "r", "role": "assistant", "content": "the whole answer", "streaming": false});
        upload(
            &mut current,
            state(json!([session("s1", 5, json!([finished]))])),
            &mut now,
        );
        assert_eq!(contents(&current), ["the whole answer"]);
    }

    #[test]
    fn deleted_sessions_stay_deleted_with_their_messages_unless_revived() {
        let (mut current, mut now) = (Current::default(), 0);
        let value = state(json!([session("s1", 5, json!([message("a", "hi")]))]));
        upload(&mut current, value.clone(), &mut now);
        let mut s1 = decoded(&current, &key(SESSIONS, "s1"));
        now += 1;
        let hlc = Hlc::new(now, 0, "server").expect("stamp");
        s1.apply(
            Write {
                op: Op::Delete,
                hlc: &hlc,
                base_seq: None,
            },
            Seq(now),
            &mut Vec::new(),
        );
        current.records.insert(key(SESSIONS, "s1"), RawRecord::from(&s1));
        let plan = upload(&mut current, value.clone(), &mut now);
        assert_eq!(plan.stats.deleted, 2);
        assert!(plan.writes.iter().all(|w| w.key.collection != SESSIONS));
        assert!(
            contents(&current).is_empty(),
            "a deleted session's messages are not shown"
        );
        let backup = Backup::from_value(value).expect("valid");
        let options = UploadOptions {
            revive_deleted: true,
            ..UploadOptions::default()
        };
        let revival = plan_upload(backup, &current, options).expect("plans");
        apply(&mut current, &revival, &mut now);
        assert_eq!(contents(&current), ["hi"]);
    }

    #[test]
    fn config_is_merged_per_field_and_only_when_settings_sync() {
        let (mut current, mut now) = (Current::default(), 0);
        let value = state(json!([]));
        upload(&mut current, value.clone(), &mut now);
        assert!(!current.records.contains_key(&key(CONFIG, APP_CONFIG)));
        let options = UploadOptions {
            sync_settings: true,
            ..UploadOptions::default()
        };
        let sync = |current: &mut Current, value: Value, now: &mut u64| {
            let plan =
                plan_upload(Backup::from_value(value).expect("valid"), current, options).expect("plans");
            apply(current, &plan, now);
        };
        sync(&mut current, value.clone(), &mut now);
        let mut light = value.clone();
        light[APP_CONFIG]["theme"] = json!("light");
        sync(&mut current, light, &mut now);
        // A device that downloaded before the change re-uploads "dark" with a new field.
        let mut stale = value;
        stale[APP_CONFIG]["fontSize"] = json!(16);
        sync(&mut current, stale, &mut now);
        let render_options = RenderOptions { sync_settings: true };
        let config = &rendered(&current, render_options).state[APP_CONFIG];
        assert_eq!(config["theme"], "light");
        assert_eq!(config["fontSize"], 16);
        assert_eq!(
            rendered(&current, RenderOptions::default()).state[APP_CONFIG],
            json!({})
        );
    }

    #[test]
    fn a_download_orders_sessions_newest_first_and_messages_by_position() {
        let (mut current, mut now) = (Current::default(), 0);
        upload(
            &mut current,
            state(json!([
                session("old", 1, json!([message("a", "1"), message("b", "2")])),
                session("new", 9, json!([message("c", "3")])),
            ])),
            &mut now,
        );
        // A later upload reorders "old": the newest upload's order is the download's.
        upload(
            &mut current,
            state(json!([session(
                "old",
                1,
                json!([message("b", "2"), message("a", "1")])
            )])),
            &mut now,
        );
        let out = rendered(&current, RenderOptions::default());
        assert!(!out.is_empty);
        let sessions = out.state[CHAT_STORE]["sessions"]
            .as_array()
            .expect("sessions")
            .clone();
        assert_eq!(sessions[0]["id"], "new");
        let old: Vec<&str> = sessions[1]["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["id"].as_str().expect("id"))
            .collect();
        assert_eq!(old, ["b", "a"]);
        assert!(
            sessions[1]["messages"][0].get(SESSION_ID).is_none(),
            "mapping fields stay inside"
        );
        for store in [CHAT_STORE, ACCESS_CONTROL, APP_CONFIG, MASK_STORE, PROMPT_STORE] {
            assert!(out.state.get(store).is_some(), "{store} missing");
        }
        let empty = render(&[], RenderOptions::default(), Vec::new()).expect("renders");
        assert!(empty.is_empty);
        let empty: Value = serde_json::from_slice(&empty.json).expect("valid JSON");
        assert_eq!(empty[CHAT_STORE]["sessions"], json!([]));
        assert_eq!(empty[MASK_STORE]["masks"], json!({}));
    }

    /// What `createEmptySession` uploads from a device nobody has used yet.
    fn new_conversation(id: &str, topic: &str) -> Value {
        json!({"id": id, "topic": topic, "memoryPrompt": "", "messages": [], "lastUpdate": 7,
               "lastSummarizeIndex": 0, "stat": {"tokenCount": 0, "wordCount": 0, "charCount": 0},
               "mask": {"id": "x", "name": topic, "context": [], "syncGlobalConfig": true}})
    }

    fn session_ids(current: &Current) -> Vec<String> {
        let state = rendered(current, RenderOptions::default()).state;
        let mut ids: Vec<String> = state[CHAT_STORE]["sessions"]
            .as_array()
            .expect("sessions")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_owned())
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn untouched_new_conversations_are_neither_stored_nor_served() {
        let (mut current, mut now) = (Current::default(), 0);
        let mut renamed = new_conversation("renamed", "Trip to Rome");
        renamed["messages"] = json!([]);
        let mut with_memory = new_conversation("memory", "New Conversation");
        with_memory["memoryPrompt"] = json!("a summary");
        let mut from_mask = new_conversation("mask", "New Conversation");
        from_mask["mask"]["context"] = json!([{"role": "system", "content": "You are a poet"}]);
        let mut used = new_conversation("used", "新的聊天");
        used["messages"] = json!([message("a", "hello")]);
        let plan = upload(
            &mut current,
            state(json!([
                new_conversation("laptop-new", "New Conversation"),
                new_conversation("phone-new", "新的聊天"),
                renamed,
                with_memory,
                from_mask,
                used,
            ])),
            &mut now,
        );
        assert!(
            !plan.writes.iter().any(|w| w.key.id.ends_with("-new")),
            "{:?}",
            plan.writes
        );
        assert_eq!(session_ids(&current), ["mask", "memory", "renamed", "used"]);

        // One stored before this rule (or emptied since) is kept as it is, but not served.
        let mut stored_empty = Current::default();
        let mut early = state(json!([session("early", 1, json!([message("z", "gone soon")]))]));
        upload(&mut stored_empty, early.clone(), &mut now);
        early[CHAT_STORE]["sessions"][0] = new_conversation("early", "New Conversation");
        let plan = upload(&mut stored_empty, early, &mut now);
        assert!(plan.writes.iter().any(|w| w.key == key(SESSIONS, "early")));
        assert_eq!(
            session_ids(&stored_empty),
            ["early"],
            "its message is still there"
        );
        stored_empty.records.retain(|k, _| k.collection != MESSAGES);
        assert!(session_ids(&stored_empty).is_empty());
    }

    #[test]
    fn records_written_through_the_api_render_with_their_ids_and_import_again() {
        // A session and a message made through the records API carry no `id` field.
        let mut current = Current::default();
        let mut now = 0;
        for (collection, id, fields) in [
            (SESSIONS, "trip", json!({"topic": "Trip planning"})),
            (
                MESSAGES,
                "m9",
                json!({"session_id": "trip", "role": "user", "content": "hi"}),
            ),
        ] {
            let plan = UploadPlan {
                writes: vec![EntityWrite {
                    key: key(collection, id),
                    fields: fields.as_object().cloned().expect("object"),
                    expect: None,
                }],
                ..UploadPlan::default()
            };
            apply(&mut current, &plan, &mut now);
        }
        let state = rendered(&current, RenderOptions::default()).state;
        let session = &state[CHAT_STORE]["sessions"][0];
        assert_eq!(session["id"], "trip");
        assert_eq!(session["messages"][0]["id"], "m9");
        let backup = Backup::from_value(state).expect("an export imports again");
        assert_eq!(backup.sessions[0].id, "trip");
    }

    #[test]
    fn repeated_models_collapse_to_what_nextchat_reads() {
        let openai = |name: &str, available: bool| json!({"name": name, "available": available, "provider": {"id": "openai", "providerName": "OpenAI"}});
        let azure = json!({"name": "gpt-4o", "available": true, "provider": {"id": "azure"}});
        let mut config: Map<String, Value> = json!({"models": [
            openai("gpt-4o", true), openai("gpt-4o-mini", true), azure,
            openai("gpt-4o", false), openai("gpt-4o-mini", true),
            openai("gpt-4o", true), openai("o1", false),
        ]})
        .as_object()
        .cloned()
        .expect("object");
        collapse_models(&mut config);
        let models = config["models"].as_array().expect("models");
        let names: Vec<String> = models
            .iter()
            .map(|m| format!("{}@{}={}", m["name"], m["provider"]["id"], m["available"]))
            .collect();
        assert_eq!(
            names,
            [
                r#""gpt-4o"@"openai"=true"#,
                r#""gpt-4o-mini"@"openai"=true"#,
                r#""gpt-4o"@"azure"=true"#,
                r#""o1"@"openai"=false"#,
            ]
        );
        // An upload stores the collapsed list.
        let mut upload = state(json!([]));
        upload[APP_CONFIG]["models"] = json!([openai("a", true), openai("a", true), openai("a", false)]);
        let backup = Backup::from_value(upload).expect("valid");
        assert_eq!(backup.app_config["models"], json!([openai("a", false)]));
    }

    #[test]
    fn a_message_id_reused_in_another_session_gets_its_own_record() {
        let (mut current, mut now) = (Current::default(), 0);
        upload(
            &mut current,
            state(json!([
                session("s1", 1, json!([message("same", "one")])),
                session("s2", 2, json!([message("same", "two")])),
            ])),
            &mut now,
        );
        let mut all = contents(&current);
        all.sort();
        assert_eq!(all, ["one", "two"]);
    }

    /// Any JSON at all.
    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{0,8}|id|messages|sessions|masks|prompts", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever a NextChat door receives as a state: parsed and planned, or refused with
        /// a reason, never a panic; so too with the five stores present around any content.
        #[test]
        fn any_state_is_planned_or_refused(
            anything in arb_json(),
            chat in arb_json(),
            masks in arb_json(),
            prompts in arb_json(),
            config in arb_json(),
        ) {
            let mut stores = Map::new();
            stores.insert(CHAT_STORE.into(), chat);
            stores.insert(MASK_STORE.into(), masks);
            stores.insert(PROMPT_STORE.into(), prompts);
            stores.insert(APP_CONFIG.into(), config);
            stores.insert(ACCESS_CONTROL.into(), json!({}));
            let shaped = Value::Object(stores);
            for state in [anything, shaped] {
                let mut state = state;
                let _ = take_secrets(&mut state);
                if let Ok(backup) = Backup::from_value(state) {
                    let _ = plan_upload(backup, &Current::default(), UploadOptions::default());
                }
            }
        }
    }
}
