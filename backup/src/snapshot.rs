//! The database side of a backup: the consistent snapshot of the live
//! database, and the one reading of its schema version (used when the
//! snapshot is taken and again when a backup is verified).

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rusqlite::{Connection, OpenFlags};

/// `SELECT MAX(version) FROM schema_migrations`: None when the table is
/// missing or empty.
pub(crate) fn schema_version(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    match conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
        r.get(0)
    }) {
        Ok(v) => Ok(v),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => Ok(None),
        Err(e) => Err(e),
    }
}

/// Copies the live database with SQLite's online backup API (consistent even
/// while the service writes). Returns the schema version it holds.
pub(crate) fn snapshot_db(src: &Path, dst: &Path) -> anyhow::Result<Option<i64>> {
    // Read-only first (never checkpoints or otherwise touches the live files);
    // read-write when SQLite needs it (a WAL database without its -shm file).
    let open = |flags: OpenFlags| -> rusqlite::Result<(Connection, Option<i64>)> {
        let c = Connection::open_with_flags(src, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
        c.busy_timeout(Duration::from_secs(10))?;
        // Migrations take the environment lock we hold, so this stays true for the copy.
        let schema = schema_version(&c)?;
        Ok((c, schema))
    };
    let (src_conn, schema) = open(OpenFlags::SQLITE_OPEN_READ_ONLY)
        .or_else(|_| open(OpenFlags::SQLITE_OPEN_READ_WRITE))
        .with_context(|| format!("opening the database {}", src.display()))?;
    let mut dst_conn = Connection::open(dst)
        .with_context(|| format!("creating the snapshot {}", dst.display()))?;
    copy_pages(&src_conn, &mut dst_conn, src)?;
    dst_conn
        .close()
        .map_err(|(_, e)| e)
        .context("closing the snapshot")?;
    File::open(dst)?.sync_all()?;
    Ok(schema)
}

/// Runs the online backup to the end, waiting up to 60 s for a locked source.
fn copy_pages(src_conn: &Connection, dst_conn: &mut Connection, src: &Path) -> anyhow::Result<()> {
    use rusqlite::backup::{Backup, StepResult};
    let backup = Backup::new(src_conn, dst_conn).context("starting the online backup")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // -1: every page in one step, inside one read transaction (a
        // consistent snapshot; in WAL mode writers are not blocked).
        match backup.step(-1).context("copying the database")? {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            StepResult::Busy | StepResult::Locked => {
                if Instant::now() > deadline {
                    bail!("the database {} stayed locked for 60 s", src.display());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_is_consistent_and_reads_the_schema_version() {
        let d = tempfile::tempdir().expect("tempdir");
        let src = d.path().join("live.sqlite3");
        let live = rusqlite::Connection::open(&src).expect("open");
        live.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);",
        )
        .expect("setup");
        // No schema_migrations table: no version, not an error.
        let dst = d.path().join("snap1");
        assert_eq!(snapshot_db(&src, &dst).expect("snapshot"), None);
        live.execute_batch(
            "CREATE TABLE schema_migrations(version INTEGER PRIMARY KEY); INSERT INTO schema_migrations VALUES (1), (7); INSERT INTO t VALUES (3);",
        )
        .expect("more");
        // The live connection stays open (its WAL holds the last writes).
        let dst = d.path().join("snap2");
        assert_eq!(snapshot_db(&src, &dst).expect("snapshot"), Some(7));
        let snap = rusqlite::Connection::open(&dst).expect("open snap");
        let n: i64 = snap
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 3);
    }
}
