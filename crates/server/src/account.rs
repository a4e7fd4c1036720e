//! The signed-in user's own account: `/v1/me`, `/v1/devices`, `/v1/app-passwords`.
//! Every query is scoped by the [`AuthUser`]'s id; a foreign id is simply not found.

use crate::auth::AuthUser;
use crate::auth::handlers::{confirm_password, current_user};
use crate::auth::tokens::{TokenKind, new_opaque};
use crate::bus::Notice;
use crate::error::ApiError;
use crate::extract::{Json, Path};
use crate::state::AppState;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use nextsync_core::api::{
    AppPasswordCreated, AppPasswordList, AppPasswordView, CreateAppPasswordRequest, DeleteMeRequest,
    DeviceList, DeviceView, ErrorBody, Me,
};
use nextsync_core::ids::{AppPasswordId, DeviceId};
use nextsync_core::time::Timestamp;
use nextsync_store::accounts::{DeviceEnd, NewAppPassword};

const MAX_LABEL_CHARS: usize = 100;
/// A sign-in this recent may create an app password without typing the password again.
const RECENT_SIGN_IN_SECS: i64 = 10 * 60;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/me", get(get_me).delete(delete_me))
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{id}", delete(revoke_device))
        .route(
            "/v1/app-passwords",
            get(list_app_passwords).post(create_app_password),
        )
        .route("/v1/app-passwords/{id}", delete(delete_app_password))
}

#[utoipa::path(get, path = "/v1/me", tag = "account", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody)))]
pub async fn get_me(State(state): State<AppState>, auth: AuthUser) -> Result<Json<Me>, ApiError> {
    let user = current_user(&state, auth).await?;
    Ok(Json(Me {
        user_id: user.id,
        email: user.email.as_str().to_owned(),
        created_at: user.created_at,
    }))
}

#[utoipa::path(delete, path = "/v1/me", tag = "account", security(("bearer" = [])), request_body = DeleteMeRequest,
    responses(
        (status = 204, description = "the account and every row of it are gone"),
        (status = 403, description = "wrong_password", body = ErrorBody),
    ))]
pub async fn delete_me(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(req): Json<DeleteMeRequest>,
) -> Result<StatusCode, ApiError> {
    confirm_password(&state, auth, &req.password).await?;
    state.store.delete_user(auth.user).await?;
    state.bus.notify(Notice::SignedOut { user: auth.user });
    tracing::info!(user = %auth.user, "account deleted by its owner");
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/devices", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "signed-in devices, oldest first", body = DeviceList)))]
pub async fn list_devices(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<DeviceList>, ApiError> {
    let devices = state.store.list_devices(auth.user).await?;
    Ok(Json(DeviceList {
        devices: devices
            .into_iter()
            .map(|d| DeviceView {
                current: d.device_id == auth.device,
                device_id: d.device_id,
                name: d.name,
                kind: d.kind,
                created_at: d.created_at,
                last_seen_at: d.last_seen_at,
            })
            .collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/devices/{id}", tag = "account", security(("bearer" = [])),
    params(("id" = String, Path, description = "device id")),
    responses(
        (status = 204, description = "the device is signed out, and the app passwords it made are deleted"),
        (status = 404, description = "no such device of this account", body = ErrorBody),
    ))]
pub async fn revoke_device(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found("no such device");
    let device: DeviceId = id.parse().map_err(|_| not_found())?;
    if state
        .store
        .revoke_device(auth.user, device, Timestamp::now(), DeviceEnd::Remove)
        .await?
    {
        state.bus.notify(Notice::SignedOut { user: auth.user });
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}

#[utoipa::path(post, path = "/v1/app-passwords", tag = "account", security(("bearer" = [])),
    request_body = CreateAppPasswordRequest,
    responses(
        (status = 201, description = "the password is shown this once", body = AppPasswordCreated),
        (status = 400, description = "invalid_label", body = ErrorBody),
        (status = 403, description = "password_required (this device signed in over 10 minutes ago; send `password`) or wrong_password", body = ErrorBody),
    ))]
pub async fn create_app_password(
    State(state): State<AppState>,
    auth: AuthUser,
    Json(req): Json<CreateAppPasswordRequest>,
) -> Result<(StatusCode, Json<AppPasswordCreated>), ApiError> {
    let label = req.label.trim().to_owned();
    if label.is_empty() || label.chars().count() > MAX_LABEL_CHARS || label.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_label",
            format!("label must be 1 to {MAX_LABEL_CHARS} printable characters"),
        ));
    }
    // An app password outlives the access token that asks for it: a stolen 15-minute token
    // must not be enough to mint one. A fresh sign-in has just proven the password.
    let now = Timestamp::now();
    match &req.password {
        Some(password) => {
            confirm_password(&state, auth, password).await?;
        }
        None => {
            let status = state
                .store
                .device_status(auth.user, auth.device)
                .await?
                .ok_or_else(|| ApiError::unauthorized("token_revoked", "this device is signed out"))?;
            if status.signed_in_at < now.minus_secs(RECENT_SIGN_IN_SECS) {
                return Err(ApiError::forbidden(
                    "password_required",
                    "confirm your account password (`password`) to create an app password; \
                     a sign-in of the last 10 minutes needs none",
                ));
            }
        }
    }
    let (password, secret_hash) = new_opaque(TokenKind::AppPassword, auth.user)?;
    let created = NewAppPassword {
        user_id: auth.user,
        id: AppPasswordId::new(),
        label,
        secret_hash,
        created_at: now,
        created_by: auth.device,
    };
    state.store.create_app_password(&created).await?;
    Ok((
        StatusCode::CREATED,
        Json(AppPasswordCreated {
            id: created.id,
            label: created.label,
            password,
            created_at: created.created_at,
        }),
    ))
}

#[utoipa::path(get, path = "/v1/app-passwords", tag = "account", security(("bearer" = [])),
    responses((status = 200, description = "without secrets", body = AppPasswordList)))]
pub async fn list_app_passwords(
    State(state): State<AppState>,
    auth: AuthUser,
) -> Result<Json<AppPasswordList>, ApiError> {
    let list = state.store.list_app_passwords(auth.user).await?;
    Ok(Json(AppPasswordList {
        app_passwords: list
            .into_iter()
            .map(|p| AppPasswordView {
                id: p.id,
                label: p.label,
                created_at: p.created_at,
                last_used_at: p.last_used_at,
            })
            .collect(),
    }))
}

#[utoipa::path(delete, path = "/v1/app-passwords/{id}", tag = "account", security(("bearer" = [])),
    params(("id" = String, Path, description = "app password id")),
    responses(
        (status = 204, description = "deleted; clients using it stop syncing"),
        (status = 404, description = "no such app password of this account", body = ErrorBody),
    ))]
pub async fn delete_app_password(
    State(state): State<AppState>,
    auth: AuthUser,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::not_found("no such app password");
    let id: AppPasswordId = id.parse().map_err(|_| not_found())?;
    if state.store.delete_app_password(auth.user, id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found())
    }
}
