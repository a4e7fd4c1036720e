//! End-to-end encryption of field values. The format is a contract with every other client
//! (a browser implements it with WebCrypto plus an Argon2id build): it is written down in
//! docs/E2EE.md and must never change; a new format gets a new prefix and keyring version.
//!
//! - The **data key** (32 random bytes) encrypts everything; it never leaves a device
//!   unwrapped. The **keyring** record (`nextsync-keys/keyring`, the one record kept in clear)
//!   holds it wrapped with AES-256-GCM under a key derived from the passphrase with Argon2id,
//!   so changing the passphrase re-wraps one key and re-encrypts nothing. The wrap's GCM tag
//!   is the key check: a wrong passphrase fails to unwrap, never yields a wrong key.
//! - A **field value** becomes the string `"nse1:" + base64url(nonce ‖ ciphertext ‖ tag)`:
//!   AES-256-GCM under `HKDF-SHA256(data key, info "nextsync:e2ee:v1:fields")`, a fresh
//!   random 96-bit nonce per value, the value's JSON text as plaintext, and
//!   `"nextsync:e2ee:v1\0" collection "\0" id "\0" field` as associated data, so the server
//!   cannot move a value to another field or record unnoticed.
//! - Collection names, record ids, field names and stamps stay clear: the server merges
//!   without reading values.

use crate::error::Error;
use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

pub use nextsync_core::e2ee::{KEYRING_ID, KEYS_COLLECTION, VALUE_PREFIX as PREFIX};
const KEYRING_VERSION: u64 = 1;
const WRAP_AAD: &[u8] = b"nextsync:e2ee:v1:wrap";
const FIELDS_INFO: &[u8] = b"nextsync:e2ee:v1:fields";
const KEY_ID_INFO: &[u8] = b"nextsync:e2ee:v1:key-id";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Argon2id cost for the passphrase: 64 MiB, 3 passes (RFC 9106's second recommendation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            passes: 3,
            lanes: 1,
        }
    }
}

/// The unwrapped data key, and the field key derived from it.
#[derive(Clone)]
pub struct DataKey {
    raw: [u8; 32],
    fields: Aes256Gcm,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataKey({})", self.id())
    }
}

