-- Where each chunk can be found locally, so content already on this device is copied
-- rather than fetched. Filled by the scanner; rebuilt from items.chunks after this upgrade.
CREATE TABLE chunk_locations (
    hash       BLOB NOT NULL,
    source_id  TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    path       TEXT NOT NULL,
    offset     INTEGER NOT NULL,
    len        INTEGER NOT NULL,
    PRIMARY KEY (hash, source_id, path, offset)
) WITHOUT ROWID;

CREATE INDEX chunk_locations_by_item ON chunk_locations (source_id, path);

-- Items scanned before this table existed get their chunks indexed on the next start.
CREATE TABLE pending_maintenance (
    task TEXT PRIMARY KEY NOT NULL
) WITHOUT ROWID;
INSERT INTO pending_maintenance (task)
    SELECT 'rebuild_chunk_locations' WHERE EXISTS (SELECT 1 FROM items WHERE chunks IS NOT NULL);
