//! [`AccountStore`]: users, devices, refresh-token families, password resets and app passwords.
//!
//! A device is one signed-in client; its refresh tokens form one family. Tokens are stored only
//! as hashes. Revoking a device is how every sign-out works (logout, device removal, password
//! change and reset, a detected refresh-token theft), so the per-request check of an access
//! token is one indexed read: [`AccountStore::device_status`].

use crate::StoreError;
use async_trait::async_trait;
use nextsync_core::account::Email;
pub use nextsync_core::api::DeviceKind;
use nextsync_core::ids::{AppPasswordId, DeviceId, TokenHash, UserId};
use nextsync_core::secret::Secret;
use nextsync_core::time::Timestamp;

/// How long a used refresh token is remembered, so that presenting it again is recognised as
/// theft. Older used tokens are pruned whenever their family rotates.
pub const USED_REFRESH_TOKEN_MEMORY_SECS: i64 = 14 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub email: Email,
    /// Argon2id PHC string.
    pub password_hash: Secret,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub email: Email,
    pub password_hash: Secret,
    pub created_at: Timestamp,
    pub disabled_at: Option<Timestamp>,
}

/// A row of `nextsync admin user list`.
#[derive(Debug, Clone)]
pub struct UserSummary {
    pub id: UserId,
    pub email: Email,
    pub created_at: Timestamp,
    pub disabled_at: Option<Timestamp>,
    pub active_devices: i64,
}

#[derive(Debug, Clone)]
pub struct NewRefreshToken {
    pub hash: TokenHash,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A sign-in: the device and the first refresh token of its family.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub kind: DeviceKind,
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub name: String,
    pub refresh: NewRefreshToken,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub device_id: DeviceId,
    pub name: String,
    pub kind: DeviceKind,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
}

/// What an access token's bearer is allowed right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceStatus {
    pub revoked: bool,
    pub user_disabled: bool,
    pub last_seen_at: Timestamp,
    /// When the device signed in (entered the password, or registered).
    pub signed_in_at: Timestamp,
}

/// How a device ends, for [`AccountStore::revoke_device`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceEnd {
    /// The device signed itself out: app passwords it made keep working (a NextChat set up
    /// from the web app keeps syncing after its tab signs out).
    SignOut,
    /// The account removed it, or its refresh token was stolen: the app passwords it made
    /// go too, so a stolen access token cannot mint a credential that survives the device.
    Remove,
}

