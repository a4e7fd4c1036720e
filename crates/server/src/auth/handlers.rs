//! `/v1/auth/*`: register, login, refresh, logout, forgot/reset/change password.
//!
//! Login answers a wrong password and an unknown email with the same bytes after the same
//! work (a dummy Argon2 verification), and forgot-password answers 202 before doing anything
//! that depends on whether the account exists, so neither reveals which emails have accounts.

use crate::auth::AuthUser;
use crate::auth::cookie;
use crate::auth::tokens::{TokenKind, new_opaque, parse_opaque};
use crate::bus::Notice;
use crate::config::Registration;
use crate::error::ApiError;
use crate::extract::{ClientIp, Json};
use crate::mail::Mail;
use crate::metrics::LOGINS;
use crate::state::AppState;
use axum::extract::State;
use axum::http::header::SET_COOKIE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use nextsync_core::account::{Email, check_new_password};
use nextsync_core::api::{
    ChangePasswordRequest, ErrorBody, ForgotPasswordRequest, LoginRequest, RefreshRequest, RegisterRequest,
    ResetPasswordRequest, TokenResponse,
};
use nextsync_core::ids::{DeviceId, UserId};
use nextsync_core::secret::Secret;
use nextsync_core::time::Timestamp;
use nextsync_store::StoreError;
use nextsync_store::accounts::{
    DeviceEnd, DeviceKind, NewDevice, NewRefreshToken, NewUser, RefreshOutcome, ResetOutcome, User,
};

const MAX_DEVICE_NAME_CHARS: usize = 100;

#[utoipa::path(post, path = "/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses(
        (status = 201, description = "account created and signed in", body = TokenResponse),
        (status = 400, description = "invalid email or weak password", body = ErrorBody),
        (status = 403, description = "registration is closed", body = ErrorBody),
        (status = 409, description = "email_taken", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<RegisterRequest>,
) -> Result<Response, ApiError> {
    state.limits.check_ip(ip)?;
    if state.config.registration == Registration::Closed {
        return Err(ApiError::forbidden(
            "registration_closed",
            "this server does not accept new accounts",
        ));
    }
    let email =
        Email::parse(&req.email).map_err(|e| ApiError::bad_request("invalid_email", e.to_string()))?;
    state.limits.spend_account(&format!("register:{email}"))?;
    check_new_password(req.password.expose(), Some(&email))
        .map_err(|e| ApiError::bad_request("weak_password", e.to_string()))?;
    let device_name = device_name(req.device_name)?;
    let password_hash = state.passwords.hash(&req.password).await?;
    let now = Timestamp::now();
    let user = NewUser {
        id: UserId::new(),
        email,
        password_hash,
        created_at: now,
    };
    let (device, refresh_token) = new_device(&state, user.id, (device_name, req.device_kind), now)?;
    match state.store.create_user(&user, Some(&device)).await {
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::conflict(
                "email_taken",
                "an account with this email already exists",
            ));
        }
        other => other?,
    }
    let tokens = token_response(&state, user.id, device.device_id, refresh_token, now)?;
    signed_in(&state, StatusCode::CREATED, tokens, req.refresh_cookie)
}

#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses(
        (status = 200, description = "signed in as a new device", body = TokenResponse),
        (status = 401, description = "invalid_credentials (same answer for an unknown email)", body = ErrorBody),
        (status = 403, description = "account_disabled", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<LoginRequest>,
) -> Result<Response, ApiError> {
    state.limits.check_ip(ip)?;
    let device_name = device_name(req.device_name)?;
    // A malformed email cannot have an account: treat it exactly like an unknown one.
    let email = Email::parse(&req.email).ok();
    let account_key = match &email {
        Some(email) => format!("login:{email}"),
        None => format!("login:{}", req.email.trim().to_lowercase()),
    };
    state.limits.check_account(&account_key)?;
    let user = match &email {
        Some(email) => state.store.user_by_email(email).await?,
        None => None,
    };
    let verified = state
        .passwords
        .verify(&req.password, user.as_ref().map(|u| &u.password_hash))
        .await?;
    let Some(user) = user.filter(|_| verified) else {
        state.limits.record_account(&account_key);
        metrics::counter!(LOGINS, "result" => "failed").increment(1);
        return Err(ApiError::unauthorized(
            "invalid_credentials",
            "email or password is incorrect",
        ));
    };
    if user.disabled_at.is_some() {
        metrics::counter!(LOGINS, "result" => "failed").increment(1);
        return Err(ApiError::forbidden(
            "account_disabled",
            "this account has been disabled by the operator",
        ));
    }
    let now = Timestamp::now();
    let (device, refresh_token) = new_device(&state, user.id, (device_name, req.device_kind), now)?;
    state.store.add_device(&device).await?;
    metrics::counter!(LOGINS, "result" => "ok").increment(1);
    let tokens = token_response(&state, user.id, device.device_id, refresh_token, now)?;
    signed_in(&state, StatusCode::OK, tokens, req.refresh_cookie)
}

