-- Accounts, devices (one per sign-in; the refresh-token family), refresh tokens, password
-- resets and app passwords. Times are Unix milliseconds; ids are UUIDs stored as 16-byte
-- blobs; every key is led by user_id.

CREATE TABLE users (
    user_id       BLOB    NOT NULL PRIMARY KEY,
    email         TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    disabled_at   INTEGER
) WITHOUT ROWID;

CREATE TABLE devices (
    user_id      BLOB    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    device_id    BLOB    NOT NULL,
    name         TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER NOT NULL,
    revoked_at   INTEGER,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

CREATE TABLE refresh_tokens (
    user_id    BLOB    NOT NULL,
    token_hash BLOB    NOT NULL,
    device_id  BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    PRIMARY KEY (user_id, token_hash),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
) WITHOUT ROWID;
CREATE INDEX refresh_tokens_by_device ON refresh_tokens (user_id, device_id);

CREATE TABLE password_resets (
    user_id    BLOB    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    token_hash BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    PRIMARY KEY (user_id, token_hash)
) WITHOUT ROWID;

CREATE TABLE app_passwords (
    user_id         BLOB    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    app_password_id BLOB    NOT NULL,
    label           TEXT    NOT NULL,
    secret_hash     BLOB    NOT NULL,
    created_at      INTEGER NOT NULL,
    last_used_at    INTEGER,
    PRIMARY KEY (user_id, app_password_id),
    UNIQUE (user_id, secret_hash)
) WITHOUT ROWID;
