//! The two kinds of bearer secrets.
//!
//! - Access tokens: short-lived JWTs (`sub` user, `did` device, `iat`, `exp`, `jti`, header
//!   `kid`) signed with the server's HMAC key. Only the configured algorithm and our own `kid`
//!   verify; `alg: none`, tampering and expiry are refused.
//! - Opaque tokens (refresh, password reset, app password): `<prefix><user-id hex>_<256 random
//!   bits, base64url>`. The user id lets the store find the row by its key (every key is led
//!   by user_id); only the SHA-256 of the whole string is stored.
//!
//! Both formats are a wire contract: existing tokens must keep verifying across upgrades.

use crate::config::JwtAlgorithm;
use crate::error::ApiError;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use nextsync_core::ids::{DeviceId, TokenHash, UserId};
use nextsync_core::secret::Secret;
use nextsync_core::time::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use uuid::Uuid;

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: UserId,
    pub did: DeviceId,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// Signs and verifies access tokens.
pub struct AccessTokens {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for AccessTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokens")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl AccessTokens {
    pub fn new(key: &Secret, algorithm: JwtAlgorithm, ttl: Duration) -> Self {
        let algorithm = match algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::HS384 => Algorithm::HS384,
            JwtAlgorithm::HS512 => Algorithm::HS512,
        };
        let key = key.expose().as_bytes();
        // The kid names the key without revealing it, so a token signed by another key (an
        // older install, another deployment) is refused before its signature is even tried.
        let kid = hex(&Sha256::digest([b"nextsync-kid:".as_slice(), key].concat())[..8]);
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.set_required_spec_claims(&["exp", "iat", "sub"]);
        Self {
            kid,
            algorithm,
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user: UserId, device: DeviceId, now: Timestamp) -> Result<Secret, ApiError> {
        let claims = Claims {
            sub: user,
            did: device,
            iat: now.as_secs(),
            exp: now.as_secs() + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2),
            jti: Uuid::new_v4().simple().to_string(),
        };
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .map(Secret::new)
            .map_err(ApiError::internal)
    }

    /// Checks signature, algorithm, `kid` and expiry. Whether the device is still signed in is
    /// the caller's second check.
    pub fn verify(&self, token: &str) -> Result<Claims, ApiError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid_token())?;
        if header.alg != self.algorithm || header.kid.as_deref() != Some(self.kid.as_str()) {
            return Err(invalid_token());
        }
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature) => Err(
                ApiError::unauthorized("token_expired", "access token has expired; refresh it"),
            ),
            Err(_) => Err(invalid_token()),
        }
    }
}

fn invalid_token() -> ApiError {
    ApiError::unauthorized("invalid_token", "access token is invalid")
}

/// What an opaque token is for; the prefix keeps a reset token from being taken for a refresh
/// token and makes a leaked one recognisable (secret scanners match on prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Refresh,
    PasswordReset,
    AppPassword,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Refresh => "nsr_",
            TokenKind::PasswordReset => "nsp_",
            TokenKind::AppPassword => "nsa_",
        }
    }
}

/// Makes a fresh opaque token for `user`: the string to hand out once, and the hash to store.
pub fn new_opaque(kind: TokenKind, user: UserId) -> Result<(Secret, TokenHash), ApiError> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| ApiError::internal(anyhow::anyhow!("no randomness: {e}")))?;
    let token = format!(
        "{}{}_{}",
        kind.prefix(),
        user.as_uuid().simple(),
        URL_SAFE_NO_PAD.encode(random)
    );
    let hash = hash_token(&token);
    Ok((Secret::new(token), hash))
}

/// Splits a presented opaque token into the user it claims and its hash; `None` when it is not
/// a well-formed token of this kind.
pub fn parse_opaque(kind: TokenKind, token: &str) -> Option<(UserId, TokenHash)> {
    let rest = token.strip_prefix(kind.prefix())?;
    let (user, secret) = rest.split_once('_')?;
    if user.len() != 32 || secret.len() != 43 {
        return None;
    }
    let user = UserId::from_uuid(Uuid::try_parse(user).ok()?);
    Some((user, hash_token(token)))
}

fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> AccessTokens {
        AccessTokens::new(
            &Secret::new("k".repeat(64)),
            JwtAlgorithm::HS256,
            Duration::from_secs(900),
        )
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let t = tokens();
        let (user, device) = (UserId::new(), DeviceId::new());
        let token = t.issue(user, device, Timestamp::now()).expect("issue");
        let claims = t.verify(token.expose()).expect("verify");
        assert_eq!((claims.sub, claims.did), (user, device));
    }

    #[test]
    fn a_token_of_another_key_is_refused() {
        let other = AccessTokens::new(
            &Secret::new("o".repeat(64)),
            JwtAlgorithm::HS256,
            Duration::from_secs(900),
        );
        let token = other
            .issue(UserId::new(), DeviceId::new(), Timestamp::now())
            .expect("issue");
        assert_eq!(
            tokens().verify(token.expose()).expect_err("refused").code(),
            "invalid_token"
        );
    }

    #[test]
    fn an_expired_token_is_refused_as_expired() {
        let t = tokens();
        let token = t
            .issue(UserId::new(), DeviceId::new(), Timestamp::now().minus_secs(901))
            .expect("issue");
        assert_eq!(
            t.verify(token.expose()).expect_err("refused").code(),
            "token_expired"
        );
    }

    #[test]
    fn opaque_tokens_round_trip_and_keep_their_kind() {
        let user = UserId::new();
        let (token, hash) = new_opaque(TokenKind::Refresh, user).expect("token");
        assert_eq!(
            parse_opaque(TokenKind::Refresh, token.expose()),
            Some((user, hash))
        );
        assert_eq!(parse_opaque(TokenKind::PasswordReset, token.expose()), None);
        assert_eq!(parse_opaque(TokenKind::Refresh, "nsr_garbage"), None);
        let (again, _) = new_opaque(TokenKind::Refresh, user).expect("token");
        assert_ne!(token, again);
    }
}
