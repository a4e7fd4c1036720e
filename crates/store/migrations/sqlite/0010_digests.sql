-- Per-user, per-collection digests of the live records (nextsync_core::digest): the XOR of
-- their hashes (two 64-bit halves) and their count. Every apply updates the collections it
-- changes once a user's digests exist; the row with collection '' marks that they do. The
-- first read computes them, under the user's write lock.
CREATE TABLE collection_digests (
    user_id    BLOB    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    collection TEXT    NOT NULL,
    lo         INTEGER NOT NULL,
    hi         INTEGER NOT NULL,
    records    INTEGER NOT NULL,
    PRIMARY KEY (user_id, collection)
) WITHOUT ROWID;
