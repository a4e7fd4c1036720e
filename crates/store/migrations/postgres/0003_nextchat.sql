-- The NextChat doors (WebDAV and Upstash): per-account door state, remembered entity
-- versions, sealed secrets, kept uploads, staged Upstash chunks.

-- One row per account that used a door or changed its NextChat settings.
CREATE TABLE nextchat_accounts (
    user_id           UUID    NOT NULL PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    sync_settings     BOOLEAN NOT NULL DEFAULT FALSE,
    sync_secrets      BOOLEAN NOT NULL DEFAULT FALSE,
    -- The WebDAV folder `chatgpt-next-web` exists (MKCOL, or implicitly by an upload).
    folder_created_at BIGINT,
    updated_at        BIGINT  NOT NULL
);

-- Every accepted version of an entity, by hash: a re-upload of a known one is stale.
CREATE TABLE nextchat_versions (
    user_id    UUID NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    collection TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    PRIMARY KEY (user_id, collection, record_id, hash)
);

-- Credentials from access-control/app-config, only for accounts that opted in; sealed with
-- the server's secrets key (XChaCha20-Poly1305). path: JSON array of keys.
CREATE TABLE nextchat_secrets (
    user_id    UUID    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    path       TEXT    NOT NULL,
    sealed     BYTEA   NOT NULL,
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (user_id, path)
);

-- The last accepted uploads, sanitized and without secrets; body is zstd-compressed JSON.
CREATE TABLE nextchat_snapshots (
    user_id     UUID    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    snapshot_id UUID    NOT NULL,
    created_at  BIGINT  NOT NULL,
    source      TEXT    NOT NULL,
    bytes       BIGINT  NOT NULL,
    sessions    BIGINT  NOT NULL,
    messages    BIGINT  NOT NULL,
    digest      TEXT    NOT NULL,
    body        BYTEA   NOT NULL,
    PRIMARY KEY (user_id, snapshot_id)
);

-- Upstash chunk writes waiting for their count write (the commit).
CREATE TABLE nextchat_staging (
    user_id    UUID    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    chunk      BIGINT  NOT NULL,
    body       TEXT    NOT NULL,
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (user_id, name, chunk)
);
