-- Folder moves. A scan that finds a folder renamed whole (the same inode under a new name, the
-- same items under it) records the old items' deletions and the new ones' additions in one
-- transaction, numbered together, and notes the move here: a sender may then announce the
-- range as one operation to a peer that can derive those entries from its own prior state.
-- A note says nothing the items do not: dropping one only costs the peer more entries.
CREATE TABLE folder_moves (
    source_id       TEXT NOT NULL REFERENCES sources(id) ON DELETE CASCADE,
    first_sequence  INTEGER NOT NULL,
    last_sequence   INTEGER NOT NULL,
    from_key        TEXT NOT NULL,
    to_key          TEXT NOT NULL,
    -- Live items moved: the folder and everything under it.
    items           INTEGER NOT NULL,
    PRIMARY KEY (source_id, first_sequence)
) WITHOUT ROWID;

-- A new folder's old name, found by its inode: only live folders are looked up.
CREATE INDEX items_live_folders_by_inode ON items (source_id, inode)
    WHERE kind = 1 AND deleted = 0;
