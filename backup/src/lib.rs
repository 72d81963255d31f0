//! `backup_dhash`: a verified zip of one environment's state.
//!
//! A backup is `<backup_dir>/dhash_<env>_<YYYYMMDDTHHMMSSmmmZ>.zip` plus the
//! sidecar `<same>.zip.sha256` in GNU `sha256sum` format. The zip holds:
//!
//! ```text
//! data/...                 the data dir; the live SQLite DB captured with the online backup API
//! release/<id>/...         the files of the current release (through the `current` link)
//! config/environments.json, config/quality-gates-config.json
//! manifest.json            format, env, release, schema_version, created_at, tool version,
//!                          per-file path/bytes/sha256 (written last)
//! ```
//!
//! A backup in progress is `.dhash_<env>_<ts>.zip.<pid>.partial` (no seed glob
//! matches it). The sidecar is written (atomically) before the zip is renamed
//! to its final name, so a file matching `dhash_*.zip` always has its sidecar.
//!
//! Beside each backup, `dhash-<env>-<ts>.zip` is an alias (a symbolic link with
//! the backup's mtime) with its own sidecar naming the alias by absolute path,
//! for the runbooks that glob `../../backups/dhash-production-*.zip` and run
//! `sha256sum -c` from another folder. Aliases are never counted as backups
//! (see [`store`](crate::sync_aliases)).
//!
//! Each environment should have its own `backup_dir` (the shipped
//! environments.json: production `backups/`, staging `backups/staging/`), so
//! the seeds' `ls -1 backups/dhash_*.zip | sort -r | head -n1` finds a
//! production backup even when staging backups exist; a shared folder is
//! warned about on every backup.

pub mod cli;
mod create;
mod names;
mod plan;
mod snapshot;
mod store;
mod verify;
mod zipwrite;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use create::{create, create_reporting_failure};
pub use names::{
    alias_file_name, backup_file_name, parse_alias_name, parse_backup_name, timestamp_now,
};
pub use plan::{plan, report_plan, Plan, PlanItem};
pub use store::{
    adopt_legacy, alias_of, cleanup_stale, list, newest_backup_name, newest_verified, prune,
    sync_aliases, BackupEntry,
};
pub use verify::{
    check_database, check_entry_name, extract, read_manifest, read_sidecar, sha256_file, verify,
    verify_sidecar, ExtractOptions, Extracted,
};

/// The tool name used in events and the ledger.
pub const TOOL: &str = "backup_dhash";
/// The manifest format this version writes and the newest it reads.
pub const FORMAT: u32 = 1;
/// The manifest's name inside the zip.
pub const MANIFEST: &str = "manifest.json";

/// Options of [`create`].
#[derive(Debug, Clone, Default)]
pub struct BackupOptions {
    /// Plan only: report what would be backed up, write nothing.
    pub dry_run: bool,
    /// Retention: keep the newest N backups of the environment (default
    /// `env.retention.backups`). The backup just made is never deleted.
    pub keep: Option<usize>,
}

/// What [`create`] made (or, with `dry_run`, would make).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupInfo {
    /// Absolute path of the zip.
    pub path: PathBuf,
    /// SHA-256 of the zip (empty for a dry run).
    pub sha256: String,
    /// Size of the zip in bytes (for a dry run: the bytes that would be read).
    pub bytes: u64,
    /// Files in the backup (not counting manifest.json).
    pub files: usize,
    pub release: Option<String>,
    pub schema_version: Option<i64>,
}

/// One file recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path inside the zip, e.g. `data/dhash.sqlite3`.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// Unix permission bits (e.g. 0o755 for the service binary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// `manifest.json` inside every backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub env: String,
    /// The release `current` pointed at (None when nothing was deployed).
    pub release: Option<String>,
    /// The highest migration version applied to the captured database.
    pub schema_version: Option<i64>,
    /// The release's own `schema_version` (from its release.json).
    #[serde(default)]
    pub release_schema_version: Option<i64>,
    pub created_at: String,
    pub tool: String,
    pub tool_version: String,
    #[serde(default)]
    pub host: String,
    /// Path inside the zip of the database snapshot (restored to `env.database`).
    #[serde(default)]
    pub database: Option<String>,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }
}

/// See [`gates_core::crash`]: the one definition of the test crash points.
pub use gates_core::crash::crash_point;
