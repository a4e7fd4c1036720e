-- Per-user, per-collection digests: see the SQLite twin of this migration.
CREATE TABLE collection_digests (
    user_id    UUID             NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    collection TEXT COLLATE "C" NOT NULL,
    lo         BIGINT           NOT NULL,
    hi         BIGINT           NOT NULL,
    records    BIGINT           NOT NULL,
    PRIMARY KEY (user_id, collection)
);
