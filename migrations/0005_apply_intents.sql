-- The apply journal: a peer's difference about to be written into a source, recorded before
-- the temp file is renamed into place and cleared by the transaction that records the batch.
-- After a crash between the two, the next start finds the item on disk exactly as intended and
-- records it as applied, instead of mistaking it for a local change (a spurious conflict).
-- Columns as in items, with the intended metadata; no inode or sequence yet.
CREATE TABLE apply_intents (
    source_id       TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    path            TEXT NOT NULL,
    kind            INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    mode            INTEGER NOT NULL,
    version         BLOB NOT NULL,
    hash            BLOB,
    chunks          BLOB,
    symlink_target  TEXT,
    deleted         INTEGER NOT NULL DEFAULT 0,
    origin          TEXT,
    modified_by     TEXT,
    PRIMARY KEY (source_id, path)
) WITHOUT ROWID;
