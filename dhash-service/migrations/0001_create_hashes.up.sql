-- 0001_create_hashes: the hashes the service computed and the low-confidence
-- review queue (items whose image had too little contrast to trust the hash).
CREATE TABLE hashes (
    id INTEGER PRIMARY KEY,
    dhash TEXT NOT NULL,
    confidence REAL NOT NULL,
    width INTEGER,
    height INTEGER,
    bytes INTEGER,
    created_at TEXT NOT NULL
);
CREATE INDEX hashes_dhash ON hashes (dhash);
CREATE TABLE low_confidence_queue (
    id INTEGER PRIMARY KEY,
    hash_id INTEGER NOT NULL REFERENCES hashes (id),
    created_at TEXT NOT NULL
);
CREATE INDEX low_confidence_queue_created_at ON low_confidence_queue (created_at);