impl DataKey {
    pub fn generate() -> Result<Self, Error> {
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| Error::Crypto(format!("no randomness: {e}")))?;
        Ok(Self::from_raw(raw))
    }

    fn from_raw(raw: [u8; 32]) -> Self {
        let fields = Aes256Gcm::new(&Key::<Aes256Gcm>::from(hkdf32(&raw, FIELDS_INFO)));
        Self { raw, fields }
    }

    /// The key as kept on this device (base64url).
    pub fn export(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.raw)
    }

    pub fn import(text: &str) -> Result<Self, Error> {
        let raw: [u8; 32] = URL_SAFE_NO_PAD
            .decode(text)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| Error::Crypto("the stored encryption key is damaged".into()))?;
        Ok(Self::from_raw(raw))
    }

    /// A public name of the key, to tell keys apart without revealing them.
    pub fn id(&self) -> String {
        URL_SAFE_NO_PAD.encode(&hkdf32(&self.raw, KEY_ID_INFO)[..16])
    }

    /// Wraps this key under `passphrase`: the keyring record's fields.
    pub fn wrap(&self, passphrase: &str, params: KdfParams) -> Result<Map<String, Value>, Error> {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| Error::Crypto(format!("no randomness: {e}")))?;
        let kek = passphrase_key(passphrase, &salt, params)?;
        let sealed = seal(&kek, &self.raw, WRAP_AAD)?;
        let fields = json!({
            "version": KEYRING_VERSION,
            "kdf": {
                "alg": "argon2id", "v": 19,
                "m": params.memory_kib, "t": params.passes, "p": params.lanes,
                "salt": URL_SAFE_NO_PAD.encode(salt),
            },
            "wrapped_key": URL_SAFE_NO_PAD.encode(sealed),
            "key_id": self.id(),
        });
        Ok(fields.as_object().cloned().unwrap_or_default())
    }

    /// Unwraps the key of a keyring record with `passphrase`.
    pub fn unwrap(keyring: &Map<String, Value>, passphrase: &str) -> Result<Self, Error> {
        let damaged = |what: &str| Error::Crypto(format!("the keyring record is damaged ({what})"));
        if keyring.get("version").and_then(Value::as_u64) != Some(KEYRING_VERSION) {
            return Err(Error::Crypto(
                "the keyring was made by a newer nextsync; upgrade this client".into(),
            ));
        }
        let kdf = keyring.get("kdf").ok_or_else(|| damaged("kdf"))?;
        if kdf["alg"] != "argon2id" || kdf["v"] != 19 {
            return Err(damaged("unknown kdf"));
        }
        let number = |name: &str| {
            kdf[name]
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| damaged(name))
        };
        let params = KdfParams {
            memory_kib: number("m")?,
            passes: number("t")?,
            lanes: number("p")?,
        };
        let salt = kdf["salt"]
            .as_str()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or_else(|| damaged("salt"))?;
        let sealed = keyring
            .get("wrapped_key")
            .and_then(Value::as_str)
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .ok_or_else(|| damaged("wrapped_key"))?;
        let kek = passphrase_key(passphrase, &salt, params)?;
        let raw = open(&kek, &sealed, WRAP_AAD).map_err(|_| Error::WrongPassphrase)?;
        let raw: [u8; 32] = raw.try_into().map_err(|_| damaged("key length"))?;
        Ok(Self::from_raw(raw))
    }

    /// Encrypts every value of `fields` in place.
    pub fn encrypt_fields(
        &self,
        collection: &str,
        id: &str,
        fields: &mut Map<String, Value>,
    ) -> Result<(), Error> {
        for (name, value) in fields.iter_mut() {
            let plain = serde_json::to_vec(value)?;
            let sealed = seal(&self.fields, &plain, &aad(collection, id, name))?;
            *value = Value::String(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(sealed)));
        }
        Ok(())
    }

    /// Decrypts every encrypted value of `fields` in place; values written in clear (before
    /// encryption was enabled, or by a client without it) stay as they are.
    pub fn decrypt_fields(
        &self,
        collection: &str,
        id: &str,
        fields: &mut Map<String, Value>,
    ) -> Result<(), Error> {
        for (name, value) in fields.iter_mut() {
            let Some(text) = value.as_str().and_then(|s| s.strip_prefix(PREFIX)) else {
                continue;
            };
            let sealed = URL_SAFE_NO_PAD.decode(text).map_err(|_| {
                Error::Crypto(format!(
                    "{collection}/{id} field {name:?} is not valid ciphertext"
                ))
            })?;
            let plain = open(&self.fields, &sealed, &aad(collection, id, name)).map_err(|_| {
                Error::Crypto(format!(
                    "{collection}/{id} field {name:?} does not decrypt with this account's key \
                     (written under another key, or altered)"
                ))
            })?;
            *value = serde_json::from_slice(&plain)?;
        }
        Ok(())
    }
}

/// True when a value is in the encrypted form.
pub fn is_encrypted(value: &Value) -> bool {
    value.as_str().is_some_and(|s| s.starts_with(PREFIX))
}

