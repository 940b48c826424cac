-- The peer a difference was applied from, while the item still holds exactly that version;
-- NULL once it changes here. The item is not echoed back to the device it came from.
ALTER TABLE items ADD COLUMN origin TEXT;
