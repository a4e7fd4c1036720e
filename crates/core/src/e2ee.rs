//! What the server knows of end-to-end encryption: only that an account uses it. The keyring
//! record (its passphrase-wrapped data key, the one record clients keep in clear) lives at
//! [`KEYS_COLLECTION`]/[`KEYRING_ID`]; an account with a live keyring has its values in the
//! encrypted form ([`VALUE_PREFIX`]…), which the NextChat doors cannot merge or serve. The
//! format is in docs/E2EE.md; these names are part of it and never change.

/// The reserved collection of the keyring.
pub const KEYS_COLLECTION: &str = "nextsync-keys";
/// The keyring's record id.
pub const KEYRING_ID: &str = "keyring";
/// How an encrypted value (format version 1) starts.
pub const VALUE_PREFIX: &str = "nse1:";
