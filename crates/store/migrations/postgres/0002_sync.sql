-- The sync core: per-user feed heads, records, remembered mutation ids, conflicts.

-- One row per user: the highest seq handed out and the feed's epoch (part of every cursor).
-- Writers lock this row (SELECT … FOR UPDATE) for the whole write transaction, so seqs of
-- one user are allocated and committed in order and a reader never passes a seq that
-- becomes visible later.
CREATE TABLE feed_heads (
    user_id UUID   NOT NULL PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    epoch   TEXT   NOT NULL
);
INSERT INTO feed_heads (user_id, seq, epoch) SELECT user_id, 0, md5(random()::text || user_id::text) FROM users;

-- fields: {"name":{"v":value,"h":"stamp","s":seq}}; tombstone: the deletion's stamp.
-- Hash-partitioned by user: the data shards by user_id.
CREATE TABLE records (
    user_id       UUID   NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    collection    TEXT   NOT NULL,
    record_id     TEXT   NOT NULL,
    fields        TEXT   NOT NULL,
    tombstone     TEXT,
    tombstone_seq BIGINT,
    seq           BIGINT NOT NULL,
    PRIMARY KEY (user_id, collection, record_id)
) PARTITION BY HASH (user_id);
CREATE TABLE records_p00 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 0);
CREATE TABLE records_p01 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 1);
CREATE TABLE records_p02 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 2);
CREATE TABLE records_p03 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 3);
CREATE TABLE records_p04 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 4);
CREATE TABLE records_p05 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 5);
CREATE TABLE records_p06 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 6);
CREATE TABLE records_p07 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 7);
CREATE TABLE records_p08 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 8);
CREATE TABLE records_p09 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 9);
CREATE TABLE records_p10 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 10);
CREATE TABLE records_p11 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 11);
CREATE TABLE records_p12 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 12);
CREATE TABLE records_p13 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 13);
CREATE TABLE records_p14 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 14);
CREATE TABLE records_p15 PARTITION OF records FOR VALUES WITH (MODULUS 16, REMAINDER 15);
CREATE UNIQUE INDEX records_feed ON records (user_id, seq);

CREATE TABLE applied_mutations (
    user_id     UUID   NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    mutation_id TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, mutation_id)
);

-- kept/lost: {"value":…,"hlc":"stamp","deleted":bool}
CREATE TABLE conflicts (
    user_id     UUID   NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    conflict_id UUID   NOT NULL,
    collection  TEXT   NOT NULL,
    record_id   TEXT   NOT NULL,
    field       TEXT   NOT NULL,
    kept        TEXT   NOT NULL,
    lost        TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    resolved_at BIGINT,
    PRIMARY KEY (user_id, conflict_id)
);
