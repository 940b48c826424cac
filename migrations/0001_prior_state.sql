-- Sources and the prior state of every item in them: what the agent last knew.
CREATE TABLE sources (
    id               TEXT PRIMARY KEY NOT NULL,
    path             TEXT NOT NULL,
    format           TEXT NOT NULL,
    paused           INTEGER NOT NULL DEFAULT 0,
    -- Highest local sequence this device has given a change in the source.
    sequence         INTEGER NOT NULL DEFAULT 0,
    created_unix_ms  INTEGER NOT NULL
);

-- Devices a source is shared with.
CREATE TABLE source_peers (
    source_id  TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    device_id  TEXT NOT NULL,
    PRIMARY KEY (source_id, device_id)
) WITHOUT ROWID;

-- kind: 0 file, 1 directory, 2 symlink. version: encoded version vector.
-- hash/chunks: xxh3-128 of the content and the encoded chunk list (files only).
-- deleted = 1 is a tombstone, kept so peers learn of the deletion.
CREATE TABLE items (
    source_id       TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    path            TEXT NOT NULL,
    kind            INTEGER NOT NULL,
    size            INTEGER NOT NULL,
    mtime_ns        INTEGER NOT NULL,
    inode           INTEGER NOT NULL,
    mode            INTEGER NOT NULL,
    version         BLOB NOT NULL,
    sequence        INTEGER NOT NULL,
    hash            BLOB,
    chunks          BLOB,
    symlink_target  TEXT,
    deleted         INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (source_id, path)
) WITHOUT ROWID;

CREATE INDEX items_by_sequence ON items (source_id, sequence);
