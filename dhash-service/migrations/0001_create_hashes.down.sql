-- Reverts 0001_create_hashes.
DROP TABLE IF EXISTS low_confidence_queue;
DROP TABLE IF EXISTS hashes;
