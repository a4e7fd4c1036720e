//! JSON bodies of the `/v1` API. The field names are a wire contract other clients build
//! against: rename nothing here; add fields instead.

use crate::ids::{AppPasswordId, DeviceId, UserId};
pub use crate::secret::Secret;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Every error response: `{"error":{"code":"snake_case","message":"…"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorDetail {
    /// Stable, machine-readable, snake_case.
    pub code: String,
    /// For people; wording may change.
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegisterRequest {
    pub email: String,
    pub password: Secret,
    /// Shown in the device list; defaults to "unnamed device".
    #[serde(default)]
    pub device_name: Option<String>,
    /// What this device is (shown in the device list); `other` when absent.
    #[serde(default)]
    pub device_kind: DeviceKind,
    /// Keep the refresh token in an `HttpOnly` cookie instead of the answer (web pages).
    #[serde(default)]
    pub refresh_cookie: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LoginRequest {
    pub email: String,
    pub password: Secret,
    #[serde(default)]
    pub device_name: Option<String>,
    /// What this device is (shown in the device list); `other` when absent.
    #[serde(default)]
    pub device_kind: DeviceKind,
    /// Keep the refresh token in an `HttpOnly` cookie instead of the answer (web pages).
    #[serde(default)]
    pub refresh_cookie: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefreshRequest {
    /// Absent: the refresh token is the sign-in cookie (web pages on this server's origin).
    #[serde(default)]
    pub refresh_token: Option<Secret>,
}

/// The answer to register, login and refresh.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub access_token: Secret,
    /// Single use: every refresh answers with a new one. Absent when it went into the
    /// sign-in cookie (`refresh_cookie`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Secret>,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ForgotPasswordRequest {
    pub email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResetPasswordRequest {
    pub token: Secret,
    pub new_password: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangePasswordRequest {
    pub current_password: Secret,
    pub new_password: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Me {
    pub user_id: UserId,
    pub email: String,
    pub created_at: Timestamp,
}

/// What a signed-in device is, as its client says at sign-in. A wire contract.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    /// The web app.
    Browser,
    /// The `nextsync` command line client.
    Cli,
    /// A native integration of the client SDK.
    App,
    #[default]
    Other,
}

impl DeviceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Browser => "browser",
            Self::Cli => "cli",
            Self::App => "app",
            Self::Other => "other",
        }
    }

    /// The stored name back; anything unknown is `Other`.
    pub fn from_stored(text: &str) -> Self {
        match text {
            "browser" => Self::Browser,
            "cli" => Self::Cli,
            "app" => Self::App,
            _ => Self::Other,
        }
    }
}

/// What anyone may know of the server before signing in (`GET /v1/server`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ServerInfo {
    /// `open`, or `closed` (only the operator makes accounts).
    pub registration: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeleteMeRequest {
    pub password: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceView {
    pub device_id: DeviceId,
    pub name: String,
    pub kind: DeviceKind,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    /// True for the device whose token made this request.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateAppPasswordRequest {
    pub label: String,
    /// The account password; needed unless this device signed in within the last 10 minutes
    /// (an app password outlives the access token that made it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
}

/// The only time an app password is shown: it is stored hashed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppPasswordCreated {
    pub id: AppPasswordId,
    pub label: String,
    pub password: Secret,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppPasswordView {
    pub id: AppPasswordId,
    pub label: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppPasswordList {
    pub app_passwords: Vec<AppPasswordView>,
}

// ---- sync: push, pull, conflicts, records ----

use crate::hlc::Hlc;
use crate::ids::Seq;
use crate::sync::Side;
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum OpName {
    Upsert,
    Delete,
}

/// One change a client pushes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MutationIn {
    /// Client-made, unique per user; a mutation id seen before is answered `duplicate`.
    pub mutation_id: String,
    pub collection: String,
    pub id: String,
    pub op: OpName,
    /// The fields to set (upsert only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub fields: Option<Map<String, Value>>,
    /// The write's stamp: `"<ms:15>-<counter:5>-<node>"`.
    pub hlc: String,
    /// The highest seq the client had pulled when it made the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_seq: Option<Seq>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushRequest {
    pub mutations: Vec<MutationIn>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MutationStatus {
    Applied,
    Duplicate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MutationResult {
    pub mutation_id: String,
    pub status: MutationStatus,
    /// The seq at which the mutation's record stands after it (read-your-writes: keep the
    /// optimistic state until a pull has passed it).
    pub seq: Seq,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PushResponse {
    pub results: Vec<MutationResult>,
    /// Conflicts this push created.
    pub conflicts: Vec<ConflictView>,
    /// Marks the highest seq this push wrote. Not a replacement for the pull cursor: changes of
    /// other devices below it may not have been pulled yet.
    pub cursor: String,
}

/// A record as the feed and the records API show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecordView {
    pub collection: String,
    pub id: String,
    /// Visible fields (empty when deleted).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub fields: Map<String, Value>,
    pub deleted: bool,
    pub seq: Seq,
    /// The stamp of each visible field, so a client's clock moves past what it has seen.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub stamps: Map<String, Value>,
    /// The deletion's stamp, when the record has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tombstone: Option<Hlc>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PullResponse {
    /// In seq order, each record once, at its latest state.
    pub changes: Vec<RecordView>,
    /// Pass as `since` to continue.
    pub cursor: String,
    pub has_more: bool,
}

/// A recent-first first page (`GET /v1/sync/recent`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecentResponse {
    /// The newest live records of the collection, newest first, then their children in seq
    /// order. Each comes again, at its latest state, in the feed.
    pub records: Vec<RecordView>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConflictView {
    pub conflict_id: String,
    pub collection: String,
    pub id: String,
    pub field: String,
    pub kept: Side,
    pub lost: Side,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConflictList {
    pub conflicts: Vec<ConflictView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    Kept,
    Lost,
}

/// Either `{"choose":"kept"|"lost"}` or `{"value": …}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResolveRequest {
    #[serde(default)]
    pub choose: Option<Choice>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub value: Option<Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PutRecordRequest {
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub fields: Map<String, Value>,
}

// ---- trash and point-in-time restore ----

/// A deleted record, kept in the trash (`GET /v1/trash`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrashItem {
    pub collection: String,
    pub id: String,
    /// The record's visible fields when it was deleted.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub fields: Map<String, Value>,
    pub deleted_at: Timestamp,
    /// The delete's place in the feed.
    pub seq: Seq,
    /// Records deleted by one write share it (a conversation and its messages, say):
    /// `POST …/restore?together=true` brings them all back.
    pub batch: Seq,
    /// When the trash forgets it.
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrashPage {
    /// Most recently deleted first.
    pub items: Vec<TrashItem>,
    /// Pass as `before` for the next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Seq>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrashRestored {
    /// The records as they are now, back on every device through the feed.
    pub restored: Vec<RecordView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrashPurged {
    /// How many records left the trash for good.
    pub purged: u64,
}

/// `POST /v1/restore`: bring the account (or one collection, or one record) back to how it
/// was at a moment, as new writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestoreRequest {
    pub at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    /// Needs `collection`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Only say what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a restore does to one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RestoreAction {
    /// Deleted since the moment: comes back.
    Restore,
    /// Changed since: its values return to the old ones.
    Revert,
    /// Created since: moves to the trash.
    Trash,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestoreChange {
    pub collection: String,
    pub id: String,
    pub action: RestoreAction,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestoreResponse {
    pub at: Timestamp,
    pub dry_run: bool,
    pub restored: u64,
    pub reverted: u64,
    pub trashed: u64,
    /// The records concerned, up to 1,000 of them.
    pub changes: Vec<RestoreChange>,
    /// More records are concerned than `changes` lists.
    pub truncated: bool,
    /// The earliest moment a restore can reach now.
    pub earliest: Timestamp,
}

// ---- sync health ----

/// `GET /v1/sync/digest`: the account's digests per collection, as of `cursor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DigestResponse {
    /// The feed position the digests hold at: a replica pulled to exactly here must match.
    pub cursor: String,
    /// Collections with live records (an absent one has none).
    pub collections: Vec<CollectionDigest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CollectionDigest {
    pub collection: String,
    /// XOR of the live records' hashes (crates/core/src/digest.rs).
    pub digest: crate::digest::Digest,
    /// Live records.
    pub records: u64,
}

/// `GET /v1/sync/digest/{collection}?buckets=N`: the collection split by a hash of the id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BucketDigests {
    pub collection: String,
    pub cursor: String,
    /// One per bucket, in bucket order.
    pub buckets: Vec<crate::digest::Digest>,
}

/// `GET /v1/sync/digest/{collection}/records?buckets=N&bucket=i,j`: every record of those
/// buckets, deleted ones included, as the feed would show them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BucketRecords {
    pub cursor: String,
    pub records: Vec<RecordView>,
}

// ---- the WebSocket feed (`GET /v1/sync/ws`): JSON text frames tagged by `type` ----

/// Protocol version announced in `welcome`.
pub const WS_PROTOCOL: u32 = 1;

/// Frames a client sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame: who (unless the upgrade carried `Authorization: Bearer`) and from where.
    Hello {
        #[serde(default)]
        access_token: Option<Secret>,
        #[serde(default)]
        cursor: Option<String>,
    },
    /// Same body and answer as `POST /v1/sync/push`.
    Push {
        mutations: Vec<MutationIn>,
    },
    /// A fresh access token for the same device, before the current one expires.
    Auth {
        access_token: Secret,
    },
    Ping,
    /// A record being written (an AI reply streaming in), relayed to the account's other
    /// sockets and never stored: `fields` are what the final write will hold so far; `null`
    /// ends the draft without a write. The record's write replaces the draft.
    Draft {
        collection: String,
        id: String,
        #[serde(default)]
        fields: Option<Map<String, Value>>,
        /// The seq of the record the draft builds on, when the sender knows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq_hint: Option<Seq>,
    },
}

