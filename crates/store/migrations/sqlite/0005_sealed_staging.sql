-- Staged Upstash chunks are sealed by the server (XChaCha20-Poly1305 under its secrets key)
-- before they reach the database: a chunk is raw NextChat JSON, API keys included, and a
-- deleted row's bytes stay readable in the database file and its WAL. `bytes` is the
-- plaintext length, so caps are checked without opening anything. Rows staged before this
-- migration (plaintext, at most a day old) are dropped. (Version 4 is PostgreSQL's only.)
DROP TABLE nextchat_staging;
CREATE TABLE nextchat_staging (
    user_id    BLOB    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    name       TEXT    NOT NULL,
    chunk      INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    sealed     BLOB    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, name, chunk)
);
-- The housekeeping task expires abandoned uploads across every account.
CREATE INDEX nextchat_staging_by_age ON nextchat_staging (updated_at);
