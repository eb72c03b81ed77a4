-- An erasure receipt records the destroyed data key: which key, and when it was destroyed.
ALTER TABLE erasure_receipt ADD COLUMN key_id TEXT;
ALTER TABLE erasure_receipt ADD COLUMN key_destroyed_at INTEGER;
