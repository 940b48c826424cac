-- Short ID of the device whose change made this version of the item (NULL when recorded
-- before this column). Conflict copies are named after it, so every device that keeps the
-- same losing version gives it the same name.
ALTER TABLE items ADD COLUMN modified_by TEXT;