#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses(
        (status = 200, description = "new access token and a NEW refresh token", body = TokenResponse),
        (status = 401, description = "invalid_refresh_token, or refresh_token_reused (the device is now signed out)", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(req): Json<RefreshRequest>,
) -> Result<Response, ApiError> {
    let invalid = || {
        ApiError::unauthorized(
            "invalid_refresh_token",
            "refresh token is invalid or expired; sign in again",
        )
    };
    let (token, in_cookie) = match req.refresh_token {
        Some(token) => (token, false),
        None => (
            cookie::presented(&headers, &state.config)?.ok_or_else(invalid)?,
            true,
        ),
    };
    let (user, presented) = parse_opaque(TokenKind::Refresh, token.expose()).ok_or_else(invalid)?;
    let now = Timestamp::now();
    let (refresh_token, hash) = new_opaque(TokenKind::Refresh, user)?;
    let next = NewRefreshToken {
        hash,
        created_at: now,
        expires_at: refresh_expiry(&state, now),
    };
    match state.store.rotate_refresh_token(user, &presented, &next).await? {
        RefreshOutcome::Rotated { device_id } => {
            let tokens = token_response(&state, user, device_id, refresh_token, now)?;
            signed_in(&state, StatusCode::OK, tokens, in_cookie)
        }
        RefreshOutcome::Reused { device_id } => {
            tracing::warn!(%user, %device_id, "refresh token reused: device signed out");
            state.bus.notify(Notice::SignedOut { user });
            Err(ApiError::unauthorized(
                "refresh_token_reused",
                "this refresh token was already used; the device has been signed out for safety",
            ))
        }
        RefreshOutcome::Invalid => Err(invalid()),
    }
}

#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "this device is signed out (and the sign-in cookie removed)")))]
pub async fn logout(State(state): State<AppState>, auth: AuthUser) -> Result<Response, ApiError> {
    state
        .store
        .revoke_device(auth.user, auth.device, Timestamp::now(), DeviceEnd::SignOut)
        .await?;
    state.bus.notify(Notice::SignedOut { user: auth.user });
    Ok((
        StatusCode::NO_CONTENT,
        [(SET_COOKIE, cookie::clear(&state.config))],
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/auth/password/forgot", tag = "auth", request_body = ForgotPasswordRequest,
    responses(
        (status = 202, description = "if the account exists, a reset link is on its way"),
        (status = 400, description = "invalid_email", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody),
    ))]
pub async fn forgot_password(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<ForgotPasswordRequest>,
) -> Result<StatusCode, ApiError> {
    state.limits.check_ip(ip)?;
    let email =
        Email::parse(&req.email).map_err(|e| ApiError::bad_request("invalid_email", e.to_string()))?;
    state.limits.spend_account(&format!("forgot:{email}"))?;
    // Everything that depends on the account's existence happens after the answer.
    tokio::spawn(async move {
        if let Err(e) = send_reset_mail(&state, email).await {
            tracing::error!(error = format!("{e:#}"), "could not send a password reset mail");
        }
    });
    Ok(StatusCode::ACCEPTED)
}

async fn send_reset_mail(state: &AppState, email: Email) -> anyhow::Result<()> {
    let Some(user) = state.store.user_by_email(&email).await? else {
        tracing::info!("password reset requested for an unknown email");
        return Ok(());
    };
    if user.disabled_at.is_some() {
        return Ok(());
    }
    let now = Timestamp::now();
    let ttl = state.config.reset_token_ttl;
    let (token, hash) =
        new_opaque(TokenKind::PasswordReset, user.id).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let expires_at = now.plus_secs(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2000));
    state
        .store
        .create_password_reset(user.id, &hash, now, expires_at)
        .await?;
    let link = format!(
        "{}/reset-password?token={}",
        state.config.public_url.trim_end_matches('/'),
        token.expose()
    );
    let minutes = ttl.as_secs().div_ceil(60);
    let body = format!(
        "Someone (hopefully you) asked to reset the password of your nextsync account {email}.\n\n\
         Open this link within {minutes} minutes to choose a new password:\n\n{link}\n\n\
         The link works once. Resetting signs out every device. If you did not ask for this, ignore this mail.\n"
    );
    state
        .mailer
        .send(Mail {
            to: email.as_str().to_owned(),
            subject: "Reset your nextsync password".into(),
            body,
        })
        .await
}

#[utoipa::path(post, path = "/v1/auth/password/reset", tag = "auth", request_body = ResetPasswordRequest,
    responses(
        (status = 204, description = "password replaced; every device signed out"),
        (status = 400, description = "invalid_reset_token or weak_password", body = ErrorBody),
        (status = 410, description = "reset_token_used or reset_token_expired", body = ErrorBody),
        (status = 429, description = "rate limited", body = ErrorBody),
    ))]
