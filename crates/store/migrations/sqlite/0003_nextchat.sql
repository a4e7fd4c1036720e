-- The NextChat doors (WebDAV and Upstash): per-account door state, remembered entity
-- versions, sealed secrets, kept uploads, staged Upstash chunks.

-- One row per account that used a door or changed its NextChat settings.
CREATE TABLE nextchat_accounts (
    user_id           BLOB    NOT NULL PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    sync_settings     INTEGER NOT NULL DEFAULT 0,
    sync_secrets      INTEGER NOT NULL DEFAULT 0,
    -- The WebDAV folder `chatgpt-next-web` exists (MKCOL, or implicitly by an upload).
    folder_created_at INTEGER,
    updated_at        INTEGER NOT NULL
) WITHOUT ROWID;

-- Every accepted version of an entity, by hash: a re-upload of a known one is stale.
CREATE TABLE nextchat_versions (
    user_id    BLOB NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    collection TEXT NOT NULL,
    record_id  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    PRIMARY KEY (user_id, collection, record_id, hash)
) WITHOUT ROWID;

-- Credentials from access-control/app-config, only for accounts that opted in; sealed with
-- the server's secrets key (XChaCha20-Poly1305). path: JSON array of keys.
CREATE TABLE nextchat_secrets (
    user_id    BLOB    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    path       TEXT    NOT NULL,
    sealed     BLOB    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, path)
) WITHOUT ROWID;

-- The last accepted uploads, sanitized and without secrets; body is zstd-compressed JSON.
CREATE TABLE nextchat_snapshots (
    user_id     BLOB    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    snapshot_id BLOB    NOT NULL,
    created_at  INTEGER NOT NULL,
    source      TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    sessions    INTEGER NOT NULL,
    messages    INTEGER NOT NULL,
    digest      TEXT    NOT NULL,
    body        BLOB    NOT NULL,
    PRIMARY KEY (user_id, snapshot_id)
);

-- Upstash chunk writes waiting for their count write (the commit).
CREATE TABLE nextchat_staging (
    user_id    BLOB    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    chunk      INTEGER NOT NULL,
    body       TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, name, chunk)
);
