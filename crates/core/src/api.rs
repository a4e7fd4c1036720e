//! JSON bodies of the `/v1` API. The field names are a wire contract other clients build
//! against: rename nothing here; add fields instead.

use crate::ids::{AppPasswordId, DeviceId, UserId};
pub use crate::secret::Secret;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error response: `{"error":{"code":"snake_case","message":"…"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable, snake_case.
    pub code: String,
    /// For people; wording may change.
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RegisterRequest {
    pub email: String,
    pub password: Secret,
    /// Shown in the device list; defaults to "unnamed device".
    #[serde(default)]
    pub device_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: Secret,
    #[serde(default)]
    pub device_name: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: Secret,
}

/// The answer to register, login and refresh.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub access_token: Secret,
    /// Single use: every refresh answers with a new one.
    pub refresh_token: Secret,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ForgotPasswordRequest {
    pub email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ResetPasswordRequest {
    pub token: Secret,
    pub new_password: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    pub current_password: Secret,
    pub new_password: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub user_id: UserId,
    pub email: String,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeleteMeRequest {
    pub password: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceView {
    pub device_id: DeviceId,
    pub name: String,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
    /// True for the device whose token made this request.
    pub current: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeviceList {
    pub devices: Vec<DeviceView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateAppPasswordRequest {
    pub label: String,
}

/// The only time an app password is shown: it is stored hashed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppPasswordCreated {
    pub id: AppPasswordId,
    pub label: String,
    pub password: Secret,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppPasswordView {
    pub id: AppPasswordId,
    pub label: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AppPasswordList {
    pub app_passwords: Vec<AppPasswordView>,
}
