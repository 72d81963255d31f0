//! The service's SQLite access. The service never creates or changes the
//! schema (migrate_dhash does); it opens the existing file read-write,
//! checks `schema_migrations`, and reads/writes `hashes` and
//! `low_confidence_queue`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

/// The built-in migrations, embedded so `bundle` works from any binary.
pub const BUILTIN_MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_create_hashes.up.sql",
        include_str!("../migrations/0001_create_hashes.up.sql"),
    ),
    (
        "0001_create_hashes.down.sql",
        include_str!("../migrations/0001_create_hashes.down.sql"),
    ),
    (
        "0002_add_source.up.sql",
        include_str!("../migrations/0002_add_source.up.sql"),
    ),
    (
        "0002_add_source.down.sql",
        include_str!("../migrations/0002_add_source.down.sql"),
    ),
];

/// The schema version the built-in migrations reach.
pub const BUILTIN_SCHEMA_VERSION: i64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {0} does not exist (create it with migrate_dhash)")]
    Missing(String),
    #[error("cannot open database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("database {0} has no schema_migrations table (run migrate_dhash first)")]
    NoMigrationsTable(String),
    #[error("database {0} has no applied migrations (run migrate_dhash first)")]
    NoMigrations(String),
    #[error("database {path} is at schema version {have}, but release {release} needs {need} (run migrate_dhash forward)")]
    Behind {
        path: String,
        have: i64,
        need: i64,
        release: String,
    },
    #[error("database {path}: {source}")]
    Query {
        path: String,
        source: rusqlite::Error,
    },
}

/// Opens the existing database read-write (never creates it).
pub fn open(path: &Path) -> Result<Connection, DbError> {
    let p = path.display().to_string();
    if !path.is_file() {
        return Err(DbError::Missing(p));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|source| DbError::Open {
        path: p.clone(),
        source,
    })?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|source| DbError::Open { path: p, source })?;
    Ok(conn)
}

fn q(path: &Path) -> impl Fn(rusqlite::Error) -> DbError + '_ {
    move |source| DbError::Query {
        path: path.display().to_string(),
        source,
    }
}

fn table_exists(conn: &Connection, path: &Path, name: &str) -> Result<bool, DbError> {
    conn.query_row(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(q(path))
}

/// `SELECT MAX(version) FROM schema_migrations`, distinguishing a missing table.
pub fn schema_version(conn: &Connection, path: &Path) -> Result<i64, DbError> {
    if !table_exists(conn, path, "schema_migrations")? {
        return Err(DbError::NoMigrationsTable(path.display().to_string()));
    }
    let v: Option<i64> = conn
        .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .map_err(q(path))?;
    v.ok_or_else(|| DbError::NoMigrations(path.display().to_string()))
}

/// What the service learned about the database at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbState {
    pub schema_version: i64,
    /// Whether `hashes.source` exists (migration 0002).
    pub has_source: bool,
}

/// Opens the database and checks it can serve release `release` needing
/// schema `need`: schema_migrations present, version ≥ need, tables queryable.
pub fn check(path: &Path, need: i64, release: &str) -> Result<(Connection, DbState), DbError> {
    let conn = open(path)?;
    let have = schema_version(&conn, path)?;
    if have < need {
        return Err(DbError::Behind {
            path: path.display().to_string(),
            have,
            need,
            release: release.to_string(),
        });
    }
    conn.query_row("SELECT COUNT(*) FROM hashes WHERE 0", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(q(path))?;
    conn.query_row(
        "SELECT COUNT(*) FROM low_confidence_queue WHERE 0",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map_err(q(path))?;
    let has_source = conn
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('hashes') WHERE name = 'source'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(q(path))?
        > 0;
    Ok((
        conn,
        DbState {
            schema_version: have,
            has_source,
        },
    ))
}

pub fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One hash to store.
pub struct NewHash<'a> {
    pub dhash: &'a str,
    pub confidence: f64,
    pub width: u32,
    pub height: u32,
    pub bytes: u64,
    pub source: &'a str,
    pub low_confidence: bool,
}

/// Inserts a hash (and its queue item when low-confidence); returns its id.
pub fn insert_hash(
    conn: &mut Connection,
    path: &Path,
    state: DbState,
    h: &NewHash<'_>,
) -> Result<i64, DbError> {
    let now = now_text();
    let tx = conn.transaction().map_err(q(path))?;
    if state.has_source {
        tx.execute(
            "INSERT INTO hashes (dhash, confidence, width, height, bytes, created_at, source) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                h.dhash,
                h.confidence,
                h.width,
                h.height,
                h.bytes as i64,
                now,
                h.source
            ],
        )
        .map_err(q(path))?;
    } else {
        tx.execute(
            "INSERT INTO hashes (dhash, confidence, width, height, bytes, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                h.dhash,
                h.confidence,
                h.width,
                h.height,
                h.bytes as i64,
                now
            ],
        )
        .map_err(q(path))?;
    }
    let id = tx.last_insert_rowid();
    if h.low_confidence {
        tx.execute(
            "INSERT INTO low_confidence_queue (hash_id, created_at) VALUES (?1, ?2)",
            params![id, now],
        )
        .map_err(q(path))?;
    }
    tx.commit().map_err(q(path))?;
    Ok(id)
}

/// Inserts `n` synthetic low-confidence items (the `low_confidence_flood` fault).
pub fn flood(conn: &mut Connection, path: &Path, state: DbState, n: u64) -> Result<(), DbError> {
    let now = now_text();
    let tx = conn.transaction().map_err(q(path))?;
    {
        let mut ins_hash = if state.has_source {
            tx.prepare(
                "INSERT INTO hashes (dhash, confidence, width, height, bytes, created_at, source) \
                 VALUES ('0000000000000000', 0.0, 0, 0, 0, ?1, 'fault:low_confidence_flood')",
            )
        } else {
            tx.prepare(
                "INSERT INTO hashes (dhash, confidence, width, height, bytes, created_at) \
                 VALUES ('0000000000000000', 0.0, 0, 0, 0, ?1)",
            )
        }
        .map_err(q(path))?;
        let mut ins_queue = tx
            .prepare("INSERT INTO low_confidence_queue (hash_id, created_at) VALUES (?1, ?2)")
            .map_err(q(path))?;
        for _ in 0..n {
            ins_hash.execute([&now]).map_err(q(path))?;
            let id = tx.last_insert_rowid();
            ins_queue.execute(params![id, now]).map_err(q(path))?;
        }
    }
    tx.commit().map_err(q(path))?;
    Ok(())
}

/// Queue length and the oldest item's timestamp.
pub fn queue_status(conn: &Connection, path: &Path) -> Result<(i64, Option<String>), DbError> {
    conn.query_row(
        "SELECT COUNT(*), MIN(created_at) FROM low_confidence_queue",
        [],
        |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?)),
    )
    .map_err(q(path))
}

/// Reads one hash row back (tests, diagnostics).
pub fn hash_by_id(
    conn: &Connection,
    path: &Path,
    id: i64,
) -> Result<Option<(String, f64)>, DbError> {
    conn.query_row(
        "SELECT dhash, confidence FROM hashes WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .map_err(q(path))
}
