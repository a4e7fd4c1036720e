-- Record history: one undo entry per visible change of a record (nextsync_core::history),
-- written by the apply that made the change. The trash is the deletions no later entry
-- follows; point-in-time restore rewinds records through the entries after a moment.
-- kind: 0 created, 1 changed, 2 deleted. undo: {"v":{old values},"u":[fields added]}.
-- batch: the last seq of the apply (records written together share it). at: Unix ms.
-- Pruned by age (the housekeeping task): deletions after the trash retention, the rest
-- after the history retention.
CREATE TABLE record_history (
    user_id    BLOB    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    collection TEXT    NOT NULL,
    record_id  TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    batch      INTEGER NOT NULL,
    at         INTEGER NOT NULL,
    kind       INTEGER NOT NULL,
    undo       TEXT    NOT NULL,
    PRIMARY KEY (user_id, collection, record_id, seq)
);
CREATE INDEX record_history_by_age ON record_history (at);
CREATE INDEX record_history_deletions ON record_history (user_id, seq) WHERE kind = 2;
