-- Reverts 0002_add_source.
ALTER TABLE hashes DROP COLUMN source;
