//! Sealing NextChat credentials at rest: XChaCha20-Poly1305 under a key derived from the
//! server's secrets key, a fresh random 192-bit nonce per value, and the owner and the
//! value's place as associated data, so a sealed value copied to another account or another
//! field does not open. The same seal keeps staged Upstash chunks (raw NextChat JSON, API
//! keys included) unreadable at rest.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use nextsync_core::ids::UserId;
use nextsync_core::secret::Secret;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;

const NONCE_LEN: usize = 24;

pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("no randomness for a nonce")]
    Random,
    #[error("a sealed value does not open with this server's secrets key")]
    Open,
}

impl Sealer {
    /// The key is SHA-256 of the configured secret (at least 32 characters of it).
    pub fn new(secret: &Secret) -> Self {
        let digest = Sha256::new()
            .chain_update(b"nextsync nextchat secrets v1\0")
            .chain_update(secret.expose().as_bytes())
            .finalize();
        let key = Key::try_from(&digest[..]).expect("SHA-256 is 32 bytes");
        Self {
            cipher: XChaCha20Poly1305::new(&key),
        }
    }

    /// nonce ‖ ciphertext of the value's JSON.
    pub fn seal(&self, user: UserId, path: &str, value: &Value) -> Result<Vec<u8>, SealError> {
        let plaintext = serde_json::to_vec(value).unwrap_or_default();
        self.seal_bytes(user, path, &plaintext)
    }

    pub fn open(&self, user: UserId, path: &str, sealed: &[u8]) -> Result<Value, SealError> {
        let plaintext = self.open_bytes(user, path, sealed)?;
        serde_json::from_slice(&plaintext).map_err(|_| SealError::Open)
    }

    /// nonce ‖ ciphertext of `plaintext`, bound to `user` and `place` (a secret's JSON path,
    /// or [`staging_place`] for a staged chunk).
    pub fn seal_bytes(&self, user: UserId, place: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let aad = associated_data(user, place);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    pub fn open_bytes(&self, user: UserId, place: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = XNonce::try_from(nonce).map_err(|_| SealError::Open)?;
        let aad = associated_data(user, place);
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| SealError::Open)
    }
}

/// Where a staged Upstash chunk is bound: a sealed chunk opens only as the same chunk of the
/// same backup name. A secret's place is a JSON array (`[…]`), so the two never coincide.
/// Part of the at-rest format: never change it.
pub fn staging_place(name: &str, index: i64) -> String {
    format!("upstash-staging\0{name}\0{index}")
}

fn associated_data(user: UserId, path: &str) -> Vec<u8> {
    let mut aad = user.as_uuid().as_bytes().to_vec();
    aad.extend_from_slice(path.as_bytes());
    aad
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sealed_values_open_only_for_their_owner_and_place() {
        let sealer = Sealer::new(&"k".repeat(32).parse().expect("secret"));
        let user = UserId::new();
        let value = json!("sk-live-0123456789");
        let sealed = sealer
            .seal(user, "[\"access-control\",\"openaiApiKey\"]", &value)
            .expect("seal");
        assert!(
            !sealed.windows(10).any(|w| w == b"sk-live-01"),
            "plaintext in the sealed bytes"
        );
        assert_eq!(
            sealer
                .open(user, "[\"access-control\",\"openaiApiKey\"]", &sealed)
                .expect("open"),
            value
        );
        assert!(
            sealer
                .open(UserId::new(), "[\"access-control\",\"openaiApiKey\"]", &sealed)
                .is_err()
        );
        assert!(
            sealer
                .open(user, "[\"access-control\",\"googleApiKey\"]", &sealed)
                .is_err()
        );
        let other = Sealer::new(&"j".repeat(32).parse().expect("secret"));
        assert!(
            other
                .open(user, "[\"access-control\",\"openaiApiKey\"]", &sealed)
                .is_err()
        );
        // Two seals of one value differ (fresh nonces).
        assert_ne!(
            sealed,
            sealer
                .seal(user, "[\"access-control\",\"openaiApiKey\"]", &value)
                .expect("seal")
        );
    }
}
