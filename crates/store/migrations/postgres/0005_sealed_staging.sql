-- Staged Upstash chunks are sealed by the server (XChaCha20-Poly1305 under its secrets key)
-- before they reach the database: a chunk is raw NextChat JSON, API keys included, and a
-- deleted row's bytes stay readable in the table files and the WAL until overwritten.
-- `bytes` is the plaintext length, so caps are checked without opening anything. Rows
-- staged before this migration (plaintext, at most a day old) are dropped.
DROP TABLE nextchat_staging;
CREATE TABLE nextchat_staging (
    user_id    UUID             NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    name       TEXT COLLATE "C" NOT NULL,
    chunk      BIGINT           NOT NULL,
    bytes      BIGINT           NOT NULL,
    sealed     BYTEA            NOT NULL,
    updated_at BIGINT           NOT NULL,
    PRIMARY KEY (user_id, name, chunk)
);
-- The housekeeping task expires abandoned uploads across every account.
CREATE INDEX nextchat_staging_by_age ON nextchat_staging (updated_at);