impl DeviceStatus {
    pub fn is_active(&self) -> bool {
        !self.revoked && !self.user_disabled
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshOutcome {
    /// The presented token is now used and the new one is stored.
    Rotated { device_id: DeviceId },
    /// The presented token had been used before: its family (device) is now revoked.
    Reused { device_id: DeviceId },
    /// Unknown, expired, or its device is signed out or its account disabled.
    Invalid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetOutcome {
    /// Password replaced, every device signed out, every other reset link void.
    Done,
    AlreadyUsed,
    Expired,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct NewAppPassword {
    pub user_id: UserId,
    pub id: AppPasswordId,
    pub label: String,
    pub secret_hash: TokenHash,
    pub created_at: Timestamp,
    /// The signed-in device that made it.
    pub created_by: DeviceId,
}

#[derive(Debug, Clone)]
pub struct AppPassword {
    pub id: AppPasswordId,
    pub label: String,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

#[async_trait]
pub trait AccountStore {
    /// Creates the account and, when given, its first device, in one transaction.
    /// A taken email is [`StoreError::Conflict`].
    async fn create_user(&self, user: &NewUser, device: Option<&NewDevice>) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError>;
    async fn user_by_id(&self, user: UserId) -> Result<Option<User>, StoreError>;
    async fn list_users(&self) -> Result<Vec<UserSummary>, StoreError>;
    /// `Some(t)` disables the account (its tokens stop working at once), `None` enables it.
    /// False when the user does not exist.
    async fn set_user_disabled(
        &self,
        user: UserId,
        disabled_at: Option<Timestamp>,
    ) -> Result<bool, StoreError>;
    /// Deletes the account and every row that belongs to it. False when it did not exist.
    async fn delete_user(&self, user: UserId) -> Result<bool, StoreError>;
    /// Replaces the password hash, revokes every device except `keep` and deletes every app
    /// password, in one transaction.
    async fn set_password(
        &self,
        user: UserId,
        password_hash: &Secret,
        keep: Option<DeviceId>,
        now: Timestamp,
    ) -> Result<bool, StoreError>;

    async fn add_device(&self, device: &NewDevice) -> Result<(), StoreError>;
    /// None when the device does not exist (or belongs to another user).
    async fn device_status(&self, user: UserId, device: DeviceId)
    -> Result<Option<DeviceStatus>, StoreError>;
    async fn touch_device(&self, user: UserId, device: DeviceId, now: Timestamp) -> Result<(), StoreError>;
    /// The user's signed-in (not revoked) devices, oldest first.
    async fn list_devices(&self, user: UserId) -> Result<Vec<Device>, StoreError>;
    /// False when the device does not exist for this user or was already revoked.
    async fn revoke_device(
        &self,
        user: UserId,
        device: DeviceId,
        now: Timestamp,
        end: DeviceEnd,
    ) -> Result<bool, StoreError>;
    /// Signed-in devices of enabled accounts, over all users (a metrics gauge).
    async fn count_active_devices(&self) -> Result<i64, StoreError>;
    /// Single use: marks `presented` used and stores `next`, or detects reuse and revokes the
    /// whole family (as [`DeviceEnd::Remove`]). Safe under concurrent calls with the same
    /// token: exactly one rotates.
    async fn rotate_refresh_token(
        &self,
        user: UserId,
        presented: &TokenHash,
        next: &NewRefreshToken,
    ) -> Result<RefreshOutcome, StoreError>;

    async fn create_password_reset(
        &self,
        user: UserId,
        hash: &TokenHash,
        created_at: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError>;
    /// Single use: on success sets the new password, revokes every device of the user and
    /// deletes every app password.
    async fn consume_password_reset(
        &self,
        user: UserId,
        hash: &TokenHash,
        new_password_hash: &Secret,
        now: Timestamp,
    ) -> Result<ResetOutcome, StoreError>;

    async fn create_app_password(&self, password: &NewAppPassword) -> Result<(), StoreError>;
    async fn list_app_passwords(&self, user: UserId) -> Result<Vec<AppPassword>, StoreError>;
    async fn delete_app_password(&self, user: UserId, id: AppPasswordId) -> Result<bool, StoreError>;
    /// The app password with this hash, if it exists and its account is enabled.
    async fn app_password_by_hash(
        &self,
        user: UserId,
        hash: &TokenHash,
    ) -> Result<Option<AppPassword>, StoreError>;
    async fn touch_app_password(
        &self,
        user: UserId,
        id: AppPasswordId,
        now: Timestamp,
    ) -> Result<(), StoreError>;
}

// The SQL below is shared by both backends (sqlx binds `$n` on SQLite as well).

pub(crate) const INSERT_USER: &str =
    "INSERT INTO users (user_id, email, password_hash, created_at) VALUES ($1, $2, $3, $4)";
pub(crate) const INSERT_FEED_HEAD: &str = "INSERT INTO feed_heads (user_id, seq, epoch) VALUES ($1, 0, $2)";
pub(crate) const INSERT_DEVICE: &str = "INSERT INTO devices (user_id, device_id, name, created_at, last_seen_at, kind) VALUES ($1, $2, $3, $4, $4, $5)";
pub(crate) const INSERT_REFRESH: &str = "INSERT INTO refresh_tokens (user_id, token_hash, device_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)";
pub(crate) const SELECT_USER_BY_EMAIL: &str =
    "SELECT user_id, email, password_hash, created_at, disabled_at FROM users WHERE email = $1";
pub(crate) const SELECT_USER_BY_ID: &str =
    "SELECT user_id, email, password_hash, created_at, disabled_at FROM users WHERE user_id = $1";
pub(crate) const SELECT_USERS: &str = "SELECT u.user_id, u.email, u.created_at, u.disabled_at, \
     (SELECT COUNT(*) FROM devices d WHERE d.user_id = u.user_id AND d.revoked_at IS NULL) AS active_devices \
     FROM users u ORDER BY u.created_at, u.email";
pub(crate) const SET_USER_DISABLED: &str = "UPDATE users SET disabled_at = $2 WHERE user_id = $1";
pub(crate) const DELETE_USER: &str = "DELETE FROM users WHERE user_id = $1";
pub(crate) const SET_PASSWORD: &str = "UPDATE users SET password_hash = $2 WHERE user_id = $1";
pub(crate) const REVOKE_DEVICES_EXCEPT: &str = "UPDATE devices SET revoked_at = $2 \
     WHERE user_id = $1 AND revoked_at IS NULL AND ($3 IS NULL OR device_id <> $3)";
pub(crate) const SELECT_DEVICE_STATUS: &str = "SELECT d.revoked_at, d.last_seen_at, d.created_at, u.disabled_at \
     FROM devices d JOIN users u ON u.user_id = d.user_id WHERE d.user_id = $1 AND d.device_id = $2";
pub(crate) const TOUCH_DEVICE: &str =
    "UPDATE devices SET last_seen_at = $3 WHERE user_id = $1 AND device_id = $2 AND last_seen_at < $3";
pub(crate) const SELECT_DEVICES: &str = "SELECT device_id, name, kind, created_at, last_seen_at FROM devices \
     WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at, device_id";
pub(crate) const REVOKE_DEVICE: &str =
    "UPDATE devices SET revoked_at = $3 WHERE user_id = $1 AND device_id = $2 AND revoked_at IS NULL";
pub(crate) const COUNT_ACTIVE_DEVICES: &str = "SELECT COUNT(*) FROM devices d JOIN users u ON u.user_id = d.user_id \
     WHERE d.revoked_at IS NULL AND u.disabled_at IS NULL";
pub(crate) const USE_REFRESH: &str = "UPDATE refresh_tokens SET used_at = $3 \
     WHERE user_id = $1 AND token_hash = $2 AND used_at IS NULL RETURNING device_id, expires_at";
pub(crate) const SELECT_USED_REFRESH: &str =
    "SELECT device_id FROM refresh_tokens WHERE user_id = $1 AND token_hash = $2";
pub(crate) const PRUNE_USED_REFRESH: &str =
    "DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2 AND used_at < $3";
pub(crate) const INSERT_RESET: &str =
    "INSERT INTO password_resets (user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4)";
pub(crate) const USE_RESET: &str = "UPDATE password_resets SET used_at = $3 \
     WHERE user_id = $1 AND token_hash = $2 AND used_at IS NULL AND expires_at > $3 RETURNING user_id";
pub(crate) const SELECT_RESET: &str =
    "SELECT used_at FROM password_resets WHERE user_id = $1 AND token_hash = $2";
pub(crate) const VOID_RESETS: &str =
    "UPDATE password_resets SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL";
pub(crate) const INSERT_APP_PASSWORD: &str = "INSERT INTO app_passwords (user_id, app_password_id, label, secret_hash, created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6)";
pub(crate) const DELETE_APP_PASSWORDS: &str = "DELETE FROM app_passwords WHERE user_id = $1";
pub(crate) const DELETE_DEVICE_APP_PASSWORDS: &str =
    "DELETE FROM app_passwords WHERE user_id = $1 AND created_by = $2";
pub(crate) const SELECT_APP_PASSWORDS: &str = "SELECT app_password_id, label, created_at, last_used_at FROM app_passwords \
     WHERE user_id = $1 ORDER BY created_at, app_password_id";
pub(crate) const DELETE_APP_PASSWORD: &str =
    "DELETE FROM app_passwords WHERE user_id = $1 AND app_password_id = $2";
pub(crate) const SELECT_APP_PASSWORD_BY_HASH: &str = "SELECT a.app_password_id, a.label, a.created_at, a.last_used_at \
     FROM app_passwords a JOIN users u ON u.user_id = a.user_id \
     WHERE a.user_id = $1 AND a.secret_hash = $2 AND u.disabled_at IS NULL";
pub(crate) const TOUCH_APP_PASSWORD: &str =
    "UPDATE app_passwords SET last_used_at = $3 WHERE user_id = $1 AND app_password_id = $2";

/// Implements [`AccountStore`] for a backend struct that has `writer()` and `reader()` pools. One body for both backends keeps
/// them from drifting apart. Invoke it inside a module of its own: it brings its imports.
macro_rules! impl_account_store {
    ($store:ty, $row:ty) => {
        use nextsync_core::account::Email;
        use nextsync_core::ids::{AppPasswordId, DeviceId, TokenHash, UserId};
        use nextsync_core::secret::Secret;
        use nextsync_core::time::Timestamp;
        use $crate::StoreError;
        use $crate::accounts::*;

        mod account_rows {
            use super::*;
            use sqlx::Row as _;
            use uuid::Uuid;

            pub(super) fn ts(row: &$row, column: &str) -> Result<Timestamp, StoreError> {
                Ok(Timestamp::from_millis(row.try_get::<i64, _>(column)?))
            }

            pub(super) fn opt_ts(row: &$row, column: &str) -> Result<Option<Timestamp>, StoreError> {
                Ok(row
                    .try_get::<Option<i64>, _>(column)?
                    .map(Timestamp::from_millis))
            }

            pub(super) fn uuid(row: &$row, column: &str) -> Result<Uuid, StoreError> {
                Ok(row.try_get::<Uuid, _>(column)?)
            }

            pub(super) fn user(row: &$row) -> Result<User, StoreError> {
                Ok(User {
                    id: UserId::from_uuid(uuid(row, "user_id")?),
                    email: Email::from_trusted(row.try_get("email")?),
                    password_hash: Secret::new(row.try_get::<String, _>("password_hash")?),
                    created_at: ts(row, "created_at")?,
                    disabled_at: opt_ts(row, "disabled_at")?,
                })
            }

            pub(super) fn device(row: &$row) -> Result<Device, StoreError> {
                Ok(Device {
                    device_id: DeviceId::from_uuid(uuid(row, "device_id")?),
                    name: row.try_get("name")?,
                    kind: DeviceKind::from_stored(row.try_get("kind")?),
                    created_at: ts(row, "created_at")?,
                    last_seen_at: ts(row, "last_seen_at")?,
                })
            }

            pub(super) fn app_password(row: &$row) -> Result<AppPassword, StoreError> {
                Ok(AppPassword {
                    id: AppPasswordId::from_uuid(uuid(row, "app_password_id")?),
                    label: row.try_get("label")?,
                    created_at: ts(row, "created_at")?,
                    last_used_at: opt_ts(row, "last_used_at")?,
                })
            }
        }

        #[async_trait::async_trait]
        impl AccountStore for $store {
            async fn create_user(
                &self,
                user: &NewUser,
                device: Option<&NewDevice>,
            ) -> Result<(), StoreError> {
                let mut tx = self.writer().begin().await?;
                sqlx::query(INSERT_USER)
                    .bind(user.id.as_uuid())
                    .bind(user.email.as_str())
                    .bind(user.password_hash.expose())
                    .bind(user.created_at.as_millis())
                    .execute(&mut *tx)
                    .await?;
                // Every feed starts in its own epoch, so a cursor never fits another user's feed.
                sqlx::query(INSERT_FEED_HEAD)
                    .bind(user.id.as_uuid())
                    .bind(uuid::Uuid::new_v4().simple().to_string())
                    .execute(&mut *tx)
                    .await?;
                if let Some(device) = device {
                    insert_device(&mut tx, device).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn user_by_email(&self, email: &Email) -> Result<Option<User>, StoreError> {
                sqlx::query(SELECT_USER_BY_EMAIL)
                    .bind(email.as_str())
                    .fetch_optional(self.reader())
                    .await?
                    .as_ref()
                    .map(account_rows::user)
                    .transpose()
            }

            async fn user_by_id(&self, user: UserId) -> Result<Option<User>, StoreError> {
                sqlx::query(SELECT_USER_BY_ID)
                    .bind(user.as_uuid())
                    .fetch_optional(self.reader())
                    .await?
                    .as_ref()
                    .map(account_rows::user)
                    .transpose()
            }

            async fn list_users(&self) -> Result<Vec<UserSummary>, StoreError> {
                use sqlx::Row as _;
                let rows = sqlx::query(SELECT_USERS).fetch_all(self.reader()).await?;
                rows.iter()
                    .map(|row| {
                        Ok(UserSummary {
                            id: UserId::from_uuid(account_rows::uuid(row, "user_id")?),
                            email: Email::from_trusted(row.try_get("email")?),
                            created_at: account_rows::ts(row, "created_at")?,
                            disabled_at: account_rows::opt_ts(row, "disabled_at")?,
                            active_devices: row.try_get("active_devices")?,
                        })
                    })
                    .collect()
            }

            async fn set_user_disabled(
                &self,
                user: UserId,
                disabled_at: Option<Timestamp>,
            ) -> Result<bool, StoreError> {
                let done = sqlx::query(SET_USER_DISABLED)
                    .bind(user.as_uuid())
                    .bind(disabled_at.map(|t| t.as_millis()))
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn delete_user(&self, user: UserId) -> Result<bool, StoreError> {
                // Every other table references users with ON DELETE CASCADE.
                let done = sqlx::query(DELETE_USER)
                    .bind(user.as_uuid())
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn set_password(
                &self,
                user: UserId,
                password_hash: &Secret,
                keep: Option<DeviceId>,
                now: Timestamp,
            ) -> Result<bool, StoreError> {
                let mut tx = self.writer().begin().await?;
                let done = sqlx::query(SET_PASSWORD)
                    .bind(user.as_uuid())
                    .bind(password_hash.expose())
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Ok(false);
                }
                revoke_devices_except(&mut tx, user, keep, now).await?;
                delete_app_passwords(&mut tx, user).await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn add_device(&self, device: &NewDevice) -> Result<(), StoreError> {
                let mut tx = self.writer().begin().await?;
                insert_device(&mut tx, device).await?;
                tx.commit().await?;
                Ok(())
            }

            async fn device_status(
                &self,
                user: UserId,
                device: DeviceId,
            ) -> Result<Option<DeviceStatus>, StoreError> {
                let row = sqlx::query(SELECT_DEVICE_STATUS)
                    .bind(user.as_uuid())
                    .bind(device.as_uuid())
                    .fetch_optional(self.reader())
                    .await?;
                row.map(|row| {
                    Ok(DeviceStatus {
                        revoked: account_rows::opt_ts(&row, "revoked_at")?.is_some(),
                        user_disabled: account_rows::opt_ts(&row, "disabled_at")?.is_some(),
                        last_seen_at: account_rows::ts(&row, "last_seen_at")?,
                        signed_in_at: account_rows::ts(&row, "created_at")?,
                    })
                })
                .transpose()
            }

            async fn touch_device(
                &self,
                user: UserId,
                device: DeviceId,
                now: Timestamp,
            ) -> Result<(), StoreError> {
                sqlx::query(TOUCH_DEVICE)
                    .bind(user.as_uuid())
                    .bind(device.as_uuid())
                    .bind(now.as_millis())
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn list_devices(&self, user: UserId) -> Result<Vec<Device>, StoreError> {
                sqlx::query(SELECT_DEVICES)
                    .bind(user.as_uuid())
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(account_rows::device)
                    .collect()
            }

            async fn revoke_device(
                &self,
                user: UserId,
                device: DeviceId,
                now: Timestamp,
                end: DeviceEnd,
            ) -> Result<bool, StoreError> {
                let mut tx = self.writer().begin().await?;
                let revoked = revoke_one_device(&mut tx, user, device, now, end).await?;
                tx.commit().await?;
                Ok(revoked)
            }

            async fn count_active_devices(&self) -> Result<i64, StoreError> {
                Ok(sqlx::query_scalar(COUNT_ACTIVE_DEVICES)
                    .fetch_one(self.reader())
                    .await?)
            }

            async fn rotate_refresh_token(
                &self,
                user: UserId,
                presented: &TokenHash,
                next: &NewRefreshToken,
            ) -> Result<RefreshOutcome, StoreError> {
                let now = next.created_at;
                let mut tx = self.writer().begin().await?;
                // The conditional UPDATE is the lock: of two concurrent refreshes with one
                // token, exactly one sees `used_at IS NULL`.
                let used = sqlx::query(USE_REFRESH)
                    .bind(user.as_uuid())
                    .bind(&presented.0[..])
                    .bind(now.as_millis())
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(row) = used else {
                    let earlier = sqlx::query(SELECT_USED_REFRESH)
                        .bind(user.as_uuid())
                        .bind(&presented.0[..])
                        .fetch_optional(&mut *tx)
                        .await?;
                    let Some(earlier) = earlier else {
                        return Ok(RefreshOutcome::Invalid);
                    };
                    let device_id = DeviceId::from_uuid(account_rows::uuid(&earlier, "device_id")?);
                    revoke_one_device(&mut tx, user, device_id, now, DeviceEnd::Remove).await?;
                    tx.commit().await?;
                    return Ok(RefreshOutcome::Reused { device_id });
                };
                let device_id = DeviceId::from_uuid(account_rows::uuid(&row, "device_id")?);
                let expires_at = account_rows::ts(&row, "expires_at")?;
                let status = sqlx::query(SELECT_DEVICE_STATUS)
                    .bind(user.as_uuid())
                    .bind(device_id.as_uuid())
                    .fetch_optional(&mut *tx)
                    .await?;
                let active = match status {
                    Some(row) => {
                        account_rows::opt_ts(&row, "revoked_at")?.is_none()
                            && account_rows::opt_ts(&row, "disabled_at")?.is_none()
                    }
                    None => false,
                };
                if !active || expires_at <= now {
                    // Keep the token marked used: it can never become valid again.
                    tx.commit().await?;
                    return Ok(RefreshOutcome::Invalid);
                }
                sqlx::query(INSERT_REFRESH)
                    .bind(user.as_uuid())
                    .bind(&next.hash.0[..])
                    .bind(device_id.as_uuid())
                    .bind(next.created_at.as_millis())
                    .bind(next.expires_at.as_millis())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(PRUNE_USED_REFRESH)
                    .bind(user.as_uuid())
                    .bind(device_id.as_uuid())
                    .bind(now.minus_secs(USED_REFRESH_TOKEN_MEMORY_SECS).as_millis())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(RefreshOutcome::Rotated { device_id })
            }

            async fn create_password_reset(
                &self,
                user: UserId,
                hash: &TokenHash,
                created_at: Timestamp,
                expires_at: Timestamp,
            ) -> Result<(), StoreError> {
                sqlx::query(INSERT_RESET)
                    .bind(user.as_uuid())
                    .bind(&hash.0[..])
                    .bind(created_at.as_millis())
                    .bind(expires_at.as_millis())
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn consume_password_reset(
                &self,
                user: UserId,
                hash: &TokenHash,
                new_password_hash: &Secret,
                now: Timestamp,
            ) -> Result<ResetOutcome, StoreError> {
                let mut tx = self.writer().begin().await?;
                let used = sqlx::query(USE_RESET)
                    .bind(user.as_uuid())
                    .bind(&hash.0[..])
                    .bind(now.as_millis())
                    .fetch_optional(&mut *tx)
                    .await?;
                if used.is_none() {
                    let row = sqlx::query(SELECT_RESET)
                        .bind(user.as_uuid())
                        .bind(&hash.0[..])
                        .fetch_optional(&mut *tx)
                        .await?;
                    return Ok(match row {
                        None => ResetOutcome::Unknown,
                        Some(row) if account_rows::opt_ts(&row, "used_at")?.is_some() => {
                            ResetOutcome::AlreadyUsed
                        }
                        Some(_) => ResetOutcome::Expired,
                    });
                }
                sqlx::query(SET_PASSWORD)
                    .bind(user.as_uuid())
                    .bind(new_password_hash.expose())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(VOID_RESETS)
                    .bind(user.as_uuid())
                    .bind(now.as_millis())
                    .execute(&mut *tx)
                    .await?;
                revoke_devices_except(&mut tx, user, None, now).await?;
                delete_app_passwords(&mut tx, user).await?;
                tx.commit().await?;
                Ok(ResetOutcome::Done)
            }

            async fn create_app_password(&self, password: &NewAppPassword) -> Result<(), StoreError> {
                sqlx::query(INSERT_APP_PASSWORD)
                    .bind(password.user_id.as_uuid())
                    .bind(password.id.as_uuid())
                    .bind(&password.label)
                    .bind(&password.secret_hash.0[..])
                    .bind(password.created_at.as_millis())
                    .bind(password.created_by.as_uuid())
                    .execute(self.writer())
                    .await?;
                Ok(())
            }

            async fn list_app_passwords(&self, user: UserId) -> Result<Vec<AppPassword>, StoreError> {
                sqlx::query(SELECT_APP_PASSWORDS)
                    .bind(user.as_uuid())
                    .fetch_all(self.reader())
                    .await?
                    .iter()
                    .map(account_rows::app_password)
                    .collect()
            }

            async fn delete_app_password(&self, user: UserId, id: AppPasswordId) -> Result<bool, StoreError> {
                let done = sqlx::query(DELETE_APP_PASSWORD)
                    .bind(user.as_uuid())
                    .bind(id.as_uuid())
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn app_password_by_hash(
                &self,
                user: UserId,
                hash: &TokenHash,
            ) -> Result<Option<AppPassword>, StoreError> {
                sqlx::query(SELECT_APP_PASSWORD_BY_HASH)
                    .bind(user.as_uuid())
                    .bind(&hash.0[..])
                    .fetch_optional(self.reader())
                    .await?
                    .as_ref()
                    .map(account_rows::app_password)
                    .transpose()
            }

            async fn touch_app_password(
                &self,
                user: UserId,
                id: AppPasswordId,
                now: Timestamp,
            ) -> Result<(), StoreError> {
                sqlx::query(TOUCH_APP_PASSWORD)
                    .bind(user.as_uuid())
                    .bind(id.as_uuid())
                    .bind(now.as_millis())
                    .execute(self.writer())
                    .await?;
                Ok(())
            }
        }

        async fn insert_device(
            tx: &mut sqlx::Transaction<'_, <$row as sqlx::Row>::Database>,
            device: &NewDevice,
        ) -> Result<(), StoreError> {
            let now = device.refresh.created_at.as_millis();
            sqlx::query(INSERT_DEVICE)
                .bind(device.user_id.as_uuid())
                .bind(device.device_id.as_uuid())
                .bind(&device.name)
                .bind(now)
                .bind(device.kind.as_str())
                .execute(&mut **tx)
                .await?;
            sqlx::query(INSERT_REFRESH)
                .bind(device.user_id.as_uuid())
                .bind(&device.refresh.hash.0[..])
                .bind(device.device_id.as_uuid())
                .bind(now)
                .bind(device.refresh.expires_at.as_millis())
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        /// Revokes one device; with [`DeviceEnd::Remove`] the app passwords it made go too.
        async fn revoke_one_device(
            tx: &mut sqlx::Transaction<'_, <$row as sqlx::Row>::Database>,
            user: UserId,
            device: DeviceId,
            now: Timestamp,
            end: DeviceEnd,
        ) -> Result<bool, StoreError> {
            let done = sqlx::query(REVOKE_DEVICE)
                .bind(user.as_uuid())
                .bind(device.as_uuid())
                .bind(now.as_millis())
                .execute(&mut **tx)
                .await?;
            if end == DeviceEnd::Remove {
                sqlx::query(DELETE_DEVICE_APP_PASSWORDS)
                    .bind(user.as_uuid())
                    .bind(device.as_uuid())
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(done.rows_affected() == 1)
        }

        /// A new password ends every app password: they were granted under the old one.
        async fn delete_app_passwords(
            tx: &mut sqlx::Transaction<'_, <$row as sqlx::Row>::Database>,
            user: UserId,
        ) -> Result<(), StoreError> {
            sqlx::query(DELETE_APP_PASSWORDS)
                .bind(user.as_uuid())
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        async fn revoke_devices_except(
            tx: &mut sqlx::Transaction<'_, <$row as sqlx::Row>::Database>,
            user: UserId,
            keep: Option<DeviceId>,
            now: Timestamp,
        ) -> Result<(), StoreError> {
            sqlx::query(REVOKE_DEVICES_EXCEPT)
                .bind(user.as_uuid())
                .bind(now.as_millis())
                .bind(keep.map(|d| *d.as_uuid()))
                .execute(&mut **tx)
                .await?;
            Ok(())
        }
    };
}

pub(crate) use impl_account_store;