/// Frames the server sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        cursor: String,
        protocol: u32,
        capabilities: Vec<String>,
    },
    /// In seq order, no gap, no duplicate; `cursor` is where this frame leaves the feed.
    Changes {
        changes: Vec<RecordView>,
        cursor: String,
    },
    PushResult(PushResponse),
    AuthOk {
        expires_in: u64,
    },
    Pong,
    /// Another device's draft (see [`ClientFrame::Draft`]), with who is writing it.
    Draft {
        collection: String,
        id: String,
        fields: Option<Map<String, Value>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq_hint: Option<Seq>,
        device_id: String,
        device_name: String,
    },
    /// After an error about the connection itself (bad hello, expired or revoked token) the
    /// server closes the socket.
    Error {
        code: String,
        message: String,
    },
}

// NextChat doors.

use crate::ids::SnapshotId;

/// How the NextChat doors treat an account's settings (`GET|PUT /v1/nextchat/settings`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NextChatSettings {
    /// Sync `app-config` and the non-secret part of `access-control`. Off: downloads carry
    /// `{}` for both, so no device's settings are overwritten.
    pub sync_settings: bool,
    /// Also sync API keys and other credentials, sealed at rest with the server's key.
    /// Turning it off deletes the kept ones.
    pub sync_secrets: bool,
}

/// A change to [`NextChatSettings`]; absent members stay as they are.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NextChatSettingsUpdate {
    #[serde(default)]
    pub sync_settings: Option<bool>,
    #[serde(default)]
    pub sync_secrets: Option<bool>,
}

/// One kept upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotView {
    pub snapshot_id: SnapshotId,
    pub created_at: Timestamp,
    /// `webdav`, `upstash` or `import`.
    pub source: String,
    /// The label of the app password (the NextChat installation) that uploaded it; absent for
    /// imports and once that app password is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Size of the state's JSON.
    pub bytes: i64,
    pub sessions: i64,
    pub messages: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotList {
    /// Newest first; at most the last 20 accepted uploads.
    pub snapshots: Vec<SnapshotView>,
}

/// What merging a NextChat state (import, restore) did, in entities.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MergeSummary {
    /// Entities the account did not have.
    pub created: u32,
    /// Novel versions of entities it had.
    pub edited: u32,
    /// Versions seen before, or partial replies under finished ones: ignored.
    pub stale: u32,
    /// Entities deleted through nextsync: ignored.
    pub deleted: u32,
}
