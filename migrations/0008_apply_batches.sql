-- The apply journal in batches: a source task journals the next batch while the one before is
-- still being written, so a commit clears only the batches it records. Rows journaled before
-- this migration are batch 0, which recovery at start clears with the rest.
ALTER TABLE apply_intents ADD COLUMN batch INTEGER NOT NULL DEFAULT 0;
