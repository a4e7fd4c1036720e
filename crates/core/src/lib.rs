//! nextsync's pure domain: the types every other crate speaks, with no I/O and no async.
//!
//! - [`ids`]: newtypes for every identifier that crosses a crate border.
//! - [`time`]: the one timestamp type, stored as Unix milliseconds, shown as RFC 3339.
//! - [`account`]: email and password rules for accounts.
//! - [`secret`]: a string whose `Debug` never shows it.
//! - [`hlc`]: hybrid logical clock stamps and the device clock.
//! - [`record`]: records as a per-field LWW CRDT with tombstones, and their merge.
//! - [`sync`]: applying one write to a stored record: seqs and conflicts.
//! - [`history`]: undo entries of each visible change: the trash and point-in-time restore.
//! - [`cursor`]: the opaque feed cursor with its epoch.
//! - [`digest`]: order-independent digests of records, for verifying replicas.
//! - [`e2ee`]: the reserved keyring record of end-to-end encrypted accounts.
//! - [`push`]: validating a push and planning it (seqs, duplicates, preconditions).
//! - [`nextchat`]: NextChat's synced state taken apart into records and rendered back.
//! - [`api`]: JSON bodies of the `/v1` wire protocol (the OpenAPI document is derived from them).

pub mod account;
pub mod api;
pub mod cursor;
pub mod digest;
pub mod e2ee;
pub mod history;
pub mod hlc;
pub mod ids;
pub mod nextchat;
pub mod push;
pub mod record;
pub mod secret;
pub mod sync;
pub mod time;
