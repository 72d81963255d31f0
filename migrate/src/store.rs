//! The database layer behind the runner. A [`MigrationStore`] knows which
//! migrations are applied and applies or reverts one migration together with
//! its `schema_migrations` row in one transaction. The runner only talks to
//! this trait, so another engine is one more `impl`, not a runner change.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::migration::Migration;

/// A row of `schema_migrations`.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedRecord {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    pub applied_at: String,
}

pub trait MigrationStore {
    /// Where the store lives, for messages (a path or a URL without credentials).
    fn describe(&self) -> String;
    /// Applied migrations ordered by version (empty for a new database).
    fn applied(&mut self) -> anyhow::Result<Vec<AppliedRecord>>;
    /// Runs `m.up_sql` and records the row, in one transaction: on error
    /// nothing of this migration remains.
    fn apply(&mut self, m: &Migration) -> anyhow::Result<()>;
    /// Runs `m.down_sql` and deletes the row, in one transaction.
    fn revert(&mut self, m: &Migration) -> anyhow::Result<()>;
}

/// The ledger table every store keeps (SQLite spelling).
pub const LEDGER_DDL: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite store (the environment's `database`).
pub struct SqliteStore {
    path: PathBuf,
    /// `None`: read-only look at a database that does not exist yet.
    conn: Option<Connection>,
    read_only: bool,
}

impl SqliteStore {
    /// Opens for writing, creating the folder, the file and the ledger table.
    pub fn open(path: &Path) -> anyhow::Result<SqliteStore> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.execute_batch(LEDGER_DDL)
            .with_context(|| format!("creating schema_migrations in {}", path.display()))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Some(conn),
            read_only: false,
        })
    }

    /// Opens read-only and never creates anything: a missing file is an
    /// empty database (nothing applied). For dry runs and status.
    pub fn open_read_only(path: &Path) -> anyhow::Result<SqliteStore> {
        if !path.exists() {
            return Ok(SqliteStore {
                path: path.to_path_buf(),
                conn: None,
                read_only: true,
            });
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("opening {} read-only", path.display()))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Some(conn),
            read_only: true,
        })
    }

    pub fn exists(&self) -> bool {
        self.conn.is_some()
    }

    fn writable(&mut self) -> anyhow::Result<&mut Connection> {
        if self.read_only {
            anyhow::bail!("{} is open read-only", self.path.display());
        }
        self.conn
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("{} is not open", self.path.display()))
    }
}

fn has_ledger(conn: &Connection) -> anyhow::Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl MigrationStore for SqliteStore {
    fn describe(&self) -> String {
        format!("sqlite:{}", self.path.display())
    }

    fn applied(&mut self) -> anyhow::Result<Vec<AppliedRecord>> {
        let Some(conn) = self.conn.as_ref() else {
            return Ok(Vec::new());
        };
        if !has_ledger(conn)? {
            return Ok(Vec::new());
        }
        let mut stmt = conn.prepare(
            "SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(AppliedRecord {
                version: r.get(0)?,
                name: r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                checksum: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
                applied_at: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
            })
        })?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row?);
        }
        Ok(out)
    }

    fn apply(&mut self, m: &Migration) -> anyhow::Result<()> {
        let conn = self.writable()?;
        let tx = conn.transaction()?;
        tx.execute_batch(&m.up_sql)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
            params![m.version, m.name, m.checksum, now()],
        )
        .map_err(|e| anyhow::anyhow!("recording version {}: {e}", m.version))?;
        tx.commit().map_err(|e| anyhow::anyhow!("commit: {e}"))?;
        Ok(())
    }

    fn revert(&mut self, m: &Migration) -> anyhow::Result<()> {
        let Some(down) = m.down_sql.as_deref() else {
            anyhow::bail!("{} has no .down.sql", m.label());
        };
        let conn = self.writable()?;
        let tx = conn.transaction()?;
        tx.execute_batch(down).map_err(|e| anyhow::anyhow!("{e}"))?;
        tx.execute(
            "DELETE FROM schema_migrations WHERE version = ?1",
            params![m.version],
        )
        .map_err(|e| anyhow::anyhow!("unrecording version {}: {e}", m.version))?;
        tx.commit().map_err(|e| anyhow::anyhow!("commit: {e}"))?;
        Ok(())
    }
}

/// `SELECT MAX(version) FROM schema_migrations`; `None` when the database,
/// the table or any row is missing. Never creates anything.
pub fn current_version(database: &Path) -> anyhow::Result<Option<i64>> {
    let mut store = SqliteStore::open_read_only(database)?;
    Ok(store.applied()?.iter().map(|r| r.version).max())
}
