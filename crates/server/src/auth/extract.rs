//! Extractors named after what they prove. A handler that takes [`AuthUser`] runs only for a
//! signed-in device; one that takes [`AppPasswordUser`] only for a valid app password.

use crate::auth::tokens::{Claims, TokenKind, parse_opaque};
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use nextsync_core::account::Email;
use nextsync_core::ids::{AppPasswordId, DeviceId, UserId};
use nextsync_core::time::Timestamp;

/// `last_seen_at` is written at most this often per device, so reads stay reads.
const TOUCH_EVERY_SECS: i64 = 60;

/// The caller holds a valid, unexpired access token of a device that is still signed in and an
/// account that is enabled. Checked against the store on every request, so a revocation takes
/// effect at once rather than at token expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub user: UserId,
    pub device: DeviceId,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer_token(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized("missing_token", "send Authorization: Bearer <access token>")
        })?;
        authenticate(state, token).await.map(|(auth, _)| auth)
    }
}

/// Checks an access token: signature, expiry, and that its device is still signed in (one
/// store read). Returns who it proves and its claims (a WebSocket keeps `exp`).
pub async fn authenticate(state: &AppState, token: &str) -> Result<(AuthUser, Claims), ApiError> {
    let claims = state.tokens.verify(token)?;
    let auth = AuthUser {
        user: claims.sub,
        device: claims.did,
    };
    ensure_signed_in(state, auth).await?;
    Ok((auth, claims))
}

/// Fails with `token_revoked` when the device was signed out or its account disabled.
pub async fn ensure_signed_in(state: &AppState, auth: AuthUser) -> Result<(), ApiError> {
    let status = state.store.device_status(auth.user, auth.device).await?;
    let Some(status) = status.filter(|s| s.is_active()) else {
        return Err(ApiError::unauthorized(
            "token_revoked",
            "this device has been signed out; sign in again",
        ));
    };
    let now = Timestamp::now();
    if status.last_seen_at < now.minus_secs(TOUCH_EVERY_SECS) {
        state.store.touch_device(auth.user, auth.device, now).await?;
    }
    Ok(())
}

/// The caller presented an app password: HTTP Basic `email:app-password` (decoded as
/// ISO-8859-1, as browsers encode it) or `Bearer <app-password>`. App passwords only open the
/// doors made for clients that keep a static secret; they never pass [`AuthUser`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppPasswordUser {
    pub user: UserId,
    pub app_password: AppPasswordId,
}

impl FromRequestParts<AppState> for AppPasswordUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
            bad_app_password("send an app password as Basic email:password or Bearer token")
        })?;
        let (email, password) = if let Some(token) = bearer_token(&parts.headers) {
            (None, token.to_owned())
        } else {
            let encoded = header
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
                .ok_or_else(|| bad_app_password("unsupported Authorization scheme"))?;
            let decoded = STANDARD
                .decode(encoded.trim())
                .map_err(|_| bad_app_password("malformed Basic credentials"))?;
            // ISO-8859-1: every byte is the code point of the same value.
            let text: String = decoded.iter().map(|&b| char::from(b)).collect();
            let (email, password) = text
                .split_once(':')
                .ok_or_else(|| bad_app_password("malformed Basic credentials"))?;
            (Some(email.to_owned()), password.to_owned())
        };
        let (user, hash) = parse_opaque(TokenKind::AppPassword, &password)
            .ok_or_else(|| bad_app_password("invalid app password"))?;
        if let Some(email) = email {
            let claimed = Email::parse(&email).map_err(|_| bad_app_password("invalid app password"))?;
            let owner = state.store.user_by_id(user).await?;
            if owner.is_none_or(|owner| owner.email != claimed) {
                return Err(bad_app_password("invalid app password"));
            }
        }
        let found = state
            .store
            .app_password_by_hash(user, &hash)
            .await?
            .ok_or_else(|| bad_app_password("invalid app password"))?;
        let now = Timestamp::now();
        if found
            .last_used_at
            .is_none_or(|t| t < now.minus_secs(TOUCH_EVERY_SECS))
        {
            state.store.touch_app_password(user, found.id, now).await?;
        }
        Ok(AppPasswordUser {
            user,
            app_password: found.id,
        })
    }
}

/// The token of an `Authorization: Bearer …` header, if there is a non-empty one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim()).filter(|t| !t.is_empty())
}

fn bad_app_password(message: &'static str) -> ApiError {
    ApiError::unauthorized("invalid_app_password", message)
}