pub async fn reset_password(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<ResetPasswordRequest>,
) -> Result<StatusCode, ApiError> {
    state.limits.check_ip(ip)?;
    let invalid = || ApiError::bad_request("invalid_reset_token", "this reset link is not valid");
    let (user_id, hash) = parse_opaque(TokenKind::PasswordReset, req.token.expose()).ok_or_else(invalid)?;
    state.limits.spend_account(&format!("reset:{user_id}"))?;
    let user = state.store.user_by_id(user_id).await?.ok_or_else(invalid)?;
    check_new_password(req.new_password.expose(), Some(&user.email))
        .map_err(|e| ApiError::bad_request("weak_password", e.to_string()))?;
    let password_hash = state.passwords.hash(&req.new_password).await?;
    match state
        .store
        .consume_password_reset(user_id, &hash, &password_hash, Timestamp::now())
        .await?
    {
        ResetOutcome::Done => {
            state.bus.notify(Notice::SignedOut { user: user_id });
            Ok(StatusCode::NO_CONTENT)
        }
        ResetOutcome::AlreadyUsed => Err(ApiError::new(
            StatusCode::GONE,
            "reset_token_used",
            "this reset link has already been used",
        )),
        ResetOutcome::Expired => Err(ApiError::new(
            StatusCode::GONE,
            "reset_token_expired",
            "this reset link has expired; ask for a new one",
        )),
        ResetOutcome::Unknown => Err(invalid()),
    }
}

#[utoipa::path(post, path = "/v1/auth/password/change", tag = "auth", security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 204, description = "password changed; every other device signed out"),
        (status = 400, description = "weak_password", body = ErrorBody),
        (status = 403, description = "wrong_password", body = ErrorBody),
    ))]
pub async fn change_password(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(req): Json<ChangePasswordRequest>,
) -> Result<StatusCode, ApiError> {
    let user = confirm_password(&state, auth, &req.current_password).await?;
    check_new_password(req.new_password.expose(), Some(&user.email))
        .map_err(|e| ApiError::bad_request("weak_password", e.to_string()))?;
    let password_hash = state.passwords.hash(&req.new_password).await?;
    state
        .store
        .set_password(auth.user, &password_hash, Some(auth.device), Timestamp::now())
        .await?;
    state.bus.notify(Notice::SignedOut { user: auth.user });
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in user, once `password` proves it is really them (for changes that a stolen
/// access token alone must not allow).
pub(crate) async fn confirm_password(
    state: &AppState,
    auth: AuthUser,
    password: &Secret,
) -> Result<User, ApiError> {
    let user = current_user(state, auth).await?;
    if state
        .passwords
        .verify(password, Some(&user.password_hash))
        .await?
    {
        Ok(user)
    } else {
        Err(ApiError::forbidden("wrong_password", "the password is incorrect"))
    }
}

/// The signed-in user's account row.
pub(crate) async fn current_user(state: &AppState, auth: AuthUser) -> Result<User, ApiError> {
    state
        .store
        .user_by_id(auth.user)
        .await?
        .ok_or_else(|| ApiError::not_found("account not found"))
}

fn device_name(name: Option<String>) -> Result<String, ApiError> {
    let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    match name {
        None => Ok("unnamed device".to_owned()),
        Some(n) if n.chars().count() > MAX_DEVICE_NAME_CHARS || n.chars().any(char::is_control) => {
            Err(ApiError::bad_request(
                "invalid_device_name",
                format!("device_name must be at most {MAX_DEVICE_NAME_CHARS} printable characters"),
            ))
        }
        Some(n) => Ok(n),
    }
}

fn refresh_expiry(state: &AppState, now: Timestamp) -> Timestamp {
    now.plus_secs(i64::try_from(state.config.refresh_token_ttl.as_secs()).unwrap_or(i64::MAX / 2000))
}

/// A new device for `user` with the first refresh token of its family.
fn new_device(
    state: &AppState,
    user: UserId,
    (name, kind): (String, DeviceKind),
    now: Timestamp,
) -> Result<(NewDevice, Secret), ApiError> {
    let (refresh_token, hash) = new_opaque(TokenKind::Refresh, user)?;
    let device = NewDevice {
        kind,
        user_id: user,
        device_id: DeviceId::new(),
        name,
        refresh: NewRefreshToken {
            hash,
            created_at: now,
            expires_at: refresh_expiry(state, now),
        },
    };
    Ok((device, refresh_token))
}

/// The answer to a sign-in or refresh: the tokens, with the refresh token moved into the
/// sign-in cookie when the client asked for that.
fn signed_in(
    state: &AppState,
    status: StatusCode,
    mut tokens: TokenResponse,
    in_cookie: bool,
) -> Result<Response, ApiError> {
    if !in_cookie {
        return Ok((status, Json(tokens)).into_response());
    }
    let token = tokens
        .refresh_token
        .take()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no refresh token to keep")))?;
    let set = cookie::set(&state.config, &token)?;
    Ok((status, [(SET_COOKIE, set)], Json(tokens)).into_response())
}

fn token_response(
    state: &AppState,
    user: UserId,
    device: DeviceId,
    refresh_token: Secret,
    now: Timestamp,
) -> Result<TokenResponse, ApiError> {
    Ok(TokenResponse {
        user_id: user,
        device_id: device,
        access_token: state.tokens.issue(user, device, now)?,
        refresh_token: Some(refresh_token),
        token_type: "Bearer".to_owned(),
        expires_in: state.tokens.ttl().as_secs(),
    })
}
