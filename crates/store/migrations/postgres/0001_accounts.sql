-- Accounts, devices (one per sign-in; the refresh-token family), refresh tokens, password
-- resets and app passwords. Times are Unix milliseconds (BIGINT, as on SQLite, so both
-- backends share every comparison); every key is led by user_id, the distribution column
-- should this schema ever move to a distributed PostgreSQL.

CREATE TABLE users (
    user_id       UUID   NOT NULL PRIMARY KEY,
    email         TEXT   NOT NULL UNIQUE,
    password_hash TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    disabled_at   BIGINT
);

CREATE TABLE devices (
    user_id      UUID   NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    device_id    UUID   NOT NULL,
    name         TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    revoked_at   BIGINT,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE refresh_tokens (
    user_id    UUID   NOT NULL,
    token_hash BYTEA  NOT NULL,
    device_id  UUID   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    PRIMARY KEY (user_id, token_hash),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);
CREATE INDEX refresh_tokens_by_device ON refresh_tokens (user_id, device_id);

CREATE TABLE password_resets (
    user_id    UUID   NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    token_hash BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    PRIMARY KEY (user_id, token_hash)
);

CREATE TABLE app_passwords (
    user_id         UUID   NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    app_password_id UUID   NOT NULL,
    label           TEXT   NOT NULL,
    secret_hash     BYTEA  NOT NULL,
    created_at      BIGINT NOT NULL,
    last_used_at    BIGINT,
    PRIMARY KEY (user_id, app_password_id),
    UNIQUE (user_id, secret_hash)
);
