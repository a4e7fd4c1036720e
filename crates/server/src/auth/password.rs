//! Argon2id password hashing, off the async runtime and bounded: every hash needs ~19 MiB and
//! tens of milliseconds of a core, so at most a few run at once and a login flood queues
//! instead of exhausting memory.

use crate::error::ApiError;
use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use nextsync_core::secret::Secret;
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against when the account does not exist,
    /// so "no such user" costs the same time as "wrong password".
    dummy_hash: Arc<str>,
}

impl Passwords {
    pub fn new() -> anyhow::Result<Self> {
        let parallel = std::thread::available_parallelism().map_or(2, |n| n.get()) * 2;
        let mut random = [0u8; 24];
        getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let dummy = Argon2::default()
            .hash_password(&random)
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
            .to_string();
        Ok(Self {
            permits: Arc::new(Semaphore::new(parallel)),
            dummy_hash: dummy.into(),
        })
    }

    /// Argon2id PHC string of `password`, with a fresh salt.
    pub async fn hash(&self, password: &Secret) -> Result<Secret, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let password = password.clone();
        tokio::task::spawn_blocking(move || {
            Argon2::default()
                .hash_password(password.expose().as_bytes())
                .map(|hash| Secret::new(hash.to_string()))
                .map_err(|e| ApiError::internal(anyhow::anyhow!("argon2: {e}")))
        })
        .await?
    }

    /// Whether `password` matches `stored`; `None` verifies against the dummy hash and returns
    /// false, taking the same time.
    pub async fn verify(&self, password: &Secret, stored: Option<&Secret>) -> Result<bool, ApiError> {
        let _permit = self.permits.acquire().await.map_err(ApiError::internal)?;
        let password = password.clone();
        let known = stored.is_some();
        let stored: Arc<str> = match stored {
            Some(hash) => hash.expose().into(),
            None => self.dummy_hash.clone(),
        };
        let matches = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&stored) else {
                return false;
            };
            Argon2::default()
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok()
        })
        .await?;
        Ok(known && matches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let passwords = Passwords::new().expect("init");
        let hash = passwords
            .hash(&Secret::new("correct horse battery"))
            .await
            .expect("hash");
        assert!(hash.expose().starts_with("$argon2id$"));
        assert!(
            passwords
                .verify(&Secret::new("correct horse battery"), Some(&hash))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify(&Secret::new("wrong horse battery"), Some(&hash))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify(&Secret::new("correct horse battery"), None)
                .await
                .expect("verify")
        );
    }
}