fn aad(collection: &str, id: &str, field: &str) -> Vec<u8> {
    let mut aad = b"nextsync:e2ee:v1\0".to_vec();
    aad.extend_from_slice(collection.as_bytes());
    aad.push(0);
    aad.extend_from_slice(id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(field.as_bytes());
    aad
}

fn hkdf32(ikm: &[u8], info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's 8,160-byte limit: expand cannot fail.
    let _ = hkdf::Hkdf::<sha2::Sha256>::new(None, ikm).expand(info, &mut out);
    out
}

fn passphrase_key(passphrase: &str, salt: &[u8], params: KdfParams) -> Result<Aes256Gcm, Error> {
    let params = argon2::Params::new(params.memory_kib, params.passes, params.lanes, Some(32))
        .map_err(|e| Error::Crypto(format!("Argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    argon
        .hash_password_into(passphrase.as_bytes(), salt, &mut key)
        .map_err(|e| Error::Crypto(format!("Argon2: {e}")))?;
    Ok(Aes256Gcm::new(&Key::<Aes256Gcm>::from(key)))
}

fn seal(key: &Aes256Gcm, plain: &[u8], aad: &[u8]) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| Error::Crypto(format!("no randomness: {e}")))?;
    let sealed = key
        .encrypt(&Nonce::from(nonce), Payload { msg: plain, aad })
        .map_err(|_| Error::Crypto("encryption failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open(key: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, ()> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(());
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(drop)?;
    key.decrypt(&Nonce::from(nonce), Payload { msg: body, aad })
        .map_err(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cheap parameters: these tests are about the format, not the cost.
    const FAST: KdfParams = KdfParams {
        memory_kib: 64,
        passes: 1,
        lanes: 1,
    };

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    #[test]
    fn values_round_trip_and_look_like_nothing() {
        let key = DataKey::generate().expect("key");
        let original = fields(json!({"title": "Trip plans", "n": 3, "tags": ["a"], "none": null}));
        let mut sealed = original.clone();
        key.encrypt_fields("sessions", "s1", &mut sealed)
            .expect("encrypt");
        for value in sealed.values() {
            assert!(is_encrypted(value), "{value}");
        }
        assert!(!serde_json::to_string(&sealed).expect("json").contains("Trip"));
        key.decrypt_fields("sessions", "s1", &mut sealed)
            .expect("decrypt");
        assert_eq!(sealed, original);
    }

    #[test]
    fn a_value_moved_to_another_field_or_record_does_not_decrypt() {
        let key = DataKey::generate().expect("key");
        let mut sealed = fields(json!({"title": "secret"}));
        key.encrypt_fields("sessions", "s1", &mut sealed)
            .expect("encrypt");
        let mut moved = fields(json!({ "topic": sealed["title"].clone() }));
        assert!(key.decrypt_fields("sessions", "s1", &mut moved).is_err());
        let mut elsewhere = sealed.clone();
        assert!(key.decrypt_fields("sessions", "s2", &mut elsewhere).is_err());
        let other = DataKey::generate().expect("key");
        assert!(other.decrypt_fields("sessions", "s1", &mut sealed).is_err());
    }

    #[test]
    fn the_passphrase_unwraps_the_key_and_a_wrong_one_is_refused() {
        let key = DataKey::generate().expect("key");
        let keyring = key.wrap("correct horse", FAST).expect("wrap");
        assert_eq!(keyring["key_id"], json!(key.id()));
        let back = DataKey::unwrap(&keyring, "correct horse").expect("unwrap");
        assert_eq!(back.export(), key.export());
        assert!(matches!(
            DataKey::unwrap(&keyring, "wrong horse"),
            Err(Error::WrongPassphrase)
        ));
        // A new passphrase wraps the same key: nothing else changes.
        let rewrapped = key.wrap("new passphrase", FAST).expect("wrap");
        assert_ne!(rewrapped["wrapped_key"], keyring["wrapped_key"]);
        assert_eq!(
            DataKey::unwrap(&rewrapped, "new passphrase")
                .expect("unwrap")
                .id(),
            key.id()
        );
    }

    #[test]
    fn clear_values_pass_through_decryption() {
        let key = DataKey::generate().expect("key");
        let mut mixed = fields(json!({"old": "written before encryption"}));
        key.decrypt_fields("sessions", "s1", &mut mixed).expect("decrypt");
        assert_eq!(mixed["old"], "written before encryption");
    }
}
