-- Hubs this device leaves sealed bundles at, pinned by device ID.
CREATE TABLE hubs (
    device_id      TEXT PRIMARY KEY NOT NULL,
    address        TEXT NOT NULL,
    added_unix_ms  INTEGER NOT NULL
) WITHOUT ROWID;

-- Each source's keys by generation: the newest seals, the older ones still open what they
-- sealed. Secret: the database lives in the owner-only home.
CREATE TABLE source_keys (
    source_id   TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    generation  INTEGER NOT NULL,
    key         BLOB NOT NULL,
    PRIMARY KEY (source_id, generation)
) WITHOUT ROWID;

-- Per hub and source: this device's index is uploaded through this local sequence.
CREATE TABLE hub_uploads (
    hub_id     TEXT NOT NULL REFERENCES hubs(device_id) ON DELETE CASCADE,
    source_id  TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    sequence   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hub_id, source_id)
) WITHOUT ROWID;

-- Devices removed from a source (`source unshare`): refused at its hubs and never added
-- there again by this device.
CREATE TABLE source_removals (
    source_id  TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    device_id  TEXT NOT NULL,
    PRIMARY KEY (source_id, device_id)
) WITHOUT ROWID;
