-- 0002_add_source: where a hash came from ("api" for POST /api/dhash/hash,
-- "fault:low_confidence_flood" for items a fault injected).
ALTER TABLE hashes ADD COLUMN source TEXT NOT NULL DEFAULT 'api';
