-- Items of every kind are key + header + body. The key is a file's path or a record's UID: the
-- store compares keys as bytes and knows nothing of either (no file-name rule lives in SQL).
-- The header is version, sequence, deleted, origin, modified_by. The body is a file's
-- metadata, hash and chunk list, or a record, kept whole (encoded) as the base of the next
-- three-way merge. The apply journal holds the same shape.
ALTER TABLE items RENAME COLUMN path TO key;
ALTER TABLE items ADD COLUMN record BLOB;
ALTER TABLE apply_intents RENAME COLUMN path TO key;
ALTER TABLE apply_intents ADD COLUMN record BLOB;
