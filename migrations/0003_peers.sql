-- Devices this device will talk to, pinned by device ID, and where to reach them.
CREATE TABLE peers (
    device_id      TEXT PRIMARY KEY NOT NULL,
    -- host:port to dial; NULL when the peer only dials in.
    address        TEXT,
    added_unix_ms  INTEGER NOT NULL
) WITHOUT ROWID;

-- Per peer and source: the highest sequence of that peer's index applied here.
CREATE TABLE peer_cursors (
    device_id  TEXT NOT NULL REFERENCES peers(device_id) ON DELETE CASCADE,
    source_id  TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    sequence   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, source_id)
) WITHOUT ROWID;
