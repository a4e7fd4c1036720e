-- Record history: see the SQLite twin of this migration for the columns. Hash-partitioned
-- by user like records.
CREATE TABLE record_history (
    user_id    UUID             NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    collection TEXT COLLATE "C" NOT NULL,
    record_id  TEXT COLLATE "C" NOT NULL,
    seq        BIGINT           NOT NULL,
    batch      BIGINT           NOT NULL,
    at         BIGINT           NOT NULL,
    kind       SMALLINT         NOT NULL,
    undo       TEXT             NOT NULL,
    PRIMARY KEY (user_id, collection, record_id, seq)
) PARTITION BY HASH (user_id);
CREATE TABLE record_history_p00 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 0);
CREATE TABLE record_history_p01 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 1);
CREATE TABLE record_history_p02 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 2);
CREATE TABLE record_history_p03 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 3);
CREATE TABLE record_history_p04 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 4);
CREATE TABLE record_history_p05 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 5);
CREATE TABLE record_history_p06 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 6);
CREATE TABLE record_history_p07 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 7);
CREATE TABLE record_history_p08 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 8);
CREATE TABLE record_history_p09 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 9);
CREATE TABLE record_history_p10 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 10);
CREATE TABLE record_history_p11 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 11);
CREATE TABLE record_history_p12 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 12);
CREATE TABLE record_history_p13 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 13);
CREATE TABLE record_history_p14 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 14);
CREATE TABLE record_history_p15 PARTITION OF record_history FOR VALUES WITH (MODULUS 16, REMAINDER 15);
CREATE INDEX record_history_by_age ON record_history (at);
CREATE INDEX record_history_deletions ON record_history (user_id, seq) WHERE kind = 2;
