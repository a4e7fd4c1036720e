//! Authentication: sign-up, sign-in, token refresh and rotation, sign-out, password reset and
//! change; and the extractors that prove who is calling.
//!
//! - [`handlers`]: the `/v1/auth/*` endpoints.
//! - [`extract`]: [`AuthUser`] (a valid access token of a signed-in device) and
//!   [`AppPasswordUser`] (an app password, for NextChat's WebDAV/Upstash doors; never `/v1`).
//! - [`tokens`]: access-token JWTs and opaque tokens; [`password`]: Argon2id;
//!   [`limits`]: per-address and per-account rate limits; [`cookie`]: the web app's
//!   `HttpOnly` refresh-token cookie.

pub mod cookie;
pub mod extract;
pub mod handlers;
pub mod limits;
pub mod password;
pub mod tokens;

pub use extract::{AppPasswordUser, AuthUser};

use crate::state::AppState;
use axum::Router;
use axum::routing::post;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/register", post(handlers::register))
        .route("/v1/auth/login", post(handlers::login))
        .route("/v1/auth/refresh", post(handlers::refresh))
        .route("/v1/auth/logout", post(handlers::logout))
        .route("/v1/auth/password/forgot", post(handlers::forgot_password))
        .route("/v1/auth/password/reset", post(handlers::reset_password))
        .route("/v1/auth/password/change", post(handlers::change_password))
}
